"""Compress for a named chip: SBC with the profile's grid, then fold each weight scale into the neurons.

Folding.  A weight layer W feeding neuron N with W_i = s_i q_i (per output channel i): dividing the
neuron's input by s_i and its v_threshold, v_reset, v_leak (and the layer's bias) by s_i scales the state
by 1/s_i and leaves every spike unchanged (tau dv/dt = v_leak - v + r I is linear in (v, v_leak, I), the
threshold test and both resets are homogeneous).  r, tau, w_in do not change.  The per-channel scale is
carried to the neuron's shape through the stateless nodes between them (Scale, pooling, Flatten, Delay);
every input of N must come from a folded layer, and all layers feeding N must give it the same scale
(otherwise `integerize` re-quantizes them to one common scale and says so).  Where a folded bias or
threshold would overflow the chip's bias or threshold width, the layer's scale is enlarged first and its
codes re-quantized to it (`_fit_widths`), as the vendors' own quantizers do.

Integer model.  The folded scale is rounded to `profile.scale_mantissa_bits` significant bits
(s = m * 2^e, m < 2^8); neuron parameters and biases are rounded to integers on chips with integer
neuron state (profile threshold_bits/state_bits), and kept as exact folded floats on float/analog chips.  The float "twin" is the
exact dequantization of the integer model (weights s q, thresholds s theta_int, ...): with s = m 2^e every
product and partial sum of an IF layer with integer inputs is exact in float32, so the twin and the integer
model produce the same spikes bit for bit; the twin differs from the SBC output only by the scale rounding
(< 2^-8 relative) and the threshold/bias rounding (< 0.5 integer units).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nir
import numpy as np

from ..calibrate import Calibration
from ..compress.budget import BudgetSpec, parse_budget
from ..errors import SbcError
from ..graph import FlatGraph, flatten, node_shape
from ..io.models import save_model
from ..pipeline import CompressionReport, Plan, compress, compression_metadata
from ..primitives import primitive
from ..sim import SimConfig
from ..sim.config import config_for
from ..sim.ops import build_op
from .check import Violation, check_graph
from .profiles import Profile, load_profile

log = logging.getLogger("sbc_onnx")


# ---------------------------------------------------------------- graph helpers

def _layer_out_scale(node, s: np.ndarray) -> np.ndarray:
    """Per-channel scale broadcast to the weight node's output shape."""
    s = np.asarray(s, np.float64).reshape(-1)
    w = np.asarray(node.weight)
    shape = node_shape(node, "output")
    if shape is None:
        shape = (w.shape[0],)
    if s.size == 1:
        return np.full(shape, float(s[0]))
    if s.size != w.shape[0]:
        raise SbcError(f"scale has {s.size} entries for a weight with {w.shape[0]} output channels")
    return np.broadcast_to(s.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()


def _through(fg: FlatGraph, name: str, S: np.ndarray) -> np.ndarray:
    """Carry a per-element scale map through a stateless node."""
    kind = fg.kind(name)
    if kind in ("SumPool2d", "AvgPool2d"):
        flat = S.reshape(S.shape[0], -1)
        if np.ptp(flat, axis=1).max(initial=0.0) > 1e-12 * np.abs(flat).max():
            raise SbcError(f"pooling node {name!r} mixes positions with different scales")
        op = build_op(name, fg.nodes[name], SimConfig(dtype="float64"))
        pooled = op.step(np.ones((1,) + S.shape), None)[0][0]
        return np.broadcast_to(S[:, :1, :1], pooled.shape).copy()
    if kind == "Flatten":
        op = build_op(name, fg.nodes[name], SimConfig(dtype="float64"))
        return op.step(S[None], None)[0][0]
    return S


def neuron_scales(fg: FlatGraph, scales: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """{neuron: (scale map of the neuron's shape, feeding layers)}; raises if the layers disagree,
    if a layer reaches something other than a neuron, or if a neuron has an unscaled input."""
    out: dict[str, tuple[np.ndarray, list[str]]] = {}
    for layer, s in scales.items():
        paths, sinks = fg.paths_to_neurons(layer)
        if sinks or not paths:
            what = ", ".join(f"{x} ({fg.kind(x)})" for x in sinks) or "nothing"
            raise SbcError(f"cannot fold the scale of layer {layer!r}: it reaches {what} instead of a neuron")
        for p in paths:
            S = _layer_out_scale(fg.nodes[layer], s)
            for n in p[1:-1]:
                S = _through(fg, n, S)
            neuron = p[-1]
            if neuron in out:
                prev, layers = out[neuron]
                if prev.shape != S.shape or not np.allclose(prev, S, rtol=1e-12, atol=0):
                    raise SbcError(f"layers {layers + [layer]} feed neuron {neuron!r} with different scales; "
                                   "per-neuron folding needs one scale (use a shared per-tensor scale)")
                layers.append(layer)
            else:
                out[neuron] = (S, [layer])
    for neuron, (S, layers) in out.items():
        extra = fg.sources_of(neuron) - set(scales)
        if extra:
            raise SbcError(f"neuron {neuron!r} also receives input from {sorted(extra)}, which carries no "
                           "weight scale; folding would change its dynamics")
        if not fg.prim(neuron).spiking:
            feeds_output = any(fg.kind(x) == "Output" for x in fg.succs[neuron]) and all(
                fg.kind(x) == "Output" for x in fg.succs[neuron])
            if not feeds_output or np.ptp(S) > 1e-12 * np.abs(S).max():
                raise SbcError(f"neuron {neuron!r} ({fg.kind(neuron)}) outputs its potential; folding would "
                               "rescale what it sends on (only a graph readout with one scale can be folded)")
    return out


def _param_shaped(value, S: np.ndarray) -> np.ndarray:
    v = np.asarray(value, np.float64)
    return np.broadcast_to(v, np.broadcast_shapes(v.shape, S.shape)).copy()


def _reshape_for(S: np.ndarray, target_shape: tuple) -> np.ndarray:
    if S.shape == tuple(target_shape):
        return S
    if S.size == int(np.prod(target_shape)):
        return S.reshape(target_shape)
    return S  # let broadcasting decide (and fail loudly if it cannot)


def fold_scales(graph: nir.NIRGraph, scales: dict[str, np.ndarray], *, multiply: bool = False,
                ) -> tuple[nir.NIRGraph, dict[str, np.ndarray]]:
    """Copy of `graph` with each layer's weight and bias divided by its per-output-channel scale
    (scales[layer]: vector of length C_out, or a scalar) and each fed neuron's v_threshold, v_reset,
    v_leak divided by the same scale carried to the neuron's shape. Spikes are unchanged (exact in
    real arithmetic). multiply=True applies the inverse transform (integer model -> float twin).
    Returns (new graph, {neuron: scale map})."""
    new = copy.deepcopy(graph)
    fg = flatten(new)
    nmap = neuron_scales(fg, scales)
    op = np.multiply if multiply else np.divide
    for layer, s in scales.items():
        node = fg.nodes[layer]
        s = np.asarray(s, np.float64).reshape(-1)
        w = np.asarray(node.weight, np.float64)
        sw = s.reshape((-1,) + (1,) * (w.ndim - 1)) if s.size > 1 else s[0]
        node.weight = op(w, sw)
        b = getattr(node, "bias", None)
        if b is not None and not np.isscalar(b):
            node.bias = op(np.asarray(b, np.float64), s if s.size > 1 else s[0])
    for neuron, (S, _) in nmap.items():
        node = fg.nodes[neuron]
        for f in fg.prim(neuron).scaled_fields:
            v = getattr(node, f, None)
            if v is None:
                if f == "v_reset" and hasattr(node, "v_threshold"):
                    v = np.zeros_like(np.asarray(node.v_threshold, np.float64))
                else:
                    continue
            v = np.asarray(v, np.float64)
            Sv = _reshape_for(S, v.shape) if v.ndim else S
            setattr(node, f, op(_param_shaped(v, Sv), Sv))
    return new, {n: S for n, (S, _) in nmap.items()}


# ---------------------------------------------------------------- integer model

def round_scale(s: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """s rounded to `mantissa_bits` significant bits: m * 2^e with integer m < 2^mantissa_bits."""
    s = np.asarray(s, np.float64)
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise SbcError("weight scales must be positive and finite")
    e = np.floor(np.log2(s)) - (mantissa_bits - 1)
    return np.round(s / 2.0**e) * 2.0**e


def _int_dtype(a: np.ndarray) -> np.dtype:
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for dt in (np.int8, np.int16, np.int32, np.int64):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise SbcError("integer parameter out of int64 range")


@dataclass
class FoldedLayer:
    layer: str
    neurons: list
    scale_min: float
    scale_max: float
    code_min: int
    code_max: int
    requantized: bool = False
    threshold: tuple | None = None  # (min, max) of the folded thresholds of the fed neuron(s)
    max_param_rounding: float = 0.0     # largest |p/s - round(p/s)| over thresholds/resets/leaks/biases


@dataclass
class IntegerModel:
    int_graph: nir.NIRGraph
    float_graph: nir.NIRGraph
    layers: list[FoldedLayer]
    unfolded: list[str] = field(default_factory=list)  # layers left as dequantized floats
    notes: list[str] = field(default_factory=list)
    quant: dict = field(default_factory=dict)  # layer -> (q, scale per channel float32, None) for the twin


def _foldable(fg: FlatGraph, layers: list[str]) -> tuple[list[str], dict[str, str]]:
    ok, why = [], {}
    for layer in layers:
        paths, sinks = fg.paths_to_neurons(layer)
        if sinks or not paths:
            why[layer] = "reaches " + (", ".join(sinks) if sinks else "no neuron")
        elif any(not fg.prim(p[-1]).spiking for p in paths):
            why[layer] = "feeds a non-spiking neuron"
        else:
            ok.append(layer)
    changed = True
    while changed:  # neurons with an input that is not a foldable layer block all their layers
        changed = False
        for layer in list(ok):
            for p in fg.paths_to_neurons(layer)[0]:
                extra = fg.sources_of(p[-1]) - set(ok)
                if extra:
                    ok.remove(layer)
                    why[layer] = f"neuron {p[-1]} also receives {sorted(extra)}"
                    changed = True
                    break
    return ok, why


def _enlarge(layer: str, need: np.ndarray, codes: dict[str, np.ndarray], svec: dict[str, np.ndarray],
             profile: Profile) -> float:
    """Raise the layer's scale to at least `need` (per output channel; one common value unless the chip has
    per-channel scales) and re-quantize its codes to it (round to nearest). Returns the largest factor."""
    s = np.broadcast_to(svec[layer], need.shape).astype(np.float64)
    new = np.maximum(s, need) if profile.per_channel else np.full_like(s, max(s.max(), need.max()))
    if np.all(new <= s):
        return 1.0
    shape = (-1,) + (1,) * (codes[layer].ndim - 1)
    q = np.round(codes[layer] * (s / new).reshape(shape))
    codes[layer] = np.clip(q, profile.weight_min, profile.weight_max).astype(np.int64)
    svec[layer] = new
    return float(np.max(new / s))


def _need(v: np.ndarray, lo: int, hi: int, mantissa_bits: int) -> np.ndarray:
    """Smallest scale s with round(v / s) inside [lo, hi] after `round_scale`: rounding s to its mantissa
    moves v / s by up to 2^-mantissa_bits relative, so the bound carries twice that margin."""
    margin = 1.0 + 2.0 ** (1 - mantissa_bits)
    pos = np.where(v > 0, v / (hi - 0.5), 0.0)
    return margin * np.maximum(pos, np.where(v < 0, v / (lo + 0.5), 0.0) if lo < 0 else 0.0)


def _fit_widths(fg: FlatGraph, layers: list[str], codes: dict[str, np.ndarray], svec: dict[str, np.ndarray],
                profile: Profile, notes: list[str]) -> set[str]:
    """Enlarge a layer's scale until its folded bias and the folded thresholds of the neurons it feeds fit
    the chip's widths, re-quantizing its codes: sinabs (Speck) takes the smallest of the weight, bias and
    threshold scales of a layer, Rockpool's channel_quantize rescales a neuron whose threshold overflows.
    Returns the layers changed; `codes` and `svec` are updated in place."""
    if not profile.integer_neurons:
        return set()
    changed = set()
    for layer in layers:
        c_out = codes[layer].shape[0]
        for what, bits, values in (("bias", profile.bias_bits, _layer_bias(fg, layer)),
                                   ("threshold", profile.threshold_bits, _fed_thresholds(fg, layer, c_out))):
            if bits is None or values is None:
                continue
            lo, hi = profile.int_range(bits, profile.threshold_signed if what == "threshold" else True)
            factor = _enlarge(layer, _need(values, lo, hi, profile.scale_mantissa_bits), codes, svec, profile)
            if factor > 1.0:
                changed.add(layer)
                notes.append(f"layer {layer}: the folded {what} would exceed the {bits}-bit {what} of "
                             f"{profile.name}; scale enlarged up to x{factor:.3g} and the weights re-quantized "
                             "(round to nearest) to it")
    return changed


def _layer_bias(fg: FlatGraph, layer: str) -> np.ndarray | None:
    b = getattr(fg.nodes[layer], "bias", None)
    if b is None or np.isscalar(b) or not np.any(np.asarray(b)):
        return None
    return np.asarray(b, np.float64).reshape(-1)


def _fed_thresholds(fg: FlatGraph, layer: str, c_out: int) -> np.ndarray | None:
    """Largest |threshold| per output channel over the neurons the layer feeds: a dense layer's channel i
    feeds neuron i; otherwise every channel gets the largest value (one common bound)."""
    vals = []
    for path in fg.paths_to_neurons(layer)[0]:
        thr = getattr(fg.nodes[path[-1]], "v_threshold", None)
        if thr is not None:
            vals.append(np.asarray(thr, np.float64).reshape(-1))
    if not vals:
        return None
    if all(v.size == c_out for v in vals):
        return np.max(np.abs(vals), axis=0)
    return np.full(c_out, max(float(np.abs(v).max()) for v in vals))


def integerize(graph: nir.NIRGraph, quant: dict[str, tuple], profile: Profile | str) -> IntegerModel:
    """Integer model + float twin from a quantized graph and its codes (quant[layer] = (q, scale, zero),
    W = scale * (q - zero), scale per output channel, as in CompressionReport.quant)."""
    profile = load_profile(profile)
    fg = flatten(graph)
    notes: list[str] = []
    layers = [n for n in fg.order if n in quant]
    fold, why = _foldable(fg, layers)
    for layer, reason in why.items():
        notes.append(f"layer {layer}: not folded ({reason}); its weights stay dequantized floats")
    codes: dict[str, np.ndarray] = {}
    svec: dict[str, np.ndarray] = {}
    for layer in layers:
        q, s, z = quant[layer]
        if z is not None and np.any(np.asarray(z) != 0):
            raise SbcError(f"layer {layer}: asymmetric grid (zero point) cannot be folded into thresholds")
        codes[layer] = np.asarray(q, np.int64)
        svec[layer] = np.asarray(s, np.float64).reshape(-1)
    requant = _fit_widths(fg, fold, codes, svec, profile, notes)
    # neurons fed by several layers need one scale: re-quantize those layers (RTN) to the largest scale
    groups: dict[str, list[str]] = {}
    for layer in fold:
        for p in fg.paths_to_neurons(layer)[0]:
            groups.setdefault(p[-1], []).append(layer)
    for neuron, ls in groups.items():
        ls = sorted(set(ls))
        if len(ls) < 2:
            continue
        try:
            neuron_scales(fg, {l: round_scale(svec[l], profile.scale_mantissa_bits) for l in ls})
            continue
        except SbcError:
            pass
        common = max(float(svec[l].max()) for l in ls)
        for l in ls:
            s = svec[l].reshape((-1,) + (1,) * (codes[l].ndim - 1))
            codes[l] = np.clip(np.round(codes[l] * s / common), profile.weight_min, profile.weight_max).astype(np.int64)
            svec[l] = np.full_like(svec[l], common)
            requant.add(l)
        notes.append(f"neuron {neuron} is fed by {ls} with different scales: re-quantized them (round to "
                     f"nearest) to one common scale {common:.4g}")
    s_round = {l: round_scale(svec[l], profile.scale_mantissa_bits) for l in layers}
    # G1: the graph with weights exactly s' q (float64); the integer model is G1 folded by s'
    g1 = copy.deepcopy(graph)
    f1 = flatten(g1)
    for layer in layers:
        node = f1.nodes[layer]
        sw = s_round[layer].reshape((-1,) + (1,) * (codes[layer].ndim - 1))
        node.weight = codes[layer] * sw if layer in fold else (codes[layer] * sw).astype(np.float32)
    int_g, nmap = fold_scales(g1, {l: s_round[l] for l in fold})
    fi = flatten(int_g)
    results: list[FoldedLayer] = []
    rounding: dict[str, float] = {}
    for neuron in nmap:
        node = fi.nodes[neuron]
        worst = 0.0
        for f in fi.prim(neuron).scaled_fields:
            v = getattr(node, f, None)
            if v is None:
                continue
            v = np.asarray(v, np.float64)
            if not profile.integer_neurons:  # float / analog neuron state: keep the exact folded value
                setattr(node, f, v)
                continue
            r = np.round(v)
            worst = max(worst, float(np.abs(v - r).max(initial=0.0)))
            setattr(node, f, r.astype(_int_dtype(r)))
        rounding[neuron] = worst
    for layer in fold:
        node = fi.nodes[layer]
        q = np.round(np.asarray(node.weight, np.float64))
        if not np.array_equal(q, codes[layer]):  # s' q / s' must give back q exactly
            raise SbcError(f"internal error: layer {layer} codes changed while folding")
        node.weight = q.astype(_int_dtype(q))
        node.metadata = {**(node.metadata or {}), "sbc_onnx.scale": s_round[layer].astype(np.float64),
                         "sbc_onnx.bits": int(profile.weight_bits), "sbc_onnx.target": profile.name}
        b = getattr(node, "bias", None)
        worst_b = 0.0
        if b is not None and not np.isscalar(b) and profile.integer_neurons:
            bv = np.asarray(b, np.float64)
            br = np.round(bv)
            worst_b = float(np.abs(bv - br).max(initial=0.0))
            node.bias = br.astype(_int_dtype(br) if br.size else np.int32)
        neurons = sorted({p[-1] for p in fi.paths_to_neurons(layer)[0]})
        thr = [np.asarray(fi.nodes[n].v_threshold) for n in neurons if hasattr(fi.nodes[n], "v_threshold")]
        results.append(FoldedLayer(
            layer=layer, neurons=neurons, scale_min=float(s_round[layer].min()), scale_max=float(s_round[layer].max()),
            code_min=int(codes[layer].min()), code_max=int(codes[layer].max()), requantized=layer in requant,
            threshold=(float(min(t.min() for t in thr)), float(max(t.max() for t in thr))) if thr else None,
            max_param_rounding=max([worst_b] + [rounding[n] for n in neurons])))
    for layer in layers:
        if layer not in fold:
            fi.nodes[layer].metadata = {**(fi.nodes[layer].metadata or {}),
                                        "sbc_onnx.scale": s_round[layer], "sbc_onnx.bits": int(profile.weight_bits),
                                        "sbc_onnx.folded": 0}
    # the twin: multiply the integer model back (exact: s' has few significant bits)
    twin, _ = fold_scales(int_g, {l: s_round[l] for l in fold}, multiply=True)
    _cast_float32(twin)
    ft = flatten(twin)
    tq = {}
    for layer in layers:
        ft.nodes[layer].metadata = {**(ft.nodes[layer].metadata or {}), "sbc_onnx.scale": s_round[layer],
                                    "sbc_onnx.bits": int(profile.weight_bits), "sbc_onnx.target": profile.name}
        tq[layer] = (codes[layer].astype(np.int32), s_round[layer].astype(np.float32), None)
    meta = {"sbc_onnx.target": profile.name, "sbc_onnx.weight_bits": int(profile.weight_bits)}
    int_g.metadata = {**(int_g.metadata or {}), **meta, "sbc_onnx.integer": 1}
    twin.metadata = {**(twin.metadata or {}), **meta, "sbc_onnx.integer": 0}
    return IntegerModel(int_g, twin, results, unfolded=sorted(why), notes=notes, quant=tq)


def _cast_float32(graph: nir.NIRGraph) -> None:
    """Float64 parameters of the twin back to float32 (the exported dtype); exact for s' q values."""
    for node in flatten(graph).nodes.values():
        for f in ("weight", "bias", *primitive(node).scaled_fields):
            v = getattr(node, f, None)
            if isinstance(v, np.ndarray) and v.dtype.kind in "fiu":
                setattr(node, f, v.astype(np.float32))


# ---------------------------------------------------------------- compress for a target

@dataclass
class DeployReport:
    profile: str
    bits: int
    granularity: str
    grid: str
    compression: CompressionReport
    layers: list[FoldedLayer]
    unfolded: list[str]
    notes: list[str]
    violations: list[Violation] = field(default_factory=list)
    accuracy_twin: float | None = None  # the integer model's is compression.accuracy_compressed

    @property
    def errors(self) -> list[Violation]:
        """The check's errors (warnings excluded): the chip cannot run the integer model as written."""
        return [v for v in self.violations if v.severity == "error"]

    def to_dict(self) -> dict[str, Any]:
        """The deployment's own part (the compression report is its own dict)."""
        d = {k: v for k, v in self.__dict__.items() if k != "compression"}
        d["layers"] = [asdict(r) for r in self.layers]
        d["violations"] = [asdict(v) for v in self.violations]
        return d

    def table(self) -> str:
        head = f"{'layer':<10} {'fed neuron(s)':<16} {'scale (folded)':<22} {'codes':<11} {'threshold':<12} {'round':>6}"
        lines = [f"target {self.profile}: {self.bits}-bit {self.grid} weights, scale {self.granularity}", head,
                 "-" * len(head)] + [_folded_row(r) for r in self.layers]
        lines.append("round = largest |p/s - round(p/s)| over the folded thresholds, resets, leaks and biases "
                     "(integer units)")
        return "\n".join(lines)


def _folded_row(r: FoldedLayer) -> str:
    sc = f"{r.scale_min:.4g}" if r.scale_min == r.scale_max else f"{r.scale_min:.3g}..{r.scale_max:.3g}"
    thr = "-" if r.threshold is None else (
        f"{r.threshold[0]:.6g}" if r.threshold[0] == r.threshold[1] else f"{r.threshold[0]:.6g}..{r.threshold[1]:.6g}")
    return (f"{r.layer:<10} {','.join(r.neurons):<16} {sc:<22} {f'{r.code_min}..{r.code_max}':<11} "
            f"{thr:<12} {r.max_param_rounding:>6.3f}" + ("  (re-quantized, see the notes)" if r.requantized else ""))


def target_settings(profile: Profile, bits: int | None = None) -> tuple[int, str, str]:
    """(bits, grid scheme, granularity) the profile asks for; `bits` may lower the profile's width."""
    b = profile.weight_bits
    if bits is not None:
        if bits > b:
            raise SbcError(f"{profile.name} stores {b}-bit weights; --bits {bits} does not fit")
        b = int(bits)
    scheme = profile.grid_scheme
    return b, scheme, ("channel" if profile.per_channel else "tensor")


def target_plan(profile: Profile | str, *, bits: int | None = None, grid: str | None = None,
                granularity: str | None = None, budget: str | BudgetSpec | None = None, **options) -> Plan:
    """The compression plan constrained by a chip: its weight width (or fewer bits), its grid and scale
    granularity; every other option (Plan.build's keywords) as given.  With a SynOps `budget`, each layer's
    sparsity is chosen to fit it, at the chip's weight width (`budget_for_target`)."""
    profile = load_profile(profile)
    b, scheme, gran = target_settings(profile, bits)
    # repair on a chip with one threshold per layer: one factor per layer, so the profile still holds
    options.setdefault("repair_per_layer", bool(options.get("repair")) and profile.homogeneous_params)
    if budget is not None:
        spec = budget_for_target(budget, profile, bits=bits)
        plan = Plan.build(grid=grid or scheme, granularity=granularity or gran, budget=spec, **options)
    else:
        plan = Plan.build(bits=b, grid=grid or scheme, granularity=granularity or gran, **options)
    check_plan_fits(plan, profile)
    return plan


def budget_for_target(budget: str | BudgetSpec, profile: Profile, *, bits: int | None = None) -> BudgetSpec:
    """The budget's options on a chip: its sparsities, at the chip's weight width (or `bits`, fewer).
    Only a SynOps budget: the chip stores every weight code at its own width, so a lower bit width would
    not save a synaptic operation and would only cost accuracy; and the integer model goes out as NIR,
    whose (gzip) size is known only once written, so a memory budget has no storage model to plan with."""
    try:
        spec = parse_budget(budget) if isinstance(budget, str) else budget
    except ValueError as e:
        raise SbcError(str(e)) from None
    if spec.kind != "synops":
        raise SbcError(f"--target takes a synops budget (synaptic operations per sample), not {spec.kind}: the "
                       "chip stores every weight at its own width and the integer model is written as NIR; "
                       "for a memory budget compress to .onnx without --target")
    width = target_settings(profile, bits)[0]
    return BudgetSpec(spec.kind, spec.amount, spec.sparsities, (width,))


def check_plan_fits(plan: Plan, profile: Profile) -> None:
    """SbcError unless the plan's weights can be stored by the chip: at most its bit width (every width a
    budget may choose), its grid (or the restricted symmetric one, a subset), per-channel scales only where
    the chip has them."""
    widths = plan.budget.bits if plan.budget is not None else (plan.bits,)
    if any(b is None or b > profile.weight_bits for b in widths):
        shown = "/".join(str(b or "no") for b in widths)
        raise SbcError(f"{profile.name} stores {profile.weight_bits}-bit weights; the plan quantizes to "
                       f"{shown} bits")
    if plan.grid not in (profile.grid_scheme, "symmetric_restricted"):
        raise SbcError(f"{profile.name} stores {profile.grid_scheme} integer weights; grid {plan.grid} does not fit")
    if plan.granularity == "channel" and not profile.per_channel:
        raise SbcError(f"{profile.name} has one weight scale per layer ({profile.scale_granularity}); "
                       "granularity channel does not fit")


def compress_for_target(graph: nir.NIRGraph, calib, profile: Profile | str, plan: Plan | None = None, *,
                        cfg: SimConfig | None = None, calibration: Calibration | None = None, batch_size: int = 32,
                        measure_damage: bool = True, progress: bool = False, synops=None, max_memory=None,
                        resume=None, workers=None, ray_address=None,
                        **options) -> tuple[nir.NIRGraph, nir.NIRGraph, DeployReport]:
    """`compress` under a plan the chip can store (`plan`, or `target_plan(profile, **options)`), then the
    weight scales folded into the neurons. Returns (integer graph, dequantized float twin, report incl.
    the profile check of the integer graph). synops, max_memory, resume, workers, ray_address: as for
    `compress`."""
    profile = load_profile(profile)
    cfg = cfg or config_for(graph)
    if plan is None:
        plan = target_plan(profile, **options)
    elif options:
        raise TypeError(f"give either a plan or its options, not both ({', '.join(options)})")
    else:
        check_plan_fits(plan, profile)
    new, rep = compress(graph, calib, plan, cfg=cfg, calibration=calibration, batch_size=batch_size,
                        measure_damage=measure_damage, progress=progress, synops=synops, max_memory=max_memory,
                        resume=resume, workers=workers, ray_address=ray_address)
    missing = [n for n in flatten(new).weight_nodes() if n not in rep.quant]
    if missing:
        raise SbcError(f"layers {missing} carry no integer codes after compression")
    im = integerize(new, rep.quant, profile)
    notes = list(im.notes)
    if cfg.reset not in profile.reset_modes:
        notes.append(f"the model is simulated with reset {cfg.reset}, which {profile.name} does not support "
                     f"({'/'.join(profile.reset_modes)})")
    report = DeployReport(profile=profile.name, bits=plan.bits or target_settings(profile)[0], granularity=profile.scale_granularity,
                          grid=plan.grid, compression=rep, layers=im.layers, unfolded=im.unfolded, notes=notes,
                          violations=check_graph(im.int_graph, profile, cfg))
    return im.int_graph, im.float_graph, report


def twin_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".float" + p.suffix)


def deployment_paths(path: str | Path) -> tuple[Path, Path]:
    """(OUT.nir, OUT.float.nir) for an output path; SbcError unless it is a .nir path."""
    p = Path(path)
    if p.suffix.lower() != ".nir":
        raise SbcError("--target writes NIR (OUT.nir integer model + OUT.float.nir twin); give a .nir output "
                       "and convert the twin with `sbc-onnx convert` if you need ONNX")
    return p, twin_path(p)


def write_deployment(int_graph: nir.NIRGraph, float_graph: nir.NIRGraph, path: str | Path,
                     cfg: SimConfig | None = None, report: DeployReport | None = None) -> tuple[Path, Path]:
    """OUT.nir: integer weights + folded integer neuron parameters (node metadata: scale, bits);
    OUT.float.nir: the dequantized float twin.  Both record the simulation settings `cfg` and, with a
    `report`, the compression provenance."""
    p, tp = deployment_paths(path)
    meta = compression_metadata(report.compression) if report is not None else {}
    a = save_model(int_graph, p, cfg=cfg, metadata={**meta, "sbc_onnx.twin": tp.name})
    b = save_model(float_graph, tp, cfg=cfg, metadata=meta)
    return a, b
