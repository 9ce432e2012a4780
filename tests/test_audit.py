"""The split audit on small layouts whose answers are worked out by hand."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyproj import Geod, Transformer
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.geo.split_rule import reben_split
from reben_tools.splits.audit import audit_patches, run_audit
from reben_tools.splits.audit_measures import SplitUnderAudit, join_counts, js_divergence
from reben_tools.splits.patches import SplitInputError, patches_from_table

SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "audit_report.schema.json").read_text())
UUP = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
UUP_LATER = "S2B_MSIL2A_20170923T101031_N9999_R022_T33UUP"
UVP = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UVP"
QUP = "S2A_MSIL2A_20170613T101031_N9999_R022_T32UQU"
RATIOS = {"train": 0.5, "validation": 0.25, "test": 0.25}


def ids_for(product, xs, ys):
    return [f"{product}_{x:02d}_{y:02d}" for x, y in zip(xs, ys, strict=True)]


def grid(n):
    x, y = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return x.ravel(), y.ravel()


def audit_of(table: pa.Table, column: str = "split", permutations: int = 10) -> dict:
    patches = patches_from_table(table)
    values = table.column(column).to_numpy(zero_copy_only=False).astype(object)
    report, _ = audit_patches(patches, [SplitUnderAudit(column, "column", values, RATIOS)], permutations=permutations)
    jsonschema.validate(report, SCHEMA)
    return report["splits"][0]


def test_ring_split_has_no_test_patch_near_train_within_a_tile():
    x, y = grid(91)
    table = pa.table({"patch_id": ids_for(UUP, x, y), "split": list(reben_split(x, y))})
    entry = audit_of(table)
    test = entry["nearest"]["test_to_train"]
    assert test["patches"] == 2116
    assert test["share_within"] == {"1200": 0.0, "5000": 0.0, "10000": 0.0, "25000": test["share_within"]["25000"]}
    # closest: test column 68 to train column 78 (10 patches = 12,000 m on the UTM grid; on the left
    # 23 - 12 = 11 patches); on the ground that is 12,000 m / k, UTM scale factor k in 0.9996..1.001 here
    assert 12_000 / 1.001 < test["quantiles_m"]["0"] < 12_000 / 0.9996
    # farthest: the centre patch (45, 45), 33 patches from column 12 / 78 = 39,600 m
    assert 39_600 / 1.001 < test["quantiles_m"]["1"] < 39_600 / 0.9996
    assert test["nearest_in"] == {"same_tile": 1.0, "other_tile": 0.0, "colocated_other_acquisition": 0.0}
    assert entry["joins"]["by_pair"]["train-test"]["observed"] == 0
    validation = entry["nearest"]["validation_to_train"]
    assert validation["quantiles_m"]["0"] < 1_201
    # joins: rook pairs of a 91 x 91 grid: 2 * 91 * 90
    assert entry["joins"]["adjacent_pairs"] == 2 * 91 * 90
    assert entry["joins"]["cross_split"]["ratio_to_random"] < 0.2
    assert entry["counts"]["counts"] == {"train": 4056, "validation": 2109, "test": 2116, "excluded": 0}


def test_v1_blocks_put_every_test_patch_next_to_train():
    from reben_tools.splits.strategies import V1BlockSplit

    x, y = grid(90)
    table = pa.table({"patch_id": ids_for(UUP, x, y)})
    splits = V1BlockSplit().assign(patches_from_table(table))
    entry = audit_of(table.append_column("split", pa.array(list(splits))))
    assert entry["nearest"]["test_to_train"]["share_within"]["1200"] == 1.0
    assert entry["nearest"]["validation_to_train"]["share_within"]["1200"] == 1.0
    assert entry["joins"]["cross_split"]["ratio_to_random"] > 0.95
    assert entry["counts"]["observed_ratios"] == RATIOS
    assert entry["counts"]["deviation"] == {"train": 0.0, "validation": 0.0, "test": 0.0}


def test_join_counts_on_a_single_block_match_enumeration():
    # (0,0) train, (1,0) train, (0,1) validation, (1,1) test; rook pairs: T-T, T-V, T-Te, V-Te
    table = pa.table(
        {
            "patch_id": ids_for(UUP, [0, 1, 0, 1], [0, 0, 1, 1]),
            "split": ["train", "train", "validation", "test"],
        }
    )
    entry = audit_of(table, permutations=50)
    joins = entry["joins"]
    assert joins["adjacent_pairs"] == 4
    assert joins["cross_split"]["observed"] == 3
    assert {k: v["observed"] for k, v in joins["by_pair"].items()} == {
        "train-validation": 1,
        "train-test": 1,
        "validation-test": 1,
    }
    # expectation by enumerating every assignment of the four labels to the four positions
    pairs = [(0, 1), (0, 2), (1, 3), (2, 3)]
    labels = ["train", "train", "validation", "test"]
    arrangements = list(itertools.permutations(labels))
    expected = np.mean([sum(a[i] != a[j] for i, j in pairs) for a in arrangements])
    assert joins["cross_split"]["expected_random"] == pytest.approx(expected)  # 10/3
    expected_tv = np.mean([sum({a[i], a[j]} == {"train", "validation"} for i, j in pairs) for a in arrangements])
    assert joins["by_pair"]["train-validation"]["expected_random"] == pytest.approx(expected_tv)  # 4/3
    assert entry["nearest"]["test_to_train"]["share_within"]["1200"] == 1.0
    assert entry["nearest"]["test_to_validation"]["quantiles_m"]["0"] == pytest.approx(1200, rel=2e-3)


def test_join_counts_function_ignores_excluded_patches():
    codes = np.array([0, 1, -1, 2], dtype=np.int8)
    pairs = np.array([[0, 1], [1, 2], [2, 3], [0, 3]])
    result = join_counts(codes, pairs, permutations=0)
    assert result["adjacent_pairs"] == 2
    assert result["cross_split"]["observed"] == 2
    assert result["cross_split"]["random_std"] is None


def test_other_acquisition_of_the_same_place_counts():
    # the same place imaged twice: train in one acquisition, test in the other
    table = pa.table(
        {
            "patch_id": ids_for(UUP, [10, 40], [10, 40]) + ids_for(UUP_LATER, [10], [10]),
            "split": ["train", "validation", "test"],
        }
    )
    entry = audit_of(table)
    test = entry["nearest"]["test_to_train"]
    assert test["quantiles_m"]["0"] == pytest.approx(0.0, abs=1e-6)
    assert test["nearest_in"] == {"same_tile": 1.0, "other_tile": 0.0, "colocated_other_acquisition": 1.0}
    assert entry["joins"]["adjacent_pairs"] == 1  # the co-located pair
    assert entry["joins"]["by_pair"]["train-test"]["observed"] == 1


def test_neighbour_in_the_next_tile_counts():
    # 33UUP patch (90, 45): x 408,000..409,200 -> centre 408,600; 33UVP (ulx 399,960) patch (7, 45):
    # centre 399,960 + 8,400 + 600 = 408,960; same row, same uly (5,400,000): 360 m apart
    table = pa.table(
        {
            "patch_id": ids_for(UUP, [90], [45]) + ids_for(UVP, [7], [45]),
            "split": ["train", "test"],
        }
    )
    test = audit_of(table)["nearest"]["test_to_train"]
    assert 360 / 1.001 < test["quantiles_m"]["0"] < 360 / 0.9996
    assert test["nearest_in"] == {"same_tile": 0.0, "other_tile": 1.0, "colocated_other_acquisition": 1.0}


def test_distance_across_utm_zones_matches_geodesic():
    table = pa.table(
        {
            "patch_id": ids_for(QUP, [70], [40]) + ids_for(UUP, [5], [30]),
            "split": ["train", "test"],
        }
    )
    got = audit_of(table)["nearest"]["test_to_train"]["quantiles_m"]["0"]
    # independently: each centre to lon/lat in its own zone, then the WGS84 geodesic
    from reben_tools.geo.mgrs_grid import tile_grid

    points = []
    for tile, zone, x, y in (("32UQU", 32632, 70, 40), ("33UUP", 32633, 5, 30)):
        g = tile_grid(tile)
        to_geo = Transformer.from_crs(f"EPSG:{zone}", "EPSG:4326", always_xy=True)
        points.append(to_geo.transform(g.ulx + 1200 * x + 600, g.uly - 1200 * y - 600))
    _, _, geodesic = Geod(ellps="WGS84").inv(*points[0], *points[1])
    # straight line through the Earth vs the geodesic: shorter by about d^3 / (24 R^2) = 5 cm at 36.7 km
    assert geodesic - 0.1 < got < geodesic


def test_label_and_country_distributions():
    table = pa.table(
        {
            "patch_id": ids_for(UUP, [0, 1, 2, 3, 50, 60], [0, 0, 0, 0, 50, 60]),
            "split": ["train", "train", "validation", "validation", "test", "test"],
            "labels": [["A"], ["A", "B"], ["A"], ["B"], ["C"], ["C"]],
            "country": ["Austria", "Austria", "Austria", None, "Serbia", "Serbia"],
        }
    )
    entry = audit_of(table)
    labels = entry["labels"]
    assert labels["names"] == ["A", "B", "C"]
    assert labels["prevalence"]["train"] == [1.0, 0.5, 0.0]
    assert labels["prevalence"]["validation"] == [0.5, 0.5, 0.0]
    assert labels["prevalence"]["test"] == [0.0, 0.0, 1.0]
    # test's labels share nothing with train's: JS divergence (base 2) is 1
    assert labels["js_divergence_from_train"]["test"] == pytest.approx(1.0)
    # train occurrences A:2 B:1 -> (2/3, 1/3, 0); validation A:1 B:1 -> (1/2, 1/2, 0)
    p, q = np.array([2 / 3, 1 / 3]), np.array([0.5, 0.5])
    m = (p + q) / 2
    expected = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    assert labels["js_divergence_from_train"]["validation"] == pytest.approx(expected)
    assert labels["largest_prevalence_gap"]["test"] == {"label": "A", "difference": 1.0}
    countries = entry["countries"]
    assert countries["names"] == ["Austria", "Serbia", "unknown"]
    assert countries["shares"]["validation"] == {"Austria": 0.5, "Serbia": 0.0, "unknown": 0.5}
    assert countries["js_divergence_from_train"]["test"] == pytest.approx(1.0)
    # train (1, 0, 0), validation (1/2, 0, 1/2), mixture (3/4, 0, 1/4):
    # JS = 1/2 * log2(1 / (3/4)) + 1/2 * (1/2 * log2((1/2) / (3/4)) + 1/2 * log2((1/2) / (1/4)))
    expected = 0.5 * np.log2(4 / 3) + 0.5 * (0.5 * np.log2(2 / 3) + 0.5 * 1.0)
    assert countries["js_divergence_from_train"]["validation"] == pytest.approx(expected)


def test_js_divergence_edges():
    assert js_divergence([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([0, 0], [1, 1]) is None


def test_counts_against_intended_ratios_with_excluded_patches():
    table = pa.table(
        {
            "patch_id": ids_for(UUP, range(8), [0] * 8),
            "split": ["train", "train", "train", "validation", "test", None, None, "train"],
        }
    )
    counts = audit_of(table)["counts"]
    assert counts["counts"] == {"train": 4, "validation": 1, "test": 1, "excluded": 2}
    assert counts["assigned"] == 6 and counts["excluded_share"] == 0.25
    assert counts["observed_ratios"]["train"] == pytest.approx(4 / 6)
    assert counts["deviation"]["test"] == pytest.approx(1 / 6 - 0.25)
    assert counts["intended_counts"] == {"train": 3.0, "validation": 1.5, "test": 1.5}


def test_run_audit_writes_report_figures_and_summary(tmp_path):
    x, y = grid(30)
    ids = ids_for(UUP, x, y) + ids_for(UVP, x, y)
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "patch_id": ids,
            "labels": [list(rng.choice(["A", "B", "C"], size=2, replace=False)) for _ in ids],
            "country": ["Austria"] * len(ids),
            "split": list(reben_split(np.tile(x, 2), np.tile(y, 2), 36_000.0)),
        }
    )
    source = tmp_path / "patches.parquet"
    pq.write_table(table, source)
    out = tmp_path / "report"
    report = run_audit(source, out, split_columns=["split"], strategies=["v1-blocks", "spatial-blocks"], permutations=5)
    written = json.loads((out / "report.json").read_text())
    jsonschema.validate(written, SCHEMA)
    assert written == report
    assert [s["name"] for s in report["splits"]] == ["split", "v1-blocks", "spatial-blocks"]
    assert report["input"]["patches"] == 1800 and report["input"]["tiles"] == 2
    assert report["figures"] == [
        "label_distribution.png",
        "map_spatial-blocks.png",
        "map_split.png",
        "map_v1-blocks.png",
        "nearest_train_distance.png",
    ]
    for name in report["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "report.md").read_text()
    assert summary.startswith("# Split audit")
    assert "| v1-blocks (strategy) |" in summary
    assert "100.0% of test patches have a train patch within 1.2 km" in summary  # v1-blocks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patches.parquet", "report"]


def test_run_audit_bad_input_writes_nothing(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"patch_id": [f"{UUP}_01_01", f"{UUP}_01_01"]}), source)
    with pytest.raises(SplitInputError, match="duplicate"):
        run_audit(source, tmp_path / "report")
    pq.write_table(pa.table({"patch_id": [f"{UUP}_01_01"], "split": ["val"]}), source)
    with pytest.raises(SplitInputError, match=r"column 'split' has 1 value\(s\) other than.*row 0: 'val'"):
        run_audit(source, tmp_path / "report")
    with pytest.raises(SplitInputError, match="no split column 'fold'"):
        run_audit(source, tmp_path / "report", split_columns=["fold"])
    assert not (tmp_path / "report").exists()


def test_cli_audit(tmp_path):
    x, y = grid(20)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"patch_id": ids_for(UUP, x, y), "split": list(reben_split(x, y, 24_000.0))}), source)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "audit",
            str(source),
            "--split-column",
            "split",
            "--strategy",
            "v1-blocks",
            "--out",
            str(tmp_path / "r"),
            "--no-figures",
            "--permutations",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [s["name"] for s in report["splits"]] == ["split", "v1-blocks"] and report["figures"] == []
    result = runner.invoke(app, ["audit", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 1 and "no such file" in result.output
    assert not (tmp_path / "r2").exists()
