"""The pipeline on the generated demo region against the generator's own expected facts (slow)."""

from __future__ import annotations

import pytest

from reben_tools.builder.pipeline.config import PipelineConfig
from reben_tools.builder.pipeline.run import build_archive
from reben_tools.format.layout import PATCHES_FILE

pytestmark = pytest.mark.slow


def test_demo_region_matches_expected_facts(tmp_path):
    import geopandas as gpd

    from reben_tools.builder.demo_region.region import generate_region

    region = generate_region(tmp_path / "inputs", seed=0)
    config = PipelineConfig(
        s2=[str(region.s2_dir)],
        s1=[str(region.s1_dir)],
        clc=str(region.corine_path),
        countries_file=str(region.countries_path),
        rows_per_block=5,
    )
    build_archive(config, out=tmp_path / "archive", workers=2, progress=False, echo=lambda _: None)
    patches = gpd.read_parquet(tmp_path / "archive" / PATCHES_FILE).set_index("patch_id")
    checked = 0
    for pid, expected in region.patches.items():
        if expected.kept is None:
            continue
        assert (pid in patches.index) == expected.kept, pid
        if not expected.kept:
            continue
        row = patches.loc[pid]
        checked += 1
        if expected.labels is not None:
            assert tuple(row["labels"]) == expected.labels, pid
        assert row.unlabeled_fraction == pytest.approx(expected.unlabeled_fraction, abs=1e-12), pid
        if expected.s1_certain:
            assert row.s1_name == expected.s1_name, pid
            assert row.s1_gap_days == pytest.approx(expected.s1_gap_days, abs=1e-3), pid
        assert row.snow_fraction == pytest.approx(expected.snow_fraction, abs=1e-12), pid
        assert row.cloud_shadow_fraction == pytest.approx(expected.cloud_or_shadow_fraction, abs=1e-12), pid
        assert row.country == expected.country, pid
    assert checked >= 300
