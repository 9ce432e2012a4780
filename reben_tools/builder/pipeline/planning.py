"""Planning a build: one :class:`BlockTask` per (product, block), shard names and fingerprints.

Owns: the task a worker receives, the deterministic shard name of a block, the
fingerprint of every input that decides a shard's content, reading back the
fingerprint a finished shard recorded, and the input stamps (size and modification
time of every local file a block reads; ETag, size and last-modified of every remote one)
kept beside the shards: what makes a build resumable and a changed input rebuild exactly
the shards that read it.
Does not own: discovery (discovery), running tasks (block, execution), remote reads (builder.locations).
May import: reben_tools.format, reben_tools.builder.corine / scenes / tiling / locations, .config, .discovery, .rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from reben_tools.builder.corine import ClcSource
from reben_tools.builder.locations import RemotePath, RemoteSettings, prefetch_stamps
from reben_tools.builder.locations import stamp as remote_stamp
from reben_tools.builder.pipeline.config import PipelineConfig
from reben_tools.builder.pipeline.discovery import Inputs, s1_candidates
from reben_tools.builder.pipeline.rows import ROWS_METADATA_KEY
from reben_tools.builder.scenes import S1Scene, S2Product
from reben_tools.builder.tiling import Block
from reben_tools.format.layout import FORMAT_VERSION, SHARD_INFO_FILE, SHARD_ROWS_FILE


@dataclass(frozen=True)
class BlockTask:
    """Everything a worker needs for one block (small and picklable).

    Attributes:
        product: the checked S2 product.
        block: the rows to build.
        shard_name: deterministic shard name (product prefix + block index).
        shards_dir: where shards are written.
        clc: the CORINE source.
        s1_candidates: S1 scenes that may pair with the product, closest in time first.
        tile_side_m: tile side used for the split.
        fingerprint: digest of what decides the shard's content (product and S1 names, CORINE
            name and settings, offsets, tile side; recorded in the shard's rows, so it is the
            same on every machine and whether the pixels come from a folder, a bucket or a
            STAC catalogue).
        input_stamp: digest of the identity of every file the block reads: path, size and
            modification time of local files, URL, ETag, size and last-modified of remote ones
            (recorded beside the shard, see :func:`stamp_path`): a file changed since the shard
            was built makes the shard stale.
        gdal_cache_mb: GDAL block cache of the worker process.
        remote: retries, time-out and cache of remote reads (set once per worker process).
        upload_to: for a build into a store, the archive's URL: the worker builds the shard in its
            local scratch and uploads it there (``format.remote_archive.publish_shard``);
            ``shards_dir`` is then the client's local staging folder, never written by workers.
        lock_token: the token of the build's lock object in the store (a shard is committed only
            while the build still holds it).
    """

    product: S2Product
    block: Block
    shard_name: str
    shards_dir: Path
    clc: ClcSource
    s1_candidates: tuple[S1Scene, ...]
    tile_side_m: float
    fingerprint: str
    input_stamp: str = ""
    gdal_cache_mb: int = 128
    remote: RemoteSettings = field(default_factory=RemoteSettings)
    upload_to: str | None = None
    lock_token: str | None = None


STAMPS_DIR = ".reben-build"
"""Hidden folder of the output holding each shard's input stamp (resume bookkeeping, not archive content)."""


def shard_name_for(product: S2Product, block: Block) -> str:
    """``<patch prefix>_rows<first>-<last>``: one shard per (product, block), stable across runs."""
    return f"{product.prefix}_rows{block.row_start:02d}-{block.row_stop - 1:02d}"


def _stamp(path: Path | RemotePath) -> list:
    if isinstance(path, RemotePath):
        return remote_stamp(path)
    try:
        st = path.stat()
    except OSError:
        return [str(path), -1, -1]
    return [str(path), st.st_size, st.st_mtime_ns]


