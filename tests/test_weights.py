"""One reader for every weights file (``runtime.weights.read_state_dict``): one error type, one line per way a
file can fail, through every caller (checkpoints, --init of both objectives, encoder specs, ``reben evaluate``)."""

from __future__ import annotations

import builtins
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.learn.models.classifier import build_model
from reben_tools.learn.models.croma import CONFIGS, CROMA
from reben_tools.learn.models.dofa import init_encoders, load_dofa
from reben_tools.learn.models.encoders import EncoderError, load_encoder
from reben_tools.learn.runtime import weights
from reben_tools.learn.runtime.checkpoints import load_checkpoint
from reben_tools.learn.runtime.weights import CheckpointError, read_state_dict
from reben_tools.learn.training.pretrain import read_init

REPO = Path(__file__).resolve().parents[1]
KIND = "reben-tools checkpoint"


def _parquet(path: Path) -> Path:
    pq.write_table(pa.table({"patch_id": ["a", "b"]}), path)
    return path


def _cut(path: Path) -> Path:
    torch.save({"w": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_every_kind_of_bad_file_is_one_line_naming_what_it_is(tmp_path):
    cases = {
        "missing.pt": (lambda p: None, "{p}: no such file"),
        "a.parquet": (_parquet, "{p}: not a reben-tools checkpoint: it is a Parquet file"),
        "empty.pt": (lambda p: p.write_bytes(b""), "{p}: not a reben-tools checkpoint: it is an empty file"),
        "config.json": (lambda p: p.write_text('{"a": 1}'), "{p}: not a reben-tools checkpoint: it is a JSON file"),
        "a.npy": (
            lambda p: np.save(p, np.zeros(2)),
            "{p}: not a reben-tools checkpoint: it is a NumPy array file (.npy)",
        ),
        "a.png": (
            lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16)),
            "{p}: not a reben-tools checkpoint: it is a PNG image",
        ),
        "list.pt": (
            lambda p: torch.save([torch.ones(1)], p),
            "{p}: not a reben-tools checkpoint: it holds a list, not a dict",
        ),
        "cut.pt": (
            _cut,
            "{p}: not a readable checkpoint: the torch file is damaged or cut short (PytorchStreamReader failed "
            "reading zip archive: failed finding central directory)",
        ),
        "numpy.pt": (
            lambda p: torch.save({"w": np.zeros(3)}, p),
            "{p}: not a readable checkpoint: it holds Python objects beyond tensors and plain data "
            "(GLOBAL numpy._core.multiarray._reconstruct), which are not unpickled here; save the model's "
            "state_dict() instead",
        ),
        "module.pt": (
            lambda p: torch.save(torch.nn.Linear(2, 2), p),
            "{p}: not a readable checkpoint: it holds Python objects beyond tensors and plain data "
            "(GLOBAL torch.nn.modules.linear.Linear), which are not unpickled here; save the model's "
            "state_dict() instead",
        ),
    }
    for name, (write, expected) in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(CheckpointError) as err:
            read_state_dict(path, KIND)
        assert str(err.value) == expected.format(p=path), name
        assert "weights_only" not in str(err.value)
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"dir\.pt: is a directory, not a reben-tools checkpoint$"):
        read_state_dict(tmp_path / "dir.pt", KIND)
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(read_state_dict(tmp_path / "ok.pt")["w"], torch.ones(2))


def test_an_unreadable_file_says_why(tmp_path, monkeypatch):
    path = tmp_path / "locked.pt"
    torch.save({"w": torch.ones(2)}, path)
    real_open = builtins.open

    def refuse(file, *args, **kwargs):  # a file without read permission (the tests may run as root)
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refuse)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    assert str(err.value) == f"{path}: cannot be read (Permission denied)"


def test_a_reben_checkpoint_needs_its_format_marker(tmp_path):
    torch.save({"state_dict": {}, "epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "other.pt")
    assert str(err.value) == (
        f"{tmp_path / 'other.pt'}: not a reben-tools checkpoint (a dict without its format marker; keys: "
        "state_dict, epoch)"
    )


def test_evaluate_names_a_parquet_file_given_as_checkpoint(tmp_path):
    metadata = _parquet(tmp_path / "metadata.parquet")
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--archive",
            str(tmp_path),
            "--checkpoint",
            str(metadata),
            "--out",
            str(tmp_path / "eval"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1
    assert result.output == f"error: {metadata}: not a reben-tools checkpoint: it is a Parquet file\n"
    assert not (tmp_path / "eval").exists()


def test_a_corrupt_dofa_file_is_one_line_in_both_dofa_readers(tmp_path):
    path = _cut(tmp_path / "DOFA_micro.pth")
    expected = (
        f"{path}: not a readable checkpoint: the torch file is damaged or cut short (PytorchStreamReader failed "
        "reading zip archive: failed finding central directory)"
    )
    with pytest.raises(CheckpointError) as err:
        init_encoders(build_model("dofa_micro", "RGB"), f"dofa_micro:{path}")
    assert str(err.value) == expected
    with pytest.raises(CheckpointError) as err:
        load_dofa("dofa_micro", path)
    assert str(err.value) == expected
    with pytest.raises(EncoderError) as err:
        load_encoder(f"dofa_micro:{path}")
    assert str(err.value) == expected
    _parquet(tmp_path / "x.parquet")
    with pytest.raises(CheckpointError) as err:
        load_dofa("dofa_micro", tmp_path / "x.parquet")
    assert str(err.value) == f"{tmp_path / 'x.parquet'}: not a DOFA checkpoint: it is a Parquet file"


def test_init_of_a_training_run_and_of_pretraining_read_through_the_one_reader(tmp_path):
    cut = _cut(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError) as err:
        read_init(str(cut), CROMA(CONFIGS["croma_micro"], pretraining=True))
    assert str(err.value).startswith(f"{cut}: not a readable checkpoint: the torch file is damaged or cut short")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError) as err:
        read_init(str(tmp_path / "list.pt"), CROMA(CONFIGS["croma_micro"], pretraining=True))
    assert str(err.value) == f"{tmp_path / 'list.pt'}: not a CROMA checkpoint: it holds a list, not a dict"
    archive = build_learnable_archive(tmp_path / "archive", counts={"train": 4, "validation": 2}, shards=1)
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--archive",
            str(archive["root"]),
            "--out",
            str(tmp_path / "run"),
            "--bands",
            "RGB",
            "--model",
            "dofa_micro",
            "--init",
            f"dofa_micro:{cut}",
            "--device",
            "cpu",
            "--workers",
            "0",
            "-q",
        ],
    )
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"error: --init: {cut}: not a readable checkpoint: the torch file is damaged")


def test_no_module_reads_a_weights_file_except_through_read_state_dict():
    readers = sorted(
        str(p.relative_to(REPO))
        for p in (REPO / "reben_tools").rglob("*.py")
        if re.search(r"\btorch\.load\(", p.read_text(encoding="utf-8"))
    )
    assert readers == ["reben_tools/learn/runtime/weights.py"]
    assert weights.read_state_dict is read_state_dict
