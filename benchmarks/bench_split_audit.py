"""Benchmark: split assignment and split audit at reBEN scale (about 550,000 patches, ~100 tiles).

Generates patch ids for 125 acquisitions over 100 real MGRS tiles inside the bounding boxes of
BigEarthNet's ten countries (25 tiles imaged twice), each acquisition keeping ~53% of its
8,281 patches in random clumps (as cloud/no-data filtering leaves them), with labels drawn
from a per-tile class mix and the country of the box the tile was drawn from. Then, in one
process, interleaved over ``--repeats`` rounds:

* baseline: read the parquet, and a per-patch Python loop (``parse_patch_id`` + tile corner +
  ``reben_split`` per row), the straightforward way to split;
* ``load_patches`` (validate ids, MGRS positions);
* each strategy's ``assign``;
* ``run_audit`` over the ``split`` column and all strategies (report, figures).

Usage: ``python benchmarks/bench_split_audit.py [--patches 550000] [--repeats 3] [--out DIR]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COUNTRY_BOXES = {  # (lat min, lat max, lon min, lon max), weight
    "Austria": ((46.5, 48.9, 9.6, 17.1), 2),
    "Belgium": ((49.6, 51.4, 2.6, 6.3), 1),
    "Finland": ((60.0, 69.0, 21.0, 31.0), 4),
    "Ireland": ((51.5, 55.3, -10.4, -6.0), 2),
    "Kosovo": ((42.0, 43.2, 20.0, 21.7), 1),
    "Lithuania": ((54.0, 56.4, 21.0, 26.8), 2),
    "Luxembourg": ((49.5, 50.1, 5.8, 6.5), 1),
    "Portugal": ((37.0, 42.0, -9.5, -6.2), 2),
    "Serbia": ((42.3, 46.1, 19.0, 23.0), 2),
    "Switzerland": ((45.8, 47.8, 6.0, 10.5), 1),
}


def generate(n_tiles: int = 100, n_repeat_tiles: int = 25, keep: float = 0.53, seed: int = 0) -> pa.Table:
    """A reBEN-like patch table: patch_id, labels, country, split (the reben split)."""
    import mgrs

    from reben_tools.format.labels import ALPHABETICAL_ORDER
    from reben_tools.geo.mgrs_grid import tile_grid
    from reben_tools.geo.split_rule import reben_split

    rng = np.random.default_rng(seed)
    converter = mgrs.MGRS()
    countries = list(COUNTRY_BOXES)
    weights = np.array([COUNTRY_BOXES[c][1] for c in countries], dtype=float)
    tiles: dict[str, str] = {}
    while len(tiles) < n_tiles:
        country = countries[rng.choice(len(countries), p=weights / weights.sum())]
        (lat0, lat1, lon0, lon1), _ = COUNTRY_BOXES[country]
        name = converter.toMGRS(rng.uniform(lat0, lat1), rng.uniform(lon0, lon1), MGRSPrecision=0)
        try:
            tile_grid(name)
        except ValueError:
            continue
        tiles.setdefault(name, country)
    names = sorted(tiles)
    products = [(t, "20170613T101031") for t in names]
    products += [(t, "20171114T101031") for t in rng.choice(names, n_repeat_tiles, replace=False)]
    x, y = np.meshgrid(np.arange(91), np.arange(91), indexing="ij")
    x, y = x.ravel(), y.ravel()
    ids, labels_flat, offsets, country = [], [], [0], []
    for index, (tile, sensing) in enumerate(products):
        # clumped loss: keep patches where a smooth random field exceeds a threshold
        coarse = rng.random((12, 12))
        field = coarse[x * 12 // 91, y * 12 // 91] + 0.35 * rng.random(len(x))
        kept = field > np.quantile(field, 1.0 - keep)
        prefix = f"S2{'AB'[index % 2]}_MSIL2A_{sensing}_N9999_R022_T{tile}"
        ids.extend(f"{prefix}_{a:02d}_{b:02d}" for a, b in zip(x[kept], y[kept], strict=True))
        mix = rng.dirichlet(np.full(19, 0.3)) * 3.0
        presence = rng.random((int(kept.sum()), 19)) < np.minimum(mix, 0.95)
        presence[presence.sum(axis=1) == 0, int(np.argmax(mix))] = True
        rows, cols = np.nonzero(presence)
        labels_flat.extend(np.array(ALPHABETICAL_ORDER, dtype=object)[cols])
        offsets.extend((offsets[-1] + np.cumsum(np.bincount(rows, minlength=int(kept.sum())))).tolist())
        country.extend([tiles[tile]] * int(kept.sum()))
    labels = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(labels_flat, pa.string()))
    table = pa.table({"patch_id": ids, "labels": labels, "country": country})
    from reben_tools.splits.patches import patches_from_table

    patches = patches_from_table(table)
    return table.append_column("split", pa.array(list(reben_split(patches.x, patches.y)), pa.string()))


def per_patch_loop_split(ids: list[str]) -> list[str]:
    """Baseline: the straightforward per-row Python split."""
    from reben_tools.format.naming import parse_patch_id
    from reben_tools.geo.mgrs_grid import tile_grid
    from reben_tools.geo.split_rule import reben_split

    out = []
    for name in ids:
        parsed = parse_patch_id(name)
        tile_grid(parsed.tile)
        out.append(reben_split(np.array([parsed.x]), np.array([parsed.y]))[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=100)
    parser.add_argument("--repeat-tiles", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="keep the last audit report here")
    args = parser.parse_args()

    from reben_tools.splits.audit import run_audit
    from reben_tools.splits.patches import load_patches
    from reben_tools.splits.strategies import STRATEGIES, get_strategy

    started = time.perf_counter()
    table = generate(args.tiles, args.repeat_tiles)
    workdir = Path(tempfile.mkdtemp(prefix="bench-split-audit-"))
    source = workdir / "metadata.parquet"
    pq.write_table(table, source)
    print(
        f"generated {table.num_rows:,} patches, {args.tiles} tiles, "
        f"{args.tiles + args.repeat_tiles} acquisitions in {time.perf_counter() - started:.1f} s"
    )
    ids = table.column("patch_id").to_pylist()

    timings: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    def timed(name: str, function):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = function()
        timings.setdefault(name, []).append(time.perf_counter() - start)
        cpu.setdefault(name, []).append(time.process_time() - start_cpu)
        return result

    out_dir = args.out or workdir / "report"
    for round_ in range(args.repeats):
        timed("baseline: read parquet", lambda: pq.read_table(source))
        timed("baseline: per-patch Python loop split (reben)", lambda: per_patch_loop_split(ids))
        timed("load_patches (validate ids, MGRS positions)", lambda: load_patches(source))
        for name in STRATEGIES:
            strategy = get_strategy(name)
            timed(f"load + split {name}", lambda s=strategy: s.assign(load_patches(source)))
        timed("audit: split column + 3 strategies, with figures", lambda: run_audit(source, out_dir))
        timed(
            "audit: split column only, no figures",
            lambda: run_audit(source, workdir / "report-nofig", split_columns=["split"], figures=False),
        )
        print(f"round {round_ + 1}/{args.repeats} done")

    baseline = statistics.median(timings["baseline: per-patch Python loop split (reben)"])
    read = statistics.median(timings["baseline: read parquet"])
    print(f"\n{'step':55s} {'median s':>9s} {'min s':>7s} {'cpu s':>7s} {'x read':>8s} {'loop/step':>10s}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(
            f"{name:55s} {median:9.2f} {min(values):7.2f} {statistics.median(cpu[name]):7.2f} "
            f"{median / read:8.1f} {baseline / median:10.2f}"
        )
    print(f"load average after: {os.getloadavg()}")
    print(f"\nreport: {out_dir}")


if __name__ == "__main__":
    main()
