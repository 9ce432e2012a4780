"""What the generator returns: the region, its products and scenes, and the expected facts of each patch.

Owns: :class:`ExpectedPatch`, :class:`DemoProduct`, :class:`DemoS1Scene`,
:class:`DemoFeature` and :class:`DemoRegion` (paths, facts, ``describe()``).
Does not own: working the facts out (expected), writing anything (region).
May import: reben_tools.format.naming.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from reben_tools.format.naming import parse_s2_product_name


@dataclass(frozen=True)
class ExpectedPatch:
    """What a correct pipeline must find for one complete patch of a demo product.

    Attributes:
        patch_id: reBEN patch id (``..._T31UGR_03_07``).
        x, y: grid position (x eastwards, y southwards, from 0).
        has_nodata: some pixel of some S2 band is 0 (the patch must be dropped).
        unlabeled_fraction: exact share of the 120 x 120 reference map that is UNLABELED.
        labels: the 19-class labels (alphabetical), or None where a polygon grazes the
            patch so thinly that a pixel centre may or may not fall in it.
        s1_name: S1 partner name (``S1B_IW_GRDH_1SDV_20170613T172309_31UGR_3_7``) of the
            closest-in-time scene valid over the whole patch; None when no scene is.
        s1_certain: False where a swath edge passes within 70 m of the patch border, so
            the partner depends on resampling details (then ``s1_name`` is a best guess).
        s1_gap_days: |S1 - S2| acquisition gap of the partner in days (None without one).
        snow_fraction, cloud_or_shadow_fraction: exact SCL shares (classes 11; 3, 8, 9, 10).
        country: the nearest of BigEarthNet's countries (Natural Earth 1:110m, EPSG:3035).
    """

    patch_id: str
    x: int
    y: int
    has_nodata: bool
    unlabeled_fraction: float
    labels: tuple[str, ...] | None
    s1_name: str | None
    s1_certain: bool
    s1_gap_days: float | None
    snow_fraction: float
    cloud_or_shadow_fraction: float
    country: str

    @property
    def kept(self) -> bool | None:
        """Whether the patch makes it into the archive (None when that is not certain)."""
        if self.has_nodata or self.unlabeled_fraction >= 0.25:
            return False
        if not self.s1_certain:
            return None
        return self.s1_name is not None


@dataclass(frozen=True)
class DemoProduct:
    """One generated Sentinel-2 product.

    Attributes:
        name: folder name (``S2A_MSIL2A_..._T31UGR_20170613T104550.SAFE``; GeoTIFF folders
            carry no ``.SAFE``).
        path: the product folder.
        layout: ``"SAFE"`` (JPEG2000) or ``"GeoTIFF"``.
        tile: MGRS tile without ``T``; epsg: its UTM zone; ulx, uly: the tile's corner (m).
        size_m: side of the rasters in metres (1200 * patches_per_side + 600).
        patches_per_side: complete patches per row and column.
        boa_add_offset: -1000 for baselines N0400 and later, else 0.
        sensing_time: sensing start (UTC, naive).
        patches: expected facts of every complete patch, keyed by ``(x, y)``.
    """

    name: str
    path: Path
    layout: str
    tile: str
    epsg: int
    ulx: float
    uly: float
    size_m: int
    patches_per_side: int
    baseline: str
    boa_add_offset: int
    sensing_time: datetime
    patches: dict[tuple[int, int], ExpectedPatch]

    @property
    def patch_prefix(self) -> str:
        return parse_s2_product_name(self.name).patch_prefix


@dataclass(frozen=True)
class DemoS1Scene:
    """One generated Sentinel-1 scene: a folder with ``<name>_VV.tif`` and ``<name>_VH.tif``.

    Attributes:
        tile: the S2 tile whose area it covers; ascending: pass direction.
        crs: ``"EPSG:4326"``; nodata: NaN.
    """

    name: str
    path: Path
    acquisition_time: datetime
    tile: str
    ascending: bool
    crs: str = "EPSG:4326"

    @property
    def vv_path(self) -> Path:
        return self.path / f"{self.name}_VV.tif"

    @property
    def vh_path(self) -> Path:
        return self.path / f"{self.name}_VH.tif"


@dataclass(frozen=True)
class DemoFeature:
    """A designed land-cover rectangle, aligned on the 10 m pixel grid of its tile.

    Attributes:
        tile: MGRS tile; epsg: its UTM zone.
        bounds: ``(left, bottom, right, top)`` in metres in that CRS.
        code: the reference-map value every pixel inside takes (999: a CORINE gap).
    """

    tile: str
    epsg: int
    bounds: tuple[float, float, float, float]
    code: int


@dataclass(frozen=True)
class DemoRegion:
    """The generated demo region: paths and the facts a test can check.

    Attributes:
        root: the output folder.
        s2_dir, s1_dir: folders holding the S2 products and the S1 scenes.
        products: the S2 products (``.SAFE`` and GeoTIFF layout).
        s1_scenes: the S1 scenes.
        corine_path: CORINE GeoPackage (EPSG:3035, layer ``clc``, column ``Code_18``).
        countries_path: Natural Earth admin-0 subset (BigEarthNet's 10 countries).
        snow_ids_path, cloud_ids_path: patch-id lists of patches whose SCL share of
            snow / cloud-or-shadow exceeds 1 % (the pipeline's default threshold).
        expected_path: ``expected.json``, the facts below as JSON.
        seed, patches_per_side: generation parameters.
        features: the designed UNLABELED rectangles (exact reference-map pixels).
        design: the region design's name (``demo``, or ``benchmark-N`` for N tiles).
    """

    root: Path
    s2_dir: Path
    s1_dir: Path
    products: list[DemoProduct]
    s1_scenes: list[DemoS1Scene]
    corine_path: Path
    countries_path: Path
    snow_ids_path: Path
    cloud_ids_path: Path
    expected_path: Path
    seed: int
    patches_per_side: int
    features: list[DemoFeature]
    design: str = "demo"

    @property
    def s2_product_dirs(self) -> list[Path]:
        return [p.path for p in self.products]

    @property
    def s1_scene_dirs(self) -> list[Path]:
        return [s.path for s in self.s1_scenes]

    @property
    def patches(self) -> dict[str, ExpectedPatch]:
        """Every complete patch of every product, keyed by patch id."""
        return {p.patch_id: p for product in self.products for p in product.patches.values()}

    @property
    def snow_patch_ids(self) -> list[str]:
        return sorted(k for k, p in self.patches.items() if p.snow_fraction > 0.01)

    @property
    def cloud_patch_ids(self) -> list[str]:
        return sorted(k for k, p in self.patches.items() if p.cloud_or_shadow_fraction > 0.01)

    @property
    def nodata_patch_ids(self) -> list[str]:
        return sorted(k for k, p in self.patches.items() if p.has_nodata)

    @property
    def countries(self) -> list[str]:
        return sorted({p.country for p in self.patches.values()})

    def describe(self) -> str:
        """A few lines saying what was generated and where (for ``reben demo``)."""
        kept = [p for p in self.patches.values() if p.kept]
        lines = [
            f"demo region in {self.root} (seed {self.seed}, {self.patches_per_side}x{self.patches_per_side} patches per product)",
            f"  Sentinel-2: {len(self.products)} products in {self.s2_dir}",
        ]
        lines.extend(f"    {p.name} ({p.layout}, offset {p.boa_add_offset})" for p in self.products)
        lines += [
            f"  Sentinel-1: {len(self.s1_scenes)} scenes (EPSG:4326) in {self.s1_dir}",
            f"  CORINE:     {self.corine_path}",
            f"  countries:  {self.countries_path} ({', '.join(self.countries)})",
            f"  expected:   {self.expected_path} ({len(self.patches)} complete patches, "
            f"{len(kept)} expected in the archive)",
        ]
        return "\n".join(lines)
