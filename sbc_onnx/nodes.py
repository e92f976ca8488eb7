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

    def output_shape(self, input_shape) -> tuple[int, ...]:
        """(C, H_out, W_out) for an input of shape (C, H, W): floor((n + 2p - k) / s) + 1 per spatial dim."""
        c, *spatial = (int(v) for v in np.asarray(input_shape).reshape(-1))
        k, s, p = (np.broadcast_to(np.asarray(v).reshape(-1), (2,)) for v in (self.kernel_size, self.stride,
                                                                                self.padding))
        return (c, *((n + 2 * int(pi) - int(ki)) // int(si) + 1 for n, ki, si, pi in zip(spatial, k, s, p)))

    def set_input_shape(self, input_shape) -> "MaxPool2d":
        """Record the input shape (C, H, W) and the output shape it gives, so that a `nir.NIRGraph` holding
        this node type-checks (NIR's type inference knows no MaxPool2d and leaves its output undefined).
        Bridges call it when they build the node; the ONNX reader calls it from the shape the file records."""
        shape = tuple(int(v) for v in np.asarray(input_shape).reshape(-1))
        self.input_type = {"input": np.array(shape)}
        self.output_type = {"output": np.array(self.output_shape(shape))}
        return self


#: kinds declared here (not in nir), by class name
EXTRA_NODES = {cls.__name__: cls for cls in (MaxPool2d,)}
