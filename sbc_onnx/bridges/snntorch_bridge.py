"""snnTorch <-> NIR with the known pitfalls of snnTorch 1.0 / nirtorch 2.x / nir 1.0.8 handled.

Export (`export_snntorch`) uses snnTorch's own module extractor through `nirtorch.extract_nir_graph`, but:
- the sample's batch dimension is removed from the Input type (``ignore_dims=[0]``; without it nir 1.0.8
  fails with "type mismatch: input.output: [[1 8]] -> fc1.input: [[8]]");
- Leaky / Synaptic parameters are rebuilt in float64 as full per-neuron arrays (a scalar ``beta`` or
  ``threshold`` gives 0-d NIR parameters, which fail nir 1.0.8's type check and its gzip writer);
- snnTorch hard-codes dt = 1e-4 s; another ``dt`` rescales every tau (tau/dt, r and w_in are unchanged,
  so the discrete dynamics are the same);
- the reset mechanism actually used by the network is written to ``graph.metadata`` ("reset":
  "to_v_reset" for reset_mechanism="zero", "subtract" for "subtract"), with dt and integrator "euler".
  NIR itself can only express reset-to-v_reset, so "subtract" (snnTorch's default) gives a warning: snnTorch's
  subtraction (delayed, or undone on the next step while v stays above threshold) is reproduced by no NIR
  simulator. With reset to zero, ``reset_delay`` only delays the zeroing of the reported membrane; the
  spikes equal NIR's immediate reset, so both settings export exactly (metadata "snntorch_reset_delay").

Discrete-time equivalence (forward Euler with the graph's dt, as sbc_onnx.sim.Walker steps it):
  Leaky    U = beta U + I                       <->  LIF  tau = dt/(1-beta), r = tau/dt, v_leak = 0
  Synaptic S = alpha S + I;  U = beta U + S     <->  CubaLIF tau_syn = dt/(1-alpha), w_in = tau_syn/dt,
                                                     tau_mem = dt/(1-beta), r = tau_mem/dt (current first)
  Leaky with beta == 1 (all neurons)            <->  IF r = 1 (per-step integration, no dt)

Import (`import_snntorch`) replaces snnTorch's neuron mapping, which (a) requires one threshold for the
whole layer (an SBC-compressed or any per-neuron-threshold graph fails its assertion), (b) maps nir.IF to
``Leaky(beta=0.9)`` (IF has no leak: here IF becomes ``Leaky(beta=1)``), (c) ignores dt from metadata
and v_reset. LIF/CubaLIF/IF become Leaky/Synaptic with per-neuron beta/alpha and threshold; an input gain
``k = r*dt/tau`` (LIF) or ``w_in*dt/tau_syn`` (CubaLIF) different from 1 is folded into the threshold
(``threshold / k``), which is exact for reset to zero. Non-zero v_leak or v_reset cannot be expressed in
snnTorch and is refused. Linear/Affine use snnTorch's own mapping; Conv2d, AvgPool2d and Flatten are built
here so that the imported network runs with or without a batch axis (snnTorch maps NIR Flatten(0) to
``nn.Flatten(0)``, which folds the batch into the features).

Recurrent cells: RLeaky(reset_delay=False) exports as ``<name>.lif <-> <name>.w_rec`` (w_rec a Linear weight
node on a back edge, read at t-1; all_to_all=False: a Scale), built in float64 here (snnTorch's exporter
computes r = tau/dt in float32, so its graphs drift from snnTorch's spikes). snnTorch adds the recurrent
bias from t = 0, where a back edge carries nothing, so the bias moves to the layer feeding the neuron.
The import leaves the cycle to nirtorch (Leaky + Linear, the back edge in the state), spike for spike equal.
Refused with the reason: RLeaky with reset to zero and reset_delay=True (the step after a spike drops the
whole membrane update: a refractory step NIR cannot express), RSynaptic (the same with reset_delay=True;
snnTorch 1.0 applies its reset_delay=False reset to a stale state), convolutional recurrences.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Sequence
from typing import Any

import nir
import numpy as np

from ._common import full, graph_dt, graph_reset, out_shapes_by_hooks, sim_metadata, to_numpy

try:
    import nirtorch
    import snntorch as snn
    import torch
    from snntorch.export_nir import _extract_snntorch_module
    from snntorch.import_nir import _nir_to_snntorch_module

    from ._torch_modules import avgpool2d, conv2d, flatten, pool_node, scale
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sbc_onnx.bridges.snntorch_bridge needs the optional extra: pip install 'sbc-onnx[torch]' "
        f"(torch==2.13.0, snntorch, nirtorch); {e}"
    ) from e

SNNTORCH_DT = 1e-4  # the time step snnTorch's own exporter/importer hard-code
_RECURRENT = (snn.RLeaky, snn.RSynaptic)
_SUPPORTED_NEURONS = (snn.Leaky, snn.Synaptic, snn.RLeaky, snn.RSynaptic)

__all__ = ["SNNTORCH_DT", "export_snntorch", "import_snntorch", "reset_snntorch", "run_snntorch", "weight_parameters"]


# ----------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------
def _neuron_modules(net: "torch.nn.Module") -> list:
    neurons = [m for m in net.modules() if isinstance(m, snn.SpikingNeuron)]
    for m in neurons:
        if type(m) not in _SUPPORTED_NEURONS:
            raise ValueError(
                f"snnTorch neuron {type(m).__name__} has no NIR equivalent in this bridge "
                f"(supported: {', '.join(c.__name__ for c in _SUPPORTED_NEURONS)})"
            )
        if isinstance(m, _RECURRENT):
            _check_recurrent(m)
        if getattr(m, "inhibition", False):
            raise ValueError(f"{type(m).__name__}(inhibition=True) cannot be expressed in NIR")
        if getattr(m, "state_quant", False):
            raise ValueError(f"{type(m).__name__}(state_quant=...) cannot be expressed in NIR")
        gsf = to_numpy(getattr(m, "graded_spikes_factor", 1.0))
        if not np.all(gsf == 1.0):
            raise ValueError(f"{type(m).__name__}: graded_spikes_factor != 1 cannot be expressed in NIR")
    return neurons


def _check_recurrent(m) -> None:
    """RLeaky/RSynaptic that NIR (a neuron and its recurrent weight in a cycle, read at t-1) expresses."""
    name = type(m).__name__
    if isinstance(m, snn.RSynaptic):
        # snnTorch 1.0 RSynaptic: with reset_delay=False its forward applies the reset to the `mem` argument
        # (None with init_hidden=True: TypeError; the stale state otherwise); with reset_delay=True see below.
        raise ValueError("snnTorch RSynaptic has no exact NIR equivalent: with reset_delay=True it zeroes the "
                         "whole membrane update on the step after a spike (a refractory step NIR cannot express), "
                         "and with reset_delay=False snnTorch 1.0 applies the reset to a stale state. Use RLeaky("
                         "reset_delay=False) or Synaptic with an explicit Linear feedback")
    if m.reset_delay and m.reset_mechanism == "zero":
        raise ValueError(f"{name}(reset_mechanism='zero', reset_delay=True) zeroes the whole membrane update on "
                         "the step after a spike (a refractory step NIR cannot express); use reset_delay=False")
    if m.all_to_all and not m.linear_features:
        raise ValueError(f"{name} with a convolutional recurrence is not supported by this bridge "
                         "(only linear_features or all_to_all=False)")


def _reset_mode(neurons: Sequence) -> tuple[str, str, bool]:
    """(NIR/walker reset, snnTorch reset_mechanism, any reset_delay) for the whole network."""
    mechanisms = sorted({m.reset_mechanism for m in neurons})
    delays = {bool(getattr(m, "reset_delay", True)) for m in neurons}
    if not neurons:
        return "to_v_reset", "zero", False
    if len(mechanisms) > 1:
        raise ValueError(
            f"the network mixes reset mechanisms {mechanisms}; NIR graph metadata holds one reset mode "
            "for the whole graph"
        )
    mech = mechanisms[0]
    if mech == "none":
        raise ValueError("reset_mechanism='none' (no reset) cannot be expressed in NIR")
    reset = "to_v_reset" if mech == "zero" else "subtract"
    delay = True in delays
    # Reset to zero: reset_delay=True only delays the zeroing of the *reported* membrane; the next step
    # starts from 0 either way (U = beta*0 + I), so spikes equal NIR's immediate reset (checked in tests).
    if mech == "subtract":
        warnings.warn(
            "snnTorch reset_mechanism='subtract' cannot be expressed in NIR (only reset to v_reset); the graph "
            "records metadata reset='subtract'. snnTorch's subtraction is not NIR/sbc_onnx.sim's: with "
            "reset_delay=True it subtracts one step late, after the decay (differs after every spike); with "
            "reset_delay=False it undoes the subtraction on the next step when v is still above threshold "
            "after it (its 'avoid double reset' term). Use reset_mechanism='zero' for an exact round trip.",
            stacklevel=3,
        )
    return reset, mech, delay


def _beta_to_tau(beta: np.ndarray, dt: float, name: str) -> np.ndarray:
    beta = np.clip(beta, 0.0, 1.0)  # snnTorch clamps beta/alpha to [0, 1] in its forward pass
    if np.any(beta >= 1.0):
        raise ValueError(f"{name} = 1 (no decay) for some neurons: not a leaky neuron, cannot map to a tau")
    return dt / (1.0 - beta)


def _leaky_node(m: "snn.Leaky", shape: tuple[int, ...], dt: float) -> nir.NIRNode:
    beta = np.clip(full(m.beta, shape, "beta"), 0.0, 1.0)
    thr = full(m.threshold, shape, "threshold")
    zeros = np.zeros(shape)
    if np.all(beta == 1.0):
        return nir.IF(r=np.ones(shape), v_threshold=thr, v_reset=zeros)
    tau = _beta_to_tau(beta, dt, "Leaky beta")
    return nir.LIF(tau=tau, r=tau / dt, v_leak=zeros, v_threshold=thr, v_reset=zeros.copy())


def _synaptic_node(m: "snn.Synaptic", shape: tuple[int, ...], dt: float) -> nir.NIRNode:
    alpha = full(m.alpha, shape, "alpha")
    beta = full(m.beta, shape, "beta")
    thr = full(m.threshold, shape, "threshold")
    tau_syn = _beta_to_tau(alpha, dt, "Synaptic alpha")
    tau_mem = _beta_to_tau(beta, dt, "Synaptic beta")
    zeros = np.zeros(shape)
    return nir.CubaLIF(
        tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, v_leak=zeros, v_threshold=thr,
        v_reset=zeros.copy(), w_in=tau_syn / dt,
    )


def _recurrent_graph(m, shape: tuple[int, ...], dt: float) -> nir.NIRGraph:
    """RLeaky -> subgraph input -> lif <-> w_rec -> output (node names as snnTorch's own exporter uses).

    Built here in float64 (snnTorch's exporter computes r = tau/dt in float32, so r*dt/tau != 1 and the
    walker's spikes drift from snnTorch's); the recurrent Linear is a weight node in the cycle, compressed
    like any other layer; all_to_all=False (one weight per neuron, V) is a Scale in the cycle."""
    node = _leaky_node(m, shape, dt)
    if m.all_to_all:
        # the recurrent bias goes to the layer feeding the neuron (`_fold_recurrent_bias`): snnTorch adds it
        # from t = 0, a NIR back edge carries nothing at t = 0
        w_rec = nir.Linear(weight=to_numpy(m.recurrent.weight).astype(np.float32))
    else:
        w_rec = nir.Scale(scale=full(m.recurrent.V, shape, "V"))
    return nir.NIRGraph(
        nodes={"input": nir.Input(input_type=np.array(shape)), "lif": node, "w_rec": w_rec,
               "output": nir.Output(output_type=np.array(shape))},
        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")],
    )


def _fold_recurrent_bias(graph: nir.NIRGraph, net) -> None:
    """Add each RLeaky's recurrent bias to the bias of the one weight layer feeding its neuron.

    snnTorch computes ``recurrent(spk)`` = W spk + b at every step, t = 0 included; a NIR back edge is read
    at t-1 and is zero at t = 0, so a bias inside the cycle would be missing on the first step."""
    for name, m in net.named_modules():
        if not isinstance(m, snn.RLeaky) or not m.all_to_all or m.recurrent.bias is None:
            continue
        bias = to_numpy(m.recurrent.bias).astype(np.float64)
        if not np.any(bias):
            continue
        lif, rec = f"{name}.lif", f"{name}.w_rec"
        feeds = [a for a, b in graph.edges if b == lif and a != rec]
        if len(feeds) != 1 or not isinstance(graph.nodes[feeds[0]], (nir.Affine, nir.Linear)):
            raise ValueError(f"RLeaky {name!r} has a recurrent bias and is not fed by exactly one Linear layer: "
                             "the bias cannot be placed outside the recurrent cycle")
        node = graph.nodes[feeds[0]]
        old = np.zeros(node.weight.shape[0]) if isinstance(node, nir.Linear) else np.asarray(node.bias, np.float64)
        graph.nodes[feeds[0]] = nir.Affine(weight=node.weight, bias=(old + bias).astype(np.float32))


def weight_parameters(net: torch.nn.Module) -> dict[str, str]:
    """NIR weight node -> parameter name, for the nodes not named after their module (``<node>.weight``):
    an RLeaky's recurrent weight ``<name>.w_rec`` is ``<name>.recurrent.weight``."""
    return {f"{name}.w_rec": f"{name}.recurrent.weight" for name, m in net.named_modules()
            if isinstance(m, snn.RLeaky) and m.all_to_all}


def reset_snntorch(model: "torch.nn.Module") -> None:
    """Zero the hidden state of every snnTorch neuron (init_hidden=True keeps it inside the module)."""
    for m in model.modules():
        if isinstance(m, snn.SpikingNeuron) and hasattr(m, "reset_mem"):
            m.reset_mem()


def export_snntorch(
    net: "torch.nn.Module",
    sample: Any,
    dt: float = SNNTORCH_DT,
    *,
    model_name: str = "snntorch",
    model_fwd_args: Sequence = (),
) -> nir.NIRGraph:
    """snnTorch module -> NIR graph (type-checked by nir 1.0.8, writable with nir.write).

    sample: one input batch of shape (B, *input_shape); the batch axis is not part of the NIR Input type.
    dt:     the simulation time step the graph's time constants refer to (snnTorch's convention 1e-4 s).
    """
    sample = torch.as_tensor(sample)
    if sample.ndim < 2:
        raise ValueError(f"sample must have a batch dimension, shape (B, *input_shape); got {tuple(sample.shape)}")
    dt = float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    neurons = _neuron_modules(net)
    reset, mechanism, delay = _reset_mode(neurons)

    was_training = net.training
    net.eval()
    reset_snntorch(net)
    shapes = out_shapes_by_hooks(torch, net, sample)
    reset_snntorch(net)

    def module_map(module):
        if isinstance(module, _SUPPORTED_NEURONS):
            shape = shapes.get(id(module))
            if shape is None:
                raise ValueError(f"{type(module).__name__} was not called by the forward pass of the sample")
            if isinstance(module, snn.RLeaky):
                return _recurrent_graph(module, shape, dt)
            return (_leaky_node if isinstance(module, snn.Leaky) else _synaptic_node)(module, shape, dt)
        if isinstance(module, torch.nn.AvgPool2d):
            return pool_node(module)
        return _extract_snntorch_module(module)

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as out:
        warnings.simplefilter("ignore", DeprecationWarning)
        graph = nirtorch.extract_nir_graph(
            net, module_map, sample, model_name=model_name, ignore_submodules_of=list(_RECURRENT),
            model_fwd_args=list(model_fwd_args), ignore_dims=[0],
        )
    skipped = [line for line in out.getvalue().splitlines() if "not implemented" in line]
    if skipped:
        raise ValueError("snnTorch could not export some modules: " + "; ".join(skipped))
    reset_snntorch(net)
    net.train(was_training)

    for name, node in graph.nodes.items():
        for f in ("weight", "bias"):  # torch tensors -> numpy (snnTorch's Conv2d export leaves tensors)
            if hasattr(node, f) and not isinstance(getattr(node, f), np.ndarray) and getattr(node, f) is not None:
                setattr(node, f, to_numpy(getattr(node, f)))
    _fold_recurrent_bias(graph, net)
    graph.infer_types()
    graph.metadata = sim_metadata(
        dt, reset, source=f"snntorch {snn.__version__}",
        snntorch_reset_mechanism=mechanism, snntorch_reset_delay=int(delay),
    )
    return graph


# ----------------------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------------------
def _check_zero(node: nir.NIRNode, field: str, what: str) -> None:
    v = getattr(node, field, None)
    if v is not None and not np.all(np.asarray(v) == 0):
        raise ValueError(f"{type(node).__name__}.{field} != 0 cannot be expressed by snnTorch {what}")


def _gain_threshold(thr: np.ndarray, gain: np.ndarray, kind: str) -> np.ndarray:
    """Fold an input gain into the threshold: v_nir = gain * v_snn, so v_nir > thr <=> v_snn > thr/gain."""
    gain = np.broadcast_to(np.asarray(gain, dtype=np.float64), thr.shape)
    if np.any(gain <= 0):
        raise ValueError(f"{kind}: input gain r*dt/tau <= 0 cannot be folded into the threshold")
    close = np.isclose(gain, 1.0, rtol=1e-9, atol=0.0)
    return np.where(close, thr, thr / gain)


def _tensor(a: np.ndarray) -> "torch.Tensor":
    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32))


