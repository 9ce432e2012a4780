"""DOFA at 120 px: ``interpolate`` (7x7 grid) against ``resize`` (to 224, 14x14 grid), the two
input modes of ``DOFAEncoder``, to support which one is the default for which weights.

Stages (``--stages``):

  coverage  the share of a 120x120 input's pixels that the patch tokens do not depend on at all
            (zero gradient of every token with respect to that pixel), per mode, measured through
            the model itself with autograd;
  speed     samples/s per mode in one process, dofa_micro and dofa_base (random weights; speed does
            not depend on the values): the forward pass (no grad) and, for dofa_micro, a training
            step (forward + backward); the ratio interpolate / resize;
  finetune  ``reben train --model dofa_micro --bands ALL`` from random initialisation in each mode
            and for each ``--seeds`` seed on ``--archive``: test AP macro / micro and wall time,
            and the per-seed paired difference resize - interpolate.

Usage::

    reben demo --out /tmp/dofa-demo
    python benchmarks/bench_dofa_input.py --archive /tmp/dofa-demo/archive --work /tmp/dofa-input
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reben_tools.learn.models.dofa import DOFAEncoder

MODES = ("interpolate", "resize")


def stage_coverage(side: int = 120, bands: int = 3) -> dict:
    """Fraction of input pixels with zero gradient from every token, per mode (dofa_micro, random weights)."""
    out = {}
    waves = torch.tensor([0.49, 0.56, 0.665])[:bands]
    for mode in MODES:
        torch.manual_seed(0)
        model = DOFAEncoder("dofa_micro", input_mode=mode).eval()
        x = torch.randn(1, bands, side, side, requires_grad=True)
        tokens = model.forward_tokens(x, waves)[:, 1:]
        weights = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1))
        (tokens * weights).sum().backward()
        seen = x.grad.abs().sum(dim=(0, 1)) > 0
        rows = seen.any(dim=1).nonzero().flatten()
        cols = seen.any(dim=0).nonzero().flatten()
        out[mode] = {
            "grid": int(tokens.shape[1] ** 0.5),
            "unseen_fraction": round(1.0 - seen.float().mean().item(), 4),
            "rows_seen": [int(rows.min()), int(rows.max())],
            "cols_seen": [int(cols.min()), int(cols.max())],
        }
        print("coverage", mode, out[mode], flush=True)
    return out


def _rate(fn, batch: int, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return batch * repeats / (time.perf_counter() - t0)


def stage_speed(batch: int, repeats: int) -> dict:
    out: dict = {}
    waves = torch.rand(14) + 0.4
    x = torch.randn(batch, 14, 120, 120)
    for name in ("dofa_micro", "dofa_base_patch16"):
        out[name] = {}
        for mode in MODES:
            model = DOFAEncoder(name, input_mode=mode)
            model.eval()
            with torch.no_grad():
                forward = _rate(lambda m=model: m(x, waves), batch, repeats)
            row = {"forward_samples_per_s": round(forward, 2)}
            if name == "dofa_micro":
                model.train()
                opt = torch.optim.SGD(model.parameters(), lr=1e-4)

                def step(m=model, o=opt) -> None:
                    o.zero_grad()
                    m(x, waves).square().mean().backward()
                    o.step()

                row["train_step_samples_per_s"] = round(_rate(step, batch, repeats), 2)
            out[name][mode] = row
            print("speed", name, mode, row, flush=True)
        for key in out[name]["interpolate"]:
            out[name][f"{key}_ratio_interpolate_over_resize"] = round(
                out[name]["interpolate"][key] / out[name]["resize"][key], 2
            )
    return out


def stage_finetune(archive: Path, work: Path, epochs: int, seeds: list[int]) -> dict:
    from reben_tools.learn.runtime.config import TrainConfig
    from reben_tools.learn.training.loop import train

    runs: dict = {}
    for seed in seeds:
        for mode in MODES:
            out = work / f"micro_{mode}_seed{seed}"
            if not (out / "metrics.json").exists() or json.loads((out / "metrics.json").read_text()).get(
                "status"
            ) not in ("finished", "early_stopped"):
                t0 = time.perf_counter()
                train(
                    TrainConfig(
                        archive=str(archive),
                        bands="ALL",
                        model="dofa_micro",
                        out=str(out),
                        epochs=epochs,
                        batch_size=32,
                        lr=1e-3,
                        patience=epochs,
                        seed=seed,
                        workers=0,
                        device="cpu",
                        progress=False,
                        model_kwargs={"input_mode": mode},
                    )
                )
                (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
            test = json.loads((out / "metrics.json").read_text()).get("test", {})
            runs[f"{mode}_seed{seed}"] = {
                "test_ap_macro": test.get("average_precision_macro"),
                "test_ap_micro": test.get("average_precision_micro"),
                "wall_seconds": float((out / "wall_seconds.txt").read_text()),
            }
            print("finetune", mode, seed, runs[f"{mode}_seed{seed}"], flush=True)
    summary: dict = {"epochs": epochs, "seeds": seeds, "runs": runs}
    for key in ("test_ap_macro", "test_ap_micro", "wall_seconds"):
        paired = [runs[f"resize_seed{s}"][key] - runs[f"interpolate_seed{s}"][key] for s in seeds]
        summary[f"paired_{key}_resize_minus_interpolate"] = paired_summary(paired)
    return summary


def paired_summary(diffs: list[float]) -> dict:
    """Mean of per-seed paired differences (resize - interpolate), its standard error over seeds, and a
    verdict at two standard errors. The seeds share one test split: its sampling noise is not in it."""
    n = len(diffs)
    mean = sum(diffs) / n
    se = (sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) ** 0.5 if n > 1 else float("nan")
    if n < 2:
        verdict = "one seed: no interval"
    elif mean - 2 * se > 0:
        verdict = "resize higher"
    elif mean + 2 * se < 0:
        verdict = "resize lower"
    else:
        verdict = f"within noise (±{2 * se:.3f})"
    return {"diffs": [round(d, 4) for d in diffs], "mean": round(mean, 4), "se": round(se, 4), "verdict": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dofa-input"))
    parser.add_argument("--stages", nargs="+", default=["coverage", "speed", "finetune"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("dofa_input.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = json.loads(args.json.read_text()) if args.json.exists() else {}
    record["machine"] = {"cpu_threads": args.threads, "torch": torch.__version__, "device": "cpu"}
    if "coverage" in args.stages:
        record["coverage_120px"] = stage_coverage()
    if "speed" in args.stages:
        record["speed_120px"] = stage_speed(args.batch, args.repeats)
    if "finetune" in args.stages:
        if args.archive is None:
            parser.error("--archive is needed for the finetune stage")
        args.work.mkdir(parents=True, exist_ok=True)
        record["finetune_dofa_micro"] = stage_finetune(args.archive, args.work, args.epochs, args.seeds)
    args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
