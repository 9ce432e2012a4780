"""Every GPU measurement of the training paths in one run, for the few minutes a device is lent.

    python benchmarks/gpu_check.py --out gpu.json [--device cuda|cpu] [--quick] [--budget-s 450]
    python benchmarks/gpu_check.py --suite comparisons --out cmp.json   # issue 20's comparisons, at GPU budgets

Generates its own archive (4,608 patches; 96 with ``--quick``), then measures what ``reben train``
and ``reben pretrain`` do, with their defaults (no process-wide ``cudnn.benchmark``: the loop does
not set it, so neither does this check), writing ``--out`` after every part so a run cut short
keeps what it measured. Every part runs in its own process, killed at its deadline
(``subprocess`` timeout: the smaller of the part's limit and the budget left), which also gives
every part, the DDP runs included, a GPU with no memory held by an earlier part. Each part's
figures carry ``measures``, a sentence saying exactly what they are:

1. ``train_<precision>_<eager|compile>``: ResNet-50 on S1_10m_20m (12 bands) at global batch 512
   through the real loop (``learn.training.loop.train``, one process, plain BatchNorm): samples/s
   and data-wait share of the steady-state epochs (the first epoch, with compilation and worker
   start-up, is left out), peak GPU memory, wall time.
2. ``loader``: the native loader's headroom: batches/s it delivers onto the device (read,
   decode, copy, upsample, normalise; no model) divided by the batches/s the model consumes on a
   resident batch (the training step alone, same precision).
3. ``evaluation``: validation average precision of one checkpoint with fp32 and bf16 encoders
   (the head is fp32 in both), and distinct logits per class with the head in bf16 as well.
4. ``pretrain``: ``croma_base`` pretraining samples/s at batch 256, from the run's second epoch
   (its own epoch figures: no per-step synchronisation added by the check).
5. ``ddp``: with more than one GPU, the bf16 run under torchrun on every GPU, twice: with
   SyncBatchNorm (the default) and with ``--no-sync-batchnorm``. Scaling efficiency = samples/s on
   N GPUs / (N x the single-GPU samples/s); the single-GPU run has plain BatchNorm, so the
   like-for-like figure is the per-process one, and ``syncbn_cost`` = 1 - SyncBN / per-process.

``--device cpu --quick`` runs the same parts with ``resnet_micro`` at batch 16, without
``--compile``, well within its deadline (the tests run it). The budget: under 8 minutes on one
GPU; the parts run cheapest first (the compiled runs, minutes of compilation, come last but
one); a part that would start with less than 10 s of the budget left is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
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
        "measures": f"reben train of {spec['model']} on {spec['bands']}, one process, global batch {spec['batch']}, "
        f"{precision}{', --compile' if compiled else ''}: samples/s and data-wait share of epochs 2-{spec['epochs']}",
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
        if i == 2:  # two warm-up steps (allocator; no cuDNN autotuning, as in reben train)
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
                preprocess(batch)  # the host-to-device work being timed; the result is not needed
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
        "measures": "batches/s the training loader delivers onto the device (read, decode, copy, upsample, "
        "normalise) over batches/s of the training step alone on a resident batch",
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
    out: dict = {
        "measures": "validation macro/micro AP of the first run's last checkpoint with an fp32 and a bf16 encoder "
        "(fp32 head), and with the head in bf16 too; distinct logits per class",
        "checkpoint": str(checkpoint),
    }
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
    from reben_tools.learn.training.pretrain import PretrainConfig, pretrain

    reset_peak(device)
    out = work / "pretrain"
    shutil.rmtree(out, ignore_errors=True)
    summary = pretrain(
        PretrainConfig(
            archive=str(archive),
            model=spec["pretrain_model"],
            out=str(out),
            epochs=2,
            batch_size=spec["pretrain_batch"],
            device=str(device),
            progress=False,
        )
    )
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    return {
        "measures": f"reben pretrain of {spec['pretrain_model']} at batch {spec['pretrain_batch']} on one device: "
        "samples/s of its second epoch (the first holds start-up), from the run's own figures",
        "model": spec["pretrain_model"],
        "batch_size": spec["pretrain_batch"],
        "steps": summary["steps"],
        "samples_per_s": epochs[-1]["train_samples_per_s"],
        "data_wait_fraction": epochs[-1]["data_wait_fraction"],
        "peak_gpu_memory_gib": peak_memory_gib(device),
    }


def _ddp_run(spec, archive: Path, out: Path, gpus: int, sync_batchnorm: bool, timeout: float) -> float:
    """samples/s of the steady-state epochs of ``reben train`` under torchrun on ``gpus`` GPUs."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus)]
    cmd += ["-m", "reben_tools.cli", "train", "--archive", str(archive), "--bands", spec["bands"]]
    cmd += ["--model", spec["model"], "--epochs", str(spec["epochs"]), "--patience", str(spec["epochs"])]
    cmd += ["--batch-size", str(spec["batch"]), "--device", "cuda", "--precision", "bf16", "--out", str(out)]
    cmd += ["--no-test", "-q"] + ([] if sync_batchnorm else ["--no-sync-batchnorm"])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    epochs = json.loads((out / "metrics.json").read_text())["epochs"][1:]
    return sum(e["train_samples"] for e in epochs) / sum(e["train_samples"] / e["train_samples_per_s"] for e in epochs)


