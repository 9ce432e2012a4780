"""The options that ``reben train``, ``reben pretrain`` and the commands that run a model share.

Owns: one declaration of each shared option (its flag, default and help), the ``files`` entry of a run's
summary, and the one-line exit of a failed run.
Does not own: the options only one command has (they stay with it), the run itself (reben_tools.learn).
May import: typer, reben_tools.commands.guard; reben_tools.learn.runtime lazily inside ``fail_run``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import typer

from reben_tools.commands.guard import main_process

# how a model runs: every command that runs one (train, evaluate, probe, pretrain, embed)
DEVICE = typer.Option("auto", "--device", help="cuda, cpu or auto (the GPU when there is one).")
PRECISION = typer.Option("auto", "--precision", help="bf16 or fp32 (auto: bf16 on GPU, fp32 on CPU).")
WORKERS = typer.Option(None, "--workers", help="DataLoader workers per process (default: cores per process - 1).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")

# a training run: train and pretrain
SEED = typer.Option(None, "--seed", help="Random seed (default 0).")
INCLUDE_SNOW_CLOUD = typer.Option(False, "--include-snow-cloud", help="Also use patches flagged for snow/cloud/shadow.")
COMPILE = typer.Option(False, "--compile", help="torch.compile the model.")
MAX_STEPS = typer.Option(
    None, "--max-steps", help="Stop after this many optimiser steps in total (checkpointed; --resume goes on)."
)
CHECKPOINT_EVERY = typer.Option(None, "--checkpoint-every", help="Also checkpoint every N steps (epochs always are).")
RESUME = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped.")


def run_files(out: Path, names: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The files of ``names`` (kind -> paths relative to ``out``) that exist, as the summary's ``files`` entry."""
    return {kind: [str(out / n) for n in paths if (out / n).is_file()] for kind, paths in names.items()}


def fail_run(exc: Exception) -> NoReturn:
    """Print ``error: ...`` once and exit with status 1.

    Under torchrun, only the main process prints an error every process raised; a process stopped because
    another one failed prints nothing, since that one printed why.
    """
    from reben_tools.learn.runtime.config import StoppedByPeer

    if isinstance(exc, StoppedByPeer):
        pass
    elif not getattr(exc, "all_processes", False) or main_process():
        typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)
