"""Encode reBEN's GeoTIFF release into a reben-tools archive (SPEC sections 7 and 8).

The archive's values are byte-identical to the reference tool's for the same files:
the same keys (S2 patch id, S1 name, ``<patch_id>_reference_map``) and the same
safetensors bytes (:mod:`reben_tools.format.codec`).

How the work is split:

1. Planning (one process): discover the patch folders, pick the patches (those of the
   metadata files, or every S2 patch found), pair each with its S1 partner and reference
   map, and cut the sorted patch ids into shards of ``patches_per_shard``. Shard ``k``
   holds the ``k``-th slice of the sorted ids, so which shard holds a patch depends only
   on the sorted ids, never on the number of workers.
2. Encoding (a process pool, one shard per task; forked when the parent runs one thread,
   else forkserver): each task reads its patches' GeoTIFFs,
   encodes the values, and writes its shard atomically (``archive.write_shard``). A patch
   with a bad input (missing band file, wrong shape or dtype, unreadable TIFF, missing S1
   partner or reference map) is skipped and listed in ``report.json``; the rest goes on.
3. Finishing (one process): ``patches.parquet`` (GeoParquet, footprints from the GeoTIFF
   georeferencing), the two metadata files and train-split band statistics when metadata
   files were given, ``report.json``, and ``manifest.json`` last, so an archive with a
   manifest is complete.

Resuming: the encoder holds an exclusive lock on the output directory for its whole run
(:mod:`reben_tools.format.locking`). After each shard it records what the shard produced in
``<out>/.encode-resume/<shard>.json`` (a fingerprint of the shard's plan: its patches,
their input files and the options; the ShardInfo; the patches skipped and why; the
train-split moments). Rerunning the same command on the directory of an interrupted run
keeps every shard whose record matches the new plan and the shard on disk, removes
``.tmp-*`` leftovers and encodes the rest; the finished archive is byte-identical to an
uninterrupted run's. The records are removed just before ``manifest.json`` is written.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from reben_tools.format import archive, codec, naming
from reben_tools.release.geotiff_release import (
    GDAL_READ_OPTIONS,
    PatchFiles,
    ReleaseError,
    discover_patches,
    read_patch,
    reading_environment,
)
from reben_tools.format.locking import OutputLock
from reben_tools.format.stats import BandMoments

DEFAULT_PATCHES_PER_SHARD = 1024
"""Patches per shard: about 310 MB of values with S1 and reference maps (held in memory
by the worker writing the shard)."""
SHARD_NAME_FORMAT = "shard-{:05d}"
_SHARD_NAME_RE = re.compile(r"^shard-\d{5,}$")
TOOL_NAME = "reben encode"
RESUME_DIR = ".encode-resume"
"""Per-shard records of an unfinished run (see the module docstring); gone once the manifest exists."""

PATCH_ROWS_SCHEMA = archive.patch_rows_schema(
    ("lrx", pa.float64()),
    ("lry", pa.float64()),
    ("country", pa.string()),
    ("contains_seasonal_snow", pa.bool_()),
    ("contains_cloud_or_shadow", pa.bool_()),
    ("has_s1", pa.bool_()),
    ("has_reference_map", pa.bool_()),
)
"""Columns of ``patches.parquet`` (plus its ``geometry``: the footprint in EPSG:4326) and of
each shard's ``rows.parquet``. ``crs``/``ulx``/``uly``/``lrx``/``lry`` are the S2 patch's
10 m grid as its B02 GeoTIFF declares it."""


class EncodeError(RuntimeError):
    """The encoder cannot run (bad arguments, no patches, an existing archive); names the path."""


@dataclass(frozen=True)
class PatchJob:
    """Everything a worker needs to encode one patch.

    Attributes:
        patch_id: the S2 patch id (archive key of the S2 value).
        s2: the S2 band files, or None when the patch folder was not found.
        s1_name: the S1 partner's name, when known (from metadata or matching).
        s1: the S1 files to encode, or None (no S1 directory, or partner missing).
        reference_map: the reference map file, or None.
        metadata: the patch's reBEN metadata row, or None without metadata files.
        problem: ``(path, reason)`` found while planning; the patch is then skipped.
    """

    patch_id: str
    s2: PatchFiles | None
    s1_name: str | None
    s1: PatchFiles | None
    reference_map: PatchFiles | None
    metadata: dict | None
    problem: tuple[str, str] | None = None


@dataclass(frozen=True)
class ShardJob:
    """One shard's worth of patches, in sorted patch-id order."""

    index: int
    name: str
    patches: tuple[PatchJob, ...]


