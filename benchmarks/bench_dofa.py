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
          batch in the same process;
  protocol  (issue 20) for each of ``--seeds``: ``reben train --model dofa_micro --bands ALL --seed s``
          (interpolate) and the same architecture randomly initialised with seed s; every patch
          embedded with each (``DofaEncoder.embed``: ALL, S1 alone, S2 alone in one call, RGB in a
          second); linear probe (``probes.fit_probe``) fitted on train, scored on the test split;
          with ``learn.evaluation.compare``: fine-tuned vs random init per band group and, within
          each model, S2 / S1 / RGB vs ALL, paired by seed (intervals over seeds and a bootstrap
          over the test patches); per seed, fine-tuned vs random init (ALL) on 10 stratified
          splits of the test patches (probe fitted on half of them, so on patches the encoder
          never trained on). Results under ``protocol`` in the JSON.

Usage::

    reben demo --out /tmp/dofa-demo
    python benchmarks/bench_dofa.py --archive /tmp/dofa-demo/archive --work /tmp/dofa-bench
    # the protocol stage on the benchmark region (reben demo --patches 3200):
    python benchmarks/bench_dofa.py --archive /work/bench/region3200/archive --work /work/bench/dofa \
        --stages protocol --epochs 8 --seeds 0 1 2 --json benchmarks/dofa_protocol.json
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
    path = work / (f"{name}_random_init.pth" if seed == 0 else f"{name}_random_init_s{seed}.pth")
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


def embed_groups(model_spec: str, archive: Path, device: str = "cpu") -> dict:
    """Every patch's DOFA embedding of the band groups ALL, S1, S2 (one ``embed`` call) and RGB (another)."""
    import numpy as np

    from reben_tools.learn.data.loaders import DevicePreprocess, make_loader, open_dataset
    from reben_tools.learn.models.encoders import S1, S2, load_encoder
    from reben_tools.learn.runtime.distributed import EpochSampler

    dev = torch.device(device)
    every, rgb = load_encoder(model_spec).to(dev), load_encoder(model_spec).to(dev)
    rgb.use_bands("RGB")
    dataset = open_dataset(archive, (*S1, *S2))
    out: dict = {g: [] for g in GROUPS}
    out["labels"] = []
    try:
        loader = make_loader(dataset, EpochSampler(np.arange(len(dataset)), shuffle=False, pad=False), 64, 0, dev, 0)
        preprocess = DevicePreprocess(dataset, dev)
        with torch.inference_mode():
            for batch in loader:
                images, labels = preprocess(batch)
                s1, s2 = every.input.prepare(images[:, :2].float().contiguous(), images[:, -12:].float().contiguous())
                e = every.embed(s1=s1, s2=s2)
                out["ALL"].append(e["joint"].float().cpu().numpy())
                out["S1"].append(e["s1"].float().cpu().numpy())
                out["S2"].append(e["s2"].float().cpu().numpy())
                out["RGB"].append(rgb.embed(s2=s2)["joint"].float().cpu().numpy())
                out["labels"].append(labels.cpu().numpy() > 0.5)
        result = {k: np.concatenate(v) for k, v in out.items()}
        result["split"] = np.asarray(dataset.metadata.column("split").to_pylist())
        result["patch_id"] = np.asarray(dataset.metadata.column("patch_id").to_pylist())
    finally:
        dataset.archive.close()
    return result


