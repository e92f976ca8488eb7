"""The model-local functions of the convention: one FunctionProto per NIR primitive (domain `snn.nir`).

Each function is one time step of one NIR node; neuron functions are generated from the catalogue's
stages (sbc_onnx/primitives.py). Formulas mirror `sim/ops.py` operation by operation
(same operands, same association order) so that onnxruntime and the NumPy walker round identically.
Per-node constants (keep = 1-k, leak_in = k*v_leak, gain = k*r, ...) are computed once outside the Scan.
"""

from __future__ import annotations

from onnx import AttributeProto, FunctionProto, TensorProto, helper

from ..primitives import NEURON, Primitive, Stage, kinds, primitive
from .onnx_common import DOMAIN, OPSET


def _ref(node, name: str, ref: str, kind: int):
    a = AttributeProto()
    a.name, a.ref_attr_name, a.type = name, ref, kind
    node.attribute.append(a)
    return node


def _flag(attr: str, out: str) -> list:
    """Boolean tensor `out` from an int attribute of the function (0/1)."""
    c = _ref(helper.make_node("Constant", [], [out + "_i"]), "value_int", attr, AttributeProto.INT)
    return [c, helper.make_node("Cast", [out + "_i"], [out], to=TensorProto.BOOL)]


def _fn(name, inputs, outputs, nodes, attributes=(), doc="") -> FunctionProto:
    f = helper.make_function(DOMAIN, name, list(inputs), list(outputs), nodes,
                             [helper.make_opsetid("", OPSET)], attributes=list(attributes))
    f.doc_string = doc
    return f


def _fire() -> list:
    """z = (v1 > thr); v_next = where(z, v_reset, v1)  or (attribute subtract=1)  v1 - z*thr."""
    n = helper.make_node
    return [n("Greater", ["v1", "v_threshold"], ["s"]), n("CastLike", ["s", "v1"], ["z"]),
            n("Where", ["s", "v_reset", "v1"], ["v_to"]), n("Mul", ["z", "v_threshold"], ["zt"]),
            n("Sub", ["v1", "zt"], ["v_sub"]), *_flag("subtract", "sub"),
            n("Where", ["sub", "v_sub", "v_to"], ["v_next"])]


def stage_inputs(stage: Stage) -> list[str]:
    """The derived constants one neuron stage takes (see `_stage`), in function-input order."""
    p = stage.prefix
    if stage.tau is None:
        return [p + "gain"]
    return [p + "keep"] + ([p + "leak_in"] if stage.leak else []) + [p + "gain"]


def _stage(stage: Stage, drive: str, out: str) -> list:
    """out = keep*s + leak_in + gain*drive (leaky) or s + gain*drive (integrator): sim/ops.py's order."""
    n, p, s = helper.make_node, stage.prefix, stage.state
    gx = n("Mul", [p + "gain", drive], [f"{p}g{drive}"])
    if stage.tau is None:
        return [gx, n("Add", [s, gx.output[0]], [out])]
    nodes = [n("Mul", [p + "keep", s], [f"{p}k{s}"])]
    kept = nodes[-1].output[0]
    if stage.leak:
        nodes.append(n("Add", [kept, p + "leak_in"], [f"{p}k{s}l"]))
        kept = nodes[-1].output[0]
    return nodes + [gx, n("Add", [kept, gx.output[0]], [out])]


def _neuron(prim: Primitive) -> FunctionProto:
    """One step of a neuron primitive from its catalogue stages (inputs: x, states, per-stage constants,
    then v_threshold, v_reset if it spikes; outputs: y or spikes z, then the next states)."""
    n = helper.make_node
    stages = prim.stages
    ins = ["x"] + [s.state for s in stages] + [c for s in stages for c in stage_inputs(s)]
    nodes, attrs, drive = [], [], "x"
    for j, st in enumerate(stages[:-1]):  # earlier stages feed the next with their new or previous value
        nodes += _stage(st, drive, f"{st.state}_next")
        if j == 0:
            nodes += _flag("previous_current", "prev")
            attrs.append("previous_current")
        nodes.append(n("Where", ["prev", st.state, f"{st.state}_next"], [f"drive{j}"]))
        drive = f"drive{j}"
    nodes += _stage(stages[-1], drive, "v1")
    states = [f"{s.state}_next" for s in stages]
    if prim.spiking:
        ins += ["v_threshold", "v_reset"]
        nodes += _fire()
        outs = ["z"] + states
        attrs.append("subtract")
    else:
        nodes += [n("Identity", ["v1"], ["v_next"]), n("Identity", ["v1"], ["y"])]
        outs = ["y"] + states
    return _fn(prim.kind, ins, outs, nodes, attrs, prim.doc)


