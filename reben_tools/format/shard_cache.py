"""Reading archives from a store: a node-local cache of the archive, its shards checked before use.

LMDB reads local files (it memory-maps ``data.mdb``), so an archive in a store is read through a
local copy on each node: :func:`localise_archive` fetches the archive-level files
(``manifest.json``, the metadata files, ``patches.parquet``, ``report.json``) into an *image*
folder of the cache and returns it; every reader then opens the image like a local archive
(``format.reader.Archive`` notices the image and fetches each shard the first time it is
used, through :class:`ShardCache`).

- **Checked before first use.** A shard's files (``data.mdb``, ``keys.parquet``) are
  downloaded into a temporary folder, their sha256 computed while they stream in and compared
  with the manifest's (``files`` of the shard entry; archives from before it was recorded:
  the content digest over the LMDB's keys and values, after the LMDB size check), and only
  then renamed into place, with a marker recording the digests and the files' ``stat``
  (size, mtime, ctime, inode). A later use trusts a copy only when its marker names the
  manifest's digests and the stat is unchanged; anything else (a partial or edited file --
  any write changes the ctime --, a copy of another version of the archive, a missing
  marker) is re-hashed, and refetched if it differs. A copy that does not match is never opened.
- **A new version of the archive** (another ``manifest.json`` at the URL, compared by ETag
  and size at each open) refreshes the archive-level files; shards whose digests did not
  change are kept, the others are refetched on use and shards the new manifest no longer
  lists are removed.
- **Bounded size.** With ``max_bytes`` (``--cache-size``), shards are evicted least recently
  used first (their last use is the mtime of a ``.used`` file) to make room, never those of
  the working set being fetched. :meth:`ShardCache.prefetch` of a working set larger than
  the bound raises :class:`CacheFullError` before anything is downloaded.
- **Several processes** of a node (torchrun ranks, DataLoader workers) share a cache: a shard
  is fetched once under a lock file, and the other processes wait for it.

Cache folder: ``--cache-dir``, else ``$REBEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/reben-tools``
(``~/.cache/reben-tools``); bound: ``--cache-size``, else ``$REBEN_CACHE_SIZE`` (``50G``,
``500M``, bytes; unset = unbounded).

Owns: :func:`localise_archive`, :func:`localise_for_verify`, :class:`ShardCache`,
:func:`cache_for`, :class:`CacheFullError`, :class:`ShardIntegrityError`.
Does not own: stores and transfers (``format.object_store``), opening LMDB (``format.reader``),
which shards an epoch reads (``learn.data.shard_sampler``), the cache folder and bound
settings (``format.cache_settings``, re-exported here).
May import: ``format.layout``, ``format.manifest``, ``format.envcheck``, ``format.shards``,
``format.object_store``, ``format.cache_settings``, lmdb.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reben_tools.format.cache_settings import (
    CACHE_ENV,
    CACHE_SIZE_ENV,
    cache_settings,
    default_cache_dir,
    parse_size,
    resolve_cache_dir,
    resolve_max_bytes,
)
from reben_tools.format.layout import ARCHIVE_FILES, MANIFEST_FILE, SHARD_KEYS_FILE, SHARDS_DIR, ArchiveError
from reben_tools.format.object_store import Store, StoreError, is_remote

SOURCE_FILE = ".source.json"
MARKER_FILE = ".verified.json"
USED_FILE = ".used"
SHARD_FILES = ("data.mdb", SHARD_KEYS_FILE)
"""What a reader needs of a shard (``rows.parquet`` and ``shard.json`` are the builder's)."""
FETCH_THREADS = 8


class CacheFullError(ArchiveError):
    """The shards one epoch (or one read) needs do not fit in the bounded cache; the message says how much."""


class ShardIntegrityError(ArchiveError):
    """A shard fetched from the store does not match the manifest's digests (names the object)."""


# ------------------------------------------------------------------------------ small helpers


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _content_digest(env_dir: Path, file_bytes: int | None) -> str:
    """The archive content digest of an LMDB directory (for archives whose manifest has no file digests)."""
    import lmdb

    from reben_tools.format.envcheck import check_data_file
    from reben_tools.format.shards import ContentDigest

    check_data_file(env_dir, file_bytes)
    digest = ContentDigest()
    env = lmdb.open(str(env_dir), readonly=True, lock=False, readahead=False, subdir=True)
    try:
        with env.begin(buffers=True) as txn:
            for key, value in txn.cursor():
                digest.update(bytes(key), value)
    finally:
        env.close()
    return digest.hexdigest()


def image_dir_for(url: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder of the archive at ``url``: a readable tail of the URL and a hash of all of it."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", url.rstrip("/").split("://", 1)[-1])[-48:].strip("._") or "archive"
    return resolve_cache_dir(cache_dir) / "archives" / f"{tail}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


# ------------------------------------------------------------------------------ archive-level files


def _refresh_archive_files(store: Store, image: Path) -> None:
    """Bring the image's archive-level files in line with the store (manifest last checked)."""
    source_path = image / SOURCE_FILE
    try:
        recorded = json.loads(source_path.read_text("utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        recorded = {}
    for _attempt in range(3):
        manifest_info = store.info(MANIFEST_FILE)
        if manifest_info is None:
            raise ArchiveError(
                f"{store.url}: no archive here (no {MANIFEST_FILE}); its build has not finished, or the URL "
                "names another prefix"
            )
        files: dict[str, dict[str, Any]] = {}
        for name in ARCHIVE_FILES:
            info = manifest_info if name == MANIFEST_FILE else store.info(name)
            local = image / name
            if info is None:
                local.unlink(missing_ok=True)
                continue
            entry = {"size": info["size"], "etag": info["etag"]}
            old = recorded.get(name)
            if old and local.is_file() and {k: old.get(k) for k in entry} == entry and old.get("stat") == _stat(local):
                files[name] = old
                continue
            tmp = image / f".{name}.tmp-{uuid.uuid4().hex}"
            try:
                store.download(name, tmp, info["size"])
                etag = info["etag"]
                md5 = etag and re.fullmatch(r"[0-9a-f]{32}", etag)
                if md5 and hashlib.md5(tmp.read_bytes(), usedforsecurity=False).hexdigest() != etag:
                    raise StoreError(f"{store.url_of(name)}: downloaded bytes do not match the ETag {etag}")
                os.replace(tmp, local)
            finally:
                tmp.unlink(missing_ok=True)
            files[name] = {**entry, "stat": _stat(local)}
        if _same(store.info(MANIFEST_FILE), manifest_info):
            break
    else:
        raise ArchiveError(f"{store.url}: the archive kept changing while it was read; try again")
    tmp = image / f".{SOURCE_FILE}.tmp-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps({"url": store.url, "files": files}, indent=1) + "\n", "utf-8")
    os.replace(tmp, source_path)


def _same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return a is not None and b is not None and a["size"] == b["size"] and a["etag"] == b["etag"]


def localise_archive(
    url: str,
    cache_dir: str | os.PathLike[str] | None = None,
    shards: Iterable[str] | str | None = None,
    max_bytes: int | str | None = None,
) -> Path:
    """The node-local image of the archive at ``url``, ready for every reader of a local archive.

    Fetches (or refreshes) the archive-level files; shards are fetched when first used, or now
    for ``shards`` (``"all"`` or names).

    Args:
        url: the archive's prefix in a store (any fsspec URL, e.g. ``s3://bucket/archive``).
        cache_dir: the cache folder (default: see the module docstring).
        shards: shards to fetch now: None (none), ``"all"``, or names.
        max_bytes: the cache bound (default: ``--cache-size`` / ``$REBEN_CACHE_SIZE``).

    Raises:
        ArchiveError: the URL holds no archive (no manifest), or a fetched shard does not
            match the manifest (:class:`ShardIntegrityError`), or the shards do not fit
            (:class:`CacheFullError`); StoreError: the store cannot be read.
    """
    if not is_remote(url):
        raise ArchiveError(f"{url}: not the URL of a store")
    store = Store(url)
    image = image_dir_for(store.url, cache_dir)
    image.mkdir(parents=True, exist_ok=True)
    with _flock(image / ".lock"):
        _refresh_archive_files(store, image)
        _prune_unlisted(image)
    if shards is not None:
        cache = ShardCache(image, max_bytes=max_bytes)
        cache.prefetch(cache.names if shards == "all" else list(shards))
    return image


def _prune_unlisted(image: Path) -> None:
    """Remove cached shards the image's manifest no longer lists (left from another version)."""
    shards_dir = image / SHARDS_DIR
    if not shards_dir.is_dir():
        return
    from reben_tools.format.manifest import read_manifest

    listed = {s["name"] for s in read_manifest(image)["shards"]}
    for entry in shards_dir.iterdir():
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in listed:
            shutil.rmtree(entry, ignore_errors=True)


def cache_for(path: str | os.PathLike[str], max_bytes: int | str | None = None) -> ShardCache | None:
    """The :class:`ShardCache` of an archive image folder, None for any other folder."""
    path = Path(path)
    if not (path / SOURCE_FILE).is_file():
        return None
    return ShardCache(path, max_bytes=max_bytes)


# ------------------------------------------------------------------------------ shards


class ShardCache:
    """Fetching, checking and evicting the shards of one archive image (see the module docstring).

    Picklable (a DataLoader worker gets its own store connection). ``stats`` counts what this
    process fetched: ``{"shards": n, "bytes": n, "reused": n}``.
    """

    def __init__(
        self, image: str | os.PathLike[str], max_bytes: int | str | None = None, every_file: bool = False
    ) -> None:
        from reben_tools.format.manifest import read_manifest

        self.image = Path(image)
        self.url = json.loads((self.image / SOURCE_FILE).read_text("utf-8"))["url"]
        self.store = Store(self.url)
        self.manifest = read_manifest(self.image)
        self.entries = {s["name"]: s for s in self.manifest["shards"]}
        self.names = [s["name"] for s in self.manifest["shards"]]
        self.max_bytes = resolve_max_bytes(max_bytes)
        self.root = self.image.parent.parent  # the cache folder (images live in <root>/archives/)
        self.every_file = every_file  # reben verify: every file the manifest lists (rows.parquet too)
        self.pinned: set[str] = set()
        self.stats = {"shards": 0, "bytes": 0, "reused": 0}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock"] = None
        state["stats"] = {"shards": 0, "bytes": 0, "reused": 0}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- what a shard must be ----------------------------------------------------------

    def expected(self, name: str) -> dict[str, dict[str, Any]]:
        """``{file: {"bytes", "sha256"}}`` the manifest promises for the shard's reader files;
        old manifests without file digests: ``data.mdb`` with its ``content_sha256`` only."""
        entry = self.entries[name]
        files = entry.get("files")
        if isinstance(files, dict) and "data.mdb" in files:
            return {
                f: {"bytes": int(d["bytes"]), "sha256": d["sha256"]}
                for f, d in files.items()
                if self.every_file or f in SHARD_FILES
            }
        return {"data.mdb": {"bytes": entry.get("file_bytes"), "content_sha256": entry["sha256"]}}

    def shard_bytes(self, name: str) -> int:
        """Bytes the shard takes in the cache (0 where the manifest does not say)."""
        return sum(int(d.get("bytes") or 0) for d in self.expected(name).values())

    def path(self, name: str) -> Path:
        return self.image / SHARDS_DIR / name

    def is_valid(self, name: str, etags: dict[str, str | None] | None = None) -> bool:
        """Whether the cached copy of ``name`` was checked against these digests and is unchanged since
        (and, with ``etags``, was fetched from objects with these ETags: the store's copy is unchanged too)."""
        directory = self.path(name)
        try:
            marker = json.loads((directory / MARKER_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            return False
        expected = self.expected(name)
        if marker.get("expected") != expected:
            return False
        if etags is not None and (not all(etags.values()) or marker.get("etags") != etags):
            return False
        try:
            return all(marker["stat"].get(f) == _stat(directory / f) for f in expected)
        except (OSError, KeyError, AttributeError):
            return False

    def _check_copy(self, directory: Path, name: str, digests: dict[str, str] | None = None) -> str | None:
        """None when ``directory`` holds the shard's files as the manifest says, else what differs."""
        problems = []
        for file, want in self.expected(name).items():
            path = directory / file
            if not path.is_file():
                problems.append(f"{file} is missing")
                continue
            if want.get("bytes") is not None and path.stat().st_size != want["bytes"]:
                problems.append(f"{file} has {path.stat().st_size} bytes, the manifest says {want['bytes']}")
                continue
            if "sha256" in want:
                got = (digests or {}).get(file) or _sha256(path)
                if got != want["sha256"]:
                    problems.append(f"{file} sha256 {got}, the manifest says {want['sha256']}")
            else:
                try:
                    got = _content_digest(directory, want.get("bytes"))
                except ArchiveError as exc:
                    problems.append(str(exc))
                    continue
                if got != want["content_sha256"]:
                    problems.append(f"content sha256 {got}, the manifest says {want['content_sha256']}")
        return "; ".join(problems) or None

    def _mark(self, name: str, etags: dict[str, str | None] | None = None) -> None:
        directory = self.path(name)
        expected = self.expected(name)
        marker = {"expected": expected, "stat": {f: _stat(directory / f) for f in expected}, "etags": etags}
        tmp = directory / f".{MARKER_FILE}.tmp-{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(marker) + "\n", "utf-8")
        os.replace(tmp, directory / MARKER_FILE)

    def _touch(self, name: str) -> None:
        used = self.path(name) / USED_FILE
        try:
            used.touch()
            os.utime(used)
        except OSError:
            pass

    # -- fetching ----------------------------------------------------------------------

    def ensure(self, name: str, keep_mismatch: bool = False, etags: dict[str, str | None] | None = None) -> str | None:
        """Make the shard's checked copy available at :meth:`path` (fetching it if needed).

        Args:
            keep_mismatch: ``reben verify``: keep a fetched copy that does not match the manifest
                (unmarked, so no other reader trusts it) and return what differs, instead of raising.
            etags: ``reben verify``: the ETags the store lists for the shard's files now; a cached
                copy fetched from other objects (or whose ETags are unknown) is fetched again, so
                the check is of the store's objects.

        Returns:
            None, or with ``keep_mismatch`` what differs between the store's shard and the manifest.

        Raises:
            ShardIntegrityError: the store's copy does not match the manifest.
            CacheFullError: the shard does not fit in the bounded cache.
            StoreError: the store cannot be read.
        """
        if name not in self.entries:
            raise ArchiveError(f"{self.url}: shard {name!r} is not in the manifest")
        if self.is_valid(name, etags):
            self._touch(name)
            self._count("reused")
            return None
        shards_dir = self.image / SHARDS_DIR
        with _flock(shards_dir / f".{name}.lock"):
            if self.is_valid(name, etags):
                self._touch(name)
                self._count("reused")
                return None
            directory = self.path(name)
            if directory.is_dir() and etags is None and self._check_copy(directory, name) is None:
                self._mark(name)  # a good copy without a (current) marker: checked, kept
                self._touch(name)
                self._count("reused")
                return None
            shutil.rmtree(directory, ignore_errors=True)
            self._make_room(self.shard_bytes(name), keep={name} | self.pinned)
            tmp = shards_dir / f".tmp-{name}-{uuid.uuid4().hex}"
            tmp.mkdir(parents=True)
            try:
                digests, fetched, fetched_etags = {}, 0, {}
                for file in self.expected(name):
                    key = f"{SHARDS_DIR}/{name}/{file}"
                    info = self.store.info(key)
                    if info is None:
                        raise StoreError(f"{self.store.url_of(key)}: no such object (the manifest lists the shard)")
                    fetched_etags[file] = info["etag"]
                    digests[file] = self.store.download(key, tmp / file)
                    fetched += (tmp / file).stat().st_size
                if SHARD_KEYS_FILE not in digests:  # old manifests: keys.parquet is not listed, fetch it if present
                    key = f"{SHARDS_DIR}/{name}/{SHARD_KEYS_FILE}"
                    if self.store.info(key) is not None:
                        self.store.download(key, tmp / SHARD_KEYS_FILE)
                        fetched += (tmp / SHARD_KEYS_FILE).stat().st_size
                problem = self._check_copy(tmp, name, digests)
                if problem and not keep_mismatch:
                    raise ShardIntegrityError(
                        f"{self.store.url_of(f'{SHARDS_DIR}/{name}')}: the store's shard does not match the "
                        f"manifest ({problem}); not used"
                    )
                os.rename(tmp, directory)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if problem:
                return problem
            self._mark(name, fetched_etags)
            self._touch(name)
            self._count("shards")
            self._count("bytes", fetched)
        return None

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def prefetch(self, names: Iterable[str], threads: int = FETCH_THREADS, progress: bool = False) -> dict[str, Any]:
        """Fetch the shards one epoch reads (the working set) in parallel; they are not evicted for each other.

        Raises:
            CacheFullError: the working set is larger than the cache bound (before any download).
        """
        names = list(dict.fromkeys(names))
        need = sum(self.shard_bytes(n) for n in names)
        if self.max_bytes is not None and need > self.max_bytes:
            raise CacheFullError(
                f"{self.url}: this reads {len(names)} shard(s) together (one epoch's working set), "
                f"{need / 2**30:.2f} GiB, but the cache at {self.root} is bounded to {self.max_bytes / 2**30:.2f} GiB "
                "(--cache-size); raise the bound, or spread the shards over more nodes (--sampler shard-local)"
            )
        self.pinned = set(names)
        missing = [n for n in names if not self.is_valid(n)]
        if not missing:
            for n in names:
                self._touch(n)
            return dict(self.stats)
        from tqdm import tqdm

        with ThreadPoolExecutor(max(1, min(threads, len(missing)))) as pool:
            for _ in tqdm(
                pool.map(self.ensure, missing), total=len(missing), desc="fetch", unit="shard", disable=not progress
            ):
                pass
        for n in names:
            if n not in missing:
                self._touch(n)
        return dict(self.stats)

    # -- eviction ----------------------------------------------------------------------

    def _cached_shards(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, folder) of every cached shard of every archive of the cache folder."""
        out = []
        for shard_dir in (self.root / "archives").glob(f"*/{SHARDS_DIR}/*"):
            if not shard_dir.is_dir() or shard_dir.name.startswith("."):
                continue
            size = sum(p.stat().st_size for p in shard_dir.iterdir() if p.is_file())
            used = shard_dir / USED_FILE
            try:
                when = used.stat().st_mtime
            except OSError:
                when = 0.0
            out.append((when, size, shard_dir))
        return sorted(out, key=lambda t: (t[0], str(t[2])))

    def _make_room(self, incoming: int, keep: set[str]) -> None:
        if self.max_bytes is None:
            return
        with _flock(self.root / ".evict.lock"):
            shards = self._cached_shards()
            usage = sum(size for _, size, _ in shards)
            for _, size, shard_dir in shards:
                if usage + incoming <= self.max_bytes:
                    return
                if shard_dir.parent.parent == self.image and shard_dir.name in keep:
                    continue
                shutil.rmtree(shard_dir, ignore_errors=True)
                usage -= size
            if usage + incoming > self.max_bytes:
                raise CacheFullError(
                    f"{self.url}: the cache at {self.root} is bounded to {self.max_bytes / 2**30:.2f} GiB "
                    f"(--cache-size) and holds {usage / 2**30:.2f} GiB of shards in use; "
                    f"{incoming / 2**30:.2f} GiB more do not fit; raise the bound"
                )


def localise_for_verify(
    url: str, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, list[tuple[str, str]], Iterator[tuple[str, str | None]]]:
    """``reben verify URL``: the archive image, the faults only the store's listing shows, and the
    shards fetched one by one for verify's own checks.

    Returns:
        ``(image, unlisted, fetched)``: ``unlisted`` holds ``(shard, reason)`` for shards in the
        store the manifest does not list; ``fetched`` yields ``(shard, problem)`` for every shard
        of the manifest, in its order, once that shard's copy is in the image: ``problem`` is None,
        or the shard's objects are missing or unreadable, or a file's sha256 differs from the
        manifest's (such a copy is kept, unmarked so no reader uses it, for verify's checks, which
        name the key where they can). An unbounded cache fetches ahead in parallel; a bounded one
        (``--cache-size``) fetches each shard when the previous one has been checked, so the
        least recently used copies can make room and an archive larger than the bound is verified.
    """
    image = localise_archive(url, cache_dir)
    cache = ShardCache(image, max_bytes=None, every_file=True)
    listing = cache.store.listing(SHARDS_DIR)
    stored = {key.split("/")[1] for key in listing if key.count("/") >= 2 and not key.split("/")[1].startswith(".")}
    unlisted = [
        (name, f"{cache.store.url_of(f'{SHARDS_DIR}/{name}')}: shard in the store is not listed in the manifest")
        for name in sorted(stored - set(cache.names))
    ]

    def fetch(name: str) -> tuple[str, str | None]:
        etags = {f: listing.get(f"{SHARDS_DIR}/{name}/{f}", {}).get("etag") for f in cache.expected(name)}
        try:
            problem = cache.ensure(name, keep_mismatch=True, etags=etags)
        except (StoreError, CacheFullError) as exc:
            shutil.rmtree(cache.path(name), ignore_errors=True)
            return name, str(exc)
        if problem:
            return name, f"{cache.store.url_of(f'{SHARDS_DIR}/{name}')}: differs from the manifest ({problem})"
        return name, None

    def fetched() -> Iterator[tuple[str, str | None]]:
        if cache.max_bytes is not None:
            yield from map(fetch, cache.names)  # lazily: the next shard once the consumer checked this one
            return
        with ThreadPoolExecutor(FETCH_THREADS) as pool:
            yield from pool.map(fetch, cache.names)

    return image, unlisted, fetched()


__all__ = [
    "CACHE_ENV",
    "CACHE_SIZE_ENV",
    "CacheFullError",
    "ShardCache",
    "ShardIntegrityError",
    "cache_for",
    "cache_settings",
    "default_cache_dir",
    "image_dir_for",
    "localise_archive",
    "localise_for_verify",
    "parse_size",
]
