"""``reben pretrain`` and ``reben embed``: self-supervised CROMA pretraining and frozen embeddings (docs/pretraining.md).

Owns: the options of both commands, their one-line errors and exit codes.
Does not own: pretraining (reben_tools.learn.training.pretrain), encoders (reben_tools.learn.models.encoders),
embedding files (reben_tools.learn.evaluation.embed).
May import: reben_tools.learn, lazily inside the command functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from reben_tools.commands.outputs import guarded_output
from reben_tools.commands.run_options import (
    CHECKPOINT_EVERY,
    COMPILE,
    DEVICE,
    INCLUDE_SNOW_CLOUD,
    MAX_STEPS,
    PRECISION,
    QUIET,
    RESUME,
    SEED,
    WORKERS,
    fail_run,
    run_files,
)
from reben_tools.commands.sources import ARCHIVE_HELP, METADATA_OPTION, resolve_archive
from reben_tools.commands.urls import CACHE_DIR, CACHE_SIZE, use_cache


def pretrain(
    archive: str | None = typer.Option(
        None, "--archive", help=ARCHIVE_HELP + " With S1 and S2 values; with --resume, default: the run's."
    ),
    metadata: list[Path] | None = METADATA_OPTION,
    out: Path = typer.Option(
        ...,
        "--out",
        callback=guarded_output,
        help="Run directory: checkpoints/, croma_published.pt, steps.jsonl, metrics.json, curves.png.",
    ),
    model: str | None = typer.Option(None, "--model", help="croma_base, croma_large or croma_micro (CPU-sized)."),
    mask_ratio: float | None = typer.Option(
        None, "--mask-ratio", help="Fraction of each modality's patches masked (default 0.75)."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs over the train split (default 100)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Global batch, split over torchrun processes (default 256)."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 4e-4)."),
    weight_decay: float | None = typer.Option(
        None, "--weight-decay", help="AdamW weight decay of weight matrices (default 0.05)."
    ),
    warmup_steps: int | None = typer.Option(
        None, "--warmup-steps", help="Linear warm-up steps (default 1000, at most a tenth of the run)."
    ),
    seed: int | None = SEED,
    no_flips: bool = typer.Option(
        False, "--no-flips", help="Turn off the random flips (one flip shared by S1 and S2)."
    ),
    init: Path | None = typer.Option(
        None, "--init", help="Start the encoders from a CROMA checkpoint in the published layout (e.g. CROMA_base.pt)."
    ),
    include_snow_cloud: bool = INCLUDE_SNOW_CLOUD,
    device: str = DEVICE,
    precision: str = PRECISION,
    workers: int | None = WORKERS,
    compile: bool = COMPILE,
    max_steps: int | None = MAX_STEPS,
    checkpoint_every: int | None = CHECKPOINT_EVERY,
    resume: bool = RESUME,
    quiet: bool = QUIET,
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Pretrain CROMA (contrastive + masked reconstruction) on an archive's paired S1/S2 patches (works under torchrun)."""
    from reben_tools.learn.runtime.config import TrainingError, check_numbers
    from reben_tools.learn.training.pretrain import DEFAULTS, PretrainConfig
    from reben_tools.learn.training.pretrain import pretrain as run_pretraining

    use_cache(cache_dir, cache_size)
    given_values = {
        "model": model,
        "mask_ratio": mask_ratio,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "flips": False if no_flips else None,
        "include_snow_cloud": True if include_snow_cloud else None,
        "init": str(init) if init is not None else None,
    }
    given = {k for k, v in given_values.items() if v is not None}
    try:  # before anything is read or written
        check_numbers(
            {**given_values, "workers": workers, "max_steps": max_steps, "checkpoint_every": checkpoint_every}
        )
    except TrainingError as exc:
        fail_run(exc)
    if not resume and (archive is None or model is None):
        typer.echo("error: --archive and --model are required (unless --resume continues a run)", err=True)
        raise typer.Exit(2)
    if metadata and archive is None:
        typer.echo("error: --metadata goes with --archive", err=True)
        raise typer.Exit(2)
    source_arg: Path | str | None = archive
    metadata_arg: Sequence[Path | str] | None = metadata
    if resume and archive is None:
        stored = Path(out) / "config.json"
        if not stored.is_file():
            typer.echo(f"error: {stored}: no run to resume", err=True)
            raise typer.Exit(1)
        run = json.loads(stored.read_text())
        if run.get("source"):  # the archive or plain LMDB and the metadata files the run read, checked unchanged
            from reben_tools.learn.data.loaders import recorded_source

            try:
                source_arg, metadata_arg = recorded_source(run["source"])
            except TrainingError as exc:
                fail_run(exc)
        else:
            source_arg, metadata_arg = run["archive"], run.get("metadata") or []
    assert source_arg is not None, "--archive is given (checked above) or read from the run --resume continues"
    source = resolve_archive(source_arg, metadata_arg, statistics=True)
    values: dict[str, Any] = {k: (v if v is not None else DEFAULTS.get(k)) for k, v in given_values.items()}
    archive_arg, metadata_files = source.run_arguments()
    config = PretrainConfig(
        archive=archive_arg,
        metadata=metadata_files,
        out=str(out),
        device=device,
        precision=precision,
        workers=workers,
        compile=compile,
        max_steps=max_steps,
        checkpoint_every=checkpoint_every,
        progress=not quiet,
        **{k: v for k, v in values.items() if k != "model"},
        model=values["model"] or "",
    )
    try:
        summary = run_pretraining(config, resume=resume, given=given)
    except TrainingError as exc:
        fail_run(exc)
    if summary:
        typer.echo(json.dumps({**summary, "files": run_files(out, RUN_FILES)}, indent=2))


