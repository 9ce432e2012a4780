"""DOFA encoder: published checkpoint layout, features against a reference forward pass written
from DOFA's current published code (tests/dofa_reference.py) at 224 and 120 px, invariance to the
band order, 120x120 handling, wavelength table and the bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from dofa_reference import (
    dynamic_kernels,
    hand_built_checkpoint,
    published_layout,
    reference_features,
    reference_tokens,
    resample_pos_embed,
    resize_input,
)

from reben_tools.format.bands import CENTRAL_WAVELENGTH_UM, WAVELENGTH_SOURCE, wavelengths_for
from reben_tools.learn.models.dofa import (
    DOFAEncoder,
    default_input_mode,
    input_mode_for_init,
    load_dofa,
    load_dofa_state,
)
from reben_tools.learn.models.encoders import load_encoder

S2_UM = [0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.610, 2.190]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "name,embed,depth", [("dofa_base_patch16", 768, 12), ("dofa_large_patch16", 1024, 24), ("dofa_micro", 64, 2)]
)
def test_state_dict_matches_published_layout(name: str, embed: int, depth: int) -> None:
    with torch.device("meta"):
        model = DOFAEncoder(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = published_layout(embed, depth)
    expected.update({"fc_norm.weight": (embed,), "fc_norm.bias": (embed,)})
    assert got == expected
    if name == "dofa_base_patch16":
        # ViT-B/16 encoder + generator: 111,312,128 values (fc_weight alone is 196608 x 129)
        assert sum(math.prod(s) for s in got.values()) == 111_312_128


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest absolute difference over the largest reference magnitude."""
    return ((got - want).abs().max() / want.abs().max()).item()


def test_hand_built_checkpoint_loads_and_reports_its_extras(tmp_path) -> None:
    state = hand_built_checkpoint(64, 2, seed=1)
    report = load_dofa_state(DOFAEncoder("dofa_micro"), state)
    assert report == {
        "ignored": ["mask_token", "norm.bias", "norm.weight", "projector.bias", "projector.weight"],
        "defaulted": ["fc_norm.bias", "fc_norm.weight"],
    }


def test_features_equal_the_published_forward_pass_at_224_and_120(tmp_path) -> None:
    """One shared state dict in the published layout; our features and tokens against the reference
    written from DOFA's current wave_dynamic_layer.py / models_dwv.py, to 1e-5 relative."""
    state = hand_built_checkpoint(64, 2, seed=1)
    path = tmp_path / "DOFA_micro_published_layout.pth"
    torch.save(state, path)
    interpolating = load_dofa("dofa_micro", path, input_mode="interpolate")
    resizing = load_dofa("dofa_micro", path, input_mode="resize")
    gen = torch.Generator().manual_seed(2)
    waves = [0.665, 0.56, 0.49, 1.61, 3.75]
    x224 = torch.randn(3, len(waves), 224, 224, generator=gen)
    x120 = torch.randn(3, len(waves), 120, 120, generator=gen)
    with torch.no_grad():
        # the pretraining size: both modes run the published forward pass unchanged
        want = reference_features(state, x224, waves, heads=4)
        assert _relative(interpolating(x224, waves), want) < 1e-5
        assert _relative(resizing(x224, waves), want) < 1e-5
        tokens = reference_tokens(state, x224, waves, heads=4)
        assert _relative(interpolating.forward_tokens(x224, waves), tokens) < 1e-5
        # 120 px, resize: the published preprocessing (resize to 224), then the published pass
        want = reference_features(state, resize_input(x120), waves, heads=4)
        assert _relative(resizing(x120, waves), want) < 1e-5
        # 120 px, interpolate: the published pass with pos_embed resampled to the 7x7 grid
        small = resample_pos_embed(state, 7)
        assert _relative(interpolating(x120, waves), reference_features(small, x120, waves, heads=4)) < 1e-5
        tokens = reference_tokens(small, x120, waves, heads=4)
        assert tokens.shape == (3, 50, 64)  # padding 1 and stride 16 give 7 x 7 patches, plus the class token
        assert _relative(interpolating.forward_tokens(x120, waves), tokens) < 1e-5


