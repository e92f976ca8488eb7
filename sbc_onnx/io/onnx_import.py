"""ONNX model of the convention -> NIR graph. Anything outside the convention is refused with the list of
operators/functions that are not understood."""

from __future__ import annotations

import logging
from typing import Any

import nir
import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import SbcError
from ..nodes import EXTRA_NODES
from ..primitives import CATALOGUE, PARAM_FIELDS
from .onnx_common import (
    CONVENTION,
    DOMAIN,
    EDGE_ORDER_KEY,
    KEY_CONVENTION,
    KEY_DTYPE,
    KEY_JSON,
    KEY_NODE_FIELD,
    KEY_NODE_INPUT_SHAPE,
    KEY_NODE_META,
    SUBGRAPHS_KEY,
    decode,
)
from .onnx_weights import decode_node

log = logging.getLogger("sbc_onnx")

TOP_OPS = {"Constant", "Cast", "Transpose", "Reshape", "Expand", "DequantizeLinear", "Div", "Sub", "Mul", "Neg",
           "Exp", "Round", "ReduceMax", "Add", "Shape", "Concat", "ConstantOfShape", "Scan",
           "BitShift", "BitwiseAnd", "Slice", "CumSum", "Gather", "Where",  # these and the next: compact weights
           "ScatterElements"}
BODY_OPS = {"Add", "Identity"}


def _label(n: onnx.NodeProto) -> str:
    return f"{n.domain}:{n.op_type}" if n.domain else n.op_type


def check_convention(model: onnx.ModelProto, path) -> onnx.NodeProto:
    """The single Scan of a convention model; SbcError listing what is not understood otherwise."""
    g = model.graph
    local = {(f.domain, f.name) for f in model.functions}
    unknown: set[str] = set()
    scans = []
    for n in g.node:
        if n.op_type == "Scan" and not n.domain:
            scans.append(n)
        elif n.domain or n.op_type not in TOP_OPS:
            unknown.add(_label(n))
    for s in scans:
        body = next(a.g for a in s.attribute if a.name == "body")
        for n in body.node:
            if n.domain == DOMAIN:
                if n.op_type not in CATALOGUE or (DOMAIN, n.op_type) not in local:
                    unknown.add(_label(n))
            elif n.domain or n.op_type not in BODY_OPS:
                unknown.add(_label(n))
    meta = {p.key: p.value for p in model.metadata_props}
    if unknown:
        raise SbcError(f"{path} is outside the sbc-onnx SNN convention ({CONVENTION}); operators/functions not "
                       f"understood: {', '.join(sorted(unknown))}")
    if len(scans) != 1 or meta.get(KEY_CONVENTION) != CONVENTION:
        why = (f"metadata_props {KEY_CONVENTION!r} is {meta.get(KEY_CONVENTION)!r}"
               if len(scans) == 1 else f"{len(scans)} Scan nodes (expected one over time)")
        raise SbcError(f"{path} is outside the sbc-onnx SNN convention ({CONVENTION}): {why}")
    return scans[0]


class _TopEval:
    """Values of the top-level parameter tensors `<node>.<field>` (initializers, Expand, DequantizeLinear, the
    compact weight encodings)."""

    def __init__(self, g: onnx.GraphProto):
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.cache: dict[str, np.ndarray] = {}

    def has(self, name: str) -> bool:
        return name in self.inits or name in self.producer

    def get(self, name: str) -> np.ndarray:
        if name in self.cache:
            return self.cache[name]
        if name in self.inits:
            v = numpy_helper.to_array(self.inits[name]).copy()  # writable (to_array may view the protobuf)
            if v.dtype.kind not in "fiub":  # int4/uint4 (ml_dtypes)
                v = v.astype(np.int8 if "u" not in v.dtype.name else np.uint8)
        else:
            n = self.producer[name]
            if n.op_type == "Constant":
                v = numpy_helper.to_array(n.attribute[0].t)
            else:  # Expand, DequantizeLinear or a compact weight encoding (onnx_weights.py)
                v = decode_node(n, [self.get(i) if i else None for i in n.input])
        self.cache[name] = v
        return v


