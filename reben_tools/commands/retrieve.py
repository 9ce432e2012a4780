"""``reben retrieve``: cross-modal retrieval on an embeddings file (see docs/probing.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from reben_tools.commands.outputs import guarded_output


def retrieve(
    embeddings: Path = typer.Option(
        ..., "--embeddings", help="An embeddings parquet written by `reben embed` (s1 and s2 columns)."
    ),
    out: Path = typer.Option(
        ..., "--out", callback=guarded_output, help="Directory for retrieval.json and retrieval.png."
    ),
    split: str = typer.Option("test", "--split", help="Split whose patches are queries and gallery."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (similarity matrix blocks)."),
) -> None:
    """S1 embedding of each patch as query against all S2 embeddings, and the reverse: recall@1/5/10, median rank, chance."""
    from reben_tools.learn.evaluation.embeddings import EmbeddingsError
    from reben_tools.learn.evaluation.retrieval import retrieve as run_retrieval

    try:
        result = run_retrieval(embeddings, out, split=split, device=device)
    except EmbeddingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    summary = {k: result[k] for k in ("pairs", "s1_to_s2", "s2_to_s1", "chance")}
    typer.echo(json.dumps(summary, indent=2))


def register(app: typer.Typer) -> None:
    app.command("retrieve")(retrieve)
