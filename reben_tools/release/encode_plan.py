"""Planning an encode run: which patches, with which S1 partner and reference map, in which shard.

Step 1 of :mod:`reben_tools.release.encode` (one process): discover the patch folders, pick
the patches (those of the metadata files, or every S2 patch and reference map found), pair
each with its S1 partner and reference map, and cut the sorted patch ids into shards of
``patches_per_shard``. Like rico-hdl, what is there is encoded: an S2 patch without its S1
partner or reference map, a reference map without its S2 patch and an S1 patch without an
S2 partner (an "S1-only" job, keyed by its S1 name) are all written, and the pairing is
counted (:func:`pairing_counts`). With ``require_pairs`` a patch lacking any part that
was asked for is skipped instead, and unpaired S1 patches are left out.
Shard ``k`` holds the ``k``-th slice of the sorted ids, so which shard holds a patch depends
only on the sorted ids, never on the number of workers.

Owns: the job types (:class:`PatchJob`, :class:`ShardJob`, :class:`ShardResult`),
:data:`PATCH_ROWS_SCHEMA`, :class:`EncodeError`, S1 partner matching and patch/shard planning.
Does not own: encoding values and running workers (``release.encode_workers``), resuming and
finishing the archive (``release.encode``), the release layout (``release.geotiff_release``).
May import: ``format`` (naming, metadata, shards, stats), ``release.geotiff_release``,
numpy, pyarrow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from reben_tools.format import naming
from reben_tools.format.metadata import patch_rows_schema
from reben_tools.format.shards import ShardInfo
from reben_tools.format.stats import BandMoments
from reben_tools.release.geotiff_release import PatchFiles, discover_patches

DEFAULT_PATCHES_PER_SHARD = 1024
"""Patches per shard: about 310 MB of values with S1 and reference maps (held in memory
by the worker writing the shard)."""
SHARD_NAME_FORMAT = "shard-{:05d}"

PATCH_ROWS_SCHEMA = patch_rows_schema(
    ("lrx", pa.float64()),
    ("lry", pa.float64()),
    ("country", pa.string()),
    ("contains_seasonal_snow", pa.bool_()),
    ("contains_cloud_or_shadow", pa.bool_()),
    ("has_s1", pa.bool_()),
    ("has_reference_map", pa.bool_()),
    ("has_s2", pa.bool_()),
)
"""Columns of ``patches.parquet`` (plus its ``geometry``: the footprint in EPSG:4326) and of
each shard's ``rows.parquet``. ``crs``/``ulx``/``uly``/``lrx``/``lry`` are the S2 patch's
10 m grid as its B02 GeoTIFF declares it (the reference map's when the S2 patch is absent,
``has_s2`` false). S1 patches without an S2 partner get no row: their values are keyed by
their S1 name only."""


class EncodeError(RuntimeError):
    """The encoder cannot run (bad arguments, no patches, an existing archive); names the path."""


@dataclass(frozen=True)
class PatchJob:
    """Everything a worker needs to encode one patch.

    Attributes:
        patch_id: the S2 patch id (archive key of the S2 value).
        s2: the S2 band files, or None when the patch folder was not found.
        s1_name: the S1 partner's name, when known (from metadata or matching).
        s1: the S1 files to encode, or None (no S1 directory, or partner missing).
        reference_map: the reference map file, or None.
        metadata: the patch's reBEN metadata row, or None without metadata files.
        problem: ``(path, reason)`` found while planning; the patch is then skipped.
        s1_only: an S1 patch with no S2 partner; ``patch_id`` is then its S1 name and
            only its S1 value is written (no patch row).
        require_pairs: a bad part (S2, S1 or reference map) skips the whole patch; otherwise
            the good parts are written and the bad one is reported.
    """

    patch_id: str
    s2: PatchFiles | None
    s1_name: str | None
    s1: PatchFiles | None
    reference_map: PatchFiles | None
    metadata: dict | None
    problem: tuple[str, str] | None = None
    s1_only: bool = False
    require_pairs: bool = False


@dataclass(frozen=True)
class ShardJob:
    """One shard's worth of patches, in sorted patch-id order."""

    index: int
    name: str
    patches: tuple[PatchJob, ...]


@dataclass
class ShardResult:
    """What encoding a shard produced (returned by the worker to the parent)."""

    index: int
    name: str
    info: ShardInfo | None
    rows: pa.Table
    """The shard's patch rows (:data:`PATCH_ROWS_SCHEMA`), columnar so it pickles compactly."""
    skipped: list[dict]
    moments: BandMoments
    values: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------- planning


