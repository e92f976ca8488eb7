"""Per-layer pruning budgets (docs/sbc_method.md §2.1): allocations as objects.

An allocation turns the statistics of the layers (`LayerStats`) into how many weights each layer prunes
(`Budget.counts`).  Every allocation's counts sum to exactly k = floor(sparsity * N_total) and each count
is <= numel of its layer.  Global selections break ties stably by (layer order, flat index).

    lamp     the global k smallest LAMP scores (exponent p), counted per layer (the paper's)
    uniform  floor(s * n_l) per layer; the remainder up to k goes to the layers with the largest
             fractional parts (ties: earlier layer first)
    global   the global k smallest |w| (global magnitude)
    obs      the global k smallest ExactOBS trace scores, each layer's divided by its dense objective
             tr(W H W^T): the relative output distortion each greedy removal costs -- the selection "sbc"
             makes inside a layer, extended across layers.  Needs every layer's dense Hessian up front;
             the traces it runs are handed on (`Budget.traces`) so the layers' ExactOBS pruning reuses
             them instead of running them again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Sequence

import numpy as np

from .masks import select_smallest
from .numerics import FactorizationError, check_damping
from .obs import ObsTrace, trace_layer

__all__ = ["ALLOCATIONS", "Allocation", "Budget", "GlobalMagnitude", "Lamp", "LayerStats", "ObsScores",
           "Uniform", "allocate", "allocate_by_scores", "group_blocks", "lamp_scores", "make_allocation",
           "total_prune_count"]


@dataclass(frozen=True)
class LayerStats:
    """What an allocation may look at for one layer."""
    W: np.ndarray                  # the layer's weights; as the (d_out, d_in / groups) matrix for "obs"
    H: np.ndarray | None = None    # its dense calibration Hessian (d_in, d_in), if the allocation needs it
    groups: int = 1                # grouped convolution: group g owns rows g*d_out/groups.. and block g of H
    # "obs": each group's ExactOBS trace already run elsewhere (distributed/), None where its damped Hessian
    # could not be factorised; None: the allocation runs them
    traces: tuple | None = None


@dataclass
class Budget:
    counts: list[int]
    # per layer, per group: the ExactOBS trace computed on the way ("obs"), None where none was run
    traces: list[list[ObsTrace | None] | None] = field(default_factory=list)
    # per layer: its bit width (None: float), when a budget chose them per layer; else None
    bits: list[int | None] | None = None

    def bits_of(self, layer: int, default: int | None) -> int | None:
        return default if self.bits is None else self.bits[layer]

    def traces_of(self, layer: int) -> list[ObsTrace | None] | None:
        return self.traces[layer] if self.traces else None


class Allocation(Protocol):
    name: ClassVar[str]
    needs_hessian: ClassVar[bool]  # every layer's dense Hessian before any layer is compressed
    obs_trace: ClassVar[bool]      # runs the ExactOBS trace (the compiled kernels)

    def allocate(self, layers: Sequence[LayerStats], sparsity: float) -> Budget: ...


def total_prune_count(sizes, sparsity: float) -> int:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    n = int(sum(sizes))
    # the tiny epsilon keeps e.g. 0.7 * 1000 = 699.999... from flooring to 699
    return min(n, int(math.floor(sparsity * n + 1e-9)))


def lamp_scores(w: np.ndarray, p: float = 2) -> np.ndarray:
    """LAMP score of every weight: |w_u|^p / sum_{v: |w_v| >= |w_u|} |w_v|^p (same shape as w).

    Ties follow the ">=" of the definition exactly: equal magnitudes share one denominator that
    includes all of them (the sorted-position variant would give tied weights different scores).
    """
    if not (math.isfinite(p) and p > 0):
        raise ValueError(f"the LAMP exponent p must be a finite number > 0, got {p!r}")
    a = np.abs(np.asarray(w, dtype=np.float64)).ravel() ** p
    s = np.sort(a)
    suffix = np.cumsum(s[::-1])[::-1]  # suffix[j] = sum of s[j:]
    first = np.searchsorted(s, a, side="left")  # first sorted position with value == a_u
    denom = suffix[first]
    score = np.divide(a, denom, out=np.zeros_like(a), where=denom > 0)
    return score.reshape(np.shape(w))


def allocate_by_scores(scores, sparsity: float) -> list[int]:
    """Per-layer counts of the k smallest per-weight costs over all layers (costs comparable across
    layers; ``scores[l]`` holds one per weight of layer l, any shape).  Ties: (layer order, index)."""
    sizes = [int(np.size(x)) for x in scores]
    k = total_prune_count(sizes, sparsity)
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in scores]) if sizes else np.zeros(0)
    layer_of = np.repeat(np.arange(len(sizes)), sizes)
    return [int(c) for c in np.bincount(layer_of[select_smallest(flat, k)], minlength=len(sizes))]


@dataclass(frozen=True)
class Lamp:
    p: float = 2.0
    name: ClassVar[str] = "lamp"
    needs_hessian: ClassVar[bool] = False
    obs_trace: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.p) and self.p > 0):  # p = NaN scores everything NaN: all pruned
            raise ValueError(f"the LAMP exponent p must be a finite number > 0, got {self.p!r}")

    def allocate(self, layers: Sequence[LayerStats], sparsity: float) -> Budget:
        return Budget(allocate_by_scores([lamp_scores(s.W, self.p) for s in layers], sparsity))


@dataclass(frozen=True)
class GlobalMagnitude:
    name: ClassVar[str] = "global"
    needs_hessian: ClassVar[bool] = False
    obs_trace: ClassVar[bool] = False

    def allocate(self, layers: Sequence[LayerStats], sparsity: float) -> Budget:
        return Budget(allocate_by_scores([np.abs(np.asarray(s.W, np.float64)) for s in layers], sparsity))


@dataclass(frozen=True)
class Uniform:
    name: ClassVar[str] = "uniform"
    needs_hessian: ClassVar[bool] = False
    obs_trace: ClassVar[bool] = False

    def allocate(self, layers: Sequence[LayerStats], sparsity: float) -> Budget:
        sizes = [int(np.size(s.W)) for s in layers]
        k = total_prune_count(sizes, sparsity)
        exact = np.array([sparsity * n for n in sizes])
        counts = np.minimum(np.floor(exact + 1e-9).astype(np.int64), sizes)
        rest = k - int(counts.sum())
        for li in np.argsort(-(exact - counts), kind="stable"):  # largest fractional part first
            if rest <= 0:
                break
            if counts[li] < sizes[li]:
                counts[li] += 1
                rest -= 1
        return Budget([int(c) for c in counts])


def group_blocks(shape, groups):
    """(g, output rows, input columns) of each group of a (d_out, d_in/groups) layer matrix: a grouped
    convolution's group g maps its own input block (of the Hessian) to its own output rows."""
    og, dg = shape[0] // groups, shape[1]
    for g in range(groups):
        yield g, slice(g * og, (g + 1) * og), slice(g * dg, (g + 1) * dg)


