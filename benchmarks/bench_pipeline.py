"""Benchmarks of the scene-to-archive pipeline (results are recorded in BENCHMARKS.md).

Figures, each measured within one process run so that ratios compare like with like
on a machine whose cores are shared:

1. ``decode``: per product, the pipeline's work (every block of the product run
   serially in this process, shards written) against merely decoding each of the
   product's 13 rasters once in full (rasterio ``read``), interleaved and repeated;
   goal ratio <= 1.5.
2. ``memory``: peak RSS of each Dask worker process (``ru_maxrss``) after building a
   full-size 10,980 x 10,980 product on a LocalCluster; goal < 2.5 GiB.
3. ``scaling``: wall time of the same build on an already started LocalCluster with
   1 worker and with 2 workers (cluster start-up excluded), interleaved; goal >= 1.7x.
4. ``projection``: hours to rebuild reBEN's 115 products on 32 cores from the
   measured per-product cost and the measured parallel efficiency.
5. ``remote``: one demo product as Cloud-Optimised GeoTIFFs (``tests/cloud_demo.py``) read
   through its STAC item from the loopback Range HTTP server (``tests/servers.py``) against the
   same COGs on local disk, every block run serially in this process, interleaved and
   repeated (fresh URLs and closed rasters each time: no cache carried over): the time ratio
   (goal <= 1.3), the bytes fetched against the bytes the reads need (full-resolution tiles
   under the blocks' windows plus each file's header; goal <= 1.1) and against the files'
   sizes, and the request count.

Usage::

    python benchmarks/bench_pipeline.py --demo-dir /tmp/bench/demo --full-dir /tmp/bench/full \\
        --work-dir /tmp/bench/work --json benchmarks/pipeline_results.json

The demo region (``reben_tools.builder.demo_region.region.generate_region``) and the full-size product
(``write_full_size_product``) are generated into the given folders when absent.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import rasterio

from reben_tools.builder.corine import open_clc
from reben_tools.builder.pipeline.block import run_block
from reben_tools.builder.pipeline.config import PipelineConfig
from reben_tools.builder.pipeline.discovery import discover
from reben_tools.builder.pipeline.planning import plan_tasks
from reben_tools.builder.pipeline.run import build_archive

REBEN_PRODUCTS = 115
CLUSTER_CORES = 32


def _quiet(_: str) -> None:
    pass


def ensure_demo(path: Path) -> Path:
    if not (path / "expected.json").is_file():
        from reben_tools.builder.demo_region.region import generate_region

        print(f"generating demo region in {path} ...", flush=True)
        generate_region(path, seed=0, overwrite=True)
    return path


def ensure_full(path: Path) -> tuple[Path, Path, Path]:
    s2 = path / "S2"
    if not s2.is_dir() or not any(s2.iterdir()):
        from reben_tools.builder.demo_region.full_size import write_full_size_product

        print(f"generating the full-size product in {path} (a few minutes) ...", flush=True)
        write_full_size_product(path, progress=True)
    clc = next((path / "corine").glob("*.gpkg"))
    return s2, path / "S1", clc


def demo_config(demo: Path, rows_per_block: int) -> PipelineConfig:
    return PipelineConfig(
        s2=[str(demo / "S2")],
        s1=[str(demo / "S1")],
        clc=str(next((demo / "corine").glob("*.gpkg"))),
        countries_file=str(next((demo / "countries").glob("*.geojson"))),
        rows_per_block=rows_per_block,
        memory_limit="4GiB",
    )


def full_config(full: Path, rows_per_block: int) -> PipelineConfig:
    s2, s1, clc = ensure_full(full)
    return PipelineConfig(s2=[str(s2)], s1=[str(s1)], clc=str(clc), rows_per_block=rows_per_block, memory_limit="4GiB")


def decode_product(product) -> float:
    """Seconds to decode each of the product's rasters once, in full."""
    start = time.perf_counter()
    with rasterio.Env(GDAL_NUM_THREADS="1", OPJ_NUM_THREADS="1", GDAL_CACHEMAX=128):
        for path in product.band_paths.values():
            with rasterio.open(path) as ds:
                ds.read(1)
    return time.perf_counter() - start


def pipeline_product(config: PipelineConfig, product_index: int, work: Path) -> tuple[float, int]:
    """Seconds to run every block of one product serially in this process (shards written)."""
    inputs = discover(config)
    inputs.products = [inputs.products[product_index]]
    clc = open_clc(config.clc, config.clc_code_column)
    shards = Path(tempfile.mkdtemp(dir=work))
    tasks = plan_tasks(config, inputs, clc, shards)
    start = time.perf_counter()
    kept = 0
    for task in tasks:
        result = run_block(task)
        assert result["status"] == "ok", result
        kept += result["kept"]
    elapsed = time.perf_counter() - start
    shutil.rmtree(shards)
    return elapsed, kept


