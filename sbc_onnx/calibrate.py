"""Calibration: one streaming pass of the walker collects every weight layer's SMP Hessian.

For a weight node W feeding neuron N, the layer objective is the distance between spike trains, whose
Hessian is H = 2 E[(M X)^T (M X)] with X the layer's input over time and M the causal leak kernel of N
(docs/sbc_method.md §1.2-1.4). M X is a recursive filter, so it streams: z_t = beta z_{t-1} + x_t per stage.

  N is LIF / LI        beta = 1 - dt/tau (Euler) or exp(-dt/tau) (exact)
  N is IF / I          beta = 1 (cumulative sum)
  N is CubaLIF/CubaLI  synaptic stage then membrane stage
  no neuron follows    identity (the current-based objective); method "obc" forces identity everywhere

Objective "smp-reset" (reset-aware, docs/sbc_method.md §B.4): a neuron reset to v_reset after a spike forgets
the input it had integrated, so an input error only lasts until the next spike.  With spikes at the fed
neuron's mean calibration rate r per step (a first pass over the data measures it), an input of s steps ago
survives with probability (1 - r)^s: the membrane stage's beta becomes beta (1 - r).  Under reset by
subtraction the integrated error survives the reset and the filter is the plain SMP one.

The fed neuron is found through stateless linear nodes (Scale, pooling, Flatten, Delay, subgraph ports,
fan-in sums). Convolutions are unfolded im2col-style after filtering (both linear, same result), each
(sample, position) is one unit; time is summed, units averaged. Nothing per step is stored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .compress.hessian import HessianAccumulator, TimeFilter
from .compress.threads import blas_threads
from .errors import SbcError
from .graph import FlatGraph
from .primitives import NONLINEAR
from .progress import progress_bar, step_progress
from .repair import firing_rates
from .sim import SimConfig, Walker
from .sim.conv import as_tuple, conv_padding, im2col_t

log = logging.getLogger("sbc_onnx")

OBJECTIVES = ("smp", "smp-reset", "current")


def fed_neuron(fg: FlatGraph, name: str) -> str | None:
    """The first neuron reached from `name` through pass-through nodes (None if there is none)."""
    found = fg.fed_neurons(name)
    if len(found) > 1:
        log.info("layer %s feeds several neurons (%s); its kernel uses %s", name, ", ".join(found), found[0])
    return found[0] if found else None


def kernel_betas(fg: FlatGraph, layer: str, cfg: SimConfig, objective: str = "smp",
                 rates: dict[str, float] | None = None) -> tuple[float, ...]:
    """Decays of the filter cascade M for `layer` (empty = identity): the fed neuron's catalogue stages;
    objective "smp-reset": the last (membrane) stage times 1 - the neuron's rate in `rates` (if listed)."""
    if objective == "current":
        return ()
    neuron = fed_neuron(fg, layer)
    if neuron is None:
        return ()
    betas = fg.prim(neuron).kernel_betas(fg.nodes[neuron], cfg)
    if objective == "smp-reset" and betas and rates and neuron in rates:
        betas = betas[:-1] + (betas[-1] * (1.0 - rates[neuron]),)
    return betas


def reset_rates(walker: Walker, dataset, layers: list[str], *, batch_size: int = 32) -> dict[str, float]:
    """For the reset-aware objective: {fed neuron: mean spikes per neuron per step on `dataset`} of the
    spiking neurons `layers` feed; empty under reset by subtraction (the reset keeps the error)."""
    if walker.cfg.reset != "to_v_reset":
        return {}
    neurons = sorted({n for n in (fed_neuron(walker.fg, l) for l in layers) if n is not None and n in walker.spiking})
    if not neurons:
        return {}
    per_channel = firing_rates(walker.fg, dataset, walker.cfg, neurons, batch_size=batch_size)
    return {n: float(np.mean(r)) for n, r in per_channel.items()}


