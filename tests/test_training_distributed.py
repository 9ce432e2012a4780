"""The training loop's multi-process, GPU-facing and command-line safety paths (issues 10 and 15), on CPUs.

torchrun runs use 2 gloo processes; GPU-only decisions (bf16 on compute capability >= 8.0,
SyncBatchNorm, LOCAL_RANK on a one-GPU view) are tested through the functions that make them.
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
from helpers import SMALL, train_config
from sklearn.metrics import average_precision_score
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format.labels import ALPHABETICAL_ORDER
from reben_tools.learn.data.loaders import DevicePreprocess, default_workers, make_loader, open_dataset, split_indices
from reben_tools.learn.evaluation.metrics import multilabel_metrics
from reben_tools.learn.evaluation.predict import predict
from reben_tools.learn.models.restore import model_from_checkpoint
from reben_tools.learn.runtime import devices, distributed
from reben_tools.learn.runtime.checkpoints import CheckpointError, load_checkpoint, rng_state, set_rng_state
from reben_tools.learn.runtime.config import TrainingError, check_numbers
from reben_tools.learn.runtime.distributed import Distributed, EpochSampler, convert_batchnorm
from reben_tools.learn.training.loop import train

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"train": 32, "validation": 16, "test": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    return build_learnable_archive(tmp_path_factory.mktemp("archive") / "ARCHIVE", counts=COUNTS)


config = train_config


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- command line (issue 10)


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--batch-size", "0", "--batch-size must be an integer >= 1 (got 0)"),
        ("--lr", "-1", "--lr must be a number >= 0 (got -1.0)"),
        ("--epochs", "0", "--epochs must be an integer >= 1 (got 0)"),
        ("--dropout", "1.5", "--dropout must be a number in [0, 1) (got 1.5)"),
        ("--workers", "-1", "--workers must be an integer >= 0 (got -1)"),
        ("--max-steps", "0", "--max-steps must be an integer >= 1 (got 0)"),
        ("--patch-size", "0", "--patch-size must be an integer >= 1 (got 0)"),
        ("--lr", "nan", "--lr must be a number >= 0 (got nan)"),
    ],
)
def test_numeric_options_are_refused_in_one_line_without_a_run_folder(archive, tmp_path, flag, value, message):
    out = tmp_path / "run"
    result = cli(
        "train",
        "--archive",
        archive["root"],
        "--out",
        out,
        "--bands",
        "S1",
        "--model",
        "resnet_micro",
        "--device",
        "cpu",
        flag,
        value,
    )
    assert result.exit_code == 1
    assert result.output == f"error: {message}\n"
    assert not out.exists()


def test_numbers_are_checked_from_python_too(archive, tmp_path):
    with pytest.raises(TrainingError, match=r"--batch-size must be an integer >= 1 \(got 0\)"):
        train(config(archive["root"], tmp_path / "r", batch_size=0))
    assert not (tmp_path / "r").exists()
    check_numbers({"lr": 0.0, "epochs": 1, "workers": None})  # lr 0 (frozen weights) is allowed


def test_resume_needs_only_the_run_directory_and_prints_epochs_and_files(archive, tmp_path):
    out = tmp_path / "run"
    common = ("--device", "cpu", "--workers", "0", "--batch-size", "16", "--lr", "1e-2")
    first = cli(
        "train",
        "--archive",
        archive["root"],
        "--out",
        out,
        "--bands",
        "S1",
        "--model",
        "resnet_micro",
        "--epochs",
        "2",
        "--max-steps",
        "3",
        "--no-test",
        *common,
    )
    assert first.exit_code == 0, first.output
    assert "epoch 1/2: train loss " in first.output and ", macro AP 0." in first.output
    result = cli("train", "--out", out, "--resume", "--device", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "epoch 2/2: train loss " in result.output and "epoch 1/2" not in result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["status"] == "finished" and summary["steps"] == 4
    assert summary["files"] == {
        "checkpoints": [str(out / "checkpoints/best.pt"), str(out / "checkpoints/last.pt")],
        "metrics": [str(out / "metrics.json"), str(out / "test/metrics.json"), str(out / "config.json")],
        "plots": [str(out / "curves.png"), str(out / "test/per_class.png")],
    }  # the first run had --no-test; the resumed one (without it) evaluates the best checkpoint on test
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["archive"] == str(archive["root"])


def test_resume_refuses_another_archive_and_accepts_a_copy(archive, tmp_path):
    out = tmp_path / "run"
    assert train(config(archive["root"], out, max_steps=1))["status"] == "stopped_at_max_steps"
    other = build_learnable_archive(tmp_path / "other", counts=COUNTS, seed=1)
    result = cli("train", "--out", out, "--resume", "--archive", other["root"], "--device", "cpu", "--workers", "0")
    assert result.exit_code == 1
    assert result.output.startswith(f"error: --archive {other['root']} is not the archive this run was trained on")
    assert result.output.count("\n") == 1
    copy = tmp_path / "copy"
    shutil.copytree(archive["root"], copy)
    resumed = train(config(copy, out, archive=str(copy), max_steps=2), resume=True)
    assert resumed["steps"] == 2


def test_prior_baseline_equals_an_independent_computation(archive, tmp_path):
    train(config(archive["root"], tmp_path / "run", epochs=1))
    result = cli(
        "evaluate",
        "--archive",
        archive["root"],
        "--checkpoint",
        tmp_path / "run/checkpoints/last.pt",
        "--split",
        "test",
        "--out",
        tmp_path / "eval",
        "--device",
        "cpu",
        "--workers",
        "0",
        "-q",
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert printed["prior_baseline"] == written["prior_baseline"]

    def multi_hot(ids):
        return np.array([[name in archive["labels"][p] for name in ALPHABETICAL_ORDER] for p in ids], dtype=float)

    frequency = multi_hot(archive["patch_ids"]["train"]).mean(0)
    test = multi_hot(sorted(archive["patch_ids"]["test"]))
    present = test.sum(0) > 0
    scores = np.tile(frequency, (len(test), 1))
    expected_micro = average_precision_score(test.ravel(), scores.ravel())
    # all scores of one class tie: its AP is the class's share of positives in the split
    expected_macro = test[:, present].mean(0).mean()
    prior = printed["prior_baseline"]
    assert prior["average_precision_micro"] == pytest.approx(expected_micro, abs=1e-12)
    assert prior["average_precision_macro"] == pytest.approx(expected_macro, abs=1e-12)
    assert prior["average_precision_macro_all_classes"] == pytest.approx(test[:, present].mean(0).sum() / 19, abs=1e-12)
    assert prior["average_precision_micro"] > test.mean() + 0.1  # well above the share of positive labels
    # 13 of 19 classes never occur in this archive: both macro figures are printed
    assert printed["average_precision_macro_all_classes"] == pytest.approx(
        printed["average_precision_macro"] * present.sum() / 19, abs=1e-12
    )
    assert len(printed["classes_without_positives"]) == 19 - present.sum()


def test_macro_ap_with_and_without_classes_that_have_no_positive():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.2, 0.1], [0.8, 0.7, 0.3], [0.4, 0.6, 0.2], [0.1, 0.3, 0.4]])
    m = multilabel_metrics(scores, targets, logits=False, class_order=["a", "b", "c"])
    # class a: ranks 0.9 (+), 0.8 (-), 0.4 (+) -> AP (1 + 2/3) / 2; class b: 0.7 (+), 0.6 (+) -> 1
    assert m["average_precision_macro"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert m["average_precision_macro_all_classes"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 3)
    assert m["classes_without_positives"] == ["c"]


# --------------------------------------------------------------------------- numerics and devices (issue 15)


def test_evaluation_logits_are_float32_with_the_head_outside_bf16(archive, tmp_path):
    train(config(archive["root"], tmp_path / "run", epochs=1))
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    model = model_from_checkpoint(state, "last.pt")
    dataset = open_dataset(archive["root"], tuple(state["model_config"]["bands"]))
    try:
        loader = make_loader(
            dataset,
            EpochSampler(split_indices(dataset, "validation"), shuffle=False, pad=False),
            8,
            0,
            torch.device("cpu"),
            0,
        )
        preprocess = DevicePreprocess(dataset, torch.device("cpu"))
        logits, _, _ = predict(model, loader, preprocess, "bf16")
        features, _, _ = predict(model, loader, preprocess, "bf16", features=True)
    finally:
        dataset.archive.close()
    assert logits.dtype == np.float32 and logits.shape == (16, 19)
    with torch.no_grad():
        expected = model.head(torch.from_numpy(features)).numpy()  # fp32 head on the bf16 encoder's features
    assert np.array_equal(logits, expected)
    rounded = torch.from_numpy(logits).bfloat16().float().numpy()
    assert (rounded != logits).mean() > 0.9  # bf16 logits would have lost these bits
    assert len(np.unique(logits[:, 0])) == 16


def test_auto_precision_needs_compute_capability_8(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # V100
    assert devices.resolve_precision("auto", cuda) == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # T4
    assert devices.resolve_precision("auto", cuda) == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # A100
    assert devices.resolve_precision("auto", cuda) == "bf16"
    assert devices.resolve_precision("bf16", cuda) == "bf16"  # asked for: kept
    assert devices.resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_out_of_memory_is_recognised_without_torch_outofmemoryerror(monkeypatch):
    assert devices.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)  # as in torch 2.3
    monkeypatch.setattr(devices, "_OOM_CLASSES", devices._oom_classes())
    assert devices.is_out_of_memory(torch.cuda.OutOfMemoryError("x")) and devices.is_out_of_memory(MemoryError())
    assert not devices.is_out_of_memory(ValueError("out of range"))


def test_workers_follow_the_processes_of_this_node(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert default_workers(8) == 7  # 2 nodes x 8 GPUs x 64 cores: 64 // 8 - 1 per process
    assert default_workers(1) == 8 and default_workers(64) == 0


def test_local_rank_wraps_when_each_process_sees_one_gpu(monkeypatch):
    chosen = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    ctx = distributed.init_distributed("cuda")
    assert chosen == [0] and ctx.device == torch.device("cuda", 0)
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size) == (3, 4, 3, 4)


def test_batchnorm_becomes_syncbatchnorm_for_several_gpu_processes():
    from reben_tools.learn.models.classifier import build_model

    def kinds(model):
        return {type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__}

    gpus = Distributed(rank=0, world_size=2, device=torch.device("cuda", 0))
    assert kinds(convert_batchnorm(build_model("resnet_micro", ("VV", "VH"), **SMALL), gpus)) == {"SyncBatchNorm"}
    assert kinds(convert_batchnorm(build_model("resnet_micro", ("VV", "VH"), **SMALL), gpus, enabled=False)) == {
        "BatchNorm2d"
    }
    cpus = Distributed(rank=0, world_size=2, device=torch.device("cpu"))  # SyncBatchNorm runs only on GPUs
    assert kinds(convert_batchnorm(build_model("resnet_micro", ("VV", "VH"), **SMALL), cpus)) == {"BatchNorm2d"}
    one = Distributed(device=torch.device("cuda", 0))
    assert kinds(convert_batchnorm(build_model("resnet_micro", ("VV", "VH"), **SMALL), one)) == {"BatchNorm2d"}


def test_flip_generator_state_of_another_device_kind_is_refused_in_one_line():
    generator = torch.Generator().manual_seed(1)
    state = rng_state(generator)
    assert state["augment"].numel() == 5056  # CPU Mersenne Twister
    state["augment"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA Philox state, as older GPU runs saved
    with pytest.raises(CheckpointError, match=r"\(16 bytes\) was saved on another kind of generator \(5056 bytes"):
        set_rng_state(state, generator)


def test_resume_after_the_flip_generator_moved_to_the_cpu(archive, tmp_path):
    """The flip generator is a CPU generator whatever the device, so its state has one size on CPU and GPU."""
    out = tmp_path / "run"
    train(config(archive["root"], out, max_steps=1))
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["rng"][0]["augment"].numel() == torch.Generator().get_state().numel()
    assert train(config(archive["root"], out, precision="bf16"), resume=True)["steps"] == 4


def test_deterministic_switches_algorithms_and_a_run_trains_under_it(archive, tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    try:
        devices.set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        metrics = train(config(archive["root"], tmp_path / "run", epochs=1, deterministic=True))
        assert metrics["steps"] == 2
        assert json.loads((tmp_path / "run" / "config.json").read_text())["deterministic"] is True
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.deterministic = False


# --------------------------------------------------------------------------- torchrun, 2 gloo processes


def _torchrun(mode: str, record: Path, *train_args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "ddp_faults.py"),
        mode,
        str(record),
        "--",
        "train",
        *map(str, train_args),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def test_batchnorm_buffers_are_identical_on_both_processes_at_validation(archive, tmp_path):
    out = tmp_path / "ddp"
    proc = _torchrun(
        "bn",
        tmp_path / "record",
        "--archive",
        archive["root"],
        "--bands",
        "S1",
        "--model",
        "resnet_micro",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        out,
        "--no-test",
        "-q",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / "record" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["validations"]) == 2 and ranks[0]["batchnorm"] == ["BatchNorm2d"]  # gloo: per-process BN
    for epoch in range(2):
        assert ranks[0]["validations"][epoch] == ranks[1]["validations"][epoch]
    # before the broadcast the processes held different running statistics (their own last batches)
    assert ranks[0]["before_broadcast"][0] != ranks[1]["before_broadcast"][0]
    # and the checkpoint holds the model that was validated
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    sums = [float(v.double().sum()) for k, v in state["model"].items() if "running" in k]
    assert sums == ranks[0]["validations"][1]
    assert json.loads((out / "config.json").read_text())["batchnorm"] == "per_process"


def test_nan_on_one_process_stops_both_at_the_same_step_with_one_message(archive, tmp_path):
    out = tmp_path / "ddp"
    proc = _torchrun(
        "nan",
        tmp_path / "record",
        "--archive",
        archive["root"],
        "--bands",
        "S1",
        "--model",
        "resnet_micro",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        out,
        "--no-test",
        "-q",
        "--checkpoint-every",
        "1",
    )
    assert proc.returncode != 0
    both = proc.stdout + proc.stderr
    assert both.count("error: loss became nan at step 2; lower --lr (process 1 of 2)") == 1, both[-4000:]
    ranks = [json.loads((tmp_path / "record" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["flips"] for r in ranks] == [2, 2]  # neither process took a third batch
    # the checkpoint of step 1 is intact: the NaN step was never saved
    assert load_checkpoint(out / "checkpoints" / "last.pt")["position"]["step"] == 1


def test_out_of_memory_on_one_process_ends_the_run_with_one_message_and_no_hang(archive, tmp_path):
    out = tmp_path / "ddp"
    proc = _torchrun(
        "oom",
        tmp_path / "record",
        "--archive",
        archive["root"],
        "--bands",
        "S1",
        "--model",
        "resnet_micro",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        out,
        "--no-test",
        "-q",
    )
    assert proc.returncode != 0
    both = proc.stdout + proc.stderr
    message = (
        "error: a batch of 8 samples does not fit in memory on cpu: add --accumulate 2 (micro-batches of 4; the "
        "global batch stays 16), or lower --batch-size"
    )
    assert both.count(message) == 1, both[-4000:]
    assert both.count("error: ") == 1
    assert "[rank0]: Traceback" not in both and "[rank1]: Traceback" not in both  # no worker traceback


def test_run_directory_that_another_process_cannot_see_is_refused_at_start(archive, tmp_path):
    out = tmp_path / "ddp"
    proc = _torchrun(
        "unshared",
        tmp_path / "record",
        "--archive",
        archive["root"],
        "--bands",
        "S1",
        "--model",
        "resnet_micro",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        out,
        "--no-test",
        "-q",
    )
    assert proc.returncode != 0
    both = proc.stdout + proc.stderr
    expected = (
        f"error: {out}: process(es) [1] cannot see files that rank 0 writes there; a run over several nodes "
        "needs --out on a file system every node shares"
    )
    assert both.count(expected) == 1, both[-3000:]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".reben-shared")]


def test_evaluate_checks_its_numbers(archive, tmp_path):
    for flag, value, message in (
        ("--batch-size", "0", "--batch-size must be an integer >= 1 (got 0)"),
        ("--threshold", "1.5", "--threshold must be a probability in (0, 1) (got 1.5)"),
    ):
        result = cli(
            "evaluate",
            "--archive",
            archive["root"],
            "--checkpoint",
            tmp_path / "none.pt",
            "--out",
            tmp_path / "eval",
            "--device",
            "cpu",
            flag,
            value,
        )
        assert result.exit_code == 1 and result.output == f"error: {message}\n"
        assert not (tmp_path / "eval").exists()


def test_the_host_reads_the_loss_back_only_every_50_steps_on_a_gpu():
    from reben_tools.learn.training.skeleton import SYNC_EVERY, sync_interval

    assert SYNC_EVERY == 50
    assert sync_interval(torch.device("cuda", 0), per_step_callback=False) == 50
    assert sync_interval(torch.device("cuda", 0), per_step_callback=True) == 1
    assert sync_interval(torch.device("cpu"), per_step_callback=False) == 1


def test_a_nan_between_synchronisations_is_reported_at_its_own_step(archive, tmp_path, monkeypatch):
    """As on a GPU (losses read back every few steps): the NaN of step 2 is found at step 3 and named."""
    from reben_tools.learn.training import loop, skeleton

    calls = []
    original = loop.random_flips

    def faulty(images, generator):
        calls.append(1)
        images = original(images, generator)
        return images * float("nan") if len(calls) == 2 else images

    monkeypatch.setattr(loop, "random_flips", faulty)
    monkeypatch.setattr(skeleton, "sync_interval", lambda device, per_step_callback: 3)
    with pytest.raises(TrainingError, match=r"^loss became nan at step 2; lower --lr$"):
        train(config(archive["root"], tmp_path / "run", batch_size=8))
    assert len(calls) == 3  # stopped at the synchronisation after step 3
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()  # nothing saved from the bad steps
