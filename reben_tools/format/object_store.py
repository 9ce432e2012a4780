"""Archives in object storage: URLs, one fsspec file system per store, checked transfers, the lock object.

Any fsspec URL names a store (``s3://bucket/prefix``, ``gs://...``, ``az://...``,
``memory://...``); ``file://`` URLs and plain paths are local folders and stay with the local
code paths. Credentials and endpoints come from the store's own configuration (for S3: the
``AWS_*`` environment variables, ``~/.aws``, instance roles; ``AWS_ENDPOINT_URL`` for an
S3-compatible endpoint), never from reben-tools.

- **Transfers are checked.** :meth:`Store.upload` compares the stored object's size with
  the local file's and, where the store reports an MD5 ETag (S3 single-part uploads) or a
  multipart ETag (MD5 of the part MD5s), that too; :meth:`Store.download` writes an object
  into a file, checks its size and returns its sha256.
- **Conditional writes** (:meth:`Store.create_exclusive`, :meth:`Store.replace_if`,
  :meth:`Store.delete_if`: ``If-None-Match: *`` / ``If-Match``) where the store takes them
  (S3 and S3-compatible stores), for the build's lock object (``format.store_lock``).

Owns: telling URLs from paths (:func:`is_url`, :func:`is_remote`, :func:`local_path`),
:class:`Store`, :class:`StoreError`.
Does not own: what an archive holds (``format.layout``), uploading shards and archive files in
order (``format.remote_archive``), the lock object (``format.store_lock``), the node-local
cache (``format.shard_cache``).
May import: ``format.layout``, fsspec.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reben_tools.format.layout import ArchiveError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
LOCAL_SCHEMES = frozenset({"file", "local"})
TRANSFER_BLOCK = 8 << 20
PART_SIZE = 64 << 20
"""Multipart part size of uploads (s3fs uploads files of at least twice this size in parts)."""


class StoreError(ArchiveError):
    """A store cannot be reached, read or written; the message names the URL and the cause."""


def url_scheme(value: object) -> str | None:
    """The scheme of a URL string (``"s3"`` for ``s3://bucket/x``), None for anything else."""
    if not isinstance(value, str):
        return None
    match = _URL.match(value)
    return match.group(1).lower() if match else None


def is_url(value: object) -> bool:
    """Whether ``value`` is a string of the form ``scheme://...`` (``file://`` included)."""
    return url_scheme(value) is not None


def is_remote(value: object) -> bool:
    """Whether ``value`` is a URL of a store other than the local file system."""
    scheme = url_scheme(value)
    return scheme is not None and scheme not in LOCAL_SCHEMES


def local_path(value: str | os.PathLike[str]) -> Path:
    """The local path a plain path or a ``file://`` URL names.

    Raises:
        StoreError: ``value`` is a URL of a remote store.
    """
    if isinstance(value, str) and is_url(value):
        if is_remote(value):
            raise StoreError(f"{value}: a URL of a remote store, not a local path")
        from urllib.parse import unquote, urlparse

        parsed = urlparse(value)
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"{value}: file:// URLs name this machine's files (file:///path)")
        return Path(unquote(parsed.path))
    return Path(value)


def _md5_etags(path: Path, part_size: int) -> set[str]:
    """The ETags S3 gives ``path`` uploaded in one part and in parts of ``part_size`` bytes."""
    whole = hashlib.md5(usedforsecurity=False)
    parts = []
    with open(path, "rb") as fh:
        while block := fh.read(part_size):
            whole.update(block)
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
    etags = {whole.hexdigest()}
    if parts:
        etags.add(f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}")
    return etags


def _etag(info: dict[str, Any]) -> str | None:
    value = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    return str(value).strip('"').lower() if value else None


