"""The ``reben`` command line entry point.

Owns: the typer application and the list of command modules it registers.
Does not own: the commands themselves (``reben_tools.commands``).
May import: ``reben_tools.commands`` (``commands.guard`` wraps every command) and the package's ``__version__``.

Every command's raw arguments pass :func:`reben_tools.commands.urls.check_url_paths` first: a URL
given to a parameter that takes local paths is refused in one line, never taken for a folder.
"""

from __future__ import annotations

import importlib

import typer

from reben_tools.commands.guard import guarded
from reben_tools.commands.urls import UrlCheckedGroup

COMMAND_MODULES = ("archive", "encode", "split", "subset", "build", "train", "pretrain", "retrieve", "show")

app = typer.Typer(
    name="reben",
    cls=UrlCheckedGroup,  # a URL given to a local-path parameter: one line, exit 2
    help="Build, convert, verify, audit and stream reBEN-style LMDB/safetensors archives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: whole option names at any width, no <bool> after flags
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"reben_tools.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"reben_tools.commands.{name}":
                continue
            raise
        module.register(app)
    for info in app.registered_commands:  # numbers, output locations and Ctrl-C, the same for every command
        assert info.callback is not None, "every command registers a function"
        name = info.name or info.callback.__name__.replace("_", "-")
        info.callback = guarded(name, info.callback)


@app.callback(invoke_without_command=False)
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        help="Print the reben-tools version and exit.",
        callback=lambda value: _print_version(value),
    ),
) -> None:
    """Build, convert, verify, audit and stream reBEN-style LMDB/safetensors archives."""


def _print_version(value: bool) -> None:
    if value:
        from reben_tools import __version__

        typer.echo(f"reben-tools {__version__}")
        raise typer.Exit()


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
