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


def _site(x0: float, y0: float, n: int = 10, step: float = 0.017) -> list:
    """An n x n grid of footprints about one 1.2 km patch wide (in degrees near 50 N)."""
    from shapely import box

    return [
        box(x0 + i * step, y0 + j * 0.011, x0 + (i + 1) * step, y0 + (j + 1) * 0.011)
        for j in range(n)
        for i in range(n)
    ]


def _pattern(n: int) -> list[str]:
    return [("train", "validation", "test")[(i * 7 // n + i) % 3] for i in range(n)]


def test_summary_map_of_two_small_sites_has_a_panel_per_site_at_patch_scale_and_an_overview(tmp_path):
    """The demo's two 12 km sites were tiny squares on a country map: now each has its own panel."""
    from reben_tools.builder.countries import CountryIndex
    from reben_tools.builder.pipeline.summary import map_figure

    countries = CountryIndex.load(_countries_file(tmp_path), countries=["BEL", "LUX"])
    footprints = _site(5.82, 50.41) + _site(6.24, 49.51)
    tiles = ["tile 31UGR"] * 100 + ["tile 32ULV"] * 100
    figure = map_figure(_pattern(200), footprints, countries, tiles)
    assert_readable(figure)
    axes = {axis.get_label(): axis for axis in figure.axes}
    assert list(axes) == ["site:tile 31UGR", "site:tile 32ULV", "overview"]
    figure.canvas.draw()
    for name, x0 in (("site:tile 31UGR", 5.82), ("site:tile 32ULV", 6.24)):
        axis = axes[name]
        (xmin, xmax), (ymin, ymax) = axis.get_xlim(), axis.get_ylim()
        assert xmin <= x0 and xmax >= x0 + 0.17 and xmax - xmin < 0.3  # the site, at patch scale
        pixels_per_degree = axis.get_window_extent().width / (xmax - xmin)
        assert 0.017 * pixels_per_degree > 12, "a patch should be many pixels wide"
        assert axis.get_title().startswith(("1: tile 31UGR, 100 patches", "2: tile 32ULV, 100 patches"))
    (xmin, xmax), (ymin, ymax) = axes["overview"].get_xlim(), axes["overview"].get_ylim()
    assert xmin < 2.6 and xmax > 6.3 and ymin < 49.5 and ymax > 51.4  # Belgium and Luxembourg whole
    shown = {t.get_text() for t in axes["overview"].texts}
    assert {"Belgium", "Luxembourg", "1", "2"} <= shown
    renderer = figure.canvas.get_renderer()
    boxes = [patch.get_window_extent(renderer) for patch in axes["overview"].patches if not patch.get_fill()]
    texts = axes["overview"].texts
    assert len(boxes) == 2
    for text in texts:  # no country name or number on a site's box, none on another text
        extent = text.get_window_extent(renderer)
        if text.get_text() in ("Belgium", "Luxembourg"):
            assert not any(extent.overlaps(b) for b in boxes), text.get_text()
        assert not any(extent.overlaps(o.get_window_extent(renderer)) for o in texts if o is not text)


def test_summary_map_panels_name_the_country_the_archive_assigned(tmp_path):
    """Natural Earth's outline of Luxembourg misses the demo's site 2 (a build assigns it by a finer rule):
    the panel names the country of its patches' rows, not only the outlines it touches."""
    from reben_tools.builder.countries import CountryIndex
    from reben_tools.builder.pipeline.summary import map_figure

    countries = CountryIndex.load(_countries_file(tmp_path), countries=["BEL", "LUX"])
    footprints = _site(5.82, 50.41) + _site(6.30, 49.52)
    tiles = ["tile 31UGR"] * 100 + ["tile 32ULV"] * 100
    assigned = ["Belgium"] * 100 + ["Luxembourg"] * 100
    titles = {
        axis.get_label(): axis.get_title()
        for axis in map_figure(_pattern(200), footprints, countries, tiles, assigned).axes
    }
    assert titles["site:tile 32ULV"] == "2: tile 32ULV, 100 patches\nLuxembourg"
    assert titles["site:tile 31UGR"] == "1: tile 31UGR, 100 patches\nBelgium"


def test_summary_map_groups_touching_footprints_into_sites_without_tile_names(tmp_path):
    from reben_tools.builder.countries import CountryIndex
    from reben_tools.builder.pipeline.summary import group_sites, map_figure

    countries = CountryIndex.load(_countries_file(tmp_path), countries=["BEL", "LUX"])
    footprints = _site(6.24, 49.51, n=3) + _site(5.82, 50.41, n=4)
    groups = group_sites(footprints)
    assert [(name, list(members)) for name, members in groups] == [
        ("site 1", list(range(9, 25))),
        ("site 2", list(range(9))),
    ]
    figure = map_figure(_pattern(25), footprints, countries)
    assert_readable(figure)
    assert [axis.get_label() for axis in figure.axes] == ["site:site 1", "site:site 2", "overview"]


def test_summary_map_of_a_115_tile_build_is_one_map_that_uses_its_width():
    """Many tiles (a country-scale build): one map holding every tile, no panel per tile."""
    from shapely import box

    from reben_tools.builder.countries import CountryIndex
    from reben_tools.builder.pipeline.summary import map_figure

    countries = CountryIndex.load()  # the shipped Natural Earth countries, BigEarthNet's ten
    footprints, tiles = [], []
    for t in range(115):
        x0, y0 = 4 + (t % 12) * 1.4, 45.5 + (t // 12) * 0.95
        for i in range(16):
            footprints.append(
                box(x0 + (i % 4) * 0.35, y0 + (i // 4) * 0.2375, x0 + (i % 4 + 1) * 0.35, y0 + (i // 4 + 1) * 0.2375)
            )
            tiles.append(f"tile {t}")
    figure = map_figure(_pattern(len(footprints)), footprints, countries, tiles)
    assert_readable(figure)
    assert [axis.get_label() for axis in figure.axes] == ["map"]
    axis = figure.axes[0]
    figure.canvas.draw()
    assert axis.get_window_extent().width / figure.bbox.width > 0.6
    (xmin, xmax), (ymin, ymax) = axis.get_xlim(), axis.get_ylim()
    assert xmin < 4 and xmax > 4 + 11 * 1.4 + 1.4 and ymin < 45.5 and ymax > 45.5 + 9 * 0.95 + 0.95
    assert axis.get_title() == "1840 patches by split"


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


def test_per_class_figure_keeps_every_class_name_whole_with_its_support():
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
    support = targets.sum(axis=0).astype(int)
    assert shown == [n + (" (no positives)" if i == 5 else f" ({support[i]})") for i, n in enumerate(names)]


def test_per_class_figure_marks_bars_of_zero():
    """A class with AP > 0 and F1 = 0 had no visible F1 bar, as if the value were missing."""
    from reben_tools.learn.evaluation.metrics import multilabel_metrics, per_class_figure

    rng = np.random.default_rng(1)
    targets = (rng.random((80, 19)) < 0.3).astype(np.float32)
    logits = rng.normal(size=(80, 19)).astype(np.float32)
    logits[:, 2] = np.where(targets[:, 2] > 0, -1.0, -3.0)  # ranked perfectly (AP 1), never above 0.5 (F1 0)
    logits[:, 7] = -5.0  # F1 0 as well
    metrics = multilabel_metrics(logits, targets)
    names = list(metrics["per_class"])
    zero_f1 = [i for i, n in enumerate(names) if metrics["per_class"][n]["f1"] == 0]
    assert 2 in zero_f1 and 7 in zero_f1 and metrics["per_class"][names[2]]["average_precision"] == 1.0
    figure = per_class_figure(metrics)
    assert_readable(figure)
    marks = sorted(round(t.get_position()[1], 3) for t in figure.axes[0].texts if t.get_text() == "0")
    assert marks == [round(i + 0.2, 3) for i in zero_f1]  # on each F1 bar of 0, none elsewhere


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


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 40])
def test_training_curves_are_ticked_at_whole_epochs(epochs):
    """A 2-epoch run had ticks at 1.25, 1.5, 1.75 on curves.png."""
    from reben_tools.learn.training.plots import curves_figure

    history = [
        {
            "epoch": e,
            "train_loss": 0.7 / e,
            "lr": 1e-3 / e,
            "validation": {
                "loss": 0.8 / e,
                "average_precision_macro": 0.5,
                "average_precision_micro": 0.6,
                "f1_macro": 0.3,
            },
        }
        for e in range(1, epochs + 1)
    ]
    figure = curves_figure(history)
    figure.canvas.draw()
    assert_readable(figure)
    for axis in figure.axes:
        low, high = axis.get_xlim()
        shown = [t for t in axis.get_xticks() if low <= t <= high]
        assert shown and all(float(t).is_integer() for t in shown), shown
