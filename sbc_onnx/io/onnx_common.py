"""Shared pieces of the ONNX convention (docs/onnx_convention.md): names, versions, field tables, JSON values,
integer weights. The simulation settings' metadata keys are SimConfig's (sim/config.py META_KEYS)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

DOMAIN = "snn.nir"  # model-local functions, one per NIR primitive
DOMAIN_VERSION = 1
OPSET = 21  # default domain; >= 21 for INT4 DequantizeLinear
IR_VERSION = 10  # node metadata_props, INT4
CONVENTION = "sbc-onnx-snn/1"
KEY_CONVENTION = "snn.convention"
KEY_DTYPE = "snn.compute_dtype"
KEY_JSON = "nir.json."  # prefix: graph metadata values that are not strings (JSON)
KEY_NODE_FIELD = "nir.field."  # node metadata_props: NIR structural fields (JSON)
KEY_NODE_META = "nir.metadata"  # node metadata_props: the NIR node's own metadata (JSON)
KEY_NODE_INPUT_SHAPE = "snn.input_shape"  # node metadata_props: input shape of a node beyond NIR (JSON list)
DT_TENSOR = "snn/dt"
SUBGRAPHS_KEY = "nir_subgraphs"  # graph metadata: nested NIRGraph nodes {path: {"edges", "metadata"}}
EDGE_ORDER_KEY = "nir_edge_order"  # graph metadata key (stored as nir.json.nir_edge_order)

WEIGHT_FIELDS = ("weight", "bias")  # the fields `update_onnx` rewrites (of weight nodes)


def encode(v: Any) -> str:
    return json.dumps(_enc(v), separators=(",", ":"))


def _enc(v: Any) -> Any:
    if isinstance(v, dict):
        return {"__dict__": {str(k): _enc(x) for k, x in v.items()}}
    if isinstance(v, (np.ndarray, np.generic)):
        a = np.asarray(v)
        if a.dtype.kind in "US":
            return {"__str_array__": a.astype(str).tolist(), "shape": list(a.shape)}
        return {"__ndarray__": a.reshape(-1).tolist(), "dtype": a.dtype.str, "shape": list(a.shape),
                "scalar": isinstance(v, np.generic)}
    if isinstance(v, (list, tuple)):
        return [_enc(x) for x in v]
    if isinstance(v, bytes):
        return {"__bytes__": v.decode("utf-8", "replace")}
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    return str(v)


def decode(s: str) -> Any:
    return _dec(json.loads(s))


def _dec(v: Any) -> Any:
    if isinstance(v, dict):
        if "__dict__" in v:
            return {k: _dec(x) for k, x in v["__dict__"].items()}
        if "__ndarray__" in v:
            a = np.array(v["__ndarray__"], dtype=np.dtype(v["dtype"])).reshape(v["shape"])
            return a[()] if v.get("scalar") else a
        if "__str_array__" in v:
            return np.array(v["__str_array__"], dtype=str).reshape(v["shape"])
        if "__bytes__" in v:
            return v["__bytes__"].encode()
        return {k: _dec(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v


def dequantize(q: np.ndarray, scale: np.ndarray, zero) -> np.ndarray:
    """DequantizeLinear along axis 0: float32(q - zero) * scale (what onnxruntime computes)."""
    q = np.asarray(q).astype(np.int64)
    scale = np.asarray(scale, dtype=np.float32).reshape(-1)
    shape = (-1,) + (1,) * (q.ndim - 1) if scale.size > 1 else ()
    z = 0 if zero is None else np.asarray(zero).astype(np.int64).reshape(shape)
    return (q - z).astype(np.float32) * scale.reshape(shape)
