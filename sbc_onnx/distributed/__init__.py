"""Scale-out of compress() over a Ray cluster (`workers=N` / `ray_address=...`; CLI --workers, --ray-address).

The only package of sbc_onnx that imports ray, and only inside functions: without those options Ray is
never imported.  What is distributed (docs/architecture.md "Distributed compression"): the calibration
pass, in shards of whole batches (calibrate.merge_shards); the layers, and inside a layer the ExactOBS
trace in row chunks (layers.py).  The results equal the single-process ones (masks bitwise; Hessians up to
float64 round-off of the shards' sums).
"""

from .cluster import INSTALL_HINT, Cluster, check_options, connect
from .layers import LayerJob, LayerRunner
from .tasks import KILL_ONCE_ENV

__all__ = ["INSTALL_HINT", "KILL_ONCE_ENV", "Cluster", "LayerJob", "LayerRunner", "check_options", "connect"]