@dataclass
class ShardResult:
    """What encoding a shard produced (returned by the worker to the parent)."""

    index: int
    name: str
    info: archive.ShardInfo | None
    rows: pa.Table
    """The shard's patch rows (:data:`PATCH_ROWS_SCHEMA`), columnar so it pickles compactly."""
    skipped: list[dict]
    moments: BandMoments
    values: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodeSummary:
    """What :func:`encode_release` did.

    Attributes:
        archive_dir: the archive written.
        patches: S2 patches written.
        skipped: list of ``{"item", "path", "reason"}`` for the patches skipped.
        shards: ShardInfo of every shard written.
        seconds: wall time of the whole run.
        start_method: ``"inline"`` (one process) or how the pool's workers were started
            (``"fork"``, ``"forkserver"``, ``"spawn"``).
    """

    archive_dir: Path
    patches: int
    skipped: list[dict]
    shards: list[archive.ShardInfo]
    seconds: float
    start_method: str = "inline"
    resumed: int = 0
    """Shards an interrupted earlier run had finished and this run kept."""

    @property
    def patches_per_second(self) -> float:
        return self.patches / self.seconds if self.seconds > 0 else float("inf")


# ---------------------------------------------------------------------------- planning


def _s1_side_car_partners(s1_patches: dict[str, PatchFiles]) -> dict[str, str]:
    """S2 name -> S1 name from BigEarthNet v1's ``<s1_name>_labels_metadata.json`` side-cars."""
    partners = {}
    for name, patch in s1_patches.items():
        side_car = patch.folder / f"{name}_labels_metadata.json"
        try:
            s2_name = json.loads(side_car.read_text("utf-8")).get("corresponding_s2_patch")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(s2_name, str):
            partners.setdefault(s2_name, name)
    return partners


def match_s1_partners(s2_names: Sequence[str], s1_patches: dict[str, PatchFiles]) -> dict[str, str]:
    """Pair S2 patches with S1 patches found in the release, without metadata.

    A reBEN patch id pairs with the S1 patches of the same tile and ``x``/``y`` (S1 names
    carry them unpadded, SPEC section 2); when several acquisitions qualify, the one
    closest in time to the S2 sensing time wins (ties: the smaller name). Names that are
    not reBEN ids (BigEarthNet v1's) pair through the ``corresponding_s2_patch`` of the
    S1 folders' ``*_labels_metadata.json`` side-cars.

    Returns:
        S2 name -> S1 name, for the S2 names that found a partner.
    """
    by_cell: dict[tuple[str, int, int], list[str]] = {}
    for s1_name in s1_patches:
        try:
            _, tile, x, y = naming.parse_s1_patch_name(s1_name)
        except ValueError:
            continue
        by_cell.setdefault((tile, x, y), []).append(s1_name)
    partners: dict[str, str] = {}
    unparsed = []
    for s2_name in s2_names:
        try:
            parsed = naming.parse_patch_id(s2_name)
        except ValueError:
            unparsed.append(s2_name)
            continue
        candidates = by_cell.get((parsed.tile, parsed.x, parsed.y))
        if not candidates:
            continue
        sensing = datetime.strptime(parsed.sensing, "%Y%m%dT%H%M%S")
        partners[s2_name] = min(
            candidates, key=lambda n: (abs((naming.s1_acquisition_time(n) - sensing).total_seconds()), n)
        )
    if unparsed:
        side_cars = _s1_side_car_partners(s1_patches)
        for s2_name in unparsed:
            if s2_name in side_cars:
                partners[s2_name] = side_cars[s2_name]
    return partners


