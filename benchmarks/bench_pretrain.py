"""CROMA pretraining on the CPU: pretrained vs random init, with the comparison protocol, and the decisive experiment.

On an archive (the benchmark region: ``reben demo --patches 3200``), for each seed s:

  (a) random init: ``torch.manual_seed(s)``, ``croma_micro`` built as for ``reben embed`` (no
      pretraining parts); the same seed and construction ``reben pretrain`` uses, so the
      pretraining run of seed s starts from exactly these encoder weights (checked: every
      published parameter equal, and the step-0 embeddings of the first batches bit-identical);
  (b) ``reben pretrain --model croma_micro --seed s``, stopped and resumed at each snapshot step
      (``--max-steps``; the run's trajectory does not depend on the stops), the encoder of each
      snapshot loaded with ``load_encoder(run)``.

Every encoder embeds every patch once (``CROMA.embed(tokens=True)``, the code ``reben embed``
runs) and gives seven feature sets: ``joint``, ``s1``, ``s2`` (the ``GAP_FFN`` outputs users
get), ``concat`` (the three together), and the pre-FFN pooled tokens ``s1_pre``, ``s2_pre`` and
``pre_concat`` (the token means that enter ``s1_GAP_FFN`` / ``s2_GAP_FFN``).

Evaluation, with ``reben_tools.learn.evaluation.compare``:

* linear probe (``probes.fit_probe("linear")``, standardised, the ``reben probe`` linear probe)
  fitted on the train split, scored on the held-out pool (validation + test); pretrained vs
  random init paired by seed (``kind="seeds"``: intervals over seeds and a bootstrap over the
  pool's patches), for every snapshot and feature set;
* per seed, the same comparison on 10 stratified splits of the pool (``kind="splits"``);
* S1->S2 retrieval over the test split with the project's tie-counting ranks
  (``retrieval.retrieval_ranks``: a tie with the partner counts against the query), recall@1
  and recall@10 per query, pretrained vs random paired by seed; chance recall@1 of every
  encoder from 200 permutations of the query-gallery pairing; collapse diagnostics (mean
  pairwise cosine, effective rank) of every embedding.

Embeddings, probe scores and runs are cached under ``--work``: a rerun skips what exists.

Usage::

    python -m reben_tools.cli demo --out /work/bench/region3200 --patches 3200 --workers 1
    OMP_NUM_THREADS=1 python benchmarks/bench_pretrain.py --archive /work/bench/region3200/archive \\
        --work /work/bench/pretrain --seeds 0 1 2 --snapshots 150 300 450 750 --epochs 15 \\
        --out benchmarks/pretrain.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from reben_tools.format.bands import PUBLISHED_STATISTICS
from reben_tools.learn.data.loaders import DevicePreprocess, make_loader, open_dataset
from reben_tools.learn.evaluation.compare import paired_comparison, permutation_recall_at_1, repeated_splits
from reben_tools.learn.evaluation.probes import fit_probe, probe_scores
from reben_tools.learn.evaluation.retrieval import retrieval_ranks
from reben_tools.learn.models.croma import CONFIGS, CROMA, PUBLISHED_PARTS
from reben_tools.learn.models.encoders import S1, S2, InputSpec, load_encoder
from reben_tools.learn.runtime.distributed import EpochSampler

VIEWS = ("joint", "s1", "s2", "concat", "s1_pre", "s2_pre", "pre_concat")
HEADLINE = "joint"
MODEL = "croma_micro"
HELDOUT = ("validation", "test")


# --------------------------------------------------------------------------- embedding


DEVICE = torch.device("cpu")
"""Where pretraining and embedding run (``--device``)."""


def embed_views(model: CROMA, archive: str, batch_size: int = 64, limit: int | None = None) -> dict:
    """Every patch's feature sets (VIEWS) and its split / labels, in archive order (fp32 on ``DEVICE``)."""
    spec = InputSpec(S1, S2, dict(PUBLISHED_STATISTICS))
    dataset = open_dataset(archive, (*S1, *S2))
    try:
        n = len(dataset) if limit is None else min(limit, len(dataset))
        sampler = EpochSampler(np.arange(n), shuffle=False, pad=False)
        loader = make_loader(dataset, sampler, batch_size, 0, DEVICE, 0)
        preprocess = DevicePreprocess(dataset, DEVICE)
        out: dict[str, list] = {k: [] for k in ("s1", "s2", "joint", "s1_pre", "s2_pre", "labels")}
        model = model.to(DEVICE).eval()
        with torch.inference_mode():
            for batch in loader:
                images, labels = preprocess(batch)
                s1, s2 = spec.prepare(images[:, :2].float().contiguous(), images[:, -12:].float().contiguous())
                e = model.embed(s1=s1, s2=s2, tokens=True)
                for k in ("s1", "s2", "joint"):
                    out[k].append(e[k].float().cpu().numpy())
                out["s1_pre"].append(e["s1_tokens"].mean(dim=1).float().cpu().numpy())
                out["s2_pre"].append(e["s2_tokens"].mean(dim=1).float().cpu().numpy())
                out["labels"].append(labels.cpu().numpy() > 0.5)
        result = {k: np.concatenate(v) for k, v in out.items()}
        result["split"] = np.asarray(dataset.metadata.column("split").to_pylist()[:n])
        result["patch_id"] = np.asarray(dataset.metadata.column("patch_id").to_pylist()[:n])
    finally:
        dataset.archive.close()
    return result


