"""Package data (CORINE legend, Natural Earth countries) and the PyTorch dataset.

``reben_tools.data`` is both the package-data folder (``clc_legend.csv``, read by
:mod:`reben_tools.labels` through ``importlib.resources``) and the home of the
dataset API. The dataset lives in :mod:`reben_tools.data.dataset` and is exported
here lazily, so reading the legend never imports torch::

    from reben_tools.data import ReBENDataset, collate, NativeToImage
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = (
    "NATIVE_GROUPS", "UPSAMPLING_MODES", "MASK_IGNORE_INDEX", "NativeGroup", "NativeLayout", "NativeToImage",
    "ReBENDataset", "SampleBatch", "collate", "upsample_and_normalise",
)
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(".dataset", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