@dataclass(frozen=True)
class ObsScores:
    """Allocation "obs" (see the module doc); the traces use the layers' own damping rel_damp."""
    rel_damp: float = 0.01
    max_damp: float = 1.0
    name: ClassVar[str] = "obs"
    needs_hessian: ClassVar[bool] = True
    obs_trace: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_damping(self.rel_damp)
        check_damping(self.max_damp, "max_damp")

    def allocate(self, layers: Sequence[LayerStats], sparsity: float) -> Budget:
        costs, traces = zip(*(self._costs(s) for s in layers)) if layers else ((), ())
        return Budget(allocate_by_scores(costs, sparsity), list(traces))

    def _costs(self, s: LayerStats) -> tuple[np.ndarray, list[ObsTrace | None]]:
        """Trace scores of every weight of a layer (per group), divided by its dense objective."""
        if s.H is None:
            raise ValueError("allocation obs needs the layer Hessians")
        H = np.asarray(s.H, np.float64)
        scores, traces, energy = [], [], 0.0
        for g, rows, cols in group_blocks(s.W.shape, s.groups):
            Wg, Hg = np.asarray(s.W[rows], np.float64), H[cols, cols]
            energy += float(np.einsum("ij,jk,ik->", Wg, Hg, Wg))
            try:
                t = (trace_layer(Wg, Hg, rel_damp=self.rel_damp, max_damp=self.max_damp) if s.traces is None
                     else s.traces[g])
            except FactorizationError:
                t = None
            # no trace: the layer will fall back to magnitude, so it is ranked by magnitude
            scores.append(np.sort(Wg**2, axis=1) if t is None else t.scores)
            traces.append(t)
        return np.concatenate(scores, axis=0) / (energy if energy > 0 else 1.0), traces


ALLOCATIONS = ("lamp", "uniform", "global", "obs")


def make_allocation(name: str, *, lamp_p: float = 2.0, rel_damp: float = 0.01) -> Allocation:
    """The allocation called `name` (one of ALLOCATIONS) with its parameter."""
    if name == "lamp":
        return Lamp(lamp_p)
    if name == "obs":
        return ObsScores(rel_damp)
    if name == "uniform":
        return Uniform()
    if name == "global":
        return GlobalMagnitude()
    raise ValueError(f"unknown allocation {name!r}; choose from {', '.join(ALLOCATIONS)}")


def allocate(weights, sparsity: float, method: str = "lamp", p: float = 2) -> list[int]:
    """Number of weights to prune in each layer of `weights` (arrays of any shape) by a weight-only
    allocation (lamp, uniform, global)."""
    return make_allocation(method, lamp_p=p).allocate([LayerStats(w) for w in weights], sparsity).counts
