"""Writing an archive into a store, in an order a reader and a resumed build can trust.

The layout in the store is the archive directory's (``docs/archive.md``), object by object:
``<prefix>/shards/<name>/data.mdb``, ``keys.parquet``, ``rows.parquet``, ``shard.json``, the
archive-level files, and ``manifest.json`` last.

- **A shard is committed by its ``shard.json``.** A worker builds the shard in local scratch
  (:func:`publish_shard`), deletes the shard's ``shard.json`` from the store (so a shard being
  replaced is uncommitted first), uploads every other file and checks each upload
  (``Store.upload``: size, and the MD5 ETag where the store gives one), checks that its build
  still holds the lock object, and uploads ``shard.json`` last. ``shard.json`` records the size
  and sha256 of every file of the shard, so a listing tells a complete shard (every file
  present with its recorded size) from an interrupted one.
- **The manifest is the archive's commit point.** The client writes the metadata files,
  ``patches.parquet``, ``report.json`` and the map, then ``manifest.json``
  (:func:`publish_archive_files`). A build that will change any shard first deletes the
  manifest (:func:`uncommit`): a reader finds either no archive or a complete one. Readers
  only read shards the manifest lists, and check every file against its sha256 there.
- **Resume** (:func:`mirror_shard_sidecars`) lists the prefix once and copies the
  ``shard.json``, ``rows.parquet`` and input stamp of every complete shard into the
  client's local staging folder, where the local build's own checks (same fingerprints,
  same input stamps) decide which shards to keep.

Owns: the order of uploads of a shard and of an archive, what a complete shard is in a
listing, mirroring shard side-cars for resume.
Does not own: stores and checked transfers (``format.object_store``), writing a shard
(``format.shards``), deciding what to build (``builder.pipeline``).
May import: ``format.layout``, ``format.shards``, ``format.object_store``, ``format.store_lock``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from reben_tools.format.layout import (
    ARCHIVE_FILES,
    MANIFEST_FILE,
    SHARD_INFO_FILE,
    SHARD_ROWS_FILE,
    SHARDS_DIR,
    ArchiveError,
)
from reben_tools.format.object_store import Store
from reben_tools.format.shards import ShardInfo, write_shard
from reben_tools.format.store_lock import check_lock_token

UPLOAD_THREADS = 8


def shard_key(name: str, file: str = "") -> str:
    """The object path of a shard's file relative to the archive prefix."""
    return f"{SHARDS_DIR}/{name}/{file}" if file else f"{SHARDS_DIR}/{name}"


def publish_shard(
    archive_url: str,
    name: str,
    items: Mapping[str, bytes] | Iterable[tuple[str, bytes]],
    rows: pa.Table | None = None,
    lock_token: str | None = None,
    scratch: str | os.PathLike[str] | None = None,
) -> ShardInfo:
    """Write one shard in local scratch, upload it to ``archive_url`` checked, commit it with ``shard.json``.

    Args:
        archive_url: the archive prefix in the store.
        name, items, rows: as :func:`reben_tools.format.shards.write_shard`.
        lock_token: the token of the build's lock object; the shard is committed only while
            the lock still carries it (a worker of a stopped build cannot commit over a new one).
        scratch: local folder for the shard while it is built (default: the temporary folder).

    Raises:
        ArchiveError / StoreError: the shard cannot be written or uploaded, or an upload does
            not check out; nothing is committed and the local copy is removed.
    """
    store = Store(archive_url)
    workdir = Path(tempfile.mkdtemp(prefix=".reben-shard-", dir=scratch))
    try:
        info = write_shard(workdir, name, items, rows=rows)
        local = workdir / name
        store.delete([shard_key(name, SHARD_INFO_FILE)])  # uncommit a shard this one replaces
        for file in sorted(p.name for p in local.iterdir() if p.is_file() and p.name != SHARD_INFO_FILE):
            store.upload(local / file, shard_key(name, file))
        check_lock_token(store, lock_token)
        store.upload(local / SHARD_INFO_FILE, shard_key(name, SHARD_INFO_FILE))
        return info
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def complete_shards(listing: Mapping[str, dict[str, Any]], infos: Mapping[str, ShardInfo]) -> set[str]:
    """Names of the shards whose every recorded file is listed with its recorded size."""
    done = set()
    for name, info in infos.items():
        files = info.files or {"data.mdb": {"bytes": info.file_bytes}}
        if all(listing.get(shard_key(name, f), {}).get("size") == int(d["bytes"]) for f, d in files.items()):
            done.add(name)
    return done


