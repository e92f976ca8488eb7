"""`check_graph(graph, profile)`: every constraint of a chip the graph violates, in plain words.

Static checks on the file as the vendor tool would read it: node types, integer weight codes and their
range, scale granularity, integer neuron parameters and their widths, homogeneous parameters, reset mode,
decay representation, fan-in / fan-out, neurons / synapses / cores, and chip-specific layer rules (Speck
kernel, stride, pooling, per-core memory; SpiNNaker2 consecutive weight layers). Errors make `sbc-onnx
check` exit non-zero; warnings (approximations the toolchain will make) do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nir
import numpy as np

from ..graph import FlatGraph, flatten, node_shape
from ..sim import SimConfig
from ..primitives import NEURON, WEIGHT, decay
from .fanout import layer_fanin, layer_fanout
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


def _codes(node) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Integer codes of a weight node and its per-channel scale: integer arrays as they are; float arrays
    via the node's sbc_onnx.scale metadata, else an inferred <= 8-bit grid. (None, None, why) if float."""
    from ..io.onnx_io import infer_grid

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


def check_graph(graph: nir.NIRGraph, profile: Profile | str, cfg: SimConfig | None = None) -> list[Violation]:
    p = load_profile(profile)
    cfg = cfg or SimConfig.from_metadata(getattr(graph, "metadata", None))
    fg = flatten(graph)
    out: list[Violation] = []

    def err(rule, node, msg, severity="error"):
        out.append(Violation(rule, node, msg, severity))

    # node types
    if p.nir_nodes is not None:
        for n in fg.order:
            if fg.kind(n) not in p.nir_nodes:
                err("node-type", n, f"{fg.kind(n)} is not supported by the {p.name} toolchain "
                    f"(supported: {', '.join(x for x in p.nir_nodes if x not in ('Input', 'Output'))})")
    weights = fg.weight_nodes()
    neurons = fg.neurons()
    integer_model = any(np.asarray(fg.nodes[n].weight).dtype.kind in "iu" for n in weights)

    # weights: integer codes, range, granularity, bias
    for n in weights:
        node = fg.nodes[n]
        q, s, how = _codes(node)
        if q is None:
            err("weight-bits", n, f"weights are floats on no <= 8-bit integer grid; {p.name} stores "
                f"{p.weight_bits}-bit integers (compress with --target {p.name})")
        else:
            lo, hi = int(q.min(initial=0)), int(q.max(initial=0))
            if lo < p.weight_min or hi > p.weight_max:
                err("weight-bits", n, f"weight codes span {_fmt_range(lo, hi)} ({how}); {p.name} allows "
                    f"{_fmt_range(p.weight_min, p.weight_max)} ({p.weight_bits} bits)")
            if s is not None and not p.per_channel and s.size > 1 and np.ptp(s) > 1e-9 * s.max():
                err("granularity", n, f"{s.size} different per-channel scales ({s.min():.4g}..{s.max():.4g}); "
                    f"{p.name} has one scale per layer ({p.scale_granularity})")
        b = getattr(node, "bias", None)
        if b is not None and np.size(b) and np.any(np.asarray(b) != 0):
            if not p.affine_bias:
                err("bias", n, f"non-zero bias ({np.count_nonzero(b)} entries); the {p.name} NIR path needs "
                    "bias = 0")
            elif p.bias_bits is not None and integer_model:
                br = p.int_range(p.bias_bits)
                if not _is_int_valued(b):
                    err("bias-bits", n, "bias is not integer in an integer model")
                elif np.min(b) < br[0] or np.max(b) > br[1]:
                    err("bias-bits", n, f"bias spans {_fmt_range(np.min(b), np.max(b))}, beyond "
                        f"{p.bias_bits}-bit {_fmt_range(*br)}")

    # neurons: integer parameters, widths, homogeneity, reset, decay
    for n in neurons:
        node, prim = fg.nodes[n], fg.prim(n)
        if p.integer_neurons and prim.threshold:
            vals = {f: np.asarray(getattr(node, f)) for f in prim.scaled_fields if getattr(node, f, None) is not None}
            nonint = [f for f, v in vals.items() if not _is_int_valued(v)]
            if nonint:
                err("threshold-bits", n, f"{', '.join(nonint)} not integer; {p.name} stores integer neuron "
                    "parameters (fold the weight scales with `sbc-onnx compress --target`)")
            else:
                thr = vals[prim.threshold]
                if p.threshold_bits is not None:
                    lo, hi = p.int_range(p.threshold_bits, p.threshold_signed)
                    if thr.min() < lo or thr.max() > hi:
                        err("threshold-bits", n, f"thresholds span {_fmt_range(thr.min(), thr.max())}, beyond "
                            f"{p.threshold_bits}-bit {'signed' if p.threshold_signed else 'unsigned'} "
                            f"{_fmt_range(lo, hi)}")
                if p.state_bits is not None:
                    lo, hi = p.int_range(p.state_bits)
                    for f, v in vals.items():
                        if v.size and (v.min() < lo or v.max() > hi):
                            err("state-bits", n, f"{f} spans {_fmt_range(v.min(), v.max())}, beyond the "
                                f"{p.state_bits}-bit state {_fmt_range(lo, hi)}")
        if p.v_reset_zero_only and getattr(node, "v_reset", None) is not None and np.any(np.asarray(node.v_reset) != 0):
            err("reset", n, f"v_reset is not 0; {p.name} resets to zero")
        if p.homogeneous_params:
            het = [f for f in prim.params if getattr(node, f, None) is not None
                   and np.size(getattr(node, f)) > 1 and np.ptp(np.asarray(getattr(node, f), np.float64)) > 0]
            if het:
                err("homogeneous", n, f"{', '.join(het)} differ across the layer's neurons; {p.name} has one "
                    "value per layer/population")
        for f in reversed(prim.tau_fields):  # membrane first
            _check_decay(err, n, p, getattr(node, f), cfg, f)
    if any(fg.prim(n).spiking for n in neurons) and cfg.reset not in p.reset_modes:
        err("reset", None, f"the model uses reset '{cfg.reset}' (graph metadata / --reset); {p.name} supports "
            f"{' and '.join(p.reset_modes)}")

    # fan-in / fan-out
    fan_in: dict[str, np.ndarray] = {}
    for n in weights:
        fin = layer_fanin(fg.nodes[n])
        for path in fg.paths_to_neurons(n)[0]:
            fan_in[path[-1]] = fan_in.get(path[-1], 0) + int(fin.max(initial=0))
    if p.fan_in_max is not None:
        for n, v in fan_in.items():
            if v > p.fan_in_max:
                err("fan-in", n, f"a neuron receives up to {v} non-zero synapses; {p.name} allows {p.fan_in_max}")
    if p.fan_out_max is not None:
        for n in weights:
            src = [s for s in fg.sources_of(n) if fg.role(s) == NEURON or s in fg.inputs]
            if not src:
                continue
            fo = int(layer_fanout(fg.nodes[n]).max(initial=0))
            if fo > p.fan_out_max:
                err("fan-out", n, f"a source neuron of this layer ({', '.join(sorted(src))}) has {fo} non-zero "
                    f"outgoing synapses; {p.name} allows {p.fan_out_max}")
    if p.fan_out_layers_max is not None:
        for n in neurons + list(fg.inputs):
            dest = set()
            stack = list(fg.succs[n])
            while stack:
                m = stack.pop()
                if fg.role(m) == WEIGHT:
                    dest.add(m)
                elif fg.passes_through(m):
                    stack.extend(fg.succs[m])
            if len(dest) > p.fan_out_layers_max:
                err("fan-out", n, f"sends to {len(dest)} layers ({', '.join(sorted(dest))}); {p.name} allows "
                    f"{p.fan_out_layers_max} destinations per layer")

    # sizes
    sizes = {n: int(np.prod(node_shape(fg.nodes[n], "output") or (0,))) for n in neurons}
    total_neurons = sum(sizes.values())
    if p.neurons_max is not None and total_neurons > p.neurons_max:
        err("neurons", None, f"{total_neurons} neurons; {p.name} has {p.neurons_max}")
    if p.neurons_per_core is not None:
        need = sum(math.ceil(v / p.neurons_per_core) for v in sizes.values())
        big = [f"{n} ({v})" for n, v in sizes.items() if v > p.neurons_per_core]
        if big:
            err("neurons/core", None, f"layers {', '.join(big)} exceed {p.neurons_per_core} neurons per core and "
                "must be split across cores", "warning")
        if p.cores is not None and need > p.cores:
            err("cores", None, f"needs {need} cores at {p.neurons_per_core} neurons per core; {p.name} has {p.cores}")
    synapses = sum(int(np.count_nonzero(fg.nodes[n].weight)) for n in weights)
    if p.synapses_max is not None and synapses > p.synapses_max:
        err("synapses", None, f"{synapses} non-zero weights; {p.name} holds {p.synapses_max}")
    if p.inputs_max is not None:
        for n in fg.inputs:
            k = int(np.prod(node_shape(fg.nodes[n], "output") or (0,)))
            if k > p.inputs_max:
                err("inputs", n, f"{k} input channels; {p.name} has {p.inputs_max}")
    if p.outputs_max is not None:
        for n in fg.outputs:
            k = int(np.prod(node_shape(fg.nodes[n], "input") or (0,)))
            if k > p.outputs_max:
                err("outputs", n, f"{k} output neurons; {p.name} has {p.outputs_max}")
    if p.no_consecutive_weight_layers:
        for n in weights:
            for m in fg.paths_to_neurons(n)[1]:
                if fg.role(m) == WEIGHT:
                    err("structure", n, f"feeds weight layer {m} directly; {p.name} needs a neuron between "
                        "two weight layers")
    if p.core_kernel_memory is not None:
        _check_speck(err, fg, p, weights)
    return out