def _s1_side_car_partners(s1_patches: dict[str, PatchFiles]) -> dict[str, str]:
    """S2 name -> S1 name from BigEarthNet v1's ``<s1_name>_labels_metadata.json`` side-cars."""
    partners: dict[str, str] = {}
    for name, patch in s1_patches.items():
        side_car = patch.folder / f"{name}_labels_metadata.json"
        try:
            s2_name = json.loads(side_car.read_text("utf-8")).get("corresponding_s2_patch")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(s2_name, str):
            partners.setdefault(s2_name, name)
    return partners


def match_s1_partners(s2_names: Sequence[str], s1_patches: dict[str, PatchFiles]) -> dict[str, str]:
    """Pair S2 patches with S1 patches found in the release, without metadata.

    A reBEN patch id pairs with the S1 patches of the same tile and ``x``/``y`` (S1 names
    carry them unpadded, e.g. ``..._33UUP_3_7``); when several acquisitions qualify, the one
    closest in time to the S2 sensing time wins (ties: the smaller name). Names that are
    not reBEN ids (BigEarthNet v1's) pair through the ``corresponding_s2_patch`` of the
    S1 folders' ``*_labels_metadata.json`` side-cars.

    Returns:
        S2 name -> S1 name, for the S2 names that found a partner.
    """
    by_cell: dict[tuple[str, int, int], list[str]] = {}
    for s1_name in s1_patches:
        try:
            _, tile, x, y = naming.parse_s1_patch_name(s1_name)
        except ValueError:
            continue
        by_cell.setdefault((tile, x, y), []).append(s1_name)
    partners: dict[str, str] = {}
    unparsed = []
    for s2_name in s2_names:
        try:
            parsed = naming.parse_patch_id(s2_name)
        except ValueError:
            unparsed.append(s2_name)
            continue
        candidates = by_cell.get((parsed.tile, parsed.x, parsed.y))
        if not candidates:
            continue
        sensing = datetime.strptime(parsed.sensing, "%Y%m%dT%H%M%S")
        partners[s2_name] = min(
            candidates, key=lambda n: (abs((naming.s1_acquisition_time(n) - sensing).total_seconds()), n)
        )
    if unparsed:
        side_cars = _s1_side_car_partners(s1_patches)
        for s2_name in unparsed:
            if s2_name in side_cars:
                partners[s2_name] = side_cars[s2_name]
    return partners


def _expected_s1_folder(s1_dir: Path, s1_name: str) -> Path:
    try:
        return s1_dir / naming.s1_product_prefix(s1_name) / s1_name
    except ValueError:
        return s1_dir / s1_name


def plan_patches(
    s2_dir: Path | None,
    s1_dir: Path | None = None,
    reference_maps_dir: Path | None = None,
    metadata: pa.Table | None = None,
    require_pairs: bool = False,
) -> tuple[list[PatchJob], dict[str, int]]:
    """Decide which values to encode and find their files.

    Without ``require_pairs`` every valid value found is encoded: S2 patches with or
    without S1 partner and reference map, reference maps without S2 patch, S1 patches with
    no S2 partner (S1-only jobs). With ``require_pairs`` a patch needs its S2 folder, its
    S1 partner when ``s1_dir`` is given and its reference map when ``reference_maps_dir``
    is given, else it is skipped; unpaired S1 patches are not written. With ``metadata``
    only its patches (and their S1 partners) are encoded.

    Returns:
        (jobs sorted by key, counts of what was found, paired and left out; see
        :func:`pairing_counts`).
    """
    s2_patches = discover_patches(s2_dir, "S2") if s2_dir is not None else {}
    s1_patches = discover_patches(s1_dir, "S1") if s1_dir is not None else {}
    reference_maps = discover_patches(reference_maps_dir, "reference_map") if reference_maps_dir is not None else {}
    counts = {"s2_found": len(s2_patches), "s1_found": len(s1_patches), "reference_maps_found": len(reference_maps)}

    if metadata is not None:
        rows = {row["patch_id"]: row for row in metadata.to_pylist()}
        patch_ids = sorted(rows)
        counts["metadata_rows"] = len(rows)
        counts["s2_not_in_metadata"] = sum(1 for name in s2_patches if name not in rows)
        s1_names = {pid: rows[pid]["s1_name"] for pid in patch_ids}
    else:
        rows = {}
        patch_ids = sorted(set(s2_patches) | (set(reference_maps) if not require_pairs or s2_dir is None else set()))
        s1_names = match_s1_partners(patch_ids, s1_patches) if s1_dir is not None else {}

    jobs = []
    where = s2_dir or reference_maps_dir or s1_dir
    for pid in patch_ids:
        s2 = s2_patches.get(pid)
        s1_name = s1_names.get(pid)
        s1 = s1_patches.get(s1_name) if s1_name else None
        reference_map = reference_maps.get(pid)
        folder = s2.folder if s2 else (reference_map.folder if reference_map else where)
        problem = None
        if not _is_valid_key(pid) or (s1_name and not _is_valid_key(s1_name)):
            problem = (
                str(folder),
                f"name {pid!r} / {s1_name!r} cannot be an LMDB key (must be valid UTF-8 of 1 to 490 bytes)",
            )
        elif require_pairs and s2 is None:
            problem = (str(s2_dir or where), f"S2 patch folder of {pid} not found in the release")
        elif s2 is None and reference_map is None and s1 is None:
            problem = (str(where), f"{pid} not found in the release (no S2 patch, S1 partner or reference map)")
        elif require_pairs and s1_dir is not None and not s1_name:
            problem = (str(folder), f"no S1 patch under {s1_dir} pairs with {pid}")
        elif require_pairs and s1_dir is not None and s1_name and s1 is None:
            problem = (str(_expected_s1_folder(s1_dir, s1_name)), f"S1 partner {s1_name} of {pid} not found")
        elif require_pairs and reference_maps_dir is not None and reference_map is None:
            problem = (
                str(reference_maps_dir / _product_folder(pid) / pid),
                f"reference map of {pid} not found",
            )
        jobs.append(PatchJob(pid, s2, s1_name, s1, reference_map, rows.get(pid), problem, require_pairs=require_pairs))
    used = {job.s1_name for job in jobs if job.s1 is not None}
    unpaired_s1 = sorted(name for name in s1_patches if name not in used)
    if s1_dir is not None:
        counts["s1_unpaired"] = len(unpaired_s1)
    if not require_pairs and metadata is None:
        for name in unpaired_s1:
            problem = (
                None if _is_valid_key(name) else (str(s1_patches[name].folder), f"name {name!r} cannot be an LMDB key")
            )
            jobs.append(PatchJob(name, None, name, s1_patches[name], None, None, problem, s1_only=True))
    counts.update(pairing_counts(jobs, s1_dir is not None, reference_maps_dir is not None))
    return sorted(jobs, key=lambda j: j.patch_id), counts