class Store:
    """One prefix of an object store (or any fsspec file system), addressed by paths relative to it.

    The fsspec file system is created on first use in each process (it holds connections
    and an event loop, which must not cross a fork); a Store pickles as its URL.

    Args:
        url: the prefix, e.g. ``s3://bucket/archives/demo`` (a trailing ``/`` is ignored).
    """

    def __init__(self, url: str) -> None:
        if not is_url(url):
            raise StoreError(f"{url}: not a URL (scheme://...)")
        self.url = url.rstrip("/")
        self.scheme = url_scheme(url)
        self._fs = None
        self._pid: int | None = None
        self._root: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "scheme": self.scheme, "_fs": None, "_pid": None, "_root": None}

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- the file system ---------------------------------------------------------------

    @property
    def fs(self) -> Any:
        if self._fs is None or self._pid != os.getpid():
            try:
                from fsspec.core import url_to_fs  # type: ignore[import-untyped]  # fsspec ships no stubs or py.typed

                fs, root = url_to_fs(self.url)
            except ImportError as exc:
                raise StoreError(
                    f"{self.url}: no fsspec implementation for {self.scheme}:// ({exc}); install it "
                    "(s3fs for s3://, gcsfs for gs://, adlfs for az://)"
                ) from None
            except (ValueError, OSError) as exc:
                raise StoreError(f"{self.url}: cannot open the store ({exc})") from None
            self._fs, self._root, self._pid = fs, root.rstrip("/"), os.getpid()
        return self._fs

    @property
    def root(self) -> str:
        self.fs  # noqa: B018 (sets _root)
        return self._root or ""

    def path(self, rel: str = "") -> str:
        """The file system path of ``rel`` (relative to the prefix)."""
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def url_of(self, rel: str = "") -> str:
        return f"{self.url}/{rel}" if rel else self.url

    @property
    def is_s3(self) -> bool:
        return type(self.fs).__name__ == "S3FileSystem"

    def _fail(self, what: str, rel: str, exc: BaseException) -> StoreError:
        return StoreError(f"{self.url_of(rel)}: cannot {what} ({type(exc).__name__}: {exc})")

    # -- reading -----------------------------------------------------------------------

    def check_reachable(self) -> None:
        """Raise StoreError naming the URL when the bucket (or container) cannot be listed."""
        fs = self.fs
        top = self.root.split("/", 1)[0]
        try:
            fs.invalidate_cache()
            if top and not fs.exists(top):
                raise StoreError(
                    f"{self.url}: the bucket {top!r} does not exist or is not visible with these credentials"
                )
        except StoreError:
            raise
        except Exception as exc:
            raise self._fail("reach the store", "", exc) from None

    def listing(self, rel: str = "") -> dict[str, dict[str, Any]]:
        """``{path relative to the prefix: {"size": bytes, "etag": str | None}}`` of every object under ``rel``."""
        fs = self.fs
        base = self.path(rel)
        try:
            fs.invalidate_cache()
            found = fs.find(base, detail=True, withdirs=False)
        except FileNotFoundError:
            return {}
        except Exception as exc:
            raise self._fail("list", rel, exc) from None
        out = {}
        prefix = self.root + "/"
        for name, info in found.items():
            name = name.rstrip("/")
            if info.get("type") == "directory" or not name.startswith(prefix):
                continue
            out[name[len(prefix) :]] = {"size": int(info.get("size") or 0), "etag": _etag(info)}
        return out

    def info(self, rel: str) -> dict[str, Any] | None:
        """Size and ETag of one object, None when it does not exist."""
        fs = self.fs
        try:
            fs.invalidate_cache(self.path(rel))
            info = fs.info(self.path(rel))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail("look up", rel, exc) from None
        if info.get("type") == "directory":
            return None
        return {"size": int(info.get("size") or 0), "etag": _etag(info), "raw": info}

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, None when it does not exist."""
        try:
            data: bytes = self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail("read", rel, exc) from None
        return data

    def download(self, rel: str, local: Path, expected_bytes: int | None = None) -> str:
        """Download one object into ``local`` (a new file); returns the file's sha256.

        The object is streamed by the file system's own ``get_file`` (one request on S3), then
        hashed from the file just written (in the page cache): on a small machine this is about
        twice as fast as hashing while reading in ranged blocks.

        Raises:
            StoreError: the object is missing or unreadable, or its size is not ``expected_bytes``.
        """
        try:
            self.fs.get_file(self.path(rel), str(local))
        except FileNotFoundError:
            raise StoreError(f"{self.url_of(rel)}: no such object") from None
        except Exception as exc:
            raise self._fail("download", rel, exc) from None
        digest = hashlib.sha256()
        size = 0
        with open(local, "rb") as fh:
            while block := fh.read(TRANSFER_BLOCK):
                digest.update(block)
                size += len(block)
        if expected_bytes is not None and size != expected_bytes:
            raise StoreError(f"{self.url_of(rel)}: {size} bytes downloaded, {expected_bytes} expected")
        return digest.hexdigest()

    # -- writing -----------------------------------------------------------------------

    def upload(self, local: Path, rel: str) -> dict[str, Any]:
        """Upload one file and check the stored object against it.

        Returns:
            ``{"bytes": size, "check": "md5" | "multipart-md5" | "size"}``: what was compared
            beyond the size (the store's ETag when it is an MD5 of the content or of its parts).

        Raises:
            StoreError: the upload failed, or the stored object's size or ETag differs.
        """
        local = Path(local)
        size = local.stat().st_size
        try:
            if self.is_s3:
                self.fs.put_file(str(local), self.path(rel), chunksize=PART_SIZE)
            else:
                self.fs.makedirs(self.fs._parent(self.path(rel)), exist_ok=True)
                self.fs.put_file(str(local), self.path(rel))
        except Exception as exc:
            raise self._fail("upload", rel, exc) from None
        info = self.info(rel)
        if info is None:
            raise StoreError(f"{self.url_of(rel)}: uploaded, but the store does not list it")
        if info["size"] != size:
            raise StoreError(f"{self.url_of(rel)}: stored {info['size']} bytes, {size} uploaded")
        etag = info["etag"]
        check = "size"
        if etag and re.fullmatch(r"[0-9a-f]{32}(-\d+)?", etag):
            if etag not in _md5_etags(local, PART_SIZE):
                raise StoreError(f"{self.url_of(rel)}: the stored object's ETag {etag} is not the MD5 of {local}")
            check = "multipart-md5" if "-" in etag else "md5"
        return {"bytes": size, "check": check}

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a small object and check its size."""
        try:
            self.fs.pipe_file(self.path(rel), data)
        except Exception as exc:
            raise self._fail("write", rel, exc) from None
        info = self.info(rel)
        if info is None or info["size"] != len(data):
            raise StoreError(f"{self.url_of(rel)}: written, but the store holds {info and info['size']} bytes")

    def delete(self, rels: Iterable[str]) -> None:
        """Delete objects (missing ones are fine)."""
        paths = [self.path(r) for r in rels]
        if not paths:
            return
        try:
            self.fs.rm(paths)
        except FileNotFoundError:
            for p in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(p)
        except Exception as exc:
            raise self._fail("delete", paths[0][len(self.root) + 1 :], exc) from None
        self.fs.invalidate_cache()

    def abort_multipart_uploads(self) -> int:
        """S3: abort unfinished multipart uploads under the prefix (parts of interrupted uploads,
        invisible to readers but stored); returns how many. 0 elsewhere."""
        if not self.is_s3:
            return 0
        bucket, _, key = self.root.partition("/")
        try:
            answer = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key + "/" if key else "")
            uploads = answer.get("Uploads", [])
            for upload in uploads:
                self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except Exception:
            return 0
        return len(uploads)

    # -- conditional writes (the lock object) ------------------------------------------

    @property
    def conditional_writes(self) -> bool:
        """Whether this store takes ``If-None-Match`` / ``If-Match`` on writes (S3 and S3-compatible)."""
        return self.is_s3

    def _s3_key(self, rel: str) -> tuple[str, str]:
        bucket, _, key = self.path(rel).partition("/")
        return bucket, key

    def create_exclusive(self, rel: str, data: bytes) -> str:
        """Create ``rel`` only if it does not exist (``If-None-Match: *``); returns its ETag.

        Raises:
            FileExistsError: it exists.
            NotImplementedError: the store has no conditional writes.
        """
        if not self.conditional_writes:
            raise NotImplementedError(self.scheme)
        bucket, key = self._s3_key(rel)
        try:
            answer = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except FileExistsError:
            raise
        except Exception as exc:
            if "PreconditionFailed" in repr(exc) or "pre-conditions" in str(exc):
                raise FileExistsError(self.url_of(rel)) from None
            raise self._fail("create", rel, exc) from None
        return _etag(answer) or ""

    def replace_if(self, rel: str, data: bytes, etag: str) -> str:
        """Overwrite ``rel`` only if its ETag is still ``etag`` (``If-Match``); returns the new ETag.

        Raises:
            FileExistsError: the object changed (or vanished) since ``etag`` was read.
        """
        if not self.conditional_writes:
            raise NotImplementedError(self.scheme)
        bucket, key = self._s3_key(rel)
        try:
            answer = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=f'"{etag}"')
        except FileNotFoundError:
            raise FileExistsError(self.url_of(rel)) from None
        except Exception as exc:
            if "PreconditionFailed" in repr(exc) or "pre-conditions" in str(exc) or "NoSuchKey" in repr(exc):
                raise FileExistsError(self.url_of(rel)) from None
            raise self._fail("rewrite", rel, exc) from None
        return _etag(answer) or ""

    def delete_if(self, rel: str, etag: str) -> bool:
        """Delete ``rel`` only if its ETag is still ``etag``; returns whether it was deleted."""
        if not self.conditional_writes:
            raise NotImplementedError(self.scheme)
        bucket, key = self._s3_key(rel)
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
        except Exception:
            return False
        self.fs.invalidate_cache()
        return True


__all__ = [
    "Store",
    "StoreError",
    "is_remote",
    "is_url",
    "local_path",
    "url_scheme",
]
