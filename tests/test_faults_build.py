"""Faults survived by ``reben build`` (the Dask scene-to-archive pipeline), real processes only.

- A Dask worker SIGKILLed while it builds a block, on a cluster of separate ``dask
  scheduler`` / ``dask worker`` processes: the scheduler reruns its work elsewhere and the
  archive equals an undisturbed build's, file by file.
- The build (client and its LocalCluster) SIGKILLed while writing the metadata or inside
  the manifest's atomic write: the rerun completes, byte-identical.
- Two builds on one output directory: the second refuses, naming the first.

The inputs are the pipeline tests' generated region (``tests/pipeline_fixtures.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pipeline_fixtures as fx
import pytest
from reliability_helpers import (
    DIE_DURING_MANIFEST_WRITE,
    REPO,
    run_cli_with_fault,
    start_cli_with_fault,
    tree_digest,
)

from reben_tools.builder.pipeline.config import PipelineConfig
from reben_tools.builder.pipeline.run import build_archive

NOT_COMPARED = {"summary_map.png"}  # a picture; the pipeline tests leave it out of byte comparisons too


def archive_digest(root: Path) -> dict[str, str]:
    return {k: v for k, v in tree_digest(root).items() if Path(k).name not in NOT_COMPARED}


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    return fx.make_region(tmp_path_factory.mktemp("region"))


@pytest.fixture(scope="module")
def config_path(region, tmp_path_factory):
    return fx.write_config(tmp_path_factory.mktemp("config") / "faults.toml", region, rows_per_block=1)


@pytest.fixture(scope="module")
def reference(config_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "archive"
    build_archive(PipelineConfig.from_file(config_path), out=out, workers=2, progress=False, echo=lambda _: None)
    digest = archive_digest(out)
    assert not any(Path(p).name.startswith(".") for p in digest)
    assert sum(p.endswith("data.mdb") for p in digest) == 6  # 2 products x 3 one-row blocks
    return out, digest


def build_args(config_path: Path, out: Path, *extra: str) -> list[str]:
    return ["build", str(config_path), "--out", str(out), "--no-progress", *extra]


def test_a_dask_worker_killed_mid_block_the_build_still_completes(config_path, reference, tmp_path):
    from dask.distributed import Client

    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    scheduler_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [
                "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        worker = ["dask", "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-nanny", "--no-dashboard"]
        worker += ["--host", "127.0.0.1", "--memory-limit", "2GiB"]
        procs.extend(
            subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for _ in range(2)
        )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            pids = client.run(os.getpid)  # worker address -> its process id
            out = tmp_path / "archive"
            build = subprocess.Popen(
                [sys.executable, "-m", "reben_tools.cli", *build_args(config_path, out, "--scheduler", address)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
            )
            victim = None
            deadline = time.monotonic() + 120
            while victim is None:
                assert build.poll() is None and time.monotonic() < deadline, build.communicate()
                busy = [w for w, keys in client.processing().items() if any("reben-block" in str(k) for k in keys)]
                if busy:
                    victim = busy[0]
                else:
                    time.sleep(0.01)
            os.kill(pids[victim], signal.SIGKILL)  # mid-block: the scheduler lists a block task on it
            output, _ = build.communicate(timeout=300)
        assert build.returncode == 0, output
        assert archive_digest(out) == reference[1], output
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


FINALISE_KILLS = {
    "during metadata": """
        import reben_tools.format.metadata as md
        def metadata_table(*a, **k):  # the first step of write_metadata, before any file is written
            die()
        md.metadata_table = metadata_table
        """,
    "during the manifest write": DIE_DURING_MANIFEST_WRITE,
}


KILL_BEFORE_RENAME = """
    import reben_tools.builder.pipeline.execution as pl
    _make_client = pl._make_client
    def _install_fault():
        # runs inside each Dask worker process: the first shard of block row 1 to be renamed
        # into place kills the whole build (client, scheduler, workers) instead
        import os, signal
        _rename = os.rename
        def rename(src, dst, *a, **k):
            if os.path.basename(str(src)).startswith(".tmp-") and "_rows01-01" in str(src):
                os.killpg(0, signal.SIGKILL)
            return _rename(src, dst, *a, **k)
        os.rename = rename
    def make_client(*a, **k):
        client, cluster = _make_client(*a, **k)
        client.run(_install_fault)
        return client, cluster
    pl._make_client = make_client
    """


def test_build_sigkilled_between_a_shard_write_and_its_rename_then_rerun(config_path, reference, tmp_path):
    out = tmp_path / "archive"
    killed = run_cli_with_fault(
        build_args(config_path, out, "--workers", "1"), KILL_BEFORE_RENAME, timeout=300, new_session=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    shards = out / "shards"
    temporaries = [p.name for p in shards.iterdir() if p.name.startswith(".tmp-")]
    assert len(temporaries) == 1 and "_rows01-01" in temporaries[0]  # written, never renamed
    finished = [p.name for p in shards.iterdir() if not p.name.startswith(".")]
    assert 1 <= len(finished) < 6
    rerun = run_cli_with_fault(build_args(config_path, out, "--workers", "1"), timeout=300, new_session=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{6 - len(finished)} to build, {len(finished)} already built" in rerun.stdout + rerun.stderr
    assert "removed 1 unfinished shard" in rerun.stdout + rerun.stderr
    assert archive_digest(out) == reference[1]


@pytest.mark.parametrize("point", list(FINALISE_KILLS))
def test_build_sigkilled_while_finishing_then_rerun_is_byte_identical(point, config_path, reference, tmp_path):
    out = tmp_path / "archive"
    killed = run_cli_with_fault(
        build_args(config_path, out, "--workers", "1"), FINALISE_KILLS[point], timeout=300, new_session=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert not (out / "manifest.json").exists()
    assert sum(1 for p in (out / "shards").iterdir() if not p.name.startswith(".")) == 6
    rerun = run_cli_with_fault(build_args(config_path, out, "--workers", "1"), timeout=300, new_session=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "0 to build, 6 already built" in rerun.stdout + rerun.stderr
    assert archive_digest(out) == reference[1]


def test_a_second_build_on_the_same_output_refuses_naming_the_first(config_path, reference, tmp_path):
    out = tmp_path / "archive"
    slow = """
        import reben_tools.builder.pipeline.run as pl
        _execute = pl.execute
        def execute(*a, **k):
            time.sleep(3)  # hold the output directory a while before any block runs
            return _execute(*a, **k)
        pl.execute = execute
        """
    first = start_cli_with_fault(build_args(config_path, out, "--workers", "1"), slow, new_session=True)
    try:
        deadline = time.monotonic() + 60
        lock = out / ".reben.lock"
        while not lock.exists() or f'"pid": {first.pid}' not in lock.read_text():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        second = run_cli_with_fault(build_args(config_path, out, "--workers", "1"), timeout=120)
        assert second.returncode != 0
        assert f"another writer is using this output directory: pid {first.pid}" in second.stdout + second.stderr
        output = first.communicate(timeout=300)
        assert first.returncode == 0, output
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert archive_digest(out) == reference[1]


def test_build_with_hostile_input_folder_names_skips_them_by_name_and_stays_inside(region, reference, tmp_path):
    """Product and scene folder names are untrusted: names that are not Sentinel product
    names (dots, backslashes, 246 characters) are skipped and reported by name; names are
    never turned into paths, so nothing is written outside the output."""
    s2, s1 = tmp_path / "in" / "s2", tmp_path / "in" / "s1"
    s2.mkdir(parents=True)
    s1.mkdir(parents=True)
    for product in (region.product1, region.product2):
        (s2 / product.name).symlink_to(product)
    for scene in region.s1_dir.iterdir():
        (s1 / scene.name).symlink_to(scene)
    hostile_s2 = [
        fx.P1_NAME + "A" * 180,
        "S2A_MSIL2A_20170613T101031_N0500_R022_T33UUP_.._escape",
        "S2A_MSIL2A_20170613T101031_N0500_R022_T33UUP\\..\\..\\escape",
        "S2A_MSIL2A_20170613T101031_N0500_R022_T3..P_20240101T000000.SAFE",
    ]
    for name in hostile_s2:
        (s2 / name).symlink_to(region.product1)
    # an S1 folder whose name starts like a real scene's: only the validated prefix is ever used
    hostile_s1 = "S1A_IW_GRDH_1SDV_20170613T221031_..\\..\\escape"
    (s1 / hostile_s1).symlink_to(
        region.s1_dir
        / next(p.name for p in region.s1_dir.iterdir() if p.name.startswith("S1A_IW_GRDH_1SDV_20170613T221031"))
    )
    config = fx.write_config(tmp_path / "hostile.toml", region, rows_per_block=1, s2=[str(s2)], s1=[str(s1)])
    out = tmp_path / "deep" / "archive"
    before = {str(p) for p in tmp_path.rglob("*") if p.is_file()}
    proc = subprocess.run(
        [sys.executable, "-m", "reben_tools.cli", *build_args(config, out, "--workers", "1")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    created = {str(p) for p in tmp_path.rglob("*") if p.is_file()} - before
    assert sorted(p for p in created if not Path(p).is_relative_to(out)) == []
    report = json.loads((out / "report.json").read_text())
    skipped = {s["item"]: s for s in report["skipped"] if s["kind"] in ("s2_product", "s1_scene")}
    for name in hostile_s2:
        assert skipped[name]["kind"] == "s2_product"
        assert (
            "not a Sentinel-2 L2A product name" in skipped[name]["reason"]
            or "characters long" in skipped[name]["reason"]
        ), skipped[name]
    assert "(same S1A_IW_GRDH_1SDV_20170613T221031); kept S1A_IW_GRDH_1SDV_20170613T221031_20170613T221056" in next(
        s["reason"] for s in skipped.values() if s["kind"] == "s1_scene"
    )
    built = archive_digest(out)
    for path, digest in reference[1].items():  # the shards and metadata are the undisturbed build's
        if path.startswith(("shards/", "metadata")):
            assert built[path] == digest, path
