"""``reben pretrain`` and ``reben embed`` on a small generated archive: run directory, resume,
NaN stop, ``--init``, published export, embeddings file and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_croma import hand_built_checkpoint
from training_archive import build_learnable_archive
from typer.testing import CliRunner

import reben_tools.learn.training.pretrain as pretrain_module
from reben_tools.cli import app
from reben_tools.format.bands import BAND_GROUPS, PUBLISHED_STATISTICS
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.learn.evaluation.embed import embed_archive
from reben_tools.learn.models.croma import CONFIGS, CROMA, PUBLISHED_PARTS
from reben_tools.learn.models.croma_layout import load_published
from reben_tools.learn.models.encoders import EncoderError, load_encoder
from reben_tools.learn.runtime.checkpoints import CheckpointError
from reben_tools.learn.runtime.config import TrainingError
from reben_tools.learn.training.pretrain import PretrainConfig, pretrain, read_init

COUNTS = {"train": 16, "validation": 8, "test": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    return build_learnable_archive(tmp_path_factory.mktemp("archive") / "ARCHIVE", counts=COUNTS, shards=1)


def config(archive_dir, out, **overrides) -> PretrainConfig:
    base = dict(
        archive=str(archive_dir),
        model="croma_micro",
        out=str(out),
        epochs=2,
        batch_size=8,
        lr=1e-3,
        warmup_steps=1,
        workers=0,
        device="cpu",
        progress=False,
    )
    return PretrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def run(archive, tmp_path_factory):
    """2 epochs x 2 steps through the CLI."""
    out = tmp_path_factory.mktemp("runs") / "full"
    result = CliRunner().invoke(
        app,
        [
            "pretrain",
            "--archive",
            str(archive["root"]),
            "--model",
            "croma_micro",
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--warmup-steps",
            "1",
            "--device",
            "cpu",
            "--workers",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_run_directory_logs_every_step_and_exports_published_layout(run):
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    for key in ("contrastive", "reconstruction", "temperature", "acc_s1_to_s2", "acc_s2_to_s1", "lr"):
        assert all(math.isfinite(s[key]) for s in steps), key
    assert all(0 <= s["acc_s1_to_s2"] <= 1 for s in steps)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["epochs"][0]["train_samples"] == 16 and "contrastive" in metrics["epochs"][0]["validation"]
    assert 0 <= metrics["epochs"][0]["data_wait_fraction"] <= 1
    assert (run / "curves.png").stat().st_size > 0
    published = torch.load(run / "croma_published.pt", weights_only=True)
    assert sorted(published) == sorted(PUBLISHED_PARTS)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    model = CROMA(CONFIGS["croma_micro"])
    load_published(model, published, "croma_published.pt")  # strict: no missing or unexpected key
    for part in PUBLISHED_PARTS:  # last.pt carries the same five parts at its top level
        assert all(torch.equal(last[part][k], published[part][k]) for k in published[part])
    config_json = json.loads((run / "config.json").read_text())
    assert config_json["input"]["scaling"] == "croma_2std"
    assert config_json["input"]["s2_bands"] == list(BAND_GROUPS["S2"])
    assert config_json["input"]["statistics"]["VV"] == list(PUBLISHED_STATISTICS["VV"])


def test_resume_continues_exactly(run, archive, tmp_path):
    out = tmp_path / "resumed"
    pretrain(config(archive["root"], out, max_steps=3))
    assert json.loads((out / "metrics.json").read_text())["status"] == "stopped_at_max_steps"
    with pytest.raises(CheckpointError, match="differs in: --lr"):
        pretrain(config(archive["root"], out, lr=5e-3), resume=True, given={"lr"})
    pretrain(config(archive["root"], out), resume=True)
    a = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    for part in (*PUBLISHED_PARTS, "decoder", "contrast"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    assert [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(archive, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = pretrain_module.croma_losses

    def poisoned(outputs, group=None):
        calls["n"] += outputs["pred"].requires_grad  # count training steps, not validation batches
        losses = real(outputs, group)
        if calls["n"] == 3 and outputs["pred"].requires_grad:
            losses["contrastive"] = losses["contrastive"] * float("nan")
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(pretrain_module, "croma_losses", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError) as err:
        pretrain(config(archive["root"], out, checkpoint_every=1))
    msg = str(err.value)
    assert "\n" not in msg and "at step 3" in msg and "(step 2) is the last good checkpoint" in msg
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["step"] == 2
    assert all(torch.isfinite(v).all() for part in PUBLISHED_PARTS for v in state[part].values())


def test_init_from_published_weights_and_wrong_size(tmp_path):
    micro = CONFIGS["croma_micro"]
    path = tmp_path / "CROMA_micro.pt"
    ckpt = hand_built_checkpoint(micro.dim, micro.depth)
    torch.save(ckpt, path)
    model = CROMA(micro, pretraining=True)
    read_init(str(path), model)
    assert torch.equal(model.s2_encoder.linear_input.weight, ckpt["s2_encoder"]["linear_input.weight"])
    torch.save(hand_built_checkpoint(32, micro.depth), tmp_path / "small.pt")
    with pytest.raises(CheckpointError) as err:
        read_init(str(tmp_path / "small.pt"), model)
    assert str(err.value) == (
        f"{tmp_path / 'small.pt'}: s1_encoder.linear_input.weight has shape (32, 128), croma_micro expects (64, 128)"
    )


def _croma_reference_inputs(archive_root, split):
    """Raw bands through the per-sample dataset path, scaled by CROMA's rule written out here."""
    ds = ReBENDataset(archive_root, split=split, bands="ALL", normalisation=None)
    raw = torch.stack([ds[i]["image"] for i in range(len(ds))])
    mean = torch.tensor([PUBLISHED_STATISTICS[b][0] for b in BAND_GROUPS["ALL"]]).view(1, -1, 1, 1)
    std = torch.tensor([PUBLISHED_STATISTICS[b][1] for b in BAND_GROUPS["ALL"]]).view(1, -1, 1, 1)
    scaled = ((raw - (mean - 2 * std)) / (4 * std)).clamp(0, 1)
    return ds.patch_ids, scaled[:, :2], scaled[:, 2:], ds.labels


