"""``reben verify``, ``reben merge`` and ``reben export-tiff``: tools over a finished archive."""

from __future__ import annotations

from pathlib import Path

import typer

from reben_tools.commands.outputs import guarded_output
from reben_tools.commands.urls import CACHE_DIR, CACHE_SIZE, use_cache


def verify(
    archive_dir: str = typer.Argument(
        ...,
        help="The archive directory (with manifest.json) or its URL (s3://bucket/prefix), or a bare reBEN LMDB directory (with data.mdb) together with --metadata.",
    ),
    metadata: list[Path] = typer.Option(
        None, "--metadata", help="reBEN metadata parquet file(s) of a bare LMDB directory (repeat for several)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Check every shard against the manifest and every value against its declared tensors.

    ARCHIVE_DIR may be a URL (s3://bucket/prefix): every shard is fetched into the cache and
    checked the same way; a shard in the store that differs from the manifest is a fault.

    For a bare reBEN LMDB (``reben verify LMDB_DIR --metadata metadata.parquet [--metadata ...]``):
    every value decodes as its kind, every metadata row has its values, and no key is left
    that no row names. A truncated data.mdb is reported as such and the other shards are
    still checked. Exits 1 and prints one line per fault, naming the shard and the key.
    """
    from reben_tools.format.layout import MANIFEST_FILE
    from reben_tools.format.object_store import is_remote, local_path
    from reben_tools.release.archive_tools import verify_archive
    from reben_tools.release.lmdb_verify import verify_lmdb

    use_cache(cache_dir, cache_size)
    if is_remote(archive_dir):
        if metadata:
            typer.echo(f"error: {archive_dir}: --metadata is only for a local bare LMDB directory", err=True)
            raise typer.Exit(2)
        report = verify_archive(archive_dir, progress=not quiet)
    elif (local_path(archive_dir) / MANIFEST_FILE).is_file():
        archive_dir = local_path(archive_dir)
        if metadata:
            typer.echo(
                f"error: {archive_dir} is a reben-tools archive; --metadata is only for a bare LMDB directory", err=True
            )
            raise typer.Exit(2)
        report = verify_archive(archive_dir, progress=not quiet)
    elif (local_path(archive_dir) / "data.mdb").is_file():
        archive_dir = local_path(archive_dir)
        if not metadata:
            typer.echo(
                f"error: {archive_dir} is a bare LMDB directory (no manifest.json); "
                "give its reBEN metadata with --metadata metadata.parquet [--metadata ...]",
                err=True,
            )
            raise typer.Exit(2)
        report = verify_lmdb(archive_dir, metadata, progress=not quiet)
    else:
        typer.echo(
            f"error: {archive_dir}: neither a reben-tools archive (manifest.json) nor an LMDB directory (data.mdb)",
            err=True,
        )
        raise typer.Exit(2)
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
    archive_dir: str = typer.Argument(..., help="The archive directory (with manifest.json) or its URL (s3://...)."),
    out_dir: Path = typer.Argument(..., callback=guarded_output, help="New directory for the single LMDB environment."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Write all shards into one LMDB environment with sorted keys (reBEN's single-LMDB layout)."""
    from reben_tools.format.layout import ArchiveError
    from reben_tools.release.archive_tools import merge_archive

    use_cache(cache_dir, cache_size)
    try:
        summary = merge_archive(archive_dir, out_dir, progress=not quiet)
    except ArchiveError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{summary.path}: {summary.entries} keys, {summary.value_bytes} value bytes"
        + (f" ({summary.duplicates} duplicate key(s) across shards written once)" if summary.duplicates else "")
    )


def export_tiff(
    archive_dir: str = typer.Argument(..., help="The archive directory (with manifest.json) or its URL (s3://...)."),
    out_dir: Path = typer.Argument(
        ..., callback=guarded_output, help="Where to write BigEarthNet-S2/, BigEarthNet-S1/, Reference_Maps/."
    ),
    flat: bool = typer.Option(False, "--flat", help="Patch folders directly under each part, no product level."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Write the archive back as reBEN's GeoTIFF release, georeferenced from patches.parquet."""
    from reben_tools.format.layout import ArchiveError
    from reben_tools.release.archive_tools import export_geotiffs

    use_cache(cache_dir, cache_size)
    try:
        summary = export_geotiffs(archive_dir, out_dir, nested=not flat, progress=not quiet)
    except ArchiveError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for error in summary.errors:
        typer.echo(f"ERROR {error}", err=True)
    typer.echo(f"{out_dir}: {summary.patches} patch(es), {summary.files} GeoTIFF(s)")
    if summary.errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
    app.command("merge")(merge)
    app.command("export-tiff")(export_tiff)
