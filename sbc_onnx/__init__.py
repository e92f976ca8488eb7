"""sbc-onnx: one-shot Spiking Brain Compression of spiking neural networks (NIR and ONNX).

    import sbc_onnx as sbc
    graph = sbc.load_model("cnn.nir")
    calib = sbc.load_dataset("calib.npz")
    new, report = sbc.compress(graph, calib, sparsity=0.7, method="sbc", cfg=sbc.SimConfig(dt=1e-4))
    print(report.table())
    sbc.save_model(new, "cnn_70.nir", cfg=sbc.SimConfig(dt=1e-4))
"""

from .data import Dataset, load_dataset, load_mnist, load_nmnist, save_dataset
from .errors import SbcError
from .evaluate import EvalResult, evaluate
from .io.models import load_model, save_model, sim_config_for
from .pipeline import CompressionReport, compress
from .sim import SimConfig, Walker, simulate

__all__ = ["compress", "CompressionReport", "load_model", "save_model", "sim_config_for", "SimConfig", "Walker",
           "simulate", "evaluate", "EvalResult", "Dataset", "load_dataset", "save_dataset", "load_mnist",
           "load_nmnist", "SbcError"]
__version__ = "0.1.0"
