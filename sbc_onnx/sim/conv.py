"""im2col convolution and pooling on batched NumPy arrays (PyTorch semantics).

The column order of `im2col` rows is (C_in, k...) so that `weight.reshape(C_out, -1)` multiplies it
directly; calibration uses the same unfolding to build layer Hessians."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def as_tuple(v, n: int) -> tuple:
    """NIR stores stride/padding/dilation as ints, arrays or strings: normalise to an n-tuple."""
    if isinstance(v, str):
        return (v,) * n
    a = np.asarray(v).reshape(-1)
    if a.size == 1:
        return tuple(int(a[0]) for _ in range(n))
    if a.size != n:
        raise ValueError(f"expected {n} values, got {a.tolist()}")
    return tuple(int(x) for x in a)


def conv_padding(padding, kernel: tuple, dilation: tuple, stride: tuple) -> list[tuple[int, int]]:
    """(before, after) zero padding per spatial dim; 'same' as PyTorch (extra pixel after)."""
    if isinstance(padding, bytes):
        padding = padding.decode()
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * len(kernel)
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError("padding='same' requires stride 1 (as in PyTorch)")
            total = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return [(t // 2, t - t // 2) for t in total]
        raise ValueError(f"unknown padding {padding!r}")
    p = as_tuple(padding, len(kernel))
    return [(x, x) for x in p]


def conv_output_shape(in_spatial, kernel, stride, pads, dilation) -> tuple[int, ...]:
    return tuple(
        (n + a + b - d * (k - 1) - 1) // s + 1
        for n, k, s, (a, b), d in zip(in_spatial, kernel, stride, pads, dilation)
    )


def _windows(x: np.ndarray, kernel, stride, pads, dilation) -> np.ndarray:
    """View of shape (B, C, *out_spatial, *kernel) over the zero-padded input (no copy but the pad)."""
    nd = len(kernel)
    if any(a or b for a, b in pads):
        x = np.pad(x, [(0, 0), (0, 0), *pads])
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    w = sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)
    index += tuple(slice(None, None, d) for d in dilation)
    return w[index]


def im2col(x: np.ndarray, kernel, stride, pads, dilation) -> tuple[np.ndarray, tuple[int, ...]]:
    """Rows = (batch, output position), columns = (C_in, *kernel). Returns (cols, out_spatial)."""
    nd = len(kernel)
    w = _windows(x, kernel, stride, pads, dilation)
    out_spatial = w.shape[2 : 2 + nd]
    # (B, C, *out, *k) -> (B, *out, C, *k)
    perm = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    cols = w.transpose(perm).reshape(x.shape[0] * int(np.prod(out_spatial)), -1)
    return cols, out_spatial


def conv_forward(x, weight2d, bias, kernel, stride, pads, dilation, groups: int) -> np.ndarray:
    """x (B, C_in, *spatial); weight2d (C_out, C_in/groups * prod(kernel)) -> (B, C_out, *out_spatial)."""
    b, c_in = x.shape[:2]
    c_out = weight2d.shape[0]
    outs = []
    cg, og = c_in // groups, c_out // groups
    for g in range(groups):
        xg = x if groups == 1 else x[:, g * cg : (g + 1) * cg]
        cols, out_spatial = im2col(xg, kernel, stride, pads, dilation)
        outs.append(cols @ weight2d[g * og : (g + 1) * og].T)  # (B*L, og) — one GEMM
    y = outs[0] if groups == 1 else np.concatenate(outs, axis=1)
    nd = len(kernel)
    y = y.reshape(b, *out_spatial, c_out).transpose(0, nd + 1, *range(1, nd + 1))
    if bias is not None:
        y = y + bias.reshape((1, c_out) + (1,) * nd)
    return np.ascontiguousarray(y)


def sum_pool2d(x: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """Sum over windows of x (B, C, H, W); zero padding."""
    kh, kw = kernel
    if tuple(stride) == (kh, kw) and not any(padding) and x.shape[2] % kh == 0 and x.shape[3] % kw == 0:
        b, c, h, w = x.shape
        return x.reshape(b, c, h // kh, kh, w // kw, kw).sum(axis=(3, 5))
    pads = [(p, p) for p in padding]
    w = _windows(x, kernel, stride, pads, (1, 1))
    return w.sum(axis=(-2, -1))
