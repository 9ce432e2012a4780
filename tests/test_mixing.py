"""CutMix and CutMix with label propagation (reben_tools.learn.data.mixing) on real CORINE reference maps.

The reference maps are the real CLC 2018 extract of tests/data rasterised by the pipeline's own
reference_block onto a 16 x 10 grid of 120 x 120 patches (EPSG:25830, 10 m); they hold 20
codes, among them the UNLABELED codes 122 and 332 and 999 at the extract's edges. Every
expected value is worked out per sample with numpy slicing and the pipeline's labelling
function (labels_from_reference_map), independently of the batched torch code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from torch.overrides import TorchFunctionMode

from reben_tools.builder.corine import open_clc, reference_block
from reben_tools.format.labels import labels_from_reference_map, multi_hot, unlabeled_fraction
from reben_tools.learn.data.mixing import (
    CutMix,
    LabelNoiseCounts,
    class_table,
    cutmix,
    label_noise_counts,
    labels_from_codes,
    parse_area_range,
    sample_boxes,
)

LANJARON = Path(__file__).parent / "data" / "clc_sample_lanjaron_es.gpkg"
ROWS, COLS = 16, 10


@pytest.fixture(scope="module")
def real_maps() -> np.ndarray:
    """(160, 120, 120) uint16 reference maps of the real CLC extract."""
    source = open_clc(LANJARON)
    grid, _ = reference_block(source, "EPSG:25830", Affine(10, 0, 453000, 0, -10, 4099800), (ROWS * 120, COLS * 120))
    maps = grid.reshape(ROWS, 120, COLS, 120).transpose(0, 2, 1, 3).reshape(ROWS * COLS, 120, 120)
    assert maps.dtype == np.uint16
    codes = set(np.unique(maps).tolist())
    assert {122, 332, 999} <= codes and len(codes) == 21  # unlabelled pixels are exercised
    return np.ascontiguousarray(maps)


def _stored_labels(maps: np.ndarray, order: str = "alphabetical") -> np.ndarray:
    return np.stack([multi_hot(labels_from_reference_map(m), order) for m in maps])


def _mixed_by_hand(maps: np.ndarray, boxes, b: int) -> np.ndarray:
    """Sample b's mixed map built with numpy slices from the box fields."""
    out = maps[b].copy()
    h, w = int(boxes.height[b]), int(boxes.width[b])
    s, st, sl = int(boxes.source[b]), int(boxes.src_top[b]), int(boxes.src_left[b])
    dt, dl = int(boxes.dst_top[b]), int(boxes.dst_left[b])
    out[dt : dt + h, dl : dl + w] = maps[s][st : st + h, sl : sl + w]
    return out


@pytest.mark.parametrize("seed,area,prob", [(0, (0.1, 0.5), 1.0), (1, (0.02, 1.0), 0.5), (2, (0.6, 0.9), 1.0)])
def test_lp_labels_equal_the_pipeline_labelling_of_the_mixed_map(real_maps, seed, area, prob):
    stored = _stored_labels(real_maps)
    images = torch.randn(len(real_maps), 3, 120, 120, generator=torch.Generator().manual_seed(99))
    gen = torch.Generator().manual_seed(seed)
    out = cutmix(
        images,
        torch.from_numpy(stored),
        torch.from_numpy(real_maps),
        mode="cutmix-lp",
        area_range=area,
        prob=prob,
        generator=gen,
    )
    assert out.labels.shape == (160, 19) and out.labels.dtype == torch.float32
    assert out.reference_maps.dtype == torch.int32 and out.reference_maps.shape == (160, 120, 120)
    boxes = out.boxes
    differs_from_union = 0
    for b in range(len(real_maps)):
        mixed = _mixed_by_hand(real_maps, boxes, b)
        np.testing.assert_array_equal(out.reference_maps[b].numpy(), mixed)
        if bool(boxes.mixed[b]):
            expected = multi_hot(labels_from_reference_map(mixed))
            union = np.maximum(stored[b], stored[int(boxes.source[b])])
            differs_from_union += int(not np.array_equal(union, expected))
        else:
            expected = stored[b]
            assert int(boxes.height[b]) == 0
        np.testing.assert_array_equal(out.labels[b].numpy(), expected, err_msg=f"sample {b}")
        # the image pixels travel with the map pixels
        h, w = int(boxes.height[b]), int(boxes.width[b])
        dt, dl, st, sl = (int(boxes.dst_top[b]), int(boxes.dst_left[b]), int(boxes.src_top[b]), int(boxes.src_left[b]))
        expected_image = images[b].clone()
        expected_image[:, dt : dt + h, dl : dl + w] = images[int(boxes.source[b])][:, st : st + h, sl : sl + w]
        assert torch.equal(out.images[b], expected_image)
    assert differs_from_union > 0  # naive labels are wrong on these real maps: the test has teeth


