"""What training, evaluation and the encoders all use: settings, errors, devices, distributed runs, checkpoints.

Modules: config (TrainConfig, TrainingError, number checks), devices (device, precision, OOM), distributed
(process groups, EpochSampler), checkpoints (checkpoint files, RNG state), schedule (warm-up/cosine,
layer decay), rundir (a run directory's files).

Owns: nothing itself; each module says what it owns.
May import: reben_tools.format; never another learn subpackage (this is the floor of learn).
"""
