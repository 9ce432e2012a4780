"""The reben-tools archive: LMDB shards of safetensors values plus metadata (SPEC sections 7, 8).

Layout of an archive directory::

    ARCHIVE/
      manifest.json                      format, band table, shards, statistics, provenance
      metadata.parquet                   reBEN schema, patches without snow/cloud/shadow
      metadata_for_patches_with_snow_cloud_or_shadow.parquet
      patches.parquet                    GeoParquet: footprint, tile, x, y, crs, shard, ...
      report.json                        inputs skipped, each with file/key and reason
      shards/<name>/data.mdb             one plain LMDB environment per shard
      shards/<name>/shard.json           the shard's ShardInfo
      shards/<name>/keys.parquet         key, value size and CRC-32 of every value (locates faults)
      shards/<name>/rows.parquet         the patch rows the shard's writer produced (optional)

A shard is written into a temporary directory and renamed into place, so a
shard directory under ``shards/`` is always complete. Keys are inserted in
sorted order and the map size is derived from the content, so the same items
give a byte-identical ``data.mdb``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb
import pyarrow as pa
import pyarrow.parquet as pq

from reben_tools import __version__
from reben_tools.format.bands import ALL_BANDS

FORMAT_NAME = "reben-tools-archive"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
METADATA_FILE = "metadata.parquet"
FLAGGED_METADATA_FILE = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
PATCHES_FILE = "patches.parquet"
REPORT_FILE = "report.json"
SHARDS_DIR = "shards"
SHARD_INFO_FILE = "shard.json"
SHARD_ROWS_FILE = "rows.parquet"
SHARD_KEYS_FILE = "keys.parquet"
"""Per-key value size and CRC-32 of a shard, so ``reben verify`` can name a corrupt key."""
LMDB_PAGE = 4096

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

PATCH_INDEX_FIELDS: tuple[pa.Field, ...] = (
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
SPLITS = ("train", "validation", "test")


class ArchiveError(RuntimeError):
    """An archive or one of its files is missing, inconsistent or corrupt; the message names it."""


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records of a shard.

    Attributes:
        name: directory name under ``shards/``.
        entries: number of keys.
        value_bytes: sum of the value sizes in bytes.
        sha256: hex digest over the sorted (key, value) stream, see :func:`content_digest`.
        file_bytes: size of ``data.mdb`` in bytes.
    """

    name: str
    entries: int
    value_bytes: int
    sha256: str
    file_bytes: int


