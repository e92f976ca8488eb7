"""Discretization settings. NIR graphs are continuous-time and carry none of these: they are options,
recorded in graph metadata on write and read back from it as defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from ..errors import SbcError
from ..graph import flatten

log = logging.getLogger("sbc_onnx")

INTEGRATORS = ("euler", "exact")
RESETS = ("to_v_reset", "subtract")
CUBA_ORDERS = ("current_first", "previous_current")

# The settings a model file records (NIR graph metadata, ONNX metadata_props), each under its field name.
# dtype is left out: it says how to compute, not how the model is meant to be stepped.
META_KEYS = ("dt", "integrator", "reset", "cuba_order")
# The command-line option that sets each of them (named in the note about an assumed default).
FLAGS = {"dt": "--dt", "integrator": "--integrator", "reset": "--reset", "cuba_order": "--cuba-order"}


@dataclass(frozen=True)
class SimConfig:
    """How the continuous NIR dynamics are stepped.

    dt          time step in the graph's time unit (seconds for snnTorch/Norse/Lava exports, 1 for sinabs).
                IF and I neurons integrate `v += r*I` per step and ignore dt (sinabs, Norse IAF, lava-dl).
    integrator  "euler": v += dt/tau*(v_leak - v + r*I);  "exact": zero-order hold, a = exp(-dt/tau).
    reset       "to_v_reset": v = v_reset after a spike (what NIR says); "subtract": v -= v_threshold.
    cuba_order  CubaLIF/CubaLI: "current_first" (v uses the current updated in the same step: snnTorch,
                Norse, Lava) or "previous_current" (v uses last step's current: NIR reference code).
    dtype       float32 (fast) or float64 (golden traces).
    """

    dt: float = 1e-4
    integrator: str = "euler"
    reset: str = "to_v_reset"
    cuba_order: str = "current_first"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.dt) and self.dt > 0):
            raise SbcError(f"dt must be a positive number, got {self.dt!r}")
        for name, allowed in (("integrator", INTEGRATORS), ("reset", RESETS), ("cuba_order", CUBA_ORDERS)):
            if getattr(self, name) not in allowed:
                raise SbcError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.dtype not in ("float32", "float64"):
            raise SbcError(f"dtype must be float32 or float64, got {self.dtype!r}")

    def with_(self, **changes: Any) -> "SimConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_metadata(self) -> dict[str, Any]:
        """The settings as model metadata ({META_KEYS: value}); the model writers stamp them on save."""
        return {k: float(self.dt) if k == "dt" else str(getattr(self, k)) for k in META_KEYS}

    @classmethod
    def from_graph(cls, graph: Any, **overrides: Any) -> "SimConfig":
        """The settings for `graph`: defaults, then its metadata, then explicit overrides (None = unset)."""
        return cls.from_metadata(getattr(graph, "metadata", None), **overrides)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any] | None, **overrides: Any) -> "SimConfig":
        """The step behind `from_graph`, for a bare metadata mapping (e.g. an ONNX file's metadata_props)."""
        values = recorded_settings(meta)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def recorded_settings(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings `meta` records in a form that can be read ({key of META_KEYS: value}); others are absent."""
    values: dict[str, Any] = {}
    meta = meta or {}
    if "dt" in meta:
        try:
            values["dt"] = float(np.asarray(meta["dt"]).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            pass
    for key, allowed in (("integrator", INTEGRATORS), ("reset", RESETS), ("cuba_order", CUBA_ORDERS)):
        raw = meta.get(key)
        if isinstance(raw, bytes):
            raw = raw.decode()
        if isinstance(raw, str):
            text = raw.strip().lower()
            match = [a for a in allowed if a == text] or [a for a in allowed if a in text]
            if len(match) == 1:
                values[key] = match[0]
    return values


def assumed_settings(graph: Any, **overrides: Any) -> dict[str, Any]:
    """{setting: default} for every setting the simulation of `graph` depends on (its neurons' and delays'
    `Primitive.settings`) that neither its metadata records nor `overrides` set (None = unset)."""
    recorded = set(recorded_settings(getattr(graph, "metadata", None)))
    given = {k for k, v in overrides.items() if v is not None}
    fg = flatten(graph)
    used = {s for name in fg.order if fg.prim(name) is not None for s in fg.prim(name).settings}
    default = SimConfig()
    return {k: getattr(default, k) for k in META_KEYS if k in used and k not in recorded | given}


def describe_assumed(assumed: Mapping[str, Any], source: str = "the model") -> str:
    """One line naming each assumed setting, the value used and the option that sets it."""
    return f"{source} does not record {', '.join(assumed)}: assuming the default {_values(assumed, True)}"


def _values(assumed: Mapping[str, Any], flags: bool) -> str:
    """"dt=0.0001, reset=to_v_reset", with each setting's option after it if `flags`."""
    parts = [f"{k}={v:g}" if k == "dt" else f"{k}={v}" for k, v in assumed.items()]
    return ", ".join(f"{p} ({FLAGS[k]})" if flags else p for p, k in zip(parts, assumed))


def config_for(graph: Any, *, strict: bool = False, source: str = "the model", **overrides: Any) -> SimConfig:
    """The settings to simulate `graph` with (`SimConfig.from_graph`), made explicit: one note names every
    setting taken from the defaults because the model does not record it, or with `strict` an SbcError does;
    an SbcError names a neuron the settings cannot step (dt/tau > 1 under Euler, `primitives.decay`)."""
    cfg = SimConfig.from_graph(graph, **overrides)
    assumed = assumed_settings(graph, **overrides)
    if assumed and strict:
        raise SbcError(f"{source} does not record {', '.join(assumed)}, which its simulation depends on; strict "
                       f"mode does not assume the defaults ({_values(assumed, False)}): give "
                       + ", ".join(FLAGS[k] for k in assumed))
    if assumed:
        log.info("%s; --strict refuses instead", describe_assumed(assumed, source))
    check_steppable(graph, cfg)
    return cfg


def check_steppable(graph: Any, cfg: SimConfig) -> None:
    """SbcError naming the first neuron whose decays `cfg` cannot produce (Euler with dt/tau > 1)."""
    fg = flatten(graph)
    for name in fg.order:
        prim = fg.prim(name)
        if prim is not None and prim.stages:
            try:
                prim.decays(fg.nodes[name], cfg)
            except ValueError as e:
                raise SbcError(f"node {name!r} ({prim.kind}): {e}") from None
