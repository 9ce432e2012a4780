"""``reben train --mix``: the data path for reference maps, the loop's mixing, and bad archives (CPU, real LMDB)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from helpers import train_config
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format.codec import decode_value
from reben_tools.format.labels import labels_from_reference_map, multi_hot
from reben_tools.learn.data.batches import collate
from reben_tools.learn.data.dataset import ReBENDataset
from reben_tools.learn.data.loaders import open_dataset, split_indices, training_dataset
from reben_tools.learn.data.mixing import cutmix
from reben_tools.learn.runtime.checkpoints import load_checkpoint
from reben_tools.learn.runtime.config import TrainingError
from reben_tools.learn.training.loop import train

COUNTS = {"train": 32, "validation": 8, "test": 8}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    return build_learnable_archive(tmp_path_factory.mktemp("mixarchive") / "ARCHIVE", counts=COUNTS, shards=2)


config = partial(train_config, bands="S1_10m_20m")


def test_reference_maps_travel_only_when_a_mix_needs_them(archive):
    dataset = open_dataset(archive["root"], ("VV", "VH", "B02"))
    try:
        train_idx = split_indices(dataset, "train")
        assert training_dataset(dataset, train_idx, needs_reference_maps=False) is dataset
        plain = collate(dataset.__getitems__([0, 5]))
        assert "reference_map" not in plain and "mask" not in plain
        with_maps = training_dataset(dataset, train_idx, needs_reference_maps=True)
        assert with_maps is not dataset and not dataset.return_reference_map
        batch = collate(with_maps.__getitems__(list(train_idx[:4])))
        maps = batch["reference_map"]
        assert maps.dtype == torch.uint16 and maps.shape == (4, 120, 120)
        assert set(plain) == set(batch) - {"reference_map"}
        # the values are the stored maps, and their labels are the stored labels
        for i, pid in enumerate(batch["patch_id"]):
            key = pid + "_reference_map"
            stored = decode_value(key, dataset.archive.get(key))["Data"]
            np.testing.assert_array_equal(maps[i].numpy(), stored)
            np.testing.assert_array_equal(batch["label"][i].numpy(), multi_hot(labels_from_reference_map(stored)))
    finally:
        dataset.archive.close()


def test_unmixed_lp_run_equals_a_run_without_mixing(archive, tmp_path):
    # with --mix-prob 0 and no flips, every sample keeps its image and label: same weights as --mix none
    plain = train(config(archive["root"], tmp_path / "none", flips=False))
    lp = train(config(archive["root"], tmp_path / "lp", flips=False, mix="cutmix-lp", mix_prob=0.0))
    assert plain["steps"] == lp["steps"] == 4
    a = load_checkpoint(tmp_path / "none" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "lp" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lp_run_resumed_with_workers_equals_a_straight_run(archive, tmp_path):
    """The boxes come from the checkpointed augmentation generator; workers carry the maps too."""
    straight = train(config(archive["root"], tmp_path / "straight", mix="cutmix-lp", mix_prob=1.0))
    assert (
        train(config(archive["root"], tmp_path / "pieces", mix="cutmix-lp", mix_prob=1.0, max_steps=1, workers=1))[
            "status"
        ]
        == "stopped_at_max_steps"
    )
    final = train(config(archive["root"], tmp_path / "pieces", workers=1), resume=True)
    assert final["steps"] == straight["steps"] == 4
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "pieces" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["train_config"]["mix"] == "cutmix-lp" and tuple(b["train_config"]["mix_area"]) == (0.1, 0.5)
    # mixing changed the trajectory: the area-mixed run and the lp run differ from each other
    other = train(config(archive["root"], tmp_path / "area", mix="cutmix", mix_prob=1.0))
    assert other["epochs"][-1]["train_loss"] != straight["epochs"][-1]["train_loss"]


def test_cli_mix_cutmix_lp_runs_and_bad_archives_get_one_line(archive, tmp_path):
    runner = CliRunner()
    base = [
        "train",
        "--bands",
        "S1_10m_20m",
        "--model",
        "resnet_micro",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-test",
        "-q",
    ]
    ok = runner.invoke(
        app,
        base
        + [
            "--archive",
            str(archive["root"]),
            "--out",
            str(tmp_path / "ok"),
            "--mix",
            "cutmix-lp",
            "--mix-prob",
            "0.5",
            "--mix-area",
            "0.2,0.6",
        ],
    )
    assert ok.exit_code == 0, ok.output
    no_maps = build_learnable_archive(
        tmp_path / "NOMAPS", counts={"train": 4, "validation": 2}, shards=1, reference_maps="none"
    )
    result = runner.invoke(
        app, base + ["--archive", str(no_maps["root"]), "--out", str(tmp_path / "r1"), "--mix", "cutmix-lp"]
    )
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and str(no_maps["root"]) in line and "_reference_map" in line
    assert not (tmp_path / "r1" / "checkpoints").exists()  # refused before training started
    # the same archive trains with --mix cutmix (no maps needed) and --mix none
    fine = runner.invoke(
        app, base + ["--archive", str(no_maps["root"]), "--out", str(tmp_path / "r2"), "--mix", "cutmix"]
    )
    assert fine.exit_code == 0, fine.output
    bad = build_learnable_archive(
        tmp_path / "BADSHAPE", counts={"train": 4, "validation": 2}, shards=1, reference_maps="wrong_shape"
    )
    last_train = bad["patch_ids"]["train"][-1]
    result = runner.invoke(
        app, base + ["--archive", str(bad["root"]), "--out", str(tmp_path / "r3"), "--mix", "cutmix-lp"]
    )
    assert result.exit_code == 1
    line = result.output.strip()
    assert (
        "\n" not in line
        and f"{last_train}_reference_map" in line
        and "(60, 60)" in line.replace("[60, 60]", "(60, 60)")
    )
    for args, message in (
        (["--mix", "mixup"], "unknown --mix 'mixup'"),
        (["--mix-area", "0.5,0.2"], "--mix-area"),
        (["--mix", "cutmix", "--mix-prob", "2"], "--mix-prob must be a number in [0, 1] (got 2.0)"),
    ):
        result = runner.invoke(app, base + ["--archive", str(archive["root"]), "--out", str(tmp_path / "r4"), *args])
        assert result.exit_code in (1, 2) and message in result.output, result.output


def test_training_dataset_error_is_a_training_error(tmp_path):
    no_maps = build_learnable_archive(
        tmp_path / "A", counts={"train": 3, "validation": 1}, shards=1, reference_maps="none"
    )
    dataset = open_dataset(no_maps["root"], ("B02",))
    try:
        with pytest.raises(
            TrainingError,
            match=r"A: --mix cutmix-lp needs reference maps, and this archive holds none \(\S+_reference_map is absent",
        ):
            training_dataset(dataset, split_indices(dataset, "train"), needs_reference_maps=True)
    finally:
        dataset.archive.close()


@pytest.mark.slow
def test_lp_labels_on_the_demo_archive_equal_the_pipeline_labelling(tmp_path):
    """The exact test on the demo archive's stored maps (slow: builds the demo region)."""
    from reben_tools.builder.demo import run_demo

    run_demo(tmp_path / "demo", workers=2, progress=False, echo=lambda line: None)
    dataset = ReBENDataset(tmp_path / "demo" / "archive", bands=("B02",), return_reference_map=True)
    try:
        batch = collate(dataset.__getitems__(list(range(len(dataset)))))
    finally:
        dataset.archive.close()
    maps, labels = batch["reference_map"], batch["label"]
    np_maps = maps.numpy()
    for seed in range(3):
        out = cutmix(
            torch.zeros(len(maps), 1, 120, 120),
            labels,
            maps,
            mode="cutmix-lp",
            prob=1.0,
            area_range=(0.05, 0.9),
            generator=torch.Generator().manual_seed(seed),
        )
        bx = out.boxes
        for b in range(len(maps)):
            mixed = np_maps[b].copy()
            h, w = int(bx.height[b]), int(bx.width[b])
            s, st, sl, dt, dl = (
                int(bx.source[b]),
                int(bx.src_top[b]),
                int(bx.src_left[b]),
                int(bx.dst_top[b]),
                int(bx.dst_left[b]),
            )
            mixed[dt : dt + h, dl : dl + w] = np_maps[s][st : st + h, sl : sl + w]
            np.testing.assert_array_equal(out.labels[b].numpy(), multi_hot(labels_from_reference_map(mixed)))
