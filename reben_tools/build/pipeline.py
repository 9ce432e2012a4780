"""The scene-to-archive build: Sentinel-2 L2A + Sentinel-1 + CORINE -> reben-tools archive, on Dask.

Work unit: one *block* (a run of patch rows over the whole width) of one product.
A worker reads its block's window of every band at native resolution, drops
incomplete and no-data patches, rasterises CORINE into the reference maps, drops
patches with 25% or more UNLABELED pixels, warps the closest valid S1 acquisition
onto each remaining patch, computes SCL fractions, encodes the values and writes
its own shard atomically (``format.shards.write_shard``), with the patch rows in the
shard's ``rows.parquet``. Only a small summary travels back through the scheduler.

The client then reads the rows of every finished shard, assigns countries and
quality flags, merges the train-split band moments (computed per block: the split
depends only on the patch position), and writes the metadata files,
``patches.parquet``, ``report.json``, the manifest, a summary and a map.

Resumable: a shard whose directory is complete (``shard.json`` + ``rows.parquet``)
and whose recorded fingerprint matches the current inputs is not rebuilt; stale
``.tmp-*`` directories are removed. Deterministic: shard names, shard contents and
every metadata file depend on the inputs only, never on scheduling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from reben_tools.format import naming
from reben_tools.format.atomic import write_json_atomic, write_parquet_atomic
from reben_tools.format.layout import (
    FLAGGED_METADATA_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    METADATA_FILE,
    PATCHES_FILE,
    REPORT_FILE,
    SHARDS_DIR,
    SHARD_INFO_FILE,
    SHARD_ROWS_FILE,
    SPLITS,
)
from reben_tools.format.manifest import build_manifest, write_manifest
from reben_tools.format.metadata import (
    METADATA_SCHEMA,
    patch_rows_schema,
    write_metadata,
    write_patches_parquet,
)
from reben_tools.format.shards import read_shard_info, remove_stale_temporaries, write_shard
from reben_tools.format.bands import PATCH_SIZE_M, S2_BANDS
from reben_tools.build.corine import ClcSource, CorineError, open_clc, reference_block
from reben_tools.build.countries import BIGEARTHNET_COUNTRIES, CountryError, CountryIndex, footprints_in
from reben_tools.format.labels import MAX_UNLABELED_FRACTION, class_pixel_fractions, labels_from_reference_map, unlabeled_fraction
from reben_tools.build.quality import DEFAULT_CLOUD_THRESHOLD, DEFAULT_SNOW_THRESHOLD, QualityRule, read_id_list, scl_fractions
from reben_tools.build.scenes import (
    S1Scene, S1Warper, S2Product, SceneError, looks_like_s1_scene, looks_like_s2_product,
    open_s1_scene, open_s2_product, read_block,
)
from reben_tools.geo.split_rule import reben_split
from reben_tools.format.stats import BandMoments
from reben_tools.build.tiling import Block

TOOL_NAME = "reben build"
MAP_FILE = "summary_map.png"
DROP_REASONS = ("no_data", "unlabeled_25pct", "no_s1_partner")
ROWS_METADATA_KEY = b"reben_block"
log = logging.getLogger(__name__)


class BuildError(RuntimeError):
    """The build cannot start or produced nothing; the message says why."""


class PipelineConfig(BaseModel):
    """Settings of a scene-to-archive build (``pipelines/*.toml``; schema in ``schemas/pipeline_config.schema.json``).

    Relative paths in a config file are resolved against the file's folder.
    """

    model_config = ConfigDict(extra="forbid")

    s2: list[str] = Field(default_factory=list, description="S2 L2A products (.SAFE or GeoTIFF folders) or folders of products")
    s1: list[str] = Field(default_factory=list, description="S1 scene folders (*_VV.tif, *_VH.tif) or folders of scenes")
    clc: str | None = Field(None, description="CORINE Land Cover 2018: vector file (any OGR format) or raster")
    clc_code_column: str = Field("Code_18", description="code column of vector CORINE, matched case-insensitively")
    clc_layer: str | None = Field(None, description="vector layer (default: the first)")
    clc_raster_values: Literal["auto", "codes", "grid_codes"] = Field(
        "auto", description="raster CORINE values: raw CLC codes, the official raster's 1..44 grid codes, or detect")
    countries_file: str | None = Field(None, description="country polygons (default: shipped Natural Earth admin-0 1:110m)")
    countries: list[str] = Field(default_factory=lambda: list(BIGEARTHNET_COUNTRIES),
                                 description="ADM0_A3 codes of the countries patches may be assigned to")
    country_key_column: str = "ADM0_A3"
    country_name_column: str = "NAME"
    metric_crs: str = Field("EPSG:3035", description="CRS in which country distances are measured")
    rows_per_block: int = Field(8, ge=1, le=91, description="patch rows per task (8 rows of a full tile: ~0.6 GB of bands)")
    s1_max_gap_days: float = Field(6.0, gt=0, description="largest |S1 - S2| acquisition gap in days (reBEN: 0.2..5.7)")
    tile_side: Literal["extent"] | float = Field(
        "extent", description="tile side s of the split, metres; 'extent' = the product rasters' extent (109,800 m for a full tile)")
    snow_threshold: float = Field(DEFAULT_SNOW_THRESHOLD, ge=0, le=1, description="flag snow when the SCL snow fraction exceeds this")
    cloud_threshold: float = Field(DEFAULT_CLOUD_THRESHOLD, ge=0, le=1, description="flag cloud/shadow when that SCL fraction exceeds this")
    snow_ids_file: str | None = Field(None, description="text file of patch ids to flag as snow, one per line")
    cloud_ids_file: str | None = Field(None, description="text file of patch ids to flag as cloud/shadow, one per line")
    out: str | None = Field(None, description="archive folder to write")
    workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = Field("3GiB", description="LocalCluster memory limit per worker")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler, e.g. tcp://127.0.0.1:8786")
    gdal_cache_mb: int = Field(128, ge=8, description="GDAL block cache per worker process, MB")

    @classmethod
    def from_file(cls, path: str | Path) -> PipelineConfig:
        """Load a TOML or JSON config; relative paths become relative to the file's folder."""
        import tomllib

        path = Path(path)
        try:
            text = path.read_text("utf-8")
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:
            raise BuildError(f"{path}: cannot read pipeline config ({exc})") from None
        data.pop("$schema", None)
        base = path.resolve().parent

        def resolve(p: str) -> str:
            return str((base / p).resolve()) if not Path(p).is_absolute() else p

        for key in ("s2", "s1"):
            if key in data and isinstance(data[key], list):
                data[key] = [resolve(p) if isinstance(p, str) else p for p in data[key]]
        for key in ("clc", "countries_file", "snow_ids_file", "cloud_ids_file", "out"):
            if isinstance(data.get(key), str):
                data[key] = resolve(data[key])
        from pydantic import ValidationError

        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise BuildError(f"{path}: invalid pipeline config:\n{exc}") from None


def config_json_schema() -> dict:
    """The JSON Schema of :class:`PipelineConfig` (what ``schemas/pipeline_config.schema.json`` holds)."""
    schema = PipelineConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://reben-tools/schemas/pipeline_config.schema.json"
    return schema


ROWS_SCHEMA = patch_rows_schema(
    ("product", pa.string()),
    ("s2_acquisition_time", pa.timestamp("s")),
    ("s1_product", pa.string()),
    ("s1_acquisition_time", pa.timestamp("s")),
    ("s1_gap_days", pa.float64()),
    ("unlabeled_fraction", pa.float64()),
    ("label_fractions", pa.string()),
    ("snow_fraction", pa.float64()),
    ("cloud_shadow_fraction", pa.float64()),
    ("boa_add_offset", pa.int32()),
    ("tile_side_m", pa.float64()),
)
"""Columns of a shard's ``rows.parquet`` (``label_fractions``: JSON object class -> pixel share)."""


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


def _slice(array: np.ndarray, row: int, col: int, size: int) -> np.ndarray:
    return array[row * size:(row + 1) * size, col * size:(col + 1) * size]


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
        with rasterio.Env(GDAL_NUM_THREADS="1", OPJ_NUM_THREADS="1", GDAL_CACHEMAX=int(task.gdal_cache_mb)):
            summary = _run_block(task)
        summary["seconds"] = time.perf_counter() - started
        summary["cpu_seconds"] = time.process_time() - cpu_started
        return summary
    except (SceneError, CorineError) as exc:
        return {"shard": task.shard_name, "status": "failed", "error": exc.reason, "path": exc.path}
    except Exception as exc:  # noqa: BLE001 - reported as a failed block; later blocks of its chain go on
        log.exception("block %s failed", task.shard_name)
        return {"shard": task.shard_name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _run_block(task: BlockTask) -> dict:
    product, block = task.product, task.block
    grid = product.grid
    tile = product.name.tile
    s2_time = product.name.sensing_time
    pixels = read_block(product, block, keep_open=True)
    ref_block, issues = reference_block(
        task.clc, product.crs, grid.block_transform(block, 10), (block.nrows * 120, block.ncols * 120)
    )
    dropped: Counter = Counter()
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
            continue
        reference_map = np.ascontiguousarray(_slice(ref_block, r, x, 120))
        unlabeled = unlabeled_fraction(reference_map)
        if unlabeled >= MAX_UNLABELED_FRACTION:
            dropped["unlabeled_25pct"] += 1
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
            for (x, y), transform, window in zip(waiting, transforms, windows):
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
            continue
        scene, (vv, vh) = partner
        pid = naming.patch_id(product.prefix, x, y)
        s1_name = naming.s1_patch_name(scene.prefix, tile, x, y)
        scl = _slice(pixels["SCL"], r, x, 60)
        snow, cloud = scl_fractions(scl)
        split = str(reben_split(np.array([x]), np.array([y]), task.tile_side_m)[0])
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
        rows.append({
            "patch_id": pid, "s1_name": s1_name, "s2v1_name": naming.s2v1_name(pid),
            "labels": labels_from_reference_map(reference_map), "split": split, "shard": task.shard_name,
            "product": product.path.name.removesuffix(".SAFE"), "tile": tile, "x": x, "y": y,
            "crs": product.crs, "ulx": ulx, "uly": uly, "s2_acquisition_time": s2_time,
            "s1_product": scene.prefix, "s1_acquisition_time": scene.acquired,
            "s1_gap_days": abs((scene.acquired - s2_time).total_seconds()) / 86400.0,
            "unlabeled_fraction": unlabeled,
            "label_fractions": json.dumps({k: round(float(v), 8) for k, v in sorted(fractions.items())}),
            "snow_fraction": snow, "cloud_shadow_fraction": cloud, "boa_add_offset": product.boa_add_offset,
            "tile_side_m": task.tile_side_m,
        })
    del pixels, ref_block
    table = pa.Table.from_pylist(rows, schema=ROWS_SCHEMA)
    block_meta = {
        "fingerprint": task.fingerprint,
        "product": product.prefix,
        "block": [block.row_start, block.row_stop],
        "candidates": block.nrows * block.ncols,
        "kept": len(rows),
        "dropped": {k: dropped[k] for k in DROP_REASONS},
        "moments": moments.to_dict(),
        "clc_issues": [[i.fid, i.code, i.reason] for i in issues],
    }
    table = table.replace_schema_metadata({ROWS_METADATA_KEY: json.dumps(block_meta, sort_keys=True).encode()})
    write_shard(task.shards_dir, task.shard_name, items, rows=table)
    return {"shard": task.shard_name, "status": "ok", "kept": len(rows), "dropped": block_meta["dropped"]}


# ----------------------------------------------------------------------------- discovery


@dataclass
class Inputs:
    """What discovery found: usable products and scenes, and what was skipped."""

    products: list[S2Product] = field(default_factory=list)
    scenes: list[S1Scene] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def _expand(paths: list[str], is_item: Callable[[Path], bool]) -> list[Path]:
    out = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not is_item(path):
            children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            out.extend(children)
        else:
            out.append(path)
    return out


def _open_unique(paths: list[str], is_item: Callable[[Path], bool], opener: Callable[[Path], S2Product | S1Scene],
                 kind: str, duplicate_reason: Callable[[str, Path], str], skipped: list[dict]) -> list:
    """Open every item ``paths`` name (folders of items expanded), the first of each prefix only; sorted by prefix.

    Items that cannot be opened, and later items repeating a prefix, are recorded in ``skipped``.
    """
    seen: dict[str, Path] = {}
    opened = []
    for path in _expand(paths, is_item):
        try:
            item = opener(path)
        except SceneError as exc:
            skipped.append({"item": path.name, "kind": kind, "path": exc.path, "reason": exc.reason})
            continue
        if item.prefix in seen:
            skipped.append({"item": path.name, "kind": kind, "path": str(path),
                            "reason": duplicate_reason(item.prefix, seen[item.prefix])})
            continue
        seen[item.prefix] = path
        opened.append(item)
    return sorted(opened, key=lambda i: i.prefix)


def discover(config: PipelineConfig) -> Inputs:
    """Open every S2 product and S1 scene named by the config; record what cannot be used."""
    inputs = Inputs()
    inputs.products = _open_unique(
        config.s2, looks_like_s2_product, open_s2_product, "s2_product",
        lambda prefix, first: f"same patch ids as {first} (differs only in generation time)", inputs.skipped)
    inputs.scenes = _open_unique(
        config.s1, looks_like_s1_scene, open_s1_scene, "s1_scene",
        lambda prefix, first: f"second scene with prefix {prefix}", inputs.skipped)
    return inputs


def _bounds_intersect(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _scene_meets_product(scene: S1Scene, product: S2Product) -> bool:
    """Whether the scene's bounding box, taken to the product's CRS, meets the product's extent."""
    from rasterio.warp import transform_bounds

    g = product.grid
    try:
        bounds = transform_bounds(scene.crs, product.crs, *scene.bounds, densify_pts=21)
    except Exception:  # noqa: BLE001
        return False
    return _bounds_intersect(bounds, (g.ulx, g.uly - g.extent_y_m, g.ulx + g.extent_x_m, g.uly))


def s1_candidates(product: S2Product, scenes: list[S1Scene], max_gap_days: float) -> list[S1Scene]:
    """Scenes within the gap whose bounding box meets the product, closest in time first (ties: name)."""
    out = []
    for scene in scenes:
        gap = abs((scene.acquired - product.name.sensing_time).total_seconds()) / 86400.0
        if gap <= max_gap_days and _scene_meets_product(scene, product):
            out.append((gap, scene.prefix, scene))
    return [s for _, _, s in sorted(out, key=lambda t: (t[0], t[1]))]


def _scene_overlaps_any(scene: S1Scene, products: list[S2Product]) -> bool:
    return any(_scene_meets_product(scene, product) for product in products)


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


# ----------------------------------------------------------------------------- build


@dataclass
class BuildResult:
    """What a build produced."""

    archive_dir: Path
    kept: int
    flagged: int
    summary: dict
    report: dict
    map_png: Path | None
    shards_built: int
    shards_reused: int
    execute_seconds: float = 0.0
    task_seconds: float = 0.0
    task_cpu_seconds: float = 0.0


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


def _make_client(config: PipelineConfig, scheduler: str | None, workers: int):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise BuildError(f"cannot connect to the Dask scheduler {scheduler} ({exc})") from None
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=config.threads_per_worker, processes=True,
        memory_limit=config.memory_limit, dashboard_address=":0", silence_logs=logging.ERROR,
    )
    return Client(cluster), cluster


def run_block_after(task: BlockTask, previous: dict | None) -> dict:
    """:func:`run_block`, scheduled after the previous block of the same chain (``previous`` is its summary)."""
    return run_block(task)


def chains_for(tasks: list[BlockTask], threads: int) -> list[list[BlockTask]]:
    """Cut each product's blocks into runs of consecutive blocks, run one after the other.

    A worker that builds block ``k`` and then ``k + 1`` of a product reuses the decoded
    JPEG2000 tiles the two blocks share (kept in GDAL's cache), so consecutive blocks
    go to one worker. Each product gets ``ceil(threads / products)`` chains (at most one
    per block), enough to keep every worker thread busy when products are few.
    """
    by_product: dict[str, list[BlockTask]] = {}
    for task in tasks:
        by_product.setdefault(task.product.prefix, []).append(task)
    per_product = max(1, math.ceil(threads / max(len(by_product), 1)))
    chains = []
    for product_tasks in by_product.values():
        product_tasks.sort(key=lambda t: t.block.row_start)
        n = min(per_product, len(product_tasks))
        size = math.ceil(len(product_tasks) / n)
        chains.extend(product_tasks[i:i + size] for i in range(0, len(product_tasks), size))
    return chains


def submit_chains(client, tasks: list[BlockTask]) -> list:
    """Submit every task, each after the previous one of its chain; returns the futures."""
    threads = sum(client.nthreads().values()) or 1
    futures = []
    for chain in chains_for(tasks, threads):
        previous = None
        for task in chain:
            previous = client.submit(run_block_after, task, previous, key=f"reben-block-{task.shard_name}", pure=False)
            futures.append(previous)
    return futures


def execute(tasks: list[BlockTask], config: PipelineConfig, scheduler: str | None, workers: int,
            progress: bool = True, echo: Callable[[str], None] = print) -> list[dict]:
    """Run ``tasks`` on a Dask cluster; returns their summaries in completion order."""
    if not tasks:
        return []
    from dask.distributed import as_completed
    from tqdm import tqdm

    client, cluster = _make_client(config, scheduler, workers)
    try:
        try:
            import bokeh  # noqa: F401

            echo(f"Dask dashboard: {client.dashboard_link}")
        except ImportError:
            echo(f"Dask dashboard: {client.dashboard_link} (install bokeh to serve it)")
        futures = submit_chains(client, tasks)
        results = []
        with tqdm(total=len(futures), desc="blocks", unit="block", disable=not progress, file=sys.stderr) as bar:
            for future in as_completed(futures):
                try:
                    results.append(future.result())
                except Exception as exc:  # noqa: BLE001 - an unexpected worker error must not stop the build
                    name = future.key.removeprefix("reben-block-") if isinstance(future.key, str) else str(future.key)
                    results.append({"shard": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
                bar.update(1)
                future.release()
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def build_archive(
    config: PipelineConfig, out: str | Path | None = None, scheduler: str | None = None,
    workers: int | None = None, progress: bool = True, echo: Callable[[str], None] = print,
) -> BuildResult:
    """Build (or resume) an archive from the scenes a config names.

    Raises:
        BuildError: no usable input (no product, no CORINE, unreadable countries),
            or nothing could be built.
    """
    out = Path(out or config.out or "")
    if not str(out):
        raise BuildError("no output folder given (--out or 'out' in the config)")
    from reben_tools.format.locking import OutputLock, OutputLockedError

    try:
        with OutputLock(out, command=TOOL_NAME):
            return _build_locked(config, out, scheduler or config.scheduler, workers or config.workers, progress, echo)
    except OutputLockedError as exc:
        raise BuildError(str(exc)) from None


def _build_locked(config: PipelineConfig, out: Path, scheduler: str | None, workers: int, progress: bool,
                  echo: Callable[[str], None]) -> BuildResult:
    shards_dir = out / SHARDS_DIR
    stale = remove_stale_temporaries(shards_dir)
    if stale:
        echo(f"removed {len(stale)} unfinished shard(s) of an interrupted run")

    if not config.clc:
        raise BuildError("no CORINE source given (--clc or 'clc' in the config)")
    try:
        clc = open_clc(config.clc, config.clc_code_column, config.clc_layer, config.clc_raster_values)
        countries = CountryIndex.load(config.countries_file, config.countries, config.country_key_column,
                                      config.country_name_column, config.metric_crs)
        rule = QualityRule(
            config.snow_threshold, config.cloud_threshold,
            read_id_list(config.snow_ids_file) if config.snow_ids_file else frozenset(),
            read_id_list(config.cloud_ids_file) if config.cloud_ids_file else frozenset(),
        )
    except (CorineError, CountryError, ValueError) as exc:
        raise BuildError(str(exc)) from None

    inputs = discover(config)
    for scene in inputs.scenes:
        if not _scene_overlaps_any(scene, inputs.products):
            inputs.skipped.append({"item": scene.path.name, "kind": "s1_scene", "path": str(scene.path),
                                   "reason": "overlaps no Sentinel-2 product"})
    if not inputs.products:
        _write_report(out, inputs.skipped, [], {}, {})
        raise BuildError("no usable Sentinel-2 product: " + "; ".join(f"{s['path']}: {s['reason']}" for s in inputs.skipped[:5]))

    tasks = plan_tasks(config, inputs, clc, shards_dir)
    pending = [t for t in tasks if _finished_fingerprint(shards_dir / t.shard_name) != t.fingerprint]
    reused = len(tasks) - len(pending)
    echo(f"{len(inputs.products)} product(s), {len(inputs.scenes)} S1 scene(s), {len(tasks)} block(s): "
         f"{len(pending)} to build, {reused} already built")
    started = time.perf_counter()
    results = execute(pending, config, scheduler, workers, progress, echo)
    execute_seconds = time.perf_counter() - started
    failed = {r["shard"]: r for r in results if r.get("status") != "ok"}
    for name in failed:  # a shard left by an earlier run with other inputs must not stay behind
        stale_shard = shards_dir / name
        if stale_shard.is_dir():
            shutil.rmtree(stale_shard)
    for r in sorted(failed.values(), key=lambda r: r["shard"]):
        entry = {"item": r["shard"], "kind": "block", "key": r["shard"], "reason": str(r.get("error"))}
        if r.get("path"):
            entry["path"] = str(r["path"])
        inputs.skipped.append(entry)

    done = [t for t in tasks if t.shard_name not in failed and _finished_fingerprint(shards_dir / t.shard_name) == t.fingerprint]
    result = finalise(out, config, inputs, done, countries, rule, clc)
    result.shards_built = len(pending) - len(failed)
    result.shards_reused = reused
    result.execute_seconds = execute_seconds
    result.task_seconds = sum(r.get("seconds", 0.0) for r in results)
    result.task_cpu_seconds = sum(r.get("cpu_seconds", 0.0) for r in results)
    echo(f"built {result.shards_built} shard(s), reused {reused}, in {time.perf_counter() - started:.1f} s")
    if result.kept == 0 and result.flagged == 0:
        raise BuildError(f"nothing could be built; see {out / REPORT_FILE}")
    return result


def _read_shard_rows(shard_dir: Path) -> tuple[pa.Table, dict]:
    table = pq.read_table(shard_dir / SHARD_ROWS_FILE)
    meta = json.loads((table.schema.metadata or {})[ROWS_METADATA_KEY])
    return table.replace_schema_metadata(None).cast(ROWS_SCHEMA), meta


def finalise(out: Path, config: PipelineConfig, inputs: Inputs, done: list[BlockTask],
             countries: CountryIndex, rule: QualityRule, clc: ClcSource) -> BuildResult:
    """Client side: read every finished shard's rows and write the archive-level files."""
    shards_dir = out / SHARDS_DIR
    done = sorted(done, key=lambda t: t.shard_name)
    tables, infos = [], []
    moments = BandMoments()
    dropped: Counter = Counter()
    candidates = 0
    clc_issues: dict[int, tuple[str, str]] = {}
    for task in done:
        table, meta = _read_shard_rows(shards_dir / task.shard_name)
        tables.append(table)
        infos.append(read_shard_info(shards_dir / task.shard_name))
        moments = moments.merge(BandMoments.from_dict(meta["moments"]))
        dropped.update(meta["dropped"])
        candidates += meta["candidates"]
        for fid, code, reason in meta["clc_issues"]:
            clc_issues[int(fid)] = (code, reason)
    rows = pa.concat_tables(tables) if tables else ROWS_SCHEMA.empty_table()
    rows = rows.sort_by("patch_id")
    n = rows.num_rows

    crs_list = rows.column("crs").to_pylist()
    ulx = rows.column("ulx").to_numpy()
    uly = rows.column("uly").to_numpy()
    metric = footprints_in(crs_list, ulx, uly, PATCH_SIZE_M, countries.metric_crs)
    names, distances = countries.nearest(metric)
    ids = rows.column("patch_id").to_pylist()
    snow, cloud = rule.flags(ids, rows.column("snow_fraction").to_numpy(), rows.column("cloud_shadow_fraction").to_numpy())
    rows = rows.append_column("country", pa.array(names, pa.string()))
    rows = rows.append_column("country_distance_m", pa.array(np.round(distances, 3), pa.float64()))
    rows = rows.append_column("contains_seasonal_snow", pa.array(snow, pa.bool_()))
    rows = rows.append_column("contains_cloud_or_shadow", pa.array(cloud, pa.bool_()))

    clean, flagged = write_metadata(out, rows) if n else _write_empty_metadata(out)
    geometry = footprints_in(crs_list, ulx, uly, PATCH_SIZE_M, "EPSG:4326")
    write_patches_parquet(out / PATCHES_FILE, rows, geometry)

    statistics = moments.mean_std()
    summary = make_summary(rows, dropped, candidates, inputs, clc_issues)
    report = _write_report(out, inputs.skipped, [
        {"item": f"fid {fid}", "kind": "clc_polygon", "path": str(clc.path), "key": f"fid {fid}", "code": code, "reason": reason}
        for fid, (code, reason) in sorted(clc_issues.items())
    ], summary, {"s1_max_gap_days": config.s1_max_gap_days})
    counts = {"patches": n, "metadata": clean, "flagged": flagged,
              **{f"split_{k}": v for k, v in summary["per_split"].items()},
              **{f"dropped_{k}": v for k, v in summary["dropped"].items()}}
    config_record = {k: v for k, v in config.model_dump().items()
                     if k not in ("s2", "s1", "clc", "countries_file", "snow_ids_file", "cloud_ids_file", "out",
                                  "workers", "scheduler", "memory_limit", "threads_per_worker", "gdal_cache_mb")}
    inputs_record = ([p.path.name for p in inputs.products] + [s.path.name for s in inputs.scenes] + [clc.path.name])
    manifest = build_manifest(infos, counts, statistics, inputs_record, config_record, TOOL_NAME)
    write_manifest(out, manifest)
    map_png = None
    if n:
        map_png = out / MAP_FILE
        plot_map(rows.column("split").to_pylist(), geometry, countries, map_png)
    return BuildResult(out, clean, flagged, summary, report, map_png, 0, 0)


def _write_empty_metadata(out: Path) -> tuple[int, int]:
    empty = METADATA_SCHEMA.empty_table()
    write_parquet_atomic(empty, out / METADATA_FILE)
    write_parquet_atomic(empty, out / FLAGGED_METADATA_FILE)
    return 0, 0


def _write_report(out: Path, skipped: list[dict], issues: list[dict], summary: dict, settings: dict) -> dict:
    counts = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    report = {"tool": TOOL_NAME,
              "skipped": sorted(skipped, key=lambda s: (s["item"], str(s.get("path")), str(s.get("key")))),
              "counts": counts, "clc_issues": issues, "summary": summary, "settings": settings}
    write_json_atomic(out / REPORT_FILE, report)
    return report


def make_summary(rows: pa.Table, dropped: Counter, candidates: int, inputs: Inputs, clc_issues: dict) -> dict:
    """Counts: candidates, kept, dropped per reason, per split, per country, per class, per product."""
    def count(column: str) -> dict:
        return dict(sorted(Counter(rows.column(column).to_pylist()).items()))

    classes: Counter = Counter()
    for labels in rows.column("labels").to_pylist():
        classes.update(labels)
    flagged = int(np.sum(rows.column("contains_seasonal_snow").to_numpy(zero_copy_only=False)
                         | rows.column("contains_cloud_or_shadow").to_numpy(zero_copy_only=False))) if rows.num_rows else 0
    return {
        "candidate_patches": candidates,
        "kept": rows.num_rows,
        "flagged_snow_cloud_shadow": flagged,
        "dropped": {k: int(dropped.get(k, 0)) for k in DROP_REASONS},
        "per_split": {s: count("split").get(s, 0) for s in SPLITS},
        "per_country": count("country"),
        "per_class": dict(sorted(classes.items())),
        "per_product": count("product"),
        "skipped_inputs": len(inputs.skipped),
        "clc_issues": len(clc_issues),
    }


def format_summary(summary: dict) -> str:
    """Human-readable lines of a build summary."""
    lines = [f"patches: {summary['kept']} kept of {summary['candidate_patches']} candidates "
             f"({summary['flagged_snow_cloud_shadow']} flagged snow/cloud/shadow)"]
    lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in summary["dropped"].items()))
    lines.append("per split: " + ", ".join(f"{k} {v}" for k, v in summary["per_split"].items()))
    lines.append("per country: " + ", ".join(f"{k} {v}" for k, v in summary["per_country"].items()))
    lines.append("per class:")
    lines.extend(f"  {v:6d}  {k}" for k, v in sorted(summary["per_class"].items(), key=lambda kv: (-kv[1], kv[0])))
    if summary["skipped_inputs"] or summary["clc_issues"]:
        lines.append(f"skipped inputs: {summary['skipped_inputs']}, CORINE issues: {summary['clc_issues']} (see report.json)")
    return "\n".join(lines)


def plot_map(splits: list[str], footprints: list, countries: CountryIndex, path: Path) -> None:
    """PNG of the archive's patch footprints (EPSG:4326) coloured by split, over the configured countries."""
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from shapely import box

    frame = gpd.GeoDataFrame({"split": splits}, geometry=footprints, crs="EPSG:4326")
    colours = {"train": "#1b9e77", "validation": "#d95f02", "test": "#7570b3"}
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    minx, miny, maxx, maxy = frame.total_bounds
    pad_x, pad_y = max((maxx - minx) * 0.15, 0.05), max((maxy - miny) * 0.15, 0.05)
    world = gpd.GeoDataFrame({"name": countries.names}, geometry=countries.geometries, crs=countries.metric_crs).to_crs("EPSG:4326")
    world.plot(ax=ax, facecolor="#f2f2f2", edgecolor="#888888", linewidth=0.8)
    for split, colour in colours.items():
        part = frame[frame["split"] == split]
        if len(part):
            part.plot(ax=ax, facecolor=colour, edgecolor="none", alpha=0.9)
    ax.set_xlim(minx - pad_x, maxx + pad_x)
    ax.set_ylim(miny - pad_y, maxy + pad_y)
    ax.set_aspect(1.0 / max(np.cos(np.radians((miny + maxy) / 2)), 0.1))
    view = box(minx - pad_x, miny - pad_y, maxx + pad_x, maxy + pad_y)
    for name, geometry in zip(world["name"], world.geometry):
        point = geometry.intersection(view).representative_point()
        if not point.is_empty:
            ax.annotate(name, (point.x, point.y), ha="center", color="#555555", fontsize=9)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    counts = frame["split"].value_counts()
    ax.legend(handles=[Patch(color=c, label=f"{s} ({int(counts.get(s, 0))})") for s, c in colours.items()], loc="best")
    ax.set_title(f"{len(frame)} patches by split")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- demo


def run_demo(out: str | Path, workers: int = 2, seed: int = 0, progress: bool = True,
             echo: Callable[[str], None] = print) -> dict[str, Path]:
    """``reben demo``: generate the demo region, build its archive on a LocalCluster, audit the split.

    Layout of ``out``: ``inputs/`` (the generated scenes, CORINE, countries),
    ``archive/`` (the archive), ``audit/`` (the split audit, when ``reben_tools.splits.audit``
    is available). Rerunning reuses the inputs and resumes the archive.

    Returns:
        the paths worth looking at, by label.
    """
    from reben_tools.build.synthetic import generate_region

    out = Path(out)
    inputs_dir, archive_dir = out / "inputs", out / "archive"
    started = time.perf_counter()
    if (inputs_dir / "expected.json").is_file():
        echo(f"reusing the generated region in {inputs_dir}")
        s2, s1 = [str(inputs_dir / "S2")], [str(inputs_dir / "S1")]
        clc = next((inputs_dir / "corine").glob("*.gpkg"))
        countries_file = next((inputs_dir / "countries").glob("*.geojson"))
    else:
        echo(f"generating the demo region in {inputs_dir} ...")
        region = generate_region(inputs_dir, seed=seed, overwrite=True, progress=progress)
        echo(region.describe())
        s2, s1 = [str(region.s2_dir)], [str(region.s1_dir)]
        clc, countries_file = region.corine_path, region.countries_path
    flags = inputs_dir / "flags"
    snow_ids, cloud_ids = flags / "snow_patch_ids.txt", flags / "cloud_or_shadow_patch_ids.txt"
    config = PipelineConfig(
        s2=s2, s1=s1, clc=str(clc), countries_file=str(countries_file), out=str(archive_dir),
        workers=workers, rows_per_block=5, memory_limit="2GiB",
        snow_ids_file=str(snow_ids) if snow_ids.is_file() else None,
        cloud_ids_file=str(cloud_ids) if cloud_ids.is_file() else None,
    )
    echo(f"\nbuilding the archive on a local Dask cluster ({workers} workers) ...")
    result = build_archive(config, progress=progress, echo=echo)
    echo(format_summary(result.summary))
    paths = {"inputs": inputs_dir, "archive": archive_dir, "metadata": archive_dir / METADATA_FILE,
             "patches": archive_dir / PATCHES_FILE, "report": archive_dir / REPORT_FILE,
             "manifest": archive_dir / MANIFEST_FILE}
    if result.map_png:
        paths["map"] = result.map_png
    try:
        from reben_tools.splits.audit import run_audit
    except ImportError:
        echo("split audit: reben_tools.splits.audit is not available; skipped")
    else:
        echo("\nauditing the split ...")
        audit_dir = out / "audit"
        try:
            run_audit(archive_dir, audit_dir)
        except Exception as exc:  # noqa: BLE001 - the archive stands even if the audit fails
            echo(f"split audit failed: {type(exc).__name__}: {exc}")
        else:
            paths["audit"] = audit_dir / "report.md"
    echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    return paths
