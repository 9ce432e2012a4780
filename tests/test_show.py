"""`ReBENDataset.plot(sample)` and `reben show ARCHIVE PATCH_ID --out patch.png` (issue 10)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from figure_layout import assert_readable
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.data import ReBENDataset
from reben_tools.format.labels import clc_legend


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return build_learnable_archive(
        tmp_path_factory.mktemp("show") / "archive", counts={"train": 3, "validation": 1, "test": 1}, shards=1
    )


def test_plot_draws_rgb_vv_vh_and_the_reference_map_in_corine_colours(archive):
    dataset = ReBENDataset(archive["root"])
    sample = dataset[2]
    figure = dataset.plot(sample)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == ["Sentinel-2 RGB (B04, B03, B02)", "Sentinel-1 VV", "Sentinel-1 VH", "Reference map (CORINE 2018)"]
    labels = archive["labels"][sample["patch_id"]]
    assert figure._suptitle.get_text().replace("\n", " ") == f"{sample['patch_id']} labels: {', '.join(labels)}"
    # every pixel of the reference-map panel has its CLC code's legend colour
    codes = dataset.reference_map(2)
    image = figure.axes[3].get_images()[0]
    shown = image.to_rgba(image.get_array())[..., :3]
    legend = clc_legend()
    expected = np.array([[legend[int(c)].rgb for c in row] for row in codes]) / 255
    np.testing.assert_allclose(shown, expected, atol=1e-6)
    entries = [t.get_text() for t in figure.legends[0].get_texts()]
    assert entries == [f"{int(c)} {legend[int(c)].name}" for c in np.unique(codes)]
    rgb = figure.axes[0].get_images()[0].get_array()
    assert rgb.shape == (120, 120, 3) and 0.0 <= rgb.min() < rgb.max() <= 1.0
    assert_readable(figure)
    plt.close(figure)


def test_plot_leaves_out_bands_the_dataset_does_not_hold(archive):
    dataset = ReBENDataset(archive["root"], bands="S1")
    figure = dataset.plot(dataset[0])
    assert [axis.get_title() for axis in figure.axes] == [
        "Sentinel-1 VV",
        "Sentinel-1 VH",
        "Reference map (CORINE 2018)",
    ]
    plt.close(figure)


def test_reben_show_writes_the_png_and_names_a_missing_patch_in_one_line(archive, tmp_path):
    patch = archive["patch_ids"]["test"][0]
    out = tmp_path / "patch.png"
    result = CliRunner().invoke(app, ["show", str(archive["root"]), patch, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{out}: {patch}\n"
    picture = mpimg.imread(out)
    assert picture.ndim == 3 and picture.shape[1] > 2 * picture.shape[0]
    result = CliRunner().invoke(
        app,
        [
            "show",
            str(archive["root"]),
            "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99",
            "--out",
            str(tmp_path / "none.png"),
        ],
    )
    assert result.exit_code == 1
    assert (
        result.output.count("\n") == 1
        and "no patch 'S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99'" in result.output
    )
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize(
    "bands,labels",
    [
        (
            ("VV", "VH"),
            ["Agro-forestry areas", "Arable land", "Beaches, dunes, sands", "Broad-leaved forest", "Water bodies"],
        ),
        (
            ("B04", "B03", "B02", "VV", "VH"),
            [
                "Arable land",
                "Complex cultivation patterns",
                "Natural grassland and sparsely vegetated areas",
                "Transitional woodland, shrub",
            ],
        ),
        (
            ("B04", "B03", "B02", "VV", "VH"),
            [
                "Agro-forestry areas",
                "Arable land",
                "Beaches, dunes, sands",
                "Land principally occupied by agriculture, with significant areas of natural vegetation",
                "Transitional woodland, shrub",
            ],
        ),
    ],
)
def test_the_title_breaks_lines_between_class_names_only(bands, labels):
    """patch.png wrapped inside a class name ("Transitional woodland,\\nshrub"); every line now ends at a name."""
    from reben_tools.learn.data.sample_figure import plot_sample

    image = np.random.default_rng(0).random((len(bands), 120, 120), dtype=np.float32)
    reference_map = np.full((120, 120), 211, dtype=np.uint16)
    figure = plot_sample(image, bands, labels, reference_map=reference_map, patch_id="P")
    lines = figure._suptitle.get_text().split("\n")
    assert lines[0] == "P" and lines[1].startswith("labels: ")
    assert " ".join(lines[1:]) == "labels: " + ", ".join(labels)
    for end in range(2, len(lines)):  # the text up to each line break is a whole number of names
        shown = " ".join(lines[1:end]).removeprefix("labels: ")
        assert any(shown == ", ".join(labels[:k]) + "," for k in range(1, len(labels))), lines
    assert len(lines) > 2  # the case does need wrapping
    assert_readable(figure)
    plt.close(figure)
