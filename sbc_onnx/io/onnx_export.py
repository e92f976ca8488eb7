"""NIR graph -> ONNX model of the convention (docs/onnx_convention.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import nir
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import SbcError
from ..graph import FlatGraph, flatten
from ..nodes import EXTRA_NODES
from ..primitives import NEURON, PARAM_FIELDS, primitive
from ..sim.config import META_KEYS, SimConfig
from ..sim.conv import as_tuple, conv_padding
from ..sim.walker import Walker
from .onnx_common import (
    CONVENTION,
    DOMAIN,
    DOMAIN_VERSION,
    DT_TENSOR,
    EDGE_ORDER_KEY,
    IR_VERSION,
    KEY_CONVENTION,
    KEY_DTYPE,
    KEY_JSON,
    KEY_NODE_FIELD,
    KEY_NODE_INPUT_SHAPE,
    KEY_NODE_META,
    OPSET,
    SUBGRAPHS_KEY,
    encode,
)
from .onnx_functions import build_functions
from .onnx_weights import encode_weight

Quant = dict[str, tuple[np.ndarray, np.ndarray, Any]]


def nir_fields(node: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(node) if f.init and f.name != "metadata"]


def infer_shapes(fg: FlatGraph, cfg: SimConfig) -> tuple[dict, dict, dict]:
    """Batch-less input/output/state shapes of every node: one walker step on zeros (B = 1)."""
    walker = Walker(fg, cfg)
    xs = {}
    for name in fg.inputs:
        shape = fg.nodes[name].output_type
        shape = tuple(int(s) for s in np.asarray(next(iter(shape.values()))).reshape(-1))
        xs[name] = np.zeros((1, 1) + shape, dtype=cfg.dtype)
    ins, outs, states = {}, {}, {}
    on_in = {n: (lambda t, x, n=n: ins.__setitem__(n, x.shape[1:])) for n in fg.order}
    on_out = {n: (lambda t, y, n=n: outs.__setitem__(n, y.shape[1:])) for n in fg.order}

    def grab(n):
        def f(t, st):
            if isinstance(st, dict):
                states[n] = {k: v.shape[1:] for k, v in st.items()}
        return f

    try:
        walker.run(xs, on_input=on_in, on_output=on_out, on_state={n: grab(n) for n in fg.order})
    except SbcError:
        raise
    except Exception as e:
        raise SbcError(f"cannot determine tensor shapes of the graph: {type(e).__name__}: {e}") from e
    return ins, outs, states


class _Builder:
    def __init__(self, graph: nir.NIRGraph, cfg: SimConfig, quant: Quant | None, int_weights: bool, compact: bool):
        self.fg = flatten(graph)
        self.graph, self.cfg = graph, cfg
        self.quant = quant or {}
        self.int_weights, self.compact = int_weights, compact
        self.dtype = np.dtype(cfg.dtype)
        self.onnx_dtype = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.inits: list[TensorProto] = []
        self.top: list[onnx.NodeProto] = []  # parameter preparation (before the Scan)
        self.body: list[onnx.NodeProto] = []
        self.ins, self.outs, self.states = infer_shapes(self.fg, cfg)
        self.exposed: list[tuple[str, list]] = []

    # ---- helpers -------------------------------------------------------------------------------------
    def const(self, name: str, value, dtype=None) -> str:
        a = np.asarray(value, dtype=dtype)
        self.top.append(helper.make_node("Constant", [], [name], name=name,
                                         value=numpy_helper.from_array(a, name)))
        return name

    def node(self, op, inputs, output, **attrs) -> str:
        self.top.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def cast(self, name: str, src: str, src_dtype) -> str:
        """`src` in the compute dtype (a Cast only when it differs)."""
        if np.dtype(src_dtype) == self.dtype:
            return src
        return self.node("Cast", [src], name, to=self.onnx_dtype)

    def param(self, n: str, field: str, value: Any) -> str:
        """Store NIR parameter `field` of node n as tensor `<n>.<field>` (its own dtype and shape)."""
        name = f"{n}.{field}"
        a = np.asarray(value)
        if field == "weight":
            enc = encode_weight(name, a, grid=self.quant.get(n), compact=self.compact, int_weights=self.int_weights)
            self.inits.extend(enc.inits)
            self.top.extend(enc.nodes)
        elif field not in ("weight", "bias") and a.size > 1 and np.all(a == a.reshape(-1)[0]):
            # uniform neuron parameter: one value + Expand (keeps the file small, shape exact)
            self.inits.append(numpy_helper.from_array(a.reshape(-1)[:1].copy(), name + "/value"))
            self.const(name + "/shape", np.array(a.shape, dtype=np.int64))
            self.node("Expand", [name + "/value", name + "/shape"], name)
        else:
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
        return name

    # ---- parameters outside the Scan -------------------------------------------------------------------
    def decay(self, n: str, tau: str, tag: str) -> str:
        """k = dt/tau (euler) or 1 - exp(-dt/tau) (exact), computed in float64, rounded to the compute dtype."""
        td = self.node("Cast", [tau], f"{n}/{tag}_f64", to=TensorProto.DOUBLE)
        ratio = self.node("Div", [DT_TENSOR, td], f"{n}/{tag}_dt_over_tau")
        if self.cfg.integrator == "exact":
            neg = self.node("Neg", [ratio], f"{n}/{tag}_neg")
            e = self.node("Exp", [neg], f"{n}/{tag}_exp")
            one = self.const(f"{n}/{tag}_one", 1.0, np.float64)
            ratio = self.node("Sub", [one, e], f"{n}/{tag}_k64")
        return self.node("Cast", [ratio], f"{n}/{tag}_k", to=self.onnx_dtype)

    def prepare(self, n: str, node: Any) -> list[str]:
        """Tensors the step function of node n takes after its input and states."""
        kind = type(node).__name__
        p = {f: self.param(n, f, getattr(node, f)) for f in nir_fields(node)
             if f in PARAM_FIELDS and getattr(node, f) is not None}
        dt = {f: np.asarray(getattr(node, f)).dtype for f in p}
        c = lambda f, tag=None: self.cast(f"{n}/{tag or f}", p[f], dt[f])
        if kind in ("Affine", "Linear"):
            w = np.asarray(node.weight)
            if w.ndim != 2:
                raise SbcError(f"node {n!r}: only 2-d {kind} weights are supported, got shape {w.shape}")
            wt = self.node("Transpose", [c("weight", "weight_c")], f"{n}/weight_t", perm=[1, 0])
            return [wt, c("bias")] if kind == "Affine" else [wt]
        if kind in ("Conv1d", "Conv2d"):
            w = np.asarray(node.weight)
            shape = [w.shape[0]] + [1] * (w.ndim - 2)
            if "bias" in p:
                b = self.node("Reshape", [c("bias", "bias_c"), self.const(f"{n}/bias_shape", shape, np.int64)],
                              f"{n}/bias")
            else:
                b = self.const(f"{n}/bias", np.zeros(shape, self.dtype))
            return [c("weight", "weight_c"), b]
        if kind in ("SumPool2d", "AvgPool2d"):
            k = as_tuple(node.kernel_size, 2)
            ch = self.ins[n][0]
            out = [self.const(f"{n}/ones", np.ones((ch, 1) + k, self.dtype))]
            if kind == "AvgPool2d":
                out.append(self.const(f"{n}/norm", np.asarray(1.0 / (k[0] * k[1]), self.dtype)))
            return out
        if kind == "Flatten":
            return [self.const(f"{n}/shape", [0] + list(self.outs[n]), np.int64)]
        if kind == "Scale":
            return [c("scale")]
        if kind == "Threshold":
            return [c("threshold")]
        if kind == "Delay":
            steps = np.rint(np.asarray(node.delay, np.float64) / self.cfg.dt)
            if (steps < 0).any():
                raise SbcError(f"node {n!r}: negative delay")
            d = self.node("Cast", [p["delay"]], f"{n}/delay_f64", to=TensorProto.DOUBLE)
            r = self.node("Round", [self.node("Div", [d, DT_TENSOR], f"{n}/delay_steps_f")], f"{n}/delay_steps_r")
            s = self.node("Cast", [r], f"{n}/delay_steps", to=TensorProto.INT64)
            shp = self.const(f"{n}/idx_shape", [1, 1] + list(self.ins[n]), np.int64)
            return [self.node("Expand", [s, shp], f"{n}/idx")]
        prim = primitive(kind)
        if prim.role != NEURON:
            return []
        out = []
        for st in prim.stages:  # the constants of onnx_functions.stage_inputs, from the catalogue stage
            pre = f"{n}/{st.prefix}"
            g = c(st.gain, f"{st.prefix}g") if st.gain in p else self.const(f"{pre}g_default", 1.0, self.dtype)
            if st.tau is None:
                out.append(g)
                continue
            k = self.decay(n, p[st.tau], st.tag)
            one = self.const(f"{n}/one_{st.tag}", 1.0, self.dtype)
            out.append(self.node("Sub", [one, k], f"{pre}keep"))
            if st.leak:
                out.append(self.node("Mul", [k, c(st.leak)], f"{pre}leak_in"))
            out.append(self.node("Mul", [k, g], f"{pre}gain"))
        if prim.spiking:
            out.append(c(prim.threshold))
            out.append(c(prim.reset) if prim.reset in p else self.const(f"{n}/v_reset_default", 0.0, self.dtype))
        return out

    # ---- the Scan body -------------------------------------------------------------------------------
    def vi(self, name: str, shape, batch: bool = True, extra: str | None = None):
        dims = ([extra] if extra else []) + (["B"] if batch else []) + [int(s) for s in shape]
        return helper.make_tensor_value_info(name, self.onnx_dtype, dims)

    def build(self) -> onnx.GraphProto:
        fg = self.fg
        first_in = fg.inputs[0]
        self.top.append(helper.make_node("Shape", [first_in], ["snn/batch"], name="snn/batch", start=1, end=2))
        body_in, body_out, scan_in, scan_out_body, scan_out_outer = [], [], [], [], []
        body_scan_in = []  # the per-step slices of the graph inputs
        init_states, final_states = [], []

        def carry(body_name: str, next_name: str, shape, final: str, extra_dim: str | None = None,
                  depth: str | None = None):
            sh = self.const(f"{body_name}/shape", list(shape), np.int64)
            parts = ([depth] if depth else []) + ["snn/batch", sh]
            full = self.node("Concat", parts, f"{body_name}/init_shape", axis=0)
            init = f"{body_name}/init"
            self.top.append(helper.make_node("ConstantOfShape", [full], [init], name=init,
                                             value=numpy_helper.from_array(np.zeros(1, self.dtype))))
            body_in.append(self.vi(body_name, shape, extra=extra_dim))
            body_out.append(self.vi(next_name, shape, extra=extra_dim))
            init_states.append(init)
            final_states.append(final)

        back_sources = sorted({s for s, _ in fg.back_edges}, key=fg.order.index)
        for n in fg.order:
            node = fg.nodes[n]
            kind = type(node).__name__
            params = self.prepare(n, node)
            if n in fg.inputs:
                x = f"{n}/t"
                scan_in.append(n)
                body_scan_in.append(self.vi(x, self.outs[n]))
            else:
                parts = [f"{p}/y" for p in fg.preds[n]] + [f"{p}/y_prev" for p in fg.back_preds[n]]
                if not parts:
                    raise SbcError(f"node {n!r} receives no input")
                x = parts[0]
                for j, part in enumerate(parts[1:]):
                    nxt = f"{n}/x" if j == len(parts) - 2 else f"{n}/x{j + 1}"
                    self.body.append(helper.make_node("Add", [x, part], [nxt], name=nxt))
                    x = nxt
            st = primitive(kind).state
            st_in = [f"{n}/{s}" for s in st]
            st_out = [f"{n}/{s}_next" for s in st]
            call = helper.make_node(kind, [x] + st_in + params, [f"{n}/y"] + st_out, name=n, domain=DOMAIN)
            attrs = {}
            if primitive(kind).role == NEURON and primitive(kind).spiking:
                attrs["subtract"] = int(self.cfg.reset == "subtract")
            if len(primitive(kind).stages) > 1:
                attrs["previous_current"] = int(self.cfg.cuba_order == "previous_current")
            attrs.update(self.exec_attrs(n, node, kind))
            call.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
            for f in nir_fields(node):
                if f not in PARAM_FIELDS:
                    e = call.metadata_props.add()
                    e.key, e.value = KEY_NODE_FIELD + f, encode(getattr(node, f))
            if node.metadata:
                e = call.metadata_props.add()
                e.key, e.value = KEY_NODE_META, encode(node.metadata)
            if kind in EXTRA_NODES:  # NIR cannot infer its types: the reader restores them from its input shape
                e = call.metadata_props.add()
                e.key, e.value = KEY_NODE_INPUT_SHAPE, encode([int(v) for v in self.ins[n]])
            self.body.append(call)
            for s in st:
                if s == "buf":
                    d = self.node("ReduceMax", [params[0]], f"{n}/max_steps", keepdims=0)
                    one = self.const(f"{n}/one_i", 1, np.int64)
                    dep = self.node("Add", [d, one], f"{n}/depth0")
                    dep = self.node("Reshape", [dep, self.const(f"{n}/one_shape", [1], np.int64)], f"{n}/depth")
                    carry(f"{n}/buf", f"{n}/buf_next", self.ins[n], f"{n}/buf_final", extra_dim=f"D_{n}",
                          depth=dep)
                else:
                    carry(f"{n}/{s}", f"{n}/{s}_next", self.states[n][s], f"{n}/{s}_final")
                    self.exposed.append((f"{n}/{s}_final", self.states[n][s]))
            if primitive(kind).spiking:
                carry(f"{n}/count", f"{n}/count_next", self.outs[n], f"{n}/count_final")
                self.body.append(helper.make_node("Add", [f"{n}/count", f"{n}/y"], [f"{n}/count_next"],
                                                  name=f"{n}/count_next"))
                self.exposed.append((f"{n}/count_final", self.outs[n]))
            if n in fg.outputs:
                scan_out_body.append(self.vi(f"{n}/y", self.outs[n]))
                scan_out_outer.append(n)
        for s in back_sources:
            carry(f"{s}/y_prev", f"{s}/y_next", self.outs[s], f"{s}/y_final")
            self.body.append(helper.make_node("Identity", [f"{s}/y"], [f"{s}/y_next"], name=f"{s}/y_next"))
        body = helper.make_graph(self.body, "step", body_in + body_scan_in, body_out + scan_out_body)
        scan = helper.make_node("Scan", init_states + scan_in, final_states + scan_out_outer, name="time",
                                body=body, num_scan_inputs=len(scan_in))
        self.top.insert(0, helper.make_node("Constant", [], [DT_TENSOR], name=DT_TENSOR,
                                            value=numpy_helper.from_array(np.asarray(self.cfg.dt, np.float64),
                                                                          DT_TENSOR)))
        inputs = [helper.make_tensor_value_info(n, self.onnx_dtype, ["T", "B"] + list(self.outs[n]))
                  for n in fg.inputs]
        outputs = [helper.make_tensor_value_info(n, self.onnx_dtype, ["T", "B"] + list(self.outs[n]))
                   for n in scan_out_outer]
        outputs += [helper.make_tensor_value_info(name, self.onnx_dtype, ["B"] + list(shape))
                    for name, shape in self.exposed]
        return helper.make_graph(self.top + [scan], "snn", inputs, outputs, initializer=self.inits)

    def exec_attrs(self, n: str, node: Any, kind: str) -> dict:
        if kind in ("Conv1d", "Conv2d"):
            w = np.asarray(node.weight)
            nd = w.ndim - 2
            kernel = tuple(w.shape[2:])
            stride, dil = as_tuple(node.stride, nd), as_tuple(node.dilation, nd)
            try:
                pads = conv_padding(node.padding, kernel, dil, stride)
            except ValueError as e:
                raise SbcError(f"node {n!r}: {e}") from e
            return {"strides": list(stride), "pads": [a for a, _ in pads] + [b for _, b in pads],
                    "dilations": list(dil), "group": int(np.asarray(node.groups).reshape(-1)[0])}
        if kind in ("SumPool2d", "AvgPool2d"):
            pad = as_tuple(node.padding, 2)
            return {"strides": list(as_tuple(node.stride, 2)), "pads": list(pad) * 2, "group": int(self.ins[n][0])}
        if kind == "MaxPool2d":
            pad = as_tuple(node.padding, 2)
            return {"kernel_shape": list(as_tuple(node.kernel_size, 2)), "strides": list(as_tuple(node.stride, 2)),
                    "pads": list(pad) * 2}
        return {}


def build_model(graph: nir.NIRGraph, cfg: SimConfig, *, metadata: dict | None = None, quant: Quant | None = None,
                int_weights: bool = False, compact: bool = True) -> onnx.ModelProto:
    """The ONNX model of `graph`. Weights: `encode_weight` (compact: the smallest exact encoding; int_weights:
    integer storage on `quant`'s or an inferred grid)."""
    if not isinstance(graph, nir.NIRGraph):
        raise SbcError(f"expected a NIR graph, got {type(graph).__name__}")
    b = _Builder(graph, cfg, quant, int_weights, compact)
    g = b.build()
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET),
                                                helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                              functions=build_functions(), producer_name="sbc-onnx", ir_version=IR_VERSION)
    model.doc_string = ("Spiking neural network, one Scan over time; neuron steps are functions in domain "
                        f"'{DOMAIN}'. Convention: {CONVENTION} (sbc-onnx docs/onnx_convention.md).")
    structure = {EDGE_ORDER_KEY: [list(e) for e in b.fg.edges]}
    nested = subgraph_structure(graph)
    if nested:  # the Scan runs the flattened graph; this lets the importer restore the nesting
        structure[SUBGRAPHS_KEY] = nested
    set_metadata(model, {**settings_props(cfg), **metadata_props(graph.metadata, metadata, structure)})
    return model


