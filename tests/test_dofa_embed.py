"""DOFA through ``load_encoder`` / ``reben embed`` / ``reben probe --embeddings``: any band group,
embeddings equal to the independent reference forward pass (tests/dofa_reference.py)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from dofa_reference import hand_built_checkpoint, reference_features
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.data import ReBENDataset
from reben_tools.format.bands import BAND_GROUPS, PUBLISHED_STATISTICS
from reben_tools.learn.models.encoders import EncoderError, load_encoder

COUNTS = {"train": 12, "validation": 4, "test": 6}
S1_UM = [5.405, 5.405]
S2_UM = [0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.610, 2.190]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    return build_learnable_archive(tmp_path_factory.mktemp("archive") / "ARCHIVE", counts=COUNTS, shards=1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "DOFA_micro_layout.pth"
    state = hand_built_checkpoint(64, 2, seed=21)
    torch.save(state, path)
    return path, state


def test_load_encoder_embeds_s1_s2_joint_like_the_reference(weights) -> None:
    path, state = weights
    encoder = load_encoder(f"dofa_micro:{path}")
    gen = torch.Generator().manual_seed(22)
    s1, s2 = torch.randn(2, 2, 120, 120, generator=gen), torch.randn(2, 12, 120, 120, generator=gen)
    with torch.no_grad():
        out = encoder.embed(s1=s1, s2=s2)
        assert set(out) == {"s1", "s2", "joint"} and encoder.dim == 64
        torch.testing.assert_close(out["s1"], reference_features(state, s1, S1_UM, heads=4), rtol=0, atol=2e-5)
        torch.testing.assert_close(out["s2"], reference_features(state, s2, S2_UM, heads=4), rtol=0, atol=2e-5)
        joint = reference_features(state, torch.cat([s1, s2], 1), S1_UM + S2_UM, heads=4)
        torch.testing.assert_close(out["joint"], joint, rtol=0, atol=2e-5)
        encoder.use_bands("RGB")
        rgb = encoder.embed(s1=s1, s2=s2)
        assert set(rgb) == {"s2", "joint"} and rgb["joint"] is rgb["s2"]
        want = reference_features(state, s2[:, [3, 2, 1]], [0.665, 0.560, 0.490], heads=4)
        torch.testing.assert_close(rgb["joint"], want, rtol=0, atol=2e-5)
        encoder.use_bands(["VH", "B08"])  # any list, in its own order
        mixed = encoder.embed(s1=s1, s2=s2)
        want = reference_features(state, torch.stack([s1[:, 1], s2[:, 7]], 1), [5.405, 0.842], heads=4)
        torch.testing.assert_close(mixed["joint"], want, rtol=0, atol=2e-5)
        assert encoder.embed(s2=s2).keys() == {"s2", "joint"}  # S1 not passed: joint of the bands given
    assert encoder.describe()["wavelengths_um"] == {"VH": 5.405, "B08": 0.842}


@pytest.mark.parametrize(
    "bands,column_set,channels",
    [
        ("S1", ["s1", "joint"], ["VV", "VH"]),
        ("B04,B03,B02", ["s2", "joint"], ["B04", "B03", "B02"]),
        ("ALL", ["s1", "s2", "joint"], list(BAND_GROUPS["ALL"])),
    ],
)
def test_reben_embed_any_band_group(archive, weights, tmp_path, bands, column_set, channels) -> None:
    path, state = weights
    out = tmp_path / "emb.parquet"
    result = CliRunner().invoke(
        app,
        [
            "embed",
            "--archive",
            str(archive["root"]),
            "--encoder",
            f"dofa_micro:{path}",
            "--bands",
            bands,
            "--split",
            "test",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--batch-size",
            "4",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == ["patch_id", "split", "labels", *column_set]
    meta = json.loads(table.schema.metadata[b"reben_tools.encoder"])
    assert meta["family"] == "dofa" and meta["bands"]["model"] == channels and meta["input_mode"] == "interpolate"
    # reference: the per-sample dataset path, z-scored with the published statistics written out here
    ds = ReBENDataset(archive["root"], split="test", bands=channels, normalisation=None)
    raw = torch.stack([ds[i]["image"] for i in range(len(ds))])
    mean = torch.tensor([PUBLISHED_STATISTICS[b][0] for b in channels]).view(1, -1, 1, 1)
    std = torch.tensor([PUBLISHED_STATISTICS[b][1] for b in channels]).view(1, -1, 1, 1)
    waves = {"VV": 5.405, "VH": 5.405, **dict(zip(BAND_GROUPS["S2"], S2_UM, strict=True))}
    with torch.no_grad():
        want = reference_features(state, (raw - mean) / std, [waves[b] for b in channels], heads=4)
    assert table.column("patch_id").to_pylist() == ds.patch_ids
    got = torch.tensor(np.asarray(table.column("joint").to_pylist(), dtype=np.float32))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_probe_on_dofa_embeddings(archive, weights, tmp_path) -> None:
    path, _ = weights
    emb = tmp_path / "all.parquet"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "embed",
            "--archive",
            str(archive["root"]),
            "--encoder",
            f"dofa_micro:{path}",
            "--bands",
            "S2",
            "--out",
            str(emb),
            "--device",
            "cpu",
            "--workers",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["probe", "--embeddings", str(emb), "--out", str(tmp_path / "probe"), "--no-map", "--probes", "linear", "-q"],
    )
    assert result.exit_code == 0, result.output
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probe["modality"] == "joint" and probe["features"] == 64 and probe["test_samples"] == COUNTS["test"]
    assert 0.0 <= probe["probes"]["linear"]["average_precision_macro"] <= 1.0


def test_dofa_encoder_errors_name_band_and_key(archive, weights, tmp_path) -> None:
    path, _ = weights
    encoder = load_encoder(f"dofa_micro:{path}")
    with pytest.raises(EncoderError, match="unknown band 'B10'"):
        encoder.use_bands(["B04", "B10"])
    with pytest.raises(EncoderError, match="band 'SCL' has no central wavelength"):
        encoder.use_bands(["SCL"])
    with pytest.raises(EncoderError, match=r"key 'cls_token' has shape \(1, 1, 64\) but dofa_base_patch16 expects"):
        load_encoder(f"dofa_base:{path}")
    result = CliRunner().invoke(
        app,
        [
            "embed",
            "--archive",
            str(archive["root"]),
            "--encoder",
            f"dofa_micro:{path}",
            "--bands",
            "B04,B10",
            "--out",
            str(tmp_path / "x.parquet"),
            "-q",
        ],
    )
    assert result.exit_code == 1 and "unknown band 'B10'" in result.output