def nonlinear_note(fg: FlatGraph, layer: str, neuron: str | None) -> str | None:
    """The note for a layer whose output meets a nonlinear node (e.g. MaxPool2d) before a neuron: the SMP
    kernel is defined through linear nodes only, so that branch gets no neuron's filter (None: no such node)."""
    blocked = [s for s in fg.paths_to_neurons(layer)[1] if fg.role(s) == NONLINEAR]
    if not blocked:
        return None
    where = ", ".join(f"{s} ({fg.kind(s)})" for s in dict.fromkeys(blocked))
    kernel = f"neuron {neuron}'s kernel from its other path" if neuron else "the identity kernel (current objective)"
    return (f"layer {layer}: its output passes through {where}, which is not linear, before reaching a neuron; "
            f"its Hessian uses {kernel}")


@dataclass
class InputStats:
    """What a layer's input did over the whole calibration set (padding past a sample's length excluded):
    its mean (spikes per input per step for spiking inputs), smallest and largest value."""

    total: float = 0.0
    count: int = 0
    low: float = np.inf
    high: float = -np.inf

    def add(self, x: np.ndarray) -> None:
        if x.size:
            self.total += float(np.sum(x, dtype=np.float64))
            self.count += x.size
            self.low, self.high = min(self.low, float(np.min(x))), max(self.high, float(np.max(x)))

    @property
    def rate(self) -> float:
        return self.total / self.count if self.count else 0.0

    def problem(self) -> str | None:
        """Why this input makes the layer's Hessian meaningless, or None: it never spiked (H = 0), or it
        was one constant everywhere, e.g. every input spiking at every step (H has rank 1)."""
        if not np.isfinite(self.total) or not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"its input has non-finite values (mean {self.rate:g})"
        if self.high == self.low == 0:
            return "its input never spiked (firing rate 0 on every input at every step)"
        if self.high == self.low:
            what = "saturated: every input spiked at every step" if self.high == 1 else "constant everywhere"
            return f"its input is {what} (rate {self.rate:g})"
        return None


@dataclass
class LayerCalibration:
    name: str
    kind: str
    neuron: str | None
    betas: tuple[float, ...]
    acc: HessianAccumulator
    groups: int = 1
    conv: dict | None = None  # kernel, stride, pads, dilation for im2col
    filt: TimeFilter | None = None
    seconds: float = 0.0
    inputs: InputStats = field(default_factory=InputStats)

    @property
    def H(self) -> np.ndarray:
        return self.acc.H

    def check(self, n_samples: int) -> None:
        """SbcError naming this layer if its calibration cannot guide compression: a dead, saturated or
        non-finite input, or a Hessian with non-finite entries (the simulation or its filter diverged)."""
        why = self.inputs.problem()
        if why is None and not self.acc.is_finite:
            why = "its calibration Hessian has non-finite entries (the simulation or the neuron's filter diverged)"
        if why is not None:
            raise SbcError(f"layer {self.name}: over the {n_samples} calibration sample(s), {why}; compressing it "
                           "would be meaningless: check the calibration data and the model's simulation settings")


@dataclass
class Calibration:
    layers: dict[str, LayerCalibration]
    n_samples: int
    steps: int
    seconds: float
    objective: str = "smp"
    input_norms: bool = True
    notes: list[str] = field(default_factory=list)

    def check(self, layers: list[str] | None = None) -> None:
        """SbcError naming the first of `layers` (default: all) whose calibration is unusable
        (`LayerCalibration.check`)."""
        for name in layers if layers is not None else list(self.layers):
            self.layers[name].check(self.n_samples)


def _layer_setup(fg: FlatGraph, name: str, cfg: SimConfig, objective: str, rates=None) -> LayerCalibration:
    node, kind = fg.nodes[name], fg.kind(name)
    w = np.asarray(node.weight)
    betas = kernel_betas(fg, name, cfg, objective, rates)
    if fg.prim(name).conv:
        nd = w.ndim - 2
        kernel = tuple(w.shape[2:])
        stride, dilation = as_tuple(node.stride, nd), as_tuple(node.dilation, nd)
        conv = dict(kernel=kernel, stride=stride, pads=conv_padding(node.padding, kernel, dilation, stride),
                    dilation=dilation)
        groups = int(np.asarray(node.groups).reshape(-1)[0])
        d = int(np.prod(w.shape[2:])) * w.shape[1] * groups  # all input channels: H per group is a block
        return LayerCalibration(name, kind, fed_neuron(fg, name), betas, HessianAccumulator(d, betas),
                                groups=groups, conv=conv)
    return LayerCalibration(name, kind, fed_neuron(fg, name), betas, HessianAccumulator(w.shape[-1], betas))