def _expected_s1_folder(s1_dir: Path, s1_name: str) -> Path:
    try:
        return s1_dir / naming.s1_product_prefix(s1_name) / s1_name
    except ValueError:
        return s1_dir / s1_name


def plan_patches(
    s2_dir: Path,
    s1_dir: Path | None = None,
    reference_maps_dir: Path | None = None,
    metadata: pa.Table | None = None,
) -> tuple[list[PatchJob], dict[str, int]]:
    """Decide which patches to encode and find their files.

    Returns:
        (jobs sorted by patch id, counts of what was found and left out).
    """
    s2_patches = discover_patches(s2_dir, "S2")
    s1_patches = discover_patches(s1_dir, "S1") if s1_dir is not None else {}
    reference_maps = discover_patches(reference_maps_dir, "reference_map") if reference_maps_dir is not None else {}
    counts = {"s2_found": len(s2_patches), "s1_found": len(s1_patches), "reference_maps_found": len(reference_maps)}

    if metadata is not None:
        rows = {row["patch_id"]: row for row in metadata.to_pylist()}
        patch_ids = sorted(rows)
        counts["metadata_rows"] = len(rows)
        counts["s2_not_in_metadata"] = sum(1 for name in s2_patches if name not in rows)
        s1_names = {pid: rows[pid]["s1_name"] for pid in patch_ids}
    else:
        rows = {}
        patch_ids = sorted(s2_patches)
        s1_names = match_s1_partners(patch_ids, s1_patches) if s1_dir is not None else {}

    jobs = []
    for pid in patch_ids:
        s2 = s2_patches.get(pid)
        s1_name = s1_names.get(pid)
        s1 = s1_patches.get(s1_name) if s1_name else None
        reference_map = reference_maps.get(pid)
        problem = None
        if not _is_valid_key(pid) or (s1_name and not _is_valid_key(s1_name)):
            problem = (str(s2.folder) if s2 else str(s2_dir), f"name {pid!r} / {s1_name!r} cannot be an LMDB key "
                       "(must be valid UTF-8 of 1 to 490 bytes)")
        elif s2 is None:
            problem = (str(s2_dir), f"S2 patch folder of {pid} not found in the release")
        elif s1_dir is not None and not s1_name:
            problem = (str(s2.folder), f"no S1 patch under {s1_dir} pairs with {pid}")
        elif s1_dir is not None and s1 is None:
            problem = (str(_expected_s1_folder(s1_dir, s1_name)), f"S1 partner {s1_name} of {pid} not found")
        elif reference_maps_dir is not None and reference_map is None:
            problem = (
                str(reference_maps_dir / _product_folder(pid) / pid),
                f"reference map of {pid} not found",
            )
        jobs.append(PatchJob(pid, s2, s1_name, s1, reference_map, rows.get(pid), problem))
    if s1_dir is not None:
        used = {job.s1_name for job in jobs if job.s1 is not None}
        counts["s1_unpaired"] = sum(1 for name in s1_patches if name not in used)
    return jobs, counts


def _is_valid_key(name: str) -> bool:
    """Whether ``name`` (and ``name_reference_map``) fit LMDB's 511-byte UTF-8 keys."""
    try:
        return 0 < len(name.encode("utf-8")) <= 490
    except UnicodeEncodeError:
        return False


def _product_folder(name: str) -> str:
    """The product folder name of a patch name (name without ``_x_y``), or the name itself."""
    parts = name.rsplit("_", 2)
    return parts[0] if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() else name


def shard_jobs(jobs: Sequence[PatchJob], patches_per_shard: int) -> list[ShardJob]:
    """Cut jobs (sorted by patch id) into consecutive shards of ``patches_per_shard``."""
    if patches_per_shard < 1:
        raise EncodeError(f"patches_per_shard must be at least 1, got {patches_per_shard}")
    ordered = sorted(jobs, key=lambda j: j.patch_id)
    return [
        ShardJob(k, SHARD_NAME_FORMAT.format(k), tuple(ordered[start : start + patches_per_shard]))
        for k, start in enumerate(range(0, len(ordered), patches_per_shard))
    ]


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
        try:
            tile = naming.parse_s1_patch_name(s1_name)[1]
        except ValueError:
            pass
    return tile, x, y


