"""safetensors values: exact bytes and sizes (SPEC section 8) and strict decoding of untrusted values."""

import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as st_load

from reben_tools.format.codec import (
    ValueDecodeError,
    check_value,
    decode_value,
    encode_reference_map,
    encode_s1,
    encode_s2,
)

SIZES = {
    "B01": 20,
    "B02": 120,
    "B03": 120,
    "B04": 120,
    "B05": 60,
    "B06": 60,
    "B07": 60,
    "B08": 120,
    "B8A": 60,
    "B09": 20,
    "B11": 60,
    "B12": 60,
}


def s2_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {b: rng.integers(1, 10000, (n, n), dtype=np.uint16) for b, n in SIZES.items()}


def test_s2_value_size_and_header():
    value = encode_s2(s2_arrays())
    assert len(value) == 160_832
    (header_len,) = struct.unpack("<Q", value[:8])
    header = json.loads(value[8 : 8 + header_len])
    assert "__metadata__" not in header
    assert list(header) == sorted(SIZES)  # B01..B09, B11, B12, B8A
    assert header["B8A"] == {"dtype": "U16", "shape": [60, 60], "data_offsets": header["B8A"]["data_offsets"]}


def test_s2_value_bytes_independent_of_dict_order():
    arrays = s2_arrays(1)
    reversed_arrays = dict(reversed(list(arrays.items())))
    assert encode_s2(arrays) == encode_s2(reversed_arrays)


def test_s2_value_round_trips_through_safetensors_library():
    arrays = s2_arrays(2)
    loaded = st_load(encode_s2(arrays))
    for band, array in arrays.items():
        np.testing.assert_array_equal(loaded[band], array)
    decoded = check_value("k", encode_s2(arrays), "S2")
    for band, array in arrays.items():
        np.testing.assert_array_equal(decoded[band], array)


def test_s1_and_reference_map_values():
    vv = np.linspace(-30, 5, 14400, dtype=np.float32).reshape(120, 120)
    value = encode_s1({"VV": vv, "VH": vv - 7})
    assert len(value) == 115_344
    np.testing.assert_array_equal(decode_value("s1", value)["VH"], vv - 7)
    ref = np.full((120, 120), 312, dtype=np.uint16)
    assert decode_value("r", encode_reference_map(ref))["Data"].dtype == np.dtype("<u2")


def test_encode_rejects_wrong_band_sets():
    arrays = s2_arrays()
    del arrays["B09"]
    with pytest.raises(ValueError, match=r"missing \['B09'\]"):
        encode_s2(arrays)
    arrays = s2_arrays()
    arrays["B02"] = arrays["B02"].astype(np.int32)
    with pytest.raises(ValueError, match="band B02: dtype int32"):
        encode_s2(arrays)


def test_decode_is_zero_copy():
    value = encode_s2(s2_arrays())
    decoded = decode_value("k", value)
    assert not decoded["B02"].flags.writeable
    assert decoded["B02"].base is not None


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda v: v[:100], "too short|exceeds the value"),
        (lambda v: v[:-10], "outside|cover"),
        (lambda v: struct.pack("<Q", 10**12) + v[8:], "exceeds the 100000-byte limit"),
        (lambda v: v[:8] + b"[" + v[9:], "not valid JSON"),
        (lambda v: v[:8] + v[8:].replace(b'"U16"', b'"X16"', 1), "unsupported dtype"),
        (lambda v: v[:8] + v[8:].replace(b"[20,20]", b"[99999,99999]", 1), "needs"),
        (lambda v: b"\x01\x00", "too short"),
    ],
)
def test_malformed_values_are_rejected_naming_the_key(mutate, reason):
    value = mutate(encode_s2(s2_arrays()))
    with pytest.raises(ValueDecodeError, match=reason) as excinfo:
        check_value("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57", value, "S2")
    assert "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57" in str(excinfo.value)


def test_foreign_value_kind_rejected():
    value = encode_reference_map(np.zeros((120, 120), np.uint16))
    with pytest.raises(ValueDecodeError, match="S2 value holds tensors"):
        check_value("key", value, "S2")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_decoder_never_crashes_unexpectedly(data):
    with contextlib.suppress(ValueDecodeError):
        decode_value("fuzz", data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 160_831), st.integers(0, 255))
def test_fuzz_single_byte_corruption_in_header(position, byte):
    value = bytearray(encode_s2(s2_arrays()))
    header_end = 8 + struct.unpack("<Q", value[:8])[0]
    position %= header_end
    value[position] = byte
    with contextlib.suppress(ValueDecodeError):
        check_value("fuzz", bytes(value), "S2")
