"""STAC as an input kind: items -> Sentinel-2 products and Sentinel-1 scenes, and the search that selects them.

A STAC item becomes the same :class:`~reben_tools.builder.scenes.S2Product` or
:class:`~reben_tools.builder.scenes.S1Scene` a folder gives, so the rest of the build does
not know where the pixels come from:

* **Band assets** are found by the catalogue's conventions: Earth Search (``coastal``,
  ``blue`` ... ``swir22``, ``scl``), Planetary Computer (``B01`` ... ``B12``, ``B8A``, ``SCL``),
  Copernicus Data Space (``B02_10m``, ``SCL_20m`` ...), S1 ``vv`` / ``vh``; other catalogues
  through a mapping (``stac_assets``: band -> asset key). A missing asset skips the item
  with one line naming the item and the band.
* **Names**: an S2 product is named by ``s2:product_uri`` (``s2:product_id``,
  ``sentinel:product_id``, else the item id), an S1 scene by its item id; both must parse
  as Sentinel product names (patch ids and S1 names derive from them).
* **Radiometry** comes from the item, never from guesses (:func:`claimed_radiometry`): the
  processing baseline (``s2:processing_baseline``, ``processing:version``), Earth Search's
  ``earthsearch:boa_offset_applied`` (pixels already harmonised: offset 0), or an offset a
  catalogue records in ``raster:bands``, else ESA's rule for original products (baseline
  04.00 and later carry ``BOA_ADD_OFFSET`` = -1000). Because Earth Search's flag is wrong
  on some items (Element84/earth-search #66, #71), the claim is cross-checked against the
  pixels (:func:`offset_evidence`: the median blue DN of SCL vegetation and water pixels
  is below 800 without the +1000 shift, above 1000 with it); an item whose claim and pixels
  disagree is refused (``stac_offset_disagreement = "refuse"``) or built with the offset its
  pixels show and listed (``"flag"``).
* **Sentinel-1**: RTC items (a collection or id naming ``rtc``, e.g. Planetary Computer's
  ``sentinel-1-rtc``) are recorded as ``"RTC gamma0"``, others as ``"GRD sigma0"``; linear
  power is converted to dB by the ``s1_values`` / ``stac_s1_values`` setting.
* **Asset URLs**: ``s3://`` and ``https://`` become :class:`~reben_tools.builder.locations.RemotePath`
  (Planetary Computer's Azure blobs signed when opened), relative hrefs are resolved against
  the item's self link or the file it came from, local paths stay local.

:mod:`.stac_search` runs the STAC API search that selects them.

Owns: :class:`StacItem`, :class:`ItemRef`, loading ItemCollections (:func:`load_items`),
the asset conventions, :func:`open_items`, the radiometry rules.
Does not own: checking rasters (scenes), remote reads (locations), the search (stac_search),
the build (pipeline).
May import: reben_tools.format, reben_tools.builder.scenes / locations, numpy, rasterio.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np

from reben_tools.builder.locations import (
    SIGN_PLANETARY_COMPUTER,
    RemoteError,
    RemotePath,
    is_url,
    location,
    redact,
)
from reben_tools.builder.scenes import (
    PRODUCT_BANDS,
    S1Scene,
    S2Product,
    SceneError,
    check_band_rasters,
    s1_scene_from_files,
)
from reben_tools.format import naming

EARTH_SEARCH_ASSETS: dict[str, str] = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B11": "swir16",
    "B12": "swir22",
    "SCL": "scl",
    "VV": "vv",
    "VH": "vh",
}
"""Earth Search (Element 84) asset keys: ``sentinel-2-l2a``, ``sentinel-2-c1-l2a``, ``sentinel-1-grd``."""

PLANETARY_COMPUTER_ASSETS: dict[str, str] = {**{b: b for b in PRODUCT_BANDS}, "VV": "vv", "VH": "vh"}
"""Planetary Computer asset keys: ``sentinel-2-l2a`` (``B02``, ``SCL`` ...), ``sentinel-1-rtc`` (``vv``, ``vh``)."""

CDSE_ASSETS: dict[str, str] = {**{b: f"{b}_{res}m" for b, res in PRODUCT_BANDS.items()}, "VV": "VV", "VH": "VH"}
"""Copernicus Data Space STAC asset keys of the original ``.SAFE`` rasters (``B02_10m``, ``SCL_20m`` ...)."""

CONVENTIONS: tuple[dict[str, str], ...] = (EARTH_SEARCH_ASSETS, PLANETARY_COMPUTER_ASSETS, CDSE_ASSETS)

S2_OFFSET = -1000
"""ESA's BOA_ADD_OFFSET of processing baseline 04.00 and later."""

