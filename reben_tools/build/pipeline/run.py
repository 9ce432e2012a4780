"""The build as a whole: :func:`build_archive` (lock, discover, plan, resume, execute, finalise).

Owns: the order of the steps, the output lock, removing stale temporaries and the
shards of failed blocks, skipping shards whose fingerprint matches, and the timings
of :class:`~reben_tools.build.pipeline.finalise.BuildResult`.
Does not own: any one step (config, discovery, planning, block, execution, finalise).
May import: reben_tools.format, reben_tools.build.corine / countries / quality, every
module of this sub-package.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from reben_tools.build.corine import CorineError, open_clc
from reben_tools.build.countries import CountryError, CountryIndex
from reben_tools.build.pipeline.config import TOOL_NAME, BuildError, PipelineConfig
from reben_tools.build.pipeline.discovery import _scene_overlaps_any, discover
from reben_tools.build.pipeline.execution import execute
from reben_tools.build.pipeline.finalise import BuildResult, _write_report, finalise
from reben_tools.build.pipeline.planning import _finished_fingerprint, plan_tasks
from reben_tools.build.quality import QualityRule, read_id_list
from reben_tools.format.layout import REPORT_FILE, SHARDS_DIR
from reben_tools.format.shards import remove_stale_temporaries


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
