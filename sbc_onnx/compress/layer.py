"""One call per layer for the graph-level compress(): prune (optional), then quantize (optional)
keeping the mask.  What each stage does is the method's (methods.py); this module runs the stages,
the fallbacks and the report.

Reported objective: the layer's relative output error measured with the UNDAMPED Hessian the caller
passed (for "sbc" that is the SMP/membrane Hessian, for "obc" the current Hessian):
    rel(W) = tr((W0 - W) H (W0 - W)^T) / tr(W0 H W0^T)  ==  ||(W0 - W) Z^T||^2 / ||W0 Z^T||^2
- objective_after:  this method's final weights;
- objective_before: the zero-calibration baseline at the SAME budget: magnitude mask (same k or N:M
  pattern, per layer) and RTN on the same grid scheme -- so after < before says the Hessian paid off.
Fallback: if the damped Hessian cannot be factorized (FactorizationError after escalation), the
layer is pruned by magnitude and/or quantized by RTN, and ``fallback`` says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from .allocation import group_blocks
from .grids import make_grid
from .masks import nm_pattern
from .methods import METHODS, Method, PruneJob, get_method
from .numerics import FactorizationError
from .obs import PruneResult, exact_resolve

__all__ = ["LayerResult", "compress_groups", "compress_layer", "group_counts", "relative_objective", "stored_weight"]

MAGNITUDE, RTN = METHODS["magnitude"], METHODS["rtn"]  # the fallbacks and the report's baseline


@dataclass
class LayerResult:
    W: np.ndarray                  # new weights, same shape/dtype as the input W
    mask: np.ndarray               # bool, True = kept
    objective_before: float        # magnitude/RTN baseline at the same budget (relative, see module doc)
    objective_after: float         # this method (relative)
    damp: float | None = None      # relative damping used by the second-order steps (None if unused)
    escalations: list = field(default_factory=list)
    fallback: str | None = None
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    q: np.ndarray | None = None    # int codes when quantized (W = scale*(q - zero))
    grid: object = None
    fallbacks: list = field(default_factory=list, repr=False)  # each fallback taken (`fallback` joins them)


def relative_objective(W0, Ws, H) -> list[float]:
    """rel objective of each candidate in Ws (one stacked GEMM in float32, reduced in float64)."""
    W0 = np.asarray(W0, np.float64)
    D = np.concatenate([W0] + [W0 - np.asarray(W, np.float64) for W in Ws], axis=0)
    DH = (D.astype(np.float32) @ np.asarray(H, np.float32)).astype(np.float64)
    v = np.einsum("ij,ij->i", DH, D).reshape(len(Ws) + 1, -1).sum(1)
    den = v[0]
    return [float(x / den) if den > 0 else 0.0 for x in v[1:]]


def compress_layer(W, H, *, method: str | Method = "sbc", n_prune=None, pattern=None, bits=None,
                   grid_scheme="symmetric", granularity="channel", rel_damp=0.01, max_damp=1.0, sq_norms=None,
                   exact_resolve=False, trace=None, blocksize=128, on_rows=None) -> LayerResult:
    """Compress one layer W (d_out, d_in) with Hessian H (d_in, d_in).

    method: a name of METHODS (or the Method).  n_prune: weights to prune in this layer (None/0: no
    unstructured pruning); pattern: (n, m) keep n of every m inputs (overrides n_prune).  bits: None =
    no quantization.  exact_resolve: after the mask is chosen, re-solve every row exactly on its kept
    inputs (the ExactOBS methods already are exact per row).  trace: the ExactOBS trace of this W and H
    already run by the "obs" allocation.  on_rows(done, total): progress of the ExactOBS trace, the long
    phase of big layers.
    """
    t_start = time.perf_counter()
    m = get_method(method)
    W_in = np.asarray(W)
    job = _job(W_in, H, n_prune, pattern, rel_damp=rel_damp, max_damp=max_damp, sq_norms=sq_norms,
               trace=trace, blocksize=blocksize, on_rows=on_rows)
    prune = job.pattern is not None or job.k > 0
    res = LayerResult(W=W_in, mask=np.ones(job.W.shape, bool), objective_before=0.0, objective_after=0.0)
    Wc, mask, failed = job.W, np.ones(job.W.shape, bool), None
    if prune:
        r, failed = _prune(m, job, exact_resolve, res)
        Wc, mask = r.W, r.mask
    Wf = Wc
    if bits is not None:
        Wf = _quantize(m, job, Wc, mask if prune else None, make_grid(Wc, bits, grid_scheme, granularity),
                       failed, res)
    _objectives(job, Wf, prune, bits, grid_scheme, granularity, res)
    res.W = Wf.astype(W_in.dtype if np.issubdtype(W_in.dtype, np.floating) else np.float64)
    res.mask = mask
    res.fallback = "; ".join(res.fallbacks) or None
    res.seconds = time.perf_counter() - t_start
    return res


def _job(W, H, n_prune, pattern, **kw) -> PruneJob:
    W0 = np.asarray(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (W0.shape[1], W0.shape[1]):
        raise ValueError(f"H shape {H.shape} does not match W {W0.shape}")
    pattern = nm_pattern(pattern)
    return PruneJob(W0, H, None if pattern is not None else int(n_prune or 0), pattern, **kw)


def _prune(m: Method, job: PruneJob, resolve: bool, res: LayerResult) -> tuple[PruneResult, str | None]:
    """The method's pruning (magnitude if its Hessian cannot be factorized), then the optional exact
    re-solve.  Returns (result, the factorization error or None)."""
    t0 = time.perf_counter()
    if m.prune_note:
        res.notes.append(m.prune_note)
    by, failed = m, None
    try:
        r = m.prune(job)
        res.escalations += r.escalations
    except FactorizationError as e:
        res.fallbacks.append(f"magnitude pruning ({e})")
        res.escalations.append(str(e))
        by, failed = MAGNITUDE, str(e)
        r = by.prune(job)
    res.damp = r.damp
    res.notes += r.notes
    if resolve and not by.obs_trace:
        r = _resolve(job, r, res)
    res.timings["prune"] = time.perf_counter() - t0
    return r, failed


def _resolve(job: PruneJob, r: PruneResult, res: LayerResult) -> PruneResult:
    """Every row re-solved exactly on its kept inputs, from the damping the pruner used (if any)."""
    rd = job.rel_damp if r.damp is None else r.damp
    try:
        W, rd, esc = exact_resolve(job.W, job.H, r.mask, rel_damp=rd, max_damp=max(rd, job.max_damp))
    except FactorizationError as e:
        res.fallbacks.append(f"no exact re-solve ({e})")
        return r
    res.escalations += esc
    res.damp = rd
    return replace(r, W=W, damp=rd)


def _quantize(m: Method, job: PruneJob, Wc, mask, grid, failed: str | None, res: LayerResult) -> np.ndarray:
    """The method's quantization on the grid of the weights entering it (before compensation); RTN if
    the pruning's or its own factorization failed."""
    t0 = time.perf_counter()
    qr = None
    if failed is None:
        try:
            qr = m.quantize(job, Wc, grid, mask)
        except FactorizationError as e:
            failed = str(e)
            res.escalations.append(failed)
        else:
            if m.second_order:
                res.damp = qr.damp
                res.escalations += qr.escalations
    if qr is None:
        res.fallbacks.append(f"RTN quantization ({failed})")
        qr = RTN.quantize(job, Wc, grid, mask)
    res.q, res.grid = qr.q, grid
    res.timings["quantize"] = time.perf_counter() - t0
    return qr.W


