"""Learning on reBEN archives: the PyTorch dataset, networks, metrics, training, evaluation and probing.

Modules: dataset, transforms, values (reading samples); blocks, encoders, models (networks); metrics;
config, schedule, devices, distributed, loaders, augment, checkpoints, rundir, plots (parts of a run);
loop (train), evaluation (predict, evaluate), probes (probe).

Owns: nothing itself; each module says what it owns.
Does not own: the archive format (reben_tools.format), building or releasing archives (build, release),
the CLI (commands).
May import: reben_tools.format, reben_tools.geo, reben_tools.splits; never build or release.
"""