def encode_patch(job: PatchJob) -> tuple[list[tuple[str, bytes]], dict, dict[str, dict[str, np.ndarray]]]:
    """Read and encode one patch.

    Returns:
        (archive items ``(key, value)``, the patch row of ``patches.parquet`` without shard,
        the arrays read per kind for statistics).

    Raises:
        ReleaseError: an input file is missing or malformed (names the file).
    """
    if job.problem is not None:
        raise ReleaseError(*job.problem)
    s2_arrays, georeference = read_patch(job.s2, georeferenced=True)
    try:
        items = [(job.patch_id, codec.encode_s2(s2_arrays))]
    except ValueError as exc:
        raise ReleaseError(job.s2.folder, str(exc)) from None
    arrays = {"S2": s2_arrays}
    if job.s1 is not None:
        s1_arrays, _ = read_patch(job.s1, georeferenced=False)
        try:
            items.append((job.s1.name, codec.encode_s1(s1_arrays)))
        except ValueError as exc:
            raise ReleaseError(job.s1.folder, str(exc)) from None
        arrays["S1"] = s1_arrays
    reference_map = None
    if job.reference_map is not None:
        reference_map = read_patch(job.reference_map, georeferenced=False)[0]["reference_map"]
        try:
            items.append((naming.reference_map_key(job.patch_id), codec.encode_reference_map(reference_map)))
        except ValueError as exc:
            raise ReleaseError(job.reference_map.folder, str(exc)) from None
    meta = job.metadata or {}
    tile, x, y = _grid_position(job.patch_id, job.s1_name)
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
        "has_s1": job.s1 is not None,
        "has_reference_map": reference_map is not None,
    }
    return items, row, arrays


def encode_shard(job: ShardJob, shards_dir: Path, on_patch: Callable[[], None] | None = None) -> ShardResult:
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
            patch_items, row, arrays = encode_patch(patch)
        except ReleaseError as exc:
            skipped.append({"item": patch.patch_id, "path": exc.path, "reason": exc.reason})
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop the other patches
            folder = str(patch.s2.folder) if patch.s2 is not None else patch.patch_id
            skipped.append({"item": patch.patch_id, "path": folder,
                            "reason": f"unexpected {type(exc).__name__} while reading the patch: {exc}"})
        else:
            items.extend(patch_items)
            row["shard"] = job.name
            rows.append(row)
            for key, _ in patch_items:
                values[codec.kind_of_key(key)] += 1
            if row["split"] == "train":
                for kind_arrays in arrays.values():
                    for band, array in kind_arrays.items():
                        moments.add(band, array)
        if on_patch is not None:
            on_patch()
    info = None
    table = pa.Table.from_pylist(rows, schema=PATCH_ROWS_SCHEMA)
    if items:
        info = archive.write_shard(shards_dir, job.name, items, rows=table)
    return ShardResult(job.index, job.name, info, table, skipped, moments, values)


_WORKER_COUNTER = None
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


def _init_worker(counter, parent_pid: int | None = None) -> None:
    """Pool initializer: die with the parent; keep one GDAL environment open for the worker's lifetime."""
    global _WORKER_COUNTER, _WORKER_ENVIRONMENT
    _die_with_parent(parent_pid)
    _WORKER_COUNTER = counter
    _WORKER_ENVIRONMENT = reading_environment()
    _WORKER_ENVIRONMENT.__enter__()


def _bump_counter() -> None:
    with _WORKER_COUNTER.get_lock():
        _WORKER_COUNTER.value += 1


def _encode_shard_in_worker(job: ShardJob, shards_dir: Path) -> ShardResult:
    return encode_shard(job, shards_dir, on_patch=_bump_counter)