def build_functions() -> list[FunctionProto]:
    n = helper.make_node
    fs = [
        _fn("Input", ["x"], ["y"], [n("Identity", ["x"], ["y"])], doc="graph input (one time step)"),
        _fn("Output", ["x"], ["y"], [n("Identity", ["x"], ["y"])], doc="graph output (one time step)"),
        _fn("Linear", ["x", "weight_t"], ["y"], [n("MatMul", ["x", "weight_t"], ["y"])], doc="y = x W^T"),
        _fn("Affine", ["x", "weight_t", "bias"], ["y"],
            [n("MatMul", ["x", "weight_t"], ["xw"]), n("Add", ["xw", "bias"], ["y"])], doc="y = x W^T + b"),
        _fn("Scale", ["x", "scale"], ["y"], [n("Mul", ["x", "scale"], ["y"])], doc="y = x * s"),
        _fn("Threshold", ["x", "threshold"], ["y"],
            [n("Greater", ["x", "threshold"], ["s"]), n("CastLike", ["s", "x"], ["y"])], doc="y = (x > thr)"),
        _fn("Flatten", ["x", "shape"], ["y"], [n("Reshape", ["x", "shape"], ["y"])],
            doc="reshape to (batch, *output shape)"),
    ]
    for kind in ("Conv1d", "Conv2d"):
        conv = n("Conv", ["x", "weight"], ["c"])
        for a, t in (("strides", AttributeProto.INTS), ("pads", AttributeProto.INTS),
                     ("dilations", AttributeProto.INTS), ("group", AttributeProto.INT)):
            _ref(conv, a, a, t)
        fs.append(_fn(kind, ["x", "weight", "bias"], ["y"], [conv, n("Add", ["c", "bias"], ["y"])],
                      ["strides", "pads", "dilations", "group"], "cross-correlation (PyTorch), then + bias"))
    for kind in ("SumPool2d", "AvgPool2d"):
        conv = n("Conv", ["x", "ones"], ["sum" if kind == "AvgPool2d" else "y"])
        for a, t in (("strides", AttributeProto.INTS), ("pads", AttributeProto.INTS),
                     ("group", AttributeProto.INT)):
            _ref(conv, a, a, t)
        nodes = [conv] + ([n("Mul", ["sum", "norm"], ["y"])] if kind == "AvgPool2d" else [])
        fs.append(_fn(kind, ["x", "ones"] + (["norm"] if kind == "AvgPool2d" else []), ["y"], nodes,
                      ["strides", "pads", "group"], "window sum (depthwise conv with ones)"
                      + (" times 1/(kh*kw)" if kind == "AvgPool2d" else "")))
    # beyond NIR (sbc_onnx/nodes.py): the standard ONNX MaxPool (pads ignored in the max, floor mode), as PyTorch
    pool = n("MaxPool", ["x"], ["y"])
    for a in ("kernel_shape", "strides", "pads"):
        _ref(pool, a, a, AttributeProto.INTS)
    fs.append(_fn("MaxPool2d", ["x"], ["y"], [pool], ["kernel_shape", "strides", "pads"],
                  primitive("MaxPool2d").doc))
    # Delay: shift register buf (D, B, ...) with the newest input first; y = buf_next[steps] per element
    fs.append(_fn("Delay", ["x", "buf", "steps"], ["y", "buf_next"], [
        n("Constant", [], ["zero"], value_ints=[0]),
        n("Unsqueeze", ["x", "zero"], ["x1"]),
        n("Constant", [], ["minus1"], value_ints=[-1]),
        n("Slice", ["buf", "zero", "minus1", "zero"], ["older"]),
        n("Concat", ["x1", "older"], ["buf_next"], axis=0),
        n("Shape", ["x1"], ["shp"]),
        n("Expand", ["steps", "shp"], ["idx"]),
        n("GatherElements", ["buf_next", "idx"], ["g"], axis=0),
        n("Squeeze", ["g", "zero"], ["y"]),
    ], doc="y(t) = x(t - steps), steps = round(delay/dt) per element; zeros before t=0"))
    fs += [_neuron(primitive(k)) for k in kinds(NEURON)]
    return fs
