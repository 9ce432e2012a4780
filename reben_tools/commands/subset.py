"""``reben subset``: label-fraction subsets of the train split (see docs/probing.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from reben_tools.commands.outputs import guarded_output
from reben_tools.commands.sources import METADATA_OPTION, announce, names_an_archive, resolve_archive
from reben_tools.commands.urls import CACHE_DIR, CACHE_SIZE, use_cache
from reben_tools.format.object_store import is_remote


def subset(
    input_path: str = typer.Argument(
        ...,
        help="A reBEN metadata parquet, an archive directory or URL (s3://...; its metadata.parquet), or a plain "
        "reBEN LMDB directory (with --metadata, or reBEN's metadata files inside or beside it).",
    ),
    metadata: list[Path] | None = METADATA_OPTION,
    fraction: float = typer.Option(..., "--fraction", "-f", help="Share of the train split to keep, in (0, 1]."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        callback=guarded_output,
        help="Output parquet in reBEN's metadata schema (train subset + all validation/test rows).",
    ),
    seed: int = typer.Option(0, "--seed", help="Draw seed."),
    include_snow_cloud: bool = typer.Option(
        False,
        "--include-snow-cloud",
        help="Archive or LMDB input: also draw from the patches flagged for snow/cloud/shadow.",
    ),
    report: Path | None = typer.Option(None, "--report", help="Also write the label distribution as JSON here."),
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Draw a deterministic, stratified FRACTION of the train split (every class keeps a positive) and write it to OUT.

    Prints the subset's label distribution against the full train split.
    """
    from reben_tools.format.atomic import write_json_atomic
    from reben_tools.format.layout import ArchiveError
    from reben_tools.format.sources import source_rows
    from reben_tools.splits.subsets import SubsetError, distribution_markdown, write_subset, write_subset_rows

    use_cache(cache_dir, cache_size)  # an archive URL: its metadata files only are fetched, no shard
    try:
        if is_remote(input_path) or names_an_archive(Path(input_path)) or metadata:
            source = resolve_archive(input_path, metadata)
            try:
                table, line = source_rows(source, include_snow_cloud)
            except ArchiveError as exc:
                raise SubsetError(str(exc)) from None
            announce(line)
            files = ", ".join(str(p) if source.url is None else f"{source.url}/{p.name}" for p in source.metadata)
            result = write_subset_rows(table, files, out, fraction, seed)
        else:
            result = write_subset(Path(input_path), out, fraction, seed, include_snow_cloud)
    except SubsetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if report is not None:
        write_json_atomic(report, result)
    p = result["patches"]
    typer.echo(
        f"{out}: {p['subset']:,} of {p['full']:,} train patches (fraction {fraction:g}, seed {seed}); "
        "validation and test rows kept"
    )
    typer.echo(distribution_markdown(result))


def register(app: typer.Typer) -> None:
    app.command("subset")(subset)
