"""Tiny generated inputs for the pipeline tests, with answers known by construction.

Everything is defined in tile T33UUP's UTM coordinates (EPSG:32633, upper-left
corner (300000, 5400000)) relative to that corner: ``u`` metres east, ``v``
metres south. The products cover 4,200 m x 4,200 m: a 3 x 3 patch grid plus an
incomplete fourth row and column.

Product 1 (SAFE, JPEG2000, sensing T0 = 2017-06-13T10:10:31, MTD offset -1000):
    (0,0) kept, 2.5% snow, 0.83% cloud         (1,0) dropped: a 0 pixel in B05
    (2,0) kept, 1.06% cloud/shadow             (0,1) kept
    (1,1) kept, 29 of 120 columns uncovered (24.17% UNLABELED)
    (2,1) dropped: 30 columns of code 122 (exactly 25% UNLABELED)
    (0,2) kept (unknown code 777 square, repaired bow-tie of 311)
    (1,2) kept, S1 from scene 2 (scene 1's swath edge crosses it)
    (2,2) dropped: no S1 scene within the gap covers it
Product 2 (GeoTIFF folder, S2B, sensing T0 + 1 day, baseline N0208 -> offset 0):
    every pixel valid, no snow or cloud; the same S1 pairing as product 1.

S1 scenes (EPSG:3035, 20 m): VV/VH are linear functions of the 3035 coordinates.
    scene 1 (T0 + 12 h): no-data (-9999) where u + v > 4900
    scene 2 (T0 + 2 d):  NaN where u + v > 6100
    scene 3 (T0 + 10 d): covers everything, outside the 6-day gap
CORINE: GeoPackage in EPSG:3035 with column ``CODE_18`` (strings, as in the real file).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer

ULX, ULY = 300000.0, 5400000.0
CRS = "EPSG:32633"
EXTENT = 4200.0
T0 = datetime(2017, 6, 13, 10, 10, 31)
P1_NAME = "S2A_MSIL2A_20170613T101031_N0500_R022_T33UUP_20240101T000000.SAFE"
P1_PREFIX = "S2A_MSIL2A_20170613T101031_N0500_R022_T33UUP"
P2_NAME = "S2B_MSIL2A_20170614T101031_N0208_R022_T33UUP_20170614T120000"
P2_PREFIX = "S2B_MSIL2A_20170614T101031_N0208_R022_T33UUP"
S1_SCENES = {
    1: (
        "S1A_IW_GRDH_1SDV_20170613T221031_20170613T221056_017000_01C5A1_AAAA",
        T0 + timedelta(hours=12),
        -9999.0,
        4900.0,
    ),
    2: ("S1B_IW_GRDH_1SDV_20170615T101031", T0 + timedelta(days=2), None, 6100.0),
    3: ("S1A_IW_GRDH_1SDV_20170623T101031", T0 + timedelta(days=10), -9999.0, None),
}
S1_X0, S1_Y0 = 4488000.0, 2848000.0
VV_COEF = (-12.0, 1.0e-3, -0.5e-3)
VH_COEF = (-19.0, -0.4e-3, 0.8e-3)
RES = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B11": 20,
    "B12": 20,
    "SCL": 20,
}

TO_3035 = Transformer.from_crs(CRS, "EPSG:3035", always_xy=True)


def s1_value(coef: tuple[float, float, float], x3035: np.ndarray, y3035: np.ndarray) -> np.ndarray:
    """The known linear S1 field: ``c + a (X - X0) + b (Y - Y0)`` in EPSG:3035 metres (float64)."""
    c, a, b = coef
    return c + a * (np.asarray(x3035) - S1_X0) + b * (np.asarray(y3035) - S1_Y0)


def uv_box(u0: float, v0: float, u1: float, v1: float) -> shapely.Polygon:
    """A box in (u east, v south) tile-relative metres, as a UTM polygon."""
    return shapely.box(ULX + u0, ULY - v1, ULX + u1, ULY - v0)


def uv_polygon(points: list[tuple[float, float]]) -> shapely.Polygon:
    return shapely.Polygon([(ULX + u, ULY - v) for u, v in points])


def clc_polygons_utm() -> list[tuple[object, str]]:
    """The CORINE features in UTM: (geometry, code string), in file order."""
    hole = uv_box(1200, 1200, 1490, 2400)
    road = uv_box(2400, 1200, 2700, 2400)
    arable = uv_polygon([(0, 0), (1803, 0), (1203, 2400), (0, 2400)]).difference(hole)
    unknown = uv_box(100, 2500, 300, 2700)
    bowtie = uv_polygon([(603, 2600), (1003, 3000), (1003, 2600), (603, 3000)])
    conifer = uv_box(0, 0, EXTENT, EXTENT).difference(
        shapely.union_all([hole, road, arable, unknown, uv_box(603, 2600, 1003, 3000)])
    )
    return [(arable, "211"), (road, "122"), (conifer, "312"), (unknown, "777"), (bowtie, "311")]


def expected_reference_map(x: int, y: int) -> np.ndarray:
    """The reference map of patch (x, y) from the UTM polygons by point-in-polygon tests on pixel centres."""
    cols = ULX + 1200 * x + 10 * np.arange(120) + 5
    rows = ULY - 1200 * y - 10 * np.arange(120) - 5
    xs, ys = np.meshgrid(cols, rows)
    out = np.full((120, 120), 999, dtype=np.uint16)
    left_tri = uv_polygon([(603, 2600), (803, 2800), (603, 3000)])
    right_tri = uv_polygon([(1003, 2600), (803, 2800), (1003, 3000)])
    for geometry, code in clc_polygons_utm():
        if code == "777":
            continue
        if code == "311":
            inside = shapely.contains_xy(left_tri, xs, ys) | shapely.contains_xy(right_tri, xs, ys)
        else:
            inside = shapely.contains_xy(geometry, xs, ys)
        out[inside] = int(code)
    return out


def _densify_to_3035(geometry):
    return shapely.transform(
        shapely.segmentize(geometry, 20.0), lambda x, y: TO_3035.transform(x, y), interleaved=False
    )


def write_clc(path: Path, column: str = "CODE_18", crs: str = "EPSG:3035") -> Path:
    """The CORINE GeoPackage (bow-tie kept invalid on purpose)."""
    import geopandas as gpd

    features = clc_polygons_utm()
    geometries = []
    for geometry, code in features:
        if crs == "EPSG:3035":
            if code == "311":  # keep the bow-tie's vertex order: transform vertices only
                coords = np.asarray(geometry.exterior.coords)
                tx, ty = TO_3035.transform(coords[:, 0], coords[:, 1])
                geometry = shapely.Polygon(np.column_stack([tx, ty]))
            else:
                geometry = _densify_to_3035(geometry)
        geometries.append(geometry)
    frame = gpd.GeoDataFrame({column: [c for _, c in features]}, geometry=geometries, crs=crs)
    frame.to_file(path, driver="GPKG", engine="pyogrio")
    return path


def band_arrays(seed: int, with_defects: bool) -> dict[str, np.ndarray]:
    """Band rasters of a product over the 4,200 m extent (uint16; SCL uint8)."""
    rng = np.random.default_rng(seed)
    out = {}
    for band, res in RES.items():
        n = int(EXTENT // res)
        if band == "SCL":
            out[band] = np.full((n, n), 4, dtype=np.uint8)
        else:
            out[band] = rng.integers(1, 10000, size=(n, n), dtype=np.uint16)
    if with_defects:
        out["B05"][10, 70] = 0  # patch (1, 0) at 20 m: columns 60..119
        scl = out["SCL"]
        scl[0:9, 0:10] = 11  # 90 snow pixels in patch (0, 0)
        scl[20:23, 0:10] = 9  # 30 cloud pixels in patch (0, 0)
        scl[5:42, 125] = 3  # 37 shadow pixels in patch (2, 0) (columns 120..179)
        scl[50, 130] = 10  # 1 cirrus pixel
    return out


def _profile(res: int, n: int, dtype: str, driver: str) -> dict:
    profile = {
        "driver": driver,
        "width": n,
        "height": n,
        "count": 1,
        "dtype": dtype,
        "crs": CRS,
        "transform": Affine(res, 0, ULX, 0, -res, ULY),
    }
    if driver == "JP2OpenJPEG":
        profile.update(QUALITY="100", REVERSIBLE="YES")
    return profile


def write_safe(root: Path, name: str, arrays: dict[str, np.ndarray], offset: int | None = -1000) -> Path:
    """A .SAFE product: JPEG2000 bands in GRANULE/*/IMG_DATA/R*m and MTD_MSIL2A.xml."""
    product = root / name
    sensing = name.split("_")[2]
    img = product / "GRANULE" / "L2A_T33UUP_A010000_20170613T101031" / "IMG_DATA"
    for band, array in arrays.items():
        res = RES[band]
        folder = img / f"R{res}m"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"T33UUP_{sensing}_{band}_{res}m.jp2"
        with rasterio.open(path, "w", **_profile(res, array.shape[0], str(array.dtype), "JP2OpenJPEG")) as ds:
            ds.write(array, 1)
    if offset is not None:
        offsets = "".join(f'<BOA_ADD_OFFSET band_id="{i}">{offset}</BOA_ADD_OFFSET>' for i in range(13))
        (product / "MTD_MSIL2A.xml").write_text(
            '<?xml version="1.0"?><n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">'
            f"<n1:General_Info><Product_Image_Characteristics><BOA_ADD_OFFSET_VALUES_LIST>{offsets}"
            "</BOA_ADD_OFFSET_VALUES_LIST></Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>"
        )
    return product


def write_geotiff_product(root: Path, name: str, arrays: dict[str, np.ndarray]) -> Path:
    """A folder of one GeoTIFF per band: 10 m bands as ``..._B02_10m.tif``, others ``..._B05.tif``."""
    product = root / name
    product.mkdir(parents=True)
    for band, array in arrays.items():
        res = RES[band]
        suffix = f"_{band}_10m.tif" if res == 10 else f"_{band}.tif"
        with rasterio.open(
            product / f"{name}{suffix}", "w", **_profile(res, array.shape[0], str(array.dtype), "GTiff")
        ) as ds:
            ds.write(array, 1)
    return product


def s1_grid() -> tuple[Affine, int, int]:
    """The S1 scenes' 20 m grid in EPSG:3035 covering the product with 600 m margin."""
    corners_u = np.array([-600, EXTENT + 600, EXTENT + 600, -600])
    corners_v = np.array([-600, -600, EXTENT + 600, EXTENT + 600])
    x, y = TO_3035.transform(ULX + corners_u, ULY - corners_v)
    left, top = np.floor(min(x) / 20) * 20, np.ceil(max(y) / 20) * 20
    width = int(np.ceil((max(x) - left) / 20))
    height = int(np.ceil((top - min(y)) / 20))
    return Affine(20, 0, left, 0, -20, top), width, height


def write_s1_scene(root: Path, which: int) -> Path:
    """S1 scene ``which`` (1, 2 or 3): VV/VH float32 GeoTIFFs in EPSG:3035."""
    name, _, nodata, limit = S1_SCENES[which]
    folder = root / name
    folder.mkdir(parents=True)
    transform, width, height = s1_grid()
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x = transform.c + cols * 20
    y = transform.f - rows * 20
    invalid = np.zeros(x.shape, dtype=bool)
    if limit is not None:
        ux, uy = Transformer.from_crs("EPSG:3035", CRS, always_xy=True).transform(x, y)
        invalid = (ux - ULX) + (ULY - uy) > limit
    for pol, coef in (("VV", VV_COEF), ("VH", VH_COEF)):
        values = s1_value(coef, x, y).astype(np.float32)
        values[invalid] = np.nan if nodata is None else nodata
        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": 1,
            "dtype": "float32",
            "crs": "EPSG:3035",
            "transform": transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
        }
        with rasterio.open(folder / f"{name[:32]}_{pol}.tif", "w", **profile) as ds:
            ds.write(values, 1)
    return folder


@dataclass
class Region:
    """Paths of a generated test region."""

    root: Path
    s2_dir: Path
    s1_dir: Path
    clc: Path
    product1: Path
    product2: Path


def make_region(root: Path) -> Region:
    """Write both products, the three S1 scenes and the CORINE GeoPackage under ``root``."""
    s2_dir, s1_dir = root / "s2", root / "s1"
    s2_dir.mkdir(parents=True)
    s1_dir.mkdir(parents=True)
    p1 = write_safe(s2_dir, P1_NAME, band_arrays(1, True))
    p2 = write_geotiff_product(s2_dir, P2_NAME, band_arrays(2, False))
    for which in S1_SCENES:
        write_s1_scene(s1_dir, which)
    clc = write_clc(root / "clc.gpkg")
    return Region(root, s2_dir, s1_dir, clc, p1, p2)


def write_config(path: Path, region: Region, **overrides) -> Path:
    """A TOML pipeline config for the region (2 rows per block)."""
    settings = {
        "s2": [str(region.s2_dir)],
        "s1": [str(region.s1_dir)],
        "clc": str(region.clc),
        "rows_per_block": 2,
        "s1_max_gap_days": 6.0,
        "memory_limit": "1GiB",
        **overrides,
    }
    lines = []
    for key, value in settings.items():
        if isinstance(value, list):
            lines.append(f"{key} = [" + ", ".join(f'"{v}"' for v in value) + "]")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path