def test_generated_kernels_are_read_as_c_p_p_d() -> None:
    """The patch-embedding weight itself, against the published (C, p, p, D) -> (D, C, p, p) reading."""
    state = hand_built_checkpoint(64, 2, seed=8)
    model = DOFAEncoder("dofa_micro").eval()
    load_dofa_state(model, state)
    waves = torch.tensor([0.49, 0.842, 3.75])
    with torch.no_grad():
        weight, bias = model.patch_embed.kernels(waves)
        want_weight, want_bias = dynamic_kernels(state, waves)
    assert weight.shape == want_weight.shape == (64, 3, 16, 16)
    assert _relative(weight, want_weight) < 1e-5 and _relative(bias, want_bias) < 1e-5


def test_output_does_not_depend_on_band_order() -> None:
    """The generator makes one kernel per band: permuting bands together with their wavelengths
    leaves tokens and features unchanged (the first release's (D, C, p, p) reading did not)."""
    state = hand_built_checkpoint(64, 2, seed=9)
    model = DOFAEncoder("dofa_micro").eval()
    load_dofa_state(model, state)
    bands = ["VV", "VH", "B02", "B03", "B04", "B08", "B11", "B12"]
    x = torch.randn(2, len(bands), 224, 224, generator=torch.Generator().manual_seed(10))
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    waves = torch.tensor(wavelengths_for(bands))
    with torch.no_grad():
        base = model.forward_tokens(x, waves)
        permuted = model.forward_tokens(x[:, order], waves[order])
        assert _relative(permuted, base) < 1e-5
        assert _relative(model.embed_bands(x[:, order], [bands[i] for i in order]), model.embed_bands(x, bands)) < 1e-5
        # the test can fail: the same generator output read in the first release's order is not invariant
        flat, bias = model.patch_embed.weight_generator(model.patch_embed.fclayer(_sincos(waves)))
        old = flat.reshape(64, len(bands), 16, 16) * 0.01
        flat_p, _ = model.patch_embed.weight_generator(model.patch_embed.fclayer(_sincos(waves[order])))
        old_p = flat_p.reshape(64, len(bands), 16, 16) * 0.01
        a = F.conv2d(x, old, bias * 0.01, stride=16, padding=1)
        b = F.conv2d(x[:, order], old_p, bias * 0.01, stride=16, padding=1)
        assert _relative(b, a) > 0.1


