"""The larger benchmark region (issue 20): `reben demo --patches N`, all 19 classes in every split.

The fast tests check the design geometry (labels and splits worked out without writing a raster)
at the smallest benchmark size and that the default demo is unchanged; the slow ones check the
size the benchmarks use (3,200 patches) and a real build.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from reben_tools.builder.demo import region_size
from reben_tools.builder.demo_region.design import BENCHMARK_TILES, DEMO_DESIGN, benchmark_design
from reben_tools.builder.demo_region.expected import expected_split_classes
from reben_tools.cli import app
from reben_tools.format.labels import ALPHABETICAL_ORDER

SPLITS = ("train", "validation", "test")


def test_region_sizes():
    assert region_size(None) == (DEMO_DESIGN, 10) and region_size(400) == (DEMO_DESIGN, 10)
    design, side = region_size(3200)
    assert design.name == "benchmark-8" and side == 20 and len(design.products) == 8
    design, side = region_size(800)
    assert (design.name, side) == ("benchmark-8", 10)
    design, side = region_size(500)
    assert (design.name, side) == ("benchmark-5", 10)
    with pytest.raises(ValueError, match="at least 1"):
        region_size(0)


def test_benchmark_design_is_one_product_per_tile_with_full_s1_cover():
    design = benchmark_design()
    assert design.all_classes and not design.features
    assert design.tiles == sorted(t for t, _ in BENCHMARK_TILES)
    assert len({p.name for p in design.products}) == 8 and len({s.name for s in design.s1_scenes}) == 8
    for product, scene in zip(design.products, design.s1_scenes, strict=True):
        assert scene.tile == product.tile and not product.clouds and not product.snow_rects
        assert scene.start[:8] == product.sensing[:8]  # the same day: the closest S1 scene


@pytest.mark.parametrize("patches", [800])
def test_every_class_in_every_split_small(patches):
    design, side = region_size(patches)
    counts = expected_split_classes(design, side)
    for split in SPLITS:
        assert set(counts[split]) == set(ALPHABETICAL_ORDER), split
        assert min(counts[split].values()) >= 10, (split, counts[split])


@pytest.mark.slow
@pytest.mark.parametrize("patches", [1600, 3200])
def test_every_class_in_every_split_at_benchmark_sizes(patches):
    design, side = region_size(patches)
    counts = expected_split_classes(design, side)
    for split in SPLITS:
        assert set(counts[split]) == set(ALPHABETICAL_ORDER), split
        assert min(counts[split].values()) >= 15, (split, counts[split])


def test_demo_design_keeps_its_14_classes():
    counts = expected_split_classes(DEMO_DESIGN, 10)
    assert len(set(counts["train"])) == 14


@pytest.mark.slow
def test_reben_demo_patches_builds_the_region(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--patches", "800", "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert "demo check: PASS" in result.output
    rows = pq.read_table(tmp_path / "archive" / "metadata.parquet").to_pylist()
    assert len(rows) == 800
    for split in SPLITS:
        present = {label for r in rows if r["split"] == split for label in r["labels"]}
        assert present == set(ALPHABETICAL_ORDER), split
    assert len({r["country"] for r in rows}) == 8
    assert json.loads((tmp_path / "inputs" / "expected.json").read_text())["design"] == "benchmark-8"
    # rerunning with another size is refused, naming both
    again = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--patches", "3200", "-q"])
    assert again.exit_code == 1 and "'benchmark-8' with 10 patches per side, not 'benchmark-8' with 20" in again.output
