"""Cross-modal retrieval on an embeddings file: S1 queries against S2, and the reverse.

For the test patches that have both an ``s1`` and an ``s2`` embedding (N pairs), each S1
embedding is a query against all N S2 embeddings of those patches (and the reverse). The
similarity is the cosine (embeddings are L2-normalised). The rank of a query is 1 + the number
of other gallery items scoring at least as high as its own partner (ties count against the
query, so constant embeddings score chance-like, never perfect). Reported: recall@k (share of
queries whose partner ranks within k) for k = 1, 5, 10, the median and mean rank, and chance:
recall@k = k / N, median rank (N + 1) / 2.

Owns: RECALL_AT, retrieval_ranks, rank_summary, retrieve, plot_retrieval.
Does not own: reading embeddings (embeddings.py).
May import: numpy, torch, matplotlib (lazily); reben_tools.format.atomic; reben_tools.learn.evaluation.embeddings.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from reben_tools.format.atomic import save_figure_atomic, write_json_atomic
from reben_tools.learn.evaluation.embeddings import EmbeddingsError, read_embeddings

RECALL_AT = (1, 5, 10)
_BLOCK = 1024


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Rank (1 = best) of each query's partner (same row) in the gallery, by cosine similarity.

    Args:
        queries: (N, D) float embeddings; gallery: (N, D'), D' = D; row i of each is one patch.

    Returns:
        int64 (N,) ranks; ties with the partner count against the query.
    """
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32), device=device)
    g = torch.as_tensor(np.asarray(gallery, dtype=np.float32), device=device)
    if q.ndim != 2 or q.shape != g.shape:
        raise ValueError(f"queries {tuple(q.shape)} and gallery {tuple(g.shape)} must both be (N, D)")
    q = torch.nn.functional.normalize(q, dim=1)
    g = torch.nn.functional.normalize(g, dim=1)
    ranks = torch.empty(q.shape[0], dtype=torch.int64)
    for start in range(0, q.shape[0], _BLOCK):
        stop = min(start + _BLOCK, q.shape[0])
        scores = q[start:stop] @ g.T  # (b, N)
        rows = torch.arange(stop - start, device=scores.device)
        own = scores[rows, rows + start]
        ranks[start:stop] = (scores >= own[:, None]).sum(dim=1).cpu()
    return ranks.numpy()


def rank_summary(ranks: np.ndarray) -> dict:
    """recall@k for :data:`RECALL_AT`, median and mean rank of ``ranks``."""
    ranks = np.asarray(ranks)
    out = {f"recall@{k}": float((ranks <= k).mean()) for k in RECALL_AT}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(ranks.mean())
    return out


def retrieve(
    embeddings: str | os.PathLike, out: str | os.PathLike | None = None, split: str = "test", device: str = "cpu"
) -> dict:
    """S1->S2 and S2->S1 retrieval over ``split``'s patches with both embeddings.

    Writes ``out/retrieval.json`` (the returned dict) and ``out/retrieval.png`` (recall@k
    against k for both directions and chance).

    Raises:
        EmbeddingsError: the file breaks the schema, lacks ``s1`` or ``s2`` embeddings, or the
            two have different dimensions.
    """
    emb = read_embeddings(embeddings, modalities=("s1", "s2"))
    for modality in ("s1", "s2"):
        if modality not in emb.modalities:
            raise EmbeddingsError(
                f"{emb.path}: no {modality!r} embeddings; retrieval needs both s1 and s2 "
                f"(the file has {emb.modalities})"
            )
    if emb.dim("s1") != emb.dim("s2"):
        raise EmbeddingsError(
            f"{emb.path}: 's1' embeddings have dimension {emb.dim('s1')} and 's2' {emb.dim('s2')}; "
            "cross-modal retrieval needs one shared dimension"
        )
    rows = np.flatnonzero((emb.splits == split) & emb.valid["s1"] & emb.valid["s2"])
    if rows.size == 0:
        raise EmbeddingsError(f"{emb.path}: no {split!r} patch has both s1 and s2 embeddings")
    s1, s2 = emb.vectors["s1"][rows], emb.vectors["s2"][rows]
    n = int(rows.size)
    ranks = {"s1_to_s2": retrieval_ranks(s1, s2, device), "s2_to_s1": retrieval_ranks(s2, s1, device)}
    result = {
        "embeddings": str(embeddings),
        "split": split,
        "pairs": n,
        "similarity": "cosine",
        "ties": "counted against the query",
        "encoder": emb.encoder,
        "s1_to_s2": rank_summary(ranks["s1_to_s2"]),
        "s2_to_s1": rank_summary(ranks["s2_to_s1"]),
        "chance": {
            **{f"recall@{k}": min(1.0, k / n) for k in RECALL_AT},
            "median_rank": (n + 1) / 2,
            "mean_rank": (n + 1) / 2,
        },
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "retrieval.json", result)
        plot_retrieval(ranks, n, out / "retrieval.png")
    return result


def plot_retrieval(ranks: dict[str, np.ndarray], n: int, path: Path) -> None:
    """recall@k against k (log axis) for each direction and chance (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = np.unique(np.round(np.logspace(0, np.log10(max(n, 1)), 200)).astype(int))
    fig, ax = plt.subplots(figsize=(7, 5.2))
    names = {"s1_to_s2": "S1 query -> S2 gallery", "s2_to_s1": "S2 query -> S1 gallery"}
    for key, r in ranks.items():
        curve = (np.sort(r)[None, :] <= k[:, None]).mean(axis=1)
        ax.plot(k, curve, label=f"{names[key]} (R@1 {100 * (r <= 1).mean():.1f}%, median rank {np.median(r):g})")
    ax.plot(k, np.minimum(1.0, k / n), "k--", label=f"chance (R@1 {100 / n:.2f}%, median rank {(n + 1) / 2:g})")
    for at in (1, 5, 10):
        if at <= n:
            ax.axvline(at, color="0.85", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set(
        xlabel="k (rank cut-off)",
        ylabel="recall@k",
        ylim=(0, 1.02),
        xlim=(1, max(n, 2)),
        title=f"cross-modal retrieval over {n:,} test patches",
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
