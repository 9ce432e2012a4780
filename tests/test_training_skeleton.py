"""The training skeleton's GPU- and multi-process-facing behaviour (issue 25), shown on CPUs: pinned copies,
process-group shutdown, the earliest NaN, workers per node, pretraining validation without padded duplicates,
one compiled graph, CROMA's masks without a generator object, gradient accumulation, per-process accumulators."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import pretrain_config, train_config
from training_archive import build_learnable_archive

from reben_tools.learn.data import augment, mixing
from reben_tools.learn.models.croma import CONFIGS, CROMA
from reben_tools.learn.models.croma_losses import croma_losses
from reben_tools.learn.runtime import devices
from reben_tools.learn.runtime.checkpoints import load_checkpoint
from reben_tools.learn.runtime.config import TrainingError
from reben_tools.learn.runtime.distributed import Distributed, EpochSampler, earliest_failure
from reben_tools.learn.training import loop, pretrain, skeleton

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"train": 40, "validation": 8, "test": 8}
"""40 train patches at batch 16: steps of 16, 16 and 8 (the last one smaller)."""
PLAIN = dict(model="vit_micro_patch15", model_kwargs={}, dropout=0.0, drop_path=0.0, flips=False, epochs=1)
"""No BatchNorm, dropout or flips: a step's gradient is the mean over its samples, however they are split."""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    return build_learnable_archive(tmp_path_factory.mktemp("archive") / "ARCHIVE", counts=COUNTS, shards=1)


config = partial(train_config, bands="S1")


def _weights(out: Path) -> dict:
    return load_checkpoint(out / "checkpoints" / "last.pt")["model"]


# --------------------------------------------------------------------------- 1: no synchronising copies


def test_flips_and_boxes_reach_the_device_through_pinned_non_blocking_copies(monkeypatch):
    """On a CUDA-less build: every host-to-device copy of a training step's random draws comes from a pinned
    tensor with non_blocking=True (the copy that does not make the host wait); the device here is ``meta``."""
    pinned, copies = set(), []

    def pin_memory(self):
        pinned.add(id(self))
        return self

    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if self.device.type == "cpu" and str(target).startswith("meta"):
            copies.append((id(self) in pinned, kwargs.get("non_blocking", False)))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    images = torch.empty(4, 3, 8, 8, device="meta")
    generator = torch.Generator().manual_seed(0)
    assert augment.random_flips(images, generator).device.type == "meta"
    boxes = mixing.sample_boxes(4, (8, 8), generator=generator, device="meta")
    assert boxes.source.device.type == "meta" and boxes.mixed.dtype == torch.bool
    assert copies == [(True, True), (True, True)]  # one copy for the flips, one for all eight box fields
    augment.random_flips(torch.zeros(4, 3, 8, 8), generator)  # on a CPU device: nothing to copy, nothing pinned
    mixing.sample_boxes(4, (8, 8), generator=generator, device="cpu")
    assert len(copies) == 2 and len(pinned) == 2


# --------------------------------------------------------------------------- 6 and 7: failures


