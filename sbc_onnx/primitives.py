"""The catalogue of NIR primitives: what each node kind *is*, declared once.

Every other module asks this catalogue instead of keeping its own list of kind names: the walker (which
step to run), calibration (the SMP kernel M of the neuron a layer feeds), the ONNX convention (state,
parameters, the step function), hardware folding and checks, `inspect` and the spike-damage report.

A neuron is a cascade of first-order stages, input -> ... -> membrane, each

    s_t = keep * s_{t-1} + leak_in + gain * drive_t        keep = 1 - k, leak_in = k * leak, gain = k * g
    (integrator stage, no tau:  s_t = s_{t-1} + g * drive_t; dt unused)

with k the per-step decay (`decay`), then an optional threshold on the last stage (spike, then reset).
The SMP calibration kernel M of a neuron is the same cascade with unit gains, i.e. one recursive filter
z_t = beta z_{t-1} + x_t per stage with beta = 1 - k (1 for an integrator): docs/sbc_method.md §1.4.

Adding a neuron primitive whose dynamics are such a cascade (the NIR class must exist in `nir`) is one
`_declare(Primitive(...))` below plus its tests: the simulator step, the ONNX step function, the
calibration kernel, the hardware folding and checks are all derived from its stages.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import SbcError

if TYPE_CHECKING:  # only for annotations: the catalogue sits below the simulator
    from .sim.config import SimConfig

PORT, WEIGHT, LINEAR, NEURON, NONLINEAR = "port", "weight", "linear", "neuron", "nonlinear"
ROLES = (PORT, WEIGHT, LINEAR, NEURON, NONLINEAR)


@dataclass(frozen=True)
class Stage:
    """One first-order stage of a neuron (see the module docstring)."""

    state: str                 # name of the state variable ("i", "v")
    tau: str | None            # field holding the time constant; None: an integrator (keep = 1, dt unused)
    gain: str | None           # field multiplying the drive ("r", "w_in"); absent on the node -> 1
    leak: str | None = None    # field of the rest value the stage relaxes to ("v_leak")
    prefix: str = ""           # prefix of the derived constants (keep, leak_in, gain) in the ONNX function
    tag: str = "mem"           # short name of the stage in derived tensor names


@dataclass(frozen=True)
class Primitive:
    kind: str                              # the NIR class name
    role: str                              # one of ROLES
    params: tuple[str, ...] = ()           # numeric parameter fields (stored as tensors)
    spiking: bool = False                  # outputs 0/1 spikes
    stages: tuple[Stage, ...] = ()         # neurons: the cascade, input first
    threshold: str | None = None           # field the last stage is compared with
    reset: str | None = None               # field the last stage is reset to (absent on the node -> 0)
    extra_state: tuple[str, ...] = ()      # state of non-neuron primitives (Delay's buffer)
    conv: bool = False                     # weight primitives: a convolution (im2col rows)
    keeps_spikes: bool = False             # outputs spikes whenever its input is spikes (max pooling)
    doc: str = ""

    @property
    def state(self) -> tuple[str, ...]:
        """Loop-carried state, in the order of the ONNX step function's state inputs/outputs."""
        return tuple(s.state for s in self.stages) + self.extra_state

    @property
    def tau_fields(self) -> tuple[str, ...]:
        return tuple(s.tau for s in self.stages if s.tau)

    @property
    def leaky(self) -> bool:
        return any(s.tau for s in self.stages)

    @property
    def scaled_fields(self) -> tuple[str, ...]:
        """Fields that scale with the neuron's input (divided by a weight scale when it is folded): the
        dynamics are linear in (state, leak, input), the threshold test and both resets homogeneous."""
        leaks = tuple(s.leak for s in self.stages if s.leak)
        return leaks + tuple(f for f in (self.threshold, self.reset) if f)

    @property
    def settings(self) -> tuple[str, ...]:
        """The SimConfig settings this primitive's step depends on (a model that records none of them needs
        no note about them): dt and the integrator for a leak, dt for a delay, the reset mode for a spiking
        neuron, the update order for a cascade of two stages."""
        used = ("dt", "integrator") if self.leaky else ()
        used += ("dt",) if "delay" in self.params else ()
        used += ("reset",) if self.reset else ()
        return used + (("cuba_order",) if len(self.stages) > 1 else ())

    def decays(self, node: Any, cfg: "SimConfig") -> list[np.ndarray | None]:
        """Per-stage decay k (float64 arrays; None for an integrator stage); ValueError if an Euler step
        would overshoot (`decay`)."""
        return [None if s.tau is None else decay(getattr(node, s.tau), cfg, s.tau) for s in self.stages]

    def kernel_betas(self, node: Any, cfg: "SimConfig") -> tuple[float, ...]:
        """Decays beta = 1 - k of the SMP filter cascade M, one per stage (mean over neurons)."""
        betas = []
        for s, k in zip(self.stages, self.decays(node, cfg)):
            betas.append(1.0 if k is None else _mean(1.0 - k, f"{self.kind} {s.tau}"))
        return tuple(betas)


