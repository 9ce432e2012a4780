"""Building one block into one shard; runs on a Dask worker.

Owns: reading a block's bands, the no-data and 25 %-UNLABELED drops, S1 partner
warping, SCL fractions, encoding, the block's train-split moments and writing its
shard with its rows (:func:`run_block`): into the shared output folder, or, for a build
into a store, in the worker's local scratch and then uploaded (``format.remote_archive``).
Does not own: scheduling (execution), deciding which blocks to build (planning, run),
merging shards (finalise).
May import: reben_tools.format, reben_tools.geo, reben_tools.builder.corine / quality / locations / scenes,
.planning, .rows.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import numpy as np
import pyarrow as pa

from reben_tools.builder.corine import CorineError, reference_block
from reben_tools.builder.locations import configure_gdal, redact
from reben_tools.builder.pipeline.planning import BlockTask
from reben_tools.builder.pipeline.rows import DROP_REASONS, ROWS_METADATA_KEY, ROWS_SCHEMA
from reben_tools.builder.quality import scl_fractions
from reben_tools.builder.s1_warp import S1Warper
from reben_tools.builder.scenes import SceneError, read_block
from reben_tools.format import naming
from reben_tools.format.bands import PATCH_SIZE_M, S2_BANDS
from reben_tools.format.labels import (
    MAX_UNLABELED_FRACTION,
    class_pixel_fractions,
    labels_from_reference_map,
    unlabeled_fraction,
)
from reben_tools.format.shards import write_shard
from reben_tools.format.stats import BandMoments
from reben_tools.geo.split_rule import reben_split

log = logging.getLogger(__name__)


def _scratch() -> str | None:
    """The Dask worker's own local folder (where a shard is built before its upload), else the temporary folder."""
    try:
        from dask.distributed import get_worker

        return get_worker().local_directory
    except (ImportError, ValueError):
        return None


