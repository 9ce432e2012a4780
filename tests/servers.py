"""Loopback servers the cloud tests start and stop themselves: an S3-compatible endpoint and a Range HTTP server.

Both listen on 127.0.0.1 on a free port chosen by the OS, and nothing else: no test reaches
another address. Fixtures in ``conftest.py`` wrap these for pytest.

- :func:`s3_server`: moto's standalone server (``moto[server]``), a real HTTP S3 endpoint that
  boto3, s3fs and GDAL's ``/vsis3/`` talk to as to any S3-compatible store.
- :func:`range_http_server`: a static file server over a folder that honours ``Range:
  bytes=a-b`` (206 Partial Content), as cloud-optimised GeoTIFF readers need; it counts the
  requests and body bytes it served.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
class HttpEndpoint:
    """A running Range HTTP server: its base URL (no trailing slash), its root folder and its counters."""

    url: str
    root: Path
    stats: HttpStats


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _handler(root: Path, stats: HttpStats) -> type[http.server.BaseHTTPRequestHandler]:
    class RangeHandler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format, *args):  # keep test output clean
            pass

        def _serve(self, head: bool) -> None:
            path = Path(self.translate_path(self.path))
            range_header = self.headers.get("Range")
            with stats.lock:
                stats.requests.append((self.path, range_header))
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

    return RangeHandler


@contextlib.contextmanager
def range_http_server(root: str | os.PathLike) -> Iterator[HttpEndpoint]:
    """Serve ``root`` read-only over HTTP with Range support on 127.0.0.1; stop on exit."""
    root = Path(root)
    stats = HttpStats()
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _handler(root, stats))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpEndpoint(url=f"http://{LOOPBACK}:{server.server_address[1]}", root=root, stats=stats)
    finally:
        server.shutdown()
        server.server_close()
