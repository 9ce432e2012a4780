"""Rendering Sentinel-2 L2A values for a block of rows: bands, SCL, clouds, snow, no-data.

Owns: the overlay masks of a product design, per-resolution rendering of uint16 DN
(with ``BOA_ADD_OFFSET``) and uint8 SCL, and the resampled copies a ``.SAFE`` product
holds (:func:`_render_block`); the L2A layout tables :data:`NATIVE_RESOLUTION` and
:data:`SAFE_FOLDER_BANDS`.
Does not own: writing files (s2_product, raster_sink).
May import: reben_tools.format.bands, .design, .geometry, .land_cover, .signatures.
"""

from __future__ import annotations

import numpy as np

from reben_tools.builder.demo_region.design import _ProductDesign
from reben_tools.builder.demo_region.geometry import _Frame, _rng
from reben_tools.builder.demo_region.land_cover import _LandCover
from reben_tools.builder.demo_region.signatures import (
    _NIR_BANDS,
    CLASS_SPECTRA,
    CLOUD_SPECTRUM,
    GAP_SPECTRUM_CODE,
    S2_ORDER,
    SCL_OF_CODE,
    SEASON_NIR_FACTOR,
    SNOW_SPECTRUM,
)
from reben_tools.format.bands import S2_BANDS

NATIVE_RESOLUTION: dict[str, int] = {**{b.name: b.resolution_m for b in S2_BANDS.values()}, "SCL": 20}
"""Native resolution (m) of the 12 L2A bands and SCL."""

SAFE_FOLDER_BANDS: dict[int, tuple[str, ...]] = {
    10: ("B02", "B03", "B04", "B08"),
    20: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "SCL"),
    60: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "SCL"),
}
"""Rasters in each ``IMG_DATA/R..m`` folder, as in a real L2A product (AOT, WVP and TCI left out)."""


def _pixel_centres(res: int, row0: int, nrows: int, ncols: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) metres east / south of the tile corner of each pixel centre, shapes (1, ncols) and (nrows, 1)."""
    u = (np.arange(ncols, dtype=np.float64) + 0.5)[None, :] * res
    v = (np.arange(row0, row0 + nrows, dtype=np.float64) + 0.5)[:, None] * res
    return u, v


def _overlay_masks(design: _ProductDesign, res: int, row0: int, nrows: int, ncols: int) -> dict[str, np.ndarray]:
    """Boolean masks (nrows, ncols) of no-data, cloud core (high / medium), cirrus, shadow and snow."""
    u, v = _pixel_centres(res, row0, nrows, ncols)
    shape = (nrows, ncols)
    masks = {k: np.zeros(shape, dtype=bool) for k in ("nodata", "high", "medium", "cirrus", "shadow", "snow")}
    if design.nodata_edge is not None:
        u0, tan = design.nodata_edge
        # judged at the centre of the 60 m cell holding the pixel, so all bands agree
        u60 = (np.floor(u / 60.0) + 0.5) * 60.0
        v60 = (np.floor(v / 60.0) + 0.5) * 60.0
        masks["nodata"] = np.broadcast_to(u60 > u0 + v60 * tan, shape).copy()
    for cloud in design.clouds:
        r2 = ((u - cloud.u) / cloud.a) ** 2 + ((v - cloud.v) / cloud.b) ** 2
        du, dv = cloud.shadow_shift
        s2 = ((u - cloud.u - du) / cloud.a) ** 2 + ((v - cloud.v - dv) / cloud.b) ** 2
        masks["high"] |= r2 <= 0.36
        masks["medium"] |= (r2 > 0.36) & (r2 <= 1.0)
        masks["cirrus"] |= (r2 > 1.0) & (r2 <= 1.69)
        masks["shadow"] |= (s2 <= 1.0) & (r2 > 1.69)
    for u0, v0, u1, v1 in design.snow_rects:
        masks["snow"] |= (u >= u0) & (u < u1) & (v >= v0) & (v < v1)
    cloudy = masks["high"] | masks["medium"] | masks["cirrus"]
    masks["shadow"] &= ~cloudy
    masks["snow"] &= ~(cloudy | masks["shadow"])
    return masks


def _render_native(
    design: _ProductDesign,
    cover: _LandCover,
    res: int,
    row0: int,
    nrows: int,
    ncols: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The bands native at ``res`` (and SCL at 20 m) for a window of rows: uint16 DN / uint8 SCL."""
    index = cover.index(res, row0, nrows, ncols)
    codes_ext = np.concatenate([[GAP_SPECTRUM_CODE], cover.codes])
    gains_ext = np.concatenate([[1.0], cover.gains])
    code_map = codes_ext[index]
    gain_map = gains_ext[index]
    masks = _overlay_masks(design, res, row0, nrows, ncols)
    spectra_codes = sorted(CLASS_SPECTRA)
    lookup = np.zeros((1000, len(S2_ORDER)), dtype=np.float32)
    for code in spectra_codes:
        lookup[code] = CLASS_SPECTRA[code]
    nir = np.ones(1000, dtype=np.float32)
    for code, factor in SEASON_NIR_FACTOR[design.season].items():
        nir[code] = factor
    offset = -design.boa_add_offset
    out: dict[str, np.ndarray] = {}
    for band in [b for b in S2_ORDER if NATIVE_RESOLUTION[b] == res]:
        j = S2_ORDER.index(band)
        refl = lookup[code_map, j] * gain_map.astype(np.float32)
        if band in _NIR_BANDS:
            refl = refl * nir[code_map]
        noise = rng.standard_normal(refl.shape, dtype=np.float32)
        refl = refl * (1.0 + np.float32(0.04) * noise) + np.float32(0.003) * noise
        if masks["snow"].any():
            refl = np.where(masks["snow"], np.float32(SNOW_SPECTRUM[j]) * (1.0 + np.float32(0.02) * noise), refl)
        if masks["shadow"].any():
            refl = np.where(masks["shadow"], refl * np.float32(0.35), refl)
        if masks["cirrus"].any():
            refl = np.where(masks["cirrus"], refl + np.float32(0.06), refl)
        cloud = masks["high"] | masks["medium"]
        if cloud.any():
            refl = np.where(cloud, np.float32(CLOUD_SPECTRUM[j]) * (1.0 + np.float32(0.03) * noise), refl)
        dn = np.clip(np.rint(refl * 10000.0) + offset, 1, 65535).astype(np.uint16)
        dn[masks["nodata"]] = 0
        out[band] = dn
    if res == 20:
        scl_of = np.full(1000, 4, dtype=np.uint8)
        for code, value in SCL_OF_CODE.items():
            scl_of[code] = value
        scl = scl_of[code_map]
        scl[masks["snow"]] = 11
        scl[masks["shadow"]] = 3
        scl[masks["cirrus"]] = 10
        scl[masks["medium"]] = 8
        scl[masks["high"]] = 9
        scl[masks["nodata"]] = 0
        out["SCL"] = scl
    for band, row, col in design.zero_pixels:
        if band in out and row0 <= row < row0 + nrows and col < ncols:
            out[band][row - row0, col] = 0
    return out


