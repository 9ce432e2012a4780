"""Faults survived by ``reben encode``, ``reben merge`` and the readers, with real processes and files.

- SIGKILL at several points of an encode (during a patch of a block, with a shard's
  ``.tmp-*`` directory written but not renamed, after the rename but before the resume
  record, during the metadata, during the manifest's atomic write; from outside at a
  random moment; with pool workers orphaned) -> rerunning the same command finishes an
  archive byte-identical, file by file, to an uninterrupted run's.
- The disk filling up (a file-size limit, so writes fail with EFBIG as on a full disk)
  while a shard or the metadata is written -> a clear error naming the file, nothing
  half-written left reachable, and a resume after the limit is lifted completes.
- Two encodes on one output directory: the second refuses, naming the first's pid.
- Readers during ``merge`` and during a resumed encode see a complete archive or a clear error.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_helpers import (
    DIE_DURING_MANIFEST_WRITE,
    LOCK_FILE,
    encode_args,
    lmdb_items,
    run_cli_with_fault,
    start_cli_with_fault,
    tree_digest,
)

from reben_tools.format.layout import ArchiveError
from reben_tools.format.locking import OutputLock, OutputLockedError
from reben_tools.format.reader import Archive
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.release.encode import encode_release
from reben_tools.release.synthetic_release import write_synthetic_release

N_PATCHES = 8
PER_SHARD = 2  # -> 4 shards: shard-00000 .. shard-00003


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_synthetic_release(tmp_path_factory.mktemp("release"), N_PATCHES, seed=11)


@pytest.fixture(scope="module")
def reference(release, tmp_path_factory):
    """An uninterrupted encode of the release (the answer every interrupted run must reach)."""
    out = tmp_path_factory.mktemp("reference") / "archive"
    encode_release(
        release.s2_dir,
        out,
        release.s1_dir,
        release.reference_maps_dir,
        release.metadata_files,
        workers=1,
        patches_per_shard=PER_SHARD,
        progress=False,
    )
    digest = tree_digest(out)
    assert sorted(p for p in digest if p.startswith("shards/") and p.endswith("data.mdb")) == [
        f"shards/shard-0000{i}/data.mdb" for i in range(4)
    ]
    assert not any(Path(p).name.startswith(".") for p in digest)  # no lock, no resume records, no temporaries
    return out, digest


SLOW_PATCHES = """
import reben_tools.release.encode_workers as _enc
_encode_patch = _enc.encode_patch
def _slow(job):
    time.sleep({seconds})
    return _encode_patch(job)