def calibrate(
    walker: Walker,
    dataset,
    *,
    layers: list[str] | None = None,
    objective: str = "smp",
    batch_size: int = 32,
    progress: bool = False,
    input_norms: bool = True,
) -> Calibration:
    """One pass over `dataset` collecting H for `layers` (default: every weight node).

    objective "smp": M from the fed neuron (SBC); "smp-reset": the same, shortened by the fed neuron's
    calibration firing rate (reset-aware; one more pass over `dataset` first); "current": M = I (OBC, the
    ANN method ported).  input_norms: also collect the unfiltered per-input sums of squares (Wanda's ||x_j||^2)."""
    fg, cfg = walker.fg, walker.cfg
    if objective not in OBJECTIVES:
        raise SbcError(f"objective must be one of {', '.join(OBJECTIVES)}")
    names = layers if layers is not None else fg.weight_nodes()
    if not names:
        raise SbcError("the graph has no weight layers (Affine, Linear, Conv1d, Conv2d) to compress")
    rates = reset_rates(walker, dataset, names, batch_size=batch_size) if objective == "smp-reset" else None
    cals = {n: _layer_setup(fg, n, cfg, objective, rates) for n in names}
    t0 = time.perf_counter()
    state: dict[str, Any] = {"valid": None}

    def observer(cal: LayerCalibration):
        def on_input(t: int, x: np.ndarray) -> None:
            t1 = time.perf_counter()
            if t == 0:
                cal.filt = TimeFilter(cal.betas, x.shape)
            z = cal.filt.step(x) if cal.betas else np.asarray(x, dtype=np.float64)
            valid = state["valid"]
            alive = None if valid is None else valid > t
            if alive is not None and not alive.all():  # samples past their true length contribute nothing
                z = z * alive.reshape((-1,) + (1,) * (z.ndim - 1))
                cal.inputs.add(x[alive])
            else:
                cal.inputs.add(x)
            if cal.conv is None:
                rows = z.reshape(-1, z.shape[-1])
                units = rows.shape[0] if t == 0 else 0
                cal.acc.add(rows.astype(np.float32), units)
                if input_norms:
                    xr = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
                    cal.acc.add_raw_sq(np.einsum("ij,ij->j", xr, xr))  # Wanda's ||x_j||^2, unfiltered
            else:
                zc = z.astype(np.float32)
                cols_t, _ = im2col_t(zc, cal.conv["kernel"], cal.conv["stride"], cal.conv["pads"],
                                     cal.conv["dilation"])
                units = cols_t.shape[1] if t == 0 else 0
                cal.acc.add(cols_t.T, units)
                if input_norms:  # a second unfolding of the unfiltered input: only when Wanda needs it
                    xc = cols_t if not cal.betas else im2col_t(
                        np.asarray(x, np.float32), cal.conv["kernel"], cal.conv["stride"], cal.conv["pads"],
                        cal.conv["dilation"])[0]
                    cal.acc.add_raw_sq(np.einsum("ij,ij->i", xc, xc, dtype=np.float64))
            cal.seconds += time.perf_counter() - t1

        return on_input

    hooks = {n: observer(c) for n, c in cals.items()}
    bar = progress_bar(getattr(dataset, "n", None), "calibrating", progress)
    n_samples, steps = 0, 0
    # BLAS on one thread for the whole pass: the observers' block products run as fixed pieces on the cores
    # (compress/threads.py), and after every threaded BLAS call of the simulation OpenBLAS's idle workers
    # busy-wait for a while, taking a core from those pieces (benchmarks/results/kernels.md)
    with blas_threads():
        for batch in dataset.batches(batch_size, with_lengths=True, per_step=True):
            x_tb, y, lengths = batch
            state["valid"] = np.asarray(lengths) if lengths is not None else None
            walker.run(x_tb, on_input=hooks, record_outputs=False,
                       on_step=step_progress(bar, len(y), x_tb.shape[0]))
            for cal in cals.values():
                # a batch's rows end its last block: the float32 blocks are then the same whichever whole
                # batches a pass covers, so shards of the set (distributed/) fold the bits of one pass
                t1 = time.perf_counter()
                cal.acc.flush()
                cal.seconds += time.perf_counter() - t1
            n_samples += len(y)
            steps = max(steps, x_tb.shape[0])
            del batch, x_tb  # freed before the next batch is built (Dataset.batches)
    if bar is not None:
        bar.close()
    if n_samples == 0:
        raise SbcError("the calibration dataset is empty")
    calib = Calibration(layers=cals, n_samples=n_samples, steps=steps, seconds=time.perf_counter() - t0,
                        objective=objective, input_norms=input_norms)
    _add_notes(calib, fg)
    return calib


