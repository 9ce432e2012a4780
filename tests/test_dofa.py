"""DOFA encoder: published checkpoint layout, forward pass against an independent
implementation, 120x120 handling, wavelength table and the bad-input errors.

The reference below is written from the published forward pass (zhu-xlab/DOFA
``wave_dynamic_layer.py`` + ``OFAViT.forward_features``; torchgeo ``dofa.py``) with
plain tensor algebra: explicit layer norms, softmax attention, erf-GELU and an
unfold-based strided convolution, none of the module's classes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reben_tools.learn.dofa import DOFA_CONFIGS, DOFAEncoder, layer_index, load_dofa, load_dofa_state
from reben_tools.format.bands import CENTRAL_WAVELENGTH_UM, wavelengths_for

S2_UM = [0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.610, 2.190]


# --------------------------------------------------------------------------- the published layout


def published_layout(embed: int, depth: int, patch: int = 16, grid: int = 14) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a published DOFA encoder state dict (v1, patch 16), written out by hand.

    Generator: wv_planes 128, 128 weight tokens, one torch TransformerEncoderLayer (d 128,
    ff 2048); fc_weight maps 128 -> patch*patch*embed. Then cls/pos tokens and timm ViT blocks.
    """
    g = "patch_embed.weight_generator."
    t = g + "transformer_encoder.layers.0."
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, embed),
        "pos_embed": (1, grid * grid + 1, embed),
        g + "weight_tokens": (128, 128),
        g + "bias_token": (1, 128),
        t + "self_attn.in_proj_weight": (384, 128),
        t + "self_attn.in_proj_bias": (384,),
        t + "self_attn.out_proj.weight": (128, 128),
        t + "self_attn.out_proj.bias": (128,),
        t + "linear1.weight": (2048, 128),
        t + "linear1.bias": (2048,),
        t + "linear2.weight": (128, 2048),
        t + "linear2.bias": (128,),
        t + "norm1.weight": (128,),
        t + "norm1.bias": (128,),
        t + "norm2.weight": (128,),
        t + "norm2.bias": (128,),
        g + "fc_weight.weight": (patch * patch * embed, 128),
        g + "fc_weight.bias": (patch * patch * embed,),
        g + "fc_bias.weight": (embed, 128),
        g + "fc_bias.bias": (embed,),
        "patch_embed.fclayer.w1.weight": (128, 128),
        "patch_embed.fclayer.w1.bias": (128,),
        "patch_embed.fclayer.w2.weight": (128, 128),
        "patch_embed.fclayer.w2.bias": (128,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (embed,), b + "norm1.bias": (embed,),
            b + "attn.qkv.weight": (3 * embed, embed), b + "attn.qkv.bias": (3 * embed,),
            b + "attn.proj.weight": (embed, embed), b + "attn.proj.bias": (embed,),
            b + "norm2.weight": (embed,), b + "norm2.bias": (embed,),
            b + "mlp.fc1.weight": (4 * embed, embed), b + "mlp.fc1.bias": (4 * embed,),
            b + "mlp.fc2.weight": (embed, 4 * embed), b + "mlp.fc2.bias": (embed,),
        })
    return shapes


def hand_built_checkpoint(embed: int, depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the published layout, plus the pretraining extras published files carry
    (``mask_token``, ``norm``, ``projector``) and no ``fc_norm`` / ``head``."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in published_layout(embed, depth).items():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 2 and not name.endswith("_tokens") and not name.endswith("_token"):
            value = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        else:
            value = 0.3 * torch.randn(shape, generator=gen)
        state[name] = value
    state["mask_token"] = torch.randn(1, 1, embed, generator=gen)
    state["norm.weight"] = torch.ones(embed)
    state["norm.bias"] = torch.zeros(embed)
    state["projector.weight"] = torch.randn(embed, embed, generator=gen)
    state["projector.bias"] = torch.zeros(embed)
    return state


# --------------------------------------------------------------------------- independent reference


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _mha(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor, heads: int) -> torch.Tensor:
    """x (..., N, W) -> (..., N, W) softmax attention with packed qkv weights (3W, W)."""
    width = x.shape[-1]
    hd = width // heads
    qkv = x @ w.T + b
    q, k, v = qkv[..., :width], qkv[..., width:2 * width], qkv[..., 2 * width:]

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*t.shape[:-1], heads, hd).transpose(-3, -2)

    q, k, v = split(q), split(k), split(v)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    out = (att @ v).transpose(-3, -2).reshape(*x.shape)
    return out @ wo.T + bo


