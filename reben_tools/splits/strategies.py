"""Split assignment strategies.

A strategy is a pure function from patches (id, tile, x, y, position, optionally
labels) to a split column: an object array of ``"train"``, ``"validation"``,
``"test"`` or ``None`` (a patch the strategy leaves out, e.g. a buffer patch).

Strategies (see ``docs/split_audit.md`` for their trade-offs):

* ``reben``: reBEN's geography-based split exactly
  (:func:`reben_split`): rings around each tile's border.
* ``v1-blocks``: BigEarthNet v1's scheme, 2x2 blocks of patches per tile, two
  train, one validation, one test per block; which position gets which is drawn
  per block from a fixed seed.
* ``spatial-blocks``: square blocks of a common grid across tiles and UTM zones
  (EPSG:3035, default 30 km), assigned to splits greedily so that patch counts,
  label frequencies and country shares follow the intended ratios, with a buffer of
  patches dropped wherever two splits meet.

Patch tables and reading INPUT live in :mod:`reben_tools.splits.patches`.

Owns: :class:`SplitStrategy` and the strategies (``reben``, ``v1-blocks``, ``spatial-blocks``),
the registry (:data:`STRATEGIES`, :func:`get_strategy`), split counts and writing a split file
(:func:`split_file`).
Does not own: patch tables and input loading (``splits.patches``), the audit
(``splits.audit*``), reBEN's distance rule itself (``geo.split_rule``).
May import: ``format`` (layout, atomic, outputs), ``geo``, ``splits.patches``, numpy, pyarrow, scipy.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from reben_tools.format.atomic import write_parquet_atomic
from reben_tools.format.layout import SPLITS
from reben_tools.format.outputs import check_output_path
from reben_tools.format.sources import ArchiveSource
from reben_tools.geo.split_rule import reben_split
from reben_tools.splits.patches import COMMON_GRID_CRS, PATCH_SIDE_M, PatchTable, load_patches

# --------------------------------------------------------------------------- strategies


class SplitStrategy:
    """A split strategy: ``assign(patches) -> object[n]`` of split names or None (left out).

    Attributes:
        name: the registry name used on the command line.
        intended_ratios: the share of patches each split is meant to get.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    intended_ratios: Mapping[str, float] = MappingProxyType({"train": 0.5, "validation": 0.25, "test": 0.25})

    def assign(self, patches: PatchTable) -> np.ndarray:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The strategy's parameters, for reports."""
        return {}


class RebenSplit(SplitStrategy):
    """reBEN's split: rings around each tile's border (train), then validation, test in the centre.

    Args:
        tile_side_m: overrides the per-patch tile side (default: the patch table's ``tile_side_m``).
    """

    name = "reben"
    description = "reBEN geography-based split: border ring train, middle ring validation, central square test"

    def __init__(self, tile_side_m: float | None = None) -> None:
        self.tile_side_m = tile_side_m

    def assign(self, patches: PatchTable) -> np.ndarray:
        side = patches.tile_side_m if self.tile_side_m is None else self.tile_side_m
        return reben_split(patches.x, patches.y, side)

    def options(self) -> dict[str, Any]:
        return {"tile_side_m": self.tile_side_m}


_V1_ARRANGEMENTS = np.array(sorted(set(itertools.permutations(("train", "train", "validation", "test")))), dtype=object)
"""The 12 distinct ways to place two train, one validation and one test patch in a 2x2 block."""


def _splitmix64(values: np.ndarray) -> np.ndarray:
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _tile_hashes(tile_codes: np.ndarray, tile_names: Sequence[str], seed: int) -> np.ndarray:
    hashes = np.array(
        [int.from_bytes(hashlib.blake2b(f"{seed}:{t}".encode(), digest_size=8).digest(), "little") for t in tile_names],
        dtype=np.uint64,
    )
    return np.asarray(hashes[tile_codes])