def _lif_module(node: nir.LIF, dt: float, mechanism: str, init_hidden: bool) -> "snn.Leaky":
    _check_zero(node, "v_leak", "Leaky")
    _check_zero(node, "v_reset", "Leaky (its reset goes to zero)")
    tau = np.asarray(node.tau, dtype=np.float64)
    thr = np.asarray(node.v_threshold, dtype=np.float64)
    shape = np.broadcast_shapes(tau.shape, thr.shape, np.shape(node.r))
    beta = full(1.0 - dt / tau, shape)
    if np.any(beta < 0) or np.any(beta > 1):
        raise ValueError(f"LIF tau must be >= dt = {dt} (snnTorch clamps beta to [0, 1]); got min tau {tau.min()}")
    thr = _gain_threshold(full(thr, shape), np.asarray(node.r, dtype=np.float64) * dt / tau, "LIF")
    return snn.Leaky(beta=_tensor(beta), threshold=_tensor(thr), reset_mechanism=mechanism,
                     reset_delay=False, init_hidden=init_hidden)


def _if_module(node: nir.IF, mechanism: str, init_hidden: bool) -> "snn.Leaky":
    # snnTorch's import maps IF to Leaky(beta=0.9): wrong, IF does not leak. NIR IF integrates v += r*I
    # per step (sinabs, Norse IAF, lava-dl and sbc_onnx.sim): Leaky(beta=1) with threshold / r.
    _check_zero(node, "v_reset", "Leaky (its reset goes to zero)")
    thr = np.asarray(node.v_threshold, dtype=np.float64)
    shape = np.broadcast_shapes(thr.shape, np.shape(node.r))
    thr = _gain_threshold(full(thr, shape), np.asarray(node.r, dtype=np.float64), "IF")
    return snn.Leaky(beta=_tensor(np.ones(shape)), threshold=_tensor(thr), reset_mechanism=mechanism,
                     reset_delay=False, init_hidden=init_hidden)


