"""Searching a STAC API for what a reBEN-style build can use: :func:`search`, :func:`select_candidates`.

:func:`search` runs one STAC API search (pystac-client, retrying 429 / 5xx) and
:func:`select_candidates` keeps exactly what reBEN's rules can use: Sentinel-2 L2A items in the
interval (optionally under a cloud cover and on given MGRS tiles) and the Sentinel-1 items with
VV and VH acquired within the pairing window of one of them whose footprint meets it. The result
is written as a STAC ItemCollection (:func:`write_item_collection`), as ``stac-client search`` does.

Owns: the search, the candidate rules, intervals and boxes of the command line, the ItemCollection file.
Does not own: what an item is and how it is opened (stac), the build (pipeline).
May import: reben_tools.format, reben_tools.builder.stac / scenes / locations, shapely, pystac-client.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path

from reben_tools.builder.locations import redact
from reben_tools.builder.scenes import SceneError
from reben_tools.builder.stac import StacItem, asset_key, item_kind, item_tile, parse_time

# -- search -------------------------------------------------------------------------------------


def parse_interval(text: str) -> tuple[datetime | None, datetime | None]:
    """``A/B`` (either side may be ``..`` or empty; a single time is an instant) as naive UTC datetimes."""
    parts = str(text).split("/")
    if len(parts) == 1:
        t = _day_or_time(parts[0], end=False)
        return t, _day_or_time(parts[0], end=True)
    if len(parts) != 2:
        raise ValueError(f"datetime must be A/B, got {text!r}")
    start = None if parts[0] in ("", "..") else _day_or_time(parts[0], end=False)
    end = None if parts[1] in ("", "..") else _day_or_time(parts[1], end=True)
    return start, end


def _day_or_time(text: str, end: bool) -> datetime:
    text = text.strip()
    if len(text) == 10:  # a date: the whole day
        day = datetime.fromisoformat(text)
        return day + timedelta(days=1) - timedelta(microseconds=1) if end else day
    return parse_time(text)


def _rfc3339(value: datetime | None) -> str:
    return ".." if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _footprint(item: StacItem):
    import shapely
    from shapely.geometry import shape

    geometry = item.data.get("geometry")
    if geometry:
        return shape(geometry)
    bbox = item.data.get("bbox")
    return shapely.box(*bbox[:2], *bbox[-2:]) if bbox else None


def _has_assets(item: StacItem, bands: Iterable[str], assets: dict[str, str] | None) -> bool:
    try:
        for band in bands:
            asset_key(item, band, assets)
    except SceneError:
        return False
    return True


def select_candidates(
    items: Iterable[StacItem],
    start: datetime | None,
    end: datetime | None,
    max_cloud: float | None = None,
    tiles: Iterable[str] = (),
    max_gap_days: float = 6.0,
    assets: dict[str, str] | None = None,
) -> list[StacItem]:
    """The items reBEN's rules can use: S2 L2A in [start, end] (cloud and tile filters), then the
    S1 items with VV and VH within ``max_gap_days`` of one of them whose footprints meet.

    An S2 item without ``eo:cloud_cover`` is dropped when ``max_cloud`` is given (it cannot be
    shown to pass). Returned sorted: S2 items, then S1 items, each by time then id.
    """
    wanted_tiles = {t.upper().removeprefix("T") for t in tiles}
    s2, s1 = [], []
    for item in items:
        kind = item_kind(item)
        when = item.datetime
        if when is None:
            continue
        if kind == "s2":
            if (start is not None and when < start) or (end is not None and when > end):
                continue
            if wanted_tiles and item_tile(item) not in wanted_tiles:
                continue
            if max_cloud is not None:
                cover = item.properties.get("eo:cloud_cover")
                if cover is None or float(cover) > max_cloud:
                    continue
            s2.append((when, item))
        elif kind == "s1" and _has_assets(item, ("VV", "VH"), assets):
            s1.append((when, item))
    gap = timedelta(days=max_gap_days)
    footprints = [(when, _footprint(item)) for when, item in s2]
    paired = []
    for when, item in s1:
        shape = _footprint(item)
        if any(
            abs(when - t2) <= gap and shape is not None and fp is not None and shape.intersects(fp)
            for t2, fp in footprints
        ):
            paired.append((when, item))
    order = sorted(s2, key=lambda t: (t[0], t[1].id)) + sorted(paired, key=lambda t: (t[0], t[1].id))
    return [item for _, item in order]


def search(
    url: str,
    collections: list[str],
    bbox: list[float] | None = None,
    datetime_range: str | None = None,
    max_cloud: float | None = None,
    tiles: Iterable[str] = (),
    max_gap_days: float = 6.0,
    assets: dict[str, str] | None = None,
    retries: int = 5,
    timeout_s: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> list[StacItem]:
    """Search a STAC API and keep the candidates reBEN's rules need (:func:`select_candidates`).

    One search over ``collections`` and ``bbox`` in the interval widened by the pairing
    window (S1 scenes up to ``max_gap_days`` outside it may pair with S2 items inside it).
    Items are kept as the catalogue gives them: asset URLs unsigned (Planetary Computer's
    are signed only when read), so the result holds no token.

    Raises:
        SceneError: the API cannot be opened or searched (one line, URL redacted).
    """
    try:
        from pystac_client import Client
        from pystac_client.stac_api_io import StacApiIO
        from urllib3.util.retry import Retry
    except ImportError:
        raise SceneError(
            url, "searching a STAC API needs pystac-client (a dependency of reben-tools): pip install pystac-client"
        ) from None
    start, end = parse_interval(datetime_range) if datetime_range else (None, None)
    gap = timedelta(days=max_gap_days)
    wide = (None if start is None else start - gap, None if end is None else end + gap)
    retry = Retry(
        total=retries,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "POST"}),
        respect_retry_after_header=True,
    )
    try:
        client = Client.open(url, stac_io=StacApiIO(max_retries=retry, timeout=timeout_s))
        query: dict = {"collections": list(collections) or None, "bbox": bbox, "limit": 100}
        if start is not None or end is not None:
            query["datetime"] = f"{_rfc3339(wide[0])}/{_rfc3339(wide[1])}"
        found = [StacItem(feature, None) for feature in client.search(**query).items_as_dicts()]
    except Exception as exc:
        raise SceneError(url, f"STAC search failed ({redact(f'{type(exc).__name__}: {exc}')})") from None
    if progress is not None:
        progress(f"{len(found)} item(s) found in {', '.join(collections) or 'all collections'}")
    return select_candidates(found, start, end, max_cloud, tiles, max_gap_days, assets)


def item_collection(items: Iterable[StacItem]) -> dict:
    """A STAC ItemCollection (GeoJSON FeatureCollection) of ``items``, as ``stac-client search`` writes."""
    return {"type": "FeatureCollection", "features": [item.data for item in items]}


def write_item_collection(items: Iterable[StacItem], path: str | Path) -> Path:
    """Write ``items`` as an ItemCollection JSON file (atomically); returns the path."""
    from reben_tools.format.atomic import write_json_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, item_collection(items))
    return path


def bbox_of(text: str) -> list[float]:
    """``W,S,E,N`` as four floats (west < east, south < north)."""
    values = [float(v) for v in str(text).split(",")]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"bbox must be W,S,E,N (four numbers), got {text!r}")
    _, south, _, north = values
    if not (south < north and south >= -90 and north <= 90):
        raise ValueError(f"bbox south must be below north, got {text!r}")
    return values
