"""Load and save models by file extension: `.nir` (NIR/HDF5) or `.onnx` (the project's SNN convention)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nir

from ..errors import SbcError
from .nir_io import read_nir, write_nir
from ..sim import SimConfig

FORMATS = (".nir", ".onnx")


def model_format(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise SbcError(f"{path}: unknown model format {ext or '(no extension)'!r}; use .nir or .onnx")
    return ext[1:]


def load_model(path: str | os.PathLike) -> nir.NIRGraph:
    """Read a model as a NIR graph (ONNX files of the convention are converted on the fly)."""
    if model_format(path) == "onnx":
        from .onnx_io import read_onnx

        return read_onnx(path)
    return read_nir(path)


def save_model(graph: nir.NIRGraph, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None,
               cfg: SimConfig | None = None, source: str | os.PathLike | None = None) -> Path:
    """Write `graph` to `path` by extension. With `source` an ONNX file of the same graph, only its weight
    initializers and metadata are rewritten (every other protobuf field is kept)."""
    meta = {**(cfg.to_metadata() if cfg else {}), **(metadata or {})}
    if model_format(path) == "onnx":
        from .onnx_io import update_onnx, write_onnx

        if source is not None and model_format(source) == "onnx":
            return update_onnx(source, graph, path, metadata=meta)
        return write_onnx(graph, path, cfg=cfg, metadata=meta)
    return write_nir(graph, path, metadata=meta)


def sim_config_for(graph: nir.NIRGraph, **overrides: Any) -> SimConfig:
    """Settings from the graph's metadata (dt, integrator, reset...), overridden by explicit options."""
    return SimConfig.from_metadata(getattr(graph, "metadata", None), **overrides)
