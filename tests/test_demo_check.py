"""`reben demo` checks its archive against the generator's expected.json and prints a verdict."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reben_tools.builder.demo_check import check_demo_archive
from reben_tools.format.layout import PATCHES_FILE

PREFIX = "S2A_MSIL2A_20170613T104021_N0205_R008_T31UGR"


def _fact(x, y, kept=True, labels=("Pastures",), nodata=False, unlabeled=0.0):
    return {
        "patch_id": f"{PREFIX}_{x:02d}_{y:02d}",
        "x": x,
        "y": y,
        "kept": kept,
        "labels": None if labels is None else list(labels),
        "has_nodata": nodata,
        "unlabeled_fraction": unlabeled,
    }


def _write(tmp_path, facts, rows):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "archive").mkdir()
    expected = tmp_path / "inputs" / "expected.json"
    expected.write_text(json.dumps({"s2_products": [{"size_m": 12_600, "patches": facts}]}))
    pq.write_table(
        pa.Table.from_pylist(
            rows,
            schema=pa.schema([("patch_id", pa.string()), ("labels", pa.list_(pa.string())), ("split", pa.string())]),
        ),
        tmp_path / "archive" / PATCHES_FILE,
    )
    return expected, tmp_path / "archive"


# side 12,600 m: (0, 0) is train (600 m from the border), (2, 2) validation (3,000 m), (5, 5) test (6,000 m)
FACTS = [
    _fact(0, 0),
    _fact(2, 2, labels=None),
    _fact(5, 5),
    _fact(9, 9, kept=None),
    _fact(1, 9, kept=False, nodata=True),
    _fact(3, 3, kept=False, unlabeled=0.5),
    _fact(4, 4, kept=False),
]
GOOD = [
    {"patch_id": f"{PREFIX}_00_00", "labels": ["Pastures"], "split": "train"},
    {"patch_id": f"{PREFIX}_02_02", "labels": ["Arable land"], "split": "validation"},
    {"patch_id": f"{PREFIX}_05_05", "labels": ["Pastures"], "split": "test"},
    {"patch_id": f"{PREFIX}_09_09", "labels": ["Pastures"], "split": "train"},
]


def test_verdict_passes_and_reconciles_the_counts(tmp_path):
    verdict = check_demo_archive(*_write(tmp_path, FACTS, GOOD))
    assert verdict.ok
    lines = verdict.lines()
    assert lines[0] == "demo check: PASS against inputs/expected.json"
    assert lines[1] == (
        "  7 complete patches: 3 must be kept, 3 must be dropped (no-data pixels 1, >= 25% unlabelled 1, "
        "no S1 partner 1), 1 uncertain (S1 partner at a swath edge; 1 kept) -> 3 + 1 = 4, archive holds 4"
    )
    assert lines[3] == (
        "  labels equal: yes (2 checked, 1 left open where a polygon grazes the patch); splits equal: yes"
    )


def test_verdict_names_missing_unexpected_and_wrong_patches(tmp_path):
    rows = [
        dict(GOOD[0], labels=["Urban fabric"]),
        dict(GOOD[1]),
        dict(GOOD[3], split="test"),
        {"patch_id": f"{PREFIX}_04_04", "labels": ["Pastures"], "split": "test"},
    ]
    rows[1]["split"] = "test"
    verdict = check_demo_archive(*_write(tmp_path, FACTS, rows))
    assert not verdict.ok
    assert verdict.missing == [f"{PREFIX}_05_05"]
    assert verdict.unexpected == [f"{PREFIX}_04_04"]
    assert verdict.wrong_labels == [f"{PREFIX}_00_00"]
    assert verdict.wrong_split == [f"{PREFIX}_02_02"]  # the uncertain (9, 9) is not judged
    lines = verdict.lines()
    assert lines[0].startswith("demo check: FAIL")
    assert f"every expected patch present: NO ({PREFIX}_05_05)" in lines[2]


@pytest.mark.slow
def test_reben_demo_prints_a_passing_verdict(tmp_path):
    from typer.testing import CliRunner

    from reben_tools.cli import app

    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "-q"])
    assert result.exit_code == 0, result.output
    assert "demo check: PASS against inputs/expected.json" in result.output
    assert "every expected patch present: yes; no dropped patch present: yes" in result.output
