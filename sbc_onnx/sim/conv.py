"""im2col convolution and pooling on batched NumPy arrays (PyTorch semantics).

The row order of `im2col_t` columns is (C_in, k...) so that `weight.reshape(C_out, -1)` multiplies it
directly; calibration uses the same unfolding to build layer Hessians."""

from __future__ import annotations

import numpy as np


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


def _shifted(xpad: np.ndarray, offset: tuple, stride: tuple, out_spatial: tuple) -> np.ndarray:
    """Strided view of xpad (B, C, *padded) holding the inputs that kernel tap `offset` sees."""
    index = (slice(None), slice(None)) + tuple(
        slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, stride, out_spatial)
    )
    return xpad[index]


def _pad(x: np.ndarray, pads) -> np.ndarray:
    return np.pad(x, [(0, 0), (0, 0), *pads]) if any(a or b for a, b in pads) else x


def im2col_t(x: np.ndarray, kernel, stride, pads, dilation) -> tuple[np.ndarray, tuple[int, ...]]:
    """Columns transposed: shape (C_in * prod(kernel), B * prod(out_spatial)), row order (C_in, *kernel).

    Built with one strided slice copy per kernel tap (prod(kernel) copies into contiguous rows), which is
    far faster than reshaping a sliding-window view. `cols_t @ cols_t.T` is the unfolded X^T X."""
    b, c = x.shape[:2]
    xpad = _pad(x, pads)
    out_spatial = conv_output_shape(x.shape[2:], kernel, stride, pads, dilation)
    n_out = int(np.prod(out_spatial))
    cols = np.empty((c, *kernel, b, *out_spatial), dtype=x.dtype)
    for tap in np.ndindex(*kernel):
        offset = tuple(t * d for t, d in zip(tap, dilation))
        cols[(slice(None), *tap)] = np.swapaxes(_shifted(xpad, offset, stride, out_spatial), 0, 1)
    return cols.reshape(c * int(np.prod(kernel)), b * n_out), out_spatial


def conv_forward(x, weight2d, bias, kernel, stride, pads, dilation, groups: int) -> np.ndarray:
    """x (B, C_in, *spatial); weight2d (C_out, C_in/groups * prod(kernel)) -> (B, C_out, *out_spatial)."""
    b, c_in = x.shape[:2]
    c_out = weight2d.shape[0]
    cg, og = c_in // groups, c_out // groups
    outs = []
    for g in range(groups):
        xg = x if groups == 1 else x[:, g * cg : (g + 1) * cg]
        cols_t, out_spatial = im2col_t(xg, kernel, stride, pads, dilation)
        outs.append(weight2d[g * og : (g + 1) * og] @ cols_t)  # (og, B*L) — one GEMM per group
    y = outs[0] if groups == 1 else np.concatenate(outs, axis=0)
    y = np.ascontiguousarray(np.swapaxes(y.reshape(c_out, b, *out_spatial), 0, 1))
    if bias is not None:
        y += bias.reshape((1, c_out) + (1,) * len(kernel))
    return y


def sum_pool2d(x: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """Sum over windows of x (B, C, H, W) with zero padding: one strided add per kernel tap."""
    pads = [(p, p) for p in padding]
    xpad = _pad(x, pads)
    out_spatial = conv_output_shape(x.shape[2:], kernel, stride, pads, (1, 1))
    y = None
    for tap in np.ndindex(*kernel):
        v = _shifted(xpad, tap, stride, out_spatial)
        y = v.copy() if y is None else y.__iadd__(v)
    return y


def max_pool2d(x: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """Maximum over windows of x (B, C, H, W), padding -inf and floor mode as PyTorch's nn.MaxPool2d (and
    ONNX MaxPool): one strided maximum per kernel tap. Padding must be at most half the kernel, so that
    every window holds at least one input (PyTorch's rule)."""
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"padding {tuple(padding)} exceeds half the kernel {tuple(kernel)}")
    pads = [(p, p) for p in padding]
    xpad = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=-np.inf) if any(padding) else x
    out_spatial = conv_output_shape(x.shape[2:], kernel, stride, pads, (1, 1))
    if any(n < 1 for n in out_spatial):
        raise ValueError(f"input {x.shape[2:]} is smaller than the kernel {tuple(kernel)}")
    y = None
    for tap in np.ndindex(*kernel):
        v = _shifted(xpad, tap, stride, out_spatial)
        y = v.copy() if y is None else np.maximum(y, v, out=y)
    return y
