"""Loopback servers the cloud tests start and stop themselves: an S3-compatible endpoint and a Range HTTP server.

Both listen on 127.0.0.1 on a free port chosen by the OS, and nothing else: no test reaches
another address. Fixtures in ``conftest.py`` wrap these for pytest.

- :func:`s3_server`: moto's standalone server (``moto[server]``), a real HTTP S3 endpoint that
  boto3, s3fs and GDAL's ``/vsis3/`` talk to as to any S3-compatible store.
- :func:`range_http_server`: a static file server over a folder that honours ``Range:
  bytes=a-b`` (206 Partial Content), as cloud-optimised GeoTIFF readers need; it counts the
  requests and body bytes it served. It can also fail on purpose (:class:`Failures`: the
  first N requests of matching paths answered 503 / 429, or delayed past a time-out) and
  serve a small STAC API (:class:`StacApi`: landing page, conformance, collections and
  ``/search`` by GET or POST with collections, bbox, datetime, ids and paging) under
  ``/stac``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@dataclass
class S3Endpoint:
    """A running S3-compatible endpoint: its URL and the credentials it accepts (any, for moto)."""

    url: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The standard environment variables that point boto3, s3fs and GDAL at this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            # GDAL's /vsis3/: endpoint without scheme, plain HTTP, path-style addressing
            "AWS_S3_ENDPOINT": self.url.split("://", 1)[1],
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
        }

    def client(self):
        """A boto3 S3 client for this endpoint."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )


