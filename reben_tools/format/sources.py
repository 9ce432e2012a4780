"""The one way to name an archive: what a command's ARCHIVE argument (plus ``--metadata``) means.

Three ways, tried in this order by :func:`open_archive_source`:

1. an **archive directory** (``manifest.json``, ``shards/``, reBEN's two metadata files), or an
   archive's URL in a store (``s3://bucket/prefix``: its node-local image, ``format.shard_cache``);
   ``metadata`` files, when given, replace its own (e.g. a ``reben subset`` file);
2. a **plain reBEN LMDB directory** (``data.mdb``: the official release as rico-hdl converts
   it, what ConfigILM reads, or the output of ``reben merge``) plus ``metadata`` files;
3. a plain LMDB directory **with neither**: reBEN's metadata files are looked for under their
   own names (``metadata.parquet``, ``metadata_for_patches_with_snow_cloud_or_shadow.parquet``)
   inside the directory (where ``reben merge`` puts them), then beside it (where the official
   release and ConfigILM's mock put them); :attr:`ArchiveSource.announcement` says so in one line.

A plain LMDB has no manifest: no statistics of its own (:func:`plain_statistics_line` says
which are used, and refuses values with another band set) and no record of which values it
holds (reference maps are optional: an S1+S2 LMDB is a normal release).

A run records its source (:meth:`ArchiveSource.record`: kind, path, metadata files and their
sha256) so that ``--resume`` and ``reben evaluate`` find it again
(:func:`source_from_record`, which refuses a metadata file that changed).

Owns: :class:`ArchiveSource`, :func:`open_archive_source`, :class:`SourceError`,
:data:`REBEN_METADATA_FILES`, source records and identities, :func:`source_rows` and
:func:`describe_rows` (which rows a source offers, said in one line), :func:`plain_statistics_line`.
Does not own: reading values (``format.reader``), the metadata schema (``format.metadata``).
May import: ``format.layout``, ``format.metadata``, ``format.reader``, ``format.codec``,
``format.bands``, pyarrow.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from reben_tools.format.layout import FLAGGED_METADATA_FILE, MANIFEST_FILE, METADATA_FILE, ArchiveError
from reben_tools.format.object_store import is_remote

REBEN_METADATA_FILES = (METADATA_FILE, FLAGGED_METADATA_FILE)
"""reBEN's metadata file names, in the order they are read."""
PUBLISHED_STATISTICS_NAME = "reBEN's published 120_nearest table (ConfigILM BENv2_utils)"
FLAG_COLUMNS = ("contains_seasonal_snow", "contains_cloud_or_shadow")

if TYPE_CHECKING:  # pyarrow is imported where rows are read: `reben --help` stays fast
    import pyarrow as pa


class SourceError(ArchiveError, ValueError):
    """ARCHIVE (plus ``--metadata``) names no readable archive; the message is one line and says what to give."""


