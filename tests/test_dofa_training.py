"""DOFA in the training path: classifiers on any band group, --init from published-layout
weights, layer-wise lr decay, on a small generated archive (CPU, real LMDB/parquet)."""

from __future__ import annotations

import json

import pytest
import torch
from dofa_reference import hand_built_checkpoint
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.learn.models.classifier import build_model
from reben_tools.learn.models.dofa import DOFAEncoder, init_encoders
from reben_tools.learn.runtime.checkpoints import load_checkpoint
from reben_tools.learn.runtime.config import TrainConfig, TrainingError
from reben_tools.learn.runtime.schedule import layer_decay_multipliers
from reben_tools.learn.training.loop import train

COUNTS = {"train": 16, "validation": 8, "test": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    return build_learnable_archive(tmp_path_factory.mktemp("archive") / "ARCHIVE", counts=COUNTS)


@pytest.fixture(scope="module")
def micro_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "dofa_micro_published_layout.pth"
    state = hand_built_checkpoint(64, 2, seed=11)
    torch.save(state, path)
    return path, state


def test_one_dofa_classifier_per_band_group() -> None:
    x = torch.randn(2, 14, 120, 120)
    for group, channels in (("ALL", 14), ("S2", 12), ("S1", 2), ("RGB", 3)):
        model = build_model("dofa_micro", group, dropout=0.0, drop_path=0.0).eval()
        assert model(x[:, :channels]).shape == (2, 19)
        assert model.encoders["all"].in_channels == channels
    late = build_model("dofa_micro", "S1_10m_20m", fusion="late")
    assert late.encoders["S1"].bands == ("VV", "VH") and late.encoders["S2"].bands[0] == "B02"
    with pytest.raises(ValueError, match="dofa_micro needs band names, not a channel count"):
        build_model("dofa_micro", in_channels=4)


def test_layer_decay_multipliers_per_layer() -> None:
    names = [
        "encoders.all.dofa.cls_token",
        "encoders.all.dofa.patch_embed.fclayer.w1.weight",
        "encoders.all.dofa.blocks.0.attn.qkv.weight",
        "encoders.all.dofa.blocks.1.mlp.fc2.bias",
        "encoders.all.dofa.fc_norm.weight",
        "head.weight",
    ]
    assert layer_decay_multipliers(names, 0.5) == {
        names[0]: 0.125,
        names[1]: 0.125,
        names[2]: 0.25,
        names[3]: 0.5,
        names[4]: 1.0,
        names[5]: 1.0,
    }
    with pytest.raises(ValueError, match="numbered blocks"):
        layer_decay_multipliers(["encoders.all.stem.weight", "head.weight"], 0.75)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\], got 1.5"):
        layer_decay_multipliers(names, 1.5)


def test_init_loads_published_weights_into_every_dofa_encoder(micro_weights) -> None:
    path, state = micro_weights
    late = build_model("dofa_micro", "S1_10m_20m", fusion="late")
    assert init_encoders(late, f"dofa_micro:{path}") == 2
    for encoder in (late.encoders["S1"].dofa, late.encoders["S2"].dofa):
        got = encoder.state_dict()
        for key in ("pos_embed", "patch_embed.weight_generator.fc_weight.weight", "blocks.1.mlp.fc2.bias"):
            assert torch.equal(got[key], state[key])
    with pytest.raises(ValueError, match="weights for dofa_base_patch16, but the model is dofa_micro"):
        init_encoders(late, f"dofa_base:{path}")
    with pytest.raises(ValueError, match="not a DOFA weight spec"):
        init_encoders(late, f"croma_base:{path}")
    with pytest.raises(FileNotFoundError, match=r"nope\.pth: no such DOFA checkpoint"):
        init_encoders(late, "dofa_micro:nope.pth")
    with pytest.raises(ValueError, match="the model has no DOFA encoder"):
        init_encoders(build_model("resnet_micro", "RGB"), f"dofa_micro:{path}")


def test_fine_tune_from_init_with_layer_decay(archive, micro_weights, tmp_path) -> None:
    path, state = micro_weights
    out = tmp_path / "run"
    config = TrainConfig(
        archive=str(archive["root"]),
        bands="RGB",
        model="dofa_micro",
        out=str(out),
        epochs=1,
        batch_size=8,
        lr=1e-2,
        warmup_steps=0,
        workers=0,
        device="cpu",
        progress=False,
        evaluate_test=False,
        init=f"dofa_micro:{path}",
        layer_decay=0.5,
        max_steps=1,
    )
    train(config)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    groups = ckpt["optimizer"]["param_groups"]
    # head + fc_norm, block 1, block 0, embeddings: lr * 0.5^k, largest first
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-2, 5e-3, 2.5e-3, 1.25e-3])
    weights = ckpt["model"]
    assert torch.equal(weights["encoders.all.dofa.pos_embed"], state["pos_embed"])  # fixed, loaded from --init
    moved = (weights["encoders.all.dofa.blocks.1.mlp.fc2.weight"] - state["blocks.1.mlp.fc2.weight"]).abs().max()
    assert 0 < moved <= 1e-2 * 1.01  # one Adam step of at most lr moves every weight by at most lr
    assert ckpt["train_config"]["init"] == f"dofa_micro:{path}"

    bad = TrainConfig(**{**config.__dict__, "out": str(tmp_path / "bad"), "init": f"dofa_large:{path}"})
    with pytest.raises(TrainingError, match=r"--init: .*weights for dofa_large_patch16, but the model is dofa_micro"):
        train(bad)


def test_cli_train_dofa_with_init_and_resize(archive, micro_weights, tmp_path) -> None:
    path, _ = micro_weights
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--archive",
            str(archive["root"]),
            "--out",
            str(out),
            "--model",
            "dofa_micro",
            "--bands",
            "S1",
            "--init",
            f"dofa_micro:{path}",
            "--layer-decay",
            "0.75",
            "--input-mode",
            "resize",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-steps",
            "1",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-test",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "config.json").read_text())
    assert stored["model_kwargs"] == {"input_mode": "resize"}
    assert stored["layer_decay"] == 0.75 and stored["bands"] == ["VV", "VH"]
    assert DOFAEncoder("dofa_micro", input_mode="resize").input_mode == "resize"
