"""The peak memory of a compress run, estimated before the work starts from what the process will hold.

    peak = process + batch + simulation + max(calibration, spike damage)

  process      the resident set measured when the estimate is made: interpreter, imported libraries,
               the model, the dataset's small arrays (its ``x`` stays on disk, `data.load_dataset`)
  batch        one batch as stored (B, T, *input_shape) in the dataset's compact dtype, read from disk, and
               one converted time step in float32: the walker reads a batch step by step
               (`Dataset.batches(per_step=True)`, `data.StepBatch`)
  simulation   one time step of the walker for B samples: every node's input, output and state, the spike
               counts, and the im2col unfolding of each convolution; measured by stepping the walker
               once on one zero sample and scaling by B
  calibration  per calibrated layer: the float64 Hessian sum and its float32 block product, the float64
               filter states of its input and the unfolded rows of one step (`calibrate.calibrate`)
  spike damage the dense run's spikes of one batch as bits (all steps) and a float64 distance filter per
               neuron fed by a compressed layer (`pipeline.measure_spike_damage`)

Nothing grows with the number of samples: every pass reads the dataset batch by batch.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .calibrate import fed_neuron
from .compress.hessian import HessianAccumulator
from .sim import Walker

__all__ = ["MemoryEstimate", "estimate_peak", "peak_rss", "process_rss", "step_sizes"]

MiB = 2**20


def process_rss() -> int:
    """Bytes resident now (/proc/self/statm); where that does not exist, the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return peak_rss()


def peak_rss() -> int:
    """Bytes of the largest resident set of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


@dataclass
class MemoryEstimate:
    """The parts of the peak, in bytes (see the module docstring)."""

    process: int
    batch: int
    simulation: int
    calibration: int
    damage: int

    @property
    def total(self) -> int:
        return self.process + self.batch + self.simulation + max(self.calibration, self.damage)

    def describe(self) -> str:
        return (f"expected peak memory: {self.total / MiB:.1f} MiB (process now {self.process / MiB:.1f}, "
                f"one batch {self.batch / MiB:.1f}, simulation {self.simulation / MiB:.1f}, calibration "
                f"{self.calibration / MiB:.1f}, spike damage {self.damage / MiB:.1f})")


def _nbytes(v: Any) -> int:
    if isinstance(v, np.ndarray):
        return v.nbytes
    if isinstance(v, dict):
        return sum(_nbytes(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return sum(_nbytes(x) for x in v)
    return 0


@dataclass
class _StepSizes:
    """Bytes per sample of one walker step: each node's input and output, all states and counts."""

    inputs: dict[str, int]
    outputs: dict[str, int]
    held: int


def _size_recorder(sizes: dict[str, int], name: str):
    return lambda t, y: sizes.__setitem__(name, np.asarray(y).nbytes)


def step_sizes(walker: Walker, sample: np.ndarray | None = None) -> _StepSizes | None:
    """Bytes per sample of one walker step, measured by stepping `sample` (T, B, ...; its first step and
    sample) or one zero sample of the walker's input shape (None for a graph without one input)."""
    if sample is None:
        shape = walker.input_shape
        if shape is None or len(walker.fg.inputs) != 1:
            return None
        sample = np.zeros((1, 1) + tuple(shape), dtype=np.float32)
    inputs: dict[str, int] = {}
    outputs: dict[str, int] = {}
    order = walker.fg.order
    res = walker.run(sample[:1, :1], on_input={n: _size_recorder(inputs, n) for n in order},
                     on_output={n: _size_recorder(outputs, n) for n in order}, record_outputs=False)
    held = sum(inputs.values()) + sum(outputs.values()) + _nbytes(res.states) + _nbytes(res.counts)
    return _StepSizes(inputs, outputs, held)


def _unfolded(node: Any, out_bytes: int, itemsize: int) -> int:
    """Bytes per sample of a convolution's im2col columns: (C_in/groups * k...) * groups per output position."""
    w = np.asarray(node.weight)
    positions = out_bytes // max(1, w.shape[0] * itemsize)
    groups = int(np.asarray(getattr(node, "groups", 1)).reshape(-1)[0])
    return int(np.prod(w.shape[1:])) * groups * positions * itemsize


def estimate_peak(walker: Walker, layers: list[str], dataset: Any, batch_size: int, *,
                  input_norms: bool = False, damage: bool = True) -> MemoryEstimate:
    """The peak of a compress run of `layers` over `dataset` in batches of `batch_size` (module docstring)."""
    fg = walker.fg
    b = max(1, min(int(batch_size), int(getattr(dataset, "n", batch_size))))
    steps = int(getattr(dataset, "steps", 1))
    x = getattr(dataset, "x", None)
    stored = 0 if x is None else int(np.prod(x.shape[1:], dtype=np.int64)) * np.dtype(x.dtype).itemsize  # a sample
    values = int(np.prod(getattr(dataset, "input_shape", ()), dtype=np.int64)) * 4  # one step, float32
    sizes = step_sizes(walker)
    itemsize = np.dtype(walker.cfg.dtype).itemsize
    simulation = calibration = damage_bytes = 0
    if sizes is not None:
        unfold = sum(_unfolded(fg.nodes[n], sizes.outputs.get(n, 0), itemsize)
                     for n in fg.order if fg.prim(n).conv)
        simulation = b * (sizes.held + unfold)
        for n in layers:
            node = fg.nodes[n]
            w = np.asarray(node.weight)
            d = w.shape[-1] if w.ndim == 2 else int(np.prod(w.shape[1:])) * int(np.asarray(node.groups).reshape(-1)[0])
            in_values = sizes.inputs.get(n, 0) // itemsize
            rows = in_values if w.ndim == 2 else _unfolded(node, sizes.outputs.get(n, 0), itemsize) // itemsize
            # S (float64) + block product (float32) + the accumulator's buffer of rows not yet folded;
            # filter states, z (float64) + rows (float32), x2 for norms
            calibration += (12 * d * d + HessianAccumulator.buffer_bytes(d)
                            + b * (3 * 8 * in_values + 4 * rows * (2 if input_norms else 1)))
        if damage:
            targets = {fed_neuron(fg, n) for n in layers} - {None}
            cells = sum(sizes.outputs.get(t, 0) // itemsize for t in targets if walker.ops[t].spiking)
            damage_bytes = steps * ((b * cells + 7) // 8) + b * cells * 8 * 3  # bits + filter and its terms
    return MemoryEstimate(process=process_rss(), batch=b * (stored + values), simulation=simulation,
                          calibration=calibration, damage=damage_bytes)
