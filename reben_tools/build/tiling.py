"""The 1,200 m patch grid of a Sentinel-2 product and its blocks of patch rows (reBEN's grid from the tile's upper-left corner).

The grid is anchored at the upper-left corner of the product's rasters (the tile's
upper-left corner for a real L2A product). Patch ``(x, y)`` has its upper-left
corner at ``(ulx + 1200 x, uly - 1200 y)``; ``x`` counts columns eastwards and ``y``
rows southwards, both from 0. Only complete patches belong to the grid: a full
tile of 109,800 m has 91 x 91 patches, the incomplete last row and column are
dropped.

A *block* is a run of consecutive patch rows over all columns: the unit of work
of the pipeline, so that no task ever holds a whole tile.

Owns: :class:`PatchGrid` (a product's complete patches, their transforms and corners)
and :class:`Block` (a run of patch rows).
Does not own: reading pixels (build.scenes), the MGRS tile corners (reben_tools.geo.mgrs_grid).
May import: reben_tools.format, reben_tools.geo, affine.
"""

from __future__ import annotations

from dataclasses import dataclass

from affine import Affine

from reben_tools.format.bands import PATCH_SIZE_M


@dataclass(frozen=True)
class Block:
    """Patch rows ``row_start <= y < row_stop`` over columns ``0 <= x < ncols`` of a grid.

    Attributes:
        index: position of the block in the grid (0, 1, ...).
        row_start, row_stop: first patch row and one past the last.
        ncols: number of patch columns (the grid's).
    """

    index: int
    row_start: int
    row_stop: int
    ncols: int

    @property
    def nrows(self) -> int:
        return self.row_stop - self.row_start

    def patches(self) -> list[tuple[int, int]]:
        """``(x, y)`` of every patch of the block, row by row (y, then x ascending)."""
        return [(x, y) for y in range(self.row_start, self.row_stop) for x in range(self.ncols)]


@dataclass(frozen=True)
class PatchGrid:
    """The patch grid of one product.

    Attributes:
        crs: CRS of the product's rasters (an EPSG string such as ``"EPSG:32633"``).
        ulx, uly: upper-left corner of the grid in metres in ``crs``.
        ncols, nrows: numbers of complete patch columns and rows.
        extent_x_m, extent_y_m: size of the rasters the grid was cut from, in metres
            (109,800 for a full tile); used as the tile side by the split.
    """

    crs: str
    ulx: float
    uly: float
    ncols: int
    nrows: int
    extent_x_m: float
    extent_y_m: float

    @classmethod
    def from_extent(cls, crs: str, ulx: float, uly: float, width_m: float, height_m: float) -> PatchGrid:
        """The grid of complete 1,200 m patches inside a ``width_m`` x ``height_m`` extent."""
        ncols = int((width_m + 1e-6) // PATCH_SIZE_M)
        nrows = int((height_m + 1e-6) // PATCH_SIZE_M)
        return cls(crs, float(ulx), float(uly), ncols, nrows, float(width_m), float(height_m))

    @property
    def num_patches(self) -> int:
        return self.ncols * self.nrows

    def patch_ul(self, x: int, y: int) -> tuple[float, float]:
        """Upper-left corner ``(ulx + 1200 x, uly - 1200 y)`` of patch ``(x, y)`` in metres."""
        if not (0 <= x < self.ncols and 0 <= y < self.nrows):
            raise IndexError(f"patch ({x}, {y}) outside the {self.ncols} x {self.nrows} grid")
        return self.ulx + PATCH_SIZE_M * x, self.uly - PATCH_SIZE_M * y

    def patch_bounds(self, x: int, y: int) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of patch ``(x, y)`` in metres."""
        left, top = self.patch_ul(x, y)
        return left, top - PATCH_SIZE_M, left + PATCH_SIZE_M, top

    def patch_transform(self, x: int, y: int, resolution_m: int = 10) -> Affine:
        """Affine transform of patch ``(x, y)`` at ``resolution_m`` (north-up)."""
        left, top = self.patch_ul(x, y)
        return Affine(resolution_m, 0.0, left, 0.0, -resolution_m, top)

    def block_transform(self, block: Block, resolution_m: int = 10) -> Affine:
        """Affine transform of a block's window at ``resolution_m`` (its upper-left is patch (0, row_start))."""
        return Affine(resolution_m, 0.0, self.ulx, 0.0, -resolution_m, self.uly - PATCH_SIZE_M * block.row_start)

    def block_bounds(self, block: Block) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` of a block in metres."""
        top = self.uly - PATCH_SIZE_M * block.row_start
        return self.ulx, top - PATCH_SIZE_M * block.nrows, self.ulx + PATCH_SIZE_M * block.ncols, top

    def blocks(self, rows_per_block: int) -> list[Block]:
        """The grid cut into blocks of ``rows_per_block`` patch rows (the last may be shorter)."""
        if rows_per_block < 1:
            raise ValueError(f"rows_per_block must be at least 1, got {rows_per_block}")
        return [
            Block(i, start, min(start + rows_per_block, self.nrows), self.ncols)
            for i, start in enumerate(range(0, self.nrows, rows_per_block))
        ]

    def tile_side_m(self) -> float:
        """The tile side the split uses: the shorter side of the rasters' extent (109,800 m for a full tile)."""
        return min(self.extent_x_m, self.extent_y_m)
