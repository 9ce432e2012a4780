"""The figures people open are readable: no overlapping or cut-off text, no shortened class names,
axes that show the data (issue 10's figure items). Every check runs matplotlib's renderer."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from figure_layout import assert_readable, overlapping_texts

from reben_tools.format.labels import class_names
from reben_tools.geo.split_rule import reben_split
from reben_tools.splits.audit import _splits_to_audit, audit_patches, run_audit
from reben_tools.splits.audit_figures import distance_histogram_plot, label_plot, split_map_plot
from reben_tools.splits.patches import load_patches

PRODUCTS = {
    "S2A_MSIL2A_20170613T104021_N0205_R008_T31UGR": "Belgium",
    "S2B_MSIL2A_20170701T103019_N0205_R108_T32ULV": "Luxembourg",
}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """Two dense 10 x 10 tiles (12,600 m) with every class name, their reBEN split, audited."""
    names = class_names()
    rows = [
        {
            "patch_id": f"{product}_{x:02d}_{y:02d}",
            "country": country,
            "tile_side_m": 12_600.0,
            "labels": [names[(x + 3 * y) % 19], names[(2 * x + y) % 19]],
            "split": str(reben_split(np.array([x]), np.array([y]), 12_600.0)[0]),
        }
        for product, country in PRODUCTS.items()
        for y in range(10)
        for x in range(10)
    ]
    path = tmp_path_factory.mktemp("fig") / "patches.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    patches = load_patches(path)
    splits = _splits_to_audit(patches, None, None, {})
    report, raw = audit_patches(patches, splits, permutations=2)
    return patches, splits, report, raw, path


def test_split_maps_have_no_overlapping_titles_and_a_legend_entry_for_empty_cells(audited):
    patches, splits, _, _, _ = audited
    for split in splits:
        figure = split_map_plot(patches, split)
        assert_readable(figure)
        legend = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
        assert "no patch (dropped or not imaged)" in legend and "excluded (in no split)" in legend


def test_identical_splits_share_one_row_in_the_report(audited, tmp_path):
    _, splits, _, _, path = audited
    assert [s.name for s in splits] == ["split = reben", "v1-blocks", "spatial-blocks"]
    run_audit(path, tmp_path / "audit", permutations=2, figures=False)
    lines = (tmp_path / "audit" / "report.md").read_text().splitlines()
    # comparison 1, counts 1, nearest-train table 2 (validation, test); no separate "reben" rows
    assert len([line for line in lines if line.startswith("| split = reben |")]) == 4
    assert not [line for line in lines if line.startswith("| reben")]


def test_distance_histogram_range_follows_the_data_and_has_readable_ticks(audited):
    _, _, _, raw, _ = audited
    largest = (
        max(
            float(np.max(r[k]))
            for r in raw.values()
            for k in ("validation_to_train", "test_to_train")
            if len(r.get(k, ()))
        )
        / 1000
    )
    figure = distance_histogram_plot(raw, (1200.0, 5000.0, 10000.0, 25000.0))
    assert_readable(figure)
    for axis in figure.axes:
        low, high = axis.get_xlim()
        assert low == 0.0 and largest < high <= largest + 2 * 1.2 + 1e-9
        assert axis.get_yscale() == "linear"
        low_y, high_y = axis.get_ylim()
        assert len([t for t in axis.get_yticks() if low_y <= t <= high_y]) >= 3


def test_label_figure_keeps_every_class_name_whole(audited):
    _, _, report, _, _ = audited
    figure = label_plot(report)
    assert_readable(figure)
    shown = [t.get_text().replace("\n", " ") for t in figure.axes[0].get_yticklabels()]
    assert shown == sorted({n for s in report["splits"] for n in s["labels"]["names"]}, key=shown.index)
    assert "Land principally occupied by agriculture, with significant areas of natural vegetation" in shown


def test_checker_catches_overlapping_text():
    """The layout check itself: the old split-map layout (suptitle over two-line panel titles) is caught."""
    figure, axes = plt.subplots(1, 2, figsize=(8, 4))
    for axis in axes:
        axis.set_title("Belgium: 182 patches\n12 x 12 km", fontsize=8)
    figure.suptitle("Patches by split: reben (EPSG:3035, north up)", fontsize=11)
    figure.subplots_adjust(top=0.9)
    assert overlapping_texts(figure)


def test_summary_map_uses_its_width_and_shows_whole_country_outlines(tmp_path):
    from shapely import box

    from reben_tools.builder.countries import CountryIndex
    from reben_tools.builder.pipeline.summary import map_figure

    countries = CountryIndex.load(_countries_file(tmp_path), countries=["BEL", "LUX"])
    footprints = [box(5.9 + 0.017 * i, 50.45, 5.917 + 0.017 * i, 50.461) for i in range(4)]
    figure = map_figure(["train", "validation", "test", "train"], footprints, countries)
    assert_readable(figure)
    axis = figure.axes[0]
    figure.canvas.draw()
    used = axis.get_window_extent().width / figure.bbox.width
    assert used > 0.6, f"the map uses {used:.0%} of the figure's width"
    (xmin, xmax), (ymin, ymax) = axis.get_xlim(), axis.get_ylim()
    assert xmin < 2.6 and xmax > 6.3 and ymin < 49.5 and ymax > 51.4  # Belgium and Luxembourg whole


def _countries_file(tmp_path):
    import json

    belgium = [
        [2.52, 51.15],
        [3.31, 51.35],
        [4.05, 51.27],
        [4.97, 51.48],
        [6.16, 50.80],
        [6.04, 50.13],
        [5.78, 50.09],
        [5.67, 49.53],
        [4.80, 49.99],
        [4.29, 49.91],
        [3.59, 50.38],
        [3.12, 50.78],
        [2.66, 50.80],
        [2.52, 51.15],
    ]
    luxembourg = [
        [6.04, 50.13],
        [6.24, 49.90],
        [6.19, 49.46],
        [5.90, 49.44],
        [5.67, 49.53],
        [5.78, 50.09],
        [6.04, 50.13],
    ]
    features = [
        {
            "type": "Feature",
            "properties": {"ADM0_A3": code, "NAME": name},
            "geometry": {"type": "Polygon", "coordinates": [ring]},
        }
        for code, name, ring in (("BEL", "Belgium", belgium), ("LUX", "Luxembourg", luxembourg))
    ]
    path = tmp_path / "countries.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_per_class_figure_keeps_every_class_name_whole():
    from reben_tools.learn.evaluation.metrics import multilabel_metrics, per_class_figure

    rng = np.random.default_rng(0)
    targets = (rng.random((60, 19)) < 0.3).astype(np.float32)
    targets[:, 5] = 0.0  # a class without positives
    logits = rng.normal(size=(60, 19)).astype(np.float32)
    metrics = multilabel_metrics(logits, targets)
    figure = per_class_figure(metrics)
    assert_readable(figure)
    shown = [t.get_text().replace("\n", " ") for t in figure.axes[0].get_yticklabels()]
    names = list(metrics["per_class"])
    assert shown == [n + (" (no positives)" if i == 5 else "") for i, n in enumerate(names)]


def test_embedding_map_names_every_class_in_full_and_its_text_is_readable():
    """Each panel title holds the whole class name (the longest has 85 characters), wrapped, not cut."""
    from reben_tools.learn.evaluation.embedding_map import embedding_map_figure

    rng = np.random.default_rng(0)
    names = class_names("alphabetical")
    labels = (rng.random((60, len(names))) < 0.3).astype(np.uint8)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    figure, summary = embedding_map_figure(x, labels, [f"p{i:03d}" for i in range(60)], method="tsne")
    titles = [" ".join(ax.get_title().split()) for ax in figure.axes if ax.get_title()]
    assert len(titles) == len(names) == len(summary["classes"])
    for name, title in zip(names, titles, strict=True):
        assert title.startswith(name), (name, title)
    assert_readable(figure)