VEGETATION_WATER_SCL = (4, 6)
NO_OFFSET_BELOW = 800.0
"""Median blue DN of vegetation / water below this: the pixels do not carry the +1000 shift."""
OFFSET_ABOVE = 1000.0
"""Median blue DN of vegetation / water above this: they do (dense vegetation reflects < 0.08 in blue)."""
MIN_EVIDENCE_PIXELS = 100

RTC = "RTC gamma0"
GRD = "GRD sigma0"


@dataclass(frozen=True)
class ItemRef:
    """Where a product or scene described by a STAC item comes from: it stands where a folder would.

    Attributes:
        name: the product name (S2: ``s2:product_uri``) or scene name (S1: the item id).
        href: the item's address (self link, or ``<source>#<id>``), without query string.
        item_id: the item id.
    """

    name: str
    href: str
    item_id: str

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def __str__(self) -> str:
        return self.href


@dataclass
class StacItem:
    """A STAC item (its JSON) and where it was read from (to resolve relative asset hrefs)."""

    data: dict
    source: str | None = None

    @property
    def id(self) -> str:
        return str(self.data.get("id", ""))

    @property
    def collection(self) -> str:
        return str(self.data.get("collection") or "")

    @property
    def properties(self) -> dict:
        return self.data.get("properties") or {}

    @property
    def assets(self) -> dict:
        return self.data.get("assets") or {}

    @property
    def self_href(self) -> str | None:
        """The item's self link, absolute (resolved against where it was read from), or None."""
        for link in self.data.get("links") or []:
            if link.get("rel") == "self" and link.get("href"):
                return _join(self.source, str(link["href"]))
        return None

    @property
    def datetime(self) -> datetime | None:
        value = self.properties.get("datetime") or self.properties.get("start_datetime")
        return parse_time(value) if value else None

    def asset_href(self, key: str) -> str:
        """The absolute href of an asset: relative hrefs resolved against the self link, else the source."""
        return _join(self.self_href or self.source, str(self.assets[key]["href"]))

    def ref(self, name: str) -> ItemRef:
        href = self.self_href
        if href is None:
            href = f"{self.source}#{self.id}" if self.source else f"{self.collection or 'stac'}/{self.id}"
        return ItemRef(name, redact(str(RemotePath(href))) if is_url(href) else href, self.id)


def _join(base: str | None, href: str) -> str:
    """``href`` made absolute against ``base`` (a URL or a local file); ``file://`` becomes a path."""
    href = href.removeprefix("file://")
    if is_url(href) or href.startswith("/") or base is None:
        return href
    base = base.removeprefix("file://")
    if is_url(base):
        return urljoin(base, href)
    return str((Path(base).parent / href).resolve())


def parse_time(value: str) -> datetime:
    """An RFC 3339 time as a naive UTC datetime (as product names give them)."""
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


# -- loading -------------------------------------------------------------------------------


def _read(source: str) -> bytes:
    where = location(source)
    try:
        return where.read_bytes()
    except (OSError, RemoteError) as exc:
        raise SceneError(source, f"cannot read STAC items ({exc})") from None


def load_items(sources: Iterable[str]) -> list[StacItem]:
    """The items of ItemCollection (or single Item) files or URLs, the first of each (collection, id) kept.

    Raises:
        SceneError: a source cannot be read or is not a STAC Item / ItemCollection.
    """
    out: list[StacItem] = []
    seen: set[tuple[str, str]] = set()
    for source in sources:
        raw = _read(source)
        try:
            document = json.loads(raw)
        except ValueError as exc:
            raise SceneError(source, f"not JSON ({exc})") from None
        kind = document.get("type") if isinstance(document, dict) else None
        if kind == "FeatureCollection":
            features = document.get("features") or []
        elif kind == "Feature":
            features = [document]
        else:
            raise SceneError(source, f"not a STAC ItemCollection or Item (type {kind!r})")
        for feature in features:
            item = StacItem(feature, str(source))
            key = (item.collection, item.id)
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