class V1BlockSplit(SplitStrategy):
    """BigEarthNet v1's scheme: 2x2 blocks of patches per tile, two train, one validation, one test.

    Block ``(x // 2, y // 2)`` of a tile gets one of the 12 arrangements, drawn from a hash
    of (seed, tile, block): the same for every acquisition of the tile, independent of row
    order. Incomplete blocks at the tile's edge keep their drawn positions.
    """

    name = "v1-blocks"
    description = "BigEarthNet v1: 2x2 blocks of patches per tile, 2 train / 1 validation / 1 test, positions drawn with a fixed seed"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def assign(self, patches: PatchTable) -> np.ndarray:
        with np.errstate(over="ignore"):
            key = _tile_hashes(patches.tile_codes, patches.tile_names, self.seed)
            key ^= _splitmix64((patches.x // 2).astype(np.uint64) << np.uint64(32) | (patches.y // 2).astype(np.uint64))
            arrangement = (_splitmix64(key) % np.uint64(len(_V1_ARRANGEMENTS))).astype(np.int64)
        position = (patches.x % 2) + 2 * (patches.y % 2)
        return np.asarray(_V1_ARRANGEMENTS[arrangement, position])

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed}


class SpatialBlockSplit(SplitStrategy):
    """Square blocks of a common grid (EPSG:3035) across tiles and zones, label-balanced, with a buffer.

    1. Each patch centre falls in block ``floor(E / block), floor(N / block)`` of EPSG:3035;
       every acquisition of a place lands in the same block.
    2. Blocks are assigned greedily, largest first, to the split whose cost drops most:
       cost = sum over splits and features of ``w * ((assigned - ratio * total) / total)^2``,
       features = patch count, each label's count and each country's count (weight 1 each,
       the patch count weighing as much as all others together; ``balance_labels=False`` /
       ``balance_countries=False`` leave labels / countries out).
    3. Buffer: a train patch whose centre lies within ``buffer_m`` (x 1.01) of a validation or
       test patch, and a validation patch that close to a test patch, is left out (None), so
       test stays whole and every remaining cross-split pair is > ``buffer_m`` apart. Since the
       buffer costs mostly train, steps 2-3 run once more with each split's target share divided
       by the fraction of its patches the first buffer kept.

    Args:
        block_size_m: side of the blocks in metres; None: 30 km, halved while the patches fall
            into fewer than 16 blocks, but not below three buffer widths (or 6 patches without a
            buffer), so small regions still get several blocks. The size used is in ``options()``.
        buffer_m: width of the buffer; 0 disables it.
        ratios: intended train / validation / test shares.
        balance_labels: balance label frequencies across splits, not only patch counts.
        balance_countries: balance country shares across splits (with a ``country`` column).
        seed: breaks ties between blocks of equal size.
    """

    name = "spatial-blocks"
    description = "square blocks of a common EPSG:3035 grid across tiles, label-balanced greedy assignment, buffer patches dropped between splits"

    DEFAULT_BLOCK_SIZE_M: ClassVar[float] = 30_000.0
    MIN_BLOCKS: ClassVar[int] = 16

    def __init__(
        self,
        block_size_m: float | None = None,
        buffer_m: float = 2_400.0,
        ratios: Sequence[float] = (0.5, 0.25, 0.25),
        balance_labels: bool = True,
        balance_countries: bool = True,
        seed: int = 0,
    ) -> None:
        if (block_size_m is not None and block_size_m <= 0) or buffer_m < 0:
            raise ValueError(f"block_size_m must be > 0 and buffer_m >= 0, got {block_size_m}, {buffer_m}")
        shares = np.asarray(ratios, dtype=np.float64)
        if shares.shape != (3,) or np.any(shares < 0) or not math.isclose(shares.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"ratios must be three non-negative shares summing to 1, got {list(shares)}")
        self.block_size_m = None if block_size_m is None else float(block_size_m)
        self.used_block_size_m: float | None = self.block_size_m
        self.buffer_m = float(buffer_m)
        self.ratios = shares
        self.balance_labels = bool(balance_labels)
        self.balance_countries = bool(balance_countries)
        self.seed = int(seed)
        self.intended_ratios = dict(zip(SPLITS, (float(r) for r in shares), strict=True))

    def options(self) -> dict[str, Any]:
        return {
            "block_size_m": self.used_block_size_m,
            "block_size_auto": self.block_size_m is None,
            "buffer_m": self.buffer_m,
            "ratios": self.ratios.tolist(),
            "balance_labels": self.balance_labels,
            "balance_countries": self.balance_countries,
            "seed": self.seed,
            "grid_crs": COMMON_GRID_CRS,
        }

    @staticmethod
    def _blocks(points: np.ndarray, size: float) -> np.ndarray:
        cells = np.floor(points / size).astype(np.int64)
        cells -= cells.min(axis=0)
        keys = cells[:, 0] * (int(cells[:, 1].max()) + 1) + cells[:, 1]
        _, inverse = np.unique(keys, return_inverse=True)
        return np.asarray(inverse).reshape(-1)

    def block_size_for(self, patches: PatchTable) -> float:
        """The block side used for ``patches`` (see ``block_size_m``)."""
        if self.block_size_m is not None:
            return self.block_size_m
        floor = 3 * self.buffer_m if self.buffer_m > 0 else 6 * PATCH_SIDE_M
        size = self.DEFAULT_BLOCK_SIZE_M
        while size / 2 >= floor and int(self._blocks(patches.common_grid, size).max()) + 1 < self.MIN_BLOCKS:
            size /= 2
        return size

    def block_index(self, patches: PatchTable) -> np.ndarray:
        """int64[n] index of each patch's block (blocks numbered in sorted grid order)."""
        self.used_block_size_m = self.block_size_for(patches)
        return self._blocks(patches.common_grid, self.used_block_size_m)

    def assign_blocks(self, features: np.ndarray, weights: np.ndarray, ratios: np.ndarray | None = None) -> np.ndarray:
        """Greedy assignment of blocks to splits.

        Args:
            features: float64[blocks, f] per-block counts (column 0 = patches).
            weights: float64[f] weight of each feature in the cost.
            ratios: float64[3] target shares (default: the intended ratios).

        Returns:
            int64[blocks] split index (0 train, 1 validation, 2 test).
        """
        totals = features.sum(axis=0)
        totals[totals == 0] = 1.0
        scaled = features / totals
        shares = self.ratios if ratios is None else np.asarray(ratios, dtype=np.float64)
        target = shares[:, None] * (features.sum(axis=0) / totals)[None, :]
        assigned = np.zeros_like(target)
        rng = np.random.default_rng(self.seed)
        order = np.lexsort((rng.random(len(features)), -features[:, 0]))
        choice = np.empty(len(features), dtype=np.int64)
        active = shares > 0
        for block in order:
            row = scaled[block]
            before = ((assigned - target) ** 2) @ weights
            after = ((assigned + row - target) ** 2) @ weights
            gain = np.where(active, after - before, np.inf)
            split = int(np.argmin(gain))
            choice[block] = split
            assigned[split] += row
        return choice

    def assign(self, patches: PatchTable) -> np.ndarray:
        blocks = self.block_index(patches)
        n_blocks = int(blocks.max()) + 1
        columns = [np.bincount(blocks, minlength=n_blocks).astype(np.float64)]
        weights = [1.0]
        labels = patches.label_matrix() if self.balance_labels else None
        if labels is not None and labels[0].shape[1]:
            matrix = labels[0]
            per_block = np.zeros((n_blocks, matrix.shape[1]))
            np.add.at(per_block, blocks, matrix.astype(np.float64))
            columns.extend(per_block.T)
            weights.extend([1.0] * matrix.shape[1])
        countries = patches.country_names or []
        if self.balance_countries and patches.country_codes is not None and len(countries) > 1:
            per_block = np.zeros((n_blocks, len(countries)))
            np.add.at(per_block, (blocks, patches.country_codes), 1.0)
            columns.extend(per_block.T)
            weights.extend([1.0] * len(countries))
        # the patch count weighs as much as all label and country columns together
        weights[0] = max(1.0, float(len(weights) - 1))
        features = np.column_stack(columns)
        weight_of = np.asarray(weights)
        split_index = self.assign_blocks(features, weight_of)[blocks]
        drop = np.zeros(len(split_index), dtype=bool)
        if self.buffer_m > 0:
            drop = self.buffer_mask(patches.geocentric, split_index)
            # One correction pass: the buffer eats mostly train, so aim each split's block share
            # at ratio / kept-fraction to land near the intended shares among the kept patches.
            assigned = np.bincount(split_index, minlength=3).astype(np.float64)
            kept = np.bincount(split_index[~drop], minlength=3).astype(np.float64)
            keep_rate = np.where(kept > 0, kept / np.maximum(assigned, 1.0), 1.0)
            adjusted = self.ratios / keep_rate
            split_index = self.assign_blocks(features, weight_of, adjusted / adjusted.sum())[blocks]
            drop = self.buffer_mask(patches.geocentric, split_index)
        out = np.asarray(np.array(SPLITS, dtype=object)[split_index])
        out[drop] = None
        return out

    def buffer_mask(self, points: np.ndarray, split_index: np.ndarray) -> np.ndarray:
        """bool[n]: train patches near validation/test and validation patches near test."""
        from scipy.spatial import cKDTree

        reach = self.buffer_m * 1.01
        drop = np.zeros(len(points), dtype=bool)
        for lower in (0, 1):
            mine = np.flatnonzero(split_index == lower)
            higher = np.flatnonzero(split_index > lower)
            if len(mine) == 0 or len(higher) == 0:
                continue
            distance, _ = cKDTree(points[higher]).query(points[mine], k=1, distance_upper_bound=reach, workers=2)
            drop[mine[np.isfinite(distance)]] = True
        return drop


STRATEGIES: dict[str, type[SplitStrategy]] = {
    RebenSplit.name: RebenSplit,
    V1BlockSplit.name: V1BlockSplit,
    SpatialBlockSplit.name: SpatialBlockSplit,
}


def get_strategy(name: str, **options: Any) -> SplitStrategy:
    """An instance of the strategy called ``name`` with ``options`` (None values are dropped)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown split strategy {name!r}; choose from {sorted(STRATEGIES)}") from None
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if v is not None and k in accepted})


def split_counts(splits: np.ndarray) -> dict[str, int]:
    """Patches per split name, plus ``excluded`` for patches left out (None)."""
    values = np.asarray(splits, dtype=object)
    counts = {s: int(np.count_nonzero(values == s)) for s in SPLITS}
    counts["excluded"] = int(len(values) - sum(counts.values()))
    return counts


def with_split_column(table: pa.Table, splits: np.ndarray, column: str = "split") -> pa.Table:
    """``table`` with ``column`` replaced (same position) or appended; schema metadata kept."""
    array = pa.array(list(splits), type=pa.string())
    if column in table.column_names:
        index = table.column_names.index(column)
        table = table.set_column(index, pa.field(column, pa.string()), array)
    else:
        table = table.append_column(pa.field(column, pa.string()), array)
    return table


def split_file(
    input_path: str | Path | ArchiveSource,
    out_path: str | Path,
    strategy: str | SplitStrategy = "reben",
    tile_side_m: float | None = None,
    info: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, int]:
    """Assign ``strategy``'s split to every row of INPUT and write them to ``out_path`` (parquet).

    The input is validated completely before anything is written; the output is written
    through a temporary file and a rename. Rows keep their order and columns; ``split``
    is replaced or added (null for patches the strategy leaves out).

    Args:
        info: a dict to fill with ``tile_side_source`` (where the tile side came from, in words)
            and ``tile_sides_m`` (the distinct tile sides, metres), for the caller to report.

    Returns:
        patches per split (see :func:`split_counts`).
    """
    check_output_path(out_path, what="the split file")
    patches = load_patches(input_path, tile_side_m=tile_side_m)
    chosen = (
        strategy if isinstance(strategy, SplitStrategy) else get_strategy(strategy, tile_side_m=tile_side_m, **options)
    )
    splits = chosen.assign(patches)
    if info is not None:
        info["tile_side_source"] = patches.tile_side_source
        info["tile_sides_m"] = sorted({float(v) for v in np.unique(patches.tile_side_m)})
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(with_split_column(patches.table, splits), out_path)
    return split_counts(splits)


def empty_split_warnings(counts: dict[str, int], source: str = "the split") -> list[str]:
    """One loud line for each of validation and test that holds no patch (empty list when both hold some).

    Args:
        counts: patches per split (:func:`split_counts`).
        source: how the message names what was split.
    """
    empty = [name for name in ("validation", "test") if counts.get(name, 0) == 0]
    return [
        f"WARNING: {source} has NO {name} patches ({counts.get('train', 0):,} train); check the tile side "
        "(--tile-side-m) and the strategy's options"
        for name in empty
    ]
