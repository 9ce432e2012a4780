"""Central wavelengths of reBEN's bands, for wavelength-conditioned encoders (DOFA).

Owns: the table band name -> central wavelength in micrometres, where each value
comes from, and the lookup that turns a band list into the wavelength list a
wavelength-conditioned patch embedding takes.

Does not own: which bands exist, their resolution or dtype (the band table), nor
any model code. Imports nothing from the package (a constant table and one pure
function), so any layer may use it.

Sources:

- Sentinel-2 L2A: the nominal central wavelengths of the MSI bands in ESA's
  Sentinel-2 User Handbook (Sentinel-2A, rounded to 1 nm), e.g. B02 490 nm,
  B8A 865 nm, B12 2190 nm. These are also, digit for digit, the values DOFA's
  published code and demo feed its Sentinel-2 inputs (``0.443 ... 2.19``), so the
  published weights see the wavelengths they were trained with.
- Sentinel-1 VV and VH: DOFA's published code (README demo of
  github.com/zhu-xlab/DOFA, and the pretraining wavelength lists) passes
  ``5.405`` for both polarisations of Sentinel-1 SAR. That number is the C-band
  centre *frequency* in GHz (5.405 GHz), not the physical wavelength
  (about 5.55 cm); it is a convention, kept as-is so the published weights
  receive the value they were trained on. Because VV and VH share one value, a
  DOFA patch embedding generates the same kernel for both.
"""

from __future__ import annotations

from collections.abc import Sequence

S2_CENTRAL_WAVELENGTH_UM: dict[str, float] = {
    "B01": 0.443, "B02": 0.490, "B03": 0.560, "B04": 0.665, "B05": 0.705,
    "B06": 0.740, "B07": 0.783, "B08": 0.842, "B8A": 0.865, "B09": 0.945,
    "B11": 1.610, "B12": 2.190,
}
"""Sentinel-2 L2A bands, micrometres (ESA Sentinel-2 User Handbook, S2A nominal)."""

S1_DOFA_WAVELENGTH_UM: dict[str, float] = {"VV": 5.405, "VH": 5.405}
"""Sentinel-1 polarisations, DOFA's SAR convention (C-band centre frequency in GHz)."""

CENTRAL_WAVELENGTH_UM: dict[str, float] = {**S1_DOFA_WAVELENGTH_UM, **S2_CENTRAL_WAVELENGTH_UM}
"""Every archive band that has a wavelength, in the archive's band order (S1 then S2)."""

WAVELENGTH_SOURCE: dict[str, str] = {
    **{b: "ESA Sentinel-2 User Handbook, S2A nominal central wavelength" for b in S2_CENTRAL_WAVELENGTH_UM},
    **{b: "DOFA published code: Sentinel-1 SAR passed as 5.405 (C-band GHz)" for b in S1_DOFA_WAVELENGTH_UM},
}
"""Where each value in :data:`CENTRAL_WAVELENGTH_UM` comes from."""

BANDS_WITHOUT_WAVELENGTH: dict[str, str] = {
    "SCL": "the L2A scene classification layer is a class map, not a spectral band",
}
"""Band names the archive tooling knows that have no central wavelength, and why."""


def wavelengths_for(bands: Sequence[str]) -> tuple[float, ...]:
    """The central wavelengths, in micrometres, of ``bands`` in their order.

    Args:
        bands: band names as the archive stores them (``"B04"``, ``"VV"``).

    Returns:
        one float per band, micrometres (DOFA's 5.405 convention for VV/VH).

    Raises:
        ValueError: a band has no wavelength (``SCL``) or is unknown, or the list is empty;
            the message names the band.
    """
    names = list(bands)
    if not names:
        raise ValueError("band list is empty: a wavelength-conditioned encoder needs at least one band")
    out = []
    for band in names:
        if band in CENTRAL_WAVELENGTH_UM:
            out.append(CENTRAL_WAVELENGTH_UM[band])
        elif band in BANDS_WITHOUT_WAVELENGTH:
            raise ValueError(f"band {band!r} has no central wavelength ({BANDS_WITHOUT_WAVELENGTH[band]})")
        else:
            raise ValueError(
                f"unknown band {band!r}: no central wavelength; known bands: {list(CENTRAL_WAVELENGTH_UM)}"
            )
    return tuple(out)