def reference_features(sd: dict[str, torch.Tensor], x: torch.Tensor, waves: list[float], heads: int, patch: int = 16) -> torch.Tensor:
    """DOFA's published ``forward_features`` (global pool) on a published-layout state dict."""
    embed = sd["cls_token"].shape[-1]
    bands = len(waves)
    # wavelength embedding: 1-D sin-cos of (wavelength in µm * 1000), width 128, sines first
    pos = torch.tensor(waves, dtype=torch.float32) * 1000
    omega = 1.0 / 10000 ** (torch.arange(64, dtype=torch.float32) / 64.0)
    ang = pos[:, None] * omega[None]
    emb = torch.cat([torch.sin(ang), torch.cos(ang)], 1)
    p = "patch_embed.fclayer."
    hid = torch.relu(emb @ sd[p + "w1.weight"].T + sd[p + "w1.bias"])
    emb = emb + torch.relu(hid @ sd[p + "w2.weight"].T + sd[p + "w2.bias"])
    # weight generator: [128 weight tokens; band tokens; bias token] -> one post-norm layer
    g = "patch_embed.weight_generator."
    t = g + "transformer_encoder.layers.0."
    seq = torch.cat([sd[g + "weight_tokens"], emb, sd[g + "bias_token"]], 0)
    a = _mha(seq, sd[t + "self_attn.in_proj_weight"], sd[t + "self_attn.in_proj_bias"],
             sd[t + "self_attn.out_proj.weight"], sd[t + "self_attn.out_proj.bias"], 4)
    h = _ln(seq + a, sd[t + "norm1.weight"], sd[t + "norm1.bias"], 1e-5)
    ff = _gelu(h @ sd[t + "linear1.weight"].T + sd[t + "linear1.bias"]) @ sd[t + "linear2.weight"].T + sd[t + "linear2.bias"]
    h = _ln(h + ff, sd[t + "norm2.weight"], sd[t + "norm2.bias"], 1e-5)
    flat = (h[128:-1] + emb) @ sd[g + "fc_weight.weight"].T + sd[g + "fc_weight.bias"]  # (C, p*p*E)
    bias = (h[-1] @ sd[g + "fc_bias.weight"].T + sd[g + "fc_bias.bias"]) * 0.01
    kernel = flat.reshape(-1).view(embed, bands, patch, patch) * 0.01  # published .view order
    # strided convolution, padding 1, as patches x kernels
    xp = F.pad(x, (1, 1, 1, 1))
    n_h = (x.shape[2] + 2 - patch) // patch + 1
    n_w = (x.shape[3] + 2 - patch) // patch + 1
    xp = xp[:, :, : n_h * patch, : n_w * patch]
    cells = xp.reshape(x.shape[0], bands, n_h, patch, n_w, patch).permute(0, 2, 4, 1, 3, 5)
    tokens = cells.reshape(x.shape[0], n_h * n_w, -1) @ kernel.reshape(embed, -1).T + bias
    # position embeddings (bicubic resize of the stored grid when the grid differs)
    pe = sd["pos_embed"]
    side = int(round(math.sqrt(pe.shape[1] - 1)))
    grid_pe = pe[:, 1:]
    if (n_h, n_w) != (side, side):
        img = grid_pe.reshape(1, side, side, embed).permute(0, 3, 1, 2)
        img = F.interpolate(img, size=(n_h, n_w), mode="bicubic", align_corners=False)
        grid_pe = img.permute(0, 2, 3, 1).reshape(1, n_h * n_w, embed)
    z = torch.cat([(sd["cls_token"] + pe[:, :1]).expand(x.shape[0], 1, embed), tokens + grid_pe], 1)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b = f"blocks.{i}."
        y = _ln(z, sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-6)
        z = z + _mha(y, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"], sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"], heads)
        y = _ln(z, sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-6)
        z = z + _gelu(y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]) @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
    pooled = z[:, 1:].mean(1)
    w = sd.get("fc_norm.weight", torch.ones(embed))
    bn = sd.get("fc_norm.bias", torch.zeros(embed))
    return _ln(pooled, w, bn, 1e-6)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name,embed,depth", [("dofa_base_patch16", 768, 12), ("dofa_large_patch16", 1024, 24), ("dofa_micro", 64, 2)])
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


@pytest.mark.parametrize("bands,pattern", [
    (["B04", "B10"], "unknown band 'B10'"),
    (["SCL"], "band 'SCL' has no central wavelength"),
    ([], "band list is empty"),
])
def test_band_errors_name_the_band(bands: list[str], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        wavelengths_for(bands)
    with pytest.raises(ValueError, match=pattern):
        DOFAEncoder("dofa_micro").embed_bands(torch.zeros(1, max(len(bands), 1), 32, 32), bands)


def test_checkpoint_errors_name_the_key(tmp_path) -> None:
    model = DOFAEncoder("dofa_micro")
    other_size = hand_built_checkpoint(32, 2)
    with pytest.raises(ValueError, match=r"x\.pth: key 'cls_token' has shape \(1, 1, 32\) but dofa_micro expects \(1, 1, 64\)"):
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


def test_layer_index_for_lr_decay() -> None:
    depth = DOFA_CONFIGS["dofa_base_patch16"].depth
    assert layer_index("patch_embed.weight_generator.fc_weight.weight", depth) == 0
    assert layer_index("pos_embed", depth) == 0
    assert layer_index("encoder.dofa.blocks.0.attn.qkv.weight", depth) == 1
    assert layer_index("blocks.11.mlp.fc2.bias", depth) == 12
    assert layer_index("fc_norm.weight", depth) == 13
    assert layer_index("head.weight", depth) == 13
