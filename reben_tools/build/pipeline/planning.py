"""Planning a build: one :class:`BlockTask` per (product, block), shard names and fingerprints.

Owns: the task a worker receives, the deterministic shard name of a block, the
fingerprint of every input that decides a shard's content, and reading back the
fingerprint a finished shard recorded (what makes a build resumable).
Does not own: discovery (discovery), running tasks (block, execution).
May import: reben_tools.format, reben_tools.build.corine / scenes / tiling, .config, .discovery, .rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from reben_tools.build.corine import ClcSource
from reben_tools.build.pipeline.config import PipelineConfig
from reben_tools.build.pipeline.discovery import Inputs, s1_candidates
from reben_tools.build.pipeline.rows import ROWS_METADATA_KEY
from reben_tools.build.scenes import S1Scene, S2Product
from reben_tools.build.tiling import Block
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
        fingerprint: digest of every input that decides the shard's content.
        gdal_cache_mb: GDAL block cache of the worker process.
    """

    product: S2Product
    block: Block
    shard_name: str
    shards_dir: Path
    clc: ClcSource
    s1_candidates: tuple[S1Scene, ...]
    tile_side_m: float
    fingerprint: str
    gdal_cache_mb: int = 128


def shard_name_for(product: S2Product, block: Block) -> str:
    """``<patch prefix>_rows<first>-<last>``: one shard per (product, block), stable across runs."""
    return f"{product.prefix}_rows{block.row_start:02d}-{block.row_stop - 1:02d}"


def _fingerprint(product: S2Product, block: Block, clc: ClcSource, candidates: list[S1Scene], tile_side: float) -> str:
    data = {
        "product": product.path.name, "block": [block.row_start, block.row_stop, block.ncols],
        "clc": [clc.path.name, clc.code_column, clc.raster_values],
        "s1": [s.prefix for s in candidates], "tile_side": tile_side,
        "offset": product.boa_add_offset, "version": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


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
    tasks = []
    for product in inputs.products:
        candidates = s1_candidates(product, inputs.scenes, config.s1_max_gap_days)
        side = product.grid.tile_side_m() if config.tile_side == "extent" else float(config.tile_side)
        for block in product.grid.blocks(config.rows_per_block):
            tasks.append(BlockTask(
                product, block, shard_name_for(product, block), shards_dir, clc, tuple(candidates), side,
                _fingerprint(product, block, clc, candidates, side), config.gdal_cache_mb,
            ))
    return tasks
