"""``reben train``, ``reben evaluate`` and ``reben probe``: models on an archive (see docs/training.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from reben_tools.commands.outputs import guarded_output

_RECIPE = "default: reBEN's published recipe"


def train(
    archive: Path = typer.Option(..., "--archive", help="Archive directory (manifest.json, shards/, metadata)."),
    out: Path = typer.Option(..., "--out", callback=guarded_output, help="Run directory: checkpoints/, metrics.json, curves.png, test/."),
    bands: Optional[str] = typer.Option(None, "--bands", help="Band group (S1, 10m_20m, S1_10m_20m, ALL ...) or comma-separated bands."),
    model: Optional[str] = typer.Option(None, "--model", help="resnet50, resnet18, resnet_micro, vit_base_patch8, convnextv2_base, mixer_base_patch16, ... or timm:NAME."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum epochs (default 100)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch, split over torchrun processes (default 512)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 1e-3)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="AdamW weight decay (default 0.01)."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="Dropout before the head (default 0.15)."),
    drop_path: Optional[float] = typer.Option(None, "--drop-path", help="Stochastic depth rate (default 0.15)."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Linear warm-up steps from lr/10 (default 1000, at most a tenth of the run)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early-stopping patience in epochs on validation macro AP (default 5)."),
    fusion: Optional[str] = typer.Option(None, "--fusion", help="early (channel concatenation, default) or late (one encoder per modality)."),
    patch_size: Optional[int] = typer.Option(None, "--patch-size", help="Patch size of ViT / MLP-Mixer models (overrides the name's)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
    no_flips: bool = typer.Option(False, "--no-flips", help="Turn off the random flips."),
    class_order: Optional[str] = typer.Option(None, "--class-order", help="alphabetical (default) or original."),
    include_snow_cloud: bool = typer.Option(False, "--include-snow-cloud", help="Also use patches flagged for snow/cloud/shadow."),
    device: str = typer.Option("auto", "--device", help="cuda, cpu or auto."),
    precision: str = typer.Option("auto", "--precision", help="bf16 or fp32 (auto: bf16 on GPU, fp32 on CPU)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers per process (default: cores per process - 1)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps in total (checkpointed; --resume goes on)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Also checkpoint every N steps (epochs always are)."),
    no_test: bool = typer.Option(False, "--no-test", help="Skip evaluating the best checkpoint on the test split at the end."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a multi-label classifier with the published reBEN recipe (works under torchrun)."""
    from reben_tools.learn.config import DEFAULTS, TrainConfig, TrainingError
    from reben_tools.learn.loop import train as run_training

    given_values = {
        "bands": _band_arg(bands), "model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "weight_decay": weight_decay, "dropout": dropout, "drop_path": drop_path, "warmup_steps": warmup_steps,
        "patience": patience, "fusion": fusion, "seed": seed, "class_order": class_order,
        "flips": False if no_flips else None, "include_snow_cloud": True if include_snow_cloud else None,
        "model_kwargs": {"patch_size": patch_size} if patch_size is not None else None,
    }
    given = {k for k, v in given_values.items() if v is not None}
    if not resume and (bands is None or model is None):
        typer.echo("error: --bands and --model are required (unless --resume continues a run)", err=True)
        raise typer.Exit(2)
    values = {k: (v if v is not None else DEFAULTS.get(k)) for k, v in given_values.items()}
    values["model_kwargs"] = values["model_kwargs"] or {}
    config = TrainConfig(
        archive=str(archive), out=str(out), device=device, precision=precision, workers=workers,
        compile=compile, max_steps=max_steps, checkpoint_every=checkpoint_every, evaluate_test=not no_test,
        progress=not quiet, **{k: v for k, v in values.items() if k not in ("bands", "model")},
        bands=values["bands"] or "", model=values["model"] or "",
    )
    try:
        metrics = run_training(config, resume=resume, given=given)
    except TrainingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if metrics:
        summary = {k: metrics.get(k) for k in ("status", "stopped_by", "steps", "epochs_completed", "best_epoch",
                                               "best_validation_average_precision_macro")}
        if metrics.get("test"):
            summary["test_average_precision_macro"] = metrics["test"]["average_precision_macro"]
            summary["test_average_precision_micro"] = metrics["test"]["average_precision_micro"]
        typer.echo(json.dumps(summary, indent=2))


