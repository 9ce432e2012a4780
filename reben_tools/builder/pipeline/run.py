"""The build as a whole: :func:`build_archive` (lock, discover, plan, resume, execute, finalise).

Owns: the order of the steps, absolute paths, the output lock, an output URL handed to
``remote`` (a build into a store runs the same steps on a local staging folder), removing stale
temporaries and the shards of failed blocks, skipping shards whose fingerprint and
input stamp match, the "holds no Sentinel-2 product" error, leaving no output behind a
run that built nothing, the error for shards reported written but not visible, turning
Ctrl-C into :class:`~reben_tools.builder.pipeline.config.BuildInterrupted`, and the timings
of :class:`~reben_tools.builder.pipeline.finalise.BuildResult`.
Does not own: any one step (config, discovery, planning, block, execution, finalise).
May import: reben_tools.format, reben_tools.builder.corine / countries / quality, every
module of this sub-package.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from reben_tools.builder.corine import CorineError, open_clc
from reben_tools.builder.countries import CountryError, CountryIndex
from reben_tools.builder.locations import RemotePath, absolute, configure_gdal, forget_listings
from reben_tools.builder.pipeline.config import TOOL_NAME, BuildError, BuildInterrupted, PipelineConfig
from reben_tools.builder.pipeline.discovery import _scene_overlaps_any, discover
from reben_tools.builder.pipeline.execution import execute
from reben_tools.builder.pipeline.finalise import BuildResult, finalise
from reben_tools.builder.pipeline.planning import BlockTask, is_current, plan_tasks, record_stamp
from reben_tools.builder.quality import QualityRule, read_id_list
from reben_tools.format.layout import REPORT_FILE, SHARDS_DIR
from reben_tools.format.object_store import is_remote, local_path
from reben_tools.format.shards import remove_stale_temporaries

if TYPE_CHECKING:
    from reben_tools.builder.pipeline.remote import StoreOutput

NOT_S2_NAME = "not a Sentinel-2 L2A product name"
"""How discovery's reason for an item not named like a product starts (format.naming)."""


