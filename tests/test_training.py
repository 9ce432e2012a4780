"""The training loop, evaluation and probing on a small generated archive (CPU, real LMDB/parquet)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import train_config
from sklearn.metrics import average_precision_score, f1_score, hamming_loss
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format.labels import ALPHABETICAL_ORDER
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.learn.models.restore import model_from_checkpoint
from reben_tools.learn.runtime.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from reben_tools.learn.runtime.config import TrainConfig, TrainingError
from reben_tools.learn.runtime.distributed import EpochSampler
from reben_tools.learn.runtime.schedule import effective_warmup, lr_factor
from reben_tools.learn.training.loop import train

REPO = Path(__file__).resolve().parents[1]


COUNTS = {"train": 48, "validation": 16, "test": 16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    return build_learnable_archive(tmp_path_factory.mktemp("archive") / "ARCHIVE", counts=COUNTS)


config = partial(train_config, bands="S1_10m_20m", epochs=3)


@pytest.fixture(scope="module")
def trained_run(archive, tmp_path_factory) -> dict:
    """Three epochs (9 steps) of a small ResNet on S1_10m_20m with the recipe's regularisation, test evaluated."""
    out = tmp_path_factory.mktemp("runs") / "run"
    losses: list[float] = []
    metrics = train(config(archive["root"], out, evaluate_test=True), on_step=lambda step, loss: losses.append(loss))
    return {"out": out, "losses": losses, "metrics": metrics}


