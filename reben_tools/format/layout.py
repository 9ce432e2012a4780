"""The reben-tools archive: LMDB shards of safetensors values plus metadata (reBEN's keys, values and metadata schema).

Layout of an archive directory::

    ARCHIVE/
      manifest.json                      format, band table, shards, statistics, provenance
      metadata.parquet                   reBEN schema, patches without snow/cloud/shadow
      metadata_for_patches_with_snow_cloud_or_shadow.parquet
      patches.parquet                    GeoParquet: footprint, tile, x, y, crs, shard, ...
      report.json                        inputs skipped, each with file/key and reason
      shards/<name>/data.mdb             one plain LMDB environment per shard
      shards/<name>/shard.json           the shard's ShardInfo
      shards/<name>/keys.parquet         key, value size and CRC-32 of every value (locates faults)
      shards/<name>/rows.parquet         the patch rows the shard's writer produced (optional)

Shards are written by ``format.shards``; the manifest by ``format.manifest``; the metadata
files and ``patches.parquet`` by ``format.metadata``; :class:`reben_tools.format.reader.Archive`
reads an archive.

Owns: the archive directory layout (file and directory names), the format name and version,
the split names and :class:`ArchiveError`.
Does not own: writing or reading any of these files (``format.shards``, ``format.metadata``,
``format.manifest``, ``format.reader``, ``format.atomic``).
May import: the standard library only.
"""

from __future__ import annotations

FORMAT_NAME = "reben-tools-archive"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
METADATA_FILE = "metadata.parquet"
FLAGGED_METADATA_FILE = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
PATCHES_FILE = "patches.parquet"
REPORT_FILE = "report.json"
SHARDS_DIR = "shards"
SHARD_INFO_FILE = "shard.json"
SHARD_ROWS_FILE = "rows.parquet"
SHARD_KEYS_FILE = "keys.parquet"
"""Per-key value size and CRC-32 of a shard, so ``reben verify`` can name a corrupt key."""
ARCHIVE_FILES = (MANIFEST_FILE, METADATA_FILE, FLAGGED_METADATA_FILE, PATCHES_FILE, REPORT_FILE)

SPLITS = ("train", "validation", "test")


class ArchiveError(RuntimeError):
    """An archive or one of its files is missing, inconsistent or corrupt; the message names it."""