def test_a_process_that_fails_alone_leaves_the_process_group_standing(monkeypatch, tmp_path):
    destroyed = []
    monkeypatch.setattr(skeleton, "init_distributed", lambda device: Distributed(rank=1, world_size=2))
    monkeypatch.setattr(skeleton.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(skeleton.dist, "destroy_process_group", lambda: destroyed.append(1))
    for together in (False, True):

        class Failing:
            def __init__(self, *args):
                pass

            def run(self, resume, given, together=together):
                raise TrainingError("a batch does not fit", all_processes=together)

        monkeypatch.setattr(skeleton, "_Run", Failing)
        for objective in (
            loop.Supervised(config(tmp_path, tmp_path)),
            pretrain.Croma(pretrain_config(tmp_path, tmp_path)),
        ):
            with pytest.raises(TrainingError):
                skeleton.run(objective, False, None, None)
        assert destroyed == ([] if not together else [1, 1])  # NCCL would wait for the others in destroy


def test_the_earliest_failing_step_is_named_not_the_lowest_failing_rank(archive, tmp_path):
    assert earliest_failure([(3, "a"), (2, "b"), None]) == 1
    assert earliest_failure([None, (4, "a"), (4, "b")]) == 1
    assert earliest_failure([(None, "a"), (9, "b")]) == 1
    out = tmp_path / "ddp"
    proc = _torchrun("nan-late", tmp_path / "record", *_train_args(archive, out), "--checkpoint-every", "1")
    assert proc.returncode != 0
    both = proc.stdout + proc.stderr
    assert both.count("error: loss became nan at step 2; lower --lr (process 1 of 2)") == 1, both[-3000:]


# --------------------------------------------------------------------------- 4: workers per node


def test_both_objectives_count_workers_from_the_processes_of_this_node(archive, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    node = Distributed(rank=9, world_size=16, local_world_size=8)  # 2 nodes x 8 GPUs x 64 cores
    assert skeleton.loader_workers(pretrain_config(tmp_path, tmp_path, workers=None), node) == 7
    assert skeleton.loader_workers(config(tmp_path, tmp_path, workers=None), node) == 7
    assert skeleton.loader_workers(config(tmp_path, tmp_path, workers=2), node) == 2
    asked = []
    monkeypatch.setattr(skeleton, "default_workers", lambda local: asked.append(local) or 0)
    monkeypatch.setattr(skeleton, "init_distributed", lambda device: Distributed(local_world_size=8))
    pretrain.pretrain(pretrain_config(archive["root"], tmp_path / "p", workers=None, max_steps=1))
    assert asked == [8]


# --------------------------------------------------------------------------- 5: pretraining validation


def test_pretraining_validation_counts_every_patch_once_on_three_processes():
    """80 validation patches on 3 processes: shares of 27 (one padded duplicate on two of them), batches of 8;
    the validation's mask keeps 80 rows, each patch once (81 were counted before)."""
    indices = list(range(1000, 1080))
    kept = []
    for rank in range(3):
        sampler = EpochSampler(indices, rank, 3, shuffle=False, pad=True)
        share, real = list(sampler), sampler.real_samples()
        assert len(share) == 27
        for start in range(0, len(share), 8):
            batch = share[start : start + 8]
            keep = (torch.arange(len(batch)) + start < real).tolist()
            kept += [i for i, k in zip(batch, keep, strict=True) if k]
    assert sorted(kept) == indices


def test_per_sample_pretraining_figures_average_to_the_batch_losses():
    torch.manual_seed(0)
    model = CROMA(CONFIGS["croma_micro"], pretraining=True)
    with torch.no_grad():
        outputs = model(torch.rand(5, 2, 120, 120), torch.rand(5, 12, 120, 120), 0.75)
        rows, batch = pretrain.row_figures(outputs), croma_losses(outputs)
    assert set(rows) == set(pretrain.STEP_FIGURES)
    for name in pretrain.STEP_FIGURES:
        assert rows[name].shape == (5,)
        torch.testing.assert_close(rows[name].mean(), batch[name].float(), rtol=1e-5, atol=1e-6, msg=name)


# --------------------------------------------------------------------------- 8 and 9: torch.compile


def test_compile_keeps_one_graph_for_the_smaller_last_batch(archive, tmp_path, monkeypatch):
    from torch._dynamo.testing import CompileCounter

    real_compile = torch.compile
    torch._dynamo.reset()
    counter = CompileCounter()
    monkeypatch.setattr(torch, "compile", partial(real_compile, backend=counter))
    metrics = loop.train(config(archive["root"], tmp_path / "run", compile=True, **PLAIN))
    assert metrics["steps"] == 3  # batches of 16, 16 and 8
    assert counter.frame_count == 1
    torch._dynamo.reset()
    counter = CompileCounter()
    monkeypatch.setattr(torch, "compile", partial(real_compile, backend=counter))
    monkeypatch.setattr(skeleton, "mark_batch_dynamic", lambda tensor: tensor)
    loop.train(config(archive["root"], tmp_path / "unmarked", compile=True, **PLAIN))
    assert counter.frame_count == 2  # without the mark: a second graph for the batch of 8
    torch._dynamo.reset()


def test_croma_masks_trace_as_one_graph_and_training_passes_no_generator(archive, tmp_path, monkeypatch):
    model = CROMA(CONFIGS["croma_micro"], pretraining=True)
    s1, s2 = torch.rand(2, 2, 120, 120), torch.rand(2, 12, 120, 120)
    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(s1, s2, 0.75).graph_count == 1
    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(s1, s2, 0.75, torch.Generator()).graph_count == 2  # what it was
    torch._dynamo.reset()
    generators = []
    forward = CROMA.forward

    def spy(self, s1, s2, mask_ratio=0.75, generator=None):
        generators.append(generator if self.training else "validation")
        return forward(self, s1, s2, mask_ratio, generator)

    monkeypatch.setattr(CROMA, "forward", spy)
    pretrain.pretrain(pretrain_config(archive["root"], tmp_path / "p", epochs=1, batch_size=16))
    assert generators[:2] == [None, None] and set(generators[2:]) == {"validation"}


# --------------------------------------------------------------------------- 11: gradient accumulation


def test_accumulation_keeps_the_global_batch_and_the_schedule(archive, tmp_path):
    losses = {"whole": [], "split": []}
    whole = loop.train(
        config(archive["root"], tmp_path / "whole", **PLAIN), on_step=lambda s, v: losses["whole"].append(v)
    )
    split = loop.train(
        config(archive["root"], tmp_path / "split", accumulate=4, **PLAIN),
        on_step=lambda s, v: losses["split"].append(v),
    )
    assert split["steps"] == whole["steps"] == 3  # optimiser steps: micro-batches of 4, 4, 4, 4 | ... | 4, 4
    assert losses["split"] == pytest.approx(losses["whole"], rel=1e-5)  # each step's loss: the mean over its batch
    for key, value in _weights(tmp_path / "whole").items():
        # 1e-4: the key part of an attention bias has no true gradient; AdamW turns its rounding noise into steps
        torch.testing.assert_close(_weights(tmp_path / "split")[key], value, rtol=1e-4, atol=1e-4, msg=key)
    assert split["epochs"][0]["lr"] == whole["epochs"][0]["lr"]
    assert split["epochs"][0]["train_loss"] == pytest.approx(whole["epochs"][0]["train_loss"], rel=1e-5)
    assert json.loads((tmp_path / "split" / "config.json").read_text())["total_steps"] == 3
    with pytest.raises(TrainingError, match=r"^--batch-size 16 gives 16 samples per process, which --accumulate 3"):
        loop.train(config(archive["root"], tmp_path / "bad", accumulate=3))


def test_a_run_interrupted_mid_accumulation_resumes_exactly(archive, tmp_path, monkeypatch):
    straight = loop.train(config(archive["root"], tmp_path / "straight", accumulate=2))
    calls = []
    forward = loop.Supervised.forward

    def crash_on_fourth(self, net, inputs, generator):
        calls.append(1)
        if len(calls) == 4:  # step 2's second micro-batch: its first one's gradients are accumulated, unsaved
            raise KeyboardInterrupt("interrupted between two micro-batches of one optimiser step")
        return forward(self, net, inputs, generator)

    monkeypatch.setattr(loop.Supervised, "forward", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        loop.train(config(archive["root"], tmp_path / "pieces", accumulate=2, checkpoint_every=1))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "pieces" / "checkpoints" / "last.pt")["position"]["step"] == 1
    resumed = loop.train(config(archive["root"], tmp_path / "pieces"), resume=True)
    assert resumed["steps"] == straight["steps"] == 6
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "pieces")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["train_loss"] for e in resumed["epochs"]] == [e["train_loss"] for e in straight["epochs"]]


