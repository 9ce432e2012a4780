"""Settings of a scene-to-archive build: :class:`PipelineConfig` and :class:`BuildError`.

Owns: the config model (fields, defaults, validation, TOML / JSON loading with paths made
relative to the file, URLs kept as they are), its JSON Schema, the error type every build
step raises, the tool name, the settings no manifest records (:data:`INPUT_LOCATION_FIELDS`).
Does not own: what the settings do (discovery, planning, execution, finalisation modules).
May import: reben_tools.format, reben_tools.builder.countries / quality (defaults) / locations, pydantic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reben_tools.builder.countries import BIGEARTHNET_COUNTRIES
from reben_tools.builder.locations import RemoteSettings, _resolve_against
from reben_tools.builder.quality import DEFAULT_CLOUD_THRESHOLD, DEFAULT_SNOW_THRESHOLD

TOOL_NAME = "reben build"


class BuildError(RuntimeError):
    """The build cannot start or produced nothing; the message says why."""


class BuildInterrupted(BuildError):
    """Ctrl-C stopped the build; the message says how many shards are complete and how to resume."""


class PipelineConfig(BaseModel):
    """Settings of a scene-to-archive build (``pipelines/*.toml``; schema in ``schemas/pipeline_config.schema.json``).

    Relative paths in a config file are resolved against the file's folder.
    """

    model_config = ConfigDict(extra="forbid")

    s2: list[str] = Field(
        default_factory=list,
        description="S2 L2A products (.SAFE or GeoTIFF folders) or folders of products; local or s3://bucket/prefix/",
    )
    s1: list[str] = Field(
        default_factory=list,
        description="S1 scene folders (*_VV.tif, *_VH.tif) or folders of scenes; local or s3://bucket/prefix/",
    )
    clc: str | None = Field(
        None, description="CORINE Land Cover 2018: vector file (any OGR format) or raster; local, s3:// or https://"
    )
    stac_items: list[str] = Field(
        default_factory=list,
        description="STAC ItemCollections (or Items): files or URLs, e.g. written by `reben search`; "
        "S2 L2A and S1 items, combined with s2 / s1",
    )
    stac: str | None = Field(
        None, description="STAC API to search in the build itself (with the stac_* search options)"
    )
    stac_collections: list[str] = Field(default_factory=list, description="collections searched in the STAC API")
    stac_bbox: list[float] | None = Field(
        None, min_length=4, max_length=4, description="search box, west, south, east, north (degrees)"
    )
    stac_datetime: str | None = Field(None, description="search interval of the S2 acquisitions, A/B (RFC 3339)")
    stac_max_cloud: float | None = Field(None, ge=0, le=100, description="largest eo:cloud_cover of an S2 item, %")
    stac_tiles: list[str] = Field(default_factory=list, description="MGRS tiles kept (e.g. 32ULV); empty: all")
    stac_assets: dict[str, str] = Field(
        default_factory=dict,
        description="band -> asset key, for catalogues other than Earth Search, Planetary Computer and CDSE "
        "(keys B01..B12, B8A, SCL, VV, VH)",
    )
    stac_offset_disagreement: Literal["refuse", "flag"] = Field(
        "refuse",
        description="an S2 item whose recorded BOA offset disagrees with its baseline or its pixels: 'refuse' "
        "(skipped, in report.json) or 'flag' (built with the offset its pixels show, listed in report.json)",
    )
    stac_s1_values: Literal["db", "linear"] | None = Field(
        None, description="values of S1 STAC items (RTC: 'linear' power); unset: s1_values"
    )
    remote_retries: int = Field(5, ge=0, le=20, description="retries of a remote read on 429, 5xx and time-outs")
    remote_timeout_s: float = Field(60.0, gt=0, description="time-out of one remote request, seconds")
    remote_cache_mb: int = Field(
        256, ge=0, description="GDAL's in-memory cache of fetched remote headers and tiles per process, MB"
    )
    clc_code_column: str = Field("Code_18", description="code column of vector CORINE, matched case-insensitively")
    clc_layer: str | None = Field(None, description="vector layer (default: the first)")
    clc_raster_values: Literal["auto", "codes", "grid_codes"] = Field(
        "auto", description="raster CORINE values: raw CLC codes, the official raster's 1..44 grid codes, or detect"
    )
    countries_file: str | None = Field(
        None, description="country polygons (default: shipped Natural Earth admin-0 1:110m)"
    )
    countries: list[str] = Field(
        default_factory=lambda: list(BIGEARTHNET_COUNTRIES),
        description="ADM0_A3 codes of the countries patches may be assigned to",
    )
    country_key_column: str = "ADM0_A3"
    country_name_column: str = "NAME"
    metric_crs: str = Field("EPSG:3035", description="CRS in which country distances are measured")
    rows_per_block: int = Field(
        8, ge=1, le=91, description="patch rows per task (8 rows of a full tile: ~0.6 GB of bands)"
    )
    s1_max_gap_days: float = Field(6.0, gt=0, description="largest |S1 - S2| acquisition gap in days (reBEN: 0.2..5.7)")
    tile_side: Literal["extent"] | float = Field(
        "extent",
        description="tile side s of the split, metres; 'extent' = the product rasters' extent (109,800 m for a full tile)",
    )
    snow_threshold: float = Field(
        DEFAULT_SNOW_THRESHOLD, ge=0, le=1, description="flag snow when the SCL snow fraction exceeds this"
    )
    cloud_threshold: float = Field(
        DEFAULT_CLOUD_THRESHOLD, ge=0, le=1, description="flag cloud/shadow when that SCL fraction exceeds this"
    )
    snow_ids_file: str | None = Field(None, description="text file of patch ids to flag as snow, one per line")
    cloud_ids_file: str | None = Field(None, description="text file of patch ids to flag as cloud/shadow, one per line")
    s1_nodata: Literal["auto", "nan"] | float = Field(
        "auto",
        description="S1 no-data besides NaN: 'auto' = the rasters' nodata tag, else exact 0 "
        "(untagged 0 from SNAP / Earth Engine exports); 'nan' = only NaN; or a number",
    )
    s1_values: Literal["db", "linear"] = Field(
        "db",
        description="S1 values: 'db' (a scene that looks linear is refused) or 'linear' (sigma0, "
        "converted to dB with 10 log10; 0 and below become no-data)",
    )
    boa_add_offset: int | None = Field(
        None,
        description="BOA_ADD_OFFSET recorded for products without MTD_MSIL2A.xml (GeoTIFF folders); "
        "unset: unknown (null). A product's metadata file always wins",
    )
    out: str | None = Field(None, description="archive folder to write")
    workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = Field("3GiB", description="LocalCluster memory limit per worker")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler, e.g. tcp://127.0.0.1:8786")
    gdal_cache_mb: int = Field(128, ge=8, description="GDAL block cache per worker process, MB")

    def remote_settings(self) -> RemoteSettings:
        """How remote reads retry and cache (``builder.locations``)."""
        return RemoteSettings(
            retries=self.remote_retries, timeout_s=self.remote_timeout_s, cache_mb=self.remote_cache_mb
        )

    @classmethod
    def from_file(cls, path: str | Path) -> PipelineConfig:
        """Load a TOML or JSON config; relative paths become relative to the file's folder."""
        import tomllib

        path = Path(path)
        try:
            text = path.read_text("utf-8")
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:
            raise BuildError(f"{path}: cannot read pipeline config ({exc})") from None
        data.pop("$schema", None)
        base = path.resolve().parent

        def resolve(p: str) -> str:
            return _resolve_against(base, p)

        for key in ("s2", "s1", "stac_items"):
            if key in data and isinstance(data[key], list):
                data[key] = [resolve(p) if isinstance(p, str) else p for p in data[key]]
        for key in ("clc", "countries_file", "snow_ids_file", "cloud_ids_file", "out"):
            if isinstance(data.get(key), str):
                data[key] = resolve(data[key])
        from pydantic import ValidationError

        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise BuildError(f"{path}: invalid pipeline config:\n{exc}") from None


INPUT_LOCATION_FIELDS = (
    "s2",
    "s1",
    "clc",
    "countries_file",
    "snow_ids_file",
    "cloud_ids_file",
    "out",
    "stac_items",
    "stac",
    "stac_collections",
    "stac_bbox",
    "stac_datetime",
    "stac_max_cloud",
    "stac_tiles",
    "stac_assets",
    "remote_retries",
    "remote_timeout_s",
    "remote_cache_mb",
)
"""Settings that say where the inputs are or how they are fetched, not what the archive holds:
never recorded in the manifest (the same products from a folder, a bucket or a catalogue give
the same archive)."""


def config_json_schema() -> dict:
    """The JSON Schema of :class:`PipelineConfig` (what ``schemas/pipeline_config.schema.json`` holds)."""
    schema = PipelineConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://reben-tools/schemas/pipeline_config.schema.json"
    return schema