def bench_decode(config: PipelineConfig, work: Path, repeats: int, label: str) -> list[dict]:
    inputs = discover(config)
    out = []
    for index, product in enumerate(inputs.products):
        decode, pipe, kept = [], [], 0
        for _ in range(repeats):
            decode.append(decode_product(product))
            seconds, kept = pipeline_product(config, index, work)
            pipe.append(seconds)
        row = {
            "set": label,
            "product": product.path.name,
            "patches": product.grid.num_patches,
            "kept": kept,
            "decode_s": statistics.median(decode),
            "pipeline_s": statistics.median(pipe),
            "ratio": statistics.median(pipe) / statistics.median(decode),
            "repeats": repeats,
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def _worker_peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_memory(config: PipelineConfig, work: Path, workers: int) -> dict:
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, memory_limit="6GiB", dashboard_address=":0"
    )
    client = Client(cluster)
    try:
        baseline = client.run(_worker_peak_rss_mib)
        out = work / "memory-archive"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        result = build_archive(config, out=out, scheduler=cluster.scheduler_address, progress=False, echo=_quiet)
        elapsed = time.perf_counter() - start
        peaks = client.run(_worker_peak_rss_mib)
    finally:
        client.close()
        cluster.close()
    shutil.rmtree(out, ignore_errors=True)
    row = {
        "workers": workers,
        "rows_per_block": config.rows_per_block,
        "build_s": elapsed,
        "kept": result.kept + result.flagged,
        "idle_rss_mib": sorted(baseline.values()),
        "peak_rss_mib": sorted(peaks.values()),
        "max_peak_gib": max(peaks.values()) / 1024.0,
    }
    print(json.dumps(row), flush=True)
    return row


def bench_scaling(config: PipelineConfig, work: Path, repeats: int) -> dict:
    from dask.distributed import Client, LocalCluster

    times: dict[int, list[float]] = {1: [], 2: []}
    execute: dict[int, list[float]] = {1: [], 2: []}
    busy: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    clusters = {
        n: LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit="4GiB", dashboard_address=":0")
        for n in (1, 2)
    }
    clients = {n: Client(c) for n, c in clusters.items()}
    try:
        for client in clients.values():  # warm-up: imports in the worker processes
            client.run(lambda: __import__("reben_tools.builder.pipeline.block"))
        for _ in range(repeats):
            for n in (1, 2):
                out = work / f"scaling-{n}"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                result = build_archive(
                    config, out=out, scheduler=clusters[n].scheduler_address, progress=False, echo=_quiet
                )
                times[n].append(time.perf_counter() - start)
                execute[n].append(result.execute_seconds)
                busy[n].append(result.task_seconds)
                cpu[n].append(result.task_cpu_seconds)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()
    t1, t2 = statistics.median(times[1]), statistics.median(times[2])
    e1, e2 = statistics.median(execute[1]), statistics.median(execute[2])
    row = {
        "rows_per_block": config.rows_per_block,
        "t1_s": times[1],
        "t2_s": times[2],
        "speedup": t1 / t2,
        "efficiency": t1 / t2 / 2,
        "execute_1_s": execute[1],
        "execute_2_s": execute[2],
        "execute_speedup": e1 / e2,
        "task_wall_s": busy,
        "task_cpu_s": cpu,
        "cpu_share_in_tasks_2_workers": statistics.median(cpu[2]) / statistics.median(busy[2]),
    }
    print(json.dumps(row), flush=True)
    return row


REMOTE_ITEM = "S2A_31UGR_20170613_0_L2A"
COG_HEADER_BYTES = 16384


