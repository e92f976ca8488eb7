"""The model-local functions of the convention: one FunctionProto per NIR primitive (domain `snn.nir`).

Each function is one time step of one NIR node. Formulas mirror `sim/ops.py` operation by operation
(same operands, same association order) so that onnxruntime and the NumPy walker round identically.
Per-node constants (keep = 1-k, leak_in = k*v_leak, gain = k*r, ...) are computed once outside the Scan.
"""

from __future__ import annotations

from onnx import AttributeProto, FunctionProto, TensorProto, helper

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


def _membrane(leaky: bool, drive: str, out: str) -> list:
    """v1 = keep*v + leak_in + gain*drive (leaky) or v + gain*drive, into tensor `out`."""
    n = helper.make_node
    if leaky:
        return [n("Mul", ["keep", "v"], ["kv"]), n("Add", ["kv", "leak_in"], ["kvl"]),
                n("Mul", ["gain", drive], ["gx"]), n("Add", ["kvl", "gx"], [out])]
    return [n("Mul", ["gain", drive], ["gx"]), n("Add", ["v", "gx"], [out])]


def _fire() -> list:
    """z = (v1 > thr); v_next = where(z, v_reset, v1)  or (attribute subtract=1)  v1 - z*thr."""
    n = helper.make_node
    return [n("Greater", ["v1", "v_threshold"], ["s"]), n("CastLike", ["s", "v1"], ["z"]),
            n("Where", ["s", "v_reset", "v1"], ["v_to"]), n("Mul", ["z", "v_threshold"], ["zt"]),
            n("Sub", ["v1", "zt"], ["v_sub"]), *_flag("subtract", "sub"),
            n("Where", ["sub", "v_sub", "v_to"], ["v_next"])]


def _neuron(kind: str) -> FunctionProto:
    n = helper.make_node
    leaky = kind not in ("IF", "I")
    cuba = kind.startswith("Cuba")
    spiking = kind in ("LIF", "IF", "CubaLIF")
    ins, nodes, attrs = ["x"], [], []
    if cuba:
        ins += ["i", "v", "syn_keep", "syn_gain"]
        nodes += [n("Mul", ["syn_keep", "i"], ["ki"]), n("Mul", ["syn_gain", "x"], ["gxs"]),
                  n("Add", ["ki", "gxs"], ["i_next"]), *_flag("previous_current", "prev"),
                  n("Where", ["prev", "i", "i_next"], ["drive"])]
        attrs.append("previous_current")
    else:
        ins += ["v"]
    ins += ["keep", "leak_in", "gain"] if leaky else ["gain"]
    nodes += _membrane(leaky, "drive" if cuba else "x", "v1")
    states = ["i_next", "v_next"] if cuba else ["v_next"]
    if spiking:
        ins += ["v_threshold", "v_reset"]
        nodes += _fire()
        outs = ["z"] + states
        attrs.append("subtract")
    else:
        nodes += [n("Identity", ["v1"], ["v_next"]), n("Identity", ["v1"], ["y"])]
        outs = ["y"] + states
    doc = {"LIF": "leaky integrate-and-fire", "LI": "leaky integrator (outputs v)",
           "IF": "integrate-and-fire (v += r*I per step)", "I": "integrator (outputs v)",
           "CubaLIF": "current-based LIF", "CubaLI": "current-based leaky integrator (outputs v)"}[kind]
    return _fn(kind, ins, outs, nodes, attrs, doc)


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
    fs += [_neuron(k) for k in ("LIF", "LI", "IF", "I", "CubaLIF", "CubaLI")]
    return fs