def _check_decay(err, n, p: Profile, tau, cfg: SimConfig, what: str) -> None:
    k = decay(tau, cfg)
    if p.decay == "fixed12":
        d = np.round(k * 4096)
        if np.any(d < 1) or np.any(d > 4095):
            err("decay", n, f"{what}: decay per step dt/tau spans {k.min():.3g}..{k.max():.3g}; Loihi's 12-bit "
                "du/dv represents 1/4096 .. 4095/4096")
        else:
            rel = float(np.max(np.abs(d / 4096 - k) / k))
            if rel > 0.01:
                err("decay", n, f"{what}: 12-bit decay changes dt/tau by up to {100 * rel:.1f}%", "warning")
    elif p.decay == "bitshift":
        dash = np.round(np.log2(1 / k))
        rel = float(np.max(np.abs(2.0 ** -dash - k) / k))
        if np.any(dash < 0) or np.any(dash > 15):
            err("decay", n, f"{what}: bit-shift decay needs dash = log2(tau/dt) in 0..15")
        elif rel > 0.01:
            err("decay", n, f"{what}: bit-shift decay (alpha = 1 - 2^-dash) changes dt/tau by up to "
                f"{100 * rel:.0f}%", "warning")
    elif p.decay == "none":
        err("decay", n, f"{p.name} neurons do not leak; this node has {what}")


