"""The guard every command's output option goes through (see ``reben_tools.format.outputs``).

Owns: :func:`guarded_output` (a typer callback) and :data:`ARCHIVE_WRITERS`, the commands made
to write an archive in their output (exempt from the guard).
Does not own: what counts as an archive's own file (``format.outputs``).
May import: ``reben_tools.format`` and typer.
"""

from __future__ import annotations

from pathlib import Path

import typer

from reben_tools.format.outputs import ArchiveOverwriteError, check_output_path

ARCHIVE_WRITERS = frozenset({"build", "encode", "demo"})
"""Commands whose output is the archive they build or resume."""


def guarded_output(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """typer callback of an output option/argument: one-line refusal (exit 2) of an archive's own files."""
    if value is not None and not ctx.resilient_parsing:
        name = "/".join(param.opts) if param.opts else (param.name or "output")
        try:
            check_output_path(value, what=name)
        except ArchiveOverwriteError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    return value
