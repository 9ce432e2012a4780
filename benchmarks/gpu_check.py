"""Every GPU measurement of the training paths in one run, for the few minutes a device is lent.

    python benchmarks/gpu_check.py --out gpu.json [--device cuda|cpu] [--quick]

Generates its own archive (4,608 patches; 96 with ``--quick``), then measures, writing
``--out`` after every part so a run cut short keeps what it measured:

1. ``train``: ResNet-50 on S1_10m_20m (12 bands) at global batch 512 through the real loop
   (``reben_tools.learn.training.loop.train``), bf16 and fp32, ``--compile`` off and on: samples/s and
   data-wait share of the steady-state epochs (the first epoch, with compilation and worker
   start-up, is left out), peak GPU memory, wall time.
2. ``loader``: the native loader's headroom: batches/s it delivers onto the device (read,
   decode, copy, upsample, normalise; no model) divided by the batches/s the model consumes on a
   resident batch (the training step alone, same precision).
3. ``evaluation``: validation average precision of one checkpoint with fp32 and bf16 encoders
   (the head is fp32 in both), and distinct logits per class with the head in bf16 as well (the
   old behaviour), to show what fp32 logits buy.
4. ``pretrain``: ``croma_base`` pretraining samples/s at batch 256, when ``reben_tools.learn``
   has a ``pretrain`` module (otherwise skipped with a note).
5. ``ddp``: with more than one GPU, the bf16 run again under torchrun on every GPU: scaling
   efficiency = samples/s on N GPUs / (N x samples/s on one).

``--device cpu --quick`` runs the same parts with ``resnet_micro`` at batch 16, without
``--compile``, in well under a minute (the tests run it). The budget: under 8 minutes on one
GPU; the parts run cheapest first (the compiled runs, minutes of compilation, come last but
one), and parts that would start after ``--budget-s`` (450 s) are skipped with a note.

``--suite comparisons`` runs instead the GPU versions of the comparisons BENCHMARKS.md reports
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
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from training_archive import build_learnable_archive  # noqa: E402

from reben_tools.format.bands import resolve_bands  # noqa: E402
from reben_tools.learn.data.augment import random_flips  # noqa: E402
from reben_tools.learn.data.loaders import DevicePreprocess, default_workers, make_loader, open_dataset, split_indices  # noqa: E402
from reben_tools.learn.evaluation.metrics import multilabel_metrics  # noqa: E402
from reben_tools.learn.evaluation.predict import predict  # noqa: E402
from reben_tools.learn.models.classifier import build_model  # noqa: E402
from reben_tools.learn.models.restore import model_from_checkpoint  # noqa: E402
from reben_tools.learn.runtime.checkpoints import load_checkpoint  # noqa: E402
from reben_tools.learn.runtime.config import TrainConfig  # noqa: E402
from reben_tools.learn.runtime.devices import autocast  # noqa: E402
from reben_tools.learn.runtime.distributed import EpochSampler  # noqa: E402
from reben_tools.learn.training.loop import train  # noqa: E402

FULL = dict(
    model="resnet50",
    model_kwargs={},
    bands="S1_10m_20m",
    batch=512,
    counts={"train": 4096, "validation": 512},
    epochs=4,
    precisions=("bf16", "fp32"),
    compile=(False, True),
    pretrain_model="croma_base",
    pretrain_batch=256,
    pretrain_steps=12,
    loader_batches=24,
)
QUICK = dict(
    model="resnet_micro",
    model_kwargs=dict(stem_width=8, widths=(8, 16, 16, 32)),
    bands="S1_10m_20m",
    batch=16,
    counts={"train": 64, "validation": 32},
    epochs=2,
    precisions=("bf16", "fp32"),
    compile=(False,),
    pretrain_model="croma_micro",
    pretrain_batch=16,
    pretrain_steps=4,
    loader_batches=4,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def machine(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpus=torch.cuda.device_count(),
            capability=list(torch.cuda.get_device_capability(device)),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


# --------------------------------------------------------------------------- parts


def part_train(spec, archive: Path, work: Path, device: torch.device, precision: str, compiled: bool) -> dict:
    """One run of the real loop; figures from its steady-state epochs (all but the first)."""
    out = work / f"run-{precision}-{'compile' if compiled else 'eager'}"
    shutil.rmtree(out, ignore_errors=True)
    reset_peak(device)
    t0 = time.perf_counter()
    metrics = train(
        TrainConfig(
            archive=str(archive),
            bands=spec["bands"],
            model=spec["model"],
            out=str(out),
            epochs=spec["epochs"],
            batch_size=spec["batch"],
            patience=spec["epochs"],
            model_kwargs=spec["model_kwargs"],
            device=str(device),
            precision=precision,
            compile=compiled,
            evaluate_test=False,
            progress=False,
        )
    )
    wall = time.perf_counter() - t0
    steady = metrics["epochs"][1:] or metrics["epochs"]
    samples = sum(e["train_samples"] for e in steady)
    seconds = sum(e["train_samples"] / e["train_samples_per_s"] for e in steady)
    wait = float(np.average([e["data_wait_fraction"] for e in steady], weights=[e["train_samples"] for e in steady]))
    return {
        "precision": precision,
        "compile": compiled,
        "samples_per_s": samples / seconds,
        "data_wait_fraction": wait,
        "peak_gpu_memory_gib": peak_memory_gib(device),
        "wall_s": wall,
        "first_epoch_samples_per_s": metrics["epochs"][0]["train_samples_per_s"],
        "validation_average_precision_macro": metrics["epochs"][-1]["validation"]["average_precision_macro"],
        "run": str(out),
    }


def resident_step_rate(spec, device: torch.device, precision: str, steps: int) -> float:
    """Batches/s of the training step alone on a batch already on the device (what the model consumes)."""
    torch.manual_seed(0)
    bands = resolve_bands(spec["bands"])
    model = build_model(spec["model"], bands, **spec["model_kwargs"]).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    criterion = torch.nn.BCEWithLogitsLoss()
    images = torch.randn(spec["batch"], len(bands), 120, 120, device=device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    labels = (torch.rand(spec["batch"], 19, device=device) < 0.2).float()
    generator = torch.Generator().manual_seed(0)
    model.train()
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps (allocator, cuDNN autotuning)
            sync(device)
            t0 = time.perf_counter()
        with autocast(device, precision):
            logits = model(random_flips(images, generator))
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return steps / (time.perf_counter() - t0)


def loader_rate(spec, archive: Path, device: torch.device, batches: int) -> tuple[float, int]:
    """Batches/s the native loader delivers onto the device, upsampled and normalised, with the loop's workers."""
    workers = default_workers()
    dataset = open_dataset(archive, resolve_bands(spec["bands"]))
    try:
        sampler = EpochSampler(split_indices(dataset, "train"), shuffle=True, seed=0)
        loader = make_loader(dataset, sampler, spec["batch"], workers, device, 0)
        preprocess = DevicePreprocess(dataset, device)
        done, epoch, t0 = 0, 0, None
        while done < batches + 2:
            sampler.set_epoch(epoch)
            for batch in loader:
                images, _ = preprocess(batch)
                done += 1
                if done == 2:  # workers started, first batches out
                    sync(device)
                    t0 = time.perf_counter()
                if done == batches + 2:
                    break
            epoch += 1
        sync(device)
        return batches / (time.perf_counter() - t0), workers
    finally:
        dataset.archive.close()


