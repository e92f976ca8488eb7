"""Node kinds the project simulates that NIR 1.0 does not have.

Each is a `nir.NIRNode` dataclass like the ones in `nir/ir/*.py`, so a graph holding one is still a
`nir.NIRGraph` for the walker, calibration and the ONNX writer; the NIR writer refuses it (NIR has no
such primitive) and says to write `.onnx` instead (docs/onnx_convention.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np


@dataclass(eq=False)
class MaxPool2d(nir.NIRNode):
    """Max pooling in 2d over (C, H, W), PyTorch's `nn.MaxPool2d` (padding with -inf, floor mode)."""

    kernel_size: np.ndarray  # (height, width)
    stride: np.ndarray       # (height, width)
    padding: np.ndarray      # (height, width)

    def __post_init__(self):
        self.input_type = {"input": None}
        self.output_type = {"output": None}


#: kinds declared here (not in nir), by class name
EXTRA_NODES = {cls.__name__: cls for cls in (MaxPool2d,)}
