"""Settings of a scene-to-archive build: :class:`PipelineConfig` and :class:`BuildError`.

Owns: the config model (fields, defaults, validation, TOML / JSON loading with paths made
relative to the file), its JSON Schema, the error type every build step raises, the tool name.
Does not own: what the settings do (discovery, planning, execution, finalisation modules).
May import: reben_tools.format, reben_tools.builder.countries / quality (defaults), pydantic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reben_tools.builder.countries import BIGEARTHNET_COUNTRIES
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
        default_factory=list, description="S2 L2A products (.SAFE or GeoTIFF folders) or folders of products"
    )
    s1: list[str] = Field(
        default_factory=list, description="S1 scene folders (*_VV.tif, *_VH.tif) or folders of scenes"
    )
    clc: str | None = Field(None, description="CORINE Land Cover 2018: vector file (any OGR format) or raster")
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
            return str((base / p).resolve()) if not Path(p).is_absolute() else p

        for key in ("s2", "s1"):
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


def config_json_schema() -> dict:
    """The JSON Schema of :class:`PipelineConfig` (what ``schemas/pipeline_config.schema.json`` holds)."""
    schema = PipelineConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://reben-tools/schemas/pipeline_config.schema.json"
    return schema
