"""Norse <-> NIR with the known bugs of Norse 1.1.0's own converters fixed.

Norse's ``norse.torch.to_nir`` (utils/export_nir.py) has these problems, all fixed by `export_norse`:
- tau export bug (norse/norse#411, open): it writes ``tau = dt / tau_mem_inv`` (1e-5 s for the default
  10 ms at dt = 1 ms); the time constant is ``1 / tau_mem_inv`` (same for tau_syn);
- LIFCell -> CubaLIF without ``w_in``: Norse's current *jumps* by the input (``i += x``) while NIR's
  ``tau_syn dI/dt = -I + w_in x`` adds ``dt/tau_syn * w_in * x`` per Euler step, so ``w_in = tau_syn/dt``;
- v_reset is dropped (NIR then defaults to 0);
- parameters are left as torch tensors, 0-d for scalar parameters (nir 1.0.8 type checks fail and
  ``nir.write`` crashes with "Scalar datasets don't support chunk/filter options"): here numpy float64,
  broadcast to the layer shape;
- the Input node keeps the sample's batch dimension (``Input([1, 8]) -> Affine([8])`` type error): removed;
- a Linear without bias is exported as ``Affine`` with a zero bias: here as ``nir.Linear``.

Discrete-time equivalence (forward Euler with the graph's dt, sbc_onnx.sim.Walker semantics):
  LIFBoxCell  v += dt*tau_mem_inv*(v_leak - v + x)   <->  LIF   tau = 1/tau_mem_inv, r = 1
  LIFCell     i += x; v += dt/tau_mem*(v_leak - v + i); i -= dt/tau_syn*i
                                                     <->  CubaLIF tau_syn, tau_mem, r = 1, w_in = tau_syn/dt
                                                          (cuba_order "current_first")
  LIBoxCell                                          <->  LI    tau = 1/tau_mem_inv, r = 1
  IAFCell     v += x (no dt)                         <->  IF    r = 1
  LIFRecurrentCell  i += W_in x + W_rec z[t-1], then as LIFCell
                                                     <->  input -> w_in -> CubaLIF <-> w_rec (back edge)
  AvgPool2d, Conv2d, Linear, Flatten                 <->  the NIR nodes of the same name
Norse starts LIFBox/LI states at v = v_leak; NIR simulators start at 0 (equal when v_leak = 0, which
export warns about otherwise).

`import_norse` replaces ``norse.torch.from_nir``, which ignores ``r`` for LIF/LI/IF (with a warning),
ignores ``v_reset``, and drives CubaLIF's synapse with the *neuron's* v_leak. Here r and w_in are applied as
input gains, v_reset and the reset mode (metadata "reset": to_v_reset -> reset_value, subtract ->
reset_subtract) are kept, and dt comes from the argument or the graph metadata.
"""

from __future__ import annotations

import warnings
from typing import Any

import nir
import numpy as np

from ._common import full, graph_dt, graph_reset, out_shapes_by_hooks, sim_metadata, to_numpy

try:
    import nirtorch
    import norse
    import norse.torch.functional.reset as norse_reset
    import torch
    from norse.torch.functional.iaf import IAFParameters
    from norse.torch.functional.leaky_integrator_box import LIBoxParameters
    from norse.torch.functional.lif_box import LIFBoxParameters
    from norse.torch.module.iaf import IAFCell
    from norse.torch.module.leaky_integrator_box import LIBoxCell
    from norse.torch.module.lif import LIFCell, LIFRecurrentCell
    from norse.torch.module.lif_box import LIFBoxCell

    from ._torch_modules import avgpool2d, conv2d, flatten, linear, pool_node, scale
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sbc_onnx.bridges.norse_bridge needs torch==2.13.0, nirtorch and norse 1.1.0 "
        f"(pip install --no-deps norse==1.1.0; see sbc_onnx/bridges/README.md): {e}"
    ) from e

__all__ = ["export_norse", "import_norse", "run_norse", "weight_parameters"]

_NEURONS = (LIFCell, LIFRecurrentCell, LIFBoxCell, LIBoxCell, IAFCell)


