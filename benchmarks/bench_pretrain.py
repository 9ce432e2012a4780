"""CROMA pretraining on CPU: does croma_micro learn, and how fast does it train?

On the demo archive (``reben demo``), in one process:

  (a) random init: croma_micro with fresh weights (several seeds), frozen and embedded;
  (b) pretrained: ``reben pretrain --model croma_micro`` for a fixed budget (epochs x batch),
      then frozen and embedded the same way, from the run directory.

For each encoder: linear-probe test macro AP (scikit-learn one-vs-rest LogisticRegression
on the standardised frozen ``joint`` embeddings of the train split, scored on the test
split with the project's ``multilabel_metrics``; the headline protocol, fixed before any run)
and the same probe on ``s1``, ``s2`` and their concatenation with ``joint`` (``concat``),
reported alongside, and S1->S2 retrieval recall@1 on the test
split (cosine similarity of the pooled ``s1`` and ``s2`` embeddings; chance is 1/N).
The pretraining throughput (samples/s, median over epochs) and data-wait share come from the
run's own per-epoch records (``metrics.json``), as ``reben train`` reports them; the baseline,
measured right after each run in the same process, is the pretraining step alone on one
batch held in memory (no data loading).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_pretrain.py --archive /tmp/croma-demo/archive \
        --epochs 40 --batch-size 32 --seeds 0 1 --random-seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from reben_tools.format.bands import PUBLISHED_STATISTICS
from reben_tools.format.labels import class_names
from reben_tools.learn.evaluation.embed import embed_archive
from reben_tools.learn.evaluation.metrics import multilabel_metrics
from reben_tools.learn.models.croma import CONFIGS, CROMA
from reben_tools.learn.models.encoders import S1, S2, CromaEncoder, InputSpec, load_encoder
from reben_tools.learn.training.pretrain import PretrainConfig, pretrain


def read_embeddings(path: Path) -> dict:
    table = pq.read_table(path)
    names = class_names("alphabetical")
    labels = np.zeros((table.num_rows, len(names)), np.float32)
    for i, row in enumerate(table.column("labels").to_pylist()):
        for name in row:
            labels[i, names.index(name)] = 1
    out = {"split": np.asarray(table.column("split").to_pylist()), "labels": labels}
    for c in ("s1", "s2", "joint"):
        out[c] = np.asarray(table.column(c).to_pylist(), dtype=np.float32)
    return out


PROBE_FEATURES = ("joint", "s1", "s2", "concat")
"""Frozen features the linear probe is run on; ``joint`` is the headline, the rest are reported alongside."""


def features(emb: dict, name: str) -> np.ndarray:
    return np.concatenate([emb["s1"], emb["s2"], emb["joint"]], axis=1) if name == "concat" else emb[name]


def linear_probe_ap(emb: dict, seed: int = 0, feature: str = "joint") -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    train, test = emb["split"] == "train", emb["split"] == "test"
    x = features(emb, feature)
    scaler = StandardScaler().fit(x[train])
    y = emb["labels"][train]
    keep = (y.sum(0) > 0) & (y.sum(0) < len(y))  # a class with one value in train cannot be fitted
    clf = OneVsRestClassifier(LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(scaler.transform(x[train]), y[:, keep])
    scores = np.full((int(test.sum()), y.shape[1]), -1e4, np.float64)
    scores[:, keep] = clf.decision_function(scaler.transform(x[test]))
    return float(multilabel_metrics(scores, emb["labels"][test])["average_precision_macro"])


def recall_at_1(emb: dict) -> tuple[float, int]:
    test = emb["split"] == "test"
    a = emb["s1"][test] / np.linalg.norm(emb["s1"][test], axis=1, keepdims=True)
    b = emb["s2"][test] / np.linalg.norm(emb["s2"][test], axis=1, keepdims=True)
    hits = (a @ b.T).argmax(axis=1) == np.arange(len(a))
    return float(hits.mean()), len(a)


def resident_throughput(archive: str, batch_size: int, lr: float, steps: int = 20) -> float:
    """Samples/s of the pretraining step alone (masking, both losses, backward, AdamW) on one resident batch."""
    from reben_tools.learn.data.dataset import ReBENDataset
    from reben_tools.learn.models.croma import croma_scale
    from reben_tools.learn.models.croma_losses import croma_losses

    ds = ReBENDataset(archive, split="train", bands="ALL")
    x = croma_scale(torch.stack([ds[i]["image"] for i in range(batch_size)]))
    ds.archive.close()
    model = CROMA(CONFIGS["croma_micro"], pretraining=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        losses = croma_losses(model(x[:, :2], x[:, 2:], 0.75))
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - start)


def evaluate(archive: str, encoder, path: Path) -> dict:
    embed_archive(archive, encoder, path, workers=0, progress=False)
    emb = read_embeddings(path)
    r1, n = recall_at_1(emb)
    probes = {f"linear_probe_test_ap_macro_{f}": linear_probe_ap(emb, feature=f) for f in PROBE_FEATURES[1:]}
    return {"linear_probe_test_ap_macro": linear_probe_ap(emb), **probes, "s1_to_s2_recall_at_1": r1, "test_patches": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", default="/tmp/croma-demo/archive")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=1000,
        help="linear warm-up steps (capped by the pretraining loop's effective_warmup)",
    )
    parser.add_argument("--keep-runs", default=None, help="keep the pretraining run directories here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/pretrain.json")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if not Path(args.archive, "manifest.json").is_file():
        demo = str(Path(args.archive).parent)
        subprocess.run(
            [sys.executable, "-m", "reben_tools.cli", "demo", "--out", demo, "--workers", "1", "--no-progress"],
            check=True,
        )
    results: dict = {
        "archive": args.archive,
        "budget": {
            "model": "croma_micro",
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup_steps": args.warmup_steps,
        },
        "random": [],
        "pretrained": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.random_seeds:
            torch.manual_seed(seed)
            encoder = CromaEncoder(
                CROMA(CONFIGS["croma_micro"]),
                InputSpec(S1, S2, dict(PUBLISHED_STATISTICS)),
                f"random_init_seed{seed}",
                "none",
            )
            results["random"].append({"seed": seed, **evaluate(args.archive, encoder, Path(tmp, f"r{seed}.parquet"))})
            print("random", results["random"][-1], flush=True)
        for seed in args.seeds:
            run = Path(args.keep_runs or tmp, f"run{seed}")
            start = time.perf_counter()
            pretrain(
                PretrainConfig(
                    archive=args.archive,
                    model="croma_micro",
                    out=str(run),
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    warmup_steps=args.warmup_steps,
                    seed=seed,
                    workers=0,
                    progress=False,
                    device="cpu",
                )
            )
            seconds = time.perf_counter() - start
            resident = resident_throughput(args.archive, args.batch_size, args.lr)
            history = json.loads((run / "metrics.json").read_text())["epochs"]
            record = {
                "seed": seed,
                "pretrain_seconds": round(seconds, 1),
                "train_samples_per_s": statistics.median(h["train_samples_per_s"] for h in history),
                "data_wait_fraction": statistics.median(h["data_wait_fraction"] for h in history),
                "resident_batch_samples_per_s": resident,
                "final_train": history[-1]["train"],
                "final_validation": history[-1].get("validation"),
                **evaluate(args.archive, load_encoder(str(run)), Path(tmp, f"p{seed}.parquet")),
            }
            results["pretrained"].append(record)
            record["warmup_steps_used"] = json.loads((run / "config.json").read_text())["warmup_steps_used"]
            print("pretrained", {k: v for k, v in record.items() if not k.startswith("final")}, flush=True)
            Path(args.out).write_text(json.dumps(results, indent=2))  # partial results survive an interrupted run
    keys = [
        "linear_probe_test_ap_macro",
        *(f"linear_probe_test_ap_macro_{f}" for f in PROBE_FEATURES[1:]),
        "s1_to_s2_recall_at_1",
    ]
    for key in keys:
        rnd = [r[key] for r in results["random"]]
        pre = [r[key] for r in results["pretrained"]]
        results[f"margin_{key}"] = {
            "random_mean": statistics.mean(rnd),
            "random_max": max(rnd),
            "random_stdev": statistics.pstdev(rnd),
            "pretrained_mean": statistics.mean(pre),
            "pretrained_min": min(pre),
            "pretrained_stdev": statistics.pstdev(pre),
            "min_pretrained_minus_max_random": min(pre) - max(rnd),
        }
    results["chance_recall_at_1"] = 1 / results["random"][0]["test_patches"]
    results["torch_threads"] = torch.get_num_threads()
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k.startswith(("margin", "chance"))}, indent=2))


if __name__ == "__main__":
    main()
