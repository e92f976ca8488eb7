"""torch modules and builders shared by the torch bridges (imported only by them, so torch stays lazy).

NIR shapes have no batch axis, so a NIR Flatten or pooling must work whether the torch input has one or
not: `NIRFlatten` counts its dimensions from the end (the known per-sample rank), where ``nn.Flatten(0)``
from snnTorch's importer would fold the batch into the features ("mat1 and mat2 shapes cannot be
multiplied (1x10240 and 512x5)")."""

from __future__ import annotations

import nir
import numpy as np
import torch


def tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(np.asarray(a, dtype=np.float32)))


def _ints(v, n: int = 2) -> tuple[int, ...]:
    a = np.ravel(np.asarray(v)).astype(int)
    return tuple(int(i) for i in (np.repeat(a, n) if a.size == 1 else a))


class NIRFlatten(torch.nn.Module):
    """NIR Flatten(start_dim, end_dim) on (..., *input_shape) inputs, with or without a batch axis."""

    def __init__(self, start_dim: int, end_dim: int, rank: int):
        super().__init__()
        # dims counted from the end: the per-sample rank is fixed, the leading (batch) axes are not
        self.start = int(start_dim) - rank if start_dim >= 0 else int(start_dim)
        self.end = int(end_dim) - rank if end_dim >= 0 else int(end_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start, self.end)


def flatten(node: nir.Flatten) -> NIRFlatten:
    shape = node.input_type.get("input") if node.input_type else None
    if shape is None:
        raise ValueError("nir.Flatten without an input_type: its rank is unknown (call graph.infer_types())")
    return NIRFlatten(int(node.start_dim), int(node.end_dim), len(np.ravel(shape)))


class Scale(torch.nn.Module):
    """NIR Scale: y = s * x (one factor per neuron)."""

    def __init__(self, s):
        super().__init__()
        self.register_buffer("s", tensor(s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s * x


def scale(node: nir.Scale) -> Scale:
    return Scale(node.scale)


def avgpool2d(node: nir.AvgPool2d) -> torch.nn.AvgPool2d:
    # count_include_pad=True divides by the full window, like NIR AvgPool2d and the project's simulator
    return torch.nn.AvgPool2d(_ints(node.kernel_size), _ints(node.stride), _ints(node.padding))


def linear(node) -> torch.nn.Linear:
    w = np.asarray(node.weight)
    has_bias = isinstance(node, nir.Affine)
    m = torch.nn.Linear(w.shape[-1], w.shape[-2], bias=has_bias)
    m.weight.data = tensor(w)
    if has_bias:
        m.bias.data = tensor(node.bias)
    return m


def conv2d(node: nir.Conv2d) -> torch.nn.Conv2d:
    w = np.asarray(node.weight)
    padding = node.padding if isinstance(node.padding, str) else _ints(node.padding)
    m = torch.nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[-2:]), stride=_ints(node.stride),
                        padding=padding, dilation=_ints(node.dilation), groups=int(node.groups))
    m.weight.data = tensor(w)
    m.bias.data = tensor(node.bias) if node.bias is not None else torch.zeros(w.shape[0])
    return m


def pool_node(m: torch.nn.Module) -> nir.AvgPool2d:
    """torch AvgPool2d -> NIR (the NIR node divides by the whole window: count_include_pad must hold)."""
    if not m.count_include_pad and np.any(np.asarray(_ints(m.padding)) > 0):
        raise ValueError("AvgPool2d(count_include_pad=False) with padding has no NIR equivalent")
    if m.ceil_mode or m.divisor_override is not None:
        raise ValueError("AvgPool2d with ceil_mode or divisor_override has no NIR equivalent")
    stride = m.kernel_size if m.stride is None else m.stride
    return nir.AvgPool2d(kernel_size=np.array(_ints(m.kernel_size)), stride=np.array(_ints(stride)),
                         padding=np.array(_ints(m.padding)))
