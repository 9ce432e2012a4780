"""Split strategies against positions worked out by hand, and the input checks."""

from __future__ import annotations

import itertools
import math

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import box
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format.metadata import METADATA_SCHEMA
from reben_tools.splits.patches import SplitInputError, load_patches, patches_from_table
from reben_tools.splits.strategies import (
    RebenSplit,
    SpatialBlockSplit,
    V1BlockSplit,
    get_strategy,
    reben_split,
    split_counts,
    split_file,
)

PRODUCT = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
PRODUCT_LATER = "S2B_MSIL2A_20170923T101031_N9999_R022_T33UUP"


def ids_for(product: str, xs, ys) -> list[str]:
    return [f"{product}_{x:02d}_{y:02d}" for x, y in zip(xs, ys, strict=True)]


def grid(n: int, m: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.meshgrid(np.arange(n), np.arange(m or n), indexing="ij")
    return x.ravel(), y.ravel()


# ---------------------------------------------------------------- reben (SPEC 5)


# Full tile s = 109,800 m; centre 1200 x + 600. Train: d < 16,079.77 m; validation: d < 27,450 m.
# Left: x = 12 -> 15,000 (train), x = 13 -> 16,200 (validation), x = 22 -> 27,000 (validation),
# x = 23 -> 28,200 (test). Right: d = 109,200 - 1200 x: x = 68 -> 27,600 (test), x = 69 -> 26,400
# (validation), x = 77 -> 16,800 (validation), x = 78 -> 15,600 (train).
@pytest.mark.parametrize(
    "x, y, expected",
    [
        (0, 0, "train"),
        (90, 0, "train"),
        (0, 90, "train"),
        (90, 90, "train"),  # corners
        (45, 45, "test"),
        (45, 44, "test"),
        (23, 23, "test"),
        (68, 68, "test"),  # centre square
        (12, 45, "train"),
        (13, 45, "validation"),
        (22, 45, "validation"),
        (23, 45, "test"),
        (68, 45, "test"),
        (69, 45, "validation"),
        (77, 45, "validation"),
        (78, 45, "train"),
        (45, 12, "train"),
        (45, 13, "validation"),
        (45, 22, "validation"),
        (45, 23, "test"),
        (45, 78, "train"),
        (45, 69, "validation"),
        (13, 13, "validation"),
        (22, 68, "validation"),
        (23, 69, "validation"),
        (12, 40, "train"),
    ],
)
def test_reben_full_tile_positions(x, y, expected):
    assert reben_split(np.array([x]), np.array([y]))[0] == expected


def test_reben_full_tile_counts():
    # per axis train columns 0..12 and 78..90 (26), test 23..68 (46)
    x, y = grid(91)
    counts = split_counts(reben_split(x, y))
    assert counts == {"train": 91**2 - 65**2, "validation": 65**2 - 46**2, "test": 46**2, "excluded": 0}
    assert counts == {"train": 4056, "validation": 2109, "test": 2116, "excluded": 0}


def test_reben_small_tile_uses_its_side():
    # s = 12,000 m (10 x 10 patches): train d < 1,757.4 m, validation d < 3,000 m.
    # Per axis: x = 0 -> 600 (train), 1 -> 1,800 (validation), 2 -> 3,000 (NOT < 3,000: test),
    # 7 -> 12,000 - 9,000 = 3,000 (test), 8 -> 1,800 (validation), 9 -> 600 (train).
    per_axis = ["train", "validation", "test", "test", "test", "test", "test", "test", "validation", "train"]
    x, y = grid(10)
    got = reben_split(x, y, 12_000.0)
    rank = {"train": 0, "validation": 1, "test": 2}
    expected = [min(per_axis[a], per_axis[b], key=rank.get) for a, b in zip(x, y, strict=True)]
    assert list(got) == expected
    assert split_counts(got) == {"train": 36, "validation": 28, "test": 36, "excluded": 0}
    # the same positions in a full tile are all train
    assert set(reben_split(x, y)) == {"train"}


def test_reben_strategy_from_ids_and_tile_side_column():
    xs, ys = [0, 1, 2, 5, 9], [5, 5, 5, 5, 5]
    table = pa.table({"patch_id": ids_for(PRODUCT, xs, ys), "tile_side_m": [12_000.0] * 5})
    patches = patches_from_table(table)
    assert list(RebenSplit().assign(patches)) == ["train", "validation", "test", "test", "train"]
    # without the column: 5 patches fill too little of the 10 x 10 grid they reach to be a small
    # product (tests/test_split_safety.py has the dense case), so a full tile, unless the option says otherwise
    plain = patches_from_table(table.drop(["tile_side_m"]))
    assert set(RebenSplit().assign(plain)) == {"train"}
    assert list(RebenSplit(tile_side_m=12_000).assign(plain)) == ["train", "validation", "test", "test", "train"]
    assert list(RebenSplit().assign(patches_from_table(table.drop(["tile_side_m"]), tile_side_m=12_000))) == [
        "train",
        "validation",
        "test",
        "test",
        "train",
    ]


# ---------------------------------------------------------------- v1-blocks


def test_v1_blocks_two_train_one_validation_one_test_per_block():
    x, y = grid(90)  # 45 x 45 complete blocks
    patches = patches_from_table(pa.table({"patch_id": ids_for(PRODUCT, x, y)}))
    splits = V1BlockSplit(seed=0).assign(patches)
    assert split_counts(splits) == {"train": 4050, "validation": 2025, "test": 2025, "excluded": 0}
    block = (x // 2) * 1000 + (y // 2)
    for code in np.unique(block)[:200]:
        assert sorted(splits[block == code]) == ["test", "train", "train", "validation"]
    # the arrangement is drawn: all 12 distinct arrangements occur over 2,025 blocks
    arrangements = {
        tuple(splits[(block == c)][np.argsort((x % 2 + 2 * (y % 2))[block == c])]) for c in np.unique(block)
    }
    assert len(arrangements) == 12


def test_v1_blocks_deterministic_order_free_and_same_for_every_acquisition():
    x, y = grid(20)
    ids = ids_for(PRODUCT, x, y) + ids_for(PRODUCT_LATER, x, y)
    patches = patches_from_table(pa.table({"patch_id": ids}))
    splits = V1BlockSplit(seed=7).assign(patches)
    assert list(splits[:400]) == list(splits[400:])
    order = np.random.default_rng(1).permutation(len(ids))
    shuffled = patches_from_table(pa.table({"patch_id": [ids[i] for i in order]}))
    assert list(V1BlockSplit(seed=7).assign(shuffled)) == list(splits[order])
    assert list(V1BlockSplit(seed=8).assign(patches)) != list(splits)


def test_v1_blocks_partial_tile_edge():
    # 91 columns: column 90 forms half blocks; every patch still gets a split
    x, y = grid(91)
    splits = V1BlockSplit().assign(patches_from_table(pa.table({"patch_id": ids_for(PRODUCT, x, y)})))
    assert split_counts(splits)["excluded"] == 0
    ratios = {k: v / len(x) for k, v in split_counts(splits).items()}
    assert abs(ratios["train"] - 0.5) < 0.01 and abs(ratios["test"] - 0.25) < 0.01


# ---------------------------------------------------------------- spatial-blocks


def test_spatial_blocks_buffer_separates_splits():
    x, y = grid(60)
    patches = patches_from_table(pa.table({"patch_id": ids_for(PRODUCT, x, y)}))
    strategy = SpatialBlockSplit(block_size_m=12_000, buffer_m=2_400)
    splits = strategy.assign(patches)
    kept = np.flatnonzero(splits != None)  # noqa: E711
    dropped = np.flatnonzero(splits == None)  # noqa: E711
    assert len(dropped) > 0
    # independent check on the patch grid (one tile): remaining patches of different splits are
    # more than 2 patches apart (grid distance >= sqrt(5) x 1,200 m > 2,424 m)
    dx = x[kept, None] - x[None, kept]
    dy = y[kept, None] - y[None, kept]
    near = dx**2 + dy**2 <= 4
    differ = splits[kept][:, None] != splits[kept][None, :]
    assert not np.any(near & differ)
    # blocks stay pure; the buffer is carved out of train and validation blocks, test blocks stay whole,
    # and every dropped patch lies within 2 patches of a kept patch of another split's block
    blocks = strategy.block_index(patches)
    for block in np.unique(blocks):
        members = splits[blocks == block]
        assigned = {s for s in members if s is not None}
        assert len(assigned) <= 1
        if "test" in assigned:
            assert None not in set(members)
    test_rows = np.flatnonzero(splits == "test")
    for row in dropped[:50]:
        distance2 = (x[test_rows] - x[row]) ** 2 + (y[test_rows] - y[row]) ** 2
        validation_rows = np.flatnonzero(splits == "validation")
        distance2v = (x[validation_rows] - x[row]) ** 2 + (y[validation_rows] - y[row]) ** 2
        assert min(distance2.min(initial=99), distance2v.min(initial=99)) <= 9  # within 3 patches
    assert split_counts(SpatialBlockSplit(block_size_m=12_000, buffer_m=0).assign(patches))["excluded"] == 0


def test_spatial_blocks_blocks_are_whole_and_shared_by_acquisitions():
    x, y = grid(40)
    ids = ids_for(PRODUCT, x, y) + ids_for(PRODUCT_LATER, x, y)
    patches = patches_from_table(pa.table({"patch_id": ids}))
    strategy = SpatialBlockSplit(block_size_m=12_000, buffer_m=0)
    splits = strategy.assign(patches)
    assert list(splits[:1600]) == list(splits[1600:])
    blocks = strategy.block_index(patches)
    for block in np.unique(blocks):
        assert len(set(splits[blocks == block])) == 1


def test_spatial_blocks_ratios_and_label_balance():
    x, y = grid(91)
    rare = (x < 30) & (y < 30)  # a label present only in one corner of the tile
    labels = [["Rare", "Common"] if r else ["Common"] for r in rare]
    table = pa.table({"patch_id": ids_for(PRODUCT, x, y), "labels": labels})
    patches = patches_from_table(table)
    splits = SpatialBlockSplit(block_size_m=6_000, buffer_m=0, balance_labels=True).assign(patches)
    counts = split_counts(splits)
    assert counts["excluded"] == 0
    for name, ratio in (("train", 0.5), ("validation", 0.25), ("test", 0.25)):
        assert abs(counts[name] / len(x) - ratio) < 0.02
        assert abs(np.mean(splits[rare] == name) - ratio) < 0.02  # unbalanced: test gets 11% of "Rare"
    buffered = SpatialBlockSplit(block_size_m=6_000, buffer_m=1_200).assign(patches)
    kept = split_counts(buffered)
    assigned = len(x) - kept["excluded"]
    assert abs(kept["train"] / assigned - 0.5) < 0.05  # the correction pass keeps train near 50%


def test_spatial_blocks_rejects_bad_options():
    with pytest.raises(ValueError, match="ratios"):
        SpatialBlockSplit(ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="block_size_m"):
        SpatialBlockSplit(block_size_m=0)
    with pytest.raises(ValueError, match="unknown split strategy"):
        get_strategy("random")


# ---------------------------------------------------------------- input


def test_ids_parse_like_naming(tmp_path):
    from reben_tools.format.naming import parse_patch_id

    ids = ids_for(PRODUCT, [0, 7, 90], [3, 88, 90]) + ["S2B_MSIL2A_20180204T094161_N0206_R036_T35VPK_57_38"]
    patches = patches_from_table(pa.table({"patch_id": ids}))
    for i, name in enumerate(ids):
        parsed = parse_patch_id(name)
        assert (patches.x[i], patches.y[i], patches.tile[i], patches.product[i]) == (
            parsed.x,
            parsed.y,
            parsed.tile,
            parsed.product,
        )
    # centre of 33UUP patch (7, 88): (300000 + 8400 + 600, 5400000 - 105600 - 600)
    assert (patches.centre_x[1], patches.centre_y[1]) == (309000.0, 5293800.0)
    assert patches.epsg[3] == 32635


def test_positions_from_ulx_uly_crs_columns():
    table = pa.table(
        {
            "patch_id": ids_for(PRODUCT, [1, 2], [1, 2]),
            "ulx": [1000.0, None],
            "uly": [2000.0, None],
            "crs": ["EPSG:3035", None],
        }
    )
    patches = patches_from_table(table)
    assert (patches.epsg[0], patches.centre_x[0], patches.centre_y[0]) == (3035, 1600.0, 1400.0)
    assert (patches.epsg[1], patches.centre_x[1], patches.centre_y[1]) == (32633, 303000.0, 5397000.0)


@pytest.mark.parametrize(
    "ids, message",
    [
        (
            [f"{PRODUCT}_01_01", "not_an_id", f"{PRODUCT}_1_1", None],
            r"3 malformed or missing patch id\(s\): row 1: 'not_an_id', row 2: '.*_1_1', row 3: None",
        ),
        ([f"{PRODUCT}_01_01", f"{PRODUCT}_02_01", f"{PRODUCT}_01_01"], r"1 duplicate patch id\(s\).*row 2: '.*_01_01'"),
        (
            [f"{PRODUCT}_01_01", "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUK_01_01"],
            r"unknown MGRS tile: row 1: '.*T33UUK_01_01'",
        ),
    ],
)
def test_bad_ids_are_listed_and_nothing_is_written(tmp_path, ids, message):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"patch_id": pa.array(ids, pa.string())}), source)
    out = tmp_path / "out.parquet"
    with pytest.raises(SplitInputError, match=message):
        split_file(source, out, "reben")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_missing_column_and_missing_file(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"name": ["x"]}), source)
    with pytest.raises(SplitInputError, match=r"no 'patch_id' column \(columns: \['name'\]\)"):
        load_patches(source)
    with pytest.raises(SplitInputError, match="no such file"):
        load_patches(tmp_path / "missing.parquet")
    with pytest.raises(SplitInputError, match=r"neither patches\.parquet nor metadata\.parquet"):
        load_patches(tmp_path)


