"""The archive manifest (``manifest.json``): band table, shards, counts, statistics, provenance.

Owns: building, writing and reading (with format checks) the manifest dictionary.
Does not own: writing shards (``format.shards``), the band definitions (``format.bands``),
file names (``format.layout``).
May import: ``reben_tools.__version__``, ``format.layout``, ``format.atomic``, ``format.bands``,
``format.shards`` (for :class:`ShardInfo`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from reben_tools import __version__
from reben_tools.format.atomic import write_json_atomic
from reben_tools.format.bands import ALL_BANDS
from reben_tools.format.layout import FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE, ArchiveError
from reben_tools.format.shards import ShardInfo


def band_table() -> list[dict[str, Any]]:
    """The manifest's band table: name, modality, native resolution, dtype and patch shape."""
    return [
        {
            "name": b.name,
            "modality": b.modality,
            "resolution_m": b.resolution_m,
            "dtype": b.dtype,
            "shape": [b.size, b.size],
        }
        for b in ALL_BANDS.values()
    ]


def build_manifest(
    shards: Iterable[ShardInfo],
    counts: Mapping[str, object],
    statistics: Mapping[str, tuple[float, float]],
    inputs: list[str],
    config: Mapping[str, object],
    tool: str,
) -> dict[str, Any]:
    """The manifest dictionary (see ``schemas/manifest.schema.json``); no timestamps, so it is reproducible."""
    shard_list = sorted(shards, key=lambda s: s.name)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "bands": band_table(),
        "value_kinds": {
            "S2": {
                "key": "<patch_id>",
                "tensors": [b for b in ALL_BANDS if ALL_BANDS[b].modality == "S2"],
                "value_bytes": 160_832,
            },
            "S1": {"key": "<s1_name>", "tensors": ["VV", "VH"], "value_bytes": 115_344},
            "reference_map": {
                "key": "<patch_id>_reference_map",
                "tensors": ["Data"],
                "dtype": "uint16",
                "shape": [120, 120],
            },
        },
        "shards": [asdict(s) for s in shard_list],
        "totals": {
            "shards": len(shard_list),
            "entries": sum(s.entries for s in shard_list),
            "value_bytes": sum(s.value_bytes for s in shard_list),
        },
        "counts": dict(counts),
        "statistics": {
            "split": "train",
            "upsampling": "nearest",
            "bands": {band: {"mean": mean, "std": std} for band, (mean, std) in sorted(statistics.items())},
        },
        "provenance": {"tool": tool, "tool_version": __version__, "inputs": list(inputs), "config": dict(config)},
    }


def write_manifest(archive_dir: Path, manifest: Mapping[str, Any]) -> None:
    write_json_atomic(archive_dir / MANIFEST_FILE, manifest)


def read_manifest(archive_dir: Path) -> dict[str, Any]:
    path = Path(archive_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{path}: cannot read manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ArchiveError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveError(
            f"{path}: format version {manifest.get('format_version')} is not supported (expected {FORMAT_VERSION})"
        )
    return manifest
