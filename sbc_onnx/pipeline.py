"""`compress()`: calibrate, allocate the sparsity budget, compress every weight layer, measure the damage.

Only weights change: the input graph is deep-copied, each weight node's `weight` is replaced by an array
of the same shape and dtype, every other node and parameter is copied exactly.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import nir
import numpy as np

from .calibrate import Calibration, calibrate, estimate_memory
from .compress import (METHODS, FactorizationError, allocate, allocate_by_scores, compiled_on_disk,
                       compress_layer, damped_inverse, obs_trace)
from .errors import SbcError
from .evaluate import step_progress
from .graph import flatten
from .sim import SimConfig, Walker

log = logging.getLogger("sbc_onnx")

ALLOCATIONS = ("lamp", "uniform", "global", "obs")
GRIDS = ("symmetric", "symmetric_restricted", "asymmetric")


@dataclass
class LayerReport:
    name: str
    kind: str
    shape: tuple
    neuron: str | None
    kernel: str
    sparsity: float
    bits: int | None
    objective_before: float
    objective_after: float
    damp: float | None
    seconds: float
    hessian_seconds: float
    fallback: str | None = None
    escalations: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    firing_rate_dense: float | None = None
    firing_rate_compressed: float | None = None
    van_rossum: float | None = None  # per neuron per sample, dense vs compressed output spikes


@dataclass
class CompressionReport:
    method: str
    sparsity: float | None
    bits: int | None
    pattern: str | None
    allocation: str
    sim: dict
    n_calibration: int
    layers: list[LayerReport]
    overall_sparsity: float
    seconds: dict
    notes: list = field(default_factory=list)
    accuracy_dense: float | None = None
    accuracy_compressed: float | None = None
    # layer -> (integer codes shaped like the weight, per-output-channel scale, zero point); W = s (q - z)
    quant: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("quant")
        return d

    def table(self) -> str:
        head = (f"{'layer':<12} {'kind':<7} {'shape':<14} {'sparsity':>8} {'bits':>4} {'obj.base':>9} "
                f"{'obj.'+self.method:>9} {'damp':>7} {'sec':>6} {'rate d/c':>13} {'VRD':>8}")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            rate = ("" if r.firing_rate_dense is None else
                    f"{r.firing_rate_dense:.3f}/{r.firing_rate_compressed:.3f}")
            lines.append(
                f"{r.name:<12} {r.kind:<7} {'x'.join(map(str, r.shape)):<14} {r.sparsity:>8.3f} "
                f"{r.bits if r.bits else '-':>4} {r.objective_before:>9.4f} {r.objective_after:>9.4f} "
                f"{(f'{r.damp:.0e}' if r.damp is not None else '-'):>7} {r.seconds + r.hessian_seconds:>6.2f} "
                f"{rate:>13} {(f'{r.van_rossum:.4f}' if r.van_rossum is not None else '-'):>8}"
                + (f"  fallback: {r.fallback}" if r.fallback else ""))
        lines.append(f"overall sparsity {self.overall_sparsity:.4f} over {len(self.layers)} layers; "
                     "obj = relative layer output error tr(dW H dW^T)/tr(W H W^T); base = magnitude/RTN")
        return "\n".join(lines)


def parse_pattern(pattern: str | tuple | None) -> tuple[int, int] | None:
    if pattern is None or isinstance(pattern, tuple):
        return pattern
    try:
        n, m = (int(v) for v in str(pattern).split(":"))
    except ValueError as e:
        raise SbcError(f"pattern must look like N:M (e.g. 2:4), got {pattern!r}") from e
    if not 0 < n < m:
        raise SbcError(f"pattern N:M needs 0 < N < M, got {pattern!r}")
    return n, m


def _check_args(sparsity, bits, method, allocation, grid, pattern):
    if method not in METHODS:
        raise SbcError(f"method must be one of {', '.join(METHODS)}")
    if allocation not in ALLOCATIONS:
        raise SbcError(f"allocation must be one of {', '.join(ALLOCATIONS)}")
    if grid not in GRIDS:
        raise SbcError(f"grid must be one of {', '.join(GRIDS)}")
    if sparsity is None and bits is None and pattern is None:
        raise SbcError("nothing to do: give a sparsity, a bit width or an N:M pattern")
    if sparsity is not None and not 0 <= sparsity < 1:
        raise SbcError(f"sparsity must be in [0, 1), got {sparsity}")
    if bits is not None and not 2 <= int(bits) <= 8:
        raise SbcError(f"bits must be between 2 and 8, got {bits}")
    if pattern is not None and sparsity is not None:
        raise SbcError("give either --sparsity or --pattern, not both")


def _layer_matrix(node) -> np.ndarray:
    w = np.asarray(node.weight)
    return w.reshape(w.shape[0], -1) if w.ndim > 2 else w


def compress(
    graph: nir.NIRGraph,
    calib,
    *,
    sparsity: float | None = None,
    bits: int | None = None,
    method: str = "sbc",
    pattern: str | tuple | None = None,
    allocation: str = "lamp",
    lamp_p: float = 2.0,
    grid: str = "symmetric",
    granularity: str = "channel",
    cfg: SimConfig | None = None,
    sequential: bool = False,
    rel_damp: float = 0.01,
    exact_resolve: bool = False,
    layers: list[str] | None = None,
    batch_size: int = 32,
    measure_damage: bool = True,
    progress: bool = False,
    calibration: Calibration | None = None,
) -> tuple[nir.NIRGraph, CompressionReport]:
    """Compress `graph` one-shot; returns (new graph, report). `calib` is a Dataset (.batches()).

    method      sbc (ExactOBS + GPTQ with the spike-train Hessian), sbc-fast (SparseGPT-style sweep, same
                objective), obc (same as sbc with the current Hessian, M = I), magnitude, wanda, rtn.
    allocation  lamp (the paper's, exponent lamp_p), uniform, global (magnitude), obs (the k smallest
                ExactOBS trace scores over all layers, each layer's divided by its dense objective
                tr(W H W^T): one extra trace per layer; dense calibration and unstructured only).
    sequential  each layer's Hessian is collected with the already-compressed upstream layers (default:
                all layers see the dense model, the authors' choice).
    calibration a Calibration from `calibrate()` on the dense graph to reuse (sweeps over sparsity/bits
                share one calibration pass); its objective must match the method ("current" for obc).
    """
    _check_args(sparsity, bits, method, allocation, grid, pattern)
    nm = parse_pattern(pattern)
    cfg = cfg or SimConfig()
    t_start = time.perf_counter()
    new = copy.deepcopy(graph)
    fg = flatten(new)
    names = layers or fg.weight_nodes()
    unknown = [n for n in names if n not in fg.nodes]
    if unknown:
        raise SbcError(f"unknown layer(s) {unknown}; weight layers are {fg.weight_nodes()}")
    objective = "current" if method == "obc" else "smp"
    mats = [_layer_matrix(fg.nodes[n]) for n in names]
    if allocation == "obs" and sparsity and (sequential or nm is not None):
        raise SbcError("allocation obs needs the dense calibration of every layer up front and "
                       "unstructured pruning (not --sequential, not --pattern)")
    if sparsity and allocation != "obs":
        counts = allocate(mats, sparsity, method=allocation, p=lamp_p)
    else:
        counts = [0] * len(names)
    log.info("expected peak memory for calibration: %.1f MiB",
             estimate_memory(fg, names, batch_size) / 2**20)

    seconds = {"calibration": 0.0, "compression": 0.0, "damage": 0.0}
    dense_walker = Walker(flatten(graph), cfg)
    calibs: dict[str, Calibration] = {}
    if calibration is not None:
        if sequential:
            raise SbcError("a precomputed calibration cannot be used with sequential calibration")
        if calibration.objective != objective:
            raise SbcError(f"the calibration was collected for the {calibration.objective!r} objective; "
                           f"method {method} needs {objective!r}")
        if method == "wanda" and not calibration.input_norms:
            raise SbcError("method wanda needs a calibration collected with input_norms=True")
        missing = [n for n in names if n not in calibration.layers]
        if missing:
            raise SbcError(f"the calibration has no Hessian for layer(s) {missing}")
        calibs = {n: calibration for n in names}
    elif not sequential:
        t0 = time.perf_counter()
        cal = calibrate(dense_walker, calib, layers=names, objective=objective, batch_size=batch_size,
                        progress=progress, input_norms=method == "wanda")
        seconds["calibration"] += time.perf_counter() - t0
        calibs = {n: cal for n in names}
    if (method in ("sbc", "obc") and (sparsity or nm is not None)) or allocation == "obs":
        if not compiled_on_disk():
            log.info("compiling the ExactOBS kernels with numba (first run after an install or update, "
                     "~15 s; cached afterwards)")
    if sparsity and allocation == "obs":
        t0 = time.perf_counter()
        counts = allocate_by_scores([_obs_costs(W2, calibs[n].layers[n], rel_damp)
                                     for n, W2 in zip(names, mats)], sparsity)
        seconds["compression"] += time.perf_counter() - t0
    notes: list[str] = []
    reports: list[LayerReport] = []
    quant: dict[str, tuple] = {}
    bar = _bar(len(names), progress, "compressing")
    for name, k in zip(names, counts):
        node = fg.nodes[name]
        if sequential:  # rebuild the walker so upstream layers already carry their compressed weights
            t0 = time.perf_counter()
            calibs[name] = calibrate(Walker(fg, cfg), calib, layers=[name], objective=objective,
                                     batch_size=batch_size, progress=False, input_norms=method == "wanda")
            seconds["calibration"] += time.perf_counter() - t0
        lc = calibs[name].layers[name]
        t0 = time.perf_counter()
        W = np.asarray(node.weight)
        W2 = _layer_matrix(node)
        H = lc.H
        sq = lc.acc.sq_norms if method == "wanda" else None
        groups = lc.groups
        parts, res_parts = [], []
        shown = [0.0]  # share of this layer already added to the bar (the ExactOBS trace moves it)
        for g, rows, cols in _group_blocks(W2.shape, groups):  # each group has its own block of H
            k_g = int(round(k * (g + 1) / groups)) - int(round(k * g / groups))
            r = compress_layer(W2[rows], H[cols, cols], method=method, n_prune=k_g, pattern=nm, bits=bits,
                               grid_scheme=grid, granularity=granularity, rel_damp=rel_damp,
                               sq_norms=None if sq is None else sq[cols], exact_resolve=exact_resolve,
                               on_rows=_layer_progress(bar, shown, g, groups))
            parts.append(r.W)
            res_parts.append(r)
        W_new = np.concatenate(parts, axis=0).reshape(W.shape).astype(W.dtype, copy=False)
        if bits and all(r.q is not None for r in res_parts):
            q, scale, zero = _stack_codes(res_parts, W.shape)
            # on the grid exactly in the weight's own float type, so integer exports reproduce it bit for bit
            W_new = ((q - zero.reshape(-1, *[1] * (q.ndim - 1))).astype(W.dtype)
                     * scale.astype(W.dtype).reshape(-1, *[1] * (q.ndim - 1)))
            quant[name] = (q, scale, zero)
        node.weight = W_new
        esc = [e for r in res_parts for e in r.escalations]
        layer_notes = list(dict.fromkeys(n for r in res_parts for n in r.notes))  # groups repeat notes
        notes.extend(f"{name}: {n}" for n in layer_notes + esc)
        fallback = "; ".join(sorted({r.fallback for r in res_parts if r.fallback})) or None
        if fallback:
            log.warning("layer %s fell back: %s", name, fallback)
        for e in esc:
            log.info("layer %s: %s", name, e)
        seconds["compression"] += time.perf_counter() - t0
        reports.append(LayerReport(
            name=name, kind=fg.kind(name), shape=tuple(W.shape), neuron=lc.neuron,
            kernel=_kernel_name(lc.betas), sparsity=float(1 - np.count_nonzero(W_new) / W_new.size), bits=bits,
            objective_before=float(np.mean([r.objective_before for r in res_parts])),
            objective_after=float(np.mean([r.objective_after for r in res_parts])),
            damp=max((r.damp for r in res_parts if r.damp is not None), default=None),
            seconds=float(sum(r.seconds for r in res_parts)), hessian_seconds=lc.seconds,
            fallback=fallback, escalations=esc, notes=layer_notes))
        if bar is not None:
            bar.update(1 - shown[0])
    if bar is not None:
        bar.close()
    cal_any = next(iter(calibs.values()))
    notes.extend(cal_any.notes if not sequential else [n for c in calibs.values() for n in c.notes])
    total = sum(np.asarray(fg.nodes[n].weight).size for n in names)
    zeros = sum(np.asarray(fg.nodes[n].weight).size - np.count_nonzero(fg.nodes[n].weight) for n in names)
    report = CompressionReport(
        method=method, sparsity=sparsity, bits=bits, pattern=None if nm is None else f"{nm[0]}:{nm[1]}",
        allocation=allocation, sim=cfg.to_metadata(), n_calibration=cal_any.n_samples, layers=reports,
        overall_sparsity=zeros / total if total else 0.0, seconds=seconds, notes=notes, quant=quant)
    if measure_damage:
        t0 = time.perf_counter()
        measure_spike_damage(dense_walker, Walker(fg, cfg), calib, reports, batch_size=batch_size,
                             progress=progress)
        seconds["damage"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    new.metadata = {**(new.metadata or {}), **compression_metadata(report)}
    return new, report


def _stack_codes(parts, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer codes of all groups as one array shaped like the weight, and per-output-channel
    scale and zero point (tensor-granularity grids are broadcast to every channel)."""
    qs, scales, zeros = [], [], []
    for r in parts:
        rows = r.q.shape[0]
        qs.append(r.q)
        scales.append(np.broadcast_to(np.asarray(r.grid.scale, np.float64).reshape(-1, 1), (rows, 1))[:, 0])
        zeros.append(np.broadcast_to(np.asarray(r.grid.zero, np.float64).reshape(-1, 1), (rows, 1))[:, 0])
    q = np.concatenate(qs, axis=0).reshape(shape).astype(np.int32)
    return q, np.concatenate(scales), np.concatenate(zeros).astype(np.int32)


