"""GPU comparison suite of issue 20: ``python benchmarks/gpu_check.py --suite comparisons`` runs this.

The GPU versions of the comparisons BENCHMARKS.md reports
with the protocol of ``reben_tools.learn.evaluation.compare`` (issue 20), at budgets the CPU
could not afford, each part a subprocess of its benchmark script with the time that is left:

6. ``region``: the benchmark region (``reben demo --patches 3200``: 8 tiles, all 19 classes in
   every split), or ``--archive`` to reuse one;
7. ``protocol``: the positive and negative controls (``bench_protocol.py``);
8. ``croma``: ``bench_pretrain.py``, croma_micro at batch 256 for 2,000 steps (bf16), 3 seeds,
   snapshots for the decisive experiment; pretrained vs random init, linear probe and retrieval;
9. ``dofa``: ``bench_dofa.py --stages protocol``, dofa_micro fine-tuned 20 epochs, 3 seeds:
   fine-tuned vs random init, band robustness;
10. ``cutmix``: ``bench_cutmix.py --parts accuracy``, ResNet-18, 20 epochs, 3 seeds:
    CutMix-LP vs CutMix vs none.

Each writes its own JSON next to ``--out`` and the verdicts go into ``--out``. ``--suite
comparisons --device cpu --quick`` runs all of it in minutes on a learnable test archive (96
patches) with tiny budgets, so the script keeps working without a GPU. Budget: ``--budget-s``
(default 540 s for this suite); a part that would start later is skipped with a note.

Unlike the training suite, cuDNN autotuning stays off, as in ``reben train``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
from gpu_check import _archive, machine  # noqa: E402

COMPARISONS_FULL = dict(
    region_patches=3200,
    seeds=[0, 1, 2],
    repeats=10,
    croma=dict(model="croma_micro", batch=256, lr=1e-3, warmup=100, snapshots=[400, 800, 1200, 2000]),
    dofa=dict(epochs=20),
    cutmix=dict(model="resnet18", epochs=20, batch=64, lr=1e-3),
)
COMPARISONS_QUICK = dict(
    region_patches=None,  # a learnable test archive instead (96 patches)
    seeds=[0, 1],
    repeats=3,
    croma=dict(model="croma_micro", batch=16, lr=1e-3, warmup=2, snapshots=[2, 4]),
    dofa=dict(epochs=1),
    cutmix=dict(model="resnet_micro", epochs=1, batch=16, lr=1e-3),
)


def _script(name: str, args: list[str], timeout: float, device: torch.device) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if device.type == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=max(timeout, 1.0),
    )
    if proc.returncode:
        raise RuntimeError(f"{name} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"stdout_tail": proc.stdout[-1500:]}


def _train_count(archive: Path) -> int:
    import pyarrow.parquet as pq

    return sum(
        1 for s in pq.read_table(archive / "metadata.parquet", columns=["split"]).column(0).to_pylist() if s == "train"
    )


def comparisons(args, spec: dict, device: torch.device, report: dict, run, work: Path) -> None:
    """The comparison parts (module docstring, 6-10); ``run(name, fn)`` records each."""
    out_dir = args.out.parent
    stem = args.out.stem
    dev = device.type
    seeds = [str(s) for s in spec["seeds"]]
    archive = args.archive
    if archive is None:
        archive = work / ("region" if spec["region_patches"] else "archive") / "archive"
        if spec["region_patches"]:
            if not (archive / "manifest.json").is_file():
                cmd = ["-m", "reben_tools.cli", "demo", "--out", str(archive.parent), "--patches"]
                cmd += [str(spec["region_patches"]), "--workers", str(max(1, min(8, (os.cpu_count() or 2) - 2))), "-q"]

                def region() -> dict:
                    t0 = time.perf_counter()
                    env = {**os.environ, "PYTHONPATH": str(REPO)}
                    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=REPO, env=env)
                    if proc.returncode:
                        raise RuntimeError(proc.stdout[-1500:] + proc.stderr[-1500:])
                    return {"patches": spec["region_patches"], "seconds": time.perf_counter() - t0}

                run("region", region)
        elif not (archive / "manifest.json").is_file():
            run("region", lambda: _archive(archive, {"counts": {"train": 48, "validation": 24, "test": 24}}))
    left = lambda: args.budget_s - (time.perf_counter() - report["_start"])  # noqa: E731
    files = {k: out_dir / f"{stem}_{k}.json" for k in ("protocol", "croma", "dofa", "cutmix")}

    def protocol() -> dict:
        result = _script("bench_protocol.py", ["--archive", str(archive), "--repeats", str(spec["repeats"]),
                                               "--out", str(files["protocol"])], left(), device)  # fmt: skip
        data = json.loads(files["protocol"].read_text())
        return {**result, "verdicts": {k: v["verdict"] for k, v in data["comparisons"].items()}}

    def croma() -> dict:
        c = spec["croma"]
        steps_per_epoch = max(1, _train_count(archive) // c["batch"])
        epochs = -(-c["snapshots"][-1] // steps_per_epoch)
        result = _script(
            "bench_pretrain.py",
            ["--archive", str(archive), "--work", str(work / "croma"), "--seeds", *seeds, "--model", c["model"],
             "--snapshots", *map(str, c["snapshots"]), "--trajectory-seeds", seeds[0], "--epochs", str(epochs),
             "--batch-size", str(c["batch"]), "--lr", str(c["lr"]), "--warmup-steps", str(c["warmup"]),
             "--repeats", str(spec["repeats"]), "--device", dev, "--out", str(files["croma"])],
            left(),
            device,
        )  # fmt: skip
        data = json.loads(files["croma"].read_text())
        last = str(c["snapshots"][-1])
        return {
            **result,
            "linear_probe_verdicts": {k: v["verdict"] for k, v in data["linear_probe"]["pretrained_vs_random"].items()},
            "retrieval_verdicts": {k: v["verdict"] for k, v in data["retrieval"]["comparisons"].items() if last in k},
        }

    def dofa() -> dict:
        result = _script(
            "bench_dofa.py",
            ["--archive", str(archive), "--work", str(work / "dofa"), "--stages", "protocol", "--epochs",
             str(spec["dofa"]["epochs"]), "--seeds", *seeds, "--repeats", str(spec["repeats"]), "--device", dev,
             "--json", str(files["dofa"])],
            left(),
            device,
        )  # fmt: skip
        data = json.loads(files["dofa"].read_text())["protocol"]
        return {
            **result,
            "fine_tuned_vs_random": {k: v["verdict"] for k, v in data["fine_tuned_vs_random"].items()},
            "band_robustness_fine_tuned": {k: v["verdict"] for k, v in data["band_robustness"]["fine_tuned"].items()},
        }

    def cutmix() -> dict:
        c = spec["cutmix"]
        result = _script(
            "bench_cutmix.py",
            ["--archive", str(archive), "--out", str(work / "cutmix"), "--parts", "accuracy", "--model", c["model"],
             "--epochs", str(c["epochs"]), "--batch-size", str(c["batch"]), "--lr", str(c["lr"]), "--seeds", *seeds,
             "--device", dev],
            left(),
            device,
        )  # fmt: skip
        shutil.copy(work / "cutmix" / "results.json", files["cutmix"])
        data = json.loads(files["cutmix"].read_text())["accuracy"]
        return {**result, "verdicts": {k: v["verdict"] for k, v in data["comparisons"].items()}}

    for name, fn in (("protocol", protocol), ("croma", croma), ("dofa", dofa), ("cutmix", cutmix)):
        run(name, fn)


def comparison_markdown(report: dict) -> str:
    """The comparison suite's verdicts as Markdown rows."""
    lines = [
        f"machine: {report['machine'].get('gpu', report['machine']['device'])}, torch {report['machine']['torch']}",
        "",
        "| part | comparison | verdict |",
        "|---|---|---|",
    ]
    for name, part in report["parts"].items():
        for key, value in part.items():
            if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()) and value:
                for comparison, verdict in value.items():
                    lines.append(f"| {name} | {key}: {comparison} | {verdict} |")
            elif key in ("error", "skipped"):
                lines.append(f"| {name} | - | {key}: {str(value)[:200]} |")
    lines.append(f"total {report['total_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the verdicts")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny budgets on a 96-patch learnable archive")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="start no part after this many s (540; 1800 --quick)"
    )
    parser.add_argument("--suite", choices=("comparisons",), default="comparisons", help=argparse.SUPPRESS)
    parser.add_argument("--archive", type=Path, help="an archive to use instead of generating the region")
    parser.add_argument("--work", type=Path, help="keep the archive and runs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU; use --device cpu")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.budget_s is None:  # the CPU quick run waits on shared cores: no real budget
        args.budget_s = 1800.0 if args.quick else 540.0
    spec = COMPARISONS_QUICK if args.quick else COMPARISONS_FULL
    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-comparisons-"))
    report: dict = {
        "command": " ".join(["python", "benchmarks/gpu_check.py", "--suite", "comparisons", *(argv or [])]),
        "machine": machine(device),
        "quick": args.quick,
        "suite": "comparisons",
        "settings": spec,
        "parts": {},
        "_start": start,
    }

    def save() -> None:
        report["total_s"] = time.perf_counter() - start
        args.out.write_text(json.dumps({k: v for k, v in report.items() if k != "_start"}, indent=2))

    def run(name: str, fn) -> object:
        if time.perf_counter() - start > args.budget_s:
            report["parts"][name] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
        else:
            t0 = time.perf_counter()
            try:
                report["parts"][name] = fn()
            except Exception as exc:  # one failing part must not lose the others' figures
                report["parts"][name] = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-3000:],
                }
            if isinstance(report["parts"][name], dict):
                report["parts"][name]["part_s"] = time.perf_counter() - t0
        save()
        print(f"[{time.perf_counter() - start:6.1f} s] {name}: {json.dumps(report['parts'][name])[:300]}", flush=True)
        return report["parts"][name]

    try:
        comparisons(args, spec, device, report, run, work)
    finally:
        save()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(comparison_markdown(report))
    return report


if __name__ == "__main__":
    main()
