"""The rows of a shard (``rows.parquet``): what a worker writes and the client reads back.

Owns: :data:`ROWS_SCHEMA` (the per-patch columns beyond the archive's own), the schema
metadata key under which a block records its fingerprint, counts and moments
(:data:`ROWS_METADATA_KEY`), and the drop reasons those counts use (:data:`DROP_REASONS`).
Does not own: writing the shard (block), reading it back (planning, finalise).
May import: reben_tools.format (archive), pyarrow.
"""

from __future__ import annotations

import pyarrow as pa

from reben_tools.format.metadata import patch_rows_schema

DROP_REASONS = ("no_data", "unlabeled_25pct", "no_s1_partner")
ROWS_METADATA_KEY = b"reben_block"


ROWS_SCHEMA = patch_rows_schema(
    ("product", pa.string()),
    ("s2_acquisition_time", pa.timestamp("s")),
    ("s1_product", pa.string()),
    ("s1_acquisition_time", pa.timestamp("s")),
    ("s1_gap_days", pa.float64()),
    ("unlabeled_fraction", pa.float64()),
    ("label_fractions", pa.string()),
    ("snow_fraction", pa.float64()),
    ("cloud_shadow_fraction", pa.float64()),
    ("boa_add_offset", pa.int32()),
    ("tile_side_m", pa.float64()),
)
"""Columns of a shard's ``rows.parquet`` (``label_fractions``: JSON object class -> pixel share)."""
