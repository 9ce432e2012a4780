"""Object-store benchmark: training loader throughput from a bucket (cold and warm cache) against local disk,
bytes each node downloads under the shard-local sampler, and what shard-local sampling costs.

Everything runs on this machine: moto's S3 server in its own process on 127.0.0.1 is the
endpoint; the archive is uploaded to it once.

1. **Endpoint bandwidth**, measured in every round with a plain S3 client (boto3): eight 64 MiB
   objects fetched by 8 streams at once (the cache fetches 8 shards at a time), into memory and
   into local files (what any reader that needs local files, as LMDB does, can get at most).
2. **Loader throughput**, training split, native mode, batch 64, DataLoader with ``--workers``
   workers; per round (interleaved, medians over ``--rounds``):
   local disk (the archive folder, after a pass that leaves it in the page cache); **cold**
   (a new cache folder: opening the URL, fetching every shard the epoch reads, then the
   epoch); **warm** (a new dataset over the same cache: every shard's marker checked, nothing
   fetched, then the epoch). Goals: the warm epoch >= 0.95x local; the cold epoch no slower than
   downloading the epoch's bytes into files at the round's measured bandwidth plus a local epoch.
3. **Bytes downloaded per node** with 1, 2 and 4 simulated nodes (``--sampler shard-local``,
   each node with its own cache folder), against the archive's size. Goal: each of N nodes
   <= 1/N of the archive + one shard.
4. With ``--demo ARCHIVE`` (a ``reben demo`` archive): **label-distribution drift** per
   process (largest per-class gap between the share of an epoch's samples holding a class
   and the train split's), global vs shard-local sampler, 2 and 4 processes, for one epoch and
   for all the samples a process sees in 8 epochs; with
   ``--train-seeds``, **validation AP** (best macro AP) of ``reben train`` on 2 gloo
   "nodes", global vs shard-local sampler, same seeds.

Usage::

    reben demo --out /tmp/demo
    python benchmarks/bench_object_store.py --patches 1500 --shards 16 --rounds 3 \\
        --demo /tmp/demo/archive --train-seeds 0 1 2 --json benchmarks/object_store.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

BUCKET = "bench"
RUN_EPOCHS = 8
"""Epochs over which the drift of what one process sees during a run is measured."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_endpoint() -> tuple[subprocess.Popen, dict[str, str]]:
    """moto's S3 server in its own process on 127.0.0.1; the AWS_* variables pointing at it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("moto did not start") from None
            time.sleep(0.1)
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
    return proc, env


def upload(local: Path, url: str) -> float:
    from concurrent.futures import ThreadPoolExecutor

    from reben_tools.format.object_store import Store

    store = Store(url)
    started = time.perf_counter()
    paths = [p for p in sorted(local.rglob("*")) if p.is_file() and p.name != "manifest.json"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: store.upload(p, str(p.relative_to(local))), paths))
    store.upload(local / "manifest.json", "manifest.json")
    return time.perf_counter() - started


def prepare_bandwidth_objects(work: Path, n: int = 8, mib: int = 64) -> None:
    """``n`` objects of ``mib`` MiB of random bytes under ``s3://BUCKET/bandwidth/``."""
    from reben_tools.format.object_store import Store

    store = Store(f"s3://{BUCKET}/bandwidth")
    rng = np.random.default_rng(0)
    for i in range(n):
        path = work / f"blob{i}"
        path.write_bytes(rng.bytes(mib << 20))
        store.upload(path, f"blob{i}")
        path.unlink()


