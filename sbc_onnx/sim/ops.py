"""The simulator step of each primitive: `init_state(x)` and `step(x, state) -> (y, state)`, in a registry.

Inputs `x` are batched (B, *shape). State is created from the first input's shape, so no shape inference
is needed. Every neuron kind runs the one `Neuron` step built from its catalogue stages
(sbc_onnx/primitives.py): per stage s = (1-k) s + k leak + k g drive (k = dt/tau for Euler,
1 - exp(-dt/tau) for the exact integrator; s += g drive for an integrator), then threshold and reset
(v = v_reset or v -= v_threshold) on the last stage.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import nir

from ..errors import SbcError
from ..primitives import NEURON, kinds, primitive
from .config import SimConfig
from .conv import as_tuple, conv_forward, conv_padding, max_pool2d, sum_pool2d

REGISTRY: dict[str, Callable[[Any, SimConfig], "Op"]] = {}


def register(*names: str):
    def deco(cls):
        for n in names:
            REGISTRY[n] = cls
        return cls

    return deco


def build_op(name: str, node: Any, cfg: SimConfig) -> "Op":
    kind = type(node).__name__
    if kind not in REGISTRY:
        raise SbcError(f"node {name!r} has type {kind}, which the simulator does not support "
                       f"(supported: {', '.join(sorted(REGISTRY))})")
    try:
        return REGISTRY[kind](node, cfg)
    except (ValueError, TypeError) as e:
        raise SbcError(f"node {name!r} ({kind}): invalid parameters: {e}") from e


def _arr(v, cfg: SimConfig, default: float | None = None) -> np.ndarray:
    if v is None:
        v = default
    return np.asarray(v, dtype=cfg.dtype)


class Op:
    def __init__(self, node: Any, cfg: SimConfig):
        self.node, self.cfg = node, cfg
        self.spiking = primitive(node).spiking

    def init_state(self, x: np.ndarray) -> Any:
        return None

    def step(self, x: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        raise NotImplementedError


@register("Input", "Output")
class Identity(Op):
    def step(self, x, state):
        return x, state


@register("Affine", "Linear")
class Dense(Op):
    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        self.w_t = np.ascontiguousarray(_arr(node.weight, cfg).T)  # (in, out): y = x @ W^T
        self.bias = _arr(node.bias, cfg) if isinstance(node, nir.Affine) else None

    def step(self, x, state):
        y = x @ self.w_t
        if self.bias is not None:
            y = y + self.bias
        return y, state


@register("Scale")
class Scale(Op):
    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        self.scale = _arr(node.scale, cfg)

    def step(self, x, state):
        return x * self.scale, state


@register("Conv1d", "Conv2d")
class Conv(Op):
    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        w = _arr(node.weight, cfg)
        nd = w.ndim - 2
        self.kernel = tuple(w.shape[2:])
        self.stride = as_tuple(node.stride, nd)
        self.dilation = as_tuple(node.dilation, nd)
        self.pads = conv_padding(node.padding, self.kernel, self.dilation, self.stride)
        self.groups = int(np.asarray(node.groups).reshape(-1)[0])
        self.weight2d = np.ascontiguousarray(w.reshape(w.shape[0], -1))
        bias = getattr(node, "bias", None)
        self.bias = None if bias is None else _arr(bias, cfg)

    def step(self, x, state):
        y = conv_forward(x, self.weight2d, self.bias, self.kernel, self.stride, self.pads,
                         self.dilation, self.groups)
        return y, state


class _Window(Op):
    """A 2d pooling op: the node's kernel_size, stride and padding as pairs."""

    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        self.kernel = as_tuple(node.kernel_size, 2)
        self.stride = as_tuple(node.stride, 2)
        self.padding = as_tuple(node.padding, 2)


@register("SumPool2d", "AvgPool2d")
class Pool(_Window):
    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        self.norm = 1.0 / (self.kernel[0] * self.kernel[1]) if isinstance(node, nir.AvgPool2d) else None

    def step(self, x, state):
        y = sum_pool2d(x, self.kernel, self.stride, self.padding)
        return (y * self.norm if self.norm is not None else y), state


