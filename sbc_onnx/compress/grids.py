"""Uniform quantization grids (GPTQ ``Quantizer`` conventions, no MSE search).

A grid maps W to integers q in [qmin, qmax] with  W_hat = scale * (q - zero).
- "symmetric" (the paper's, GPTQ sym): maxq = 2^b - 1, scale = 2 max|w_row| / maxq, levels
  {-2^(b-1) .. 2^(b-1)-1} * scale (one extra negative level).  GPTQ stores unsigned q with
  zero = 2^(b-1); we store the *signed* integer (zero = 0, qmin = -2^(b-1)), which is the same grid.
- "symmetric_restricted": levels +-(2^(b-1)-1) * scale, scale = max|w| / (2^(b-1)-1).
- "asymmetric": min-max over [min(w,0), max(w,0)], unsigned q in [0, 2^b-1], integer zero point.
All-zero rows get scale 1 (any positive value maps 0 to 0) so nothing divides by zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Grid", "make_grid", "quantize", "to_int", "from_int"]

SCHEMES = ("symmetric", "symmetric_restricted", "asymmetric")


@dataclass
class Grid:
    scale: np.ndarray  # (d_out, 1) for channel granularity, shape () for tensor
    zero: np.ndarray   # same shape as scale; integer-valued (0 for the symmetric schemes)
    qmin: int
    qmax: int
    bits: int
    scheme: str


GRANULARITIES = ("channel", "tensor")  # one scale per output row, or one for the whole layer


def make_grid(W: np.ndarray, bits: int, scheme: str = "symmetric", granularity: str = "channel") -> Grid:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown grid scheme {scheme!r}; choose from {SCHEMES}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    bits = int(bits)
    if bits < 1 or (scheme == "symmetric_restricted" and bits < 2):
        raise ValueError(f"{bits} bits is too few for scheme {scheme}")
    W = np.asarray(W, dtype=np.float64)
    axis, keep = (1, True) if granularity == "channel" else (None, False)
    if scheme == "asymmetric":
        lo = np.minimum(W.min(axis=axis, keepdims=keep), 0.0)
        hi = np.maximum(W.max(axis=axis, keepdims=keep), 0.0)
        qmin, qmax = 0, 2**bits - 1
        span = hi - lo
        scale = np.where(span > 0, span / qmax, 1.0)
        zero = np.round(-lo / scale)
    else:
        amax = np.abs(W).max(axis=axis, keepdims=keep)
        if scheme == "symmetric":
            qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
            scale = np.where(amax > 0, 2.0 * amax / (2**bits - 1), 1.0)
        else:
            qmin, qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
            scale = np.where(amax > 0, amax / qmax, 1.0)
        zero = np.zeros_like(scale)
    return Grid(np.asarray(scale, float), np.asarray(zero, float), qmin, qmax, bits, scheme)


def to_int(W: np.ndarray, grid: Grid) -> np.ndarray:
    """Round to nearest (half to even, like torch.round) and clamp: integer codes (int32)."""
    q = np.round(np.asarray(W, dtype=np.float64) / grid.scale) + grid.zero
    return np.clip(q, grid.qmin, grid.qmax).astype(np.int32)


def from_int(q: np.ndarray, grid: Grid) -> np.ndarray:
    return grid.scale * (np.asarray(q, dtype=np.float64) - grid.zero)


def quantize(W: np.ndarray, grid: Grid) -> np.ndarray:
    """W_hat = from_int(to_int(W)) in W's float dtype (clamped to the grid)."""
    W = np.asarray(W)
    out_dtype = W.dtype if np.issubdtype(W.dtype, np.floating) else np.float64
    return from_int(to_int(W, grid), grid).astype(out_dtype)


def infer_grid(w: np.ndarray, max_bits: int = 8):
    """(q, scale, None) if every output channel of `w` lies on a symmetric integer grid of <= max_bits bits
    (float32(q) * scale == w exactly); else None. Tries the coarsest grid first."""
    w = np.asarray(w)
    if w.dtype != np.float32 or w.size == 0:
        return None
    rows = w.reshape(w.shape[0], -1)
    qs, scales = [], []
    limit = 2 ** (max_bits - 1)
    for row in rows:
        amax = float(np.abs(row).max())
        if amax == 0:
            qs.append(np.zeros_like(row, dtype=np.int64))
            scales.append(np.float32(1.0))
            continue
        found = None
        for k in range(1, limit + 1):
            s0 = np.float32(amax / k)  # amax = k * scale up to float32 rounding: try the neighbours too
            for s in (s0, np.nextafter(s0, np.float32(0)), np.nextafter(s0, np.float32(np.inf))):
                q = np.rint(row.astype(np.float64) / s)
                if np.abs(q).max() <= limit and np.array_equal(q.astype(np.float32) * s, row):
                    found = q.astype(np.int64), s
                    break
            if found:
                break
        if found is None:
            return None
        qs.append(found[0])
        scales.append(found[1])
    return np.stack(qs).reshape(w.shape), np.asarray(scales, dtype=np.float32), None