def part_loader(spec, archive: Path, device: torch.device, precision: str) -> dict:
    delivered, workers = loader_rate(spec, archive, device, spec["loader_batches"])
    consumed = resident_step_rate(spec, device, precision, max(4, spec["loader_batches"] // 2))
    return {
        "workers": workers,
        "loader_batches_per_s": delivered,
        "model_batches_per_s": consumed,
        "precision": precision,
        "headroom": delivered / consumed,
    }


def part_evaluation(spec, archive: Path, checkpoint: Path, device: torch.device) -> dict:
    state = load_checkpoint(checkpoint)
    model = model_from_checkpoint(state, checkpoint).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    dataset = open_dataset(archive, tuple(state["model_config"]["bands"]))
    out: dict = {"checkpoint": str(checkpoint)}
    try:
        sampler = EpochSampler(split_indices(dataset, "validation"), shuffle=False, pad=False)
        loader = make_loader(dataset, sampler, spec["batch"], 0, device, 0)
        preprocess = DevicePreprocess(dataset, device)
        for precision in ("fp32", "bf16"):
            logits, targets, _ = predict(model, loader, preprocess, precision)
            m = multilabel_metrics(logits, targets)
            out[precision] = {
                "average_precision_macro": m["average_precision_macro"],
                "average_precision_micro": m["average_precision_micro"],
                "distinct_logits_per_class": float(np.mean([len(np.unique(c)) for c in logits.T])),
            }
        # the old behaviour: the head inside bf16 autocast, bf16 logits
        old = []
        model.eval()
        with torch.no_grad():
            for batch in loader:
                images, _ = preprocess(batch)
                with autocast(device, "bf16"):
                    old.append(model(images).float().cpu())
        old_logits = torch.cat(old).numpy()
        m = multilabel_metrics(old_logits, targets)
        out["bf16_head"] = {
            "average_precision_macro": m["average_precision_macro"],
            "average_precision_micro": m["average_precision_micro"],
            "distinct_logits_per_class": float(np.mean([len(np.unique(c)) for c in old_logits.T])),
        }
    finally:
        dataset.archive.close()
    out["samples"] = len(targets)
    out["macro_ap_bf16_minus_fp32"] = out["bf16"]["average_precision_macro"] - out["fp32"]["average_precision_macro"]
    return out


def part_pretrain(spec, archive: Path, work: Path, device: torch.device) -> dict:
    if importlib.util.find_spec("reben_tools.learn.training.pretrain") is None:
        return {"skipped": "reben_tools.learn has no pretrain module yet (CROMA pretraining not merged)"}
    from reben_tools.learn.training.pretrain import PretrainConfig, pretrain

    stamps: list[float] = []

    def on_step(step, figures) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    reset_peak(device)
    out = work / "pretrain"
    shutil.rmtree(out, ignore_errors=True)
    pretrain(
        PretrainConfig(
            archive=str(archive),
            model=spec["pretrain_model"],
            out=str(out),
            epochs=1,
            batch_size=spec["pretrain_batch"],
            device=str(device),
            max_steps=spec["pretrain_steps"],
            progress=False,
        ),
        on_step=on_step,
    )
    steady = stamps[2:]  # the first steps warm up
    rate = (len(steady) - 1) * spec["pretrain_batch"] / (steady[-1] - steady[0]) if len(steady) > 1 else None
    return {
        "model": spec["pretrain_model"],
        "batch_size": spec["pretrain_batch"],
        "steps": len(stamps),
        "samples_per_s": rate,
        "peak_gpu_memory_gib": peak_memory_gib(device),
    }


def part_ddp(spec, archive: Path, work: Path, device: torch.device, single: dict | None) -> dict:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2:
        return {"skipped": f"{gpus or 'no'} GPU(s): DDP scaling needs more than one"}
    if single is None:
        return {"skipped": "no single-GPU bf16 figure to compare with"}
    out = work / "ddp"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(gpus),
        "-m",
        "reben_tools.cli",
        "train",
        "--archive",
        str(archive),
        "--bands",
        spec["bands"],
        "--model",
        spec["model"],
        "--epochs",
        str(spec["epochs"]),
        "--patience",
        str(spec["epochs"]),
        "--batch-size",
        str(spec["batch"]),
        "--device",
        "cuda",
        "--precision",
        "bf16",
        "--out",
        str(out),
        "--no-test",
        "-q",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    epochs = json.loads((out / "metrics.json").read_text())["epochs"][1:]
    rate = sum(e["train_samples"] for e in epochs) / sum(e["train_samples"] / e["train_samples_per_s"] for e in epochs)
    return {
        "gpus": gpus,
        "samples_per_s": rate,
        "single_gpu_samples_per_s": single["samples_per_s"],
        "scaling_efficiency": rate / (gpus * single["samples_per_s"]),
    }


# --------------------------------------------------------------------------- comparisons (issue 20)

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


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small model, batch and archive (about a minute on a CPU)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no part after this many seconds (450; comparisons 540, 1800 with --quick)",
    )
    parser.add_argument(
        "--suite",
        choices=("training", "comparisons"),
        default="training",
        help="training: the training-path figures (parts 1-5); comparisons: the issue-20 comparisons (parts 6-10)",
    )
    parser.add_argument("--archive", type=Path, help="comparisons: an archive to use instead of generating the region")
    parser.add_argument("--work", type=Path, help="keep the archive and runs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU; use --device cpu")
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if args.budget_s is None:  # the CPU quick run of the comparisons waits on shared cores: no real budget
        args.budget_s = (1800.0 if args.quick else 540.0) if args.suite == "comparisons" else 450.0
    if args.suite == "comparisons":
        spec = COMPARISONS_QUICK if args.quick else COMPARISONS_FULL
    else:
        spec = QUICK if args.quick else FULL
    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    report: dict = {
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
        "machine": machine(device),
        "quick": args.quick,
        "suite": args.suite,
        "settings": {k: v for k, v in spec.items() if k != "model_kwargs"},
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

    if args.suite == "comparisons":
        try:
            comparisons(args, spec, device, report, run, work)
        finally:
            save()
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
        print(comparison_markdown(report))
        return report
    try:
        archive = work / "archive"
        if not (archive / "manifest.json").is_file():
            run("archive", lambda: _archive(archive, spec))
        runs = {}

        def train_runs(compiled: bool) -> None:
            for precision in spec["precisions"]:
                key = f"train_{precision}_{'compile' if compiled else 'eager'}"
                runs[key] = run(key, lambda p=precision: part_train(spec, archive, work, device, p, compiled))

        # cheapest first: compilation takes minutes, so it comes after the parts it could crowd out
        train_runs(False)
        first = runs.get(f"train_{spec['precisions'][0]}_eager", {})
        run("loader", lambda: part_loader(spec, archive, device, spec["precisions"][0]))
        checkpoint = Path(first.get("run", work / "missing")) / "checkpoints" / "last.pt"
        run("evaluation", lambda: part_evaluation(spec, archive, checkpoint, device))
        run("pretrain", lambda: part_pretrain(spec, archive, work, device))
        if True in spec["compile"]:
            train_runs(True)
        run("ddp", lambda: part_ddp(spec, archive, work, device, first if "samples_per_s" in first else None))
    finally:
        save()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))
    return report


