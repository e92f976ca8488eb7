"""Reading and writing NIR files with the `nir` package, with clear errors for bad input.

- read: type checking on; if the file's own types are wrong (e.g. the paper's lif_rockpool.nir declares an
  Output of shape [1,1,1] after a [1] LIF), load without type checking, repair Output/Input shapes that
  disagree with their neighbours, and say so. Parameters must be finite and time constants positive
  (`check_parameters`, which `load_model` runs on every model, NIR or ONNX).
- write: neuron parameters never 0-d (nir's gzip writer crashes on them and type checks fail), metadata kept,
  simulation settings stamped from `cfg`, atomic (io/atomic.py), compact (`write_hdf5`: nir.write's layout,
  gzip-9), and the result must load back type-checked.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path
from typing import Any

import h5py
import nir
import numpy as np

from ..errors import SbcError, existing_file
from ..graph import flatten, node_shape
from ..nodes import EXTRA_NODES
from ..primitives import lookup
from ..sim.config import SimConfig
from .atomic import write_atomic

log = logging.getLogger("sbc_onnx")

_NOT_PARAMS = ("input_type", "output_type", "metadata")
_SHAPE_FIELDS = ("input_shape", "stride", "padding", "dilation", "groups", "kernel_size", "start_dim", "end_dim")


def read_nir(path: str | os.PathLike) -> nir.NIRGraph:
    path = existing_file(path, "NIR file")
    if not h5py.is_hdf5(path):
        raise SbcError(f"{path} is not a NIR file (not HDF5)")
    _check_node_types(path)
    try:
        graph = nir.read(path)
    except ValueError as e:
        if "type" not in str(e).lower():
            raise SbcError(f"cannot read NIR file {path}: {e}") from e
        graph = _read_unchecked(path, reason=str(e))
    except (OSError, KeyError, TypeError, AttributeError, IndexError, AssertionError, RuntimeError) as e:
        raise SbcError(f"cannot read NIR file {path}: the file is truncated, corrupt or not a NIR graph "
                       f"({type(e).__name__}: {e})") from e
    except NotImplementedError as e:
        raise SbcError(f"cannot read NIR file {path}: {e}") from e
    if not isinstance(graph, nir.NIRGraph):
        raise SbcError(f"{path} holds a single {type(graph).__name__} node, not a graph")
    return graph


def _known_types() -> set[str]:
    """NIR's node classes (the project's own, sbc_onnx/nodes.py, are subclasses too but not NIR's)."""
    seen, todo = set(EXTRA_NODES), [nir.NIRNode]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__name__ not in seen:
                seen.add(sub.__name__)
                todo.append(sub)
    return seen - set(EXTRA_NODES)


def _check_node_types(path: Path) -> None:
    """nir.read fails with a bare AssertionError on an unknown node type: name the node and type instead."""
    known = _known_types()
    try:
        with h5py.File(path, "r") as f:
            def walk(group, prefix):
                for name, sub in group.get("nodes", {}).items():
                    kind = sub["type"][()] if "type" in sub else None
                    kind = kind.decode() if isinstance(kind, bytes) else kind
                    if kind is None or kind not in known:
                        raise SbcError(f"{path.name}: node {prefix + name!r} has type {kind!r}, which NIR "
                                       f"{nir.__version__} does not define")
                    if kind == "NIRGraph":
                        walk(sub, prefix + name + ".")

            if "node" not in f:
                raise SbcError(f"{path}: not a NIR file (no /node group)")
            walk(f["node"], "")
    except SbcError:
        raise
    except Exception as e:
        raise SbcError(f"cannot read NIR file {path}: the file is truncated or corrupt ({type(e).__name__}: {e})") from e


def _read_unchecked(path: Path, reason: str) -> nir.NIRGraph:
    try:
        graph = nir.read(path, type_check=False)
    except Exception as e:
        raise SbcError(f"cannot read NIR file {path}: {reason}; without type checking: {e}") from e
    fixed = repair_port_shapes(graph)
    log.warning("%s: the file's own types are inconsistent (%s); loaded without type checking%s",
                path.name, reason, f", repaired {', '.join(fixed)}" if fixed else "")
    return graph


def repair_port_shapes(graph: nir.NIRGraph) -> list[str]:
    """Make Output (Input) node shapes equal to their predecessor's output (successor's input)."""
    fixed = []
    fg = flatten(graph)
    for name, node in fg.nodes.items():
        if isinstance(node, nir.Output):
            srcs = [s for s, d in fg.edges if d == name]
            shapes = {node_shape(fg.nodes[s], "output") for s in srcs} - {None}
            if len(shapes) == 1:
                shape = shapes.pop()
                if node_shape(node, "input") != shape:
                    node.output_type = {"output": np.array(shape)}
                    node.input_type = {"input": np.array(shape)}
                    fixed.append(f"{name} shape -> {list(shape)}")
    return fixed


def iter_params(graph: nir.NIRGraph):
    """(flat node name, field, array) for every numeric parameter array."""
    for name, node in flatten(graph).nodes.items():
        for f in getattr(node, "__dataclass_fields__", {}):
            if f in _NOT_PARAMS or f in _SHAPE_FIELDS:
                continue
            v = getattr(node, f)
            if isinstance(v, (np.ndarray, float, int)) and np.asarray(v).dtype.kind in "fiu":
                yield name, f, np.asarray(v)


