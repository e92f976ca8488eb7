"""Spiking repair after one-shot compression: per-channel thresholds that restore the dense firing rates.

A compressed layer changes the firing rates of the neurons it feeds, and through them every layer
downstream; the layer-wise objective cannot see this.  Repair uses the calibration data once more: it
measures each spiking neuron's rate per channel in the dense model, then rescales the compressed model's
thresholds channel by channel, v_th <- v_th * (rate_compressed / rate_dense), a fixed-point step that is
exact for an integrate-and-fire neuron driven by a steady current (its rate is drive / v_th).  All
spiking neurons move together; a few passes let downstream layers settle behind upstream ones.  Only the
threshold fields change (docs/sbc_method.md §B.2); weights, and so the compressed storage, do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import FlatGraph, flatten
from .sim import SimConfig, Walker

__all__ = ["RepairReport", "firing_rates", "repair_thresholds"]

MAX_STEP = 2.0  # largest change of a threshold in one pass (either way): keeps silent channels from running away


@dataclass
class RepairReport:
    neurons: list[str]
    passes: int
    rates_dense: dict[str, np.ndarray]          # per neuron, per channel (spikes per neuron per step)
    rates_before: dict[str, np.ndarray]
    rates_after: dict[str, np.ndarray]
    history: list[float] = field(default_factory=list)  # mean relative rate error after each pass

    def error(self, rates: dict[str, np.ndarray]) -> float:
        """The rate error: over the neuron layers, the mean of sum_c |rate_c - dense_c| / sum_c dense_c
        (channels weighted by their dense activity, so a channel with a handful of calibration spikes
        cannot dominate)."""
        errs = [np.abs(rates[n] - self.rates_dense[n]).sum() / self.rates_dense[n].sum() for n in self.neurons
                if self.rates_dense[n].sum() > 0]
        return float(np.mean(errs)) if errs else 0.0

    def to_dict(self) -> dict:
        return {"neurons": self.neurons, "passes": self.passes, "rate_error_before": self.error(self.rates_before),
                "rate_error_after": self.error(self.rates_after), "history": self.history}

    def summary(self) -> str:
        return (f"threshold repair on {len(self.neurons)} neuron layer(s), {self.passes} pass(es): mean firing-rate "
                f"error vs dense {self.error(self.rates_before):.3f} -> {self.error(self.rates_after):.3f}")


def firing_rates(graph, data, cfg: SimConfig, neurons: list[str], *, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per neuron node: spikes per neuron per step, averaged over all but the channel axis (the first
    axis of the node's own shape; a flat layer's channels are its neurons)."""
    return _measure(graph, data, cfg, neurons, batch_size)[0]


def _measure(graph, data, cfg, neurons, batch_size) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """(per-channel rates, per-sample output shape) of each neuron node."""
    walker = Walker(graph if isinstance(graph, FlatGraph) else flatten(graph), cfg)
    sums: dict[str, np.ndarray] = {}
    cells = dict.fromkeys(neurons, 0)
    shapes: dict[str, tuple] = {}

    def counter(n):
        def add(t, s):
            s = np.asarray(s, np.float64).reshape(np.shape(s)[0], -1) if np.ndim(s) < 2 else np.asarray(s, np.float64)
            shapes[n] = s.shape[1:]
            per = s.reshape(s.shape[0], s.shape[1], -1).sum(axis=(0, 2))
            sums[n] = per if n not in sums else sums[n] + per
            cells[n] += s.shape[0] * int(np.prod(s.shape[2:]))
        return add

    for x_tb, _ in data.batches(batch_size, per_step=True):
        walker.run(x_tb, on_output={n: counter(n) for n in neurons}, record_outputs=False)
        del x_tb  # freed before the next batch is built (Dataset.batches)
    return {n: sums[n] / cells[n] for n in neurons}, shapes


