"""Finalising a build on the client: merging the finished shards into the archive-level files.

Owns: reading every finished shard's rows and block metadata, country and quality
assignment, merged train moments, the metadata parquet files, ``patches.parquet``,
``report.json`` and the manifest (:func:`finalise`), and :class:`BuildResult`.
Does not own: the counts and the map (summary), running blocks (block, execution).
May import: reben_tools.format, reben_tools.builder.corine / countries / quality, .config,
.discovery, .planning, .rows, .summary.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reben_tools.builder.corine import ClcSource
from reben_tools.builder.countries import CountryIndex, footprints_in
from reben_tools.builder.locations import redact
from reben_tools.builder.pipeline.config import INPUT_LOCATION_FIELDS, TOOL_NAME, PipelineConfig
from reben_tools.builder.pipeline.discovery import Inputs
from reben_tools.builder.pipeline.planning import BlockTask
from reben_tools.builder.pipeline.rows import ROWS_METADATA_KEY, ROWS_SCHEMA
from reben_tools.builder.pipeline.summary import MAP_FILE, make_summary, plot_map
from reben_tools.builder.quality import QualityRule
from reben_tools.format.atomic import write_json_atomic, write_parquet_atomic
from reben_tools.format.bands import PATCH_SIZE_M
from reben_tools.format.layout import (
    FLAGGED_METADATA_FILE,
    METADATA_FILE,
    PATCHES_FILE,
    REPORT_FILE,
    SHARD_ROWS_FILE,
    SHARDS_DIR,
)
from reben_tools.format.manifest import build_manifest, write_manifest
from reben_tools.format.metadata import METADATA_SCHEMA, write_metadata, write_patches_parquet
from reben_tools.format.shards import read_shard_info
from reben_tools.format.stats import BandMoments


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
    s1_product_types: dict | None = None
    archive_url: str | None = None
    """For a build into a store: the archive's URL (``archive_dir`` was the client's staging folder)."""


def _read_shard_rows(shard_dir: Path) -> tuple[pa.Table, dict]:
    table = pq.read_table(shard_dir / SHARD_ROWS_FILE)
    meta = json.loads((table.schema.metadata or {})[ROWS_METADATA_KEY])
    return table.replace_schema_metadata(None).cast(ROWS_SCHEMA), meta


def finalise(
    out: Path,
    config: PipelineConfig,
    inputs: Inputs,
    done: list[BlockTask],
    countries: CountryIndex,
    rule: QualityRule,
    clc: ClcSource,
) -> BuildResult:
    """Client side: read every finished shard's rows and write the archive-level files."""
    shards_dir = out / SHARDS_DIR
    done = sorted(done, key=lambda t: t.shard_name)
    tables, infos = [], []
    moments = BandMoments()
    dropped: Counter = Counter()
    dropped_patches: list[dict] = []
    candidates = 0
    clc_issues: dict[int, tuple[str, str]] = {}
    for task in done:
        table, meta = _read_shard_rows(shards_dir / task.shard_name)
        tables.append(table)
        infos.append(read_shard_info(shards_dir / task.shard_name))
        moments = moments.merge(BandMoments.from_dict(meta["moments"]))
        dropped.update(meta["dropped"])
        for reason, ids in meta.get("dropped_ids", {}).items():
            dropped_patches.extend({"patch_id": pid, "reason": reason, "shard": task.shard_name} for pid in ids)
        candidates += meta["candidates"]
        for fid, code, reason in meta["clc_issues"]:
            clc_issues[int(fid)] = (code, reason)
    rows = pa.concat_tables(tables) if tables else ROWS_SCHEMA.empty_table()
    rows = rows.sort_by("patch_id")
    n = rows.num_rows

    crs_list = cast("list[str]", rows.column("crs").to_pylist())  # ROWS_SCHEMA: never null
    ulx = rows.column("ulx").to_numpy()
    uly = rows.column("uly").to_numpy()
    metric = footprints_in(crs_list, ulx, uly, PATCH_SIZE_M, countries.metric_crs)
    names, distances = countries.nearest(metric)
    ids = cast("list[str]", rows.column("patch_id").to_pylist())  # ROWS_SCHEMA: never null
    snow, cloud = rule.flags(
        ids, rows.column("snow_fraction").to_numpy(), rows.column("cloud_shadow_fraction").to_numpy()
    )
    rows = rows.append_column("country", pa.array(names, pa.string()))
    rows = rows.append_column("country_distance_m", pa.array(np.round(distances, 3), pa.float64()))
    rows = rows.append_column("contains_seasonal_snow", pa.array(snow, pa.bool_()))
    rows = rows.append_column("contains_cloud_or_shadow", pa.array(cloud, pa.bool_()))

    clean, flagged = write_metadata(out, rows) if n else _write_empty_metadata(out)
    geometry = footprints_in(crs_list, ulx, uly, PATCH_SIZE_M, "EPSG:4326")
    write_patches_parquet(out / PATCHES_FILE, rows, geometry)

    statistics = moments.mean_std()
    summary = make_summary(rows, dropped, candidates, inputs, clc_issues)
    s1_types = s1_product_types(rows, inputs)
    report = _write_report(
        out,
        inputs.skipped,
        [
            {
                "item": f"fid {fid}",
                "kind": "clc_polygon",
                "path": str(clc.path),
                "key": f"fid {fid}",
                "code": code,
                "reason": reason,
            }
            for fid, (code, reason) in sorted(clc_issues.items())
        ],
        summary,
        {"s1_max_gap_days": config.s1_max_gap_days},
        dropped_patches,
        {"s1_product_types": s1_types, **({"flagged_inputs": inputs.flagged} if inputs.flagged else {})},
    )
    counts = {
        "patches": n,
        "metadata": clean,
        "flagged": flagged,
        **{f"split_{k}": v for k, v in summary["per_split"].items()},
        **{f"dropped_{k}": v for k, v in summary["dropped"].items()},
    }
    config_record = {
        k: v
        for k, v in config.model_dump().items()
        if k
        not in (
            *INPUT_LOCATION_FIELDS,
            "workers",
            "scheduler",
            "memory_limit",
            "threads_per_worker",
            "gdal_cache_mb",
        )
    }
    inputs_record = [p.path.name for p in inputs.products] + [s.path.name for s in inputs.scenes] + [clc.path.name]
    manifest = build_manifest(infos, counts, statistics, inputs_record, config_record, TOOL_NAME)
    manifest["provenance"]["s1_product_types"] = s1_types  # patches per S1 product type (GRD sigma0, RTC gamma0)
    write_manifest(out, manifest)
    map_png = None
    if n:
        map_png = out / MAP_FILE
        plot_map(
            cast("list[str]", rows.column("split").to_pylist()),  # ROWS_SCHEMA: never null
            geometry,
            countries,
            map_png,
            [f"tile {t}" for t in rows.column("tile").to_pylist()],
            rows.column("country").to_pylist(),
        )
    return BuildResult(out, clean, flagged, summary, report, map_png, 0, 0, s1_product_types=s1_types)


