"""Input discovery: the S2 products and S1 scenes a config names, and the S1 candidates of a product.

Owns: expanding folders of items (local, or ``s3://`` prefixes listed through s3fs), opening
each product / scene once (remote ones on a few threads: header reads wait on the network),
adding the products and scenes of STAC items (``builder.stac``), choosing among duplicate
products (same patch ids, different generation time: the one covering most pixels),
recording what cannot be used (``Inputs.skipped``) or was flagged (``Inputs.flagged``), and
matching S1 scenes to a product by time gap and footprint.
Does not own: reading pixels (build.scenes), STAC conventions (build.stac), planning blocks (planning).
May import: reben_tools.builder.scenes / locations / stac / stac_search, .config, rasterio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reben_tools.builder.locations import RemoteError, RemotePath, configure_gdal, location
from reben_tools.builder.pipeline.config import BuildError, PipelineConfig
from reben_tools.builder.scenes import (
    S1Scene,
    S2Product,
    SceneError,
    looks_like_s1_scene,
    looks_like_s2_product,
    open_s1_scene,
    open_s2_product,
)


@dataclass
class Inputs:
    """What discovery found: usable products and scenes, and what was skipped."""

    products: list[S2Product] = field(default_factory=list)
    scenes: list[S1Scene] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    flagged: list[dict] = field(default_factory=list)


OPEN_THREADS = 16
"""Threads opening remote products and scenes at once (each open is a few small ranged reads)."""


def _expand(paths: list[str], is_item: Callable[[Path | RemotePath], bool]) -> list[Path | RemotePath]:
    out = []
    for raw in paths:
        path = location(raw)
        try:
            if path.is_dir() and not is_item(path):
                children = sorted(
                    (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
                )
                out.extend(children)
            else:
                out.append(path)
        except RemoteError as exc:
            raise BuildError(f"cannot list {path}: {exc}") from None
    return out


def _open_all(paths: list, opener: Callable) -> list:
    """``[(path, item or SceneError)]`` in the order of ``paths``; remote ones opened on threads."""

    def one(path):
        try:
            return path, opener(path)
        except SceneError as exc:
            return path, exc

    if any(isinstance(p, RemotePath) for p in paths) and len(paths) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(OPEN_THREADS, len(paths))) as pool:
            return list(pool.map(one, paths))
    return [one(p) for p in paths]


def _open_unique(
    paths: list[str],
    is_item: Callable[[Path | RemotePath], bool],
    opener: Callable[[Path], S2Product | S1Scene],
    kind: str,
    skipped: list[dict],
    extra: list | None = None,
) -> list:
    """Open every item ``paths`` name (folders of items expanded), one per prefix; sorted by prefix.

    ``extra`` items (opened elsewhere: STAC) join the same choice. Among items sharing a
    prefix the one with the largest :func:`coverage` is kept (ties: the latest name, i.e.
    the newest generation); the others, and items that cannot be opened, are recorded in
    ``skipped`` with the reason.
    """
    groups: dict[str, list] = {}
    for path, item in _open_all(_expand(paths, is_item), opener):
        if isinstance(item, SceneError):
            skipped.append({"item": path.name, "kind": kind, "path": item.path, "reason": item.reason})
            continue
        groups.setdefault(item.prefix, []).append(item)
    for item in extra or []:
        groups.setdefault(item.prefix, []).append(item)
    opened = []
    for prefix, items in groups.items():
        if len(items) == 1:
            opened.append(items[0])
            continue
        scored = sorted(((coverage(i), i.path.name, i) for i in items), key=lambda t: (t[0], t[1]), reverse=True)
        best_cover, best_name, best = scored[0]
        opened.append(best)
        for cover, name, item in scored[1:]:
            skipped.append(
                {
                    "item": name,
                    "kind": kind,
                    "path": str(item.path),
                    "reason": f"duplicate of {best_name} (same {prefix}); kept {best_name}: it covers "
                    f"{best_cover:.2%} of the extent with data, this one {cover:.2%}",
                }
            )
    return sorted(opened, key=lambda i: i.prefix)


def coverage(item: S2Product | S1Scene) -> float:
    """Share of the item's pixels holding data: B02 non-zero for a product, VV finite and not no-data for a scene.

    Read at about 1/8 resolution (GDAL overview or decimated read), enough to rank duplicates.
    """
    import numpy as np
    import rasterio

    path = item.band_paths["B02"] if isinstance(item, S2Product) else item.vv
    try:
        with rasterio.open(path) as ds:
            data = ds.read(1, out_shape=(max(1, ds.height // 8), max(1, ds.width // 8)))
    except rasterio.errors.RasterioError:
        return 0.0
    if isinstance(item, S2Product):
        return float(np.count_nonzero(data)) / data.size
    valid = np.isfinite(data)
    if item.nodata is not None and not np.isnan(item.nodata):
        valid &= data != np.float32(item.nodata)
    return float(np.count_nonzero(valid)) / data.size


def discover(config: PipelineConfig, items: list | None = None) -> Inputs:
    """Open every S2 product and S1 scene named by the config; record what cannot be used.

    Args:
        items: STAC items (``stac.StacItem``) already loaded; None loads those the config
            names (``stac_items``, or a search of ``stac``).
    """
    from reben_tools.builder import stac

    configure_gdal(config.remote_settings())
    inputs = Inputs()
    if items is None:
        items = stac_items(config)
    stac_products, stac_scenes = stac.open_items(
        items,
        inputs.skipped,
        inputs.flagged,
        assets=config.stac_assets or None,
        default_offset=config.boa_add_offset,
        mode=config.stac_offset_disagreement,
        s1_nodata=config.s1_nodata,
        s1_values=config.stac_s1_values or config.s1_values,
        threads=OPEN_THREADS,
    )
    inputs.products = _open_unique(
        config.s2,
        looks_like_s2_product,
        lambda path: open_s2_product(path, config.boa_add_offset),
        "s2_product",
        inputs.skipped,
        stac_products,
    )
    inputs.scenes = _open_unique(
        config.s1,
        looks_like_s1_scene,
        lambda path: open_s1_scene(path, config.s1_nodata, config.s1_values),
        "s1_scene",
        inputs.skipped,
        stac_scenes,
    )
    return inputs


def stac_items(config: PipelineConfig) -> list:
    """The STAC items a config names: its ItemCollections, then the results of its STAC API search.

    Raises:
        BuildError: an ItemCollection cannot be read, or the search fails (one line).
    """
    from reben_tools.builder import stac, stac_search

    try:
        items = stac.load_items(config.stac_items) if config.stac_items else []
        if config.stac:
            items += stac_search.search(
                config.stac,
                config.stac_collections,
                config.stac_bbox,
                config.stac_datetime,
                config.stac_max_cloud,
                config.stac_tiles,
                config.s1_max_gap_days,
                config.stac_assets or None,
                config.remote_retries,
                config.remote_timeout_s,
            )
    except SceneError as exc:
        raise BuildError(str(exc)) from None
    return items


def _bounds_intersect(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _scene_meets_product(scene: S1Scene, product: S2Product) -> bool:
    """Whether the scene's bounding box, taken to the product's CRS, meets the product's extent."""
    from rasterio.warp import transform_bounds

    g = product.grid
    try:
        bounds = transform_bounds(scene.crs, product.crs, *scene.bounds, densify_pts=21)
    except Exception:
        return False
    return _bounds_intersect(bounds, (g.ulx, g.uly - g.extent_y_m, g.ulx + g.extent_x_m, g.uly))


def s1_candidates(product: S2Product, scenes: list[S1Scene], max_gap_days: float) -> list[S1Scene]:
    """Scenes within the gap whose bounding box meets the product, closest in time first (ties: name)."""
    out = []
    for scene in scenes:
        gap = abs((scene.acquired - product.name.sensing_time).total_seconds()) / 86400.0
        if gap <= max_gap_days and _scene_meets_product(scene, product):
            out.append((gap, scene.prefix, scene))
    return [s for _, _, s in sorted(out, key=lambda t: (t[0], t[1]))]


def _scene_overlaps_any(scene: S1Scene, products: list[S2Product]) -> bool:
    return any(_scene_meets_product(scene, product) for product in products)