def _archive(root: Path, spec) -> dict:
    t0 = time.perf_counter()
    build_learnable_archive(root, counts=spec["counts"], shards=4)
    return {"patches": sum(spec["counts"].values()), **spec["counts"], "seconds": time.perf_counter() - t0}


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


def markdown(report: dict) -> str:
    """The figures as Markdown rows for BENCHMARKS.md."""
    lines = [
        f"machine: {report['machine'].get('gpu', report['machine']['device'])}, torch {report['machine']['torch']}",
        "",
        "| run | samples/s | data wait | peak GPU memory (GiB) | wall (s) |",
        "|---|---|---|---|---|",
    ]
    for name, part in report["parts"].items():
        if name.startswith("train_") and "samples_per_s" in part:
            mem = part["peak_gpu_memory_gib"]
            lines.append(
                f"| {name[6:]} | {part['samples_per_s']:.0f} | {100 * part['data_wait_fraction']:.1f}% | "
                f"{'-' if mem is None else f'{mem:.1f}'} | {part['wall_s']:.0f} |"
            )
    loader = report["parts"].get("loader", {})
    if "headroom" in loader:
        lines.append(
            f"\nloader headroom: {loader['loader_batches_per_s']:.2f} batches/s delivered / "
            f"{loader['model_batches_per_s']:.2f} consumed = {loader['headroom']:.2f}x ({loader['workers']} workers)"
        )
    ev = report["parts"].get("evaluation", {})
    if "fp32" in ev:
        lines.append(
            f"evaluation macro AP fp32 {ev['fp32']['average_precision_macro']:.5f}, bf16 encoder "
            f"{ev['bf16']['average_precision_macro']:.5f}, bf16 head {ev['bf16_head']['average_precision_macro']:.5f}; "
            f"distinct logits/class {ev['fp32']['distinct_logits_per_class']:.0f} / "
            f"{ev['bf16']['distinct_logits_per_class']:.0f} / {ev['bf16_head']['distinct_logits_per_class']:.0f}"
            f" of {ev['samples']}"
        )
    for name in ("pretrain", "ddp"):
        part = report["parts"].get(name, {})
        lines.append(f"{name}: " + json.dumps({k: v for k, v in part.items() if k != "traceback"}))
    lines.append(f"total {report['total_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
