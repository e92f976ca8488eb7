"""sbc-onnx: one-shot Spiking Brain Compression of spiking neural networks (NIR and ONNX).

    import sbc_onnx as sbc
    graph = sbc.load_model("cnn.nir")
    cfg = sbc.SimConfig.from_graph(graph, dt=1e-4)   # the graph's metadata, then explicit settings
    calib = sbc.load_dataset("calib.npz")
    new, report = sbc.compress(graph, calib, sparsity=0.7, method="sbc", cfg=cfg)
    print(report.table())
    sbc.save_model(new, "cnn_70.nir", cfg=cfg)     # stamps cfg's settings into the file
"""

from .data import Dataset, load_dataset, load_mnist, load_nmnist, save_dataset
from .errors import SbcError
from .evaluate import EvalResult, evaluate
from .io.models import load_model, save_model
from .pipeline import CompressionReport, compress
from .sim import SimConfig, Walker, simulate

__all__ = ["compress", "CompressionReport", "load_model", "save_model", "SimConfig", "Walker", "simulate",
           "evaluate", "EvalResult", "Dataset", "load_dataset", "save_dataset", "load_mnist", "load_nmnist",
           "SbcError"]
__version__ = "0.1.0"
