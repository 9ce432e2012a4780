"""What every command does before and around its body: numbers, output locations, Ctrl-C.

Owns: :data:`NUMBER_RULES` (the one rule table of every numeric option of every command),
:func:`check_numbers`, :func:`check_writable`, :func:`resume_hint` and :func:`guarded`, the
wrapper ``reben_tools.cli`` puts around each command so that

- a numeric option out of range is refused in one line (``error: --epochs must be an integer >= 1
  (got -1)``, exit 1) before anything is read or written;
- an output location that cannot be written is refused in one line naming the path and the OS
  error (exit 1) before anything is written, and an OS error naming a path later on is one line too;
- Ctrl-C ends with exit 130 and one line saying how to go on.

Does not own: each command's own options and messages (the other ``commands`` modules), the
archive-overwrite guard (``commands.outputs``).
May import: the standard library and typer.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path

import typer


class Rule(typing.NamedTuple):
    """A numeric option's allowed values: ``low``/``high`` bounds (None = open), whether each is included."""

    low: float | None
    high: float | None = None
    low_included: bool = True
    high_included: bool = True
    noun: str | None = None
    """What the value is, when more telling than "an integer" / "a number" (e.g. "a probability")."""

    def allows(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_included)):
            return False
        return self.high is None or value < self.high or (value == self.high and self.high_included)

    def describe(self, integer: bool) -> str:
        kind = self.noun or ("an integer" if integer else "a number")
        if self.high is None:
            return f"{kind} {'>=' if self.low_included else '>'} {self.low:g}"
        left, right = "[" if self.low_included else "(", "]" if self.high_included else ")"
        return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"


AT_LEAST_1 = Rule(1)
AT_LEAST_0 = Rule(0)
POSITIVE = Rule(0, low_included=False)
SHARE = Rule(0, 1, low_included=False)  # (0, 1]
PROBABILITY = Rule(0, 1)  # [0, 1]
RATE = Rule(0, 1, high_included=False)  # [0, 1)
OPEN_UNIT = Rule(0, 1, low_included=False, high_included=False)  # (0, 1)

NUMBER_RULES: dict[str, Rule] = {
    # parameter name -> rule, for every command that has the option
    "epochs": AT_LEAST_1,
    "batch_size": AT_LEAST_1,
    "lr": AT_LEAST_0,
    "weight_decay": AT_LEAST_0,
    "dropout": RATE,
    "drop_path": RATE,
    "warmup_steps": AT_LEAST_0,
    "patience": AT_LEAST_1,
    "patch_size": AT_LEAST_1,
    "seed": AT_LEAST_0,
    "subset_seed": AT_LEAST_0,
    "workers": AT_LEAST_0,  # DataLoader workers: 0 = load in the main process
    "max_steps": AT_LEAST_1,
    "checkpoint_every": AT_LEAST_1,
    "accumulate": AT_LEAST_1,
    "layer_decay": SHARE,
    "mix_prob": PROBABILITY,
    "train_fraction": SHARE,
    "mask_ratio": OPEN_UNIT,
    "threshold": Rule(0, 1, low_included=False, high_included=False, noun="a probability"),
    "max_train_samples": AT_LEAST_1,
    "map_points": AT_LEAST_1,
    "fraction": SHARE,
    "permutations": AT_LEAST_1,
    "tile_side_m": POSITIVE,
    "block_size_m": POSITIVE,
    "buffer_m": AT_LEAST_0,
    "rows_per_block": AT_LEAST_1,
    "max_gap_days": AT_LEAST_0,
    "patches_per_shard": AT_LEAST_1,
    "max_cloud": Rule(0, 100, noun="a percentage"),
    "patches": AT_LEAST_1,
    "repeats": AT_LEAST_0,  # 0: the comparison protocol off
    "eval_share": OPEN_UNIT,
}
COMMAND_RULES: dict[tuple[str, str], Rule] = {
    # (command, parameter) -> rule, where a command reads the option differently
    ("encode", "workers"): AT_LEAST_1,  # processes
    ("build", "workers"): AT_LEAST_1,  # Dask worker processes
    ("demo", "workers"): AT_LEAST_1,
}
OUTPUT_PARAMETERS = ("out", "out_dir", "report")
"""Parameters naming where a command writes (checked for write access before the command runs)."""

