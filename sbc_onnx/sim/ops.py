"""One NIR primitive = one small class: `init_state(x)` and `step(x, state) -> (y, state)`.

Inputs `x` are batched (B, *shape). State is created from the first input's shape, so no shape inference
is needed. Neuron updates per step (k = dt/tau for Euler, 1 - exp(-dt/tau) for the exact integrator):

    LIF      v = (1-k) v + k (v_leak + r I);  s = v > v_threshold;  reset v = v_reset | v -= v_threshold
    LI       v as LIF, output v (no spikes)
    IF       v = v + r I (per step, dt not used);  spike/reset as LIF
    I        v = v + r I, output v
    CubaLIF  I_syn = (1-ks) I_syn + ks w_in x;  v as LIF driven by I_syn (new or previous, cuba_order)
    CubaLI   the same without spikes, output v
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import nir

from ..errors import SbcError
from .config import SimConfig
from .conv import as_tuple, conv_forward, conv_padding, sum_pool2d

REGISTRY: dict[str, Callable[[Any, SimConfig], "Op"]] = {}
SPIKING = ("LIF", "IF", "CubaLIF", "Threshold")
WEIGHT_NODES = ("Affine", "Linear", "Conv1d", "Conv2d")


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
    spiking = False

    def __init__(self, node: Any, cfg: SimConfig):
        self.node, self.cfg = node, cfg

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


@register("SumPool2d", "AvgPool2d")
class Pool(Op):
    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        self.kernel = as_tuple(node.kernel_size, 2)
        self.stride = as_tuple(node.stride, 2)
        self.padding = as_tuple(node.padding, 2)
        self.norm = 1.0 / (self.kernel[0] * self.kernel[1]) if isinstance(node, nir.AvgPool2d) else None

    def step(self, x, state):
        y = sum_pool2d(x, self.kernel, self.stride, self.padding)
        return (y * self.norm if self.norm is not None else y), state


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
    spiking = True

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


def _decay(tau: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """Fraction k of the way to the target per step: dt/tau (Euler) or 1-exp(-dt/tau) (exact)."""
    tau = np.asarray(tau, dtype=np.float64)
    with np.errstate(divide="ignore"):
        k = cfg.dt / tau if cfg.integrator == "euler" else -np.expm1(-cfg.dt / tau)
    return k.astype(cfg.dtype)


class _Membrane(Op):
    """Shared leaky/non-leaky membrane with optional threshold and reset."""

    leaky = True
    has_threshold = True

    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        r = _arr(node.r, cfg)
        if self.leaky:
            k = _decay(node.tau if hasattr(node, "tau") else node.tau_mem, cfg)
            v_leak = _arr(node.v_leak, cfg)
            self.keep, self.leak_in, self.gain = (1 - k), k * v_leak, k * r
        else:
            self.keep, self.leak_in, self.gain = None, None, r
        if self.has_threshold:
            self.threshold = _arr(node.v_threshold, cfg)
            self.v_reset = _arr(getattr(node, "v_reset", None), cfg, 0.0)
        self.spiking = self.has_threshold

    def init_state(self, x):
        shape = np.broadcast_shapes(x.shape, (1,) + np.shape(self.gain))
        return {"v": np.zeros(shape, dtype=self.cfg.dtype)}

    def integrate(self, v, current):
        if self.keep is None:
            return v + self.gain * current
        return self.keep * v + self.leak_in + self.gain * current

    def fire(self, state):
        v = state["v"]
        if not self.has_threshold:
            return v.copy(), state
        s = v > self.threshold
        if self.cfg.reset == "to_v_reset":
            state["v"] = np.where(s, self.v_reset, v)
        else:
            state["v"] = v - s * self.threshold
        return s.astype(self.cfg.dtype), state

    def step(self, x, state):
        state["v"] = self.integrate(state["v"], x)
        return self.fire(state)


@register("LIF")
class LIF(_Membrane):
    pass


@register("LI")
class LI(_Membrane):
    has_threshold = False


@register("IF")
class IF(_Membrane):
    leaky = False


@register("I")
class Integrator(_Membrane):
    leaky = False
    has_threshold = False


@register("CubaLIF")
class CubaLIF(_Membrane):
    def __init__(self, node, cfg):
        super().__init__(node, cfg)
        ks = _decay(node.tau_syn, cfg)
        w_in = _arr(node.w_in, cfg, 1.0)
        self.syn_keep, self.syn_gain = 1 - ks, ks * w_in

    def init_state(self, x):
        state = super().init_state(x)
        state["i"] = np.zeros_like(state["v"])
        return state

    def step(self, x, state):
        i_new = self.syn_keep * state["i"] + self.syn_gain * x
        drive = i_new if self.cfg.cuba_order == "current_first" else state["i"]
        state["i"] = i_new
        state["v"] = self.integrate(state["v"], drive)
        return self.fire(state)


@register("CubaLI")
class CubaLI(CubaLIF):
    has_threshold = False
