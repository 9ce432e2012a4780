"""Inputs that live elsewhere: ``s3://`` prefixes, ``https://`` files, and how GDAL and Python reach them.

A location is either a local :class:`~pathlib.Path` or a :class:`RemotePath`. A
``RemotePath`` answers the part of the ``Path`` API discovery uses (``name``, ``suffix``,
``/``, ``is_dir``, ``is_file``, ``iterdir``, ``glob`` of one level, ``read_bytes``) through
fsspec (``s3fs`` for ``s3://``, HTTP HEAD / GET for ``https://``), and hands GDAL its
virtual path when opened (``os.fspath``: ``/vsis3/bucket/key``, ``/vsicurl/https://...``),
so ``rasterio.open(location)`` works for both kinds. A URL is never made absolute
against a folder (:func:`absolute`), and ``str()`` of a location never holds a query
string (signed URLs keep theirs only on the way to GDAL).

Credentials and endpoints come only from the standard environment variables and
profiles (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_VIRTUAL_HOSTING``,
``AWS_NO_SIGN_REQUEST``, ``AWS_REQUEST_PAYER``): they are read by botocore and GDAL
themselves and never pass through a task, the manifest or the report;
:func:`redact` removes their values, endpoints and query strings from any text an
error may carry into ``report.json``. Planetary Computer asset URLs are signed when
opened (``planetary-computer`` package, when installed), never stored signed.

Remote reads retry with exponential backoff on 429, 5xx and time-outs: GDAL's own
(``GDAL_HTTP_MAX_RETRY`` ...) for pixels, urllib3's for HTTP HEAD / GET, botocore's for
S3 listings. :func:`configure_gdal` sets GDAL's HTTP and cache options once per process
(every worker calls it before its first block).

Owns: :class:`RemotePath`, :func:`location`, :func:`absolute`, :func:`is_url`,
:class:`RemoteSettings`, :func:`configure_gdal`, :func:`stamp` (ETag, size, last-modified),
:func:`check_readable`, :func:`redact`, :func:`http_session`, :class:`RemoteError`.
Does not own: what is read (scenes, corine, stac), when (pipeline).
May import: fsspec, s3fs, requests, urllib3, rasterio (lazily), planetary_computer (optional).
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REMOTE_SCHEMES = ("s3", "http", "https")
"""URL schemes accepted for an input (``s3://bucket/prefix``, ``https://host/file``)."""

SIGN_PLANETARY_COMPUTER = "planetary-computer"

_SECRET_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "PC_SDK_SUBSCRIPTION_KEY",
    "GS_SECRET_ACCESS_KEY",
    "GS_ACCESS_KEY_ID",
    "GDAL_HTTP_USERPWD",
    "GDAL_HTTP_BEARER",
    "GDAL_HTTP_HEADERS",
)
_SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|BEARER|USERPWD)", re.IGNORECASE)
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_S3_ENDPOINT")
_URL_QUERY = re.compile(r"((?:https?|s3)://[^\s?#'\"<>]+)\?[^\s'\"<>)]*")
_URL_USERINFO = re.compile(r"((?:https?|s3)://)[^/\s@'\"]+@")


class RemoteError(OSError):
    """A remote location cannot be listed or read; the message names the URL (redacted)."""


def is_url(value: object) -> bool:
    """Whether ``value`` is a URL of a remote input (``s3://``, ``http://``, ``https://``)."""
    if isinstance(value, RemotePath):
        return True
    if not isinstance(value, str):
        return False
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    return scheme in REMOTE_SCHEMES


def _from_vsi(value: str) -> str | None:
    """``/vsis3/b/k`` -> ``s3://b/k``; ``/vsicurl/https://...`` -> the URL; else None."""
    if value.startswith("/vsis3/"):
        return "s3://" + value.removeprefix("/vsis3/")
    if value.startswith("/vsicurl/"):
        return value.removeprefix("/vsicurl/")
    return None


def location(value: str | os.PathLike | RemotePath) -> Path | RemotePath:
    """A local :class:`Path` or a :class:`RemotePath` for an input given as text or path."""
    if isinstance(value, (RemotePath, Path)):
        return value
    text = str(value)
    converted = _from_vsi(text)
    if converted is not None:
        text = converted
    if is_url(text):
        return RemotePath(text)
    return Path(text)


def absolute(value: str) -> str:
    """``value`` made absolute against the current folder, unless it is a URL (kept as is)."""
    if is_url(value) or _from_vsi(str(value)) is not None:
        return str(value)
    return os.path.abspath(value)


def _resolve_against(base: Path, value: str) -> str:
    """A config file's relative path resolved against its folder; URLs kept as they are."""
    if is_url(value) or _from_vsi(value) is not None or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


