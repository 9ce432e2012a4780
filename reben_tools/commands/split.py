"""``reben split`` and ``reben audit``: assign splits to patches and audit their spatial correlation."""

from __future__ import annotations

from pathlib import Path

import typer

from reben_tools.commands.outputs import guarded_output
from reben_tools.commands.sources import METADATA_OPTION, announce, names_an_archive, resolve_archive
from reben_tools.commands.urls import CACHE_DIR, CACHE_SIZE, use_cache

_INPUT_HELP = (
    "An archive directory (its patches.parquet: every patch, snow/cloud-flagged ones included, as one line says), "
    "a plain reBEN LMDB directory (its metadata files: --metadata, or reBEN's files inside or beside it), "
    "a patches.parquet, or any parquet with a patch_id column (e.g. reBEN's metadata.parquet)."
)


def _input(input_path: str | Path, metadata: list[Path] | None, what: str):
    """INPUT as split/audit read it: an ArchiveSource for archive and LMDB directories (saying in
    one line which patches are used and why), else the path itself."""
    from reben_tools.format.sources import describe_rows

    if not (names_an_archive(Path(input_path)) or metadata):
        return input_path
    source = resolve_archive(input_path, metadata)
    announce(describe_rows(source, what))
    return source


def split(
    input_path: Path = typer.Argument(..., help=_INPUT_HELP),
    metadata: list[Path] | None = METADATA_OPTION,
    strategy: str = typer.Option("reben", "--strategy", "-s", help="reben, v1-blocks or spatial-blocks."),
    out: Path = typer.Option(
        ..., "--out", "-o", callback=guarded_output, help="Output parquet: the input's rows with 'split' set."
    ),
    tile_side_m: float | None = typer.Option(
        None,
        "--tile-side-m",
        help="Tile side in metres for rows without a tile_side_m column (default: the archive's patches.parquet beside "
        "INPUT, else the extent of each MGRS tile's patch grid; 109800 for a full tile).",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of v1-blocks / spatial-blocks (default 0)."),
    block_size_m: float | None = typer.Option(
        None, "--block-size-m", help="spatial-blocks: block side (default 30000)."
    ),
    buffer_m: float | None = typer.Option(
        None, "--buffer-m", help="spatial-blocks: buffer width, 0 for none (default 2400)."
    ),
    no_label_balance: bool = typer.Option(False, "--no-label-balance", help="spatial-blocks: do not balance labels."),
    no_country_balance: bool = typer.Option(
        False, "--no-country-balance", help="spatial-blocks: do not balance countries."
    ),
) -> None:
    """Assign a split to every patch with STRATEGY and write the rows with their split to OUT.

    Patches a strategy leaves out (spatial-blocks' buffer) get a null split.
    """
    from reben_tools.splits.patches import SplitInputError
    from reben_tools.splits.strategies import empty_split_warnings, split_file

    options = {"seed": seed, "block_size_m": block_size_m, "buffer_m": buffer_m}
    if no_label_balance:
        options["balance_labels"] = False
    if no_country_balance:
        options["balance_countries"] = False
    try:
        info: dict = {}
        source = _input(input_path, metadata, "splitting")
        counts = split_file(source, out, strategy, tile_side_m=tile_side_m, info=info, **options)
    except (SplitInputError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    total = sum(counts.values())
    shares = ", ".join(f"{name} {count:,} ({100 * count / total:.1f}%)" for name, count in counts.items())
    typer.echo(f"{out}: {total:,} patches, {strategy}: {shares}")
    if strategy == "reben":
        sides = ", ".join(f"{side:,.0f} m" for side in info["tile_sides_m"])
        typer.echo(f"tile side {sides}, from {info['tile_side_source']}")
    for warning in empty_split_warnings(counts, str(out)):
        typer.echo(warning, err=True)


def audit(
    input_path: str = typer.Argument(..., help=_INPUT_HELP + " Or an archive's URL (s3://bucket/prefix)."),
    metadata: list[Path] | None = METADATA_OPTION,
    out: Path = typer.Option(
        ..., "--out", "-o", callback=guarded_output, help="Report directory (report.json, report.md, PNG figures)."
    ),
    split_column: list[str] | None = typer.Option(
        None, "--split-column", "-c", help="A column of INPUT holding splits; repeatable."
    ),
    strategy: list[str] | None = typer.Option(
        None, "--strategy", "-s", help="A strategy to compute and audit (reben, v1-blocks, spatial-blocks); repeatable."
    ),
    tile_side_m: float | None = typer.Option(
        None, "--tile-side-m", help="Tile side for rows without a tile_side_m column."
    ),
    permutations: int = typer.Option(20, "--permutations", help="Random permutations for the join-count baseline."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Only report.json and report.md."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Audit how far validation and test patches lie from train, for one or more splits.

    With neither --split-column nor --strategy: INPUT's 'split' column (if any) and every strategy.
    """
    from reben_tools.format.layout import ArchiveError
    from reben_tools.format.object_store import is_remote, local_path
    from reben_tools.format.shard_cache import localise_archive
    from reben_tools.splits.audit import run_audit
    from reben_tools.splits.patches import SplitInputError

    use_cache(cache_dir, cache_size)
    try:  # an archive in a store: its patches.parquet, through the cache (no shard is read)
        local_input = localise_archive(input_path) if is_remote(input_path) else local_path(input_path)
    except ArchiveError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        source = _input(local_input, metadata, "auditing")
        report = run_audit(
            source,
            out,
            split_columns=split_column or None,
            strategies=strategy or None,
            tile_side_m=tile_side_m,
            permutations=permutations,
            figures=not no_figures,
            progress=not quiet,
        )
    except (SplitInputError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for finding in report["findings"]:
        typer.echo(f"- {finding}")
    typer.echo(f"{out}: report.json, report.md and {len(report['figures'])} figure(s)")


def register(app: typer.Typer) -> None:
    app.command("split")(split)
    app.command("audit")(audit)