_enc.encode_patch = _slow
"""

KILL_POINTS = {
    # the 5th patch: shards 0 and 1 are finished, shard 2 is half read
    "during a block": (
        """
        import reben_tools.release.encode_workers as enc
        _encode_patch, _n = enc.encode_patch, [0]
        def encode_patch(job):
            _n[0] += 1
            if _n[0] == 5:
                die()
            return _encode_patch(job)
        enc.encode_patch = encode_patch
        """,
        2,
        {"shard-00000", "shard-00001"},
    ),
    # shard 2's LMDB, keys, rows and shard.json are written under .tmp-shard-00002-*, not yet renamed
    "between shard write and rename": (
        """
        _rename = os.rename
        def rename(src, dst, *a, **k):
            if os.path.basename(str(src)).startswith(".tmp-shard-00002"):
                die()
            return _rename(src, dst, *a, **k)
        os.rename = rename
        """,
        2,
        {"shard-00000", "shard-00001", ".tmp-shard-00002-*"},
    ),
    # shard 1 is in place, but its resume record was never written: it must be re-encoded
    "after rename, before the resume record": (
        """
        import reben_tools.release.encode as enc
        _write = enc.write_json_atomic
        def write_json_atomic(path, data):
            if ".encode-resume" in str(path) and "shard-00001" in str(path):
                die()
            return _write(path, data)
        enc.write_json_atomic = write_json_atomic
        """,
        1,
        {"shard-00000", "shard-00001"},
    ),
    # every shard finished, patches.parquet written, the metadata files not
    "during metadata": (
        """
        import reben_tools.release.encode as enc
        def write_metadata(*a, **k):
            die()
        enc.write_metadata = write_metadata
        """,
        4,
        {"shard-00000", "shard-00001", "shard-00002", "shard-00003"},
    ),
    # the manifest's temporary file is written, the rename into manifest.json never happens
    "during the manifest write": (
        DIE_DURING_MANIFEST_WRITE,
        0,
        {"shard-00000", "shard-00001", "shard-00002", "shard-00003"},
    ),
}


def shard_entries(out: Path) -> set[str]:
    shards = out / "shards"
    names = set()
    for entry in shards.iterdir() if shards.is_dir() else []:
        names.add(".tmp-shard-00002-*" if entry.name.startswith(".tmp-shard-00002-") else entry.name)
    return names


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_resume_gives_the_uninterrupted_archive_byte_for_byte(point, release, reference, tmp_path):
    fault, kept, left = KILL_POINTS[point]
    out = tmp_path / "archive"
    killed = run_cli_with_fault(encode_args(release, out, PER_SHARD), fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "manifest.json").exists()
    assert shard_entries(out) == left
    if point == "during the manifest write":
        assert list(out.glob(".manifest.json.tmp-*")), "the kill should have left the manifest's temporary file"
        assert not (out / ".encode-resume").exists()

    resumed = run_cli_with_fault(encode_args(release, out, PER_SHARD))
    assert resumed.returncode == 0, resumed.stderr
    if kept:
        assert f"resumed: kept {kept} shard(s)" in resumed.stderr
    else:
        assert "resumed" not in resumed.stderr
    assert tree_digest(out) == reference[1]


def test_external_sigkill_mid_run_then_resume(release, reference, tmp_path):
    """SIGKILL from outside, at whatever moment the first shard has just appeared."""
    out = tmp_path / "archive"
    proc = start_cli_with_fault(encode_args(release, out, PER_SHARD), SLOW_PATCHES.format(seconds=0.15))
    deadline = time.monotonic() + 60
    while not (out / "shards" / "shard-00000").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert not (out / "manifest.json").exists()
    resumed = run_cli_with_fault(encode_args(release, out, PER_SHARD))
    assert resumed.returncode == 0, resumed.stderr
    assert tree_digest(out) == reference[1]


def wait_for_lock_free(out: Path, seconds: float = 60) -> float:
    started = time.monotonic()
    while True:
        try:
            with OutputLock(out, "test"):
                return time.monotonic() - started
        except OutputLockedError:
            assert time.monotonic() - started < seconds, "the lock was never released"
            time.sleep(0.05)


def test_killed_parent_takes_its_pool_workers_along_then_resume(release, reference, tmp_path):
    """The parent of a 2-process pool is SIGKILLed while its workers encode: the workers
    die with it (they would otherwise wait forever on their task queue, holding the
    output lock they inherited), the lock is free at once, and a resume completes."""
    out = tmp_path / "archive"
    fault = (
        SLOW_PATCHES.format(seconds=0.15)
        + """
import reben_tools.release.encode as _enc2
_write = _enc2.write_json_atomic
def _record(path, data):
    _write(path, data)
    if ".encode-resume" in str(path):
        die()  # the parent dies right after recording its first finished shard
_enc2.write_json_atomic = _record
"""
    )
    killed = run_cli_with_fault(encode_args(release, out, PER_SHARD, workers=2), fault, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert wait_for_lock_free(out, seconds=10) < 5
    resumed = run_cli_with_fault(encode_args(release, out, PER_SHARD))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: kept" in resumed.stderr
    assert tree_digest(out) == reference[1]


# ---------------------------------------------------------------------------- disk full

DISK_FULL_AFTER_TWO_SHARDS = """
import reben_tools.release.encode_workers as enc
_write_shard, _n = enc.write_shard, [0]
def write_shard(*a, **k):
    if _n[0] == 2:  # the disk fills up: every later write past 64 KiB fails (EFBIG, like ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    _n[0] += 1
    return _write_shard(*a, **k)
enc.write_shard = write_shard
"""

DISK_FULL_AT_METADATA = """
import reben_tools.release.encode as enc
_write_metadata = enc.write_metadata
def write_metadata(*a, **k):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, resource.RLIM_INFINITY))
    return _write_metadata(*a, **k)
