"""ONNX files of the project's SNN convention (docs/onnx_convention.md): read, write, update in place, run.

- read_onnx(path) -> nir.NIRGraph            (graph.metadata carries dt/integrator/reset/cuba_order)
- write_onnx(graph, path, cfg=, metadata=, int_weights=, quant=) -> Path   (atomic)
- update_onnx(source, graph, out, metadata=)   rewrite only weight initializers + metadata_props
- baked_config(source) -> SimConfig           the settings a file's time step is built for
- evaluate_onnxruntime(path, dataset, readout=, batch_size=, progress=) -> EvalResult
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nir
import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..compress.grids import infer_grid
from ..errors import SbcError, existing_file
from ..evaluate import READOUTS, BatchOutputs, EvalResult, evaluate_engine, output_source
from ..graph import flatten
from ..primitives import WEIGHT, lookup
from ..sim.config import SimConfig
from .atomic import write_bytes_atomic
from .onnx_common import WEIGHT_FIELDS
from .onnx_export import Quant, build_model, metadata_props, nir_fields, set_metadata
from .onnx_import import compute_dtype, model_to_graph, read_metadata
from .onnx_weights import encode_weight, owns


def load_proto(path: str | os.PathLike) -> onnx.ModelProto:
    path = existing_file(path, "ONNX file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        raise SbcError(f"{path} is not an ONNX model ({type(e).__name__}: {e})") from e
    if not model.graph.node:
        raise SbcError(f"{path} is not an ONNX model (no graph)")
    return model


def read_onnx(path: str | os.PathLike) -> nir.NIRGraph:
    model = load_proto(path)
    try:
        return model_to_graph(model, path)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError, StopIteration) as e:
        # a damaged file can break any lookup of the importer: one line, not a traceback
        raise SbcError(f"{path} is damaged or outside the sbc-onnx SNN convention ({type(e).__name__}: {e})") from e


def baked_config(path: str | os.PathLike) -> SimConfig:
    """The settings the file's time step is built for (its metadata_props: dt, integrator, reset, cuba order,
    compute dtype). Changing them needs a new file (write_onnx), not update_onnx."""
    model = load_proto(path)
    return SimConfig.from_metadata(read_metadata(model), dtype=compute_dtype(model))


def write_onnx(graph: nir.NIRGraph, path: str | os.PathLike, *, cfg: SimConfig | None = None,
               metadata: dict[str, Any] | None = None, int_weights: bool = False,
               quant: Quant | None = None, compact: bool = True, check: bool = True) -> Path:
    """Export `graph` in the convention. `cfg` (default: the graph's metadata) fixes dt/integrator/reset and
    the compute dtype. `compact` (default): each weight in the smallest encoding that gives it back bit for
    bit (dense, integer codes + DequantizeLinear, bitmask + nonzero values, or both; onnx_weights.py), on
    `quant`'s grid or one inferred from the weights. With `int_weights`, weights are stored as integers +
    per-channel scales whenever a grid fits: `quant[node] = (q, scale, zero_point|None)` gives it
    (dequantized float32(q - zero) * scale must reproduce the graph's weight within 1e-5 relative); nodes
    missing from `quant` get a grid inferred from their weights (`infer_grid`) or stay float if the weights
    are on no <= 8-bit grid."""
    cfg = cfg or SimConfig.from_graph(graph)
    model = build_model(graph, cfg, metadata=metadata, quant=dict(quant or {}), int_weights=int_weights,
                        compact=compact)
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:
            raise SbcError(f"internal error: the exported ONNX model fails onnx.checker: {e}") from e
    return write_bytes_atomic(path, model.SerializeToString())


def update_onnx(source_path: str | os.PathLike, graph: nir.NIRGraph, out_path: str | os.PathLike, *,
                metadata: dict[str, Any] | None = None, compact: bool = True, quant: Quant | None = None) -> Path:
    """Copy `source_path`, replacing the weights (`<node>.weight`, `<node>.bias` of Affine/Linear/Conv
    nodes) by `graph`'s values and adding `metadata` to metadata_props (encoded as write_onnx does; settings
    keys are skipped, the file keeps the ones its time step is built for). A changed weight is stored in the
    encoding write_onnx would choose (`compact`, `quant`); its old initializers and nodes go. A dense
    initializer that stays dense keeps its place and only its data changes. Every other protobuf field stays
    as it is. Non-weight parameters of `graph` must equal the file's."""
    model = load_proto(source_path)
    src_graph = model_to_graph(model, source_path)
    src = flatten(src_graph).nodes
    new = flatten(graph).nodes
    if set(src) != set(new):
        raise SbcError(f"the graph's nodes differ from {source_path}'s: "
                       f"{sorted(set(src) ^ set(new))[:8]}")
    quant = quant or {}
    for name, node in new.items():
        kind = type(node).__name__
        if kind != type(src[name]).__name__:
            raise SbcError(f"node {name!r} is {kind} in the graph but {type(src[name]).__name__} in the file")
        for f in nir_fields(node):
            v, old = getattr(node, f), getattr(src[name], f)
            if (p := lookup(kind)) is not None and p.role == WEIGHT and f in WEIGHT_FIELDS and v is not None:
                _replace_weight(model.graph, f"{name}.{f}", np.asarray(v), np.asarray(old), compact,
                                quant.get(name) if f == "weight" else None)
            elif not _same(v, old):
                raise SbcError(f"node {name!r} field {f!r} differs from {source_path}; update_onnx rewrites "
                               "weights only (write a new file with write_onnx)")
    set_metadata(model, metadata_props(metadata))
    return write_bytes_atomic(out_path, model.SerializeToString())


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return np.array_equal(np.asarray(a), np.asarray(b))


def _replace_weight(g: onnx.GraphProto, name: str, value: np.ndarray, old: np.ndarray, compact: bool,
                    grid) -> None:
    """Store `value` as parameter `name` of graph g, whose current value is `old` (decoded)."""
    value = value.astype(old.dtype)
    if value.shape != old.shape:
        raise SbcError(f"{name}: new shape {value.shape} differs from the file's {old.shape}")
    if value.tobytes() == old.tobytes():
        return  # unchanged: the file keeps its encoding
    enc = encode_weight(name, value, grid=grid, compact=compact) if name.endswith(".weight") \
        else encode_weight(name, value, compact=False)
    inits = {t.name: t for t in g.initializer}
    if enc.kind == "dense" and name in inits and not any(name in n.output for n in g.node):
        _set_data(inits[name], value)
        return
    keep_inits = [t for t in g.initializer if not owns(name, t.name)]
    first = next((i for i, n in enumerate(g.node) if any(owns(name, o) for o in n.output)), 0)
    keep_nodes = [n for n in g.node if not any(owns(name, o) for o in n.output)]
    first = min(first, len(keep_nodes))
    g.ClearField("initializer")
    g.initializer.extend(keep_inits + enc.inits)
    g.ClearField("node")
    g.node.extend(keep_nodes[:first] + enc.nodes + keep_nodes[first:])


def _set_data(t, value: np.ndarray) -> None:
    """Replace the data of initializer t, keeping the storage field the file uses."""
    new = numpy_helper.from_array(np.ascontiguousarray(value), t.name)
    if t.HasField("raw_data") or t.raw_data:
        t.raw_data = new.raw_data
    else:
        t.ClearField("float_data")
        t.ClearField("double_data")
        t.ClearField("int32_data")
        t.ClearField("int64_data")
        t.MergeFrom(new)


# ---- onnxruntime ----------------------------------------------------------------------------------------
def ort_session(path: str | os.PathLike, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise SbcError(f"onnxruntime cannot load {path}: {e}") from e


def run_onnxruntime(session, x: np.ndarray | dict, names: list[str] | None = None) -> dict[str, np.ndarray]:
    feeds = x if isinstance(x, dict) else {session.get_inputs()[0].name: x}
    names = names or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def evaluate_onnxruntime(path: str | os.PathLike, dataset, *, readout: str = "count", batch_size: int = 64,
                         progress: bool = False) -> EvalResult:
    """Accuracy of an ONNX model of the convention run by onnxruntime (readouts as evaluate.py)."""
    if readout not in READOUTS:
        raise SbcError(f"readout must be one of {', '.join(READOUTS)}")
    model = load_proto(path)
    graph = model_to_graph(model, path)
    fg = flatten(graph)
    src = output_source(fg)
    out = fg.outputs[0]
    spiking = fg.spiking()
    sess = ort_session(path)
    avail = {o.name for o in sess.get_outputs()}
    dtype = np.dtype(compute_dtype(model))
    names = [f"{n}/count_final" for n in spiking if f"{n}/count_final" in avail]
    if readout == "potential":
        names.append(out)
    if readout == "count+potential":
        if f"{src}/v_final" not in avail:
            raise SbcError(f"readout 'count+potential' needs the membrane potential of {src!r}")
        names.append(f"{src}/v_final")

    def run_batch(x_tb, on_step):
        res = run_onnxruntime(sess, {fg.inputs[0]: np.ascontiguousarray(x_tb, dtype=dtype)}, names)
        for t in range(x_tb.shape[0] if on_step is not None else 0):  # ORT runs the whole sequence at once
            on_step(t)
        counts = {n: res[f"{n}/count_final"] for n in spiking if f"{n}/count_final" in res}
        return BatchOutputs(counts=counts, final=res[out][-1] if out in res else None,
                            source_v=res.get(f"{src}/v_final"))

    return evaluate_engine(run_batch, fg, spiking, dataset, readout=readout, batch_size=batch_size,
                           progress=progress)


__all__ = [
    "baked_config",
    "evaluate_onnxruntime",
    "infer_grid",
    "load_proto",
    "ort_session",
    "read_onnx",
    "run_onnxruntime",
    "update_onnx",
    "write_onnx",
]
