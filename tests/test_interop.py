"""ConfigILM / official-release parity details (issue 11): exact published statistics, closing and
sharing environments, empty metadata files, include_snowy / include_cloudy, and
`reben verify LMDB_DIR --metadata ...` on a bare reBEN LMDB."""

from __future__ import annotations

import json
import shutil

import lmdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_data import (  # noqa: F401  (the *_fixture imports register module fixtures)
    ALL,
    CLOUDY,
    REBEN_SCHEMA,
    SNOWY,
    archive_dir_fixture,
    metadata_rows,
    patches_fixture,
    plain_fixture,
    upsample,
    values_of,
    write_plain,
)
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format import codec
from reben_tools.format.bands import PUBLISHED_STATISTICS
from reben_tools.format.reader import iter_lmdb
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.release.lmdb_verify import verify_lmdb

# ConfigILM 0.7.1 configilm/extra/BENv2_utils.py, "120_nearest" (as published with reBEN): float32 values
CONFIGILM_MEANS = {
    "B01": 361.0767822265625,
    "B02": 438.3720703125,
    "B03": 614.0556640625,
    "B04": 588.4096069335938,
    "B05": 942.8433227539062,
    "B06": 1769.931640625,
    "B07": 2049.551513671875,
    "B08": 2193.2919921875,
    "B8A": 2235.556640625,
    "B09": 2241.455322265625,
    "B11": 1568.226806640625,
    "B12": 997.7324829101562,
    "VH": -19.352558135986328,
    "VV": -12.643863677978516,
}
CONFIGILM_STDS = {
    "B01": 575.0687255859375,
    "B02": 607.02685546875,
    "B03": 603.2968139648438,
    "B04": 684.56884765625,
    "B05": 738.4326782226562,
    "B06": 1100.4560546875,
    "B07": 1275.805419921875,
    "B08": 1369.3717041015625,
    "B8A": 1356.5440673828125,
    "B09": 1316.393310546875,
    "B11": 1070.1612548828125,
    "B12": 813.5276489257812,
    "VH": 5.590505599975586,
    "VV": 5.133493900299072,
}


def configilm_normalised(p: dict) -> torch.Tensor:
    """What ConfigILM's BENv2 reader + torchvision ``Normalize(mean, std)`` give: float32 bands
    stacked at 120x120 (nearest), then ``(x - mean) / std`` in float32 per channel."""
    x = torch.from_numpy(np.stack([upsample(p["bands"][b]).astype(np.float32) for b in ALL]))
    mean = torch.tensor([CONFIGILM_MEANS[b] for b in ALL], dtype=torch.float32)[:, None, None]
    std = torch.tensor([CONFIGILM_STDS[b] for b in ALL], dtype=torch.float32)[:, None, None]
    return (x - mean) / std


def test_published_statistics_are_the_published_values_exactly():
    assert {b: (CONFIGILM_MEANS[b], CONFIGILM_STDS[b]) for b in CONFIGILM_MEANS} == PUBLISHED_STATISTICS


@pytest.mark.parametrize("mode", ["per_sample", "batched", "native"])
def test_normalised_tensors_equal_configilm_plus_normalize(archive_dir, patches, mode):
    ds = ReBENDataset(archive_dir, bands="ALL", native=mode == "native")
    by_id = {p["id"]: p for p in patches}
    if mode == "per_sample":
        images, ids = [ds[i]["image"] for i in range(3)], [ds[i]["patch_id"] for i in range(3)]
    else:
        batch = ds.__getitems__([0, 1, 2]).collated
        images = ds.native_transform()(batch) if mode == "native" else batch["image"]
        ids = batch["patch_id"]
    for image, pid in zip(images, ids, strict=True):
        expected = configilm_normalised(by_id[pid])
        # float32 rounding: the dataset multiplies by 1/std where Normalize divides
        torch.testing.assert_close(image, expected, rtol=0, atol=4e-7 * float(expected.abs().max()))
    ds.close()


def test_rounded_statistics_would_be_off_by_more_than_float32_rounding(patches):
    p = patches[0]
    x = upsample(p["bands"]["B02"]).astype(np.float64)
    exact = (x - CONFIGILM_MEANS["B02"]) / CONFIGILM_STDS["B02"]
    rounded = (x - 438.37) / 607.03
    assert np.abs(exact - rounded).max() > 1e-5


def test_close_and_context_manager_release_the_environment(archive_dir, tmp_path):
    path = archive_dir / "shards" / "part-0"
    with ReBENDataset(archive_dir, bands="S2") as first:
        first[0]
        second = ReBENDataset(archive_dir, bands="S1", split="train")  # same shards, one process
        assert second[0]["image"].shape == (2, 120, 120)
        second.close()
        assert first[1]["image"].shape == (12, 120, 120)  # the other dataset's share stays open
    # everything released: py-lmdb itself may open the shard again in this process
    env = lmdb.open(str(path), readonly=True, lock=False)
    env.close()
    first.close()  # twice: harmless
    assert first[0]["image"].shape == (12, 120, 120)  # reading again reopens
    first.close()


def test_plain_lmdb_dataset_and_its_verify_next_to_each_other(plain):
    lmdb_dir, metadata = plain
    with ReBENDataset(lmdb_dir, metadata=metadata, include_snow_cloud=True) as ds:
        ds[0]
        assert verify_lmdb(lmdb_dir, metadata).ok  # shares the dataset's environment
        assert len(list(iter_lmdb(lmdb_dir))) == 3 * len(ds)