def _aggregate(array: np.ndarray, factor: int) -> np.ndarray:
    """Block mean (DN; 0 where any input is 0) or, for uint8 SCL, the top-left value."""
    rows, cols = array.shape[0] // factor, array.shape[1] // factor
    blocks = array[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor)
    if array.dtype == np.uint8:
        return blocks[:, 0, :, 0].copy()
    mean = np.rint(blocks.astype(np.float64).mean(axis=(1, 3))).astype(np.uint16)
    mean[(blocks == 0).any(axis=(1, 3))] = 0
    return mean


def _render_block(
    design: _ProductDesign,
    cover: _LandCover,
    frame: _Frame,
    v0_m: int,
    v1_m: int,
    seed: int,
    block: int,
) -> dict[tuple[str, int], np.ndarray]:
    """Every raster of the product for the rows between v0_m and v1_m metres south of the corner.

    Returns:
        ``{(band, resolution): array}``: native bands plus the resampled copies a SAFE
        product holds (B02 at 20 m, B01 at 20 m, SCL at 60 m, ...).
    """
    ncols_m = frame.size_m
    native: dict[str, np.ndarray] = {}
    for res in (10, 20, 60):
        rng = _rng(seed, "s2", design.name, res, block)
        native.update(_render_native(design, cover, res, v0_m // res, (v1_m - v0_m) // res, ncols_m // res, rng))
    out = {(b, NATIVE_RESOLUTION[b]): a for b, a in native.items()}
    if design.layout == "SAFE":
        for res in (20, 60):
            for band in SAFE_FOLDER_BANDS[res]:
                if (band, res) in out:
                    continue
                src_res = NATIVE_RESOLUTION[band]
                if src_res < res:
                    out[(band, res)] = _aggregate(native[band], res // src_res)
                else:  # B01 at 20 m: each 60 m pixel repeated 3 x 3
                    out[(band, res)] = np.repeat(np.repeat(native[band], 3, axis=0), 3, axis=1)
    return out
