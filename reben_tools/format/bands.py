"""Band tables, band groups and the published normalisation statistics.

Facts from reBEN: its 12 Sentinel-2 bands at 10/20/60 m, Sentinel-1 VV/VH at 10 m, the
band groups its users name and the train-split statistics it published. Everything here is a constant
table or a pure function over one: no I/O.

Owns: the band table (:data:`ALL_BANDS`, S1/S2 bands, patch size), band groups, the
published normalisation statistics, and each band's central wavelength with its source
(:data:`CENTRAL_WAVELENGTH_UM`, used by every wavelength-conditioned model such as DOFA).
Does not own: reading or encoding band values (``format.codec``, ``release``, ``build``).
May import: numpy and the standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PATCH_SIZE_M = 1200
"""Side of a patch on the ground, in metres."""

OUTPUT_SIZE = 120
"""Side, in pixels, of a patch at 10 m: the size samples are upsampled to."""


@dataclass(frozen=True)
class Band:
    """One band as stored in the archive.

    Attributes:
        name: band name used as the safetensors tensor name (``B02``, ``VV``).
        resolution_m: native pixel size in metres (10, 20 or 60).
        dtype: numpy dtype of the stored pixels (``uint16`` for S2, ``float32`` for S1).
        modality: ``"S2"`` or ``"S1"``.
    """

    name: str
    resolution_m: int
    dtype: str
    modality: str

    @property
    def size(self) -> int:
        """Side of one patch of this band in pixels (120, 60 or 20)."""
        return PATCH_SIZE_M // self.resolution_m

    @property
    def resolution_folder(self) -> str:
        """The L2A ``IMG_DATA`` sub-folder this band is read from (``R10m`` ...)."""
        return f"R{self.resolution_m}m"


S2_BANDS: dict[str, Band] = {
    name: Band(name, res, "uint16", "S2")
    for name, res in [
        ("B01", 60),
        ("B02", 10),
        ("B03", 10),
        ("B04", 10),
        ("B05", 20),
        ("B06", 20),
        ("B07", 20),
        ("B08", 10),
        ("B8A", 20),
        ("B09", 60),
        ("B11", 20),
        ("B12", 20),
    ]
}
"""The 12 Sentinel-2 L2A bands in ESA order (B10 does not exist in L2A)."""

S1_BANDS: dict[str, Band] = {
    "VV": Band("VV", 10, "float32", "S1"),
    "VH": Band("VH", 10, "float32", "S1"),
}
"""The Sentinel-1 polarisations, warped to the 10 m patch grid, dB."""

ALL_BANDS: dict[str, Band] = {**S1_BANDS, **S2_BANDS}

SCL_BAND = Band("SCL", 20, "uint8", "S2")
"""The L2A scene classification layer (used for quality flags, not stored)."""

BAND_GROUPS: dict[str, tuple[str, ...]] = {
    "S1": ("VV", "VH"),
    "S2": tuple(S2_BANDS),
    "10m": ("B02", "B03", "B04", "B08"),
    "20m": ("B05", "B06", "B07", "B8A", "B11", "B12"),
    "60m": ("B01", "B09"),
    "RGB": ("B04", "B03", "B02"),
    "10m_20m": ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
}
BAND_GROUPS["S1_10m_20m"] = BAND_GROUPS["S1"] + BAND_GROUPS["10m_20m"]
BAND_GROUPS["ALL"] = BAND_GROUPS["S1"] + BAND_GROUPS["S2"]

PUBLISHED_STATISTICS: dict[str, tuple[float, float]] = {
    "B01": (361.0767822265625, 575.0687255859375),
    "B02": (438.3720703125, 607.02685546875),
    "B03": (614.0556640625, 603.2968139648438),
    "B04": (588.4096069335938, 684.56884765625),
    "B05": (942.8433227539062, 738.4326782226562),
    "B06": (1769.931640625, 1100.4560546875),
    "B07": (2049.551513671875, 1275.805419921875),
    "B08": (2193.2919921875, 1369.3717041015625),
    "B8A": (2235.556640625, 1356.5440673828125),
    "B09": (2241.455322265625, 1316.393310546875),
    "B11": (1568.226806640625, 1070.1612548828125),
    "B12": (997.7324829101562, 813.5276489257812),
    "VV": (-12.643863677978516, 5.133493900299072),
    "VH": (-19.352558135986328, 5.590505599975586),
}
"""Per-band (mean, std) on reBEN's train split at 120x120, nearest upsampling, exactly as
published with BigEarthNet v2.0 (ConfigILM ``BENv2_utils``, ``120_nearest``; S1 from v1):
the float32 values written out in full, not rounded."""

S2_VALUE_NBYTES = 160_832
S1_VALUE_NBYTES = 115_344


def resolve_bands(bands: str | Sequence[str]) -> tuple[str, ...]:
    """Turn a group name (``"S1_10m_20m"``) or a list of band names into band names.

    Raises:
        ValueError: the group or a band name is unknown, or a band repeats.
    """
    if isinstance(bands, str):
        if bands in BAND_GROUPS:
            return BAND_GROUPS[bands]
        if bands in ALL_BANDS:
            return (bands,)
        raise ValueError(f"unknown band group {bands!r}; expected one of {sorted(BAND_GROUPS)} or a band name")
    names = tuple(bands)
    unknown = [b for b in names if b not in ALL_BANDS]
    if unknown:
        raise ValueError(f"unknown band name(s) {unknown}; known bands: {list(ALL_BANDS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"band list repeats a band: {list(names)}")
    if not names:
        raise ValueError("band list is empty")
    return names


def modalities_of(bands: tuple[str, ...]) -> set[str]:
    """The modalities (``"S1"``, ``"S2"``) a band list draws on."""
    return {ALL_BANDS[b].modality for b in bands}


def normalisation_arrays(
    bands: tuple[str, ...], statistics: dict[str, tuple[float, float]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std as float32 arrays of shape (C,) in the order of ``bands``."""
    stats = PUBLISHED_STATISTICS if statistics is None else statistics
    missing = [b for b in bands if b not in stats]
    if missing:
        raise ValueError(f"no statistics for band(s) {missing}")
    mean = np.array([stats[b][0] for b in bands], dtype=np.float32)
    std = np.array([stats[b][1] for b in bands], dtype=np.float32)
    return mean, std


