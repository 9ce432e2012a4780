"""The facts a correct pipeline must find for every patch, worked out from the design geometry.

Owns: expected labels (with slivers called uncertain), exact UNLABELED fractions,
the expected S1 partner and gap, no-data and SCL shares per patch
(:func:`_expected_product`), and the ``expected.json`` form of a region (:func:`_region_json`).
Does not own: the pipeline's own rules (reben_tools.builder.pipeline): nothing here
re-implements them.
May import: reben_tools.format (bands, labels, naming), .countries, .design, .geometry,
.land_cover, .results, .s1_scene, .s2_render.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from reben_tools.builder.demo_region.countries import _expected_countries
from reben_tools.builder.demo_region.design import (
    _FEATURES,
    _S1_SCENES,
    LABEL_CERTAIN_INSET_M,
    S1_CERTAIN_MARGIN_M,
    S1_MAX_GAP_DAYS,
    _Feature,
    _ProductDesign,
    _S1Design,
)
from reben_tools.builder.demo_region.geometry import _Frame
from reben_tools.builder.demo_region.land_cover import _LandCover
from reben_tools.builder.demo_region.results import DemoProduct, DemoRegion, ExpectedPatch
from reben_tools.builder.demo_region.s1_scene import _across_track
from reben_tools.builder.demo_region.s2_render import NATIVE_RESOLUTION
from reben_tools.format.bands import PATCH_SIZE_M
from reben_tools.format.labels import UNLABELED, clc_legend
from reben_tools.format.naming import parse_s2_product_name, patch_id, s1_patch_name


def _expected_labels(cover: _LandCover, patch) -> tuple[str, ...] | None:
    """Labels of a patch from the geometry alone, or None when a sliver makes them uncertain."""
    legend = clc_legend()
    sure: set[str] = set()
    maybe: set[str] = set()
    for i in sorted(cover.tree.query(patch.buffer(1.0)).tolist()):
        polygon = cover.polygons[i]
        name = legend[int(cover.codes[i])].class19
        if name == UNLABELED:
            continue
        inside = polygon.intersection(patch)
        if not inside.is_empty and not inside.buffer(-LABEL_CERTAIN_INSET_M).is_empty:
            sure.add(name)
        elif polygon.distance(patch) < 1.0:
            maybe.add(name)
    if maybe - sure:
        return None
    return tuple(sorted(sure))


def _unlabeled_fraction(tile: str, x: int, y: int, features: tuple[_Feature, ...] = _FEATURES) -> float:
    """Exact UNLABELED share: the designed features are aligned on the 10 m pixel grid."""
    u0, v0 = 1200.0 * x, 1200.0 * y
    area = 0.0
    for feature in features:
        if feature.tile != tile:
            continue
        fu0, fv0, fu1, fv1 = feature.rect
        w = max(0.0, min(fu1, u0 + 1200.0) - max(fu0, u0))
        h = max(0.0, min(fv1, v0 + 1200.0) - max(fv0, v0))
        area += w * h
    pixels = round(area / 100.0)  # 10 m x 10 m pixels, exactly
    return pixels / 14400


def _expected_s1(
    design: _ProductDesign, x: int, y: int, scenes: tuple[_S1Design, ...] = _S1_SCENES
) -> tuple[str | None, bool, float | None]:
    """(S1 scene name, certain, gap in days) of the closest scene valid over the whole patch."""
    sensing = datetime.strptime(design.sensing, "%Y%m%dT%H%M%S")

    def gap_days(scene: _S1Design) -> float:
        return abs((datetime.strptime(scene.start, "%Y%m%dT%H%M%S") - sensing).total_seconds()) / 86400.0

    candidates = sorted((s for s in scenes if s.tile == design.tile and gap_days(s) <= S1_MAX_GAP_DAYS), key=gap_days)
    us = np.array([1200.0 * x, 1200.0 * (x + 1)] * 2)
    vs = np.array([1200.0 * y] * 2 + [1200.0 * (y + 1)] * 2)
    certain = True
    for scene in candidates:
        c = _across_track(scene, us, vs)
        m = S1_CERTAIN_MARGIN_M
        if np.all((c >= scene.c_min + m) & (c <= scene.c_max - m)):
            return scene.name, certain, round(gap_days(scene), 4)
        if not np.any((c < scene.c_min - m) | (c > scene.c_max + m)):
            certain = False  # a swath edge within the margin: this scene may or may not count as valid
    return None, certain, None


def _expected_product(
    design: _ProductDesign,
    frame: _Frame,
    cover: _LandCover,
    path: Path,
    arrays: dict,
    n: int,
    country_names: list[str],
    country_geometries: list,
    scenes: tuple[_S1Design, ...] = _S1_SCENES,
    features: tuple[_Feature, ...] = _FEATURES,
) -> DemoProduct:
    name = parse_s2_product_name(design.name)
    patches = {}
    scl = arrays[("SCL", 20)]
    countries = _expected_countries(frame, n, country_names, country_geometries)
    for y in range(n):
        for x in range(n):
            has_nodata = False
            for band, res in NATIVE_RESOLUTION.items():
                if band == "SCL":
                    continue
                k = PATCH_SIZE_M // res
                if not arrays[(band, res)][y * k : (y + 1) * k, x * k : (x + 1) * k].all():
                    has_nodata = True
                    break
            window = scl[y * 60 : (y + 1) * 60, x * 60 : (x + 1) * 60]
            snow = float(np.count_nonzero(window == 11)) / window.size
            cloud = float(np.count_nonzero(np.isin(window, (3, 8, 9, 10)))) / window.size
            box = frame.patch_box(x, y)
            s1_scene, s1_certain, gap = _expected_s1(design, x, y, scenes)
            patches[(x, y)] = ExpectedPatch(
                patch_id=patch_id(name.patch_prefix, x, y),
                x=x,
                y=y,
                has_nodata=has_nodata,
                unlabeled_fraction=_unlabeled_fraction(design.tile, x, y, features),
                labels=_expected_labels(cover, box),
                s1_name=None if s1_scene is None else s1_patch_name(s1_scene, design.tile, x, y),
                s1_certain=s1_certain,
                s1_gap_days=gap,
                snow_fraction=snow,
                cloud_or_shadow_fraction=cloud,
                country=countries[(x, y)],
            )
    return DemoProduct(
        name=design.name,
        path=path,
        layout=design.layout,
        tile=design.tile,
        epsg=frame.grid.epsg,
        ulx=frame.grid.ulx,
        uly=frame.grid.uly,
        size_m=frame.size_m,
        patches_per_side=n,
        baseline=design.baseline,
        boa_add_offset=design.boa_add_offset,
        sensing_time=name.sensing_time,
        patches=patches,
    )


def _region_json(region: DemoRegion) -> dict:
    def rel(p: Path) -> str:
        return p.relative_to(region.root).as_posix()

    out = {
        "seed": region.seed,
        "patches_per_side": region.patches_per_side,
        "corine": rel(region.corine_path),
        "countries": rel(region.countries_path),
        "snow_patch_ids": rel(region.snow_ids_path),
        "cloud_or_shadow_patch_ids": rel(region.cloud_ids_path),
        "features": [
            {"tile": f.tile, "epsg": f.epsg, "bounds": list(f.bounds), "code": f.code} for f in region.features
        ],
        "s1_scenes": [
            {
                "name": s.name,
                "path": rel(s.path),
                "acquisition_time": s.acquisition_time.isoformat(),
                "tile": s.tile,
                "ascending": s.ascending,
                "crs": s.crs,
            }
            for s in region.s1_scenes
        ],
        "s2_products": [
            {
                "name": p.name,
                "path": rel(p.path),
                "layout": p.layout,
                "tile": p.tile,
                "epsg": p.epsg,
                "ulx": p.ulx,
                "uly": p.uly,
                "size_m": p.size_m,
                "patches_per_side": p.patches_per_side,
                "baseline": p.baseline,
                "boa_add_offset": p.boa_add_offset,
                "sensing_time": p.sensing_time.isoformat(),
                "patches": [
                    {
                        "patch_id": e.patch_id,
                        "x": e.x,
                        "y": e.y,
                        "has_nodata": e.has_nodata,
                        "unlabeled_fraction": e.unlabeled_fraction,
                        "labels": None if e.labels is None else list(e.labels),
                        "s1_name": e.s1_name,
                        "s1_certain": e.s1_certain,
                        "s1_gap_days": e.s1_gap_days,
                        "snow_fraction": e.snow_fraction,
                        "cloud_or_shadow_fraction": e.cloud_or_shadow_fraction,
                        "country": e.country,
                        "kept": e.kept,
                    }
                    for e in sorted(p.patches.values(), key=lambda e: e.patch_id)
                ],
            }
            for p in region.products
        ],
    }
    if region.design != "demo":  # the demo's expected.json stays as it was
        out["design"] = region.design
    return out


def expected_split_classes(design, patches_per_side: int, seed: int = 0) -> dict[str, dict[str, int]]:
    """Positive patches per class in each split of a region, from the design geometry alone (no rasters).

    Labels as :func:`_expected_labels` (patches whose labels a sliver makes uncertain are left
    out, as are patches with a designed UNLABELED feature); splits by reBEN's rule on the
    product's extent (``reben_tools.geo.split_rule``), as the pipeline assigns them.
    Fast: what ``reben demo --patches N`` will hold, checked before anything is generated.
    """
    from reben_tools.builder.demo_region.geometry import _frame
    from reben_tools.builder.demo_region.land_cover import _build_corine, _land_cover
    from reben_tools.geo.split_rule import reben_split

    frames = {tile: _frame(tile, patches_per_side) for tile in design.tiles}
    corine = _build_corine(frames, seed, features=design.features, all_classes=design.all_classes)
    out: dict[str, dict[str, int]] = {"train": {}, "validation": {}, "test": {}}
    for tile in design.tiles:
        frame = frames[tile]
        cover = _land_cover(frame, corine[tile], seed, tile)
        n = patches_per_side
        xs, ys = np.meshgrid(np.arange(n), np.arange(n))
        splits = reben_split(xs.ravel(), ys.ravel(), frame.size_m)
        products = sum(1 for p in design.products if p.tile == tile)
        for x, y, split in zip(xs.ravel(), ys.ravel(), splits, strict=True):
            if _unlabeled_fraction(tile, int(x), int(y), design.features) > 0:
                continue
            labels = _expected_labels(cover, frame.patch_box(int(x), int(y)))
            for name in labels or ():
                out[split][name] = out[split].get(name, 0) + products
    return out