class ContentDigest:
    """sha256 over ``len(key) u32 | key | len(value) u64 | value`` for keys in sorted order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, key: bytes, value: bytes | memoryview) -> None:
        self._hash.update(struct.pack("<I", len(key)))
        self._hash.update(key)
        self._hash.update(struct.pack("<Q", len(value)))
        self._hash.update(value)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def map_size_for(items: Iterable[tuple[bytes, bytes | memoryview]]) -> int:
    """A deterministic LMDB map size that fits ``items`` (values go to overflow pages)."""
    pages = 0
    for key, value in items:
        pages += (len(key) + len(value) + 64) // LMDB_PAGE + 2
    return max(pages * LMDB_PAGE * 2, 1 << 24)


def _sorted_encoded(items: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> list[tuple[bytes, bytes]]:
    pairs = items.items() if isinstance(items, Mapping) else items
    encoded: dict[bytes, bytes] = {}
    for key, value in pairs:
        raw_key = key.encode("utf-8")
        if not 0 < len(raw_key) <= 511:
            raise ArchiveError(f"key {key[:80]!r} is {len(raw_key)} bytes; LMDB keys must be 1..511 bytes")
        if raw_key in encoded and encoded[raw_key] != bytes(value):
            raise ArchiveError(f"key {key!r} given twice with different values")
        encoded[raw_key] = bytes(value)
    return sorted(encoded.items())


def write_lmdb(
    path: Path, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]], keys_file: str | None = None
) -> ShardInfo:
    """Write ``items`` into a new LMDB environment directory ``path`` in sorted key order.

    ``path`` must not exist. Not atomic on its own: see :func:`write_shard`.
    With ``keys_file``, also writes ``path/keys_file``: a parquet table of
    ``key, value_bytes, crc32`` (CRC-32 of each value) in key order.
    """
    pairs = _sorted_encoded(items)
    path.mkdir(parents=True)
    digest = ContentDigest()
    checksums = []
    env = lmdb.open(str(path), map_size=map_size_for(pairs), subdir=True, lock=False, sync=True, metasync=True)
    try:
        with env.begin(write=True) as txn:
            cursor = txn.cursor()
            for key, value in pairs:
                cursor.put(key, value, append=True)
                digest.update(key, value)
                if keys_file:
                    checksums.append(zlib.crc32(value))
        env.sync(True)
    finally:
        env.close()
    if keys_file:
        keys_table = pa.table(
            {
                "key": pa.array([k.decode("utf-8") for k, _ in pairs], pa.string()),
                "value_bytes": pa.array([len(v) for _, v in pairs], pa.int64()),
                "crc32": pa.array(checksums, pa.int64()),
            }
        )
        pq.write_table(keys_table, path / keys_file)
    return ShardInfo(
        name=path.name,
        entries=len(pairs),
        value_bytes=sum(len(v) for _, v in pairs),
        sha256=digest.hexdigest(),
        file_bytes=(path / "data.mdb").stat().st_size,
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(
    shards_dir: Path,
    name: str,
    items: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
    rows: pa.Table | None = None,
) -> ShardInfo:
    """Write one shard atomically: into ``shards_dir/.tmp-*`` first, then rename to ``shards_dir/name``.

    Also writes ``shard.json`` (the returned :class:`ShardInfo`), ``keys.parquet`` (per-key
    size and CRC-32, see :func:`write_lmdb`) and, when given,
    ``rows.parquet`` (the patch rows this shard's writer produced) inside the shard
    directory, so a shard and its rows appear together or not at all. An existing
    shard of that name is replaced.
    """
    if "/" in name or name.startswith(".") or not name:
        raise ArchiveError(f"invalid shard name {name!r}")
    shards_dir.mkdir(parents=True, exist_ok=True)
    tmp = shards_dir / f".tmp-{name}-{uuid.uuid4().hex}"
    try:
        info = write_lmdb(tmp, items, keys_file=SHARD_KEYS_FILE)
        info = ShardInfo(**{**asdict(info), "name": name})
        if rows is not None:
            pq.write_table(rows, tmp / SHARD_ROWS_FILE)
        _write_json_file(tmp / SHARD_INFO_FILE, asdict(info))
        final = shards_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(shards_dir)
    except (OSError, lmdb.Error, pa.ArrowException) as exc:
        # a full disk (ENOSPC, or EFBIG past a file-size limit) or an I/O error: nothing of
        # the shard is left in place, and the message names the shard
        full = isinstance(exc, lmdb.Error) or getattr(exc, "errno", None) in (
            errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO)
        hint = "; is the disk full?" if full else ""
        raise ArchiveError(f"{shards_dir / name}: cannot write shard ({type(exc).__name__}: {exc}{hint})") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return info


def read_shard_info(shard_dir: Path) -> ShardInfo:
    """The ShardInfo a finished shard carries; raises ArchiveError naming the file if unreadable."""
    path = shard_dir / SHARD_INFO_FILE
    try:
        return ShardInfo(**json.loads(path.read_text("utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ArchiveError(f"{path}: cannot read shard info ({exc})") from None


ARCHIVE_FILES = (MANIFEST_FILE, METADATA_FILE, FLAGGED_METADATA_FILE, PATCHES_FILE, REPORT_FILE)


def remove_stale_temporaries(shards_dir: Path) -> list[Path]:
    """Delete ``.tmp-*`` shard directories an interrupted writer left behind; returns them.

    Also deletes (without returning them) the temporary files of interrupted atomic writes
    of the archive-level files next to ``shards_dir`` (``.manifest.json.tmp-*`` etc.), so a
    resumed run leaves no trace of the interrupted one."""
    removed = []
    if shards_dir.is_dir():
        for tmp in sorted(shards_dir.glob(".tmp-*")):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    for name in ARCHIVE_FILES:
        for tmp in shards_dir.parent.glob(f".{name}.tmp-*"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
    return removed


@contextmanager
def _replaced_atomically(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling ``.<name>.tmp-<uuid>`` of ``path`` to write; when the block
    exits normally, rename it onto ``path``. The temporary file never outlives the block."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json_file(path: Path, data: object) -> None:
    with _replaced_atomically(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    _write_json_file(path, data)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write a parquet file through a temporary file and a rename."""
    with _replaced_atomically(path) as tmp:
        pq.write_table(table, tmp)


def write_patches_parquet(path: Path, rows: pa.Table, footprints: list) -> None:
    """Write ``patches.parquet``: GeoParquet of ``rows`` with ``footprints`` (shapely polygons in
    EPSG:4326, one per row, same order) as its geometry, through a temporary file and a rename."""
    import geopandas as gpd
    import pandas as pd

    frame = rows.to_pandas(types_mapper={pa.int32(): pd.Int32Dtype()}.get)
    frame = gpd.GeoDataFrame(frame, geometry=list(footprints), crs="EPSG:4326")
    with _replaced_atomically(path) as tmp:
        frame.to_parquet(tmp, index=False)


def metadata_table(rows: pa.Table | Iterable[Mapping]) -> pa.Table:
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


def write_metadata(archive_dir: Path, rows: pa.Table | Iterable[Mapping]) -> tuple[int, int]:
    """Write ``metadata.parquet`` and the snow/cloud/shadow file; returns their row counts."""
    table = metadata_table(rows)
    flagged = pa.compute.or_(table["contains_seasonal_snow"], table["contains_cloud_or_shadow"])
    clean = table.filter(pa.compute.invert(flagged))
    dirty = table.filter(flagged)
    write_parquet_atomic(clean, archive_dir / METADATA_FILE)
    write_parquet_atomic(dirty, archive_dir / FLAGGED_METADATA_FILE)
    return clean.num_rows, dirty.num_rows


def read_metadata(paths: Iterable[Path]) -> pa.Table:
    """Read and concatenate reBEN metadata parquet files, checking their schema; sorted by patch_id."""
    paths = list(paths)
    tables = []
    for path in paths:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"{path}: cannot read metadata parquet ({exc})") from None
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