def _slice(array: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    return array[row * size : (row + 1) * size, col * size : (col + 1) * size]


def run_block(task: BlockTask) -> dict:
    """Build one block and write its shard; runs on a Dask worker.

    Returns:
        a small summary: ``{"shard", "status": "ok" | "failed", "kept", "dropped", "error"?, "path"?}``.
        Failures (a corrupt raster, an unreadable CORINE file) are returned, not raised,
        so the rest of the build goes on.
    """
    import rasterio

    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        configure_gdal(task.remote)  # remote-read retries and cache: once per worker process
        with rasterio.Env(GDAL_NUM_THREADS="1", OPJ_NUM_THREADS="1", GDAL_CACHEMAX=int(task.gdal_cache_mb)):
            summary = _run_block(task)
        summary["seconds"] = time.perf_counter() - started
        summary["cpu_seconds"] = time.process_time() - cpu_started
        return summary
    except (SceneError, CorineError) as exc:
        return {"shard": task.shard_name, "status": "failed", "error": exc.reason, "path": exc.path}
    except Exception as exc:
        log.exception("block %s failed", task.shard_name)
        return {"shard": task.shard_name, "status": "failed", "error": redact(f"{type(exc).__name__}: {exc}")}


def _run_block(task: BlockTask) -> dict:
    product, block = task.product, task.block
    grid = product.grid
    tile = product.name.tile
    s2_time = product.name.sensing_time
    pixels = read_block(product, block, keep_open=True)
    area = (grid.ulx, grid.uly - PATCH_SIZE_M * grid.nrows, grid.ulx + PATCH_SIZE_M * grid.ncols, grid.uly)
    ref_block, issues = reference_block(  # the product's polygons, read once per worker and area
        task.clc, product.crs, grid.block_transform(block, 10), (block.nrows * 120, block.ncols * 120), area=area
    )
    dropped: Counter = Counter()
    dropped_ids: dict[str, list[str]] = {k: [] for k in DROP_REASONS}
    moments = BandMoments()
    items: list[tuple[str, bytes]] = []
    rows: list[dict] = []
    from reben_tools.format import codec

    # pass 1: S2 no-data and the 25% rule
    candidates = []
    for x, y in block.patches():
        r = y - block.row_start
        bands = {b: _slice(pixels[b], r, x, PATCH_SIZE_M // S2_BANDS[b].resolution_m) for b in S2_BANDS}
        if any(not arr.all() for arr in bands.values()):
            dropped["no_data"] += 1
            dropped_ids["no_data"].append(naming.patch_id(product.prefix, *grid.tile_index(x, y)))
            continue
        reference_map = np.ascontiguousarray(_slice(ref_block, r, x, 120))
        unlabeled = unlabeled_fraction(reference_map)
        if unlabeled >= MAX_UNLABELED_FRACTION:
            dropped["unlabeled_25pct"] += 1
            dropped_ids["unlabeled_25pct"].append(naming.patch_id(product.prefix, *grid.tile_index(x, y)))
            continue
        candidates.append((x, y, bands, reference_map, unlabeled))

    # pass 2: S1 partners, scene by scene in order of time gap; each patch takes the first valid one
    partners: dict[tuple[int, int], tuple] = {}
    for scene in task.s1_candidates:
        waiting = [(x, y) for x, y, *_ in candidates if (x, y) not in partners]
        if not waiting:
            break
        with S1Warper(scene) as warper:
            transforms = [grid.patch_transform(x, y, 10) for x, y in waiting]
            windows = warper.source_windows(product.crs, transforms, 120)
            warper.prepare(windows)
            for (x, y), transform, window in zip(waiting, transforms, windows, strict=True):
                if window is None:
                    continue
                warped = warper.warp(product.crs, transform, 120, window=window)
                if warped is not None:
                    partners[(x, y)] = (scene, warped)

    # pass 3: encode, in patch order
    for x, y, bands, reference_map, unlabeled in candidates:
        r = y - block.row_start
        partner = partners.get((x, y))
        if partner is None:
            dropped["no_s1_partner"] += 1
            dropped_ids["no_s1_partner"].append(naming.patch_id(product.prefix, *grid.tile_index(x, y)))
            continue
        scene, (vv, vh) = partner
        pid = naming.patch_id(product.prefix, *grid.tile_index(x, y))
        tx, ty = grid.tile_index(x, y)  # indices on the tile's grid, as in reBEN's ids
        s1_name = naming.s1_patch_name(scene.prefix, tile, tx, ty)
        scl = _slice(pixels["SCL"], r, x, 60)
        snow, cloud = scl_fractions(scl)
        split = str(reben_split(np.array([tx]), np.array([ty]), task.tile_side_m)[0])
        s2_arrays = {b: np.ascontiguousarray(a) for b, a in bands.items()}
        items.append((pid, codec.encode_s2(s2_arrays)))
        items.append((s1_name, codec.encode_s1({"VV": vv, "VH": vh})))
        items.append((naming.reference_map_key(pid), codec.encode_reference_map(reference_map)))
        if split == "train":
            for b, a in s2_arrays.items():
                moments.add(b, a)
            moments.add("VV", vv)
            moments.add("VH", vh)
        ulx, uly = grid.patch_ul(x, y)
        fractions = class_pixel_fractions(reference_map)
        rows.append(
            {
                "patch_id": pid,
                "s1_name": s1_name,
                "s2v1_name": naming.s2v1_name(pid),
                "labels": labels_from_reference_map(reference_map),
                "split": split,
                "shard": task.shard_name,
                "product": product.path.name.removesuffix(".SAFE"),
                "tile": tile,
                "x": tx,
                "y": ty,
                "crs": product.crs,
                "ulx": ulx,
                "uly": uly,
                "s2_acquisition_time": s2_time,
                "s1_product": scene.prefix,
                "s1_acquisition_time": scene.acquired,
                "s1_gap_days": abs((scene.acquired - s2_time).total_seconds()) / 86400.0,
                "unlabeled_fraction": unlabeled,
                "label_fractions": json.dumps({k: round(float(v), 8) for k, v in sorted(fractions.items())}),
                "snow_fraction": snow,
                "cloud_shadow_fraction": cloud,
                "boa_add_offset": product.boa_add_offset,
                "tile_side_m": task.tile_side_m,
            }
        )
    del pixels, ref_block
    table = pa.Table.from_pylist(rows, schema=ROWS_SCHEMA)
    block_meta = {
        "fingerprint": task.fingerprint,
        "product": product.prefix,
        "block": [block.row_start, block.row_stop],
        "candidates": block.nrows * block.ncols,
        "kept": len(rows),
        "dropped": {k: dropped[k] for k in DROP_REASONS},
        "dropped_ids": {k: sorted(dropped_ids[k]) for k in DROP_REASONS},
        "moments": moments.to_dict(),
        "clc_issues": [[i.fid, i.code, i.reason] for i in issues],
    }
    table = table.replace_schema_metadata({ROWS_METADATA_KEY: json.dumps(block_meta, sort_keys=True).encode()})
    if task.upload_to:  # a build into a store: local scratch, checked upload, shard.json last
        from reben_tools.format.remote_archive import publish_shard

        publish_shard(
            task.upload_to, task.shard_name, items, rows=table, lock_token=task.lock_token, scratch=_scratch()
        )
    else:
        write_shard(task.shards_dir, task.shard_name, items, rows=table)
    return {"shard": task.shard_name, "status": "ok", "kept": len(rows), "dropped": block_meta["dropped"]}
