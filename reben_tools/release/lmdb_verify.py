"""Verify a bare reBEN LMDB directory against its metadata files (no manifest).

This is how the official release is distributed: one ``data.mdb`` plus ``metadata.parquet``
(and the snow/cloud/shadow file). :func:`verify_lmdb` checks, reporting every problem as a
:class:`reben_tools.release.archive_tools.Fault` and never raising for a corrupt input:

* the data file holds every page its LMDB meta page names (a truncated file is reported,
  never opened);
* every value decodes as its kind (S2 patch, S1 patch, reference map; by key form);
* every metadata row has its values: ``patch_id`` (S2) and ``s1_name`` (S1);
* reference maps (``<patch_id>_reference_map``) are optional: an LMDB of S1 and S2 values
  only is a normal release (what most ConfigILM users hold). One line says whether it holds
  none or all of them; only a partial set is a fault, and that line names the missing ones;
* no key is left that no metadata row names.

Owns: :func:`verify_lmdb`.
Does not own: verifying sharded archives (``release.archive_tools``), the value format
(``format.codec``), the metadata schema (``format.metadata``), LMDB size checks (``format.envcheck``).
May import: ``format``, ``release.archive_tools``, lmdb.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import lmdb

from reben_tools.format import codec, naming
from reben_tools.format.layout import ArchiveError
from reben_tools.format.metadata import read_metadata
from reben_tools.format.reader import shared_environment
from reben_tools.release.archive_tools import Fault, VerifyReport

MAX_LISTED = 20
"""At most this many keys are listed one by one per kind of fault; the rest are counted."""


def verify_lmdb(path: str | os.PathLike, metadata: Iterable[str | os.PathLike], progress: bool = False) -> VerifyReport:
    """Check a bare reBEN LMDB directory and its metadata files.

    Args:
        path: the LMDB directory (holding ``data.mdb``).
        metadata: reBEN metadata parquet file(s) naming the patches it must hold.
        progress: show a progress bar over the values.

    Returns:
        A :class:`VerifyReport`: ``shards`` = 1, ``values`` read, and the faults (shard name =
        the directory's name; key-level faults name the key).
    """
    from tqdm import tqdm

    root = Path(path)
    name = root.name
    report = VerifyReport(shards=1)
    try:
        table = read_metadata([Path(p) for p in metadata])
    except ArchiveError as exc:
        report.faults.append(Fault("-", None, str(exc)))
        table = None
    wanted: dict[str, str] = {}  # key -> what names it
    maps: set[str] = set()  # reference-map keys the rows name (optional, all or none)
    if table is not None:
        for pid, s1 in zip(table.column("patch_id").to_pylist(), table.column("s1_name").to_pylist(), strict=True):
            if not isinstance(pid, str):
                report.faults.append(Fault("-", None, f"a metadata row has patch_id {pid!r}"))
                continue
            wanted[pid] = f"S2 patch of {pid}"
            maps.add(naming.reference_map_key(pid))
            if s1:
                wanted[s1] = f"S1 partner of {pid}"
    seen: set[str] = set()
    unnamed: list[str] = []
    last_key = None
    try:
        scope = shared_environment(root)
        env = scope.__enter__()
    except ArchiveError as exc:  # no data.mdb, truncated, or unopenable
        report.faults.append(Fault(name, None, str(exc)))
        return report
    try:
        with env.begin(buffers=True) as txn:
            total = txn.stat()["entries"]
            for raw_key, value in tqdm(txn.cursor(), total=total, desc="verify", unit="value", disable=not progress):
                try:
                    key = bytes(raw_key).decode("utf-8")
                except UnicodeDecodeError:
                    report.faults.append(Fault(name, repr(bytes(raw_key)), "key is not valid UTF-8"))
                    continue
                last_key = key
                report.values += 1
                seen.add(key)
                try:
                    codec.check_value(key, value, codec.kind_of_key(key))
                except ValueError as exc:
                    report.faults.append(Fault(name, key, str(exc)))
                if table is not None and key not in wanted and key not in maps:
                    unnamed.append(key)
    except lmdb.Error as exc:
        after = f" after key {last_key}" if last_key else ""
        report.faults.append(Fault(name, last_key, f"LMDB error while reading{after}: {exc}"))
        return report
    finally:
        scope.__exit__(None, None, None)
    if table is None:
        return report
    _reference_map_census(name, maps, seen, report)
    missing = [key for key in wanted if key not in seen]
    for key in sorted(missing)[:MAX_LISTED]:
        report.faults.append(Fault(name, key, f"the metadata names this key ({wanted[key]}), but the LMDB lacks it"))
    if len(missing) > MAX_LISTED:
        report.faults.append(
            Fault(name, None, f"... and {len(missing) - MAX_LISTED} more key(s) named by the metadata are missing")
        )
    for key in unnamed[:MAX_LISTED]:
        report.faults.append(Fault(name, key, "no metadata row names this key"))
    if len(unnamed) > MAX_LISTED:
        report.faults.append(
            Fault(name, None, f"... and {len(unnamed) - MAX_LISTED} more key(s) no metadata row names")
        )
    return report


def _reference_map_census(name: str, maps: set[str], seen: set[str], report: VerifyReport) -> None:
    """One line on the reference maps: a note when the LMDB holds none or all, a fault naming the missing ones otherwise."""
    present = len(maps & seen)
    if not maps:
        return
    if present == 0:
        report.notes.append(
            f"reference maps: none ({len(maps):,} patches, S1/S2 values only; show draws no map panel, --mix cutmix-lp and masks are off)"
        )
    elif present == len(maps):
        report.notes.append(f"reference maps: all {len(maps):,}")
    else:
        missing = sorted(maps - seen)
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5:,} more" if len(missing) > 5 else "")
        report.faults.append(
            Fault(
                name, None, f"reference maps: {present:,} of {len(maps):,} present, {len(missing):,} missing: {shown}"
            )
        )


__all__ = ["verify_lmdb"]
