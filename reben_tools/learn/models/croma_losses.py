"""CROMA's pretraining losses: cross-rank InfoNCE, masked-patch reconstruction, in-batch retrieval.

Owns: the symmetric InfoNCE between radar and optical projections with negatives gathered
from every DDP rank through a differentiable all-gather, the masked-patch MSE on
per-patch-normalised targets for both modalities, and in-batch retrieval accuracy.

Does not own: the model (:mod:`reben_tools.learn.models.croma`), optimisers, process-group set-up.

May import: torch and the standard library only.

With ``W`` ranks of ``b`` samples each, every rank scores its ``b`` rows against all ``W*b``
columns; the mean of the ranks' losses equals the single-process loss over the global
batch, and because the all-gather passes gradients back to the rank that produced the
features, DDP's gradient averaging yields exactly the single-process gradient.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

S2_CHANNELS = 12
"""Optical channels first in the decoder's pixel layout, then the 2 radar channels."""


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns each rank its slice of the summed gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def _distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def gather_rows(x: Tensor, group=None) -> tuple[Tensor, int]:
    """All ranks' rows (differentiable) and the offset of this rank's rows in them.

    Every rank must pass the same number of rows. Without an initialised process group
    (or with one rank) this returns ``(x, 0)``.
    """
    if not _distributed(group):
        return x, 0
    return _AllGather.apply(x, group), dist.get_rank(group) * x.shape[0]


def info_nce(s1: Tensor, s2: Tensor, logit_scale: Tensor, group=None) -> dict[str, Tensor]:
    """Symmetric InfoNCE between paired radar and optical projections.

    Args:
        s1: float (b, D) L2-normalised radar projections of this rank.
        s2: float (b, D) L2-normalised optical projections, row i pairs with ``s1[i]``.
        logit_scale: scalar, the inverse temperature (``exp`` of the learnt log-scale).
        group: process group whose ranks contribute negatives (default: the world).

    Returns:
        ``loss`` (this rank's mean of the two cross-entropies; their mean over ranks is the
        global-batch loss), ``acc_s1_to_s2`` and ``acc_s2_to_s1`` (fraction of this rank's
        rows whose highest-scoring column is their partner, over the global batch),
        ``temperature`` (1 / logit_scale). Accuracies and temperature carry no gradient.
    """
    all_s1, offset = gather_rows(s1, group)
    all_s2, _ = gather_rows(s2, group)
    labels = torch.arange(s1.shape[0], device=s1.device) + offset
    logits_s1 = logit_scale * s1.float() @ all_s2.float().t()
    logits_s2 = logit_scale * s2.float() @ all_s1.float().t()
    loss = (F.cross_entropy(logits_s2, labels) + F.cross_entropy(logits_s1, labels)) / 2
    with torch.no_grad():
        acc12 = (logits_s1.argmax(dim=1) == labels).float().mean()
        acc21 = (logits_s2.argmax(dim=1) == labels).float().mean()
    return {"loss": loss, "acc_s1_to_s2": acc12, "acc_s2_to_s1": acc21, "temperature": (1.0 / logit_scale).detach()}


def patch_normalise(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Normalise each patch's pixels to zero mean and unit (unbiased) variance, as MAE/CROMA do.

    Args:
        target: float (B, N, P) patchified pixels.

    Returns:
        float (B, N, P): ``(t - mean) / sqrt(var + eps)`` over the last dimension.
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


def _split_channels(x: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    b, n, p = x.shape
    per_channel = p // channels
    x = x.reshape(b, n, channels, per_channel)
    return (x[:, :, :S2_CHANNELS].reshape(b, n, -1), x[:, :, S2_CHANNELS:].reshape(b, n, -1))


def masked_reconstruction(
    pred: Tensor, target: Tensor, mask_s1: Tensor, mask_s2: Tensor, channels: int = 14
) -> dict[str, Tensor]:
    """Mean squared error on the masked patches of each modality.

    The target of each patch is normalised over all its ``channels * p * p`` pixels (the
    12 optical and 2 radar channels together, as CROMA's reference does), then split: the
    optical part is scored where ``mask_s2`` is 1, the radar part where ``mask_s1`` is 1.

    Args:
        pred: float (B, N, 14*p*p) decoder output, channel-major per patch (12 S2, then 2 S1).
        target: float (B, N, 14*p*p) patchified input in the same layout.
        mask_s1: float (B, N), 1 for masked radar patches.
        mask_s2: float (B, N), 1 for masked optical patches.

    Returns:
        ``loss_s1``, ``loss_s2`` (mean over masked patches of the per-patch mean squared
        error) and ``loss`` (their sum).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    target = patch_normalise(target.float())
    pred_s2, pred_s1 = _split_channels(pred.float(), channels)
    target_s2, target_s1 = _split_channels(target, channels)
    per_patch_s2 = ((pred_s2 - target_s2) ** 2).mean(dim=-1)
    per_patch_s1 = ((pred_s1 - target_s1) ** 2).mean(dim=-1)
    loss_s2 = (per_patch_s2 * mask_s2).sum() / mask_s2.sum()
    loss_s1 = (per_patch_s1 * mask_s1).sum() / mask_s1.sum()
    return {"loss_s1": loss_s1, "loss_s2": loss_s2, "loss": loss_s1 + loss_s2}


def croma_losses(outputs: dict[str, Tensor], group=None) -> dict[str, Tensor]:
    """Both losses of one :meth:`CROMA.forward` output; ``loss`` is their unweighted sum.

    Returns:
        ``loss``, ``contrastive``, ``reconstruction``, ``reconstruction_s1``,
        ``reconstruction_s2``, ``temperature``, ``acc_s1_to_s2``, ``acc_s2_to_s1``.
    """
    c = info_nce(outputs["s1_proj"], outputs["s2_proj"], outputs["logit_scale"], group)
    r = masked_reconstruction(outputs["pred"], outputs["target"], outputs["mask_s1"], outputs["mask_s2"])
    return {
        "loss": c["loss"] + r["loss"],
        "contrastive": c["loss"],
        "reconstruction": r["loss"],
        "reconstruction_s1": r["loss_s1"],
        "reconstruction_s2": r["loss_s2"],
        "temperature": c["temperature"],
        "acc_s1_to_s2": c["acc_s1_to_s2"],
        "acc_s2_to_s1": c["acc_s2_to_s1"],
    }