def _group_blocks(shape, groups):
    """(g, output rows, input columns) of each group of a (d_out, d_in/groups) layer matrix: a grouped
    convolution's group g maps its own input block (of the Hessian) to its own output rows."""
    og, dg = shape[0] // groups, shape[1]
    for g in range(groups):
        yield g, slice(g * og, (g + 1) * og), slice(g * dg, (g + 1) * dg)


def _obs_costs(W2, lc, rel_damp):
    """ExactOBS trace scores of every weight of a layer (per group for grouped convolutions), divided by
    the layer's dense objective tr(W H W^T): the relative output distortion of each greedy removal."""
    H = np.asarray(lc.H, np.float64)
    out = []
    energy = 0.0
    for _, rows, cols in _group_blocks(W2.shape, lc.groups):
        Wg, Hg = np.asarray(W2[rows], np.float64), H[cols, cols]
        energy += float(np.einsum("ij,jk,ik->", Wg, Hg, Wg))
        try:
            Hinv, _, _ = damped_inverse(Hg, rel_damp, 1.0)
            _, sc = obs_trace(Wg, Hinv)
        except FactorizationError:  # the layer will fall back to magnitude: rank it by magnitude
            sc = np.sort(Wg**2, axis=1)
        out.append(sc)
    return np.concatenate(out, axis=0) / (energy if energy > 0 else 1.0)


