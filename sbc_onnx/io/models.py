"""Load and save models by file extension: `.nir` (NIR/HDF5) or `.onnx` (the project's SNN convention).

`save_model` is where a model file gets its simulation settings: `cfg.to_metadata()` is stamped by the
format's writer (write_nir, or the ONNX exporter, which also bakes them into the time step).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nir

from ..errors import SbcError
from ..graph import check_weight_inputs, flatten
from ..nodes import EXTRA_NODES
from ..sim.config import SimConfig
from .nir_io import check_parameters, read_nir, write_nir

log = logging.getLogger("sbc_onnx")

FORMATS = (".nir", ".onnx")


def model_format(path: str | os.PathLike) -> str:
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise SbcError(f"{path}: unknown model format {ext or '(no extension)'!r}; use .nir or .onnx")
    return ext[1:]


def check_format(graph: nir.NIRGraph, path: str | os.PathLike) -> None:
    """SbcError if the format of `path` cannot hold `graph`: a `.nir` file holds NIR's own node kinds only, so
    a node beyond NIR 1.0 (sbc_onnx/nodes.py, e.g. MaxPool2d) is refused by name. `save_model` asks it, and
    every command that writes a model asks it right after loading, before any other work."""
    if model_format(path) != "nir":
        return
    for name, node in flatten(graph).nodes.items():
        if type(node).__name__ in EXTRA_NODES:
            raise SbcError(f"{path}: node {name!r} is {type(node).__name__}, which NIR 1.0 cannot hold: write the "
                           "model as .onnx")


def load_model(path: str | os.PathLike) -> nir.NIRGraph:
    """Read a model as a NIR graph (ONNX files of the convention are converted on the fly); its parameters
    are checked (finite, positive time constants) whatever the format."""
    with _notes_held() as notes:  # a note about a model that is then refused would be a second line
        if model_format(path) == "onnx":
            from . import onnx_io  # on first use: importing onnx is slow and NIR-only work never needs it

            graph = onnx_io.read_onnx(path)
        else:
            graph = read_nir(path)
        check_parameters(graph)
        check_weight_inputs(flatten(graph))
    for record in notes:
        log.handle(record)
    return graph


@contextmanager
def _notes_held() -> Iterator[list[logging.LogRecord]]:
    """Collect the package's log records instead of emitting them while the block runs."""
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    log.addFilter(hold)
    try:
        yield held
    finally:
        log.removeFilter(hold)


def save_model(graph: nir.NIRGraph, path: str | os.PathLike, *, cfg: SimConfig | None = None,
               metadata: dict[str, Any] | None = None, source: str | os.PathLike | None = None,
               int_weights: bool = False, compact: bool = True, quant: dict | None = None) -> Path:
    """Write `graph` to `path` by extension, with `metadata` and the settings of `cfg` (for ONNX: default the
    graph's own). With `source` the ONNX file the graph was read from and the same settings, only its weight
    initializers and metadata are rewritten (every other protobuf field is kept). `int_weights`: ONNX only,
    weights on an integer grid stored as integers (write_onnx). `compact` (ONNX; NIR files are always
    gzip-compressed): sparse and low-bit weights stored in the smallest exact encoding, on `quant`'s integer
    grids ({node: (q, scale, zero_point)}, e.g. a CompressionReport's) or inferred ones."""
    check_format(graph, path)
    if model_format(path) == "nir":
        if int_weights:
            raise SbcError(f"{path}: integer weights (int_weights) are stored in ONNX files only")
        return write_nir(graph, path, cfg=cfg, metadata=metadata)
    from . import onnx_io  # on first use, as in load_model

    if source is not None and model_format(source) == "onnx" and not int_weights:
        baked = onnx_io.baked_config(source)
        if cfg is None or cfg.to_metadata() == baked.to_metadata():
            return onnx_io.update_onnx(source, graph, path, metadata=metadata, compact=compact, quant=quant)
        log.info("%s is built for other simulation settings (%s); %s is written as a new file",
                 source, ", ".join(f"{k}={v}" for k, v in baked.to_metadata().items()), path)
    return onnx_io.write_onnx(graph, path, cfg=cfg, metadata=metadata, int_weights=int_weights, compact=compact,
                              quant=quant)
