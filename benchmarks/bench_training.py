"""Training-step benchmark on CPU: samples/second through the real training loop, data included,
and the share of each step spent waiting for data.

Everything runs in one process, round by round, so the figures are ratios under the same
machine load (the 2 cores of the development VM are shared):

  (a) compute bound: the training step (flips, forward, BCE, backward, AdamW) on one batch
      already in memory, repeated -- no data loading at all;
  (b) the loop of ``reben_tools.learn.training.loop.train`` for one epoch over a generated archive, with
      ``--workers W`` DataLoader workers (native-resolution batches, upsampling and
      normalisation in the loop's device step), read from the loop's own per-epoch record:
      ``train_samples_per_s``, ``data_wait_fraction`` (time blocked in ``next(loader)`` / total
      step time) and ``preprocess_fraction`` (upsampling + normalisation in the loop's device
      step; with workers on a CPU the workers do it and this is ~0).

Usage::

    python benchmarks/bench_training.py --patches 512 --batch-size 64 --rounds 3 --workers 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from training_archive import build_learnable_archive

from reben_tools.format.bands import resolve_bands
from reben_tools.learn.data.augment import random_flips
from reben_tools.learn.models.classifier import build_model
from reben_tools.learn.runtime.config import TrainConfig
from reben_tools.learn.training.loop import train


def compute_bound(model_name: str, bands: str, batch: int, steps: int, seed: int = 0) -> float:
    """Samples/second of the training step alone on a resident batch."""
    torch.manual_seed(seed)
    channels = len(resolve_bands(bands))
    model = build_model(model_name, bands)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    criterion = torch.nn.BCEWithLogitsLoss()
    images = torch.randn(batch, channels, 120, 120)
    labels = (torch.rand(batch, 19) < 0.2).float()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()  # first step warms up allocators
        x = random_flips(images, generator)
        loss = criterion(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - t0)


def loop_epoch(archive_dir: Path, out: Path, model_name: str, bands: str, batch: int, workers: int) -> dict:
    """One epoch of the real loop; returns its record (samples/s, data-wait share)."""
    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(
        archive=str(archive_dir),
        bands=bands,
        model=model_name,
        out=str(out),
        epochs=2,
        batch_size=batch,
        workers=workers,
        device="cpu",
        progress=False,
        evaluate_test=False,
    )
    metrics = train(config)
    return metrics["epochs"][-1]  # the second epoch: persistent workers already started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=512, help="train patches in the generated archive")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="resnet_micro")
    parser.add_argument("--bands", default="S1_10m_20m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the training process")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    try:
        t0 = time.perf_counter()
        build_learnable_archive(tmp / "archive", counts={"train": args.patches, "validation": 32}, shards=2)
        print(f"archive of {args.patches + 32} patches written in {time.perf_counter() - t0:.1f} s", flush=True)
        steps = max(4, args.patches // args.batch_size)
        rows: dict[str, list] = {"compute": []}
        rows.update({f"loop_w{w}": [] for w in args.workers})
        for r in range(args.rounds):
            rows["compute"].append(compute_bound(args.model, args.bands, args.batch_size, steps, seed=r))
            for w in args.workers:
                record = loop_epoch(tmp / "archive", tmp / f"run-{w}", args.model, args.bands, args.batch_size, w)
                rows[f"loop_w{w}"].append(
                    (record["train_samples_per_s"], record["data_wait_fraction"], record["preprocess_fraction"])
                )
            print(
                f"round {r + 1}: compute {rows['compute'][-1]:.1f} samples/s; "
                + "; ".join(
                    f"workers={w}: {rows[f'loop_w{w}'][-1][0]:.1f} samples/s, "
                    f"wait {100 * rows[f'loop_w{w}'][-1][1]:.1f}%, "
                    f"upsample+normalise {100 * rows[f'loop_w{w}'][-1][2]:.1f}%"
                    for w in args.workers
                ),
                flush=True,
            )
        compute = statistics.median(rows["compute"])
        summary = {
            "machine": f"{os.cpu_count()} CPUs (shared)",
            "torch_threads": args.threads,
            "model": args.model,
            "bands": args.bands,
            "batch_size": args.batch_size,
            "patches": args.patches,
            "rounds": args.rounds,
            "compute_bound_samples_per_s": compute,
            "loop": {},
        }
        print(f"\nmedian of {args.rounds} rounds, {args.model} on {args.bands}, batch {args.batch_size}:")
        print(f"  (a) compute bound (resident batch): {compute:8.1f} samples/s   1.00")
        for w in args.workers:
            sps = statistics.median(v[0] for v in rows[f"loop_w{w}"])
            wait = statistics.median(v[1] for v in rows[f"loop_w{w}"])
            prep = statistics.median(v[2] for v in rows[f"loop_w{w}"])
            summary["loop"][w] = {
                "samples_per_s": sps,
                "data_wait_fraction": wait,
                "preprocess_fraction": prep,
                "ratio_to_compute": sps / compute,
            }
            print(
                f"  (b) training loop, {w} worker(s):    {sps:8.1f} samples/s   {sps / compute:.2f}   "
                f"waiting for data {100 * wait:.1f}% of the step, upsample+normalise in the loop {100 * prep:.1f}%"
            )
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
