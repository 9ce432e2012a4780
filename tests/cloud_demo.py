"""The demo region as cloud catalogues hold it: COGs + STAC items, and the original products in a bucket.

Shared by the cloud tests (``test_cloud_build.py``) and the remote case of
``benchmarks/bench_pipeline.py``:

- :func:`cog_catalogue` writes, beside nothing else in ``out``, every demo S2 product as
  per-band Cloud-Optimised GeoTIFFs named by Earth Search's asset keys
  (``cogs/sentinel-2-l2a/<item id>/blue.tif`` ...), every S1 scene as ``vv.tif`` / ``vh.tif``
  (``cogs/sentinel-1-grd/<scene>/``), their STAC items with Earth Search's properties
  (``s2:product_uri``, ``s2:processing_baseline``, ``earthsearch:boa_offset_applied``,
  ``eo:cloud_cover``, ``mgrs:*``), and ``items.json``: a static ItemCollection whose asset
  hrefs are relative to it (serve ``out`` over HTTP and it is a catalogue; read it from disk
  and it is one too).
- :func:`rtc_scene` adds a Planetary-Computer-like ``sentinel-1-rtc`` item of a scene in
  linear power (10^(dB/10)).
- :func:`upload_tree` copies the demo's own inputs (.SAFE products, the GeoTIFF folder, S1
  folders, CORINE) into a bucket of the loopback S3 server.

Pixel values are copied losslessly (DEFLATE), so a build from the COGs gives the local build's
values byte for byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil

from reben_tools.builder.scenes import open_s1_scene, open_s2_product
from reben_tools.builder.stac import EARTH_SEARCH_ASSETS
from reben_tools.format import naming

S2_COLLECTION = "sentinel-2-l2a"
S1_COLLECTION = "sentinel-1-grd"
RTC_COLLECTION = "sentinel-1-rtc"
COG_OPTIONS = {"compress": "DEFLATE", "predictor": "YES", "blocksize": 512, "overviews": "AUTO"}


@dataclass
class CloudDemo:
    """Where the COG catalogue of the demo is."""

    root: Path
    items_file: Path
    items: list[dict]
    s2_ids: list[str] = field(default_factory=list)
    s1_ids: list[str] = field(default_factory=list)

    def item(self, item_id: str) -> dict:
        return next(i for i in self.items if i["id"] == item_id)

    def write_items(self, items: list[dict], name: str) -> Path:
        """Another static ItemCollection beside ``items.json`` (same relative hrefs)."""
        path = self.root / name
        path.write_text(json.dumps({"type": "FeatureCollection", "features": items}, indent=1))
        return path


def to_cog(src: Path, dst: Path, resampling: str = "AVERAGE") -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    rasterio.shutil.copy(str(src), str(dst), driver="COG", resampling=resampling, **COG_OPTIONS)
    return dst


def _footprint(crs, bounds) -> tuple[dict, list[float]]:
    from rasterio.warp import transform

    west, south, east, north = bounds
    t = np.linspace(0.0, 1.0, 11)
    xs = np.concatenate([west + (east - west) * t, np.full(11, east), east - (east - west) * t, np.full(11, west)])
    ys = np.concatenate(
        [np.full(11, south), south + (north - south) * t, np.full(11, north), north - (north - south) * t]
    )
    lon, lat = transform(crs, "EPSG:4326", xs, ys)
    coords = np.column_stack([lon, lat]).round(7)
    geometry = {"type": "Polygon", "coordinates": [[*coords.tolist(), coords[0].tolist()]]}
    bbox = [float(coords[:, 0].min()), float(coords[:, 1].min()), float(coords[:, 0].max()), float(coords[:, 1].max())]
    return geometry, [round(v, 7) for v in bbox]


def _iso(when) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cloud_cover(scl_path) -> float:
    with rasterio.open(scl_path) as ds:
        scl = ds.read(1)
    valid = scl > 0
    return round(100.0 * float(np.isin(scl, (3, 8, 9, 10)).sum()) / max(1, int(valid.sum())), 2)


def s2_item(product, root: Path, item_id: str, hrefs: dict[str, str]) -> dict:
    """An Earth-Search-like item of a demo product whose COGs are at ``hrefs`` (band -> relative href)."""
    name = product.name
    with rasterio.open(product.band_paths["B02"]) as ds:
        geometry, bbox = _footprint(ds.crs, ds.bounds)
        epsg = ds.crs.to_epsg()
    tile = name.tile
    baseline = f"{name.baseline[1:3]}.{name.baseline[3:5]}"
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": S2_COLLECTION,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": _iso(name.sensing_time),
            "platform": f"sentinel-{name.mission[1:].lower()}",
            "constellation": "sentinel-2",
            "eo:cloud_cover": _cloud_cover(product.band_paths["SCL"]),
            "proj:epsg": epsg,
            "mgrs:utm_zone": int(tile[:2]),
            "mgrs:latitude_band": tile[2],
            "mgrs:grid_square": tile[3:],
            "s2:product_uri": product.path.name,
            "s2:processing_baseline": baseline,
            "earthsearch:boa_offset_applied": False,
        },
        "assets": {
            EARTH_SEARCH_ASSETS[band]: {
                "href": href,
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
            }
            for band, href in hrefs.items()
        },
        "links": [],
    }


def s1_item(scene_name: str, vv: Path, collection: str, hrefs: dict[str, str], product_type: str = "GRD") -> dict:
    with rasterio.open(vv) as ds:
        geometry, bbox = _footprint(ds.crs, ds.bounds)
    acquired = naming.s1_acquisition_time(scene_name)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": scene_name,
        "collection": collection,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": _iso(acquired),
            "platform": f"sentinel-{scene_name[1:3].lower()}",
            "constellation": "sentinel-1",
            "sar:instrument_mode": "IW",
            "sar:polarizations": ["VV", "VH"],
            "sar:product_type": product_type,
        },
        "assets": {
            key: {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]}
            for key, href in hrefs.items()
        },
        "links": [],
    }


def es_item_id(name: naming.S2ProductName) -> str:
    return f"{name.mission}_{name.tile}_{name.sensing[:8]}_0_L2A"


def cog_catalogue(inputs: Path, out: Path) -> CloudDemo:
    """COGs and STAC items of the demo region in ``inputs`` (the generator's folder) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    items, s2_ids, s1_ids = [], [], []
    for folder in sorted(p for p in (inputs / "S2").iterdir() if p.is_dir()):
        product = open_s2_product(folder)
        item_id = es_item_id(product.name)
        hrefs = {}
        for band, src in product.band_paths.items():
            rel = f"cogs/{S2_COLLECTION}/{item_id}/{EARTH_SEARCH_ASSETS[band]}.tif"
            to_cog(src, out / rel, "NEAREST" if band == "SCL" else "AVERAGE")
            hrefs[band] = rel
        items.append(s2_item(product, out, item_id, hrefs))
        s2_ids.append(item_id)
    for folder in sorted(p for p in (inputs / "S1").iterdir() if p.is_dir()):
        scene = open_s1_scene(folder)
        hrefs = {}
        for pol, src in (("vv", scene.vv), ("vh", scene.vh)):
            rel = f"cogs/{S1_COLLECTION}/{folder.name}/{pol}.tif"
            to_cog(src, out / rel)
            hrefs[pol] = rel
        items.append(s1_item(folder.name, out / hrefs["vv"], S1_COLLECTION, hrefs))
        s1_ids.append(folder.name)
    demo = CloudDemo(out, out / "items.json", items, s2_ids, s1_ids)
    demo.write_items(items, "items.json")
    return demo


def rtc_scene(demo: CloudDemo, scene_name: str) -> dict:
    """A ``sentinel-1-rtc`` item of a demo scene in linear power (10^(dB/10), NaN kept), Planetary Computer-like."""
    hrefs = {}
    for pol in ("vv", "vh"):
        src = demo.root / f"cogs/{S1_COLLECTION}/{scene_name}/{pol}.tif"
        rel = f"cogs/{RTC_COLLECTION}/{scene_name}_rtc/{pol}.tif"
        dst = demo.root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(src) as ds:
            profile = ds.profile
            db = ds.read(1)
        with np.errstate(invalid="ignore"):
            linear = np.where(np.isfinite(db), np.power(np.float32(10.0), db / np.float32(10.0)), np.nan)
        tmp = dst.with_suffix(".tmp.tif")
        profile.update(driver="GTiff", dtype="float32")
        with rasterio.open(tmp, "w", **profile) as ds:
            ds.write(linear.astype(np.float32), 1)
        to_cog(tmp, dst)
        tmp.unlink()
        hrefs[pol] = rel
    return s1_item(f"{scene_name}_rtc", demo.root / hrefs["vv"], RTC_COLLECTION, hrefs, product_type="RTC")


def upload_tree(client, bucket: str, local: Path, prefix: str) -> int:
    """Upload every file under ``local`` to ``s3://bucket/prefix/...``; returns the file count."""
    count = 0
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
        count += 1
    return count


def bbox_union(items: list[dict]) -> list[float]:
    boxes = np.array([i["bbox"] for i in items])
    return [
        math.floor(boxes[:, 0].min() * 100) / 100,
        math.floor(boxes[:, 1].min() * 100) / 100,
        math.ceil(boxes[:, 2].max() * 100) / 100,
        math.ceil(boxes[:, 3].max() * 100) / 100,
    ]


def demo_settings(inputs: Path) -> dict:
    """The demo build's settings (as ``reben demo`` builds), without S2 / S1 / CORINE locations."""
    flags = inputs / "flags"
    return {
        "countries_file": str(next((inputs / "countries").glob("*.geojson"))),
        "rows_per_block": 5,
        "memory_limit": "2GiB",
        "boa_add_offset": 0,
        "snow_ids_file": str(flags / "snow_patch_ids.txt"),
        "cloud_ids_file": str(flags / "cloud_or_shadow_patch_ids.txt"),
    }


def demo_config(inputs: Path, **overrides):
    """The demo build's config on local inputs (``overrides`` replace any setting)."""
    from reben_tools.builder.pipeline.config import PipelineConfig

    settings = {
        "s2": [str(inputs / "S2")],
        "s1": [str(inputs / "S1")],
        "clc": str(inputs / "corine" / "CLC2018_demo_BE_LU.gpkg"),
        **demo_settings(inputs),
        **overrides,
    }
    return PipelineConfig(**settings)


def write_toml(path: Path, settings: dict) -> Path:
    """A TOML pipeline config of plain settings (strings, numbers, lists of strings)."""
    lines = []
    for key, value in settings.items():
        if isinstance(value, list):
            lines.append(f"{key} = [" + ", ".join(json.dumps(v) for v in value) + "]")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def archive_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file of an archive folder by relative path (resume bookkeeping and lock left out)."""
    import hashlib

    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".reben-build/") or rel == ".reben.lock":
            continue
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def shard_digest(root: Path, prefixes: list[str]) -> dict[str, str]:
    """:func:`archive_digest` of the shards whose names start with one of ``prefixes``."""
    return {
        k: v
        for k, v in archive_digest(root).items()
        if k.startswith("shards/") and k.split("/")[1].startswith(tuple(prefixes))
    }
