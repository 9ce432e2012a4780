"""Learning on reBEN archives, in five subpackages, each importing only the ones listed before it:

- ``runtime``: settings, errors, devices, distributed runs, checkpoints, schedule, run directory;
- ``data``: the PyTorch dataset, transforms, loaders, augmentation and mixing;
- ``models``: blocks, backbones, classifiers, CROMA, DOFA, the encoder registry;
- ``evaluation``: prediction, metrics, probes, embeddings, retrieval;
- ``training``: the supervised loop and CROMA pretraining.

Owns: nothing itself; each subpackage says what it owns.
Does not own: the archive format (reben_tools.format), building or releasing archives (builder, release),
the CLI (commands).
May import: reben_tools.format, reben_tools.geo, reben_tools.splits; never builder or release.
"""
