"""URLs on the command line: read where a command supports them, refused in one line everywhere else.

A path option typed ``pathlib.Path`` would turn ``s3://archive/demo`` into the relative folder
``s3:/archive/demo`` (a local folder named ``s3:``). The root command group therefore looks at
the raw arguments of every command before they are converted (:class:`UrlCheckedGroup`,
:func:`check_url_paths`): a remote URL given to a ``Path`` parameter stops the command with
one line (exit 2); a ``file:///path`` URL becomes the path. Parameters that accept URLs (``reben build --out``, the archive of every reader
command) are typed ``str`` and resolve the URL themselves (``format.shard_cache``,
``builder.pipeline.remote``).

Owns: :class:`UrlCheckedGroup`, :func:`check_url_paths`, the ``--cache-dir`` / ``--cache-size`` options of the reader
commands (:data:`CACHE_DIR`, :data:`CACHE_SIZE`, :func:`use_cache`).
Does not own: reading or writing stores (``format.object_store``, ``format.shard_cache``).
May import: ``reben_tools.format``, typer.
"""

from __future__ import annotations

import pathlib
import typing

import typer
from typer.core import TyperGroup

from reben_tools.format.object_store import is_remote, is_url, local_path

CACHE_DIR = typer.Option(
    None,
    "--cache-dir",
    help="For an archive URL (s3://...): node-local cache folder of its shards (default: $REBEN_CACHE_DIR or ~/.cache/reben-tools).",
)
CACHE_SIZE = typer.Option(
    None,
    "--cache-size",
    help="For an archive URL: bound of the cache, e.g. 50G (least recently used shards are evicted; default: $REBEN_CACHE_SIZE or unbounded).",
)


def use_cache(cache_dir: str | None, cache_size: str | None) -> None:
    """Make ``--cache-dir`` / ``--cache-size`` the settings of every archive URL this command opens.

    Raises ``typer.Exit(2)`` with one line for a size that does not parse.
    """
    from reben_tools.format.shard_cache import cache_settings, parse_size

    try:
        parse_size(cache_size)
    except ValueError as exc:
        typer.echo(f"error: --cache-size: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = cache_settings(cache_dir, cache_size)
    settings.__enter__()
    context = _current_context()
    if context is not None:  # restored when the command ends (tests run many commands in one process)
        context.call_on_close(lambda: settings.__exit__(None, None, None))


def _current_context():
    for module in ("typer._click.globals", "click.globals"):
        try:
            getter = __import__(module, fromlist=["get_current_context"]).get_current_context
        except (ImportError, AttributeError):
            continue
        context = getter(silent=True)
        if context is not None:
            return context
    return None


def _takes_paths(param) -> bool:
    """Whether a parameter's values are converted to ``pathlib.Path`` (typer's Path annotations)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if annotation is not None:
        stack = [annotation]
        while stack:
            item = stack.pop()
            if item is pathlib.Path or (isinstance(item, type) and issubclass(item, pathlib.PurePath)):
                return True
            stack.extend(typing.get_args(item))
        return False
    kind = getattr(param, "type", None)  # typer on an external click: click.Path
    return type(kind).__name__ == "Path"


def _raw_values(command, parent, name: str, args: list[str]) -> dict[str, list[str]]:
    """Every parameter's raw (unconverted) string values in ``args``, by parameter name."""
    context = command.context_class(command, info_name=name, parent=parent, resilient_parsing=True)
    parser = command.make_parser(context)
    opts, _, _ = parser.parse_args(args=list(args))
    out = {}
    for name, value in opts.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        out[name] = [v for v in values if isinstance(v, str)]
    return out


def check_url_paths(command_name: str, command, parent, args: list[str]) -> list[str]:
    """The command's arguments, with ``file://`` URLs given to local-path parameters turned into paths.

    Raises:
        typer.Exit(2): after one line on stderr, when a remote URL is given to a parameter that takes local paths.
    """
    if not any("://" in a for a in args):
        return args
    try:
        raw = _raw_values(command, parent, command_name, args)
    except Exception:  # a malformed command line: the command's own parsing reports it
        return args
    rewrite: dict[str, str] = {}
    for param in command.params:
        if not _takes_paths(param):
            continue
        for value in raw.get(param.name, []):
            if not is_url(value):
                continue
            if not is_remote(value):
                rewrite[value] = str(local_path(value))
                continue
            flag = "/".join(o for o in param.opts if o.startswith("-")) or param.name.upper()
            typer.echo(
                f"error: reben {command_name} {flag}: {value} is a URL; {flag} takes a local path "
                "(store URLs: `reben build --out` and the archive of the reader commands)",
                err=True,
            )
            raise typer.Exit(2)
    if not rewrite:
        return args
    out = []
    for arg in args:
        head, eq, tail = arg.partition("=")
        if arg in rewrite:
            out.append(rewrite[arg])
        elif eq and head.startswith("-") and tail in rewrite:
            out.append(f"{head}={rewrite[tail]}")
        else:
            out.append(arg)
    return out


class UrlCheckedGroup(TyperGroup):
    """The root command group: every command's raw arguments pass :func:`check_url_paths` first."""

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and name and not ctx.resilient_parsing:
            rest = check_url_paths(name, command, ctx, list(rest))
        return name, command, rest


__all__ = ["CACHE_DIR", "CACHE_SIZE", "UrlCheckedGroup", "check_url_paths", "use_cache"]
