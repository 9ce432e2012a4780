"""Label-fraction subsets of the training split: deterministic, stratified, in reBEN's metadata schema.

Linear-probe protocols (CROMA, SSL4EO, the DOFA-on-BigEarthNet study) fit on 1% or 10% of the
training split. :func:`fraction_indices` draws such a subset from patch ids and multi-hot
labels alone, so the same function serves metadata files (``reben subset``), the dataset's
``train_fraction`` and probes on embedding files:

1. each row gets a key: the first 8 bytes (big-endian) of ``blake2b(f"{seed}:{patch_id}")``,
   so the draw depends on the seed and the patch ids only, never on row order;
2. the subset size is ``n = max(1, floor(fraction * N + 0.5))``;
3. coverage: for every class with at least one positive, rarest first (fewest positives, then
   class name), if no row chosen so far has it, the positive with the smallest key is chosen;
4. stratification, by iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011) into
   two parts, the subset and the rest: each class wants ``fraction * positives - coverage rows
   with it`` more positives in the subset and ``(1 - fraction) * positives`` in the rest; the
   subset wants ``n - coverage rows`` more rows and the rest ``N - n``. Repeatedly the class
   with the fewest unplaced positives is taken (ties: the rarer class overall) and its
   unplaced rows, in key order, each go to the part that wants that class more (tie: the
   part that wants more rows; tie: the subset), unless one part is full; every placement
   lowers the wants of all the row's classes. Rows without labels are placed last, in key order.

The subset has exactly ``n`` rows, unless the coverage rule alone needs more (only in very
small splits: then it is the coverage rows); ``fraction == 1`` returns every row.

Owns: fraction_indices, labels_matrix, subset_table, label_distribution, write_subset, write_subset_rows, SubsetError.
Does not own: the metadata schema and files (``format.metadata``), split strategies (``splits.strategies``).
May import: ``format`` (labels, layout, metadata, atomic), numpy, pyarrow.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reben_tools.format.atomic import write_parquet_atomic
from reben_tools.format.labels import class_names
from reben_tools.format.layout import FLAGGED_METADATA_FILE, METADATA_FILE, ArchiveError
from reben_tools.format.metadata import METADATA_SCHEMA, metadata_table, read_metadata


class SubsetError(ValueError):
    """A subset cannot be drawn; the message names the input and what is wrong."""


def _check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not (0.0 < fraction <= 1.0) or math.isnan(fraction):
        raise SubsetError(f"fraction must be in (0, 1], got {fraction}")
    return fraction


def subset_keys(patch_ids: Sequence[str], seed: int) -> np.ndarray:
    """uint64 draw keys: the first 8 bytes (big-endian) of ``blake2b(f"{seed}:{patch_id}")``."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}:{pid}".encode(), digest_size=8).digest(), "big") for pid in patch_ids],
        dtype=np.uint64,
    )