def check_finite(graph: nir.NIRGraph) -> None:
    for name, f, v in iter_params(graph):
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
            raise SbcError(f"node {name!r} parameter {f!r} has {bad} NaN/inf value(s)")


def check_time_constants(graph: nir.NIRGraph) -> None:
    """Every neuron's time constants (the catalogue's tau fields) must be > 0: dt/tau would be inf or flip
    the leak into growth."""
    for name, node in flatten(graph).nodes.items():
        prim = lookup(node)
        for f in prim.tau_fields if prim is not None else ():
            v = getattr(node, f, None)
            if v is None:
                continue
            a = np.asarray(v, dtype=np.float64)
            if a.size and not np.all(a > 0):
                raise SbcError(f"node {name!r} ({type(node).__name__}) parameter {f!r} must be positive (a time "
                               f"constant), got {float(a.reshape(-1)[np.argmin(a.reshape(-1) > 0)]):g}")


def check_parameters(graph: nir.NIRGraph) -> None:
    """The checks every loaded model passes: finite parameters, positive time constants."""
    check_finite(graph)
    check_time_constants(graph)


def _broadcast_params(graph: nir.NIRGraph) -> None:
    """Replace 0-d parameter arrays by full per-neuron arrays of the node's shape."""
    for node in flatten(graph).nodes.values():
        shape = node_shape(node, "output") or node_shape(node, "input")
        for f in getattr(node, "__dataclass_fields__", {}):
            if f in _NOT_PARAMS or f in _SHAPE_FIELDS:
                continue
            v = getattr(node, f)
            if isinstance(v, (float, int, np.number)) or (isinstance(v, np.ndarray) and v.ndim == 0):
                if shape is None or shape == ():
                    setattr(node, f, np.atleast_1d(np.asarray(v)))
                else:
                    setattr(node, f, np.full(shape, np.asarray(v).item(), dtype=np.asarray(v).dtype))


def _clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """HDF5 metadata must be numbers, strings or arrays; drop None, stringify the rest."""
    out = {}
    for k, v in meta.items():
        if v is None:
            continue
        if isinstance(v, (str, bytes, int, float, np.number, np.ndarray, bool)):
            out[k] = v
        elif isinstance(v, dict):
            out[k] = _clean_meta(v)
        else:
            out[k] = str(v)
    return out


def write_nir(graph: nir.NIRGraph, path: str | os.PathLike, *, cfg: SimConfig | None = None,
              metadata: dict[str, Any] | None = None, verify: bool = True) -> Path:
    """Write `graph` atomically to `path`. The graph is modified in place: 0-d parameters become full arrays,
    and its metadata gains `metadata`, then the simulation settings of `cfg` (`cfg.to_metadata()`)."""

    settings = cfg.to_metadata() if cfg else {}

    def write(tmp: Path) -> None:
        _broadcast_params(graph)
        # settings before `metadata` (the key order the file always had), then again so that they win
        graph.metadata = _clean_meta({**(graph.metadata or {}), **settings, **(metadata or {}), **settings})
        write_hdf5(tmp, graph)
        if verify:
            nir.read(str(tmp))  # must load back with type checking on

    return write_atomic(path, write)


def write_hdf5(path: str | os.PathLike, graph: nir.NIRGraph) -> None:
    """`nir.write`'s layout (the same groups and datasets, so `nir.read` and other NIR readers load it) in a
    smaller file: HDF5 1.10 object headers and chunk indexes (libver v110, read by HDF5 >= 1.10) and every
    array gzip-9 compressed, byte-shuffled when that compresses it better (it does for dense floats, not for
    sparse or few-valued weights)."""
    with h5py.File(path, "w", libver=("v110", "latest")) as f:
        f.create_dataset("version", data=nir.version, dtype=h5py.string_dtype())
        _write_group(f.create_group("node"), graph.to_dict())


def _write_group(group: h5py.Group, node: dict) -> None:
    for k, v in node.items():
        if k == "metadata":
            if v != {}:  # as nir.write: no empty metadata group
                _write_group(group.create_group(k), v)
        elif isinstance(v, str):
            group.create_dataset(k, data=v, dtype=h5py.string_dtype())
        elif isinstance(v, np.ndarray) and v.ndim > 0 and v.size > 0:
            group.create_dataset(k, data=v, dtype=v.dtype, compression="gzip", compression_opts=9,
                                 shuffle=_shuffle_helps(v))
        elif isinstance(v, dict):
            _write_group(group.create_group(str(k)), v)
        else:
            group.create_dataset(k, data=v)


def _shuffle_helps(a: np.ndarray) -> bool:
    if a.dtype.itemsize == 1 or a.dtype.kind not in "fiu":
        return False
    raw = np.ascontiguousarray(a).view(np.uint8).reshape(-1, a.dtype.itemsize)
    return len(zlib.compress(raw.T.tobytes(), 9)) < len(zlib.compress(raw.tobytes(), 9))