def test_lp_labels_in_the_original_class_order(real_maps):
    stored = _stored_labels(real_maps, "original")
    table = class_table("original")
    out = cutmix(
        torch.zeros(160, 1, 120, 120),
        torch.from_numpy(stored),
        torch.from_numpy(real_maps),
        mode="cutmix-lp",
        prob=1.0,
        generator=torch.Generator().manual_seed(5),
        table=table,
    )
    for b in range(0, 160, 7):
        mixed = _mixed_by_hand(real_maps, out.boxes, b)
        np.testing.assert_array_equal(out.labels[b].numpy(), multi_hot(labels_from_reference_map(mixed), "original"))


def test_labels_from_codes_ignores_unlabelled_codes_and_counts_single_pixels():
    maps = np.full((3, 120, 120), 999, dtype=np.uint16)
    maps[0, 80, 7] = 311  # one pixel of Broad-leaved forest
    maps[0, :60] = 122  # UNLABELED code: no class
    maps[1] = 523
    maps[1, 119, 119] = 112
    maps[2, :, :] = 4000  # outside the legend: no class (never written by the pipeline)
    got = labels_from_codes(torch.from_numpy(maps)).numpy()
    np.testing.assert_array_equal(got[0], multi_hot(["Broad-leaved forest"]))
    np.testing.assert_array_equal(got[1], multi_hot(["Marine waters", "Urban fabric"]))
    np.testing.assert_array_equal(got[2], np.zeros(19, dtype=np.float32))


def test_mixed_labels_of_kept_patches_are_never_empty(real_maps):
    kept = np.array([unlabeled_fraction(m) < 0.25 for m in real_maps])
    maps = real_maps[kept]
    assert 100 <= len(maps) < 160
    stored = torch.from_numpy(_stored_labels(maps))
    for seed in range(4):
        out = cutmix(
            torch.zeros(len(maps), 1, 120, 120),
            stored,
            torch.from_numpy(maps),
            mode="cutmix-lp",
            area_range=(0.01, 1.0),
            prob=1.0,
            generator=torch.Generator().manual_seed(seed),
        )
        assert bool((out.labels.sum(1) >= 1).all())
        share = torch.from_numpy(np.array([unlabeled_fraction(m.numpy()) for m in out.reference_maps]))
        assert float(share.max()) < 0.5


def test_box_sizes_positions_and_mix_probability():
    gen = torch.Generator().manual_seed(3)
    boxes = sample_boxes(4096, (120, 120), (0.1, 0.5), 0.5, gen)
    mixed = boxes.mixed
    assert 0.45 < float(mixed.float().mean()) < 0.55
    assert torch.equal(torch.sort(boxes.source).values, torch.arange(4096))
    h, w = boxes.height[mixed], boxes.width[mixed]
    assert torch.equal(h, w)  # square boxes on square patches
    # round(120 * sqrt(0.1)) = 38, round(120 * sqrt(0.5)) = 85
    assert int(h.min()) == 38 and int(h.max()) == 85
    assert bool((boxes.height[~mixed] == 0).all() and (boxes.width[~mixed] == 0).all())
    for top, left in ((boxes.src_top, boxes.src_left), (boxes.dst_top, boxes.dst_left)):
        assert bool((top[mixed] >= 0).all() and (left[mixed] >= 0).all())
        assert bool((top[mixed] + h <= 120).all() and (left[mixed] + w <= 120).all())
        assert int((top[mixed] == 0).sum()) > 0 and int((top[mixed] + h == 120).sum()) > 0  # edges reachable
    same_place = (boxes.src_top == boxes.dst_top) & (boxes.src_left == boxes.dst_left) & mixed
    assert int(same_place.sum()) < 0.01 * int(mixed.sum())  # pasted elsewhere, not in place
    area = boxes.area_fraction((120, 120))
    assert torch.equal(area[mixed], (h * w).float() / 14400) and bool((area[~mixed] == 0).all())


def test_paste_moves_each_source_box_to_its_target_place():
    b = 48
    rows = torch.arange(120).view(1, 120, 1).expand(b, 120, 120)
    cols = torch.arange(120).view(1, 1, 120).expand(b, 120, 120)
    sample = torch.arange(b).view(b, 1, 1).expand(b, 120, 120)
    images = torch.stack([sample, rows, cols], 1).float()  # every pixel says where it comes from
    out = cutmix(images, torch.zeros(b, 19), mode="cutmix", prob=1.0, generator=torch.Generator().manual_seed(8))
    bx = out.boxes
    for i in range(b):
        h, w = int(bx.height[i]), int(bx.width[i])
        dt, dl, st, sl = int(bx.dst_top[i]), int(bx.dst_left[i]), int(bx.src_top[i]), int(bx.src_left[i])
        inside = np.zeros((120, 120), dtype=bool)
        inside[dt : dt + h, dl : dl + w] = True
        got = out.images[i].numpy()
        assert (got[0][inside] == int(bx.source[i])).all() and (got[0][~inside] == i).all()
        rr, cc = np.nonzero(inside)
        np.testing.assert_array_equal(got[1][inside], rr - dt + st)
        np.testing.assert_array_equal(got[2][inside], cc - dl + sl)
        np.testing.assert_array_equal(got[1][~inside], np.nonzero(~inside)[0])


