"""CROMA's published checkpoint layout: export a model's published parts, infer a config from a file, load one.

The published ``CROMA_base.pt``/``CROMA_large.pt`` hold one state dict per part
(``s1_encoder``, ``s1_GAP_FFN``, ``s2_encoder``, ``s2_GAP_FFN``, ``joint_encoder``) under the
reference code's parameter names.

Owns: CheckpointLayoutError, published_state, infer_config, load_published.
Does not own: the model (croma.py).
May import: torch; reben_tools.learn.models.croma.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

from reben_tools.learn.models.croma import CROMA, PUBLISHED_PARTS, S2_BANDS, CromaConfig


class CheckpointLayoutError(ValueError):
    """A checkpoint does not match CROMA's published layout or the expected size."""


def published_state(model: CROMA) -> dict[str, dict[str, Tensor]]:
    """The model's encoders in CROMA's published layout (``torch.save`` it as ``CROMA_*.pt``)."""
    return {
        part: {k: v.detach().cpu().clone() for k, v in getattr(model, part).state_dict().items()}
        for part in PUBLISHED_PARTS
    }


def infer_config(state: Mapping, source: str = "checkpoint", heads: int = 16) -> CromaConfig:
    """Width and depth of a published-layout checkpoint, read off its tensors.

    Raises:
        CheckpointLayoutError: a part or key is missing, naming ``source`` and the key.
    """
    for part in PUBLISHED_PARTS:
        if part not in state or not isinstance(state[part], Mapping):
            raise CheckpointLayoutError(f"{source}: not a CROMA checkpoint: missing part {part!r}")
    key = "linear_input.weight"
    if key not in state["s2_encoder"]:
        raise CheckpointLayoutError(f"{source}: missing key s2_encoder.{key}")
    dim, pixels = state["s2_encoder"][key].shape
    patch = round(math.sqrt(pixels / len(S2_BANDS)))
    depth = len({k.split(".")[2] for k in state["s2_encoder"] if k.startswith("transformer.layers.")})
    return CromaConfig("croma_custom", dim=int(dim), depth=int(depth), heads=heads, patch_size=patch)


def load_published(model: CROMA, state: Mapping, source: str = "checkpoint") -> None:
    """Load published-layout encoder weights into ``model`` (strict, all five parts).

    Raises:
        CheckpointLayoutError: one line naming ``source`` and the first missing, unexpected
            or wrongly shaped key (as ``part.key``).
    """
    for part in PUBLISHED_PARTS:
        if part not in state or not isinstance(state[part], Mapping):
            raise CheckpointLayoutError(f"{source}: not a CROMA checkpoint: missing part {part!r}")
    for part in PUBLISHED_PARTS:
        module = getattr(model, part)
        own = module.state_dict()
        given = state[part]
        for k, v in own.items():  # a wrong size shows first as a shape, before the layers it lacks
            if k in given and tuple(given[k].shape) != tuple(v.shape):
                raise CheckpointLayoutError(
                    f"{source}: {part}.{k} has shape {tuple(given[k].shape)}, {model.config.name} expects {tuple(v.shape)}"
                )
        missing = [k for k in own if k not in given]
        if missing:
            raise CheckpointLayoutError(f"{source}: missing key {part}.{missing[0]} ({len(missing)} missing in {part})")
        unexpected = [k for k in given if k not in own]
        if unexpected:
            raise CheckpointLayoutError(
                f"{source}: unexpected key {part}.{unexpected[0]} ({len(unexpected)} unexpected in {part})"
            )
        module.load_state_dict({k: given[k].to(v.dtype) for k, v in own.items()})
