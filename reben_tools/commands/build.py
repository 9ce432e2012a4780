"""``reben build`` (scenes -> archive on Dask) and ``reben demo`` (generate a region, build it, audit it)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("build")(build)
    app.command("demo")(demo)


def build(
    config: Path | None = typer.Argument(None, help="pipeline config (TOML or JSON, see pipelines/)"),
    s2: list[Path] | None = typer.Option(
        None, "--s2", help="S2 L2A product (.SAFE or GeoTIFF folder) or a folder of them; repeatable"
    ),
    s1: list[Path] | None = typer.Option(
        None, "--s1", help="S1 scene folder (*_VV.tif, *_VH.tif) or a folder of them; repeatable"
    ),
    clc: Path | None = typer.Option(None, "--clc", help="CORINE Land Cover 2018: vector (any OGR format) or raster"),
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
    workers: int | None = typer.Option(None, "--workers", min=1, help="LocalCluster worker processes (default 2)"),
    rows_per_block: int | None = typer.Option(None, "--rows-per-block", min=1, help="patch rows per task"),
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
        updates = {}
        if s2:
            updates["s2"] = [str(p) for p in s2]
        if s1:
            updates["s1"] = [str(p) for p in s1]
        for key, value in (("clc", clc), ("countries_file", countries), ("out", out)):
            if value is not None:
                updates[key] = str(value)
        for key, value in (
            ("scheduler", scheduler),
            ("workers", workers),
            ("rows_per_block", rows_per_block),
            ("s1_max_gap_days", max_gap_days),
        ):
            if value is not None:
                updates[key] = value
        cfg = PipelineConfig.model_validate({**cfg.model_dump(), **updates})
        if not cfg.s2:
            raise BuildError("no Sentinel-2 input given (--s2 or 's2' in the config)")
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


def demo(
    out: Path = typer.Option(Path("reben-demo"), "--out", help="folder for the generated inputs and the archive"),
    workers: int = typer.Option(2, "--workers", min=1, help="LocalCluster worker processes"),
    seed: int = typer.Option(0, "--seed", help="seed of the generated region"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    no_progress: bool = typer.Option(False, "--no-progress", hidden=True),
) -> None:
    """Generate a small realistic region, build its archive on a local Dask cluster, audit the split."""
    from reben_tools.builder.demo import run_demo
    from reben_tools.builder.demo_check import DemoCheckError
    from reben_tools.builder.pipeline.config import BuildError
    from reben_tools.splits.audit import run_audit

    try:
        progress = not (quiet or no_progress)
        paths = run_demo(
            out,
            workers=workers,
            seed=seed,
            progress=progress,
            echo=typer.echo,
            audit=lambda archive_dir, audit_dir: run_audit(archive_dir, audit_dir, progress=progress),
        )
    except (BuildError, DemoCheckError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\nwhere everything is:")
    for label, path in paths.items():
        typer.echo(f"  {label:<10} {path}")