# ----------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------
def _module_dt(module: "torch.nn.Module", dt: float | None) -> float:
    dts = sorted({float(m.dt) for m in module.modules() if isinstance(m, _NEURONS) and hasattr(m, "dt")})
    if dt is None:
        if not dts:
            raise ValueError("the module has no Norse neuron with a dt: pass dt= explicitly")
        if len(dts) > 1:
            raise ValueError(f"Norse neurons use different dt values {dts}: pass dt= explicitly")
        dt = dts[0]
    dt = float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    mismatched = [d for d in dts if not np.isclose(d, dt, rtol=1e-12)]
    if mismatched:
        warnings.warn(
            f"export dt = {dt} differs from the dt the Norse neurons integrate with ({mismatched}); the graph "
            f"describes the continuous-time model, and simulating it at dt = {dt} is not what the Norse "
            "module computes",
            stacklevel=3,
        )
    return dt


def _reset_mode(module: "torch.nn.Module") -> str:
    modes = set()
    for m in module.modules():
        if isinstance(m, LIFBoxCell):
            fn = m.p.reset_method
            if fn is norse_reset.reset_subtract:
                modes.add("subtract")
            elif fn is norse_reset.reset_value:
                modes.add("to_v_reset")
            else:
                raise ValueError(f"unknown Norse reset_method {fn!r}")
        elif isinstance(m, (LIFCell, LIFRecurrentCell, IAFCell)):
            modes.add("to_v_reset")  # hard-coded value reset in Norse
    if len(modes) > 1:
        raise ValueError("the network mixes reset-to-value and reset-by-subtraction; NIR graph metadata holds "
                         "one reset mode for the whole graph")
    mode = modes.pop() if modes else "to_v_reset"
    if mode == "subtract":
        warnings.warn("Norse reset_subtract cannot be expressed in NIR (only reset to v_reset); the graph records "
                      "metadata reset='subtract'", stacklevel=3)
    return mode


def _inv(x: np.ndarray, name: str) -> np.ndarray:
    if np.any(x <= 0):
        raise ValueError(f"{name} must be > 0")
    return 1.0 / x


def _cuba_node(p, shape: tuple[int, ...], dt: float) -> nir.CubaLIF:
    tau_syn = _inv(full(p.tau_syn_inv, shape, "tau_syn_inv"), "tau_syn_inv")
    tau_mem = _inv(full(p.tau_mem_inv, shape, "tau_mem_inv"), "tau_mem_inv")
    return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=np.ones(shape), v_leak=full(p.v_leak, shape),
                       v_threshold=full(p.v_th, shape), v_reset=full(p.v_reset, shape), w_in=tau_syn / dt)


