"""CutMix with label propagation on an archive: label noise of naive CutMix, cost of mixing, and accuracy.

Three parts, all in one process (the development VM's 2 cores are shared, so costs are
ratios measured round by round against no mixing in the same process):

  noise       over the archive's train split, mix every sample (probability 1) with a random
              partner for ``--noise-rounds`` rounds; per class, the share of mixed samples whose
              naive label (union of both labels) has a class the mixed reference map lacks
              (erased), the share where the map has a class the union lacks (added), and where
              it has a class the target's own label lacks (added to the target). Also checks,
              on the first round, that the recomputed labels equal the pipeline's labelling of
              every mixed map (labels_from_reference_map). Writes a PNG.
  throughput  one training step (upsampling + normalisation of a native batch, [mixing],
              flips, forward, BCE, backward, AdamW) on a resident batch, samples/s for
              ``none``, ``cutmix`` and ``cutmix-lp``, interleaved rounds, medians; the mixing
              call alone; and the loader's batched read with and without reference maps.
  accuracy    ``reben train`` (the real loop) for ``none``, ``cutmix``, ``cutmix-lp`` at the same
              budget and seeds; test macro/micro AP of the best-validation checkpoint, and the
              comparison protocol (``learn.evaluation.compare``, ``kind="seeds"``): the modes
              paired by seed (same initialisation and data order), a standard error and a
              bootstrap over seeds and test patches, and the verdict of each pair.

Usage::

    reben demo --out /tmp/cutmix-demo
    python benchmarks/bench_cutmix.py --archive /tmp/cutmix-demo/archive --out /tmp/cutmix-bench \\
        --seeds 0 1 2 --epochs 10 --model resnet18
    # results: /tmp/cutmix-bench/results.json and label_noise.png (copied to benchmarks/cutmix.json
    # and benchmarks/cutmix_label_noise.png)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reben_tools.format.bands import resolve_bands
from reben_tools.format.labels import ALPHABETICAL_ORDER, labels_from_reference_map, multi_hot
from reben_tools.learn.data.augment import TrainMixer, random_flips
from reben_tools.learn.data.batches import collate
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.learn.data.mixing import LabelNoiseCounts, cutmix, label_noise_counts
from reben_tools.learn.models.classifier import build_model
from reben_tools.learn.runtime.config import TrainConfig
from reben_tools.learn.training.loop import train

MODES = ("none", "cutmix", "cutmix-lp")
SHORT_NAMES = {
    "Land principally occupied by agriculture, with significant areas of natural vegetation": "Agriculture with natural vegetation",
    "Moors, heathland and sclerophyllous vegetation": "Moors, heathland, sclerophyllous",
    "Natural grassland and sparsely vegetated areas": "Natural grassland, sparse vegetation",
    "Industrial or commercial units": "Industrial or commercial",
}


def _train_split(archive: Path, bands) -> tuple[dict, ReBENDataset]:
    dataset = ReBENDataset(archive, split="train", bands=bands, native=True, return_reference_map=True)
    return collate(dataset.__getitems__(list(range(len(dataset))))), dataset


# --------------------------------------------------------------------------- noise


def label_noise(
    archive: Path, rounds: int, area_range: tuple[float, float], seed: int = 0, check_exact: bool = True
) -> tuple[LabelNoiseCounts, int]:
    """Label-noise counts of naive CutMix over the train split; returns (counts, samples checked exactly)."""
    batch, dataset = _train_split(archive, ("B02",))
    dataset.archive.close()
    labels, maps = batch["label"], batch["reference_map"]
    np_maps = maps.numpy()
    generator = torch.Generator().manual_seed(seed)
    total = LabelNoiseCounts.zeros()
    checked = 0
    for r in range(rounds):
        out = cutmix(
            torch.zeros(len(labels), 1, 120, 120),
            labels,
            maps,
            mode="cutmix-lp",
            area_range=area_range,
            prob=1.0,
            generator=generator,
        )
        total += label_noise_counts(labels, out)
        if check_exact and r == 0:
            bx = out.boxes
            for b in range(len(labels)):
                mixed = np_maps[b].copy()
                h, w = int(bx.height[b]), int(bx.width[b])
                mixed[int(bx.dst_top[b]) : int(bx.dst_top[b]) + h, int(bx.dst_left[b]) : int(bx.dst_left[b]) + w] = (
                    np_maps[int(bx.source[b])][
                        int(bx.src_top[b]) : int(bx.src_top[b]) + h, int(bx.src_left[b]) : int(bx.src_left[b]) + w
                    ]
                )
                expected = multi_hot(labels_from_reference_map(mixed))
                if not np.array_equal(out.labels[b].numpy(), expected):
                    raise AssertionError(f"sample {b}: recomputed labels differ from the pipeline's labelling")
                checked += 1
    return total, checked


def noise_table(counts: LabelNoiseCounts) -> list[dict]:
    rows = []
    for c, name in enumerate(ALPHABETICAL_ORDER):
        if counts.in_union[c] == 0 and counts.added_to_target[c] == 0:
            continue
        rows.append(
            {
                "class": name,
                "in_union": int(counts.in_union[c]),
                "erased_share": counts.erased[c] / counts.samples,
                "erased_given_in_union": counts.erased[c] / counts.in_union[c] if counts.in_union[c] else None,
                "added_share": counts.added[c] / counts.samples,
                "added_to_target_share": counts.added_to_target[c] / counts.samples,
            }
        )
    return rows


def plot_noise(rows: list[dict], counts: LabelNoiseCounts, area_range, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["erased_share"])
    names = [SHORT_NAMES.get(r["class"], r["class"]) for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.8))
    ax.barh(
        y + 0.2,
        [100 * r["erased_share"] for r in rows],
        height=0.4,
        color="#c0392b",
        label="erased: in the naive label (union), no pixel in the mixed map",
    )
    ax.barh(
        y - 0.2,
        [100 * r["added_to_target_share"] for r in rows],
        height=0.4,
        color="#2471a3",
        label="added: in the mixed map, not in the target's own label",
    )
    ax.set_yticks(y, names, fontsize=9)
    ax.set_xlabel("share of mixed samples (%)")
    ax.set_title(
        f"Naive CutMix label noise, demo archive train split, box area {area_range[0]:g}-{area_range[1]:g}\n"
        f"{100 * counts.noisy_share:.1f}% of {counts.samples:,} mixed samples have a wrong union label; "
        f"added vs the union: {int(counts.added.sum())}",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- throughput


def throughput(
    archive: Path, model_name: str, bands: str, batch_size: int, steps: int, rounds: int, device: str = "cpu"
) -> dict:
    torch.manual_seed(0)
    dev = torch.device(device)
    band_list = resolve_bands(bands)
    full, dataset = _train_split(archive, band_list)
    transform = dataset.native_transform().to(dev)
    batch = {k: (v[:batch_size].to(dev) if torch.is_tensor(v) else v[:batch_size]) for k, v in full.items()}
    model = build_model(model_name, band_list).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    criterion = torch.nn.BCEWithLogitsLoss()
    mixers = {m: (TrainMixer(m, 0.5, (0.1, 0.5), "alphabetical", dev) if m != "none" else None) for m in MODES}
    generator = torch.Generator(device=dev).manual_seed(0)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model.train()

    def step(mode: str) -> None:
        images = transform(batch)
        labels = batch["label"].float()
        if mixers[mode] is not None:
            images, labels = mixers[mode](images, labels, batch, generator)
        images = random_flips(images, generator)
        loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for mode in MODES:  # warm-up
        step(mode)
    rates = {m: [] for m in MODES}
    mix_ms = {m: [] for m in MODES if m != "none"}
    read = {"without_maps": [], "with_maps": []}
    plain = ReBENDataset(archive, split="train", bands=band_list, native=True)
    with_maps = plain.with_reference_maps()
    indices = list(range(min(batch_size, len(plain))))
    images0 = transform(batch)
    for _ in range(rounds):
        for mode in MODES:
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step(mode)
            sync()
            rates[mode].append(batch_size * steps / (time.perf_counter() - t0))
        for mode in mix_ms:
            sync()
            t0 = time.perf_counter()
            for _ in range(20):
                mixers[mode](images0, batch["label"], batch, generator)
            sync()
            mix_ms[mode].append((time.perf_counter() - t0) / 20 * 1000)
        for name, ds in (("without_maps", plain), ("with_maps", with_maps)):
            t0 = time.perf_counter()
            for _ in range(50):
                ds.__getitems__(indices)
            read[name].append(len(indices) * 50 / (time.perf_counter() - t0))
    plain.archive.close()
    dataset.archive.close()
    med = {m: statistics.median(v) for m, v in rates.items()}
    return {
        "model": model_name,
        "bands": bands,
        "device": device,
        "batch_size": batch_size,
        "steps_per_round": steps,
        "rounds": rounds,
        "train_step_samples_per_s": med,
        "train_step_ratio_vs_none": {m: med[m] / med["none"] for m in MODES},
        "mix_call_ms_per_batch": {m: statistics.median(v) for m, v in mix_ms.items()},
        "read_samples_per_s": {k: statistics.median(v) for k, v in read.items()},
        "read_ratio_with_maps_vs_without": statistics.median(read["with_maps"])
        / statistics.median(read["without_maps"]),
        "raw_rounds": {"train_step": rates, "read": read},
    }


# --------------------------------------------------------------------------- accuracy


def checkpoint_test_scores(
    archive: Path, checkpoint: Path, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Test logits (N, 19), targets and patch ids of a checkpoint (as ``reben evaluate`` computes them)."""
    from reben_tools.learn.data.loaders import DevicePreprocess, make_loader, open_dataset, split_indices
    from reben_tools.learn.evaluation.predict import predict
    from reben_tools.learn.models.restore import checked_model, split_config
    from reben_tools.learn.runtime.distributed import EpochSampler

    state, net = checked_model(checkpoint, None, None, None)
    dev = torch.device(device)
    net = net.to(dev)
    config = split_config(str(archive), state)
    dataset = open_dataset(archive, tuple(net.config["bands"]), config.class_order, config.include_snow_cloud)
    try:
        indices = split_indices(dataset, "test")
        loader = make_loader(dataset, EpochSampler(indices, shuffle=False, pad=False), 256, 0, dev, 0)
        logits, targets, order = predict(net, loader, DevicePreprocess(dataset, dev), "fp32")
        ids = [dataset.patch_ids[i] for i in order]
    finally:
        dataset.archive.close()
    return logits, targets, ids


