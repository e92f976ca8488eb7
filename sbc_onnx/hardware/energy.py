"""Energy and size report: per-layer activity, SynOps, the E_AC/E_MAC energy proxy, weight memory.

SynOps of a weight layer = sum over samples, steps and input positions of (events entering the layer at
that position) x (non-zero fan-out of that position), with the exact convolution fan-out of `fanout.py`
(taps landing inside the output map; no interior approximation).  Events are what the walker feeds the
layer: spikes, or spike counts summed by a pooling node in between.  A layer fed by the graph input
(frames / analog values, not spikes) is counted as dense MACs instead: its dense MAC count per step x
steps.  Energy proxy (docs/sbc_method.md §5):  E = E_AC * SynOps + E_MAC * MACs_first_layer, with
E_AC = 0.9 pJ and E_MAC = 4.6 pJ (45 nm, Horowitz) by default.

Weight memory (weights only; scales and biases not counted), b bits per stored weight:
  dense    n * b
  CSR      nnz * (b + ceil(log2 d_in)) + (rows + 1) * ceil(log2(nnz + 1))     (rows x d_in matrix view)
  bitmask  n + nnz * b
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..compress.grids import infer_grid
from ..evaluate import output_source
from ..graph import FlatGraph, flatten
from ..primitives import NEURON
from ..progress import progress_bar
from ..sim import SimConfig, Walker
from .fanout import dense_macs_per_step, layer_fanout, nonzero_macs_per_step

E_AC_PJ = 0.9
E_MAC_PJ = 4.6


@dataclass
class LayerEnergy:
    name: str
    kind: str
    sources: list
    spike_input: bool         # fed by neurons (SynOps) or by the graph input (MACs)
    weights: int
    nonzero: int
    bits: int
    mean_fanout: float        # mean non-zero fan-out per input position
    events_per_sample: float  # events entering the layer per sample
    synops_per_sample: float
    macs_per_sample: float    # dense MACs (first layer only)
    nz_macs_per_sample: float
    mem_dense_bits: int
    mem_csr_bits: int
    mem_bitmask_bits: int


@dataclass
class EnergyReport:
    model: str
    n_samples: int
    mean_steps: float
    e_ac_pj: float
    e_mac_pj: float
    layers: list[LayerEnergy]
    firing_rates: dict[str, float]  # spikes per neuron per step
    accuracy: float | None = None
    notes: list = field(default_factory=list)

    @property
    def synops(self) -> float:
        return sum(l.synops_per_sample for l in self.layers)

    @property
    def macs(self) -> float:
        return sum(l.macs_per_sample for l in self.layers)

    @property
    def energy_pj(self) -> float:
        return self.e_ac_pj * self.synops + self.e_mac_pj * self.macs

    def memory(self, layout: str) -> int:
        return sum(getattr(l, f"mem_{layout}_bits") for l in self.layers)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(synops_per_sample=self.synops, macs_per_sample=self.macs, energy_pj_per_sample=self.energy_pj,
                 memory_bits={k: self.memory(k) for k in ("dense", "csr", "bitmask")})
        return d

    def table(self) -> str:
        head = (f"{'layer':<8} {'kind':<7} {'src':<8} {'nnz/size':>13} {'bits':>4} {'fan-out':>8} {'events/s':>10} "
                f"{'SynOps/s':>11} {'MACs/s':>10} {'dense KiB':>9} {'CSR KiB':>8} {'mask KiB':>8}")
        lines = [(f"{self.model}: {self.n_samples} samples, {self.mean_steps:.1f} steps on average "
                 "(/s = per sample)"), head, "-" * len(head)]
        for l in self.layers:
            lines.append(
                f"{l.name:<8} {l.kind:<7} {','.join(l.sources)[:8]:<8} {f'{l.nonzero}/{l.weights}':>13} {l.bits:>4} "
                f"{l.mean_fanout:>8.1f} {l.events_per_sample:>10.0f} {l.synops_per_sample:>11.0f} "
                f"{l.macs_per_sample:>10.0f} {l.mem_dense_bits / 8192:>9.2f} {l.mem_csr_bits / 8192:>8.2f} "
                f"{l.mem_bitmask_bits / 8192:>8.2f}")
        lines.append("firing rate (spikes per neuron per step): " +
                     ", ".join(f"{n} {r:.4f}" for n, r in self.firing_rates.items()))
        lines.append(f"SynOps/sample {self.synops:.4g}, first-layer MACs/sample {self.macs:.4g}; "
                     f"E = {self.e_ac_pj} pJ x SynOps + {self.e_mac_pj} pJ x MACs = {self.energy_pj / 1e3:.4g} nJ "
                     "per sample")
        lines.append(f"weight memory: dense {self.memory('dense') / 8192:.2f} KiB, CSR "
                     f"{self.memory('csr') / 8192:.2f} KiB, bitmask {self.memory('bitmask') / 8192:.2f} KiB")
        if self.accuracy is not None:
            lines.append(f"accuracy {self.accuracy:.4f}")
        return "\n".join(lines)


def weight_bits(node) -> int:
    """Bits per stored weight: metadata sbc_onnx.bits, else the integer width needed, else the smallest
    grid inferred from float weights, else the float width."""

    w = np.asarray(node.weight)
    meta = getattr(node, "metadata", None) or {}
    if "sbc_onnx.bits" in meta:
        return int(np.asarray(meta["sbc_onnx.bits"]).reshape(-1)[0])
    if w.dtype.kind in "iu":
        m = int(np.abs(w).max(initial=0))
        return max(2, math.ceil(math.log2(m + 1)) + 1)
    g = infer_grid(w) if w.dtype == np.float32 else None
    if g is not None:
        q = np.asarray(g[0])
        m = max(int(-q.min(initial=0)) - 1, int(q.max(initial=0)))
        return max(2, math.ceil(math.log2(m + 1)) + 1)
    return 8 * w.dtype.itemsize


def memory_bits(w: np.ndarray, b: int) -> tuple[int, int, int]:
    w2 = np.asarray(w).reshape(np.shape(w)[0], -1)
    n, nnz = w2.size, int(np.count_nonzero(w2))
    rows, d_in = w2.shape
    csr = nnz * (b + max(1, math.ceil(math.log2(d_in)))) + (rows + 1) * max(1, math.ceil(math.log2(nnz + 1)))
    return n * b, csr, n + nnz * b


@dataclass
class _Activity:
    """What one simulation pass over a dataset counted."""

    events: dict[str, np.ndarray]  # weight layer -> events entering each input position, summed over samples
    spikes: dict[str, float] = field(default_factory=dict)  # spiking node -> spikes
    cells: dict[str, int] = field(default_factory=dict)  # spiking node -> neurons x samples
    n_samples: int = 0
    step_total: int = 0  # true (unpadded) steps, summed over samples
    correct: int = 0  # samples whose output spike count peaks at the label

    def add(self, counts: dict[str, np.ndarray], y, lens, src: str) -> None:
        for n, c in counts.items():
            self.spikes[n] = self.spikes.get(n, 0.0) + float(c.sum())
            self.cells[n] = self.cells.get(n, 0) + int(np.prod(c.shape[1:]))
        self.n_samples += len(y)
        self.step_total += int(np.sum(lens))
        if src in counts:
            self.correct += int((counts[src].reshape(len(y), -1).argmax(axis=1) == np.asarray(y)).sum())


def _event_counter(events: np.ndarray):
    """on_input hook adding a layer's input (spikes, or counts after pooling) per position, over the batch."""
    def count(t, x):
        events[...] += np.asarray(x, np.float64).reshape((x.shape[0],) + events.shape).sum(axis=0)
    return count


