"""``reben retrieve``: cross-modal retrieval on an embeddings file, or on an archive through a frozen encoder (see docs/probing.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from reben_tools.commands.outputs import guarded_output
from reben_tools.commands.sources import ARCHIVE_HELP, METADATA_OPTION, resolve_archive


def retrieve(
    embeddings: Path | None = typer.Option(
        None, "--embeddings", help="An embeddings parquet written by `reben embed` (s1 and s2 columns)."
    ),
    archive: Path | None = typer.Option(
        None, "--archive", help=ARCHIVE_HELP + " Embedded with --encoder first (instead of --embeddings)."
    ),
    metadata: list[Path] | None = METADATA_OPTION,
    encoder: str | None = typer.Option(
        None,
        "--encoder",
        help="With --archive: the frozen encoder (as `reben embed --encoder`); its embeddings of SPLIT are kept "
        "in OUT/embeddings.parquet.",
    ),
    out: Path = typer.Option(
        ..., "--out", callback=guarded_output, help="Directory for retrieval.json and retrieval.png."
    ),
    split: str = typer.Option("test", "--split", help="Split whose patches are queries and gallery."),
    device: str = typer.Option(
        "cpu", "--device", help="cpu or cuda (similarity matrix blocks, and the embedding with --archive)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", help="With --archive: embedding batch size."),
    workers: int | None = typer.Option(None, "--workers", help="With --archive: DataLoader workers."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """S1 embedding of each patch as query against all S2 embeddings, and the reverse: recall@1/5/10, median rank, chance."""
    from reben_tools.learn.evaluation.embeddings import EmbeddingsError
    from reben_tools.learn.evaluation.retrieval import retrieve as run_retrieval
    from reben_tools.learn.models.encoders import EncoderError
    from reben_tools.learn.runtime.config import TrainingError

    if (archive is None) == (embeddings is None) or (archive is not None) != (encoder is not None):
        typer.echo("error: give --embeddings, or --archive with --encoder", err=True)
        raise typer.Exit(2)
    if metadata and archive is None:
        typer.echo("error: --metadata goes with --archive", err=True)
        raise typer.Exit(2)
    try:
        if archive is not None:
            from reben_tools.learn.evaluation.embed import embed_archive
            from reben_tools.learn.models.encoders import load_encoder

            assert encoder is not None, "--archive goes with --encoder (checked above)"
            source = resolve_archive(archive, metadata, statistics=True)
            embeddings = out / "embeddings.parquet"
            embed_archive(
                source,
                load_encoder(encoder),
                embeddings,
                split=split,
                batch_size=batch_size,
                device=device,
                workers=workers,
                progress=not quiet,
            )
        assert embeddings is not None, "given, or written from --archive above"
        result = run_retrieval(embeddings, out, split=split, device=device)
    except (EmbeddingsError, EncoderError, TrainingError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    summary = {k: result[k] for k in ("pairs", "s1_to_s2", "s2_to_s1", "chance")}
    typer.echo(json.dumps(summary, indent=2))


def register(app: typer.Typer) -> None:
    app.command("retrieve")(retrieve)
