"""``reben train``, ``reben evaluate`` and ``reben probe``: models on an archive or an embeddings file (docs/training.md, docs/probing.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from reben_tools.commands.sources import (
    ARCHIVE_HELP,
    METADATA_OPTION,
    archive_and_metadata,
    check_checkpoint_file,
    resolve_archive,
    source_of_run,
)
from reben_tools.commands.urls import CACHE_DIR, CACHE_SIZE, use_cache

if TYPE_CHECKING:
    from reben_tools.format.sources import ArchiveSource

_RECIPE = "default: reBEN's published recipe"


def train(
    archive: str | None = typer.Option(
        None,
        "--archive",
        help=ARCHIVE_HELP + " With --resume, default: the run's.",
    ),
    metadata: list[Path] | None = METADATA_OPTION,
    out: Path = typer.Option(
        ..., "--out", callback=guarded_output, help="Run directory: checkpoints/, metrics.json, curves.png, test/."
    ),
    bands: str | None = typer.Option(
        None, "--bands", help="Band group (S1, 10m_20m, S1_10m_20m, ALL ...) or comma-separated bands."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="resnet50, resnet18, resnet_micro, vit_base_patch8, convnextv2_base, mixer_base_patch16, dofa_base_patch16, dofa_micro ... or timm:NAME.",
    ),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Start the encoder from published weights: dofa_base:PATH, dofa_large:PATH, dofa_micro:PATH (a DOFA-layout checkpoint or a reben train checkpoint of a DOFA model).",
    ),
    layer_decay: float | None = typer.Option(
        None,
        "--layer-decay",
        help="Layer-wise lr decay for transformers (e.g. 0.75): block i of L gets lr * decay^(L - i); off by default.",
    ),
    input_mode: str | None = typer.Option(
        None,
        "--input-mode",
        help="DOFA models: resize (inputs resized to 224; the default with --init dofa_base:/dofa_large: weights) or interpolate (position embeddings resized to the 120x120 patch grid; the default otherwise).",
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs (default 100)."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Global batch, split over torchrun processes (default 512)."
    ),
    accumulate: int | None = typer.Option(
        None,
        "--accumulate",
        help="Micro-batches per optimiser step (gradient accumulation; default 1): the global batch stays --batch-size.",
    ),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 1e-3)."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="AdamW weight decay (default 0.01)."),
    dropout: float | None = typer.Option(None, "--dropout", help="Dropout before the head (default 0.15)."),
    drop_path: float | None = typer.Option(None, "--drop-path", help="Stochastic depth rate (default 0.15)."),
    warmup_steps: int | None = typer.Option(
        None, "--warmup-steps", help="Linear warm-up steps from lr/10 (default 1000, at most a tenth of the run)."
    ),
    patience: int | None = typer.Option(
        None, "--patience", help="Early-stopping patience in epochs on validation macro AP (default 5)."
    ),
    fusion: str | None = typer.Option(
        None, "--fusion", help="early (channel concatenation, default) or late (one encoder per modality)."
    ),
    patch_size: int | None = typer.Option(
        None, "--patch-size", help="Patch size of ViT / MLP-Mixer models (overrides the name's)."
    ),
    seed: int | None = SEED,
    no_flips: bool = typer.Option(False, "--no-flips", help="Turn off the random flips."),
    mix: str | None = typer.Option(
        None,
        "--mix",
        help="none (default), cutmix (labels mixed by area) or cutmix-lp (labels from the mixed reference map).",
    ),
    mix_prob: float | None = typer.Option(
        None, "--mix-prob", help="Probability that a training sample is mixed (default 0.5)."
    ),
    mix_area: str | None = typer.Option(
        None, "--mix-area", help="Box area range as shares of the patch, low,high (default 0.1,0.5)."
    ),
    class_order: str | None = typer.Option(None, "--class-order", help="alphabetical (default) or original."),
    include_snow_cloud: bool = INCLUDE_SNOW_CLOUD,
    include_snowy: bool = typer.Option(
        False, "--include-snowy", help="Also use patches flagged for seasonal snow (alone: not cloudy ones)."
    ),
    include_cloudy: bool = typer.Option(
        False, "--include-cloudy", help="Also use patches flagged for cloud/shadow (alone: not snowy ones)."
    ),
    train_fraction: float | None = typer.Option(
        None,
        "--train-fraction",
        help="Train on this stratified share of the train split, in (0, 1] (the rows of `reben subset --fraction F`).",
    ),
    subset_seed: int | None = typer.Option(
        None, "--subset-seed", help="Seed of the --train-fraction draw (default 0)."
    ),
    device: str = DEVICE,
    precision: str = PRECISION,
    workers: int | None = WORKERS,
    compile: bool = COMPILE,
    sync_batchnorm: bool = typer.Option(
        True,
        "--sync-batchnorm/--no-sync-batchnorm",
        help="Under torchrun on GPUs, BatchNorm over the global batch (default) or per process.",
    ),
    deterministic: bool = typer.Option(
        False, "--deterministic", help="Deterministic GPU algorithms: bit-exact --resume on GPUs, somewhat slower."
    ),
    max_steps: int | None = MAX_STEPS,
    checkpoint_every: int | None = CHECKPOINT_EVERY,
    no_test: bool = typer.Option(
        False, "--no-test", help="Skip evaluating the best checkpoint on the test split at the end."
    ),
    sampler: str | None = typer.Option(
        None,
        "--sampler",
        help="global (default: each epoch a permutation of all training samples, strided over processes) or shard-local (each node reads only the shards assigned to it; see docs/training.md).",
    ),
    resume: bool = RESUME,
    quiet: bool = QUIET,
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Train a multi-label classifier with the published reBEN recipe (works under torchrun)."""
    from reben_tools.learn.data.mixing import parse_area_range
    from reben_tools.learn.runtime.config import DEFAULTS, TrainConfig, TrainingError, check_numbers
    from reben_tools.learn.training.loop import train as run_training

    use_cache(cache_dir, cache_size)
    try:
        area = parse_area_range(mix_area) if mix_area is not None else None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    given_values = {
        "bands": _band_arg(bands),
        "model": model,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "dropout": dropout,
        "drop_path": drop_path,
        "warmup_steps": warmup_steps,
        "patience": patience,
        "fusion": fusion,
        "seed": seed,
        "class_order": class_order,
        "flips": False if no_flips else None,
        "include_snow_cloud": True if include_snow_cloud else None,
        "include_snowy": True if include_snowy else None,
        "include_cloudy": True if include_cloudy else None,
        "mix": mix,
        "mix_prob": mix_prob,
        "mix_area": area,
        "train_fraction": train_fraction,
        "subset_seed": subset_seed,
        "model_kwargs": ({"patch_size": patch_size} if patch_size is not None else {})
        | ({"input_mode": input_mode} if input_mode is not None else {})
        or None,
        "init": init,
        "layer_decay": layer_decay,
        "accumulate": accumulate,
        "sampler": sampler,
    }
    if sampler is not None and sampler not in ("global", "shard-local"):
        typer.echo(f"error: --sampler {sampler!r}: expected global or shard-local", err=True)
        raise typer.Exit(2)
    if train_fraction is not None and not 0.0 < train_fraction <= 1.0:
        typer.echo(f"error: --train-fraction must be in (0, 1], got {train_fraction}", err=True)
        raise typer.Exit(2)
    given = {k for k, v in given_values.items() if v is not None}
    if not resume and (bands is None or model is None or archive is None):
        typer.echo("error: --archive, --bands and --model are required (unless --resume continues a run)", err=True)
        raise typer.Exit(2)
    try:  # before anything is read or written
        check_numbers(
            {**given_values, "workers": workers, "max_steps": max_steps, "checkpoint_every": checkpoint_every}
        )
    except TrainingError as exc:
        fail_run(exc)
    values: dict[str, Any] = {k: (v if v is not None else DEFAULTS.get(k)) for k, v in given_values.items()}
    values["model_kwargs"] = values["model_kwargs"] or {}
    archive_path, metadata_files = archive_and_metadata(archive, metadata)
    if input_mode is None and not resume:
        from reben_tools.learn.models.dofa import input_mode_for_init

        if (mode := input_mode_for_init(init)) is not None:  # published DOFA weights: resize to 224
            values["model_kwargs"] = {**values["model_kwargs"], "input_mode": mode}
    config = TrainConfig(
        archive=archive_path,
        metadata=metadata_files,
        out=str(out),
        device=device,
        precision=precision,
        workers=workers,
        compile=compile,
        max_steps=max_steps,
        checkpoint_every=checkpoint_every,
        evaluate_test=not no_test,
        progress=not quiet,
        sync_batchnorm=sync_batchnorm,
        deterministic=deterministic,
        **{k: v for k, v in values.items() if k not in ("bands", "model")},
        bands=values["bands"] or "",
        model=values["model"] or "",
    )
    try:
        metrics = run_training(config, resume=resume, given=given)
    except TrainingError as exc:
        fail_run(exc)
    if metrics:
        summary = {
            k: metrics.get(k)
            for k in (
                "status",
                "stopped_by",
                "steps",
                "epochs_completed",
                "best_epoch",
                "best_validation_average_precision_macro",
            )
        }
        if metrics.get("test"):
            summary["test_average_precision_macro"] = metrics["test"]["average_precision_macro"]
            summary["test_average_precision_micro"] = metrics["test"]["average_precision_micro"]
        summary["files"] = run_files(out, RUN_FILES)
        typer.echo(json.dumps(summary, indent=2))