RUN_FILES = {
    "checkpoints": ("checkpoints/last.pt", "croma_published.pt"),
    "metrics": ("metrics.json", "steps.jsonl", "config.json"),
    "plots": ("curves.png",),
}


def embed(
    archive: str = typer.Option(..., "--archive", help=ARCHIVE_HELP),
    metadata: list[Path] | None = METADATA_OPTION,
    encoder: str = typer.Option(
        ...,
        "--encoder",
        help="croma_base:PATH, croma_large:PATH (published-layout CROMA weights), dofa_base:PATH, dofa_large:PATH (published-layout DOFA weights, or a DOFA reben train checkpoint), or a reben pretrain / reben train run directory.",
    ),
    out: Path = typer.Option(
        ..., "--out", callback=guarded_output, help="Parquet file: patch_id, split, labels, s1, s2, joint."
    ),
    split: str | None = typer.Option(None, "--split", help="train, validation or test (default: all patches)."),
    bands: str | None = typer.Option(
        None,
        "--bands",
        help="Modalities to embed: S1, S2 or ALL (default: all the encoder reads); DOFA encoders take any band group or comma-separated list.",
    ),
    input_mode: str | None = typer.Option(
        None,
        "--input-mode",
        help="DOFA encoders: resize (inputs resized to 224; the default for dofa_base:/dofa_large: published weights) or interpolate (position embeddings resized to the 120x120 patch grid; the default for dofa_micro and reben train runs that recorded none).",
    ),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = DEVICE,
    precision: str = PRECISION,
    workers: int | None = WORKERS,
    quiet: bool = QUIET,
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Write pooled S1, S2 and joint embeddings of a frozen encoder, one row per patch."""
    from reben_tools.learn.evaluation.embed import embed_archive
    from reben_tools.learn.models.encoders import DofaEncoder, EncoderError, load_encoder
    from reben_tools.learn.runtime.config import TrainingError

    use_cache(cache_dir, cache_size)
    band_arg = [b.strip() for b in bands.split(",")] if bands and "," in bands else bands
    source = resolve_archive(archive, metadata, statistics=True)
    try:
        module = load_encoder(encoder)
        if input_mode is not None:
            if not isinstance(module, DofaEncoder):
                raise EncoderError(f"{encoder}: --input-mode applies to DOFA encoders only")
            if input_mode not in ("interpolate", "resize"):
                raise EncoderError(f"unknown --input-mode {input_mode!r}; expected interpolate or resize")
            module.model.input_mode = input_mode
        summary = embed_archive(
            source,
            module,
            out,
            split=split,
            bands=band_arg,
            batch_size=batch_size,
            device=device,
            precision=precision,
            workers=workers,
            progress=not quiet,
        )
    except (TrainingError, EncoderError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(summary, indent=2))


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
    app.command("embed")(embed)
