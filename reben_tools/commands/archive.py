"""``reben verify``, ``reben merge`` and ``reben export-tiff``: tools over a finished archive."""

from __future__ import annotations

from pathlib import Path

import typer

from reben_tools.commands.outputs import guarded_output
from reben_tools.commands.sources import ARCHIVE_HELP, METADATA_OPTION, resolve_archive
from reben_tools.commands.urls import CACHE_DIR, CACHE_SIZE, use_cache


def verify(
    archive_dir: str = typer.Argument(..., help=ARCHIVE_HELP),
    metadata: list[Path] | None = METADATA_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Check every shard against the manifest and every value against its declared tensors.

    For a plain reBEN LMDB (``reben verify BigEarthNet-V2-LMDB [--metadata metadata.parquet ...]``):
    every value decodes as its kind, every metadata row has its S2 and S1 values, and no key is
    left that no row names. Reference maps are optional: one line says whether it holds none or
    all of them; a partial set is a fault. A truncated data.mdb is reported as such and the other
    shards are still checked. Exits 1 and prints one line per fault, naming the shard and the key.
    """
    from reben_tools.format.object_store import is_remote
    from reben_tools.release.archive_tools import verify_archive

    use_cache(cache_dir, cache_size)
    if is_remote(archive_dir):  # the store's own objects, checked against the manifest (not a cached copy)
        if metadata:
            typer.echo(f"error: {archive_dir}: --metadata is only for a local plain LMDB directory", err=True)
            raise typer.Exit(2)
        report = verify_archive(archive_dir, progress=not quiet)
    else:
        report = _verify_local(archive_dir, metadata, quiet)
    _print_report(archive_dir, report)


def _verify_local(archive_dir: str, metadata, quiet: bool):
    from reben_tools.release.archive_tools import verify_archive
    from reben_tools.release.lmdb_verify import verify_lmdb

    source = resolve_archive(archive_dir, metadata)
    if source.kind == "archive":
        if source.origin == "given":
            typer.echo(
                f"error: {archive_dir} is a reben-tools archive; --metadata is only for a plain LMDB directory",
                err=True,
            )
            raise typer.Exit(2)
        report = verify_archive(source.path, progress=not quiet)
    else:
        report = verify_lmdb(source.path, source.metadata_files(), progress=not quiet)
    return report


def _print_report(archive_dir: str, report) -> None:
    for note in report.notes:
        typer.echo(f"{archive_dir}: {note}")
    for fault in report.faults:
        typer.echo(f"FAULT {fault}", err=True)
    if report.faults:
        typer.echo(
            f"{archive_dir}: {len(report.faults)} fault(s) in {report.shards} shard(s), {report.values} value(s) read",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"{archive_dir}: OK ({report.shards} shard(s), {report.values} value(s))")


def merge(
    archive_dir: str = typer.Argument(..., help=ARCHIVE_HELP),
    out_dir: Path = typer.Argument(..., callback=guarded_output, help="New directory for the single LMDB environment."),
    metadata: list[Path] | None = METADATA_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Write all shards into one LMDB environment with sorted keys (reBEN's single-LMDB layout), with the metadata files inside it."""
    from reben_tools.format.layout import ArchiveError
    from reben_tools.release.archive_tools import merge_archive

    use_cache(cache_dir, cache_size)
    source = resolve_archive(archive_dir, metadata)
    try:
        summary = merge_archive(source, out_dir, progress=not quiet)
    except ArchiveError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{summary.path}: {summary.entries} keys, {summary.value_bytes} value bytes"
        + (f" ({summary.duplicates} duplicate key(s) across shards written once)" if summary.duplicates else "")
    )


def export_tiff(
    archive_dir: str = typer.Argument(..., help=ARCHIVE_HELP),
    out_dir: Path = typer.Argument(
        ..., callback=guarded_output, help="Where to write BigEarthNet-S2/, BigEarthNet-S1/, Reference_Maps/."
    ),
    metadata: list[Path] | None = METADATA_OPTION,
    flat: bool = typer.Option(False, "--flat", help="Patch folders directly under each part, no product level."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Write the archive back as reBEN's GeoTIFF release, georeferenced from patches.parquet (a plain LMDB: from the patch ids' MGRS tiles)."""
    from reben_tools.format.layout import ArchiveError
    from reben_tools.release.archive_tools import export_geotiffs

    use_cache(cache_dir, cache_size)
    source = resolve_archive(archive_dir, metadata)
    try:
        summary = export_geotiffs(source, out_dir, nested=not flat, progress=not quiet)
    except ArchiveError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for note in summary.notes:
        typer.echo(note, err=True)
    for error in summary.errors:
        typer.echo(f"ERROR {error}", err=True)
    typer.echo(f"{out_dir}: {summary.patches} patch(es), {summary.files} GeoTIFF(s)")
    if summary.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
    app.command("merge")(merge)
    app.command("export-tiff")(export_tiff)
