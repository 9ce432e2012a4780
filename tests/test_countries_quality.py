"""Country assignment (nearest configured polygon, metric CRS) and SCL quality flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reben_tools.builder.countries import BIGEARTHNET_COUNTRIES, CountryError, CountryIndex, footprints_in
from reben_tools.builder.quality import QualityRule, read_id_list, scl_fractions


def _box(lon0, lat0, lon1, lat1):
    return {"type": "Polygon", "coordinates": [[[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]]}


def test_nearest_country_with_custom_polygons(tmp_path):
    path = tmp_path / "c.geojson"
    features = [
        {"type": "Feature", "properties": {"ADM0_A3": "WWW", "NAME": "West"}, "geometry": _box(10.0, 47.0, 11.0, 48.0)},
        {"type": "Feature", "properties": {"ADM0_A3": "EEE", "NAME": "East"}, "geometry": _box(12.0, 47.0, 13.0, 48.0)},
        {"type": "Feature", "properties": {"ADM0_A3": "FFF", "NAME": "Far"}, "geometry": _box(30.0, 60.0, 31.0, 61.0)},
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    index = CountryIndex.load(path, countries=["WWW", "EEE"])
    # footprints given in EPSG:4326 lon/lat corners through the helper
    feet = footprints_in(
        ["EPSG:4326"] * 3, np.array([10.5, 11.3, 11.8]), np.array([47.5, 47.5, 47.5]), 0.01, index.metric_crs
    )
    names, distances = index.nearest(feet)
    assert names == ["West", "West", "East"]  # inside West; 0.3 deg from West vs 0.69 from East; 0.19 from East
    assert distances[0] == 0 and distances[1] > 20_000 and distances[2] > 10_000
    with pytest.raises(CountryError, match="FFX"):
        CountryIndex.load(path, countries=["FFX"])


def test_a_border_patch_goes_to_the_country_it_overlaps_most():
    import shapely

    # two countries sharing the border x = 1,000,000 (EPSG:3035 metres); Switzerland listed first
    index = CountryIndex(
        ["CHE", "AUT"],
        ["Switzerland", "Austria"],
        [shapely.box(0, 0, 1_000_000, 1_000_000), shapely.box(1_000_000, 0, 2_000_000, 1_000_000)],
        "EPSG:3035",
    )
    # 1,200 m patches: 2% (24 m) in Switzerland; 98% in Switzerland; exactly half each (configured order)
    feet = [
        shapely.box(999_976, 500_000, 1_001_176, 501_200),
        shapely.box(998_824, 500_000, 1_000_024, 501_200),
        shapely.box(999_400, 500_000, 1_000_600, 501_200),
    ]
    names, distances = index.nearest(feet)
    assert names == ["Austria", "Switzerland", "Switzerland"]
    assert distances.tolist() == [0.0, 0.0, 0.0]


def test_default_countries_include_kosovo_by_adm0_a3():
    index = CountryIndex.load()
    assert index.codes == list(BIGEARTHNET_COUNTRIES)
    assert "Kosovo" in index.names and "Serbia" in index.names
    # Pristina lies in Kosovo; Vienna in Austria; Lisbon in Portugal
    feet = footprints_in(
        ["EPSG:4326"] * 3, np.array([21.16, 16.37, -9.14]), np.array([42.66, 48.21, 38.72]), 0.01, index.metric_crs
    )
    names, distances = index.nearest(feet)
    assert names == ["Kosovo", "Austria", "Portugal"] and (distances == 0).all()


def test_scl_fractions_and_rule(tmp_path):
    scl = np.full((60, 60), 4, dtype=np.uint8)
    scl[0, :36] = 11  # 36 snow pixels = 1%
    scl[1, :10] = 3
    scl[2, :10] = 8
    scl[3, :10] = 9
    scl[4, :10] = 10  # 40 cloud/shadow pixels
    snow, cloud = scl_fractions(scl)
    assert snow == 36 / 3600 and cloud == 40 / 3600
    ids = tmp_path / "ids.txt"
    ids.write_text("# listed\nP2\n\n")
    rule = QualityRule(snow_threshold=0.01, cloud_threshold=0.01, snow_ids=read_id_list(ids))
    flags = rule.flags(["P1", "P2"], np.array([snow, 0.0]), np.array([cloud, 0.0]))
    assert flags[0].tolist() == [False, True]  # 1% is not more than 1%; P2 is listed
    assert flags[1].tolist() == [True, False]
