"""CORINE Land Cover codes, the 19-class nomenclature and label derivation (reBEN: CLC 2018 codes to 19 classes; patches >= 25% unlabelled are dropped).

The legend ships as package data (``data/clc_legend.csv``): the 44 level-3 codes
plus 999, their names, colours and the 19-class name each maps to.

Owns: the CLC legend, the 19-class nomenclature, both class orders, labels and masks from
reference maps (25% rule).
Does not own: rasterising CORINE into reference maps (``build.corine``).
May import: ``reben_tools.resources`` (package data), numpy and the standard library.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np

UNLABELED = "UNLABELED"
NO_POLYGON_CODE = 999
"""Reference-map value for pixels no CORINE polygon covers."""
MAX_UNLABELED_FRACTION = 0.25
"""A patch is kept only if strictly less than this share of its pixels is UNLABELED."""
MASK_IGNORE_INDEX = 255
"""Value of unlabelled pixels in 19-class index masks."""

ORIGINAL_ORDER: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)
"""The 19 class names in the order the nomenclature was published."""

ALPHABETICAL_ORDER: tuple[str, ...] = tuple(sorted(ORIGINAL_ORDER))
"""The 19 class names sorted alphabetically: the ecosystem's default index order."""

CLASS_ORDERS = {"alphabetical": ALPHABETICAL_ORDER, "original": ORIGINAL_ORDER}
NUM_CLASSES = 19


@dataclass(frozen=True)
class ClcClass:
    """One row of the CORINE legend."""

    code: int
    name: str
    class19: str
    rgb: tuple[int, int, int]


@cache
def clc_legend() -> dict[int, ClcClass]:
    """The CORINE legend keyed by code (111..523 and 999)."""
    text = resources.files("reben_tools.resources").joinpath("clc_legend.csv").read_text("utf-8")
    legend = {}
    for row in csv.DictReader(text.splitlines()):
        code = int(row["clc_code"])
        legend[code] = ClcClass(
            code, row["clc_name"], row["class19_name"], (int(row["r"]), int(row["g"]), int(row["b"]))
        )
    return legend


def class_names(order: str = "alphabetical") -> tuple[str, ...]:
    """The 19 class names in ``order`` (``"alphabetical"`` or ``"original"``)."""
    try:
        return CLASS_ORDERS[order]
    except KeyError:
        raise ValueError(f"unknown class order {order!r}; expected one of {list(CLASS_ORDERS)}") from None


@cache
def code_to_class_index_table(order: str = "alphabetical") -> np.ndarray:
    """Lookup table of 1000 uint8 entries: CLC code -> 19-class index, 255 for UNLABELED.

    Codes that are not in the legend map to 255 as well.
    """
    names = class_names(order)
    table = np.full(1000, MASK_IGNORE_INDEX, dtype=np.uint8)
    for code, entry in clc_legend().items():
        if entry.class19 != UNLABELED:
            table[code] = names.index(entry.class19)
    table.flags.writeable = False
    return table


def known_codes() -> frozenset[int]:
    """Every code a reference map may hold (the legend's codes, 999 included)."""
    return frozenset(clc_legend())


def reference_map_to_mask(reference_map: np.ndarray, order: str = "alphabetical") -> np.ndarray:
    """Map raw CLC codes (uint16, any shape) to 19-class indices (uint8, 255 = unlabelled)."""
    codes = np.asarray(reference_map)
    if codes.size and int(codes.max()) >= 1000:
        raise ValueError(f"reference map holds code {int(codes.max())}, outside the CLC code range")
    mask: np.ndarray = code_to_class_index_table(order)[codes]
    return mask


def unlabeled_fraction(reference_map: np.ndarray) -> float:
    """Share of pixels whose code is UNLABELED in the 19-class nomenclature."""
    mask = reference_map_to_mask(reference_map)
    return float(np.count_nonzero(mask == MASK_IGNORE_INDEX)) / mask.size


def labels_from_reference_map(reference_map: np.ndarray) -> list[str]:
    """Every 19-class name present on at least one pixel, sorted alphabetically."""
    mask = reference_map_to_mask(reference_map, "alphabetical")
    present = np.unique(mask)
    return [ALPHABETICAL_ORDER[i] for i in present if i != MASK_IGNORE_INDEX]


def class_pixel_fractions(reference_map: np.ndarray) -> dict[str, float]:
    """Share of pixels of each 19-class name present (plus UNLABELED), for patches.parquet."""
    mask = reference_map_to_mask(reference_map, "alphabetical")
    counts = np.bincount(mask.ravel(), minlength=256)
    out = {ALPHABETICAL_ORDER[i]: counts[i] / mask.size for i in range(NUM_CLASSES) if counts[i]}
    if counts[MASK_IGNORE_INDEX]:
        out[UNLABELED] = counts[MASK_IGNORE_INDEX] / mask.size
    return out


def multi_hot(labels: list[str] | tuple[str, ...], order: str = "alphabetical") -> np.ndarray:
    """float32 vector of 19 with 1 at each label's index in ``order``.

    Raises:
        ValueError: a label is not one of the 19 class names.
    """
    names = class_names(order)
    vector = np.zeros(NUM_CLASSES, dtype=np.float32)
    for label in labels:
        try:
            vector[names.index(label)] = 1.0
        except ValueError:
            raise ValueError(f"unknown label {label!r}; not one of the 19 reBEN classes") from None
    return vector
