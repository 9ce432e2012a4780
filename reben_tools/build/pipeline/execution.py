"""Running block tasks on Dask: the client (or LocalCluster), chains of blocks, collecting results.

Owns: connecting to a scheduler or starting a LocalCluster, cutting each product's
blocks into chains run one after the other (GDAL cache reuse), submitting them and
turning unexpected worker errors into failed-block summaries.
Does not own: what a block does (block), which blocks to run (planning, run).
May import: .block, .config, .planning, dask.distributed, tqdm.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable

from reben_tools.build.pipeline.block import run_block
from reben_tools.build.pipeline.config import BuildError, PipelineConfig
from reben_tools.build.pipeline.planning import BlockTask


def _make_client(config: PipelineConfig, scheduler: str | None, workers: int):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise BuildError(f"cannot connect to the Dask scheduler {scheduler} ({exc})") from None
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=config.threads_per_worker, processes=True,
        memory_limit=config.memory_limit, dashboard_address=":0", silence_logs=logging.ERROR,
    )
    return Client(cluster), cluster


def run_block_after(task: BlockTask, previous: dict | None) -> dict:
    """:func:`run_block`, scheduled after the previous block of the same chain (``previous`` is its summary)."""
    return run_block(task)


def chains_for(tasks: list[BlockTask], threads: int) -> list[list[BlockTask]]:
    """Cut each product's blocks into runs of consecutive blocks, run one after the other.

    A worker that builds block ``k`` and then ``k + 1`` of a product reuses the decoded
    JPEG2000 tiles the two blocks share (kept in GDAL's cache), so consecutive blocks
    go to one worker. Each product gets ``ceil(threads / products)`` chains (at most one
    per block), enough to keep every worker thread busy when products are few.
    """
    by_product: dict[str, list[BlockTask]] = {}
    for task in tasks:
        by_product.setdefault(task.product.prefix, []).append(task)
    per_product = max(1, math.ceil(threads / max(len(by_product), 1)))
    chains = []
    for product_tasks in by_product.values():
        product_tasks.sort(key=lambda t: t.block.row_start)
        n = min(per_product, len(product_tasks))
        size = math.ceil(len(product_tasks) / n)
        chains.extend(product_tasks[i:i + size] for i in range(0, len(product_tasks), size))
    return chains


def submit_chains(client, tasks: list[BlockTask]) -> list:
    """Submit every task, each after the previous one of its chain; returns the futures."""
    threads = sum(client.nthreads().values()) or 1
    futures = []
    for chain in chains_for(tasks, threads):
        previous = None
        for task in chain:
            previous = client.submit(run_block_after, task, previous, key=f"reben-block-{task.shard_name}", pure=False)
            futures.append(previous)
    return futures


def execute(tasks: list[BlockTask], config: PipelineConfig, scheduler: str | None, workers: int,
            progress: bool = True, echo: Callable[[str], None] = print) -> list[dict]:
    """Run ``tasks`` on a Dask cluster; returns their summaries in completion order."""
    if not tasks:
        return []
    from dask.distributed import as_completed
    from tqdm import tqdm

    client, cluster = _make_client(config, scheduler, workers)
    try:
        try:
            import bokeh  # noqa: F401

            echo(f"Dask dashboard: {client.dashboard_link}")
        except ImportError:
            echo(f"Dask dashboard: {client.dashboard_link} (install bokeh to serve it)")
        futures = submit_chains(client, tasks)
        results = []
        with tqdm(total=len(futures), desc="blocks", unit="block", disable=not progress, file=sys.stderr) as bar:
            for future in as_completed(futures):
                try:
                    results.append(future.result())
                except Exception as exc:  # noqa: BLE001 - an unexpected worker error must not stop the build
                    name = future.key.removeprefix("reben-block-") if isinstance(future.key, str) else str(future.key)
                    results.append({"shard": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
                bar.update(1)
                future.release()
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