def part_ddp(spec, archive: Path, work: Path, device: torch.device, single: dict | None, timeout: float) -> dict:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2:
        return {"skipped": f"{gpus or 'no'} GPU(s): DDP scaling needs more than one"}
    if single is None:
        return {"skipped": "no single-GPU bf16 figure to compare with"}
    t0 = time.perf_counter()
    per_process = _ddp_run(spec, archive, work / "ddp-bn", gpus, False, timeout / 2)
    synced = _ddp_run(spec, archive, work / "ddp-syncbn", gpus, True, timeout - (time.perf_counter() - t0))
    return {
        "measures": f"reben train under torchrun on {gpus} GPUs, bf16, batch {spec['batch']} global: samples/s of the "
        "steady-state epochs with --no-sync-batchnorm and with SyncBatchNorm (the default), against the "
        "one-GPU run (plain BatchNorm)",
        "gpus": gpus,
        "samples_per_s_per_process_bn": per_process,
        "samples_per_s_syncbn": synced,
        "single_gpu_samples_per_s": single["samples_per_s"],
        "scaling_efficiency": per_process / (gpus * single["samples_per_s"]),
        "scaling_efficiency_syncbn": synced / (gpus * single["samples_per_s"]),
        "syncbn_cost": 1 - synced / per_process,
    }


# --------------------------------------------------------------------------- driver

PART_LIMIT_S = {"machine": 60, "archive": 120, "loader": 90, "evaluation": 90, "pretrain": 150, "ddp": 300}
"""Each part's own deadline (seconds); training runs get 150 eager, 300 compiled. The budget left caps each."""


