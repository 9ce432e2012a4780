"""Pipeline configs: the JSON Schema in schemas/ matches the model, and pipelines/*.toml validate."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from reben_tools.builder.pipeline.config import BuildError, PipelineConfig, config_json_schema

ROOT = Path(__file__).resolve().parents[1]


def test_schema_file_is_the_exported_model_schema():
    on_disk = json.loads((ROOT / "schemas" / "pipeline_config.schema.json").read_text())
    assert on_disk == config_json_schema()


@pytest.mark.parametrize("name", ["reben.toml", "demo.toml"])
def test_shipped_configs_validate(name):
    path = ROOT / "pipelines" / name
    jsonschema.validate(tomllib.loads(path.read_text()), config_json_schema())
    config = PipelineConfig.from_file(path)
    if name == "demo.toml":
        assert Path(config.s2[0]) == (ROOT / "reben-demo" / "inputs" / "S2").resolve()


def test_invalid_config_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('rows_per_block = 0\nclc_layer = "x"\nunknown_key = 1\n')
    with pytest.raises(BuildError, match=r"bad.toml: invalid pipeline config") as info:
        PipelineConfig.from_file(path)
    assert "rows_per_block" in str(info.value) and "unknown_key" in str(info.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"rows_per_block": 0}, config_json_schema())