# -- what an item is ---------------------------------------------------------------------


def s2_product_name(item: StacItem) -> str | None:
    """The S2 L2A product name an item describes, or None when it describes none."""
    props = item.properties
    for candidate in (
        props.get("s2:product_uri"),
        props.get("s2:product_id"),
        props.get("sentinel:product_id"),
        item.id,
    ):
        if not candidate:
            continue
        name = str(candidate)
        try:
            naming.parse_s2_product_name(name)
        except ValueError:
            continue
        return name
    return None


def s1_scene_name(item: StacItem) -> str | None:
    """The S1 product name an item describes (its id, or ``s1:product_identifier``), or None."""
    for candidate in (item.id, item.properties.get("s1:product_identifier")):
        if not candidate:
            continue
        try:
            naming.s1_product_prefix(str(candidate))
        except ValueError:
            continue
        return str(candidate)
    return None


def item_kind(item: StacItem) -> str:
    """``"s2"`` (Sentinel-2 L2A), ``"s1"`` (Sentinel-1) or ``"other"``."""
    if s2_product_name(item) is not None:
        return "s2"
    if s1_scene_name(item) is not None:
        return "s1"
    return "other"


def s1_product_type(item: StacItem) -> str:
    """``"RTC gamma0"`` for radiometrically terrain-corrected items, else ``"GRD sigma0"``."""
    if "rtc" in item.collection.lower() or item.id.lower().endswith("_rtc"):
        return RTC
    if str(item.properties.get("sar:product_type", "")).upper() == "RTC":
        return RTC
    return GRD


def item_tile(item: StacItem) -> str | None:
    """The MGRS tile of an S2 item (from its product name)."""
    name = s2_product_name(item)
    return naming.parse_s2_product_name(name).tile if name else None


def asset_key(item: StacItem, band: str, mapping: dict[str, str] | None = None) -> str:
    """The asset key holding ``band`` in ``item``: the mapping's, else the first convention present.

    Raises:
        SceneError: no asset holds the band (one line naming the item and the band).
    """
    key: str | None
    if mapping and band in mapping:
        key = mapping[band]
        if key in item.assets:
            return key
        raise SceneError(item.ref(item.id), f"item {item.id}: no asset {key!r} for band {band} (stac_assets)")
    tried = []
    for convention in CONVENTIONS:
        key = convention.get(band)
        if key is None or key in tried:
            continue
        tried.append(key)
        if key in item.assets:
            return key
    raise SceneError(
        item.ref(item.id),
        f"item {item.id}: no asset for band {band} (looked for {', '.join(tried)}; map others with stac_assets)",
    )


def _sign_for(href: str) -> str | None:
    host = urlsplit(href).netloc.lower()
    return SIGN_PLANETARY_COMPUTER if host.endswith(".blob.core.windows.net") else None


def asset_location(item: StacItem, key: str):
    """The asset's file: a :class:`RemotePath` for URLs (signed when Planetary Computer's), else a local Path."""
    href = item.asset_href(key)
    if is_url(href):
        return RemotePath(href, sign=_sign_for(href))
    return location(href)


# -- radiometry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RadiometryClaim:
    """What an S2 item says about its pixels' BOA offset.

    Attributes:
        baseline: the processing baseline (``"05.00"``), or None.
        carries: whether the pixels carry the +1000 shift of baseline 04.00+ (None: unknown).
        offset: the BOA_ADD_OFFSET to record (``-1000`` when they do, 0 when not, None unknown).
        source: what the claim rests on, for messages.
        problem: a contradiction within the item itself (flag vs baseline), or None.
    """

    baseline: str | None
    carries: bool | None
    offset: int | None
    source: str
    problem: str | None = None


def _baseline(props: dict) -> tuple[str | None, float | None]:
    for key in ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version"):
        value = props.get(key)
        if value is None or value == "":
            continue
        try:
            return str(value), float(value)
        except (TypeError, ValueError):
            continue
    return None, None


def _recorded_offset(item: StacItem) -> int | None:
    """An offset the catalogue records in the blue asset's ``raster:bands`` (DN units), or None."""
    for key in ("blue", "B02", "B02_10m"):
        asset = item.assets.get(key)
        if not asset:
            continue
        bands = asset.get("raster:bands") or []
        if bands and "offset" in bands[0]:
            scale = bands[0].get("scale") or 1.0
            return round(float(bands[0]["offset"]) / float(scale))
    return None


