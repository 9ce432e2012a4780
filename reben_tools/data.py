"""Public import path of the PyTorch dataset: ``from reben_tools.data import ReBENDataset, collate``.

The dataset lives in :mod:`reben_tools.learn.data.dataset` and the native-batch transforms in
:mod:`reben_tools.learn.data.transforms`; this module re-exports their public names so code written
against the README keeps working.

Owns: nothing but the public re-exports listed in ``__all__``.
Does not own: the dataset (learn/data/dataset.py), the transforms (learn/data/transforms.py), the class tables (format/labels.py).
May import: reben_tools.format, reben_tools.learn.
"""

from reben_tools.format.labels import MASK_IGNORE_INDEX
from reben_tools.learn.data.batches import SampleBatch, collate
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.learn.data.transforms import (
    NATIVE_GROUPS,
    UPSAMPLING_MODES,
    NativeGroup,
    NativeLayout,
    NativeToImage,
    upsample_and_normalise,
)

__all__ = [
    "MASK_IGNORE_INDEX",
    "NATIVE_GROUPS",
    "UPSAMPLING_MODES",
    "NativeGroup",
    "NativeLayout",
    "NativeToImage",
    "ReBENDataset",
    "SampleBatch",
    "collate",
    "upsample_and_normalise",
]