def _add_notes(calib: Calibration, fg: FlatGraph) -> None:
    """The notes of a finished pass: layers meeting a nonlinear node, rank-deficient Hessians."""
    if calib.objective != "current":
        calib.notes += [n for n in (nonlinear_note(fg, c.name, c.neuron) for c in calib.layers.values()) if n]
    for cal in calib.layers.values():
        live = int(np.count_nonzero(cal.acc.diag > 0))
        units = cal.acc.n_units
        # Static (rate-coded) inputs: filtered spikes barely change within a sample, so the rank of H is
        # about the number of samples x positions, not the number of rows: warn when that is < live inputs.
        if units < live:
            msg = (f"layer {cal.name}: calibration has {units} independent samples x positions for {live} "
                   f"live inputs; the Hessian is rank-deficient and compensation may overfit "
                   f"(use more calibration samples)")
            calib.notes.append(msg)  # printed once, with the report's notes (not logged as well)


# ---- a calibration pass split into shards (distributed/): raw sums out, one Calibration back

def shard_sums(calib: Calibration) -> dict[str, Any]:
    """The raw sums of a pass over a shard of whole batches, to be added to the other shards' (`merge_shards`):
    per layer the float64 upper triangle of sum z z^T, units, input square norms, input statistics, seconds."""
    layers = {}
    for name, c in calib.layers.items():
        S, n_units, sq = c.acc.sums()
        layers[name] = {"S": S, "n_units": n_units, "sq": sq, "seconds": c.seconds,
                        "inputs": (c.inputs.total, c.inputs.count, c.inputs.low, c.inputs.high)}
    return {"layers": layers, "n_samples": calib.n_samples, "steps": calib.steps}


def merge_shards(fg: FlatGraph, cfg: SimConfig, shards: list[dict[str, Any]], *, layers: list[str],
                 objective: str = "smp", input_norms: bool = True, seconds: float = 0.0) -> Calibration:
    """One Calibration from the `shard_sums` of consecutive shards, added in shard order: the same float32
    blocks as one pass (each batch ends its blocks), only the float64 order of the additions differs."""
    if not shards or sum(s["n_samples"] for s in shards) == 0:
        raise SbcError("the calibration dataset is empty")
    cals = {n: _layer_setup(fg, n, cfg, objective) for n in layers}
    for shard in shards:
        for name, c in cals.items():
            part = shard["layers"][name]
            c.acc.add_sums(part["S"], part["n_units"], part["sq"])
            c.seconds += part["seconds"]
            total, count, low, high = part["inputs"]
            c.inputs.total += total
            c.inputs.count += count
            c.inputs.low, c.inputs.high = min(c.inputs.low, low), max(c.inputs.high, high)
    calib = Calibration(layers=cals, n_samples=sum(s["n_samples"] for s in shards),
                        steps=max(s["steps"] for s in shards), seconds=seconds, objective=objective,
                        input_norms=input_norms)
    _add_notes(calib, fg)
    return calib