enc.write_metadata = write_metadata
"""


def test_disk_full_during_a_shard_is_a_clear_error_and_resume_completes(release, reference, tmp_path):
    out = tmp_path / "archive"
    failed = run_cli_with_fault(encode_args(release, out, PER_SHARD), DISK_FULL_AFTER_TWO_SHARDS)
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr
    assert f"error: {out / 'shards' / 'shard-00002'}: cannot write shard" in failed.stderr
    # LMDB turns the short write into EIO; the message says where and suggests the cause
    assert "Input/output error; is the disk full?" in failed.stderr or "File too large" in failed.stderr
    assert not (out / "manifest.json").exists()
    assert not list((out / "shards").glob(".tmp-*")), "the failed shard's temporary directory must be removed"
    assert shard_entries(out) == {"shard-00000", "shard-00001"}
    for name in ("shard-00000", "shard-00001"):  # what is in place is complete and exact
        assert lmdb_items(out / "shards" / name) == lmdb_items(reference[0] / "shards" / name)

    resumed = run_cli_with_fault(encode_args(release, out, PER_SHARD))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: kept 2 shard(s)" in resumed.stderr
    assert tree_digest(out) == reference[1]


def test_disk_full_during_metadata_is_a_clear_error_and_resume_completes(release, reference, tmp_path):
    out = tmp_path / "archive"
    failed = run_cli_with_fault(encode_args(release, out, PER_SHARD), DISK_FULL_AT_METADATA)
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr
    assert f"error: {out}: cannot write the archive" in failed.stderr and "File too large" in failed.stderr
    assert "rerun the same command to resume" in failed.stderr
    assert not (out / "manifest.json").exists() and not (out / "metadata.parquet").exists()
    assert not list(out.glob(".*.tmp-*")), "the failed atomic write must remove its temporary file"
    resumed = run_cli_with_fault(encode_args(release, out, PER_SHARD))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: kept 4 shard(s)" in resumed.stderr
    assert tree_digest(out) == reference[1]


# ---------------------------------------------------------------------------- one writer


def test_a_second_encode_on_the_same_output_refuses_naming_the_first(release, reference, tmp_path):
    out = tmp_path / "archive"
    first = start_cli_with_fault(encode_args(release, out, PER_SHARD), SLOW_PATCHES.format(seconds=0.2))
    deadline = time.monotonic() + 60
    while not (out / LOCK_FILE).exists() or f'"pid": {first.pid}' not in (out / LOCK_FILE).read_text():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    second = run_cli_with_fault(encode_args(release, out, PER_SHARD))
    assert second.returncode == 2
    assert f"error: {out}: another writer is using this output directory: pid {first.pid}" in second.stderr
    assert "reben encode" in second.stderr
    assert first.wait(timeout=120) == 0, first.communicate()
    assert tree_digest(out) == reference[1]  # the refused run touched nothing


def test_the_lock_is_released_by_the_kernel_when_its_holder_is_killed(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from reben_tools.format.locking import OutputLock\n"
            f"lock = OutputLock({str(tmp_path)!r}, 'holder'); lock.acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputLockedError, match=f"pid {holder.pid} on .* \\(holder\\) holds"):
        OutputLock(tmp_path, "second").acquire()
    holder.kill()
    holder.wait()
    assert wait_for_lock_free(tmp_path, seconds=5) < 1.0  # no stale lock after SIGKILL
    with OutputLock(tmp_path, "third") as lock:
        assert lock.held and (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


# ---------------------------------------------------------------------------- readers during writes


def check_reader_observation(path: Path, expected: dict[str, bytes], seen: dict[str, int]) -> None:
    """One read attempt: a clear ArchiveError, or every key with exactly the expected bytes."""
    try:
        with Archive(path) as source:
            got = {key: source.get(key) for key in source.keys()}  # noqa: SIM118 -- an Archive, not a dict: it has keys() but is not iterable
    except ArchiveError as exc:
        assert str(path) in str(exc)  # noqa: PT017 -- a reader racing the writer may see either outcome; pytest.raises does not apply
        seen["error"] += 1
        return
    assert got == expected
    seen["complete"] += 1


def archive_items(archive_dir):
    """Every (key, value) of every shard of an archive, read without reben-tools."""
    items = {}
    for shard in sorted((archive_dir / "shards").iterdir()):
        items.update(lmdb_items(shard))
    return items


def slow_merge_fault(delay_s: float) -> str:
    """Fault code that makes ``merge`` sleep ``delay_s`` after each key, so others can race it."""
    return f"""
