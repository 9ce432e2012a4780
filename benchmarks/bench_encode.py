"""Encoder throughput: ``reben encode`` against a plain single-process loop, in one run.

Both encode the same generated GeoTIFF release (S2 + S1 + reference maps, 15 GeoTIFFs
per patch). The baseline is what a straightforward script does: find the files, open
each GeoTIFF with ``rasterio.open`` and read it, build the value with
``safetensors.numpy.save``, and put every value into one LMDB environment with one
writer (sorted keys). The encoder runs end to end (discovery, shards, keys.parquet,
patches.parquet, metadata, manifest). Runs are interleaved and repeated; the medians are
reported, with the per-core ratio ``(encoder patches/s / workers) / baseline patches/s``.
Because the machine may be shared, each run's CPU time (this process plus its worker
processes, user + system) is recorded too: patches per CPU-second is the per-core
throughput that other load on the machine disturbs least. Every run's values are checked
byte for byte against the baseline's.

    python benchmarks/bench_encode.py --patches 600 --repeats 3 --out benchmarks/encode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lmdb
import rasterio
from safetensors.numpy import save as safetensors_save

from reben_tools.release.encode import encode_release
from reben_tools.release.synthetic_release import write_synthetic_release


def baseline_encode(release_root: Path, out_dir: Path) -> int:
    """The plain loop: rasterio.open per file, safetensors, one LMDB writer. Returns patches."""
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(release_root.rglob("*.tif")):
        stem = path.stem
        if stem.endswith("_reference_map"):
            key, tensor = stem, "Data"
        else:
            key, tensor = stem.rsplit("_", 1)
        groups.setdefault(key, {})[tensor] = path
    items = {}
    for key, files in groups.items():
        arrays = {}
        for tensor, path in files.items():
            with rasterio.open(path) as dataset:
                arrays[tensor] = dataset.read(1)
        items[key] = safetensors_save(arrays)
    out_dir.mkdir(parents=True)
    total = sum(len(k) + len(v) + 4096 for k, v in items.items())
    env = lmdb.open(str(out_dir), map_size=2 * total + (1 << 24), lock=False)
    with env.begin(write=True) as txn:
        for key in sorted(items):
            txn.put(key.encode(), items[key])
    env.close()
    return sum(1 for key in groups if key.startswith("S2") and not key.endswith("_reference_map"))


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def lmdb_content(paths: list[Path]) -> dict[bytes, bytes]:
    content = {}
    for path in paths:
        env = lmdb.open(str(path), readonly=True, lock=False)
        with env.begin() as txn:
            content.update({bytes(k): bytes(v) for k, v in txn.cursor()})
        env.close()
    return content


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--patches-per-shard", type=int, default=128)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write a bar chart (PNG) here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-encode-", dir=args.workdir))
    try:
        started = time.perf_counter()
        release = write_synthetic_release(workdir / "release", args.patches, seed=0, progress=True)
        print(f"generated {args.patches} patches in {time.perf_counter() - started:.1f} s")
        reference = None
        timings: dict[str, list[float]] = {"baseline": []}
        cpu: dict[str, list[float]] = {"baseline": []}
        for w in args.workers:
            timings[f"encoder_w{w}"] = []
            cpu[f"encoder_w{w}"] = []
        for repeat in range(args.repeats):
            out = workdir / f"baseline-{repeat}"
            started, cpu_started = time.perf_counter(), cpu_seconds()
            patches = baseline_encode(release.root, out)
            timings["baseline"].append(time.perf_counter() - started)
            cpu["baseline"].append(cpu_seconds() - cpu_started)
            assert patches == args.patches, patches
            if reference is None:
                reference = lmdb_content([out])
            shutil.rmtree(out)
            for w in args.workers:
                out = workdir / f"encoder-w{w}-{repeat}"
                started, cpu_started = time.perf_counter(), cpu_seconds()
                summary = encode_release(
                    release.s2_dir,
                    out,
                    s1_dir=release.s1_dir,
                    reference_maps_dir=release.reference_maps_dir,
                    metadata_files=release.metadata_files,
                    workers=w,
                    patches_per_shard=args.patches_per_shard,
                    progress=False,
                )
                timings[f"encoder_w{w}"].append(time.perf_counter() - started)
                cpu[f"encoder_w{w}"].append(cpu_seconds() - cpu_started)
                assert summary.patches == args.patches and not summary.skipped
                # Forked workers are this process's children, so os.times() counts their CPU.
                assert summary.start_method in ("inline", "fork"), summary.start_method
                content = lmdb_content(sorted((out / "shards").iterdir()))
                assert content == reference, "encoder values differ from the baseline's"
                shutil.rmtree(out)
            print(
                f"repeat {repeat + 1}: "
                + ", ".join(f"{k} {v[-1]:.2f} s wall / {cpu[k][-1]:.2f} s CPU" for k, v in timings.items())
            )
        base_pps = args.patches / statistics.median(timings["baseline"])
        base_cpu_pps = args.patches / statistics.median(cpu["baseline"])
        results = {
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs visible, shared with other work)",
            "python": platform.python_version(),
            "rasterio": rasterio.__version__,
            "gdal": rasterio.__gdal_version__,
            "patches": args.patches,
            "files_per_patch": 15,
            "repeats": args.repeats,
            "patches_per_shard": args.patches_per_shard,
            "byte_identical_values": True,
            "seconds": timings,
            "cpu_seconds": cpu,
            "baseline_patches_per_second": base_pps,
            "baseline_patches_per_cpu_second": base_cpu_pps,
            "encoder": {},
        }
        print(f"baseline: {base_pps:.1f} patches/s, {base_cpu_pps:.1f} patches per CPU-second")
        for w in args.workers:
            pps = args.patches / statistics.median(timings[f"encoder_w{w}"])
            cpu_pps = args.patches / statistics.median(cpu[f"encoder_w{w}"])
            results["encoder"][str(w)] = {
                "patches_per_second": pps,
                "speedup": pps / base_pps,
                "speedup_per_core": pps / w / base_pps,
                "patches_per_cpu_second": cpu_pps,
                "cpu_efficiency_vs_baseline": cpu_pps / base_cpu_pps,
            }
            print(
                f"encoder, {w} worker(s): {pps:.1f} patches/s = {pps / base_pps:.2f}x baseline, "
                f"{pps / w / base_pps:.2f}x per core (wall); {cpu_pps:.1f} patches per CPU-second = "
                f"{cpu_pps / base_cpu_pps:.2f}x baseline"
            )
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        if args.plot:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            labels = ["baseline\n(1 process)"] + [f"reben encode\n{w} worker(s)" for w in args.workers]
            panels = [
                (
                    "patches / second (wall clock)",
                    [base_pps] + [results["encoder"][str(w)]["patches_per_second"] for w in args.workers],
                ),
                (
                    "patches / CPU-second (per core)",
                    [base_cpu_pps] + [results["encoder"][str(w)]["patches_per_cpu_second"] for w in args.workers],
                ),
            ]
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
            for ax, (title, values) in zip(axes, panels, strict=True):
                bars = ax.bar(labels, values, color=["#999999"] + ["#1f77b4"] * len(args.workers))
                for bar, value in zip(bars, values, strict=True):
                    ax.text(
                        bar.get_x() + bar.get_width() / 2,
                        value,
                        f"{value:.0f} ({value / values[0]:.1f}x)",
                        ha="center",
                        va="bottom",
                    )
                ax.set_title(title)
                ax.set_ylim(0, max(values) * 1.15)
            fig.suptitle(f"GeoTIFF release -> archive, {args.patches} patches x 15 GeoTIFFs, median of {args.repeats}")
            fig.tight_layout()
            fig.savefig(args.plot, dpi=120)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
