"""Tools over a finished archive: verify it, merge its shards, export it back to GeoTIFFs.

- :func:`verify_archive` checks every shard against the manifest (entry count, value
  bytes, content sha256 via :class:`reben_tools.format.shards.ContentDigest`), every value
  against its recorded size and CRC-32 (``keys.parquet``) and its declared tensors
  (:func:`reben_tools.format.codec.check_value`), and that every patch of ``patches.parquet``
  has its values. Each fault names the shard and, where it can be located, the key.
- :func:`merge_archive` writes all shards into one plain LMDB environment in sorted key
  order: the single-file layout tools built for reBEN open directly.
- :func:`export_geotiffs` writes the reBEN GeoTIFF release layout back, georeferenced from
  ``patches.parquet`` (S1 values on their S2 patch's 10 m grid).

Each takes an archive folder or the URL of one in a store (``s3://bucket/prefix``): the
archive is then read through the node-local cache (``format.shard_cache``); ``verify`` also
reports shards of the store the manifest does not list and shards that differ from it.

Owns: :func:`verify_archive`, :func:`merge_archive`, :func:`export_geotiffs`.
Does not own: the archive format and its writers/readers (``format``), encoding a release
(``release.encode*``), the GeoTIFF layout (``release.geotiff_release``, ``release.geotiff_write``).
May import: ``format``, ``geo.mgrs_grid``, ``release.geotiff_release``, ``release.geotiff_write``, lmdb, pyarrow, numpy.
"""

from __future__ import annotations

import heapq
import os
import shutil
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import lmdb
import pyarrow as pa
import pyarrow.parquet as pq

from reben_tools.format import codec, naming
from reben_tools.format.layout import (
    FLAGGED_METADATA_FILE,
    METADATA_FILE,
    PATCHES_FILE,
    SHARD_KEYS_FILE,
    SHARDS_DIR,
    ArchiveError,
)
from reben_tools.format.manifest import read_manifest
from reben_tools.format.metadata import read_metadata
from reben_tools.format.object_store import is_remote, local_path
from reben_tools.format.reader import Archive, shared_environment
from reben_tools.format.shard_cache import cache_for
from reben_tools.format.shards import ContentDigest, map_size_for
from reben_tools.format.sources import ArchiveSource, open_archive_source
from reben_tools.geo.mgrs_grid import tile_grid
from reben_tools.release.geotiff_release import REFERENCE_MAP_BAND
from reben_tools.release.geotiff_write import write_patch


