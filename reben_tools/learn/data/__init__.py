"""From archive values to batches on the device: the dataset, transforms, loaders, augmentation and mixing.

Modules: dataset (ReBENDataset), values, transforms, buffers, batches (reading and shaping samples);
loaders (DataLoaders, device-side preprocessing); augment, mixing (flips, CutMix with label propagation);
sample_figure (one sample drawn as a figure).

Owns: nothing itself; each module says what it owns.
May import: reben_tools.format, reben_tools.splits, reben_tools.learn.runtime.
"""
