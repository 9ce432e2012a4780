"""Running block tasks on Dask: the client (or LocalCluster), chains of blocks, collecting results.

Owns: connecting to a scheduler or starting a LocalCluster (its workers ignore Ctrl-C:
the client stops them), checking that every worker can write the output where the
client reads it and open every input (:func:`check_workers`; for a build into a store:
that every worker writes objects the client sees, :func:`check_workers_store`), cutting
each product's blocks into chains run one after the other (GDAL cache reuse), submitting them,
resubmitting a block whose worker died (or whose chain predecessor did) once on its
own, and turning unexpected worker errors into failed-block summaries.
Does not own: what a block does (block), which blocks to run (planning, run).
May import: .block, .config, .planning, reben_tools.format (the store probe), dask.distributed, tqdm.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from reben_tools.builder.pipeline.block import run_block
from reben_tools.builder.pipeline.config import BuildError, PipelineConfig
from reben_tools.builder.pipeline.planning import BlockTask


def _make_client(config: PipelineConfig, scheduler: str | None, workers: int):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise BuildError(f"cannot connect to the Dask scheduler {scheduler} ({exc})") from None
    # worker processes inherit an ignored SIGINT: Ctrl-C reaches only the client, which stops them
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=config.threads_per_worker,
            processes=True,
            memory_limit=config.memory_limit,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    return Client(cluster), cluster


def probe_worker(out: str, token: str, inputs: list) -> dict:
    """Runs on each worker: write a probe file into ``out`` and check every input can be opened.

    Remote inputs (``RemotePath``) are checked with a HEAD request or an S3 stat from the worker
    (its own network and credentials).

    Returns:
        ``{"probe": name written or None, "error": first problem or None, "host": hostname}``.
    """
    name = f".reben-probe-{token}-{socket.gethostname()}-{os.getpid()}"
    try:
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write("probe\n")
    except OSError as exc:
        return {
            "probe": None,
            "error": f"{out}: cannot write the output ({exc.strerror or exc})",
            "host": socket.gethostname(),
        }
    from reben_tools.builder.locations import RemotePath, check_readable

    for path in inputs:
        if isinstance(path, RemotePath):
            problem = check_readable(path)
            if problem:
                return {"probe": name, "error": problem, "host": socket.gethostname()}
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            return {
                "probe": name,
                "error": f"{path}: cannot open input ({exc.strerror or exc})",
                "host": socket.gethostname(),
            }
    return {"probe": name, "error": None, "host": socket.gethostname()}


def check_workers(client, out: Path, inputs: list[str]) -> None:
    """Every worker writes where this client reads (``out``) and opens every input; else BuildError.

    Raises:
        BuildError: naming the first worker and the path it cannot reach.
    """
    token = uuid.uuid4().hex[:12]
    out.mkdir(parents=True, exist_ok=True)
    answers = client.run(probe_worker, str(out), token, inputs)
    try:
        for address, answer in sorted(answers.items()):
            if answer["error"]:
                raise BuildError(f"worker {address} on {answer['host']}: {answer['error']}")
            if not (out / answer["probe"]).is_file():
                raise BuildError(
                    f"worker {address} on {answer['host']} writes {out} on a file system this client "
                    "does not see; the output must be shared by the client and every worker"
                )
    finally:
        for path in out.glob(f".reben-probe-{token}-*"):
            path.unlink(missing_ok=True)


def probe_worker_store(url: str, token: str, inputs: list[str]) -> dict:
    """Runs on each worker of a build into a store: write a probe object under ``url``, open every input.

    Returns:
        as :func:`probe_worker`, ``probe`` being the object's name.
    """
    from reben_tools.format.object_store import Store

    name = f".reben-probe-{token}-{socket.gethostname()}-{os.getpid()}"
    try:
        Store(url).write_bytes(name, b"probe\n")
    except Exception as exc:
        return {"probe": None, "error": f"cannot write the output ({exc})", "host": socket.gethostname()}
    scratch = _scratch_dir()
    answer = probe_worker(scratch, token, inputs)  # local scratch writable, inputs readable
    if answer["probe"]:
        Path(scratch, answer["probe"]).unlink(missing_ok=True)
    if answer["error"] and answer["probe"] is None:
        answer["error"] = answer["error"].replace("cannot write the output", "cannot write its local scratch folder")
    return {**answer, "probe": name}


def _scratch_dir() -> str:
    """Where this worker builds shards before uploading them (its Dask local folder, else the temporary folder)."""
    import tempfile

    try:
        from dask.distributed import get_worker

        return get_worker().local_directory
    except (ImportError, ValueError):
        return tempfile.gettempdir()


def check_workers_store(client, url: str, inputs: list[str]) -> None:
    """Every worker writes objects under ``url`` that this client sees, has local scratch and opens
    every input; else BuildError naming the first worker that cannot."""
    from reben_tools.format.object_store import Store

    token = uuid.uuid4().hex[:12]
    store = Store(url)
    answers = client.run(probe_worker_store, url, token, inputs)
    try:
        listed = set(store.listing())
        for address, answer in sorted(answers.items()):
            if answer["error"]:
                raise BuildError(f"worker {address} on {answer['host']}: {answer['error']}")
            if answer["probe"] not in listed:
                raise BuildError(
                    f"worker {address} on {answer['host']} writes {url}/{answer['probe']}, which this client "
                    "does not see: the client and every worker must reach the same store (endpoint, credentials)"
                )
    finally:
        store.delete(sorted(name for name in store.listing() if name.startswith(f".reben-probe-{token}-")))


def run_block_after(task: BlockTask, previous: dict | None) -> dict:
    """:func:`run_block`, scheduled after the previous block of the same chain (``previous`` is its summary).

    The summary gets the address of the worker that ran it (``"worker"``).
    """
    summary = run_block(task)
    try:
        from dask.distributed import get_worker

        summary["worker"] = get_worker().address
    except ValueError:  # not on a worker
        pass
    return summary


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
    chains: list[list[BlockTask]] = []
    for product_tasks in by_product.values():
        product_tasks.sort(key=lambda t: t.block.row_start)
        n = min(per_product, len(product_tasks))
        size = math.ceil(len(product_tasks) / n)
        chains.extend(product_tasks[i : i + size] for i in range(0, len(product_tasks), size))
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


def execute(
    tasks: list[BlockTask],
    config: PipelineConfig,
    scheduler: str | None,
    workers: int,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    out: Path | None = None,
    inputs: list[str] | None = None,
    store_url: str | None = None,
) -> list[dict]:
    """Run ``tasks`` on a Dask cluster; returns their summaries in completion order.

    With ``out``, every worker is first checked to write where the client reads and to open
    ``inputs`` (:func:`check_workers`); with ``store_url`` (a build into a store), to write
    objects there that the client sees and to open ``inputs`` (:func:`check_workers_store`).
    A block whose future fails (its worker died, or the previous block of its chain did) is
    resubmitted once on its own; a second failure is
    returned as a failed block. On KeyboardInterrupt the cluster is stopped without logging
    and the interrupt is re-raised.
    """
    if not tasks:
        return []
    from dask.distributed import as_completed
    from tqdm import tqdm

    client, cluster = _make_client(config, scheduler, workers)
    interrupted = False
    try:
        if store_url is not None:
            check_workers_store(client, store_url, inputs or [])
        elif out is not None:
            check_workers(client, out, inputs or [])
        try:
            import bokeh  # noqa: F401

            echo(f"Dask dashboard: {client.dashboard_link}")
        except ImportError:
            echo(f"Dask dashboard: {client.dashboard_link} (install bokeh to serve it)")
        futures = submit_chains(client, tasks)
        by_key = {f"reben-block-{t.shard_name}": t for t in tasks}
        retried: set[str] = set()
        results = []
        with tqdm(total=len(futures), desc="blocks", unit="block", disable=not progress, file=sys.stderr) as bar:
            pending = as_completed(futures)
            for future in pending:
                key = future.key if isinstance(future.key, str) else str(future.key)
                base = key.removesuffix("-retry")
                try:
                    results.append(future.result())
                except Exception as exc:
                    if base in by_key and base not in retried:
                        retried.add(base)
                        pending.add(client.submit(run_block_after, by_key[base], None, key=f"{base}-retry", pure=False))
                        future.release()
                        continue
                    name = base.removeprefix("reben-block-")
                    results.append({"shard": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
                bar.update(1)
                future.release()
        return results
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if interrupted:  # stop quietly: no retry warnings or worker tracebacks on the way out
            for name in ("distributed", "tornado", "asyncio"):
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        client.close()
        if cluster is not None:
            cluster.close()
