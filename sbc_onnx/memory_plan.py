"""Memory planning under a `--max-memory` budget (`memory.py` estimates one run's peak; this module splits
the layers into calibration passes that fit a budget): which layers' Hessians each calibration pass collects.

Calibration holds, for every layer of a pass, its Hessian accumulator (a float64 total and a float32
block product: 12 d^2 bytes) and its time-filter state, through the whole pass. Next to them it holds one
time step's activations of the network (the walker keeps only the current step) and one layer's unfolded
rows at a time. Layers that do not fit together go to later passes, each a walk over the calibration set;
their Hessians are spilled to disk (`workdir.py`) and compression loads one at a time. A budget smaller
than what the largest single layer needs is refused before any work.

The sizes are estimates from the layer shapes and one measured time step of one sample (scaled to the
batch); the process's resident memory when planning (interpreter, libraries, the model and its copy) is
counted as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .compress.budget import parse_bytes
from .errors import SbcError
from .graph import FlatGraph
from .memory import process_rss
from .memory import step_sizes as measured_step
from .sim import Walker

__all__ = ["LayerNeed", "MemoryPlan", "available_memory", "bytes_text", "plan_memory", "to_bytes"]


def available_memory() -> int:
    """Bytes the machine can give this process now: MemAvailable (Linux), else the free physical pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def to_bytes(value: int | str) -> int:
    """A budget given as bytes or as text ('8GiB'); SbcError if it is not a size."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < 1:
            raise SbcError(f"--max-memory must be at least 1 byte, got {value}")
        return int(value)
    try:
        return parse_bytes(str(value))
    except ValueError as e:
        raise SbcError(f"--max-memory: {e}") from None


def bytes_text(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class LayerNeed:
    """Bytes one weight layer needs. calibration: held through a pass (accumulator, filter state);
    transient: one step's unfolded rows and the float64 H made when it is spilled (one layer at a time);
    compression: its Hessian, the damped inverse and factor, the ExactOBS row block and traces."""
    name: str
    d_in: int
    d_out: int
    calibration: int
    transient: int
    compression: int


@dataclass(frozen=True)
class MemoryPlan:
    budget: int
    source: str                            # where the budget came from ("--max-memory", "available memory")
    base: int                              # resident memory when planning
    step: int                              # one time step's activations of the whole network, one batch
    layers: tuple[LayerNeed, ...]
    passes: tuple[tuple[str, ...], ...]    # the layers each calibration pass collects, in walk order
    spill: bool = False                    # Hessians go to disk (several passes, or one pass whose
                                           # accumulators would not fit next to a layer's compression)

    @property
    def peak(self) -> int:
        """Estimated peak bytes: the heaviest calibration pass, or one layer's compression next to every
        layer's accumulator when they stay in memory (one pass, not spilled)."""
        by = {n.name: n for n in self.layers}
        cal = max(sum(by[n].calibration for n in p) for p in self.passes)
        transient = max(n.transient for n in self.layers)
        kept = 0 if self.spill else cal
        return self.base + max(self.step + cal + transient, kept + max(n.compression for n in self.layers))

    def describe(self) -> str:
        n = len(self.passes)
        return (f"memory budget {bytes_text(self.budget)} ({self.source}): {len(self.layers)} layers' Hessians "
                f"in {n} calibration pass{'es' if n > 1 else ''}{', spilled to disk' if self.spill else ''}, "
                f"estimated peak {bytes_text(self.peak)}")


def step_sizes(walker: Walker, sample: np.ndarray) -> tuple[int, dict[str, tuple[int, int]]]:
    """(bytes of one time step's outputs of every node, {weight node: (input, output) elements}) for ONE
    sample, measured by stepping the first step of `sample`'s first sample (`memory.step_sizes`)."""
    sizes = measured_step(walker, sample)
    itemsize = np.dtype(walker.cfg.dtype).itemsize
    return sum(sizes.outputs.values()), {n: (sizes.inputs.get(n, 0) // itemsize, sizes.outputs.get(n, 0) // itemsize)
                                         for n in walker.fg.weight_nodes()}


def layer_need(fg: FlatGraph, name: str, sizes: tuple[int, int], batch: int, itemsize: int,
               stages: int) -> LayerNeed:
    """The bytes of one weight layer (see LayerNeed) for a batch of `batch` samples; sizes: its input's and
    output's elements per sample; stages: its time filter's number of stages."""
    in_size, out_size = sizes
    w = np.asarray(fg.nodes[name].weight)
    d_out = int(w.shape[0])
    if w.ndim > 2:
        groups = int(np.asarray(fg.nodes[name].groups).reshape(-1)[0])
        d = int(np.prod(w.shape[1:])) * groups
        positions = max(1, out_size // d_out)
    else:
        d, positions = int(w.shape[-1]), 1
    rows = batch * positions * d * 4  # one step's unfolded float32 rows
    calibration = 12 * d * d + 8 * d + 8 * in_size * batch * max(stages, 1)
    transient = 3 * rows + 16 * in_size * batch + 8 * d * d + positions * batch * d * itemsize
    compression = 28 * d * d + 24 * d_out * d
    return LayerNeed(name, d, d_out, calibration, transient, compression)


def plan_memory(walker: Walker, sample: np.ndarray, layers: list[str], betas: dict[str, tuple], *, budget: int,
                batch_size: int, source: str = "--max-memory", hessians_at_once: bool = False) -> MemoryPlan:
    """Split `layers` into calibration passes that fit `budget` bytes; SbcError (one line) before any work
    when the largest single layer cannot fit. hessians_at_once: the plan needs every layer's Hessian in
    memory together (the obs allocation, a whole-model budget), which must fit as well."""
    base = process_rss()
    one, sizes = step_sizes(walker, sample)
    batch = int(batch_size)
    itemsize = np.dtype(walker.cfg.dtype).itemsize
    step = 2 * one * batch + int(np.prod(sample.shape[2:])) * 4 * batch * int(sample.shape[0])
    needs = tuple(layer_need(walker.fg, n, sizes.get(n, (0, 0)), batch, itemsize, len(betas.get(n, ()))) for n in layers)
    room = budget - base - step - max(n.transient for n in needs)
    worst = max(needs, key=lambda n: n.calibration)
    heaviest = max(needs, key=lambda n: n.compression)
    if worst.calibration > room or heaviest.compression > budget - base:
        need = max(base + step + worst.calibration + max(n.transient for n in needs), base + heaviest.compression)
        raise SbcError(f"--max-memory {bytes_text(budget)} is too small: layer {worst.name} ({worst.d_out} x "
                       f"{worst.d_in}) needs about {bytes_text(need)} with one step's activations and the "
                       f"{bytes_text(base)} already in use; give at least that")
    if hessians_at_once:
        total = base + sum(8 * n.d_in * n.d_in for n in needs) + heaviest.compression
        if total > budget:
            raise SbcError(f"--max-memory {bytes_text(budget)} is too small for every layer's Hessian at once "
                           f"(about {bytes_text(total)}), which the obs allocation and a whole-model budget need")
    passes: list[list[str]] = [[]]
    used = 0
    for n in needs:
        if passes[-1] and used + n.calibration > room:
            passes.append([])
            used = 0
        passes[-1].append(n.name)
        used += n.calibration
    in_memory = base + sum(n.calibration for n in needs) + heaviest.compression
    spill = len(passes) > 1 or in_memory > budget
    return MemoryPlan(int(budget), source, base, step, needs, tuple(tuple(p) for p in passes), spill)
