"""Patch ids, S1 partner names and v1 names exactly as SPEC sections 2 and 7 state them."""

import pytest

from reben_tools.format.naming import (
    parse_patch_id,
    parse_s1_patch_name,
    parse_s2_product_name,
    patch_id,
    s1_acquisition_time,
    s1_patch_name,
    s2v1_name,
)

PRODUCT = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_20240101T000000.SAFE"


def test_product_name_fields():
    name = parse_s2_product_name(PRODUCT)
    assert (name.mission, name.level, name.sensing, name.baseline, name.orbit, name.tile, name.generation) == (
        "S2A",
        "MSIL2A",
        "20170613T101031",
        "N9999",
        "R022",
        "33UUP",
        "20240101T000000",
    )
    assert name.patch_prefix == "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
    assert name.baseline_number == 9999


def test_patch_id_pads_to_two_digits():
    assert patch_id("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP", 26, 57) == (
        "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
    )
    assert patch_id("S2B_MSIL2A_20171101T094129_N9999_R036_T35VNJ", 0, 0).endswith("_T35VNJ_00_00")
    assert patch_id("P_T33UUP", 7, 123) == "P_T33UUP_07_123"


def test_s1_partner_name_is_unpadded():
    assert s1_patch_name("S1B_IW_GRDH_1SDV_20170612T165809", "T33UUP", 26, 57) == (
        "S1B_IW_GRDH_1SDV_20170612T165809_33UUP_26_57"
    )
    full = "S1B_IW_GRDH_1SDV_20171101T154016_20171101T154041_008091_00E4B4_2C79"
    assert s1_patch_name(full, "35VNJ", 0, 0) == "S1B_IW_GRDH_1SDV_20171101T154016_35VNJ_0_0"
    assert parse_s1_patch_name("S1B_IW_GRDH_1SDV_20171101T154016_35VNJ_0_0") == (
        "S1B_IW_GRDH_1SDV_20171101T154016",
        "35VNJ",
        0,
        0,
    )
    assert s1_acquisition_time(full).isoformat() == "2017-11-01T15:40:16"


def test_v1_name():
    assert s2v1_name("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57") == "S2A_MSIL2A_20170613T101031_26_57"
    assert s2v1_name("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_06_07") == "S2A_MSIL2A_20170613T101031_6_7"


def test_parse_patch_id_round_trip():
    parsed = parse_patch_id("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57")
    assert (parsed.product, parsed.x, parsed.y, parsed.tile) == (
        "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP",
        26,
        57,
        "33UUP",
    )
    assert str(parsed) == "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"


@pytest.mark.parametrize(
    "bad",
    [
        "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_6_57",  # x not padded
        "S2A_MSIL1C_20170613T101031_N9999_R022_T33UUP_26_57",  # L1C
        "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57/../x",
        "../S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57",
        "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57\x00",
        "",
        "S2A" * 500,
    ],
)
def test_malformed_patch_ids_are_rejected_with_the_name(bad):
    with pytest.raises(ValueError, match="patch id"):
        parse_patch_id(bad)


def test_product_name_rejects_non_sentinel2():
    with pytest.raises(ValueError, match="not a Sentinel-2 L2A product name: 'LC08_L2SP_190026'"):
        parse_s2_product_name("LC08_L2SP_190026")
