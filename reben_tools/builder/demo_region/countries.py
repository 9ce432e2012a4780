"""The region's countries: the packaged Natural Earth file cut to BigEarthNet's countries, nearest country per patch.

Owns: writing the countries GeoJSON (:func:`_write_countries`) and the expected
nearest country of every patch (:func:`_expected_countries`, EPSG:3035 distances).
Does not own: the pipeline's country assignment (reben_tools.builder.countries).
May import: reben_tools.builder.countries (the country list), reben_tools.resources, .geometry, geopandas.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from reben_tools.builder.countries import BIGEARTHNET_COUNTRIES
from reben_tools.builder.demo_region.geometry import _Frame, _to_crs


def _countries_3035(countries_path: Path):
    import geopandas as gpd

    frame = gpd.read_file(countries_path, engine="pyogrio")
    frame = frame[frame["ADM0_A3"].isin(tuple(BIGEARTHNET_COUNTRIES))].to_crs("EPSG:3035")
    return list(frame["NAME"]), list(frame.geometry)


def _expected_countries(frame: _Frame, n: int, names: list[str], geometries: list) -> dict[tuple[int, int], str]:
    """Nearest country of every patch (distance in EPSG:3035, 0 when they intersect)."""
    keys = [(x, y) for y in range(n) for x in range(n)]
    boxes = _to_crs([frame.patch_box(x, y) for x, y in keys], frame.crs, "EPSG:3035")
    out = {}
    for key, patch in zip(keys, boxes, strict=True):
        distances = [g.distance(patch) for g in geometries]
        order = np.argsort(distances, kind="stable")
        if distances[order[1]] - distances[order[0]] < 2000.0:
            raise RuntimeError(f"demo design error: country of patch {key} is ambiguous")
        out[key] = names[order[0]]
    return out


def _write_countries(path: Path) -> None:
    """The packaged Natural Earth file reduced to BigEarthNet's 10 countries (same properties)."""
    text = resources.files("reben_tools.resources").joinpath("ne_110m_admin_0_countries.geojson").read_text("utf-8")
    data = json.loads(text)
    data["features"] = [f for f in data["features"] if f["properties"].get("ADM0_A3") in tuple(BIGEARTHNET_COUNTRIES)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True), encoding="utf-8")