@dataclass(frozen=True)
class Fault:
    """One problem :func:`verify_archive` found.

    Attributes:
        shard: the shard's name (or ``"-"`` for archive-level files).
        key: the key concerned, or None when the fault cannot be pinned to one key.
        reason: what is wrong.
    """

    shard: str
    key: str | None
    reason: str

    def __str__(self) -> str:
        where = f"shard {self.shard}" + (f" key {self.key}" if self.key is not None else "")
        return f"{where}: {self.reason}"


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_archive`: shards and values checked, and the faults."""

    shards: int = 0
    values: int = 0
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Findings that are not faults, one line each (e.g. a plain LMDB without reference maps)."""

    @property
    def ok(self) -> bool:
        return not self.faults


def read_key_checksums(shard_dir: Path) -> dict[str, tuple[int, int]] | None:
    """``{key: (value_bytes, crc32)}`` from a shard's ``keys.parquet``, or None if it has none."""
    path = shard_dir / SHARD_KEYS_FILE
    if not path.is_file():
        return None
    table = pq.read_table(path)
    checksums = dict(
        zip(
            table.column("key").to_pylist(),
            zip(table.column("value_bytes").to_pylist(), table.column("crc32").to_pylist(), strict=True),
            strict=True,
        )
    )
    return cast("dict[str, tuple[int, int]]", checksums)  # the columns keys.parquet is written with


def _verify_shard(shard_dir: Path, expected: dict, report: VerifyReport, keys_seen: dict[str, set[str]]) -> None:
    name = expected["name"]
    faults = report.faults
    if not (shard_dir / "data.mdb").is_file():
        faults.append(Fault(name, None, f"{shard_dir / 'data.mdb'} is missing"))
        return
    try:
        checksums = read_key_checksums(shard_dir)
    except (OSError, ValueError, KeyError) as exc:
        faults.append(Fault(name, None, f"{shard_dir / SHARD_KEYS_FILE} is unreadable ({exc})"))
        checksums = None
    digest = ContentDigest()
    entries = value_bytes = 0
    located = False
    seen: set[str] = set()
    last_key = None
    try:
        env_scope = shared_environment(shard_dir, expected.get("file_bytes"))
        env = env_scope.__enter__()
    except ArchiveError as exc:  # a truncated data.mdb included: reported, the other shards go on
        faults.append(Fault(name, None, str(exc)))
        return
    try:
        with env.begin(buffers=True) as txn:
            for cursor_key, value in txn.cursor():
                raw_key = bytes(cursor_key)
                try:
                    key = raw_key.decode("utf-8")
                except UnicodeDecodeError:
                    key = repr(raw_key)
                    faults.append(Fault(name, key, "key is not valid UTF-8"))
                    located = True
                last_key = key
                entries += 1
                value_bytes += len(value)
                digest.update(raw_key, value)
                seen.add(key)
                if checksums is not None:
                    recorded = checksums.get(key)
                    if recorded is None:
                        faults.append(Fault(name, key, "key is not listed in the shard's keys.parquet"))
                        located = True
                    elif recorded != (len(value), zlib.crc32(value)):
                        faults.append(
                            Fault(
                                name,
                                key,
                                f"value ({len(value)} bytes) differs from the recorded size "
                                f"{recorded[0]} / CRC-32 (corrupt value)",
                            )
                        )
                        located = True
                try:
                    codec.check_value(key, value, codec.kind_of_key(key))
                except ValueError as exc:
                    faults.append(Fault(name, key, str(exc)))
                    located = True
                report.values += 1
    except lmdb.Error as exc:
        after = f" after key {last_key}" if last_key else ""
        faults.append(Fault(name, last_key, f"LMDB error while reading{after}: {exc}"))
        return
    finally:
        env_scope.__exit__(None, None, None)
    if checksums is not None:
        for key in sorted(set(checksums) - seen):
            faults.append(Fault(name, key, "key listed in keys.parquet is missing from data.mdb"))
            located = True
    keys_seen[name] = seen
    mismatches = []
    if entries != expected["entries"]:
        mismatches.append(f"{entries} entries, manifest says {expected['entries']}")
    if value_bytes != expected["value_bytes"]:
        mismatches.append(f"{value_bytes} value bytes, manifest says {expected['value_bytes']}")
    if digest.hexdigest() != expected["sha256"]:
        mismatches.append(f"content sha256 {digest.hexdigest()}, manifest says {expected['sha256']}")
    if mismatches:
        hint = "" if located else " (no single key could be blamed)"
        faults.append(Fault(name, None, "; ".join(mismatches) + hint))


def verify_archive(path: str | os.PathLike, progress: bool = False) -> VerifyReport:
    """Check every shard of an archive against its manifest and every value it holds.

    Never raises for a corrupt archive: every problem becomes a :class:`Fault`.
    """
    from tqdm import tqdm

    report = VerifyReport()
    store_faults: list[tuple[str, str]] = []
    fetched: Iterator[tuple[str, str | None]] | None = None  # a store's shards, each fetched before its check
    if is_remote(path):
        from reben_tools.format.shard_cache import localise_for_verify

        try:
            root, store_faults, fetched = localise_for_verify(str(path))
        except ArchiveError as exc:
            report.faults.append(Fault("-", None, str(exc)))
            return report
    else:
        root = local_path(path)
    try:
        manifest = read_manifest(root)
    except ArchiveError as exc:
        report.faults.append(Fault("-", None, str(exc)))
        return report
    report.faults.extend(Fault(shard, None, reason) for shard, reason in store_faults)
    shards_dir = root / SHARDS_DIR
    keys_seen: dict[str, set[str]] = {}
    listed = {s["name"] for s in manifest["shards"]}
    if shards_dir.is_dir():
        for entry in sorted(shards_dir.iterdir()):
            if entry.is_dir() and entry.name not in listed and not entry.name.startswith("."):
                report.faults.append(Fault(entry.name, None, "shard directory is not listed in the manifest"))
    for expected in tqdm(manifest["shards"], desc="verify", unit="shard", disable=not progress):
        report.shards += 1
        if fetched is not None:
            name, problem = next(fetched)
            assert name == expected["name"], "the store's shards come in the manifest's order"
            if problem:
                report.faults.append(Fault(name, None, problem))
        _verify_shard(shards_dir / expected["name"], expected, report, keys_seen)
    recorded_counts = manifest.get("counts")
    counts = recorded_counts if isinstance(recorded_counts, dict) else {}
    patch_ids = _verify_patch_rows(root, keys_seen, report, patch_rows_expected=counts.get("patches") != 0)
    _verify_metadata(root, patch_ids, report)
    if is_remote(path):  # name the store's objects, not the cache's copies
        report.faults = [
            Fault(f.shard, f.key, f.reason.replace(str(root), str(path).rstrip("/"))) for f in report.faults
        ]
    return report


def _verify_metadata(root: Path, patch_ids: set[str] | None, report: VerifyReport) -> None:
    """The reBEN metadata files must read with their schema, without null or repeated ids or
    unknown splits, and list only patches that ``patches.parquet`` has (when both exist)."""
    paths = [root / name for name in (METADATA_FILE, FLAGGED_METADATA_FILE) if (root / name).is_file()]
    if not paths:
        return
    try:
        table = read_metadata(paths)
    except ArchiveError as exc:
        report.faults.append(Fault("-", None, str(exc)))
        return
    if patch_ids is not None:
        for pid in table.column("patch_id").to_pylist():
            if pid not in patch_ids:
                report.faults.append(
                    Fault("-", pid, f"the metadata lists this patch, but {PATCHES_FILE} has no row for it")
                )


def _verify_patch_rows(
    root: Path, keys_seen: dict[str, set[str]], report: VerifyReport, patch_rows_expected: bool = True
) -> set[str] | None:
    """Every patch of ``patches.parquet`` must find its values in the shard it names, once.
    Returns the patch ids it lists (None when it cannot be read)."""
    path = root / PATCHES_FILE
    if not path.is_file():
        if keys_seen and patch_rows_expected:  # an archive of S1-only values has no patch rows
            report.faults.append(Fault("-", None, f"{path} is missing"))
        return None
    try:
        schema_names = pq.read_schema(path).names
        columns = [
            c for c in ("patch_id", "shard", "s1_name", "has_s1", "has_reference_map", "has_s2") if c in schema_names
        ]
        table = pq.read_table(path, columns=columns)
    except (OSError, ValueError) as exc:
        report.faults.append(Fault("-", None, f"{path}: unreadable ({exc})"))
        return None
    ids = table.column("patch_id").to_pylist() if "patch_id" in columns else []

    def column(name: str, default: object) -> list:
        return table.column(name).to_pylist() if name in columns else [default] * len(ids)

    counts = Counter(ids)
    for pid, n in sorted(((p, n) for p, n in counts.items() if n > 1), key=lambda item: str(item[0])):
        report.faults.append(Fault("-", pid, f"{PATCHES_FILE} lists this patch {n} times"))
    rows = zip(
        ids,
        column("shard", None),
        column("has_s1", False),
        column("s1_name", None),
        column("has_reference_map", False),
        column("has_s2", True),
        strict=False,  # without a patch_id column there are no rows to check, whatever the other columns hold
    )
    for pid, shard, has_s1, s1_name, has_reference_map, has_s2 in rows:
        seen = keys_seen.get(shard)
        if seen is None:
            continue  # shard missing or unreadable: already reported
        wanted = [pid] if has_s2 is not False else []  # a reference map / S1 value without its S2 patch
        if has_s1 and s1_name:
            wanted.append(s1_name)
        if has_reference_map:
            wanted.append(naming.reference_map_key(pid))
        for key in wanted:
            if key not in seen:
                report.faults.append(
                    Fault(shard, key, f"patches.parquet lists this key for patch {pid}, but the shard does not hold it")
                )
    return {pid for pid in counts if isinstance(pid, str)}


# ---------------------------------------------------------------------------- merge


@dataclass(frozen=True)
class MergeSummary:
    """Outcome of :func:`merge_archive`: the environment written, keys, value bytes and
    keys that several shards held (byte-identical, written once)."""

    path: Path
    entries: int
    value_bytes: int
    duplicates: int


def _shard_stream(index: int, env: lmdb.Environment) -> Iterator[tuple[bytes, int, memoryview]]:
    with env.begin(buffers=True) as txn:
        for key, value in txn.cursor():
            yield bytes(key), index, value


def merge_archive(
    path: str | os.PathLike | ArchiveSource, out_dir: str | os.PathLike, progress: bool = False
) -> MergeSummary:
    """Write every shard of an archive into one LMDB environment ``out_dir`` (sorted keys).

    ``out_dir`` must not exist or be empty; the environment is written into a temporary
    sibling and renamed into place, and the source's metadata parquet files (the archive's
    own, or the files given with a plain LMDB) are copied next to ``data.mdb``, where
    :func:`reben_tools.format.sources.open_archive_source` finds them. A key that several
    shards hold is written once; their values must be byte-identical. A plain LMDB
    (``path`` an :class:`ArchiveSource` or LMDB directory) is copied as one shard.

    Raises:
        ArchiveError: the archive is unreadable, ``out_dir`` is not empty, or two shards
            hold different values under one key (naming the key and the shards).
    """
    from tqdm import tqdm

    source = open_archive_source(path)  # a URL: its cache image, shards fetched below
    root = source.path
    cache = cache_for(root)  # an archive read from a store: every shard is read, so fetch them all first
    if cache is not None:
        cache.prefetch(cache.names)
    out = Path(out_dir)
    if source.kind == "archive":
        shards = read_manifest(root)["shards"]
        places = [(root / SHARDS_DIR / s["name"], s.get("file_bytes")) for s in shards]
    else:
        shards = [{"name": root.name, "entries": None}]
        places = [(root, None)]
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArchiveError(f"{out}: exists and is not an empty directory")
    names = [s["name"] for s in shards]
    scopes = ExitStack()  # every shard's size is checked before any is read (truncated -> ArchiveError)
    try:
        envs = [scopes.enter_context(shared_environment(place, recorded)) for place, recorded in places]
    except BaseException:
        scopes.close()
        raise
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    try:

        def merged() -> Iterator[tuple[bytes, int, memoryview]]:
            """Every shard's (key, shard index, value) in key order (ties: lower shard first)."""
            return heapq.merge(*(_shard_stream(i, e) for i, e in enumerate(envs)))

        # First pass: sizes only, for the same deterministic map size write_lmdb would use.
        def sizes() -> Iterator[tuple[bytes, memoryview]]:
            previous = None
            for key, _, value in merged():
                if key != previous:
                    yield key, value
                previous = key

        map_size = map_size_for(sizes())
        total = sum(
            s["entries"] if s["entries"] is not None else e.stat()["entries"] for s, e in zip(shards, envs, strict=True)
        )
        tmp.mkdir(parents=True)
        writer = lmdb.open(str(tmp), map_size=map_size, subdir=True, lock=False, sync=True, metasync=True)
        entries = value_bytes = duplicates = 0
        try:
            txn = writer.begin(write=True)
            previous_key, previous_value, previous_shard = None, None, None
            for key, index, value in tqdm(merged(), total=total, desc="merge", unit="value", disable=not progress):
                if key == previous_key:
                    assert previous_shard is not None  # set with the previous key
                    if bytes(value) != previous_value:
                        raise ArchiveError(
                            f"key {key.decode('utf-8', 'replace')!r} has different values in shards "
                            f"{names[previous_shard]} and {names[index]}"
                        )
                    duplicates += 1
                    continue
                txn.put(key, value, append=True)
                entries += 1
                value_bytes += len(value)
                previous_key, previous_value, previous_shard = key, bytes(value), index
                if entries % 2048 == 0:
                    txn.commit()
                    txn = writer.begin(write=True)
            txn.commit()
            writer.sync(True)
        finally:
            writer.close()
        for metadata_file in source.metadata:
            if metadata_file.is_file():
                shutil.copyfile(metadata_file, tmp / metadata_file.name)
        try:
            if out.exists():
                out.rmdir()
            os.rename(tmp, out)
        except OSError as exc:  # another merge (or anything else) filled out_dir meanwhile
            raise ArchiveError(
                f"{out}: was written by another process during the merge; left it as it is ({exc.strerror})"
            ) from None
    finally:
        scopes.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return MergeSummary(out, entries, value_bytes, duplicates)


# ---------------------------------------------------------------------------- export


@dataclass
class ExportSummary:
    """Outcome of :func:`export_geotiffs`: patches and files written, and per-key errors."""

    patches: int = 0
    files: int = 0
    errors: list[str] = field(default_factory=list)
    reference_maps: int = 0
    notes: list[str] = field(default_factory=list)


def _shown(key: str) -> str:
    """A key as error messages show it: repr, keys over 120 characters elided in the middle."""
    return repr(key) if len(key) <= 120 else repr(key[:60]) + "..." + repr(key[-40:])


def export_geotiffs(
    path: str | os.PathLike | ArchiveSource, out_dir: str | os.PathLike, nested: bool = True, progress: bool = False
) -> ExportSummary:
    """Write an archive (or a plain reBEN LMDB, see :func:`lmdb_patch_rows`) back as reBEN's GeoTIFF release under ``out_dir``.

    Layout: ``BigEarthNet-S2/<product>/<patch_id>/<patch_id>_<band>.tif`` (uint16,
    uncompressed), ``BigEarthNet-S1/<s1 product>/<s1_name>/<s1_name>_<VV|VH>.tif``
    (float32, uncompressed) and ``Reference_Maps/<product>/<patch_id>/<patch_id>_reference_map.tif``
    (uint16, deflate, nodata 0); ``nested=False`` drops the product level. Each band is
    georeferenced from the patch's ``crs``/``ulx``/``uly`` in ``patches.parquet`` at its
    native resolution; S1 values use their S2 patch's 10 m grid. A value that fails to
    decode is reported in ``errors`` (naming the key) and skipped.
    """
    from tqdm import tqdm

    source = open_archive_source(path)
    root = source.path
    patches_path = root / PATCHES_FILE
    if source.is_plain_lmdb:  # no patches.parquet: rows from the metadata, georeferenced from the patch ids
        table, patches_path = lmdb_patch_rows(source), source.metadata[0]
    else:
        try:
            table = pq.read_table(patches_path)
        except (OSError, ValueError) as exc:
            raise ArchiveError(f"{patches_path}: cannot read ({exc})") from None
    missing = [c for c in ("patch_id", "crs", "ulx", "uly") if c not in table.column_names]
    if missing:
        raise ArchiveError(f"{patches_path}: missing column(s) {missing}")
    rows = table.drop_columns([c for c in ("geometry", "labels") if c in table.column_names]).to_pylist()
    summary = ExportSummary()
    # names and coordinates are untrusted: a row that cannot name a file is reported, never written
    usable = []
    for i, row in enumerate(rows):
        bad = [
            c
            for c, types in (("patch_id", str), ("crs", str), ("ulx", (int, float)), ("uly", (int, float)))
            if not isinstance(row[c], types)
        ]
        if row.get("s1_name") is not None and not isinstance(row["s1_name"], str):
            bad.append("s1_name")
        if bad:
            summary.errors.append(
                f"{patches_path} row {i}: column(s) {bad} are not usable "
                f"({', '.join(f'{c}={row[c]!r:.80}' for c in bad)})"
            )
        else:
            usable.append(row)
    rows = sorted(usable, key=lambda r: r["patch_id"])
    out = Path(out_dir)
    with Archive(root) as reader:
        for row in tqdm(rows, desc="export-tiff", unit="patch", disable=not progress):
            pid = row["patch_id"]
            crs, ulx, uly = row["crs"], row["ulx"], row["uly"]
            wanted = [("S2", pid, pid)] if row.get("has_s2", True) is not False else []
            if row.get("has_s1", True) and row.get("s1_name"):
                wanted.append(("S1", row["s1_name"], row["s1_name"]))
            if row.get("has_reference_map", True):
                wanted.append(("reference_map", naming.reference_map_key(pid), pid))
            wrote_any = False
            for kind, key, name in wanted:
                try:
                    value = reader.get(key)
                except KeyError:
                    if kind == "S2" or f"has_{kind.lower()}" in row:
                        summary.errors.append(f"key {_shown(key)}: not found in the archive")
                    continue
                try:
                    arrays = codec.check_value(key, value, kind)
                except ValueError as exc:
                    summary.errors.append(str(exc))
                    continue
                if kind == "reference_map":
                    arrays = {REFERENCE_MAP_BAND: arrays[codec.REFERENCE_MAP_TENSOR]}
                try:
                    write_patch(out, kind, name, arrays, crs, ulx, uly, nested=nested)
                except (OSError, ValueError) as exc:
                    summary.errors.append(f"key {_shown(key)}: cannot write GeoTIFFs ({exc})")
                    continue
                summary.files += len(arrays)
                summary.reference_maps += kind == "reference_map"
                wrote_any = True
            summary.patches += int(wrote_any)
    if source.is_plain_lmdb and rows and not summary.reference_maps:
        summary.notes.append(f"reference maps: none in {root} (S1/S2 values only); no Reference_Maps/ written")
    return summary


def lmdb_patch_rows(source: ArchiveSource) -> pa.Table:
    """``patch_id``, ``s1_name``, ``has_s1``, ``crs``, ``ulx``, ``uly`` of a plain LMDB's metadata rows.

    The upper-left corner follows from the patch id: its MGRS tile's corner plus 1,200 m per
    column and row (``geo.mgrs_grid``); ids that are not reBEN patch ids get null coordinates
    (and are reported by the export).
    """
    table = read_metadata(source.metadata_files(include_flagged=True))
    rows = []
    ids = cast("list[str]", table.column("patch_id").to_pylist())  # read_metadata: patch_id is never null
    for pid, s1 in zip(ids, table.column("s1_name").to_pylist(), strict=True):
        try:
            parsed = naming.parse_patch_id(pid)
            grid = tile_grid(parsed.tile)
        except ValueError:
            rows.append({"patch_id": pid, "s1_name": s1, "has_s1": bool(s1), "crs": None, "ulx": None, "uly": None})
            continue
        ulx, uly = grid.patch_upper_left(parsed.x, parsed.y)
        rows.append({"patch_id": pid, "s1_name": s1, "has_s1": bool(s1), "crs": grid.crs, "ulx": ulx, "uly": uly})
    fields: list[pa.Field[Any]] = [
        pa.field("patch_id", pa.string()),
        pa.field("s1_name", pa.string()),
        pa.field("has_s1", pa.bool_()),
        pa.field("crs", pa.string()),
        pa.field("ulx", pa.float64()),
        pa.field("uly", pa.float64()),
    ]
    schema = pa.schema(fields)
    return pa.Table.from_pylist(rows, schema=schema)


__all__ = [
    "ExportSummary",
    "Fault",
    "MergeSummary",
    "VerifyReport",
    "export_geotiffs",
    "merge_archive",
    "read_key_checksums",
    "verify_archive",
]
