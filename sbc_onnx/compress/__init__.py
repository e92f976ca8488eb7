"""SBC core: pure-array compression algorithms (no file formats, no graph knowledge).

W is (d_out, d_in), H is (d_in, d_in) float64 (see hessian.py for how H is built), masks are bool
with True = kept.  The methods (methods.py) and allocations (allocation.py) are objects looked up by
name; entry point for the graph-level pass: ``compress_layer`` / ``compress_groups``.
"""

from .allocation import (ALLOCATIONS, Allocation, Budget, LayerStats, allocate, allocate_by_scores, group_blocks,
                         lamp_scores, make_allocation)
from .gptq import QuantResult, quantize_gptq, quantize_gptq_eager, quantize_rtn
from .grids import SCHEMES, Grid, from_int, make_grid, quantize, to_int
from .hessian import HessianAccumulator, TimeFilter, eager_hessian, filter_time, kernel_matrix
from .layer import LayerResult, compress_groups, compress_layer, relative_objective
from .masks import check_nm, magnitude_mask, nm_mask, nm_pattern, select_smallest, wanda_mask, wanda_scores
from .methods import METHODS, Method, PruneJob, get_method
from .numerics import FactorizationError, damped_inverse, upper_inverse_factor
from ._obs_kernel import compiled_on_disk
from .obs import ObsTrace, PruneResult, exact_resolve, load_kernels, obs_trace, prune_exact_obs, trace_layer
from .sparsegpt import prune_sparsegpt

__all__ = [
    "ALLOCATIONS", "Allocation", "Budget", "LayerStats", "allocate", "allocate_by_scores", "group_blocks",
    "lamp_scores", "make_allocation", "QuantResult", "quantize_gptq", "quantize_gptq_eager", "quantize_rtn", "SCHEMES", "Grid",
    "from_int", "make_grid", "quantize", "to_int", "HessianAccumulator", "TimeFilter", "eager_hessian", "filter_time",
    "kernel_matrix", "LayerResult", "compress_groups", "compress_layer", "relative_objective", "check_nm",
    "magnitude_mask", "nm_mask", "nm_pattern", "select_smallest", "wanda_mask", "wanda_scores", "METHODS",
    "Method", "PruneJob", "get_method", "FactorizationError", "damped_inverse", "upper_inverse_factor",
    "compiled_on_disk", "load_kernels", "ObsTrace", "PruneResult", "exact_resolve", "obs_trace", "prune_exact_obs",
    "trace_layer", "prune_sparsegpt",
]
