"""Discretization settings. NIR graphs are continuous-time and carry none of these: they are options,
recorded in graph metadata on write and read back from it as defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np

from ..errors import SbcError

INTEGRATORS = ("euler", "exact")
RESETS = ("to_v_reset", "subtract")
CUBA_ORDERS = ("current_first", "previous_current")

# The settings a model file records (NIR graph metadata, ONNX metadata_props), each under its field name.
# dtype is left out: it says how to compute, not how the model is meant to be stepped.
META_KEYS = ("dt", "integrator", "reset", "cuba_order")


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
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
