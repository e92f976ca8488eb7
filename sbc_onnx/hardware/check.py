"""`check_graph(graph, profile)`: every constraint of a chip the graph violates, in plain words.

Static checks on the file as the vendor tool would read it: node types, integer weight codes and their
range, scale granularity, integer neuron parameters and their widths, homogeneous parameters, reset mode,
decay representation, fan-in / fan-out, neurons / synapses / cores, and chip-specific layer rules (Speck
kernel, stride, pooling, per-core memory; SpiNNaker2 consecutive weight layers). Errors make `sbc-onnx
check` exit non-zero; warnings (approximations the toolchain will make) do not.

Each rule family is one small function `(ctx) -> None` that appends to `ctx.found`; `CHECKS` runs them in
a fixed order so the report reads the same every time (per-node rules run node by node, so the violations
of one layer stay together).  A new rule is one function plus its place in `CHECKS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import nir
import numpy as np

from ..compress.grids import infer_grid
from ..graph import FlatGraph, flatten, node_shape
from ..primitives import NEURON, PORT, WEIGHT, decay, kinds
from ..sim import SimConfig
from .fanout import layer_fanin, layer_fanout, layer_signed_rows
from .profiles import Profile, load_profile


@dataclass
class Violation:
    rule: str
    node: str | None
    message: str
    severity: str = "error"  # or "warning"

    def line(self) -> str:
        where = f"[{self.node}] " if self.node else ""
        return f"{self.severity.upper():<7} {self.rule:<14} {where}{self.message}"


@dataclass
class CheckContext:
    """What every rule reads (graph, chip, discretization) and the list of violations it appends to."""

    fg: FlatGraph
    profile: Profile
    cfg: SimConfig
    weights: list[str]
    neurons: list[str]
    integer_model: bool  # some weight layer stores integers: biases must then be integers too
    found: list[Violation] = field(default_factory=list)

    def report(self, rule: str, node: str | None, message: str, severity: str = "error") -> None:
        self.found.append(Violation(rule, node, message, severity))


def check_graph(graph: nir.NIRGraph, profile: Profile | str, cfg: SimConfig | None = None) -> list[Violation]:
    """Every violation of `profile` by `graph`, in `CHECKS` order; `cfg` (default: the graph's metadata) gives
    dt and the reset mode the decay and reset rules judge."""
    fg = flatten(graph)
    weights = fg.weight_nodes()
    ctx = CheckContext(fg=fg, profile=load_profile(profile),
                       cfg=cfg or SimConfig.from_metadata(getattr(graph, "metadata", None)),
                       weights=weights, neurons=fg.neurons(),
                       integer_model=any(np.asarray(fg.nodes[n].weight).dtype.kind in "iu" for n in weights))
    for check in CHECKS:
        check(ctx)
    return ctx.found


# ---------------------------------------------------------------- helpers

def _codes(node) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Integer codes of a weight node and its per-channel scale: integer arrays as they are; float arrays
    via the node's sbc_onnx.scale metadata, else an inferred <= 8-bit grid. (None, None, why) if float."""

    w = np.asarray(node.weight)
    if w.dtype.kind in "iu":
        return w.astype(np.int64), None, "integer"
    meta = getattr(node, "metadata", None) or {}
    s = meta.get("sbc_onnx.scale")
    if s is not None:
        s = np.asarray(s, np.float64).reshape(-1)
        sw = s.reshape((-1,) + (1,) * (w.ndim - 1)) if s.size > 1 else s[0]
        q = w.astype(np.float64) / sw
        if np.allclose(q, np.round(q), atol=1e-4, rtol=0):
            return np.round(q).astype(np.int64), s, "metadata scale"
    g = infer_grid(w.astype(np.float32) if w.dtype == np.float64 else w)
    if g is not None:
        return np.asarray(g[0], np.int64), np.asarray(g[1], np.float64), "inferred grid"
    return None, None, "float"


def _is_int_valued(v) -> bool:
    a = np.asarray(v)
    return a.dtype.kind in "iub" or bool(np.all(a == np.round(a)))


def _fmt_range(lo, hi) -> str:
    return f"[{lo}, {hi}]"


def _size(node, which: str) -> int:
    """Number of elements of the node's input or output (0 if NIR does not know the shape)."""
    return int(np.prod(node_shape(node, which) or (0,)))


# ---------------------------------------------------------------- node types

def _node_types(ctx: CheckContext) -> None:
    p = ctx.profile
    if p.nir_nodes is None:
        return
    supported = ", ".join(x for x in p.nir_nodes if x not in kinds(PORT))
    for n in ctx.fg.order:
        kind = ctx.fg.kind(n)
        if kind not in p.nir_nodes:
            ctx.report("node-type", n, f"{kind} is not supported by the {p.name} toolchain (supported: {supported})")


# ---------------------------------------------------------------- weights and bias

def _weight_codes(ctx: CheckContext, n: str) -> None:
    """Integer codes inside the chip's range, and one scale per layer where the chip has no per-channel one."""
    p = ctx.profile
    q, s, how = _codes(ctx.fg.nodes[n])
    if q is None:
        ctx.report("weight-bits", n, f"weights are floats on no <= 8-bit integer grid; {p.name} stores "
                   f"{p.weight_bits}-bit integers (compress with --target {p.name})")
        return
    lo, hi = int(q.min(initial=0)), int(q.max(initial=0))
    if lo < p.weight_min or hi > p.weight_max:
        ctx.report("weight-bits", n, f"weight codes span {_fmt_range(lo, hi)} ({how}); {p.name} allows "
                   f"{_fmt_range(p.weight_min, p.weight_max)} ({p.weight_bits} bits)")
    if s is not None and not p.per_channel and s.size > 1 and np.ptp(s) > 1e-9 * s.max():
        ctx.report("granularity", n, f"{s.size} different per-channel scales ({s.min():.4g}..{s.max():.4g}); "
                   f"{p.name} has one scale per layer ({p.scale_granularity})")


def _bias(ctx: CheckContext, n: str) -> None:
    p, b = ctx.profile, getattr(ctx.fg.nodes[n], "bias", None)
    if b is None or not np.size(b) or not np.any(np.asarray(b) != 0):
        return
    if not p.affine_bias:
        ctx.report("bias", n, f"non-zero bias ({np.count_nonzero(b)} entries); the {p.name} NIR path needs "
                   "bias = 0")
        return
    if p.bias_bits is None or not ctx.integer_model:  # a float model's bias is folded later
        return
    br = p.int_range(p.bias_bits)
    if not _is_int_valued(b):
        ctx.report("bias-bits", n, "bias is not integer in an integer model")
    elif np.min(b) < br[0] or np.max(b) > br[1]:
        ctx.report("bias-bits", n, f"bias spans {_fmt_range(np.min(b), np.max(b))}, beyond "
                   f"{p.bias_bits}-bit {_fmt_range(*br)}")


WEIGHT_RULES: tuple[Callable[[CheckContext, str], None], ...] = (_weight_codes, _bias)


def _weight_layers(ctx: CheckContext) -> None:
    for n in ctx.weights:
        for rule in WEIGHT_RULES:
            rule(ctx, n)


# ---------------------------------------------------------------- neuron parameters

def _neuron_integers(ctx: CheckContext, n: str) -> None:
    """Chips with integer neuron state: the input-scaled fields (threshold, reset, leak) are integers that
    fit the threshold and state widths."""
    p, node, prim = ctx.profile, ctx.fg.nodes[n], ctx.fg.prim(n)
    if not (p.integer_neurons and prim.threshold):
        return
    vals = {f: np.asarray(getattr(node, f)) for f in prim.scaled_fields if getattr(node, f, None) is not None}
    nonint = [f for f, v in vals.items() if not _is_int_valued(v)]
    if nonint:
        ctx.report("threshold-bits", n, f"{', '.join(nonint)} not integer; {p.name} stores integer neuron "
                   "parameters (fold the weight scales with `sbc-onnx compress --target`)")
        return
    _threshold_width(ctx, n, vals[prim.threshold])
    _state_width(ctx, n, vals)


def _threshold_width(ctx: CheckContext, n: str, thr: np.ndarray) -> None:
    p = ctx.profile
    if p.threshold_bits is None:
        return
    lo, hi = p.int_range(p.threshold_bits, p.threshold_signed)
    if thr.min() < lo or thr.max() > hi:
        ctx.report("threshold-bits", n, f"thresholds span {_fmt_range(thr.min(), thr.max())}, beyond "
                   f"{p.threshold_bits}-bit {'signed' if p.threshold_signed else 'unsigned'} {_fmt_range(lo, hi)}")


def _state_width(ctx: CheckContext, n: str, vals: dict[str, np.ndarray]) -> None:
    p = ctx.profile
    if p.state_bits is None:
        return
    lo, hi = p.int_range(p.state_bits)
    for f, v in vals.items():
        if v.size and (v.min() < lo or v.max() > hi):
            ctx.report("state-bits", n, f"{f} spans {_fmt_range(v.min(), v.max())}, beyond the "
                       f"{p.state_bits}-bit state {_fmt_range(lo, hi)}")


def _reset_value(ctx: CheckContext, n: str) -> None:
    p, reset = ctx.profile, ctx.fg.prim(n).reset
    v = getattr(ctx.fg.nodes[n], reset, None) if reset else None
    if p.v_reset_zero_only and v is not None and np.any(np.asarray(v) != 0):
        ctx.report("reset", n, f"{reset} is not 0; {p.name} resets to zero")


def _homogeneous(ctx: CheckContext, n: str) -> None:
    p, node = ctx.profile, ctx.fg.nodes[n]
    if not p.homogeneous_params:
        return
    het = [f for f in ctx.fg.prim(n).params if getattr(node, f, None) is not None
           and np.size(getattr(node, f)) > 1 and np.ptp(np.asarray(getattr(node, f), np.float64)) > 0]
    if het:
        ctx.report("homogeneous", n, f"{', '.join(het)} differ across the layer's neurons; {p.name} has one value "
                   "per layer/population")


def _decays(ctx: CheckContext, n: str) -> None:
    rule = DECAY_RULES.get(ctx.profile.decay)
    if rule is None:  # float / analog decay: any tau is representable
        return
    node = ctx.fg.nodes[n]
    for f in reversed(ctx.fg.prim(n).tau_fields):  # membrane first
        rule(ctx, n, decay(getattr(node, f), ctx.cfg), f)


NEURON_RULES: tuple[Callable[[CheckContext, str], None], ...] = (_neuron_integers, _reset_value, _homogeneous,
                                                                 _decays)


def _neuron_layers(ctx: CheckContext) -> None:
    for n in ctx.neurons:
        for rule in NEURON_RULES:
            rule(ctx, n)


# ---------------------------------------------------------------- decay representation (k = decay per step)

def _decay_fixed12(ctx: CheckContext, n: str, k: np.ndarray, what: str) -> None:
    d = np.round(k * 4096)
    if np.any(d < 1) or np.any(d > 4095):
        ctx.report("decay", n, f"{what}: decay per step dt/tau spans {k.min():.3g}..{k.max():.3g}; Loihi's 12-bit "
                   "du/dv represents 1/4096 .. 4095/4096")
        return
    rel = float(np.max(np.abs(d / 4096 - k) / k))
    if rel > 0.01:
        ctx.report("decay", n, f"{what}: 12-bit decay changes dt/tau by up to {100 * rel:.1f}%", "warning")


def _decay_bitshift(ctx: CheckContext, n: str, k: np.ndarray, what: str) -> None:
    dash = np.round(np.log2(1 / k))
    rel = float(np.max(np.abs(2.0 ** -dash - k) / k))
    if np.any(dash < 0) or np.any(dash > 15):
        ctx.report("decay", n, f"{what}: bit-shift decay needs dash = log2(tau/dt) in 0..15")
    elif rel > 0.01:
        ctx.report("decay", n, f"{what}: bit-shift decay (alpha = 1 - 2^-dash) changes dt/tau by up to "
                   f"{100 * rel:.0f}%", "warning")


def _decay_none(ctx: CheckContext, n: str, k: np.ndarray, what: str) -> None:
    ctx.report("decay", n, f"{ctx.profile.name} neurons do not leak; this node has {what}")


DECAY_RULES: dict[str, Callable[[CheckContext, str, np.ndarray, str], None]] = {
    "fixed12": _decay_fixed12, "bitshift": _decay_bitshift, "none": _decay_none}


def _reset_mode(ctx: CheckContext) -> None:
    p, reset = ctx.profile, ctx.cfg.reset
    if any(ctx.fg.prim(n).spiking for n in ctx.neurons) and reset not in p.reset_modes:
        ctx.report("reset", None, f"the model uses reset '{reset}' (graph metadata / --reset); {p.name} supports "
                   f"{' and '.join(p.reset_modes)}")


# ---------------------------------------------------------------- fan-in / fan-out

def _fan_in_per_neuron(fg: FlatGraph, weights: list[str], signed_rows: bool = False) -> dict[str, int]:
    """Largest non-zero fan-in of each neuron, summed over every path from a weight layer into it; with
    `signed_rows`, the synapse rows instead: one per input and sign of its weights, for the whole layer."""
    fan_in: dict[str, int] = {}
    for n in weights:
        fin = sum(layer_signed_rows(fg.nodes[n])) if signed_rows else int(layer_fanin(fg.nodes[n]).max(initial=0))
        for path in fg.paths_to_neurons(n)[0]:
            fan_in[path[-1]] = fan_in.get(path[-1], 0) + fin
    return fan_in


def _fan_in(ctx: CheckContext) -> None:
    p = ctx.profile
    if p.fan_in_max is None:
        return
    for n, v in _fan_in_per_neuron(ctx.fg, ctx.weights, p.signed_rows).items():
        if v <= p.fan_in_max:
            continue
        what = (f"its layers need {v} synapse rows (one per input and weight sign: excitatory and inhibitory)"
                if p.signed_rows else f"a neuron receives up to {v} non-zero synapses")
        ctx.report("fan-in", n, f"{what}; {p.name} allows {p.fan_in_max}")


def _fan_out_synapses(ctx: CheckContext) -> None:
    p, fg = ctx.profile, ctx.fg
    if p.fan_out_max is None:
        return
    for n in ctx.weights:
        src = [s for s in fg.sources_of(n) if fg.role(s) == NEURON or s in fg.inputs]
        if not src:
            continue
        fo = int(layer_fanout(fg.nodes[n]).max(initial=0))
        if fo > p.fan_out_max:
            ctx.report("fan-out", n, f"a source neuron of this layer ({', '.join(sorted(src))}) has {fo} non-zero "
                       f"outgoing synapses; {p.name} allows {p.fan_out_max}")


def _destination_layers(fg: FlatGraph, n: str) -> set[str]:
    """Weight layers reached from node `n` through pass-through nodes."""
    dest, stack = set(), list(fg.succs[n])
    while stack:
        m = stack.pop()
        if fg.role(m) == WEIGHT:
            dest.add(m)
        elif fg.passes_through(m):
            stack.extend(fg.succs[m])
    return dest


def _fan_out_layers(ctx: CheckContext) -> None:
    p = ctx.profile
    if p.fan_out_layers_max is None:
        return
    for n in ctx.neurons + list(ctx.fg.inputs):
        dest = _destination_layers(ctx.fg, n)
        if len(dest) > p.fan_out_layers_max:
            ctx.report("fan-out", n, f"sends to {len(dest)} layers ({', '.join(sorted(dest))}); {p.name} allows "
                       f"{p.fan_out_layers_max} destinations per layer")


# ---------------------------------------------------------------- sizes

def _layer_sizes(ctx: CheckContext) -> dict[str, int]:
    return {n: _size(ctx.fg.nodes[n], "output") for n in ctx.neurons}


def _neuron_count(ctx: CheckContext) -> None:
    p, total = ctx.profile, sum(_layer_sizes(ctx).values())
    if p.neurons_max is not None and total > p.neurons_max:
        ctx.report("neurons", None, f"{total} neurons; {p.name} has {p.neurons_max}")


def _neurons_per_core(ctx: CheckContext) -> None:
    p = ctx.profile
    if p.neurons_per_core is None:
        return
    sizes = _layer_sizes(ctx)
    big = [f"{n} ({v})" for n, v in sizes.items() if v > p.neurons_per_core]
    if big:
        ctx.report("neurons/core", None, f"layers {', '.join(big)} exceed {p.neurons_per_core} neurons per core "
                   "and must be split across cores", "warning")
    need = sum(math.ceil(v / p.neurons_per_core) for v in sizes.values())
    if p.cores is not None and need > p.cores:
        ctx.report("cores", None, f"needs {need} cores at {p.neurons_per_core} neurons per core; {p.name} has "
                   f"{p.cores}")


def _synapse_count(ctx: CheckContext) -> None:
    p = ctx.profile
    synapses = sum(int(np.count_nonzero(ctx.fg.nodes[n].weight)) for n in ctx.weights)
    if p.synapses_max is not None and synapses > p.synapses_max:
        ctx.report("synapses", None, f"{synapses} non-zero weights; {p.name} holds {p.synapses_max}")


def _port_sizes(ctx: CheckContext) -> None:
    p, fg = ctx.profile, ctx.fg
    if p.inputs_max is not None:
        for n in fg.inputs:
            k = _size(fg.nodes[n], "output")
            if k > p.inputs_max:
                ctx.report("inputs", n, f"{k} input channels; {p.name} has {p.inputs_max}")
    if p.outputs_max is not None:
        for n in fg.outputs:
            k = _size(fg.nodes[n], "input")
            if k > p.outputs_max:
                ctx.report("outputs", n, f"{k} output neurons; {p.name} has {p.outputs_max}")


# ---------------------------------------------------------------- structure

def _consecutive_weight_layers(ctx: CheckContext) -> None:
    p, fg = ctx.profile, ctx.fg
    if not p.no_consecutive_weight_layers:
        return
    for n in ctx.weights:
        for m in fg.paths_to_neurons(n)[1]:
            if fg.role(m) == WEIGHT:
                ctx.report("structure", n, f"feeds weight layer {m} directly; {p.name} needs a neuron between two "
                           "weight layers")


# ---------------------------------------------------------------- Speck / DYNAP-CNN
# Each weight layer and the IAF it feeds is one core.  Speck's cores run 2-D convolutions, so "Conv2d" and
# "SumPool2d" below are the chip's own layer types (a Conv1d is reported as node-type and costed as dense).

def _speck_input_size(ctx: CheckContext) -> None:
    p = ctx.profile
    for n in ctx.fg.inputs:
        shp = node_shape(ctx.fg.nodes[n], "output") or ()
        if len(shp) == 3 and p.input_hw_max and (shp[1] > p.input_hw_max[0] or shp[2] > p.input_hw_max[1]):
            ctx.report("input-size", n, f"input {shp[1]}x{shp[2]}; {p.name} takes at most "
                       f"{p.input_hw_max[0]}x{p.input_hw_max[1]}")


def _pair(v) -> tuple[int, int]:
    return tuple(int(x) for x in np.broadcast_to(np.asarray(v).reshape(-1), (2,)))


def _speck_conv_layers(ctx: CheckContext) -> None:
    p = ctx.profile
    for n in ctx.weights:
        if ctx.fg.kind(n) != "Conv2d":
            continue
        node = ctx.fg.nodes[n]
        kh, kw = np.shape(node.weight)[2:]
        if max(kh, kw) > (p.conv_kernel_max or 10**9):
            ctx.report("kernel", n, f"kernel {kh}x{kw}; {p.name} allows up to {p.conv_kernel_max}x{p.conv_kernel_max}")
        st = _pair(node.stride)
        if p.conv_strides and any(x not in p.conv_strides for x in st):
            ctx.report("stride", n, f"stride {st}; {p.name} allows {list(p.conv_strides)}")


def _speck_pooling(ctx: CheckContext) -> None:
    p = ctx.profile
    for n in ctx.fg.order:
        if ctx.fg.kind(n) != "SumPool2d":
            continue
        k = _pair(ctx.fg.nodes[n].kernel_size)
        if p.pool_sizes and (k[0] != k[1] or k[0] not in p.pool_sizes):
            ctx.report("pooling", n, f"sum pooling {k[0]}x{k[1]}; {p.name} pools {list(p.pool_sizes)} (square)")


def _core_demand(fg: FlatGraph, n: str) -> tuple[int, int]:
    """Kernel and neuron memory a weight layer needs on one core (the sinabs memory model, profile sources):
    K = c * 2^(ceil log2(kh*kw) + ceil log2 f), N = f * 2^(ceil log2 fy + ceil log2 fx)."""
    node = fg.nodes[n]
    w = np.asarray(node.weight)
    f = w.shape[0]
    if fg.kind(n) == "Conv2d":
        c, kh, kw = w.shape[1:]
        out_shape = node_shape(node, "output") or (f,)
        fy, fx = out_shape[1], out_shape[2]
    else:  # dense layers run as a convolution whose kernel covers the whole input
        c, kh, kw = _dense_kernel(fg, n, w)
        fy, fx = 1, 1
    kmem = c * 2 ** (math.ceil(math.log2(kh * kw)) + math.ceil(math.log2(max(f, 1))))
    nmem = f * 2 ** (math.ceil(math.log2(max(fy, 1))) + math.ceil(math.log2(max(fx, 1))))
    return kmem, nmem


def _dense_kernel(fg: FlatGraph, n: str, w: np.ndarray) -> tuple[int, int, int]:
    """(channels, kh, kw) of a dense layer: after a Flatten of a (C, H, W) map the kernel is H x W over C."""
    c, kh, kw = w.shape[1], 1, 1
    for s in fg.sources_of(n):
        shp = node_shape(fg.nodes[s], "output") or ()
        if len(shp) == 3 and int(np.prod(shp)) == w.shape[1]:
            c, kh, kw = shp
    return c, kh, kw


def _place(demand: list[tuple[int, int]], cores: list[tuple[int, int]], used: list[bool], i: int = 0) -> bool:
    """Backtracking: can layers demand[i:] go on distinct unused cores, each within both memories?"""
    if i == len(demand):
        return True
    km, nm = demand[i]
    for c, (kc, nc) in enumerate(cores):
        if not used[c] and km <= kc and nm <= nc:
            used[c] = True
            if _place(demand, cores, used, i + 1):
                return True
            used[c] = False
    return False


def _speck_core_memory(ctx: CheckContext) -> None:
    p = ctx.profile
    need = [(n, *_core_demand(ctx.fg, n)) for n in ctx.weights]
    cores = list(zip(p.core_kernel_memory, p.core_neuron_memory))
    if len(need) > len(cores):
        ctx.report("cores", None, f"{len(need)} weight layers; {p.name} has {len(cores)} cores (one layer each)")
        return
    biggest_first = [(km, nm) for _, km, nm in sorted(need, key=lambda x: -x[1])]  # prunes the search early
    if _place(biggest_first, cores, [False] * len(cores)):
        return
    worst = [f"{n} (kernel {km}, neurons {nm})" for n, km, nm in need
             if not any(km <= kc and nm <= nc for kc, nc in cores)]
    ctx.report("core-memory", None, "the layers do not fit the per-core kernel/neuron memories "
               f"{list(p.core_kernel_memory)} / {list(p.core_neuron_memory)}"
               + (f"; too large for any core: {', '.join(worst)}" if worst else ""))


def _speck_rules(ctx: CheckContext) -> None:
    if ctx.profile.core_kernel_memory is None:  # only the DYNAP-CNN profile has a per-core memory model
        return
    for rule in (_speck_input_size, _speck_conv_layers, _speck_pooling, _speck_core_memory):
        rule(ctx)


#: every rule family, in report order
CHECKS: tuple[Callable[[CheckContext], None], ...] = (
    _node_types, _weight_layers, _neuron_layers, _reset_mode, _fan_in, _fan_out_synapses, _fan_out_layers,
    _neuron_count, _neurons_per_core, _synapse_count, _port_sizes, _consecutive_weight_layers, _speck_rules)