def independent_predictions(archive_dir, checkpoint: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits of a checkpoint's model through the dataset's per-sample (numpy) path, not the native one."""
    state = load_checkpoint(checkpoint)
    model = model_from_checkpoint(state, checkpoint).eval()
    dataset = ReBENDataset(archive_dir, split=split, bands=state["model_config"]["bands"])
    try:
        samples = [dataset[i] for i in range(len(dataset))]
    finally:
        dataset.archive.close()
    with torch.no_grad():
        logits = model(torch.stack([s["image"] for s in samples])).numpy()
    return logits, np.stack([s["label"].numpy() for s in samples]), [s["patch_id"] for s in samples]


# --------------------------------------------------------------------------- learning


def test_loss_falls_and_validation_beats_chance(trained_run, archive):
    losses = trained_run["losses"]
    assert len(losses) == 3 * math.ceil(48 / 16)
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    history = trained_run["metrics"]["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # chance macro AP is the mean class prevalence among classes present in validation
    labels = np.array(
        [[n in archive["labels"][p] for n in ALPHABETICAL_ORDER] for p in archive["patch_ids"]["validation"]]
    )
    present = labels.any(0)
    chance = labels[:, present].mean(0).mean()
    assert trained_run["metrics"]["best_validation_average_precision_macro"] > chance + 0.2


def test_run_directory_holds_checkpoints_metrics_and_plots(trained_run):
    out = trained_run["out"]
    for name in (
        "config.json",
        "metrics.json",
        "curves.png",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "test/metrics.json",
        "test/per_class.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] == 9
    best_epoch = metrics["best_epoch"]
    best_ap = max(h["validation"]["average_precision_macro"] for h in metrics["epochs"])
    assert metrics["epochs"][best_epoch - 1]["validation"]["average_precision_macro"] == best_ap
    assert load_checkpoint(out / "checkpoints" / "best.pt")["position"]["epoch"] == best_epoch
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporaries left
    assert 0.0 <= metrics["epochs"][0]["data_wait_fraction"] <= 1.0


def test_validation_metrics_match_an_independent_computation(trained_run, archive):
    """Native batched loading + device transform + merge must give the per-sample path's figures."""
    out = trained_run["out"]
    logits, targets, ids = independent_predictions(archive["root"], out / "checkpoints" / "last.pt", "validation")
    assert ids == sorted(archive["patch_ids"]["validation"])
    present = targets.sum(0) > 0
    expected_ap = average_precision_score(targets[:, present], logits[:, present], average="macro")
    last = json.loads((out / "metrics.json").read_text())["epochs"][-1]["validation"]
    assert last["samples"] == 16
    assert last["average_precision_macro"] == pytest.approx(expected_ap, abs=1e-6)
    decisions = (logits >= 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert last["f1_micro"] == pytest.approx(f1_score(targets, decisions, average="micro", zero_division=0))
    assert last["hamming_loss"] == pytest.approx(hamming_loss(targets, decisions))


def test_evaluate_command_writes_metrics_and_bar_chart(trained_run, archive, tmp_path):
    ckpt = trained_run["out"] / "checkpoints" / "best.pt"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--archive",
            str(archive["root"]),
            "--checkpoint",
            str(ckpt),
            "--split",
            "test",
            "--out",
            str(tmp_path / "eval"),
            "--device",
            "cpu",
            "--workers",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (tmp_path / "eval" / "per_class.png").read_bytes()[:4] == b"\x89PNG"
    logits, targets, _ = independent_predictions(archive["root"], ckpt, "test")
    present = targets.sum(0) > 0
    assert metrics["samples"] == 16
    assert metrics["average_precision_micro"] == pytest.approx(
        average_precision_score(targets, logits, average="micro"), abs=1e-6
    )
    assert metrics["average_precision_macro"] == pytest.approx(
        average_precision_score(targets[:, present], logits[:, present], average="macro"), abs=1e-6
    )
    assert set(metrics["per_class"]) == set(ALPHABETICAL_ORDER)
    # the end-of-training test evaluation used the same checkpoint
    run_test = json.loads((trained_run["out"] / "test" / "metrics.json").read_text())
    assert run_test["average_precision_macro"] == pytest.approx(metrics["average_precision_macro"], abs=1e-9)


def test_probe_fits_three_heads_on_frozen_features(trained_run, archive, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "probe",
            "--archive",
            str(archive["root"]),
            "--checkpoint",
            str(trained_run["out"] / "checkpoints" / "best.pt"),
            "--out",
            str(tmp_path / "p"),
            "--device",
            "cpu",
            "--workers",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    # one name for the same content in both modes (issue 24): probe.json, probe.md, probes.png
    assert not (tmp_path / "p" / "metrics.json").exists()
    results = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert set(results["probes"]) == {"linear", "mlp", "random_forest"}
    assert results["train_samples"] == 48 and results["test_samples"] == 16 and results["features"] == 16
    for m in results["probes"].values():
        assert 0.0 <= m["average_precision_macro"] <= 1.0 and m["samples"] == 16
    assert results["probes"]["linear"]["average_precision_macro"] > 0.5
    for name in ("probes.png", "probe.md", "per_class_f2.png"):
        assert (tmp_path / "p" / name).is_file()
    protocol = results["protocol"]  # the comparison protocol on the held-out (test) patches
    assert protocol["pool"] == "test" and protocol["patches"] == 16 and protocol["repeats"] == 10
    assert "## Comparison protocol" in (tmp_path / "p" / "probe.md").read_text()


def test_probe_random_init_baseline_needs_model_and_bands(archive, tmp_path):
    from reben_tools.learn.evaluation.probes import probe

    results = probe(
        archive["root"],
        None,
        tmp_path,
        model="resnet_micro",
        bands="S1",
        probes=("linear",),
        device="cpu",
        workers=0,
        progress=False,
        max_train_samples=20,
    )
    assert results["source"] == {"random_init": "resnet_micro"} and results["features"] == 64
    assert results["train_samples"] == 20
    with pytest.raises(TrainingError, match="--model and --bands"):
        probe(archive["root"], None, tmp_path, model="resnet_micro", device="cpu")


def test_probe_on_checkpoint_features_at_train_fractions(archive, tmp_path):
    """The archive probe and the embeddings probe share one implementation: fractions, table, per-class F2."""
    from reben_tools.learn.evaluation.probes import probe
    from reben_tools.splits.subsets import fraction_indices

    results = probe(
        archive["root"],
        None,
        tmp_path,
        model="resnet_micro",
        bands="S1",
        probes=("linear",),
        device="cpu",
        workers=0,
        progress=False,
        fractions=(0.25, 1.0),
        subset_seed=2,
    )
    ids = sorted(archive["patch_ids"]["train"])
    labels = np.array([[n in archive["labels"][p] for n in ALPHABETICAL_ORDER] for p in ids])
    expected = len(fraction_indices(ids, labels, 0.25, seed=2))
    assert expected == 12
    assert [(r["train_fraction"], r["train_samples"]) for r in results["runs"]] == [(0.25, 12), (1.0, 48)]
    assert results["probes"] == results["runs"][1]["probes"] and results["train_samples"] == 48
    assert "## Train fraction 25% (12 train patches)" in (tmp_path / "probe.md").read_text()
    assert (tmp_path / "per_class_f2.png").is_file() and (tmp_path / "probe.json").is_file()
    assert not (tmp_path / "metrics.json").exists()  # one name in both modes (issue 24)


def test_late_fusion_trains(archive, tmp_path):
    metrics = train(
        config(
            archive["root"],
            tmp_path / "late",
            fusion="late",
            bands="ALL",
            model="convnext_micro",
            epochs=1,
            model_kwargs=dict(dims=(4, 8, 8, 16)),
        )
    )
    assert metrics["steps"] == 3 and metrics["epochs"][0]["validation"]["samples"] == 16
    state = load_checkpoint(tmp_path / "late" / "checkpoints" / "last.pt")
    assert state["model_config"]["fusion"] == "late" and len(state["model_config"]["bands"]) == 14


# --------------------------------------------------------------------------- resume and checkpoints


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_resume_reproduces_an_uninterrupted_run(archive, tmp_path):
    """Interrupted mid-epoch twice (with DataLoader workers), resumed, equals one straight run exactly."""
    straight = train(config(archive["root"], tmp_path / "straight", epochs=2))
    assert straight["steps"] == 6
    interrupted = config(archive["root"], tmp_path / "pieces", epochs=2, max_steps=2, workers=1)
    assert train(interrupted)["status"] == "stopped_at_max_steps"
    assert load_checkpoint(tmp_path / "pieces" / "checkpoints" / "last.pt")["position"] == {
        "epoch": 0,
        "batch_in_epoch": 2,
        "step": 2,
    }
    assert train(config(archive["root"], tmp_path / "pieces", max_steps=4), resume=True)["steps"] == 4
    final = train(config(archive["root"], tmp_path / "pieces", workers=1), resume=True)
    assert final["steps"] == 6 and final["status"] == "finished"
    a = _weights(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = _weights(tmp_path / "pieces" / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["train_loss"] for h in final["epochs"]] == [h["train_loss"] for h in straight["epochs"]]
    assert [h["validation"]["average_precision_macro"] for h in final["epochs"]] == [
        h["validation"]["average_precision_macro"] for h in straight["epochs"]
    ]


def test_crash_mid_run_leaves_a_complete_checkpoint_and_resume_finishes(archive, tmp_path):
    out = tmp_path / "crash"

    def crash(step: int, loss: float) -> None:
        if step == 5:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(config(archive["root"], out, epochs=2), on_step=crash)
    state = load_checkpoint(out / "checkpoints" / "last.pt")  # the epoch-1 checkpoint, complete
    assert state["position"] == {"epoch": 1, "batch_in_epoch": 0, "step": 3}
    assert train(config(archive["root"], out), resume=True)["steps"] == 6


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"format": "reben-tools-checkpoint", "version": 1, "x": torch.ones(3)})
    before = path.read_bytes()

    def half_write(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"x": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_or_foreign_checkpoint_is_named(tmp_path, trained_run):
    data = (trained_run["out"] / "checkpoints" / "best.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a reben-tools checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_of_another_model_or_band_set_is_refused(trained_run, archive, tmp_path):
    ckpt = str(trained_run["out"] / "checkpoints" / "best.pt")
    runner = CliRunner()
    common = [
        "evaluate",
        "--archive",
        str(archive["root"]),
        "--checkpoint",
        ckpt,
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, common + ["--model", "vit_micro_patch8"])
    assert result.exit_code == 1
    assert "trained with model 'resnet_micro', not 'vit_micro_patch8'" in result.output
    result = runner.invoke(app, common + ["--bands", "S1"])
    assert result.exit_code == 1 and "bands ['VV', 'VH', 'B02'" in result.output and "not ['VV', 'VH']" in result.output
    with pytest.raises(CheckpointError, match="differs in: --model 'resnet18'"):
        train(config(archive["root"], trained_run["out"], model="resnet18"), resume=True, given={"model"})


def test_early_stopping_after_patience_epochs_without_improvement(archive, tmp_path):
    """lr 0 and no BatchNorm: the weights never change, so validation AP never improves after epoch 1."""
    cfg = config(
        archive["root"], tmp_path / "early", model="vit_micro_patch15", lr=0.0, epochs=6, patience=2, model_kwargs={}
    )
    metrics = train(cfg)
    assert metrics["stopped_by"] == "early_stopping" and metrics["epochs_completed"] == 3
    assert metrics["best_epoch"] == 1
    again = train(config(archive["root"], tmp_path / "early", model_kwargs={}), resume=True)
    assert again["steps"] == metrics["steps"] and again["stopped_by"] == "early_stopping"


def test_existing_run_needs_resume(trained_run, archive):
    with pytest.raises(TrainingError, match="already holds a run"):
        train(config(archive["root"], trained_run["out"]))


# --------------------------------------------------------------------------- bad input


def test_archive_without_split_or_bands_or_model(tmp_path):
    no_validation = build_learnable_archive(tmp_path / "a", counts={"train": 8, "test": 4}, shards=1)
    with pytest.raises(TrainingError, match=r"no patches in split 'validation'.*'test', 'train'"):
        train(config(no_validation["root"], tmp_path / "r1"))
    s2_only = build_learnable_archive(tmp_path / "b", counts={"train": 8, "validation": 4}, shards=1, with_s1=False)
    with pytest.raises(TrainingError, match="may lack S1 values"):
        train(config(s2_only["root"], tmp_path / "r2", bands="S1"))
    with pytest.raises(TrainingError, match="unknown model 'resnet5'"):
        train(config(s2_only["root"], tmp_path / "r3", model="resnet5"))
    with pytest.raises(TrainingError, match=r"not a reben-tools archive|neither"):
        train(config(tmp_path / "nothing-here", tmp_path / "r4"))
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--archive",
            str(s2_only["root"]),
            "--out",
            str(tmp_path / "r5"),
            "--bands",
            "S1",
            "--model",
            "resnet_micro",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 1 and "error:" in result.output and "may lack S1 values" in result.output


def test_batch_that_does_not_fit_in_memory_says_lower_the_batch_size(archive, tmp_path):
    """A process with capped address space cannot hold a batch of 96 activations of a wide ResNet."""
    script = f"""
import resource
import torch, torch._dynamo, sympy  # imported before the cap: they only need address space once
from reben_tools.learn.runtime.config import TrainConfig, TrainingError
from reben_tools.learn.training.loop import train
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
usage = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (usage + 2_500_000_000, hard))
# one 1024-channel 60x60 activation of 48 samples is 700 MB: the forward pass cannot fit
cfg = TrainConfig(archive={str(archive["root"])!r}, bands='ALL', model='resnet_micro', out={str(tmp_path / "oom")!r},
                  epochs=1, batch_size=48, workers=0, device='cpu', progress=False, evaluate_test=False,
                  model_kwargs=dict(widths=(1024, 1024, 1024, 1024), stem_width=1024))
try:
    train(cfg)
except TrainingError as exc:
    print('ERROR', exc)
"""
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    expected = (
        "ERROR a batch of 48 samples does not fit in memory on cpu: add --accumulate 2 (micro-batches of 24; the "
        "global batch stays 48), or lower --batch-size"
    )
    assert expected in proc.stdout, proc.stdout + proc.stderr[-3000:]


# --------------------------------------------------------------------------- schedule and sampling


def test_learning_rate_schedule_is_warmup_then_cosine_to_a_tenth():
    assert lr_factor(0, 1000, 50_000) == pytest.approx(0.1)
    assert lr_factor(500, 1000, 50_000) == pytest.approx(0.55)
    assert lr_factor(1000, 1000, 50_000) == pytest.approx(1.0)
    assert lr_factor(1000 + 24_500, 1000, 50_000) == pytest.approx(0.55)
    assert lr_factor(50_000, 1000, 50_000) == pytest.approx(0.1)
    assert lr_factor(60_000, 1000, 50_000) == pytest.approx(0.1)
    assert effective_warmup(1000, 53_300) == 1000  # reBEN: 533 steps/epoch x 100 epochs
    assert effective_warmup(1000, 180) == 18


def test_epoch_sampler_splits_epochs_between_processes_and_resumes():
    indices = list(range(100, 111))  # 11 dataset indices
    shares = [EpochSampler(indices, rank=r, world_size=3, seed=5) for r in range(3)]
    for s in shares:
        s.set_epoch(2)
    lists = [list(s) for s in shares]
    assert all(len(lst) == 4 for lst in lists)  # padded to 12
    assert {i for lst in lists for i in lst} == set(indices)
    again = EpochSampler(indices, rank=1, world_size=3, seed=5)
    again.set_epoch(2)
    again.set_position(3)
    assert list(again) == lists[1][3:] and len(again) == 1
    other_epoch = EpochSampler(indices, seed=5)
    other_epoch.set_epoch(3)
    assert list(other_epoch) != [i for row in zip(*lists, strict=True) for i in row][:11]
    val = [list(EpochSampler(indices, rank=r, world_size=3, shuffle=False, pad=False)) for r in range(3)]
    assert sorted(i for lst in val for i in lst) == indices


# --------------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_with_gloo(archive, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "reben_tools.cli",
        "train",
        "--archive",
        str(archive["root"]),
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
        str(out),
        "--no-test",
        "-q",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3  # 48 samples, global batch 16, 8 per process
    epoch = metrics["epochs"][0]
    assert epoch["train_samples"] == 48 and epoch["validation"]["samples"] == 16  # gathered once each
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert proc.stdout.count('"status"') == 1  # only the main process reports


@pytest.mark.slow
def test_demo_archive_cpu_run_learns_well_above_chance(tmp_path):
    """The documented demo: ``reben demo`` then a few minutes of resnet_micro on the CPU."""
    from reben_tools.builder.demo import run_demo

    run_demo(tmp_path / "demo", workers=2, progress=False, echo=lambda line: None)
    archive_dir = tmp_path / "demo" / "archive"
    metrics = train(
        TrainConfig(
            archive=str(archive_dir),
            bands="S1_10m_20m",
            model="resnet_micro",
            out=str(tmp_path / "run"),
            epochs=30,
            batch_size=32,
            lr=3e-3,
            device="cpu",
            workers=0,
            progress=False,
        )
    )
    dataset = ReBENDataset(archive_dir, split="test", bands="S1")
    labels = dataset.labels
    dataset.archive.close()
    present = labels.sum(0) > 0
    chance_macro, chance_micro = labels[:, present].mean(0).mean(), labels.mean()
    assert metrics["test"]["average_precision_macro"] > chance_macro + 0.15
    assert metrics["test"]["average_precision_micro"] > chance_micro + 0.3
