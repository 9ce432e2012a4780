"""The embeddings parquet file (written by ``reben embed``, read by ``reben probe`` and ``reben retrieve``).

Schema, one row per patch:

* ``patch_id`` (string, unique), ``split`` (string: train / validation / test),
  ``labels`` (list<string> of reBEN's 19 class names);
* ``s1``, ``s2``, ``joint``: pooled embeddings, ``fixed_size_list<float32>[D]``. A column may be
  absent, or null in a row, where that modality was not embedded; at least one is present.
  (A variable-length ``list<float>`` column is accepted when every row has the same length.)
* key-value metadata ``reben_tools.encoder``: JSON describing the encoder (free form; a
  ``"dim"`` or ``"embedding_dim"`` entry, when there, is checked against the columns).

Every fault is one :class:`EmbeddingsError` line naming the file and the wrong part.

Owns: EMBEDDING_COLUMNS, ENCODER_METADATA_KEY, Embeddings, EmbeddingsError, read_embeddings, write_embeddings.
Does not own: computing embeddings (``reben embed``), probes (probes.py), retrieval (retrieval.py).
May import: numpy, pyarrow; reben_tools.format (labels, layout, atomic).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reben_tools.format.atomic import write_parquet_atomic
from reben_tools.format.labels import class_names
from reben_tools.format.layout import SPLITS

EMBEDDING_COLUMNS = ("s1", "s2", "joint")
"""The embedding columns, in the order ``modality="auto"`` does not follow (it prefers joint, s2, s1)."""
ENCODER_METADATA_KEY = b"reben_tools.encoder"
_AUTO_ORDER = ("joint", "s2", "s1")


class EmbeddingsError(ValueError):
    """An embeddings file is unreadable or breaks the schema; the message names the file and the part."""


@dataclass
class Embeddings:
    """The contents of an embeddings file.

    Attributes:
        path: the file.
        patch_ids: N patch ids, file order.
        splits: (N,) object array of split names.
        labels: (N, 19) float32 multi-hot labels, alphabetical class order.
        vectors: ``{modality: (N, D) float32}`` for each embedding column present (rows that are
            null hold NaN).
        valid: ``{modality: (N,) bool}``, False where the row is null.
        encoder: the decoded ``reben_tools.encoder`` metadata, or None when the file has none.
    """

    path: Path
    patch_ids: list[str]
    splits: np.ndarray
    labels: np.ndarray
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    encoder: dict | None = None

    @property
    def modalities(self) -> list[str]:
        """Embedding columns with at least one non-null row, in :data:`EMBEDDING_COLUMNS` order."""
        return [m for m in EMBEDDING_COLUMNS if m in self.vectors and self.valid[m].any()]

    def dim(self, modality: str) -> int:
        """D of a modality's column."""
        return int(self.vectors[modality].shape[1])

    def resolve_modality(self, modality: str = "auto") -> str:
        """``modality``, checked to have embeddings; ``"auto"`` = joint, else s2, else s1."""
        have = self.modalities
        if modality == "auto":
            for m in _AUTO_ORDER:
                if m in have:
                    return m
        if modality not in EMBEDDING_COLUMNS:
            raise EmbeddingsError(
                f"{self.path}: unknown modality {modality!r}; expected auto or one of {list(EMBEDDING_COLUMNS)}"
            )
        if modality not in have:
            raise EmbeddingsError(f"{self.path}: no {modality!r} embeddings (the file has {have or 'none'})")
        return modality

    def rows(self, split: str, modality: str) -> np.ndarray:
        """int64 indices of ``split``'s rows that have ``modality`` embeddings."""
        return np.flatnonzero((self.splits == split) & self.valid[modality])

    def require(self, split: str, modality: str) -> np.ndarray:
        """:meth:`rows`, raising when the split has none."""
        rows = self.rows(split, modality)
        if rows.size == 0:
            present = sorted(set(self.splits[self.valid[modality]].tolist()))
            raise EmbeddingsError(
                f"{self.path}: no {split!r} rows with {modality!r} embeddings (splits with them: {present})"
            )
        return rows


def _column_type_error(path, name: str, type_, expected: str) -> EmbeddingsError:
    return EmbeddingsError(f"{path}: column {name!r} has type {type_}; expected {expected}")


