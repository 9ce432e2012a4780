"""The comparison protocol's controls on an archive: what it resolves, and what it calls noise.

On the held-out pool (validation + test) of an archive, with the protocol of
``reben_tools.learn.evaluation.compare`` (a linear probe refitted on ``--repeats`` stratified
splits of the pool, half fit / half scored, paired by split; Nadeau-Bengio corrected standard
error, paired bootstrap over the patches; verdict from the hull of both 95% intervals):

* positive control: per-patch class pixel shares of the reference maps vs random features;
* weak positive control: random features + one class's pixel share vs the same random features;
* negative controls: two independent random feature sets (same distribution), and one feature
  set against itself;
* the noise scale of the old demo comparisons: the same protocol on the demo archive's 77 test
  patches alone, if ``--demo-archive`` is given (bootstrap sd of macro AP on the test split).

Usage::

    python benchmarks/bench_protocol.py --archive /work/bench/region3200/archive --out benchmarks/protocol.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from reben_tools.learn.evaluation.compare import metric_interval, paired_comparison, repeated_splits
from reben_tools.learn.evaluation.controls import class_pixel_fractions, random_features, weak_control
from reben_tools.learn.evaluation.probes import split_scores

HELDOUT = ("validation", "test")


def short(c: dict) -> dict:
    d = c["difference"]
    return {
        "a": round(c["a"]["mean"], 4),
        "b": round(c["b"]["mean"], 4),
        "difference": round(d["mean"], 4),
        "se": round(d["se"], 4),
        "interval": [round(v, 4) for v in d["interval"]],
        "verdict": c["verdict"],
    }


def run(archive: str, repeats: int, heldout=HELDOUT, weak_class: int | None = None) -> dict:
    t0 = time.perf_counter()
    fractions, ids, splits = class_pixel_fractions(archive)
    labels = fractions > 0
    pool = np.flatnonzero(np.isin(splits, heldout))
    y = labels[pool]
    pool_ids = [ids[i] for i in pool]
    sp = repeated_splits(pool_ids, y, repeats, 0.5, 0)
    rows = [rest for _, rest in sp]
    fit = [len(f) for f, _ in sp]
    if weak_class is None:  # the present class whose prevalence is closest to the median of the present ones
        prevalence = y.mean(0)
        present = np.flatnonzero(prevalence > 0)
        weak_class = int(present[np.argmin(np.abs(prevalence[present] - np.median(prevalence[present])))])
    sets = {
        "fractions": fractions[pool],
        "random_a": random_features(len(fractions), 64, 1)[pool],
        "random_b": random_features(len(fractions), 64, 2)[pool],
        "weak": weak_control(fractions, weak_class, 64, 1)[pool],
    }
    scores = {k: split_scores(x, y, sp, "linear") for k, x in sets.items()}
    out = {
        "archive": archive,
        "pool": {"splits": list(heldout), "patches": len(pool)},
        "repeats": repeats,
        "eval_share": 0.5,
        "weak_class_index": weak_class,
        "intervals": {
            k: metric_interval(v, y, rows, "average_precision_macro", "splits", fit) for k, v in scores.items()
        },
        "comparisons": {
            "positive: fractions vs random": short(
                paired_comparison(scores["fractions"], scores["random_a"], y, rows, kind="splits", fit_sizes=fit)
            ),
            "weak positive: random + one class share vs random": short(
                paired_comparison(scores["weak"], scores["random_a"], y, rows, kind="splits", fit_sizes=fit)
            ),
            "negative: random vs random (other seed)": short(
                paired_comparison(scores["random_a"], scores["random_b"], y, rows, kind="splits", fit_sizes=fit)
            ),
            "negative: identical feature sets": short(
                paired_comparison(scores["random_a"], scores["random_a"], y, rows, kind="splits", fit_sizes=fit)
            ),
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return out


def demo_noise(archive: str, boots: int = 2000) -> dict:
    """Bootstrap sd of macro AP on the demo's test split for a probe fitted on train (the old protocol)."""
    from reben_tools.learn.evaluation.compare import weighted_metric
    from reben_tools.learn.evaluation.probes import fit_probe, probe_scores

    fractions, _, splits = class_pixel_fractions(archive)
    labels = fractions > 0
    train, test = splits == "train", splits == "test"
    rng = np.random.default_rng(0)
    out = {}
    for name, x in (
        ("random", random_features(len(fractions), 64, 1)),
        ("random_b", random_features(len(fractions), 64, 2)),
    ):
        mean, std = x[train].mean(0), x[train].std(0) + 1e-8
        est = fit_probe("linear", (x[train] - mean) / std, labels[train], 0)
        out[name] = probe_scores(est, (x[test] - mean) / std, labels.shape[1])
    n = int(test.sum())
    w = rng.multinomial(n, np.full(n, 1 / n), size=boots)
    a = weighted_metric(out["random"], labels[test], "average_precision_macro", w)
    b = weighted_metric(out["random_b"], labels[test], "average_precision_macro", w)
    return {
        "test_patches": n,
        "classes_without_test_positive": int((labels[test].sum(0) == 0).sum()),
        "bootstrap_sd_ap_macro": float(np.nanstd(a)),
        "bootstrap_sd_paired_difference": float(np.nanstd(a - b)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", required=True)
    parser.add_argument("--demo-archive", default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/protocol.json")
    args = parser.parse_args()
    result = run(args.archive, args.repeats)
    if args.demo_archive:
        result["demo_noise"] = demo_noise(args.demo_archive)
        result["demo_protocol"] = run(args.demo_archive, args.repeats, heldout=("test",))["comparisons"]
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["comparisons"], indent=1))
    if "demo_noise" in result:
        print(json.dumps(result["demo_noise"], indent=1), json.dumps(result["demo_protocol"], indent=1))


if __name__ == "__main__":
    main()