def run_part(name: str, args, spec) -> dict:
    """One part in this process (the child side of :func:`main`)."""
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    archive, work = args.work / "archive", args.work
    if name == "machine":
        return machine(device)
    if name == "archive":
        return _archive(archive, spec)
    if name.startswith("train_"):
        _, precision, mode = name.split("_")
        return part_train(spec, archive, work, device, precision, mode == "compile")
    first = work / f"run-{spec['precisions'][0]}-eager"
    if name == "loader":
        return part_loader(spec, archive, device, spec["precisions"][0])
    if name == "evaluation":
        return part_evaluation(spec, archive, first / "checkpoints" / "last.pt", device)
    if name == "pretrain":
        return part_pretrain(spec, archive, work, device)
    if name == "ddp":
        single = json.loads(args.single) if args.single else None
        return part_ddp(spec, archive, work, device, single, args.timeout)
    raise ValueError(f"unknown part {name!r}")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if "--suite" in argv and argv[argv.index("--suite") + 1 :][:1] == ["comparisons"]:
        from gpu_comparisons import main as comparisons_main  # the issue-20 comparisons, in their own script

        return comparisons_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file for the figures")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small model, batch and archive (about a minute on a CPU)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="hard deadline of the whole check")
    parser.add_argument("--part-limit-s", type=float, help="one deadline for every part (default: each part's own)")
    parser.add_argument("--work", type=Path, help="keep the archive and runs here (default: a temporary directory)")
    parser.add_argument(
        "--suite",
        choices=("training", "comparisons"),
        default="training",
        help="training: these parts; comparisons: issue 20's comparisons (benchmarks/gpu_comparisons.py)",
    )
    parser.add_argument("--part", help=argparse.SUPPRESS)  # child: run this part, write --out
    parser.add_argument("--single", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else FULL
    if args.part:
        args.out.write_text(json.dumps(run_part(args.part, args, spec)))
        return {}
    if args.out is None:
        parser.error("--out is required")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU; use --device cpu")
    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    report: dict = {
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "budget_s": args.budget_s,
        "settings": {k: v for k, v in spec.items() if k != "model_kwargs"},
        "parts": {},
    }

    def save() -> None:
        report["total_s"] = time.perf_counter() - start
        args.out.write_text(json.dumps(report, indent=2))

    def run(name: str, extra: list[str] | None = None) -> dict:
        left = args.budget_s - (time.perf_counter() - start)
        limit = args.part_limit_s or PART_LIMIT_S.get(name, 300 if name.endswith("compile") else 150)
        timeout = min(limit, left)
        result_file = work / f"part-{name}.json"
        result_file.unlink(missing_ok=True)
        t0 = time.perf_counter()
        if left < 10:
            result = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--out", str(result_file)]
            cmd += ["--device", args.device, "--work", str(work), "--timeout", str(timeout), *(extra or [])]
            cmd += ["--quick"] if args.quick else []
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
                if proc.returncode or not result_file.is_file():
                    result = {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"], "log": proc.stderr[-3000:]}
                    result["error"] = result["error"][0]
                else:
                    result = json.loads(result_file.read_text())
            except subprocess.TimeoutExpired:  # the child is killed: its GPU memory is released with it
                result = {"error": f"killed at its deadline of {timeout:.0f} s"}
            result["part_s"] = time.perf_counter() - t0
        report["parts"][name] = result
        save()
        print(f"[{time.perf_counter() - start:6.1f} s] {name}: {json.dumps(result)[:300]}", flush=True)
        return result

    try:
        report["machine"] = run("machine")
        report["parts"].pop("machine")
        if not (work / "archive" / "manifest.json").is_file():
            run("archive")
        runs = {}
        # cheapest first: compilation takes minutes, so it comes after the parts it could crowd out
        for precision in spec["precisions"]:
            runs[precision] = run(f"train_{precision}_eager")
        run("loader")
        run("evaluation")
        run("pretrain")
        if True in spec["compile"]:
            for precision in spec["precisions"]:
                run(f"train_{precision}_compile")
        first = runs.get(spec["precisions"][0], {})
        run("ddp", ["--single", json.dumps(first)] if "samples_per_s" in first else [])
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


def markdown(report: dict) -> str:
    """The figures as Markdown rows for BENCHMARKS.md."""
    lines = [
        f"machine: {report['machine'].get('gpu', report['machine'].get('device'))}, torch {torch.__version__}",
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
    lines.append(f"total {report['total_s']:.0f} s (budget {report['budget_s']:.0f} s)")
    lines += ["", "what each figure measures:"]
    lines += [f"- {name}: {part['measures']}" for name, part in report["parts"].items() if "measures" in part]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
