"""Encode reBEN's GeoTIFF release into a reben-tools archive (reBEN's keys, values and metadata, byte for byte).

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
   encodes the values, and writes its shard atomically (``format.shards.write_shard``). A patch
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

Owns: :func:`encode_release` (the entry point: lock, plan, resume, run, finish), resume records
and fingerprints, step 3 (``patches.parquet``, metadata files, statistics, ``report.json``,
``manifest.json``) and :class:`EncodeSummary`.
Does not own: planning (``release.encode_plan``), encoding and workers
(``release.encode_workers``), the archive files' formats (``format``).
May import: ``format`` (layout, atomic, metadata, shards, manifest, locking, stats),
``release.geotiff_release``, ``release.encode_plan``, ``release.encode_workers``, numpy,
pyarrow, geopandas and shapely (lazily).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.layout import (
    MANIFEST_FILE,
    PATCHES_FILE,
    REPORT_FILE,
    SHARD_ROWS_FILE,
    SHARDS_DIR,
    ArchiveError,
)
from reben_tools.format.locking import OutputLock
from reben_tools.format.manifest import build_manifest, write_manifest
from reben_tools.format.metadata import read_metadata, write_metadata
from reben_tools.format.metadata import write_patches_parquet as write_geoparquet_index
from reben_tools.format.shards import ShardInfo, read_shard_info, remove_stale_temporaries
from reben_tools.format.stats import BandMoments
from reben_tools.release.encode_plan import (
    DEFAULT_PATCHES_PER_SHARD,
    PATCH_ROWS_SCHEMA,
    EncodeError,
    ShardJob,
    ShardResult,
    plan_patches,
    shard_jobs,
)
from reben_tools.release.encode_workers import run_shards
from reben_tools.release.geotiff_release import GDAL_READ_OPTIONS, PatchFiles

_SHARD_NAME_RE = re.compile(r"^shard-\d{5,}$")
TOOL_NAME = "reben encode"
RESUME_DIR = ".encode-resume"
"""Per-shard records of an unfinished run (see the module docstring); gone once the manifest exists."""


@dataclass(frozen=True)
class EncodeSummary:
    """What :func:`encode_release` did.

    Attributes:
        archive_dir: the archive written.
        patches: patch rows written (S2 patches, and reference maps without their S2 patch).
        skipped: list of ``{"item", "path", "reason"}`` for the patches skipped.
        shards: ShardInfo of every shard written.
        seconds: wall time of the whole run.
        start_method: ``"inline"`` (one process) or how the pool's workers were started
            (``"fork"``, ``"forkserver"``, ``"spawn"``).
    """

    archive_dir: Path
    patches: int
    skipped: list[dict]
    shards: list[ShardInfo]
    seconds: float
    start_method: str = "inline"
    resumed: int = 0
    """Shards an interrupted earlier run had finished and this run kept."""
    values: int = 0
    """Values written (S2, S1 and reference maps; S1-only values included)."""
    counts: dict | None = None
    """The counts of ``report.json``, pairing included."""

    @property
    def patches_per_second(self) -> float:
        return self.patches / self.seconds if self.seconds > 0 else float("inf")


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
    write_geoparquet_index(path, table, list(geometry))


def _check_output(out: Path) -> None:
    if (out / MANIFEST_FILE).exists():
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
            [
                p.patch_id,
                files(p.s2),
                p.s1_name,
                files(p.s1),
                files(p.reference_map),
                p.metadata,
                list(p.problem) if p.problem else None,
            ]
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
            info = read_shard_info(shard_dir)
            if asdict(info) != record["info"]:
                return None
            rows = pq.read_table(shard_dir / SHARD_ROWS_FILE).cast(PATCH_ROWS_SCHEMA)
        except (ArchiveError, OSError, pa.ArrowException):
            return None
    return ShardResult(
        job.index, job.name, info, rows, record["skipped"], BandMoments.from_dict(record["moments"]), record["values"]
    )


def _prepare_output(
    out: Path, jobs: Sequence[ShardJob] = (), fingerprints: dict[str, str] | None = None
) -> tuple[Path, dict[str, ShardResult]]:
    """Clear what an interrupted run left (``.tmp-*`` shards and files, shards without a
    matching resume record); returns the shards directory and the results of the shards kept."""
    _check_output(out)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(".*.tmp-*"):  # an interrupted atomic write of a metadata file
        if leftover.is_file():
            leftover.unlink()
    shards_dir = out / SHARDS_DIR
    resume_dir = out / RESUME_DIR
    remove_stale_temporaries(shards_dir)
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
    s2_dir: str | os.PathLike | None,
    out: str | os.PathLike,
    s1_dir: str | os.PathLike | None = None,
    reference_maps_dir: str | os.PathLike | None = None,
    metadata_files: Sequence[str | os.PathLike] = (),
    workers: int | None = None,
    patches_per_shard: int = DEFAULT_PATCHES_PER_SHARD,
    progress: bool = True,
    require_pairs: bool = False,
) -> EncodeSummary:
    """Encode a reBEN GeoTIFF release into an archive at ``out``.

    Args:
        s2_dir: the ``BigEarthNet-S2`` folder (or any folder of S2 patch folders), or None
            to encode only S1 patches and/or reference maps.
        out: the archive directory to create; must not hold a finished archive.
        s1_dir: the ``BigEarthNet-S1`` folder: every valid S1 patch is written, paired or not.
        reference_maps_dir: the ``Reference_Maps`` folder: every valid map is written, with
            or without its S2 patch.
        metadata_files: reBEN metadata parquet files; when given, only their patches are
            encoded, the two metadata files are written for the patches encoded, and the
            manifest gets train-split band statistics.
        workers: processes (default: the CPUs this process may use). Does not change the output.
        patches_per_shard: patches per LMDB shard.
        progress: show a tqdm bar.
        require_pairs: skip every patch that lacks its S2 patch, its S1 partner (when
            ``s1_dir`` is given) or its reference map (when ``reference_maps_dir`` is
            given), and leave unpaired S1 patches out (the encoder's behaviour before it
            encoded what is there). Pairing is counted in ``report.json`` either way.

    Raises:
        EncodeError / ArchiveError: unusable arguments or inputs (naming the path).
    """
    started = time.perf_counter()
    s2_dir = Path(s2_dir) if s2_dir is not None else None
    if s2_dir is None and s1_dir is None and reference_maps_dir is None:
        raise EncodeError("nothing to encode: give --s2-dir, --s1-dir and/or --reference-maps-dir")
    s1_dir = Path(s1_dir) if s1_dir is not None else None
    reference_maps_dir = Path(reference_maps_dir) if reference_maps_dir is not None else None
    out = Path(out)
    for label, folder in (("--s2-dir", s2_dir), ("--s1-dir", s1_dir), ("--reference-maps-dir", reference_maps_dir)):
        if folder is not None and not folder.is_dir():
            raise EncodeError(f"{folder}: {label} is not a directory")
    metadata = read_metadata([Path(p) for p in metadata_files]) if metadata_files else None
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    _check_output(out)
    jobs, counts = plan_patches(s2_dir, s1_dir, reference_maps_dir, metadata, require_pairs)
    if not jobs:
        where = ", ".join(str(p) for p in (s2_dir, s1_dir, reference_maps_dir) if p is not None)
        raise EncodeError(
            f"{where}: no patches to encode (found {counts['s2_found']} S2, {counts['s1_found']} S1 "
            f"and {counts['reference_maps_found']} reference-map patch folders)"
        )
    shards = shard_jobs(jobs, patches_per_shard)
    config = {
        "patches_per_shard": patches_per_shard,
        "s1": s1_dir is not None,
        "reference_maps": reference_maps_dir is not None,
        "metadata": bool(metadata_files),
        "s2": s2_dir is not None,
        "require_pairs": require_pairs,
        "gdal_read_options": dict(GDAL_READ_OPTIONS),
    }
    with OutputLock(out, TOOL_NAME):
        return _encode_locked(
            started,
            out,
            s2_dir,
            s1_dir,
            reference_maps_dir,
            metadata_files,
            metadata,
            workers,
            shards,
            counts,
            config,
            progress,
        )


def _encode_locked(
    started,
    out,
    s2_dir,
    s1_dir,
    reference_maps_dir,
    metadata_files,
    metadata,
    workers,
    shards,
    counts,
    config,
    progress,
) -> EncodeSummary:
    """The part of :func:`encode_release` that writes, run while holding the output lock."""
    fingerprints = {job.name: shard_fingerprint(job, config) for job in shards}
    shards_dir, finished = _prepare_output(out, shards, fingerprints)
    resume_dir = out / RESUME_DIR
    resume_dir.mkdir(exist_ok=True)

    def record(result: ShardResult) -> None:
        write_json_atomic(resume_dir / f"{result.name}.json", _resume_record(result, fingerprints[result.name]))

    todo = [job for job in shards if job.name not in finished]
    results, start_method = run_shards(todo, shards_dir, workers, progress, on_result=record)
    results = sorted(results + list(finished.values()), key=lambda r: r.index)

    rows = pa.concat_tables([r.rows for r in results]) if results else PATCH_ROWS_SCHEMA.empty_table()
    skipped = sorted((s for r in results for s in r.skipped), key=lambda s: (s["item"], s["path"]))
    infos = [r.info for r in results if r.info is not None]
    moments = BandMoments()
    for r in results:
        moments = moments.merge(r.moments)
    has_s2 = rows.column("has_s2").to_pylist()
    written = {
        pid for pid, s2 in zip(rows.column("patch_id").to_pylist(), has_s2, strict=True) if s2
    }  # metadata: S2 patches
    counts.update(
        patches=rows.num_rows,
        s1_only_values=sum(r.values.get("S1", 0) for r in results)
        - sum(bool(v) for v in rows.column("has_s1").to_pylist()),
        skipped=len(skipped),
        s2_values=sum(r.values.get("S2", 0) for r in results),
        s1_values=sum(r.values.get("S1", 0) for r in results),
        reference_map_values=sum(r.values.get("reference_map", 0) for r in results),
    )
    if rows.num_rows:
        write_patches_parquet(out / PATCHES_FILE, rows)
    statistics = {}
    if metadata is not None:
        kept = metadata.filter(pa.array([pid in written for pid in metadata.column("patch_id").to_pylist()]))
        clean, flagged = write_metadata(out, kept)
        counts.update(metadata_clean=clean, metadata_flagged=flagged)
        statistics = moments.mean_std()
    write_json_atomic(out / REPORT_FILE, {"tool": TOOL_NAME, "skipped": skipped, "counts": counts})
    inputs = [str(p.resolve()) for p in (s2_dir, s1_dir, reference_maps_dir) if p is not None]
    inputs += [str(Path(p).resolve()) for p in metadata_files]
    manifest = build_manifest(infos, counts, statistics, inputs, config, TOOL_NAME)
    shutil.rmtree(resume_dir)  # killed after this and before the manifest: the next run re-encodes
    write_manifest(out, manifest)
    return EncodeSummary(
        out,
        rows.num_rows,
        skipped,
        infos,
        time.perf_counter() - started,
        start_method,
        resumed=len(finished),
        values=sum(i.entries for i in infos),
        counts=counts,
    )


__all__ = ["EncodeSummary", "encode_release", "shard_fingerprint", "write_patches_parquet"]
