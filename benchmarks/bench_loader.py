"""Loader benchmark: samples/second, one process, 14 bands normalised at 120x120.

All readers run in one process on the same generated patches, interleaved round by
round, so the figures are ratios taken under the same machine load:

  (a) ReBENDataset per sample (``dataset[i]``)
  (b) ReBENDataset batched (``__getitems__`` + ``collate``)
  (c) ReBENDataset native mode (``__getitems__``, what a GPU pipeline costs the CPU),
      and the same plus the batched upsample/normalise on the CPU (``NativeToImage``)
  (d) ConfigILM's ``BENv2DataSet`` (the real package, imported from ``--configilm-site``
      or the environment) with a Normalize transform: per sample, and per batch as its
      DataLoader delivers it (``default_collate`` stacking the samples)
  (e) the same patches read as GeoTIFFs with rasterio (reBEN's release layout)
  (f) the bound: allocating and filling the output batch, (B, 14, 120, 120) float32
  (g) DataLoaders with 2 worker processes (persistent, fork), the way training runs: what
      the main process receives per second from ``ReBENDataset`` (``collate``; the workers
      write each batch straight into shared memory, so nothing is copied on the way), its
      native mode, and ConfigILM (``default_collate`` stacks the samples into shared memory)

(a)-(c) and (g) read the sharded reben-tools archive and, as ``*_merged``, the plain LMDB that
``reben merge`` makes of it (``merge_archive``; its metadata files inside it, opened the way a
command opens a plain LMDB: ``open_archive_source``), which ConfigILM reads too (a byte-identical
copy: py-lmdb opens one environment once per process); ``a_per_sample_collated`` stacks (a)'s
samples with ``collate``. Every reader's tensors are checked against ConfigILM's for the same
patches before timing. Usage::

    python benchmarks/bench_loader.py --patches 3000 --configilm-site /tmp/configilm-site

``--configilm-site`` is a folder made with
``pip install --target DIR --no-deps configilm transformers huggingface_hub tokenizers ...``
(ConfigILM's reader imports ``configilm.util``, which imports ``transformers``); it is
appended to ``sys.path`` so the environment's numpy/torch stay in use.
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

import numpy as np
import torch
from torch.utils.data import default_collate

from reben_tools.format import codec, labels
from reben_tools.format.bands import BAND_GROUPS, PUBLISHED_STATISTICS, S1_BANDS, S2_BANDS
from reben_tools.format.layout import FLAGGED_METADATA_FILE, METADATA_FILE, PATCHES_FILE, SHARDS_DIR
from reben_tools.format.manifest import build_manifest, write_manifest
from reben_tools.format.metadata import read_metadata, write_metadata
from reben_tools.format.shards import write_shard
from reben_tools.format.sources import open_archive_source
from reben_tools.release.archive_tools import merge_archive

CONFIGILM_14: list[str] = list(BAND_GROUPS["ALL"])
"""Channel order of ConfigILM's 14-channel configuration; replaced at run time by the order the
installed ConfigILM uses (0.7.1: VV, VH, B01..B12 = ALL), and our readers use the same order."""

SPLITS = ("train", "validation", "test")


def make_patches(n: int, seed: int = 0):
    """``n`` synthetic patches: (patch_id, s1_name, S2 bands, S1 bands, reference map, labels)."""
    rng = np.random.default_rng(seed)
    codes = np.array(sorted(c for c in labels.known_codes() if c != 999), dtype=np.uint16)
    products = [
        ("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP", "S1A_IW_GRDH_1SDV_20170613T165043", "33UUP"),
        ("S2B_MSIL2A_20180204T094161_N9999_R036_T35VPK", "S1B_IW_GRDH_1SDV_20180204T043253", "35VPK"),
    ]
    for i in range(n):
        prefix, s1_prefix, tile = products[i % len(products)]
        x, y = (i // 2) % 91, (i // 2) // 91
        pid = f"{prefix}_{x:02d}_{y:02d}"
        s1 = f"{s1_prefix}_{tile}_{x}_{y}"
        s2 = {b: rng.integers(1, 10000, (band.size, band.size), dtype=np.uint16) for b, band in S2_BANDS.items()}
        s1v = {b: rng.uniform(-30, 0, (120, 120)).astype(np.float32) for b in S1_BANDS}
        ref = np.repeat(np.repeat(rng.choice(codes, (4, 4)), 30, 0), 30, 1).astype(np.uint16)
        yield pid, s1, s2, s1v, ref, labels.labels_from_reference_map(ref), SPLITS[i % 3]


def build(work: Path, n: int, shards: int, tiffs: bool) -> dict:
    """Write the sharded archive, the merged LMDB + metadata, and the GeoTIFF release."""
    import geopandas as gpd
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import box
    from tqdm import tqdm

    root = work / "archive"
    shard_items: list[list[tuple[str, bytes]]] = [[] for _ in range(shards)]
    rows, patch_rows = [], []
    tiff_dir = work / "tiff"
    for i, (pid, s1, s2, s1v, ref, labs, split) in enumerate(tqdm(make_patches(n), total=n, desc="generate")):
        k = i * shards // n
        shard_items[k] += [
            (pid, codec.encode_s2(s2)),
            (s1, codec.encode_s1(s1v)),
            (pid + "_reference_map", codec.encode_reference_map(ref)),
        ]
        rows.append(
            {
                "patch_id": pid,
                "labels": labs,
                "split": split,
                "country": "Austria",
                "s1_name": s1,
                "s2v1_name": None,
                "contains_seasonal_snow": False,
                "contains_cloud_or_shadow": i % 10 == 9,
            }
        )
        patch_rows.append({"patch_id": pid, "s1_name": s1, "shard": f"shard-{k:02d}", "geometry": box(0, 0, 1, 1)})
        if tiffs:
            product = pid.rsplit("_", 2)[0]
            for band_dir, name, bands in (("BigEarthNet-S2", pid, s2), ("BigEarthNet-S1", s1, s1v)):
                folder = tiff_dir / band_dir / (product if band_dir.endswith("S2") else s1.rsplit("_", 3)[0]) / name
                folder.mkdir(parents=True, exist_ok=True)
                for band, array in bands.items():
                    size = array.shape[0]
                    with rasterio.open(
                        folder / f"{name}_{band}.tif",
                        "w",
                        driver="GTiff",
                        width=size,
                        height=size,
                        count=1,
                        dtype=array.dtype.name,
                        crs="EPSG:32633",
                        transform=from_origin(300000, 5400000, 1200 / size, 1200 / size),
                    ) as dst:
                        dst.write(array, 1)
    infos = [write_shard(root / SHARDS_DIR, f"shard-{k:02d}", items) for k, items in enumerate(shard_items)]
    write_metadata(root, rows)
    gpd.GeoDataFrame(patch_rows, crs="EPSG:4326").to_parquet(root / PATCHES_FILE)
    write_manifest(root, build_manifest(infos, {"patches": n}, PUBLISHED_STATISTICS, [], {}, "bench"))
    merged = work / "merged"
    merge_archive(root, merged)  # `reben merge`: one sorted LMDB, the metadata files copied inside
    # ConfigILM gets its own copy: py-lmdb refuses to open one environment twice in a process
    shutil.copytree(merged, work / "merged-configilm")
    for name in (METADATA_FILE, FLAGGED_METADATA_FILE):
        shutil.copy(root / name, work / name)
    return {"archive": root, "merged": merged, "tiff": tiff_dir, "rows": rows}


def configilm_stats(stats_source) -> dict[str, tuple[float, float]]:
    m, s = stats_source.means["120_nearest"], stats_source.stds["120_nearest"]
    return {b: (m[b], s[b]) for b in CONFIGILM_14}


class TiffReader:
    """(e): per patch, open each band's GeoTIFF with rasterio, upsample (nearest), normalise, stack."""

    def __init__(self, tiff_dir: Path, rows: list[dict], stats: dict[str, tuple[float, float]]) -> None:
        self.paths = []
        for row in rows:
            pid, s1 = row["patch_id"], row["s1_name"]
            s2_dir = tiff_dir / "BigEarthNet-S2" / pid.rsplit("_", 2)[0] / pid
            s1_dir = tiff_dir / "BigEarthNet-S1" / s1.rsplit("_", 3)[0] / s1
            self.paths.append(
                [(s1_dir / f"{s1}_{b}.tif") if b in S1_BANDS else (s2_dir / f"{pid}_{b}.tif") for b in CONFIGILM_14]
            )
        self.mean = np.array([stats[b][0] for b in CONFIGILM_14], np.float32)[:, None, None]
        self.std = np.array([stats[b][1] for b in CONFIGILM_14], np.float32)[:, None, None]

    def __getitem__(self, i: int) -> torch.Tensor:
        import rasterio

        out = np.empty((len(CONFIGILM_14), 120, 120), np.float32)
        for c, path in enumerate(self.paths[i]):
            with rasterio.open(path) as src:
                a = src.read(1)
            f = 120 // a.shape[0]
            out[c] = np.repeat(np.repeat(a, f, 0), f, 1) if f > 1 else a
        out -= self.mean
        out /= self.std
        return torch.from_numpy(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=3000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1024, help="samples read per reader per round")
    parser.add_argument("--tiff-samples", type=int, default=256, help="samples per round for the (slow) GeoTIFF reader")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated data here (default: a temp dir)")
    parser.add_argument("--configilm-site", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write a bar chart PNG here")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the (g) readers; 0: skip them")
    args = parser.parse_args()

    torch.set_num_threads(1)
    if args.configilm_site:
        sys.path.append(str(args.configilm_site))
    from reben_tools.learn.data.batches import collate
    from reben_tools.learn.data.dataset import ReBENDataset
    from reben_tools.learn.data.transforms import upsample_and_normalise

    try:
        from configilm.extra import BENv2_utils
        from configilm.extra.DataSets.BENv2_DataSet import BENv2DataSet
    except ImportError as exc:
        sys.exit(f"ConfigILM cannot be imported ({exc}); see --configilm-site")
    CONFIGILM_14[:] = list(BENv2DataSet.channel_configurations[14])
    print("ConfigILM", BENv2_utils.__file__, "14-channel order:", CONFIGILM_14)

    tmp = None
    work = args.workdir
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-loader-")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = (
        build(work, args.patches, args.shards, tiffs=True)
        if not (work / "archive" / "manifest.json").is_file()
        else None
    )
    if data is None:
        data = {
            "archive": work / "archive",
            "merged": work / "merged",
            "tiff": work / "tiff",
            "rows": read_metadata([work / METADATA_FILE, work / FLAGGED_METADATA_FILE]).to_pylist(),
        }
    setup_s = time.perf_counter() - t0

    stats = configilm_stats(BENv2_utils)
    common = dict(bands=CONFIGILM_14, normalisation=stats, include_snow_cloud=True)
    ds_archive = ReBENDataset(data["archive"], **common)
    metadata = [work / METADATA_FILE, work / FLAGGED_METADATA_FILE]
    merged_source = open_archive_source(data["merged"])  # what `reben ... merged/` resolves to
    assert merged_source.is_plain_lmdb and merged_source.origin == "beside", merged_source
    ds_merged = ReBENDataset(merged_source, **common)
    ds_native = ReBENDataset(data["archive"], native=True, **common)
    ds_native_merged = ReBENDataset(merged_source, native=True, **common)
    to_image = ds_native.native_transform()
    mean_t, inv_t = to_image.mean, to_image.inv_std

    mean = torch.tensor([stats[b][0] for b in CONFIGILM_14], dtype=torch.float32)[:, None, None]
    std = torch.tensor([stats[b][1] for b in CONFIGILM_14], dtype=torch.float32)[:, None, None]

    def normalize(img: torch.Tensor) -> torch.Tensor:  # torchvision.transforms.Normalize's arithmetic
        return img.clone().sub_(mean).div_(std)

    cilm = BENv2DataSet(
        {
            "images_lmdb": work / "merged-configilm",
            "metadata_parquet": metadata[0],
            "metadata_snow_cloud_parquet": metadata[1],
        },
        split=None,
        transform=normalize,
        img_size=(14, 120, 120),
        include_cloudy=True,
        include_snowy=True,
    )
    patch_ids = ds_archive.patch_ids
    assert list(cilm.patches) == patch_ids, "ConfigILM and ReBENDataset index different patches"
    rows_by_id = {r["patch_id"]: r for r in data["rows"]}
    tiffs = TiffReader(data["tiff"], [rows_by_id[p] for p in patch_ids], stats)
    n = len(patch_ids)
    bs = args.batch_size

    # correctness: every reader gives ConfigILM's tensors
    check = list(range(0, n, max(1, n // 50)))[:50]
    ref = torch.stack([cilm[i][0] for i in check])
    got = {
        "a": torch.stack([ds_archive[i]["image"] for i in check]),
        "b": collate(ds_archive.__getitems__(check))["image"],
        "b_merged": collate(ds_merged.__getitems__(check))["image"],
        "c": to_image(collate(ds_native.__getitems__(check))),
        "c_merged": to_image(collate(ds_native_merged.__getitems__(check))),
        "c_torch": upsample_and_normalise(collate(ds_native.__getitems__(check)), ds_native.layout, mean_t, inv_t),
        "e": torch.stack([tiffs[i] for i in check]),
    }
    max_abs = {k: float((v - ref).abs().max()) for k, v in got.items()}
    for k, v in max_abs.items():
        assert v < 1e-5, f"reader {k} differs from ConfigILM by {v}"
    print("tensors equal to ConfigILM's (max abs diff):", max_abs)

    rng = np.random.default_rng(1)

    def per_sample(get):
        def run(order):
            for i in order:
                get(int(i))

        return run

    def batched(fetch):
        def run(order):
            for s in range(0, len(order), bs):
                fetch(order[s : s + bs].tolist())

        return run

    def bound(order):
        for s in range(0, len(order), bs):
            out = np.empty((min(bs, len(order) - s), 14, 120, 120), np.float32)
            out.fill(1.0)
            torch.from_numpy(out)

    def bound_torch(order):
        for s in range(0, len(order), bs):
            torch.empty((min(bs, len(order) - s), 14, 120, 120)).fill_(1.0)

    def bound_per_sample(order):
        for _ in order:
            np.empty((14, 120, 120), np.float32).fill(1.0)

    readers = {
        "a_per_sample": per_sample(lambda i: ds_archive[i]["image"]),
        "a_per_sample_merged": per_sample(lambda i: ds_merged[i]["image"]),
        "b_batched": batched(lambda ix: collate(ds_archive.__getitems__(ix))["image"]),
        "b_batched_merged": batched(lambda ix: collate(ds_merged.__getitems__(ix))["image"]),
        "c_native_fetch": batched(lambda ix: collate(ds_native.__getitems__(ix))),
        "c_native_cpu_transform": batched(lambda ix: to_image(collate(ds_native.__getitems__(ix)))),
        "c_native_fetch_merged": batched(lambda ix: collate(ds_native_merged.__getitems__(ix))),
        "c_native_cpu_transform_merged": batched(lambda ix: to_image(collate(ds_native_merged.__getitems__(ix)))),
        "c_native_torch_ops_cpu": batched(
            lambda ix: upsample_and_normalise(collate(ds_native.__getitems__(ix)), ds_native.layout, mean_t, inv_t)
        ),
        "d_configilm": per_sample(lambda i: cilm[i][0]),
        "d_configilm_collated": batched(lambda ix: default_collate([cilm[i] for i in ix])[0]),
        "a_per_sample_collated": batched(lambda ix: collate([ds_archive[i] for i in ix])["image"]),
        "e_rasterio_geotiff": per_sample(lambda i: tiffs[i]),
        "f_bound_batch_numpy": bound,
        "f_bound_batch_torch_empty": bound_torch,
        "f_bound_per_sample": bound_per_sample,
    }
    if args.workers:
        from torch.utils.data import DataLoader, Sampler

        class Order(Sampler):
            """The round's sample order, set before each pass (persistent workers keep running)."""

            def __init__(self) -> None:
                self.order: list[int] = []

            def __iter__(self):
                return iter(self.order)

            def __len__(self) -> int:
                return len(self.order)

        def through_loader(dataset, collate_fn):
            sampler = Order()
            loader = DataLoader(
                dataset,
                batch_size=bs,
                sampler=sampler,
                num_workers=args.workers,
                collate_fn=collate_fn,
                persistent_workers=True,
                multiprocessing_context="fork",
                prefetch_factor=2,
            )

            def run(order):
                sampler.order = order.tolist()
                for _ in loader:
                    pass

            return run

        readers["g_loader_workers_batched"] = through_loader(ds_archive, collate)
        readers["g_loader_workers_batched_merged"] = through_loader(ds_merged, collate)
        readers["g_loader_workers_native"] = through_loader(ds_native, collate)
        readers["g_loader_workers_native_merged"] = through_loader(ds_native_merged, collate)
        readers["g_loader_workers_configilm"] = through_loader(cilm, default_collate)
    for run in readers.values():  # warm-up: page cache, memory maps, header caches
        run(rng.permutation(n)[: min(n, 2 * bs)])
    rates: dict[str, list[float]] = {k: [] for k in readers}
    for r in range(args.rounds):
        order = rng.permutation(n)[: min(n, args.samples)]
        for name, run in readers.items():
            m = order[: args.tiff_samples] if name.startswith("e_") else order
            t = time.perf_counter()
            run(m)
            rates[name].append(len(m) / (time.perf_counter() - t))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()), flush=True)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    best_bound = (
        "f_bound_batch_numpy"
        if statistics.median(rates["f_bound_batch_numpy"]) >= statistics.median(rates["f_bound_batch_torch_empty"])
        else "f_bound_batch_torch_empty"
    )
    result = {
        "machine": f"{os.cpu_count()} CPUs (shared VM), torch threads 1, DataLoader workers {args.workers}",
        "patches": n,
        "batch_size": bs,
        "samples_per_round": args.samples,
        "rounds": args.rounds,
        "setup_seconds": round(setup_s, 1),
        "samples_per_second_median": {k: round(statistics.median(v), 1) for k, v in rates.items()},
        "ratios_median_per_round": {
            f"{k}/d_configilm": round(ratio(k, "d_configilm"), 2) for k in readers if k != "d_configilm"
        }
        | {
            f"{k}/d_configilm_collated": round(ratio(k, "d_configilm_collated"), 2)
            for k in (
                "b_batched",
                "b_batched_merged",
                "a_per_sample_collated",
                "c_native_fetch",
                "c_native_fetch_merged",
                "c_native_cpu_transform",
                "c_native_cpu_transform_merged",
            )
        }
        | {  # the plain LMDB `reben merge` made against the archive's shards it came from
            f"{k}_merged/{k}": round(ratio(f"{k}_merged", k), 2)
            for k in ("a_per_sample", "b_batched", "c_native_fetch", "c_native_cpu_transform")
        }
        | {
            "b_batched/a_per_sample": round(ratio("b_batched", "a_per_sample"), 2),
            "c_native_cpu_transform/a_per_sample": round(ratio("c_native_cpu_transform", "a_per_sample"), 2),
            f"{best_bound}/b_batched (time ratio b/bound)": round(ratio(best_bound, "b_batched"), 2),
            "f_bound_per_sample/a_per_sample (time ratio a/bound)": round(
                ratio("f_bound_per_sample", "a_per_sample"), 2
            ),
        },
        "max_abs_difference_vs_configilm": max_abs,
    }
    if args.workers:
        result["ratios_median_per_round"] |= {
            f"{k}/g_loader_workers_configilm": round(ratio(k, "g_loader_workers_configilm"), 2)
            for k in (
                "g_loader_workers_batched",
                "g_loader_workers_batched_merged",
                "g_loader_workers_native",
                "g_loader_workers_native_merged",
            )
        } | {
            f"{k}_merged/{k}": round(ratio(f"{k}_merged", k), 2)
            for k in ("g_loader_workers_batched", "g_loader_workers_native")
        }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(rates)
        med = [statistics.median(rates[k]) for k in names]
        fig, ax = plt.subplots(figsize=(9, 4.5))

        def colour(k: str) -> str:  # grey: bounds; green: reben-tools; orange: ConfigILM and GeoTIFFs
            if k.startswith("f_"):
                return "#888"
            return "#3a7" if k[0] in "abc" or (k.startswith("g_") and "configilm" not in k) else "#c63"

        ax.barh(names[::-1], med[::-1], color=[colour(k) for k in names[::-1]])
        ax.set_xscale("log")
        ax.set_xlabel("samples / second received by the main process (log scale); g_: 2 DataLoader workers")
        ax.set_title(f"14 bands normalised at 120x120, {n} patches, batch {bs}")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