def test_split_file_keeps_rows_columns_and_geoparquet_metadata(tmp_path):
    xs, ys = [0, 45, 13, 90], [0, 45, 45, 3]
    ids = ids_for(PRODUCT, xs, ys)
    frame = gpd.GeoDataFrame(
        {"patch_id": ids, "split": ["test"] * 4, "country": ["Austria"] * 4, "x": xs},
        geometry=[box(12, 48, 12.01, 48.01)] * 4,
        crs="EPSG:4326",
    )
    archive = tmp_path / "archive"
    archive.mkdir()
    frame.to_parquet(archive / "patches.parquet")
    out = tmp_path / "out.parquet"
    counts = split_file(archive, out, "reben")
    assert counts == {"train": 2, "validation": 1, "test": 1, "excluded": 0}
    written = pq.read_table(out)
    assert written.column_names == ["patch_id", "split", "country", "x", "geometry"]
    assert written.column("split").to_pylist() == ["train", "test", "validation", "train"]
    assert written.column("patch_id").to_pylist() == ids
    assert b"geo" in written.schema.metadata
    back = gpd.read_parquet(out)
    assert back.crs.to_epsg() == 4326


def test_metadata_parquet_input_keeps_schema(tmp_path):
    ids = ids_for(PRODUCT, [0, 45], [0, 45])
    rows = [
        {
            "patch_id": pid,
            "labels": ["Pastures"],
            "split": "train",
            "country": "Austria",
            "s1_name": "s1",
            "s2v1_name": None,
            "contains_seasonal_snow": False,
            "contains_cloud_or_shadow": flagged,
        }
        for pid, flagged in zip(ids, [False, True], strict=True)
    ]
    table = pa.Table.from_pylist(rows, schema=METADATA_SCHEMA)
    (tmp_path / "a").mkdir()
    pq.write_table(table.slice(0, 1), tmp_path / "a" / "metadata.parquet")
    pq.write_table(table.slice(1, 1), tmp_path / "a" / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    out = tmp_path / "out.parquet"
    assert split_file(tmp_path / "a", out, "reben") == {"train": 1, "validation": 0, "test": 1, "excluded": 0}
    written = pq.read_table(out)
    assert written.schema.equals(METADATA_SCHEMA)
    assert written.column("split").to_pylist() == ["train", "test"]


def test_cli_split_and_error(tmp_path):
    x, y = grid(4)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"patch_id": ids_for(PRODUCT, x, y)}), source)
    runner = CliRunner()
    result = runner.invoke(app, ["split", str(source), "--strategy", "v1-blocks", "--out", str(tmp_path / "o.parquet")])
    assert result.exit_code == 0, result.output
    assert "train 8 (50.0%), validation 4 (25.0%), test 4 (25.0%)" in result.output
    assert (
        sorted(pq.read_table(tmp_path / "o.parquet").column("split").to_pylist())
        == ["test"] * 4 + ["train"] * 8 + ["validation"] * 4
    )
    pq.write_table(pa.table({"patch_id": ["bad"]}), tmp_path / "bad.parquet")
    result = runner.invoke(app, ["split", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "b.parquet")])
    assert result.exit_code == 1
    assert "row 0: 'bad'" in result.output
    assert not (tmp_path / "b.parquet").exists()
    result = runner.invoke(app, ["split", str(source), "--strategy", "nope", "--out", str(tmp_path / "c.parquet")])
    assert result.exit_code == 1 and "unknown split strategy" in result.output


