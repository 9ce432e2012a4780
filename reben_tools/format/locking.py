"""One writer per output directory: an advisory ``fcntl.flock`` on ``<dir>/.reben.lock``.

Builds and encodes write many files into their output directory over hours; two of
them on the same directory would interleave shards and metadata. The writer takes an
exclusive, non-blocking lock on a lock file inside the directory for its whole run; a
second writer fails at once with :class:`OutputLockedError`, naming the lock file and
the pid (and host and command) the holder wrote into it.

The kernel drops a ``flock`` when the last descriptor of its open file goes away, so
a writer killed with SIGKILL never leaves a stale lock behind. Child processes forked
by the holder (a process pool's workers) inherit the descriptor and keep the lock
until they exit too: a resumed run cannot start while orphaned workers of a killed run
still write. The lock file is removed when the lock is released; a writer that opened
the file just before it was removed notices (the path then names another inode or
nothing) and retries on the new file.

Advisory locks bind only writers that take them (``reben encode``, ``reben build``).
``flock`` works on local file systems; on NFS it depends on the client's configuration.

Owns: :class:`OutputLock` and :class:`OutputLockedError`.
Does not own: what a writer writes while holding the lock (``build``, ``release``).
May import: the standard library only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

LOCK_FILE = ".reben.lock"


class OutputLockedError(RuntimeError):
    """Another process holds the output directory's lock; the message names it.

    Attributes:
        path: the lock file.
        holder: what the holder wrote into the lock file (``pid``, ``host``, ``command``), or {}.
    """

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.path = path
        self.holder = holder
        pid = holder.get("pid")
        who = f"pid {pid}" if pid is not None else "a process that has not yet written its pid"
        if holder.get("host"):
            who += f" on {holder['host']}"
        if holder.get("command"):
            who += f" ({holder['command']})"
        alive = ""
        if isinstance(pid, int) and holder.get("host") == socket.gethostname() and not _pid_alive(pid):
            alive = "; that process has exited, so a child it started (e.g. a pool worker) still holds the lock"
        super().__init__(
            f"{path.parent}: another writer is using this output directory: {who} holds {path}{alive}. "
            "Wait for it to finish or choose another output directory."
        )

    def __reduce__(self) -> tuple[type[OutputLockedError], tuple[Path, dict[str, Any]]]:  # picklable across processes
        return type(self), (self.path, self.holder)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(lock_path: Path) -> dict[str, Any]:
    """What the holder wrote into the lock file, or {} when unreadable or still empty."""
    try:
        data = json.loads(Path(lock_path).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class OutputLock:
    """Exclusive lock on an output directory for the lifetime of a ``with`` block.

    Args:
        directory: the output directory (created if missing).
        command: a short description written into the lock file (e.g. ``"reben encode"``).

    Raises:
        OutputLockedError: on entering, when another process holds the lock.
    """

    def __init__(self, directory: str | os.PathLike[str], command: str = "") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.command = command or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:200]
        self._fd: int | None = None

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputLockedError(self.path, read_holder(self.path)) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_ino, current.st_dev) == os.fstat(fd)[1:3]:
                break
            os.close(fd)  # the holder removed the file after we opened it: lock the new one
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["LOCK_FILE", "OutputLock", "OutputLockedError", "read_holder"]