import reben_tools.release.archive_tools as at, types
_merge = at.heapq.merge
def _slow(*a, **k):
    for item in _merge(*a, **k):
        time.sleep({delay_s})
        yield item
at.heapq = types.SimpleNamespace(merge=_slow)
"""


def test_readers_during_merge_see_nothing_or_everything(reference, tmp_path):
    archive_dir = reference[0]
    expected = archive_items(archive_dir)
    out = tmp_path / "merged"
    slow_merge = slow_merge_fault(0.01)
    proc = start_cli_with_fault(["merge", str(archive_dir), str(out), "--quiet"], slow_merge)
    seen = {"error": 0, "complete": 0}
    while proc.poll() is None:
        check_reader_observation(out, expected, seen)
        time.sleep(0.01)
    assert proc.returncode == 0, proc.communicate()
    check_reader_observation(out, expected, seen)
    assert seen["error"] >= 3 and seen["complete"] >= 1, seen


def test_readers_during_a_resumed_encode_see_a_clear_error_until_the_archive_is_complete(release, reference, tmp_path):
    out = tmp_path / "archive"
    fault, _, _ = KILL_POINTS["during a block"]
    assert run_cli_with_fault(encode_args(release, out, PER_SHARD), fault).returncode == -signal.SIGKILL
    expected = archive_items(reference[0])
    proc = start_cli_with_fault(encode_args(release, out, PER_SHARD), SLOW_PATCHES.format(seconds=0.1))
    seen = {"error": 0, "complete": 0}
    dataset_errors = 0
    while proc.poll() is None:
        check_reader_observation(out, expected, seen)
        if seen["complete"] == 0:
            try:
                ReBENDataset(out)
            except ArchiveError as exc:
                assert "neither a reben-tools archive (manifest.json) nor an LMDB directory" in str(exc)  # noqa: PT017 -- a reader racing the writer may see either outcome; pytest.raises does not apply
                dataset_errors += 1
        time.sleep(0.02)
    assert proc.returncode == 0, proc.communicate()
    check_reader_observation(out, expected, seen)
    assert seen["error"] >= 3 and dataset_errors >= 1 and seen["complete"] >= 1, seen
    assert tree_digest(out) == reference[1]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_many_random_sigkills_then_resume_reach_the_same_bytes(workers, release, reference, tmp_path):
    """Heavier variant: the same output directory is SIGKILLed from outside at 8 random
    moments in a row (each run resuming the previous), then finished; byte-identical."""
    import random

    out = tmp_path / "archive"
    rng = random.Random(workers)
    kills = 0
    for _ in range(8):
        # a full run takes at least 0.8 s to start plus 8 x 0.3 s / workers: the first is always killed
        proc = start_cli_with_fault(encode_args(release, out, PER_SHARD, workers), SLOW_PATCHES.format(seconds=0.3))
        time.sleep(rng.uniform(0.2, 1.2))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate()
        wait_for_lock_free(out, seconds=30)
        if (out / "manifest.json").exists():
            break
    if not (out / "manifest.json").exists():
        resumed = run_cli_with_fault(encode_args(release, out, PER_SHARD, workers))
        assert resumed.returncode == 0, resumed.stderr
    assert kills >= 1
    assert tree_digest(out) == reference[1]


def test_two_concurrent_merges_into_one_directory_one_wins_the_other_says_so(reference, tmp_path):
    archive_dir = reference[0]
    expected = archive_items(archive_dir)
    out = tmp_path / "merged"
    slow_merge = slow_merge_fault(0.02)
    procs = [start_cli_with_fault(["merge", str(archive_dir), str(out), "--quiet"], slow_merge) for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 1], results
    loser = next(err for rc, _, err in results if rc == 1)
    assert "Traceback" not in loser
    # overlapping: the loser finds the directory filled at its rename; otherwise it refuses up front
    assert (
        f"error: {out}: was written by another process during the merge" in loser
        or f"error: {out}: exists and is not an empty directory" in loser
    ), loser
    assert lmdb_items(out) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temporary directory left
