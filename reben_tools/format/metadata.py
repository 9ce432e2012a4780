"""reBEN's metadata files and the patch index (``patches.parquet``, shard ``rows.parquet``).

Owns: the reBEN metadata schema (:data:`METADATA_SCHEMA`), checking, writing and reading the
two metadata files, the patch-index columns (:data:`PATCH_INDEX_FIELDS`) and writing the
GeoParquet patch index.
Does not own: file names (``format.layout``), shards (``format.shards``), the manifest
(``format.manifest``), reading values (``format.reader``).
May import: ``format.layout``, ``format.atomic``, pyarrow, geopandas (lazily), shapely (type hints only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from reben_tools.format.atomic import replaced_atomically, write_parquet_atomic
from reben_tools.format.layout import FLAGGED_METADATA_FILE, METADATA_FILE, SPLITS, ArchiveError

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

METADATA_SCHEMA = pa.schema(
    [
        ("patch_id", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("split", pa.string()),
        ("country", pa.string()),
        ("s1_name", pa.string()),
        ("s2v1_name", pa.string()),
        ("contains_seasonal_snow", pa.bool_()),
        ("contains_cloud_or_shadow", pa.bool_()),
    ]
)
"""The exact schema of reBEN's two metadata files."""
METADATA_COLUMNS = tuple(METADATA_SCHEMA.names)

PATCH_INDEX_FIELDS: tuple[pa.Field[Any], ...] = (
    pa.field("patch_id", pa.string()),
    pa.field("s1_name", pa.string()),
    pa.field("s2v1_name", pa.string()),
    pa.field("labels", pa.list_(pa.string())),
    pa.field("split", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("tile", pa.string()),
    pa.field("x", pa.int32()),
    pa.field("y", pa.int32()),
    pa.field("crs", pa.string()),
    pa.field("ulx", pa.float64()),
    pa.field("uly", pa.float64()),
)
"""The columns every writer of ``patches.parquet`` and of shard ``rows.parquet`` files puts
first: readers resolve keys to shards from ``patch_id``/``s1_name``/``shard``, and place
patches from ``crs``/``ulx``/``uly`` (the S2 patch's upper-left corner in metres) or
``tile``/``x``/``y``. Writers append their own columns after these."""


def patch_rows_schema(*extra: tuple[str, pa.DataType]) -> pa.Schema:
    """:data:`PATCH_INDEX_FIELDS` followed by a writer's own ``(name, type)`` columns."""
    return pa.schema(list(PATCH_INDEX_FIELDS) + [pa.field(name, type_) for name, type_ in extra])


def write_patches_parquet(path: Path, rows: pa.Table, footprints: Sequence[BaseGeometry]) -> None:
    """Write ``patches.parquet``: GeoParquet of ``rows`` with ``footprints`` (shapely polygons in
    EPSG:4326, one per row, same order) as its geometry, through a temporary file and a rename."""
    import geopandas as gpd
    import pandas as pd

    def nullable_int32(type_: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
        return pd.Int32Dtype() if type_ == pa.int32() else None

    columns = rows.to_pandas(types_mapper=nullable_int32)
    frame = gpd.GeoDataFrame(columns, geometry=list(footprints), crs="EPSG:4326")
    with replaced_atomically(path) as tmp:
        frame.to_parquet(tmp, index=False)


def metadata_table(rows: pa.Table | Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows in reBEN's metadata schema, sorted by ``patch_id``.

    Accepts a pyarrow table (extra columns are dropped) or dict rows.

    Raises:
        ArchiveError: a column is missing, a patch id repeats, or a split is unknown.
    """
    if not isinstance(rows, pa.Table):
        rows = pa.Table.from_pylist(list(rows))
    missing = [c for c in METADATA_COLUMNS if c not in rows.column_names]
    if missing:
        raise ArchiveError(f"metadata rows lack column(s) {missing}")
    table = rows.select(list(METADATA_COLUMNS)).cast(METADATA_SCHEMA)
    ids = table.column("patch_id").to_pylist()
    empty = sum(1 for pid in ids if not pid)
    if empty:
        raise ArchiveError(f"metadata has {empty} row(s) with a null or empty patch_id")
    if len(set(ids)) != len(ids):
        seen, dupes = set(), []
        for pid in ids:
            if pid in seen:
                dupes.append(pid)
            seen.add(pid)
        raise ArchiveError(f"metadata repeats patch id(s) {dupes[:5]}")
    bad = sorted({s for s in table.column("split").to_pylist() if s not in SPLITS}, key=str)
    if bad:
        raise ArchiveError(f"metadata has unknown split value(s) {bad}; expected {list(SPLITS)}")
    return table.sort_by("patch_id")


def write_metadata(archive_dir: Path, rows: pa.Table | Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """Write ``metadata.parquet`` and the snow/cloud/shadow file; returns their row counts."""
    table = metadata_table(rows)
    flagged = pa.compute.or_(table["contains_seasonal_snow"], table["contains_cloud_or_shadow"])
    clean = table.filter(pa.compute.invert(flagged))
    dirty = table.filter(flagged)
    write_parquet_atomic(clean, archive_dir / METADATA_FILE)
    write_parquet_atomic(dirty, archive_dir / FLAGGED_METADATA_FILE)
    return clean.num_rows, dirty.num_rows


def read_metadata(paths: Iterable[Path]) -> pa.Table:
    """Read and concatenate reBEN metadata parquet files, checking their schema; sorted by patch_id.

    A file with no rows and no columns (how empty snow/cloud files are often written) counts
    as an empty metadata file.
    """
    paths = list(paths)
    tables = []
    for path in paths:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"{path}: cannot read metadata parquet ({exc})") from None
        if table.num_rows == 0 and table.num_columns == 0:
            # a zero-row file written without columns (e.g. pandas' empty DataFrame): no patches
            tables.append(METADATA_SCHEMA.empty_table())
            continue
        missing = [c for c in METADATA_COLUMNS if c not in table.column_names]
        if missing:
            raise ArchiveError(f"{path}: missing column(s) {missing}")
        try:
            tables.append(table.select(list(METADATA_COLUMNS)).cast(METADATA_SCHEMA))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ArchiveError(f"{path}: column types do not match the reBEN schema ({exc})") from None
    if not tables:
        raise ArchiveError("no metadata files given")
    try:
        return metadata_table(pa.concat_tables(tables))
    except ArchiveError as exc:
        raise ArchiveError(f"{', '.join(str(p) for p in paths)}: {exc}") from None
