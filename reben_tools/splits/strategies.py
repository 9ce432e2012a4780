"""Split assignment strategies (SPEC section 5) and the patch tables they work on.

A strategy is a pure function from patches (id, tile, x, y, position, optionally
labels) to a split column: an object array of ``"train"``, ``"validation"``,
``"test"`` or ``None`` (a patch the strategy leaves out, e.g. a buffer patch).

Strategies (see ``docs/split_audit.md`` for their trade-offs):

* ``reben``: reBEN's geography-based split, SPEC section 5, exactly
  (:func:`reben_split`): rings around each tile's border.
* ``v1-blocks``: BigEarthNet v1's scheme, 2x2 blocks of patches per tile, two
  train, one validation, one test per block; which position gets which is drawn
  per block from a fixed seed.
* ``spatial-blocks``: square blocks of a common grid across tiles and UTM zones
  (EPSG:3035, default 30 km), assigned to splits greedily so that patch counts,
  label frequencies and country shares follow the intended ratios, with a buffer of
  patches dropped wherever two splits meet.

Inputs (:func:`load_patches`): an archive directory (its ``patches.parquet``), a
``patches.parquet`` or any parquet with a ``patch_id`` column (e.g. reBEN's
``metadata.parquet``). Positions come from the ``ulx``/``uly``/``crs`` columns
where present, otherwise from the MGRS tile plus ``x`` and ``y`` — parsed from the
patch id, or taken from ``tile``/``x``/``y`` columns for ids that are not reBEN ids —
(:mod:`reben_tools.geo.mgrs_grid`). The tile side is the ``tile_side_m`` column, else
the ``tile_side_m`` option, else a full tile (109,800 m).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reben_tools.format.archive import PATCHES_FILE, METADATA_FILE, FLAGGED_METADATA_FILE, SPLITS, write_parquet_atomic
from reben_tools.geo.mgrs_grid import TILE_SIDE_M, UnknownTileError, tile_grid
from reben_tools.geo.split_rule import reben_split
from reben_tools.format.naming import PATCH_ID_PATTERN

FULL_TILE_SIDE_M = TILE_SIDE_M
PATCH_SIDE_M = 1200.0
COMMON_GRID_CRS = "EPSG:3035"
"""Equal-area CRS (ETRS89-LAEA Europe) of the common block grid of ``spatial-blocks`` and the maps."""
MAX_LISTED_ROWS = 5
_WGS84_A = 6_378_137.0
_WGS84_E2 = 6.694379990141316e-3


# --------------------------------------------------------------------------- input


class SplitInputError(ValueError):
    """The input cannot be split or audited; the message names the file and the first offending rows."""


def _offending(source: str, what: str, rows: np.ndarray, values: Sequence, hint: str = "") -> SplitInputError:
    rows = np.asarray(rows)
    listed = ", ".join(f"row {int(r)}: {v!r}" for r, v in zip(rows[:MAX_LISTED_ROWS], values[:MAX_LISTED_ROWS]))
    more = f" (and {len(rows) - MAX_LISTED_ROWS} more)" if len(rows) > MAX_LISTED_ROWS else ""
    return SplitInputError(f"{source}: {len(rows)} {what}: {listed}{more}{hint}")


def resolve_input(path: str | Path) -> Path:
    """The parquet file an INPUT names: an archive directory's ``patches.parquet``
    (else its ``metadata.parquet``), or the file itself."""
    path = Path(path)
    if path.is_dir():
        for name in (PATCHES_FILE, METADATA_FILE):
            if (path / name).is_file():
                return path / name
        raise SplitInputError(f"{path}: directory holds neither {PATCHES_FILE} nor {METADATA_FILE}")
    if not path.is_file():
        raise SplitInputError(f"{path}: no such file or directory")
    return path


def read_input_table(path: str | Path) -> tuple[pa.Table, Path]:
    """Read INPUT (see :func:`resolve_input`) as a pyarrow table; for an archive directory
    without ``patches.parquet`` both reBEN metadata files are read."""
    file = resolve_input(path)
    try:
        table = pq.read_table(file)
        if file.name == METADATA_FILE and Path(path).is_dir() and (file.parent / FLAGGED_METADATA_FILE).is_file():
            flagged = pq.read_table(file.parent / FLAGGED_METADATA_FILE)
            table = pa.concat_tables([table, flagged.select(table.column_names).cast(table.schema)])
    except (OSError, pa.ArrowException) as exc:
        raise SplitInputError(f"{file}: cannot read parquet ({exc})") from None
    return table, file


def _epsg_codes(values: np.ndarray, source: str) -> np.ndarray:
    """EPSG integers from CRS strings (``EPSG:32633``); -1 for nulls."""
    from pyproj import CRS

    out = np.full(len(values), -1, dtype=np.int64)
    uniques, inverse = np.unique(values.astype(str), return_inverse=True)
    codes = np.empty(len(uniques), dtype=np.int64)
    for i, text in enumerate(uniques):
        match = re.fullmatch(r"(?i)epsg:(\d+)", text)
        if match:
            codes[i] = int(match[1])
        elif text in ("None", "nan", ""):
            codes[i] = -1
        else:
            try:
                code = CRS.from_user_input(text).to_epsg()
            except Exception:
                code = None
            if code is None:
                rows = np.flatnonzero(inverse == i)
                raise _offending(source, "row(s) with a CRS that has no EPSG code", rows, values[rows])
            codes[i] = code
    out[:] = codes[inverse]
    return out


def categorical(values: pa.Array | pa.ChunkedArray, null_name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Integer codes of string values and the sorted distinct names (Arrow hashing, no Python loop).

    Returns:
        (int64[n] index into the names, -1 for nulls unless ``null_name`` replaces them; names).
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if null_name is not None:
        values = pc.fill_null(values.cast(pa.string()), null_name)
    encoded = pc.dictionary_encode(values)
    names = [str(v) for v in encoded.dictionary.to_pylist()]
    order = np.argsort(np.array(names, dtype=object), kind="stable") if names else np.empty(0, np.int64)
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    codes = np.where(indices >= 0, rank[np.maximum(indices, 0)] if len(names) else -1, -1)
    return codes, [names[i] for i in order]


@dataclass
class PatchTable:
    """Patches, their grid positions and their centres; one entry per input row, in input order.

    Attributes:
        table: the input rows (all columns, unchanged).
        source: the file they came from (used in messages).
        patch_id: object[n] patch ids.
        product_codes, product_names: int64[n] index into the sorted product prefixes (one per
            acquisition, e.g. ``S2A_MSIL2A_..._T33UUP``); ``product`` gives object[n] names.
        tile_codes, tile_names: int64[n] index into the sorted MGRS tiles (no ``T``); ``tile``.
        x, y: int64[n] patch column / row inside the tile.
        epsg: int64[n] EPSG code of the patch grid (UTM zone).
        centre_x, centre_y: float64[n] patch centre in metres in ``epsg``.
        tile_side_m: float64[n] side of the patch's tile in metres.
        labels: the ``labels`` list column, or None when the input has no labels.
        country_codes, country_names: int64[n] index into the sorted countries (nulls named
            ``unknown``), or None when the input has no ``country`` column.
    """

    table: pa.Table
    source: str
    patch_id: np.ndarray
    product_codes: np.ndarray
    product_names: list[str]
    tile_codes: np.ndarray
    tile_names: list[str]
    x: np.ndarray
    y: np.ndarray
    epsg: np.ndarray
    centre_x: np.ndarray
    centre_y: np.ndarray
    tile_side_m: np.ndarray
    labels: pa.ChunkedArray | None = None
    country_codes: np.ndarray | None = None
    country_names: list[str] | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.patch_id)

    @property
    def tile(self) -> np.ndarray:
        """object[n] MGRS tile of each patch."""
        return np.array(self.tile_names, dtype=object)[self.tile_codes]

    @property
    def product(self) -> np.ndarray:
        """object[n] product prefix (acquisition) of each patch."""
        return np.array(self.product_names, dtype=object)[self.product_codes]

    @property
    def country(self) -> np.ndarray | None:
        """object[n] country of each patch (``unknown`` for nulls), or None."""
        if self.country_codes is None:
            return None
        return np.array(self.country_names, dtype=object)[self.country_codes]

    @cached_property
    def lonlat(self) -> np.ndarray:
        """float64[n, 2] patch centres as (longitude, latitude) in degrees (WGS84)."""
        from pyproj import Transformer

        out = np.empty((len(self), 2), dtype=np.float64)
        for code in np.unique(self.epsg):
            rows = np.flatnonzero(self.epsg == code)
            transformer = Transformer.from_crs(f"EPSG:{code}", "EPSG:4326", always_xy=True)
            lon, lat = transformer.transform(self.centre_x[rows], self.centre_y[rows])
            out[rows, 0] = lon
            out[rows, 1] = lat
        return out

    @cached_property
    def geocentric(self) -> np.ndarray:
        """float64[n, 3] patch centres in Earth-centred Cartesian metres (WGS84, height 0).

        Straight-line distances between them are ground (geodesic) distances less about
        ``d^3 / (24 R^2)``: 2 cm at 25 km, across tiles and UTM zones alike.
        """
        lon = np.radians(self.lonlat[:, 0])
        lat = np.radians(self.lonlat[:, 1])
        sin_lat = np.sin(lat)
        radius = _WGS84_A / np.sqrt(1.0 - _WGS84_E2 * sin_lat**2)
        return np.column_stack(
            [radius * np.cos(lat) * np.cos(lon), radius * np.cos(lat) * np.sin(lon), radius * (1.0 - _WGS84_E2) * sin_lat]
        )

    @cached_property
    def common_grid(self) -> np.ndarray:
        """float64[n, 2] patch centres in metres in :data:`COMMON_GRID_CRS` (EPSG:3035)."""
        from pyproj import Transformer

        transformer = Transformer.from_crs("EPSG:4326", COMMON_GRID_CRS, always_xy=True)
        east, north = transformer.transform(self.lonlat[:, 0], self.lonlat[:, 1])
        return np.column_stack([east, north])

    def label_matrix(self) -> tuple[np.ndarray, list[str]] | None:
        """(bool[n, k] label presence, the k label names sorted), or None without labels."""
        if self.labels is None:
            return None
        if "label_matrix" not in self._cache:
            labels = self.labels.combine_chunks() if isinstance(self.labels, pa.ChunkedArray) else self.labels
            flat = pc.list_flatten(labels)
            parents = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)
            index, vocabulary = categorical(flat)
            valid = index >= 0
            matrix = np.zeros((len(self), len(vocabulary)), dtype=bool)
            matrix[parents[valid], index[valid]] = True
            self._cache["label_matrix"] = (matrix, vocabulary)
        return self._cache["label_matrix"]


def _string_column(table: pa.Table, name: str, source: str) -> pa.Array:
    column = table.column(name).combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    if not pa.types.is_string(column.type):
        raise SplitInputError(f"{source}: column {name!r} has type {column.type}, expected strings")
    return column


def patches_from_table(table: pa.Table, source: str = "<table>", tile_side_m: float | None = None) -> PatchTable:
    """Validate rows and derive positions; see the module docstring for where they come from.

    Raises:
        SplitInputError: no ``patch_id`` column, a malformed, missing or duplicate patch id, an
            unknown MGRS tile, or an unusable CRS; the message lists the first offending rows.
    """
    if "patch_id" not in table.column_names:
        raise SplitInputError(f"{source}: no 'patch_id' column (columns: {table.column_names})")
    if table.num_rows == 0:
        raise SplitInputError(f"{source}: no rows")
    ids = _string_column(table, "patch_id", source)
    parts = pc.extract_regex(ids, PATCH_ID_PATTERN)
    parsed = parts.is_valid().to_numpy(zero_copy_only=False)
    has_grid_columns = all(c in table.column_names for c in ("tile", "x", "y"))
    if has_grid_columns:
        # tile / x / y columns (an archive's patches.parquet) also place patches whose ids are not
        # reBEN ids, e.g. BigEarthNet v1 names; where the id parses, both must agree.
        column_tile = pc.replace_substring_regex(_string_column(table, "tile", source), "^T", "")
        try:
            column_x = pc.cast(table.column("x"), pa.int64()).to_numpy(zero_copy_only=False)
            column_y = pc.cast(table.column("y"), pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowException as exc:
            raise SplitInputError(f"{source}: columns 'x' and 'y' must hold integers ({exc})") from None
        placed = (column_tile.is_valid().to_numpy(zero_copy_only=False) & ~np.isnan(column_x.astype(float))
                  & ~np.isnan(column_y.astype(float)))
    else:
        placed = np.zeros(len(ids), dtype=bool)
    bad = np.flatnonzero((~parsed & ~placed) | ~ids.is_valid().to_numpy(zero_copy_only=False))
    if len(bad):
        values = [ids[int(i)].as_py() for i in bad[:MAX_LISTED_ROWS]]
        raise _offending(source, "malformed or missing patch id(s)", bad, values,
                         " (expected e.g. S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57)")
    patch_ids = ids.to_numpy(zero_copy_only=False).astype(object)
    if pc.count_distinct(ids).as_py() != len(ids):
        id_codes, _ = categorical(ids)
        first_seen = np.full(id_codes.max() + 1, len(ids), dtype=np.int64)
        np.minimum.at(first_seen, id_codes, np.arange(len(ids)))
        rows = np.flatnonzero(first_seen[id_codes] != np.arange(len(ids)))
        raise _offending(source, "duplicate patch id(s) (repeats of an earlier row)", rows, patch_ids[rows])
    parsed_product = parts.field("product")
    parsed_tile = pc.utf8_slice_codeunits(parsed_product, -5)
    valid = parts.is_valid()  # the children of unmatched rows hold empty strings
    parsed_x = pc.cast(pc.if_else(valid, parts.field("x"), "-1"), pa.int64()).to_numpy()
    parsed_y = pc.cast(pc.if_else(valid, parts.field("y"), "-1"), pa.int64()).to_numpy()
    if has_grid_columns:
        both = parsed & placed
        tile_text = column_tile.to_numpy(zero_copy_only=False).astype(object)
        disagree = both & (
            (tile_text != parsed_tile.to_numpy(zero_copy_only=False).astype(object))
            | (np.where(placed, column_x, -1) != parsed_x) | (np.where(placed, column_y, -1) != parsed_y)
        )
        if disagree.any():
            rows = np.flatnonzero(disagree)
            raise _offending(source, "row(s) whose tile/x/y columns disagree with the patch id", rows, patch_ids[rows])
        use_columns = pa.array(placed & ~parsed)
        tiles = pc.if_else(use_columns, column_tile, parsed_tile)
        x = np.where(placed & ~parsed, column_x, parsed_x).astype(np.int64)
        y = np.where(placed & ~parsed, column_y, parsed_y).astype(np.int64)
        # an acquisition of an id that is not a reBEN id: the id without its trailing _x_y
        products = pc.if_else(use_columns, pc.replace_substring_regex(ids, r"_\d+_\d+$", ""), parsed_product)
    else:
        tiles, x, y, products = parsed_tile, parsed_x, parsed_y, parsed_product
    if np.any((x < 0) | (y < 0)):
        rows = np.flatnonzero((x < 0) | (y < 0))
        raise _offending(source, "row(s) with a negative x or y", rows, patch_ids[rows])
    product_codes, product_names = categorical(products)
    tile_index, unique_tiles = categorical(tiles)
    grids, unknown = [], []
    for i, name in enumerate(unique_tiles):
        try:
            grids.append(tile_grid(str(name)))
        except UnknownTileError:
            grids.append(None)
            unknown.append(i)
    if unknown:
        rows = np.flatnonzero(np.isin(tile_index, unknown))
        raise _offending(source, "patch id(s) with an unknown MGRS tile", rows, patch_ids[rows])
    tile_ulx = np.array([g.ulx for g in grids])[tile_index]
    tile_uly = np.array([g.uly for g in grids])[tile_index]
    epsg = np.array([g.epsg for g in grids], dtype=np.int64)[tile_index]
    centre_x = tile_ulx + PATCH_SIDE_M * x + PATCH_SIDE_M / 2
    centre_y = tile_uly - PATCH_SIDE_M * y - PATCH_SIDE_M / 2
    if all(c in table.column_names for c in ("ulx", "uly", "crs")):
        ulx = pc.cast(table.column("ulx"), pa.float64()).to_numpy(zero_copy_only=False)
        uly = pc.cast(table.column("uly"), pa.float64()).to_numpy(zero_copy_only=False)
        crs = table.column("crs").to_numpy(zero_copy_only=False).astype(object)
        given_epsg = _epsg_codes(crs, source)
        given = np.isfinite(ulx) & np.isfinite(uly) & (given_epsg > 0)
        centre_x = np.where(given, ulx + PATCH_SIDE_M / 2, centre_x)
        centre_y = np.where(given, uly - PATCH_SIDE_M / 2, centre_y)
        epsg = np.where(given, given_epsg, epsg)
    side = np.full(len(x), FULL_TILE_SIDE_M if tile_side_m is None else float(tile_side_m))
    if "tile_side_m" in table.column_names:
        column = pc.cast(table.column("tile_side_m"), pa.float64()).to_numpy(zero_copy_only=False)
        side = np.where(np.isfinite(column), column, side)
    if np.any(side <= 0):
        rows = np.flatnonzero(side <= 0)
        raise _offending(source, "row(s) with a non-positive tile side", rows, side[rows])
    labels = None
    if "labels" in table.column_names:
        column = table.column("labels")
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            labels = column
    country_codes = country_names = None
    if "country" in table.column_names:
        country_codes, country_names = categorical(table.column("country"), null_name="unknown")
    return PatchTable(
        table=table, source=source, patch_id=patch_ids, product_codes=product_codes, product_names=product_names,
        tile_codes=tile_index, tile_names=unique_tiles, x=x, y=y, epsg=epsg,
        centre_x=centre_x, centre_y=centre_y, tile_side_m=side, labels=labels,
        country_codes=country_codes, country_names=country_names,
    )


def load_patches(path: str | Path, tile_side_m: float | None = None) -> PatchTable:
    """Read and validate INPUT (archive directory, ``patches.parquet`` or any parquet with ``patch_id``)."""
    table, file = read_input_table(path)
    return patches_from_table(table, source=str(file), tile_side_m=tile_side_m)


# --------------------------------------------------------------------------- strategies


class SplitStrategy:
    """A split strategy: ``assign(patches) -> object[n]`` of split names or None (left out).

    Attributes:
        name: the registry name used on the command line.
        intended_ratios: the share of patches each split is meant to get.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    intended_ratios: dict[str, float] = {"train": 0.5, "validation": 0.25, "test": 0.25}

    def assign(self, patches: PatchTable) -> np.ndarray:
        raise NotImplementedError

    def options(self) -> dict:
        """The strategy's parameters, for reports."""
        return {}