def settings_props(cfg: SimConfig) -> dict[str, str]:
    """The metadata_props the Scan is built for: the convention, the compute dtype and cfg's settings.
    They are written here only: a file's settings are the ones baked into its time step."""
    return {KEY_CONVENTION: CONVENTION, KEY_DTYPE: cfg.dtype, **{k: str(v) for k, v in cfg.to_metadata().items()}}


def metadata_props(*metas: Mapping[str, Any] | None) -> dict[str, str]:
    """Graph and user metadata as metadata_props (later mappings win): strings as they are, other values as
    JSON under `nir.json.<key>`. The keys of `settings_props` are skipped (they come from the cfg)."""
    props: dict[str, str] = {}
    for k, v in {k: v for meta in metas for k, v in (meta or {}).items()}.items():
        if k in META_KEYS or k in (KEY_CONVENTION, KEY_DTYPE) or v is None:
            continue
        if isinstance(v, str):
            props[k] = v
        else:
            props[KEY_JSON + k] = encode(v)
    return props


def subgraph_structure(graph, prefix: str = "") -> dict[str, Any]:
    """{dotted path of every nested NIRGraph node: its own edges and metadata}, plus "" for the top level
    when there is any nesting (empty dict otherwise)."""
    out: dict[str, Any] = {}
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            path = prefix + name
            out[path] = {"edges": [list(e) for e in node.edges], "metadata": node.metadata or {}}
            out.update(subgraph_structure(node, path + "."))
    if out and not prefix:
        out[""] = {"edges": [list(e) for e in graph.edges], "metadata": {}}
    return out


def set_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Add or replace metadata_props entries (existing keys keep their position)."""
    index = {p.key: p for p in model.metadata_props}
    for k, v in meta.items():
        if k in index:
            index[k].value = str(v)
        else:
            e = model.metadata_props.add()
            e.key, e.value = k, str(v)