def test_out_of_memory_suggests_accumulation_keeping_the_global_batch():
    cpu = torch.device("cpu")
    assert str(devices.oom_error(8, 16, cpu, "fp32", accumulate=1)) == (
        "a batch of 8 samples does not fit in memory on cpu: add --accumulate 2 (micro-batches of 4; the global "
        "batch stays 16), or lower --batch-size"
    )
    assert "--accumulate 4" in str(devices.oom_error(4, 16, cpu, "fp32", accumulate=2))
    assert str(devices.oom_error(3, 3, cpu, "fp32", accumulate=1)).endswith(
        "lower --batch-size (now 3), e.g. --batch-size 1"
    )
    assert str(devices.oom_error(8, 16, cpu, "fp32")).endswith("e.g. --batch-size 8")  # no accumulation (pretraining)


# --------------------------------------------------------------------------- 3 and 11 under DDP (2 gloo processes)


def _train_args(archive, out, *extra, model="resnet_micro") -> list:
    return [
        "--archive", archive["root"], "--bands", "S1", "--model", model, "--epochs", "1",
        "--batch-size", "16", "--workers", "0", "--device", "cpu", "--out", out, "--no-test", "-q", *extra,
    ]  # fmt: skip


def _torchrun(mode: str, record: Path, *train_args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(REPO / "tests" / "ddp_faults.py"), mode, str(record), "--", "train", *map(str, train_args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def test_ddp_accumulates_without_all_reduce_and_resumes_each_process_own_figures(archive, tmp_path):
    plain = ["--lr", "1e-2", "--dropout", "0", "--drop-path", "0", "--no-flips", "--accumulate", "2"]
    args = partial(_train_args, archive, model="vit_micro_patch15")
    straight = _torchrun("accumulate", tmp_path / "r1", *args(tmp_path / "straight"), *plain)
    assert straight.returncode == 0, straight.stderr[-3000:]
    counts = [json.loads((tmp_path / "r1" / f"rank{r}.json").read_text())["no_sync"] for r in (0, 1)]
    assert counts == [2, 2]  # steps of 2, 2 and 1 micro-batches per process: the first of the two-micro steps
    first = _torchrun("accumulate", tmp_path / "r2", *args(tmp_path / "pieces"), *plain, "--max-steps", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    state = load_checkpoint(tmp_path / "pieces" / "checkpoints" / "last.pt")
    assert len(state["accumulators"]) == 2 and state["accumulators"][0] != state["accumulators"][1]
    resumed = _torchrun("accumulate", tmp_path / "r3", "--out", tmp_path / "pieces", "--resume", "--device", "cpu",
                        "--workers", "0", "-q")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("straight", "pieces"))
    assert b["epochs"][0]["train_loss"] == a["epochs"][0]["train_loss"]  # rank 0's sums on rank 1 gave another
    assert b["epochs"][0]["train_samples"] == a["epochs"][0]["train_samples"] == 40
    assert all(torch.equal(v, _weights(tmp_path / "pieces")[k]) for k, v in _weights(tmp_path / "straight").items())
    single = loop.train(config(archive["root"], tmp_path / "single", **PLAIN))  # one process, batch 16, no accumulation
    for key, value in _weights(tmp_path / "single").items():  # rounding differs (DDP averages two halves)
        torch.testing.assert_close(_weights(tmp_path / "straight")[key], value, rtol=1e-4, atol=1e-4)
    assert a["epochs"][0]["train_loss"] == pytest.approx(single["epochs"][0]["train_loss"], rel=1e-5)
