"""The SPEC section 2 patch grid and its blocks."""

from __future__ import annotations

import pytest

from reben_tools.builder.tiling import Block, PatchGrid


def test_full_tile_has_91_by_91_patches_and_drops_the_incomplete_ones():
    grid = PatchGrid.from_extent("EPSG:32633", 300000, 5400000, 109_800, 109_800)
    assert (grid.ncols, grid.nrows, grid.num_patches) == (91, 91, 8281)
    assert grid.tile_side_m() == 109_800
    with pytest.raises(IndexError):
        grid.patch_ul(91, 0)


def test_spec_example_patch_position():
    # SPEC: T33UUP upper-left (300000, 5400000); patch 26_57 spans x 331200..332400, y 5330400..5331600
    grid = PatchGrid.from_extent("EPSG:32633", 300000, 5400000, 109_800, 109_800)
    assert grid.patch_bounds(26, 57) == (331200, 5330400, 332400, 5331600)
    t = grid.patch_transform(26, 57, 20)
    assert (t.a, t.e, t.c, t.f) == (20, -20, 331200, 5331600)


def test_small_extent_and_partial_patches():
    grid = PatchGrid.from_extent("EPSG:32631", 699960, 5600040, 12_600, 4_200)
    assert (grid.ncols, grid.nrows) == (10, 3)
    assert grid.patch_ul(9, 2) == (699960 + 10_800, 5600040 - 2_400)
    assert grid.tile_side_m() == 4_200


def test_blocks_cover_every_row_once():
    grid = PatchGrid.from_extent("EPSG:32633", 0, 0, 109_800, 109_800)
    blocks = grid.blocks(8)
    assert [(b.row_start, b.row_stop) for b in blocks[:2]] == [(0, 8), (8, 16)]
    assert blocks[-1] == Block(11, 88, 91, 91)
    rows = [y for b in blocks for y in range(b.row_start, b.row_stop)]
    assert rows == list(range(91))
    assert blocks[1].patches()[:2] == [(0, 8), (1, 8)]
    assert len(blocks[-1].patches()) == 3 * 91
    assert grid.block_bounds(blocks[1]) == (0, -16 * 1200, 91 * 1200, -8 * 1200)
    t = grid.block_transform(blocks[1], 60)
    assert (t.a, t.c, t.f) == (60, 0, -9600)
    with pytest.raises(ValueError, match="rows_per_block must be at least 1, got 0"):
        grid.blocks(0)