# Euler's k = dt/tau above 1 steps past the target every step (1 < k < 2: v oscillates; k > 2: it diverges);
# k == 1 exactly (tau == dt, e.g. snnTorch beta = 0) is a memoryless neuron and fine. The slack absorbs the
# rounding of tau = dt/(1 - beta) in the bridges.
_EULER_MAX_K = 1 + 1e-9


def decay(tau: Any, cfg: "SimConfig", what: str = "tau") -> np.ndarray:
    """Fraction k of the way to the target per step (float64): dt/tau (Euler) or 1 - exp(-dt/tau) (exact).
    ValueError under Euler when dt/tau > 1 (`what` names the time constant in the message)."""
    tau = np.asarray(tau, dtype=np.float64)
    with np.errstate(divide="ignore"):
        if cfg.integrator != "euler":
            return -np.expm1(-cfg.dt / tau)
        k = cfg.dt / tau
    over = k[(tau > 0) & (k > _EULER_MAX_K)]  # a tau <= 0 is the parameter checks' to refuse (io/nir_io.py)
    if over.size:
        raise ValueError(f"dt/{what} = {over.max():g} > 1 under the Euler integrator (dt = {cfg.dt:g}, smallest "
                         f"{what} = {cfg.dt / over.max():g}): each step overshoots the resting value, so the neuron "
                         f"oscillates or diverges; use the exact integrator (--integrator exact) or dt <= {what} "
                         "(--dt)")
    return k


def _mean(beta: np.ndarray, what: str) -> float:
    beta = np.asarray(beta, np.float64).reshape(-1)
    if np.ptp(beta) > 1e-9 * max(1.0, float(np.abs(beta).max())):
        logging.getLogger("sbc_onnx").info("%s: time constants differ across neurons; the SMP kernel uses "
                                           "their mean decay", what)
    return float(beta.mean())


CATALOGUE: dict[str, Primitive] = {}


def _declare(p: Primitive) -> None:
    assert p.role in ROLES and p.kind not in CATALOGUE
    CATALOGUE[p.kind] = p


_MEMBRANE = Stage("v", tau="tau", gain="r", leak="v_leak")
_CUBA_SYN = Stage("i", tau="tau_syn", gain="w_in", prefix="syn_", tag="syn")
_CUBA_MEM = Stage("v", tau="tau_mem", gain="r", leak="v_leak")
_INTEGRATOR = Stage("v", tau=None, gain="r")

