"""The lock object of a build into a store: ``<prefix>/.reben.lock``, one build per prefix.

On S3 (and S3-compatible stores) the lock object is created with a conditional write
(``If-None-Match: *``): of two builds starting at once, one gets it and the other is refused
with :class:`StoreLockedError` naming the holder. The holder renews it every third of its
lease with a conditional rewrite (``If-Match`` on its ETag) and deletes it on release only if
it is still its own. A lock not renewed for a lease (its holder died or hangs), or whose holder
ran on this host and no longer exists, is taken over by the next build with a conditional
rewrite, so two builds cannot both take it over; the workers of the build that lost it cannot
commit shards any more (:func:`check_lock_token`). On stores without conditional writes the lock
is written after a look, which narrows the window but does not close it:
:attr:`StoreLock.protected` is False and the build says that the prefix is not protected.

Owns: :class:`StoreLock`, :class:`StoreLockedError`, :class:`StoreLockLostError`,
:func:`check_lock_token`, the lease (``REBEN_LOCK_LEASE_S``).
Does not own: the store and its conditional writes (``format.object_store``), what a build
does while it holds the lock (``builder.pipeline.remote``).
May import: ``format.object_store``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reben_tools.format.object_store import Store, StoreError

LOCK_OBJECT = ".reben.lock"
LEASE_ENV = "REBEN_LOCK_LEASE_S"
DEFAULT_LEASE_S = 120.0
"""How long a lock object stays valid without being renewed (its holder renews it every third)."""


class StoreLockedError(RuntimeError):
    """Another build holds the prefix's lock object; the message names the holder."""

    def __init__(self, url: str, holder: dict[str, Any], age_s: float | None = None) -> None:
        self.url, self.holder, self.age_s = url, holder, age_s
        pid = holder.get("pid")
        who = f"pid {pid}" if pid is not None else "another process"
        if holder.get("host"):
            who += f" on {holder['host']}"
        if holder.get("command"):
            who += f" ({holder['command']})"
        renewed = f", renewed {age_s:.0f} s ago" if age_s is not None else ""
        super().__init__(
            f"{url}: another writer is using this output: {who} holds {url}/{LOCK_OBJECT}{renewed}. "
            "Wait for it to finish or choose another output."
        )

    def __reduce__(self) -> tuple[type[StoreLockedError], tuple[str, dict[str, Any], float | None]]:
        return type(self), (self.url, self.holder, self.age_s)


class StoreLockLostError(StoreError):
    """The lock object this build took was taken over or removed by someone else."""


def lease_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_S)))
    except ValueError:
        return DEFAULT_LEASE_S


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _age_seconds(info: dict[str, Any] | None) -> float | None:
    modified = (info or {}).get("raw", {}).get("LastModified")
    if isinstance(modified, datetime):
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        return max(0.0, (datetime.now(UTC) - modified).total_seconds())
    return None


class StoreLock:
    """The lock object ``<prefix>/.reben.lock`` of one build, for the lifetime of a ``with`` block.

    Attributes:
        token: a random id written into the object; workers check it before committing a shard.
        protected: whether the store enforces the lock (conditional writes); False elsewhere.
        took_over: the holder record of a stale lock this build replaced, or None.
    """

    def __init__(self, store: Store, command: str = "", lease_s: float | None = None) -> None:
        self.store = store
        self.command = command or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:200]
        self.lease_s = lease_seconds() if lease_s is None else lease_s
        self.token = uuid.uuid4().hex
        self.protected = store.conditional_writes
        self.took_over: dict[str, Any] | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    def _record(self) -> bytes:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "token": self.token,
            "lease_s": self.lease_s,
        }
        return (json.dumps(holder) + "\n").encode("utf-8")

    def _read_holder(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        info = self.store.info(LOCK_OBJECT)
        raw = self.store.read_bytes(LOCK_OBJECT) if info is not None else None
        try:
            holder = json.loads(raw or b"{}")
        except ValueError:
            holder = {}
        return (holder if isinstance(holder, dict) else {}), info

    def _stale(self, holder: dict[str, Any], info: dict[str, Any] | None) -> bool:
        age = _age_seconds(info)
        recorded = holder.get("lease_s")
        lease = recorded if isinstance(recorded, (int, float)) else self.lease_s
        if age is not None and age > lease:
            return True
        pid = holder.get("pid")
        return isinstance(pid, int) and holder.get("host") == socket.gethostname() and not _pid_alive(pid)

    def acquire(self) -> None:
        if not self.protected:
            holder, info = self._read_holder()
            if info is not None and not self._stale(holder, info):
                raise StoreLockedError(self.store.url, holder, _age_seconds(info))
            self.took_over = holder if info is not None else None
            self.store.write_bytes(LOCK_OBJECT, self._record())
            return
        for _ in range(5):
            try:
                self._etag = self.store.create_exclusive(LOCK_OBJECT, self._record())
                break
            except FileExistsError:
                holder, info = self._read_holder()
                if info is None:
                    continue  # released meanwhile: try again
                if not self._stale(holder, info):
                    raise StoreLockedError(self.store.url, holder, _age_seconds(info)) from None
                try:
                    self._etag = self.store.replace_if(LOCK_OBJECT, self._record(), info["etag"])
                except FileExistsError:
                    continue  # someone else took it over first: look again
                self.took_over = holder
                break
        else:
            holder, info = self._read_holder()
            raise StoreLockedError(self.store.url, holder, _age_seconds(info))
        self._thread = threading.Thread(target=self._renew, name="reben-lock-renewal", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self._etag = self.store.replace_if(LOCK_OBJECT, self._record(), self._etag or "")
            except FileExistsError:
                self._lost = f"{self.store.url}/{LOCK_OBJECT} was taken over or removed by another writer"
                return
            except Exception:  # a transient store error: try again at the next renewal
                continue

    def check(self) -> None:
        """Raise StoreLockLostError when another writer took the lock from this build."""
        if self._lost:
            raise StoreLockLostError(self._lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._lost:
            return
        if self.protected and self._etag is not None:
            self.store.delete_if(LOCK_OBJECT, self._etag)
        elif not self.protected:
            holder, _ = self._read_holder()
            if holder.get("token") == self.token:
                self.store.delete([LOCK_OBJECT])
        self._etag = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_lock_token(store: Store, token: str | None) -> None:
    """Raise StoreLockLostError unless the prefix's lock object still carries ``token`` (None: no check)."""
    if token is None:
        return
    raw = store.read_bytes(LOCK_OBJECT)
    try:
        holder = json.loads(raw) if raw else {}
    except ValueError:
        holder = {}
    if not isinstance(holder, dict) or holder.get("token") != token:
        raise StoreLockLostError(
            f"{store.url}: the build that scheduled this shard no longer holds {store.url}/{LOCK_OBJECT} "
            "(it was stopped and another build took over); the shard is not committed"
        )


__all__ = [
    "LOCK_OBJECT",
    "StoreLock",
    "StoreLockLostError",
    "StoreLockedError",
    "check_lock_token",
    "lease_seconds",
]