@dataclass(frozen=True)
class ArchiveSource:
    """What an ARCHIVE argument resolved to.

    Attributes:
        path: the archive directory or the plain LMDB directory (holding ``data.mdb``).
        kind: ``"archive"`` (manifest) or ``"lmdb"`` (plain reBEN LMDB).
        metadata: the metadata files whose rows are the patches (existing files only).
        origin: where they came from: ``"archive"`` (the archive's own), ``"given"``
            (``--metadata``) or ``"beside"`` (found under reBEN's names next to the LMDB).
        url: the archive's URL in a store when ``path`` is its node-local image (None for a local archive).
    """

    path: Path
    kind: str
    metadata: tuple[Path, ...]
    origin: str
    url: str | None = None

    def __str__(self) -> str:  # what messages name: the URL of a store's archive, not this node's cache image
        return self.argument

    @property
    def is_plain_lmdb(self) -> bool:
        return self.kind == "lmdb"

    @property
    def announcement(self) -> str | None:
        """The one line a command prints when it found the metadata itself (None otherwise)."""
        if self.origin != "beside":
            return None
        return f"{self.path}: plain reBEN LMDB; metadata found beside it: {', '.join(str(p) for p in self.metadata)}"

    def metadata_files(self, include_flagged: bool = True) -> list[Path]:
        """The metadata files to read: given files all; an archive's own (or reBEN-named files
        found beside an LMDB) without the snow/cloud/shadow file unless ``include_flagged``."""
        if self.origin == "given":
            return list(self.metadata)
        return [p for p in self.metadata if include_flagged or p.name != FLAGGED_METADATA_FILE]

    @property
    def argument(self) -> str:
        """How to name this source again: its URL for an archive in a store (not this node's cache image), else its path."""
        return self.url if self.url is not None else str(self.path)

    def run_arguments(self) -> tuple[str, list[str]]:
        """``(archive, metadata files)`` as a run's config names them: the archive (its URL for a store's),
        and the metadata files unless they are the archive's own."""
        return self.argument, [] if self.origin == "archive" else [str(p) for p in self.metadata]

    def record(self) -> dict[str, object]:
        """What a run directory stores: kind, absolute path (and the URL of an archive in a store), metadata
        files with their sha256, identity."""
        return {
            "kind": self.kind,
            "path": str(self.path.resolve()),
            **({"url": self.url} if self.url is not None else {}),
            "metadata_origin": self.origin,
            "metadata": [{"path": str(p.resolve()), "sha256": file_sha256(p)} for p in self.metadata if p.is_file()],
            "identity": self.identity,
        }

    @property
    def identity(self) -> str | None:
        """What must match for a run to go on with this source (copies of it included).

        An archive with its own metadata: the sha256 of ``manifest.json`` (it lists every
        shard's content digest). Otherwise the sha256 of the manifest's digest (or, for a plain
        LMDB, its number of entries) together with the metadata files' digests.
        """
        if self.kind == "archive":
            try:
                manifest = hashlib.sha256((self.path / MANIFEST_FILE).read_bytes()).hexdigest()
            except OSError as exc:
                raise SourceError(f"{self.path / MANIFEST_FILE}: cannot read ({exc})") from None
            if self.origin == "archive":
                return manifest
            base: dict[str, object] = {"manifest_sha256": manifest}
        else:
            base = {"lmdb_entries": _lmdb_entries(self.path)}
        base["metadata_sha256"] = sorted(file_sha256(p) for p in self.metadata if p.is_file())
        return hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
    return digest.hexdigest()


def _lmdb_entries(path: Path) -> int:
    from reben_tools.format.reader import shared_environment

    with shared_environment(path) as env:
        return int(env.stat()["entries"])


def _given(metadata: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None) -> tuple[Path, ...]:
    if metadata is None:
        return ()
    if isinstance(metadata, (str, os.PathLike)):
        metadata = [metadata]
    paths = tuple(Path(p) for p in metadata)
    for path in paths:  # before a single value is read
        if not path.is_file():
            what = "a folder" if path.is_dir() else "not found"
            raise SourceError(f"--metadata {path}: {what}; expected a reBEN metadata parquet file")
    return paths


def _beside(lmdb_dir: Path) -> tuple[Path, ...]:
    """reBEN-named metadata files inside ``lmdb_dir`` (``reben merge``), else next to it (the release)."""
    for folder in (lmdb_dir, lmdb_dir.resolve().parent):
        if (folder / METADATA_FILE).is_file():
            return tuple(folder / n for n in REBEN_METADATA_FILES if (folder / n).is_file())
    return ()