@register("MaxPool2d")
class MaxPool(_Window):
    """sbc_onnx/nodes.py MaxPool2d: window maximum, padding -inf, floor mode (PyTorch nn.MaxPool2d)."""

    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"kernel {self.kernel} and stride {self.stride} must be >= 1, padding "
                             f"{self.padding} >= 0")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel)):
            raise ValueError(f"padding {self.padding} exceeds half the kernel {self.kernel}")

    def step(self, x, state):
        return max_pool2d(x, self.kernel, self.stride, self.padding), state


@register("Flatten")
class Flatten(Op):
    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        self.start = int(np.asarray(node.start_dim).reshape(-1)[0])
        self.end = int(np.asarray(node.end_dim).reshape(-1)[0])

    def step(self, x, state):
        nd = x.ndim - 1  # NIR dims exclude the batch axis
        start = self.start % nd + 1
        end = self.end % nd + 1
        return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1 :]), state


@register("Threshold")
class Threshold(Op):
    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        self.threshold = _arr(node.threshold, cfg)

    def step(self, x, state):
        return (x > self.threshold).astype(self.cfg.dtype), state


@register("Delay")
class Delay(Op):
    """y[t] = x[t - d] with d = round(delay / dt) steps, per element (ring buffer of past inputs)."""

    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        self.steps = np.rint(np.asarray(node.delay, dtype=np.float64) / cfg.dt).astype(np.int64)
        if (self.steps < 0).any():
            raise ValueError("negative delay")
        self.depth = int(self.steps.max()) + 1 if self.steps.size else 1

    def init_state(self, x):
        return [np.zeros((self.depth,) + x.shape, dtype=x.dtype), 0]

    def step(self, x, state):
        buf, t = state
        buf[t % self.depth] = x
        if self.depth == 1:
            return x, state
        idx = (t - np.broadcast_to(self.steps, x.shape[1:])) % self.depth
        y = np.take_along_axis(buf, idx[None, None].repeat(x.shape[0], axis=1), axis=0)[0]
        # entries whose delay reaches before t=0 read the zero-initialised buffer: correct
        state[1] = t + 1
        return y, state


class Neuron(Op):
    """Every neuron primitive: its catalogue stages integrated in order, then threshold and reset
    (sbc_onnx/primitives.py). The arithmetic per stage is keep*s + leak_in + gain*drive."""

    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        self.prim = primitive(node)
        self.stages = []  # (state name, keep | None, leak_in | None, gain)
        for st, k in zip(self.prim.stages, self.prim.decays(node, cfg)):
            g = _arr(getattr(node, st.gain, None) if st.gain else None, cfg, 1.0)
            if k is None:
                self.stages.append((st.state, None, None, g))
            else:
                k = k.astype(cfg.dtype)
                leak = k * _arr(getattr(node, st.leak), cfg) if st.leak else None
                self.stages.append((st.state, 1 - k, leak, k * g))
        self.spiking = self.prim.spiking
        if self.spiking:
            self.threshold = _arr(getattr(node, self.prim.threshold), cfg)
            self.v_reset = _arr(getattr(node, self.prim.reset, None), cfg, 0.0)

    def init_state(self, x):
        shape = np.broadcast_shapes(x.shape, (1,) + np.shape(self.stages[-1][3]))
        return {name: np.zeros(shape, dtype=self.cfg.dtype) for name, *_ in self.stages}

    def step(self, x, state):
        drive = x
        last = len(self.stages) - 1
        for j, (name, keep, leak_in, gain) in enumerate(self.stages):
            old = state[name]
            if keep is None:
                new = old + gain * drive
            elif leak_in is None:
                new = keep * old + gain * drive
            else:
                new = keep * old + leak_in + gain * drive
            state[name] = new
            # the next stage is driven by this stage's new value, or last step's (NIR reference order)
            drive = old if j < last and self.cfg.cuba_order == "previous_current" else new
        return self.fire(state)

    def fire(self, state):
        name = self.stages[-1][0]
        v = state[name]
        if not self.spiking:
            return v.copy(), state
        s = v > self.threshold
        if self.cfg.reset == "to_v_reset":
            state[name] = np.where(s, self.v_reset, v)
        else:
            state[name] = v - s * self.threshold
        return s.astype(self.cfg.dtype), state


for _kind in kinds(NEURON):
    REGISTRY[_kind] = Neuron
