"""The 19-class nomenclature, both class orders, label derivation and the 25% rule (SPEC section 3)."""

import numpy as np
import pytest

from reben_tools.format.labels import (
    ALPHABETICAL_ORDER,
    ORIGINAL_ORDER,
    class_pixel_fractions,
    clc_legend,
    labels_from_reference_map,
    multi_hot,
    reference_map_to_mask,
    unlabeled_fraction,
)

UNLABELED_CODES = {122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 335, 423, 999}


def test_legend_has_44_codes_plus_999():
    legend = clc_legend()
    assert len(legend) == 45
    assert {c for c, e in legend.items() if e.class19 == "UNLABELED"} == UNLABELED_CODES


def test_class_orders():
    assert ALPHABETICAL_ORDER[0] == "Agro-forestry areas"
    assert ALPHABETICAL_ORDER[18] == "Urban fabric"
    assert ORIGINAL_ORDER[0] == "Urban fabric" and ORIGINAL_ORDER[18] == "Marine waters"
    assert sorted(ORIGINAL_ORDER) == list(ALPHABETICAL_ORDER)


@pytest.mark.parametrize(
    "codes, name",
    [
        ((111, 112), "Urban fabric"),
        ((211, 212, 213), "Arable land"),
        ((221, 222, 223, 241), "Permanent crops"),
        ((321, 333), "Natural grassland and sparsely vegetated areas"),
        ((322, 323), "Moors, heathland and sclerophyllous vegetation"),
        ((411, 412), "Inland wetlands"),
        ((421, 422), "Coastal wetlands"),
        ((511, 512), "Inland waters"),
        ((521, 522, 523), "Marine waters"),
        ((244,), "Agro-forestry areas"),
    ],
)
def test_code_groups(codes, name):
    for code in codes:
        ref = np.full((2, 2), code, dtype=np.uint16)
        assert labels_from_reference_map(ref) == [name]
        assert reference_map_to_mask(ref, "original")[0, 0] == ORIGINAL_ORDER.index(name)
        assert reference_map_to_mask(ref)[0, 0] == ALPHABETICAL_ORDER.index(name)


def test_labels_sorted_and_unlabeled_ignored():
    ref = np.array([[312, 111], [999, 211]], dtype=np.uint16)
    assert labels_from_reference_map(ref) == ["Arable land", "Coniferous forest", "Urban fabric"]
    assert reference_map_to_mask(ref)[1, 0] == 255
    assert unlabeled_fraction(ref) == 0.25


def test_unlabeled_fraction_and_pixel_fractions():
    ref = np.full((120, 120), 311, dtype=np.uint16)
    ref[:30, :] = 122  # 3600 of 14400 pixels: exactly 25%
    assert unlabeled_fraction(ref) == 0.25
    fractions = class_pixel_fractions(ref)
    assert fractions == {"Broad-leaved forest": 0.75, "UNLABELED": 0.25}


def test_multi_hot_orders():
    vec = multi_hot(["Urban fabric", "Agro-forestry areas"])
    assert vec.dtype == np.float32 and vec.shape == (19,)
    assert np.flatnonzero(vec).tolist() == [0, 18]
    assert np.flatnonzero(multi_hot(["Urban fabric"], "original")).tolist() == [0]
    with pytest.raises(ValueError, match="unknown label 'Forest'"):
        multi_hot(["Forest"])