def _cubalif_module(node: nir.CubaLIF, dt: float, mechanism: str, init_hidden: bool) -> "snn.Synaptic":
    _check_zero(node, "v_leak", "Synaptic")
    _check_zero(node, "v_reset", "Synaptic (its reset goes to zero)")
    tau_syn = np.asarray(node.tau_syn, dtype=np.float64)
    tau_mem = np.asarray(node.tau_mem, dtype=np.float64)
    thr = np.asarray(node.v_threshold, dtype=np.float64)
    w_in = np.asarray(1.0 if node.w_in is None else node.w_in, dtype=np.float64)
    shape = np.broadcast_shapes(tau_syn.shape, tau_mem.shape, thr.shape, np.shape(node.r), w_in.shape)
    alpha, beta = full(1.0 - dt / tau_syn, shape), full(1.0 - dt / tau_mem, shape)
    for name, a in (("tau_syn", alpha), ("tau_mem", beta)):
        if np.any(a < 0) or np.any(a > 1):
            raise ValueError(f"CubaLIF {name} must be >= dt = {dt} (snnTorch clamps its decays to [0, 1])")
    # S = alpha S + x with the input gain ks*w_in, and U = beta U + k*r*S: both gains multiply v.
    gain = (w_in * dt / tau_syn) * (np.asarray(node.r, dtype=np.float64) * dt / tau_mem)
    thr = _gain_threshold(full(thr, shape), gain, "CubaLIF")
    return snn.Synaptic(alpha=_tensor(alpha), beta=_tensor(beta), threshold=_tensor(thr),
                        reset_mechanism=mechanism, reset_delay=False, init_hidden=init_hidden)