def fraction_indices(
    patch_ids: Sequence[str], labels: np.ndarray, fraction: float, seed: int = 0, names: Sequence[str] | None = None
) -> np.ndarray:
    """Rows of a deterministic, stratified subset (see the module docstring for the rule).

    Args:
        patch_ids: N patch ids (the draw depends on these and ``seed`` only).
        labels: (N, K) multi-hot labels (any dtype; nonzero = positive).
        fraction: share of the rows to keep, in (0, 1].
        seed: draw seed.
        names: K class names used to break rarity ties (default: column index).

    Returns:
        int64 row indices, ascending.
    """
    fraction = _check_fraction(fraction)
    y = np.asarray(labels) != 0
    n_rows = len(patch_ids)
    if y.ndim != 2 or y.shape[0] != n_rows:
        raise SubsetError(f"labels {y.shape} must be (N, K) with N = {n_rows} patch ids")
    if fraction == 1.0 or n_rows == 0:
        return np.arange(n_rows, dtype=np.int64)
    k = y.shape[1]
    tie = list(names) if names is not None else [f"{j:06d}" for j in range(k)]
    counts = y.sum(axis=0)
    rarity = sorted((j for j in range(k) if counts[j] > 0), key=lambda j: (int(counts[j]), tie[j]))
    rank_of = np.full(k, k, dtype=np.int64)  # rank in rarity order; classes without positives last
    for r, j in enumerate(rarity):
        rank_of[j] = r
    keys = subset_keys(patch_ids, seed)
    # order of draw: key, then patch id for the (practically impossible) equal keys
    order = np.lexsort((np.asarray(patch_ids, dtype=object).astype(str), keys))
    position = np.empty(n_rows, dtype=np.int64)
    position[order] = np.arange(n_rows)

    chosen = np.zeros(n_rows, dtype=bool)
    for j in rarity:  # coverage
        positives = np.flatnonzero(y[:, j])
        if not chosen[positives].any():
            chosen[positives[np.argmin(position[positives])]] = True

    target = max(1, math.floor(fraction * n_rows + 0.5))
    if chosen.sum() >= target:
        return np.flatnonzero(chosen).astype(np.int64)
    want_subset = fraction * counts - y[chosen].sum(axis=0)
    want_rest = (1.0 - fraction) * counts
    room_subset = target - int(chosen.sum())
    room_rest = n_rows - target
    placed = chosen.copy()
    rows_of = [np.flatnonzero(y[:, j])[np.argsort(position[y[:, j]], kind="stable")] for j in range(k)]
    while True:
        left = np.array([int((~placed[rows_of[j]]).sum()) for j in range(k)], dtype=np.int64)
        open_classes = [j for j in range(k) if left[j] > 0]
        if not open_classes:
            break
        label = min(open_classes, key=lambda j: (left[j], rank_of[j]))
        for row in rows_of[label]:
            if placed[row]:
                continue
            if room_subset > 0 and (
                room_rest == 0
                or want_subset[label] > want_rest[label]
                or (want_subset[label] == want_rest[label] and room_subset >= room_rest)
            ):
                chosen[row] = True
                room_subset -= 1
                want_subset[y[row]] -= 1
            else:
                room_rest -= 1
                want_rest[y[row]] -= 1
            placed[row] = True
    unlabelled = np.flatnonzero(~placed)
    unlabelled = unlabelled[np.argsort(position[unlabelled], kind="stable")]
    chosen[unlabelled[:room_subset]] = True
    return np.flatnonzero(chosen).astype(np.int64)


def labels_matrix(table: pa.Table, source: str = "<table>") -> np.ndarray:
    """(N, 19) bool multi-hot labels of a table's ``labels`` column (alphabetical class order).

    Raises:
        SubsetError: a label is not one of the 19 reBEN classes (names the patch).
    """
    names = class_names("alphabetical")
    index = {name: i for i, name in enumerate(names)}
    out = np.zeros((table.num_rows, len(names)), dtype=bool)
    ids = table.column("patch_id").to_pylist()
    for row, labels in enumerate(table.column("labels").to_pylist()):
        for label in labels or ():
            j = index.get(label)
            if j is None:
                raise SubsetError(f"{source}: patch {ids[row]!r} has label {label!r}, not one of the 19 reBEN classes")
            out[row, j] = True
    return out


def subset_table(
    table: pa.Table, fraction: float, seed: int = 0, split: str = "train", source: str = "<table>"
) -> pa.Table:
    """``table`` with its ``split`` rows reduced to the stratified ``fraction``; other rows kept.

    Works on any table with ``patch_id``, ``labels`` and ``split`` columns (row order kept).
    """
    fraction = _check_fraction(fraction)
    for column in ("patch_id", "labels", "split"):
        if column not in table.column_names:
            raise SubsetError(f"{source}: no {column!r} column")
    in_split = _in_split(table, split)
    rows = np.flatnonzero(in_split)
    if rows.size == 0:
        present = sorted({s for s in table.column("split").to_pylist() if s is not None})
        raise SubsetError(f"{source}: no {split!r} rows to draw from (splits present: {present})")
    part = table.take(rows)
    keep_in_split = rows[
        fraction_indices(
            cast(list[str], part.column("patch_id").to_pylist()),  # ids are strings (a null would hash as 'None')
            labels_matrix(part, source),
            fraction,
            seed,
            class_names("alphabetical"),
        )
    ]
    keep = ~in_split
    keep[keep_in_split] = True
    return table.filter(pa.array(keep))


def _in_split(table: pa.Table, split: str) -> np.ndarray:
    """bool[rows]: the rows whose ``split`` is ``split`` (nulls are in none)."""
    return np.asarray(pc.equal(table["split"], pa.scalar(split)).fill_null(False).to_numpy(zero_copy_only=False))