def build_archive(
    config: PipelineConfig,
    out: str | Path | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> BuildResult:
    """Build (or resume) an archive from the scenes a config names.

    Every path (output, products, scenes, CORINE, countries, id lists) is made absolute
    against the client's working folder first: the workers of a cluster run elsewhere.
    A run that builds nothing leaves no output folder behind when it created it.

    ``out`` may be the URL of a prefix in a store (``s3://bucket/prefix``, any fsspec URL):
    workers then build each shard in local scratch and upload it, and the client uploads the
    archive-level files and ``manifest.json`` last (``builder.pipeline.remote``); ``file://``
    URLs are local folders.

    Raises:
        BuildError: no usable input (no product, no CORINE, unreadable countries),
            a worker that cannot reach the output or the inputs, or nothing could be built.
        BuildInterrupted: Ctrl-C (SIGINT); the cluster is stopped and finished shards are kept.
    """
    out = out or config.out
    if not out or not str(out):
        raise BuildError("no output folder given (--out or 'out' in the config)")
    if is_remote(out):  # an archive in a store: workers upload, the client stages locally
        from reben_tools.builder.pipeline.remote import build_into_store

        config = absolute_paths(config.model_copy(update={"out": None}))
        return build_into_store(
            str(out),
            lambda staging, output: _build_locked(
                config, staging, scheduler or config.scheduler, workers or config.workers, progress, echo, output
            ),
            echo,
        )
    out = Path(os.path.abspath(local_path(out)))
    config = absolute_paths(config)
    from reben_tools.format.locking import OutputLock, OutputLockedError

    created = not out.exists()
    try:
        with OutputLock(out, command=TOOL_NAME):
            return _build_locked(config, out, scheduler or config.scheduler, workers or config.workers, progress, echo)
    except OutputLockedError as exc:
        raise BuildError(str(exc)) from None
    except BuildError:
        if created and _holds_no_shard(out):
            shutil.rmtree(out, ignore_errors=True)
        raise


def absolute_paths(config: PipelineConfig) -> PipelineConfig:
    """The config with every input path absolute (relative to the current folder); URLs are kept as they are."""
    updates: dict = {key: [absolute(p) for p in getattr(config, key)] for key in ("s2", "s1", "stac_items")}
    for key in ("clc", "countries_file", "snow_ids_file", "cloud_ids_file", "out"):
        value = getattr(config, key)
        if value:
            updates[key] = absolute(value)
    return config.model_copy(update=updates)


def _holds_no_shard(out: Path) -> bool:
    shards = out / SHARDS_DIR
    return not shards.is_dir() or not any(not p.name.startswith(".") for p in shards.iterdir())


def _build_locked(
    config: PipelineConfig,
    out: Path,
    scheduler: str | None,
    workers: int,
    progress: bool,
    echo: Callable[[str], None],
    output: StoreOutput | None = None,
) -> BuildResult:
    """The build; with ``output`` (a build into a store), ``out`` is the client's staging folder."""
    shards_dir = out / SHARDS_DIR
    stale = remove_stale_temporaries(shards_dir)
    if stale:
        echo(f"removed {len(stale)} unfinished shard(s) of an interrupted run")
    if output is not None:
        output.start(echo)

    if not config.clc:
        raise BuildError("no CORINE source given (--clc or 'clc' in the config)")
    configure_gdal(config.remote_settings())  # endpoint, retries and cache of remote reads, for this process
    forget_listings()  # a rerun in this process sees the object stores and servers as they are now
    try:
        clc = open_clc(config.clc, config.clc_code_column, config.clc_layer, config.clc_raster_values)
        countries = CountryIndex.load(
            config.countries_file,
            config.countries,
            config.country_key_column,
            config.country_name_column,
            config.metric_crs,
        )
        rule = QualityRule(
            config.snow_threshold,
            config.cloud_threshold,
            read_id_list(config.snow_ids_file) if config.snow_ids_file else frozenset(),
            read_id_list(config.cloud_ids_file) if config.cloud_ids_file else frozenset(),
        )
    except (CorineError, CountryError, ValueError) as exc:
        raise BuildError(str(exc)) from None

    inputs = discover(config)
    s2_skipped = [s for s in inputs.skipped if s["kind"] == "s2_product"]
    if not inputs.products and all(s["reason"].startswith(NOT_S2_NAME) for s in s2_skipped):
        others = sorted(s["item"] for s in s2_skipped)
        named = ", ".join(config.s2 + config.stac_items + ([config.stac] if config.stac else []))
        raise BuildError(
            f"{named}: holds no Sentinel-2 product "
            "(a .SAFE folder or a folder of GeoTIFFs named like an S2 L2A product)"
            + (
                f"; not named like one: {', '.join(others[:5])}" + (", ..." if len(others) > 5 else "")
                if others
                else ""
            )
        )
    for scene in inputs.scenes:
        if not _scene_overlaps_any(scene, inputs.products):
            inputs.skipped.append(
                {
                    "item": scene.path.name,
                    "kind": "s1_scene",
                    "path": str(scene.path),
                    "reason": "overlaps no Sentinel-2 product",
                }
            )
    if not inputs.products:
        raise BuildError(
            "no usable Sentinel-2 product: " + "; ".join(f"{s['path']}: {s['reason']}" for s in inputs.skipped[:5])
        )
    for entry in inputs.flagged:
        echo(f"flagged: {entry['reason']}")

    tasks = plan_tasks(config, inputs, clc, shards_dir)
    if output is not None:
        tasks = output.prepare(tasks)
    pending = [t for t in tasks if not is_current(t)]
    reused = len(tasks) - len(pending)
    echo(
        f"{len(inputs.products)} product(s), {len(inputs.scenes)} S1 scene(s), {len(tasks)} block(s): "
        f"{len(pending)} to build, {reused} already built"
    )
    for task in pending:
        record_stamp(task)
    if output is not None:
        output.before_building(pending)
    started = time.perf_counter()
    try:
        results = execute(
            pending,
            config,
            scheduler,
            workers,
            progress,
            echo,
            out=out,
            inputs=_input_paths(tasks),
            store_url=output.url if output is not None else None,
        )
    except KeyboardInterrupt:
        if output is not None:
            output.collect(pending)
        complete = sum(is_current(t) for t in tasks)
        raise BuildInterrupted(
            f"interrupted: {complete} of {len(tasks)} shards complete; rerun the same command to resume"
        ) from None
    if output is not None:
        output.collect(pending, results)
    _check_visible(results, pending)
    execute_seconds = time.perf_counter() - started
    failed = {r["shard"]: r for r in results if r.get("status") != "ok"}
    for name in failed:  # a shard left by an earlier run with other inputs must not stay behind
        stale_shard = shards_dir / name
        if stale_shard.is_dir():
            shutil.rmtree(stale_shard)
        if output is not None:
            output.remove_shard(name)
    for r in sorted(failed.values(), key=lambda r: r["shard"]):
        entry = {"item": r["shard"], "kind": "block", "key": r["shard"], "reason": str(r.get("error"))}
        if r.get("path"):
            entry["path"] = str(r["path"])
        inputs.skipped.append(entry)

    done = [t for t in tasks if t.shard_name not in failed and is_current(t)]
    result = finalise(out, config, inputs, done, countries, rule, clc)
    if output is not None:
        output.publish(out)  # the archive-level files, manifest.json last
        result.archive_url = output.url
    result.shards_built = len(pending) - len(failed)
    result.shards_reused = reused
    result.execute_seconds = execute_seconds
    result.task_seconds = sum(r.get("seconds", 0.0) for r in results)
    result.task_cpu_seconds = sum(r.get("cpu_seconds", 0.0) for r in results)
    echo(f"built {result.shards_built} shard(s), reused {reused}, in {time.perf_counter() - started:.1f} s")
    if result.s1_product_types and len(result.s1_product_types) > 1:
        echo(
            "note: this archive mixes Sentinel-1 product types ("
            + ", ".join(f"{kind}: {n} patches" for kind, n in result.s1_product_types.items())
            + "); backscatter of different types is not directly comparable (manifest provenance.s1_product_types)"
        )
    if result.kept == 0 and result.flagged == 0:
        where = f"{output.url}/{REPORT_FILE}" if output is not None else out / REPORT_FILE
        raise BuildError(f"nothing could be built; see {where}")
    return result


def _input_paths(tasks: list[BlockTask]) -> list:
    """Every local input file the blocks read (what each worker must be able to open), and one remote
    file per host or bucket (each worker checks it reaches the store with its own network and credentials)."""
    paths: set[str] = set()
    remote: dict[tuple[str, str], RemotePath] = {}
    for task in tasks:
        files = [*task.product.band_paths.values(), *(p for s in task.s1_candidates for p in (s.vv, s.vh))]
        for path in [*files, task.clc.path]:
            if isinstance(path, RemotePath):
                root = (path.scheme, str(path).split("/")[2])
                if root not in remote or str(path) < str(remote[root]):
                    remote[root] = path
            else:
                paths.add(str(path))
    return sorted(paths) + [remote[k] for k in sorted(remote)]


def _check_visible(results: list[dict], pending: list[BlockTask]) -> None:
    """A block a worker reported written must be complete where the client reads it; else BuildError.

    A shard the client cannot see means the worker wrote to another file system: the
    archive would be silently partial, so the build stops instead.
    """
    by_name = {t.shard_name: t for t in pending}
    for r in results:
        task = by_name.get(r["shard"])
        if r.get("status") == "ok" and task is not None and not is_current(task):
            where = f" (worker {r['worker']})" if r.get("worker") else ""
            raise BuildError(
                f"{task.shards_dir / task.shard_name}: reported written{where} but not visible to "
                "this client; the output must be on a file system every worker shares"
            )
