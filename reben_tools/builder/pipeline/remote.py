"""Building into a store (``reben build ... --out s3://bucket/prefix``): the client's side.

Workers never share a folder with the client: each builds its shard in local scratch and
uploads it (``format.remote_archive.publish_shard``). The client keeps a local *staging* folder
that mirrors what the local build would have on disk for its own decisions: every complete
shard's ``shard.json`` and ``rows.parquet`` and the input stamps, copied from the store. The
local build's steps (plan, fingerprints, input stamps, finalise) then run unchanged on that
folder, and :class:`StoreOutput` moves their results to the store: input stamps up, newly
built shards' side-cars down, failed shards deleted, the archive-level files up and
``manifest.json`` last. The staging folder is removed at the end.

Owns: :func:`build_into_store` (lock object, staging folder) and :class:`StoreOutput` (the
hooks :func:`~reben_tools.builder.pipeline.run.build_archive` calls for a store).
Does not own: the build's steps (run, planning, execution, finalise), the upload protocol and
the lock object (``format.remote_archive``, ``format.store_lock``).
May import: reben_tools.format, .config, .planning.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

from reben_tools.builder.pipeline.config import TOOL_NAME, BuildError
from reben_tools.builder.pipeline.planning import STAMPS_DIR, BlockTask, is_current, stamp_path
from reben_tools.format.layout import ArchiveError
from reben_tools.format.object_store import Store
from reben_tools.format.remote_archive import (
    mirror_shard_sidecars,
    publish_archive_files,
    remove_shard,
    uncommit,
    upload_files,
)
from reben_tools.format.store_lock import StoreLock, StoreLockedError, StoreLockLostError

EXTRA_FILES = ("summary_map.png",)
"""Files of the archive folder besides the format's own that a build uploads (before the manifest)."""


class StoreOutput:
    """What :func:`~reben_tools.builder.pipeline.run.build_archive` does differently for an archive in a store."""

    def __init__(self, store: Store, staging: Path, lock: StoreLock) -> None:
        self.store = store
        self.url = store.url
        self.staging = staging
        self.lock = lock

    def start(self, echo: Callable[[str], None]) -> None:
        aborted = self.store.abort_multipart_uploads()
        if aborted:
            echo(f"aborted {aborted} unfinished upload(s) of an interrupted run")

    def prepare(self, tasks: list[BlockTask]) -> list[BlockTask]:
        """Mirror the store's complete shards into staging; the tasks, pointed at the store."""
        mirror_shard_sidecars(self.store, self.staging, [t.shard_name for t in tasks], stamps_dir=STAMPS_DIR)
        return [dataclasses.replace(t, upload_to=self.url, lock_token=self.lock.token) for t in tasks]

    def before_building(self, pending: list[BlockTask]) -> None:
        """Take the manifest down (the archive changes) and upload the pending shards' input stamps."""
        if not pending:
            return
        uncommit(self.store)
        upload_files(
            self.store,
            self.staging,
            [str(stamp_path(t.shards_dir, t.shard_name).relative_to(self.staging)) for t in pending],
        )

    def collect(self, tasks: list[BlockTask], results: list[dict] | None = None) -> None:
        """Mirror the side-cars of ``tasks`` as the store has them now; with ``results``, every
        shard a worker reported built must be complete in the store (else BuildError)."""
        mirror_shard_sidecars(self.store, self.staging, [t.shard_name for t in tasks])
        by_name = {t.shard_name: t for t in tasks}
        for r in results or []:
            task = by_name.get(r["shard"])
            if r.get("status") == "ok" and task is not None and not is_current(task):
                where = f" (worker {r['worker']})" if r.get("worker") else ""
                raise BuildError(
                    f"{self.url}/shards/{task.shard_name}: reported uploaded{where} but not complete in the store"
                )

    def remove_shard(self, name: str) -> None:
        remove_shard(self.store, name)

    def publish(self, archive_dir: Path) -> None:
        """Upload the archive-level files, then ``manifest.json`` (the commit point)."""
        self.lock.check()
        publish_archive_files(self.store, archive_dir, extra=EXTRA_FILES)


def build_into_store(url: str, run: Callable[[Path, StoreOutput], object], echo: Callable[[str], None] = print):
    """Hold the prefix's lock object and a local staging folder while ``run(staging, output)`` builds.

    Raises:
        BuildError: the store cannot be reached, another build holds the prefix, or this build
            lost the lock.
    """
    store = Store(url)
    try:
        store.check_reachable()
        with StoreLock(store, command=TOOL_NAME) as lock:
            if not lock.protected:
                echo(
                    f"warning: {store.scheme}:// has no conditional writes here: a second build into {url} "
                    "at the same time is not prevented"
                )
            if lock.took_over:
                holder = lock.took_over
                echo(
                    f"took over the lock of an earlier build that stopped (pid {holder.get('pid')} on "
                    f"{holder.get('host')})"
                )
            with tempfile.TemporaryDirectory(prefix="reben-build-staging-") as staging:
                return run(Path(staging), StoreOutput(store, Path(staging), lock))
    except StoreLockedError as exc:
        raise BuildError(str(exc)) from None
    except StoreLockLostError as exc:
        raise BuildError(f"{exc}; this build stopped without committing the archive") from None
    except ArchiveError as exc:  # store errors included
        raise BuildError(str(exc)) from None
