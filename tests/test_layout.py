"""The package layout is the architecture: module size, module docstrings, dependency direction.

The parts and what each may import (lower layers never import higher ones, siblings never
import each other)::

    format  <-  geo  <-  builder, release, splits  <-  learn  <-  commands, cli

``learn`` may use ``splits`` (label-fraction subsets, split names) but never ``builder`` or
``release``. Inside ``learn`` the same rule holds, one floor per subpackage::

    runtime  <-  data  <-  models  <-  evaluation  <-  training
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reben_tools"
MAX_MODULE_LINES = 600

ALLOWED_IMPORTS = {
    "format": {"format"},
    "geo": {"format", "geo"},
    "builder": {"format", "geo", "builder"},
    "release": {"format", "geo", "release"},
    "splits": {"format", "geo", "splits"},
    "learn": {"format", "geo", "splits", "learn"},
    "commands": {"format", "geo", "builder", "release", "splits", "learn", "commands"},
    "resources": set(),
}
PARTS = tuple(ALLOWED_IMPORTS)
LEARN_FLOORS = ("runtime", "data", "models", "evaluation", "training")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _part_of(path: Path) -> str | None:
    relative = path.relative_to(PACKAGE).parts
    return relative[0] if len(relative) > 1 else None


def _imported_parts(path: Path, package: Path = PACKAGE) -> set[tuple[str, int]]:
    """(part, line) for every import of ``reben_tools.<part>`` in a module of ``package``, at any depth."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found: set[tuple[str, int]] = set()
    package_parts = path.relative_to(package).parts[:-1]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[: len(package_parts) - node.level + 1])
                module = ".".join(["reben_tools", *base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "reben_tools" and len(pieces) > 1 and pieces[1] in PARTS:
                found.add((pieces[1], node.lineno))
    return found


def test_every_part_is_a_subpackage() -> None:
    for part in PARTS:
        assert (PACKAGE / part / "__init__.py").is_file(), part


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_small_and_says_what_it_owns(path: Path) -> None:
    text = path.read_text("utf-8")
    lines = text.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines (at most {MAX_MODULE_LINES})"
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring, f"{path} has no module docstring"


@pytest.mark.parametrize(
    "path", [p for p in _modules() if _part_of(p) in ALLOWED_IMPORTS], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_imports_follow_the_dependency_direction(path: Path) -> None:
    part = _part_of(path)
    bad = sorted((imported, line) for imported, line in _imported_parts(path) if imported not in ALLOWED_IMPORTS[part])
    assert not bad, f"{path.relative_to(PACKAGE)} ({part}) imports " + ", ".join(
        f"reben_tools.{imported} at line {line}" for imported, line in bad
    )


def test_top_level_modules_are_only_entry_points() -> None:
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {"__init__.py", "cli.py", "data.py"}, top


def test_direction_check_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself: a format module that imports learn is reported.

    The probe lives in a copy's layout under ``tmp_path``, not in the package, where tests
    running in parallel (ruff, mypy and the file lists) would see it.
    """
    fake = tmp_path / "reben_tools" / "format" / "__layout_probe__.py"
    fake.parent.mkdir(parents=True)
    fake.write_text('"""probe"""\nfrom reben_tools.learn import dataset\nfrom ..builder import scenes\n')
    assert _imported_parts(fake, tmp_path / "reben_tools") == {("learn", 2), ("builder", 3)}


def _imported_learn_floors(path: Path) -> set[tuple[str, int]]:
    """(floor, line) for every import of ``reben_tools.learn.<floor>`` in a module, at any depth."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            module = node.module or ""
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if pieces[:2] == ["reben_tools", "learn"] and len(pieces) > 2 and pieces[2] in LEARN_FLOORS:
                found.add((pieces[2], node.lineno))
    return found


def test_learn_is_grouped_into_its_floors() -> None:
    loose = sorted(p.name for p in (PACKAGE / "learn").glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside learn's subpackages: {loose}"
    for floor in LEARN_FLOORS:
        assert (PACKAGE / "learn" / floor / "__init__.py").is_file(), floor


@pytest.mark.parametrize("path", sorted((PACKAGE / "learn").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_learn_imports_only_lower_floors(path: Path) -> None:
    relative = path.relative_to(PACKAGE / "learn").parts
    if len(relative) < 2:
        return
    allowed = set(LEARN_FLOORS[: LEARN_FLOORS.index(relative[0]) + 1])
    bad = sorted((floor, line) for floor, line in _imported_learn_floors(path) if floor not in allowed)
    assert not bad, f"learn/{'/'.join(relative)} imports " + ", ".join(
        f"learn.{floor} at line {line}" for floor, line in bad
    )
