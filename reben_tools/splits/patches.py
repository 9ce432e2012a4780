"""The patch tables split strategies and the audit work on, and loading them from parquet inputs.

Inputs (:func:`load_patches`): an archive directory (its ``patches.parquet``), a
``patches.parquet`` or any parquet with a ``patch_id`` column (e.g. reBEN's
``metadata.parquet``). Positions come from the ``ulx``/``uly``/``crs`` columns
where present, otherwise from the MGRS tile plus ``x`` and ``y`` — parsed from the
patch id, or taken from ``tile``/``x``/``y`` columns for ids that are not reBEN ids —
(:mod:`reben_tools.geo.mgrs_grid`). The tile side is the ``tile_side_m`` column, else
the ``tile_side_m`` option, else the archive's ``patches.parquet`` beside INPUT, else the
extent each MGRS tile's patch grid reaches (:func:`grid_tile_side`; 109,800 m for a full tile).

Owns: :class:`PatchTable`, :class:`SplitInputError`, reading and validating INPUT
(:func:`resolve_input`, :func:`read_input_table`, :func:`patches_from_table`,
:func:`load_patches`), :func:`categorical`, and the grid constants (patch side, common grid CRS).
Does not own: split strategies and writing split files (``splits.strategies``), the audit
(``splits.audit*``), MGRS tile geometry (``geo.mgrs_grid``).
May import: ``format`` (layout, metadata, naming, sources), ``geo``, numpy, pyarrow, pyproj (lazily).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reben_tools.format.layout import FLAGGED_METADATA_FILE, METADATA_FILE, PATCHES_FILE, ArchiveError
from reben_tools.format.metadata import read_metadata
from reben_tools.format.naming import PATCH_ID_PATTERN
from reben_tools.format.sources import ArchiveSource
from reben_tools.geo.mgrs_grid import TILE_SIDE_M, TileGrid, UnknownTileError, tile_grid

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


def _offending(
    source: str, what: str, rows: np.ndarray, values: Sequence[object] | np.ndarray, hint: str = ""
) -> SplitInputError:
    rows = np.asarray(rows)
    listed = ", ".join(
        f"row {int(r)}: {v!r}" for r, v in zip(rows[:MAX_LISTED_ROWS], values[:MAX_LISTED_ROWS], strict=True)
    )
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


def categorical(
    values: pa.Array[Any] | pa.ChunkedArray[Any], null_name: str | None = None
) -> tuple[np.ndarray, list[str]]:
    """Integer codes of string values and the sorted distinct names (Arrow hashing, no Python loop).

    Returns:
        (int64[n] index into the names, -1 for nulls unless ``null_name`` replaces them; names).
    """
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    if null_name is not None:
        array = array.cast(pa.string()).fill_null(null_name)
    encoded = cast("pa.DictionaryArray[Any, Any]", pc.dictionary_encode(array))
    names = [str(v) for v in encoded.dictionary.to_pylist()]
    order = np.argsort(np.array(names, dtype=object), kind="stable") if names else np.empty(0, np.int64)
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
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
        tile_side_source: where ``tile_side_m`` came from, in words (for messages and reports).
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
    labels: pa.ChunkedArray[Any] | None = None
    country_codes: np.ndarray | None = None
    country_names: list[str] | None = None
    tile_side_source: str = "the tile_side_m column"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.patch_id)

    @property
    def tile(self) -> np.ndarray:
        """object[n] MGRS tile of each patch."""
        return np.asarray(np.array(self.tile_names, dtype=object)[self.tile_codes])

    @property
    def product(self) -> np.ndarray:
        """object[n] product prefix (acquisition) of each patch."""
        return np.asarray(np.array(self.product_names, dtype=object)[self.product_codes])

    @property
    def country(self) -> np.ndarray | None:
        """object[n] country of each patch (``unknown`` for nulls), or None."""
        if self.country_codes is None:
            return None
        return np.asarray(np.array(self.country_names, dtype=object)[self.country_codes])

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
            [
                radius * np.cos(lat) * np.cos(lon),
                radius * np.cos(lat) * np.sin(lon),
                radius * (1.0 - _WGS84_E2) * sin_lat,
            ]
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
        return cast("tuple[np.ndarray, list[str]] | None", self._cache["label_matrix"])


def _string_column(table: pa.Table, name: str, source: str) -> pa.Array[Any]:
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
        placed = (
            column_tile.is_valid().to_numpy(zero_copy_only=False)
            & ~np.isnan(column_x.astype(float))
            & ~np.isnan(column_y.astype(float))
        )
    else:
        placed = np.zeros(len(ids), dtype=bool)
    bad = np.flatnonzero((~parsed & ~placed) | ~ids.is_valid().to_numpy(zero_copy_only=False))
    if len(bad):
        values = [ids[int(i)].as_py() for i in bad[:MAX_LISTED_ROWS]]
        raise _offending(
            source,
            "malformed or missing patch id(s)",
            bad,
            values,
            " (expected e.g. S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57)",
        )
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
    parsed_x = cast("pa.Array[Any]", pc.cast(pc.if_else(valid, parts.field("x"), "-1"), pa.int64())).to_numpy()
    parsed_y = cast("pa.Array[Any]", pc.cast(pc.if_else(valid, parts.field("y"), "-1"), pa.int64())).to_numpy()
    if has_grid_columns:
        both = parsed & placed
        tile_text = column_tile.to_numpy(zero_copy_only=False).astype(object)
        disagree = both & (
            (tile_text != parsed_tile.to_numpy(zero_copy_only=False).astype(object))
            | (np.where(placed, column_x, -1) != parsed_x)
            | (np.where(placed, column_y, -1) != parsed_y)
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
    grids: list[TileGrid] = []
    unknown: list[int] = []
    for i, name in enumerate(unique_tiles):
        try:
            grids.append(tile_grid(str(name)))
        except UnknownTileError:
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
    if tile_side_m is not None:
        side, side_source = np.full(len(x), float(tile_side_m)), "the --tile-side-m option"
    else:
        side, side_source = grid_tile_side(tile_index, x, y), "the patch grid of each MGRS tile"
    if "tile_side_m" in table.column_names:
        column = pc.cast(table.column("tile_side_m"), pa.float64()).to_numpy(zero_copy_only=False)
        if np.isfinite(column).any():
            side_source = (
                "the tile_side_m column" if np.isfinite(column).all() else f"the tile_side_m column, else {side_source}"
            )
        side = np.where(np.isfinite(column), column, side)
    if np.any(side <= 0):
        rows = np.flatnonzero(side <= 0)
        raise _offending(source, "row(s) with a non-positive tile side", rows, side[rows])
    labels: pa.ChunkedArray[Any] | None = None
    if "labels" in table.column_names:
        labels_column = table.column("labels")
        if pa.types.is_list(labels_column.type) or pa.types.is_large_list(labels_column.type):
            labels = labels_column
    country_codes = country_names = None
    if "country" in table.column_names:
        country_codes, country_names = categorical(table.column("country"), null_name="unknown")
    return PatchTable(
        table=table,
        source=source,
        patch_id=patch_ids,
        product_codes=product_codes,
        product_names=product_names,
        tile_codes=tile_index,
        tile_names=unique_tiles,
        x=x,
        y=y,
        epsg=epsg,
        centre_x=centre_x,
        centre_y=centre_y,
        tile_side_m=side,
        labels=labels,
        country_codes=country_codes,
        country_names=country_names,
        tile_side_source=side_source,
    )


def grid_tile_side(tile_index: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The tile side of each patch from the extent its MGRS tile's patch grid reaches.

    An S2 product of a full MGRS tile is 109,800 m wide: 91 patches of 1,200 m and a 600 m
    strip the grid leaves out. A smaller product (generated, cropped) of ``n`` patches a side
    likewise measures ``n * 1,200 + 600`` m. Per tile, ``n`` is one more than the largest
    ``x`` or ``y`` any of its patches has; a tile whose grid reaches the 91st patch is full.
    A tile whose patches fill less than half of its ``n x n`` grid is a sample of a larger
    product, not a small product, and is taken as full too.

    Args:
        tile_index: int64[n] tile code of each patch.
        x, y: int64[n] patch column / row inside the tile.

    Returns:
        float64[n] tile side in metres.
    """
    reach = np.zeros(int(tile_index.max()) + 1, dtype=np.int64)
    np.maximum.at(reach, tile_index, np.maximum(x, y).astype(np.int64) + 1)
    positions = np.unique(np.stack([tile_index, x, y]).astype(np.int64), axis=1)
    filled = np.bincount(positions[0], minlength=len(reach))
    sides = np.minimum(reach * PATCH_SIDE_M + PATCH_SIDE_M / 2, FULL_TILE_SIDE_M)
    sides = np.where(filled * 2 >= reach * reach, sides, FULL_TILE_SIDE_M)
    return np.asarray(sides[tile_index], dtype=np.float64)