def _run_shards(
    jobs: list[ShardJob], shards_dir: Path, workers: int, progress: bool,
    on_result: Callable[[ShardResult], None] | None = None,
) -> tuple[list[ShardResult], str]:
    """Encode the shards inline (one worker) or in a process pool; returns the results in
    shard order and how they ran (``"inline"`` or the start method). ``on_result`` is called
    in this process with each result as it arrives."""
    from tqdm import tqdm

    total = sum(len(j.patches) for j in jobs)
    results: list[ShardResult] = []
    if workers <= 1 or len(jobs) <= 1:
        with tqdm(total=total, desc="encode", unit="patch", disable=not progress, smoothing=0.1) as bar:
            with reading_environment():
                for job in jobs:
                    results.append(encode_shard(job, shards_dir, on_patch=lambda: bar.update(1)))
                    if on_result is not None:
                        on_result(results[-1])
        return results, "inline"
    start_method = _start_method()
    context = multiprocessing.get_context(start_method)
    counter = context.Value("q", 0)
    # Keep the garbage collector of forked workers off the objects they inherit: collecting
    # them would write to every inherited page and copy it (copy-on-write).
    gc.freeze()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(gc.unfreeze)
        pool = cleanup.enter_context(ProcessPoolExecutor(
            max_workers=min(workers, len(jobs)), mp_context=context, initializer=_init_worker,
            initargs=(counter, None if start_method == "forkserver" else os.getpid())
        ))
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


def _start_method() -> str:
    """``fork`` (cheapest: workers share the parent's imports) when no other Python thread
    runs in this process (tqdm's progress-bar monitor aside, which only sleeps and
    refreshes bars); ``forkserver`` when other threads exist, since forking a
    multi-threaded process can deadlock the child; ``spawn`` where neither exists."""
    import threading

    methods = multiprocessing.get_all_start_methods()
    others = [
        t for t in threading.enumerate()
        if t is not threading.main_thread() and type(t).__name__ != "TMonitor"
    ]
    if "fork" in methods and not others:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


# ---------------------------------------------------------------------------- finishing


def write_patches_parquet(path: Path, rows: pa.Table) -> None:
    """Write ``patches.parquet``: the patch rows (:data:`PATCH_ROWS_SCHEMA`) sorted by patch id,
    geometry = footprint (from ulx/uly/lrx/lry in ``crs``) transformed to EPSG:4326."""
    import geopandas as gpd
    import shapely

    table = rows.cast(PATCH_ROWS_SCHEMA).sort_by("patch_id")
    crs_of_rows = np.asarray(table.column("crs").to_pylist(), dtype=object)
    ulx, uly, lrx, lry = (table.column(c).to_numpy() for c in ("ulx", "uly", "lrx", "lry"))
    geometry = np.empty(table.num_rows, dtype=object)
    for crs in sorted(set(crs_of_rows)):
        index = np.flatnonzero(crs_of_rows == crs)
        boxes = shapely.box(ulx[index], lry[index], lrx[index], uly[index])
        geometry[index] = gpd.GeoSeries(boxes, crs=crs).to_crs("EPSG:4326").to_numpy()
    archive.write_patches_parquet(path, table, list(geometry))


def _check_output(out: Path) -> None:
    if (out / archive.MANIFEST_FILE).exists():
        raise EncodeError(f"{out}: already holds an archive (manifest.json); choose another --out or remove it")
    if out.exists() and not out.is_dir():
        raise EncodeError(f"{out}: exists and is not a directory")


def shard_fingerprint(job: ShardJob, config: dict) -> str:
    """sha256 over what determines a shard's content: its patches, their input files,
    metadata rows and planning problems, and the encoding options."""
    def files(patch: PatchFiles | None):
        return None if patch is None else [patch.name, sorted(patch.files.items()), sorted(patch.duplicates.items())]

    plan = {
        "shard": job.name,
        "config": config,
        "patches": [
            [p.patch_id, files(p.s2), p.s1_name, files(p.s1), files(p.reference_map), p.metadata,
             list(p.problem) if p.problem else None]
            for p in job.patches
        ],
    }
    return hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _resume_record(result: ShardResult, fingerprint: str) -> dict:
    return {
        "fingerprint": fingerprint,
        "info": None if result.info is None else asdict(result.info),
        "skipped": result.skipped,
        "moments": result.moments.to_dict(),
        "values": result.values,
    }


