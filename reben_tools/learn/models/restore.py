"""Rebuild a classifier from a reben-tools checkpoint, checked against the model and bands asked for.

Owns: model_from_checkpoint, checked_model, split_config.
Does not own: reading and writing checkpoint files (runtime/checkpoints.py), the networks (classifier.py).
May import: torch; reben_tools.learn.runtime, reben_tools.learn.models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from reben_tools.learn.models.classifier import ReBENClassifier, build_model_from_config
from reben_tools.learn.runtime.checkpoints import CheckpointError, check_checkpoint_matches, load_checkpoint
from reben_tools.learn.runtime.config import TrainConfig


def model_from_checkpoint(state: dict, path: Path | str) -> ReBENClassifier:
    """Rebuild the checkpoint's model and load its weights (strict)."""
    model = build_model_from_config(state["model_config"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {state['model_config']['name']!r} ({exc})") from None
    return model


def checked_model(
    checkpoint: str | os.PathLike[str], model: str | None, bands: str | Sequence[str] | None, fusion: str | None
) -> tuple[dict, ReBENClassifier]:
    """The checkpoint's state and its rebuilt model, after checking it matches ``model``/``bands``/``fusion``."""
    path = os.fspath(checkpoint)
    state = load_checkpoint(path)
    check_checkpoint_matches(state, path, model=model, bands=bands, fusion=fusion)
    return state, model_from_checkpoint(state, path)


def split_config(archive: str, state: dict) -> TrainConfig:
    """A :class:`TrainConfig` describing how to read ``archive`` for the checkpoint ``state`` (bands, classes)."""
    cfg = state["model_config"]
    stored = state.get("train_config", {})
    return TrainConfig(
        archive=str(archive),
        bands=cfg["bands"],
        model=cfg["name"],
        out="",
        class_order=state["class_order"],
        include_snow_cloud=stored.get("include_snow_cloud", False),
        include_snowy=stored.get("include_snowy"),
        include_cloudy=stored.get("include_cloudy"),
    )