class RebenSplit(SplitStrategy):
    """SPEC section 5: rings around each tile's border (train), then validation, test in the centre.

    Args:
        tile_side_m: overrides the per-patch tile side (default: the patch table's ``tile_side_m``).
    """

    name = "reben"
    description = "reBEN geography-based split: border ring train, middle ring validation, central square test (SPEC 5)"

    def __init__(self, tile_side_m: float | None = None) -> None:
        self.tile_side_m = tile_side_m

    def assign(self, patches: PatchTable) -> np.ndarray:
        side = patches.tile_side_m if self.tile_side_m is None else self.tile_side_m
        return reben_split(patches.x, patches.y, side)

    def options(self) -> dict:
        return {"tile_side_m": self.tile_side_m}


_V1_ARRANGEMENTS = np.array(sorted(set(itertools.permutations(("train", "train", "validation", "test")))), dtype=object)
"""The 12 distinct ways to place two train, one validation and one test patch in a 2x2 block."""


def _splitmix64(values: np.ndarray) -> np.ndarray:
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _tile_hashes(tile_codes: np.ndarray, tile_names: Sequence[str], seed: int) -> np.ndarray:
    hashes = np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}:{t}".encode(), digest_size=8).digest(), "little") for t in tile_names],
        dtype=np.uint64,
    )
    return hashes[tile_codes]