_declare(Primitive("Input", PORT, doc="graph input (one time step)"))
_declare(Primitive("Output", PORT, doc="graph output (one time step)"))
_declare(Primitive("Affine", WEIGHT, ("weight", "bias"), doc="y = x W^T + b"))
_declare(Primitive("Linear", WEIGHT, ("weight",), doc="y = x W^T"))
_declare(Primitive("Conv1d", WEIGHT, ("weight", "bias"), conv=True, doc="cross-correlation (PyTorch), then + bias"))
_declare(Primitive("Conv2d", WEIGHT, ("weight", "bias"), conv=True, doc="cross-correlation (PyTorch), then + bias"))
_declare(Primitive("Scale", LINEAR, ("scale",), doc="y = x * s"))
_declare(Primitive("SumPool2d", LINEAR, doc="window sum"))
_declare(Primitive("AvgPool2d", LINEAR, doc="window mean"))
_declare(Primitive("Flatten", LINEAR, doc="reshape to (batch, *output shape)"))
_declare(Primitive("Delay", LINEAR, ("delay",), extra_state=("buf",),
                   doc="y(t) = x(t - steps), steps = round(delay/dt) per element; zeros before t=0"))
# Beyond NIR 1.0 (sbc_onnx/nodes.py): not linear, so calibration, scale folding and the other graph queries
# stop at it (FlatGraph.passes_through); its output is spikes when its input is, but it is not a spike source.
_declare(Primitive("MaxPool2d", NONLINEAR, keeps_spikes=True,
                   doc="window maximum over (C, H, W), padding -inf, floor mode (PyTorch nn.MaxPool2d)"))
_declare(Primitive("Threshold", NONLINEAR, ("threshold",), spiking=True, doc="y = (x > thr)"))
_NEURON_FIELDS = {"LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"), "LI": ("tau", "r", "v_leak"),
                  "IF": ("r", "v_threshold", "v_reset"), "I": ("r",),
                  "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
                  "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in")}
for _kind, _stages, _doc in (
        ("LIF", (_MEMBRANE,), "leaky integrate-and-fire"),
        ("LI", (_MEMBRANE,), "leaky integrator (outputs v)"),
        ("IF", (_INTEGRATOR,), "integrate-and-fire (v += r*I per step)"),
        ("I", (_INTEGRATOR,), "integrator (outputs v)"),
        ("CubaLIF", (_CUBA_SYN, _CUBA_MEM), "current-based LIF"),
        ("CubaLI", (_CUBA_SYN, _CUBA_MEM), "current-based leaky integrator (outputs v)")):
    _spikes = "v_threshold" in _NEURON_FIELDS[_kind]
    _declare(Primitive(_kind, NEURON, _NEURON_FIELDS[_kind], spiking=_spikes, stages=_stages,
                       threshold="v_threshold" if _spikes else None, reset="v_reset" if _spikes else None,
                       doc=_doc))

#: every numeric parameter field of any primitive (stored as tensors `<node>.<field>` in ONNX)
PARAM_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(f for p in CATALOGUE.values() for f in p.params))


def kinds(*roles: str, spiking: bool | None = None) -> tuple[str, ...]:
    """Kind names with one of `roles` (all roles if none given), optionally only (non-)spiking ones."""
    return tuple(k for k, p in CATALOGUE.items()
                 if (not roles or p.role in roles) and (spiking is None or p.spiking == spiking))


def primitive(kind_or_node: Any) -> Primitive:
    """The catalogue entry of a kind name or a NIR node; SbcError for a kind outside the catalogue."""
    kind = kind_or_node if isinstance(kind_or_node, str) else type(kind_or_node).__name__
    p = CATALOGUE.get(kind)
    if p is None:
        raise SbcError(f"node type {kind} is not supported (supported: {', '.join(sorted(CATALOGUE))})")
    return p


def lookup(kind_or_node: Any) -> Primitive | None:
    """Like `primitive`, None for an unknown kind (NIR subgraphs, kinds outside the catalogue)."""
    kind = kind_or_node if isinstance(kind_or_node, str) else type(kind_or_node).__name__
    return CATALOGUE.get(kind)
