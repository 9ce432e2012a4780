"""Resuming a supervised run: the stored trajectory checked against the flags given, the archive, the world size.

Owns: resume_state (the checked last checkpoint of a run), check_resume_config.
Does not own: what a checkpoint holds (loop.py), reading checkpoint files (runtime/checkpoints.py).
May import: torch; reben_tools.format; reben_tools.learn.runtime, .data.
"""

from __future__ import annotations

import json
from pathlib import Path

from reben_tools.format.bands import resolve_bands
from reben_tools.learn.data.loaders import archive_identity, recorded_source, run_source
from reben_tools.learn.runtime.checkpoints import CheckpointError, load_checkpoint
from reben_tools.learn.runtime.config import DEFAULTS, TRAJECTORY_FIELDS, TrainConfig
from reben_tools.learn.runtime.distributed import Distributed
from reben_tools.learn.runtime.rundir import LAST_CHECKPOINT


def check_resume_config(stored: dict, config: TrainConfig, given: set[str]) -> None:
    conflicts = [
        f"--{name.replace('_', '-')} {getattr(config, name)!r} (the run has {_stored(stored, name)!r})"
        for name in TRAJECTORY_FIELDS
        if name in given and _norm(getattr(config, name)) != _norm(_stored(stored, name))
    ]
    if conflicts:
        raise CheckpointError(
            "--resume continues the stored run, which differs in: "
            + "; ".join(conflicts)
            + ". Drop these flags to resume, or start a new run with another --out."
        )


def _stored(stored: dict, name: str):
    """A trajectory field of a stored run; the default for fields added after the run was made."""
    return stored[name] if name in stored else DEFAULTS[name]


def _norm(value):
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        try:
            return list(resolve_bands(value))
        except ValueError:
            return value
    return value


def _config_json(out: Path) -> dict:
    try:
        return json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def resume_state(config: TrainConfig, ctx: Distributed, given: set[str]) -> dict:
    """The run's last checkpoint, with the stored trajectory and archive checked against ``config``."""
    path = Path(config.out) / "checkpoints" / LAST_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; --resume continues a run in --out", all_processes=True)
    state = load_checkpoint(path)
    check_resume_config(state["train_config"], config, given)
    for name in TRAJECTORY_FIELDS:
        setattr(config, name, _stored(state["train_config"], name))
    stored_archive, stored_identity = state.get("archive"), state.get("archive_identity")
    if not config.archive:
        if state.get("source"):  # the archive or plain LMDB with the metadata files the run read, checked
            config.archive, config.metadata = recorded_source(state["source"])
        else:
            if not stored_archive:  # a checkpoint from before archives were stored: the run's config.json
                stored_archive = _config_json(Path(config.out)).get("archive")
            if not stored_archive:
                raise CheckpointError(f"{path}: the checkpoint does not name its archive; pass --archive")
            config.archive = stored_archive
    if stored_identity is not None:
        identity = archive_identity(run_source(config.archive, config.metadata))
        if identity != stored_identity:
            raise CheckpointError(
                f"--archive {config.archive} is not the archive this run was trained on ({stored_archive}, identity "
                f"sha256 {stored_identity[:12]}..., here {str(identity)[:12]}...): resume with that archive, or "
                "start a new run with another --out",
                all_processes=True,
            )
    if state["world_size"] != ctx.world_size:
        raise CheckpointError(
            f"{path}: run was trained with {state['world_size']} process(es); "
            f"resume it with the same number (now {ctx.world_size})",
            all_processes=True,
        )
    return state