def _simulate(walker: Walker, fanout: dict[str, np.ndarray], dataset, batch_size: int, src: str, bar) -> _Activity:
    act = _Activity(events={n: np.zeros(f.shape) for n, f in fanout.items()})
    hooks = {n: _event_counter(e) for n, e in act.events.items()}
    for x_tb, y, lens in dataset.batches(batch_size, with_lengths=True, per_step=True):
        res = walker.run(x_tb, on_input=hooks, record_outputs=False)
        act.add(res.counts, y, lens, src)
        del x_tb  # freed before the next batch is built (Dataset.batches)
        if bar is not None:
            bar.update(len(y))
    return act


def _layer_energy(fg: FlatGraph, n: str, fanout: np.ndarray, act: _Activity) -> LayerEnergy:
    node = fg.nodes[n]
    srcs = sorted(fg.sources_of(n))
    spike_in = _spike_input(fg, n)
    b = weight_bits(node)
    dense, csr, mask = memory_bits(node.weight, b)
    events, n_samples = act.events[n], act.n_samples
    return LayerEnergy(
        name=n, kind=fg.kind(n), sources=srcs, spike_input=spike_in, weights=int(np.size(node.weight)),
        nonzero=int(np.count_nonzero(node.weight)), bits=b, mean_fanout=float(fanout.mean()),
        events_per_sample=float(events.sum()) / n_samples,
        synops_per_sample=float((events * fanout).sum()) / n_samples if spike_in else 0.0,
        macs_per_sample=0.0 if spike_in else dense_macs_per_step(node) * act.step_total / n_samples,
        nz_macs_per_sample=0.0 if spike_in else nonzero_macs_per_step(node) * act.step_total / n_samples,
        mem_dense_bits=dense, mem_csr_bits=csr, mem_bitmask_bits=mask)


