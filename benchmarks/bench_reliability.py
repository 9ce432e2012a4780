"""Long-running read test: every DataLoader worker reads random keys for a fixed number of
batches; no error, correct values, flat memory.

A generated archive (``--patches`` patches in ``--shards`` shards, written with the core's
``write_shard``) is read through ``ReBENDataset`` (14 bands, nearest upsampling, no
normalisation) by a ``DataLoader`` with ``--workers`` persistent worker processes drawing
``--batches`` batches of random samples with replacement. Along the way:

* every batch is checked (shape, finite values, the labels of its patch ids); every sample
  of a fixed probe set of patches is compared bit for bit with an image decoded
  independently of the code under test (``safetensors.numpy.load`` + ``np.repeat``);
* every ``--sample-every`` batches the resident memory of the main process and of each
  worker is sampled with psutil: RSS and PSS (PSS splits pages shared between processes,
  e.g. the LMDB memory map, so the sum over processes is what the job really costs).

Memory is "flat" when, after warm-up (the first 10% of batches), the peak total PSS of the
second half of the run exceeds that of the first half by less than ``--max-growth-mib``
(a leak grows the later peak; glibc keeping freed heap memory for reuse raises both
alike); the run exits 1 otherwise, or on any error. Run it once as is and once with
``MALLOC_MMAP_THRESHOLD_=131072`` (large blocks always returned to the kernel) to tell
allocator caching from growth. Figures go to
``--json``; RSS/PSS over batches to ``--plot`` (PNG)::

    python benchmarks/bench_reliability.py --patches 2000 --batches 3000 --workers 2 \\
        --json /tmp/reliability.json --plot benchmarks/reliability_read.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from safetensors.numpy import load as safetensors_load

from reben_tools.format import codec, labels
from reben_tools.format.bands import S1_BANDS, S2_BANDS
from reben_tools.format.layout import MANIFEST_FILE, PATCHES_FILE, SHARDS_DIR
from reben_tools.format.manifest import build_manifest, write_manifest
from reben_tools.format.metadata import write_metadata
from reben_tools.format.shards import write_shard

SPLITS = ("train", "validation", "test")
PRODUCTS = [
    ("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP", "S1A_IW_GRDH_1SDV_20170613T165043", "33UUP"),
    ("S2B_MSIL2A_20180204T094161_N9999_R036_T35VPK", "S1B_IW_GRDH_1SDV_20180204T043253", "35VPK"),
]


def build_archive(root: Path, n: int, shards: int, seed: int = 0) -> None:
    """``n`` generated patches (random S2/S1 pixels, blocky reference maps) in ``shards`` shards."""
    import geopandas as gpd
    from shapely.geometry import box
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    codes = np.array(sorted(c for c in labels.known_codes() if c != 999), dtype=np.uint16)
    shard_items: list[list[tuple[str, bytes]]] = [[] for _ in range(shards)]
    rows, patch_rows = [], []
    for i in tqdm(range(n), desc="generate", unit="patch"):
        prefix, s1_prefix, tile = PRODUCTS[i % len(PRODUCTS)]
        x, y = (i // 2) % 91, (i // 2) // 91
        pid, s1 = f"{prefix}_{x:02d}_{y:02d}", f"{s1_prefix}_{tile}_{x}_{y}"
        s2 = {b: rng.integers(1, 10000, (band.size, band.size), dtype=np.uint16) for b, band in S2_BANDS.items()}
        s1v = {b: rng.uniform(-30, 0, (120, 120)).astype(np.float32) for b in S1_BANDS}
        ref = np.repeat(np.repeat(rng.choice(codes, (4, 4)), 30, 0), 30, 1).astype(np.uint16)
        k = i * shards // n
        shard_items[k] += [
            (pid, codec.encode_s2(s2)),
            (s1, codec.encode_s1(s1v)),
            (pid + "_reference_map", codec.encode_reference_map(ref)),
        ]
        rows.append(
            {
                "patch_id": pid,
                "labels": labels.labels_from_reference_map(ref),
                "split": SPLITS[i % 3],
                "country": "Austria",
                "s1_name": s1,
                "s2v1_name": None,
                "contains_seasonal_snow": False,
                "contains_cloud_or_shadow": False,
            }
        )
        patch_rows.append({"patch_id": pid, "s1_name": s1, "shard": f"shard-{k:02d}", "geometry": box(0, 0, 1, 1)})
    infos = [write_shard(root / SHARDS_DIR, f"shard-{k:02d}", items) for k, items in enumerate(shard_items)]
    write_metadata(root, rows)
    gpd.GeoDataFrame(patch_rows, crs="EPSG:4326").to_parquet(root / PATCHES_FILE)
    write_manifest(root, build_manifest(infos, {"patches": n}, {}, [], {}, "bench_reliability"))


def independent_image(root: Path, pid: str, s1: str, bands: list[str]) -> np.ndarray:
    """The (C, 120, 120) float32 image of a patch, decoded without reben_tools (plain lmdb +
    safetensors + np.repeat for nearest upsampling)."""
    import lmdb

    tensors = {}
    for shard in sorted((root / SHARDS_DIR).iterdir()):
        env = lmdb.open(str(shard), readonly=True, lock=False, subdir=True)
        with env.begin() as txn:
            for key in (pid, s1):
                value = txn.get(key.encode())
                if value is not None:
                    tensors.update(safetensors_load(bytes(value)))
        env.close()
    planes = []
    for band in bands:
        array = tensors[band].astype(np.float32)
        factor = 120 // array.shape[0]
        planes.append(np.repeat(np.repeat(array, factor, 0), factor, 1))
    return np.stack(planes)


def memory_sample(main: psutil.Process) -> dict:
    """RSS and PSS (bytes) of the main process and of each live child (DataLoader worker)."""
    out = {"main": {}, "workers": []}
    for proc, slot in [(main, None)] + [(child, "w") for child in main.children()]:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        record = {"pid": proc.pid, "rss": info.rss, "pss": getattr(info, "pss", info.rss)}
        if slot is None:
            out["main"] = record
        else:
            out["workers"].append(record)
    out["total_pss"] = out["main"].get("pss", 0) + sum(w["pss"] for w in out["workers"])
    out["total_rss"] = out["main"].get("rss", 0) + sum(w["rss"] for w in out["workers"])
    return out


def run(args: argparse.Namespace) -> dict:
    from reben_tools.learn.data.dataset import ReBENDataset

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    root = work / "archive"
    if not (root / MANIFEST_FILE).exists():
        shutil.rmtree(root, ignore_errors=True)
        build_archive(root, args.patches, args.shards)
    dataset = ReBENDataset(root, bands="ALL", normalisation=None, include_snow_cloud=True)
    n = len(dataset)
    ids = dataset.patch_ids
    s1_of = dict(
        zip(
            dataset.metadata.column("patch_id").to_pylist(), dataset.metadata.column("s1_name").to_pylist(), strict=True
        )
    )
    label_of = {pid: dataset.labels[i] for i, pid in enumerate(ids)}
    rng = np.random.default_rng(1)
    probe = {
        ids[i]: independent_image(root, ids[i], s1_of[ids[i]], list(dataset.bands))
        for i in rng.choice(n, size=min(args.probes, n), replace=False)
    }

    sampler = torch.utils.data.RandomSampler(
        dataset,
        replacement=True,
        num_samples=args.batches * args.batch_size,
        generator=torch.Generator().manual_seed(0),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        prefetch_factor=4 if args.workers else None,
        multiprocessing_context="fork" if args.workers else None,
    )
    main = psutil.Process()
    samples, errors, probed, seen = [], [], 0, 0
    started = time.perf_counter()
    try:
        from tqdm import tqdm

        for b, batch in enumerate(tqdm(loader, total=args.batches, desc="read", unit="batch", mininterval=2)):
            image, label = batch["image"], batch["label"]
            if image.shape != (args.batch_size, len(dataset.bands), 120, 120) or not torch.isfinite(image).all():
                errors.append(f"batch {b}: image {tuple(image.shape)} or non-finite values")
            for i, pid in enumerate(batch["patch_id"]):
                if not np.array_equal(label[i].numpy(), label_of[pid]):
                    errors.append(f"batch {b}: labels of {pid} differ")
                if pid in probe:
                    probed += 1
                    if not np.array_equal(image[i].numpy(), probe[pid]):
                        errors.append(f"batch {b}: image of {pid} differs from its independent decoding")
            seen += len(batch["patch_id"])
            if b % args.sample_every == 0 or b == args.batches - 1:
                samples.append({"batch": b, "seconds": time.perf_counter() - started, **memory_sample(main)})
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - started

    warm = [s for s in samples if s["batch"] >= args.batches // 10]
    mib = 1 << 20
    middle = (args.batches // 10 + args.batches) // 2
    first_half = [s["total_pss"] for s in warm if s["batch"] < middle]
    second_half = [s["total_pss"] for s in warm if s["batch"] >= middle]
    # a leak makes the second half's peak exceed the first half's by what it leaked meanwhile;
    # allocator caching (glibc keeps freed heap memory) raises both peaks alike
    growth = (max(second_half) - max(first_half)) / mib if first_half and second_half else float("nan")
    if len(warm) >= 2:
        slope = np.polyfit([s["batch"] for s in warm], [s["total_pss"] / mib for s in warm], 1)[0] * 1000
    else:
        slope = float("nan")
    result = {
        "machine": "2-core shared VM (other engineers' jobs running), 24 GiB",
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "patches": n,
        "shards": args.shards,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "samples_read": seen,
        "probe_samples_compared": probed,
        "errors": errors[:20],
        "error_count": len(errors),
        "seconds": seconds,
        "samples_per_second": seen / seconds if seconds else float("nan"),
        "pss_total_mib_after_warmup": {
            "first": warm[0]["total_pss"] / mib if warm else None,
            "max": max(s["total_pss"] for s in warm) / mib if warm else None,
            "last": warm[-1]["total_pss"] / mib if warm else None,
        },
        "pss_peak_growth_second_vs_first_half_mib": growth,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "pss_slope_mib_per_1000_batches": slope,
        "rss_main_mib": {"first": samples[0]["main"]["rss"] / mib, "last": samples[-1]["main"]["rss"] / mib}
        if samples
        else None,
        "rss_workers_mib_last": [w["rss"] / mib for w in samples[-1]["workers"]] if samples else None,
        "flat": bool(growth < args.max_growth_mib),
        "samples": samples,
    }
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    mib = 1 << 20
    batches = [s["batch"] for s in samples]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    left.plot(batches, [s["main"]["rss"] / mib for s in samples], label="main RSS", color="black")
    for w in range(result["workers"]):
        left.plot(
            batches,
            [s["workers"][w]["rss"] / mib if w < len(s["workers"]) else np.nan for s in samples],
            label=f"worker {w} RSS",
        )
    left.set_xlabel("batch")
    left.set_ylabel("MiB")
    left.set_title("resident set size per process")
    left.legend(fontsize=8)
    right.plot(batches, [s["total_pss"] / mib for s in samples], label="total PSS (all processes)", color="tab:red")
    right.plot(
        batches,
        [s["total_rss"] / mib for s in samples],
        label="total RSS (shared pages counted twice)",
        color="tab:gray",
        linestyle="--",
    )
    right.axvline(result["batches"] // 10, color="0.6", linewidth=0.8, linestyle=":")
    right.set_xlabel("batch")
    right.set_ylabel("MiB")
    right.set_title(
        f"{result['samples_read']:,} random samples, {result['error_count']} errors, "
        f"PSS peak growth (2nd vs 1st half) {result['pss_peak_growth_second_vs_first_half_mib']:+.1f} MiB",
        fontsize=9,
    )
    right.legend(fontsize=8)
    fig.suptitle(
        f"Long read: {result['workers']} DataLoader workers x {result['batches']} batches of "
        f"{result['batch_size']} ({result['patches']} patches, {result['shards']} shards)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--sample-every", type=int, default=25)
    parser.add_argument("--probes", type=int, default=64, help="patches compared bit for bit whenever drawn")
    parser.add_argument("--max-growth-mib", type=float, default=32.0)
    parser.add_argument("--workdir", default=None, help="keep the generated archive here (reused if present)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run(args)
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, Path(args.plot))
    sys.exit(0 if result["error_count"] == 0 and result["flat"] else 1)


if __name__ == "__main__":
    main()
