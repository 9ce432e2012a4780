"""Warping one Sentinel-1 scene's VV and VH rasters onto the 1,200 m patch grid (bilinear, float32).

Owns: :class:`S1Warper`.
Does not own: opening scenes (scenes.py), the patch grid (tiling.py), pairing S1 with S2 (pipeline.discovery).
May import: reben_tools.format, reben_tools.geo, reben_tools.builder.tiling, .scenes, rasterio, numpy.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.windows import Window

from reben_tools.builder.scenes import S1Scene, SceneError, error_text

if TYPE_CHECKING:
    from pyproj import Transformer


class S1Warper:
    """Warps the VV and VH rasters of one S1 scene onto patch grids (bilinear, float32 dB).

    Use as a context manager: the rasters stay open between patches. Each patch is
    warped on its own from a source window derived from its footprint alone, so the
    value of a patch depends only on the scene and the patch grid (the same bytes
    whichever block or product asks for it). :meth:`prepare` reads the source pixels
    of many patches at once (one read per polarisation), :meth:`warp` then only slices.
    """

    MARGIN_PX = 3
    EDGE_POINTS = 21

    def __init__(self, scene: S1Scene):
        self.scene = scene
        self._stack: ExitStack | None = None
        self._cache: tuple[Window, np.ndarray] | None = None

    def __enter__(self) -> S1Warper:
        self._stack = ExitStack()
        try:
            self._vv = self._stack.enter_context(rasterio.open(self.scene.vv))
            self._vh = self._stack.enter_context(rasterio.open(self.scene.vh))
        except rasterio.errors.RasterioError as exc:
            self._stack.close()
            raise SceneError(self.scene.path, f"cannot open S1 rasters ({error_text(exc)})") from None
        self._transformers: dict[str, Transformer] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        self._cache = None
        if self._stack is not None:
            self._stack.close()

    def source_windows(self, crs: str, transforms: list, size: int = 120) -> list[Window | None]:
        """The source window each patch grid needs (None where the scene does not reach it).

        The patch outline (``EDGE_POINTS`` per edge) is taken to the scene's CRS, its
        bounds to pixels, widened by ``MARGIN_PX`` and clipped to the raster: a function
        of the patch grid alone.
        """
        from pyproj import Transformer

        if crs not in self._transformers:
            self._transformers[crs] = Transformer.from_crs(crs, self._vv.crs.to_wkt(), always_xy=True)
        t = np.linspace(0.0, 1.0, self.EDGE_POINTS)
        ring_u = np.concatenate([t, np.ones_like(t), 1 - t, np.zeros_like(t)])
        ring_v = np.concatenate([np.zeros_like(t), t, np.ones_like(t), 1 - t])
        xs = np.array([tr.c + tr.a * size * ring_u for tr in transforms])
        ys = np.array([tr.f + tr.e * size * ring_v for tr in transforms])
        sx, sy = self._transformers[crs].transform(xs, ys)
        inverse = ~self._vv.transform
        cols, rows = inverse @ (np.asarray(sx), np.asarray(sy))
        out: list[Window | None] = []
        for c, r in zip(np.asarray(cols), np.asarray(rows), strict=True):
            if not (np.isfinite(c).all() and np.isfinite(r).all()):
                out.append(None)
                continue
            col0 = max(int(np.floor(c.min())) - self.MARGIN_PX, 0)
            row0 = max(int(np.floor(r.min())) - self.MARGIN_PX, 0)
            col1 = min(int(np.ceil(c.max())) + self.MARGIN_PX, self._vv.width)
            row1 = min(int(np.ceil(r.max())) + self.MARGIN_PX, self._vv.height)
            out.append(Window(col0, row0, col1 - col0, row1 - row0) if col1 - col0 >= 2 and row1 - row0 >= 2 else None)
        return out

    def prepare(self, windows: list[Window | None]) -> None:
        """Read (once per polarisation) the union of ``windows``, for the next :meth:`warp` calls."""
        present = [w for w in windows if w is not None]
        if not present:
            self._cache = None
            return
        col0 = min(int(w.col_off) for w in present)
        row0 = min(int(w.row_off) for w in present)
        col1 = max(int(w.col_off + w.width) for w in present)
        row1 = max(int(w.row_off + w.height) for w in present)
        union = Window(col0, row0, col1 - col0, row1 - row0)
        self._cache = (union, self._read(union))

    def _read(self, window: Window) -> np.ndarray:
        src = np.empty((2, int(window.height), int(window.width)), dtype=np.float32)
        for i, ds in enumerate((self._vv, self._vh)):
            try:
                src[i] = ds.read(1, window=window)
            except rasterio.errors.RasterioError as exc:
                file = self.scene.vv if i == 0 else self.scene.vh
                raise SceneError(file, f"cannot read S1 raster ({error_text(exc)})") from None
        nodata = self.scene.nodata
        if nodata is not None and not np.isnan(nodata):
            src[src == np.float32(nodata)] = np.nan
        if self.scene.linear:
            with np.errstate(divide="ignore", invalid="ignore"):
                src = np.where(src > 0, np.float32(10.0) * np.log10(src), np.float32(np.nan)).astype(np.float32)
        return src

    def warp(
        self, crs: str, transform, size: int = 120, window: Window | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """VV and VH on a ``size`` x ``size`` grid (``transform`` in ``crs``), or None.

        Returns None when the scene does not cover every pixel of the grid with valid
        (finite, not no-data) values: the swath is a rotated strip, so its bounding box
        alone says little. ``window`` is the patch's :meth:`source_windows` entry when
        already known (it is computed otherwise).

        Returns:
            ``(vv, vh)``: float32 arrays of shape ``(size, size)`` in dB.
        """
        from rasterio.warp import Resampling, reproject

        if window is None:
            window = self.source_windows(crs, [transform], size)[0]
            if window is None:
                return None
        cached = self._cache
        if cached is not None and _contains(cached[0], window):
            union, data = cached
            r, c = int(window.row_off - union.row_off), int(window.col_off - union.col_off)
            src = data[:, r : r + int(window.height), c : c + int(window.width)]
        else:
            src = self._read(window)
        if not np.isfinite(src).any():
            return None
        dst = np.full((2, size, size), np.nan, dtype=np.float32)
        reproject(
            np.ascontiguousarray(src),
            dst,
            src_transform=self._vv.window_transform(window),
            src_crs=self._vv.crs,
            src_nodata=np.nan,
            dst_transform=transform,
            dst_crs=crs,
            dst_nodata=np.nan,
            resampling=Resampling.bilinear,
            tolerance=0.0,
            num_threads=1,
        )
        if not np.isfinite(dst).all():
            return None
        return dst[0], dst[1]


def _contains(outer: Window, inner: Window) -> bool:
    return (
        outer.col_off <= inner.col_off
        and outer.row_off <= inner.row_off
        and inner.col_off + inner.width <= outer.col_off + outer.width
        and inner.row_off + inner.height <= outer.row_off + outer.height
    )