def open_archive_source(
    path: str | os.PathLike[str] | ArchiveSource,
    metadata: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_size: int | str | None = None,
) -> ArchiveSource:
    """Resolve an ARCHIVE argument (and its ``--metadata`` files) to an :class:`ArchiveSource`.

    Args:
        path: an archive directory, a plain reBEN LMDB directory, or an ArchiveSource
            (returned as it is when no ``metadata`` is given).
        metadata: reBEN metadata parquet file(s); empty or None: the archive's own, or for a
            plain LMDB reBEN's files found inside or beside it.
        cache_dir, cache_size: for an archive URL, its node-local image's folder and bound
            (default: the command's ``--cache-dir`` / ``--cache-size``, ``format.cache_settings``).

    Raises:
        SourceError: one line naming the path: not a directory, neither an archive nor an
            LMDB, a metadata file that does not exist, or a plain LMDB without metadata.
    """
    if isinstance(path, ArchiveSource):
        if not metadata:
            return path
        path = path.argument
    if is_remote(path):  # an archive in a store: its node-local image (archive files now, shards on first use)
        from reben_tools.format.shard_cache import localise_archive

        try:
            image = localise_archive(str(path), cache_dir, max_bytes=cache_size)
        except ArchiveError as exc:  # no manifest, an unreachable store: one line, like a bad local path
            raise SourceError(str(exc)) from None
        return replace(open_archive_source(image, metadata), url=str(path).rstrip("/"))
    root = Path(path)
    given = _given(metadata or None)
    if (root / MANIFEST_FILE).is_file():
        if given:
            return ArchiveSource(root, "archive", given, "given")
        own = tuple(root / n for n in REBEN_METADATA_FILES if (root / n).is_file())
        return ArchiveSource(root, "archive", own or (root / METADATA_FILE,), "archive")
    if (root / "data.mdb").is_file():
        if given:
            return ArchiveSource(root, "lmdb", given, "given")
        found = _beside(root)
        if found:
            return ArchiveSource(root, "lmdb", found, "beside")
        raise SourceError(
            f"{root}: a plain reBEN LMDB needs its metadata: give --metadata metadata.parquet "
            f"[--metadata {FLAGGED_METADATA_FILE}], or put them inside or beside it under these names"
        )
    if not root.exists():
        raise SourceError(f"{root}: no such directory (neither a reben-tools archive nor an LMDB directory)")
    raise SourceError(f"{root}: neither a reben-tools archive (manifest.json) nor an LMDB directory (data.mdb)")


def source_from_record(record: Mapping[str, Any]) -> ArchiveSource:
    """The source a run recorded (:meth:`ArchiveSource.record`), checked: same files, same digests.

    Raises:
        SourceError: the path or a metadata file is gone, or a metadata file changed (names it).
    """
    metadata = [Path(m["path"]) for m in record.get("metadata", [])]
    given = metadata if record.get("metadata_origin") != "archive" else None
    source = open_archive_source(record.get("url") or record["path"], given)  # a store's archive: its URL again
    if given is None:  # the archive's own files, wherever this node keeps its image of a store's archive
        own = {p.name: p for p in source.metadata}
        metadata = [own.get(path.name, source.path / path.name) for path in metadata]
    for entry, path in zip(record.get("metadata", []), metadata, strict=True):
        if not path.is_file():
            raise SourceError(f"{path}: the run's metadata file is gone; pass --archive and --metadata")
        if file_sha256(path) != entry["sha256"]:
            raise SourceError(
                f"{path}: changed since the run recorded it (sha256 {entry['sha256'][:12]}...); "
                "restore it, or pass --archive and --metadata to use other files"
            )
    return source


def _flagged_mask(table: pa.Table) -> pa.ChunkedArray[pa.BooleanScalar]:
    import pyarrow.compute as pc

    snow, cloud = (
        cast("pa.ChunkedArray[pa.BooleanScalar]", pc.fill_null(table[c], False))  # type: ignore[type-var]  # stubs want a pa.Scalar fill; a bool works
        for c in FLAG_COLUMNS
    )
    return cast("pa.ChunkedArray[pa.BooleanScalar]", pc.or_(snow, cloud))  # or_ of two chunked arrays is chunked


