"""Known-answer feature sets for the comparison protocol (:mod:`.compare`): a positive control and random features.

A protocol that cannot resolve a difference known to be there says nothing when it finds none.
The positive control is the per-patch share of each class's pixels in the archive's reference
maps (the maps the labels are derived from: a class is a label where its share is above 0),
which a linear probe must find far better than random features; a weak positive control adds
one class's pixel share to random features, a gain of known sign and of about
``(1 - AP of that class) / 19`` in macro AP. Two random feature sets of one distribution are
the negative control: they must come out within noise.

Owns: class_pixel_fractions, random_features, weak_control.
Does not own: the protocol (compare.py), the code -> class table (learn.data.mixing, format.labels).
May import: numpy, torch; reben_tools.learn.data.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.learn.data.mixing import class_fractions_from_codes, class_table


def class_pixel_fractions(archive: str | os.PathLike, batch: int = 256) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(N, 19) class pixel shares of every patch of ``archive`` (alphabetical classes), with the
    patch ids and splits, in the archive's order (the order of ``reben embed``'s rows)."""
    dataset = ReBENDataset(archive, bands="S1", return_reference_map=True)
    try:
        table = class_table("alphabetical")
        out = []
        for start in range(0, len(dataset), batch):
            maps = np.stack([dataset.reference_map(i) for i in range(start, min(start + batch, len(dataset)))])
            out.append(class_fractions_from_codes(torch.from_numpy(maps.astype(np.int64)), table).numpy())
        ids = list(dataset.patch_ids)
        splits = np.asarray(dataset.metadata.column("split").to_pylist())
    finally:
        dataset.archive.close()
    return np.concatenate(out).astype(np.float64), ids, splits


def random_features(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """(n, dim) standard normal features: what a probe on uninformative features scores."""
    return np.random.default_rng(seed).standard_normal((n, dim))


def weak_control(fractions: np.ndarray, column: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Random features (``seed``) with one class's pixel share appended as one more column."""
    return np.concatenate([random_features(len(fractions), dim, seed), fractions[:, [column]]], axis=1)