def _redacted(value):
    """``value`` with every string passed through ``locations.redact`` (keys and values, recursively)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {_redacted(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def s1_product_types(rows: pa.Table, inputs: Inputs) -> dict[str, int]:
    """Kept patches per S1 product type of their partner scene (``{"GRD sigma0": n, "RTC gamma0": m}``)."""
    kind: dict[str | None, str] = {scene.prefix: scene.product_type for scene in inputs.scenes}  # None: no partner
    counts = Counter(kind.get(prefix, "unknown") for prefix in rows.column("s1_product").to_pylist())
    return dict(sorted(counts.items()))


def _write_empty_metadata(out: Path) -> tuple[int, int]:
    empty = METADATA_SCHEMA.empty_table()
    write_parquet_atomic(empty, out / METADATA_FILE)
    write_parquet_atomic(empty, out / FLAGGED_METADATA_FILE)
    return 0, 0


def _write_report(
    out: Path,
    skipped: list[dict],
    issues: list[dict],
    summary: dict,
    settings: dict,
    dropped: list[dict] | None = None,
    extra: dict | None = None,
) -> dict:
    """``report.json``: skipped inputs, the id and reason of every dropped patch, CORINE issues, counts.

    No credential, endpoint or signed query string reaches it: the whole text goes through
    ``locations.redact`` before it is written.
    """
    counts = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
    report = {
        "tool": TOOL_NAME,
        "skipped": sorted(skipped, key=lambda s: (s["item"], str(s.get("path")), str(s.get("key")))),
        "dropped": sorted(dropped or [], key=lambda d: d["patch_id"]),
        "counts": counts,
        "clc_issues": issues,
        "summary": summary,
        "settings": settings,
        **(extra or {}),
    }
    report = _redacted(report)
    write_json_atomic(out / REPORT_FILE, report)
    return report