class RemotePath:
    """A file or prefix in an object store or on an HTTP server, usable where a ``Path`` is.

    Attributes:
        url: the full URL (query string included, for a pre-signed URL).
        sign: ``"planetary-computer"`` to sign the URL (SAS token) each time it is opened.
    """

    __slots__ = ("_kind", "sign", "url")

    def __init__(self, url: str, sign: str | None = None, kind: str | None = None):
        parts = urlsplit(url)
        if parts.scheme.lower() not in REMOTE_SCHEMES or not parts.netloc:
            raise ValueError(f"not a remote URL: {redact(url)!r}")
        self.url = url
        self.sign = sign
        self._kind = kind  # "directory" / "file" when known from a listing

    # -- the Path-like part ------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()

    @property
    def public(self) -> str:
        """The URL without user info, query or fragment: what may be shown and recorded."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    @property
    def _key(self) -> str:
        """bucket/key for s3, host/path for http(s), without a trailing slash."""
        parts = urlsplit(self.url)
        return (parts.netloc.rsplit("@", 1)[-1] + parts.path).rstrip("/")

    @property
    def name(self) -> str:
        return PurePosixPath(urlsplit(self.url).path.rstrip("/")).name or urlsplit(self.url).netloc

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> RemotePath:
        parts = urlsplit(self.public)
        path = parts.path.rstrip("/")
        return RemotePath(urlunsplit((parts.scheme, parts.netloc, path.rsplit("/", 1)[0] or "/", "", "")), self.sign)

    def __truediv__(self, part: str) -> RemotePath:
        parts = urlsplit(self.url)
        return RemotePath(
            urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/" + str(part), parts.query, "")),
            self.sign,
        )

    def __str__(self) -> str:
        return self.public

    def __repr__(self) -> str:
        return f"RemotePath({self.public!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url.rstrip("/") == self.url.rstrip("/")

    def __hash__(self) -> int:
        return hash(self.url.rstrip("/"))

    def __lt__(self, other: RemotePath) -> bool:
        return str(self) < str(other)

    def __reduce__(self):
        return (RemotePath, (self.url, self.sign, self._kind))

    def __fspath__(self) -> str:
        """GDAL's virtual path (``/vsis3/...``, ``/vsicurl/...``), signed when needed."""
        return gdal_path(self)

    def with_kind(self, kind: str | None) -> RemotePath:
        return RemotePath(self.url, self.sign, kind)

    # -- listing and reading ---------------------------------------------------------
    def is_dir(self) -> bool:
        if self._kind is not None:
            return self._kind == "directory"
        if self.scheme != "s3":
            return False  # an HTTP server cannot be listed: https:// names single files
        return _guard(self, lambda: _s3fs().isdir(self._key))

    def is_file(self) -> bool:
        if self._kind is not None:
            return self._kind == "file"
        if self.scheme == "s3":
            return _guard(self, lambda: _s3fs().isfile(self._key))
        return _head(self) is not None

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def iterdir(self) -> list[RemotePath]:
        """The entries directly under this prefix (s3 only), sorted by name."""
        if self.scheme != "s3":
            raise RemoteError(f"{self}: an {self.scheme}:// location cannot be listed; name single files")
        entries = _guard(self, lambda: _s3fs().ls(self._key, detail=True))
        out = []
        for entry in entries:
            name = str(entry["name"]).rstrip("/")
            if name == self._key:
                continue
            kind = "directory" if entry.get("type") == "directory" else "file"
            out.append(RemotePath(f"s3://{name}", self.sign, kind))
        return sorted(out, key=lambda p: p.name)

    def glob(self, pattern: str) -> list[RemotePath]:
        """Entries whose name matches ``pattern`` (one level, ``*`` and ``?`` only, case-sensitive)."""
        if "/" in pattern or "**" in pattern:
            raise ValueError(f"only one-level patterns are supported on remote locations, got {pattern!r}")
        if self.scheme != "s3" or not self.is_dir():
            return []
        return [p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, pattern)]

    def read_bytes(self) -> bytes:
        if self.scheme == "s3":
            return _guard(self, lambda: _s3fs().cat_file(self._key))
        response = _request("GET", self)
        if response.status_code != 200:
            raise RemoteError(f"{self}: HTTP {response.status_code}")
        return response.content

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


def gdal_path(path: RemotePath | str) -> str:
    """GDAL's name of a remote file: ``/vsis3/bucket/key`` or ``/vsicurl/<url>`` (signed when needed)."""
    path = path if isinstance(path, RemotePath) else RemotePath(path)
    if path.scheme == "s3":
        return "/vsis3/" + path._key
    return "/vsicurl/" + signed_url(path)


def signed_url(path: RemotePath) -> str:
    """The URL to fetch: signed through ``planetary_computer.sign`` when the path asks for it."""
    if path.sign == SIGN_PLANETARY_COMPUTER:
        try:
            import planetary_computer
        except ImportError:
            return path.url
        return planetary_computer.sign(path.url)
    return path.url


