"""Archives in object storage (issue 23): build into a bucket from workers without a shared disk, read it back.

Everything runs on 127.0.0.1, started by the tests: moto's S3 server (``servers.s3_server``,
the session fixture ``s3_endpoint``) and a Dask cluster of one ``dask scheduler`` and two
``dask worker`` processes, each worker started in its own folder with its own local and
temporary directories (nothing of the output is shared: the output is the bucket).

- the bucket build equals a local build of the same inputs, object by file, shard by shard;
- a build SIGKILLed in the middle of an upload leaves no object a reader or a resume could
  take for a shard, and its rerun takes the stale lock over and reaches the same archive;
- a second build into a prefix whose lock a live build holds is refused (conditional writes);
- ``reben verify s3://...`` names the shard and the key of a tampered value;
- the readers (``show``, ``audit``, ``merge``, ``export-tiff``, ``ReBENDataset``) take the URL;
  the node-local cache refetches corrupt, truncated or stale copies, and a bounded cache
  evicts the least recently used shards or says why an epoch does not fit;
- every command refuses a URL given to a local path in one line (no folder ``s3:``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import click
import lmdb
import numpy as np
import pipeline_fixtures as fx
import pyarrow.parquet as pq
import pytest
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.builder.pipeline.config import PipelineConfig
from reben_tools.builder.pipeline.run import build_archive
from reben_tools.cli import app
from reben_tools.format.layout import ArchiveError
from reben_tools.format.object_store import Store
from reben_tools.format.shard_cache import CacheFullError, ShardCache, ShardIntegrityError, localise_archive
from reben_tools.format.store_lock import (
    LOCK_OBJECT,
    StoreLock,
    StoreLockedError,
    StoreLockLostError,
    check_lock_token,
)
from reben_tools.learn.data.dataset import ReBENDataset

REPO = Path(__file__).resolve().parents[1]
BUCKET = "reben-object-store-tests"
URL = f"s3://{BUCKET}"


# --------------------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="module")
def bucket(s3_endpoint, tmp_path_factory):
    """The endpoint's AWS_* variables for the module (and a default cache folder under tmp), and a bucket."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_endpoint.env().items():
            mp.setenv(name, value)
        mp.setenv("REBEN_CACHE_DIR", str(tmp_path_factory.mktemp("default-cache")))
        s3_endpoint.client().create_bucket(Bucket=BUCKET)
        yield s3_endpoint


def objects(prefix: str) -> dict[str, str]:
    """relative key -> sha256 of every object under ``s3://BUCKET/prefix``."""
    store = Store(f"{URL}/{prefix}")
    return {rel: hashlib.sha256(store.read_bytes(rel)).hexdigest() for rel in store.listing()}


def files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cli(*args) -> click.testing.Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    return fx.make_region(tmp_path_factory.mktemp("region"))


@pytest.fixture(scope="module")
def config_path(region, tmp_path_factory):
    return fx.write_config(tmp_path_factory.mktemp("config") / "bucket.toml", region, rows_per_block=1)


