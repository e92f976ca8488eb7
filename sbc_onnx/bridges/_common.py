"""Helpers shared by the bridges (no torch import here)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..sim.config import RESETS, SimConfig


def full(value: Any, shape: tuple[int, ...], name: str = "parameter", dtype=np.float64) -> np.ndarray:
    """`value` (scalar, 0-d or already full) as a C-contiguous array of exactly `shape`.

    NIR 1.0.8 fails type checks on 0-d neuron parameters and its gzip writer crashes on them, so every
    neuron parameter leaves a bridge as a full per-neuron array."""
    a = to_numpy(value).astype(dtype, copy=False)
    try:
        return np.ascontiguousarray(np.broadcast_to(a, shape)).astype(dtype, copy=True)
    except ValueError as e:
        raise ValueError(f"{name} of shape {a.shape} does not broadcast to the layer shape {shape}") from e


def to_numpy(value: Any) -> np.ndarray:
    """torch tensor / number / array -> numpy array (no torch import needed)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def sim_metadata(dt: float, reset: str, **extra: Any) -> dict[str, Any]:
    """Graph metadata saying how an exported graph must be stepped: the bridges' mappings are exact for
    forward Euler at `dt` with the synaptic current updated first (SimConfig's keys), plus `extra`."""
    cfg = SimConfig(dt=dt, integrator="euler", reset=reset, cuba_order="current_first")
    return {**cfg.to_metadata(), **extra}


def meta_value(meta: dict | None, key: str, default: Any = None) -> Any:
    """A metadata value as a plain Python value (nir.read returns numpy scalars and may return bytes)."""
    if not meta or key not in meta:
        return default
    v = meta[key]
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(-1)[0]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode()
    return v


def graph_dt(graph: Any, dt: float | None, default: float | None = None) -> float:
    """dt from the argument, else from graph metadata, else `default`; error if none."""
    if dt is None:
        dt = meta_value(getattr(graph, "metadata", None), "dt", default)
    if dt is None:
        raise ValueError("dt is not in the graph metadata: pass dt= explicitly (NIR graphs carry no time step)")
    dt = float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    return dt


def graph_reset(graph: Any, reset: str | None) -> str:
    """'to_v_reset' or 'subtract': from the argument, else graph metadata, else 'to_v_reset'."""
    if reset is None:
        raw = meta_value(getattr(graph, "metadata", None), "reset", "to_v_reset")
        raw = str(raw).strip().lower()
        reset = "subtract" if "subtract" in raw else "to_v_reset"
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {', '.join(RESETS)}, got {reset!r}")
    return reset


def out_shapes_by_hooks(torch, module, sample, *, first_output: bool = True) -> dict[int, tuple[int, ...]]:
    """Run `module(sample)` once with forward hooks; id(submodule) -> output shape without the batch dim.

    Used to broadcast 0-d neuron parameters to the layer's shape before nirtorch type-checks the graph."""
    shapes: dict[int, tuple[int, ...]] = {}

    def hook(mod, _inp, out):
        y = out
        while first_output and isinstance(y, (tuple, list)) and y:
            y = y[0]
        if isinstance(y, torch.Tensor):
            shapes[id(mod)] = tuple(int(s) for s in y.shape[1:])

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        with torch.no_grad():
            module(sample)
    finally:
        for h in handles:
            h.remove()
    return shapes