RESUMABLE = {
    "train": "reben train --out {out} --resume",
    "pretrain": "reben pretrain --out {out} --resume",
}
"""Commands resumed with ``--resume``; the others that resume do it by rerunning the same command."""
RERUN_RESUMES = frozenset({"build", "demo", "encode"})


class OptionError(ValueError):
    """A command's option value is refused; the message names the option."""


def numeric_parameters(func: Callable) -> dict[str, bool]:
    """Name -> is-integer of every ``int``/``float`` (or optional) parameter of a command function."""
    found = {}
    for name, hint in typing.get_type_hints(func).items():
        kinds = set(typing.get_args(hint)) - {type(None)} if typing.get_args(hint) else {hint}
        if kinds and kinds <= {int, float} and bool not in kinds:
            found[name] = kinds == {int}
    return found


def rule_of(command: str, name: str) -> Rule | None:
    return COMMAND_RULES.get((command, name), NUMBER_RULES.get(name))


def check_numbers(command: str, func: Callable, values: dict) -> None:
    """Check every numeric option of ``command`` among ``values`` (None = not given).

    Raises:
        OptionError: ``--flag must be <rule> (got <value>)``. (tests/test_new_user.py checks that every
            numeric option of every command has a rule.)
    """
    for name, integer in numeric_parameters(func).items():
        value = values.get(name)
        if value is None:
            continue
        rule = rule_of(command, name)
        if rule is not None and not rule.allows(value):
            raise OptionError(f"--{name.replace('_', '-')} must be {rule.describe(integer)} (got {value})")


def nearest_existing(path: Path) -> Path:
    """``path`` if it is a directory, else the closest of its parents that exists."""
    candidate = path if path.is_dir() else path.parent
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def check_writable(path: Path) -> None:
    """Refuse, before anything is written, an output whose closest existing folder cannot take a new file.

    The probe is an unnamed temporary file (nothing is left behind, whatever happens).

    Raises:
        OptionError: ``PATH: cannot write in FOLDER (OS error)``.
    """
    folder = nearest_existing(Path(path))
    if not folder.is_dir():
        return  # a file where a folder should be: the command says so in its own words
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OptionError(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from None


def resume_hint(command: str, values: dict) -> str:
    """The one line printed when Ctrl-C stops ``command``."""
    if command in RESUMABLE and values.get("out") is not None:
        return "interrupted; resume with: " + RESUMABLE[command].format(out=values["out"])
    if command in RERUN_RESUMES:
        return "interrupted; rerun the same command to resume (finished parts are kept)"
    return "interrupted; nothing to resume: rerun the same command to start again"


def main_process() -> bool:
    """Whether this is the process that speaks for the command (rank 0 under torchrun, or the only one)."""
    return os.environ.get("RANK", "0") == "0"


def guarded(command: str, func: Callable) -> Callable:
    """``func`` (a typer command function) with the checks and the Ctrl-C and OS-error handling above."""

    @functools.wraps(func)
    def run(**values):
        try:
            check_numbers(command, func, values)
            for name in OUTPUT_PARAMETERS:
                if values.get(name) is not None:
                    check_writable(values[name])
        except OptionError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        try:
            return func(**values)
        except KeyboardInterrupt:
            if main_process():
                typer.echo(resume_hint(command, values), err=True)
            raise typer.Exit(130) from None
        except OSError as exc:
            if exc.filename is None:
                raise
            typer.echo(f"error: {exc.filename}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None

    return run
