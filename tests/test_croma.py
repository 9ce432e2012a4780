"""CROMA architecture, published checkpoint layout, losses and cross-rank InfoNCE.

The published layout below is written out by hand from CROMA's reference ``use_croma.py``
(``ViT``, ``BaseTransformer``, ``BaseTransformerCrossAttn``, ``FFN`` with
``net = [Linear, GELU, Dropout, Linear]``, ``GAP_FFN = [LayerNorm, Linear, GELU, Linear]``),
and the reference forward pass is re-implemented functionally on the raw state dicts.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import tempfile

import pytest
import torch
import torch.nn.functional as F

from reben_tools.learn.models.croma import (
    CONFIGS,
    CROMA,
    CromaConfig,
    alibi_2d,
    alibi_slopes,
    random_masking,
    select_bias,
)
from reben_tools.learn.models.croma_layout import CheckpointLayoutError, infer_config, load_published, published_state
from reben_tools.learn.models.croma_losses import info_nce, masked_reconstruction

SMALL = CromaConfig("test_small", dim=32, depth=2, heads=16, decoder_dim=32, decoder_heads=8)


# --------------------------------------------------------------------------------------
# The published layout, by hand
# --------------------------------------------------------------------------------------


def _block_keys(prefix: str, d: int, cross: bool) -> dict[str, tuple[int, ...]]:
    keys = {
        f"{prefix}.0.input_norm.weight": (d,),
        f"{prefix}.0.input_norm.bias": (d,),
        f"{prefix}.0.to_qkv.weight": (3 * d, d),
        f"{prefix}.0.to_out.weight": (d, d),
        f"{prefix}.0.to_out.bias": (d,),
    }
    ffn = 2 if cross else 1
    if cross:
        keys.update(
            {
                f"{prefix}.1.input_norm.weight": (d,),
                f"{prefix}.1.input_norm.bias": (d,),
                f"{prefix}.1.to_q.weight": (d, d),
                f"{prefix}.1.to_k.weight": (d, d),
                f"{prefix}.1.to_v.weight": (d, d),
                f"{prefix}.1.to_out.weight": (d, d),
                f"{prefix}.1.to_out.bias": (d,),
            }
        )
    keys.update(
        {
            f"{prefix}.{ffn}.input_norm.weight": (d,),
            f"{prefix}.{ffn}.input_norm.bias": (d,),
            f"{prefix}.{ffn}.net.0.weight": (4 * d, d),
            f"{prefix}.{ffn}.net.0.bias": (4 * d,),
            f"{prefix}.{ffn}.net.3.weight": (d, 4 * d),
            f"{prefix}.{ffn}.net.3.bias": (d,),
        }
    )
    return keys


def published_layout(d: int, depth: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """Key -> shape of each part of CROMA's published checkpoint for width d, optical depth."""

    def vit(channels: int, layers: int) -> dict:
        keys = {"linear_input.weight": (d, channels * 64), "linear_input.bias": (d,)}
        for i in range(layers):
            keys.update(_block_keys(f"transformer.layers.{i}", d, cross=False))
        keys.update({"transformer.norm_out.weight": (d,), "transformer.norm_out.bias": (d,)})
        return keys

    gap = {
        "0.weight": (d,),
        "0.bias": (d,),
        "1.weight": (4 * d, d),
        "1.bias": (4 * d,),
        "3.weight": (d, 4 * d),
        "3.bias": (d,),
    }
    joint: dict = {}
    for i in range(depth // 2):
        joint.update(_block_keys(f"layers.{i}", d, cross=True))
    joint.update({"norm_out.weight": (d,), "norm_out.bias": (d,)})
    return {
        "s1_encoder": vit(2, depth // 2),
        "s1_GAP_FFN": dict(gap),
        "s2_encoder": vit(12, depth),
        "s2_GAP_FFN": dict(gap),
        "joint_encoder": joint,
    }


def hand_built_checkpoint(d: int, depth: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for part, keys in published_layout(d, depth).items():
        out[part] = {}
        for key, shape in keys.items():
            if key.endswith(("norm.weight", "norm_out.weight")) or key == "0.weight":
                t = 1.0 + 0.1 * torch.randn(shape, generator=g)
            else:
                t = torch.randn(shape, generator=g) * (0.5 / math.sqrt(shape[-1]))
            out[part][key] = t
    return out


# --------------------------------------------------------------------------------------
# An independent functional forward pass of the published model
# --------------------------------------------------------------------------------------


def ref_alibi(heads: int, num_patches: int) -> torch.Tensor:
    side = int(math.sqrt(num_patches))
    start = 2 ** (-(2 ** -(math.log2(heads) - 3)))
    slopes = [start * start**i for i in range(heads)]
    out = torch.zeros(heads, num_patches, num_patches, dtype=torch.float64)
    pts = list(itertools.product(range(side), range(side)))
    for a, p in enumerate(pts):
        for b, q in enumerate(pts):
            dist = math.sqrt((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2)
            for h in range(heads):
                out[h, a, b] = -dist * slopes[h]
    return out.float()[None]


def ln(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def ref_attend(q, k, v, bias, heads):
    bsz, n, d = q.shape

    def split(t):
        return t.reshape(bsz, t.shape[1], heads, d // heads).permute(0, 2, 1, 3)

    q, k, v = split(q), split(k), split(v)
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * (d // heads) ** -0.5 + bias
    attn = torch.exp(scores - scores.amax(-1, keepdim=True))
    attn = attn / attn.sum(-1, keepdim=True)
    return torch.einsum("bhij,bhjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(bsz, n, d)


def ref_self_attn(sd, p, x, bias, heads):
    h = ln(x, sd[f"{p}.input_norm.weight"], sd[f"{p}.input_norm.bias"])
    q, k, v = (h @ sd[f"{p}.to_qkv.weight"].t()).chunk(3, dim=-1)
    return ref_attend(q, k, v, bias, heads) @ sd[f"{p}.to_out.weight"].t() + sd[f"{p}.to_out.bias"]


def ref_cross_attn(sd, p, x, ctx, bias, heads):
    w, b = sd[f"{p}.input_norm.weight"], sd[f"{p}.input_norm.bias"]
    hx, hc = ln(x, w, b), ln(ctx, w, b)
    q, k, v = hx @ sd[f"{p}.to_q.weight"].t(), hc @ sd[f"{p}.to_k.weight"].t(), hc @ sd[f"{p}.to_v.weight"].t()
    return ref_attend(q, k, v, bias, heads) @ sd[f"{p}.to_out.weight"].t() + sd[f"{p}.to_out.bias"]


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def ref_ffn(sd, p, x):
    h = ln(x, sd[f"{p}.input_norm.weight"], sd[f"{p}.input_norm.bias"])
    h = gelu(h @ sd[f"{p}.net.0.weight"].t() + sd[f"{p}.net.0.bias"])
    return h @ sd[f"{p}.net.3.weight"].t() + sd[f"{p}.net.3.bias"]


def ref_vit(sd, imgs, bias, heads):
    bsz, _, hh, ww = imgs.shape
    # b c (h i) (w j) -> b (h w) (c i j), written with explicit loops over patches
    patches = [
        imgs[:, :, r * 8 : (r + 1) * 8, col * 8 : (col + 1) * 8].reshape(bsz, -1)
        for r in range(hh // 8)
        for col in range(ww // 8)
    ]
    x = torch.stack(patches, dim=1) @ sd["linear_input.weight"].t() + sd["linear_input.bias"]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.layers.")})
    for i in range(layers):
        x = ref_self_attn(sd, f"transformer.layers.{i}.0", x, bias, heads) + x
        x = ref_ffn(sd, f"transformer.layers.{i}.1", x) + x
    return ln(x, sd["transformer.norm_out.weight"], sd["transformer.norm_out.bias"])


def ref_gap(sd, x):
    h = ln(x, sd["0.weight"], sd["0.bias"])
    return gelu(h @ sd["1.weight"].t() + sd["1.bias"]) @ sd["3.weight"].t() + sd["3.bias"]


def ref_forward(ckpt, s1, s2, heads=16):
    bias = ref_alibi(heads, (s1.shape[-1] // 8) ** 2)
    s1_enc = ref_vit(ckpt["s1_encoder"], s1, bias, heads)
    s2_enc = ref_vit(ckpt["s2_encoder"], s2, bias, heads)
    sd = ckpt["joint_encoder"]
    x = s1_enc
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("layers.")})):
        x = ref_self_attn(sd, f"layers.{i}.0", x, bias, heads) + x
        x = ref_cross_attn(sd, f"layers.{i}.1", x, s2_enc, bias, heads) + x
        x = ref_ffn(sd, f"layers.{i}.2", x) + x
    joint = ln(x, sd["norm_out.weight"], sd["norm_out.bias"])
    return {
        "sar_GAP": ref_gap(ckpt["s1_GAP_FFN"], s1_enc.mean(1)),
        "optical_GAP": ref_gap(ckpt["s2_GAP_FFN"], s2_enc.mean(1)),
        "joint_GAP": joint.mean(1),
    }


# --------------------------------------------------------------------------------------
# Layout tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,dim,depth", [("croma_base", 768, 12), ("croma_large", 1024, 24), ("croma_micro", 64, 4)])
def test_key_set_and_shapes_match_published_layout(name, dim, depth):
    with torch.device("meta"):
        model = CROMA(CONFIGS[name])
    expected = published_layout(dim, depth)
    for part, keys in expected.items():
        got = {k: tuple(v.shape) for k, v in getattr(model, part).state_dict().items()}
        assert got == keys, part
    if name == "croma_base":
        # ViT: 4 + 11 per layer; GAP_FFN: 6; joint: 18 per layer + 2 (6 radar, 12 optical, 6 joint layers)
        assert sum(len(v) for v in expected.values()) == (4 + 11 * 6) + 6 + (4 + 11 * 12) + 6 + (18 * 6 + 2) == 328


def test_hand_built_checkpoint_loads_and_embeds_like_reference(tmp_path):
    ckpt = hand_built_checkpoint(SMALL.dim, SMALL.depth)
    path = tmp_path / "CROMA_small.pt"
    torch.save(ckpt, path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert infer_config(state).dim == SMALL.dim and infer_config(state).depth == SMALL.depth
    model = CROMA(SMALL).eval()
    load_published(model, state, str(path))  # strict: raises on any missing/unexpected key
    g = torch.Generator().manual_seed(1)
    s1, s2 = torch.rand(2, 2, 120, 120, generator=g), torch.rand(2, 12, 120, 120, generator=g)
    with torch.no_grad():
        ours = model.embed(s1=s1, s2=s2)
        ref = ref_forward(ckpt, s1, s2)
        only_s2 = model.embed(s2=s2)
    for mine, theirs in (("s1", "sar_GAP"), ("s2", "optical_GAP"), ("joint", "joint_GAP")):
        torch.testing.assert_close(ours[mine], ref[theirs], rtol=1e-4, atol=1e-5)
    assert set(only_s2) == {"s2"}
    torch.testing.assert_close(only_s2["s2"], ours["s2"])
    # round trip: exporting gives back the very tensors loaded
    exported = published_state(model)
    for part in ckpt:
        assert exported[part].keys() == ckpt[part].keys()
        for k in ckpt[part]:
            assert torch.equal(exported[part][k], ckpt[part][k])


def test_wrong_layout_names_the_key(tmp_path):
    ckpt = hand_built_checkpoint(SMALL.dim, SMALL.depth)
    ckpt["s2_encoder"]["transformer.layers.0.0.create_qkv.weight"] = ckpt["s2_encoder"].pop(
        "transformer.layers.0.0.to_qkv.weight"
    )
    with pytest.raises(CheckpointLayoutError) as err:
        load_published(CROMA(SMALL), ckpt, "ck.pt")
    msg = str(err.value)
    assert "\n" not in msg and "ck.pt" in msg and "s2_encoder.transformer.layers.0.0.to_qkv.weight" in msg
    del ckpt["joint_encoder"]
    with pytest.raises(CheckpointLayoutError, match=r"ck\.pt: not a CROMA checkpoint: missing part 'joint_encoder'"):
        load_published(CROMA(SMALL), ckpt, "ck.pt")


def test_wrong_size_names_the_key_and_shapes():
    ckpt = hand_built_checkpoint(16, SMALL.depth)
    with pytest.raises(CheckpointLayoutError) as err:
        load_published(CROMA(SMALL), ckpt, "ck.pt")
    assert str(err.value) == "ck.pt: s1_encoder.linear_input.weight has shape (16, 128), test_small expects (32, 128)"


def test_alibi_matches_reference_loops_and_non_power_of_two_slopes():
    torch.testing.assert_close(alibi_2d(16, 15)[None], ref_alibi(16, 225), rtol=0, atol=0)
    # 12 heads: the 8 slopes of 8 heads, then every other of the 16-head slopes
    eight = [2 ** (-(i + 1)) for i in range(8)]
    sixteen = [2 ** (-0.5 * (i + 1)) for i in range(16)]
    assert alibi_slopes(12) == pytest.approx(eight + sixteen[0::2][:4])


# --------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio,kept", [(0.75, 56), (0.5, 112), (0.9, 22)])
def test_masking_ratio(ratio, kept):
    info = random_masking(3, 225, ratio, generator=torch.Generator().manual_seed(0))
    assert info.keep.shape == (3, kept)
    assert torch.equal(info.mask.sum(dim=1), torch.full((3,), 225.0 - kept))
    for b in range(3):
        assert len(set(info.keep[b].tolist())) == kept
        assert torch.all(info.mask[b, info.keep[b]] == 0)
    # restore un-shuffles [kept, masked] back to patch order
    shuffled = torch.cat([info.keep, torch.argsort(info.mask, dim=1, stable=True)[:, kept:]], dim=1)
    assert torch.equal(torch.gather(shuffled, 1, info.restore)[0].sort().values, torch.arange(225))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 0.999])
def test_masking_rejects_degenerate_ratios(ratio):
    with pytest.raises(ValueError, match="mask ratio"):
        random_masking(2, 225, ratio)


def test_masked_alibi_selects_kept_rows_and_columns():
    bias = alibi_2d(16, 15)
    q = torch.tensor([[3, 0, 224]])
    k = torch.tensor([[5, 17, 100]])
    sel = select_bias(bias, q, k)
    assert sel.shape == (1, 16, 3, 3)
    # patch 3 is (row 0, col 3), patch 100 is (row 6, col 10): distance sqrt(36 + 49)
    assert sel[0, 0, 0, 2].item() == pytest.approx(-math.sqrt(85) * 2**-0.5, rel=1e-6)


def test_pretraining_forward_masks_and_losses_are_finite():
    model = CROMA(SMALL, pretraining=True)
    g = torch.Generator().manual_seed(0)
    out = model(torch.rand(2, 2, 120, 120), torch.rand(2, 12, 120, 120), mask_ratio=0.75, generator=g)
    assert out["pred"].shape == out["target"].shape == (2, 225, 14 * 64)
    assert out["mask_s1"].sum().item() == out["mask_s2"].sum().item() == 2 * 169
    assert not torch.equal(out["mask_s1"], out["mask_s2"])  # independent masks
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-6)


# --------------------------------------------------------------------------------------
# Reconstruction loss
# --------------------------------------------------------------------------------------


def test_reconstruction_loss_counts_masked_patches_only():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 2, 14 * 4, generator=g)  # 2 patches, p = 2
    pred = torch.zeros(1, 2, 14 * 4)
    mask_s1 = torch.tensor([[1.0, 0.0]])
    mask_s2 = torch.tensor([[0.0, 1.0]])
    out = masked_reconstruction(pred, target, mask_s1, mask_s2)
    # hand computation: normalise each patch over its 56 values (unbiased variance)
    t = target[0]
    norm = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, keepdim=True) + 1e-6)
    expected_s2 = (norm[1, :48] ** 2).mean()  # optical channels first: 12 x 4 values
    expected_s1 = (norm[0, 48:] ** 2).mean()
    assert out["loss_s2"].item() == pytest.approx(expected_s2.item(), rel=1e-6)
    assert out["loss_s1"].item() == pytest.approx(expected_s1.item(), rel=1e-6)
    # changing the prediction on kept patches leaves the loss unchanged
    pred2 = pred.clone()
    pred2[0, 0, :48] = 5.0
    pred2[0, 1, 48:] = -3.0
    assert masked_reconstruction(pred2, target, mask_s1, mask_s2)["loss"].item() == pytest.approx(out["loss"].item())


# --------------------------------------------------------------------------------------
# Contrastive loss: single process and 2 gloo ranks
# --------------------------------------------------------------------------------------


def _global_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)


def _head(seed: int = 1):
    torch.manual_seed(seed)
    head = torch.nn.Linear(6, 4)
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    return head, scale


def _loss(head, scale, a, b, group=None):
    return info_nce(F.normalize(head(a), dim=-1), F.normalize(head(b) * 0.5 + 0.1, dim=-1), scale.exp(), group)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        a, b = _global_batch()
        rows = a.shape[0] // world
        head, scale = _head()
        out = _loss(head, scale, a[rank * rows : (rank + 1) * rows], b[rank * rows : (rank + 1) * rows])
        out["loss"].backward()
        grads = torch.cat([head.weight.grad.reshape(-1), head.bias.grad, scale.grad.reshape(1)])
        dist.all_reduce(grads)
        grads /= world  # DDP averages gradients over ranks
        loss = out["loss"].detach().clone()
        dist.all_reduce(loss)
        acc = out["acc_s1_to_s2"].clone()
        dist.all_reduce(acc)
        if rank == 0:
            torch.save({"loss": loss / world, "grads": grads, "acc": acc / world}, os.path.join(out_dir, "ddp.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_info_nce_single_process_value():
    s1 = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s2 = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    out = info_nce(s1, s2, torch.tensor(2.0))
    e = math.exp
    # logits s1->s2 (x2): [[1.6, 0], [1.92, 1.6]]; s2->s1: [[1.6, 1.92], [0, 1.6]]; labels [0, 1]
    l12 = (-1.6 + math.log(e(1.6) + e(0)) - 1.6 + math.log(e(1.92) + e(1.6))) / 2
    l21 = (-1.6 + math.log(e(1.6) + e(1.92)) - 1.6 + math.log(e(0) + e(1.6))) / 2
    assert out["loss"].item() == pytest.approx((l12 + l21) / 2, rel=1e-6)
    assert out["acc_s1_to_s2"].item() == 0.5 and out["acc_s2_to_s1"].item() == 0.5
    assert out["temperature"].item() == pytest.approx(0.5)


def test_ddp_contrastive_loss_and_gradients_equal_single_process():
    import torch.multiprocessing as mp

    a, b = _global_batch()
    head, scale = _head()
    single = _loss(head, scale, a, b)
    single["loss"].backward()
    grads = torch.cat([head.weight.grad.reshape(-1), head.bias.grad, scale.grad.reshape(1)])
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_worker, args=(2, _free_port(), tmp), nprocs=2, join=True)
        ddp = torch.load(os.path.join(tmp, "ddp.pt"))
    torch.testing.assert_close(ddp["loss"], single["loss"].detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ddp["grads"], grads, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ddp["acc"], single["acc_s1_to_s2"])
