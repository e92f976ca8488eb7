"""Bits of weight storage a layer takes in an output file (what a memory budget counts).

PROVISIONAL: to be aligned with the compact encodings of io/onnx_export.py and io/nir_io.py.
"""

from __future__ import annotations

import math

__all__ = ["weight_storage_bits"]


def weight_storage_bits(shape: tuple, kept: int, bits: int | None) -> int:
    n = math.prod(shape)
    value = 32 if bits is None else bits
    scales = 0 if bits is None else 32 * shape[0]
    dense = n * value
    masked = n + kept * value
    return min(dense, masked) + scales