def load_patches(path: str | Path | ArchiveSource, tile_side_m: float | None = None) -> PatchTable:
    """Read and validate INPUT (archive directory, ``patches.parquet`` or any parquet with ``patch_id``,
    or an :class:`ArchiveSource`: an archive's own files as its directory, otherwise the rows of its
    metadata files, e.g. a plain reBEN LMDB's).

    A file without a ``tile_side_m`` column (reBEN's ``metadata.parquet``) takes the tile side
    of each patch from the archive's ``patches.parquet`` beside it, where there is one and no
    ``tile_side_m`` option is given; otherwise see :func:`patches_from_table`.
    """
    if isinstance(path, ArchiveSource) and path.origin == "archive":
        path = path.path
    if isinstance(path, ArchiveSource):
        try:
            table, file = read_metadata(path.metadata_files(include_flagged=True)), path.metadata[0]
        except ArchiveError as exc:
            raise SplitInputError(str(exc)) from None
        beside = (path.path if path.kind == "archive" else file.parent) / PATCHES_FILE
    else:
        table, file = read_input_table(path)
        beside = file.parent / PATCHES_FILE
    if (
        tile_side_m is None
        and "tile_side_m" not in table.column_names
        and file.name != PATCHES_FILE
        and beside.is_file()
    ):
        sides = _sides_beside(beside, table)
        if sides is not None:
            patches = patches_from_table(table.append_column("tile_side_m", sides), source=str(file))
            patches.table = table
            known = np.isfinite(sides.to_numpy(zero_copy_only=False)).all()
            patches.tile_side_source = f"{beside}" + ("" if known else " (else the patch grid of each MGRS tile)")
            return patches
    return patches_from_table(table, source=str(file), tile_side_m=tile_side_m)


def _sides_beside(beside: Path, table: pa.Table) -> pa.Array[Any] | None:
    """``tile_side_m`` of ``table``'s patches from an archive's ``patches.parquet`` (nulls where absent)."""
    try:
        other = pq.read_table(beside, columns=["patch_id", "tile_side_m"])
    except (OSError, pa.ArrowException, KeyError):
        return None
    ids = other.column("patch_id").to_pylist()
    values = pc.cast(other.column("tile_side_m"), pa.float64()).to_pylist()
    lookup = dict(zip(ids, values, strict=True))
    return pa.array([lookup.get(pid) for pid in table.column("patch_id").to_pylist()], pa.float64())
