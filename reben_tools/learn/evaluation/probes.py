"""Frozen-feature probing: linear, MLP and random-forest probes, the field's evaluation protocol.

One implementation serves every source of features: :func:`probe_features` takes train and
test feature matrices (from any encoder), draws each ``--train-fraction`` of the train rows
with :func:`reben_tools.splits.subsets.fraction_indices` (deterministic, stratified), standardises
with the subset's statistics, fits the probes and scores the test rows with
:func:`reben_tools.learn.evaluation.metrics.multilabel_metrics`. :func:`probe` feeds it features of a
``reben train`` checkpoint (or a random-init model) on an archive; :func:`probe_embeddings`
feeds it an embeddings file (``reben embed``) or an in-memory
:class:`reben_tools.learn.evaluation.embeddings.Embeddings`, the entry point of an encoder run on the fly
(``--encoder SPEC``).

Every result also carries the comparison protocol (:mod:`.compare`): each probe refitted on
``repeats`` stratified splits of the held-out patches (the ``heldout`` splits, never seen by the
encoder's training), with the macro / micro AP's standard error and intervals, and, given a
baseline feature set of the same patches, the paired differences and the verdict
(:func:`probe_protocol`).

Owns: PROBES, DEFAULT_FRACTIONS, DEFAULT_REPEATS, PROTOCOL_METRICS, fit_probe, probe_scores,
fit_and_score, probe_features, split_scores, probe_protocol, probe (checkpoint features),
probe_embeddings.
Does not own: prediction (evaluation.py), checkpoint I/O (checkpoints.py), metrics (metrics.py), the
subset draw (splits.subsets), the embeddings file (embeddings.py), tables and figures (probe_report.py,
embedding_map.py, plots.py).
May import: numpy, torch, scikit-learn (lazily); reben_tools.format; reben_tools.splits.subsets;
reben_tools.learn.runtime.config, .devices, .distributed, .loaders, .checkpoints, .evaluation, .metrics,
.models, .plots, .embeddings, .probe_report, .embedding_map, .compare.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.bands import resolve_bands
from reben_tools.format.sources import ArchiveSource
from reben_tools.learn.data.loaders import DevicePreprocess, default_workers, make_loader, open_dataset, split_indices
from reben_tools.learn.evaluation.compare import metric_interval, paired_comparison, repeated_splits
from reben_tools.learn.evaluation.metrics import multilabel_metrics
from reben_tools.learn.evaluation.predict import predict
from reben_tools.learn.evaluation.probe_figure import plot_probes
from reben_tools.learn.evaluation.probe_report import plot_per_class_f2, write_table
from reben_tools.learn.models.classifier import build_model, build_model_from_config
from reben_tools.learn.models.restore import checked_model, split_config
from reben_tools.learn.runtime.config import TrainConfig, TrainingError
from reben_tools.learn.runtime.devices import resolve_device, resolve_precision
from reben_tools.learn.runtime.distributed import EpochSampler
from reben_tools.splits.subsets import SubsetError, fraction_indices

if TYPE_CHECKING:
    from reben_tools.learn.evaluation.embeddings import Embeddings

PROBES = ("linear", "mlp", "random_forest")
DEFAULT_FRACTIONS = (1.0,)
DEFAULT_REPEATS = 10
"""Stratified splits of the held-out patches in the comparison protocol (0 switches it off)."""
PROTOCOL_METRICS = ("average_precision_macro", "average_precision_micro")


def fit_probe(kind: str, x_train: np.ndarray, y_train: np.ndarray, seed: int):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier

    if kind == "linear":
        estimator = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=1.0))
    elif kind == "mlp":
        # no early stopping: scikit-learn would stop on exact-match accuracy, which collapses multi-label fits
        estimator = MLPClassifier(
            hidden_layer_sizes=(256,), alpha=1e-2, max_iter=200, early_stopping=False, random_state=seed
        )
    elif kind == "random_forest":
        estimator = RandomForestClassifier(n_estimators=200, min_samples_leaf=1, n_jobs=-1, random_state=seed)
    else:
        raise ValueError(f"unknown probe {kind!r}; expected one of {list(PROBES)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant label columns, convergence notes
        estimator.fit(x_train, y_train.astype(int))
    return estimator


def probe_scores(estimator, x: np.ndarray, k: int) -> np.ndarray:
    """(N, K) probabilities of the positive class from any of the fitted probes."""
    proba = estimator.predict_proba(x)
    if isinstance(proba, list):  # random forest: one (N, classes seen) array per output
        out = np.zeros((x.shape[0], k))
        for j, (p, classes) in enumerate(zip(proba, estimator.classes_, strict=True)):
            classes = list(classes)
            out[:, j] = p[:, classes.index(1)] if 1 in classes else 0.0
        return out
    return np.asarray(proba, dtype=np.float64)


def fit_and_score(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    probes: tuple[str, ...] = PROBES,
    seed: int = 0,
    class_order: str | list[str] = "alphabetical",
) -> dict[str, dict]:
    """Standardise with the train statistics, fit each probe on train, score test.

    Args:
        x_train: (N, D) features; y_train: (N, K) 0/1 labels; x_test, y_test likewise.
        probes: kinds from :data:`PROBES`.
        seed: random state of the MLP and the random forest.
        class_order: names of the K label columns (see :func:`multilabel_metrics`).

    Returns:
        ``{kind: multilabel_metrics(...) + {"fit_seconds"}}``.
    """
    x_train = np.asarray(x_train, dtype=np.float64)
    x_test = np.asarray(x_test, dtype=np.float64)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    out = {}
    for kind in probes:
        t0 = time.perf_counter()
        estimator = fit_probe(kind, x_train, y_train, seed)
        scores = probe_scores(estimator, x_test, y_test.shape[1])
        m = multilabel_metrics(scores, y_test, logits=False, class_order=class_order)
        m["fit_seconds"] = time.perf_counter() - t0
        out[kind] = m
    return out


def probe_features(
    x_train: np.ndarray,
    y_train: np.ndarray,
    train_ids: list[str],
    x_test: np.ndarray,
    y_test: np.ndarray,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    probes: tuple[str, ...] = PROBES,
    seed: int = 0,
    subset_seed: int = 0,
    class_order: str | list[str] = "alphabetical",
    source: dict | None = None,
    progress: bool = False,
) -> dict:
    """The probing protocol on given features: one fit of every probe per train fraction.

    This is the entry point for any encoder (checkpoint features, embedding files, an encoder
    run on the fly).

    Args:
        x_train: (N, D) float train features; y_train: (N, K) 0/1 labels; train_ids: N patch ids
            (the fraction draw depends on them).
        x_test: (M, D) test features; y_test: (M, K).
        fractions: train fractions in (0, 1]; each is drawn with ``fraction_indices(train_ids,
            y_train, f, subset_seed)``.
        class_order: ``"alphabetical"``, ``"original"`` or the K class names of the label columns.
        source: JSON-ready description of where the features come from.

    Returns:
        ``{"source", "features", "test_samples", "class_order", "runs": [{"train_fraction",
        "train_samples", "probes": {kind: metrics}}], "probes", "train_samples"}``; the last two
        repeat the last run's (back-compatible with the single-fit result).
    """
    from reben_tools.format.labels import class_names

    names = list(class_names(class_order)) if isinstance(class_order, str) else list(class_order)
    if x_train.ndim != 2 or x_test.ndim != 2 or x_train.shape[1] != x_test.shape[1]:
        raise TrainingError(
            f"train features {x_train.shape} and test features {x_test.shape} must be (N, D) with one D"
        )
    if len(train_ids) != len(x_train) or len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise TrainingError("features, labels and patch ids differ in length")
    runs = []
    for fraction in fractions:
        try:
            rows = fraction_indices(train_ids, y_train, fraction, subset_seed, names)
        except SubsetError as exc:
            raise TrainingError(str(exc)) from None
        if progress:
            print(f"probing on {len(rows):,} train rows (fraction {fraction:g}) ...", flush=True)
        scored = fit_and_score(x_train[rows], y_train[rows], x_test, y_test, probes, seed, names)
        runs.append({"train_fraction": float(fraction), "train_samples": len(rows), "probes": scored})
    return {
        "source": source or {},
        "features": int(x_train.shape[1]),
        "test_samples": len(x_test),
        "class_order": class_order if isinstance(class_order, str) else names,
        "subset_seed": int(subset_seed),
        "seed": int(seed),
        "runs": runs,
        "probes": runs[-1]["probes"],
        "train_samples": runs[-1]["train_samples"],
    }


def split_scores(
    x: np.ndarray, y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], kind: str, seed: int = 0
) -> list[np.ndarray]:
    """Probability scores of each split's evaluation rows, from probe ``kind`` fitted on its fit rows.

    Each fit standardises with its own fit rows' statistics, as :func:`fit_and_score` does.
    """
    x = np.asarray(x, dtype=np.float64)
    out = []
    for fit, rest in splits:
        mean, std = x[fit].mean(0), x[fit].std(0) + 1e-8
        estimator = fit_probe(kind, (x[fit] - mean) / std, y[fit], seed)
        out.append(probe_scores(estimator, (x[rest] - mean) / std, y.shape[1]))
    return out


def probe_protocol(
    x: np.ndarray,
    y: np.ndarray,
    patch_ids: list[str],
    baseline: np.ndarray | None = None,
    probes: tuple[str, ...] = ("linear",),
    repeats: int = DEFAULT_REPEATS,
    eval_share: float = 0.5,
    seed: int = 0,
    n_boot: int = 1000,
    pool: str = "test",
    baseline_name: str | None = None,
) -> dict:
    """The comparison protocol (:mod:`.compare`) on a pool of held-out patches.

    Args:
        x: (N, D) features of the pool's patches; y: (N, K) 0/1 labels; patch_ids: N ids.
        baseline: (N, D') features of the same patches (same rows) from another encoder, or None.
        probes: kinds from :data:`PROBES` to refit on every split.
        repeats: stratified splits (:func:`~.compare.repeated_splits`); each fits on
            ``1 - eval_share`` of the pool and scores the rest.
        seed: the first split's seed (split r uses ``seed + r``; the probes' own random state is 0).
        pool: what the pool is, for the report (e.g. ``test``).

    Returns:
        ``{"pool", "patches", "repeats", "eval_share", "fit_samples", "eval_samples", "level",
        "probes": {kind: {metric: metric_interval(...)}}}`` plus, with a baseline,
        ``"baseline"`` and ``"comparison": {kind: {metric: paired_comparison(...)}}``.
    """
    try:
        splits = repeated_splits(patch_ids, y, repeats, eval_share, seed)
    except (ValueError, SubsetError) as exc:
        raise TrainingError(f"comparison protocol on the {pool} patches: {exc} (--repeats 0 turns it off)") from None
    rows = [rest for _, rest in splits]
    fit_sizes = [len(fit) for fit, _ in splits]
    out: dict = {
        "pool": pool,
        "patches": len(patch_ids),
        "repeats": repeats,
        "eval_share": eval_share,
        "split_seeds": [seed + r for r in range(repeats)],
        "fit_samples": fit_sizes,
        "eval_samples": [len(r) for r in rows],
        "level": 0.95,
        "probes": {},
    }
    if baseline is not None:
        out["baseline"] = baseline_name or "baseline"
        out["comparison"] = {}
    for kind in probes:
        scores = split_scores(x, y, splits, kind)
        out["probes"][kind] = {
            m: metric_interval(scores, y, rows, m, "splits", fit_sizes, n_boot, seed) for m in PROTOCOL_METRICS
        }
        if baseline is not None:
            base = split_scores(baseline, y, splits, kind)
            out["comparison"][kind] = {
                m: paired_comparison(scores, base, y, rows, m, "splits", fit_sizes, n_boot, seed)
                for m in PROTOCOL_METRICS
            }
    return out


def _archive_features(net, dataset, splits, batch_size, workers, dev, prec, seed, progress, caps=None) -> dict:
    """{split: (features float64, labels, patch ids)} of ``net`` on ``dataset``'s ``splits``."""
    ids = dataset.patch_ids
    feats = {}
    for split in splits:
        indices = split_indices(dataset, split)
        cap = (caps or {}).get(split)
        if cap is not None and cap < len(indices):
            rng = np.random.default_rng(seed)
            indices = np.sort(rng.choice(indices, size=cap, replace=False))
        loader = make_loader(dataset, EpochSampler(indices, shuffle=False, pad=False), batch_size, workers, dev, seed)
        x, y, order = predict(
            net, loader, DevicePreprocess(dataset, dev), prec, progress, desc=f"features {split}", features=True
        )
        feats[split] = (x.astype(np.float64), y, [ids[i] for i in order])
    return feats