class V1BlockSplit(SplitStrategy):
    """BigEarthNet v1's scheme: 2x2 blocks of patches per tile, two train, one validation, one test.

    Block ``(x // 2, y // 2)`` of a tile gets one of the 12 arrangements, drawn from a hash
    of (seed, tile, block): the same for every acquisition of the tile, independent of row
    order. Incomplete blocks at the tile's edge keep their drawn positions.
    """

    name = "v1-blocks"
    description = "BigEarthNet v1: 2x2 blocks of patches per tile, 2 train / 1 validation / 1 test, positions drawn with a fixed seed"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def assign(self, patches: PatchTable) -> np.ndarray:
        with np.errstate(over="ignore"):
            key = _tile_hashes(patches.tile_codes, patches.tile_names, self.seed)
            key ^= _splitmix64((patches.x // 2).astype(np.uint64) << np.uint64(32) | (patches.y // 2).astype(np.uint64))
            arrangement = (_splitmix64(key) % np.uint64(len(_V1_ARRANGEMENTS))).astype(np.int64)
        position = (patches.x % 2) + 2 * (patches.y % 2)
        return _V1_ARRANGEMENTS[arrangement, position]

    def options(self) -> dict:
        return {"seed": self.seed}


class SpatialBlockSplit(SplitStrategy):
    """Square blocks of a common grid (EPSG:3035) across tiles and zones, label-balanced, with a buffer.

    1. Each patch centre falls in block ``floor(E / block), floor(N / block)`` of EPSG:3035;
       every acquisition of a place lands in the same block.
    2. Blocks are assigned greedily, largest first, to the split whose cost drops most:
       cost = sum over splits and features of ``w * ((assigned - ratio * total) / total)^2``,
       features = patch count, each label's count and each country's count (weight 1 each,
       the patch count weighing as much as all others together; ``balance_labels=False`` /
       ``balance_countries=False`` leave labels / countries out).
    3. Buffer: a train patch whose centre lies within ``buffer_m`` (x 1.01) of a validation or
       test patch, and a validation patch that close to a test patch, is left out (None), so
       test stays whole and every remaining cross-split pair is > ``buffer_m`` apart. Since the
       buffer costs mostly train, steps 2-3 run once more with each split's target share divided
       by the fraction of its patches the first buffer kept.

    Args:
        block_size_m: side of the blocks in metres; None: 30 km, halved while the patches fall
            into fewer than 16 blocks, but not below three buffer widths (or 6 patches without a
            buffer), so small regions still get several blocks. The size used is in ``options()``.
        buffer_m: width of the buffer; 0 disables it.
        ratios: intended train / validation / test shares.
        balance_labels: balance label frequencies across splits, not only patch counts.
        balance_countries: balance country shares across splits (with a ``country`` column).
        seed: breaks ties between blocks of equal size.
    """

    name = "spatial-blocks"
    description = "square blocks of a common EPSG:3035 grid across tiles, label-balanced greedy assignment, buffer patches dropped between splits"

    DEFAULT_BLOCK_SIZE_M: ClassVar[float] = 30_000.0
    MIN_BLOCKS: ClassVar[int] = 16

    def __init__(
        self,
        block_size_m: float | None = None,
        buffer_m: float = 2_400.0,
        ratios: Sequence[float] = (0.5, 0.25, 0.25),
        balance_labels: bool = True,
        balance_countries: bool = True,
        seed: int = 0,
    ) -> None:
        if (block_size_m is not None and block_size_m <= 0) or buffer_m < 0:
            raise ValueError(f"block_size_m must be > 0 and buffer_m >= 0, got {block_size_m}, {buffer_m}")
        ratios = np.asarray(ratios, dtype=np.float64)
        if ratios.shape != (3,) or np.any(ratios < 0) or not math.isclose(ratios.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"ratios must be three non-negative shares summing to 1, got {list(ratios)}")
        self.block_size_m = None if block_size_m is None else float(block_size_m)
        self.used_block_size_m: float | None = self.block_size_m
        self.buffer_m = float(buffer_m)
        self.ratios = ratios
        self.balance_labels = bool(balance_labels)
        self.balance_countries = bool(balance_countries)
        self.seed = int(seed)
        self.intended_ratios = dict(zip(SPLITS, (float(r) for r in ratios)))

    def options(self) -> dict:
        return {
            "block_size_m": self.used_block_size_m, "block_size_auto": self.block_size_m is None,
            "buffer_m": self.buffer_m, "ratios": self.ratios.tolist(),
            "balance_labels": self.balance_labels, "balance_countries": self.balance_countries, "seed": self.seed, "grid_crs": COMMON_GRID_CRS,
        }

    @staticmethod
    def _blocks(points: np.ndarray, size: float) -> np.ndarray:
        cells = np.floor(points / size).astype(np.int64)
        cells -= cells.min(axis=0)
        keys = cells[:, 0] * (int(cells[:, 1].max()) + 1) + cells[:, 1]
        _, inverse = np.unique(keys, return_inverse=True)
        return inverse.reshape(-1)

    def block_size_for(self, patches: PatchTable) -> float:
        """The block side used for ``patches`` (see ``block_size_m``)."""
        if self.block_size_m is not None:
            return self.block_size_m
        floor = 3 * self.buffer_m if self.buffer_m > 0 else 6 * PATCH_SIDE_M
        size = self.DEFAULT_BLOCK_SIZE_M
        while size / 2 >= floor and int(self._blocks(patches.common_grid, size).max()) + 1 < self.MIN_BLOCKS:
            size /= 2
        return size

    def block_index(self, patches: PatchTable) -> np.ndarray:
        """int64[n] index of each patch's block (blocks numbered in sorted grid order)."""
        self.used_block_size_m = self.block_size_for(patches)
        return self._blocks(patches.common_grid, self.used_block_size_m)

    def assign_blocks(self, features: np.ndarray, weights: np.ndarray, ratios: np.ndarray | None = None) -> np.ndarray:
        """Greedy assignment of blocks to splits.

        Args:
            features: float64[blocks, f] per-block counts (column 0 = patches).
            weights: float64[f] weight of each feature in the cost.
            ratios: float64[3] target shares (default: the intended ratios).

        Returns:
            int64[blocks] split index (0 train, 1 validation, 2 test).
        """
        totals = features.sum(axis=0)
        totals[totals == 0] = 1.0
        scaled = features / totals
        ratios = self.ratios if ratios is None else np.asarray(ratios, dtype=np.float64)
        target = ratios[:, None] * (features.sum(axis=0) / totals)[None, :]
        assigned = np.zeros_like(target)
        rng = np.random.default_rng(self.seed)
        order = np.lexsort((rng.random(len(features)), -features[:, 0]))
        choice = np.empty(len(features), dtype=np.int64)
        active = ratios > 0
        for block in order:
            row = scaled[block]
            before = ((assigned - target) ** 2) @ weights
            after = ((assigned + row - target) ** 2) @ weights
            gain = np.where(active, after - before, np.inf)
            split = int(np.argmin(gain))
            choice[block] = split
            assigned[split] += row
        return choice

    def assign(self, patches: PatchTable) -> np.ndarray:
        blocks = self.block_index(patches)
        n_blocks = int(blocks.max()) + 1
        columns = [np.bincount(blocks, minlength=n_blocks).astype(np.float64)]
        weights = [1.0]
        labels = patches.label_matrix() if self.balance_labels else None
        if labels is not None and labels[0].shape[1]:
            matrix = labels[0]
            per_block = np.zeros((n_blocks, matrix.shape[1]))
            np.add.at(per_block, blocks, matrix.astype(np.float64))
            columns.extend(per_block.T)
            weights.extend([1.0] * matrix.shape[1])
        if self.balance_countries and patches.country_codes is not None and len(patches.country_names) > 1:
            per_block = np.zeros((n_blocks, len(patches.country_names)))
            np.add.at(per_block, (blocks, patches.country_codes), 1.0)
            columns.extend(per_block.T)
            weights.extend([1.0] * len(patches.country_names))
        # the patch count weighs as much as all label and country columns together
        weights[0] = max(1.0, float(len(weights) - 1))
        features = np.column_stack(columns)
        weights = np.asarray(weights)
        split_index = self.assign_blocks(features, weights)[blocks]
        drop = np.zeros(len(split_index), dtype=bool)
        if self.buffer_m > 0:
            drop = self.buffer_mask(patches.geocentric, split_index)
            # One correction pass: the buffer eats mostly train, so aim each split's block share
            # at ratio / kept-fraction to land near the intended shares among the kept patches.
            assigned = np.bincount(split_index, minlength=3).astype(np.float64)
            kept = np.bincount(split_index[~drop], minlength=3).astype(np.float64)
            keep_rate = np.where(kept > 0, kept / np.maximum(assigned, 1.0), 1.0)
            adjusted = self.ratios / keep_rate
            split_index = self.assign_blocks(features, weights, adjusted / adjusted.sum())[blocks]
            drop = self.buffer_mask(patches.geocentric, split_index)
        out = np.array(SPLITS, dtype=object)[split_index]
        out[drop] = None
        return out

    def buffer_mask(self, points: np.ndarray, split_index: np.ndarray) -> np.ndarray:
        """bool[n]: train patches near validation/test and validation patches near test."""
        from scipy.spatial import cKDTree

        reach = self.buffer_m * 1.01
        drop = np.zeros(len(points), dtype=bool)
        for lower in (0, 1):
            mine = np.flatnonzero(split_index == lower)
            higher = np.flatnonzero(split_index > lower)
            if len(mine) == 0 or len(higher) == 0:
                continue
            distance, _ = cKDTree(points[higher]).query(points[mine], k=1, distance_upper_bound=reach, workers=2)
            drop[mine[np.isfinite(distance)]] = True
        return drop


STRATEGIES: dict[str, type[SplitStrategy]] = {
    RebenSplit.name: RebenSplit,
    V1BlockSplit.name: V1BlockSplit,
    SpatialBlockSplit.name: SpatialBlockSplit,
}


def get_strategy(name: str, **options) -> SplitStrategy:
    """An instance of the strategy called ``name`` with ``options`` (None values are dropped)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown split strategy {name!r}; choose from {sorted(STRATEGIES)}") from None
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if v is not None and k in accepted})


def split_counts(splits: np.ndarray) -> dict[str, int]:
    """Patches per split name, plus ``excluded`` for patches left out (None)."""
    values = np.asarray(splits, dtype=object)
    counts = {s: int(np.count_nonzero(values == s)) for s in SPLITS}
    counts["excluded"] = int(len(values) - sum(counts.values()))
    return counts


def with_split_column(table: pa.Table, splits: np.ndarray, column: str = "split") -> pa.Table:
    """``table`` with ``column`` replaced (same position) or appended; schema metadata kept."""
    array = pa.array(list(splits), type=pa.string())
    if column in table.column_names:
        index = table.column_names.index(column)
        table = table.set_column(index, pa.field(column, pa.string()), array)
    else:
        table = table.append_column(pa.field(column, pa.string()), array)
    return table


def split_file(
    input_path: str | Path,
    out_path: str | Path,
    strategy: str | SplitStrategy = "reben",
    tile_side_m: float | None = None,
    **options,
) -> dict[str, int]:
    """Assign ``strategy``'s split to every row of INPUT and write them to ``out_path`` (parquet).

    The input is validated completely before anything is written; the output is written
    through a temporary file and a rename. Rows keep their order and columns; ``split``
    is replaced or added (null for patches the strategy leaves out).

    Returns:
        patches per split (see :func:`split_counts`).
    """
    patches = load_patches(input_path, tile_side_m=tile_side_m)
    chosen = strategy if isinstance(strategy, SplitStrategy) else get_strategy(strategy, tile_side_m=tile_side_m, **options)
    splits = chosen.assign(patches)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(with_split_column(patches.table, splits), out_path)
    return split_counts(splits)