def model_to_graph(model: onnx.ModelProto, path) -> nir.NIRGraph:
    scan = check_convention(model, path)
    body = next(a.g for a in scan.attribute if a.name == "body")
    top = _TopEval(model.graph)
    n_state = len(scan.input) - next(a.i for a in scan.attribute if a.name == "num_scan_inputs")
    carried = {body.input[i].name: body.output[i].name for i in range(n_state)}
    producer = {o: n for n in body.node for o in n.output}
    scan_steps = {i.name for i in body.input[n_state:]}

    def sources(t: str) -> list[tuple[str, bool]]:
        if t in carried:  # previous step's value of a back-edge source
            nxt = producer.get(carried[t])
            if nxt is None or nxt.op_type != "Identity":
                raise SbcError(f"{path}: loop-carried tensor {t!r} is not a back edge")
            return [(s, True) for s, _ in sources(nxt.input[0])]
        n = producer.get(t)
        if n is None:
            raise SbcError(f"{path}: tensor {t!r} in the time step has no producer")
        if n.domain == DOMAIN and t == n.output[0]:
            return [(n.name, False)]
        if n.op_type == "Add" and not n.domain:
            return sources(n.input[0]) + sources(n.input[1])
        raise SbcError(f"{path}: tensor {t!r} (from {_label(n)}) cannot be read as a NIR edge")

    nodes: dict[str, Any] = {}
    fwd, back = [], []
    for n in body.node:
        if n.domain != DOMAIN:
            continue
        kind, name = n.op_type, n.name
        if name in nodes:
            raise SbcError(f"{path}: two nodes named {name!r}")
        cls = EXTRA_NODES.get(kind) or getattr(nir, kind)
        kwargs: dict[str, Any] = {}
        node_meta, in_shape = {}, None
        for p in n.metadata_props:
            if p.key.startswith(KEY_NODE_FIELD):
                kwargs[p.key[len(KEY_NODE_FIELD):]] = decode(p.value)
            elif p.key == KEY_NODE_META:
                node_meta = decode(p.value)
            elif p.key == KEY_NODE_INPUT_SHAPE:
                in_shape = decode(p.value)
        for f in cls.__dataclass_fields__:
            if f in PARAM_FIELDS and top.has(f"{name}.{f}"):
                kwargs[f] = top.get(f"{name}.{f}")
        try:
            nodes[name] = cls(**kwargs, metadata=node_meta)
            if in_shape is not None and hasattr(nodes[name], "set_input_shape"):
                nodes[name].set_input_shape(in_shape)
        except (TypeError, ValueError) as e:
            raise SbcError(f"{path}: node {name!r} ({kind}) cannot be rebuilt: {e}") from e
        if n.input[0] not in scan_steps:
            for src, is_back in sources(n.input[0]):
                (back if is_back else fwd).append((src, name))
    edges = list(dict.fromkeys(fwd + back))
    meta = read_metadata(model)
    order = meta.pop(EDGE_ORDER_KEY, None)
    if isinstance(order, list) and {tuple(e) for e in order} == set(edges) and len(order) == len(edges):
        edges = [tuple(e) for e in order]  # the source graph's edge order (decides back edges on cycles)
    nested = meta.pop(SUBGRAPHS_KEY, None)
    if isinstance(nested, dict) and "" in nested:
        try:
            return _nest(nodes, nested, "", meta)
        except (KeyError, ValueError, TypeError) as e:
            log.warning("%s: could not restore nested subgraphs (%s); the graph stays flat", path, e)
    try:
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)
    except Exception as e:  # noqa: BLE001 - nir raises several types on type mismatch
        log.warning("%s: NIR type check failed (%s); graph built without type checking", path, e)
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)


def _nest(flat: dict[str, Any], nested: dict[str, Any], path: str, meta: dict) -> nir.NIRGraph:
    """Rebuild the NIRGraph at `path` from flat dotted node names and the exported structure."""
    prefix = path + "." if path else ""
    children = {p[len(prefix):] for p in nested if p and p.startswith(prefix) and "." not in p[len(prefix):]}
    nodes: dict[str, Any] = {}
    for child in sorted(children):
        nodes[child] = _nest(flat, nested, prefix + child, nested[prefix + child].get("metadata") or {})
    for name, node in flat.items():
        local = name[len(prefix):]
        if name.startswith(prefix) and local.split(".")[0] not in children:
            nodes[local] = node
    edges = [tuple(e) for e in nested[path]["edges"]]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for p in model.metadata_props:
        if p.key in (KEY_CONVENTION, KEY_DTYPE):
            continue
        if p.key.startswith(KEY_JSON):
            meta[p.key[len(KEY_JSON):]] = decode(p.value)
        elif p.key == "dt":
            try:
                meta["dt"] = float(p.value)
            except ValueError:
                meta["dt"] = p.value
        else:
            meta[p.key] = p.value
    return meta


def compute_dtype(model: onnx.ModelProto) -> str:
    return next((p.value for p in model.metadata_props if p.key == KEY_DTYPE), "float32")


__all__ = ["check_convention", "compute_dtype", "model_to_graph", "read_metadata"]