def synops_model(graph, dataset, cfg: SimConfig | None = None, *, batch_size: int = 50):
    """f(layer, weight) -> SynOps per sample that `layer` would do with `weight` (its non-zero fan-out)
    on the events this dataset drives into it in `graph` (0 for a layer fed by the graph input, whose
    work is MACs).  One simulation pass; a SynOps budget sizes its options with it."""
    fg = flatten(graph)
    walker = Walker(fg, cfg)
    layers = fg.weight_nodes()
    act = _simulate(walker, {n: layer_fanout(fg.nodes[n]) for n in layers}, dataset, batch_size,
                    output_source(fg), None)
    spike_in = {n: _spike_input(fg, n) for n in layers}

    def synops(layer: str, weight) -> float:
        if not spike_in[layer]:
            return 0.0
        node = copy.copy(fg.nodes[layer])
        node.weight = np.asarray(weight)
        return float((act.events[layer] * layer_fanout(node)).sum()) / act.n_samples
    return synops


def _spike_input(fg: FlatGraph, n: str) -> bool:
    """Whether `n` is driven by spikes only: its sources are neurons, seen through nodes that keep
    spikes (max pooling), never the graph input."""
    srcs, seen = list(fg.sources_of(n)), set()
    while srcs:
        s = srcs.pop()
        if s in seen:
            continue
        seen.add(s)
        p = fg.prim(s)
        if p is not None and p.keeps_spikes:
            srcs.extend(fg.sources_of(s))
        elif fg.role(s) != NEURON or s in fg.inputs:
            return False
    return True


def energy_report(graph, dataset, cfg: SimConfig | None = None, *, name: str = "model", batch_size: int = 50,
                  e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ, readout: str = "count",
                  progress: bool = False) -> EnergyReport:
    """Simulate `graph` on `dataset` and count SynOps per weight layer (see module doc)."""
    fg = flatten(graph)
    walker = Walker(fg, cfg)
    fanout = {n: layer_fanout(fg.nodes[n]) for n in fg.weight_nodes()}
    src = output_source(fg)
    bar = progress_bar(dataset.n, f"simulating {name}", progress)
    act = _simulate(walker, fanout, dataset, batch_size, src, bar)
    if bar is not None:
        bar.close()
    layers = [_layer_energy(fg, n, f, act) for n, f in fanout.items()]
    # firing rate per neuron per (true) step; padded steps of ragged data carry no input
    rates = {n: act.spikes[n] / (act.cells[n] / act.n_samples * act.step_total) for n in walker.spiking
             if n in act.spikes and fg.role(n) == NEURON}
    acc = act.correct / act.n_samples if src in act.spikes and readout == "count" else None
    return EnergyReport(model=name, n_samples=act.n_samples, mean_steps=act.step_total / act.n_samples,
                        e_ac_pj=e_ac, e_mac_pj=e_mac, layers=layers, firing_rates=rates, accuracy=acc)


