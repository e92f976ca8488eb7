"""The compression methods as objects: the one place that says what a method name means.

A `Method` says which layer objective its Hessian is collected for, which calibration statistics it
needs beyond the Hessian (every method gets one: the report measures each layer's error with it),
whether it compensates through the Hessian, and which pruner and quantizer it runs.

    sbc        ExactOBS pruning + GPTQ quantization with the spike-train (SMP) Hessian
    sbc-fast   SparseGPT-style blocked sweep + GPTQ, same objective
    obc        sbc's code with the current Hessian (M = I)
    magnitude  the k smallest |w| per layer, RTN quantization
    wanda      |w| * ||x|| per output row (Wanda), RTN quantization
    rtn        round to nearest; prunes by magnitude if asked
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .gptq import QuantResult, quantize_gptq, quantize_rtn
from .grids import Grid
from .masks import magnitude_mask, wanda_mask
from .obs import ObsTrace, PruneResult, prune_exact_obs
from .sparsegpt import prune_sparsegpt

__all__ = ["METHODS", "Method", "PruneJob", "get_method"]


@dataclass(frozen=True)
class PruneJob:
    """One layer (or one group of a grouped layer) to prune, as every pruner receives it."""
    W: np.ndarray                            # float64 (d_out, d_in), the original weights
    H: np.ndarray                            # float64 (d_in, d_in), undamped
    k: int | None                            # weights to prune (None: the N:M pattern says)
    pattern: tuple[int, int] | None = None
    rel_damp: float = 0.01
    max_damp: float = 1.0
    sq_norms: np.ndarray | None = None       # sum_t x_j^2 per input (Wanda)
    trace: ObsTrace | None = None            # ExactOBS step 1, already run (allocation "obs")
    blocksize: int = 128
    on_rows: Callable | None = None          # progress of the ExactOBS trace: on_rows(done, total)


Pruner = Callable[[PruneJob], PruneResult]
# quantizer(job, W to quantize, grid, mask or None) -> QuantResult
Quantizer = Callable[[PruneJob, np.ndarray, Grid, "np.ndarray | None"], QuantResult]


@dataclass(frozen=True)
class Method:
    name: str
    objective: str            # "smp": H filtered by the fed neuron's leak kernel; "current": M = I
    second_order: bool        # compensates through H^-1; a Hessian that cannot be factorized falls back
    prune: Pruner
    quantize: Quantizer
    input_norms: bool = False  # needs each input's sum_t x^2 from the calibration (Wanda)
    obs_trace: bool = False    # prunes by the ExactOBS trace and an exact per-row solve (so an "obs"
                               # allocation's trace is reused and an exact re-solve adds nothing)
    prune_note: str | None = None  # said in the report when the method prunes
    summary: str = ""


def _exact_obs(job: PruneJob) -> PruneResult:
    return prune_exact_obs(job.W, job.H, job.k, rel_damp=job.rel_damp, max_damp=job.max_damp,
                           pattern=job.pattern, on_rows=job.on_rows, trace=job.trace)


def _sparsegpt(job: PruneJob) -> PruneResult:
    return prune_sparsegpt(job.W, job.H, job.k, pattern=job.pattern, blocksize=job.blocksize,
                           rel_damp=job.rel_damp, max_damp=job.max_damp)


def _masked(job: PruneJob, mask: np.ndarray, notes: list | None = None) -> PruneResult:
    return PruneResult(np.where(mask, job.W, 0.0), mask, None, notes=notes or [])


def _magnitude(job: PruneJob) -> PruneResult:
    return _masked(job, magnitude_mask(job.W, job.k, pattern=job.pattern))


def _wanda(job: PruneJob) -> PruneResult:
    sq, notes = job.sq_norms, []
    if sq is None:
        sq = np.clip(np.diag(job.H), 0, None)
        notes.append("wanda without sq_norms: used diag(H) (filtered inputs) instead")
    return _masked(job, wanda_mask(job.W, sq, job.k, pattern=job.pattern), notes)


def _gptq(job: PruneJob, W: np.ndarray, grid: Grid, mask) -> QuantResult:
    return quantize_gptq(W, job.H, grid, mask=mask, rel_damp=job.rel_damp, max_damp=job.max_damp,
                         blocksize=job.blocksize)


def _rtn(job: PruneJob, W: np.ndarray, grid: Grid, mask) -> QuantResult:
    return quantize_rtn(W, grid, mask)


_ALL = (
    Method("sbc", "smp", True, _exact_obs, _gptq, obs_trace=True,
           summary="spike-train (SMP) Hessian, ExactOBS pruning + GPTQ quantization"),
    Method("sbc-fast", "smp", True, _sparsegpt, _gptq, summary="same objective, SparseGPT-style sweep"),
    Method("obc", "current", True, _exact_obs, _gptq, obs_trace=True, summary="current Hessian (M = I)"),
    Method("magnitude", "smp", False, _magnitude, _rtn, summary="smallest |w| per layer, RTN"),
    Method("wanda", "smp", False, _wanda, _rtn, input_norms=True, summary="|w| * ||x||, RTN"),
    Method("rtn", "smp", False, _magnitude, _rtn, prune_note="method rtn prunes by magnitude",
           summary="round to nearest"),
)
METHODS: dict[str, Method] = {m.name: m for m in _ALL}


def get_method(method: str | Method) -> Method:
    """The Method called `method` (a Method passes through); ValueError names the choices."""
    if isinstance(method, Method):
        return method
    try:
        return METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}") from None
