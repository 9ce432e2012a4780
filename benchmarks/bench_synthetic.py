"""Demo-region generation time against the time to merely write its rasters, in one run.

The baseline writes the same raster files (same sizes, dtypes, drivers and
creation options: lossless JPEG2000 for the SAFE bands, deflate GeoTIFF for the
GeoTIFF product and the S1 scenes) from arrays already in memory, so it is the
encoding / I/O floor of the region. The measured run is ``generate_region`` end to
end (CORINE mosaic, rendering, encoding, metadata, expected facts). Runs are
interleaved and repeated; medians of wall and CPU time (user + system of this
process) are reported with the ratio generate / baseline. The machine may be
shared: CPU time is the figure other load disturbs least.

    python benchmarks/bench_synthetic.py --repeats 3 --out benchmarks/synthetic.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from reben_tools.builder.demo_region.region import generate_region


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def snapshot(region_root: Path) -> list[tuple[str, dict, np.ndarray]]:
    """Every raster of a generated region: relative path, write profile, pixels."""
    out = []
    for path in sorted(region_root.rglob("*")):
        if path.suffix not in (".jp2", ".tif"):
            continue
        with rasterio.open(path) as ds:
            profile = dict(
                driver=ds.driver,
                width=ds.width,
                height=ds.height,
                count=1,
                dtype=ds.dtypes[0],
                crs=ds.crs,
                transform=ds.transform,
                nodata=ds.nodata,
            )
            out.append((path.relative_to(region_root).as_posix(), profile, ds.read(1)))
    return out


def baseline_write(rasters: list[tuple[str, dict, np.ndarray]], out_dir: Path) -> None:
    """Write the same rasters with the same drivers and options, straight from memory."""
    for rel, profile, array in rasters:
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        options = dict(profile)
        if options["driver"] == "JP2OpenJPEG":
            options.pop("nodata")
            options.update(QUALITY="100", REVERSIBLE="YES", YCBCR420="NO")
        else:
            options.update(
                tiled=True,
                blockxsize=256,
                blockysize=256,
                compress="deflate",
                predictor=3 if array.dtype == np.float32 else 2,
            )
        with rasterio.open(path, "w", **options) as ds:
            ds.write(array, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patches-per-side", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_synthetic_"))
    try:
        reference = generate_region(work / "reference", patches_per_side=args.patches_per_side)
        rasters = snapshot(reference.root)
        runs: dict[str, list[tuple[float, float]]] = {"generate": [], "baseline": []}
        for i in range(args.repeats):
            for kind in ("baseline", "generate") if i % 2 == 0 else ("generate", "baseline"):
                target = work / f"{kind}_{i}"
                wall0, cpu0 = time.perf_counter(), _cpu()
                if kind == "generate":
                    generate_region(target, patches_per_side=args.patches_per_side)
                else:
                    baseline_write(rasters, target)
                runs[kind].append((time.perf_counter() - wall0, _cpu() - cpu0))
                shutil.rmtree(target)
                print(f"run {i} {kind:8s}: wall {runs[kind][-1][0]:.2f} s, cpu {runs[kind][-1][1]:.2f} s", flush=True)
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
        size = sum(p.stat().st_size for p in reference.root.rglob("*") if p.is_file())
        result = {
            "machine": f"{platform.node()} ({os.cpu_count()} cores, shared)",
            "patches_per_side": args.patches_per_side,
            "repeats": args.repeats,
            "rasters": len(rasters),
            "region_bytes": size,
            "generate_wall_s": med["generate"][0],
            "generate_cpu_s": med["generate"][1],
            "baseline_wall_s": med["baseline"][0],
            "baseline_cpu_s": med["baseline"][1],
            "ratio_wall": med["generate"][0] / med["baseline"][0],
            "ratio_cpu": med["generate"][1] / med["baseline"][1],
            "runs": runs,
        }
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