def test_area_ratio_of_the_reben_rings():
    # SPEC 5: by area 50/25/25: the train ring's inner square has side s - 2 s (2 - sqrt 2)/4 = s / sqrt 2
    s = 109_800.0
    inner = s - 2 * s * (2 - math.sqrt(2)) / 4
    assert math.isclose(inner**2 / s**2, 0.5)
    assert math.isclose((s / 2) ** 2 / s**2, 0.25)
    # and the patch grid follows it closely on a fine grid (1,000 x 1,000 patches of a scaled tile)
    x, y = grid(1000)
    counts = split_counts(reben_split(x, y, 1_200_000.0))
    assert abs(counts["train"] / 1e6 - 0.5) < 0.003
    assert abs(counts["test"] / 1e6 - 0.25) < 0.003


def test_all_arrangements_are_the_twelve_distinct_ones():
    from reben_tools.splits.strategies import _V1_ARRANGEMENTS

    expected = set(itertools.permutations(["train", "train", "validation", "test"]))
    assert {tuple(a) for a in _V1_ARRANGEMENTS} == expected and len(_V1_ARRANGEMENTS) == 12


def test_spatial_blocks_auto_block_size():
    # a 10 x 10 patch region (12 km) has fewer than 16 blocks of 30 or 15 km: halved down to 7.5 km
    # (the floor is 3 x 2.4 km buffer = 7.2 km); a full tile (110 km) already spans 16 blocks of 30 km
    x, y = grid(10)
    small = patches_from_table(pa.table({"patch_id": ids_for(PRODUCT, x, y)}))
    strategy = SpatialBlockSplit()
    strategy.assign(small)
    assert strategy.options()["block_size_m"] == 7_500.0 and strategy.options()["block_size_auto"]
    x, y = grid(91)
    full = patches_from_table(pa.table({"patch_id": ids_for(PRODUCT, x, y)}))
    assert SpatialBlockSplit().block_size_for(full) == 30_000.0
    assert SpatialBlockSplit(block_size_m=20_000).block_size_for(small) == 20_000.0