def evaluate(
    archive: Path = typer.Option(..., "--archive", help="Archive directory."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint written by reben train (best.pt or last.pt)."),
    out: Path = typer.Option(..., "--out", callback=guarded_output, help="Directory for metrics.json and per_class.png."),
    split: str = typer.Option("test", "--split", help="train, validation or test."),
    model: Optional[str] = typer.Option(None, "--model", help="Expected model name (checked against the checkpoint)."),
    bands: Optional[str] = typer.Option(None, "--bands", help="Expected band group (checked against the checkpoint)."),
    threshold: float = typer.Option(0.5, "--threshold", help="Probability threshold for F1/F2/precision/recall/Hamming."),
    batch_size: int = typer.Option(512, "--batch-size"),
    device: str = typer.Option("auto", "--device", help="cuda, cpu or auto."),
    precision: str = typer.Option("auto", "--precision", help="bf16 or fp32."),
    workers: Optional[int] = typer.Option(None, "--workers"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Average precision, F1, F2, precision, recall (macro and micro), Hamming loss and per-class figures."""
    from reben_tools.learn.metrics import HEADLINE_METRICS
    from reben_tools.learn.config import TrainingError
    from reben_tools.learn.evaluation import evaluate as run_evaluation

    try:
        metrics = run_evaluation(archive, checkpoint, split=split, out=out, device=device, precision=precision,
                                 batch_size=batch_size, workers=workers, model=model, bands=_band_arg(bands),
                                 threshold=threshold, progress=not quiet)
    except TrainingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({k: metrics[k] for k in ("samples", *HEADLINE_METRICS)}, indent=2))


def probe(
    archive: Path = typer.Option(..., "--archive", help="Archive directory."),
    out: Path = typer.Option(..., "--out", callback=guarded_output, help="Directory for metrics.json and probes.png."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Encoder to freeze (omit for a random-init baseline with --model/--bands)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model name (random-init baseline, or checked against the checkpoint)."),
    bands: Optional[str] = typer.Option(None, "--bands", help="Band group (random-init baseline, or checked against the checkpoint)."),
    probes: str = typer.Option("linear,mlp,random_forest", "--probes", help="Comma-separated: linear, mlp, random_forest."),
    max_train_samples: Optional[int] = typer.Option(None, "--max-train-samples", help="Fit the probes on a random subset of train."),
    batch_size: int = typer.Option(256, "--batch-size"),
    device: str = typer.Option("auto", "--device"),
    precision: str = typer.Option("auto", "--precision"),
    workers: Optional[int] = typer.Option(None, "--workers"),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Fit a linear probe, a small MLP and a random forest on frozen features; report test metrics."""
    from reben_tools.learn.config import TrainingError
    from reben_tools.learn.probes import PROBES
    from reben_tools.learn.probes import probe as run_probe

    kinds = tuple(p.strip() for p in probes.split(",") if p.strip())
    unknown = [k for k in kinds if k not in PROBES]
    if unknown or not kinds:
        typer.echo(f"error: unknown probe(s) {unknown}; choose from {list(PROBES)}", err=True)
        raise typer.Exit(2)
    try:
        results = run_probe(archive, checkpoint, out, model=model, bands=_band_arg(bands), probes=kinds,
                            max_train_samples=max_train_samples, device=device, precision=precision,
                            batch_size=batch_size, workers=workers, seed=seed, progress=not quiet)
    except TrainingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    summary = {
        kind: {k: m[k] for k in ("average_precision_macro", "average_precision_micro", "f1_macro", "f1_micro")}
        for kind, m in results["probes"].items()
    }
    typer.echo(json.dumps(summary, indent=2))


def _band_arg(bands: str | None):
    if bands is None:
        return None
    return [b.strip() for b in bands.split(",")] if "," in bands else bands


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("probe")(probe)