def _pool(feats: dict, heldout: tuple[str, ...]):
    """Features, labels and ids of the held-out splits, stacked in split order."""
    x = np.concatenate([feats[s][0] for s in heldout])
    y = np.concatenate([feats[s][1] for s in heldout])
    return x, y, [i for s in heldout for i in feats[s][2]]


def write_probe_outputs(results: dict, out: Path) -> None:
    """``probe.json``, ``probe.md``, ``probes.png`` and ``per_class_f2.png`` in ``out`` (both modes)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "probe.json", results)
    write_table(results, out / "probe.md")
    plot_probes(results, out / "probes.png")
    plot_per_class_f2(results, out / "per_class_f2.png")


def probe(
    archive: str | os.PathLike | ArchiveSource,
    checkpoint: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    model: str | None = None,
    bands=None,
    fusion: str = "early",
    probes: tuple[str, ...] = PROBES,
    train_split: str = "train",
    test_split: str = "test",
    max_train_samples: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 256,
    workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    subset_seed: int = 0,
    repeats: int = DEFAULT_REPEATS,
    eval_share: float = 0.5,
    heldout: tuple[str, ...] = ("test",),
    baseline: str | None = None,
) -> dict:
    """Frozen-encoder representation probing of a ``reben train`` checkpoint on an archive.

    Features (the classifier's input, before dropout and head) are extracted with the
    checkpoint's encoder -- or a randomly initialised ``model`` on ``bands`` when no checkpoint
    is given, the usual baseline -- for ``train_split`` and ``test_split``, and probed with
    :func:`probe_features`: a linear probe (one-vs-rest logistic regression, C=1), a small MLP
    (one hidden layer of 256, L2 1e-2, 200 Adam epochs) and a random forest (200 trees), fitted
    on each of ``fractions`` of the train split. ``max_train_samples`` (older option) first
    caps the train split by a uniform random draw. With ``repeats`` > 0 the comparison protocol
    (:func:`probe_protocol`) runs on the ``heldout`` splits; ``baseline`` (``"random"``: the
    checkpoint's model and bands, randomly initialised with ``seed``; or another checkpoint)
    adds the paired comparison. Returns (and writes to ``out``: ``probe.json``, ``probe.md``,
    ``probes.png``, ``per_class_f2.png``) the test metrics.
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
    base_net = None
    if baseline is not None and repeats > 0:
        if baseline == "random":
            if checkpoint is None:
                raise TrainingError("--baseline random compares a checkpoint with its random init: give --checkpoint")
            torch.manual_seed(seed)
            base_net = build_model_from_config(net.config)
        else:
            _, base_net = checked_model(baseline, net.config["name"], list(net.config["bands"]), None)
        base_net = base_net.to(dev)
    net = net.to(dev)
    band_list = tuple(net.config["bands"])
    workers = default_workers() if workers is None else workers
    dataset = open_dataset(
        archive,
        band_list,
        config.class_order,
        config.include_snow_cloud,
        include_snowy=config.include_snowy,
        include_cloudy=config.include_cloudy,
    )
    needed = tuple(dict.fromkeys((train_split, test_split, *(heldout if repeats > 0 else ()))))
    try:
        args = (batch_size, workers, dev, prec, seed, progress)
        feats = _archive_features(net, dataset, needed, *args, caps={train_split: max_train_samples})
        base_feats = None if base_net is None else _archive_features(base_net, dataset, heldout, *args)
    finally:
        dataset.archive.close()
    x_train, y_train, train_ids = feats[train_split]
    x_test, y_test, _ = feats[test_split]
    results = probe_features(
        x_train,
        y_train,
        train_ids,
        x_test,
        y_test,
        fractions,
        probes,
        seed,
        subset_seed,
        config.class_order,
        source,
        progress,
    )
    if repeats > 0:
        x_pool, y_pool, pool_ids = _pool(feats, heldout)
        base_x = None if base_feats is None else _pool(base_feats, heldout)[0]
        results["protocol"] = probe_protocol(
            x_pool,
            y_pool,
            pool_ids,
            base_x,
            probes,
            repeats,
            eval_share,
            subset_seed,
            pool="+".join(heldout),
            baseline_name=None if baseline is None else ("random init" if baseline == "random" else str(baseline)),
        )
    if out is not None:
        write_probe_outputs(results, Path(out))
    return results


def probe_embeddings(
    embeddings: str | os.PathLike | Embeddings,
    out: str | os.PathLike | None = None,
    modality: str = "auto",
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    probes: tuple[str, ...] = PROBES,
    seed: int = 0,
    subset_seed: int = 0,
    train_split: str = "train",
    test_split: str = "test",
    embedding_map: bool = True,
    map_points: int = 3000,
    progress: bool = True,
    repeats: int = DEFAULT_REPEATS,
    eval_share: float = 0.5,
    heldout: tuple[str, ...] = ("test",),
    baseline: str | os.PathLike | Embeddings | None = None,
) -> dict:
    """The probing protocol on an embeddings file (``reben embed``'s output).

    ``embeddings`` is the file, or an :class:`reben_tools.learn.evaluation.embeddings.Embeddings` already in
    memory (an encoder run on the fly, ``--encoder SPEC``, builds one and calls this).
    Fits on ``train_split``'s rows of ``modality`` (``auto``: joint, else s2, else s1), scores
    ``test_split``'s. With ``repeats`` > 0, the comparison protocol (:func:`probe_protocol`) on
    the rows of the ``heldout`` splits; ``baseline`` (another embeddings file of the same
    patches, the same modality) adds the paired comparison. Writes to ``out``: ``probe.json``
    (the :func:`probe_features` result plus the modality, encoder and protocol), ``probe.md``
    (the study's table per fraction and the protocol's intervals), ``probes.png``,
    ``per_class_f2.png`` and, with ``embedding_map``, ``embedding_map.png`` (a 2-D map of at most
    ``map_points`` test embeddings, one panel per class).

    Raises:
        EmbeddingsError: the file breaks the schema, or lacks the modality or a split; the
            baseline lacks a patch of the pool or gives it other labels.
    """
    from reben_tools.learn.evaluation.embeddings import EmbeddingsError

    emb = _as_embeddings(embeddings, modality)
    modality = emb.resolve_modality(modality)
    train_rows, test_rows = emb.require(train_split, modality), emb.require(test_split, modality)
    x = emb.vectors[modality]
    source = {
        "embeddings": str(emb.path),
        "modality": modality,
        "encoder": emb.encoder,
        "rows_without_embedding": int((~emb.valid[modality]).sum()),
    }
    results = probe_features(
        x[train_rows],
        emb.labels[train_rows],
        [emb.patch_ids[i] for i in train_rows],
        x[test_rows],
        emb.labels[test_rows],
        fractions,
        probes,
        seed,
        subset_seed,
        "alphabetical",
        source,
        progress,
    )
    results["modality"] = modality
    if repeats > 0:
        pool = np.concatenate([emb.require(split, modality) for split in heldout])
        base_x = None
        if baseline is not None:
            base = _as_embeddings(baseline, modality)
            where = {pid: i for i, pid in enumerate(base.patch_ids)}
            missing = [emb.patch_ids[i] for i in pool if emb.patch_ids[i] not in where]
            if missing:
                raise EmbeddingsError(f"{base.path}: {len(missing)} held-out patch(es) missing, e.g. {missing[0]}")
            base_rows = np.array([where[emb.patch_ids[i]] for i in pool])
            if not base.valid[modality][base_rows].all():
                raise EmbeddingsError(f"{base.path}: held-out patches without a {modality!r} embedding")
            if not np.array_equal(base.labels[base_rows] != 0, emb.labels[pool] != 0):
                raise EmbeddingsError(f"{base.path}: the held-out patches' labels differ from {emb.path}'s")
            base_x = base.vectors[modality][base_rows]
        results["protocol"] = probe_protocol(
            x[pool],
            emb.labels[pool],
            [emb.patch_ids[i] for i in pool],
            base_x,
            probes,
            repeats,
            eval_share,
            subset_seed,
            pool="+".join(heldout),
            baseline_name=None if baseline is None else str(getattr(baseline, "path", baseline)),
        )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if embedding_map:
            from reben_tools.learn.evaluation.embedding_map import draw_embedding_map

            results["embedding_map"] = draw_embedding_map(
                x[test_rows],
                emb.labels[test_rows],
                [emb.patch_ids[i] for i in test_rows],
                out / "embedding_map.png",
                max_points=map_points,
                seed=seed,
                title=f"{modality} embeddings of the {test_split} split",
            )
        write_probe_outputs(results, out)
    return results


def _as_embeddings(embeddings, modality: str):
    from reben_tools.learn.evaluation.embeddings import Embeddings, read_embeddings

    if isinstance(embeddings, Embeddings):
        return embeddings
    return read_embeddings(embeddings, modalities=None if modality == "auto" else [modality])