# --------------------------------------------------------------------------- central wavelengths
#
# Sentinel-2 L2A: the nominal central wavelengths of the MSI bands in ESA's Sentinel-2 User
# Handbook (Sentinel-2A, rounded to 1 nm: B02 490 nm, B8A 865 nm, B12 2190 nm ...). They are
# also, digit for digit, the values DOFA's published code feeds its Sentinel-2 inputs
# (0.443 ... 2.19 um), so published DOFA weights see the wavelengths they were trained with.
#
# Sentinel-1 VV and VH: SAR has no optical wavelength; DOFA takes a placeholder number per
# polarisation, and which one depends on the weights. DOFA v1's MAE checkpoints (the ViT-B/16 and
# ViT-L/16 that ``dofa_base`` / ``dofa_large`` load: torchgeo's DOFABase16/DOFALarge16 weights,
# XShadow/DOFA's DOFA_ViT_*_e100.pth) were pretrained with 3.75 for both: torchgeo PR #3942
# (merged 2026-08, closing torchgeo issue #3931, which asked DOFA's authors exactly this) documents
# "TorchGeo weights use the DOFA v1 convention [3.75, 3.75], DOFA v2 uses [5.405, 5.405]"; the
# PANGAEA benchmark's DOFA config passes 3.75 with DOFA_ViT_base_e100.pth, and torchgeo-bench
# PR #230 takes 3.75 from DOFA's pretraining wavelength table. 5.405 (the C-band centre
# *frequency* in GHz) is the DOFA v2 convention: DOFA's README demo, and terratorch PR #577
# (DOFA's author, 2025-04, with DOFA v2 support), which changed terratorch's wrapper from 3.75
# to 5.405. VV and VH share the value, so a DOFA patch embedding makes one kernel for both.

S2_CENTRAL_WAVELENGTH_UM: dict[str, float] = {
    "B01": 0.443,
    "B02": 0.490,
    "B03": 0.560,
    "B04": 0.665,
    "B05": 0.705,
    "B06": 0.740,
    "B07": 0.783,
    "B08": 0.842,
    "B8A": 0.865,
    "B09": 0.945,
    "B11": 1.610,
    "B12": 2.190,
}
"""Sentinel-2 L2A bands, micrometres (ESA Sentinel-2 User Handbook, S2A nominal)."""

S1_DOFA_WAVELENGTH_UM: dict[str, float] = {"VV": 3.75, "VH": 3.75}
"""Sentinel-1 polarisations in DOFA v1's SAR convention (a placeholder, not a wavelength)."""

CENTRAL_WAVELENGTH_UM: dict[str, float] = {**S1_DOFA_WAVELENGTH_UM, **S2_CENTRAL_WAVELENGTH_UM}
"""Every archive band's central wavelength, micrometres, in :data:`ALL_BANDS` order."""

WAVELENGTH_SOURCE: dict[str, str] = {
    **dict.fromkeys(S2_CENTRAL_WAVELENGTH_UM, "ESA Sentinel-2 User Handbook, S2A nominal central wavelength"),
    **dict.fromkeys(
        S1_DOFA_WAVELENGTH_UM,
        "DOFA v1 weights' Sentinel-1 placeholder 3.75 (torchgeo PR #3942, closing issue #3931; PANGAEA's DOFA "
        "config); 5.405 is DOFA v2's (README demo, terratorch PR #577)",
    ),
}
"""Where each value of :data:`CENTRAL_WAVELENGTH_UM` comes from."""

BANDS_WITHOUT_WAVELENGTH: dict[str, str] = {
    SCL_BAND.name: "the L2A scene classification layer is a class map, not a spectral band",
}
"""Band names the tooling knows that have no central wavelength, and why."""


def wavelengths_for(bands: Sequence[str]) -> tuple[float, ...]:
    """The central wavelengths, micrometres, of ``bands`` in their order.

    Args:
        bands: band names as the archive stores them (``"B04"``, ``"VV"``).

    Returns:
        one float per band (DOFA v1's 3.75 placeholder for VV/VH).

    Raises:
        ValueError: the list is empty, or a band is unknown or has no wavelength (``SCL``);
            the message names the band.
    """
    names = list(bands)
    if not names:
        raise ValueError("band list is empty: a wavelength-conditioned encoder needs at least one band")
    for band in names:
        if band in BANDS_WITHOUT_WAVELENGTH:
            raise ValueError(f"band {band!r} has no central wavelength ({BANDS_WITHOUT_WAVELENGTH[band]})")
        if band not in CENTRAL_WAVELENGTH_UM:
            raise ValueError(
                f"unknown band {band!r}: no central wavelength; known bands: {list(CENTRAL_WAVELENGTH_UM)}"
            )
    return tuple(CENTRAL_WAVELENGTH_UM[b] for b in names)
