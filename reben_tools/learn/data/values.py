"""Untrusted safetensors values of an archive: validated, cached tensor layouts and zero-copy band views.

Owns: LayoutCache.
Does not own: the value format and its full check (format/codec.py), reading values from LMDB (format/reader.py).
May import: numpy; reben_tools.format.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

from reben_tools.format import codec

_MAX_CACHED_LAYOUTS = 64


class LayoutCache:
    """Validated tensor layouts of safetensors values, keyed by header bytes and value length.

    The first value with a given header is fully checked with
    :func:`reben_tools.format.codec.check_value` (dtypes, shapes, offsets, tensor set of its
    kind); later values with byte-identical headers and the same length share the layout,
    since the layout is a function of exactly those. Faults raise ``ValueDecodeError``.
    """

    def __init__(self) -> None:
        self._layouts: dict[tuple[str, bytes, int], dict[str, tuple[int, np.dtype, int, tuple[int, ...]]]] = {}

    def arrays(self, key: str | bytes, value: memoryview, kind: str, bands: Iterable[str]) -> dict[str, np.ndarray]:
        """Read-only zero-copy views ``{band: array}`` of ``bands`` in ``value``."""
        layout = self._layout(key, value, kind)
        out = {}
        for band in bands:
            offset, dtype, count, shape = layout[band]
            out[band] = np.frombuffer(value, dtype, count, offset).reshape(shape)
        return out

    def _layout(self, key: str | bytes, value: memoryview, kind: str) -> dict:
        n = len(value)
        header = None
        if n >= 8:
            (header_len,) = struct.unpack_from("<Q", value, 0)
            if header_len <= codec.MAX_HEADER_BYTES and 8 + header_len <= n:
                header = bytes(value[8 : 8 + header_len])
                layout = self._layouts.get((kind, header, n))
                if layout is not None:
                    return layout
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        codec.check_value(name, value, kind)  # raises ValueDecodeError naming the key
        layout = {
            tensor: (info["begin"], info["dtype"], int(np.prod(info["shape"])), info["shape"])
            for tensor, info in codec.read_header(name, value).items()
        }
        if header is not None:
            if len(self._layouts) >= _MAX_CACHED_LAYOUTS:
                self._layouts.clear()
            self._layouts[(kind, header, n)] = layout
        return layout
