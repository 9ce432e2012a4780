"""Training runs: the supervised loop, CROMA pretraining, their logs and curves.

Modules: loop (train), pretrain (CROMA pretraining), pretrain_log, plots (training curves).

Owns: nothing itself; each module says what it owns.
May import: reben_tools.format, reben_tools.splits, every other learn subpackage (this is the top of learn).
"""