def _check_speck(err, fg: FlatGraph, p: Profile, weights: list[str]) -> None:
    """DYNAP-CNN layer rules and the per-core memory model (each weight layer + its IAF = one core)."""
    for n in fg.inputs:
        shp = node_shape(fg.nodes[n], "output") or ()
        if len(shp) == 3 and p.input_hw_max and (shp[1] > p.input_hw_max[0] or shp[2] > p.input_hw_max[1]):
            err("input-size", n, f"input {shp[1]}x{shp[2]}; {p.name} takes at most "
                f"{p.input_hw_max[0]}x{p.input_hw_max[1]}")
    need = []
    for n in weights:
        node = fg.nodes[n]
        w = np.asarray(node.weight)
        out_shape = node_shape(node, "output") or (w.shape[0],)
        if fg.kind(n) == "Conv2d":
            kh, kw = w.shape[2:]
            if max(kh, kw) > (p.conv_kernel_max or 10**9):
                err("kernel", n, f"kernel {kh}x{kw}; {p.name} allows up to {p.conv_kernel_max}x{p.conv_kernel_max}")
            st = tuple(int(x) for x in np.broadcast_to(np.asarray(node.stride).reshape(-1), (2,)))
            if p.conv_strides and any(x not in p.conv_strides for x in st):
                err("stride", n, f"stride {st}; {p.name} allows {list(p.conv_strides)}")
            c, f = w.shape[1], w.shape[0]
            fy, fx = out_shape[1], out_shape[2]
        else:  # dense layers run as a convolution whose kernel covers the whole input
            in_shape = node_shape(node, "input") or (w.shape[1],)
            src = list(fg.sources_of(n))
            c, kh, kw = w.shape[1], 1, 1
            for s_ in src:  # Flatten after a (C, H, W) map: kernel H x W over C channels
                shp = node_shape(fg.nodes[s_], "output") or ()
                if len(shp) == 3 and int(np.prod(shp)) == w.shape[1]:
                    c, kh, kw = shp
            f, fy, fx = w.shape[0], 1, 1
            del in_shape
        kmem = c * 2 ** (math.ceil(math.log2(kh * kw)) + math.ceil(math.log2(max(f, 1))))
        nmem = f * 2 ** (math.ceil(math.log2(max(fy, 1))) + math.ceil(math.log2(max(fx, 1))))
        need.append((n, kmem, nmem))
    for n in fg.order:
        if fg.kind(n) == "SumPool2d":
            k = tuple(int(x) for x in np.broadcast_to(np.asarray(fg.nodes[n].kernel_size).reshape(-1), (2,)))
            if p.pool_sizes and (k[0] != k[1] or k[0] not in p.pool_sizes):
                err("pooling", n, f"sum pooling {k[0]}x{k[1]}; {p.name} pools {list(p.pool_sizes)} (square)")
    cores = list(zip(p.core_kernel_memory, p.core_neuron_memory))
    if len(need) > len(cores):
        err("cores", None, f"{len(need)} weight layers; {p.name} has {len(cores)} cores (one layer each)")
        return
    order = sorted(range(len(need)), key=lambda i: -need[i][1])
    used = [False] * len(cores)

    def place(i: int) -> bool:
        if i == len(order):
            return True
        _, km, nm = need[order[i]]
        for c, (kc, nc) in enumerate(cores):
            if not used[c] and km <= kc and nm <= nc:
                used[c] = True
                if place(i + 1):
                    return True
                used[c] = False
        return False

    if not place(0):
        worst = [f"{n} (kernel {km}, neurons {nm})" for n, km, nm in need
                 if not any(km <= kc and nm <= nc for kc, nc in cores)]
        err("core-memory", None, "the layers do not fit the per-core kernel/neuron memories "
            f"{list(p.core_kernel_memory)} / {list(p.core_neuron_memory)}"
            + (f"; too large for any core: {', '.join(worst)}" if worst else ""))
