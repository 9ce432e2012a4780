"""The linter, the formatter and the type checker read every file they are meant to.

Tools skip folders silently: ruff's default excludes hold ``dist``, ``_build``, ``venv`` and
``site-packages`` (older versions also ``build``), ruff follows ``.gitignore`` inside a git
checkout, and both tools take ``exclude`` settings. A skipped folder would pass CI unchecked, so
these tests ask each tool which files it reads, with the project's own configuration, and compare
that with the files on disk: the package's ``.py`` files for mypy, plus ``tests/`` and
``benchmarks/`` for ruff. The self-tests show that the comparison catches a skipped folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
RUFF_FOLDERS = ("reben_tools", "tests", "benchmarks")
MYPY_FOLDERS = ("reben_tools",)

_MYPY_SOURCES = """
import sys
from mypy.main import process_options

sources, _ = process_options(sys.argv[1:])
print("\\n".join(s.path for s in sources if s.path))
"""
"""Prints the files mypy would check (its own discovery and configuration), without checking them."""


def python_files(root: Path, folders: tuple[str, ...]) -> set[str]:
    """Every ``.py`` file under ``folders`` of ``root`` (caches and hidden folders aside), relative, POSIX."""
    found: set[str] = set()
    for folder in folders:
        for directory, subdirectories, files in os.walk(root / folder):
            subdirectories[:] = [d for d in subdirectories if d != "__pycache__" and not d.startswith(".")]
            found.update(
                (Path(directory) / name).relative_to(root).as_posix() for name in files if name.endswith(".py")
            )
    return found


def _relative_py(root: Path, listed: str) -> set[str]:
    paths = (Path(line.strip()) for line in listed.splitlines() if line.strip())
    return {
        (p if p.is_absolute() else root / p).resolve().relative_to(root.resolve()).as_posix()
        for p in paths
        if p.suffix == ".py"
    }


def ruff_files(root: Path, *options: str) -> set[str]:
    """The ``.py`` files ``ruff check .`` reads in ``root``, as CI runs it (``ruff check --show-files``)."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--show-files", *options, "."],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return _relative_py(root, done.stdout)


def mypy_files(root: Path, *options: str) -> set[str]:
    """The files a bare ``mypy`` checks in ``root``: the configured ``files``, after its excludes."""
    done = subprocess.run(
        [sys.executable, "-c", _MYPY_SOURCES, *options],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return _relative_py(root, done.stdout)


def difference(read: set[str], expected: set[str]) -> str:
    """'' when equal; otherwise which files a tool skipped and which it read beyond the expected ones."""
    lines = []
    if expected - read:
        lines.append(f"not read: {sorted(expected - read)}")
    if read - expected:
        lines.append(f"read beyond the expected folders: {sorted(read - expected)}")
    return "; ".join(lines)


def _needs(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} is part of the test extra")


# ------------------------------------------------------------------------------ the project


def test_ruff_reads_every_package_test_and_benchmark_file() -> None:
    _needs("ruff")
    expected = python_files(ROOT, RUFF_FOLDERS)
    assert "reben_tools/builder/scenes.py" in expected and "tests/conftest.py" in expected
    report = difference(ruff_files(ROOT), expected)
    assert not report, report


def test_ruff_format_reads_what_ruff_check_reads() -> None:
    """`ruff format` has no --show-files; it shares check's discovery, so no setting may narrow it alone."""
    settings = tomllib.loads(PYPROJECT.read_text("utf-8"))["tool"]["ruff"]
    for section in ("lint", "format"):
        narrowing = {"exclude", "extend-exclude", "include", "extend-include"} & set(settings.get(section, {}))
        assert not narrowing, f"[tool.ruff.{section}] narrows the files on its own: {sorted(narrowing)}"


def test_mypy_reads_every_package_file() -> None:
    _needs("mypy")
    settings = tomllib.loads(PYPROJECT.read_text("utf-8"))["tool"]["mypy"]
    assert settings["files"] == ["reben_tools"]  # CI runs a bare `mypy`: the files are the configured ones
    expected = python_files(ROOT, MYPY_FOLDERS)
    assert len(expected) > 100
    report = difference(mypy_files(ROOT), expected)
    assert not report, report


# ------------------------------------------------------------------------------ self-tests


def _project(tmp_path: Path, subpackage: str) -> Path:
    """A copy of this project's tool settings over a tiny package with ``reben_tools/<subpackage>/``."""
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    for relative in ("reben_tools/__init__.py", "reben_tools/kept.py", f"reben_tools/{subpackage}/__init__.py"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text('"""A module."""\n\nVALUE: int = 1\n', "utf-8")
    (tmp_path / f"reben_tools/{subpackage}/hidden.py").write_text('"""A module."""\n\nVALUE: int = 2\n', "utf-8")
    for folder in ("tests", "benchmarks"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "test_x.py").write_text('"""A test."""\n', "utf-8")
    return tmp_path


def test_self_test_a_default_excluded_folder_is_reported(tmp_path: Path) -> None:
    """A subpackage named ``dist`` (in ruff's default excludes) escapes ruff; the comparison says so."""
    _needs("ruff")
    root = _project(tmp_path, "dist")
    report = difference(ruff_files(root), python_files(root, RUFF_FOLDERS))
    assert report == "not read: ['reben_tools/dist/__init__.py', 'reben_tools/dist/hidden.py']"


def test_self_test_a_gitignored_folder_is_reported(tmp_path: Path) -> None:
    """The trap the package rename avoided: a generic ``.gitignore`` with ``build/`` hides ``reben_tools/build``."""
    _needs("ruff")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = _project(tmp_path, "build")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("build/\n", "utf-8")
    report = difference(ruff_files(root), python_files(root, RUFF_FOLDERS))
    assert report == "not read: ['reben_tools/build/__init__.py', 'reben_tools/build/hidden.py']"


def test_self_test_a_mypy_exclusion_is_reported(tmp_path: Path) -> None:
    _needs("mypy")
    root = _project(tmp_path, "geo")
    assert not difference(mypy_files(root), python_files(root, MYPY_FOLDERS))
    report = difference(mypy_files(root, "--exclude", "reben_tools/geo/"), python_files(root, MYPY_FOLDERS))
    assert report == "not read: ['reben_tools/geo/__init__.py', 'reben_tools/geo/hidden.py']"


# ------------------------------------------------------------------------------ CI runs them


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text("utf-8")
    after = text.split("exactly what CI runs, `.ci/run`):", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_ci_runs_exactly_the_readme_command_with_every_check_before_the_tests() -> None:
    command = _readme_test_command()
    script = (ROOT / ".ci" / "run").read_text("utf-8")
    steps = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert steps[-1] == command
    assert "set -euo pipefail" in steps  # any failing step fails CI
    checks = [part.strip() for part in command.split("&&")]
    assert checks[1:] == ["ruff check .", "ruff format --check .", "mypy", "python -m pytest -n 2"]