def test_spatial_blocks_country_balance():
    # two countries side by side: with balancing, each split takes its share of each country
    x, y = grid(91)
    country = np.where(x < 30, "Austria", "Serbia")
    table = pa.table({"patch_id": ids_for(PRODUCT, x, y), "country": list(country)})
    splits = SpatialBlockSplit(block_size_m=6_000, buffer_m=0).assign(patches_from_table(table))
    for name, ratio in (("train", 0.5), ("validation", 0.25), ("test", 0.25)):
        # without balancing Austria's train share is 0.488 here
        assert abs(np.mean(splits[country == "Austria"] == name) - ratio) < 0.01
        assert abs(np.mean(splits[country == "Serbia"] == name) - ratio) < 0.01


def test_tile_x_y_columns_place_non_reben_ids():
    # an archive encoded from BigEarthNet v1 names: ids without tile, positions in tile / x / y
    table = pa.table(
        {
            "patch_id": ["S2A_MSIL2A_20170613T101031_87_48", "S2A_MSIL2A_20170613T101031_45_45", f"{PRODUCT}_00_00"],
            "tile": ["33UUP", "T33UUP", "33UUP"],
            "x": [87, 45, 0],
            "y": [48, 45, 0],
        }
    )
    patches = patches_from_table(table)
    assert list(patches.x) == [87, 45, 0] and list(patches.tile) == ["33UUP"] * 3
    assert list(patches.product) == ["S2A_MSIL2A_20170613T101031", "S2A_MSIL2A_20170613T101031", PRODUCT]
    # 33UUP (87, 48): the real v1 patch corner (404400, 5342400) + 600
    assert (patches.centre_x[0], patches.centre_y[0]) == (405000.0, 5341800.0)
    assert list(RebenSplit().assign(patches)) == ["train", "test", "train"]
    with pytest.raises(SplitInputError, match=r"malformed or missing patch id\(s\): row 0"):
        patches_from_table(table.drop(["tile"]))
    clash = table.set_column(2, "x", pa.array([87, 45, 1]))
    with pytest.raises(SplitInputError, match=r"1 row\(s\) whose tile/x/y columns disagree with the patch id: row 2"):
        patches_from_table(clash)


@settings(max_examples=25, deadline=None)
@given(side=st.floats(min_value=11_600.0, max_value=200_000.0))
def test_reben_validation_ring_separates_test_from_train(side):
    # SPEC 5: a validation ring separates test from train inside a tile. The ring is
    # s (sqrt 2 - 1) / 4 wide, wider than one patch (1,200 m) for s > 11,584 m, so no test
    # patch has a train edge neighbour, whatever the tile side.
    n = int(side // 1200)
    x, y = grid(n)
    splits = reben_split(x, y, side).reshape(n, n)
    test, train = splits == "test", splits == "train"
    assert not np.any(test[1:, :] & train[:-1, :]) and not np.any(test[:-1, :] & train[1:, :])
    assert not np.any(test[:, 1:] & train[:, :-1]) and not np.any(test[:, :-1] & train[:, 1:])
    assert train[0, 0] and (n < 4 or test[n // 2, n // 2])