def _strings(table: pa.Table, name: str, path) -> list:
    column = table.column(name)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise _column_type_error(path, name, column.type, "string")
    return column.to_pylist()


def _labels(table: pa.Table, ids: list[str], path) -> np.ndarray:
    column = table.column("labels")
    if not (
        (pa.types.is_list(column.type) or pa.types.is_large_list(column.type))
        and (pa.types.is_string(column.type.value_type) or pa.types.is_large_string(column.type.value_type))
    ):
        raise _column_type_error(path, "labels", column.type, "list<string>")
    names = class_names("alphabetical")
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(ids), len(names)), dtype=np.float32)
    for row, labels in enumerate(column.to_pylist()):
        if labels is None:
            raise EmbeddingsError(f"{path}: patch {ids[row]!r} has null labels")
        for label in labels:
            j = index.get(label)
            if j is None:
                raise EmbeddingsError(
                    f"{path}: patch {ids[row]!r} has label {label!r}, not one of the 19 reBEN classes"
                )
            out[row, j] = 1.0
    return out


def _vectors(table: pa.Table, name: str, ids: list[str], path) -> tuple[np.ndarray, np.ndarray]:
    column = table.column(name).combine_chunks()
    type_ = column.type
    n = len(column)
    if pa.types.is_fixed_size_list(type_):
        dim = type_.list_size
    elif pa.types.is_list(type_) or pa.types.is_large_list(type_):
        lengths = np.asarray(pa.compute.list_value_length(column).to_numpy(zero_copy_only=False), dtype=float)
        present = lengths[~np.isnan(lengths)]
        dim = int(present[0]) if present.size else 0
        wrong = np.flatnonzero(~np.isnan(lengths) & (lengths != dim))
        if wrong.size:
            r = int(wrong[0])
            raise EmbeddingsError(
                f"{path}: column {name!r} row {r} (patch {ids[r]!r}) has dimension "
                f"{int(lengths[r])}, the first row has {dim}"
            )
    else:
        raise _column_type_error(path, name, type_, "fixed_size_list<float32>[D]")
    if not (pa.types.is_floating(type_.value_type)):
        raise _column_type_error(path, name, type_, "fixed_size_list<float32>[D]")
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    out = np.full((n, dim), np.nan, dtype=np.float32)
    if valid.any() and dim:
        flat = pa.compute.list_flatten(column.filter(pa.array(valid)))
        out[valid] = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    bad = np.flatnonzero(valid & ~np.isfinite(out).all(axis=1)) if dim else np.array([], dtype=int)
    if bad.size:
        r = int(bad[0])
        raise EmbeddingsError(
            f"{path}: column {name!r} has {bad.size} row(s) with NaN/inf or null values, first patch {ids[r]!r}"
        )
    return out, valid


