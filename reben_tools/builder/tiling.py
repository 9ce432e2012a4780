"""The 1,200 m patch grid of a Sentinel-2 product and its blocks of patch rows (reBEN's grid from the tile's upper-left corner).

The grid is the MGRS tile's 1,200 m grid, anchored at the tile's upper-left corner
(reben_tools.geo.mgrs_grid), also for a product cropped from a tile: its patch ids
count from the tile's corner, as reBEN's do. Within the grid, local patch ``(x, y)``
has its upper-left corner at ``(ulx + 1200 x, uly - 1200 y)``, where ``(ulx, uly)`` is
the first complete tile patch inside the rasters; its tile indices are
``(x + x_offset, y + y_offset)``. Only complete patches belong to the grid: a full
tile of 109,800 m has 91 x 91 patches (the incomplete last row and column are
dropped), and a crop loses the patches its edges cut.

A *block* is a run of consecutive patch rows over all columns: the unit of work
of the pipeline, so that no task ever holds a whole tile.

Owns: :class:`PatchGrid` (a product's complete patches, their transforms and corners),
placing a product on its tile's grid (:func:`tile_patch_grid`) and :class:`Block` (a run
of patch rows).
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
        extent_x_m, extent_y_m: size of the rasters measured from the tile's corner, in
            metres (109,800 for a full tile or a crop reaching its far edges); used as the
            tile side by the split.
        x_offset, y_offset: tile indices of local patch (0, 0).
        pad_x_m, pad_y_m: metres from the rasters' upper-left corner to the grid's.
    """

    crs: str
    ulx: float
    uly: float
    ncols: int
    nrows: int
    extent_x_m: float
    extent_y_m: float
    x_offset: int = 0
    y_offset: int = 0
    pad_x_m: float = 0.0
    pad_y_m: float = 0.0

    @classmethod
    def from_extent(
        cls,
        crs: str,
        ulx: float,
        uly: float,
        width_m: float,
        height_m: float,
        origin: tuple[float, float] | None = None,
    ) -> PatchGrid:
        """The grid of complete 1,200 m patches inside a ``width_m`` x ``height_m`` extent.

        Args:
            crs, ulx, uly, width_m, height_m: the rasters' CRS, upper-left corner and size (m).
            origin: the tile's upper-left corner the grid is anchored at (default: the
                rasters' corner). The rasters must start east and south of it.
        """
        ox, oy = (float(ulx), float(uly)) if origin is None else (float(origin[0]), float(origin[1]))
        dx, dy = float(ulx) - ox, oy - float(uly)
        if dx < -1e-6 or dy < -1e-6:
            raise ValueError(f"rasters start at ({ulx}, {uly}), west or north of the tile corner ({ox}, {oy})")
        x_offset = int(-(-(dx - 1e-6) // PATCH_SIZE_M)) if dx > 1e-6 else 0
        y_offset = int(-(-(dy - 1e-6) // PATCH_SIZE_M)) if dy > 1e-6 else 0
        pad_x, pad_y = x_offset * PATCH_SIZE_M - dx, y_offset * PATCH_SIZE_M - dy
        ncols = max(0, int((width_m - pad_x + 1e-6) // PATCH_SIZE_M))
        nrows = max(0, int((height_m - pad_y + 1e-6) // PATCH_SIZE_M))
        return cls(
            crs,
            ox + x_offset * PATCH_SIZE_M,
            oy - y_offset * PATCH_SIZE_M,
            ncols,
            nrows,
            float(width_m + dx),
            float(height_m + dy),
            x_offset,
            y_offset,
            round(pad_x, 6),
            round(pad_y, 6),
        )

    def tile_index(self, x: int, y: int) -> tuple[int, int]:
        """Tile indices ``(x + x_offset, y + y_offset)`` of local patch ``(x, y)``: what patch ids and the split use."""
        return x + self.x_offset, y + self.y_offset

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


TILE_SIDE_M = 109_800.0
"""Side of a Sentinel-2 L2A tile (MGRS 100 km square plus 9,800 m overlap)."""


def tile_patch_grid(
    tile: str, epsg: int | None, crs: str, ulx: float, uly: float, width_m: float, height_m: float, pixel_m: int = 60
) -> PatchGrid:
    """The patch grid of rasters cut from MGRS ``tile``, anchored at the tile's corner.

    Args:
        tile: MGRS tile (``33UUP``).
        epsg, crs: the rasters' EPSG code and CRS string.
        ulx, uly, width_m, height_m: the rasters' upper-left corner and size, metres.
        pixel_m: the coarsest band's pixel size: the corner must lie on that grid of the tile.

    Raises:
        ValueError: an unknown tile, another CRS than the tile's, rasters reaching outside the
            tile's 109,800 m square, or a corner off the tile's ``pixel_m`` grid.
    """
    from reben_tools.geo.mgrs_grid import tile_grid

    grid = tile_grid(tile)  # UnknownTileError is a ValueError
    if epsg != grid.epsg:
        raise ValueError(f"CRS {crs} is not tile {tile}'s EPSG:{grid.epsg}")
    dx, dy = ulx - grid.ulx, grid.uly - uly
    for offset in (dx, dy):
        if abs(offset / pixel_m - round(offset / pixel_m)) > 1e-6:
            raise ValueError(
                f"upper-left corner ({ulx}, {uly}) is not on tile {tile}'s {pixel_m} m pixel grid "
                f"from its corner ({grid.ulx}, {grid.uly}): offset {dx} m east, {dy} m south"
            )
    if dx < 0 or dy < 0 or dx + width_m > TILE_SIDE_M + 1e-6 or dy + height_m > TILE_SIDE_M + 1e-6:
        raise ValueError(
            f"rasters ({ulx}, {uly}), {width_m} x {height_m} m, reach outside tile {tile} "
            f"({grid.ulx}, {grid.uly}), {TILE_SIDE_M:.0f} m square"
        )
    return PatchGrid.from_extent(crs, ulx, uly, width_m, height_m, origin=(grid.ulx, grid.uly))