@pytest.fixture(scope="module")
def cluster(bucket, tmp_path_factory):
    """``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, each worker in its own folder
    (its working, local and temporary directories); they reach the bucket through the AWS_* variables."""
    from dask.distributed import Client

    base = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    scheduler_file = base / "scheduler.json"
    procs = [
        subprocess.Popen(
            ["dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(scheduler_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=base,
        )
    ]
    folders = []
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(2):
            folder = base / f"worker{i}"
            (folder / "tmp").mkdir(parents=True)
            folders.append(folder)
            procs.append(
                subprocess.Popen(
                    ["dask", "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"]
                    + ["--host", "127.0.0.1", "--memory-limit", "2GiB", "--local-directory", str(folder / "local")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={**env, "TMPDIR": str(folder / "tmp")},
                    cwd=folder,
                )
            )
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            dirs = sorted(client.run(lambda dask_worker: dask_worker.local_directory).values())
        yield {"address": address, "folders": folders, "local_dirs": dirs}
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture(scope="module")
def reference(config_path, cluster, tmp_path_factory) -> dict[str, str]:
    """A local build of the region on the same cluster: relative path -> sha256."""
    out = tmp_path_factory.mktemp("reference") / "archive"
    build_archive(
        PipelineConfig.from_file(config_path),
        out=out,
        scheduler=cluster["address"],
        progress=False,
        echo=lambda _: None,
    )
    digest = files(out)
    assert sum(p.endswith("data.mdb") for p in digest) == 6  # 2 products x 3 one-row blocks
    return digest


@pytest.fixture(scope="module")
def built(config_path, cluster, reference):
    """The region built into ``s3://BUCKET/demo`` by the two workers; the client's output lines."""
    lines: list[str] = []
    result = build_archive(
        PipelineConfig.from_file(config_path),
        out=f"{URL}/demo",
        scheduler=cluster["address"],
        progress=False,
        echo=lines.append,
    )
    assert result.archive_url == f"{URL}/demo"
    return f"{URL}/demo", lines


# --------------------------------------------------------------------------- building into the bucket


def test_the_bucket_build_equals_a_local_build_shard_by_shard(built, reference, cluster):
    lines = built[1]
    stored = objects("demo")
    assert LOCK_OBJECT not in stored and not any(".reben-probe" in k for k in stored)
    shards = sorted({k.split("/")[1] for k in reference if k.startswith("shards/")})
    assert len(shards) == 6
    for shard in shards:  # byte for byte, shard by shard
        local = {k: v for k, v in reference.items() if k.startswith(f"shards/{shard}/")}
        assert {k: v for k, v in stored.items() if k.startswith(f"shards/{shard}/")} == local, shard
    assert stored == reference  # and every archive-level file, manifest and input stamps included
    assert "6 to build, 0 already built" in "\n".join(lines)
    # the workers built in their own folders and left nothing there
    for folder in cluster["folders"]:
        assert not list(folder.rglob(".reben-shard-*")), folder
    assert not Path("s3:").exists()


def test_a_rerun_rebuilds_nothing_and_a_stale_shard_only_that_one(built, config_path, cluster, reference):
    url = built[0]
    lines: list[str] = []
    build_archive(
        PipelineConfig.from_file(config_path), out=url, scheduler=cluster["address"], progress=False, echo=lines.append
    )
    assert "0 to build, 6 already built" in "\n".join(lines)
    # an upload interrupted before its shard.json: the shard is incomplete, rebuilt (and nothing else)
    store = Store(url)
    victim = sorted(k for k in store.listing() if k.endswith("rows00-00/shard.json"))[0]
    store.delete([victim, victim.replace("shard.json", "data.mdb")])
    lines.clear()
    build_archive(
        PipelineConfig.from_file(config_path), out=url, scheduler=cluster["address"], progress=False, echo=lines.append
    )
    assert "1 to build, 5 already built" in "\n".join(lines)
    assert objects("demo") == reference


FAULT_MID_UPLOAD = """
import reben_tools.builder.pipeline.execution as ex
_make_client = ex._make_client
client_pid, marker = os.getpid(), {marker!r}
def _install(client_pid, marker):
    # inside each Dask worker: the first upload of a data.mdb starts a multipart upload, sends
    # half of the file, and then the build (the client process) is SIGKILLed mid-upload
    import os, signal
    from reben_tools.format import object_store as st
    _upload = st.Store.upload
    def upload(self, local, rel):
        if rel.endswith("/data.mdb") and not os.path.exists(marker):
            open(marker, "w").close()
            bucket, key = self._s3_key(rel)
            mpu = self.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
            data = open(local, "rb").read()
            self.fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=mpu["UploadId"], PartNumber=1,
                            Body=data[: len(data) // 2])
            os.kill(client_pid, signal.SIGKILL)
            raise RuntimeError("the build was killed mid-upload")
        return _upload(self, local, rel)
    st.Store.upload = upload
def make_client(*a, **k):
    client, cluster = _make_client(*a, **k)
    client.run(_install, client_pid, marker)
    return client, cluster
ex._make_client = make_client
"""


def _build_cli(config_path, out: str, address: str, fault: str = "") -> subprocess.CompletedProcess:
    args = ["build", str(config_path), "--out", out, "--scheduler", address, "--no-progress"]
    code = f"import os, sys\nsys.argv = ['reben'] + {args!r}\n{fault}\nfrom reben_tools.cli import main\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
    )


def test_a_build_killed_mid_upload_resumes_to_the_same_archive(config_path, cluster, reference, tmp_path):
    url = f"{URL}/killed"
    fault = FAULT_MID_UPLOAD.format(marker=str(tmp_path / "fired"))
    killed = _build_cli(config_path, url, cluster["address"], fault)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    store = Store(url)
    listing = store.listing()
    assert "manifest.json" not in listing and LOCK_OBJECT in listing  # no archive; the dead build's lock
    # the interrupted upload is no object at all: only an unfinished multipart upload, invisible to readers
    bucket_name, prefix = store._s3_key("")
    pending = store.fs.call_s3("list_multipart_uploads", Bucket=bucket_name, Prefix=prefix)
    assert len(pending.get("Uploads", [])) == 1
    interrupted = pending["Uploads"][0]["Key"].split("/")[-2]
    assert f"shards/{interrupted}/data.mdb" not in listing and f"shards/{interrupted}/shard.json" not in listing
    with pytest.raises(ArchiveError, match="no archive here"):
        ReBENDataset(url, cache_dir=tmp_path / "cache")

    rerun = _build_cli(config_path, url, cluster["address"])
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output
    assert "took over the lock of an earlier build that stopped" in output
    assert "aborted 1 unfinished upload(s) of an interrupted run" in output
    assert objects("killed") == reference


def test_a_second_build_into_a_prefix_is_refused_while_the_first_holds_it(bucket, config_path, cluster, tmp_path):
    url = f"{URL}/locked"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from reben_tools.format.object_store import Store
                from reben_tools.format.store_lock import StoreLock
                with StoreLock(Store({url!r}), command="reben build (test holder)") as lock:
                    print(lock.protected, flush=True)
                    sys.stdin.readline()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "True"  # moto takes If-None-Match: the lock is enforced
        result = cli("build", config_path, "--out", url, "--scheduler", cluster["address"], "-q")
        assert result.exit_code == 1
        assert (
            f"{url}: another writer is using this output: pid {holder.pid} on" in result.output
            and "(reben build (test holder)) holds" in result.output
        ), result.output
        assert "manifest.json" not in Store(url).listing()
    finally:
        holder.communicate("\n", timeout=30)
    assert LOCK_OBJECT not in Store(url).listing()  # released by its holder


def test_the_lock_object_is_conditional_leased_and_checked_by_workers(bucket, monkeypatch):
    store = Store(f"{URL}/lease")
    first = StoreLock(store, command="first", lease_s=3.0)  # long enough for the next lines on a loaded machine
    first.acquire()
    first._stop.set()  # stop renewing, as a build that hangs or dies on another host
    with pytest.raises(StoreLockedError, match="pid"):
        StoreLock(store, command="second").acquire()
    check_lock_token(store, first.token)
    time.sleep(4.2)  # the lease ran out (LastModified has one-second resolution)
    second = StoreLock(store, command="second")
    second.acquire()
    try:
        assert second.took_over and second.took_over["token"] == first.token
        with pytest.raises(StoreLockLostError, match="no longer holds"):
            check_lock_token(store, first.token)  # a worker of the first build cannot commit a shard
        check_lock_token(store, second.token)
        first.release()  # does not delete the lock it lost
        assert LOCK_OBJECT in store.listing()
    finally:
        second.release()
    assert LOCK_OBJECT not in store.listing()


# --------------------------------------------------------------------------- reading the bucket


def _flip_inside_value(data: bytes, value: bytes, offset: int) -> bytes:
    start = data.find(value)
    assert start >= 0
    raw = bytearray(data)
    raw[start + offset] ^= 0x01
    return bytes(raw)


def test_verify_of_the_bucket_passes_and_flags_a_tampered_shard_naming_the_key(built, tmp_path):
    url, _ = built
    result = cli("verify", url, "-q", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0 and f"{url}: OK (6 shard(s)" in result.output, result.output
    copies = [d for d in (tmp_path / "cache").rglob("shards/*") if (d / "data.mdb").is_file()]
    bound = 2 * max(sum(f.stat().st_size for f in d.iterdir()) for d in copies)  # two shards of six
    result = cli("verify", url, "-q", "--cache-dir", tmp_path / "bounded", "--cache-size", str(bound))
    assert result.exit_code == 0 and f"{url}: OK (6 shard(s)" in result.output, result.output  # shard by shard
    assert len(list((tmp_path / "bounded").rglob("data.mdb"))) <= 2
    store, copy = Store(url), Store(f"{URL}/tampered")
    for rel in store.listing():
        copy.write_bytes(rel, store.read_bytes(rel))
    shard = sorted(k.split("/")[1] for k in store.listing() if k.endswith("data.mdb"))[2]
    local = localise_archive(url, tmp_path / "cache", shards=[shard]) / "shards" / shard
    env = lmdb.open(str(local), readonly=True, lock=False)
    with env.begin() as txn:
        key, value = next((bytes(k).decode(), bytes(v)) for k, v in txn.cursor() if len(v) > 100_000)
    env.close()
    rel = f"shards/{shard}/data.mdb"
    copy.write_bytes(rel, _flip_inside_value(store.read_bytes(rel), value, 90_000))  # deep in the pixels

    result = cli("verify", f"{URL}/tampered", "-q", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 1, result.output
    assert f"FAULT shard {shard} key {key}: value (" in result.output and "corrupt value" in result.output
    assert (
        f"FAULT shard {shard}: {URL}/tampered/shards/{shard}: differs from the manifest (data.mdb sha256"
        in result.output
    )
    assert f"FAULT shard {shard}: content sha256" in result.output
    assert result.output.count("FAULT") == 3
    bounded = cli("verify", f"{URL}/tampered", "-q", "--cache-dir", tmp_path / "bounded", "--cache-size", str(bound))
    assert sorted(bounded.output.splitlines()) == sorted(result.output.splitlines())  # the same faults
    # a reader never uses it: the fetch is checked against the manifest
    with pytest.raises(ShardIntegrityError, match=f"{URL}/tampered/shards/{shard}: the store's shard does not match"):
        localise_archive(f"{URL}/tampered", tmp_path / "other-cache", shards=[shard])


def test_show_audit_merge_and_export_take_the_url(built, tmp_path):
    url, _ = built
    cache = tmp_path / "cache"
    local = localise_archive(url, cache, shards="all")
    patch = ReBENDataset(url, cache_dir=cache).patch_ids[0]
    result = cli("show", url, patch, "--out", tmp_path / "patch.png", "--cache-dir", cache)
    assert result.exit_code == 0 and (tmp_path / "patch.png").stat().st_size > 1000, result.output
    result = cli("audit", url, "--out", tmp_path / "audit", "--no-figures", "-q", "--permutations", "2")
    assert result.exit_code == 0 and (tmp_path / "audit" / "report.json").is_file(), result.output
    result = cli("merge", url, tmp_path / "merged", "-q", "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    assert cli("merge", local, tmp_path / "merged-local", "-q").exit_code == 0
    assert files(tmp_path / "merged") == files(tmp_path / "merged-local")
    result = cli("export-tiff", url, tmp_path / "tiff", "-q", "--cache-dir", cache)
    assert result.exit_code == 0, result.output
    assert cli("export-tiff", local, tmp_path / "tiff-local", "-q").exit_code == 0
    assert files(tmp_path / "tiff").keys() == files(tmp_path / "tiff-local").keys()
    subset_cache = tmp_path / "subset-cache"
    result = cli("subset", url, "-f", "0.5", "--out", tmp_path / "sub.parquet", "--cache-dir", subset_cache)
    assert result.exit_code == 0 and result.output.startswith(f"{url}: "), result.output  # the URL, not the cache
    assert cli("subset", local, "-f", "0.5", "--out", tmp_path / "sub-local.parquet").exit_code == 0
    assert pq.read_table(tmp_path / "sub.parquet").equals(pq.read_table(tmp_path / "sub-local.parquet"))
    assert not list(subset_cache.rglob("data.mdb"))  # rows from the metadata alone: no shard fetched
    assert not Path("s3:").exists()


# --------------------------------------------------------------------------- the node-local cache


@pytest.fixture(scope="module")
def learnable(bucket, tmp_path_factory):
    """A small archive of 4 shards, locally and in ``s3://BUCKET/learn``; a second version of it."""
    root = tmp_path_factory.mktemp("learnable")
    first = build_learnable_archive(root / "v1", counts={"train": 24, "validation": 8, "test": 8}, shards=4)["root"]
    second = build_learnable_archive(root / "v2", counts={"train": 24, "validation": 8, "test": 8}, shards=4, seed=1)[
        "root"
    ]
    upload(Path(first), f"{URL}/learn")
    return Path(first), Path(second)


def upload(local: Path, url: str) -> None:
    store = Store(url)
    store.delete(list(store.listing()))
    for path in sorted(local.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            store.upload(path, str(path.relative_to(local)))
    store.upload(local / "manifest.json", "manifest.json")


def _images(dataset: ReBENDataset) -> np.ndarray:
    return np.stack([dataset[i]["image"].numpy() for i in range(len(dataset))])


def test_the_cache_checks_every_copy_and_refetches_corrupt_truncated_or_stale_ones(learnable, tmp_path):
    first, second = learnable
    url, cache = f"{URL}/learn", tmp_path / "cache"
    expected = _images(ReBENDataset(first, bands="S1"))
    dataset = ReBENDataset(url, bands="S1", cache_dir=cache)
    assert np.array_equal(_images(dataset), expected)
    assert dataset.archive.cache.stats["shards"] == 4
    dataset.close()
    image = dataset.root
    data = image / "shards" / "shard-001" / "data.mdb"

    def reread() -> ShardCache:
        again = ReBENDataset(url, bands="S1", cache_dir=cache)
        assert np.array_equal(_images(again), expected)
        again.close()
        return again.archive.cache

    assert reread().stats == {"shards": 0, "bytes": 0, "reused": 4}  # trusted copies: nothing fetched
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # corrupt in place
    data.write_bytes(bytes(raw))
    assert reread().stats["shards"] == 1
    with open(data, "r+b") as fh:  # truncated (a partial copy)
        fh.truncate(data.stat().st_size // 3)
    assert reread().stats["shards"] == 1
    (image / "shards" / "shard-002" / ".verified.json").unlink()  # no marker: re-hashed, kept (it is good)
    assert reread().stats == {"shards": 0, "bytes": 0, "reused": 4}

    upload(second, url)  # a new version of the archive at the same URL
    stale = ReBENDataset(url, bands="S1", cache_dir=cache)
    assert np.array_equal(_images(stale), _images(ReBENDataset(second, bands="S1")))
    assert stale.archive.cache.stats["shards"] == 4  # every shard changed: refetched, never read stale
    upload(first, url)


def test_a_bounded_cache_evicts_least_recently_used_and_refuses_an_epoch_that_cannot_fit(learnable, tmp_path):
    first, _ = learnable
    url = f"{URL}/learn"
    sizes = [
        sum((first / "shards" / f"shard-00{i}" / f).stat().st_size for f in ("data.mdb", "keys.parquet"))
        for i in range(4)
    ]
    bound = int(max(sizes) * 2.5)  # two shards fit, three do not
    cache = ShardCache(localise_archive(url, tmp_path / "cache"), max_bytes=bound)
    with pytest.raises(CacheFullError, match=r"reads 4 shard\(s\) together.*bounded to .*--cache-size"):
        cache.prefetch(cache.names)
    assert not list((tmp_path / "cache").rglob("data.mdb"))  # refused before any download
    for name in ["shard-000", "shard-001", "shard-000", "shard-002"]:  # 000 used again: 001 is the oldest
        cache.ensure(name)
        time.sleep(0.01)
    held = sorted(p.parent.name for p in (tmp_path / "cache").rglob("data.mdb"))
    assert held == ["shard-000", "shard-002"]
    used = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file() and "shards" in p.parts)
    assert used <= bound
    # the same bound through the dataset and the command line: one clear error, before any download
    dataset = ReBENDataset(url, bands="S1", cache_dir=tmp_path / "cache3", cache_size=bound)
    with pytest.raises(CacheFullError, match="bounded to"):
        dataset.archive.prefetch()
    result = cli("merge", url, tmp_path / "merged", "-q", "--cache-dir", tmp_path / "cache4", "--cache-size", "100K")
    assert result.exit_code == 1 and "is bounded to 0.00 GiB (--cache-size)" in result.output, result.output


def test_a_prefix_without_manifest_is_no_archive(bucket, learnable, tmp_path):
    store = Store(f"{URL}/half")
    first, _ = learnable
    store.upload(first / "shards" / "shard-000" / "data.mdb", "shards/shard-000/data.mdb")
    with pytest.raises(ArchiveError, match=rf"{URL}/half: no archive here \(no manifest.json"):
        ReBENDataset(f"{URL}/half", cache_dir=tmp_path)
    result = cli("verify", f"{URL}/half", "-q", "--cache-dir", tmp_path)
    assert result.exit_code == 1 and "no archive here" in result.output


# --------------------------------------------------------------------------- URLs on every command line


def _path_parameters():
    from typer.main import get_command

    from reben_tools.commands.urls import _takes_paths

    root = get_command(app)
    for name, command in sorted(root.commands.items()):
        positional = [p for p in command.params if p.param_type_name == "argument"]
        for param in command.params:
            if _takes_paths(param):
                yield name, param, positional


PATH_PARAMETERS = [(n, p.name) for n, p, _ in _path_parameters()]


@pytest.mark.parametrize("command,param", PATH_PARAMETERS)
def test_every_local_path_parameter_refuses_a_url_in_one_line(command, param, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, parameter, positional = next(x for x in _path_parameters() if x[0] == command and x[1].name == param)
    url = "s3://archive/demo"
    args = [command]
    args += [url if arg is parameter else "local-placeholder" for arg in positional]
    if parameter.param_type_name == "option":
        args += [next(o for o in parameter.opts if o.startswith("--")), url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (args, result.output)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: reben {command} ") and f"{url} is a URL" in lines[0]
    assert not any(tmp_path.iterdir())  # no folder "s3:" (nor anything else) was written


def test_the_commands_that_read_archives_take_urls_and_build_writes_them():
    from typer.main import get_command

    from reben_tools.commands.urls import _takes_paths

    root = get_command(app)
    readers = {
        "verify": "archive_dir",
        "merge": "archive_dir",
        "export-tiff": "archive_dir",
        "audit": "input_path",
        "show": "archive",
        "train": "archive",
        "evaluate": "archive",
        "pretrain": "archive",
        "embed": "archive",
        "probe": "archive",
        "subset": "input_path",
        "build": "out",
    }
    for command, name in readers.items():
        params = {p.name: p for p in root.commands[command].params}
        assert not _takes_paths(params[name]), command
        if command != "build":
            assert {"cache_dir", "cache_size"} <= params.keys(), command


def test_a_file_url_is_the_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["split", f"file://{tmp_path}/missing.parquet", "--out", "o.parquet"])
    assert result.exit_code == 1 and f"{tmp_path}/missing.parquet" in result.output
    assert not Path("file:").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--archive", "s3://nowhere/archive", "--bands", "S1", "--model", "resnet_micro", "--out", "run"],
        ["show", "s3://nowhere/archive", "PATCH", "--out", "patch.png"],
        ["embed", "--archive", "s3://nowhere/archive", "--encoder", "x", "--out", "e.parquet"],
    ],
    ids=["train", "show", "embed"],
)
def test_an_unreachable_store_is_one_line_and_writes_nothing(args, tmp_path, monkeypatch):
    """A store that cannot be reached, or holds no archive: the resolver's fetch fails, named in one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    for name, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                        "AWS_SECRET_ACCESS_KEY": "y", "REBEN_CACHE_DIR": str(tmp_path / "cache")}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    # the reason depends on whether this process already holds a filesystem for the test endpoint
    # (fsspec caches them): "cannot look up" (nothing on port 9) or "no archive here" (no such bucket)
    assert len(lines) == 1 and lines[0].startswith("error: s3://nowhere/archive"), lines
    assert not any(p.name in ("run", "patch.png", "e.parquet", "s3:") for p in tmp_path.iterdir())