PAIRS = (("cutmix-lp", "none"), ("cutmix-lp", "cutmix"), ("cutmix", "none"))


def accuracy(
    archive: Path,
    out: Path,
    model_name: str,
    bands: str,
    seeds: list[int],
    epochs: int,
    batch_size: int,
    lr: float,
    device: str = "cpu",
) -> dict:
    """Train every mode at every seed (cached: a run with test scores saved is not retrained), then compare
    the modes with the protocol: paired by seed (same init and data order), bootstrap over the test patches."""
    from reben_tools.learn.evaluation.compare import paired_comparison

    runs, scores = [], {}
    targets = ids = None
    for seed in seeds:
        for mode in MODES:
            run_dir = out / f"{mode}-seed{seed}"
            cached = run_dir / "test_scores.npz"
            t0 = time.perf_counter()
            if not cached.is_file():
                shutil.rmtree(run_dir, ignore_errors=True)
                metrics = train(
                    TrainConfig(
                        archive=str(archive),
                        bands=bands,
                        model=model_name,
                        out=str(run_dir),
                        epochs=epochs,
                        batch_size=batch_size,
                        lr=lr,
                        seed=seed,
                        mix=mode,
                        device=device,
                        workers=0 if device == "cpu" else None,
                        progress=False,
                    )
                )
                logits, tgt, pids = checkpoint_test_scores(archive, run_dir / "checkpoints" / "best.pt", device)
                np.savez(cached, logits=logits, targets=tgt, ids=np.asarray(pids), best_epoch=metrics["best_epoch"],
                         seconds=time.perf_counter() - t0)  # fmt: skip
            with np.load(cached) as z:
                logits, tgt, pids = z["logits"], z["targets"], [str(i) for i in z["ids"]]
                best_epoch, seconds = int(z["best_epoch"]), float(z["seconds"])
            if targets is None:
                targets, ids = tgt, pids
            if pids != ids or not np.array_equal(tgt, targets):
                raise RuntimeError(f"{run_dir}: test patches differ between runs")
            scores[(mode, seed)] = logits
            from reben_tools.learn.evaluation.metrics import multilabel_metrics

            m = multilabel_metrics(logits, tgt)
            runs.append(
                {
                    "mode": mode,
                    "seed": seed,
                    "seconds": round(seconds, 1),
                    "best_epoch": best_epoch,
                    "test_ap_macro": m["average_precision_macro"],
                    "test_ap_micro": m["average_precision_micro"],
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            key: {
                "mean": statistics.mean(r[key] for r in mine),
                "std": statistics.stdev(r[key] for r in mine) if len(mine) > 1 else 0.0,
                "min": min(r[key] for r in mine),
                "max": max(r[key] for r in mine),
            }
            for key in ("test_ap_macro", "test_ap_micro")
        }
    comparisons = {}
    for a, b in PAIRS:
        for metric in ("average_precision_macro", "average_precision_micro"):
            c = paired_comparison(
                [scores[(a, s)] for s in seeds],
                [scores[(b, s)] for s in seeds],
                targets,
                None,
                metric,
                "seeds",
                n_boot=2000,
            )
            d = c["difference"]
            comparisons[f"{a} vs {b}, {metric}"] = {
                "a": c["a"]["mean"],
                "b": c["b"]["mean"],
                "difference": d["mean"],
                "per_seed": d["per_unit"],
                "se": d["se"],
                "t_interval": d["t_interval"],
                "bootstrap_interval": d["bootstrap_interval"],
                "interval": d["interval"],
                "verdict": c["verdict"],
            }
    return {
        "model": model_name,
        "bands": bands,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "device": device,
        "seeds": seeds,
        "test_patches": len(targets),
        "runs": runs,
        "summary": summary,
        "comparisons": comparisons,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "reben-bench-cutmix",
        help="results.json, label_noise.png and the training runs (checkpoints: keep it out of the repo)",
    )
    parser.add_argument("--parts", nargs="+", default=["noise", "throughput", "accuracy"])
    parser.add_argument("--noise-rounds", type=int, default=200)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--bands", default="S1_10m_20m")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="device of the throughput and accuracy parts (cuda on a GPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "results.json"
    results = json.loads(result_path.read_text()) if result_path.exists() else {}
    results["machine"] = {"torch": torch.__version__, "threads": args.threads, "python": sys.version.split()[0]}
    if "noise" in args.parts:
        results["noise"] = {}
        for area in ((0.1, 0.5), (0.02, 0.1), (0.5, 0.9)):
            counts, checked = label_noise(args.archive, args.noise_rounds, area, check_exact=area == (0.1, 0.5))
            rows = noise_table(counts)
            results["noise"][f"{area[0]:g}-{area[1]:g}"] = {
                "mixed_samples": counts.samples,
                "noisy_share": counts.noisy_share,
                "erased_total": int(counts.erased.sum()),
                "added_total": int(counts.added.sum()),
                "added_to_target_total": int(counts.added_to_target.sum()),
                "exactly_checked": checked,
                "per_class": rows,
            }
            if area == (0.1, 0.5):
                plot_noise(rows, counts, area, args.out / "label_noise.png")
            print(f"noise {area}: {counts.noisy_share:.3f} of {counts.samples} (checked {checked})", flush=True)
    if "throughput" in args.parts:
        results["throughput"] = throughput(
            args.archive, args.model, args.bands, args.batch_size, args.steps, args.rounds, args.device
        )
        print(
            json.dumps(
                {
                    k: results["throughput"][k]
                    for k in ("train_step_ratio_vs_none", "mix_call_ms_per_batch", "read_ratio_with_maps_vs_without")
                }
            ),
            flush=True,
        )
    if "accuracy" in args.parts:
        results["accuracy"] = accuracy(
            args.archive,
            args.out / "runs",
            args.model,
            args.bands,
            args.seeds,
            args.epochs,
            args.batch_size,
            args.lr,
            args.device,
        )
        print(json.dumps(results["accuracy"]["summary"], indent=1), flush=True)
        print(json.dumps({k: v["verdict"] for k, v in results["accuracy"]["comparisons"].items()}, indent=1))
    result_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