def bandwidth(work: Path, n: int = 8, mib: int = 64) -> dict:
    """The endpoint's bandwidth with a plain S3 client (boto3), ``n`` objects of ``mib`` MiB fetched by
    ``n`` ``get_object`` streams at once (the cache fetches 8 shards at a time): into memory (the
    endpoint and the network), and into local files (the most any reader that needs local files,
    as LMDB does, can get), MB/s."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])

    def get(i: int, to_file: bool) -> int:
        body = client.get_object(Bucket=BUCKET, Key=f"bandwidth/blob{i}")["Body"]
        size = 0
        with open(work / f"got{i}", "wb") if to_file else open(os.devnull, "wb") as out:
            while chunk := body.read(8 << 20):
                size += len(chunk)
                if to_file:
                    out.write(chunk)
        return size

    out = {"streams": n}
    for key, to_file in (("memory_MBps", False), ("files_MBps", True)):
        t = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            total = sum(pool.map(lambda i, f=to_file: get(i, f), range(n)))
        out[key] = total / 1e6 / (time.perf_counter() - t)
    for i in range(n):
        (work / f"got{i}").unlink(missing_ok=True)
    return out


def epoch(dataset, workers: int, batch: int = 64) -> tuple[float, int]:
    """Seconds for one pass over the train split through a DataLoader; samples read."""
    import torch

    from reben_tools.learn.data.batches import collate
    from reben_tools.learn.data.loaders import split_indices
    from reben_tools.learn.runtime.distributed import EpochSampler

    indices = split_indices(dataset, "train")
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        sampler=EpochSampler(indices, shuffle=True, seed=0),
        num_workers=workers,
        collate_fn=collate,
        multiprocessing_context="fork" if workers else None,
    )
    started = time.perf_counter()
    n = 0
    for b in loader:
        n += len(b["label"])
    return time.perf_counter() - started, n


def throughput(local: Path, url: str, work: Path, rounds: int, workers: int) -> dict:
    from reben_tools.learn.data.dataset import ReBENDataset

    bands = "ALL"
    epoch(ReBENDataset(local, bands=bands, native=True), workers)  # local pages into the page cache
    rows = []
    for r in range(rounds):
        endpoint = bandwidth(work)  # this round's bandwidth: the machine is shared, its load varies
        ds = ReBENDataset(local, bands=bands, native=True)
        t_local, n = epoch(ds, workers)
        ds.close()
        cache = work / f"cache-{r}"
        started = time.perf_counter()
        ds = ReBENDataset(url, bands=bands, native=True, cache_dir=cache)
        ds.archive.prefetch()  # the global sampler's working set: every shard
        fetched = ds.archive.cache.stats["bytes"]
        t_fetch = time.perf_counter() - started
        t_cold_epoch, _ = epoch(ds, workers)
        ds.close()
        t_cold = t_fetch + t_cold_epoch
        started = time.perf_counter()
        ds = ReBENDataset(url, bands=bands, native=True, cache_dir=cache)
        ds.archive.prefetch()
        t_open = time.perf_counter() - started
        t_warm_epoch, _ = epoch(ds, workers)
        assert ds.archive.cache.stats["shards"] == 0  # warm: nothing fetched
        ds.close()
        t_warm = t_open + t_warm_epoch
        bound = fetched / 1e6 / endpoint["files_MBps"] + t_local
        rows.append(
            {
                "samples": n,
                "local_s": t_local,
                "cold_s": t_cold,
                "cold_fetch_s": t_fetch,
                "warm_s": t_warm,
                "warm_epoch_s": t_warm_epoch,
                "warm_open_s": t_open,
                "fetched_bytes": fetched,
                "endpoint_memory_MBps": endpoint["memory_MBps"],
                "endpoint_files_MBps": endpoint["files_MBps"],
                "cold_bound_s": bound,
                "cold_over_bound": t_cold / bound,
            }
        )
        shutil.rmtree(cache)
        print(json.dumps(rows[-1]), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    ratios = [r["local_s"] / r["warm_epoch_s"] for r in rows]
    return {
        "rounds": rows,
        "median": med,
        "local_samples_per_s": med["samples"] / med["local_s"],
        "cold_samples_per_s": med["samples"] / med["cold_s"],
        "warm_epoch_samples_per_s": med["samples"] / med["warm_epoch_s"],
        "warm_epoch_over_local": statistics.median(ratios),
        "warm_epoch_over_local_min": min(ratios),
        "warm_with_open_over_local": statistics.median(r["local_s"] / r["warm_s"] for r in rows),
        "cold_over_local": statistics.median(r["local_s"] / r["cold_s"] for r in rows),
        "cold_fetch_MBps": statistics.median(r["fetched_bytes"] / 1e6 / r["cold_fetch_s"] for r in rows),
        "cold_over_bound_max": max(r["cold_over_bound"] for r in rows),
    }


def bytes_per_node(url: str, local: Path, work: Path, counts=(1, 2, 4)) -> dict:
    from reben_tools.format.manifest import read_manifest
    from reben_tools.learn.data.dataset import ReBENDataset
    from reben_tools.learn.data.loaders import split_indices
    from reben_tools.learn.data.shard_sampler import make_samplers
    from reben_tools.learn.runtime.distributed import Distributed

    manifest = read_manifest(local)
    shard_bytes = {
        s["name"]: sum(d["bytes"] for f, d in s["files"].items() if f in ("data.mdb", "keys.parquet"))
        for s in manifest["shards"]
    }
    archive_bytes = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
    reader_bytes = sum(shard_bytes.values())
    out = {
        "archive_bytes": archive_bytes,
        "reader_shard_bytes": reader_bytes,
        "largest_shard": max(shard_bytes.values()),
    }
    for n in counts:
        nodes = []
        for node in range(n):
            cache = work / f"nodes{n}-{node}"
            ds = ReBENDataset(url, bands="ALL", native=True, cache_dir=cache)
            ctx = Distributed(rank=node, world_size=n, local_rank=0, local_world_size=1)
            make_samplers(  # fetches this node's shards into its cache
                "shard-local", ds, split_indices(ds, "train"), {"validation": split_indices(ds, "validation")}, ctx, 0
            )
            files = sum(p.stat().st_size for p in ds.root.glob("*") if p.is_file() and not p.name.startswith("."))
            got = ds.archive.cache.stats["bytes"] + files
            limit = archive_bytes / n + max(shard_bytes.values())
            nodes.append(
                {"node": node, "bytes": got, "share": got / archive_bytes, "limit_share": limit / archive_bytes}
            )
            ds.close()
            shutil.rmtree(cache)
        out[str(n)] = nodes
        print(n, json.dumps(nodes), flush=True)
    return out


def drift(demo: Path) -> dict:
    from reben_tools.learn.data.dataset import ReBENDataset
    from reben_tools.learn.data.loaders import split_indices
    from reben_tools.learn.data.shard_sampler import label_drift, make_samplers
    from reben_tools.learn.runtime.distributed import Distributed

    ds = ReBENDataset(demo, bands="S1", native=True)
    train, val = split_indices(ds, "train"), split_indices(ds, "validation")
    out = {}
    for world in (2, 4):
        for kind in ("global", "shard-local"):
            values, run = [], []
            for rank in range(world):
                ctx = Distributed(rank=rank, world_size=world, local_rank=0, local_world_size=1)
                sampler, _ = make_samplers(kind, ds, train, {"validation": val}, ctx, 0)
                sampler.set_epoch(0)
                values.append(label_drift(ds.labels, sampler.share(), train))
                seen = []  # what the process sees over a run of RUN_EPOCHS epochs
                for e in range(RUN_EPOCHS):
                    sampler.set_epoch(e)
                    seen += sampler.share()
                run.append(label_drift(ds.labels, seen, train))
            out[f"{kind}_{world}"] = {
                "per_rank": values,
                "max": max(values),
                "mean": float(np.mean(values)),
                "run_per_rank": run,
                "run_max": max(run),
                "run_mean": float(np.mean(run)),
            }
    return out


def train_ap(demo: Path, work: Path, seeds: list[int], epochs: int) -> dict:
    """Best validation macro AP of `reben train` on 2 gloo nodes (one process each), global vs shard-local."""
    out: dict = {"global": [], "shard-local": []}
    cores = sorted(os.sched_getaffinity(0))
    for seed in seeds:
        for kind in ("global", "shard-local"):
            run = work / f"train-{kind}-{seed}"
            port = free_port()
            procs = []
            for node in range(2):
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node)]
                cmd += ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
                cmd += ["-m", "reben_tools.cli", "train", "--archive", str(demo), "--bands", "10m_20m"]
                cmd += ["--model", "resnet_micro", "--epochs", str(epochs), "--batch-size", "32", "--workers", "0"]
                cmd += ["--device", "cpu", "--seed", str(seed), "--sampler", kind, "--patience", str(epochs)]
                cmd += ["--out", str(run), "--no-test", "-q"]
                core = {cores[node % len(cores)]}
                procs.append(
                    subprocess.Popen(
                        cmd,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                        preexec_fn=lambda core=core: os.sched_setaffinity(0, core),
                    )
                )
            for p in procs:
                _, err = p.communicate()
                if p.returncode:
                    raise RuntimeError(err[-3000:])
            metrics = json.loads((run / "metrics.json").read_text())
            best = max(e["validation"]["average_precision_macro"] for e in metrics["epochs"])
            out[kind].append(best)
            print(kind, seed, best, flush=True)
    out["mean"] = {k: float(np.mean(v)) for k, v in out.items() if isinstance(v, list) and v}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, help="an archive to use (default: generate one)")
    parser.add_argument("--patches", type=int, default=1500, help="generated archive: train+validation+test patches")
    parser.add_argument("--shards", type=int, default=16, help="generated archive: shards")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--demo", type=Path, help="a `reben demo` archive: drift and validation AP")
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[], help="seeds of the AP comparison")
    parser.add_argument("--train-epochs", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-object-store-"))
    endpoint, _ = start_endpoint()
    result: dict = {"machine": {"cpus": len(os.sched_getaffinity(0))}}
    try:
        if args.archive is None:
            from training_archive import build_learnable_archive

            n = args.patches
            counts = {"train": n * 6 // 10, "validation": n * 2 // 10, "test": n - n * 6 // 10 - n * 2 // 10}
            t = time.perf_counter()
            local = Path(build_learnable_archive(work / "archive", counts=counts, shards=args.shards)["root"])
            print(f"generated {n} patches in {time.perf_counter() - t:.1f} s", flush=True)
        else:
            local = args.archive
        url = f"s3://{BUCKET}/archive"
        result["upload_s"] = upload(local, url)
        result["archive_bytes"] = sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        prepare_bandwidth_objects(work)
        result["throughput"] = throughput(local, url, work, args.rounds, args.workers)
        result["bytes_per_node"] = bytes_per_node(url, local, work)
        if args.demo:
            result["drift"] = drift(args.demo)
            print(json.dumps(result["drift"]), flush=True)
            if args.train_seeds:
                result["validation_ap"] = train_ap(args.demo, work, args.train_seeds, args.train_epochs)
    finally:
        endpoint.terminate()
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
