"""DOFA encoder: published checkpoint layout, forward pass against an independent
implementation (tests/dofa_reference.py), 120x120 handling, wavelength table and the
bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from dofa_reference import hand_built_checkpoint, published_layout, reference_features

from reben_tools.format.bands import CENTRAL_WAVELENGTH_UM, wavelengths_for
from reben_tools.learn.models.dofa import DOFAEncoder, load_dofa, load_dofa_state

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


def test_hand_built_checkpoint_loads_and_matches_reference_224_and_120(tmp_path) -> None:
    torch.manual_seed(0)
    state = hand_built_checkpoint(64, 2, seed=1)
    path = tmp_path / "DOFA_micro_published_layout.pth"
    torch.save(state, path)
    model = load_dofa("dofa_micro", path)
    report = load_dofa_state(DOFAEncoder("dofa_micro"), state)
    assert report == {
        "ignored": ["mask_token", "norm.bias", "norm.weight", "projector.bias", "projector.weight"],
        "defaulted": ["fc_norm.bias", "fc_norm.weight"],
    }
    gen = torch.Generator().manual_seed(2)
    waves = [0.665, 0.56, 0.49, 1.61]
    with torch.no_grad():
        for side in (224, 120):
            x = torch.randn(3, len(waves), side, side, generator=gen)
            got = model(x, waves)
            want = reference_features(state, x, waves, heads=4)
            assert got.shape == (3, 64)
            torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
        # 120 px: padding 1 and stride 16 give a 7 x 7 grid, plus the class token
        assert model.forward_tokens(torch.zeros(1, 4, 120, 120), waves).shape == (1, 50, 64)


def test_resize_mode_equals_reference_on_the_resized_input() -> None:
    state = hand_built_checkpoint(64, 2, seed=3)
    model = DOFAEncoder("dofa_micro", input_mode="resize").eval()
    load_dofa_state(model, state)
    x = torch.randn(2, 2, 120, 120, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = model(x, wavelengths_for(["VV", "VH"]))
        resized = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        want = reference_features(state, resized, [5.405, 5.405], heads=4)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)


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
        torch.testing.assert_close(model(x, S2_UM), reference_features(state, x, S2_UM, heads=12), rtol=0, atol=5e-5)


def test_wavelength_table() -> None:
    assert wavelengths_for(["B04", "B03", "B02"]) == (0.665, 0.56, 0.49)
    assert wavelengths_for(["VV", "VH"]) == (5.405, 5.405)
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
        model(torch.zeros(1, 3, 32, 32), [5.405, 5.405])