def band_table() -> list[dict]:
    """The manifest's band table: name, modality, native resolution, dtype and patch shape."""
    return [
        {"name": b.name, "modality": b.modality, "resolution_m": b.resolution_m, "dtype": b.dtype,
         "shape": [b.size, b.size]}
        for b in ALL_BANDS.values()
    ]


def build_manifest(
    shards: Iterable[ShardInfo],
    counts: Mapping[str, object],
    statistics: Mapping[str, tuple[float, float]],
    inputs: list[str],
    config: Mapping[str, object],
    tool: str,
) -> dict:
    """The manifest dictionary (see ``schemas/manifest.schema.json``); no timestamps, so it is reproducible."""
    shard_list = sorted(shards, key=lambda s: s.name)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "bands": band_table(),
        "value_kinds": {
            "S2": {"key": "<patch_id>", "tensors": [b for b in ALL_BANDS if ALL_BANDS[b].modality == "S2"], "value_bytes": 160_832},
            "S1": {"key": "<s1_name>", "tensors": ["VV", "VH"], "value_bytes": 115_344},
            "reference_map": {"key": "<patch_id>_reference_map", "tensors": ["Data"], "dtype": "uint16", "shape": [120, 120]},
        },
        "shards": [asdict(s) for s in shard_list],
        "totals": {
            "shards": len(shard_list),
            "entries": sum(s.entries for s in shard_list),
            "value_bytes": sum(s.value_bytes for s in shard_list),
        },
        "counts": dict(counts),
        "statistics": {
            "split": "train",
            "upsampling": "nearest",
            "bands": {band: {"mean": mean, "std": std} for band, (mean, std) in sorted(statistics.items())},
        },
        "provenance": {"tool": tool, "tool_version": __version__, "inputs": list(inputs), "config": dict(config)},
    }