def read_embeddings(
    path: str | os.PathLike, expected_dim: int | None = None, modalities: Sequence[str] | None = None
) -> Embeddings:
    """Read and validate an embeddings file (see the module docstring).

    Args:
        path: the parquet file.
        expected_dim: D every embedding column must have (e.g. the probing encoder's); None
            checks only the encoder metadata's ``dim``/``embedding_dim`` when given.
        modalities: read only these embedding columns (those of them the file has; reBEN's
            549,488 patches x 768 float32 are 1.7 GB per column); None reads all.

    Raises:
        EmbeddingsError: one line naming the file and what is wrong.
    """
    path = Path(path)
    unknown = [m for m in (modalities or ()) if m not in EMBEDDING_COLUMNS]
    if unknown:
        raise EmbeddingsError(
            f"{path}: unknown modality {unknown[0]!r}; expected auto or one of {list(EMBEDDING_COLUMNS)}"
        )
    if not path.is_file():
        raise EmbeddingsError(f"{path}: no such embeddings file")
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        wanted = EMBEDDING_COLUMNS if modalities is None else tuple(modalities)
        table = pf.read(columns=[c for c in names if c not in EMBEDDING_COLUMNS or c in wanted])
    except (OSError, pa.ArrowException) as exc:
        raise EmbeddingsError(f"{path}: cannot read parquet ({exc})") from None
    missing = [c for c in ("patch_id", "split", "labels") if c not in table.column_names]
    if missing:
        raise EmbeddingsError(f"{path}: missing column(s) {missing}")
    present = [c for c in EMBEDDING_COLUMNS if c in table.column_names]
    if not present:
        if modalities is not None and any(c in names for c in EMBEDDING_COLUMNS):
            raise EmbeddingsError(
                f"{path}: no {list(modalities)} column (the file has {[c for c in EMBEDDING_COLUMNS if c in names]})"
            )
        raise EmbeddingsError(f"{path}: no embedding column; expected at least one of {list(EMBEDDING_COLUMNS)}")
    ids = _strings(table, "patch_id", path)
    empty = [i for i, pid in enumerate(ids) if not pid]
    if empty:
        raise EmbeddingsError(f"{path}: {len(empty)} row(s) with a null or empty patch_id, first row {empty[0]}")
    seen: set[str] = set()
    for pid in ids:
        if pid in seen:
            raise EmbeddingsError(f"{path}: patch_id {pid!r} appears more than once")
        seen.add(pid)
    splits = _strings(table, "split", path)
    bad_splits = sorted({s for s in splits if s not in SPLITS}, key=str)
    if bad_splits:
        raise EmbeddingsError(f"{path}: column 'split' has unknown value(s) {bad_splits}; expected {list(SPLITS)}")
    labels = _labels(table, ids, path)
    encoder = None
    raw = (pf.schema_arrow.metadata or {}).get(ENCODER_METADATA_KEY)
    if raw is not None:
        try:
            encoder = json.loads(raw)
        except ValueError as exc:
            raise EmbeddingsError(f"{path}: metadata {ENCODER_METADATA_KEY.decode()} is not JSON ({exc})") from None
    emb = Embeddings(path=path, patch_ids=ids, splits=np.asarray(splits, dtype=object), labels=labels, encoder=encoder)
    recorded = None
    if isinstance(encoder, Mapping):
        recorded = encoder.get("dim", encoder.get("embedding_dim"))
    for name in present:
        vectors, valid = _vectors(table, name, ids, path)
        for what, want in (("expected", expected_dim), (f"recorded in {ENCODER_METADATA_KEY.decode()}", recorded)):
            if want is not None and valid.any() and vectors.shape[1] != int(want):
                raise EmbeddingsError(
                    f"{path}: column {name!r} has embeddings of dimension {vectors.shape[1]}, {what} {int(want)}"
                )
        emb.vectors[name], emb.valid[name] = vectors, valid
    if not emb.modalities:
        raise EmbeddingsError(f"{path}: every embedding column ({present}) is null in every row")
    return emb


def write_embeddings(
    path: str | os.PathLike,
    patch_ids: Sequence[str],
    splits: Sequence[str],
    labels: Sequence[Sequence[str]] | np.ndarray,
    vectors: Mapping[str, np.ndarray | None],
    encoder: Mapping | None = None,
) -> None:
    """Write an embeddings file in the schema above (atomically).

    Args:
        labels: per row a list of class names, or an (N, 19) multi-hot array in alphabetical order.
        vectors: ``{modality: (N, D) float array, or None for a modality not embedded}``; rows of
            NaN are written as null.
        encoder: JSON-ready description stored as ``reben_tools.encoder``.
    """
    n = len(patch_ids)
    if isinstance(labels, np.ndarray):
        names = class_names("alphabetical")
        labels = [[names[j] for j in np.flatnonzero(row)] for row in labels]
    columns = {
        "patch_id": pa.array(list(patch_ids), pa.string()),
        "split": pa.array(list(splits), pa.string()),
        "labels": pa.array([list(x) for x in labels], pa.list_(pa.string())),
    }
    for name, array in vectors.items():
        if name not in EMBEDDING_COLUMNS:
            raise ValueError(f"unknown embedding column {name!r}; expected one of {list(EMBEDDING_COLUMNS)}")
        if array is None:
            continue
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != n:
            raise ValueError(f"{name}: embeddings {array.shape} must be (N={n}, D)")
        null = np.isnan(array).all(axis=1)
        flat = pa.array(array.reshape(-1), pa.float32())
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, array.shape[1], mask=pa.array(null))
    table = pa.table(columns)
    table = table.replace_schema_metadata({ENCODER_METADATA_KEY: json.dumps(dict(encoder or {})).encode()})
    write_parquet_atomic(table, Path(path))
