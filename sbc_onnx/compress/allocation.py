"""Per-layer pruning budgets (spec §2.1).

Every function returns integer counts of weights to prune per layer whose sum is exactly
k = floor(sparsity * N_total) and each count <= numel of its layer.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["lamp_scores", "allocate", "allocate_by_scores", "total_prune_count"]


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
    a = np.abs(np.asarray(w, dtype=np.float64)).ravel() ** p
    s = np.sort(a)
    suffix = np.cumsum(s[::-1])[::-1]  # suffix[j] = sum of s[j:]
    first = np.searchsorted(s, a, side="left")  # first sorted position with value == a_u
    denom = suffix[first]
    score = np.divide(a, denom, out=np.zeros_like(a), where=denom > 0)
    return score.reshape(np.shape(w))


def allocate(weights, sparsity: float, method: str = "lamp", p: float = 2) -> list[int]:
    """Number of weights to prune in each layer.

    lamp:    global k smallest LAMP scores (spec §2.1), counted per layer.
    global:  global k smallest |w| (global magnitude), counted per layer.
    uniform: floor(s * n_l) per layer; the remainder up to k goes to the layers with the largest
             fractional parts (ties: earlier layer first), so the total is still exact.
    Global selections break ties stably by (layer order, flat index).
    """
    sizes = [int(np.size(w)) for w in weights]
    k = total_prune_count(sizes, sparsity)
    if method == "uniform":
        exact = np.array([sparsity * n for n in sizes])
        counts = np.minimum(np.floor(exact + 1e-9).astype(np.int64), sizes)
        rest = k - int(counts.sum())
        frac = exact - counts
        for li in np.argsort(-frac, kind="stable"):
            if rest <= 0:
                break
            if counts[li] < sizes[li]:
                counts[li] += 1
                rest -= 1
        return [int(c) for c in counts]
    if method == "lamp":
        return allocate_by_scores([lamp_scores(w, p) for w in weights], sparsity)
    if method == "global":
        return allocate_by_scores([np.abs(np.asarray(w, np.float64)) for w in weights], sparsity)
    raise ValueError(f"unknown allocation method {method!r} (lamp, uniform, global)")


def allocate_by_scores(scores, sparsity: float) -> list[int]:
    """Per-layer counts from per-weight costs comparable across layers (allocation "obs").

    ``scores[l]`` holds one cost per weight of layer l (any shape); the k smallest over all layers are
    pruned.  The pipeline passes ExactOBS trace scores (each weight's objective increase at the
    moment the greedy trace removes it) divided by the layer's dense objective tr(W H W^T), i.e. the
    relative output distortion each removal costs -- the same selection "sbc" makes inside a layer,
    extended across layers.  Ties break stably by (layer order, index)."""
    sizes = [int(np.size(x)) for x in scores]
    k = total_prune_count(sizes, sparsity)
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in scores]) if sizes else np.zeros(0)
    chosen = np.argsort(flat, kind="stable")[:k]
    layer_of = np.repeat(np.arange(len(sizes)), sizes)
    return [int(c) for c in np.bincount(layer_of[chosen], minlength=len(sizes))]
