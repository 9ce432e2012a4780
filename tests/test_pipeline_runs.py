"""How a ``reben build`` run behaves around its blocks: interrupts, empty inputs, changed inputs, dead workers.

- Ctrl-C (a real SIGINT to the build's process group, as a terminal sends it) stops the
  cluster and prints one line; the rerun resumes to the same bytes.
- ``--s2`` naming a folder without any product says so and leaves no output folder.
- A file changed in place (same name and size) rebuilds exactly the shards that read it.
- A block whose worker dies every time costs that block only, not the rest of its chain.
- A shard reported written but not visible to the client is an error, never a silent drop.

Inputs: the pipeline tests' generated region (``tests/pipeline_fixtures.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pipeline_fixtures as fx
import pytest
from helpers import as_terminal_job

from reben_tools.builder.pipeline.config import BuildError, PipelineConfig
from reben_tools.builder.pipeline.run import build_archive

REPO = Path(__file__).resolve().parents[1]


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def region(tmp_path_factory) -> fx.Region:
    return fx.make_region(tmp_path_factory.mktemp("region"))


@pytest.fixture(scope="module")
def config_path(region, tmp_path_factory) -> Path:
    return fx.write_config(tmp_path_factory.mktemp("config") / "runs.toml", region, rows_per_block=1)


@pytest.fixture(scope="module")
def reference(config_path, tmp_path_factory) -> Path:
    """An undisturbed build of the region (one worker, one-row blocks)."""
    out = tmp_path_factory.mktemp("reference") / "archive"
    build_archive(PipelineConfig.from_file(config_path), out=out, workers=1, progress=False, echo=_quiet)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "summary_map.png"
    }


def _reben(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "reben_tools.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kwargs,
    )


SLOW_LATER_BLOCKS = """
    import reben_tools.builder.pipeline.execution as ex
    _make_client = ex._make_client
    def _install_fault():
        import os, time
        import reben_tools.builder.pipeline.block as blk
        import reben_tools.builder.pipeline.execution as ex
        _run = blk.run_block
        def run_block(task):
            try:  # the first block to start runs at full speed, every later one 5 s late
                os.close(os.open(MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                time.sleep(5)
            return _run(task)
        blk.run_block = run_block
        ex.run_block = run_block
    def make_client(*a, **k):
        client, cluster = _make_client(*a, **k)
        client.register_plugin(_Plugin())
        return client, cluster
    from distributed.diagnostics.plugin import WorkerPlugin
    class _Plugin(WorkerPlugin):
        def setup(self, worker):
            _install_fault()
    ex._make_client = make_client
    """
"""Slows every block but the first, so Ctrl-C lands mid-build however loaded the machine is
(on 2 busy cores the whole build could finish between two polls of the test)."""


def test_ctrl_c_stops_quietly_with_one_line_and_the_rerun_resumes(config_path, reference, tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from reliability_helpers import _fault_command

    out = tmp_path / "archive"
    args = ("build", str(config_path), "--out", str(out), "--workers", "1", "--no-progress")
    fault = f"MARKER = {str(tmp_path / 'first-block')!r}\n" + SLOW_LATER_BLOCKS.replace("\n    ", "\n")
    proc = subprocess.Popen(
        _fault_command(list(args), fault, new_session=False),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
        preexec_fn=as_terminal_job,
    )
    shards = out / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and any(not p.name.startswith(".") for p in shards.iterdir()):
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    output, _ = proc.communicate(timeout=120)
    finished = sorted(p.name for p in shards.iterdir() if not p.name.startswith("."))
    assert proc.returncode == 130, output
    assert 1 <= len(finished) < 6, output
    lines = output.strip().splitlines()
    assert not any(word in output for word in ("Traceback", "Error", "ERROR", "Warning", "WARNING")), output
    assert lines[-1] == f"interrupted: {len(finished)} of 6 shards complete; rerun the same command to resume"
    assert not any("interrupted" in line for line in lines[:-1])
    rerun = _reben(*args)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert f"{6 - len(finished)} to build, {len(finished)} already built" in output
    assert _files(out) == _files(reference)


def test_s2_folder_without_products_is_named_and_leaves_no_output(region, tmp_path):
    docs = tmp_path / "docs"
    (docs / "images").mkdir(parents=True)
    (docs / "pipeline.md").write_text("# not a product\n")
    out = tmp_path / "archive"
    proc = _reben(
        "build",
        "--s2",
        str(docs),
        "--s1",
        str(region.s1_dir),
        "--clc",
        str(region.clc),
        "--out",
        str(out),
        "--no-progress",
    )
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert output.strip().splitlines() == [
        f"error: {docs}: holds no Sentinel-2 product (a .SAFE folder or a folder of GeoTIFFs named like an S2 L2A product); not named like one: images"
    ]
    assert not out.exists()


def test_an_input_changed_in_place_rebuilds_exactly_the_shards_that_read_it(region, tmp_path):
    import shutil

    inputs = tmp_path / "inputs"
    shutil.copytree(region.s2_dir, inputs / "s2")
    shutil.copytree(region.s1_dir, inputs / "s1")
    clc = shutil.copy(region.clc, inputs / region.clc.name)
    config = PipelineConfig(
        s2=[str(inputs / "s2")], s1=[str(inputs / "s1")], clc=str(clc), rows_per_block=1, memory_limit="1GiB"
    )
    out = tmp_path / "archive"
    build_archive(config, out=out, workers=1, progress=False, echo=_quiet)
    band = next((inputs / "s2" / fx.P2_NAME).glob("*_B02*.tif"))
    size = band.stat().st_size
    band.write_bytes(band.read_bytes())  # the same name and size, a new modification time
    os.utime(band, ns=(band.stat().st_atime_ns, band.stat().st_mtime_ns + 5_000_000_000))
    assert band.stat().st_size == size
    lines: list[str] = []
    build_archive(config, out=out, workers=1, progress=False, echo=lines.append)
    assert "3 to build, 3 already built" in lines[0]  # product 2's three one-row blocks
    os.utime(clc, ns=(os.stat(clc).st_atime_ns, os.stat(clc).st_mtime_ns + 5_000_000_000))
    lines.clear()
    build_archive(config, out=out, workers=1, progress=False, echo=lines.append)
    assert "6 to build, 0 already built" in lines[0]  # CORINE is read by every block


KILL_BLOCK = """
    import reben_tools.builder.pipeline.block as blk
    import reben_tools.builder.pipeline.execution as ex
    _make_client = ex._make_client
    def _install_fault():
        import os
        import reben_tools.builder.pipeline.block as blk
        _run = blk.run_block
        def run_block(task):
            if task.shard_name.endswith("T33UUP_rows01-01") and task.product.prefix.startswith("S2A"):
                try:  # the first attempt only
                    os.close(os.open(MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return _run(task)
                os._exit(1)  # the worker process dies, as under the OOM killer
            return _run(task)
        blk.run_block = run_block
        import reben_tools.builder.pipeline.execution as ex
        ex.run_block = run_block
    def make_client(*a, **k):
        client, cluster = _make_client(*a, **k)
        client.register_plugin(_Plugin())
        return client, cluster
    from distributed.diagnostics.plugin import WorkerPlugin
    class _Plugin(WorkerPlugin):
        def setup(self, worker):
            _install_fault()
    ex._make_client = make_client
    """


def test_a_worker_killed_in_a_block_costs_that_block_one_retry_not_its_chain(
    config_path, reference, tmp_path, monkeypatch
):
    """The first attempt of product 1's middle block kills its worker (as the OOM killer would).

    With one allowed failure per task (``allowed-failures = 0``), Dask fails that block at
    once with KilledWorker and, before the fix, every later block of its chain with it.
    """
    sys.path.insert(0, str(REPO / "tests"))
    from reliability_helpers import run_cli_with_fault

    out = tmp_path / "archive"
    fault = f"MARKER = {str(tmp_path / 'killed-once')!r}\n" + KILL_BLOCK.replace("\n    ", "\n")
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "0")  # the first death -> KilledWorker
    done = run_cli_with_fault(
        ["build", str(config_path), "--out", str(out), "--workers", "1", "--no-progress"], fault, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "killed-once").exists()  # the worker did die
    assert _files(out) == _files(reference), done.stdout + done.stderr


def test_a_shard_reported_written_but_not_visible_is_an_error(region, tmp_path):
    from reben_tools.builder.corine import open_clc
    from reben_tools.builder.pipeline.discovery import discover
    from reben_tools.builder.pipeline.planning import plan_tasks
    from reben_tools.builder.pipeline.run import _check_visible

    config = PipelineConfig(s2=[str(region.s2_dir)], s1=[str(region.s1_dir)], clc=str(region.clc), rows_per_block=3)
    tasks = plan_tasks(config, discover(config), open_clc(region.clc), tmp_path / "shards")
    result = {"shard": tasks[0].shard_name, "status": "ok", "worker": "tcp://10.0.0.7:40000"}
    with pytest.raises(
        BuildError,
        match=r"rows00-02: reported written \(worker tcp://10.0.0.7:40000\) but not "
        r"visible to this client; the output must be on a file system every "
        r"worker shares",
    ):
        _check_visible([result], tasks)
    _check_visible([{**result, "status": "failed"}], tasks)  # a failed block is reported, not an error


def test_each_worker_thread_keeps_its_own_product_open(region):
    """Two threads of one worker build two products block by block, in step.

    A product needs 13 rasters (12 bands and SCL); each must be opened once per thread
    (26 in all), not reopened because the other thread's product pushed it out.
    """
    import threading

    from reben_tools.builder.scenes import OPEN_RASTERS, open_s2_product, read_block

    products = [open_s2_product(region.product1), open_s2_product(region.product2)]
    OPEN_RASTERS.close_all()
    before = OPEN_RASTERS.opened
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def build(product) -> None:
        try:
            for block in product.grid.blocks(1):
                read_block(product, block, keep_open=True)
                barrier.wait(timeout=60)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(p,)) for p in products]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    OPEN_RASTERS.close_all()
    assert not errors
    assert OPEN_RASTERS.opened - before == 26


def test_duplicate_products_keep_the_one_covering_most_and_say_so(region, tmp_path):
    """Two generations of one acquisition; the later one is cut to its first 1,800 m of rows.

    Before, the first listed was kept whole and the other skipped whatever it held; now
    the one with more pixels holding data is kept and the report says which and why.
    """
    import shutil

    import numpy as np
    import rasterio

    from reben_tools.builder.pipeline.discovery import discover

    s2 = tmp_path / "s2"
    full = shutil.copytree(region.product2, s2 / fx.P2_NAME)
    later = fx.P2_NAME.replace("20170614T120000", "20230101T000000")
    cut = shutil.copytree(region.product2, s2 / later)
    for path in sorted(cut.glob("*.tif")):
        with rasterio.open(path) as ds:
            profile, data = ds.profile, ds.read(1)
        data[(1800 // int(profile["transform"].a)) :, :] = 0  # no data below 1,800 m from the top
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data, 1)
    inputs = discover(PipelineConfig(s2=[str(s2)], s1=[str(region.s1_dir)], clc=str(region.clc)))
    assert [p.path for p in inputs.products] == [full]
    (entry,) = [s for s in inputs.skipped if s["kind"] == "s2_product"]
    assert entry["item"] == later and entry["path"] == str(cut)
    b02 = rasterio.open(next(full.glob("*_B02*.tif")))
    kept = np.count_nonzero(b02.read(1, out_shape=(b02.height // 8, b02.width // 8))) / (
        (b02.height // 8) * (b02.width // 8)
    )
    b02.close()
    head = f"duplicate of {fx.P2_NAME} (same {fx.P2_PREFIX}); kept {fx.P2_NAME}: it covers {kept:.2%} of the extent"
    assert entry["reason"].startswith(head + " with data, this one ")
    share = float(entry["reason"].rsplit(" ", 1)[1].rstrip("%")) / 100
    assert abs(share - 1800 / 4200 * kept) < 0.01  # read at 1/8 resolution: within a sampled row


def test_a_worker_that_cannot_open_an_input_stops_the_build_with_one_line(tmp_path):
    from dask.distributed import Client, LocalCluster

    from reben_tools.builder.pipeline.execution import check_workers

    missing = tmp_path / "inputs" / "S2_B02.jp2"
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        (address,) = client.scheduler_info()["workers"]
        check_workers(client, tmp_path / "out", [])  # writable, nothing to open: fine
        with pytest.raises(BuildError) as err:
            check_workers(client, tmp_path / "out", [str(missing)])
    assert str(err.value).startswith(f"worker {address} on ")
    assert str(err.value).endswith(f": {missing}: cannot open input (No such file or directory)")
    assert "\n" not in str(err.value)
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # probe files removed