# -- settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteSettings:
    """How remote reads behave (picklable: every block task carries it to its worker).

    Attributes:
        retries: attempts after the first on 429, 5xx and time-outs (GDAL, HTTP, S3 listing).
        retry_delay_s: first backoff delay; it doubles with each retry (GDAL adds jitter).
        timeout_s: HTTP time-out of one request.
        cache_mb: GDAL's in-memory cache of fetched remote chunks (headers and tiles), per process.
    """

    retries: int = 5
    retry_delay_s: float = 0.5
    timeout_s: float = 60.0
    cache_mb: int = 256


_CONFIGURED: RemoteSettings | None = None
_APPLIED: dict[str, str] = {}
_CONFIGURE_LOCK = threading.Lock()


def gdal_options(settings: RemoteSettings) -> dict[str, str]:
    """GDAL configuration options for remote reads (no credentials: GDAL reads those itself)."""
    options = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no listing of a product's folder on each open
        "GDAL_HTTP_MAX_RETRY": str(settings.retries),
        "GDAL_HTTP_RETRY_DELAY": f"{settings.retry_delay_s:g}",
        "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
        "GDAL_HTTP_TIMEOUT": str(int(max(1, round(settings.timeout_s)))),
        "GDAL_HTTP_CONNECTTIMEOUT": str(int(max(1, round(min(settings.timeout_s, 30))))),
        "CPL_VSIL_CURL_CACHE_SIZE": str(int(settings.cache_mb) * 1024 * 1024),
        "GDAL_HTTP_MULTIRANGE": "YES",  # the ranges of one read in parallel, not one multi-range GET
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and not os.environ.get("AWS_S3_ENDPOINT"):
        parts = urlsplit(endpoint)
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        if not os.environ.get("AWS_VIRTUAL_HOSTING"):
            options["AWS_VIRTUAL_HOSTING"] = "FALSE"  # a custom endpoint (CDSE, MinIO): path-style URLs
    return options


def configure_gdal(settings: RemoteSettings | None = None) -> None:
    """Set GDAL's remote-read options for this process, once (again only if the settings or the
    endpoint variables change)."""
    global _CONFIGURED
    settings = settings or RemoteSettings()
    options = gdal_options(settings)
    if settings == _CONFIGURED and options == _APPLIED:
        return
    from rasterio.env import set_gdal_config

    with _CONFIGURE_LOCK:
        for key in set(_APPLIED) - set(options):
            set_gdal_config(key, None)  # unset
        for key, value in options.items():
            set_gdal_config(key, value)
        try:  # pyogrio (vector CORINE) carries its own GDAL
            import pyogrio

            pyogrio.set_gdal_config_options({**dict.fromkeys(set(_APPLIED) - set(options)), **options})
        except ImportError:
            pass
        _APPLIED.clear()
        _APPLIED.update(options)
        _CONFIGURED = settings
        _SESSION.clear()


# -- S3 and HTTP clients ---------------------------------------------------------------

_FS: dict[str, Any] = {}  # s3fs.S3FileSystem (s3fs ships no types)
_SESSION: dict[str, object] = {}
_CLIENT_LOCK = threading.Lock()


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("YES", "TRUE", "1", "ON")


def _s3fs():
    """The process's s3fs filesystem, from the standard AWS variables and profiles."""
    retries = (_CONFIGURED or RemoteSettings()).retries
    key = f"s3-{retries}-{os.environ.get('AWS_ENDPOINT_URL_S3') or os.environ.get('AWS_ENDPOINT_URL')}"
    with _CLIENT_LOCK:
        if key not in _FS:
            try:
                import s3fs
            except ImportError:
                raise RemoteError(
                    "reading s3:// inputs needs the s3fs package (a dependency of reben-tools): pip install s3fs"
                ) from None
            client_kwargs = {}
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                client_kwargs["endpoint_url"] = endpoint
            config_kwargs: dict = {"retries": {"max_attempts": retries + 1, "mode": "standard"}}
            virtual = os.environ.get("AWS_VIRTUAL_HOSTING", "").strip().upper()
            if virtual in ("FALSE", "NO", "0", "OFF") or (endpoint and not virtual):
                config_kwargs["s3"] = {"addressing_style": "path"}
            kwargs = {}
            if _flag("AWS_REQUEST_PAYER"):
                kwargs["requester_pays"] = True
            _FS[key] = s3fs.S3FileSystem(
                anon=_flag("AWS_NO_SIGN_REQUEST"),
                client_kwargs=client_kwargs,
                config_kwargs=config_kwargs,
                skip_instance_cache=True,
                **kwargs,
            )
        return _FS[key]


