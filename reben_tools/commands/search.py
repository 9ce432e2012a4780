"""``reben search``: a STAC API search keeping exactly the items a reBEN-style build can use."""

from __future__ import annotations

from pathlib import Path

import typer

from reben_tools.commands.outputs import guarded_output


def search(
    stac: str = typer.Option(..., "--stac", help="STAC API, e.g. https://earth-search.aws.element84.com/v1"),
    collections: str = typer.Option(
        ..., "--collections", help="collections, C[,C]: S2 L2A and S1 (e.g. sentinel-2-l2a,sentinel-1-rtc)"
    ),
    bbox: str = typer.Option(..., "--bbox", help="search box W,S,E,N (degrees)"),
    datetime_range: str = typer.Option(..., "--datetime", help="S2 acquisition interval A/B (RFC 3339 or dates)"),
    out: Path = typer.Option(
        ..., "--out", callback=guarded_output, help="ItemCollection JSON to write (what --stac-items reads)"
    ),
    max_cloud: float | None = typer.Option(None, "--max-cloud", help="largest eo:cloud_cover, %"),
    tiles: str | None = typer.Option(None, "--tiles", help="MGRS tiles kept, 32ULV[,31UGR]"),
    max_gap_days: float = typer.Option(6.0, "--max-gap-days", help="S1 pairing window around each S2 item, days"),
    config: Path | None = typer.Option(
        None, "--config", help="pipeline config whose stac_assets maps the bands of other catalogues"
    ),
) -> None:
    """Search a STAC API for the scenes a build needs and write them as a STAC ItemCollection.

    Keeps Sentinel-2 L2A items in --datetime (under --max-cloud, on --tiles), and the
    Sentinel-1 items with VV and VH acquired within --max-gap-days of one of them whose
    footprint meets it (the search looks that far past both ends of the interval).
    Asset URLs are kept unsigned: a build signs Planetary Computer's when it reads them.
    """
    from reben_tools.builder.pipeline.config import BuildError, PipelineConfig
    from reben_tools.builder.scenes import SceneError
    from reben_tools.builder.stac import item_kind, item_tile
    from reben_tools.builder.stac_search import bbox_of, write_item_collection
    from reben_tools.builder.stac_search import search as stac_search

    try:
        assets = PipelineConfig.from_file(config).stac_assets if config else {}
        items = stac_search(
            stac,
            [c.strip() for c in collections.split(",") if c.strip()],
            bbox_of(bbox),
            datetime_range,
            max_cloud,
            [t.strip() for t in (tiles or "").split(",") if t.strip()],
            max_gap_days,
            assets or None,
            progress=typer.echo,
        )
    except (SceneError, BuildError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1 if isinstance(exc, SceneError) else 2) from None
    write_item_collection(items, out)
    s2 = [i for i in items if item_kind(i) == "s2"]
    s1 = [i for i in items if item_kind(i) == "s1"]
    tiles_found = sorted({tile for tile in map(item_tile, s2) if tile is not None})
    typer.echo(
        f"kept {len(s2)} Sentinel-2 L2A item(s) on {len(tiles_found)} tile(s) ({', '.join(tiles_found) or '-'}) "
        f"and {len(s1)} Sentinel-1 item(s) within {max_gap_days:g} days of them"
    )
    typer.echo(f"items: {out}")
    if not s2:
        raise typer.Exit(1)
