"""Label-fraction subsets at reBEN's scale: draw time and stratification against a uniform random draw.

A synthetic train split of reBEN's size (237,871 patches, 19 classes, prevalences 0.2% to 20%)
is drawn at 1% and 10% with ``reben_tools.splits.subsets.fraction_indices`` (``--draws`` seeds)
and with as many uniform random draws of the same size (the baseline, same process). Reported:
draw seconds and the largest per-class share difference (percentage points) between subset and
full split, as the median and the 2.5-97.5 percentile range over the draws; the verdict
(issue 20's protocol for a comparison of draws): ``beats`` when every stratified draw's gap is
below every uniform draw's.

Run: ``PYTHONPATH=$PWD python benchmarks/bench_subset.py [--draws 20]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from reben_tools.splits.subsets import fraction_indices

PREVALENCE = np.array(
    [0.002, 0.2, 0.005, 0.2, 0.05, 0.1, 0.12, 0.03, 0.08, 0.01, 0.05, 0.02, 0.1, 0.2, 0.03, 0.15, 0.03, 0.05, 0.17]
)


def _spread(values: np.ndarray) -> str:
    lo, mid, hi = np.percentile(100 * values, [2.5, 50, 97.5])
    return f"{mid:.3f} ({lo:.3f}-{hi:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = 237_871
    y = rng.random((n, 19)) < PREVALENCE
    ids = [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i:06d}" for i in range(n)]
    print(
        "| fraction | rows | draw s (median) | max share gap, stratified (pp) | uniform draw (pp) "
        "| ratio of medians | verdict |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for fraction in (0.01, 0.1):
        gaps, uniform_gaps, seconds = [], [], []
        for seed in range(args.draws):
            t0 = time.perf_counter()
            rows = fraction_indices(ids, y, fraction, seed=seed)
            seconds.append(time.perf_counter() - t0)
            gaps.append(np.abs(y[rows].mean(0) - y.mean(0)).max())
            uniform = rng.choice(n, len(rows), replace=False)
            uniform_gaps.append(np.abs(y[uniform].mean(0) - y.mean(0)).max())
        gaps, uniform_gaps = np.array(gaps), np.array(uniform_gaps)
        verdict = "beats" if gaps.max() < uniform_gaps.min() else "overlaps"
        print(
            f"| {fraction:g} | {len(rows):,} | {np.median(seconds):.2f} | {_spread(gaps)} | {_spread(uniform_gaps)} "
            f"| {np.median(uniform_gaps) / np.median(gaps):.0f}x smaller | {verdict} ({args.draws} draws each) |"
        )


if __name__ == "__main__":
    main()