def pairing_counts(jobs: Sequence[PatchJob], with_s1: bool, with_reference_maps: bool) -> dict[str, int]:
    """How the planned values pair up (before reading them).

    Returns:
        ``s2_with_s1``, ``s2_without_s1`` (when S1 was given), ``s2_without_reference_map``
        (when reference maps were given), ``reference_maps_without_s2`` and ``s1_without_s2``.
    """
    patches = [j for j in jobs if not j.s1_only and j.problem is None]
    counts = {
        "reference_maps_without_s2": sum(1 for j in patches if j.s2 is None and j.reference_map is not None),
        "s1_without_s2": sum(1 for j in jobs if j.problem is None and j.s1 is not None and (j.s1_only or j.s2 is None)),
    }
    if with_s1:
        counts["s2_with_s1"] = sum(1 for j in patches if j.s2 is not None and j.s1 is not None)
        counts["s2_without_s1"] = sum(1 for j in patches if j.s2 is not None and j.s1 is None)
    if with_reference_maps:
        counts["s2_without_reference_map"] = sum(1 for j in patches if j.s2 is not None and j.reference_map is None)
    return counts


def _is_valid_key(name: str) -> bool:
    """Whether ``name`` (and ``name_reference_map``) fit LMDB's 511-byte UTF-8 keys."""
    try:
        return 0 < len(name.encode("utf-8")) <= 490
    except UnicodeEncodeError:
        return False


def _product_folder(name: str) -> str:
    """The product folder name of a patch name (name without ``_x_y``), or the name itself."""
    parts = name.rsplit("_", 2)
    return parts[0] if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() else name


def shard_jobs(jobs: Sequence[PatchJob], patches_per_shard: int) -> list[ShardJob]:
    """Cut jobs (sorted by patch id) into consecutive shards of ``patches_per_shard``."""
    if patches_per_shard < 1:
        raise EncodeError(f"patches_per_shard must be at least 1, got {patches_per_shard}")
    ordered = sorted(jobs, key=lambda j: j.patch_id)
    return [
        ShardJob(k, SHARD_NAME_FORMAT.format(k), tuple(ordered[start : start + patches_per_shard]))
        for k, start in enumerate(range(0, len(ordered), patches_per_shard))
    ]


__all__ = [
    "DEFAULT_PATCHES_PER_SHARD",
    "PATCH_ROWS_SCHEMA",
    "EncodeError",
    "PatchJob",
    "ShardJob",
    "ShardResult",
    "match_s1_partners",
    "pairing_counts",
    "plan_patches",
    "shard_jobs",
]