def claimed_radiometry(item: StacItem) -> RadiometryClaim:
    """The BOA offset an S2 item claims (see the module docstring for the order of the rules)."""
    props = item.properties
    baseline, number = _baseline(props)
    applied = props.get("earthsearch:boa_offset_applied", props.get("sentinel:boa_offset_applied"))
    if applied is not None:
        applied = bool(applied)
        source = f"earthsearch:boa_offset_applied = {str(applied).lower()}" + (
            f" with baseline {baseline}" if baseline else ""
        )
        if number is None:
            return RadiometryClaim(baseline, False if applied else None, 0 if applied else None, source)
        if number >= 4.0:
            carries = not applied
            return RadiometryClaim(baseline, carries, S2_OFFSET if carries else 0, source)
        problem = f"the offset is said applied, but baseline {baseline} has none" if applied else None
        return RadiometryClaim(baseline, False, 0, source, problem)
    recorded = None if any(k.startswith("earthsearch:") for k in props) else _recorded_offset(item)
    if recorded is not None:
        source = f"raster:bands offset {recorded}" + (f" with baseline {baseline}" if baseline else "")
        problem = None
        if number is not None and number < 4.0 and recorded != 0:
            problem = f"offset {recorded} recorded, but baseline {baseline} has none"
        return RadiometryClaim(baseline, recorded != 0, recorded, source, problem)
    if number is not None:
        carries = number >= 4.0
        return RadiometryClaim(baseline, carries, S2_OFFSET if carries else 0, f"baseline {baseline}")
    return RadiometryClaim(None, None, None, "no baseline")


