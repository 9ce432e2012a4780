"""Predictions of a model over a loader, and a checkpoint's metrics on one split of an archive.

Owns: logits_fp32, predict, merge_predictions (de-duplicating several processes' predictions), prior_baseline,
evaluate.
Does not own: metric definitions (metrics.py), checkpoint I/O (checkpoints.py), probing (probes.py),
validation during training (loop.py).
May import: numpy, torch; reben_tools.format; reben_tools.learn.runtime.config, .devices, .distributed, .loaders,
.checkpoints, .metrics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.labels import NUM_CLASSES
from reben_tools.format.sources import ArchiveSource
from reben_tools.learn.data.loaders import (
    DevicePreprocess,
    default_workers,
    make_loader,
    open_dataset,
    split_indices,
    train_label_frequency,
)
from reben_tools.learn.evaluation.metrics import multilabel_metrics, plot_per_class
from reben_tools.learn.models.restore import checked_model, split_config
from reben_tools.learn.runtime.config import TrainingError
from reben_tools.learn.runtime.devices import autocast, is_out_of_memory, oom_error, resolve_device, resolve_precision
from reben_tools.learn.runtime.distributed import EpochSampler

PRIOR_FIGURES = ("average_precision_macro", "average_precision_micro", "average_precision_macro_all_classes")


def logits_fp32(model: nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
    """Logits ``(B, K)`` float32 of a classifier: encoder under ``precision`` autocast, head in fp32.

    A model with ``forward_features``, ``dropout`` and ``head`` (:class:`ReBENClassifier`) gets its
    features cast to float32 and its head run outside autocast; any other model runs whole under
    autocast and its output is cast to float32.
    """
    device = images.device
    parts = _classifier_parts(model)
    with autocast(device, precision):
        out = parts.forward_features(images) if parts is not None else model(images)
    if parts is None:
        return out.float()
    with torch.autocast(device_type=device.type, enabled=False):
        return parts.head(parts.dropout(out.float()))


class _ClassifierParts(Protocol):
    """What :class:`ReBENClassifier` offers (also through ``torch.compile``'s wrapper)."""

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def dropout(self, x: torch.Tensor) -> torch.Tensor: ...

    def head(self, x: torch.Tensor) -> torch.Tensor: ...


def _classifier_parts(model: nn.Module) -> _ClassifierParts | None:
    """``model`` seen as encoder features, dropout and head, when it has them; else None."""
    if all(hasattr(model, name) for name in ("forward_features", "dropout", "head")):
        return cast(_ClassifierParts, model)
    return None


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    preprocess: DevicePreprocess,
    precision: str,
    progress: bool = False,
    desc: str = "predict",
    features: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (or encoder features) ``(N, K)`` float32, targets ``(N, 19)`` and dataset indices ``(N,)``.

    Under ``precision="bf16"`` the encoder runs in bf16 autocast, but its features are cast
    to float32 and the linear head runs outside autocast: bf16 logits carry 8 bits of
    mantissa, which on a test split of reBEN's size leaves a few thousand distinct scores per
    class and moves the average precision. Indices come from the loader's sampler order, so
    predictions of several processes can be merged and de-duplicated.
    """
    from tqdm import tqdm

    model.eval()
    encoder = _classifier_parts(model) if features else None
    if features and encoder is None:
        raise TypeError(f"{type(model).__name__} has no forward_features, dropout and head: no features to predict")
    outs, targets = [], []
    device = preprocess.device
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, labels = preprocess(batch)
        if encoder is not None:
            with autocast(device, precision):
                out = encoder.forward_features(images).float()
        else:
            out = logits_fp32(model, images, precision)
        outs.append(out.cpu())
        targets.append(labels.cpu())
    indices = np.asarray(list(iter(loader.sampler)), dtype=np.int64)
    width = encoder.num_features if encoder is not None else NUM_CLASSES
    predicted = torch.cat(outs).numpy() if outs else np.zeros((0, width), np.float32)
    tgt = torch.cat(targets).numpy() if targets else np.zeros((0, NUM_CLASSES), np.float32)
    return predicted, tgt, indices


def merge_predictions(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Several processes' :func:`predict` results -> (outputs, targets) in dataset-index order, duplicates dropped."""
    out = np.concatenate([p[0] for p in parts])
    tgt = np.concatenate([p[1] for p in parts])
    idx = np.concatenate([p[2] for p in parts])
    _, first = np.unique(idx, return_index=True)
    order = first[np.argsort(idx[first])]
    return out[order], tgt[order]


def prior_baseline(train_frequency: np.ndarray, targets: np.ndarray, class_order="alphabetical") -> dict:
    """AP of the image-blind prior: every patch's class k scored by its train frequency.

    Args:
        train_frequency: ``(K,)`` share of train patches holding each class.
        targets: ``(N, K)`` 0/1 of the evaluated split.

    Returns:
        ``{"average_precision_macro", "average_precision_micro", "average_precision_macro_all_classes"}``.
        Within a class all scores tie, so its AP is the class's share of positives in the split;
        micro AP ranks (patch, class) pairs by class frequency, well above the share of positive labels.
    """
    scores = np.broadcast_to(np.asarray(train_frequency, dtype=np.float64), targets.shape)
    metrics = multilabel_metrics(scores, targets, logits=False, class_order=class_order)
    return {k: metrics[k] for k in PRIOR_FIGURES}


def evaluate(
    archive: str | os.PathLike | ArchiveSource,
    checkpoint: str | os.PathLike,
    split: str = "test",
    out: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 512,
    workers: int | None = None,
    model: str | None = None,
    bands=None,
    threshold: float = 0.5,
    progress: bool = True,
) -> dict:
    """Metrics of a checkpoint on one split of an archive; writes ``metrics.json`` and
    ``per_class.png`` into ``out`` when given.

    Raises:
        CheckpointError: the checkpoint does not match ``model`` / ``bands`` when given.
        TrainingError: the archive lacks the split or the checkpoint's bands.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    state, net = checked_model(checkpoint, model, bands, None)
    net = net.to(dev)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it; its stub lacks it
    config = split_config(str(archive), state)
    dataset = open_dataset(
        archive,
        tuple(state["model_config"]["bands"]),
        state["class_order"],
        config.include_snow_cloud,
        include_snowy=config.include_snowy,
        include_cloudy=config.include_cloudy,
    )
    try:
        indices = split_indices(dataset, split)
        workers = default_workers() if workers is None else workers
        loader = make_loader(dataset, EpochSampler(indices, shuffle=False, pad=False), batch_size, workers, dev, 0)
        try:
            logits, targets, _ = predict(
                net, loader, DevicePreprocess(dataset, dev), prec, progress, desc=f"evaluate {split}"
            )
        except Exception as exc:
            if is_out_of_memory(exc):
                raise oom_error(batch_size, batch_size, dev, prec) from None
            raise
        try:
            frequency = train_label_frequency(dataset)
        except TrainingError:  # an archive without train patches has no prior
            frequency = None
    finally:
        dataset.archive.close()
    metrics = multilabel_metrics(logits, targets, threshold=threshold, class_order=state["class_order"])
    metrics["prior_baseline"] = None if frequency is None else prior_baseline(frequency, targets, state["class_order"])
    metrics.update(
        split=split,
        checkpoint=str(checkpoint),
        model=state["model_config"]["name"],
        bands=state["model_config"]["bands"],
        fusion=state["model_config"]["fusion"],
    )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "metrics.json", metrics)
        plot_per_class(
            metrics,
            out / "per_class.png",
            title=f"{metrics['model']} on {split} (macro AP {metrics['average_precision_macro']:.3f})",
        )
    return metrics
