"""Geometry and randomness shared by the generator: product frames, seeded generators, reprojection.

Owns: :class:`_Frame` (a product area on its tile grid), the per-component seeded
generator :func:`_rng`, and vertex-wise reprojection of polygons (:func:`_to_crs`).
Does not own: what is drawn (land_cover, s2_render, s1_scene).
May import: reben_tools.format.bands, reben_tools.geo.mgrs_grid, .design, pyproj, shapely, rasterio.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from reben_tools.builder.demo_region.design import EXTRA_M
from reben_tools.format.bands import PATCH_SIZE_M
from reben_tools.geo.mgrs_grid import TileGrid, tile_grid


@dataclass(frozen=True)
class _Frame:
    """A product area: tile grid, side in metres, and coordinate helpers."""

    grid: TileGrid
    size_m: int

    @property
    def crs(self) -> str:
        return self.grid.crs

    def rect_to_utm(self, rect: tuple[float, float, float, float]):
        from shapely.geometry import box

        u0, v0, u1, v1 = rect
        return box(self.grid.ulx + u0, self.grid.uly - v1, self.grid.ulx + u1, self.grid.uly - v0)

    def patch_box(self, x: int, y: int):
        return self.rect_to_utm((1200.0 * x, 1200.0 * y, 1200.0 * (x + 1), 1200.0 * (y + 1)))

    def transform(self, res: int, row0: int = 0):
        from rasterio.transform import from_origin

        return from_origin(self.grid.ulx, self.grid.uly - row0 * res, res, res)


def _frame(tile: str, patches_per_side: int) -> _Frame:
    return _Frame(tile_grid(tile), PATCH_SIZE_M * patches_per_side + EXTRA_M)


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent generator per component, stable across runs and platforms."""
    digest = hashlib.sha256(("|".join(str(k) for k in (seed, *keys))).encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


@functools.cache
def _transformer(src: str, dst: str):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def _to_crs(polygons: list, src: str, dst: str) -> list:
    """Transform shapely polygons vertex by vertex (after densifying to 50 m)."""
    import shapely

    transformer = _transformer(src, dst)

    def fn(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))

    return [shapely.transform(shapely.segmentize(p, 50.0), fn) for p in polygons]