def source_rows(source: ArchiveSource, include_snow_cloud: bool = False) -> tuple[pa.Table, str]:
    """The metadata rows a source offers for drawing subsets, and the one line that says which and why.

    Rows flagged for snow or cloud/shadow are left out unless ``include_snow_cloud`` (as reBEN's
    training leaves them out).
    """
    import pyarrow.compute as pc

    from reben_tools.format.metadata import read_metadata

    files = source.metadata_files(include_flagged=True)
    table = read_metadata(files)
    flagged = _flagged_mask(table)
    count = int(pc.sum(flagged).as_py() or 0)  # type: ignore[type-var]  # sum counts booleans; stubs allow numbers only
    names = ", ".join(p.name for p in files)
    if include_snow_cloud or not count:
        why = f"including {count} snow/cloud/shadow-flagged" if count else "none flagged for snow/cloud/shadow"
        return table, f"{source}: {table.num_rows:,} patches of {names} ({why})"
    kept = table.filter(pc.invert(flagged))
    return kept, (
        f"{source}: {kept.num_rows:,} patches of {names}; {count:,} flagged for snow/cloud/shadow left out "
        "as reBEN's training does (--include-snow-cloud keeps them)"
    )


def describe_rows(source: ArchiveSource, what: str) -> str:
    """One line for a command that uses every patch of a source (``split``, ``audit``): which file, how
    many patches, how many of them flagged for snow/cloud/shadow, and why they are in."""
    import pyarrow.parquet as pq

    from reben_tools.format.layout import PATCHES_FILE
    from reben_tools.format.metadata import read_metadata

    try:
        table = read_metadata(source.metadata_files(include_flagged=True))
        flagged = set(table.filter(_flagged_mask(table)).column("patch_id").to_pylist())
        ids = table.column("patch_id").to_pylist()
    except ArchiveError:
        flagged, ids = set(), []
    names = ", ".join(p.name for p in source.metadata_files(include_flagged=True))
    patches = source.path / PATCHES_FILE
    if source.origin == "archive" and patches.is_file():
        try:
            ids = pq.read_table(patches, columns=["patch_id"]).column(0).to_pylist()
            names = PATCHES_FILE
        except (OSError, ValueError, KeyError):
            pass
    count = sum(1 for pid in ids if pid in flagged)
    note = (
        f"including {count:,} flagged for snow/cloud/shadow, which reBEN splits too; "
        f"give {source.metadata[0]} alone as INPUT to leave them out"
        if count
        else "none flagged for snow/cloud/shadow"
    )
    return f"{source}: {what} all {len(ids):,} patches of {names} ({note})"


def plain_statistics_line(source: ArchiveSource, patch_id: str | None, s1_name: str | None) -> str:
    """For a plain LMDB: the one line saying which statistics normalise it, after checking its band set.

    The first patch's S2 value (and S1 value, when it has one) must hold exactly reBEN's bands:
    reBEN's published statistics exist for those alone.

    Raises:
        SourceError: the values hold another band set (one line naming the key and the bands).
    """
    from reben_tools.format import codec
    from reben_tools.format.bands import S1_BANDS, S2_BANDS
    from reben_tools.format.reader import Archive

    with Archive(source.path) as archive:
        for key, expected in ((patch_id, S2_BANDS), (s1_name, S1_BANDS)):
            if not key:
                continue
            try:
                value = archive.get(key)
            except KeyError:
                continue  # a missing value is reported where it is read
            try:
                names = sorted(codec.read_header(key, value))
            except codec.ValueDecodeError as exc:
                raise SourceError(f"{source.path}: {exc}") from None
            if set(names) != set(expected):
                raise SourceError(
                    f"{source.path}: value {key!r} holds bands {names}, not reBEN's {sorted(expected)}; a plain LMDB "
                    f"has no statistics of its own and {PUBLISHED_STATISTICS_NAME} covers only reBEN's bands"
                )
    return (
        f"{source.path}: plain LMDB without manifest statistics; normalising with {PUBLISHED_STATISTICS_NAME} "
        "for reBEN's 14 bands"
    )


__all__ = [
    "REBEN_METADATA_FILES",
    "ArchiveSource",
    "SourceError",
    "describe_rows",
    "file_sha256",
    "open_archive_source",
    "plain_statistics_line",
    "source_from_record",
    "source_rows",
]
