"""Label-fraction subsets at reBEN's scale: draw time and stratification against a uniform random draw.

A synthetic train split of reBEN's size (237,871 patches, 19 classes, prevalences 0.2% to 20%)
is drawn at 1% and 10% with ``reben_tools.splits.subsets.fraction_indices`` and with a uniform
random draw of the same size (the baseline, same process). Reported: draw seconds and the
largest per-class share difference (percentage points) between subset and full split.

Run: ``PYTHONPATH=$PWD python benchmarks/bench_subset.py``
"""

from __future__ import annotations

import time

import numpy as np

from reben_tools.splits.subsets import fraction_indices

PREVALENCE = np.array(
    [0.002, 0.2, 0.005, 0.2, 0.05, 0.1, 0.12, 0.03, 0.08, 0.01, 0.05, 0.02, 0.1, 0.2, 0.03, 0.15, 0.03, 0.05, 0.17]
)


def main() -> None:
    rng = np.random.default_rng(0)
    n = 237_871
    y = rng.random((n, 19)) < PREVALENCE
    ids = [f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i:06d}" for i in range(n)]
    print("| fraction | rows | draw s | max share gap (pp) | uniform draw gap (pp) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for fraction in (0.01, 0.1):
        t0 = time.perf_counter()
        rows = fraction_indices(ids, y, fraction, seed=0)
        seconds = time.perf_counter() - t0
        gap = np.abs(y[rows].mean(0) - y.mean(0)).max()
        uniform = rng.choice(n, len(rows), replace=False)
        uniform_gap = np.abs(y[uniform].mean(0) - y.mean(0)).max()
        print(
            f"| {fraction:g} | {len(rows):,} | {seconds:.2f} | {100 * gap:.3f} | {100 * uniform_gap:.3f} "
            f"| {uniform_gap / gap:.0f}x smaller |"
        )


if __name__ == "__main__":
    main()