def _block_files(product: S2Product, clc: ClcSource, candidates: list[S1Scene]) -> list[Path | RemotePath]:
    """Every file a block of ``product`` reads: its 13 rasters, the candidates' VV/VH, the CORINE file."""
    files = [product.band_paths[b] for b in sorted(product.band_paths)]
    for scene in candidates:
        files += [scene.vv, scene.vh]
    return files + [clc.path]


def _fingerprint(product: S2Product, block: Block, clc: ClcSource, candidates: list[S1Scene], tile_side: float) -> str:
    # file identity (paths, sizes, mtimes, ETags) is the input stamp's: the fingerprint stays the
    # same for the same products read from a folder, a bucket or COGs of a STAC catalogue
    data = {
        "product": product.path.name,
        "block": [block.row_start, block.row_stop, block.ncols],
        "bands": sorted(product.band_paths),
        "clc": [clc.path.name, clc.layer, clc.code_column, clc.raster_values],
        "s1": [[s.prefix, s.nodata, s.linear] for s in candidates],
        "tile_side": tile_side,
        "offset": product.boa_add_offset,
        "version": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def input_stamp(product: S2Product, clc: ClcSource, candidates: list[S1Scene]) -> str:
    """Digest of (path, size, mtime in ns) of every local file a block of ``product`` reads, and of
    (URL, ETag, size, last-modified) of every remote one."""
    stamps = [_stamp(p) for p in _block_files(product, clc, candidates)]
    return hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:16]


def stamp_path(shards_dir: Path, shard_name: str) -> Path:
    """Where the input stamp of a shard is recorded: ``<out>/.reben-build/<shard>.stamp``."""
    return shards_dir.parent / STAMPS_DIR / f"{shard_name}.stamp"


def is_current(task: BlockTask) -> bool:
    """Whether the task's shard is complete, with the task's fingerprint, built from unchanged files."""
    if _finished_fingerprint(task.shards_dir / task.shard_name) != task.fingerprint:
        return False
    try:
        return stamp_path(task.shards_dir, task.shard_name).read_text("utf-8").strip() == task.input_stamp
    except OSError:
        return False


def record_stamp(task: BlockTask) -> None:
    """Record the task's input stamp beside its shard (before the block runs: a shard is never newer)."""
    from reben_tools.format.atomic import replaced_atomically

    path = stamp_path(task.shards_dir, task.shard_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as tmp:
        tmp.write_text(task.input_stamp + "\n", "utf-8")


def _finished_fingerprint(shard_dir: Path) -> str | None:
    """The fingerprint a complete shard recorded, or None if the shard is incomplete or unreadable."""
    if not ((shard_dir / SHARD_INFO_FILE).is_file() and (shard_dir / SHARD_ROWS_FILE).is_file()):
        return None
    try:
        meta = pq.read_schema(shard_dir / SHARD_ROWS_FILE).metadata or {}
        return json.loads(meta[ROWS_METADATA_KEY])["fingerprint"]
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None


def plan_tasks(config: PipelineConfig, inputs: Inputs, clc: ClcSource, shards_dir: Path) -> list[BlockTask]:
    """One task per (product, block), in product then row order."""
    tasks: list[BlockTask] = []
    files = [p for product in inputs.products for p in product.band_paths.values()]
    files += [f for scene in inputs.scenes for f in (scene.vv, scene.vh)] + [clc.path]
    prefetch_stamps([p for p in files if isinstance(p, RemotePath)])  # HEAD requests in parallel
    settings = config.remote_settings()
    for product in inputs.products:
        candidates = s1_candidates(product, inputs.scenes, config.s1_max_gap_days)
        side = product.grid.tile_side_m() if config.tile_side == "extent" else float(config.tile_side)
        stamp = input_stamp(product, clc, candidates)
        tasks.extend(
            BlockTask(
                product,
                block,
                shard_name_for(product, block),
                shards_dir,
                clc,
                tuple(candidates),
                side,
                _fingerprint(product, block, clc, candidates, side),
                stamp,
                config.gdal_cache_mb,
                settings,
            )
            for block in product.grid.blocks(config.rows_per_block)
        )
    return tasks
