"""``reben build`` (scenes -> archive on Dask), ``reben demo`` (generate a region, build it, audit it) and
``reben search`` (STAC API -> the items a build needs, ``commands.search``)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    from reben_tools.commands.search import search

    app.command("build")(build)
    app.command("demo")(demo)
    app.command("search")(search)


def build(
    config: Path | None = typer.Argument(
        None,
        help="pipeline config (TOML or JSON, see pipelines/); optional: without it, reBEN's defaults "
        "(the values of pipelines/reben.toml)",
    ),
    s2: list[str] | None = typer.Option(
        None,
        "--s2",
        help="S2 L2A product (.SAFE or GeoTIFF folder) or a folder of them, local or s3://bucket/prefix/; repeatable",
    ),
    s1: list[str] | None = typer.Option(
        None,
        "--s1",
        help="S1 scene folder (*_VV.tif, *_VH.tif) or a folder of them, local or s3://bucket/prefix/; repeatable",
    ),
    clc: str | None = typer.Option(
        None, "--clc", help="CORINE Land Cover 2018: vector (any OGR format) or raster; local, s3:// or https://"
    ),
    stac_items: list[str] | None = typer.Option(
        None,
        "--stac-items",
        help="STAC ItemCollection (file or URL, e.g. from `reben search`) of S2 L2A and S1 items; repeatable, "
        "combines with --s2/--s1",
    ),
    stac: str | None = typer.Option(None, "--stac", help="STAC API to search in this build (with --collections ...)"),
    collections: str | None = typer.Option(None, "--collections", help="with --stac: collections, C[,C]"),
    bbox: str | None = typer.Option(None, "--bbox", help="with --stac: search box W,S,E,N (degrees)"),
    datetime_range: str | None = typer.Option(None, "--datetime", help="with --stac: S2 acquisition interval A/B"),
    max_cloud: float | None = typer.Option(None, "--max-cloud", help="with --stac: largest eo:cloud_cover, %"),
    tiles: str | None = typer.Option(None, "--tiles", help="with --stac: MGRS tiles kept, 32ULV[,31UGR]"),
    countries: Path | None = typer.Option(
        None, "--countries", help="country polygons (default: shipped Natural Earth)"
    ),
    out: str | None = typer.Option(
        None,
        "--out",
        help="archive folder to write (or resume), or a store URL: s3://bucket/prefix (any fsspec URL; workers upload)",
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="existing Dask scheduler, e.g. tcp://127.0.0.1:8786"
    ),
    workers: int | None = typer.Option(None, "--workers", help="LocalCluster worker processes (default 2)"),
    rows_per_block: int | None = typer.Option(None, "--rows-per-block", help="patch rows per task"),
    max_gap_days: float | None = typer.Option(None, "--max-gap-days", help="largest S1/S2 acquisition gap, days"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    no_progress: bool = typer.Option(False, "--no-progress", hidden=True),
) -> None:
    """Build a reBEN-style archive from Sentinel-2 L2A products, Sentinel-1 scenes and CORINE, on Dask.

    Rerunning on the same --out resumes: finished blocks are kept. Exits 1 only if
    nothing could be built (skipped inputs are listed in ARCHIVE/report.json). With
    --out s3://bucket/prefix the workers need no shared folder: each uploads its shards, the
    client writes manifest.json last, and a second build into the prefix is refused.
    """
    from reben_tools.builder.pipeline.config import BuildError, BuildInterrupted, PipelineConfig
    from reben_tools.builder.pipeline.run import build_archive
    from reben_tools.builder.pipeline.summary import format_summary

    try:
        cfg = PipelineConfig.from_file(config) if config else PipelineConfig()
        updates: dict[str, object] = {}
        if s2:
            updates["s2"] = [str(p) for p in s2]
        if s1:
            updates["s1"] = [str(p) for p in s1]
        if stac_items:
            updates["stac_items"] = list(stac_items)
        for key, value in (("clc", clc), ("countries_file", countries), ("out", out), ("stac", stac)):
            if value is not None:
                updates[key] = str(value)
        updates.update(_search_options(collections, bbox, datetime_range, max_cloud, tiles))
        numbers = (
            ("scheduler", scheduler),
            ("workers", workers),
            ("rows_per_block", rows_per_block),
            ("s1_max_gap_days", max_gap_days),
        )
        updates.update({key: value for key, value in numbers if value is not None})
        cfg = PipelineConfig.model_validate({**cfg.model_dump(), **updates})
        if not (cfg.s2 or cfg.stac_items or cfg.stac):
            raise BuildError("no Sentinel-2 input given (--s2, --stac-items or --stac, or 's2' in the config)")
        result = build_archive(cfg, progress=not (quiet or no_progress), echo=typer.echo)
    except BuildInterrupted as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        typer.echo("interrupted before any block ran; rerun the same command to resume", err=True)
        raise typer.Exit(130) from None
    except BuildError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:  # pydantic validation of CLI overrides
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_summary(result.summary))
    if result.archive_url:  # a build into a store: its staging folder is gone
        typer.echo(f"archive: {result.archive_url}")
        typer.echo(f"report:  {result.archive_url}/report.json")
        if result.map_png:
            typer.echo(f"map:     {result.archive_url}/{result.map_png.name}")
        return
    typer.echo(f"archive: {result.archive_dir}")
    typer.echo(f"report:  {result.archive_dir / 'report.json'}")
    if result.map_png:
        typer.echo(f"map:     {result.map_png}")


def _search_options(collections, bbox, datetime_range, max_cloud, tiles) -> dict:
    """The ``stac_*`` search settings given on the command line."""
    from reben_tools.builder.stac_search import bbox_of

    out: dict = {}
    if collections:
        out["stac_collections"] = [c.strip() for c in collections.split(",") if c.strip()]
    if bbox:
        out["stac_bbox"] = bbox_of(bbox)
    if datetime_range:
        out["stac_datetime"] = datetime_range
    if max_cloud is not None:
        out["stac_max_cloud"] = max_cloud
    if tiles:
        out["stac_tiles"] = [t.strip() for t in tiles.split(",") if t.strip()]
    return out


def demo(
    out: Path = typer.Option(Path("reben-demo"), "--out", help="folder for the generated inputs and the archive"),
    workers: int = typer.Option(2, "--workers", help="LocalCluster worker processes"),
    seed: int = typer.Option(0, "--seed", help="seed of the generated region"),
    patches: int = typer.Option(
        400,
        "--patches",
        help="About how many patches: 400 is the demo (4 products, 2 tiles); more gives the benchmark "
        "region (up to 8 tiles in 8 countries, all 19 classes in every split; 3200 = 8 tiles of 20 x 20).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    no_progress: bool = typer.Option(False, "--no-progress", hidden=True),
) -> None:
    """Generate a small realistic region, build its archive on a local Dask cluster, audit the split."""
    from reben_tools.builder.demo import run_demo
    from reben_tools.builder.demo_check import DemoCheckError
    from reben_tools.builder.pipeline.config import BuildError, BuildInterrupted
    from reben_tools.splits.audit import run_audit

    try:
        progress = not (quiet or no_progress)
        paths = run_demo(
            out,
            workers=workers,
            seed=seed,
            progress=progress,
            echo=typer.echo,
            patches=patches,
            audit=lambda archive_dir, audit_dir: run_audit(archive_dir, audit_dir, progress=progress),
        )
    except BuildInterrupted as exc:  # Ctrl-C during the build: 130, as `reben build`
        typer.echo(str(exc), err=True)
        raise typer.Exit(130) from None
    except (BuildError, DemoCheckError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\nwhere everything is:")
    for label, path in paths.items():
        typer.echo(f"  {label:<10} {path}")
