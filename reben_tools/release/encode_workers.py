"""Encoding patches and shards, in this process or in a pool of worker processes.

Step 2 of :mod:`reben_tools.release.encode` (a process pool, one shard per task; forked when
the parent runs one thread, else forkserver): each task reads its patches' GeoTIFFs, encodes
the values, and writes its shard atomically (``format.shards.write_shard``). A patch with a
bad input (missing band file, wrong shape or dtype, unreadable TIFF, missing S1 partner or
reference map) is skipped and listed in the result; the rest goes on.

Owns: :func:`encode_patch`, :func:`encode_shard`, the worker processes (initialisation,
dying with the parent, progress counter), :func:`run_shards` and :func:`pool_start_method`.
Does not own: planning (``release.encode_plan``), resuming and finishing the archive
(``release.encode``), GeoTIFF reading (``release.geotiff_release``), value encoding
(``format.codec``).
May import: ``format`` (codec, naming, shards, stats), ``release.geotiff_release``,
``release.encode_plan``, numpy, pyarrow.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from reben_tools.format import codec, naming
from reben_tools.format.shards import write_shard
from reben_tools.format.stats import BandMoments
from reben_tools.release.encode_plan import PATCH_ROWS_SCHEMA, PatchJob, ShardJob, ShardResult
from reben_tools.release.geotiff_release import Georeference, PatchFiles, ReleaseError, read_patch, reading_environment

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

# ---------------------------------------------------------------------------- encoding


def _grid_position(patch_id: str, s1_name: str | None) -> tuple[str | None, int | None, int | None]:
    """(tile, x, y) from a reBEN patch id, or from a v1 name (tile then from the S1 name)."""
    try:
        parsed = naming.parse_patch_id(patch_id)
        return parsed.tile, parsed.x, parsed.y
    except ValueError:
        pass
    tile = x = y = None
    parts = patch_id.rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        x, y = int(parts[1]), int(parts[2])
    if s1_name:
        with contextlib.suppress(ValueError):
            tile = naming.parse_s1_patch_name(s1_name)[1]
    return tile, x, y


def _encode_kind(
    files: PatchFiles, kind: str, key: str, georeferenced: bool
) -> tuple[bytes, dict[str, np.ndarray], Georeference | None]:
    """(value bytes, arrays, georeference or None) of one patch folder; ReleaseError names the file."""
    arrays, georeference = read_patch(files, georeferenced=georeferenced)
    try:
        if kind == "S2":
            value = codec.encode_s2(arrays)
        elif kind == "S1":
            value = codec.encode_s1(arrays)
        else:
            value = codec.encode_reference_map(arrays["reference_map"])
    except ValueError as exc:
        raise ReleaseError(files.folder, str(exc)) from None
    return value, arrays, georeference


def encode_patch(
    job: PatchJob,
) -> tuple[list[tuple[str, bytes]], dict | None, dict[str, dict[str, np.ndarray]], list[dict]]:
    """Read and encode one patch: its S2 value, S1 partner and reference map, where found.

    Without ``job.require_pairs`` each kind stands alone, as in rico-hdl: a bad S2 folder
    leaves the patch's S1 and reference-map values written (and ``has_s2`` false), and
    the bad part is returned in the list of skipped values. With it, any bad part skips
    the whole patch.

    Returns:
        (archive items ``(key, value)``, the patch row of ``patches.parquet`` without shard
        (None for an S1-only job), the arrays read per kind for statistics, the values
        skipped as ``{"item": key, "path", "reason"}``).

    Raises:
        ReleaseError: an input file is missing or malformed (names the file) and nothing of
            the patch can be written (or ``require_pairs``).
    """
    if job.problem is not None:
        raise ReleaseError(*job.problem)
    items: list[tuple[str, bytes]] = []
    arrays: dict[str, dict[str, np.ndarray]] = {}
    failed: list[tuple[str, ReleaseError]] = []
    georeference: Georeference | None = None
    reference_map = None
    parts: list[tuple[str, PatchFiles | None, str | None]] = [
        ("S2", job.s2, job.patch_id),
        ("reference_map", None if job.s1_only else job.reference_map, naming.reference_map_key(job.patch_id)),
        ("S1", job.s1, job.s1_name),
    ]
    for kind, files, key in parts:
        if files is None:
            continue
        assert key is not None, f"{job.patch_id}: {kind} files without a name"  # the planner names what it finds
        try:  # only the first part read is opened with its georeferencing (the rest: faster)
            wanted = georeference is None and not job.s1_only
            value, kind_arrays, georef = _encode_kind(files, kind, key, georeferenced=wanted)
        except ReleaseError as exc:
            if job.require_pairs:
                raise
            failed.append((key, exc))
            continue
        georeference = georeference or georef
        items.append((key, value))
        if kind == "reference_map":
            reference_map = kind_arrays["reference_map"]
        else:
            arrays[kind] = kind_arrays
    if not items:
        raise failed[0][1]
    skipped = [{"item": key, "path": exc.path, "reason": exc.reason} for key, exc in failed]
    if job.s1_only:
        return items, None, arrays, skipped
    meta = job.metadata or {}
    tile, x, y = _grid_position(job.patch_id, job.s1_name)
    assert georeference is not None  # the first part read, whichever it was, was opened with it
    left, bottom, right, top = georeference.bounds
    labels = meta.get("labels")
    if labels is None and reference_map is not None:
        from reben_tools.format.labels import labels_from_reference_map

        try:
            labels = labels_from_reference_map(reference_map)
        except ValueError:
            labels = None
    row = {
        "patch_id": job.patch_id,
        "s1_name": job.s1_name,
        "tile": tile,
        "x": x,
        "y": y,
        "crs": georeference.crs,
        "ulx": left,
        "uly": top,
        "lrx": right,
        "lry": bottom,
        "split": meta.get("split"),
        "country": meta.get("country"),
        "labels": labels,
        "s2v1_name": meta.get("s2v1_name"),
        "contains_seasonal_snow": meta.get("contains_seasonal_snow"),
        "contains_cloud_or_shadow": meta.get("contains_cloud_or_shadow"),
        "has_s1": "S1" in arrays,
        "has_reference_map": reference_map is not None,
        "has_s2": "S2" in arrays,
    }
    return items, row, arrays, skipped


def encode_shard(job: ShardJob, shards_dir: Path, on_patch: Callable[[], object] | None = None) -> ShardResult:
    """Encode every patch of a shard and write the shard atomically.

    Bad patches are skipped and returned in ``skipped``. Train-split moments (metadata
    split ``train``) are accumulated per band on native-resolution pixels.
    """
    items: list[tuple[str, bytes]] = []
    rows: list[dict] = []
    skipped: list[dict] = []
    moments = BandMoments()
    values = {"S2": 0, "S1": 0, "reference_map": 0}
    for patch in job.patches:
        try:
            patch_items, row, arrays, partial = encode_patch(patch)
        except ReleaseError as exc:
            skipped.append({"item": patch.patch_id, "path": exc.path, "reason": exc.reason})
        except Exception as exc:
            source = patch.s2 or patch.reference_map or patch.s1
            folder = str(source.folder) if source is not None else patch.patch_id
            skipped.append(
                {
                    "item": patch.patch_id,
                    "path": folder,
                    "reason": f"unexpected {type(exc).__name__} while reading the patch: {exc}",
                }
            )
        else:
            skipped.extend(partial)
            items.extend(patch_items)
            for key, _ in patch_items:
                values[codec.kind_of_key(key)] += 1
            if row is not None:  # S1-only jobs write a value, no patch row
                row["shard"] = job.name
                rows.append(row)
            if row is not None and row["split"] == "train":
                for kind_arrays in arrays.values():
                    for band, array in kind_arrays.items():
                        moments.add(band, array)
        if on_patch is not None:
            on_patch()
    info = None
    table = pa.Table.from_pylist(rows, schema=PATCH_ROWS_SCHEMA)
    if items:
        info = write_shard(shards_dir, job.name, items, rows=table)
    return ShardResult(job.index, job.name, info, table, skipped, moments, values)


_WORKER_COUNTER: Synchronized[int] | None = None
_WORKER_ENVIRONMENT = None


def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: have the kernel SIGKILL this worker when the process that started it dies.

    Without it, workers of an encode killed with SIGKILL would wait forever on their task
    queue (they hold its write end themselves), keeping the output directory's lock.
    ``parent_pid``: the pid this worker's parent should have (None: unknown, e.g. a
    forkserver); a worker whose parent died before the request exits at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def _init_worker(counter: Synchronized[int], parent_pid: int | None = None) -> None:
    """Pool initializer: die with the parent; keep one GDAL environment open for the worker's lifetime."""
    global _WORKER_COUNTER, _WORKER_ENVIRONMENT
    _die_with_parent(parent_pid)
    _WORKER_COUNTER = counter
    _WORKER_ENVIRONMENT = reading_environment()
    _WORKER_ENVIRONMENT.__enter__()


