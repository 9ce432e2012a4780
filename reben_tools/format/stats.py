"""Per-band running moments, mergeable across blocks and workers.

Statistics of a band upsampled to 120x120 by nearest neighbour equal those of its
native pixels (each pixel is repeated the same number of times), so moments are
accumulated on native-resolution arrays.

Owns: :class:`BandMoments` (mergeable per-band count, mean, variance).
Does not own: which patches count (train split) or where statistics go (``format.manifest``).
May import: numpy and the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class BandMoments:
    """Count, sum and sum of squares per band (float64), for mean and std."""

    count: dict[str, int] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    total_sq: dict[str, float] = field(default_factory=dict)

    def add(self, band: str, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        self.count[band] = self.count.get(band, 0) + v.size
        self.total[band] = self.total.get(band, 0.0) + float(v.sum())
        self.total_sq[band] = self.total_sq.get(band, 0.0) + float(np.square(v).sum())

    def merge(self, other: BandMoments) -> BandMoments:
        out = BandMoments(dict(self.count), dict(self.total), dict(self.total_sq))
        for band, n in other.count.items():
            out.count[band] = out.count.get(band, 0) + n
            out.total[band] = out.total.get(band, 0.0) + other.total[band]
            out.total_sq[band] = out.total_sq.get(band, 0.0) + other.total_sq[band]
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {"count": self.count, "total": self.total, "total_sq": self.total_sq}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> BandMoments:
        return cls(dict(data["count"]), dict(data["total"]), dict(data["total_sq"]))

    def mean_std(self) -> dict[str, tuple[float, float]]:
        """``{band: (mean, population std)}`` for every band seen, in sorted band order."""
        out = {}
        for band in sorted(self.count):
            n = self.count[band]
            if n == 0:
                continue
            mean = self.total[band] / n
            var = max(self.total_sq[band] / n - mean * mean, 0.0)
            out[band] = (mean, float(np.sqrt(var)))
        return out
