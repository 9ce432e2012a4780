"""``reben demo``'s verdict: the archive it built, checked against the facts the region was generated with.

The generator writes ``inputs/expected.json``: for every complete patch of every generated
product, whether it must be kept (``kept``: true, false, or null where the Sentinel-1 partner
depends on resampling at a swath edge), its 19-class labels (null where a polygon grazes the
patch so thinly that a pixel centre may or may not fall in it), and the product's side
(``size_m``), from which reBEN's split of each patch follows (``geo.split_rule``).
:func:`check_demo_archive` compares the archive's ``patches.parquet`` with them and
:meth:`DemoVerdict.lines` says in a few lines whether the archive is right and how the
candidate, expected and kept counts reconcile.

Owns: :class:`DemoVerdict`, :class:`DemoCheckError`, :func:`check_demo_archive`.
Does not own: generating the facts (``build.demo_region``), building the archive
(``build.pipeline``), the split audit (``splits``, never imported by ``build``).
May import: ``format.layout``, ``geo.split_rule``, numpy, pyarrow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from reben_tools.format.layout import PATCHES_FILE
from reben_tools.geo.split_rule import reben_split

MAX_LISTED = 5


class DemoCheckError(RuntimeError):
    """The demo archive disagrees with ``expected.json``; the message names both."""


@dataclass
class DemoVerdict:
    """The archive against ``expected.json``.

    Attributes:
        candidates: complete patches of all generated products.
        expected_kept: patches that must be in the archive.
        expected_dropped: patches that must not be (no-data pixels, >= 25% unlabelled, no S1 partner).
        dropped_reasons: ``expected_dropped`` by reason (the first that applies, in that order).
        uncertain: patches whose presence is not fixed (S1 partner at a swath edge).
        uncertain_kept: how many of those the archive holds.
        labels_unchecked: kept patches whose labels are not fixed (a polygon grazes the patch).
        kept: patches in the archive.
        missing, unexpected, wrong_labels, wrong_split: offending patch ids.
    """

    candidates: int = 0
    expected_kept: int = 0
    expected_dropped: int = 0
    dropped_reasons: dict[str, int] = field(default_factory=dict)
    uncertain: int = 0
    uncertain_kept: int = 0
    labels_unchecked: int = 0
    kept: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_labels: list[str] = field(default_factory=list)
    wrong_split: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every expected fact holds."""
        return not (self.missing or self.unexpected or self.wrong_labels or self.wrong_split)

    def lines(self) -> list[str]:
        """The verdict in a few lines, first ``demo check: PASS`` or ``demo check: FAIL``."""
        checked = self.expected_kept - len(self.missing)
        out = [
            f"demo check: {'PASS' if self.ok else 'FAIL'} against inputs/expected.json",
            f"  {self.candidates} complete patches: {self.expected_kept} must be kept, {self.expected_dropped} must be "
            f"dropped ({', '.join(f'{k} {v}' for k, v in self.dropped_reasons.items())}), {self.uncertain} uncertain (S1 partner at a swath edge; {self.uncertain_kept} kept) "
            f"-> {self.expected_kept} + {self.uncertain_kept} = {self.expected_kept + self.uncertain_kept}, "
            f"archive holds {self.kept}",
            f"  every expected patch present: {_yes(self.missing)}; no dropped patch present: {_yes(self.unexpected)}",
            f"  labels equal: {_yes(self.wrong_labels)} ({checked - self.labels_unchecked} checked, "
            f"{self.labels_unchecked} left open where a polygon grazes the patch); splits equal: {_yes(self.wrong_split)}",
        ]
        return out


def _yes(bad: list[str]) -> str:
    if not bad:
        return "yes"
    more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return f"NO ({', '.join(bad[:MAX_LISTED])}{more})"


def check_demo_archive(expected_json: str | Path, archive_dir: str | Path) -> DemoVerdict:
    """Check a demo archive against the generator's ``expected.json``.

    Args:
        expected_json: ``inputs/expected.json`` of the generated region.
        archive_dir: the archive built from it (its ``patches.parquet`` is read).

    Returns:
        the :class:`DemoVerdict`.
    """
    facts = json.loads(Path(expected_json).read_text("utf-8"))
    table = pq.read_table(Path(archive_dir) / PATCHES_FILE, columns=["patch_id", "labels", "split"])
    archive = {
        pid: (tuple(labels or ()), split)
        for pid, labels, split in zip(
            table.column("patch_id").to_pylist(),
            table.column("labels").to_pylist(),
            table.column("split").to_pylist(),
            strict=True,
        )
    }
    verdict = DemoVerdict(kept=len(archive))
    for product in facts["s2_products"]:
        patches = product["patches"]
        splits = reben_split(
            np.array([p["x"] for p in patches]), np.array([p["y"] for p in patches]), float(product["size_m"])
        )
        for patch, split in zip(patches, splits, strict=True):
            pid, kept = patch["patch_id"], patch["kept"]
            verdict.candidates += 1
            if kept is None:
                verdict.uncertain += 1
                verdict.uncertain_kept += pid in archive
                continue
            if not kept:
                verdict.expected_dropped += 1
                reason = (
                    "no-data pixels"
                    if patch["has_nodata"]
                    else ">= 25% unlabelled"
                    if patch["unlabeled_fraction"] >= 0.25
                    else "no S1 partner"
                )
                verdict.dropped_reasons[reason] = verdict.dropped_reasons.get(reason, 0) + 1
                if pid in archive:
                    verdict.unexpected.append(pid)
                continue
            verdict.expected_kept += 1
            if pid not in archive:
                verdict.missing.append(pid)
                continue
            labels, archive_split = archive[pid]
            if patch["labels"] is None:
                verdict.labels_unchecked += 1
            elif labels != tuple(patch["labels"]):
                verdict.wrong_labels.append(pid)
            if archive_split != split:
                verdict.wrong_split.append(pid)
    return verdict
