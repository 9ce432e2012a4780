"""Helpers of the reliability and adversarial suites: a small release, reference archives,
byte-level comparison of archive trees, and encode runs in real subprocesses with a fault
injected at a chosen point (the process SIGKILLs itself there, or hits a file-size limit).

Nothing here calls the code under test to work out an expected answer: trees are compared
file by file with hashlib, LMDB files are read with plain ``lmdb``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb

REPO = Path(__file__).resolve().parents[1]
LOCK_FILE = ".reben.lock"


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (hidden ones included)."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def lmdb_items(env_dir: Path, errors: str = "surrogateescape") -> dict[str, bytes]:
    """Every (key, value) of an LMDB directory, read with plain lmdb (not the code under test).

    ``errors`` is how non-UTF-8 keys decode: ``"strict"`` makes them fail the test.
    """
    env = lmdb.open(str(env_dir), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            return {bytes(k).decode("utf-8", errors): bytes(v) for k, v in txn.cursor()}
    finally:
        env.close()


def encode_args(release, out: Path, per_shard: int = 2, workers: int = 1) -> list[str]:
    return [
        "encode",
        "--s2-dir",
        str(release.s2_dir),
        "--s1-dir",
        str(release.s1_dir),
        "--reference-maps-dir",
        str(release.reference_maps_dir),
        "--metadata",
        str(release.metadata_files[0]),
        "--metadata",
        str(release.metadata_files[1]),
        "--out",
        str(out),
        "--patches-per-shard",
        str(per_shard),
        "--workers",
        str(workers),
        "--quiet",
    ]


PRELUDE = """
import os, resource, signal, sys, time
sys.argv = ["reben"] + {args!r}
def die():
    sys.stdout.flush(); sys.stderr.flush()
    if {group!r}:
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
"""


DIE_DURING_MANIFEST_WRITE = """
    _replace = os.replace
    def replace(src, dst, *a, **k):
        if str(dst).endswith("manifest.json"):
            die()
        return _replace(src, dst, *a, **k)
    os.replace = replace
    """
"""A fault for :func:`run_cli_with_fault`: SIGKILL inside the manifest's atomic write, after its
temporary file is written and before the rename into ``manifest.json``."""


def _fault_command(args: list[str], fault: str, new_session: bool) -> list[str]:
    """The ``python -c`` command line that runs ``fault``, then ``reben <args>``."""
    code = (
        PRELUDE.format(args=args, group=new_session)
        + textwrap.dedent(fault)
        + "\nfrom reben_tools.cli import main\nmain()\n"
    )
    return [sys.executable, "-c", code]


def run_cli_with_fault(
    args: list[str], fault: str = "", timeout: float = 120, new_session: bool = False
) -> subprocess.CompletedProcess:
    """Run ``reben <args>`` in a fresh Python process after executing ``fault`` (code that
    wraps a function so the process dies or fails at a chosen point; ``die()`` SIGKILLs it,
    and with ``new_session`` its whole process group: e.g. a build's LocalCluster workers)."""
    return subprocess.run(
        _fault_command(args, fault, new_session),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=new_session,
    )


def start_cli_with_fault(args: list[str], fault: str = "", new_session: bool = False) -> subprocess.Popen:
    """:func:`run_cli_with_fault` without waiting: the running process, stdout/stderr piped."""
    return subprocess.Popen(
        _fault_command(args, fault, new_session),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=new_session,
    )