def _objectives(job: PruneJob, Wf, prune: bool, bits, grid_scheme, granularity, res: LayerResult) -> None:
    """objective_after of the result and objective_before of the magnitude + RTN baseline."""
    t0 = time.perf_counter()
    base = MAGNITUDE.prune(job) if prune else None
    Wb = job.W if base is None else base.W
    if bits is not None:
        grid = make_grid(Wb, bits, grid_scheme, granularity)
        Wb = RTN.quantize(job, Wb, grid, None if base is None else base.mask).W
    res.objective_after, res.objective_before = relative_objective(job.W, [Wf, Wb], job.H)
    res.timings["report"] = time.perf_counter() - t0


def compress_groups(W, H, groups: int, n_prune: int, *, sq_norms=None, traces=None, on_rows=None,
                    **kw) -> list[LayerResult]:
    """compress_layer on each group of a grouped layer matrix (d_out, d_in/groups): group g's rows with
    its own diagonal block of H; the n_prune prunings split over the groups by cumulative rounding.
    traces: one ExactOBS trace per group (or None); on_rows(g, done, total): progress."""
    out = []
    counts = group_counts(n_prune, groups)
    for g, rows, cols in group_blocks(np.shape(W), groups):
        out.append(compress_layer(
            W[rows], H[cols, cols], n_prune=counts[g], sq_norms=None if sq_norms is None else sq_norms[cols],
            trace=None if traces is None else traces[g],
            on_rows=None if on_rows is None else _group_rows(on_rows, g), **kw))
    return out


def stored_weight(parts, shape, dtype) -> tuple[np.ndarray, tuple | None]:
    """The layer's new weight as a model stores it, from its groups' results: (weight of `shape` and `dtype`,
    (codes, scale, zero point) or None).  Quantized groups give it from their codes, on the grid exactly in
    the weight's own float type (so integer exports reproduce it bit for bit; codes shaped like the weight,
    scale and zero point per output channel, a tensor grid broadcast); a pruned negative weight that came
    out as -0.0 is a plain zero (files keep the sign bit)."""
    W = np.concatenate([r.W for r in parts], axis=0).reshape(shape).astype(dtype, copy=False)
    quant = None
    if all(r.q is not None for r in parts):
        qs, scales, zeros = [], [], []
        for r in parts:
            rows = r.q.shape[0]
            qs.append(r.q)
            scales.append(np.broadcast_to(np.asarray(r.grid.scale, np.float64).reshape(-1, 1), (rows, 1))[:, 0])
            zeros.append(np.broadcast_to(np.asarray(r.grid.zero, np.float64).reshape(-1, 1), (rows, 1))[:, 0])
        q = np.concatenate(qs, axis=0).reshape(shape).astype(np.int32)
        scale, zero = np.concatenate(scales), np.concatenate(zeros).astype(np.int32)
        per_row = (-1,) + (1,) * (q.ndim - 1)
        W = (q - zero.reshape(per_row)).astype(dtype) * scale.astype(dtype).reshape(per_row)
        quant = (q, scale, zero)
    return np.where(W == 0, np.zeros((), W.dtype), W), quant


def group_counts(n_prune: int, groups: int) -> list[int]:
    """How many of a layer's n_prune prunings each of its groups makes (cumulative rounding)."""
    return [int(round(n_prune * (g + 1) / groups)) - int(round(n_prune * g / groups)) for g in range(groups)]


def _group_rows(on_rows, g):
    return lambda done, total: on_rows(g, done, total)