def forget_listings() -> None:
    """Drop cached S3 listings and file facts (a new build sees the store as it is now)."""
    for fs in _FS.values():
        fs.invalidate_cache()
    _INFO.clear()


def http_session():
    """A ``requests`` session retrying 429 / 5xx / connection errors with exponential backoff."""
    settings = _CONFIGURED or RemoteSettings()
    key = f"http-{settings.retries}-{settings.retry_delay_s}"
    with _CLIENT_LOCK:
        if key not in _SESSION:
            import requests
            from requests.adapters import HTTPAdapter
            from urllib3.util.retry import Retry

            retry = Retry(
                total=settings.retries,
                connect=settings.retries,
                read=settings.retries,
                status=settings.retries,
                backoff_factor=settings.retry_delay_s,
                status_forcelist=(429, 500, 502, 503, 504),
                allowed_methods=frozenset({"GET", "HEAD", "POST"}),
                respect_retry_after_header=True,
                raise_on_status=False,
            )
            session = requests.Session()
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            _SESSION[key] = session
        return _SESSION[key]


def _request(method: str, path: RemotePath):
    import requests

    settings = _CONFIGURED or RemoteSettings()
    try:
        return http_session().request(method, signed_url(path), timeout=settings.timeout_s, allow_redirects=True)
    except requests.RequestException as exc:
        raise RemoteError(f"{path}: {redact(str(exc))}") from None


def _head(path: RemotePath):
    response = _request("HEAD", path)
    if response.status_code == 405:  # servers without HEAD: ask for one byte
        response = _request("GET", path)
    return response if response.status_code in (200, 206) else None


def _guard(path: RemotePath, call):
    """Run an S3 call; its failures become :class:`RemoteError` naming the location (redacted)."""
    try:
        return call()
    except RemoteError:
        raise
    except FileNotFoundError:
        raise RemoteError(f"{path}: no such object or prefix") from None
    except Exception as exc:
        raise RemoteError(f"{path}: {redact(f'{type(exc).__name__}: {exc}')}") from None


# -- facts about remote files ------------------------------------------------------------

_INFO: dict[str, list] = {}
_INFO_LOCK = threading.Lock()


def stamp(path: RemotePath) -> list:
    """``[url, etag, size, last_modified]`` of a remote file (``-1`` entries when it cannot be reached).

    What resume compares for a remote input, as size and modification time for a local one.
    Cached per process until :func:`forget_listings`.
    """
    key = path.public
    with _INFO_LOCK:
        if key in _INFO:
            return _INFO[key]
    try:
        if path.scheme == "s3":
            info = _s3fs().info(path._key)
            facts = [
                key,
                str(info.get("ETag") or info.get("etag") or ""),
                int(info.get("size") or info.get("Size") or 0),
                str(info.get("LastModified") or info.get("last_modified") or ""),
            ]
        else:
            response = _head(path)
            if response is None:
                raise RemoteError(f"{path}: not reachable")
            facts = [
                key,
                response.headers.get("ETag", ""),
                int(response.headers.get("Content-Length", -1)),
                response.headers.get("Last-Modified", ""),
            ]
    except Exception:
        facts = [key, -1, -1, -1]
    with _INFO_LOCK:
        _INFO[key] = facts
    return facts


def prefetch_stamps(paths: list[RemotePath], threads: int = 16) -> None:
    """Fetch the :func:`stamp` of many remote files at once (HEAD requests in parallel)."""
    todo = sorted({p for p in paths if p.public not in _INFO}, key=str)
    if not todo:
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(todo))) as pool:
        list(pool.map(stamp, todo))


def check_readable(path: RemotePath) -> str | None:
    """None when the remote file can be reached from this process, else the problem (redacted)."""
    try:
        if path.scheme == "s3":
            _s3fs().info(path._key)
        elif _head(path) is None:
            return f"{path}: cannot read input (HTTP error)"
    except Exception as exc:
        return f"{path}: cannot read input ({redact(str(exc))})"
    return None


def redact(text: str) -> str:
    """``text`` without credential values, endpoints, URL user info or query strings (signatures, SAS tokens)."""
    if not text:
        return text
    out = _URL_QUERY.sub(r"\1", str(text))
    out = _URL_USERINFO.sub(r"\1", out)
    secrets = set()
    for name, value in os.environ.items():
        if (name in _SECRET_VARIABLES or _SECRET_NAME.search(name)) and value and len(value) >= 8:
            secrets.add(value)
    for secret in sorted(secrets, key=len, reverse=True):
        out = out.replace(secret, "<redacted>")
    for name in _ENDPOINT_VARIABLES:
        value = os.environ.get(name, "").strip().rstrip("/")
        if not value:
            continue
        host = value.split("://", 1)[-1]
        for form in sorted({value, host}, key=len, reverse=True):
            if len(form) >= 4:
                out = out.replace(form, "<endpoint>")
    return out
