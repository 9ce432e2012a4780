"""Split assignment strategies (SPEC section 5)."""

from __future__ import annotations

import math

import numpy as np

FULL_TILE_SIDE_M = 109_800.0


def reben_split(x: np.ndarray, y: np.ndarray, tile_side_m: float | np.ndarray = FULL_TILE_SIDE_M) -> np.ndarray:
    """reBEN's geography-based split from patch grid positions.

    Args:
        x, y: patch column and row indices inside the tile (int arrays of equal shape).
        tile_side_m: side of the tile in metres (109,800 for a full tile).

    Returns:
        object array of ``"train"``, ``"validation"`` or ``"test"``: train where the patch
        centre lies closer than ``s(2 - sqrt 2)/4`` to the nearest tile border, validation
        closer than ``s/4``, test in the central square of side ``s/2``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    side = np.asarray(tile_side_m, dtype=np.float64)
    cx = 1200.0 * x + 600.0
    cy = 1200.0 * y + 600.0
    distance = np.minimum.reduce([cx, cy, side - cx, side - cy])
    train_limit = side * (2.0 - math.sqrt(2.0)) / 4.0
    out = np.full(distance.shape, "test", dtype=object)
    out[distance < side / 4.0] = "validation"
    out[distance < train_limit] = "train"
    return out