def write_manifest(archive_dir: Path, manifest: Mapping) -> None:
    write_json_atomic(archive_dir / MANIFEST_FILE, manifest)


def read_manifest(archive_dir: Path) -> dict:
    path = Path(archive_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{path}: cannot read manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArchiveError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveError(f"{path}: format version {manifest.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    return manifest


def open_lmdb_readonly(path: Path) -> lmdb.Environment:
    """Open an LMDB environment the way reBEN readers do: read-only, no locks, no readahead."""
    if not (Path(path) / "data.mdb").is_file():
        raise ArchiveError(f"{path}: no data.mdb; not an LMDB environment directory")
    try:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, subdir=True, max_readers=1024)
    except lmdb.Error as exc:
        raise ArchiveError(f"{path}: cannot open LMDB environment ({exc})") from None


_SHARED_ENVIRONMENTS: dict[str, list] = {}
"""Open read-only environments of this process: resolved path -> [pid, environment, users].
py-lmdb refuses to open one environment twice in a process, so Archives over the same
files (e.g. a train and a validation dataset) share one handle."""


def _acquire_environment(path: Path) -> lmdb.Environment:
    key = str(Path(path).resolve())
    entry = _SHARED_ENVIRONMENTS.get(key)
    if entry is not None and entry[0] != os.getpid():
        # inherited through fork: LMDB handles must not cross a fork, and py-lmdb refuses a
        # second open while this process's copy is open, so close the copy (the parent's
        # handle is unaffected) and open afresh
        entry[1].close()
        entry = None
    if entry is None:
        entry = [os.getpid(), open_lmdb_readonly(path), 0]
        _SHARED_ENVIRONMENTS[key] = entry
    entry[2] += 1
    return entry[1]


def _release_environment(path: Path) -> None:
    key = str(Path(path).resolve())
    entry = _SHARED_ENVIRONMENTS.get(key)
    if entry is not None and entry[0] == os.getpid():
        entry[2] -= 1
        if entry[2] <= 0:
            entry[1].close()
            del _SHARED_ENVIRONMENTS[key]


def iter_lmdb(path: Path) -> Iterator[tuple[str, bytes]]:
    """Every (key, value) of an LMDB environment in key order."""
    env = _acquire_environment(path)  # shares a handle an Archive of this process may hold
    try:
        with env.begin(buffers=False) as txn:
            for key, value in txn.cursor():
                yield key.decode("utf-8"), value
    finally:
        _release_environment(path)


class Archive:
    """Read access to a reben-tools archive or to a plain reBEN LMDB directory.

    Environments are opened lazily, read-only and without locks, once per process:
    an ``Archive`` built before a DataLoader forks opens fresh handles in each worker.

    Args:
        path: an archive directory (with ``manifest.json``) or an LMDB directory (with ``data.mdb``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if (self.path / MANIFEST_FILE).is_file():
            self.manifest: dict | None = read_manifest(self.path)
            self.shard_names = [s["name"] for s in self.manifest["shards"]]
            self.shard_paths = [self.path / SHARDS_DIR / n for n in self.shard_names]
        elif (self.path / "data.mdb").is_file():
            self.manifest = None
            self.shard_names = [self.path.name]
            self.shard_paths = [self.path]
        else:
            raise ArchiveError(f"{self.path}: neither a reben-tools archive (manifest.json) nor an LMDB directory (data.mdb)")
        self._pid: int | None = None
        self._envs: list[lmdb.Environment] = []
        self._key_shard: dict[str, int] | None = None

    @property
    def is_sharded(self) -> bool:
        return self.manifest is not None

    def metadata_paths(self, include_flagged: bool = True) -> list[Path]:
        """The reBEN metadata files inside an archive directory."""
        names = [METADATA_FILE] + ([FLAGGED_METADATA_FILE] if include_flagged else [])
        return [self.path / n for n in names]

    def _ensure_open(self) -> None:
        if self._pid != os.getpid():
            self._envs = [_acquire_environment(p) for p in self.shard_paths]
            self._pid = os.getpid()

    def environments(self) -> list[lmdb.Environment]:
        """The open environments of this process, one per shard."""
        self._ensure_open()
        return self._envs

    def _shard_of(self, key: str) -> int | None:
        if len(self.shard_paths) == 1:
            return 0
        if self._key_shard is None:
            self._key_shard = self._build_key_index()
        return self._key_shard.get(key)

    def _build_key_index(self) -> dict[str, int]:
        index_of = {name: i for i, name in enumerate(self.shard_names)}
        table = pq.read_table(self.path / PATCHES_FILE, columns=["patch_id", "s1_name", "shard"])
        mapping: dict[str, int] = {}
        for pid, s1, shard in zip(*(table.column(c).to_pylist() for c in ("patch_id", "s1_name", "shard"))):
            i = index_of[shard]
            mapping[pid] = i
            mapping[pid + "_reference_map"] = i
            if s1:
                mapping[s1] = i
        return mapping

    def get(self, key: str) -> bytes:
        """The value stored under ``key``.

        Raises:
            KeyError: no shard holds ``key`` (the message names it).
        """
        self._ensure_open()
        raw = key.encode("utf-8", "surrogatepass")
        shard = self._shard_of(key) if 0 < len(raw) <= 511 else None  # longer keys cannot be in LMDB
        if shard is not None:
            with self._envs[shard].begin(buffers=False) as txn:
                value = txn.get(raw)
            if value is not None:
                return value
        raise KeyError(f"key {key!r} not found in archive {self.path}")

    @contextmanager
    def batch_reader(self) -> Iterator[BatchReader]:
        """Many zero-copy reads under one read transaction per shard.

        Yields a :class:`BatchReader`; each shard's transaction is opened on its first
        use and ended when the block exits. Values are memoryviews into the memory map,
        valid only inside the block: copy what you keep.
        """
        reader = BatchReader(self)
        try:
            yield reader
        finally:
            reader.close()

    def keys(self) -> Iterator[str]:
        """Every key of every shard (shard by shard, sorted within each)."""
        self._ensure_open()
        for env in self._envs:
            with env.begin() as txn:
                for key in txn.cursor().iternext(keys=True, values=False):
                    yield bytes(key).decode("utf-8")

    def close(self) -> None:
        if self._pid == os.getpid():
            for p in self.shard_paths:
                _release_environment(p)
        self._envs = []
        self._pid = None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_envs"] = []
        state["_pid"] = None
        return state


class BatchReader:
    """Zero-copy gets reusing one ``buffers=True`` read transaction per shard (see :meth:`Archive.batch_reader`)."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self._envs = archive.environments()
        self._txns: list[lmdb.Transaction | None] = [None] * len(self._envs)

    def get(self, key: str | bytes, shard: int | None = None) -> memoryview:
        """The value under ``key`` as a memoryview valid until the reader closes.

        Args:
            key: the archive key (str, or its UTF-8 bytes).
            shard: index of the shard holding the key (``Archive.shard_names`` order) when the
                caller knows it; otherwise it is looked up from ``patches.parquet``.

        Raises:
            KeyError: no shard holds ``key`` (the message names it).
        """
        raw = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else bytes(key)
        if not 0 < len(raw) <= 511:  # no LMDB key is empty or longer
            shard = None
        elif shard is None:
            shard = self._archive._shard_of(raw.decode("utf-8", "surrogatepass"))
        if shard is not None:
            txn = self._txns[shard]
            if txn is None:
                txn = self._txns[shard] = self._envs[shard].begin(buffers=True)
            value = txn.get(raw)
            if value is not None:
                return value
        raise KeyError(f"key {raw.decode('utf-8', 'replace')!r} not found in archive {self._archive.path}")

    def close(self) -> None:
        for txn in self._txns:
            if txn is not None:
                txn.abort()
        self._txns = [None] * len(self._envs)
