"""The ARCHIVE argument every command shares: ``--metadata FILE`` (repeatable) and one resolver.

An ARCHIVE is an archive directory, a plain reBEN LMDB directory plus ``--metadata`` files, or
a plain LMDB with reBEN's metadata files inside or beside it (found and announced in one line);
see :func:`reben_tools.format.sources.open_archive_source`. Commands declare
``metadata: list[Path] | None = METADATA_OPTION`` and call :func:`resolve_archive`.

Owns: :data:`METADATA_OPTION`, :data:`ARCHIVE_HELP`, :func:`resolve_archive`, :func:`announce`,
:func:`names_an_archive`.
Does not own: what an archive is (``format.sources``), the commands.
May import: ``reben_tools.format``, typer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from reben_tools.commands.guard import main_process

if TYPE_CHECKING:
    from reben_tools.format.sources import ArchiveSource

ARCHIVE_HELP = (
    "An archive directory (manifest.json) or its URL (s3://bucket/prefix), or a plain reBEN LMDB directory (data.mdb, e.g. BigEarthNet-V2-LMDB) "
    "with --metadata, or with reBEN's metadata files inside or beside it."
)
METADATA_OPTION = typer.Option(
    None,
    "--metadata",
    help="reBEN metadata parquet file (repeat for several: metadata.parquet, "
    "metadata_for_patches_with_snow_cloud_or_shadow.parquet). With a plain LMDB: its patches (default: reBEN's "
    "files found inside or beside it); with an archive: replaces the archive's own (e.g. a `reben subset` file).",
)


def announce(line: str | None) -> None:
    """Print one informational line on stderr (only the main process under torchrun)."""
    if line and main_process():
        typer.echo(line, err=True)


def resolve_archive(
    path: Path | str | ArchiveSource,
    metadata: Sequence[Path | str] | None = None,
    *,
    statistics: bool = False,
) -> ArchiveSource:
    """ARCHIVE (+ ``--metadata``) of a command as an :class:`ArchiveSource`, or exit with one line.

    Announces metadata found beside a plain LMDB; with ``statistics`` (commands that normalise
    pixels) also which statistics a plain LMDB is normalised with, after checking its band set.
    Exits 2 when ARCHIVE names no readable archive, 1 when a plain LMDB holds another band set.
    """
    from reben_tools.format.sources import SourceError, open_archive_source, plain_statistics_line

    try:
        source = open_archive_source(path, [str(m) for m in metadata or []] or None)
    except SourceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    announce(source.announcement)
    if statistics and source.is_plain_lmdb:
        try:
            announce(plain_statistics_line(source, *_first_patch(source)))
        except SourceError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    return source


def names_an_archive(path: Path) -> bool:
    """Whether a command's INPUT path is an archive directory or a plain LMDB directory (else a file, e.g. a parquet)."""
    path = Path(path)
    return path.is_dir() and ((path / "manifest.json").is_file() or (path / "data.mdb").is_file())


def _first_patch(source: ArchiveSource) -> tuple[str | None, str | None]:
    """The first metadata row's patch id and S1 name (None, None when none can be read: reported later)."""
    import pyarrow.parquet as pq

    for path in source.metadata_files():
        try:
            table = pq.read_table(path, columns=["patch_id", "s1_name"])
        except (OSError, ValueError, KeyError):
            continue
        if table.num_rows:
            row = table.slice(0, 1).to_pylist()[0]
            return row["patch_id"], row["s1_name"]
    return None, None


def check_checkpoint_file(checkpoint: Path) -> None:
    """Exit 1 with one line when ``checkpoint`` is no reben-tools checkpoint (before any archive is opened)."""
    from reben_tools.learn.runtime.config import TrainingError
    from reben_tools.learn.runtime.weights import check_weights_file

    try:  # the file checks alone: the checkpoint itself is loaded once, by the evaluation
        check_weights_file(checkpoint, "reben-tools checkpoint")
    except TrainingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def archive_of_run(checkpoint: Path) -> tuple[str, list[str]]:
    """The archive and metadata files a checkpoint's run recorded (its run directory's config.json), checked."""
    from reben_tools.learn.data.loaders import recorded_source
    from reben_tools.learn.runtime.config import TrainingError

    config = checkpoint.resolve().parent.parent / "config.json"
    try:
        stored = json.loads(config.read_text())
    except (OSError, ValueError):
        stored = {}
    try:
        if stored.get("source"):
            archive, metadata = recorded_source(stored["source"])
        elif stored.get("archive"):
            archive, metadata = stored["archive"], list(stored.get("metadata") or [])
        else:
            typer.echo(
                f"error: {checkpoint}: its run directory records no archive ({config}); pass --archive", err=True
            )
            raise typer.Exit(2)
    except TrainingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    announce(
        f"{checkpoint}: reading the run's archive {archive}" + (f" with {', '.join(metadata)}" if metadata else "")
    )
    return archive, metadata


def source_of_run(checkpoint: Path) -> ArchiveSource:
    """The archive a checkpoint's run recorded (:func:`archive_of_run`), resolved with its statistics:
    what ``evaluate`` and ``probe --checkpoint`` read without ``--archive``."""
    recorded, recorded_metadata = archive_of_run(checkpoint)
    return resolve_archive(recorded, recorded_metadata, statistics=True)


def archive_and_metadata(archive: str | Path | None, metadata: list[Path] | None) -> tuple[str, list[str]]:
    """``(archive path, metadata files)`` for a run's config from ``--archive``/``--metadata``
    (announcing metadata found beside a plain LMDB and its statistics); ``("", [])`` without --archive."""
    if archive is None:
        if metadata:
            typer.echo("error: --metadata goes with --archive", err=True)
            raise typer.Exit(2)
        return "", []
    source = resolve_archive(archive, metadata, statistics=True)
    return source.run_arguments()
