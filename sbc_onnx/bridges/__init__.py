"""Framework and hardware bridges for sbc-onnx.

Torch-free (core install):
    netx_to_nir        lava-dl netx ``.net`` (HDF5) -> NIR graph (CubaLIF, fixed-point mapping)
    write_nir_legacy   write a NIR file that nir <= 1.0.4 consumers (sinabs, Rockpool) can read

Torch-based (optional extra ``sbc-onnx[torch]`` plus Norse / SpikingJelly, see sbc_onnx/bridges/README.md);
imported lazily so that ``import sbc_onnx.bridges`` works without torch:
    export_snntorch, import_snntorch, run_snntorch   (sbc_onnx.bridges.snntorch_bridge)
    export_norse, import_norse, run_norse            (sbc_onnx.bridges.norse_bridge)
    export_spikingjelly, run_spikingjelly            (sbc_onnx.bridges.spikingjelly_bridge)

One call from a torch module to a compressed module of the same class: ``sbc_onnx.torch.compress_module``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .lava_netx import netx_to_nir
from .nir_legacy import write_nir_legacy

_LAZY = {
    "export_snntorch": "snntorch_bridge",
    "import_snntorch": "snntorch_bridge",
    "run_snntorch": "snntorch_bridge",
    "export_norse": "norse_bridge",
    "import_norse": "norse_bridge",
    "run_norse": "norse_bridge",
    "export_spikingjelly": "spikingjelly_bridge",
    "run_spikingjelly": "spikingjelly_bridge",
}

__all__ = ["netx_to_nir", "write_nir_legacy", "export_snntorch", "import_snntorch", "run_snntorch",
           "export_norse", "import_norse", "run_norse", "export_spikingjelly", "run_spikingjelly"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
