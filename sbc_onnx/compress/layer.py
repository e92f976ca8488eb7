"""One call per layer for the graph-level compress(): prune (optional), then quantize (optional)
keeping the mask.

Reported objective: the layer's relative output error measured with the UNDAMPED Hessian the caller
passed (for "sbc" that is the SMP/membrane Hessian, for "obc" the current Hessian):
    rel(W) = tr((W0 - W) H (W0 - W)^T) / tr(W0 H W0^T)  ==  ||(W0 - W) Z^T||^2 / ||W0 Z^T||^2
- objective_after:  this method's final weights;
- objective_before: the zero-calibration baseline at the SAME budget: magnitude mask (same k or N:M
  pattern, per layer) and RTN on the same grid scheme -- so after < before says the Hessian paid off;
- objective_prune:  after the pruning stage only (before quantization), None if not pruned.
Fallback: if the damped Hessian cannot be factorized (FactorizationError after escalation), the
layer is pruned by magnitude and/or quantized by RTN, and ``fallback`` says why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .gptq import quantize_gptq, quantize_rtn
from .grids import make_grid
from .masks import magnitude_mask, wanda_mask
from .numerics import FactorizationError
from .obs import exact_resolve as _exact_resolve
from .obs import prune_exact_obs
from .sparsegpt import prune_sparsegpt

__all__ = ["LayerResult", "compress_layer", "relative_objective", "METHODS"]

METHODS = ("sbc", "sbc-fast", "obc", "magnitude", "wanda", "rtn")


@dataclass
class LayerResult:
    W: np.ndarray                  # new weights, same shape/dtype as the input W
    mask: np.ndarray               # bool, True = kept
    objective_before: float        # magnitude/RTN baseline at the same budget (relative, see module doc)
    objective_after: float         # this method (relative)
    objective_prune: float | None = None
    damp: float | None = None      # relative damping used by the second-order steps (None if unused)
    escalations: list = field(default_factory=list)
    fallback: str | None = None
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    q: np.ndarray | None = None    # int codes when quantized (W = scale*(q - zero))
    grid: object = None


def relative_objective(W0, Ws, H) -> list[float]:
    """rel objective of each candidate in Ws (one stacked GEMM in float32, reduced in float64)."""
    W0 = np.asarray(W0, np.float64)
    D = np.concatenate([W0] + [W0 - np.asarray(W, np.float64) for W in Ws], axis=0)
    DH = (D.astype(np.float32) @ np.asarray(H, np.float32)).astype(np.float64)
    v = np.einsum("ij,ij->i", DH, D).reshape(len(Ws) + 1, -1).sum(1)
    den = v[0]
    return [float(x / den) if den > 0 else 0.0 for x in v[1:]]


def compress_layer(W, H, *, method="sbc", n_prune=None, pattern=None, bits=None, grid_scheme="symmetric",
                   granularity="channel", rel_damp=0.01, max_damp=1.0, sq_norms=None, exact_resolve=False,
                   wanda_scope="row", row_scale=None, blocksize=128, on_rows=None) -> LayerResult:
    """Compress one layer W (d_out, d_in) with Hessian H (d_in, d_in).

    method: "sbc"/"obc" (ExactOBS + GPTQ; obc = same code with the identity-filter H from the caller),
    "sbc-fast" (SparseGPT + GPTQ), "magnitude"/"wanda"/"rtn" (no compensation; RTN quantization).
    n_prune: weights to prune in this layer (None/0: no unstructured pruning); pattern: (n, m) keep
    n of every m inputs (overrides n_prune).  bits: None = no quantization.
    exact_resolve: after the mask is chosen (sbc-fast, magnitude, wanda), re-solve every row exactly
    on its kept inputs (sbc/obc already are exact per row).  row_scale: BN factor a_i (ExactOBS scores).
    on_rows(done, total): progress of the ExactOBS trace (sbc/obc pruning), the long phase of big layers.
    """
    t_start = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    W_in = np.asarray(W)
    W0 = W_in.astype(np.float64)
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (W0.shape[1], W0.shape[1]):
        raise ValueError(f"H shape {H.shape} does not match W {W0.shape}")
    res = LayerResult(W=W_in, mask=np.ones(W0.shape, bool), objective_before=0.0, objective_after=0.0)
    second_order = method in ("sbc", "obc", "sbc-fast")
    prune = pattern is not None or (n_prune is not None and int(n_prune) > 0)
    k = None if pattern is not None else (int(n_prune) if n_prune is not None else 0)
    if method == "rtn" and prune:
        res.notes.append("method rtn prunes by magnitude")
    Wc, mask = W0, np.ones(W0.shape, bool)
    fallbacks = []
    failed = None  # factorization error of the pruning stage: quantization then uses RTN too

    # ---- pruning -------------------------------------------------------------------------------
    if prune:
        t0 = time.perf_counter()
        try:
            if method in ("sbc", "obc"):
                r = prune_exact_obs(W0, H, k, rel_damp=rel_damp, max_damp=max_damp, pattern=pattern,
                                    row_scale=row_scale, on_rows=on_rows)
            elif method == "sbc-fast":
                r = prune_sparsegpt(W0, H, k, pattern=pattern, blocksize=blocksize, rel_damp=rel_damp,
                                    max_damp=max_damp)
            else:
                r = None
            if r is not None:
                Wc, mask, res.damp = r.W, r.mask, r.damp
                res.escalations += r.escalations
        except FactorizationError as e:
            fallbacks.append(f"magnitude pruning ({e})")
            res.escalations.append(str(e))
            r = None
            second_order = False
            failed = str(e)
        if r is None:
            if method == "wanda":
                if sq_norms is None:
                    sq_norms = np.clip(np.diag(H), 0, None)
                    res.notes.append("wanda without sq_norms: used diag(H) (filtered inputs) instead")
                mask = wanda_mask(W0, sq_norms, k, scope=wanda_scope, pattern=pattern)
            else:
                mask = magnitude_mask(W0, k, pattern=pattern)
            Wc = np.where(mask, W0, 0.0)
            if exact_resolve:
                try:
                    Wc, res.damp, esc = _exact_resolve(W0, H, mask, rel_damp=rel_damp, max_damp=max_damp)
                    res.escalations += esc
                except FactorizationError as e:
                    fallbacks.append(f"no exact re-solve ({e})")
        elif exact_resolve and method == "sbc-fast":
            Wc, _, esc = _exact_resolve(W0, H, mask, rel_damp=res.damp, max_damp=max(res.damp, max_damp))
            res.escalations += esc
        res.timings["prune"] = time.perf_counter() - t0

    # ---- quantization (grid from the weights entering quantization, i.e. before compensation) ----
    Wf = Wc
    grid = None
    if bits is not None:
        t0 = time.perf_counter()
        grid = make_grid(Wc, bits, grid_scheme, granularity)
        qr = None
        if second_order:
            try:
                qr = quantize_gptq(Wc, H, grid, mask=mask if prune else None, rel_damp=rel_damp,
                                   max_damp=max_damp, blocksize=blocksize)
                res.damp = qr.damp
                res.escalations += qr.escalations
            except FactorizationError as e:
                fallbacks.append(f"RTN quantization ({e})")
                res.escalations.append(str(e))
        elif failed is not None:
            fallbacks.append(f"RTN quantization ({failed})")
        if qr is None:
            qr = quantize_rtn(Wc, grid, mask if prune else None)
        Wf, res.q, res.grid = qr.W, qr.q, grid
        res.timings["quantize"] = time.perf_counter() - t0

    # ---- report ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    base_mask = np.ones(W0.shape, bool)
    if prune:
        base_mask = magnitude_mask(W0, k, pattern=pattern)
    Wb = np.where(base_mask, W0, 0.0)
    if bits is not None:
        Wb = quantize_rtn(Wb, make_grid(Wb, bits, grid_scheme, granularity), base_mask).W
    cands = [Wf, Wb] + ([Wc] if prune else [])
    objs = relative_objective(W0, cands, H)
    res.objective_after, res.objective_before = objs[0], objs[1]
    res.objective_prune = objs[2] if prune else None
    res.timings["report"] = time.perf_counter() - t0
    res.W = Wf.astype(W_in.dtype if np.issubdtype(W_in.dtype, np.floating) else np.float64)
    res.mask = mask
    res.fallback = "; ".join(fallbacks) or None
    res.seconds = time.perf_counter() - t_start
    return res