def _needed_bytes(product, tasks) -> int:
    """Bytes a reader needs: every full-resolution tile under the blocks' windows, plus each file's header."""
    from reben_tools.builder.scenes import PRODUCT_BANDS, block_window

    total = 0
    for band, path in product.band_paths.items():
        with rasterio.open(path) as ds:
            bh, bw = ds.block_shapes[0]
            tiles = set()
            for task in tasks:
                w = block_window(task.block, PRODUCT_BANDS[band], product.grid)
                for r in range(int(w.row_off) // bh, (int(w.row_off + w.height) - 1) // bh + 1):
                    for c in range(int(w.col_off) // bw, (int(w.col_off + w.width) - 1) // bw + 1):
                        tiles.add((r, c))
            for r, c in tiles:
                total += int(ds.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1) or 0)
        # the header: the IFDs of a COG sit in its first bytes, which GDAL ingests at open (16 KiB)
        total += min(COG_HEADER_BYTES, Path(path).stat().st_size)
    return total


def _remote_run(items, demo: Path, work: Path, label: str) -> tuple[float, list]:
    from reben_tools.builder.pipeline.discovery import discover as discover_inputs
    from reben_tools.builder.scenes import OPEN_RASTERS, forget_tile_rows

    config = demo_config(demo, 5).model_copy(update={"s2": []})
    inputs = discover_inputs(config, items=items)
    assert len(inputs.products) == 1, inputs.skipped
    clc = open_clc(config.clc, config.clc_code_column)
    shards = Path(tempfile.mkdtemp(dir=work, prefix=label))
    tasks = plan_tasks(config, inputs, clc, shards)
    OPEN_RASTERS.close_all()
    forget_tile_rows()
    return inputs.products[0], tasks, shards


def bench_remote(demo: Path, work: Path, repeats: int) -> dict:
    """The same COG product from local disk and from the loopback HTTP server (see the module docstring)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from cloud_demo import cog_catalogue
    from servers import range_http_server

    from reben_tools.builder.stac import StacItem

    cloud_dir = work / "cloud"
    if not (cloud_dir / "items.json").is_file():
        cog_catalogue(demo, cloud_dir)
    document = json.loads((cloud_dir / "items.json").read_text())
    item = next(f for f in document["features"] if f["id"] == REMOTE_ITEM)
    times: dict[str, list[float]] = {"disk": [], "http": []}
    fetched, requests, needed, file_bytes = [], [], 0, 0
    with range_http_server(cloud_dir) as server:
        for rep in range(repeats):
            for where in ("disk", "http"):
                copy = json.loads(json.dumps(item))
                for asset in copy["assets"].values():
                    href = asset["href"]
                    asset["href"] = str(cloud_dir / href) if where == "disk" else f"{server.url}/{href}?rep={rep}"
                server.stats.reset()  # discovery's reads (headers, the offset check) count too
                started = time.perf_counter()
                product, tasks, shards = _remote_run([StacItem(copy, None)], demo, work, where)
                opened = time.perf_counter() - started
                if where == "disk" and rep == 0:
                    needed = _needed_bytes(product, tasks)
                    file_bytes = sum(Path(p).stat().st_size for p in product.band_paths.values())
                start = time.perf_counter() - opened
                for task in tasks:
                    result = run_block(task)
                    assert result["status"] == "ok", result
                times[where].append(time.perf_counter() - start)
                if where == "http":
                    fetched.append(server.stats.bytes_sent)
                    requests.append(len(server.stats.requests))
                shutil.rmtree(shards)
    row = {
        "item": REMOTE_ITEM,
        "blocks": len(tasks),
        "disk_s": times["disk"],
        "http_s": times["http"],
        "time_ratio": statistics.median(times["http"]) / statistics.median(times["disk"]),
        "bytes_fetched": fetched,
        "bytes_needed": needed,
        "bytes_in_files": file_bytes,
        "fetched_over_needed": statistics.median(fetched) / needed,
        "fetched_over_files": statistics.median(fetched) / file_bytes,
        "requests": requests,
        "repeats": repeats,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", type=Path, default=Path("/tmp/reben-bench/demo"))
    parser.add_argument("--full-dir", type=Path, default=Path("/tmp/reben-bench/full"))
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/reben-bench/work"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["decode", "full-decode", "memory", "scaling", "remote"]
    )
    parser.add_argument("--scaling-set", choices=["demo", "full"], default="demo")
    parser.add_argument("--scaling-rows", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, 2 vCPU shared with other sessions",
        "python": platform.python_version(),
    }

    demo = ensure_demo(args.demo_dir)
    if "remote" not in args.skip:
        results["remote"] = bench_remote(demo, args.work_dir, args.repeats)
    if "decode" not in args.skip:
        results["decode_demo"] = bench_decode(demo_config(demo, 5), args.work_dir, args.repeats, "demo")
    if "scaling" not in args.skip:
        config = (
            demo_config(demo, args.scaling_rows)
            if args.scaling_set == "demo"
            else full_config(args.full_dir, args.scaling_rows)
        )
        results["scaling_demo"] = bench_scaling(config, args.work_dir, args.repeats)
        results["scaling_demo"]["set"] = args.scaling_set
    full = None
    if "full-decode" not in args.skip or "memory" not in args.skip:
        full = full_config(args.full_dir, 8)
    if "full-decode" not in args.skip:
        results["decode_full"] = bench_decode(full, args.work_dir, 1, "full")
    if "memory" not in args.skip:
        results["memory_full"] = bench_memory(full, args.work_dir, 2)

    per_product = None
    if "decode_full" in results:
        per_product = results["decode_full"][0]["pipeline_s"]
    elif "memory_full" in results:
        per_product = results["memory_full"]["build_s"] * 2  # 2 workers busy for build_s
    if per_product is not None:
        efficiency = min(results.get("scaling_demo", {}).get("efficiency", 0.85), 1.0)
        hours = REBEN_PRODUCTS * per_product / (CLUSTER_CORES * efficiency) / 3600
        results["projection"] = {
            "per_product_core_s": per_product,
            "products": REBEN_PRODUCTS,
            "cores": CLUSTER_CORES,
            "parallel_efficiency": efficiency,
            "hours": hours,
        }
        print(json.dumps(results["projection"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
