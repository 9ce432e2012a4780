"""Model shapes for every architecture and band group, fusion, regularisation and bad arguments."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from reben_tools.format.bands import BAND_GROUPS
from reben_tools.learn.models.backbones import build_encoder, model_names
from reben_tools.learn.models.blocks import DropPath, PatchEmbed
from reben_tools.learn.models.classifier import build_model, build_model_from_config

SMALL_MODELS = ["resnet_micro", "vit_micro_patch8", "vit_micro_patch15", "mixer_micro_patch16", "convnext_micro"]
GROUPS = ["S1", "10m_20m", "S1_10m_20m", "ALL"]


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_early_fusion_output_shape_for_each_band_group(name, group):
    torch.manual_seed(0)
    model = build_model(name, group).eval()
    channels = len(BAND_GROUPS[group])
    assert model.config["in_channels"] == channels
    x = torch.randn(3, channels, 120, 120)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
    assert logits.shape == (3, 19) and logits.dtype == torch.float32
    assert feats.shape == (3, model.num_features)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("group", ["S1_10m_20m", "ALL"])
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_late_fusion_one_encoder_per_modality(name, group):
    model = build_model(name, group, fusion="late").eval()
    assert set(model.encoders) == {"S1", "S2"}
    assert model.encoders["S1"].in_channels == 2
    assert model.encoders["S2"].in_channels == len(BAND_GROUPS[group]) - 2
    assert model.num_features == model.encoders["S1"].num_features + model.encoders["S2"].num_features
    with torch.no_grad():
        assert model(torch.randn(2, len(BAND_GROUPS[group]), 120, 120)).shape == (2, 19)


def test_late_fusion_routes_s1_channels_to_the_s1_encoder():
    model = build_model("resnet_micro", "S1_10m_20m", fusion="late").eval()
    x = torch.randn(2, 12, 120, 120)
    with torch.no_grad():
        s1_feats = model.encoders["S1"](x[:, :2])
        fused = model.forward_features(x)
        changed = x.clone()
        changed[:, 2:] = 0  # S2 channels only
        fused_changed = model.forward_features(changed)
    n1 = model.encoders["S1"].num_features
    torch.testing.assert_close(fused[:, :n1], s1_feats)
    torch.testing.assert_close(fused_changed[:, :n1], s1_feats)  # S1 part ignores the S2 channels
    assert not torch.allclose(fused_changed[:, n1:], fused[:, n1:])


def test_late_fusion_needs_two_modalities():
    with pytest.raises(ValueError, match="late fusion needs bands of both S1 and S2"):
        build_model("resnet_micro", "10m_20m", fusion="late")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "vit_base_patch8", "mixer_base_patch16", "convnextv2_base"])
def test_published_size_models(name):
    model = build_model(name, "S1_10m_20m").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 12, 120, 120)).shape == (2, 19)


def test_resnet50_has_the_standard_parameter_count():
    model = build_model("resnet50", in_channels=3, num_classes=1000)
    # torchvision's resnet50: 25,557,032 parameters with 3 input channels and 1000 classes
    assert sum(p.numel() for p in model.parameters()) == 25_557_032


def test_vit_patch_size_sets_the_token_grid():
    assert build_encoder("vit_micro_patch8", 4).patch_embed.grid == 15
    assert build_encoder("vit_micro", 4, patch_size=12).patch_embed.grid == 10
    embed = PatchEmbed(2, 8, 16)  # 120 is not a multiple of 16: padded to 128, 8x8 tokens
    assert embed(torch.randn(1, 2, 120, 120)).shape == (1, 64, 8)
    assert build_encoder("vit_micro_patch16", 4).pos_embed.shape == (1, 65, 32)


def test_dropout_and_drop_path_are_active_in_training_only():
    torch.manual_seed(0)
    model = build_model("vit_micro_patch15", "S1", dropout=0.5, drop_path=0.5)
    assert model.dropout.p == 0.5
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert max(rates) == 0.5 and min(rates) == 0.0  # linear over depth
    x = torch.randn(4, 2, 120, 120)
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_drop_path_keeps_the_expectation():
    torch.manual_seed(0)
    layer = DropPath(0.25).train()
    out = layer(torch.ones(20_000, 1))
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)


def test_config_round_trip_rebuilds_the_same_architecture():
    model = build_model("mixer_micro_patch16", "ALL", fusion="late", dropout=0.1, depth=1)
    clone = build_model_from_config(model.config)
    clone.load_state_dict(model.state_dict())  # strict: same parameter names and shapes
    assert clone.config == model.config


def test_bad_arguments_say_what_to_change():
    with pytest.raises(ValueError, match="unknown model 'resnet5'"):
        build_model("resnet5", "S1")
    with pytest.raises(ValueError, match="unknown band group"):
        build_model("resnet_micro", "S3")
    with pytest.raises(ValueError, match="unknown fusion"):
        build_model("resnet_micro", "S1", fusion="middle")
    with pytest.raises(ValueError, match="in_channels=3 but 2 bands"):
        build_model("resnet_micro", "S1", in_channels=3)
    assert "resnet50" in model_names() and "vit_base_patch8" in model_names()


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_model_without_timm_says_how_to_get_it():
    with pytest.raises(ValueError, match="needs timm"):
        build_model("timm:resnet18", "S1")


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
def test_timm_backbone():
    model = build_model("timm:resnet18", "S1_10m_20m").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 12, 120, 120)).shape == (2, 19)
