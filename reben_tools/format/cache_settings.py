"""Where the node-local cache of archives read from stores lives, and how large it may grow.

Folder: ``--cache-dir`` (a command's option, through :func:`cache_settings`), else
``$REBEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/reben-tools``, else ``~/.cache/reben-tools``.
Bound: ``--cache-size``, else ``$REBEN_CACHE_SIZE`` (``50G``, ``500M``, bytes); unset or 0 =
unbounded.

Owns: :data:`CACHE_ENV`, :data:`CACHE_SIZE_ENV`, :func:`parse_size`, :func:`default_cache_dir`,
:func:`resolve_cache_dir`, :func:`resolve_max_bytes`, :func:`cache_settings`.
Does not own: the cache itself (``format.shard_cache``).
May import: the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

CACHE_ENV = "REBEN_CACHE_DIR"
CACHE_SIZE_ENV = "REBEN_CACHE_SIZE"

_settings: dict[str, object] = {"cache_dir": None, "max_bytes": None}


def parse_size(text: str | int | None) -> int | None:
    """``"50G"``, ``"500M"``, ``"1.5T"``, ``"123456"`` -> bytes (powers of 1024); None/""/"0" -> None (unbounded).

    Raises:
        ValueError: not a size.
    """
    if text is None:
        return None
    if isinstance(text, int):
        return text or None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 50G, 500M, or bytes)")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()]
    value = int(float(match.group(1)) * scale)
    return value or None


def default_cache_dir() -> Path:
    """``$REBEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/reben-tools``, else ``~/.cache/reben-tools``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reben-tools"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    chosen = cache_dir or _settings["cache_dir"]
    if not chosen:
        return default_cache_dir()
    if not isinstance(chosen, (str, os.PathLike)):  # Path() would raise the same
        raise TypeError(f"cache folder must be a path, not {type(chosen).__name__}")
    return Path(chosen).expanduser()


def resolve_max_bytes(max_bytes: int | str | None = None) -> int | None:
    if max_bytes is not None:
        return parse_size(max_bytes)
    if _settings["max_bytes"] is not None:
        return _settings["max_bytes"]  # type: ignore[return-value]
    return parse_size(os.environ.get(CACHE_SIZE_ENV) or None)


@contextlib.contextmanager
def cache_settings(
    cache_dir: str | os.PathLike[str] | None = None, max_bytes: int | str | None = None
) -> Iterator[None]:
    """Within the block, archives opened from URLs without their own settings use this cache folder
    and bound (what a command's ``--cache-dir`` / ``--cache-size`` set)."""
    saved = dict(_settings)
    if cache_dir is not None:
        _settings["cache_dir"] = str(cache_dir)
    if max_bytes is not None:
        _settings["max_bytes"] = parse_size(max_bytes)
    try:
        yield
    finally:
        _settings.update(saved)


__all__ = [
    "CACHE_ENV",
    "CACHE_SIZE_ENV",
    "cache_settings",
    "default_cache_dir",
    "parse_size",
    "resolve_cache_dir",
    "resolve_max_bytes",
]