def test_embed_writes_the_schema_and_the_reference_embeddings(run, archive, tmp_path):
    out = tmp_path / "emb.parquet"
    result = CliRunner().invoke(
        app,
        [
            "embed",
            "--archive",
            str(archive["root"]),
            "--encoder",
            str(run),
            "--split",
            "test",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "0",
            "--batch-size",
            "3",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == ["patch_id", "split", "labels", "s1", "s2", "joint"]
    assert str(table.schema.field("joint").type) == "fixed_size_list<element: float>[64]"
    meta = json.loads(table.schema.metadata[b"reben_tools.encoder"])
    assert meta["model"] == "croma_micro" and meta["dim"] == 64 and meta["input"]["scaling"] == "croma_2std"
    ids, s1, s2, _ = _croma_reference_inputs(archive["root"], "test")
    assert table.column("patch_id").to_pylist() == ids == sorted(archive["patch_ids"]["test"])
    assert set(table.column("split").to_pylist()) == {"test"}
    assert table.column("labels").to_pylist() == [archive["labels"][p] for p in ids]
    model = CROMA(CONFIGS["croma_micro"]).eval()
    load_published(model, torch.load(run / "croma_published.pt", weights_only=True))
    with torch.no_grad():
        expected = model.embed(s1=s1, s2=s2)
    for c in ("s1", "s2", "joint"):
        got = torch.tensor(np.asarray(table.column(c).to_pylist(), dtype=np.float32))
        torch.testing.assert_close(got, expected[c], rtol=1e-4, atol=1e-5)


def test_embed_bad_input_and_one_modality(archive, tmp_path):
    micro = CONFIGS["croma_micro"]
    path = tmp_path / "CROMA_micro.pt"
    torch.save(hand_built_checkpoint(micro.dim, micro.depth), path)
    s2_only = build_learnable_archive(tmp_path / "s2only", counts={"train": 4, "test": 4}, shards=1, with_s1=False)
    encoder = load_encoder(f"croma_micro:{path}")
    with pytest.raises(TrainingError) as err:
        embed_archive(s2_only["root"], encoder, tmp_path / "x.parquet", workers=0, progress=False)
    assert "\n" not in str(err.value) and str(s2_only["root"]) in str(err.value) and "S1" in str(err.value)
    summary = embed_archive(s2_only["root"], encoder, tmp_path / "s2.parquet", bands="S2", workers=0, progress=False)
    assert summary["columns"] == ["s2"] and summary["rows"] == 8
    assert pq.read_table(tmp_path / "s2.parquet").column_names == ["patch_id", "split", "labels", "s2"]
    with pytest.raises(TrainingError, match="reads all of"):
        embed_archive(archive["root"], encoder, tmp_path / "y.parquet", bands="10m", workers=0, progress=False)
    with pytest.raises(EncoderError) as err:
        load_encoder(f"croma_base:{path}")
    assert (
        str(err.value) == f"{path}: s1_encoder.linear_input.weight has shape (64, 128), croma_base expects (768, 128)"
    )
    torch.save({"s1_encoder": {}, "model": {}}, tmp_path / "other.pt")
    with pytest.raises(EncoderError, match=r"other\.pt: not a CROMA checkpoint: missing part 's1_GAP_FFN'"):
        load_encoder(f"croma_base:{tmp_path / 'other.pt'}")
    with pytest.raises(EncoderError, match="unknown encoder 'crome_base'"):
        load_encoder(f"crome_base:{path}")
    result = CliRunner().invoke(
        app,
        [
            "embed",
            "--archive",
            str(s2_only["root"]),
            "--encoder",
            f"croma_micro:{path}",
            "--out",
            str(tmp_path / "z.parquet"),
            "--workers",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 1 and result.output.count("\n") == 1 and result.output.startswith("error:")


def test_pretrain_needs_both_modalities(tmp_path):
    s2_only = build_learnable_archive(
        tmp_path / "s2only", counts={"train": 4, "validation": 2}, shards=1, with_s1=False
    )
    with pytest.raises(TrainingError) as err:
        pretrain(config(s2_only["root"], tmp_path / "r"))
    assert "\n" not in str(err.value) and str(s2_only["root"]) in str(err.value) and "S1" in str(err.value)


def test_load_encoder_is_a_lazy_top_level_export():
    code = (
        "import sys, reben_tools; assert 'torch' not in sys.modules; "
        "from reben_tools.learn.models.encoders import load_encoder; assert reben_tools.load_encoder is load_encoder"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_embed_from_a_reben_train_run(archive, tmp_path):
    from reben_tools.learn.models.restore import model_from_checkpoint
    from reben_tools.learn.runtime.checkpoints import load_checkpoint
    from reben_tools.learn.runtime.config import TrainConfig
    from reben_tools.learn.training.loop import train

    out = tmp_path / "train-run"
    train(
        TrainConfig(
            archive=str(archive["root"]),
            bands="S1_10m_20m",
            model="resnet_micro",
            out=str(out),
            epochs=1,
            batch_size=8,
            workers=0,
            device="cpu",
            progress=False,
            evaluate_test=False,
            model_kwargs=dict(stem_width=4, widths=(4, 8, 8, 16)),
        )
    )
    encoder = load_encoder(out)
    assert encoder.input.scaling == "zscore" and encoder.input.s1_bands == BAND_GROUPS["S1"]
    summary = embed_archive(archive["root"], encoder, tmp_path / "e.parquet", split="test", workers=0, progress=False)
    assert summary["columns"] == ["joint"]
    got = torch.tensor(np.asarray(pq.read_table(tmp_path / "e.parquet").column("joint").to_pylist(), dtype=np.float32))
    model = model_from_checkpoint(load_checkpoint(out / "checkpoints" / "best.pt"), "best.pt").eval()
    ds = ReBENDataset(archive["root"], split="test", bands="S1_10m_20m", normalisation="published")
    with torch.no_grad():
        expected = model.forward_features(torch.stack([ds[i]["image"] for i in range(len(ds))]))
    assert got.shape == (8, encoder.dim)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_probe_with_an_encoder_equals_embed_then_probe_embeddings(run, archive, tmp_path):
    """``reben probe --archive A --encoder SPEC`` embeds on the fly and probes exactly as the two steps do."""
    runner = CliRunner()
    emb = tmp_path / "emb.parquet"
    common = ["--device", "cpu", "--workers", "0", "-q"]
    assert (
        runner.invoke(
            app, ["embed", "--archive", str(archive["root"]), "--encoder", str(run), "--out", str(emb), *common]
        ).exit_code
        == 0
    )
    two_steps = runner.invoke(
        app, ["probe", "--embeddings", str(emb), "--out", str(tmp_path / "a"), "--probes", "linear", "--no-map", "-q"]
    )
    assert two_steps.exit_code == 0, two_steps.output
    on_the_fly = runner.invoke(
        app,
        [
            "probe",
            "--archive",
            str(archive["root"]),
            "--encoder",
            str(run),
            "--out",
            str(tmp_path / "b"),
            "--probes",
            "linear",
            "--no-map",
            *common,
        ],
    )
    assert on_the_fly.exit_code == 0, on_the_fly.output
    assert (tmp_path / "b" / "embeddings.parquet").is_file()
    first = json.loads((tmp_path / "a" / "probe.json").read_text())
    second = json.loads((tmp_path / "b" / "probe.json").read_text())
    for run_a, run_b in zip(first["runs"], second["runs"], strict=True):
        for metrics in (run_a["probes"]["linear"], run_b["probes"]["linear"]):
            metrics.pop("fit_seconds")
        assert run_a == run_b
    refused = runner.invoke(
        app, ["probe", "--embeddings", str(emb), "--encoder", str(run), "--out", str(tmp_path / "c")]
    )
    assert refused.exit_code == 2 and "--encoder goes with --archive alone" in refused.output
