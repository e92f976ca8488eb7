"""Classification accuracy of a NIR graph on a dataset, with per-layer firing rates.

Readouts:
  count           argmax of the output node's summed spikes (ties -> lowest index, as np.argmax)
  count+potential spike count, ties broken by the membrane potential of the neuron feeding the output at
                  the last step (count + potential * tiny; only breaks exact count ties)
  potential       argmax of the final value of a non-spiking output (LI, I, CubaLI)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .data import as_dataset
from .errors import SbcError
from .graph import FlatGraph, flatten, node_shape
from .progress import progress_bar, step_progress
from .sim import SimConfig, Walker

READOUTS = ("count", "count+potential", "potential")


@dataclass
class EvalResult:
    correct: int
    n: int
    predictions: np.ndarray
    labels: np.ndarray
    firing_rates: dict[str, float] = field(default_factory=dict)  # spikes per neuron per step
    seconds: float = 0.0
    ties: int = 0  # samples whose top output count was tied (count readout)
    silent: int = 0  # samples without any output spike

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    def line(self) -> str:
        return f"accuracy {self.accuracy:.4f} ({self.correct}/{self.n})"


def output_source(fg: FlatGraph) -> str:
    """The node feeding the graph's (first) output: the readout reads its spikes or potential."""
    out = fg.outputs[0]
    preds = fg.preds[out] + fg.back_preds[out]
    if len(preds) != 1:
        raise SbcError(f"output {out!r} has {len(preds)} sources; readout needs exactly one")
    return preds[0]


@dataclass
class BatchOutputs:
    """What a simulator engine returns for one batch; the readout is computed from it."""

    counts: dict[str, np.ndarray]  # spiking node -> (B, *shape) spikes summed over time
    final: np.ndarray | None = None  # output node's value at the last step (B, *shape)
    source_v: np.ndarray | None = None  # membrane potential of the output's source after the last step


def check_readout(readout: str, src: str, src_spiking: bool) -> None:
    """SbcError unless `readout` can be read from the output's source `src` (called before any simulation)."""
    if readout not in READOUTS:
        raise SbcError(f"readout must be one of {', '.join(READOUTS)}")
    if readout == "potential" and src_spiking:
        raise SbcError(f"readout 'potential' needs a non-spiking output node; {src!r} spikes "
                       "(use --readout count)")
    if readout != "potential" and not src_spiking:
        raise SbcError(f"readout {readout!r} needs a spiking output node; {src!r} does not spike "
                       "(use --readout potential)")


def score_batch(readout: str, src: str, src_spiking: bool, outs: BatchOutputs) -> tuple[np.ndarray, int, int]:
    """(predictions, tied samples, silent samples) of one batch under `readout`."""
    check_readout(readout, src, src_spiking and (readout == "potential" or src in outs.counts))
    if readout == "potential":
        return np.argmax(outs.final.reshape(outs.final.shape[0], -1), axis=1), 0, 0
    counts = outs.counts[src].reshape(outs.counts[src].shape[0], -1)
    top = counts.max(axis=1, keepdims=True)
    ties, silent = int(((counts == top).sum(axis=1) > 1).sum()), int((top[:, 0] == 0).sum())
    scores = counts.astype(np.float64)
    if readout == "count+potential":
        v = outs.source_v.reshape(counts.shape[0], -1).astype(np.float64)
        # squash v into (0, 0.5) so it only orders classes within an exact count tie
        scores = scores + 0.5 * (1 / (1 + np.exp(-np.clip(v, -50, 50))))
    return np.argmax(scores, axis=1), ties, silent


def evaluate_engine(run_batch, fg: FlatGraph, spiking: list[str], dataset, *, readout: str = "count",
                    batch_size: int = 64, progress: bool = False, per_step: bool = False) -> EvalResult:
    """Accuracy loop shared by the engines: run_batch(x_tb, on_step) -> BatchOutputs. `per_step`: the engine
    reads x_tb one step at a time (x_tb[t]), so a batch can stay in its stored form (`data.StepBatch`)."""
    src = output_source(fg)
    check_readout(readout, src, src in spiking)
    shape = node_shape(fg.nodes[fg.outputs[0]], "input")
    n_classes = None if shape is None else int(np.prod(shape))
    preds, labels = [], []
    spike_sum: dict[str, float] = {}
    neuron_steps: dict[str, int] = {}
    ties = silent = 0
    t0 = time.perf_counter()
    bar = progress_bar(getattr(dataset, "n", None), "simulating", progress)
    for x_tb, y in dataset.batches(batch_size, per_step=per_step):
        _check_labels(y, n_classes)
        outs = run_batch(x_tb, step_progress(bar, len(y), x_tb.shape[0]))
        p, t, s = score_batch(readout, src, src in spiking, outs)
        preds.append(p)
        labels.append(np.asarray(y))
        ties, silent = ties + t, silent + s
        for name, c in outs.counts.items():
            spike_sum[name] = spike_sum.get(name, 0.0) + float(c.sum())
            neuron_steps[name] = neuron_steps.get(name, 0) + c.size * x_tb.shape[0]
        del x_tb, outs  # freed before the next batch is built (Dataset.batches)
    if bar is not None:
        bar.close()
    if not preds:
        raise SbcError("the dataset is empty")
    preds_a, labels_a = np.concatenate(preds), np.concatenate(labels)
    rates = {n: spike_sum[n] / neuron_steps[n] for n in spiking if n in spike_sum}
    return EvalResult(
        correct=int((preds_a == labels_a).sum()), n=len(labels_a), predictions=preds_a, labels=labels_a,
        firing_rates=rates, seconds=time.perf_counter() - t0, ties=ties, silent=silent,
    )


def _check_labels(y, n_classes: int | None) -> None:
    y = np.asarray(y)
    if n_classes is not None and y.size and (y.min() < 0 or y.max() >= n_classes):
        raise SbcError(f"labels must lie in 0..{n_classes - 1} (the network has {n_classes} outputs); "
                       f"found {int(y.min())}..{int(y.max())}")


def evaluate(
    graph,
    dataset,
    cfg: SimConfig | None = None,
    *,
    readout: str = "count",
    batch_size: int = 64,
    progress: bool = False,
) -> EvalResult:
    """Run `graph` in the NumPy walker over `dataset` (.batches(batch_size) yielding (x (T,B,...), y)), or a
    torch Dataset / DataLoader / iterable of (x, y) (converted by `data.as_dataset`)."""
    dataset = dataset if hasattr(dataset, "batches") else as_dataset(dataset)
    walker = graph if isinstance(graph, Walker) else Walker(graph if isinstance(graph, FlatGraph) else flatten(graph), cfg)
    fg = walker.fg
    src, out = output_source(fg), fg.outputs[0]

    def run_batch(x_tb, on_step):
        res = walker.run(x_tb, record_outputs=False, on_step=on_step)
        v = res.states.get(src)
        return BatchOutputs(counts=res.counts, final=res.outputs[out],
                            source_v=v.get("v") if isinstance(v, dict) else None)

    return evaluate_engine(run_batch, fg, walker.spiking, dataset, readout=readout, batch_size=batch_size,
                           progress=progress, per_step=True)
