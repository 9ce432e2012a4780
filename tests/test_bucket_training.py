"""Training from a bucket on two "nodes", and the shard-local sampler (issue 23).

Two torchrun agents (``--nnodes 2 --node-rank 0|1``, one gloo process each, rendezvous on
127.0.0.1) train ``--sampler shard-local`` from ``s3://...`` on moto, each with its own cache
folder: each downloads exactly the shards assigned to its node, and the run (interrupted
mid-epoch and resumed) equals, weight for weight, the same run from a local copy of the archive.
The sampler's rules (balance, determinism, exact resume, every evaluation sample once) are
checked directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from servers import free_port
from training_archive import build_learnable_archive

from reben_tools.format.object_store import Store
from reben_tools.learn.data.shard_sampler import (
    ShardLocalSampler,
    assign_shards,
    label_drift,
    make_samplers,
    shard_plan,
)
from reben_tools.learn.runtime.checkpoints import load_checkpoint
from reben_tools.learn.runtime.distributed import Distributed

REPO = Path(__file__).resolve().parents[1]
BUCKET = "reben-training-tests"
COUNTS = {"train": 32, "validation": 16, "test": 16}


# --------------------------------------------------------------------------- the sampler


def test_shards_are_dealt_to_nodes_balanced_by_entries_deterministically():
    train = {0: 40, 1: 35, 2: 30, 3: 10, 4: 8, 5: 0}
    other = {0: 5, 1: 5, 2: 5, 3: 5, 4: 5, 5: 12}
    plan = assign_shards(train, other, 2)
    assert plan == assign_shards(dict(reversed(train.items())), other, 2)  # order of the input does not matter
    assert sorted(s for node in plan for s in node) == list(range(6))  # every shard on exactly one node
    loads = [sum(train[s] for s in node) for node in plan]
    assert max(loads) - min(loads) <= max(train.values())  # within one shard's entries
    assert plan[0] == [0, 3, 4] and plan[1] == [1, 2, 5]
    assert assign_shards(train, other, 1) == [list(range(6))]


def _fake(shards_of: list[int]):
    class Dataset:
        sample_shards = np.asarray(shards_of, dtype=np.int32)

        class archive:
            shard_names = tuple(f"s{i}" for i in range(max(shards_of) + 1))

            @staticmethod
            def prefetch(shards, progress=False):
                Dataset.fetched = list(shards)

    return Dataset


def test_each_node_reads_its_shards_shuffled_per_epoch_and_resumes_exactly():
    rng = np.random.default_rng(0)
    shards_of = list(rng.integers(0, 7, size=120))
    dataset = _fake(shards_of)
    train = np.arange(0, 120, 1)[np.arange(120) % 4 != 0]
    val = np.arange(0, 120, 4)
    plan = shard_plan(dataset, train, 2)
    shares, val_seen = {}, []
    for rank in range(4):  # 2 nodes x 2 processes
        ctx = Distributed(rank=rank, world_size=4, local_rank=rank % 2, local_world_size=2)
        sampler, evaluation = make_samplers("shard-local", dataset, train, {"validation": val}, ctx, seed=3)
        node = rank // 2
        assert dataset.fetched == plan[node]  # what the node downloads: its shards only
        sampler.set_epoch(1)
        share = sampler.share()
        assert {shards_of[i] for i in share} <= set(plan[node])
        shares[rank] = share
        val_seen += list(evaluation["validation"])
        # another epoch, another order; the same epoch, the same order
        sampler.set_epoch(2)
        assert sampler.share() != share
        sampler.set_epoch(1)
        assert sampler.share() == share
        sampler.set_position(5)  # mid-epoch resume: the rest of the same order
        assert list(sampler) == share[5:] and len(sampler) == len(share) - 5
    assert len({len(s) for s in shares.values()}) == 1  # every process takes the same number of steps
    node_samples = [set(shares[0]) | set(shares[1]), set(shares[2]) | set(shares[3])]
    assert node_samples[0] | node_samples[1] == set(train.tolist())  # every training sample is seen
    assert sorted(val_seen) == sorted(val.tolist())  # every validation sample exactly once across processes
    # shuffled across shards: a process's first samples come from several shards
    assert len({shards_of[i] for i in shares[0][:10]}) > 1


def test_label_drift_is_zero_for_the_same_distribution_and_measures_a_skew():
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
    assert label_drift(labels, [0, 1], [0, 1, 2, 3]) == 0.0
    assert label_drift(labels, [0, 2], [0, 1, 2, 3]) == pytest.approx(0.5)


def test_a_single_process_shard_local_run_covers_every_shard():
    dataset = _fake([0, 0, 1, 1, 2, 2])
    sampler = ShardLocalSampler(range(6), dataset.sample_shards, [[0, 1, 2]], node=0, shuffle=False, pad=False)
    assert list(sampler) == [0, 1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- two nodes from the bucket


@pytest.fixture(scope="module")
def archives(s3_endpoint, tmp_path_factory):
    """The learnable archive (4 shards) locally and in ``s3://BUCKET/archive``; the endpoint's variables."""
    root = build_learnable_archive(tmp_path_factory.mktemp("archive") / "ARCHIVE", counts=COUNTS, shards=4)["root"]
    env = {**os.environ, **s3_endpoint.env()}
    previous = {k: os.environ.get(k) for k in s3_endpoint.env()}
    os.environ.update(s3_endpoint.env())
    try:
        s3_endpoint.client().create_bucket(Bucket=BUCKET)
        store = Store(f"s3://{BUCKET}/archive")
        local = Path(root)
        for path in sorted(local.rglob("*")):
            if path.is_file() and path.name != "manifest.json":
                store.upload(path, str(path.relative_to(local)))
        store.upload(local / "manifest.json", "manifest.json")
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"local": local, "url": f"s3://{BUCKET}/archive", "env": env}