def compression_metadata(report: CompressionReport) -> dict[str, Any]:
    meta = {"sbc_onnx.method": report.method, "sbc_onnx.allocation": report.allocation,
            "sbc_onnx.overall_sparsity": float(report.overall_sparsity),
            "sbc_onnx.n_calibration": int(report.n_calibration)}
    if report.sparsity is not None:
        meta["sbc_onnx.sparsity"] = float(report.sparsity)
    if report.bits is not None:
        meta["sbc_onnx.bits"] = int(report.bits)
    if report.pattern is not None:
        meta["sbc_onnx.pattern"] = report.pattern
    return {**meta, **report.sim}


def _kernel_name(betas) -> str:
    if not betas:
        return "identity"
    if betas == (1.0,):
        return "cumsum"
    return "exp(" + ",".join(f"{b:.4g}" for b in betas) + ")"


def measure_spike_damage(dense: Walker, comp: Walker, dataset, reports: list[LayerReport], *,
                         batch_size: int = 32, progress: bool = False) -> None:
    """Per layer: firing rate of the fed neuron, dense and compressed, and the Van Rossum distance
    between their spike trains on the calibration data (kernel: the neuron's own leak; non-leaky
    neurons use tau = 10 steps), as squared distance per neuron per sample, summed over time."""
    targets = {r.neuron: r for r in reports if r.neuron is not None and dense.ops[r.neuron].spiking}
    if not targets:
        return
    decay = {}
    for n in targets:
        k = dense.fg.prim(n).decays(dense.fg.nodes[n], dense.cfg)[-1]  # the membrane stage
        decay[n] = 0.9 if k is None else float(np.mean(1 - k))
    acc = {n: {"d": 0.0, "sd": 0.0, "sc": 0.0, "cells": 0} for n in targets}

    bar = _bar(getattr(dataset, "n", None), progress, "measuring spike damage")
    for x_tb, y in dataset.batches(batch_size):
        seqs: dict[str, dict[str, list]] = {n: {"d": [], "c": []} for n in targets}

        def rec(n, which):
            return lambda t, s: seqs[n][which].append(s.astype(bool))  # spikes: 1 byte each

        dense.run(x_tb, on_output={n: rec(n, "d") for n in targets}, record_outputs=False,
                  on_step=step_progress(bar, len(y) / 2, x_tb.shape[0]))
        comp.run(x_tb, on_output={n: rec(n, "c") for n in targets}, record_outputs=False,
                 on_step=step_progress(bar, len(y) / 2, x_tb.shape[0]))
        for n in targets:
            f = np.zeros_like(seqs[n]["d"][0], dtype=np.float64)
            for sd, sc in zip(seqs[n]["d"], seqs[n]["c"]):
                f = decay[n] * f + (sd.astype(np.int8) - sc.astype(np.int8))
                acc[n]["d"] += float(np.sum(f * f))
                acc[n]["sd"] += float(sd.sum())
                acc[n]["sc"] += float(sc.sum())
            acc[n]["cells"] += seqs[n]["d"][0].size
            acc[n]["steps"] = len(seqs[n]["d"])
    if bar is not None:
        bar.close()
    for n, r in targets.items():
        a = acc[n]
        cells, steps = a["cells"], a.get("steps", 1)
        r.van_rossum = a["d"] / cells
        r.firing_rate_dense = a["sd"] / (cells * steps)
        r.firing_rate_compressed = a["sc"] / (cells * steps)


def _layer_progress(bar, shown, g, groups):
    """on_rows callback moving the layer bar within a layer: group g of ``groups`` is done to done/total
    (at most 0.9 of the layer: the compensation follows the trace)."""
    if bar is None:
        return None

    def on_rows(done, total):
        frac = 0.9 * (g + done / max(total, 1)) / groups
        if frac > shown[0]:
            bar.update(frac - shown[0])
            shown[0] = frac
    return on_rows


def _bar(total, enabled, desc):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} [{elapsed}<{remaining}]")