def features(views: dict, name: str) -> np.ndarray:
    if name == "concat":
        return np.concatenate([views["s1"], views["s2"], views["joint"]], axis=1)
    if name == "pre_concat":
        return np.concatenate([views["s1_pre"], views["s2_pre"]], axis=1)
    return views[name]


def cached_views(path: Path, make) -> dict:
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    t0 = time.perf_counter()
    views = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **views)
    print(f"  embedded {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return views


def random_init(seed: int, pretraining: bool = False) -> CROMA:
    torch.manual_seed(seed)  # what reben pretrain does before building its model (rank 0)
    return CROMA(CONFIGS[MODEL], pretraining=pretraining)


def check_step0(seed: int, archive: str, random_views: dict) -> dict:
    """The pretraining start of seed s equals random init s: published parameters and embeddings."""
    a, b = random_init(seed), random_init(seed, pretraining=True)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    names = [n for n in pa if n.split(".")[0] in PUBLISHED_PARTS]
    equal = all(torch.equal(pa[n], pb[n]) for n in names)
    start = embed_views(b, archive, limit=128)
    same = all(np.array_equal(start[k], random_views[k][:128]) for k in ("s1", "s2", "joint", "s1_pre", "s2_pre"))
    return {"published_parameters": len(names), "parameters_equal": equal, "embeddings_bit_identical_128": same}


# --------------------------------------------------------------------------- pretraining


def pretrain_to(run: Path, archive: str, seed: int, step: int, args) -> None:
    from reben_tools.learn.training.pretrain import PretrainConfig, pretrain

    resume = (run / "checkpoints" / "last.pt").is_file()
    if resume:
        state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
        if state["position"]["step"] >= step:
            return
    pretrain(
        PretrainConfig(
            archive=archive,
            model=MODEL,
            out=str(run),
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            seed=seed,
            workers=None if DEVICE.type == "cuda" else 0,
            progress=False,
            device=str(DEVICE),
            precision="bf16" if DEVICE.type == "cuda" else "fp32",
            max_steps=step,
        ),
        resume=resume,
    )


# --------------------------------------------------------------------------- evaluation


def probe_pool_scores(views: dict, name: str, pool: np.ndarray) -> np.ndarray:
    """Linear probe fitted on the train split, probabilities on the pool rows."""
    x = features(views, name).astype(np.float64)
    train = views["split"] == "train"
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    estimator = fit_probe("linear", (x[train] - mean) / std, views["labels"][train], 0)
    return probe_scores(estimator, (x[pool] - mean) / std, views["labels"].shape[1])


def collapse(x: np.ndarray) -> dict:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    cos = (x @ x.T).sum() - n
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s**2 / (s**2).sum()
    return {
        "mean_pairwise_cosine": float(cos / (n * (n - 1))),
        "effective_rank": float(np.exp(-(p * np.log(p + 1e-30)).sum())),
    }


def retrieval(views: dict) -> dict:
    test = views["split"] == "test"
    q, g = views["s1"][test], views["s2"][test]
    ranks = retrieval_ranks(q, g)
    return {
        "pairs": int(test.sum()),
        "hit1": (ranks <= 1).astype(np.float64),
        "hit10": (ranks <= 10).astype(np.float64),
        "median_rank": float(np.median(ranks)),
        "chance_permutation": permutation_recall_at_1(retrieval_ranks, q, g, 200, 0),
        "collapse_s1": collapse(q),
        "collapse_s2": collapse(g),
    }


def summary(c: dict) -> dict:
    d = c["difference"]
    return {
        "a": c["a"]["mean"],
        "b": c["b"]["mean"],
        "difference": d["mean"],
        "se": d["se"],
        "interval": d["interval"],
        "verdict": c["verdict"],
        "per_unit": d["per_unit"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--snapshots", type=int, nargs="+", default=[150, 300, 450, 750])
    parser.add_argument(
        "--trajectory-seeds",
        type=int,
        nargs="*",
        default=None,
        help="seeds probed at every snapshot (default: all); the others only at the last",
    )
    parser.add_argument("--epochs", type=int, default=15, help="schedule length (warm-up + cosine) in epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=75)
    parser.add_argument("--repeats", type=int, default=10, help="stratified splits of the pool, per-seed protocol")
    parser.add_argument("--only-embed", action="store_true", help="pretrain and embed, skip the evaluation")
    parser.add_argument("--model", default="croma_micro", help="CROMA size (croma_base on a GPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: pretraining (bf16 on cuda) and embedding (fp32)")
    parser.add_argument("--out", default="benchmarks/pretrain.json")
    parser.add_argument(
        "--projected-only",
        action="store_true",
        help="add the retrieval through the contrastive projections to an existing --out (cached embeddings)",
    )
    args = parser.parse_args(argv)
    global DEVICE, MODEL
    DEVICE, MODEL = torch.device(args.device), args.model
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(args.work)
    started = time.perf_counter()
    record: dict = {
        "archive": args.archive,
        "budget": {
            "model": args.model,
            "device": args.device,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup_steps": args.warmup_steps,
            "schedule_epochs": args.epochs,
            "snapshots": args.snapshots,
            "seeds": args.seeds,
        },
        "timing_s": {},
    }
    views: dict[tuple[int, int], dict] = {}
    if args.projected_only:
        final = args.snapshots[-1]
        for seed in args.seeds:
            for step in (0, final):
                name = f"views_s{seed}_random.npz" if step == 0 else f"views_s{seed}_step{step}.npz"
                views[(seed, step)] = cached_views(work / name, dict)
        done = json.loads(Path(args.out).read_text())
        done["retrieval_projected"] = projected_retrieval(views, args.seeds, final, work)
        Path(args.out).write_text(json.dumps(done, indent=1))
        print(json.dumps({k: v["verdict"] for k, v in done["retrieval_projected"]["comparisons"].items()}))
        return
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        views[(seed, 0)] = cached_views(
            work / f"views_s{seed}_random.npz", lambda seed=seed: embed_views(random_init(seed), args.archive)
        )
        record.setdefault("step0_check", {})[seed] = check_step0(seed, args.archive, views[(seed, 0)])
        print("  step 0 =", record["step0_check"][seed], flush=True)
        run = work / f"run_s{seed}"
        for step in snapshots_of(seed, args):
            path = work / f"views_s{seed}_step{step}.npz"
            if not path.is_file():
                t0 = time.perf_counter()
                pretrain_to(run, args.archive, seed, step, args)
                record["timing_s"][f"pretrain_s{seed}_to_{step}"] = round(time.perf_counter() - t0, 1)
                print(f"  pretrained to step {step} in {time.perf_counter() - t0:.0f} s", flush=True)
            views[(seed, step)] = cached_views(
                path, lambda run=run: embed_views(load_encoder(str(run)).model, args.archive)
            )
            import shutil

            snap = work / f"run_s{seed}_step{step}.pt"
            if not snap.exists() and (run / "croma_published.pt").is_file():
                shutil.copy(run / "croma_published.pt", snap)
        steps_log = run / "steps.jsonl"
        if steps_log.is_file():
            lines = [json.loads(line) for line in steps_log.read_text().splitlines() if line.strip()]
            record.setdefault("pretrain_last_steps", {})[seed] = lines[-10:]
        history = run / "metrics.json"
        if history.is_file() and json.loads(history.read_text())["epochs"]:
            record.setdefault("pretrain_history", {})[seed] = json.loads(history.read_text())["epochs"][-1]
    if args.only_embed:
        return
    record["timing_s"]["embed_and_pretrain_total"] = round(time.perf_counter() - started, 1)
    evaluate(record, views, args)
    record["timing_s"]["total"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


def snapshots_of(seed: int, args) -> list[int]:
    if args.trajectory_seeds is None or seed in args.trajectory_seeds:
        return list(args.snapshots)
    return [args.snapshots[-1]]


def evaluate(record: dict, views: dict, args) -> None:
    seeds = args.seeds
    trajectory = [s for s in seeds if len(snapshots_of(s, args)) == len(args.snapshots)]
    record["trajectory_seeds"] = trajectory
    any_views = views[(seeds[0], 0)]
    pool = np.flatnonzero(np.isin(any_views["split"], HELDOUT))
    y = any_views["labels"][pool]
    record["pool"] = {
        "splits": list(HELDOUT),
        "patches": len(pool),
        "train": int((any_views["split"] == "train").sum()),
    }
    t0 = time.perf_counter()
    scores = {
        (s, k, v): probe_pool_scores(views[(s, k)], v, pool)
        for s in seeds
        for k in [0, *snapshots_of(s, args)]
        for v in VIEWS
    }
    record["timing_s"]["probes"] = round(time.perf_counter() - t0, 1)

    def compare(a_key, b_key, metric="average_precision_macro", over=seeds):
        a = [scores[(s, *a_key)] for s in over]
        b = [scores[(s, *b_key)] for s in over]
        return {**summary(paired_comparison(a, b, y, None, metric, "seeds", n_boot=2000)), "seeds": list(over)}

    final = args.snapshots[-1]
    record["linear_probe"] = {
        "what": "linear probe fitted on train, AP on the validation+test pool; pretrained - random init, paired by seed",
        "pretrained_vs_random": {v: compare((final, v), (0, v)) for v in VIEWS},
        "pretrained_vs_random_ap_micro": {
            v: compare((final, v), (0, v), "average_precision_micro") for v in ("joint", "concat")
        },
        "trajectory_vs_random": {
            str(k): {v: compare((k, v), (0, v), over=trajectory) for v in VIEWS} for k in args.snapshots
        },
        "pre_ffn_vs_gap_ffn": {
            str(k): {
                "s1": compare((k, "s1_pre"), (k, "s1"), over=over),
                "s2": compare((k, "s2_pre"), (k, "s2"), over=over),
                "concat": compare((k, "pre_concat"), (k, "concat"), over=over),
            }
            for k, over in ((0, seeds), *((k, trajectory) for k in args.snapshots[:-1]), (final, seeds))
        },
    }
    # per seed: the split protocol on the pool (probe refitted on half the pool, scored on the other half)
    ids = [str(i) for i in any_views["patch_id"][pool]]
    splits = repeated_splits(ids, y, args.repeats, 0.5, 0)
    rows = [rest for _, rest in splits]
    fit_sizes = [len(fit) for fit, _ in splits]
    per_seed = {}
    for s in seeds:
        arms = {}
        for name, step in (("pretrained", final), ("random", 0)):
            x = features(views[(s, step)], HEADLINE)[pool].astype(np.float64)
            arm = []
            for fit, rest in splits:
                mean, std = x[fit].mean(0), x[fit].std(0) + 1e-8
                est = fit_probe("linear", (x[fit] - mean) / std, y[fit], 0)
                arm.append(probe_scores(est, (x[rest] - mean) / std, y.shape[1]))
            arms[name] = arm
        per_seed[s] = summary(
            paired_comparison(
                arms["pretrained"], arms["random"], y, rows, "average_precision_macro", "splits", fit_sizes
            )
        )
    record["linear_probe"]["per_seed_split_protocol"] = per_seed
    # retrieval
    ret = {(s, k): retrieval(views[(s, k)]) for s in seeds for k in [0, *snapshots_of(s, args)]}
    out = {}
    for k in args.snapshots:
        over = seeds if k == final else trajectory
        for metric in ("hit1", "hit10"):
            c = paired_comparison(
                [ret[(s, k)][metric] for s in over],
                [ret[(s, 0)][metric] for s in over],
                None,
                None,
                "mean",
                "seeds",
                n_boot=2000,
            )
            out[f"step{k}_{metric}"] = {**summary(c), "seeds": over}
    record["retrieval"] = {
        "what": "S1 query -> S2 gallery over the test split, tie-counting ranks; pretrained - random init, paired by seed",
        "pairs": ret[(seeds[0], 0)]["pairs"],
        "comparisons": out,
        "per_encoder": {
            f"s{s}_step{k}": {
                "recall@1": float(ret[(s, k)]["hit1"].mean()),
                "recall@10": float(ret[(s, k)]["hit10"].mean()),
                "median_rank": ret[(s, k)]["median_rank"],
                "chance_recall@1_permutation": ret[(s, k)]["chance_permutation"],
                "collapse_s1": ret[(s, k)]["collapse_s1"],
                "collapse_s2": ret[(s, k)]["collapse_s2"],
            }
            for s in seeds
            for k in [0, *snapshots_of(s, args)]
        },
    }
    record["retrieval_projected"] = projected_retrieval(views, seeds, args.snapshots[-1], Path(args.work))


def projected_retrieval(views: dict, seeds: list[int], final: int, work: Path) -> dict:
    """S1->S2 retrieval in the contrastive space: the pooled ``GAP_FFN`` outputs through the run's
    ``radar_proj`` / ``optical_proj`` (cosine, so the L2 normalisation is implied), the space InfoNCE
    trains. Final snapshot (the run's last checkpoint) against the same seed's initial projections
    (random init: the pretraining model built with that seed), paired by seed."""
    hits: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    per_encoder = {}
    for s in seeds:
        state = torch.load(work / f"run_s{s}" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
        assert state["position"]["step"] == final, "the run's last checkpoint is the final snapshot"
        heads = {final: state["contrast"], 0: random_init(s, pretraining=True).contrast.state_dict()}
        for step, head in heads.items():
            v = views[(s, step)]
            test = v["split"] == "test"

            def project(x: np.ndarray, name: str, head=head) -> np.ndarray:
                w, bias = head[f"{name}.weight"].double().numpy(), head[f"{name}.bias"].double().numpy()
                return x.astype(np.float64) @ w.T + bias

            q, g = project(v["s1"][test], "radar_proj"), project(v["s2"][test], "optical_proj")
            ranks = retrieval_ranks(q, g)
            hits[(s, step)] = {"hit1": (ranks <= 1).astype(np.float64), "hit10": (ranks <= 10).astype(np.float64)}
            per_encoder[f"s{s}_step{step}"] = {
                "recall@1": float((ranks <= 1).mean()),
                "recall@10": float((ranks <= 10).mean()),
                "median_rank": float(np.median(ranks)),
                "chance_recall@1_permutation": permutation_recall_at_1(retrieval_ranks, q, g, 200, 0),
            }
    comparisons = {}
    for metric in ("hit1", "hit10"):
        c = paired_comparison(
            [hits[(s, final)][metric] for s in seeds], [hits[(s, 0)][metric] for s in seeds],
            None, None, "mean", "seeds", n_boot=2000,
        )  # fmt: skip
        comparisons[f"step{final}_{metric}"] = {**summary(c), "seeds": seeds}
    return {
        "what": "S1 query -> S2 gallery over the test split through the contrastive projections; final - step 0",
        "comparisons": comparisons,
        "per_encoder": per_encoder,
    }


if __name__ == "__main__":
    main()