def label_distribution(full: pa.Table, subset: pa.Table, split: str = "train") -> dict[str, Any]:
    """Per-class positives of ``split`` in the full table and in the subset.

    Returns:
        ``{"split", "patches": {"full", "subset"}, "classes": {name: {"full", "subset",
        "full_share", "subset_share"}}, "max_share_difference", "classes_lost"}``; shares are
        positives / patches of the split (0 for an empty one); ``classes_lost`` lists classes
        with positives in the full split and none in the subset.
    """
    names = class_names("alphabetical")
    out: dict[str, Any] = {"split": split, "patches": {}, "classes": {n: {} for n in names}}
    for which, table in (("full", full), ("subset", subset)):
        part = table.filter(_in_split(table, split))
        counts = labels_matrix(part).sum(axis=0)
        out["patches"][which] = int(part.num_rows)
        for name, count in zip(names, counts, strict=True):
            out["classes"][name][which] = int(count)
            out["classes"][name][f"{which}_share"] = float(count / part.num_rows) if part.num_rows else 0.0
    out["max_share_difference"] = max(abs(c["full_share"] - c["subset_share"]) for c in out["classes"].values())
    out["classes_lost"] = [n for n, c in out["classes"].items() if c["full"] > 0 and c["subset"] == 0]
    return out


def distribution_markdown(report: dict[str, Any]) -> str:
    """The label distribution of :func:`label_distribution` as a Markdown table."""
    p = report["patches"]
    lines = [f"| class | full {report['split']} ({p['full']:,}) | subset ({p['subset']:,}) |", "|---|---:|---:|"]
    for name, c in report["classes"].items():
        lines.append(
            f"| {name} | {c['full']:,} ({100 * c['full_share']:.1f}%) "
            f"| {c['subset']:,} ({100 * c['subset_share']:.1f}%) |"
        )
    lines.append(
        f"\nlargest share difference: {100 * report['max_share_difference']:.2f} percentage points; "
        f"classes lost: {report['classes_lost'] or 'none'}"
    )
    return "\n".join(lines)


def read_subset_input(path: str | Path, include_snow_cloud: bool = False) -> tuple[pa.Table, str]:
    """Metadata rows of METADATA_OR_ARCHIVE: a reBEN metadata parquet, or an archive directory
    (its ``metadata.parquet``, plus the snow/cloud/shadow file with ``include_snow_cloud``)."""
    path = Path(path)
    if path.is_dir():
        files = [path / METADATA_FILE]
        if not files[0].is_file():
            raise SubsetError(f"{path}: directory holds no {METADATA_FILE}")
        if include_snow_cloud and (path / FLAGGED_METADATA_FILE).is_file():
            files.append(path / FLAGGED_METADATA_FILE)
    elif path.is_file():
        files = [path]
    else:
        raise SubsetError(f"{path}: no such file or directory")
    try:
        table = read_metadata(files)
    except ArchiveError as exc:
        raise SubsetError(str(exc)) from None
    return table, ", ".join(str(f) for f in files)


def write_subset(
    path: str | Path, out: str | Path, fraction: float, seed: int = 0, include_snow_cloud: bool = False
) -> dict[str, Any]:
    """Draw the train subset of METADATA_OR_ARCHIVE and write it, in reBEN's metadata schema, to ``out``.

    Validation and test rows are kept unchanged, so ``out`` replaces the metadata file for any
    reader (``ReBENDataset(metadata=out)``, ConfigILM). Returns :func:`label_distribution`.
    """
    table, source = read_subset_input(path, include_snow_cloud)
    return write_subset_rows(table, source, out, fraction, seed)


def write_subset_rows(table: pa.Table, source: str, out: str | Path, fraction: float, seed: int = 0) -> dict[str, Any]:
    """:func:`write_subset` of metadata rows already read (``source`` names them in messages and the report)."""
    subset = metadata_table(subset_table(table, fraction, seed, source=source))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(subset.cast(METADATA_SCHEMA), out)
    report = label_distribution(table, subset)
    report.update({"fraction": float(fraction), "seed": int(seed), "input": source, "out": str(out)})
    return report
