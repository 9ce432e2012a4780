"""Frozen-encoder representation probing: linear, MLP and random-forest probes on encoder features.

Owns: PROBES, probe (feature extraction, standardisation, probe fitting and scoring).
Does not own: prediction (evaluation.py), checkpoint I/O (checkpoints.py), metrics (metrics.py), the bar chart (plots.py).
May import: numpy, torch, scikit-learn (lazily); reben_tools.format; reben_tools.learn.config, .devices,
.distributed, .loaders, .checkpoints, .evaluation, .metrics, .models, .plots.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.bands import resolve_bands
from reben_tools.learn.checkpoints import checked_model, split_config
from reben_tools.learn.config import TrainConfig, TrainingError
from reben_tools.learn.devices import resolve_device, resolve_precision
from reben_tools.learn.distributed import EpochSampler
from reben_tools.learn.evaluation import predict
from reben_tools.learn.loaders import DevicePreprocess, default_workers, make_loader, open_dataset, split_indices
from reben_tools.learn.metrics import multilabel_metrics
from reben_tools.learn.models import build_model
from reben_tools.learn.plots import plot_probes


PROBES = ("linear", "mlp", "random_forest")


def _fit_probe(kind: str, x_train: np.ndarray, y_train: np.ndarray, seed: int):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier

    if kind == "linear":
        estimator = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=1.0))
    elif kind == "mlp":
        # no early stopping: scikit-learn would stop on exact-match accuracy, which collapses multi-label fits
        estimator = MLPClassifier(hidden_layer_sizes=(256,), alpha=1e-2, max_iter=200, early_stopping=False,
                                  random_state=seed)
    elif kind == "random_forest":
        estimator = RandomForestClassifier(n_estimators=200, min_samples_leaf=1, n_jobs=-1, random_state=seed)
    else:
        raise ValueError(f"unknown probe {kind!r}; expected one of {list(PROBES)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant label columns, convergence notes
        estimator.fit(x_train, y_train.astype(int))
    return estimator


def _probe_scores(estimator, x: np.ndarray, k: int) -> np.ndarray:
    """(N, K) probabilities of the positive class from any of the fitted probes."""
    proba = estimator.predict_proba(x)
    if isinstance(proba, list):  # random forest: one (N, classes seen) array per output
        out = np.zeros((x.shape[0], k))
        for j, (p, classes) in enumerate(zip(proba, estimator.classes_)):
            classes = list(classes)
            out[:, j] = p[:, classes.index(1)] if 1 in classes else 0.0
        return out
    return np.asarray(proba, dtype=np.float64)


def probe(archive: str | os.PathLike, checkpoint: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
          model: str | None = None, bands=None, fusion: str = "early", probes: tuple[str, ...] = PROBES,
          train_split: str = "train", test_split: str = "test", max_train_samples: int | None = None,
          device: str = "auto", precision: str = "auto", batch_size: int = 256, workers: int | None = None,
          seed: int = 0, progress: bool = True) -> dict:
    """Frozen-encoder representation probing.

    Features (the classifier's input, before dropout and head) are extracted with the
    checkpoint's encoder -- or a randomly initialised ``model`` on ``bands`` when no checkpoint
    is given, the usual baseline -- for ``train_split`` and ``test_split``, standardised with
    the train statistics, and a linear probe (one-vs-rest logistic regression, C=1), a small MLP
    (one hidden layer of 256, L2 1e-2, 200 Adam epochs) and a random forest (200 trees) are
    fitted on train. Returns
    (and writes to ``out/metrics.json``, with ``out/probes.png``) the test metrics of each.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if checkpoint is not None:
        state, net = checked_model(checkpoint, model, bands, None)
        config = split_config(str(archive), state)
        source = {"checkpoint": str(checkpoint)}
    else:
        if model is None or bands is None:
            raise TrainingError("probe needs --checkpoint, or --model and --bands for a randomly initialised encoder")
        torch.manual_seed(seed)
        net = build_model(model, bands, fusion=fusion)
        config = TrainConfig(archive=str(archive), bands=list(resolve_bands(bands)), model=model, out="")
        source = {"random_init": model}
    net = net.to(dev)
    band_list = tuple(net.config["bands"])
    workers = default_workers() if workers is None else workers
    feats = {}
    dataset = open_dataset(archive, band_list, config.class_order, config.include_snow_cloud)
    try:
        for split in (train_split, test_split):
            indices = split_indices(dataset, split)
            if split == train_split and max_train_samples is not None and max_train_samples < len(indices):
                rng = np.random.default_rng(seed)
                indices = np.sort(rng.choice(indices, size=max_train_samples, replace=False))
            loader = make_loader(dataset, EpochSampler(indices, shuffle=False, pad=False), batch_size, workers, dev,
                                 seed)
            x, y, _ = predict(net, loader, DevicePreprocess(dataset, dev), prec, progress, desc=f"features {split}",
                              features=True)
            feats[split] = (x.astype(np.float64), y)
    finally:
        dataset.archive.close()
    x_train, y_train = feats[train_split]
    x_test, y_test = feats[test_split]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    results: dict = {"source": source, "features": int(x_train.shape[1]), "train_samples": int(len(x_train)),
                     "test_samples": int(len(x_test)), "probes": {}}
    for kind in probes:
        t0 = time.perf_counter()
        estimator = _fit_probe(kind, x_train, y_train, seed)
        scores = _probe_scores(estimator, x_test, y_test.shape[1])
        m = multilabel_metrics(scores, y_test, logits=False, class_order=config.class_order)
        m["fit_seconds"] = time.perf_counter() - t0
        results["probes"][kind] = m
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "metrics.json", results)
        plot_probes(results, out / "probes.png")
    return results
