"""``reben demo``: generate the demo region, build its archive, and (when given) audit its split.

Owns: the demo flow (:func:`run_demo`): reusing or generating the inputs, the demo
build settings, printing the check against ``expected.json`` (``build.demo_check``), the paths
worth looking at.
Does not own: the generator (build.demo_region), the build (build.pipeline), the split
audit (reben_tools.splits.audit, passed in by the ``reben demo`` command: build never
imports splits, a sibling).
May import: reben_tools.format, reben_tools.builder.pipeline, reben_tools.builder.demo_region,
reben_tools.builder.demo_check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from reben_tools.builder.demo_check import DemoCheckError, check_demo_archive
from reben_tools.builder.pipeline.config import PipelineConfig
from reben_tools.builder.pipeline.run import build_archive
from reben_tools.builder.pipeline.summary import format_summary
from reben_tools.format.layout import MANIFEST_FILE, METADATA_FILE, PATCHES_FILE, REPORT_FILE

DEMO_PATCHES = 400
"""Patches of the demo region (4 products of 10 x 10 patches; the archive keeps about 340)."""


def region_size(patches: int | None):
    """(region design, patches per product side) for about ``patches`` patches.

    None or at most :data:`DEMO_PATCHES`: the demo (4 products of 10 x 10). More: the benchmark
    region, ``T = min(8, patches // 100)`` tiles of ``P x P`` patches with
    ``P = max(10, round(sqrt(patches / T)))`` (e.g. 3,200 -> 8 tiles of 20 x 20).

    Raises:
        ValueError: ``patches`` below 1.
    """
    from reben_tools.builder.demo_region.design import DEMO_DESIGN, benchmark_design

    if patches is None or patches == DEMO_PATCHES:
        return DEMO_DESIGN, 10
    if patches < 1:
        raise ValueError(f"--patches must be at least 1, got {patches}")
    if patches < DEMO_PATCHES:
        return DEMO_DESIGN, 10
    tiles = min(8, patches // 100)
    return benchmark_design(tiles), max(10, round((patches / tiles) ** 0.5))


def run_demo(
    out: str | Path,
    workers: int = 2,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    audit: Callable[[Path, Path], object] | None = None,
    patches: int | None = None,
) -> dict[str, Path]:
    """``reben demo``: generate the demo region, build its archive on a LocalCluster, audit the split.

    Layout of ``out``: ``inputs/`` (the generated scenes, CORINE, countries),
    ``archive/`` (the archive), ``audit/`` (the split audit, when ``audit`` is given).
    Rerunning reuses the inputs and resumes the archive.

    Args:
        audit: ``audit(archive_dir, audit_dir)`` writing ``audit_dir/report.md``
            (``reben demo`` passes ``reben_tools.splits.audit.run_audit``; build may not
            import splits); None skips the audit.
        patches: about how many patches to generate (:func:`region_size`): None or up to 400
            gives the demo region; more gives the benchmark region (one product on each of
            up to 8 tiles, all 19 classes).

    Returns:
        the paths worth looking at, by label.

    Raises:
        DemoCheckError: the archive disagrees with the generator's ``expected.json`` (after
            the audit, so every output is there to look at).
    """
    from reben_tools.builder.demo_region.region import generate_region

    design, per_side = region_size(patches)
    out = Path(out)
    inputs_dir, archive_dir = out / "inputs", out / "archive"
    started = time.perf_counter()
    if (inputs_dir / "expected.json").is_file():
        echo(f"reusing the generated region in {inputs_dir}")
        s2, s1 = [str(inputs_dir / "S2")], [str(inputs_dir / "S1")]
        clc = next((inputs_dir / "corine").glob("*.gpkg"))
        countries_file = next((inputs_dir / "countries").glob("*.geojson"))
    else:
        echo(f"generating the demo region in {inputs_dir} ...")
        region = generate_region(
            inputs_dir, seed=seed, overwrite=True, progress=progress, design=design, patches_per_side=per_side
        )
        echo(region.describe())
        s2, s1 = [str(region.s2_dir)], [str(region.s1_dir)]
        clc, countries_file = region.corine_path, region.countries_path
    flags = inputs_dir / "flags"
    snow_ids, cloud_ids = flags / "snow_patch_ids.txt", flags / "cloud_or_shadow_patch_ids.txt"
    config = PipelineConfig(
        s2=s2,
        s1=s1,
        clc=str(clc),
        countries_file=str(countries_file),
        out=str(archive_dir),
        workers=workers,
        rows_per_block=5,
        memory_limit="2GiB",
        boa_add_offset=0,  # the region's one GeoTIFF folder is baseline N0205: no offset, as generated
        snow_ids_file=str(snow_ids) if snow_ids.is_file() else None,
        cloud_ids_file=str(cloud_ids) if cloud_ids.is_file() else None,
    )
    if (inputs_dir / "expected.json").is_file():
        import json

        found = json.loads((inputs_dir / "expected.json").read_text(encoding="utf-8"))
        if (found.get("design", "demo"), found["patches_per_side"]) != (design.name, per_side):
            raise DemoCheckError(
                f"{inputs_dir} holds the region {found.get('design', 'demo')!r} with {found['patches_per_side']} "
                f"patches per side, not {design.name!r} with {per_side}: use another --out for another --patches"
            )
    echo(f"\nbuilding the archive on a local Dask cluster ({workers} workers) ...")
    result = build_archive(config, progress=progress, echo=echo)
    echo(format_summary(result.summary))
    verdict = check_demo_archive(inputs_dir / "expected.json", archive_dir)
    echo("\n" + "\n".join(verdict.lines()))
    paths = {
        "inputs": inputs_dir,
        "archive": archive_dir,
        "metadata": archive_dir / METADATA_FILE,
        "patches": archive_dir / PATCHES_FILE,
        "report": archive_dir / REPORT_FILE,
        "manifest": archive_dir / MANIFEST_FILE,
        "expected": inputs_dir / "expected.json",
    }
    if result.map_png:
        paths["map"] = archive_dir / result.map_png.name  # relative as given, like the other paths
    if audit is None:
        echo("split audit: no audit given; skipped")
    else:
        echo("\nauditing the split ...")
        audit_dir = out / "audit"
        try:
            audit(archive_dir, audit_dir)
        except Exception as exc:
            echo(f"split audit failed: {type(exc).__name__}: {exc}")
        else:
            paths["audit"] = audit_dir / "report.md"
    echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    if not verdict.ok:
        raise DemoCheckError(
            f"{archive_dir}: the archive disagrees with {inputs_dir / 'expected.json'} (see the demo check above)"
        )
    return paths