def test_empty_metadata_file_without_columns_is_accepted(plain, tmp_path):
    lmdb_dir, metadata = plain
    empty = tmp_path / "snow.parquet"
    pd.DataFrame().to_parquet(empty)
    assert pq.read_table(empty).num_columns == 0
    ds = ReBENDataset(lmdb_dir, metadata=[metadata[0], empty])
    assert len(ds) == len(pq.read_table(metadata[0]))
    assert len(ReBENDataset(lmdb_dir, metadata=[empty])) == 0
    ds.close()


def test_include_snowy_and_include_cloudy_separately(archive_dir, patches):
    snowy, cloudy = patches[SNOWY]["id"], patches[CLOUDY]["id"]
    cases = {
        (None, None, False): set(),
        (None, None, True): {snowy, cloudy},
        (True, None, False): {snowy},
        (None, True, False): {cloudy},
        (True, True, False): {snowy, cloudy},
        (False, None, True): {cloudy},
        (None, False, True): {snowy},
    }
    for (snowy_flag, cloudy_flag, combined), flagged in cases.items():
        ds = ReBENDataset(
            archive_dir, include_snowy=snowy_flag, include_cloudy=cloudy_flag, include_snow_cloud=combined
        )
        assert {snowy, cloudy} & set(ds.patch_ids) == flagged, (snowy_flag, cloudy_flag, combined)
        assert len(ds) == len(patches) - 2 + len(flagged)


# ---- reben verify LMDB_DIR --metadata ------------------------------------------------------------


def test_cli_verifies_a_bare_lmdb_with_its_metadata(plain, tmp_path):
    lmdb_dir, metadata = plain
    args = ["verify", str(lmdb_dir), "-q"] + [a for m in metadata for a in ("--metadata", str(m))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "OK (1 shard(s), 36 value(s))" in result.output
    assert "reference maps: all 12" in result.output
    alone = tmp_path / "alone"  # no metadata inside or beside it
    shutil.copytree(lmdb_dir, alone)
    result = CliRunner().invoke(app, ["verify", str(alone), "-q"])
    assert result.exit_code == 2 and "--metadata" in result.output


def test_bare_lmdb_faults_name_the_keys(patches, tmp_path):
    items = dict(kv for p in patches for kv in values_of(p))
    missing_s1 = patches[2]["s1"]
    missing_map = patches[3]["id"] + "_reference_map"
    del items[missing_s1], items[missing_map]
    stray = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_77_77"
    items[stray] = items[patches[0]["id"]]
    bad = patches[4]["id"]
    items[bad] = items[bad][:-2]  # a value cut short: does not decode as an S2 patch
    write_plain(tmp_path / "lmdb", sorted(items.items()))
    metadata = tmp_path / "metadata.parquet"
    pq.write_table(pa.Table.from_pylist(metadata_rows(patches), REBEN_SCHEMA), metadata)
    report = verify_lmdb(tmp_path / "lmdb", [metadata])
    by_key = {f.key: f.reason for f in report.faults}
    assert set(by_key) == {missing_s1, None, stray, bad}
    assert (
        by_key[missing_s1] == f"the metadata names this key (S1 partner of {patches[2]['id']}), but the LMDB lacks it"
    )
    # reference maps are optional, all or none: a partial set is one fault naming the missing ones
    n = len(patches)
    assert by_key[None] == f"reference maps: {n - 1} of {n} present, 1 missing: {missing_map}"
    assert by_key[stray] == "no metadata row names this key"
    with pytest.raises(codec.ValueDecodeError) as info:
        codec.check_value(bad, items[bad], "S2")
    assert by_key[bad] == str(info.value)
    assert report.values == 3 * len(patches) - 2 + 1


# ---- reused batch buffers ----------------------------------------------------------------------


def test_batches_reuse_buffers_only_once_nothing_holds_them(archive_dir):
    from reben_tools.learn.data.batches import collate

    ds = ReBENDataset(archive_dir, bands="ALL")
    first = collate(ds.__getitems__([0, 1]))["image"]
    kept = first.clone()
    view = first[1]  # a view keeps the buffer out of the pool as well
    del first
    second = collate(ds.__getitems__([2, 3]))["image"]
    assert second.data_ptr() != view.data_ptr() - view.storage_offset() * 4
    torch.testing.assert_close(view, kept[1], rtol=0, atol=0)  # never overwritten while held
    address = second.data_ptr()
    del second
    third = collate(ds.__getitems__([4, 5]))["image"]
    fourth_ids = ds.__getitems__([0, 1]).collated
    assert third.data_ptr() == address or fourth_ids["image"].data_ptr() == address  # a released buffer comes back
    torch.testing.assert_close(fourth_ids["image"], kept, rtol=0, atol=0)
    native = ds.native_transform()
    nds = ReBENDataset(archive_dir, bands="ALL", native=True)
    out1 = native(nds.__getitems__([0, 1]).collated)
    out2 = native(nds.__getitems__([2, 3]).collated)
    assert out1.data_ptr() != out2.data_ptr()
    torch.testing.assert_close(out1, kept, rtol=0, atol=0)


def test_training_takes_include_snowy_and_include_cloudy(archive_dir, patches, tmp_path):
    """``reben train --include-snowy`` reads the snowy patch and not the cloudy one, and the run records both flags."""
    from reben_tools.learn.data.loaders import open_dataset

    snowy, cloudy = patches[SNOWY]["id"], patches[CLOUDY]["id"]
    with open_dataset(archive_dir, ("VV", "VH"), include_snowy=True) as ds:
        assert snowy in ds.patch_ids and cloudy not in ds.patch_ids
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--archive",
            str(archive_dir),
            "--bands",
            "S1",
            "--model",
            "resnet_micro",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--max-steps",
            "1",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-test",
            "--include-snowy",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["include_snowy"] is True and config["include_cloudy"] is None