def stage_protocol(
    archive: Path,
    work: Path,
    epochs: int,
    seeds: list[int],
    repeats: int,
    device: str = "cpu",
    model: str = "dofa_micro",
) -> dict:
    import numpy as np

    from reben_tools.learn.evaluation.compare import paired_comparison, repeated_splits
    from reben_tools.learn.evaluation.probes import fit_probe, probe_scores

    views, timing = {}, {}
    for seed in seeds:
        run = work / f"protocol_micro_s{seed}"
        if not (run / "checkpoints" / "best.pt").exists():
            t0 = time.perf_counter()
            train(
                TrainConfig(
                    archive=str(archive),
                    bands="ALL",
                    model=model,
                    out=str(run),
                    epochs=epochs,
                    batch_size=32,
                    lr=1e-3,
                    patience=epochs,
                    seed=seed,
                    workers=0 if device == "cpu" else None,
                    device=device,
                    progress=False,
                )
            )
            timing[f"train_s{seed}"] = round(time.perf_counter() - t0, 1)
            print(f"trained dofa_micro seed {seed} in {timing[f'train_s{seed}']} s", flush=True)
        for label, spec in (
            ("fine_tuned", f"{model}:{run / 'checkpoints' / 'best.pt'}"),
            ("random_init", f"{model}:{random_init_weights(work, model, seed)}"),
        ):
            path = work / f"groups_{label}_s{seed}.npz"
            if not path.exists():
                t0 = time.perf_counter()
                np.savez(path, **embed_groups(spec, archive, device))
                print(f"embedded {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
            with np.load(path) as z:
                views[(label, seed)] = {k: z[k] for k in z.files}
    first = views[("fine_tuned", seeds[0])]
    train_rows = np.flatnonzero(first["split"] == "train")
    test_rows = np.flatnonzero(first["split"] == "test")
    y_train, y = first["labels"][train_rows], first["labels"][test_rows]

    def scores(label, seed, group):
        x = views[(label, seed)][group].astype(np.float64)
        mean, std = x[train_rows].mean(0), x[train_rows].std(0) + 1e-8
        est = fit_probe("linear", (x[train_rows] - mean) / std, y_train, 0)
        return probe_scores(est, (x[test_rows] - mean) / std, y.shape[1])

    probe = {
        (label, seed, g): scores(label, seed, g)
        for label in ("fine_tuned", "random_init")
        for seed in seeds
        for g in GROUPS
    }

    def compare(a, b):
        c = paired_comparison([probe[(a[0], s, a[1])] for s in seeds], [probe[(b[0], s, b[1])] for s in seeds], y,
                              None, "average_precision_macro", "seeds", n_boot=2000)  # fmt: skip
        d = c["difference"]
        return {"a": c["a"]["mean"], "b": c["b"]["mean"], "difference": d["mean"], "per_seed": d["per_unit"],
                "se": d["se"], "interval": d["interval"], "verdict": c["verdict"]}  # fmt: skip

    result = {
        "seeds": seeds,
        "epochs": epochs,
        "model": model,
        "device": device,
        "train_patches": len(train_rows),
        "test_patches": len(test_rows),
        "fine_tuned_vs_random": {g: compare(("fine_tuned", g), ("random_init", g)) for g in GROUPS},
        "band_robustness": {
            label: {g: compare((label, g), (label, "ALL")) for g in GROUPS if g != "ALL"}
            for label in ("fine_tuned", "random_init")
        },
        "timing_s": timing,
    }
    # per seed: probes fitted on half of the test patches (never seen in training), scored on the other half
    splits = repeated_splits([str(i) for i in first["patch_id"][test_rows]], y, repeats, 0.5, 0)
    rows, fit = [r for _, r in splits], [len(f) for f, _ in splits]
    per_seed = {}
    for seed in seeds:
        arms = []
        for label in ("fine_tuned", "random_init"):
            x = views[(label, seed)]["ALL"][test_rows].astype(np.float64)
            arm = []
            for f, r in splits:
                mean, std = x[f].mean(0), x[f].std(0) + 1e-8
                arm.append(
                    probe_scores(fit_probe("linear", (x[f] - mean) / std, y[f], 0), (x[r] - mean) / std, y.shape[1])
                )
            arms.append(arm)
        c = paired_comparison(arms[0], arms[1], y, rows, "average_precision_macro", "splits", fit)
        per_seed[seed] = {"a": c["a"]["mean"], "b": c["b"]["mean"], "difference": c["difference"]["mean"],
                          "interval": c["difference"]["interval"], "verdict": c["verdict"]}  # fmt: skip
    result["fine_tuned_vs_random_all_split_protocol_per_seed"] = per_seed
    return result


def band_robustness(probes: dict) -> dict:
    """Test AP macro side by side: ``{model: {probe: {band group: AP}}}``."""
    return {
        label: {
            kind: {group: probes[label][group][kind]["average_precision_macro"] for group in GROUPS}
            for kind in probes[label][GROUPS[0]]
        }
        for label in ("fine_tuned", "random_init")
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stages", nargs="+", default=["train", "probe", "speed"])
    parser.add_argument("--speed-batch", type=int, default=16)
    parser.add_argument("--speed-repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("dofa_probe.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="protocol stage: training seeds")
    parser.add_argument("--repeats", type=int, default=10, help="protocol stage: splits of the test patches")
    parser.add_argument("--device", default="cpu", help="protocol stage: cpu or cuda")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    record = json.loads(args.json.read_text()) if args.json.exists() else {}
    record["machine"] = {
        "cpu_threads": args.threads,
        "torch": torch.__version__,
        "device": args.device,
    }
    record["archive"] = str(args.archive)
    if "protocol" in args.stages:
        record["protocol"] = stage_protocol(args.archive, args.work, args.epochs, args.seeds, args.repeats, args.device)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(
            json.dumps({k: v for k, v in record["protocol"].items() if "vs" in k or k == "band_robustness"}, indent=1)
        )
    if not {"train", "probe", "speed"} & set(args.stages):
        return
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
