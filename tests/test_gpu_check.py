"""``benchmarks/gpu_check.py --device cpu --quick``: the one-command GPU check keeps working without a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_quick_on_cpu_measures_every_part(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert report["quick"] is True and report["machine"]["device"] == "cpu"
    assert parts["archive"]["patches"] == 96 and parts["archive"]["train"] == 64
    assert set(parts) == {"archive", "train_bf16_eager", "train_fp32_eager", "loader", "evaluation", "pretrain", "ddp"}
    for name in ("train_bf16_eager", "train_fp32_eager"):
        assert "error" not in parts[name], parts[name]
        assert parts[name]["samples_per_s"] > 0 and 0.0 <= parts[name]["data_wait_fraction"] <= 1.0
        assert parts[name]["peak_gpu_memory_gib"] is None  # no GPU
    assert (
        parts["loader"]["headroom"] == parts["loader"]["loader_batches_per_s"] / parts["loader"]["model_batches_per_s"]
    )
    evaluation = parts["evaluation"]
    assert evaluation["samples"] == 32
    for precision in ("fp32", "bf16", "bf16_head"):
        assert 0.0 < evaluation[precision]["average_precision_macro"] <= 1.0
        assert 1 <= evaluation[precision]["distinct_logits_per_class"] <= 32
    if importlib.util.find_spec("reben_tools.learn.training.pretrain") is None:
        assert parts["pretrain"]["skipped"].startswith("reben_tools.learn has no pretrain module")
    else:
        assert parts["pretrain"]["samples_per_s"] > 0
    assert parts["ddp"]["skipped"] == "no GPU(s): DDP scaling needs more than one"
    assert "| bf16_eager |" in proc.stdout and "loader headroom:" in proc.stdout
    for name, part in parts.items():  # every figure says what it measures
        assert "measures" in part or "skipped" in part or name == "archive", name
    assert "measures" in parts["pretrain"] and report["total_s"] < report["budget_s"] == 450


def test_gpu_check_kills_a_part_at_its_deadline(tmp_path):
    """Each part runs in its own process with a hard deadline: with a 1 s limit every part is killed, and the
    check still writes its report and ends."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(
        [*cmd, "--quick", "--part-limit-s", "1"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["error"] == "killed at its deadline of 1 s"
    assert set(report["parts"]) == {
        "archive",
        "train_bf16_eager",
        "train_fp32_eager",
        "loader",
        "evaluation",
        "pretrain",
        "ddp",
    }
    assert {p["error"] for p in report["parts"].values()} == {"killed at its deadline of 1 s"}
    assert all(p["part_s"] < 10 for p in report["parts"].values())


@pytest.mark.slow
def test_gpu_check_comparisons_quick_on_cpu(tmp_path):
    """The issue-20 comparison suite, tiny budgets on a learnable archive: every part reports verdicts."""
    out = tmp_path / "cmp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--suite", "comparisons", "--out", str(out),
         "--device", "cpu", "--quick"],
        capture_output=True, text=True, timeout=2400, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = json.loads(out.read_text())["parts"]
    assert set(parts) == {"region", "protocol", "croma", "dofa", "cutmix"}
    for name in ("protocol", "croma", "dofa", "cutmix"):
        assert "error" not in parts[name], parts[name]
    assert parts["protocol"]["verdicts"]["positive: fractions vs random"] == "beats"
    assert parts["protocol"]["verdicts"]["negative: identical feature sets"] == "within noise (±0.000)"
    assert set(parts["croma"]["linear_probe_verdicts"]) >= {"joint", "s1_pre", "pre_concat"}
    assert set(parts["cutmix"]["verdicts"]) == {
        f"{a} vs {b}, average_precision_{m}"
        for a, b in (("cutmix-lp", "none"), ("cutmix-lp", "cutmix"), ("cutmix", "none"))
        for m in ("macro", "micro")
    }
    for name in ("protocol", "croma", "dofa", "cutmix"):
        assert (tmp_path / f"cmp_{name}.json").is_file()
    assert "| protocol | verdicts: positive: fractions vs random | beats |" in proc.stdout
