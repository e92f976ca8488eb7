"""SBC core: pure-array compression algorithms (no file formats, no graph knowledge).

W is (d_out, d_in), H is (d_in, d_in) float64 (see hessian.py for how H is built), masks are bool
with True = kept.  Entry point for the graph-level pass: ``compress_layer``.
"""

from .allocation import allocate, allocate_by_scores, lamp_scores
from .gptq import QuantResult, quantize_gptq, quantize_rtn
from .grids import Grid, from_int, make_grid, quantize, to_int
from .hessian import HessianAccumulator, TimeFilter, filter_time, kernel_matrix
from .layer import METHODS, LayerResult, compress_layer, relative_objective
from .masks import check_nm, magnitude_mask, nm_mask, wanda_mask, wanda_scores
from .numerics import FactorizationError, damped_inverse, upper_inverse_factor
from ._obs_kernel import compiled_on_disk
from .obs import PruneResult, exact_resolve, obs_trace, prune_exact_obs
from .sparsegpt import prune_sparsegpt

__all__ = [
    "allocate", "allocate_by_scores", "lamp_scores", "obs_trace", "QuantResult", "quantize_gptq", "quantize_rtn", "Grid", "from_int",
    "make_grid", "quantize", "to_int", "HessianAccumulator", "TimeFilter", "filter_time", "kernel_matrix",
    "METHODS", "LayerResult", "compress_layer", "relative_objective", "check_nm", "magnitude_mask",
    "nm_mask", "wanda_mask", "wanda_scores", "FactorizationError", "damped_inverse",
    "upper_inverse_factor", "PruneResult", "exact_resolve", "prune_exact_obs", "prune_sparsegpt",
    "compiled_on_disk",
]
