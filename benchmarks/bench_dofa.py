"""DOFA on the demo archive: seed-study table, band robustness, 120-interpolated vs resize-224,
and ``reben embed`` throughput of dofa_base on the CPU.

Stages (each cached under ``--work``; rerun skips what exists):

  train   ``reben train --model dofa_micro --bands ALL`` from random initialisation, once with
          position-embedding interpolation at 120x120 (the default) and once resizing to 224;
  embed   ``reben embed`` (``load_encoder`` + ``embed_archive``) of the train and test splits with
          ``dofa_micro:<run>/checkpoints/best.pt`` (fine-tuned by this project) and with the
          same architecture at random initialisation (saved in DOFA's published layout), for the
          band groups S2, S1, RGB and ALL (14 bands);
  probe   linear / MLP / random-forest probes (``reben_tools.learn.evaluation.probes``' estimators) fitted on
          the train embeddings, scored on test with ``multilabel_metrics``: F2 macro and micro,
          Hamming loss, precision macro and micro, AP macro and micro -> ``probe.json``;
  speed   ``reben embed`` of the test split with dofa_base (random weights in the published layout)
          in both input modes, samples/s, against the model's forward pass alone on a resident
          batch in the same process.

Usage::

    reben demo --out /tmp/dofa-demo
    python benchmarks/bench_dofa.py --archive /tmp/dofa-demo/archive --work /tmp/dofa-bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reben_tools.learn.models.dofa import DOFAEncoder
from reben_tools.learn.runtime.config import TrainConfig
from reben_tools.learn.training.loop import train

GROUPS = ("S2", "S1", "RGB", "ALL")
MODES = ("interpolate", "resize")
TABLE_KEYS = (
    "f2_macro",
    "f2_micro",
    "hamming_loss",
    "precision_macro",
    "precision_micro",
    "average_precision_macro",
    "average_precision_micro",
)


def stage_train(archive: Path, work: Path, epochs: int) -> dict[str, Path]:
    runs = {}
    for mode in MODES:
        out = work / f"micro_{mode}"
        runs[mode] = out
        if (out / "checkpoints" / "best.pt").exists():
            continue
        t0 = time.perf_counter()
        metrics = train(
            TrainConfig(
                archive=str(archive),
                bands="ALL",
                model="dofa_micro",
                out=str(out),
                epochs=epochs,
                batch_size=32,
                lr=1e-3,
                patience=epochs,
                seed=0,
                workers=0,
                device="cpu",
                progress=False,
                model_kwargs={"input_mode": mode},
            )
        )
        print(
            f"trained dofa_micro ({mode}) in {time.perf_counter() - t0:.0f} s: best validation AP macro "
            f"{metrics['best_validation_average_precision_macro']:.3f}",
            flush=True,
        )
    return runs


def random_init_weights(work: Path, name: str, seed: int = 0) -> Path:
    path = work / f"{name}_random_init.pth"
    if not path.exists():
        torch.manual_seed(seed)
        torch.save(DOFAEncoder(name).state_dict(), path)
    return path


def _embed(archive: Path, encoder, bands: str, out: Path, split: str | None = None, batch: int = 32) -> dict:
    """``reben embed``'s code path (``embed_archive``) for one band group; returns its summary."""
    from reben_tools.learn.evaluation.embed import embed_archive

    return embed_archive(
        archive, encoder, out, split=split, bands=bands, batch_size=batch, device="cpu", workers=0, progress=False
    )


def _probe(embeddings: Path, out: Path) -> dict:
    """``reben probe --embeddings FILE --modality joint --train-fraction 1.0 --no-map``: the table's metrics."""
    from reben_tools.learn.evaluation.probes import probe_embeddings

    results = probe_embeddings(embeddings, out, modality="joint", fractions=(1.0,), embedding_map=False, progress=False)
    return {kind: {k: m[k] for k in TABLE_KEYS} for kind, m in results["probes"].items()}


def _encoder(spec: str, input_mode: str | None = None):
    from reben_tools.learn.models.encoders import load_encoder

    encoder = load_encoder(spec)
    if input_mode is not None:
        encoder.model.input_mode = input_mode
    return encoder