RUN_FILES = {
    "checkpoints": ("checkpoints/best.pt", "checkpoints/last.pt"),
    "metrics": ("metrics.json", "test/metrics.json", "config.json"),
    "plots": ("curves.png", "test/per_class.png"),
}


def evaluate(
    archive: str | None = typer.Option(
        None, "--archive", help=ARCHIVE_HELP + " Default: the archive the checkpoint's run recorded."
    ),
    metadata: list[Path] | None = METADATA_OPTION,
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="A checkpoint written by reben train (best.pt or last.pt)."
    ),
    out: Path = typer.Option(
        ..., "--out", callback=guarded_output, help="Directory for metrics.json and per_class.png."
    ),
    split: str = typer.Option("test", "--split", help="train, validation or test."),
    model: str | None = typer.Option(None, "--model", help="Expected model name (checked against the checkpoint)."),
    bands: str | None = typer.Option(None, "--bands", help="Expected band group (checked against the checkpoint)."),
    threshold: float = typer.Option(
        0.5, "--threshold", help="Probability threshold for F1/F2/precision/recall/Hamming."
    ),
    batch_size: int = typer.Option(512, "--batch-size"),
    device: str = DEVICE,
    precision: str = PRECISION,
    workers: int | None = WORKERS,
    quiet: bool = QUIET,
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Average precision, F1, F2, precision, recall (macro and micro), Hamming loss and per-class figures."""
    from reben_tools.learn.evaluation.metrics import HEADLINE_METRICS
    from reben_tools.learn.evaluation.predict import evaluate as run_evaluation
    from reben_tools.learn.runtime.config import TrainingError, check_numbers

    use_cache(cache_dir, cache_size)
    check_checkpoint_file(checkpoint)  # a file that is no checkpoint is named before any archive is opened
    if archive is None:
        if metadata:
            typer.echo("error: --metadata goes with --archive", err=True)
            raise typer.Exit(2)
        source = source_of_run(checkpoint)
    else:
        source = resolve_archive(archive, metadata, statistics=True)
    try:
        check_numbers({"batch_size": batch_size, "workers": workers})
        if not 0 < threshold < 1:
            raise TrainingError(f"--threshold must be a probability in (0, 1) (got {threshold})")
        metrics = run_evaluation(
            source,
            checkpoint,
            split=split,
            out=out,
            device=device,
            precision=precision,
            batch_size=batch_size,
            workers=workers,
            model=model,
            bands=_band_arg(bands),
            threshold=threshold,
            progress=not quiet,
        )
    except TrainingError as exc:
        fail_run(exc)
    shown = ("samples", "average_precision_macro", "average_precision_micro")
    summary = {k: metrics[k] for k in shown}
    if metrics["average_precision_macro_all_classes"] != metrics["average_precision_macro"]:
        # reBEN's scripts count a class without positives as AP 0: both figures, so subsets compare with reBEN's
        summary["average_precision_macro_all_classes"] = metrics["average_precision_macro_all_classes"]
        summary["classes_without_positives"] = metrics["classes_without_positives"]
    if metrics.get("prior_baseline"):
        summary["prior_baseline"] = metrics["prior_baseline"]
    summary.update({k: metrics[k] for k in HEADLINE_METRICS if k not in shown})
    summary["files"] = [str(out / "metrics.json"), str(out / "per_class.png")]
    typer.echo(json.dumps(summary, indent=2))


def probe(
    archive: str | None = typer.Option(
        None,
        "--archive",
        help=ARCHIVE_HELP + " With --checkpoint, --model/--bands or --encoder. With --checkpoint, default: the run's.",
    ),
    metadata: list[Path] | None = METADATA_OPTION,
    embeddings: Path | None = typer.Option(
        None, "--embeddings", help="An embeddings parquet written by `reben embed` (instead of --archive)."
    ),
    encoder: str | None = typer.Option(
        None,
        "--encoder",
        help="With --archive: embed it with this frozen encoder first (croma_base:PATH, a run directory, ...; as `reben embed`), keeping OUT/embeddings.parquet.",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        callback=guarded_output,
        help="Output directory: probe.json, probe.md, probes.png, per_class_f2.png (and embedding_map.png with --embeddings).",
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Encoder to freeze (omit for a random-init baseline with --model/--bands)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Model name (random-init baseline, or checked against the checkpoint)."
    ),
    bands: str | None = typer.Option(
        None, "--bands", help="Band group (random-init baseline, or checked against the checkpoint)."
    ),
    modality: str = typer.Option(
        "auto", "--modality", help="With --embeddings: joint, s2, s1 or auto (joint, else s2, else s1)."
    ),
    probes: str = typer.Option(
        "linear,mlp,random_forest", "--probes", help="Comma-separated: linear, mlp, random_forest."
    ),
    train_fraction: str = typer.Option(
        "1.0",
        "--train-fraction",
        help="Stratified share(s) of the train split to fit on, comma-separated, e.g. 0.01,0.1,1.0.",
    ),
    subset_seed: int = typer.Option(
        0, "--subset-seed", help="Seed of the --train-fraction draw (the rows of `reben subset --seed`)."
    ),
    max_train_samples: int | None = typer.Option(
        None, "--max-train-samples", help="With --archive: first cap train by a uniform random draw."
    ),
    repeats: int = typer.Option(
        10,
        "--repeats",
        help="Comparison protocol: refit each probe on this many stratified splits of the held-out patches "
        "and report intervals (0: off).",
    ),
    eval_share: float = typer.Option(
        0.5, "--eval-share", help="Comparison protocol: share of the held-out patches each split scores, in (0, 1)."
    ),
    heldout: str = typer.Option(
        "test", "--heldout", help="Comparison protocol: the split(s) pooled as held-out patches, e.g. validation,test."
    ),
    baseline: str | None = typer.Option(
        None,
        "--baseline",
        help="Compare with this baseline on the protocol's splits: an embeddings file (with --embeddings), "
        "or 'random' / a checkpoint (with --checkpoint). probe.md states the verdict.",
    ),
    no_map: bool = typer.Option(False, "--no-map", help="With --embeddings: skip the embedding map."),
    map_points: int = typer.Option(
        3000, "--map-points", help="Test embeddings drawn in the embedding map (stratified draw)."
    ),
    batch_size: int = typer.Option(256, "--batch-size"),
    device: str = DEVICE,
    precision: str = PRECISION,
    workers: int | None = WORKERS,
    seed: int = typer.Option(0, "--seed", help="Random state of the MLP and the random forest."),
    quiet: bool = QUIET,
    cache_dir: str | None = CACHE_DIR,
    cache_size: str | None = CACHE_SIZE,
) -> None:
    """Fit a linear probe, an MLP and a random forest on frozen features; report test metrics (the field's protocol)."""
    from reben_tools.learn.evaluation.embeddings import EmbeddingsError
    from reben_tools.learn.evaluation.probes import PROBES, probe_embeddings
    from reben_tools.learn.evaluation.probes import probe as run_probe
    from reben_tools.learn.models.encoders import EncoderError
    from reben_tools.learn.runtime.config import TrainingError

    use_cache(cache_dir, cache_size)
    kinds = tuple(p.strip() for p in probes.split(",") if p.strip())
    unknown = [k for k in kinds if k not in PROBES]
    if unknown or not kinds:
        typer.echo(f"error: unknown probe(s) {unknown}; choose from {list(PROBES)}", err=True)
        raise typer.Exit(2)
    try:
        fractions = tuple(float(f) for f in train_fraction.split(",") if f.strip())
    except ValueError:
        fractions = ()
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        typer.echo(
            f"error: --train-fraction {train_fraction!r}: expected numbers in (0, 1], e.g. 0.01,0.1,1.0", err=True
        )
        raise typer.Exit(2)
    heldout_splits = tuple(h.strip() for h in heldout.split(",") if h.strip())
    bad = [h for h in heldout_splits if h not in ("train", "validation", "test")]
    if bad or not heldout_splits:
        typer.echo(f"error: --heldout {heldout!r}: expected split names among train, validation, test", err=True)
        raise typer.Exit(2)
    protocol: dict[str, Any] = {
        "repeats": repeats,
        "eval_share": eval_share,
        "heldout": heldout_splits,
        "baseline": baseline,
    }
    if baseline is not None and embeddings is None and encoder is None and checkpoint is None:
        typer.echo("error: --baseline with --archive needs --checkpoint", err=True)
        raise typer.Exit(2)
    from_run = archive is None and embeddings is None and checkpoint is not None  # the archive the run recorded
    if (archive is None) == (embeddings is None) and not from_run:
        typer.echo(
            "error: give exactly one of --archive (with --checkpoint, --model/--bands or --encoder) and --embeddings"
            " (--checkpoint alone reads the archive its run recorded)",
            err=True,
        )
        raise typer.Exit(2)
    if encoder is not None and (archive is None or checkpoint is not None or model is not None):
        typer.echo(
            "error: --encoder goes with --archive alone (not with --embeddings, --checkpoint or --model)", err=True
        )
        raise typer.Exit(2)
    if metadata and archive is None:
        typer.echo("error: --metadata goes with --archive", err=True)
        raise typer.Exit(2)
    source: ArchiveSource | None = None
    if from_run:
        assert checkpoint is not None, "from_run implies --checkpoint"
        check_checkpoint_file(checkpoint)
        source = source_of_run(checkpoint)
    elif archive is not None:
        source = resolve_archive(archive, metadata, statistics=True)
    try:
        if encoder is not None:
            from reben_tools.learn.evaluation.embed import embed_archive
            from reben_tools.learn.models.encoders import load_encoder

            embeddings = Path(out) / "embeddings.parquet"
            assert source is not None, "--encoder goes with --archive (checked above)"
            embed_archive(
                source,
                load_encoder(encoder),
                embeddings,
                bands=_band_arg(bands),
                batch_size=batch_size,
                device=device,
                precision=precision,
                workers=workers,
                progress=not quiet,
            )
        if embeddings is not None:
            results = probe_embeddings(
                embeddings,
                out,
                modality=modality,
                fractions=fractions,
                probes=kinds,
                seed=seed,
                subset_seed=subset_seed,
                embedding_map=not no_map,
                map_points=map_points,
                progress=not quiet,
                **protocol,
            )
        else:
            assert source is not None, "exactly one of --archive and --embeddings (checked above)"
            results = run_probe(
                source,
                checkpoint,
                out,
                model=model,
                bands=_band_arg(bands),
                probes=kinds,
                max_train_samples=max_train_samples,
                device=device,
                precision=precision,
                batch_size=batch_size,
                workers=workers,
                seed=seed,
                progress=not quiet,
                fractions=fractions,
                subset_seed=subset_seed,
                **protocol,
            )
    except (TrainingError, EmbeddingsError, EncoderError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    keys = ("average_precision_macro", "f2_macro", "f2_micro", "hamming_loss")
    summary: dict[str, Any] = {
        f"{run['train_fraction']:g} ({run['train_samples']} train)": {
            kind: {k: m[k] for k in keys} for kind, m in run["probes"].items()
        }
        for run in results["runs"]
    }
    if results.get("protocol"):
        from reben_tools.learn.evaluation.probe_report import METRIC_NAMES

        proto = results["protocol"]
        summary["protocol"] = {
            kind: {METRIC_NAMES[key]: {"mean": m["mean"], "interval": m["interval"]} for key, m in metrics.items()}
            for kind, metrics in proto["probes"].items()
        }
        if proto.get("comparison"):
            summary["against " + proto["baseline"]] = {
                kind: {METRIC_NAMES[key]: c["verdict"] for key, c in metrics.items()}
                for kind, metrics in proto["comparison"].items()
            }
    summary["files"] = sorted(str(p) for p in Path(out).glob("*") if p.suffix in (".json", ".md", ".png"))
    typer.echo(json.dumps(summary, indent=2))


def _band_arg(bands: str | None):
    if bands is None:
        return None
    return [b.strip() for b in bands.split(",")] if "," in bands else bands


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("probe")(probe)