def _wait_listening(port: int, process, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {seconds} s")


@contextlib.contextmanager
def _subprocess_server(args: list[str], port: int) -> Iterator[None]:
    import subprocess
    import sys

    log = os.environ.get("REBEN_TEST_SERVER_LOG")  # a file to keep the server's request log in
    sink = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen([sys.executable, *args], stdout=sink, stderr=sink, start_new_session=True)
    try:
        _wait_listening(port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            sink.close()


@contextlib.contextmanager
def s3_server_process() -> Iterator[S3Endpoint]:
    """moto's S3 server in its own process on 127.0.0.1 (a client in this process may then hold the
    GIL while it waits for an answer, as pyogrio's calls do)."""
    port = free_port()
    with _subprocess_server(["-m", "moto.server", "-H", LOOPBACK, "-p", str(port)], port):
        yield S3Endpoint(url=f"http://{LOOPBACK}:{port}")


@contextlib.contextmanager
def range_http_server_process(root: str | os.PathLike) -> Iterator[str]:
    """:func:`range_http_server` over ``root`` in its own process (no counters); yields its base URL."""
    port = free_port()
    with _subprocess_server([__file__, "http", str(root), str(port)], port):
        yield f"http://{LOOPBACK}:{port}"


@contextlib.contextmanager
def s3_server() -> Iterator[S3Endpoint]:
    """Start moto's standalone S3 server on 127.0.0.1 and stop it on exit."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    try:
        yield S3Endpoint(url=f"http://{LOOPBACK}:{port}")
    finally:
        server.stop()


@dataclass
class HttpStats:
    """What a :func:`range_http_server` served: requests by path and body bytes sent."""

    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    bytes_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes_sent = 0


@dataclass
class Failures:
    """Requests a :func:`range_http_server` fails on purpose (set ``endpoint.failures``).

    Attributes:
        pattern: regular expression searched in the request path; empty: no failure.
        times: the first ``times`` matching requests of each path fail (then they succeed);
            None: every matching request fails.
        status: the HTTP status of a failure (503, 429 ...); 0: answer after ``delay_s`` instead
            (a time-out when it exceeds the client's).
        min_offset: only ranged requests starting at or past this byte fail (0: any request),
            so that headers read at open time succeed and pixel reads fail.
        delay_s: seconds to wait before a delayed answer (``status`` 0).
        retry_after: ``Retry-After`` header of a 429 / 503, seconds (None: none).
    """

    pattern: str = ""
    times: int | None = 1
    status: int = 503
    min_offset: int = 0
    delay_s: float = 0.0
    retry_after: int | None = None
    seen: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, path: str, range_header: str | None) -> str | None:
        """``"fail"``, ``"delay"`` or None for a request."""
        if not self.pattern or not re.search(self.pattern, path):
            return None
        if self.min_offset:
            match = _RANGE.match((range_header or "").strip())
            if not match or not match.group(1) or int(match.group(1)) < self.min_offset:
                return None
        with self.lock:
            count = self.seen.get(path, 0)
            self.seen[path] = count + 1
            if self.times is not None and count >= self.times:
                return None
            self.failed += 1
        return "delay" if self.status == 0 else "fail"


@dataclass
class HttpEndpoint:
    """A running Range HTTP server: its base URL (no trailing slash), its root folder and its counters.

    ``failures`` (a :class:`Failures`) and ``stac`` (a :class:`StacApi`) may be set while it runs.
    """

    url: str
    root: Path
    stats: HttpStats
    state: dict = field(default_factory=dict)

    @property
    def failures(self) -> Failures | None:
        return self.state.get("failures")

    @failures.setter
    def failures(self, value: Failures | None) -> None:
        self.state["failures"] = value

    @property
    def stac(self) -> StacApi | None:
        return self.state.get("stac")

    @stac.setter
    def stac(self, value: StacApi | None) -> None:
        self.state["stac"] = value


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")

STAC_CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/collections",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]


def _time(value: str) -> datetime:
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class StacApi:
    """A small STAC API over a list of items, served under ``/stac`` by :func:`range_http_server`.

    Item asset hrefs that are relative are answered absolute, against the server's URL.
    ``page_size`` is small so that clients have to follow ``next`` links.
    """

    items: list[dict]
    page_size: int = 5
    title: str = "reben-tools test catalogue"
    searches: list[dict] = field(default_factory=list)

    def collections(self) -> list[str]:
        return sorted({str(i.get("collection")) for i in self.items if i.get("collection")})

    def match(self, query: dict) -> list[dict]:
        collections = query.get("collections")
        ids = query.get("ids")
        bbox = query.get("bbox")
        interval = query.get("datetime")
        start = end = None
        if interval:
            parts = str(interval).split("/")
            if len(parts) == 1:
                start = end = _time(parts[0])
            else:
                start = None if parts[0] in ("", "..") else _time(parts[0])
                end = None if parts[1] in ("", "..") else _time(parts[1])
        out = []
        for item in self.items:
            if collections and item.get("collection") not in collections:
                continue
            if ids and item.get("id") not in ids:
                continue
            if bbox:
                w, s, e, n = (float(v) for v in bbox)
                iw, is_, ie, in_ = item["bbox"]
                if iw > e or ie < w or is_ > n or in_ < s:
                    continue
            when = _time(item["properties"]["datetime"])
            if (start is not None and when < start) or (end is not None and when > end):
                continue
            out.append(item)
        return sorted(out, key=lambda i: (i["properties"]["datetime"], i["id"]))


def _absolute_assets(item: dict, base: str) -> dict:
    item = json.loads(json.dumps(item))
    for asset in item.get("assets", {}).values():
        href = asset["href"]
        if "://" not in href and not href.startswith("/"):
            asset["href"] = f"{base}/{href}"
    item["links"] = [
        {"rel": "self", "href": f"{base}/stac/collections/{item.get('collection')}/items/{item['id']}"},
        {"rel": "collection", "href": f"{base}/stac/collections/{item.get('collection')}"},
    ]
    return item


def _handler(root: Path, stats: HttpStats, state: dict) -> type[http.server.BaseHTTPRequestHandler]:
    class RangeHandler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as object stores and CDNs answer

        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format, *args):  # keep test output clean
            pass

        def _base(self) -> str:
            host, port = self.server.server_address[:2]
            return f"http://{host}:{port}"

        def _json(self, data: object, status: int = 200, head: bool = False) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _fail(self, status: int, retry_after: int | None) -> None:
            body = b"failing on purpose"
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _stac(self, method: str, head: bool = False) -> None:
            api: StacApi | None = state.get("stac")
            parts = urlsplit(self.path)
            route = parts.path.rstrip("/")
            base = self._base()
            if api is None:
                self.send_error(404, "no STAC API")
                return
            if route == "/stac":
                self._json(
                    {
                        "type": "Catalog",
                        "id": "reben-test",
                        "stac_version": "1.0.0",
                        "description": api.title,
                        "conformsTo": STAC_CONFORMANCE,
                        "links": [
                            {"rel": "self", "href": f"{base}/stac", "type": "application/json"},
                            {"rel": "root", "href": f"{base}/stac", "type": "application/json"},
                            {"rel": "data", "href": f"{base}/stac/collections", "type": "application/json"},
                            {"rel": "conformance", "href": f"{base}/stac/conformance"},
                            {
                                "rel": "search",
                                "href": f"{base}/stac/search",
                                "type": "application/geo+json",
                                "method": "GET",
                            },
                            {
                                "rel": "search",
                                "href": f"{base}/stac/search",
                                "type": "application/geo+json",
                                "method": "POST",
                            },
                        ],
                    },
                    head=head,
                )
                return
            if route == "/stac/conformance":
                self._json({"conformsTo": STAC_CONFORMANCE}, head=head)
                return
            if route == "/stac/collections":
                self._json(
                    {"collections": [self._collection(c, base) for c in api.collections()], "links": []}, head=head
                )
                return
            if route.startswith("/stac/collections/") and route.count("/") == 3:
                name = route.rsplit("/", 1)[1]
                if name not in api.collections():
                    self.send_error(404, "no such collection")
                    return
                self._json(self._collection(name, base), head=head)
                return
            if route == "/stac/search":
                if method == "POST":
                    length = int(self.headers.get("Content-Length") or 0)
                    query = json.loads(self.rfile.read(length) or b"{}")
                else:
                    raw = parse_qs(parts.query)
                    query = {k: v[0] for k, v in raw.items()}
                    for key in ("collections", "ids", "bbox"):
                        if key in query:
                            query[key] = query[key].split(",")
                    if "limit" in query:
                        query["limit"] = int(query["limit"])
                api.searches.append(dict(query))
                matched = api.match(query)
                size = min(int(query.get("limit") or api.page_size), api.page_size)
                token = int(query.get("token") or 0)
                page = matched[token : token + size]
                links = []
                if token + size < len(matched):
                    if method == "POST":
                        links.append(
                            {
                                "rel": "next",
                                "href": f"{base}/stac/search",
                                "method": "POST",
                                "body": {**query, "token": token + size},
                                "merge": False,
                            }
                        )
                    else:
                        rest = "&".join(
                            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                            for k, v in {**query, "token": token + size}.items()
                        )
                        links.append({"rel": "next", "href": f"{base}/stac/search?{rest}", "method": "GET"})
                self._json(
                    {
                        "type": "FeatureCollection",
                        "features": [_absolute_assets(i, base) for i in page],
                        "numberMatched": len(matched),
                        "numberReturned": len(page),
                        "links": links,
                    },
                    head=head,
                )
                return
            self.send_error(404, "not found")

        @staticmethod
        def _collection(name: str, base: str) -> dict:
            return {
                "type": "Collection",
                "id": name,
                "stac_version": "1.0.0",
                "description": name,
                "license": "proprietary",
                "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
                "links": [{"rel": "self", "href": f"{base}/stac/collections/{name}"}],
            }

        def _serve(self, head: bool) -> None:
            range_header = self.headers.get("Range")
            with stats.lock:
                stats.requests.append((self.path, range_header))
            failures: Failures | None = state.get("failures")
            verdict = failures.check(urlsplit(self.path).path, range_header) if failures else None
            if verdict == "fail":
                self._fail(failures.status, failures.retry_after)
                return
            if verdict == "delay":
                time.sleep(failures.delay_s)
            if urlsplit(self.path).path.rstrip("/").startswith("/stac") and state.get("stac") is not None:
                self._stac("HEAD" if head else "GET", head=head)
                return
            path = Path(self.translate_path(self.path))
            if not path.is_file():
                self.send_error(404, "not found")
                return
            size = path.stat().st_size
            start, end = 0, size - 1
            status = 200
            if range_header:
                match = _RANGE.match(range_header.strip())
                if not match or (not match.group(1) and not match.group(2)):
                    self.send_error(416, "bad range")
                    return
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:  # suffix range: the last N bytes
                    start = max(size - int(match.group(2)), 0)
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            length = end - start + 1
            self.send_response(status)
            self.send_header("Content-Type", self.guess_type(str(path)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            stat = path.stat()
            self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
            self.send_header("ETag", f'"{stat.st_size:x}-{int(stat.st_mtime_ns):x}"')
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if head:
                return
            with open(path, "rb") as fh:
                fh.seek(start)
                remaining = length
                while remaining:
                    chunk = fh.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
            with stats.lock:
                stats.bytes_sent += length

        def do_GET(self):
            self._serve(head=False)

        def do_HEAD(self):
            self._serve(head=True)

        def do_POST(self):
            with stats.lock:
                stats.requests.append((self.path, None))
            failures: Failures | None = state.get("failures")
            if failures and failures.check(urlsplit(self.path).path, None) == "fail":
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._fail(failures.status, failures.retry_after)
                return
            self._stac("POST")

    return RangeHandler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that hangs up early (GDAL stops reading once it has what it needs)
        super().handle_error(request, client_address)


@contextlib.contextmanager
def range_http_server(
    root: str | os.PathLike, stac: StacApi | None = None, failures: Failures | None = None
) -> Iterator[HttpEndpoint]:
    """Serve ``root`` read-only over HTTP with Range support on 127.0.0.1 (and ``stac`` under ``/stac``); stop on exit."""
    root = Path(root)
    stats = HttpStats()
    state: dict = {"stac": stac, "failures": failures}
    server = _Server((LOOPBACK, 0), _handler(root, stats, state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpEndpoint(url=f"http://{LOOPBACK}:{server.server_address[1]}", root=root, stats=stats, state=state)
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":  # python servers.py http ROOT PORT: serve ROOT until terminated
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "http":
        raise SystemExit("usage: servers.py http ROOT PORT")
    _root, _port = Path(sys.argv[2]), int(sys.argv[3])
    _httpd = _Server((LOOPBACK, _port), _handler(_root, HttpStats(), {"stac": None, "failures": None}))
    _httpd.serve_forever()