def test_cutmix_labels_are_mixed_by_the_pasted_area(real_maps):
    stored = _stored_labels(real_maps)
    out = cutmix(
        torch.zeros(160, 2, 120, 120),
        torch.from_numpy(stored),
        mode="cutmix",
        area_range=(0.05, 0.95),
        prob=0.7,
        generator=torch.Generator().manual_seed(11),
    )
    bx = out.boxes
    for b in range(160):
        r = int(bx.height[b]) * int(bx.width[b]) / 14400.0
        expected = (1 - r) * stored[b].astype(np.float64) + r * stored[int(bx.source[b])]
        np.testing.assert_allclose(out.labels[b].numpy(), expected, rtol=0, atol=1e-6)
        if not bool(bx.mixed[b]):
            np.testing.assert_array_equal(out.labels[b].numpy(), stored[b])
    assert out.reference_maps is None


class _CountCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["cutmix", "cutmix-lp"])
def test_the_number_of_torch_calls_does_not_grow_with_the_batch(mode):
    # a per-sample Python loop would issue more torch calls for a larger batch
    counts = []
    for b in (2, 9, 130):
        images, labels = torch.randn(b, 4, 120, 120), torch.zeros(b, 19)
        maps = torch.full((b, 120, 120), 311, dtype=torch.uint16)
        with _CountCalls() as counter:
            cutmix(images, labels, maps, mode=mode, generator=torch.Generator().manual_seed(0))
        counts.append(counter.calls)
    assert counts[0] == counts[1] == counts[2] and counts[0] > 10


def test_same_seed_same_batch_other_seed_other_boxes(real_maps):
    maps = torch.from_numpy(real_maps[:64])
    labels = torch.from_numpy(_stored_labels(real_maps[:64]))
    images = torch.randn(64, 3, 120, 120, generator=torch.Generator().manual_seed(1))

    def run(seed):
        return cutmix(images, labels, maps, mode="cutmix-lp", generator=torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.reference_maps, b.reference_maps)
    assert not torch.equal(a.boxes.dst_top, c.boxes.dst_top)
    # the module keeps one seeded generator: a fresh module replays the same sequence of batches
    m1, m2 = CutMix("cutmix-lp", seed=4), CutMix("cutmix-lp", seed=4)
    first = [m1(images, labels, maps).labels for _ in range(3)]
    second = [m2(images, labels, maps).labels for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])


def test_label_noise_counts_match_per_sample_sets(real_maps):
    stored = _stored_labels(real_maps)
    out = cutmix(
        torch.zeros(160, 1, 120, 120),
        torch.from_numpy(stored),
        torch.from_numpy(real_maps),
        mode="cutmix",
        area_range=(0.1, 0.5),
        prob=0.8,
        generator=torch.Generator().manual_seed(21),
    )
    counts = label_noise_counts(torch.from_numpy(stored), out)
    expected = LabelNoiseCounts.zeros()
    for b in range(160):
        if not bool(out.boxes.mixed[b]):
            continue
        target, source = stored[b] > 0, stored[int(out.boxes.source[b])] > 0
        union = target | source
        truth = multi_hot(labels_from_reference_map(_mixed_by_hand(real_maps, out.boxes, b))) > 0
        expected.samples += 1
        expected.noisy += int((union != truth).any())
        expected.erased += union & ~truth
        expected.added += truth & ~union
        expected.added_to_target += truth & ~target
        expected.in_union += union
    assert counts.samples == expected.samples == int(out.boxes.mixed.sum())
    assert counts.noisy == expected.noisy > 0
    for name in ("erased", "added", "added_to_target", "in_union"):
        np.testing.assert_array_equal(getattr(counts, name), getattr(expected, name), err_msg=name)
    assert counts.added.sum() == 0  # stored labels are the maps' labels: the union never misses a class
    assert counts.erased.sum() > 0 and counts.added_to_target.sum() > 0


def test_bad_input_is_named():
    images, labels = torch.zeros(4, 3, 120, 120), torch.zeros(4, 19)
    with pytest.raises(ValueError, match="needs the reference maps"):
        cutmix(images, labels, mode="cutmix-lp")
    with pytest.raises(ValueError, match=r"reference maps of shape \(4, 60, 60\)"):
        cutmix(images, labels, torch.zeros(4, 60, 60, dtype=torch.int32), mode="cutmix-lp")
    with pytest.raises(ValueError, match="mix mode 'mixup'"):
        cutmix(images, labels, mode="mixup")
    assert parse_area_range("0.1, 0.5") == (0.1, 0.5)
    for bad in ("0.5", "0,0.5", "0.6,0.5", "a,b", "0.1,1.5"):
        with pytest.raises(ValueError, match="--mix-area"):
            parse_area_range(bad)
    with pytest.raises(ValueError, match="--mix-prob"):
        sample_boxes(4, (120, 120), prob=1.5)
