"""Country of a patch: the nearest configured country polygon to its footprint (ETRS89-LAEA distances).

Distances are computed in a metric CRS (ETRS89-LAEA Europe, EPSG:3035, by
default), 0 when footprint and country intersect. Countries are keyed on Natural
Earth's ``ADM0_A3`` code (Kosovo has no ISO A2 code there: it is ``KOS``) and
named by the ``NAME`` column. A footprint that meets several countries (distance 0
to each) goes to the one it overlaps most; remaining ties go by the configured order.

Owns: loading the country polygons (:class:`CountryIndex`, default: the packaged Natural
Earth file in reben_tools.resources), patch footprints in any CRS (:func:`footprints_in`),
nearest-country assignment, :data:`BIGEARTHNET_COUNTRIES`.
Does not own: where the footprints come from (build.pipeline.finalise).
May import: reben_tools.format, reben_tools.resources (package data), geopandas, pyproj, shapely.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

BIGEARTHNET_COUNTRIES: dict[str, str] = {
    "AUT": "Austria",
    "BEL": "Belgium",
    "FIN": "Finland",
    "IRL": "Ireland",
    "KOS": "Kosovo",
    "LTU": "Lithuania",
    "LUX": "Luxembourg",
    "PRT": "Portugal",
    "SRB": "Serbia",
    "CHE": "Switzerland",
}
"""ADM0_A3 code -> name of BigEarthNet's 10 countries."""

DEFAULT_METRIC_CRS = "EPSG:3035"


class CountryError(ValueError):
    """The country file cannot be used; the message names it."""


def default_countries_path() -> Path:
    """The Natural Earth 1:110m admin-0 GeoJSON shipped with the package."""
    return Path(str(resources.files("reben_tools.resources").joinpath("ne_110m_admin_0_countries.geojson")))


@dataclass
class CountryIndex:
    """Configured country polygons in a metric CRS.

    Attributes:
        codes: ADM0_A3 codes, in configured order.
        names: country names, same order.
        geometries: shapely polygons in ``metric_crs``, same order.
        metric_crs: CRS the distances are measured in.
    """

    codes: list[str]
    names: list[str]
    geometries: list
    metric_crs: str

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        countries: list[str] | None = None,
        key_column: str = "ADM0_A3",
        name_column: str = "NAME",
        metric_crs: str = DEFAULT_METRIC_CRS,
    ) -> CountryIndex:
        """Load country polygons.

        Args:
            path: a vector file of country polygons (default: the shipped Natural Earth file).
            countries: ADM0_A3 codes to use (default: BigEarthNet's 10 countries).
            key_column, name_column: columns holding the code and the name.
            metric_crs: CRS for distances.

        Raises:
            CountryError: unreadable file, missing columns, or a configured code not in the file.
        """
        import geopandas as gpd
        import shapely

        path = Path(path) if path is not None else default_countries_path()
        codes = list(countries) if countries is not None else list(BIGEARTHNET_COUNTRIES)
        try:
            frame = gpd.read_file(path, engine="pyogrio")
        except Exception as exc:
            raise CountryError(f"{path}: cannot read country polygons ({exc})") from None
        for column in (key_column, name_column):
            if column not in frame.columns:
                raise CountryError(f"{path}: no column {column!r} (columns: {list(frame.columns)})")
        if frame.crs is None:
            raise CountryError(f"{path}: country polygons have no CRS")
        frame = frame.to_crs(metric_crs)
        present = set(frame[key_column])
        missing = [c for c in codes if c not in present]
        if missing:
            raise CountryError(f"{path}: configured countries {missing} not found in column {key_column!r}")
        names, geometries = [], []
        for code in codes:
            rows = frame[frame[key_column] == code]
            geometries.append(shapely.make_valid(shapely.union_all(list(rows.geometry))))
            names.append(str(rows[name_column].iloc[0]))
        return cls(codes, names, geometries, metric_crs)

    def nearest(self, footprints: list) -> tuple[list[str], np.ndarray]:
        """Country name and distance (m) for each footprint.

        Args:
            footprints: shapely polygons in ``metric_crs``.

        Returns:
            ``(names, distances)``: list of names and float64 array of shape ``(n,)``.
        """
        import shapely

        if not footprints:
            return [], np.zeros(0)
        feet = np.asarray(footprints, dtype=object)
        countries = np.asarray(self.geometries, dtype=object)
        distances = shapely.distance(feet[:, None], countries[None, :])
        best = np.argmin(distances, axis=1)
        touching = distances == 0
        border = np.flatnonzero(touching.sum(axis=1) > 1)
        if border.size:  # on a border: the largest shared area wins (argmax keeps the configured order on ties)
            areas = shapely.area(shapely.intersection(feet[border, None], countries[None, :]))
            areas = np.where(touching[border], areas, -1.0)
            best[border] = np.argmax(areas, axis=1)
        return [self.names[i] for i in best], distances[np.arange(len(feet)), best]


def footprints_in(crs_of_rows: list[str], ulx: np.ndarray, uly: np.ndarray, size_m: float, target_crs: str) -> list:
    """Square patch footprints (upper-left corner, side ``size_m``) transformed to ``target_crs``.

    Each side is densified with 8 points so the footprint stays close to its true shape.
    """
    import shapely
    from pyproj import Transformer

    ulx = np.asarray(ulx, dtype=np.float64)
    uly = np.asarray(uly, dtype=np.float64)
    t = np.linspace(0.0, 1.0, 9)[:-1]
    ring_x = np.concatenate([t, np.ones_like(t), 1 - t, np.zeros_like(t)]) * size_m
    ring_y = -np.concatenate([np.zeros_like(t), t, np.ones_like(t), 1 - t]) * size_m
    out: list[shapely.Polygon | None] = [None] * len(ulx)
    crs_arr = np.asarray(crs_of_rows, dtype=object)
    for crs in sorted(set(crs_of_rows)):
        idx = np.flatnonzero(crs_arr == crs)
        transformer = Transformer.from_crs(crs, target_crs, always_xy=True)
        xs = ulx[idx, None] + ring_x[None, :]
        ys = uly[idx, None] + ring_y[None, :]
        tx, ty = transformer.transform(xs, ys)
        for k, i in enumerate(idx):
            out[int(i)] = shapely.Polygon(np.column_stack([tx[k], ty[k]]))
    return out
