"""Archive values: safetensors bytes holding one tensor per band (reBEN's LMDB values: byte-identical to the archive reBEN users hold).

Encoding goes through the ``safetensors`` library so values are byte-identical
to the reference tool's. Decoding is a strict, allocation-free parser: archive
values are untrusted input (a truncated or foreign value, a header that lies
about its length, offsets out of range, unknown dtypes, absurd shapes), and
each fault raises :class:`ValueDecodeError` naming the key.

Owns: encoding S2/S1/reference-map values and strictly decoding and checking values
(:class:`ValueDecodeError`), key kinds.
Does not own: where values are stored (``format.shards``, ``format.reader``).
May import: ``format.bands``, safetensors, numpy and the standard library.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import save as _safetensors_save

from reben_tools.format.bands import ALL_BANDS, S1_BANDS, S2_BANDS

REFERENCE_MAP_TENSOR = "Data"
MAX_HEADER_BYTES = 100_000
"""Largest header accepted when decoding; reBEN's are under 1 KB."""

_DTYPES: dict[str, np.dtype[Any] | None] = {  # None: a safetensors dtype numpy cannot hold
    "U8": np.dtype("uint8"),
    "I8": np.dtype("int8"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "BF16": None,
    "BOOL": np.dtype("bool"),
}


class ValueDecodeError(ValueError):
    """An archive value is not a valid safetensors value of the expected kind."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"archive value {key!r}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self) -> tuple[type[ValueDecodeError], tuple[str, str]]:  # picklable across worker processes
        return type(self), (self.key, self.reason)


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    """safetensors bytes of ``tensors`` with no ``__metadata__`` (the library sorts them)."""
    return _safetensors_save({name: np.ascontiguousarray(a) for name, a in tensors.items()})


def _check_band_array(name: str, array: np.ndarray, expected: Mapping[str, Any]) -> None:
    band = expected[name]
    if array.dtype != np.dtype(band.dtype):
        raise ValueError(f"band {name}: dtype {array.dtype}, expected {band.dtype}")
    if array.shape != (band.size, band.size):
        raise ValueError(f"band {name}: shape {array.shape}, expected {(band.size, band.size)}")


def encode_s2(bands: Mapping[str, np.ndarray]) -> bytes:
    """The value of an S2 patch: the 12 L2A bands, uint16, at native size (160,832 bytes).

    Raises:
        ValueError: a band is missing, extra, or of the wrong dtype or shape.
    """
    if set(bands) != set(S2_BANDS):
        raise ValueError(
            f"S2 value needs exactly bands {list(S2_BANDS)}; missing {sorted(set(S2_BANDS) - set(bands))}, "
            f"extra {sorted(set(bands) - set(S2_BANDS))}"
        )
    for name, array in bands.items():
        _check_band_array(name, array, S2_BANDS)
    return encode_tensors(bands)


def encode_s1(bands: Mapping[str, np.ndarray]) -> bytes:
    """The value of an S1 patch: VV and VH, float32 dB, 120x120 (115,344 bytes)."""
    if set(bands) != set(S1_BANDS):
        raise ValueError(f"S1 value needs exactly bands ['VV', 'VH'], got {sorted(bands)}")
    for name, array in bands.items():
        _check_band_array(name, array, S1_BANDS)
    return encode_tensors(bands)


def encode_reference_map(reference_map: np.ndarray) -> bytes:
    """The value of a reference map: one uint16 120x120 tensor named ``Data``."""
    if reference_map.dtype != np.uint16 or reference_map.shape != (120, 120):
        raise ValueError(f"reference map must be uint16 120x120, got {reference_map.dtype} {reference_map.shape}")
    return encode_tensors({REFERENCE_MAP_TENSOR: reference_map})


def read_header(key: str, value: bytes | memoryview) -> dict[str, dict[str, Any]]:
    """Parse and validate a safetensors header without touching the tensor data.

    Returns ``{tensor name: {"dtype", "shape", "data_offsets"}}`` where every
    offset pair is checked to lie inside the value and to match dtype and shape.
    """
    view = memoryview(value)
    if len(view) < 8:
        raise ValueDecodeError(key, f"value is {len(view)} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack_from("<Q", view, 0)
    if header_len > MAX_HEADER_BYTES:
        raise ValueDecodeError(key, f"declared header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + header_len > len(view):
        raise ValueDecodeError(
            key, f"declared header length {header_len} exceeds the value's {len(view)} bytes (truncated?)"
        )
    try:
        header = json.loads(bytes(view[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueDecodeError(key, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueDecodeError(key, "header is not a JSON object")
    data_len = len(view) - 8 - header_len
    tensors = {}
    covered = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueDecodeError(key, f"tensor {name!r}: header entry is malformed")
        dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise ValueDecodeError(key, f"tensor {name!r}: unsupported dtype {info['dtype']!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(s, int) and 0 <= s < 2**31 for s in shape)):
            raise ValueDecodeError(key, f"tensor {name!r}: malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueDecodeError(key, f"tensor {name!r}: malformed data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise ValueDecodeError(key, f"tensor {name!r}: data_offsets {offsets} outside the {data_len} data bytes")
        nbytes = dtype.itemsize * math.prod(shape)
        if end - begin != nbytes:
            raise ValueDecodeError(
                key, f"tensor {name!r}: {end - begin} data bytes, but {info['dtype']} {shape} needs {nbytes}"
            )
        covered += nbytes
        tensors[name] = {
            "dtype": dtype,
            "shape": tuple(shape),
            "begin": 8 + header_len + begin,
            "end": 8 + header_len + end,
        }
    if covered != data_len:
        raise ValueDecodeError(key, f"tensors cover {covered} of {data_len} data bytes")
    return tensors


def decode_value(key: str, value: bytes | memoryview) -> dict[str, np.ndarray]:
    """Decode a value into read-only arrays that share memory with ``value`` (no copy)."""
    view = memoryview(value)
    out = {}
    for name, info in read_header(key, view).items():
        out[name] = np.frombuffer(view[info["begin"] : info["end"]], dtype=info["dtype"]).reshape(info["shape"])
    return out


_EXPECTED_TENSORS: dict[str, dict[str, tuple[tuple[int, int], np.dtype]]] = {
    "reference_map": {REFERENCE_MAP_TENSOR: ((120, 120), np.dtype("<u2"))},
    **{
        kind: {b.name: ((b.size, b.size), np.dtype(b.dtype).newbyteorder("<")) for b in table.values()}
        for kind, table in (("S2", S2_BANDS), ("S1", S1_BANDS))
    },
}
"""Tensor name -> (shape, little-endian dtype) of each kind of value, for :func:`check_value`."""


def check_value(key: str, value: bytes | memoryview, kind: str) -> dict[str, np.ndarray]:
    """Decode a value and check its tensors against the kind's band table.

    ``kind`` is ``"S2"``, ``"S1"`` or ``"reference_map"``. Returns the arrays.
    """
    tensors = decode_value(key, value)
    expected = _EXPECTED_TENSORS.get(kind) if isinstance(kind, str) else None
    if expected is None:
        raise ValueError(f"unknown value kind {kind!r}")
    if set(tensors) != set(expected):
        raise ValueDecodeError(key, f"{kind} value holds tensors {sorted(tensors)}, expected {sorted(expected)}")
    for name, (shape, dtype) in expected.items():
        if tensors[name].shape != shape or tensors[name].dtype != dtype:
            raise ValueDecodeError(
                key, f"tensor {name}: {tensors[name].dtype} {tensors[name].shape}, expected {dtype} {shape}"
            )
    return tensors


def kind_of_key(key: str) -> str:
    """``"reference_map"``, ``"S1"`` or ``"S2"`` from the archive key's form."""
    if key.endswith("_reference_map"):
        return "reference_map"
    return "S1" if key.startswith("S1") else "S2"


__all__ = [
    "ALL_BANDS",
    "REFERENCE_MAP_TENSOR",
    "ValueDecodeError",
    "check_value",
    "decode_value",
    "encode_reference_map",
    "encode_s1",
    "encode_s2",
    "encode_tensors",
    "kind_of_key",
    "read_header",
]
