"""Writing reBEN's GeoTIFF release layout: patch folders and single-band GeoTIFFs (export).

Folder names come from untrusted archive metadata, so :func:`patch_folder` accepts only plain
path components that stay inside the release root.

Owns: product folders of patch names, :func:`patch_folder`, the patch geotransform,
writing one band (:func:`write_band`) and one patch (:func:`write_patch`).
Does not own: the layout constants and reading (``release.geotiff_release``), the synthetic
test release (``release.synthetic_release``), exporting an archive (``release.archive_tools``).
May import: ``format`` (bands, naming), ``release.geotiff_release``, numpy, affine and
rasterio (lazily).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from reben_tools.format.bands import PATCH_SIZE_M
from reben_tools.release.geotiff_release import (
    REFERENCE_MAP_BAND,
    REFERENCE_MAPS_RELEASE_DIR,
    S1_RELEASE_DIR,
    S2_RELEASE_DIR,
)


def product_of(name: str) -> str:
    """The product folder of a patch or S1 name.

    S2 patch ids lose their ``_x_y`` suffix (``..._R022_T33UUP``); S1 names keep mission
    through acquisition start (``S1B_IW_GRDH_1SDV_20170612T165809``), as in the release.
    """
    from reben_tools.format.naming import parse_s1_patch_name

    try:
        return parse_s1_patch_name(name)[0]
    except ValueError:
        pass
    parts = name.rsplit("_", 2)
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"{name!r} does not end in _<x>_<y>; cannot derive its product folder")
    return parts[0]


MAX_COMPONENT_BYTES = 200
"""Longest patch or product name used as a folder name (file names add a band suffix; most
file systems stop at 255 bytes)."""


def _check_component(part: str, name: str) -> None:
    """``part`` (derived from the untrusted ``name``) must be one plain path component."""
    if (
        not part
        or part in (".", "..")
        or part.startswith(".")
        or any(c in part for c in ("/", "\\", "\x00"))
        or len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES
    ):
        raise ValueError(
            f"name {name[:80]!r}{'...' if len(name) > 80 else ''} cannot be a folder name "
            f"(empty, '.', '..', leading '.', '/', '\\', NUL or over {MAX_COMPONENT_BYTES} bytes)"
        )


def patch_folder(release_root: str | os.PathLike, kind: str, name: str, nested: bool = True) -> Path:
    """The folder of a patch in the release layout (``nested=False``: no product level).

    Names come from archive metadata and are untrusted: a name that is not a plain path
    component (``/``, ``..``, NUL, absurd length), or whose folder would resolve outside
    ``release_root``, raises ValueError naming it.
    """
    top = {"S2": S2_RELEASE_DIR, "S1": S1_RELEASE_DIR, "reference_map": REFERENCE_MAPS_RELEASE_DIR}[kind]
    if not isinstance(name, str):
        raise ValueError(f"patch name must be a string, got {type(name).__name__}: {name!r}")
    _check_component(name, name)
    base = Path(release_root) / top
    if nested:
        product = product_of(name)
        _check_component(product, name)
        folder = base / product / name
    else:
        folder = base / name
    root = Path(release_root).resolve()
    if not folder.resolve().is_relative_to(root):
        raise ValueError(f"name {name[:80]!r}: its folder {folder} resolves outside {root}")
    return folder


def grid_transform(ulx: float, uly: float, size: int):
    """The geotransform of a ``size`` x ``size`` band of a patch with upper-left corner (ulx, uly)."""
    from affine import Affine

    resolution = PATCH_SIZE_M / size
    return Affine(resolution, 0.0, float(ulx), 0.0, -resolution, float(uly))


def write_band(
    path: str | os.PathLike,
    array: np.ndarray,
    crs: str,
    transform: object,
    compress: str | None = None,
    nodata: float | None = None,
) -> None:
    """Write one single-band GeoTIFF the way the reBEN release does (striped, not tiled).

    Args:
        path: destination (parent folders are created).
        array: 2-D pixels; written with their dtype.
        crs: anything rasterio accepts (``"EPSG:32633"``, WKT).
        transform: the band's ``affine.Affine``.
        compress: ``None`` for uncompressed (S2, S1) or ``"deflate"`` (reference maps).
        nodata: the nodata value to declare (0 for reference maps), or None.
    """
    import rasterio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": crs,
        "transform": transform,
    }
    if compress:
        profile["compress"] = compress
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(array, 1)


def write_patch(
    release_root: str | os.PathLike,
    kind: str,
    name: str,
    arrays: Mapping[str, np.ndarray],
    crs: str,
    ulx: float,
    uly: float,
    nested: bool = True,
    suffix: str = ".tif",
) -> Path:
    """Write one patch into the release layout; returns its folder.

    Args:
        release_root: folder that holds (or will hold) ``BigEarthNet-S2`` etc.
        kind: ``"S2"``, ``"S1"`` or ``"reference_map"``.
        name: patch id, S1 name, or (for a reference map) the patch id.
        arrays: band -> pixels (``{"reference_map": ...}`` or ``{"Data": ...}`` for a map).
        crs, ulx, uly: the patch's 10 m grid (S1 patches use their S2 partner's grid).
        nested: ``<kind dir>/<product>/<name>/`` (reBEN) or ``<kind dir>/<name>/``.
        suffix: file ending, ``.tif`` as in the release.
    """
    folder = patch_folder(release_root, kind, name, nested)
    if kind == "reference_map":
        array = arrays.get(REFERENCE_MAP_BAND, arrays.get("Data"))
        if array is None:
            raise ValueError(f"reference map of {name} given without a 'reference_map' or 'Data' array")
        write_band(
            folder / f"{name}_{REFERENCE_MAP_BAND}{suffix}",
            array,
            crs,
            grid_transform(ulx, uly, array.shape[0]),
            compress="deflate",
            nodata=0,
        )
        return folder
    for band, array in arrays.items():
        write_band(folder / f"{name}_{band}{suffix}", array, crs, grid_transform(ulx, uly, array.shape[0]))
    return folder


# ---------------------------------------------------------------------------- synthetic release


__all__ = ["grid_transform", "patch_folder", "product_of", "write_band", "write_patch"]