def repair_thresholds(dense, compressed, data, cfg: SimConfig, *, passes: int = 6, batch_size: int = 32,
                      neurons: list[str] | None = None, per_layer: bool = False) -> RepairReport:
    """Rescale the thresholds of `compressed` (a NIR graph, changed in place) so that every spiking neuron's
    per-channel calibration firing rate approaches the dense model's.  Each channel's threshold is searched
    by a safeguarded secant step: the proportional step v_th * rate / dense rate, kept inside the bracket
    of thresholds seen to fire too much (below) and too little (above).  The thresholds of the pass with
    the smallest rate error are kept.  Channels silent in the dense model keep their threshold.
    per_layer: one factor per neuron layer, matching its mean rate over the channels (for chips with one
    threshold per layer, `Profile.homogeneous_params`): a layer whose thresholds were equal keeps them equal."""
    fg = flatten(compressed)
    names = neurons if neurons is not None else [n for n in fg.spiking() if fg.prim(n).threshold]
    dense_rates = firing_rates(dense, data, cfg, names, batch_size=batch_size)
    rates, shapes = _measure(compressed, data, cfg, names, batch_size)
    report = RepairReport(names, 0, dense_rates, rates, rates)
    search = {n: _Bracket(_thresholds(fg, n, shapes[n]), per_layer) for n in names}
    best = (report.error(rates), {n: search[n].current() for n in names}, rates)
    for _ in range(passes):
        for n in names:
            _set_threshold(fg, n, search[n].step(rates[n], dense_rates[n]))
        rates = firing_rates(compressed, data, cfg, names, batch_size=batch_size)
        report.passes += 1
        report.history.append(report.error(rates))
        if report.history[-1] < best[0]:
            best = (report.history[-1], {n: search[n].current() for n in names}, rates)
    for n in names:
        _set_threshold(fg, n, best[1][n])
    report.rates_after = best[2]
    return report


class _Bracket:
    """Per-channel threshold search: lo fired too much, hi too little (rate falls as v_th rises)."""

    def __init__(self, thr: np.ndarray, per_layer: bool = False):
        self.shape, self.per_layer = thr.shape, per_layer
        # (groups, ...) full per-neuron thresholds: a group per channel, or the whole layer as one group
        self.thr = thr.astype(np.float64).reshape((1, -1) if per_layer else thr.shape)
        c = self.thr.shape[0]
        self.lo, self.hi = np.zeros(c), np.full(c, np.inf)
        self.scale = self.thr.reshape(c, -1).mean(axis=1)  # the group's threshold level (shared factor)

    def step(self, rate: np.ndarray, dense: np.ndarray) -> np.ndarray:
        if self.per_layer:  # the layer's mean rate over its (equally sized) channels
            rate, dense = np.mean(rate, keepdims=True), np.mean(dense, keepdims=True)
        active = dense > 0
        self.lo = np.where(active & (rate > dense), np.maximum(self.lo, self.scale), self.lo)
        self.hi = np.where(active & (rate < dense), np.minimum(self.hi, self.scale), self.hi)
        ratio = np.where(rate > 0, rate / np.where(active, dense, 1), 1 / MAX_STEP)
        want = self.scale * np.clip(ratio, 1 / MAX_STEP, MAX_STEP)
        mid = np.where(np.isfinite(self.hi), np.sqrt(np.maximum(self.lo, 1e-30) * self.hi), want)
        inside = (want > self.lo) & (want < self.hi)
        new = np.where(active & (rate != dense), np.where(inside, want, mid), self.scale)
        factor = new / np.where(self.scale != 0, self.scale, 1)
        self.thr = self.thr * factor.reshape((-1,) + (1,) * (self.thr.ndim - 1))
        self.scale = new
        return self.current()

    def current(self) -> np.ndarray:
        """A copy of the thresholds in the layer's own shape."""
        return self.thr.reshape(self.shape).copy()


def _thresholds(fg: FlatGraph, name: str, shape: tuple) -> np.ndarray:
    """The node's threshold with a channel axis: broadcast against (channels, 1, ...) of the node's
    per-sample output shape and against its other parameters (NIR keeps a node's parameters one shape)."""
    node = fg.nodes[name]
    thr = np.asarray(getattr(node, fg.prim(name).threshold))
    per_channel = (shape[0],) + (1,) * (len(shape) - 1)
    others = [np.shape(getattr(node, f)) for f in fg.prim(name).params if getattr(node, f, None) is not None]
    return np.broadcast_to(thr, np.broadcast_shapes(thr.shape, per_channel, *others)).copy()


def _set_threshold(fg: FlatGraph, name: str, thr: np.ndarray) -> None:
    """Set the threshold; parameters of a smaller shape are broadcast to its shape (a scalar-parameter
    node gets one value per channel in every parameter, each the same as before)."""
    node = fg.nodes[name]
    field_name = fg.prim(name).threshold
    setattr(node, field_name, np.asarray(thr, dtype=np.asarray(getattr(node, field_name)).dtype))
    for f in fg.prim(name).params:
        v = getattr(node, f, None)
        if f != field_name and v is not None and np.shape(v) != np.shape(thr):
            setattr(node, f, np.broadcast_to(np.asarray(v), np.shape(thr)).copy())