def committed_shard_infos(store: Store, listing: Mapping[str, dict[str, Any]]) -> dict[str, ShardInfo]:
    """The ``shard.json`` of every shard committed in ``listing`` (unreadable ones are left out)."""
    names = sorted(
        key.split("/")[1]
        for key in listing
        if key.startswith(SHARDS_DIR + "/") and key.count("/") == 2 and key.endswith("/" + SHARD_INFO_FILE)
    )

    def read(name: str) -> tuple[str, ShardInfo | None]:
        try:
            return name, ShardInfo(**json.loads(store.read_bytes(shard_key(name, SHARD_INFO_FILE)) or b""))
        except (ValueError, TypeError):
            return name, None

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        return {name: info for name, info in pool.map(read, names) if info is not None}


def mirror_shard_sidecars(
    store: Store, staging: Path, names: Iterable[str] | None = None, stamps_dir: str | None = None
) -> set[str]:
    """Copy ``shard.json`` and ``rows.parquet`` of every complete shard (of ``names``, or all) from the
    store into ``staging/shards/<name>/``, and the input stamps under ``stamps_dir`` into
    ``staging/stamps_dir/``; returns the names of the complete shards.

    Shards of ``names`` that are not complete in the store are removed from ``staging``.
    """
    listing = store.listing()
    infos = committed_shard_infos(store, listing)
    complete = complete_shards(listing, infos)
    wanted = set(names) if names is not None else set(infos)
    shards_dir = staging / SHARDS_DIR

    def fetch(name: str) -> None:
        target = shards_dir / name
        if target.exists():
            shutil.rmtree(target)
        if name not in complete:
            return
        tmp = shards_dir / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for file in (SHARD_ROWS_FILE, SHARD_INFO_FILE):
            if shard_key(name, file) in listing:
                store.download(shard_key(name, file), tmp / file, listing[shard_key(name, file)]["size"])
        os.rename(tmp, target)

    shards_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(fetch, sorted(wanted)))
    if stamps_dir:
        local_stamps = staging / stamps_dir
        local_stamps.mkdir(parents=True, exist_ok=True)
        for key, entry in listing.items():
            if key.startswith(stamps_dir + "/") and key.count("/") == 1:
                store.download(key, local_stamps / key.split("/", 1)[1], entry["size"])
    return complete & wanted


def uncommit(store: Store) -> bool:
    """Delete the archive's ``manifest.json`` (before shards change); returns whether there was one."""
    if store.info(MANIFEST_FILE) is None:
        return False
    store.delete([MANIFEST_FILE])
    return True


def remove_shard(store: Store, name: str) -> None:
    """Delete every object of a shard (its ``shard.json`` first)."""
    store.delete([shard_key(name, SHARD_INFO_FILE)])
    store.delete(sorted(k for k in store.listing(shard_key(name))))


def upload_files(store: Store, local_dir: Path, rels: Iterable[str]) -> None:
    """Upload ``local_dir/<rel>`` to ``<prefix>/<rel>`` for each rel (in parallel, each checked)."""
    rels = list(rels)
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda rel: store.upload(local_dir / rel, rel), rels))


def publish_archive_files(store: Store, archive_dir: Path, extra: Iterable[str] = ()) -> None:
    """Upload the archive-level files of ``archive_dir`` (and ``extra`` files), then ``manifest.json`` last.

    Raises:
        ArchiveError: ``archive_dir`` has no manifest (nothing to commit).
    """
    if not (archive_dir / MANIFEST_FILE).is_file():
        raise ArchiveError(f"{archive_dir}: no {MANIFEST_FILE} to publish")
    names = [n for n in ARCHIVE_FILES if n != MANIFEST_FILE and (archive_dir / n).is_file()]
    names += [n for n in extra if (archive_dir / n).is_file()]
    upload_files(store, archive_dir, names)
    store.upload(archive_dir / MANIFEST_FILE, MANIFEST_FILE)


__all__ = [
    "committed_shard_infos",
    "complete_shards",
    "mirror_shard_sidecars",
    "publish_archive_files",
    "publish_shard",
    "remove_shard",
    "shard_key",
    "uncommit",
    "upload_files",
]