def stage_probe(archive: Path, work: Path, runs: dict[str, Path]) -> dict:
    specs = {
        "fine_tuned": f"dofa_micro:{runs['interpolate'] / 'checkpoints' / 'best.pt'}",
        "random_init": f"dofa_micro:{random_init_weights(work, 'dofa_micro')}",
    }
    results: dict = {}
    for label, spec in specs.items():
        results[label] = {}
        encoder = _encoder(spec)
        for group in GROUPS:
            target = work / "embeddings" / label / f"{group}.parquet"
            if not target.exists():
                _embed(archive, encoder, group, target)
            results[label][group] = _probe(target, work / "probe" / label / group)
            print(
                label,
                group,
                {k: round(v["average_precision_macro"], 3) for k, v in results[label][group].items()},
                flush=True,
            )
    # 120-interpolated vs resize-224: the model fine-tuned in each mode, ALL bands, probed the same way
    results["input_mode"] = {}
    for mode in MODES:
        target = work / "embeddings" / f"mode_{mode}.parquet"
        if not target.exists():
            _embed(archive, _encoder(f"dofa_micro:{runs[mode] / 'checkpoints' / 'best.pt'}"), "ALL", target)
        test = json.loads((runs[mode] / "metrics.json").read_text()).get("test", {})
        results["input_mode"][mode] = {
            "probes": _probe(target, work / "probe" / f"mode_{mode}"),
            "fine_tuned_test_ap_macro": test.get("average_precision_macro"),
            "fine_tuned_test_ap_micro": test.get("average_precision_micro"),
        }
    return results


def stage_speed(archive: Path, work: Path, batch: int, repeats: int) -> dict:
    """samples/s of reben embed (test split, ALL bands) with dofa_base per input mode, and of the forward alone."""
    path = random_init_weights(work, "dofa_base_patch16")
    out = {}
    for mode in MODES:
        target = work / "speed" / f"{mode}.parquet"
        target.unlink(missing_ok=True)
        encoder = _encoder(f"dofa_base:{path}", mode)
        summary = _embed(archive, encoder, "ALL", target, split="test", batch=batch)
        images = torch.randn(batch, 14, 120, 120)
        waves = torch.rand(14) + 0.4
        with torch.no_grad():
            encoder.model(images, waves)
            t0 = time.perf_counter()
            for _ in range(repeats):
                encoder.model(images, waves)
            forward = batch * repeats / (time.perf_counter() - t0)
        out[mode] = {
            "embed_samples_per_s": summary["samples_per_s"],
            "embed_seconds": summary["seconds"],
            "samples": summary["rows"],
            "batch": batch,
            "passes_per_sample": 3,
            "forward_only_samples_per_s_one_pass": round(forward, 2),
        }
        print(mode, out[mode], flush=True)
    return out


def band_robustness(probes: dict) -> dict:
    """Test AP macro side by side: ``{model: {probe: {band group: AP}}}``."""
    return {
        label: {
            kind: {group: probes[label][group][kind]["average_precision_macro"] for group in GROUPS}
            for kind in probes[label][GROUPS[0]]
        }
        for label in ("fine_tuned", "random_init")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stages", nargs="+", default=["train", "probe", "speed"])
    parser.add_argument("--speed-batch", type=int, default=16)
    parser.add_argument("--speed-repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("dofa_probe.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    record = json.loads(args.json.read_text()) if args.json.exists() else {}
    record["machine"] = {
        "cpu_threads": args.threads,
        "torch": torch.__version__,
        "device": "cpu",
        "gpu": "not measured (no device lent)",
    }
    record["archive"] = str(args.archive)
    runs = stage_train(args.archive, args.work, args.epochs)
    if "probe" in args.stages:
        record["probes"] = stage_probe(args.archive, args.work, runs)
        record["band_robustness_ap_macro"] = band_robustness(record["probes"])
    if "speed" in args.stages:
        record["embed_throughput_dofa_base_cpu"] = stage_speed(
            args.archive, args.work, args.speed_batch, args.speed_repeats
        )
    args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