def _bump_counter() -> None:
    assert _WORKER_COUNTER is not None, "called outside a pool worker"  # _init_worker sets it
    with _WORKER_COUNTER.get_lock():
        _WORKER_COUNTER.value += 1


def _encode_shard_in_worker(job: ShardJob, shards_dir: Path) -> ShardResult:
    return encode_shard(job, shards_dir, on_patch=_bump_counter)


def run_shards(
    jobs: list[ShardJob],
    shards_dir: Path,
    workers: int,
    progress: bool,
    on_result: Callable[[ShardResult], None] | None = None,
) -> tuple[list[ShardResult], str]:
    """Encode the shards inline (one worker) or in a process pool; returns the results in
    shard order and how they ran (``"inline"`` or the start method). ``on_result`` is called
    in this process with each result as it arrives."""
    from tqdm import tqdm

    total = sum(len(j.patches) for j in jobs)
    results: list[ShardResult] = []
    if workers <= 1 or len(jobs) <= 1:
        with (
            tqdm(total=total, desc="encode", unit="patch", disable=not progress, smoothing=0.1) as bar,
            reading_environment(),
        ):
            for job in jobs:
                results.append(encode_shard(job, shards_dir, on_patch=lambda: bar.update(1)))
                if on_result is not None:
                    on_result(results[-1])
        return results, "inline"
    start_method = pool_start_method()
    context = multiprocessing.get_context(start_method)
    counter = context.Value("q", 0)
    # Keep the garbage collector of forked workers off the objects they inherit: collecting
    # them would write to every inherited page and copy it (copy-on-write).
    gc.freeze()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(gc.unfreeze)
        pool = cleanup.enter_context(
            ProcessPoolExecutor(
                max_workers=min(workers, len(jobs)),
                mp_context=context,
                initializer=_init_worker,
                initargs=(counter, None if start_method == "forkserver" else os.getpid()),
            )
        )
        pending = {pool.submit(_encode_shard_in_worker, job, shards_dir) for job in jobs}
        with tqdm(total=total, desc="encode", unit="patch", disable=not progress, smoothing=0.1) as bar:
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    bar.update(counter.value - bar.n)
                    for future in done:
                        result = future.result()
                        results.append(result)
                        if on_result is not None:
                            on_result(result)
            except BaseException:
                for future in pending:  # a failed shard (e.g. disk full) stops the run: start nothing new
                    future.cancel()
                raise
            bar.update(counter.value - bar.n)
    return sorted(results, key=lambda r: r.index), start_method


def pool_start_method() -> str:
    """``fork`` (cheapest: workers share the parent's imports) when no other Python thread
    runs in this process (tqdm's progress-bar monitor aside, which only sleeps and
    refreshes bars); ``forkserver`` when other threads exist, since forking a
    multi-threaded process can deadlock the child; ``spawn`` where neither exists."""
    import threading

    methods = multiprocessing.get_all_start_methods()
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and type(t).__name__ != "TMonitor"]
    if "fork" in methods and not others:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


__all__ = ["encode_patch", "encode_shard", "pool_start_method", "run_shards"]
