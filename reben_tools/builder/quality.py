"""Seasonal snow and cloud/shadow flags from the L2A scene classification layer (SCL 11 snow; 3, 8, 9, 10 cloud or shadow).

SCL classes: 11 = snow or ice; 3 = cloud shadow, 8 = cloud medium probability,
9 = cloud high probability, 10 = thin cirrus. A patch is flagged when the share
of its SCL pixels (60 x 60 at 20 m) in a group is strictly greater than that
group's threshold, or when its id is on a configured list.

Owns: SCL snow and cloud/shadow fractions of a patch (:func:`scl_fractions`), the flag
rule (:class:`QualityRule`), patch-id lists (:func:`read_id_list`), the default thresholds.
Does not own: writing the flagged metadata file (reben_tools.format.metadata).
May import: reben_tools.format, numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SNOW_CLASSES: tuple[int, ...] = (11,)
CLOUD_SHADOW_CLASSES: tuple[int, ...] = (3, 8, 9, 10)
DEFAULT_SNOW_THRESHOLD = 0.01
DEFAULT_CLOUD_THRESHOLD = 0.01


def scl_fractions(scl: np.ndarray) -> tuple[float, float]:
    """Share of snow pixels and of cloud-or-shadow pixels in an SCL patch (any shape, uint8)."""
    scl = np.asarray(scl)
    n = scl.size
    if n == 0:
        return 0.0, 0.0
    snow = np.isin(scl, SNOW_CLASSES).sum() / n
    cloud = np.isin(scl, CLOUD_SHADOW_CLASSES).sum() / n
    return float(snow), float(cloud)


def read_id_list(path: str | Path) -> frozenset[str]:
    """Patch ids listed one per line (blank lines and ``#`` comments ignored)."""
    path = Path(path)
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read patch id list ({exc})") from None
    return frozenset(s for s in (line.split("#", 1)[0].strip() for line in lines) if s)


@dataclass(frozen=True)
class QualityRule:
    """Thresholds and lists deciding the two flags.

    Attributes:
        snow_threshold: flag snow when the snow fraction is greater than this (0..1).
        cloud_threshold: flag cloud/shadow when that fraction is greater than this (0..1).
        snow_ids, cloud_ids: patch ids flagged whatever their fractions.
    """

    snow_threshold: float = DEFAULT_SNOW_THRESHOLD
    cloud_threshold: float = DEFAULT_CLOUD_THRESHOLD
    snow_ids: frozenset[str] = field(default_factory=frozenset)
    cloud_ids: frozenset[str] = field(default_factory=frozenset)

    def flags(
        self, patch_ids: list[str], snow_fraction: np.ndarray, cloud_fraction: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Boolean arrays ``(contains_seasonal_snow, contains_cloud_or_shadow)`` of shape ``(n,)``."""
        snow = np.asarray(snow_fraction, dtype=np.float64) > self.snow_threshold
        cloud = np.asarray(cloud_fraction, dtype=np.float64) > self.cloud_threshold
        if self.snow_ids:
            snow |= np.fromiter((p in self.snow_ids for p in patch_ids), bool, len(patch_ids))
        if self.cloud_ids:
            cloud |= np.fromiter((p in self.cloud_ids for p in patch_ids), bool, len(patch_ids))
        return snow, cloud