def offset_evidence(b02, scl, sample: int = 512) -> tuple[str | None, float | None, int]:
    """What the pixels say: ``("offset" | "none" | None, median blue DN, pixels used)``.

    The median blue (B02) DN over SCL vegetation and water pixels, read decimated to about
    ``sample`` pixels a side: dense vegetation and water reflect under 0.08 in blue, so the
    median sits well under :data:`NO_OFFSET_BELOW` without the +1000 shift and above
    :data:`OFFSET_ABOVE` with it. Too few such pixels (a cloudy or snowy scene), or a
    median in between, says nothing (None).
    """
    import rasterio

    with rasterio.open(scl) as ds:
        step = max(1, max(ds.width, ds.height) // sample)
        shape = (max(1, ds.height // step), max(1, ds.width // step))
        classes = ds.read(1, out_shape=shape)
    with rasterio.open(b02) as ds:
        blue = ds.read(1, out_shape=shape)
    mask = np.isin(classes, VEGETATION_WATER_SCL) & (blue > 0)
    count = int(mask.sum())
    if count < MIN_EVIDENCE_PIXELS:
        return None, None, count
    median = float(np.median(blue[mask]))
    if median < NO_OFFSET_BELOW:
        return "none", median, count
    if median > OFFSET_ABOVE:
        return "offset", median, count
    return None, median, count


def _describe(carries: bool) -> str:
    return "carry the +1000 offset" if carries else "carry no offset"


def resolve_offset(
    item: StacItem, claim: RadiometryClaim, evidence: tuple[str | None, float | None, int], mode: str
) -> tuple[int | None, dict | None]:
    """The offset to record and a flag record (or None), from the claim and the pixel evidence.

    Raises:
        SceneError: claim and pixels (or the item itself) disagree and ``mode`` is ``"refuse"``.
    """
    verdict, median, count = evidence
    says = None if verdict is None else verdict == "offset"
    pixels = (
        f"the pixels {_describe(says)} (median blue DN {median:.0f} over {count} vegetation/water pixels)"
        if says is not None
        else "the pixels do not tell"
    )
    if claim.carries is None or (says is not None and says == claim.carries and claim.problem is None):
        return claim.offset, None
    if claim.problem is not None and (says is None or says == claim.carries):
        note = f"item {item.id}: {claim.source}: {claim.problem}; {pixels}"
        if says is None and mode == "refuse":
            raise SceneError(item.ref(item.id), note + "; refused (stac_offset_disagreement = 'flag' builds it)")
        return claim.offset, {"item": item.id, "kind": "s2_product", "reason": note, "offset": claim.offset}
    if says is None:
        return claim.offset, None
    detail = f"item {item.id}: {claim.source} says the pixels {_describe(claim.carries)}, but {pixels}"
    if mode == "refuse":
        raise SceneError(
            item.ref(item.id),
            detail + "; refused (stac_offset_disagreement = 'flag' builds it with the offset its pixels show)",
        )
    offset = S2_OFFSET if says else 0
    return offset, {
        "item": item.id,
        "kind": "s2_product",
        "reason": detail + f"; built with offset {offset}",
        "offset": offset,
    }


# -- opening -----------------------------------------------------------------------------------


def open_s2_item(
    item: StacItem,
    assets: dict[str, str] | None = None,
    default_offset: int | None = None,
    mode: str = "refuse",
) -> tuple[S2Product, dict | None]:
    """The S2 product of an item (headers checked, radiometry resolved) and its flag record, if any.

    Raises:
        SceneError: not an S2 L2A item, a band asset missing, rasters that disagree, or a
            refused radiometric disagreement.
    """
    name = s2_product_name(item)
    if name is None:
        raise SceneError(item.ref(item.id), f"item {item.id}: not a Sentinel-2 L2A product")
    ref = item.ref(name)
    parsed = naming.parse_s2_product_name(name)
    band_paths = {band: asset_location(item, asset_key(item, band, assets)) for band in PRODUCT_BANDS}
    crs, grid = check_band_rasters(ref, parsed, band_paths)
    claim = claimed_radiometry(item)
    flag = None
    if claim.carries is None:
        offset = default_offset
    else:
        try:
            evidence = offset_evidence(band_paths["B02"], band_paths["SCL"])
        except Exception as exc:
            raise SceneError(band_paths["B02"], f"cannot read pixels to check the BOA offset ({exc})") from None
        offset, flag = resolve_offset(item, claim, evidence, mode)
    return S2Product(ref, parsed, "STAC", band_paths, crs, grid, offset), flag


def open_s1_item(
    item: StacItem, assets: dict[str, str] | None = None, nodata: str | float = "auto", values: str = "db"
) -> S1Scene:
    """The S1 scene of an item (VV and VH assets checked like a folder's rasters)."""
    name = s1_scene_name(item)
    if name is None:
        raise SceneError(item.ref(item.id), f"item {item.id}: not a Sentinel-1 product")
    ref = item.ref(name)
    vv = asset_location(item, asset_key(item, "VV", assets))
    vh = asset_location(item, asset_key(item, "VH", assets))
    return s1_scene_from_files(
        ref,
        naming.s1_product_prefix(name),
        naming.s1_acquisition_time(name),
        vv,
        vh,
        nodata,
        values,
        s1_product_type(item),
    )


def open_items(
    items: list[StacItem],
    skipped: list[dict],
    flagged: list[dict],
    assets: dict[str, str] | None = None,
    default_offset: int | None = None,
    mode: str = "refuse",
    s1_nodata: str | float = "auto",
    s1_values: str = "db",
    threads: int = 16,
) -> tuple[list[S2Product], list[S1Scene]]:
    """Products and scenes of ``items`` (opened on ``threads`` threads); what cannot be used goes to ``skipped``."""
    if not items:
        return [], []

    def one(item: StacItem):
        kind = item_kind(item)
        try:
            if kind == "s2":
                product, flag = open_s2_item(item, assets, default_offset, mode)
                return kind, item, product, flag
            if kind == "s1":
                return kind, item, open_s1_item(item, assets, s1_nodata, s1_values), None
        except SceneError as exc:
            return kind, item, exc, None
        return kind, item, None, None

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(items)))) as pool:
        results = list(pool.map(one, items))
    products, scenes = [], []
    for kind, item, opened, flag in results:
        label = {"s2": "s2_product", "s1": "s1_scene"}.get(kind, "stac_item")
        if opened is None:
            skipped.append(
                {
                    "item": item.id,
                    "kind": label,
                    "path": str(item.ref(item.id)),
                    "reason": "neither a Sentinel-2 L2A nor a Sentinel-1 item",
                }
            )
        elif isinstance(opened, SceneError):
            skipped.append({"item": item.id, "kind": label, "path": opened.path, "reason": opened.reason})
        elif kind == "s2":
            products.append(opened)
            if flag is not None:
                flagged.append({**flag, "path": str(opened.path)})
        else:
            scenes.append(opened)
    return products, scenes
