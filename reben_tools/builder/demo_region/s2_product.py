"""A Sentinel-2 L2A product on disk: ``.SAFE`` (JPEG2000) or a folder of GeoTIFF bands.

Owns: raster paths of each layout, writing a product by blocks of patch rows
(:func:`_write_product`), ``MTD_MSIL2A.xml``, the granule's ``MTD_TL.xml`` and
``manifest.safe``.
Does not own: the pixel values (s2_render), reading products (reben_tools.builder.scenes).
May import: reben_tools.format.bands, .design, .geometry, .land_cover, .raster_sink, .s2_render, tqdm.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

import numpy as np

from reben_tools.builder.demo_region.design import _ProductDesign
from reben_tools.builder.demo_region.geometry import _Frame
from reben_tools.builder.demo_region.land_cover import _LandCover
from reben_tools.builder.demo_region.raster_sink import _RasterSink
from reben_tools.builder.demo_region.s2_render import NATIVE_RESOLUTION, SAFE_FOLDER_BANDS, _render_block
from reben_tools.format.bands import PATCH_SIZE_M

ESA_BAND_ID: dict[str, int] = {
    "B01": 0,
    "B02": 1,
    "B03": 2,
    "B04": 3,
    "B05": 4,
    "B06": 5,
    "B07": 6,
    "B08": 7,
    "B8A": 8,
    "B09": 9,
    "B10": 10,
    "B11": 11,
    "B12": 12,
}
"""``band_id`` of each band in ``MTD_MSIL2A.xml`` (B10 included, as ESA numbers them)."""


def _absolute_orbit(mission: str, sensing: datetime) -> int:
    """A plausible absolute orbit number (about 14.3 orbits a day since launch)."""
    launch = datetime(2015, 6, 23) if mission == "S2A" else datetime(2017, 3, 7)
    return int((sensing - launch).total_seconds() / 86400.0 * 143 / 10)


def _safe_paths(design: _ProductDesign, root: Path) -> tuple[str, dict[tuple[str, int], Path]]:
    """Granule folder name and the path of every raster of a product."""
    sensing = datetime.strptime(design.sensing, "%Y%m%dT%H%M%S")
    if design.layout == "SAFE":
        granule = f"L2A_T{design.tile}_A{_absolute_orbit(design.mission, sensing):06d}_{design.sensing}"
        img = root / "GRANULE" / granule / "IMG_DATA"
        paths = {
            (band, res): img / f"R{res}m" / f"T{design.tile}_{design.sensing}_{band}_{res}m.jp2"
            for res, bands in SAFE_FOLDER_BANDS.items()
            for band in bands
        }
        return granule, paths
    paths = {
        (band, NATIVE_RESOLUTION[band]): root / f"T{design.tile}_{design.sensing}_{band}.tif"
        for band in NATIVE_RESOLUTION
    }
    return "", paths


def _write_product(
    design: _ProductDesign,
    cover: _LandCover,
    frame: _Frame,
    out_root: Path,
    seed: int,
    block_rows: int | None = None,
    progress: bool = False,
) -> tuple[Path, dict[tuple[str, int], np.ndarray] | None]:
    """Write one S2 product by blocks of patch rows.

    Args:
        block_rows: patch rows per block (None: the whole product in one block, and the
            arrays are returned for the expected facts).

    Returns:
        ``(product folder, arrays or None)``.
    """
    from tqdm import tqdm

    root = out_root / design.name
    granule, paths = _safe_paths(design, root)
    driver = "JP2OpenJPEG" if design.layout == "SAFE" else "GTiff"
    sinks = {}
    for (band, res), path in paths.items():
        n = frame.size_m // res
        dtype = "uint8" if band == "SCL" else "uint16"
        sinks[(band, res)] = _RasterSink(path, driver, n, n, dtype, frame.crs, frame.transform(res), nodata=0)
    step = frame.size_m if block_rows is None else block_rows * PATCH_SIZE_M
    starts = list(range(0, frame.size_m, step))
    arrays = None
    try:
        for block, v0 in enumerate(tqdm(starts, desc=design.name[:60], disable=not progress, unit="block")):
            v1 = min(v0 + step, frame.size_m)
            rendered = _render_block(design, cover, frame, v0, v1, seed, block)
            for key, array in rendered.items():
                sinks[key].write(array, v0 // key[1])
            if block_rows is None:
                arrays = rendered
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    for sink in tqdm(sinks.values(), desc="encoding", disable=not progress, unit="file", leave=False):
        sink.close()
    if design.layout == "SAFE":
        _write_safe_metadata(design, frame, root, granule, paths)
    return root, arrays


def _write_safe_metadata(design: _ProductDesign, frame: _Frame, root: Path, granule: str, paths) -> None:
    """``MTD_MSIL2A.xml``, the granule's ``MTD_TL.xml`` and ``manifest.safe``."""
    sensing = datetime.strptime(design.sensing, "%Y%m%dT%H%M%S")
    generation = datetime.strptime(design.generation, "%Y%m%dT%H%M%S")
    baseline = f"{design.baseline[1:3]}.{design.baseline[3:5]}"
    orbit = int(design.orbit[1:])
    absolute = _absolute_orbit(design.mission, sensing)
    iso = sensing.strftime("%Y-%m-%dT%H:%M:%S.024Z")
    spacecraft = "Sentinel-2A" if design.mission == "S2A" else "Sentinel-2B"
    image_files = "\n".join(
        f"              <IMAGE_FILE>{p.relative_to(root).with_suffix('').as_posix()}</IMAGE_FILE>"
        for p in sorted(paths.values())
    )
    if design.boa_add_offset:
        offsets = "\n".join(
            f'        <BOA_ADD_OFFSET band_id="{i}">{design.boa_add_offset}</BOA_ADD_OFFSET>' for i in range(13)
        )
        offsets = f"      <BOA_ADD_OFFSET_VALUES_LIST>\n{offsets}\n      </BOA_ADD_OFFSET_VALUES_LIST>\n"
    else:
        offsets = ""
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{b.replace("B0", "B")}"/>'
        for b, i in ESA_BAND_ID.items()
    )
    scl_names = [
        (0, "NO_DATA"),
        (1, "SATURATED_DEFECTIVE"),
        (2, "DARK_FEATURE_SHADOW"),
        (3, "CLOUD_SHADOW"),
        (4, "VEGETATION"),
        (5, "NOT_VEGETATED"),
        (6, "WATER"),
        (7, "UNCLASSIFIED"),
        (8, "CLOUD_MEDIUM_PROBA"),
        (9, "CLOUD_HIGH_PROBA"),
        (10, "THIN_CIRRUS"),
        (11, "SNOW_ICE"),
    ]
    scl = "\n".join(
        f"        <Scene_Classification_ID>\n          <SCENE_CLASSIFICATION_TEXT>SC_{n}</SCENE_CLASSIFICATION_TEXT>\n"
        f"          <SCENE_CLASSIFICATION_INDEX>{i}</SCENE_CLASSIFICATION_INDEX>\n        </Scene_Classification_ID>"
        for i, n in scl_names
    )
    datastrip = f"S2{design.mission[-1]}_OPER_MSI_L2A_DS_{design.generation}_S{design.sensing}_N{baseline}"
    granule_id = (
        f"S2{design.mission[-1]}_OPER_MSI_L2A_TL_{design.generation}_A{absolute:06d}_T{design.tile}_N{baseline}"
    )
    mtd = f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{iso}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{iso}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{design.name}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>{generation.strftime("%Y-%m-%dT%H:%M:%S.000000Z")}</GENERATION_TIME>
      <Datatake datatakeIdentifier="G{design.mission}_{design.sensing}_{absolute:06d}_N{baseline}">
        <SPACECRAFT_NAME>{spacecraft}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{iso}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>{orbit}</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="{datastrip}" granuleIdentifier="{granule_id}" imageFormat="JPEG2000">
{image_files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
{offsets}      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
      <Scene_Classification_List>
{scl}
      </Scene_Classification_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""
    (root / "MTD_MSIL2A.xml").write_text(mtd, encoding="utf-8")
    sizes = "\n".join(
        f'      <Size resolution="{res}">\n        <NROWS>{frame.size_m // res}</NROWS>\n'
        f"        <NCOLS>{frame.size_m // res}</NCOLS>\n      </Size>"
        for res in (10, 20, 60)
    )
    geopos = "\n".join(
        f'      <Geoposition resolution="{res}">\n        <ULX>{frame.grid.ulx:.0f}</ULX>\n'
        f"        <ULY>{frame.grid.uly:.0f}</ULY>\n        <XDIM>{res}</XDIM>\n        <YDIM>-{res}</YDIM>\n"
        "      </Geoposition>"
        for res in (10, 20, 60)
    )
    zone = frame.grid.epsg % 100
    tl = f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd">
  <n1:General_Info>
    <TILE_ID>{granule_id}</TILE_ID>
    <DATASTRIP_ID>{datastrip}</DATASTRIP_ID>
    <SENSING_TIME>{iso}</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding>
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone {zone}N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{frame.grid.epsg}</HORIZONTAL_CS_CODE>
{sizes}
{geopos}
    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:Level-2A_Tile_ID>
"""
    (root / "GRANULE" / granule / "MTD_TL.xml").write_text(tl, encoding="utf-8")
    for empty in (
        "AUX_DATA",
        "DATASTRIP",
        "HTML",
        "rep_info",
        f"GRANULE/{granule}/QI_DATA",
        f"GRANULE/{granule}/AUX_DATA",
    ):
        (root / empty).mkdir(parents=True, exist_ok=True)
    _write_manifest(root, design)


def _write_manifest(root: Path, design: _ProductDesign) -> None:
    """A ``manifest.safe`` (XFDU) listing every file of the product with its size and MD5."""
    entries = []
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.safe")
    for i, path in enumerate(files):
        digest = hashlib.md5(path.read_bytes()).hexdigest().upper()
        rel = path.relative_to(root).as_posix()
        mime = "application/octet-stream" if path.suffix == ".jp2" else "text/xml"
        entries.append(
            f'    <dataObject ID="{path.stem}_{i}">\n      <byteStream mimeType="{mime}" size="{path.stat().st_size}">\n'
            f'        <fileLocation locatorType="URL" href="./{rel}"/>\n'
            f'        <checksum checksumName="MD5">{digest}</checksum>\n      </byteStream>\n    </dataObject>'
        )
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" version="esa/safe/sentinel/1.1/sentinel-2/msi/archive_l2a_user_product">\n'
        f'  <informationPackageMap>\n    <xfdu:contentUnit unitType="Product_Level-2A" textInfo="{design.name}"/>\n'
        "  </informationPackageMap>\n  <dataObjectSection>\n"
        + "\n".join(entries)
        + "\n  </dataObjectSection>\n</xfdu:XFDU>\n"
    )
    (root / "manifest.safe").write_text(text, encoding="utf-8")