def import_snntorch(
    graph: nir.NIRGraph | str,
    dt: float | None = None,
    *,
    reset: str | None = None,
    init_hidden: bool = True,
) -> "torch.nn.Module":
    """NIR graph (or path) -> snnTorch network (a torch.fx GraphModule from nirtorch).

    dt:    time step; default: graph metadata "dt", else snnTorch's 1e-4.
    reset: "to_v_reset" (snnTorch reset_mechanism="zero") or "subtract"; default: graph metadata, else
           to_v_reset. Neurons are built with reset_delay=False (NIR semantics).
    Call it step by step: ``out, state = model(x_t, state)``, or use `run_snntorch(model, x)`.
    """
    if not isinstance(graph, nir.NIRGraph):
        graph = nir.read(str(graph))
    dt = graph_dt(graph, dt, default=SNNTORCH_DT)
    mechanism = "zero" if graph_reset(graph, reset) == "to_v_reset" else "subtract"
    graph = copy.deepcopy(graph)

    def other(node):
        with contextlib.redirect_stdout(io.StringIO()):
            return _nir_to_snntorch_module(node, init_hidden=init_hidden)

    node_map = {
        nir.Affine: other, nir.Linear: other, nir.Conv2d: conv2d, nir.Flatten: flatten, nir.AvgPool2d: avgpool2d,
        nir.Scale: scale,
        nir.LIF: lambda n: _lif_module(n, dt, mechanism, init_hidden),
        nir.IF: lambda n: _if_module(n, mechanism, init_hidden),
        nir.CubaLIF: lambda n: _cubalif_module(n, dt, mechanism, init_hidden),
    }
    supported = set(node_map) | {nir.Input, nir.Output, nir.NIRGraph}  # nirtorch recurses into subgraphs
    for name, node in graph.nodes.items():
        if type(node) not in supported:
            raise ValueError(f"node {name!r}: NIR {type(node).__name__} has no snnTorch equivalent here")
    with contextlib.redirect_stdout(io.StringIO()):
        return nirtorch.nir_to_torch(graph, node_map)


def run_snntorch(model: "torch.nn.Module", x: Any) -> np.ndarray:
    """Run an imported (or any ``model(x_t[, state]) -> out | (out, state)``) network over x of shape
    (T, B, *input_shape) from rest (hidden states zeroed before and after); returns the outputs stacked
    over time as a float32 numpy array (T, B, *out_shape). snnTorch emits float32 spikes, so the network
    runs in float32."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
    x = x.to(torch.float32)
    reset_snntorch(model)
    outs, state = [], None
    with torch.no_grad():
        for t in range(x.shape[0]):
            y = model(x[t], state) if state is not None else model(x[t])
            if isinstance(y, tuple) and len(y) == 2 and (y[1] is None or isinstance(y[1], dict)):
                y, state = y
            while isinstance(y, (tuple, list)):
                y = y[0]
            outs.append(y.detach().cpu().numpy().astype(np.float32))
    reset_snntorch(model)
    return np.stack(outs)
