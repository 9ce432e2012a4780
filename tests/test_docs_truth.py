"""What the README and docs tell users is true (issue 10's "README truth" items)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USER_TEXTS = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "reben_tools").rglob("*.py"),
        *(ROOT / "schemas").glob("*.json"),
        *(ROOT / "pipelines").glob("*"),
    ]
)


def _dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    return {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}


def test_no_user_text_cites_the_internal_spec():
    """Users have no SPEC document: the docs, README and code state the facts themselves."""
    citing = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in USER_TEXTS
        if p.is_file()
        for i, line in enumerate(p.read_text("utf-8").splitlines(), 1)
        if re.search(r"SPEC\.md|\bSPEC (section|§)|\(SPEC\)|\bthe SPEC\b", line)
    ]
    assert not citing, citing


def test_docs_say_no_dependency_is_missing_that_pyproject_declares():
    dependencies = _dependencies()
    assert "bokeh" in dependencies
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = " ".join(path.read_text("utf-8").split())
        for name in dependencies:
            assert not re.search(rf"`?{re.escape(name)}`?,? which is not a dependency", text, re.I), (path.name, name)


def test_readme_is_honest_about_the_torch_build():
    text = (ROOT / "README.md").read_text("utf-8")
    assert "torch is pinned so pip takes the CPU build" not in text
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    assert "CUDA build" in text  # says what a plain `pip install torch==...` fetches on Linux


def test_readme_split_example_works_on_the_archive_metadata():
    """The example splits ARCHIVE/metadata.parquet (tests/test_safety.py shows it gives the archive's split)."""
    text = (ROOT / "README.md").read_text("utf-8")
    assert "reben split my-archive/metadata.parquet --strategy reben --out with_split.parquet" in text


@pytest.mark.parametrize(
    "path",
    [
        "my-archive/manifest.json",
        "reben-lmdb/data.mdb",
        "release/BigEarthNet-S2/x.tif",
        "s1-archive/manifest.json",
        "emb.parquet",
        "metadata-10%.parquet",
        "audit/report.md",
        "with_split.parquet",
        "reben-demo/archive/manifest.json",
        "train-10.parquet",
        "BigEarthNet-V2-LMDB/data.mdb",
    ],
)
def test_readme_example_outputs_are_ignored_by_git(path):
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
    assert result.returncode == 0, f"{path} is not in .gitignore"


def test_package_sources_are_not_ignored():
    result = subprocess.run(["git", "check-ignore", "-q", "reben_tools/release/encode.py"], cwd=ROOT)
    assert result.returncode == 1
