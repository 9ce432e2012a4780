"""The embedding map: a 2-D projection of test embeddings, one panel per class, one-vs-rest coloured.

At most ``max_points`` embeddings are drawn, chosen with the stratified subset draw of
:func:`reben_tools.splits.subsets.fraction_indices` (every class present keeps a point).
They are reduced to 50 dimensions with PCA, then projected to 2-D with UMAP when
``umap-learn`` is importable (``pip install umap-learn``; not a dependency: it brings numba
and llvmlite), else with scikit-learn's t-SNE (PCA initialisation, perplexity 30 or less for
few points). Each panel colours the class's positives over the grey rest and gives a
separability figure measured in the map: the mean share of positives among the 10 nearest
neighbours of each positive (``kNN``) against the share of positives among all points
(``base``); a class that separates has ``kNN`` well above ``base``.

Owns: project_2d, knn_purity, draw_embedding_map.
Does not own: reading embeddings (embeddings.py), the probes (probes.py).
May import: numpy, scikit-learn, umap (optional), matplotlib (all lazily); reben_tools.format.labels,
reben_tools.splits.subsets.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import numpy as np

from reben_tools.format.atomic import save_figure_atomic
from reben_tools.format.labels import class_names
from reben_tools.splits.subsets import fraction_indices

NEIGHBOURS = 10


def project_2d(x: np.ndarray, seed: int = 0, method: str = "auto") -> tuple[np.ndarray, str]:
    """(N, D) features -> ((N, 2) float32 map, method used: ``"umap"`` or ``"tsne"``).

    ``method="auto"`` uses UMAP where ``umap-learn`` imports, t-SNE otherwise.
    """
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    if x.shape[1] > 50 and x.shape[0] > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    if method == "auto":
        method = "umap" if importlib.util.find_spec("umap") is not None else "tsne"
    if method == "umap":
        import umap

        xy = umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    else:
        raise ValueError(f"unknown projection {method!r}; expected auto, umap or tsne")
    return np.asarray(xy, dtype=np.float32), method


def knn_purity(xy: np.ndarray, positive: np.ndarray, k: int = NEIGHBOURS) -> float | None:
    """Mean share of positives among the ``k`` nearest other points of each positive; None without positives."""
    from sklearn.neighbors import NearestNeighbors

    positive = np.asarray(positive, dtype=bool)
    if not positive.any() or len(xy) < 2:
        return None
    k = min(k, len(xy) - 1)
    _, neighbours = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy[positive])
    return float(positive[neighbours[:, 1:]].mean())


def draw_embedding_map(
    x: np.ndarray,
    labels: np.ndarray,
    patch_ids: list[str],
    path: Path,
    max_points: int = 3000,
    seed: int = 0,
    title: str = "",
    method: str = "auto",
) -> dict:
    """Project ``x`` and draw the one-vs-rest panels to ``path`` (PNG); see :func:`embedding_map_figure`.

    Returns:
        ``{"method", "points", "classes": {name: {"positives", "knn", "base"}}}``.
    """
    import matplotlib.pyplot as plt

    fig, summary = embedding_map_figure(x, labels, patch_ids, max_points, seed, title, method)
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
    return summary


def embedding_map_figure(
    x: np.ndarray,
    labels: np.ndarray,
    patch_ids: list[str],
    max_points: int = 3000,
    seed: int = 0,
    title: str = "",
    method: str = "auto",
):
    """The embedding map as a Figure: a 2-D projection of ``x``, one panel per class, one-vs-rest.

    Args:
        x: (N, D) embeddings; labels: (N, 19) 0/1 in alphabetical class order; patch_ids: N ids
            (the subsample draw of at most ``max_points`` depends on them).

    Returns:
        (matplotlib Figure, ``{"method", "points", "classes": {name: {"positives", "knn", "base"}}}``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels) != 0
    if len(x) > max_points:
        rows = fraction_indices(patch_ids, labels, max_points / len(x), seed)
        x, labels = x[rows], labels[rows]
    xy, used = project_2d(x, seed, method)
    names = class_names("alphabetical")
    summary: dict = {"method": used, "points": len(xy), "classes": {}}
    cols = 5
    rows_n = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 3.5 * rows_n + 0.6))
    size = float(np.clip(3000.0 / max(1, len(xy)), 1.0, 12.0))
    for j, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if j >= len(names):
            ax.axis("off")
            continue
        pos = labels[:, j]
        ax.scatter(xy[~pos, 0], xy[~pos, 1], s=size, c="#c8c8c8", linewidths=0, rasterized=True)
        ax.scatter(xy[pos, 0], xy[pos, 1], s=size * 1.5, c="#d62728", linewidths=0, rasterized=True)
        purity = knn_purity(xy, pos)
        base = float(pos.mean()) if len(pos) else 0.0
        summary["classes"][names[j]] = {"positives": int(pos.sum()), "knn": purity, "base": base}
        wrapped = "\n".join(textwrap.wrap(names[j], 36))
        stats = (
            f"n={int(pos.sum())}, kNN {purity:.2f} vs base {base:.2f}"
            if purity is not None
            else "no positives among these points"
        )
        ax.set_title(f"{wrapped}\n{stats}", fontsize=7.5)
    method_name = {"umap": "UMAP", "tsne": "t-SNE"}[used]
    fig.suptitle(
        f"{title or 'embedding map'}: {method_name} of {len(xy):,} points; red = class, grey = rest", fontsize=11
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig, summary
