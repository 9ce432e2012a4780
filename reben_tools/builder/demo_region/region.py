"""Generating the demo region: :func:`generate_region` (and :func:`tree_digest` to compare two generations).

Owns: the order of generation (CORINE, countries, S2 products, S1 scenes, flags,
``expected.json``), the output folder's entries and overwriting them.
Does not own: any one product kind (land_cover, countries, s2_product, s1_scene) nor
the facts (expected).
May import: reben_tools.format.labels, every module of this sub-package, tqdm.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np

from reben_tools.builder.demo_region.countries import _countries_3035, _write_countries
from reben_tools.builder.demo_region.design import DEMO_DESIGN, MIN_PATCHES_PER_SIDE, RegionDesign
from reben_tools.builder.demo_region.expected import _expected_product, _region_json
from reben_tools.builder.demo_region.geometry import _frame, _to_crs
from reben_tools.builder.demo_region.land_cover import _build_corine, _land_cover, _write_corine
from reben_tools.builder.demo_region.results import DemoFeature, DemoProduct, DemoRegion, DemoS1Scene
from reben_tools.builder.demo_region.s1_scene import _write_s1_scene
from reben_tools.builder.demo_region.s2_product import _write_product
from reben_tools.format.labels import NO_POLYGON_CODE

_OUTPUT_ENTRIES = ("S2", "S1", "corine", "countries", "flags", "expected.json")


def generate_region(
    out_dir: str | Path,
    *,
    seed: int = 0,
    patches_per_side: int = 10,
    overwrite: bool = False,
    progress: bool = False,
    design: RegionDesign = DEMO_DESIGN,
) -> DemoRegion:
    """Generate the demo region (about 5 to 15 s on 2 cores at the default size).

    Args:
        out_dir: output folder; created. It must be empty unless ``overwrite``.
        seed: drives every random draw; the same seed gives byte-identical files.
        patches_per_side: complete patches per product row and column (>= 10; the
            rasters are 1200 m x this + 600 m wide).
        overwrite: remove the outputs of an earlier generation in ``out_dir`` first
            (only the entries this function writes).
        progress: show tqdm progress bars.
        design: the products, S1 scenes and features (:data:`DEMO_DESIGN`, or
            :func:`~.design.benchmark_design` for the larger benchmark region).

    Returns:
        the :class:`DemoRegion` (paths plus expected facts, also in ``expected.json``).

    Raises:
        ValueError: ``patches_per_side`` below :data:`MIN_PATCHES_PER_SIDE`.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    from tqdm import tqdm

    if patches_per_side < MIN_PATCHES_PER_SIDE:
        raise ValueError(f"patches_per_side must be at least {MIN_PATCHES_PER_SIDE}, got {patches_per_side}")
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root}: output folder is not empty (pass overwrite=True to replace a demo region)")
        for entry in _OUTPUT_ENTRIES:
            target = root / entry
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    s2_dir, s1_dir = root / "S2", root / "S1"
    tiles = design.tiles
    frames = {tile: _frame(tile, patches_per_side) for tile in tiles}

    corine = _build_corine(frames, seed, features=design.features, all_classes=design.all_classes)
    corine_path = root / "corine" / "CLC2018_demo_BE_LU.gpkg"
    _write_corine(corine_path, corine)
    countries_path = root / "countries" / "ne_110m_admin_0_countries_bigearthnet.geojson"
    _write_countries(countries_path)
    country_names, country_geometries = _countries_3035(countries_path)
    covers = {tile: _land_cover(frames[tile], corine[tile], seed, tile) for tile in tiles}

    products: list[DemoProduct] = []
    for product in tqdm(design.products, desc="Sentinel-2", disable=not progress, unit="product"):
        frame, cover = frames[product.tile], covers[product.tile]
        path, arrays = _write_product(product, cover, frame, s2_dir, seed)
        assert arrays is not None
        products.append(
            _expected_product(
                product,
                frame,
                cover,
                path,
                arrays,
                patches_per_side,
                country_names,
                country_geometries,
                design.s1_scenes,
                design.features,
            )
        )

    scenes: list[DemoS1Scene] = []
    polygons_4326 = {tile: _to_crs([p for p, _ in corine[tile]], "EPSG:3035", "EPSG:4326") for tile in tiles}
    codes = {tile: np.array([c for _, c in corine[tile]], dtype=np.int64) for tile in tiles}
    for scene in tqdm(design.s1_scenes, desc="Sentinel-1", disable=not progress, unit="scene"):
        folder = _write_s1_scene(scene, frames[scene.tile], polygons_4326[scene.tile], codes[scene.tile], s1_dir, seed)
        scenes.append(
            DemoS1Scene(
                scene.name, folder, datetime.strptime(scene.start, "%Y%m%dT%H%M%S"), scene.tile, scene.ascending
            )
        )

    region = DemoRegion(
        root=root,
        s2_dir=s2_dir,
        s1_dir=s1_dir,
        products=products,
        s1_scenes=scenes,
        corine_path=corine_path,
        countries_path=countries_path,
        snow_ids_path=root / "flags" / "snow_patch_ids.txt",
        cloud_ids_path=root / "flags" / "cloud_or_shadow_patch_ids.txt",
        expected_path=root / "expected.json",
        seed=seed,
        patches_per_side=patches_per_side,
        features=[
            DemoFeature(
                f.tile,
                frames[f.tile].grid.epsg,
                tuple(frames[f.tile].rect_to_utm(f.rect).bounds),
                NO_POLYGON_CODE if f.code is None else f.code,
            )
            for f in design.features
        ],
        design=design.name,
    )
    region.snow_ids_path.parent.mkdir(parents=True, exist_ok=True)
    region.snow_ids_path.write_text("".join(f"{p}\n" for p in region.snow_patch_ids), encoding="utf-8")
    region.cloud_ids_path.write_text("".join(f"{p}\n" for p in region.cloud_patch_ids), encoding="utf-8")
    region.expected_path.write_text(json.dumps(_region_json(region), indent=1, sort_keys=True), encoding="utf-8")
    return region


def tree_digest(root: str | Path) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``root`` (sorted)."""
    digest = hashlib.sha256()
    base = Path(root)
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        digest.update(path.relative_to(base).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
