"""Non-zero fan-in / fan-out of a weight layer, exact for convolutions (borders, stride, dilation, groups).

fan-out of input position (c, y, x) = number of non-zero weights W[o, c, ky, kx] whose output position
oy = (y + pad - ky*dil) / stride is an integer inside the output map (same for x): the synaptic events one
input spike causes.  Dense layers: non-zero entries of the input's column.  fan-in of an output neuron:
non-zero entries of its row (convolutions: of its output channel's kernel, the interior maximum).
"""

from __future__ import annotations

import numpy as np

from ..graph import node_shape
from ..sim.conv import as_tuple, conv_output_shape, conv_padding


def _conv_geometry(node):
    w = np.asarray(node.weight)
    nd = w.ndim - 2
    kernel = tuple(w.shape[2:])
    stride = as_tuple(node.stride, nd)
    dilation = as_tuple(node.dilation, nd)
    pads = conv_padding(node.padding, kernel, dilation, stride)
    groups = int(np.asarray(node.groups).reshape(-1)[0])
    in_shape = node_shape(node, "input")
    if in_shape is None or len(in_shape) != nd + 1:
        raise ValueError("convolution without a known input shape")
    out_sp = conv_output_shape(in_shape[1:], kernel, stride, pads, dilation)
    return w, nd, kernel, stride, dilation, pads, groups, tuple(in_shape), out_sp


def _valid(n_in: int, k: int, s: int, pad: int, d: int, n_out: int) -> np.ndarray:
    """V[k_i, y] = 1 if input y reaches an output through tap k_i."""
    y = np.arange(n_in)[None, :]
    kk = np.arange(k)[:, None]
    num = y + pad - kk * d
    return ((num % s == 0) & (num >= 0) & (num // s < n_out)).astype(np.float64)


def layer_fanout(node, mask: np.ndarray | None = None) -> np.ndarray:
    """Non-zero fan-out per input element (shape: the layer's input shape, or (d_in,) for dense)."""
    w = np.asarray(node.weight)
    nz = (w != 0) if mask is None else np.asarray(mask, bool)
    if w.ndim == 2:
        return nz.sum(axis=0).astype(np.float64)
    w, nd, kernel, stride, dilation, pads, groups, in_shape, out_sp = _conv_geometry(node)
    c_out, c_in_g = w.shape[:2]
    og = c_out // groups
    cnt = np.zeros((in_shape[0],) + kernel)
    for g in range(groups):
        cnt[g * c_in_g:(g + 1) * c_in_g] = nz[g * og:(g + 1) * og].sum(axis=0)
    V = [_valid(in_shape[1 + i], kernel[i], stride[i], pads[i][0], dilation[i], out_sp[i]) for i in range(nd)]
    if nd == 1:
        return np.einsum("ck,ky->cy", cnt, V[0])
    return np.einsum("ckl,ky,lx->cyx", cnt, V[0], V[1])


def layer_fanin(node) -> np.ndarray:
    """Non-zero fan-in per output channel / neuron (interior positions for convolutions)."""
    w = np.asarray(node.weight)
    return np.count_nonzero(w.reshape(w.shape[0], -1), axis=1)


def layer_signed_rows(node) -> tuple[int, int]:
    """(inputs with a positive weight to any output, inputs with a negative one): the excitatory and inhibitory
    synapse rows a layer takes when a row carries one input with one sign to all its neurons (BrainScaleS-2)."""
    w = np.asarray(node.weight)
    w = w.reshape(w.shape[0], -1)
    return int(np.any(w > 0, axis=0).sum()), int(np.any(w < 0, axis=0).sum())


def dense_macs_per_step(node) -> int:
    """Multiply-accumulates of one time step of the layer, counting every weight (dense)."""
    w = np.asarray(node.weight)
    if w.ndim == 2:
        return int(w.size)
    w, _nd, _kernel, _stride, _dilation, _pads, _groups, _in_shape, out_sp = _conv_geometry(node)
    return int(w.size * int(np.prod(out_sp)))


def nonzero_macs_per_step(node) -> int:
    """Multiply-accumulates with non-zero weights that land inside the map (= sum of the fan-out)."""
    return round(float(layer_fanout(node).sum()))
