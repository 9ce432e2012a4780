"""reBEN's geography-based split rule: rings around each MGRS tile's border.

Owns: the rule that maps a patch's grid position inside its tile to train, validation or
test.
Does not own: strategies, patch tables or audits (``reben_tools.splits``).
May import: ``format``, ``geo.mgrs_grid``, numpy and the standard library.
"""

from __future__ import annotations

import math

import numpy as np

from reben_tools.geo.mgrs_grid import TILE_SIDE_M

PATCH_SIDE_M = 1200.0


def reben_split(x: np.ndarray, y: np.ndarray, tile_side_m: float | np.ndarray = TILE_SIDE_M) -> np.ndarray:
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
    cx = PATCH_SIDE_M * x + PATCH_SIDE_M / 2
    cy = PATCH_SIDE_M * y + PATCH_SIDE_M / 2
    distance = np.minimum.reduce([cx, cy, side - cx, side - cy])
    train_limit = side * (2.0 - math.sqrt(2.0)) / 4.0
    out = np.full(distance.shape, "test", dtype=object)
    out[distance < side / 4.0] = "validation"
    out[distance < train_limit] = "train"
    return out