def _resumed_result(job: ShardJob, shards_dir: Path, record: dict) -> ShardResult | None:
    """The result of a shard an earlier run finished, or None if it must be encoded again."""
    import pyarrow.parquet as pq

    shard_dir = shards_dir / job.name
    if record.get("info") is None:
        if shard_dir.exists():
            return None
        rows = PATCH_ROWS_SCHEMA.empty_table()
        info = None
    else:
        try:
            info = archive.read_shard_info(shard_dir)
            if asdict(info) != record["info"]:
                return None
            rows = pq.read_table(shard_dir / archive.SHARD_ROWS_FILE).cast(PATCH_ROWS_SCHEMA)
        except (archive.ArchiveError, OSError, pa.ArrowException):
            return None
    return ShardResult(job.index, job.name, info, rows, record["skipped"], BandMoments.from_dict(record["moments"]),
                       record["values"])


def _prepare_output(out: Path, jobs: Sequence[ShardJob] = (), fingerprints: dict[str, str] | None = None
                    ) -> tuple[Path, dict[str, ShardResult]]:
    """Clear what an interrupted run left (``.tmp-*`` shards and files, shards without a
    matching resume record); returns the shards directory and the results of the shards kept."""
    _check_output(out)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".*.tmp-*"):  # an interrupted atomic write of a metadata file
        if leftover.is_file():
            leftover.unlink()
    shards_dir = out / archive.SHARDS_DIR
    resume_dir = out / RESUME_DIR
    archive.remove_stale_temporaries(shards_dir)
    kept: dict[str, ShardResult] = {}
    fingerprints = fingerprints or {}
    for job in jobs:
        record_path = resume_dir / f"{job.name}.json"
        try:
            record = json.loads(record_path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("fingerprint") == fingerprints.get(job.name):
            result = _resumed_result(job, shards_dir, record)
            if result is not None:
                kept[job.name] = result
    if resume_dir.is_dir():
        for record_path in resume_dir.iterdir():
            if record_path.stem not in kept:
                record_path.unlink()
    if shards_dir.is_dir():
        for entry in shards_dir.iterdir():
            if entry.is_dir() and _SHARD_NAME_RE.match(entry.name) and entry.name not in kept:
                shutil.rmtree(entry)
    return shards_dir, kept


def encode_release(
    s2_dir: str | os.PathLike,
    out: str | os.PathLike,
    s1_dir: str | os.PathLike | None = None,
    reference_maps_dir: str | os.PathLike | None = None,
    metadata_files: Sequence[str | os.PathLike] = (),
    workers: int | None = None,
    patches_per_shard: int = DEFAULT_PATCHES_PER_SHARD,
    progress: bool = True,
) -> EncodeSummary:
    """Encode a reBEN GeoTIFF release into an archive at ``out``.

    Args:
        s2_dir: the ``BigEarthNet-S2`` folder (or any folder of S2 patch folders).
        out: the archive directory to create; must not hold a finished archive.
        s1_dir: the ``BigEarthNet-S1`` folder; when given, every S2 patch needs its partner.
        reference_maps_dir: the ``Reference_Maps`` folder; when given, every patch needs its map.
        metadata_files: reBEN metadata parquet files; when given, only their patches are
            encoded, the two metadata files are written for the patches encoded, and the
            manifest gets train-split band statistics.
        workers: processes (default: the CPUs this process may use). Does not change the output.
        patches_per_shard: patches per LMDB shard.
        progress: show a tqdm bar.

    Raises:
        EncodeError / ArchiveError: unusable arguments or inputs (naming the path).
    """
    started = time.perf_counter()
    s2_dir = Path(s2_dir)
    s1_dir = Path(s1_dir) if s1_dir is not None else None
    reference_maps_dir = Path(reference_maps_dir) if reference_maps_dir is not None else None
    out = Path(out)
    for label, folder in (("--s2-dir", s2_dir), ("--s1-dir", s1_dir), ("--reference-maps-dir", reference_maps_dir)):
        if folder is not None and not folder.is_dir():
            raise EncodeError(f"{folder}: {label} is not a directory")
    metadata = archive.read_metadata([Path(p) for p in metadata_files]) if metadata_files else None
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    _check_output(out)
    jobs, counts = plan_patches(s2_dir, s1_dir, reference_maps_dir, metadata)
    if not jobs:
        raise EncodeError(f"{s2_dir}: no S2 patches to encode (found {counts['s2_found']} S2 patch folders)")
    shards = shard_jobs(jobs, patches_per_shard)
    config = {
        "patches_per_shard": patches_per_shard,
        "s1": s1_dir is not None,
        "reference_maps": reference_maps_dir is not None,
        "metadata": bool(metadata_files),
        "gdal_read_options": dict(GDAL_READ_OPTIONS),
    }
    with OutputLock(out, TOOL_NAME):
        return _encode_locked(started, out, s2_dir, s1_dir, reference_maps_dir, metadata_files, metadata,
                              workers, shards, counts, config, progress)


def _encode_locked(started, out, s2_dir, s1_dir, reference_maps_dir, metadata_files, metadata,
                   workers, shards, counts, config, progress) -> EncodeSummary:
    """The part of :func:`encode_release` that writes, run while holding the output lock."""
    fingerprints = {job.name: shard_fingerprint(job, config) for job in shards}
    shards_dir, finished = _prepare_output(out, shards, fingerprints)
    resume_dir = out / RESUME_DIR
    resume_dir.mkdir(exist_ok=True)

    def record(result: ShardResult) -> None:
        archive.write_json_atomic(resume_dir / f"{result.name}.json", _resume_record(result, fingerprints[result.name]))

    todo = [job for job in shards if job.name not in finished]
    results, start_method = _run_shards(todo, shards_dir, workers, progress, on_result=record)
    results = sorted(results + list(finished.values()), key=lambda r: r.index)

    rows = pa.concat_tables([r.rows for r in results]) if results else PATCH_ROWS_SCHEMA.empty_table()
    skipped = sorted((s for r in results for s in r.skipped), key=lambda s: (s["item"], s["path"]))
    infos = [r.info for r in results if r.info is not None]
    moments = BandMoments()
    for r in results:
        moments = moments.merge(r.moments)
    written = set(rows.column("patch_id").to_pylist())
    counts.update(
        patches=rows.num_rows,
        skipped=len(skipped),
        s2_values=sum(r.values.get("S2", 0) for r in results),
        s1_values=sum(r.values.get("S1", 0) for r in results),
        reference_map_values=sum(r.values.get("reference_map", 0) for r in results),
    )
    if rows.num_rows:
        write_patches_parquet(out / archive.PATCHES_FILE, rows)
    statistics = {}
    if metadata is not None:
        kept = metadata.filter(pa.array([pid in written for pid in metadata.column("patch_id").to_pylist()]))
        clean, flagged = archive.write_metadata(out, kept)
        counts.update(metadata_clean=clean, metadata_flagged=flagged)
        statistics = moments.mean_std()
    archive.write_json_atomic(out / archive.REPORT_FILE, {"tool": TOOL_NAME, "skipped": skipped, "counts": counts})
    inputs = [str(p.resolve()) for p in (s2_dir, s1_dir, reference_maps_dir) if p is not None]
    inputs += [str(Path(p).resolve()) for p in metadata_files]
    manifest = archive.build_manifest(infos, counts, statistics, inputs, config, TOOL_NAME)
    shutil.rmtree(resume_dir)  # killed after this and before the manifest: the next run re-encodes
    archive.write_manifest(out, manifest)
    return EncodeSummary(out, rows.num_rows, skipped, infos, time.perf_counter() - started, start_method,
                         resumed=len(finished))


__all__ = [
    "DEFAULT_PATCHES_PER_SHARD", "EncodeError", "EncodeSummary", "PATCH_ROWS_SCHEMA", "PatchJob", "ShardJob",
    "ShardResult", "encode_patch", "encode_release", "encode_shard", "match_s1_partners", "plan_patches",
    "shard_jobs", "write_patches_parquet",
]
