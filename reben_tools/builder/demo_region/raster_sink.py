"""Single-band rasters written by row windows, so that memory stays at one block.

Owns: :class:`_RasterSink` (GeoTIFF written in place; JPEG2000 encoded losslessly at
close from a temporary GeoTIFF) and :data:`JP2_CREATION_OPTIONS`.
Does not own: what is written (s2_product, s1_scene).
May import: rasterio.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

JP2_CREATION_OPTIONS: dict[str, str] = {"QUALITY": "100", "REVERSIBLE": "YES", "YCBCR420": "NO"}
"""Lossless JPEG2000 (reversible 5/3 wavelet) with GDAL's JP2OpenJPEG driver."""


class _RasterSink:
    """A single-band raster written by row windows.

    JPEG2000 is encoded at :meth:`close` from an uncompressed temporary GeoTIFF with
    GDAL's CreateCopy (the JP2 driver cannot be written by windows), so memory stays
    at one block whatever the raster size.
    """

    def __init__(
        self,
        path: Path,
        driver: str,
        width: int,
        height: int,
        dtype: str,
        crs: str,
        transform,
        nodata: float | None = None,
    ):
        import rasterio

        self.path = path
        self.driver = driver
        path.parent.mkdir(parents=True, exist_ok=True)
        if driver == "JP2OpenJPEG":
            self.tmp: Path | None = path.with_name(path.name + ".tmp.tif")
            self.dataset = rasterio.open(
                self.tmp,
                "w",
                driver="GTiff",
                width=width,
                height=height,
                count=1,
                dtype=dtype,
                crs=crs,
                transform=transform,
            )
        else:
            self.tmp = None
            profile = dict(
                driver="GTiff",
                width=width,
                height=height,
                count=1,
                dtype=dtype,
                crs=crs,
                transform=transform,
                tiled=True,
                blockxsize=256,
                blockysize=256,
                compress="deflate",
                predictor=3 if dtype == "float32" else 2,
                nodata=nodata,
            )
            self.dataset = rasterio.open(path, "w", **profile)

    def write(self, array: np.ndarray, row0: int) -> None:
        from rasterio.windows import Window

        self.dataset.write(array, 1, window=Window(0, row0, array.shape[1], array.shape[0]))

    def abort(self) -> None:
        """Close without encoding and remove the temporary file (after an error)."""
        self.dataset.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        import rasterio.shutil

        self.dataset.close()
        if self.tmp is not None:
            rasterio.shutil.copy(self.tmp, self.path, driver="JP2OpenJPEG", **JP2_CREATION_OPTIONS)
            self.tmp.unlink()
