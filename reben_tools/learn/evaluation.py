"""Predictions of a model over a loader, and a checkpoint's metrics on one split of an archive.

Owns: predict, merge_predictions (de-duplicating several processes' predictions), evaluate.
Does not own: metric definitions (metrics.py), checkpoint I/O (checkpoints.py), probing (probes.py),
validation during training (loop.py).
May import: numpy, torch; reben_tools.format; reben_tools.learn.config, .devices, .distributed, .loaders,
.checkpoints, .metrics.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.labels import NUM_CLASSES
from reben_tools.learn.checkpoints import checked_model, split_config
from reben_tools.learn.devices import autocast, is_out_of_memory, oom_error, resolve_device, resolve_precision
from reben_tools.learn.distributed import EpochSampler
from reben_tools.learn.loaders import DevicePreprocess, default_workers, make_loader, open_dataset, split_indices
from reben_tools.learn.metrics import multilabel_metrics, plot_per_class


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, preprocess: DevicePreprocess, precision: str,
            progress: bool = False, desc: str = "predict", features: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (or encoder features) ``(N, K)`` float32, targets ``(N, 19)`` and dataset indices ``(N,)``.

    Indices come from the loader's sampler order, so predictions of several processes can be
    merged and de-duplicated.
    """
    from tqdm import tqdm

    model.eval()
    outs, targets = [], []
    device = preprocess.device
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images, labels = preprocess(batch)
        with autocast(device, precision):
            out = model.forward_features(images) if features else model(images)
        outs.append(out.float().cpu())
        targets.append(labels.cpu())
    indices = np.asarray(list(iter(loader.sampler)), dtype=np.int64)
    width = model.num_features if features else NUM_CLASSES
    out = torch.cat(outs).numpy() if outs else np.zeros((0, width), np.float32)
    tgt = torch.cat(targets).numpy() if targets else np.zeros((0, NUM_CLASSES), np.float32)
    return out, tgt, indices


def merge_predictions(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Several processes' :func:`predict` results -> (outputs, targets) in dataset-index order, duplicates dropped."""
    out = np.concatenate([p[0] for p in parts])
    tgt = np.concatenate([p[1] for p in parts])
    idx = np.concatenate([p[2] for p in parts])
    _, first = np.unique(idx, return_index=True)
    order = first[np.argsort(idx[first])]
    return out[order], tgt[order]


def evaluate(archive: str | os.PathLike, checkpoint: str | os.PathLike, split: str = "test",
             out: str | os.PathLike | None = None, device: str = "auto", precision: str = "auto",
             batch_size: int = 512, workers: int | None = None, model: str | None = None, bands=None,
             threshold: float = 0.5, progress: bool = True) -> dict:
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
        net = net.to(memory_format=torch.channels_last)
    config = split_config(str(archive), state)
    dataset = open_dataset(archive, tuple(state["model_config"]["bands"]), state["class_order"],
                           config.include_snow_cloud)
    try:
        indices = split_indices(dataset, split)
        workers = default_workers() if workers is None else workers
        loader = make_loader(dataset, EpochSampler(indices, shuffle=False, pad=False), batch_size, workers, dev, 0)
        try:
            logits, targets, _ = predict(net, loader, DevicePreprocess(dataset, dev), prec, progress,
                                         desc=f"evaluate {split}")
        except Exception as exc:
            if is_out_of_memory(exc):
                raise oom_error(batch_size, batch_size, dev, prec) from None
            raise
    finally:
        dataset.archive.close()
    metrics = multilabel_metrics(logits, targets, threshold=threshold, class_order=state["class_order"])
    metrics.update(split=split, checkpoint=str(checkpoint), model=state["model_config"]["name"],
                   bands=state["model_config"]["bands"], fusion=state["model_config"]["fusion"])
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "metrics.json", metrics)
        plot_per_class(metrics, out / "per_class.png",
                       title=f"{metrics['model']} on {split} (macro AP {metrics['average_precision_macro']:.3f})")
    return metrics