def _two_nodes(archive: str | None, out: Path, caches: list[Path] | None, env: dict, *extra: str) -> None:
    """``reben train`` on two torchrun nodes (one gloo process each) on 127.0.0.1 (``archive`` None: the
    run's recorded one, with ``--resume``)."""
    port = free_port()
    env = {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = []
    for node in range(2):
        args = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node-rank",
            str(node),
            "--nproc-per-node",
            "1",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "reben_tools.cli",
            "train",
            *(["--archive", archive] if archive is not None else []),
            "--bands",
            "S1",
            "--model",
            "resnet_micro",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--sampler",
            "shard-local",
            "--out",
            str(out),
            "--no-test",
            "-q",
            *extra,
        ]
        if caches is not None:
            args += ["--cache-dir", str(caches[node])]
        cores = sorted(os.sched_getaffinity(0))
        core = {cores[node % len(cores)]}  # one core per "node", as on separate machines (no oversubscription)
        procs.append(
            subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd=REPO,
                preexec_fn=lambda core=core: os.sched_setaffinity(0, core),
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, output in zip(procs, outputs, strict=True):
        assert p.returncode == 0, output[-4000:]


def _cached_shards(cache: Path) -> list[str]:
    return sorted(p.parent.name for p in cache.rglob("data.mdb"))


@pytest.fixture(scope="module")
def runs(archives, tmp_path_factory) -> dict:
    """From the bucket, interrupted mid-epoch and resumed on "other machines" (new, empty caches; the first
    run's caches gone) without --archive; from the local copy, straight through."""
    work = tmp_path_factory.mktemp("runs")
    first = [work / "cache-node0", work / "cache-node1"]
    caches = [work / "resume-cache-node0", work / "resume-cache-node1"]
    bucket_run, local_run = work / "from-bucket", work / "from-local"
    _two_nodes(archives["url"], bucket_run, first, archives["env"], "--max-steps", "2")
    interrupted = load_checkpoint(bucket_run / "checkpoints" / "last.pt")["position"]
    held_first = [_cached_shards(c) for c in first]
    for cache in first:  # a recorded cache path would now name nothing: the run must have recorded the URL
        shutil.rmtree(cache)
    _two_nodes(None, bucket_run, caches, archives["env"], "--resume")
    _two_nodes(str(archives["local"]), local_run, None, archives["env"])
    return {
        "bucket": bucket_run,
        "local": local_run,
        "caches": caches,
        "held_first": held_first,
        "interrupted": interrupted,
    }


def test_two_nodes_train_from_the_bucket_each_fetching_its_shards_and_equal_a_local_run(runs):
    bucket_run, local_run = runs["bucket"], runs["local"]
    steps = json.loads((bucket_run / "config.json").read_text())["steps_per_epoch"]
    assert runs["interrupted"]["epoch"] == 0 and 0 < runs["interrupted"]["batch_in_epoch"] < steps  # mid-epoch

    held = [_cached_shards(c) for c in runs["caches"]]
    assert held[0] and held[1] and not set(held[0]) & set(held[1])  # each node fetched only its shards
    assert sorted(held[0] + held[1]) == [f"shard-00{i}" for i in range(4)]
    assert runs["held_first"] == held  # the same shards per node before and after the resume
    source = json.loads((bucket_run / "config.json").read_text())["source"]
    assert source["url"] == "s3://reben-training-tests/archive" and source["kind"] == "archive"

    a = load_checkpoint(bucket_run / "checkpoints" / "last.pt")
    b = load_checkpoint(local_run / "checkpoints" / "last.pt")
    assert a["position"] == b["position"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ha = json.loads((bucket_run / "metrics.json").read_text())["epochs"]
    hb = json.loads((local_run / "metrics.json").read_text())["epochs"]
    # the interrupted epoch too: each process restores its own loss sums on resume (issue 25)
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert [h["validation"]["average_precision_macro"] for h in ha] == [
        h["validation"]["average_precision_macro"] for h in hb
    ]
    assert all(h["validation"]["samples"] == COUNTS["validation"] for h in ha)  # every sample, once
    assert json.loads((bucket_run / "config.json").read_text())["sampler"] == "shard-local"


def test_evaluate_probe_embed_and_pretrain_read_the_bucket_as_the_local_copy(archives, runs, tmp_path):
    from typer.testing import CliRunner

    from reben_tools.cli import app

    def cli(*args):
        result = CliRunner().invoke(app, [str(a) for a in args], env=archives["env"])
        assert result.exit_code == 0, result.output
        return result

    best = runs["local"] / "checkpoints" / "best.pt"
    cache = ["--cache-dir", tmp_path / "cache", "--device", "cpu", "--workers", "0", "-q"]
    for name, archive in (("url", archives["url"]), ("local", archives["local"])):
        cli("evaluate", "--archive", archive, "--checkpoint", best, "--out", tmp_path / f"eval-{name}", *cache)
        cli(
            "probe",
            "--archive",
            archive,
            "--checkpoint",
            best,
            "--probes",
            "linear",
            "--out",
            tmp_path / f"probe-{name}",
            *cache,
        )
        cli(
            "embed", "--archive", archive, "--encoder", runs["local"], "--out", tmp_path / f"emb-{name}.parquet", *cache
        )
    evaluated = [json.loads((tmp_path / f"eval-{n}" / "metrics.json").read_text()) for n in ("url", "local")]
    assert evaluated[0]["average_precision_macro"] == evaluated[1]["average_precision_macro"]
    probed = [json.loads((tmp_path / f"probe-{n}" / "probe.json").read_text())["runs"] for n in ("url", "local")]
    for run in probed[0] + probed[1]:
        for result in run["probes"].values():
            result.pop("fit_seconds", None)  # a timing
    assert probed[0] == probed[1]
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "emb-url.parquet").equals(pq.read_table(tmp_path / "emb-local.parquet"))
    pretrained = cli(
        "pretrain",
        "--archive",
        archives["url"],
        "--model",
        "croma_micro",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--out",
        tmp_path / "croma",
        *cache,
    )
    assert json.loads(pretrained.stdout)["steps"] == 1


def test_cutmix_lp_from_the_bucket_checks_only_the_reference_maps_of_each_nodes_shards(archives, runs, tmp_path):
    caches = [tmp_path / "cache-node0", tmp_path / "cache-node1"]
    out = tmp_path / "cutmix-lp"
    _two_nodes(archives["url"], out, caches, archives["env"], "--mix", "cutmix-lp", "--max-steps", "1")
    held = [_cached_shards(c) for c in caches]
    assert held == [_cached_shards(c) for c in runs["caches"]]  # the plain run's split of shards, no more
    assert json.loads((out / "config.json").read_text())["mix"] == "cutmix-lp"