def _recurrent_graph(m: LIFRecurrentCell, dt: float) -> nir.NIRGraph:
    """LIFRecurrentCell: i += W_in x + W_rec z[t-1], then LIFCell's dynamics. A subgraph
    input -> w_in -> lif <-> w_rec -> output: both weights are weight layers feeding the same CubaLIF, the
    recurrent one on a back edge (read at t-1, zero at t = 0 like Norse's initial z)."""
    shape = (int(m.hidden_size),)
    return nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array([int(m.input_size)])),
               "w_in": nir.Linear(weight=to_numpy(m.input_weights).astype(np.float32)),
               "lif": _cuba_node(m.p, shape, dt),
               "w_rec": nir.Linear(weight=to_numpy(m.recurrent_weights).astype(np.float32)),
               "output": nir.Output(output_type=np.array(shape))},
        edges=[("input", "w_in"), ("w_in", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
    )


def weight_parameters(module: torch.nn.Module) -> dict[str, str]:
    """NIR weight node -> parameter name, for the nodes not named after their module (``<node>.weight``):
    a LIFRecurrentCell's ``<name>.w_in`` / ``<name>.w_rec``."""
    names: dict[str, str] = {}
    for name, m in module.named_modules():
        if isinstance(m, LIFRecurrentCell):
            names.update({f"{name}.w_in": f"{name}.input_weights", f"{name}.w_rec": f"{name}.recurrent_weights"})
    return names


def export_norse(
    module: "torch.nn.Module",
    sample: Any,
    dt: float | None = None,
    *,
    model_name: str = "norse",
) -> nir.NIRGraph:
    """Norse module -> NIR graph (type-checked by nir 1.0.8, writable with nir.write).

    sample: one input batch of shape (B, *input_shape); the batch axis is not part of the NIR Input type.
    dt:     the time step the Norse neurons integrate with; default: their own ``dt`` attribute.
    """
    sample = torch.as_tensor(sample)
    if sample.ndim < 2:
        raise ValueError(f"sample must have a batch dimension, shape (B, *input_shape); got {tuple(sample.shape)}")
    dt = _module_dt(module, dt)
    reset = _reset_mode(module)
    was_training = module.training
    module.eval()
    shapes = out_shapes_by_hooks(torch, module, sample)
    unmapped: list[str] = []

    def module_map(m):
        shape = shapes.get(id(m))
        if isinstance(m, _NEURONS) and shape is None:
            raise ValueError(f"{type(m).__name__} was not called by the forward pass of the sample")
        if isinstance(m, LIFCell):
            return _cuba_node(m.p, shape, dt)
        if isinstance(m, LIFRecurrentCell):
            return _recurrent_graph(m, dt)
        if isinstance(m, torch.nn.AvgPool2d):
            return pool_node(m)
        if isinstance(m, LIFBoxCell):
            p = m.p
            return nir.LIF(tau=_inv(full(p.tau_mem_inv, shape, "tau_mem_inv"), "tau_mem_inv"), r=np.ones(shape),
                           v_leak=full(p.v_leak, shape), v_threshold=full(p.v_th, shape),
                           v_reset=full(p.v_reset, shape))
        if isinstance(m, LIBoxCell):
            p = m.p
            return nir.LI(tau=_inv(full(p.tau_mem_inv, shape, "tau_mem_inv"), "tau_mem_inv"), r=np.ones(shape),
                          v_leak=full(p.v_leak, shape))
        if isinstance(m, IAFCell):
            p = m.p
            return nir.IF(r=np.ones(shape), v_threshold=full(p.v_th, shape), v_reset=full(p.v_reset, shape))
        if isinstance(m, torch.nn.Linear):
            w = to_numpy(m.weight)
            return nir.Linear(weight=w) if m.bias is None else nir.Affine(weight=w, bias=to_numpy(m.bias))
        if isinstance(m, torch.nn.Conv2d):
            if isinstance(m.padding, str):
                padding = m.padding
            else:
                padding = tuple(int(p) for p in m.padding)
            w = to_numpy(m.weight)
            bias = to_numpy(m.bias) if m.bias is not None else np.zeros(w.shape[0], dtype=w.dtype)
            return nir.Conv2d(input_shape=None, weight=w, stride=tuple(m.stride), padding=padding,
                              dilation=tuple(m.dilation), groups=m.groups, bias=bias)
        if isinstance(m, torch.nn.Flatten):
            # NIR shapes have no batch axis: torch start_dim 1 -> NIR 0
            start = m.start_dim - 1 if m.start_dim > 0 else m.start_dim
            end = m.end_dim - 1 if m.end_dim > 0 else m.end_dim
            return nir.Flatten(input_type=None, start_dim=start, end_dim=end)
        if not list(m.children()):
            unmapped.append(type(m).__name__)
        return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        graph = nirtorch.extract_nir_graph(module, module_map, sample, model_name=model_name, ignore_dims=[0])
    module.train(was_training)
    if unmapped:
        raise ValueError(f"Norse modules with no NIR equivalent in this bridge: {sorted(set(unmapped))}")
    for name, node in graph.nodes.items():
        v_leak = getattr(node, "v_leak", None)
        if v_leak is not None and np.any(np.asarray(v_leak) != 0):
            warnings.warn(f"node {name!r}: Norse starts v at v_leak != 0, NIR simulators at 0: the first steps "
                          "differ", stacklevel=2)
    graph.infer_types()
    graph.metadata = sim_metadata(dt, reset, source=f"norse {norse.__version__}")
    return graph


# ----------------------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------------------
class Gain(torch.nn.Module):
    """y = cell(gain * x): applies NIR's r / w_in, which Norse cells do not have."""

    def __init__(self, gain: np.ndarray, cell: "torch.nn.Module"):
        super().__init__()
        self.register_buffer("gain", torch.as_tensor(np.asarray(gain, dtype=np.float32)))
        self.cell = cell

    def forward(self, x, state=None):
        return self.cell(self.gain * x, state)


class CubaLIF(torch.nn.Module):
    """NIR CubaLIF, current first: I += dt/tau_syn*(w_in x - I); v += dt/tau_mem*(v_leak - v + r I)."""

    def __init__(self, w_in, synapse, r, neuron):
        super().__init__()
        self.register_buffer("w_in", torch.as_tensor(np.asarray(w_in, dtype=np.float32)))
        self.register_buffer("r", torch.as_tensor(np.asarray(r, dtype=np.float32)))
        self.synapse, self.neuron = synapse, neuron

    def forward(self, x, state=None):
        s_syn, s_lif = (None, None) if state is None else state
        i, s_syn = self.synapse(self.w_in * x, s_syn)
        z, s_lif = self.neuron(self.r * i, s_lif)
        return z, (s_syn, s_lif)


def _t(a: Any) -> "torch.Tensor":
    return torch.as_tensor(np.ascontiguousarray(np.asarray(a, dtype=np.float32)))


def _v_reset(node) -> np.ndarray:
    v = getattr(node, "v_reset", None)
    return np.zeros_like(np.asarray(node.v_threshold, dtype=np.float64)) if v is None else np.asarray(v)


def _maybe_gain(gain, cell):
    g = np.asarray(gain, dtype=np.float64)
    return cell if np.all(g == 1.0) else Gain(g, cell)


def import_norse(graph: nir.NIRGraph | str, dt: float | None = None, *, reset: str | None = None) -> "torch.nn.Module":
    """NIR graph (or path) -> Norse network (torch.fx GraphModule, ``out, state = model(x_t, state)``).

    dt:    time step; default: the graph metadata "dt" (error if neither).
    reset: "to_v_reset" or "subtract"; default: graph metadata, else to_v_reset.
    """
    if not isinstance(graph, nir.NIRGraph):
        graph = nir.read(str(graph))
    dt = graph_dt(graph, dt)
    method = norse_reset.reset_value if graph_reset(graph, reset) == "to_v_reset" else norse_reset.reset_subtract

    def lif(node):
        cell = LIFBoxCell(LIFBoxParameters(tau_mem_inv=_t(1.0 / np.asarray(node.tau, dtype=np.float64)),
                                           v_leak=_t(node.v_leak), v_th=_t(node.v_threshold),
                                           v_reset=_t(_v_reset(node)), reset_method=method), dt=dt)
        return _maybe_gain(node.r, cell)

    def li(node):
        cell = LIBoxCell(LIBoxParameters(tau_mem_inv=_t(1.0 / np.asarray(node.tau, dtype=np.float64)),
                                         v_leak=_t(node.v_leak)), dt=dt)
        return _maybe_gain(node.r, cell)

    def if_(node):
        if method is not norse_reset.reset_value:
            raise ValueError("Norse IAFCell only resets to v_reset; reset='subtract' is not available for IF")
        cell = IAFCell(IAFParameters(v_th=_t(node.v_threshold), v_reset=_t(_v_reset(node))), dt=dt)
        return _maybe_gain(node.r, cell)

    def cubalif(node):
        synapse = LIBoxCell(LIBoxParameters(tau_mem_inv=_t(1.0 / np.asarray(node.tau_syn, dtype=np.float64)),
                                            v_leak=_t(np.zeros_like(np.asarray(node.v_threshold)))), dt=dt)
        neuron = LIFBoxCell(LIFBoxParameters(tau_mem_inv=_t(1.0 / np.asarray(node.tau_mem, dtype=np.float64)),
                                             v_leak=_t(node.v_leak), v_th=_t(node.v_threshold),
                                             v_reset=_t(_v_reset(node)), reset_method=method), dt=dt)
        w_in = 1.0 if node.w_in is None else node.w_in
        return CubaLIF(np.broadcast_to(w_in, np.shape(node.v_threshold)), synapse, node.r, neuron)

    node_map = {nir.Affine: linear, nir.Linear: linear, nir.Conv2d: conv2d, nir.LIF: lif, nir.LI: li,
                nir.IF: if_, nir.CubaLIF: cubalif, nir.Flatten: flatten, nir.AvgPool2d: avgpool2d, nir.Scale: scale}
    supported = set(node_map) | {nir.Input, nir.Output}
    for name, node in graph.nodes.items():
        if type(node) not in supported:
            raise ValueError(f"node {name!r}: NIR {type(node).__name__} is not supported by this Norse importer")
    return nirtorch.nir_to_torch(graph, node_map)


def run_norse(model: "torch.nn.Module", x: Any) -> np.ndarray:
    """Run a Norse network (an imported GraphModule, a SequentialState, or any module called as
    ``model(x_t, state) -> (out, state)``) over x of shape (T, B, *input_shape) from rest; returns the outputs
    stacked over time (T, B, *out_shape) as float32 numpy."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x).float()
    outs, state = [], None
    with torch.no_grad():
        for t in range(x.shape[0]):
            y, state = model(x[t], state)
            while isinstance(y, (tuple, list)):
                y = y[0]
            outs.append(y.detach().cpu().numpy().astype(np.float32))
    return np.stack(outs)