def compare_table(dense: EnergyReport, comp: EnergyReport) -> str:
    """Dense vs compressed side by side, per layer and in total."""
    head = (f"{'layer':<8} {'SynOps/s dense':>15} {'compressed':>12} {'ratio':>6}   {'rate dense':>10} "
            f"{'compressed':>10}   {'mem dense KiB':>13} {'compressed (best) KiB':>22}")
    lines = [f"dense = {dense.model}, compressed = {comp.model}", head, "-" * len(head)]
    by_name = {l.name: l for l in comp.layers}
    for l in dense.layers:
        c = by_name.get(l.name)
        if c is None:
            continue
        a, b = (l.synops_per_sample, c.synops_per_sample) if l.spike_input else (l.macs_per_sample, c.macs_per_sample)
        unit = "" if l.spike_input else " MAC"
        src = l.sources[0] if l.sources else ""
        rd, rc = dense.firing_rates.get(src), comp.firing_rates.get(src)
        best = min(c.mem_dense_bits, c.mem_csr_bits, c.mem_bitmask_bits)
        lines.append(f"{l.name:<8} {a:>15.0f} {b:>12.0f} {b / a if a else float('nan'):>6.3f}{unit:<4}"
                     f"{'' if rd is None else f'{rd:.4f}':>10} {'' if rc is None else f'{rc:.4f}':>10}   "
                     f"{l.mem_dense_bits / 8192:>13.2f} {best / 8192:>22.2f}")
    lines.append(f"{'total':<8} SynOps/sample {dense.synops:.4g} -> {comp.synops:.4g} "
                 f"(x{comp.synops / dense.synops if dense.synops else float('nan'):.3f}); first-layer MACs "
                 f"{dense.macs:.4g} -> {comp.macs:.4g} (dense count, unchanged by pruning)")
    lines.append(f"energy proxy E = {comp.e_ac_pj} pJ x SynOps + {comp.e_mac_pj} pJ x MACs: "
                 f"{dense.energy_pj / 1e3:.4g} nJ -> {comp.energy_pj / 1e3:.4g} nJ per sample "
                 f"(x{comp.energy_pj / dense.energy_pj if dense.energy_pj else float('nan'):.3f})")
    md = dense.memory("dense")
    lines.append("weight memory: dense float {:.2f} KiB -> compressed dense {:.2f} / CSR {:.2f} / bitmask {:.2f} KiB"
                 .format(md / 8192, comp.memory("dense") / 8192, comp.memory("csr") / 8192,
                         comp.memory("bitmask") / 8192))
    if dense.accuracy is not None and comp.accuracy is not None:
        lines.append(f"accuracy {dense.accuracy:.4f} -> {comp.accuracy:.4f}")
    return "\n".join(lines)


def plot_reports(reports: list[EnergyReport], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [l.name for l in reports[0].layers]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(reports)
    x = np.arange(len(names))
    for i, r in enumerate(reports):
        by = {l.name: l for l in r.layers}
        ops = [(by[n].synops_per_sample if by[n].spike_input else by[n].macs_per_sample) if n in by else 0 for n in names]
        mem = [min(by[n].mem_dense_bits, by[n].mem_csr_bits, by[n].mem_bitmask_bits) / 8192 if n in by else 0
               for n in names]
        axes[0].bar(x + i * width, ops, width, label=r.model)
        axes[1].bar(x + i * width, mem, width, label=r.model)
    for ax, title in zip(axes, ("SynOps per sample (first layer: MACs)", "weight memory, best layout [KiB]")):
        ax.set_xticks(x + width * (len(reports) - 1) / 2, names)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("weight layer")
        ax.legend(fontsize=8)
    e = ", ".join(f"{r.model}: {r.energy_pj / 1e3:.3g} nJ" for r in reports)
    fig.suptitle(f"E = {reports[0].e_ac_pj} pJ x SynOps + {reports[0].e_mac_pj} pJ x MACs per sample -- {e}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
