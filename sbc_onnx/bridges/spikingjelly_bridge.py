"""SpikingJelly (`spikingjelly.activation_based`) -> NIR graph, and compressed weights back into the module.

Export (`export_spikingjelly`) traces the module with torch.fx, SpikingJelly's neurons and layers (and
torch.nn's) as leaf modules, so the dataflow of any forward pass built from them is found, SEW blocks
included; every module or operation the trace meets that is not in the table below is refused by name.
The module may be single-step or multi-step (`functional.set_step_mode`): the per-step dynamics are the
same, only the leading axes differ ((B, ...) or (T, B, ...)); one network mixing both is refused.

Discrete-time equivalence (one SpikingJelly step = one walker step, dt = 1, forward Euler: k = dt/tau):
  IFNode                  v += x                               <->  IF   r = 1
  LIFNode  decay_input    v += (x - (v - v_reset)) / tau       <->  LIF  tau, r = 1
  LIFNode  no decay_input v += -(v - v_reset) / tau + x        <->  LIF  tau, r = tau
  ParametricLIFNode       as LIFNode with 1/tau = sigmoid(w)   <->  LIF  tau = 1 / sigmoid(w) (float32, as SJ)
  v_reset = None (soft reset: v -= v_threshold, leak towards 0)  <->  metadata reset "subtract"
  SpikingJelly starts v at v_reset, NIR simulators at 0: the membrane is exported shifted by -v_reset, so
  v_leak = v_reset = 0 and the threshold is v_threshold - v_reset (v_reset = 0 or None: no shift).
  Conv2d / Linear (layer. or nn.), BatchNorm2d after a Conv2d and BatchNorm1d after a Linear folded in
  (eval-mode running statistics: W' = W s, b' = (b - mean) s + beta, s = gamma / sqrt(var + eps); a layer
  without bias gets the folded one), Flatten / torch.flatten / view / reshape that flatten, AvgPool2d,
  AdaptiveAvgPool2d whose output size divides the input (an AvgPool2d), MaxPool2d (`sbc_onnx.nodes.MaxPool2d`),
  Identity and Dropout (eval: identity), and `x + y` (the SEW connect function ADD): NIR sums the edges into
  a node, so a sum is no node of its own; its consumers get one edge from each addend.
SEW's IAND (x * (1 - y)) and AND (x * y) are not linear: refused, naming the block.

The fire test: SpikingJelly spikes when v >= v_threshold, the project's simulator (like NIR) when
v > v_threshold. The exported threshold is the float32 number just below SpikingJelly's, so that in float32
(SpikingJelly's and the simulator's default) `v > threshold'` is exactly `v >= threshold`. With soft reset
the simulator subtracts that threshold: one float32 ulp less than SpikingJelly (6e-8 at threshold 1), which
changes a spike only when v lands within that distance of the threshold.

Import back (`load_folded`, used by `sbc_onnx.torch.load_weights`): the compressed weight of a folded
layer is the folded one, so it goes into the Conv2d / Linear as is and the BatchNorm becomes the identity
plus the folded bias (weight 1, bias b', running_mean 0, running_var 1 - eps, the layer's own bias 0), with
a logging warning naming the BatchNorm layers. The result is the same class with the same state_dict keys.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import operator
from dataclasses import dataclass
from typing import Any

import nir
import numpy as np

from ..nodes import MaxPool2d
from ._common import full, sim_metadata, to_numpy

try:
    import torch
    import torch.fx
    from spikingjelly.activation_based import base, functional, layer, neuron

    from ._torch_modules import pool_node
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("sbc_onnx.bridges.spikingjelly_bridge needs torch==2.13.0 and spikingjelly 0.0.0.0.14 "
                      f"(pip install --no-deps spikingjelly==0.0.0.0.14; see sbc_onnx/bridges/README.md): {e}") from e

__all__ = ["SJ_DT", "dense_weights", "export_spikingjelly", "fire_threshold", "load_folded", "run_spikingjelly",
           "step_mode", "weight_parameters"]

log = logging.getLogger("sbc_onnx")

SJ_DT = 1.0  # one SpikingJelly step: tau is counted in steps
_NEURONS = (neuron.IFNode, neuron.LIFNode, neuron.ParametricLIFNode)
_BN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
_IDENTITY = (torch.nn.Identity, torch.nn.Dropout, torch.nn.Dropout2d)
_SJ_IDENTITY = (layer.Dropout,)  # Dropout2d is a subclass; both are the identity in eval mode
_ADD = (operator.add, torch.add, operator.iadd)
_FLATTEN_METHODS = ("flatten", "view", "reshape")
_NOOP_METHODS = ("contiguous",)
_TRACED_THROUGH = ("spikingjelly.activation_based.model", "spikingjelly.activation_based.examples")  # networks


# ----------------------------------------------------------------------------------------------------------
# tracing
# ----------------------------------------------------------------------------------------------------------
class _Tracer(torch.fx.Tracer):
    """SpikingJelly's neurons and layers (and torch.nn's modules) are leaves; SpikingJelly's networks
    (model/: sew_resnet's blocks, examples/) and the user's own modules are traced through."""

    def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
        mod = type(m).__module__
        if mod.startswith("spikingjelly.") and not mod.startswith(_TRACED_THROUGH):
            return True
        return super().is_leaf_module(m, qualname)


def step_mode(net: torch.nn.Module) -> str:
    """'s' or 'm': the step mode of the network's SpikingJelly modules (one for all; 's' if none)."""
    modes = {"m" if isinstance(m, base.MultiStepModule) else "s" if isinstance(m, base.SingleModule) else m.step_mode
             for m in net.modules() if isinstance(m, base.StepModule)}
    if len(modes) > 1:
        raise ValueError(f"the network mixes single-step and multi-step modules ({sorted(modes)}): set one mode "
                         "with spikingjelly.activation_based.functional.set_step_mode(net, 'm')")
    return modes.pop() if modes else "s"


def _check_connect_functions(net: torch.nn.Module) -> None:
    for name, m in net.named_modules():
        cnf = getattr(m, "cnf", None)
        if isinstance(cnf, str) and cnf != "ADD":
            raise ValueError(f"{name or type(m).__name__} joins its branches with {cnf}, which is not linear: a "
                             "graph sums the edges into a node and has no spike-wise AND; only SEW's ADD is exported")


@dataclass(frozen=True)
class _Traced:
    """The module and its fx graph (no GraphModule: generating and compiling its code costs seconds)."""

    net: torch.nn.Module
    graph: torch.fx.Graph

    def get_submodule(self, path: str) -> torch.nn.Module:
        return self.net.get_submodule(path)


def _trace(net: torch.nn.Module) -> _Traced:
    _check_connect_functions(net)
    try:
        graph = _Tracer().trace(net)
    except Exception as e:  # torch.fx raises TraceError, TypeError, ... on data-dependent Python control flow
        raise ValueError(f"torch.fx cannot trace {type(net).__name__}'s forward pass: {e}") from e
    return _Traced(net, graph)


class _Shapes(torch.fx.Interpreter):
    """Runs the traced module once, recording each tensor's shape in its fx node (meta "shape")."""

    def __init__(self, traced: _Traced):
        super().__init__(traced.net, graph=traced.graph)

    def shapes(self, x: torch.Tensor, mode: str) -> None:
        self.current: torch.fx.Node | None = None
        try:
            with torch.no_grad():
                self.run(x)
        except Exception as e:  # noqa: BLE001 - whatever a module raises on the sample, said in one line
            n = self.current
            what = "the forward pass" if n is None else (
                f"module {n.target!r}" if n.op == "call_module" else f"operation {n.name!r}")
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{what} fails on the sample in step mode {mode!r}: {first}") from None

    def run_node(self, n: torch.fx.Node) -> Any:
        self.current = n
        y = super().run_node(n)
        if isinstance(y, torch.Tensor):
            n.meta["shape"] = tuple(int(s) for s in y.shape)
        return y


def _bn_pairs(gm: _Traced) -> dict[str, str]:
    """BatchNorm module path -> the path of the Conv2d (BatchNorm2d) or Linear (BatchNorm1d) it is folded
    into: the layer's only use is that BatchNorm, and the layer is used once (in a SeqToANNContainer: the
    module just before it)."""
    pairs: dict[str, str] = {}
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        m = gm.get_submodule(n.target)
        if isinstance(m, layer.SeqToANNContainer):
            children = list(m)
            for i, bn in enumerate(children):
                if isinstance(bn, _BN):
                    _check_fold(bn, f"{n.target}.{i}", children[i - 1] if i else None)
                    pairs[f"{n.target}.{i}"] = f"{n.target}.{i - 1}"
        elif isinstance(m, _BN):
            src = n.args[0] if n.args else None
            ok = (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                  and calls[src.target] == 1 and calls[n.target] == 1)
            _check_fold(m, n.target, gm.get_submodule(src.target) if ok else None)
            pairs[n.target] = src.target
    return pairs


def _check_fold(bn: torch.nn.Module, path: str, before: torch.nn.Module | None) -> None:
    layer_type = torch.nn.Conv2d if isinstance(bn, torch.nn.BatchNorm2d) else torch.nn.Linear
    if not isinstance(before, layer_type):
        why = (f"{type(bn).__name__} {path!r} does not directly follow a {layer_type.__name__} used only by it: it "
               "cannot be folded, and a graph has no batch normalization node")
        raise ValueError(why)  # noqa: TRY004 - export_module turns ValueErrors into one SbcError line


def _bn_scale(bn: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) with BN(y) = s*y + t in eval mode, float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    var, mean = to_numpy(bn.running_var).astype(np.float64), to_numpy(bn.running_mean).astype(np.float64)
    gamma = to_numpy(bn.weight).astype(np.float64) if bn.weight is not None else np.ones_like(var)
    beta = to_numpy(bn.bias).astype(np.float64) if bn.bias is not None else np.zeros_like(var)
    s = gamma / np.sqrt(var + float(bn.eps))
    return s, beta - mean * s


def _folded(layer: torch.nn.Module, bn: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """The layer's weight and bias with the BatchNorm folded in (float32)."""
    s, t = _bn_scale(bn)
    w = to_numpy(layer.weight).astype(np.float64)
    b = to_numpy(layer.bias).astype(np.float64) if layer.bias is not None else np.zeros(w.shape[0])
    w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    return w.astype(np.float32), (b * s + t).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# nodes
# ----------------------------------------------------------------------------------------------------------
def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def fire_threshold(v_threshold: float | np.float32) -> float:
    """The threshold the walker compares with `>` so that float32 `v > it` is SpikingJelly's `v >= thr`."""
    return float(np.nextafter(np.float32(v_threshold), np.float32(-np.inf)))


def _neuron_node(m: torch.nn.Module, path: str, shape: tuple[int, ...]) -> nir.NIRNode:
    if type(m) not in _NEURONS:
        raise ValueError(f"{path!r}: SpikingJelly neuron {type(m).__name__} has no NIR equivalent in this bridge "
                         f"(supported: {', '.join(c.__name__ for c in _NEURONS)})")
    if not getattr(m.surrogate_function, "spiking", True):
        raise ValueError(f"{path!r}: surrogate_function with spiking=False outputs no spikes")
    # SpikingJelly starts v at v_reset (hard reset) and NIR simulators at 0: the membrane is exported shifted
    # by -v_reset (rest, reset and leak target 0; the threshold v_threshold - v_reset)
    shift = np.float32(0.0 if m.v_reset is None else m.v_reset)
    thr = full(fire_threshold(np.float32(m.v_threshold) - shift), shape)
    zeros = np.zeros(shape)
    if isinstance(m, neuron.IFNode):
        return nir.IF(r=np.ones(shape), v_threshold=thr, v_reset=zeros)
    if isinstance(m, neuron.ParametricLIFNode):
        k = float(m.w.detach().float().sigmoid())  # SpikingJelly's 1/tau, computed in float32 as it does
        tau = 1.0 / k
    else:
        tau = float(m.tau)
    tau = full(tau, shape)
    r = np.ones(shape) if m.decay_input else tau.copy()
    return nir.LIF(tau=tau, r=r, v_leak=zeros, v_threshold=thr, v_reset=zeros.copy())


def _reset_mode(net: torch.nn.Module) -> str:
    soft = {m.v_reset is None for m in net.modules() if isinstance(m, _NEURONS)}
    if len(soft) > 1:
        raise ValueError("the network mixes hard reset (v_reset set) and soft reset (v_reset=None); the graph "
                         "metadata holds one reset mode for the whole graph")
    return "subtract" if soft == {True} else "to_v_reset"


def _flatten_node(what: str, shape_in: tuple[int, ...], shape_out: tuple[int, ...]) -> nir.Flatten:
    for start in range(len(shape_in)):
        for end in range(start + 1, len(shape_in)):
            merged = shape_in[:start] + (math.prod(shape_in[start:end + 1]),) + shape_in[end + 1:]
            if merged == shape_out:
                return nir.Flatten(input_type={"input": np.array(shape_in)}, start_dim=start, end_dim=end)
    raise ValueError(f"{what} reshapes {shape_in} to {shape_out} per sample, which is not a flatten")


def _adaptive_avg(m: torch.nn.AdaptiveAvgPool2d, path: str, shape_in: tuple[int, ...]) -> nir.AvgPool2d:
    h, w = shape_in[-2:]
    size = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size, m.output_size)
    oh, ow = (h if size[0] is None else int(size[0])), (w if size[1] is None else int(size[1]))
    if h % oh or w % ow:
        raise ValueError(f"{path!r}: AdaptiveAvgPool2d from {h}x{w} to {oh}x{ow} is not one average pooling (the "
                         "output size must divide the input size)")
    k = np.array([h // oh, w // ow])
    return nir.AvgPool2d(kernel_size=k, stride=k.copy(), padding=np.array([0, 0]))


def _max_pool(m: torch.nn.MaxPool2d, path: str) -> MaxPool2d:
    if _pair(m.dilation) != (1, 1) or m.ceil_mode or m.return_indices:
        raise ValueError(f"{path!r}: MaxPool2d with dilation, ceil_mode or return_indices is not supported")
    stride = m.kernel_size if m.stride is None else m.stride
    return MaxPool2d(kernel_size=np.array(_pair(m.kernel_size)), stride=np.array(_pair(stride)),
                     padding=np.array(_pair(m.padding)))


def _layer_node(m: torch.nn.Module, path: str, shape_in: tuple[int, ...], bn: torch.nn.Module | None):
    """Conv2d -> nir.Conv2d, Linear -> nir.Affine / nir.Linear, with `bn` folded in."""
    if bn is not None:
        w, b = _folded(m, bn)
    else:
        w = to_numpy(m.weight).astype(np.float32)
        b = None if m.bias is None else to_numpy(m.bias).astype(np.float32)
    if isinstance(m, torch.nn.Linear):
        return nir.Linear(weight=w) if b is None else nir.Affine(weight=w, bias=b)
    if m.padding_mode != "zeros":
        raise ValueError(f"{path!r}: Conv2d padding_mode={m.padding_mode!r} has no NIR equivalent (only zeros)")
    padding = m.padding if isinstance(m.padding, str) else _pair(m.padding)
    return nir.Conv2d(input_shape=tuple(shape_in[-2:]), weight=w, stride=_pair(m.stride), padding=padding,
                      dilation=_pair(m.dilation), groups=int(m.groups),
                      bias=np.zeros(w.shape[0], np.float32) if b is None else b)


# ----------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------
class _Builder:
    """Walks the fx graph; each fx value is the list of NIR nodes whose outputs it sums."""

    def __init__(self, gm: _Traced, lead: int):
        self.gm, self.lead = gm, lead
        self.bn_pairs = _bn_pairs(gm)
        self.folded_into = {conv: bn for bn, conv in self.bn_pairs.items()}
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.env: dict[torch.fx.Node, list[str]] = {}

    def shape(self, n: torch.fx.Node) -> tuple[int, ...]:
        if "shape" not in n.meta:
            raise ValueError(f"{n.name!r} does not produce one tensor")
        return n.meta["shape"]

    def sample_shape(self, n: torch.fx.Node) -> tuple[int, ...]:
        return self.shape(n)[self.lead:]

    def sources(self, n: torch.fx.Node, user: str) -> list[str]:
        if not isinstance(n, torch.fx.Node) or n not in self.env:
            raise ValueError(f"{user} takes a non-tensor argument {n!r}: not supported")
        return self.env[n]

    def add(self, fxn: torch.fx.Node, name: str, node: nir.NIRNode, srcs: list[str]) -> None:
        self.env[fxn] = self.put(name, node, srcs)

    def check_lead(self, fxn: torch.fx.Node, arg: torch.fx.Node, what: str) -> None:
        if self.shape(fxn)[:self.lead] != self.shape(arg)[:self.lead]:
            axes = "time and batch axes" if self.lead == 2 else "batch axis"
            raise ValueError(f"{what} changes the {axes} ({self.shape(arg)} -> {self.shape(fxn)})")

    def reshape(self, fxn: torch.fx.Node, arg: torch.fx.Node, what: str) -> None:
        self.check_lead(fxn, arg, what)
        srcs = self.sources(arg, what)
        s_in, s_out = self.sample_shape(arg), self.sample_shape(fxn)
        if s_in == s_out:
            self.env[fxn] = srcs
        else:
            self.add(fxn, fxn.name, _flatten_node(what, s_in, s_out), srcs)

    def put(self, name: str, node: nir.NIRNode, srcs: list[str]) -> list[str]:
        if name in self.nodes:
            raise ValueError(f"module {name!r} is called more than once in the forward pass: a graph node (and a "
                             "neuron's state) belongs to one call")
        self.nodes[name] = node
        self.edges.extend((s, name) for s in srcs)
        return [name]

    def module(self, fxn: torch.fx.Node) -> None:
        path, m = str(fxn.target), self.gm.get_submodule(fxn.target)
        if len(fxn.args) != 1 or fxn.kwargs:
            raise ValueError(f"module {path!r} is called with {len(fxn.args)} arguments: only one tensor is supported")
        arg = fxn.args[0]
        srcs = self.sources(arg, repr(path))
        if isinstance(m, torch.nn.Flatten):
            return self.reshape(fxn, arg, repr(path))
        self.env[fxn] = self.emit(m, path, srcs, self.sample_shape(arg), self.sample_shape(fxn))
        return None

    def emit(self, m: torch.nn.Module, path: str, srcs: list[str], shape_in: tuple[int, ...],
             shape_out: tuple[int, ...]) -> list[str]:
        """The NIR node for module `m` fed by `srcs`; returns what its output sums (itself, or `srcs`)."""
        if isinstance(m, _BN + _IDENTITY + _SJ_IDENTITY):
            return srcs  # a BatchNorm is folded into the layer before it (_bn_pairs); the others are identities
        if isinstance(m, layer.SeqToANNContainer):
            return self.container(m, path, srcs, shape_in)
        if isinstance(m, neuron.BaseNode):
            node = _neuron_node(m, path, shape_out)
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            bn = self.folded_into.get(path)
            node = _layer_node(m, path, shape_in, None if bn is None else self.gm.get_submodule(bn))
        elif isinstance(m, torch.nn.Flatten):  # inside a container: the shapes say what it does
            if shape_in == shape_out:
                return srcs
            node = _flatten_node(repr(path), shape_in, shape_out)
        elif isinstance(m, torch.nn.AvgPool2d):
            node = pool_node(m)
        elif isinstance(m, torch.nn.AdaptiveAvgPool2d):
            node = _adaptive_avg(m, path, shape_in)
        elif isinstance(m, torch.nn.MaxPool2d):
            node = _max_pool(m, path)
            # nir's type inference knows no MaxPool2d: its types come from the traced shapes
            node.input_type, node.output_type = {"input": np.array(shape_in)}, {"output": np.array(shape_out)}
        else:
            why = f"module {path!r} ({type(m).__module__}.{type(m).__name__}) has no NIR equivalent in this bridge"
            raise ValueError(why)  # noqa: TRY004
        return self.put(path, node, srcs)

    def container(self, m: torch.nn.Sequential, path: str, srcs: list[str], shape_in: tuple[int, ...]) -> list[str]:
        """SeqToANNContainer: its stateless modules applied to every step (time folded into the batch)."""
        x = torch.zeros((2,) + shape_in, dtype=next((p.dtype for p in m.parameters()), torch.float32))
        for i, child in enumerate(m):
            name = f"{path}.{i}"
            if isinstance(child, base.MemoryModule):
                why = (f"{name!r}: {type(child).__name__} inside a SeqToANNContainer would see time as batch: put "
                       "stateful modules outside the container")
                raise ValueError(why)  # noqa: TRY004
            with torch.no_grad():
                y = child(x)
            if not isinstance(y, torch.Tensor) or y.shape[0] != 2:
                raise ValueError(f"{name!r} ({type(child).__name__}) does not keep the batch axis")
            srcs = self.emit(child, name, srcs, tuple(x.shape[1:]), tuple(y.shape[1:]))
            x = y
        return srcs

    def function(self, fxn: torch.fx.Node) -> None:
        fn, what = fxn.target, f"{fxn.name!r} ({getattr(fxn.target, '__name__', fxn.target)})"
        if fxn.op == "call_method":
            if fn in _FLATTEN_METHODS:
                return self.reshape(fxn, fxn.args[0], what)
            if fn in _NOOP_METHODS:
                self.env[fxn] = self.sources(fxn.args[0], what)
                return None
        elif fn in _ADD and len(fxn.args) == 2 and not fxn.kwargs:
            a, b = fxn.args
            if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
                raise ValueError(f"{what} adds a constant to a tensor: not a sum of layer outputs")
            self.check_lead(fxn, a, what)
            if self.sample_shape(a) != self.sample_shape(b):
                raise ValueError(f"{what} adds tensors of shapes {self.sample_shape(a)} and {self.sample_shape(b)} "
                                 "(broadcasting is not a sum of edges)")
            srcs = self.sources(a, what) + self.sources(b, what)
            if len(set(srcs)) != len(srcs):
                raise ValueError(f"{what} adds the output of {sorted({s for s in srcs if srcs.count(s) > 1})} to "
                                 "itself: a graph cannot have the same edge twice")
            self.env[fxn] = srcs
            return None
        elif fn is torch.flatten:
            return self.reshape(fxn, fxn.args[0], what)
        if fn in (operator.mul, torch.mul, operator.sub, torch.sub, operator.truediv):
            raise ValueError(f"{what} combines tensors by {getattr(fn, '__name__', fn)}, which is not linear in the "
                             "spikes (or not supported): only sums of layer outputs are exported")
        raise ValueError(f"operation {what} has no NIR equivalent in this bridge")

    def build(self) -> nir.NIRGraph:
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if "input" in self.nodes:
                    raise ValueError("the forward pass takes more than one input: only one is supported")
                self.add(n, "input", nir.Input(input_type={"input": np.array(self.sample_shape(n))}), [])
            elif n.op == "call_module":
                self.module(n)
            elif n.op in ("call_function", "call_method"):
                if "shape" not in n.meta:
                    continue  # sizes and other numbers (x.size(0) for a view): a tensor consuming them is checked
                self.function(n)
            elif n.op == "get_attr":
                raise ValueError(f"the forward pass reads the tensor attribute {n.target!r} directly: not supported")
            elif n.op == "output":
                out = n.args[0]
                if not isinstance(out, torch.fx.Node):
                    raise ValueError("the forward pass must return one tensor")
                self.add(n, "output", nir.Output(output_type={"output": np.array(self.sample_shape(out))}),
                         self.sources(out, "the output"))
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges)


def _shape_sample(sample: torch.Tensor, mode: str) -> torch.Tensor:
    """The first 2 samples of `sample` (B, *input_shape) (one repeated if B = 1), as one step (1, 2, ...) in
    multi-step mode: a reshape that folds the batch or time axis into others changes the leading sizes
    ((2,) or (1, 2)) and is caught."""
    x = sample[:2] if sample.shape[0] >= 2 else torch.cat([sample, sample])
    return x[None] if mode == "m" else x


def export_spikingjelly(net: torch.nn.Module, sample: Any) -> nir.NIRGraph:
    """SpikingJelly module -> NIR graph (dt = 1 step, Euler, the network's reset mode in the metadata).

    sample: one input step (B, *input_shape), whatever the step mode; the batch axis is not in the graph."""
    sample = torch.as_tensor(sample)
    if sample.ndim < 2:
        raise ValueError(f"sample must have a batch dimension, shape (B, *input_shape); got {tuple(sample.shape)}")
    mode = step_mode(net)
    reset = _reset_mode(net)
    gm = _trace(net)
    dtype = next((p.dtype for p in net.parameters()), torch.float32)
    was_training = net.training
    net.eval()
    try:
        functional.reset_net(net)
        _Shapes(gm).shapes(_shape_sample(sample.to(dtype), mode), mode)
        graph = _Builder(gm, 2 if mode == "m" else 1).build()
    finally:
        functional.reset_net(net)
        net.train(was_training)
    graph.infer_types()
    graph.metadata = sim_metadata(SJ_DT, reset, source=f"spikingjelly {_version()}", spikingjelly_step_mode=mode,
                                  spikingjelly_fire="v >= v_threshold")
    return graph


def _version() -> str:
    try:
        return importlib.metadata.version("spikingjelly")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout on the path
        return "(version unknown)"


def run_spikingjelly(net: torch.nn.Module, x: Any) -> np.ndarray:
    """SpikingJelly's own forward pass over x (T, B, *input_shape) from rest (functional.reset_net before
    and after), in eval mode: one call in multi-step mode, one per step in single-step mode; (T, B, *out)."""
    dtype = next((p.dtype for p in net.parameters()), torch.float32)
    x = (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).to(dtype)
    mode = step_mode(net)
    was_training = net.training
    net.eval()
    functional.reset_net(net)
    try:
        with torch.no_grad():
            y = net(x) if mode == "m" else torch.stack([net(x[t]) for t in range(x.shape[0])])
    finally:
        functional.reset_net(net)
        net.train(was_training)
    return y.detach().cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# weights back
# ----------------------------------------------------------------------------------------------------------
def weight_parameters(net: torch.nn.Module) -> dict[str, str]:
    """Every weight node is named after its module (node `<path>` is parameter `<path>.weight`)."""
    return {}


def dense_weights(net: torch.nn.Module) -> dict[str, np.ndarray]:
    """Parameter name -> the weight the exported graph holds where it is not the parameter itself: the
    layers a BatchNorm is folded into. ValueError if a folded BatchNorm could not carry the bias back."""
    gm = _trace(net)
    pairs = _bn_pairs(gm)
    _check_carriers(net, pairs)
    return {f"{layer}.weight": _folded(gm.get_submodule(layer), gm.get_submodule(bn))[0]
            for bn, layer in pairs.items()}


def _check_carriers(net: torch.nn.Module, pairs: dict[str, str]) -> None:
    for bn_path in pairs:
        if net.get_submodule(bn_path).bias is None:
            raise ValueError(f"BatchNorm {bn_path!r} has no bias (affine=False) to carry the folded bias back into "
                             "the module")


def _unit_variance(eps: float) -> float:
    """A float32 running_var with float32(var + eps) == 1: 1/sqrt(var + eps) is then exactly 1."""
    one, e = np.float32(1.0), np.float32(eps)
    var = np.float32(one - e)
    for _ in range(8):
        if var + e == one:
            break
        var = np.nextafter(var, np.float32(np.inf) if var + e < one else np.float32(-np.inf))
    return float(var)


def load_folded(net: torch.nn.Module, graph: nir.NIRGraph, names: dict[str, str]) -> None:
    """After the weights are copied: each BatchNorm folded into a layer becomes the identity carrying the
    folded bias (the graph node's bias), and the layer's own bias is zeroed. Logs a warning naming them."""
    pairs = _bn_pairs(_trace(net))
    _check_carriers(net, pairs)
    done = []
    with torch.no_grad():
        for bn_path, layer_path in pairs.items():
            if layer_path not in names or layer_path not in graph.nodes:
                continue
            bn, layer = net.get_submodule(bn_path), net.get_submodule(layer_path)
            bias = torch.as_tensor(np.asarray(graph.nodes[layer_path].bias, dtype=np.float32))
            if layer.bias is not None:
                layer.bias.zero_()
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias.to(bn.bias.dtype))
            bn.running_mean.zero_()
            bn.running_var.fill_(_unit_variance(bn.eps))
            done.append(bn_path)
    if done:
        log.warning("BatchNorm stays folded: %d layer(s) (%s) hold the folded, compressed weight, and their "
                    "BatchNorm is now the identity plus the folded bias (weight 1, running_mean 0, running_var "
                    "1 - eps)", len(done), ", ".join(done[:4]) + (", ..." if len(done) > 4 else ""))