def _sincos(waves: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(64, dtype=torch.float32) / 64.0)
    angle = waves[:, None] * 1000 * omega[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


def test_the_same_weights_take_any_band_subset() -> None:
    model = DOFAEncoder("dofa_micro").eval()
    x = torch.randn(2, 14, 120, 120, generator=torch.Generator().manual_seed(5))
    order = ["VV", "VH"] + list(CENTRAL_WAVELENGTH_UM)[2:]
    with torch.no_grad():
        for idx in ([0, 1], [5, 4, 3], list(range(2, 14)), list(range(14))):
            out = model.embed_bands(x[:, idx], [order[i] for i in idx])
            assert out.shape == (2, 64) and torch.isfinite(out).all()


@pytest.mark.slow
def test_base_size_hand_built_checkpoint_matches_reference(tmp_path) -> None:
    state = hand_built_checkpoint(768, 12, seed=6)
    path = tmp_path / "DOFA_ViT_base_layout.pth"
    torch.save(state, path)
    model = load_dofa("dofa_base_patch16", path)
    x = torch.randn(1, 12, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert _relative(model(x, S2_UM), reference_features(state, x, S2_UM, heads=12)) < 1e-5


def test_wavelength_table() -> None:
    assert wavelengths_for(["B04", "B03", "B02"]) == (0.665, 0.56, 0.49)
    # DOFA v1 weights' Sentinel-1 placeholder (torchgeo PR #3942), not DOFA v2's 5.405
    assert wavelengths_for(["VV", "VH"]) == (3.75, 3.75)
    assert "3.75" in WAVELENGTH_SOURCE["VV"] and "#3942" in WAVELENGTH_SOURCE["VV"]
    assert wavelengths_for(list(CENTRAL_WAVELENGTH_UM)[2:]) == tuple(S2_UM)
    assert len(CENTRAL_WAVELENGTH_UM) == 14


@pytest.mark.parametrize(
    "bands,pattern",
    [
        (["B04", "B10"], "unknown band 'B10'"),
        (["SCL"], "band 'SCL' has no central wavelength"),
        ([], "band list is empty"),
    ],
)
def test_band_errors_name_the_band(bands: list[str], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        wavelengths_for(bands)
    with pytest.raises(ValueError, match=pattern):
        DOFAEncoder("dofa_micro").embed_bands(torch.zeros(1, max(len(bands), 1), 32, 32), bands)


def test_checkpoint_errors_name_the_key(tmp_path) -> None:
    model = DOFAEncoder("dofa_micro")
    other_size = hand_built_checkpoint(32, 2)
    with pytest.raises(
        ValueError, match=r"x\.pth: key 'cls_token' has shape \(1, 1, 32\) but dofa_micro expects \(1, 1, 64\)"
    ):
        load_dofa_state(model, other_size, source="x.pth")
    deeper = hand_built_checkpoint(64, 3)
    with pytest.raises(ValueError, match=r"unexpected key 'blocks\.2\.norm1\.weight'"):
        load_dofa_state(model, deeper)
    shallow = {k: v for k, v in hand_built_checkpoint(64, 2).items() if k != "patch_embed.fclayer.w2.bias"}
    with pytest.raises(ValueError, match=r"missing key 'patch_embed\.fclayer\.w2\.bias'"):
        load_dofa_state(model, shallow)
    croma_like = {"s1_encoder": {"w": torch.zeros(1)}, "s2_encoder": {}}
    torch.save(croma_like, tmp_path / "croma.pt")
    with pytest.raises(ValueError, match=r"croma\.pt: key 's1_encoder' is not a tensor"):
        load_dofa("dofa_micro", tmp_path / "croma.pt")
    with pytest.raises(ValueError, match="unknown DOFA configuration 'dofa_huge'"):
        DOFAEncoder("dofa_huge")
    with pytest.raises(ValueError, match=r"needs \(B, C, H, W\) with C equal to the 2 wavelengths"):
        model(torch.zeros(1, 3, 32, 32), [3.75, 3.75])


def test_published_weights_default_to_resize_and_dofa_micro_to_interpolate(tmp_path) -> None:
    assert default_input_mode("dofa_base_patch16", published_weights=True) == "resize"
    assert default_input_mode("dofa_large_patch16", published_weights=True) == "resize"
    assert default_input_mode("dofa_micro", published_weights=True) == "interpolate"
    assert default_input_mode("dofa_base_patch16", published_weights=False) == "interpolate"
    assert input_mode_for_init("dofa_base:/w/DOFA_ViT_base_e100.pth") == "resize"
    assert input_mode_for_init("dofa_large:/w/DOFA_ViT_large_e100.pth") == "resize"
    assert input_mode_for_init("dofa_micro:/w/micro.pth") is None
    assert input_mode_for_init("croma_base:/w/CROMA_base.pt") is None and input_mode_for_init(None) is None
    path = tmp_path / "micro.pth"
    torch.save(hand_built_checkpoint(64, 2, seed=12), path)
    assert load_dofa("dofa_micro", path).input_mode == "interpolate"
    assert load_encoder(f"dofa_micro:{path}").describe()["input_mode"] == "interpolate"


@pytest.mark.slow
def test_published_base_checkpoint_loads_in_resize_mode(tmp_path) -> None:
    path = tmp_path / "DOFA_ViT_base_e100.pth"
    torch.save({k: v.half() for k, v in hand_built_checkpoint(768, 12, seed=13).items()}, path)
    assert load_dofa("dofa_base_patch16", path).input_mode == "resize"
    assert load_encoder(f"dofa_base:{path}").describe()["input_mode"] == "resize"
