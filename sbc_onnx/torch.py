"""Compress a torch spiking network in one call (snnTorch, Norse, SpikingJelly).

    from sbc_onnx.torch import compress_module
    small, report = compress_module(net, train_loader, sparsity=0.5, bits=8, method="sbc")
    print(report.table())

`compress_module` detects the framework from the module's neurons, exports the module to NIR with the
matching bridge (sbc_onnx/bridges/), compresses the graph with `sbc_onnx.compress` on the data, and writes
the compressed weights back into a copy of the user's own module (or the module itself, ``inplace=True``):
the result is the same class, with the same parameter names, so ``net.load_state_dict(small.state_dict())``
works. Only weights change (NIR carries the neuron parameters too, but compression changes only weights;
biases and neuron parameters are left as they are), except where the bridge folded a BatchNorm into a layer
(SpikingJelly): the layer gets the folded compressed weight and the BatchNorm becomes the identity carrying
the folded bias (a logging warning says so).

torch is imported only by the functions that need it: importing this module does not import torch.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import Dataset, as_dataset
from .errors import SbcError
from .graph import flatten
from .pipeline import CompressionReport, compress
from .sim import SimConfig

__all__ = ["FRAMEWORKS", "as_dataset", "compress_module", "detect_framework", "export_module", "load_weights",
           "module_accuracy", "run_module"]

# framework -> bridge module (None: detected, but no bridge yet)
_BRIDGES: dict[str, str | None] = {
    "snntorch": "sbc_onnx.bridges.snntorch_bridge",
    "norse": "sbc_onnx.bridges.norse_bridge",
    "spikingjelly": "sbc_onnx.bridges.spikingjelly_bridge",
}
FRAMEWORKS = tuple(_BRIDGES)


@dataclass(frozen=True)
class _Bridge:
    export: Callable  # (module, sample (B, *input_shape)) -> NIRGraph
    run: Callable  # (module, x (T, B, *input_shape)) -> output spikes (T, B, *out) numpy
    weight_parameters: Callable  # module -> {node name: parameter name} for nodes not named "<module>"
    # module -> {parameter name: the weight the graph holds} where that is not the parameter (BatchNorm folded)
    dense_weights: Callable | None = None
    # (module, graph, names) -> None, after the weights are copied: what a weight copy leaves (BatchNorm)
    load_folded: Callable | None = None


def detect_framework(module: Any) -> str:
    """'snntorch', 'norse' or 'spikingjelly', from the package of the module's submodules; SbcError otherwise."""
    packages = {type(m).__module__.split(".")[0] for m in module.modules()}
    found = [f for f in FRAMEWORKS if f in packages]
    if not found:
        raise SbcError(f"no {', '.join(FRAMEWORKS)} module found in {type(module).__name__}: "
                       "compress_module needs a spiking network from one of these frameworks")
    if len(found) > 1:
        raise SbcError(f"the module mixes frameworks ({', '.join(found)}); use one")
    return found[0]


def _bridge(framework: str) -> _Bridge:
    if framework not in _BRIDGES:
        raise SbcError(f"unknown framework {framework!r}; known: {', '.join(FRAMEWORKS)}")
    name = _BRIDGES[framework]
    if name is None:
        raise SbcError(f"{framework} modules are recognised but have no bridge yet: export the network to NIR "
                       f"with {framework}'s own exporter and use sbc_onnx.compress on the graph")
    mod = importlib.import_module(name)
    short = name.rsplit("_", 1)[0].rsplit(".", 1)[-1]  # "snntorch" / "norse" / "spikingjelly"
    return _Bridge(getattr(mod, f"export_{short}"), getattr(mod, f"run_{short}"), mod.weight_parameters,
                   getattr(mod, "dense_weights", None), getattr(mod, "load_folded", None))


def export_module(module: Any, sample: Any, *, framework: str | None = None):
    """Module -> NIR graph with its framework's bridge; `sample` is one input step (B, *input_shape)."""
    bridge = _bridge(framework or detect_framework(module))
    try:
        return bridge.export(module, sample)
    except ValueError as e:  # the bridges say what the module uses that NIR cannot express
        raise SbcError(str(e)) from e


def run_module(module: Any, x: Any, *, framework: str | None = None) -> np.ndarray:
    """The module's own forward pass over x (T, B, *input_shape) from rest: outputs (T, B, *out)."""
    return _bridge(framework or detect_framework(module)).run(module, x)


def _parameter_names(module: Any, fg, bridge: _Bridge) -> dict[str, str]:
    """Weight node -> parameter name, checked against the module: same shape and same dense values."""
    special = bridge.weight_parameters(module)
    try:
        dense = bridge.dense_weights(module) if bridge.dense_weights else {}
    except ValueError as e:  # a folded layer the module could not take back
        raise SbcError(str(e)) from e
    params = dict(module.named_parameters())
    names = {}
    for node in fg.weight_nodes():
        pname = special.get(node, f"{node}.weight")
        p = params.get(pname)
        w = np.asarray(fg.nodes[node].weight)
        if p is None or tuple(p.shape) != w.shape:
            raise SbcError(f"weight layer {node!r} has no parameter {pname!r} of shape {w.shape} in the module")
        held = dense.get(pname, p.detach().cpu().numpy())
        if not np.array_equal(held, w.astype(held.dtype)):
            raise SbcError(f"weight layer {node!r} does not hold the values of parameter {pname!r}")
        names[node] = pname
    return names


def load_weights(module: Any, graph, names: dict[str, str], *, framework: str | None = None) -> None:
    """Copy the weights of `graph`'s nodes into the module's parameters (node -> parameter name); then the
    framework's bridge sets what a weight copy leaves (SpikingJelly: a folded BatchNorm becomes the identity
    carrying the folded bias). `framework`: default detected; a module of no known framework gets the copy."""
    import torch

    fg = flatten(graph)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for node, pname in names.items():
            p = params[pname]
            p.copy_(torch.as_tensor(np.asarray(fg.nodes[node].weight)).to(p.dtype).reshape(p.shape))
    if framework is None:
        try:
            framework = detect_framework(module)
        except SbcError:
            return
    bridge = _bridge(framework)
    if bridge.load_folded is not None:
        try:
            bridge.load_folded(module, graph, names)
        except ValueError as e:
            raise SbcError(str(e)) from e


def compress_module(module: Any, data: Any, *, sparsity: float | None = None, bits: int | None = None,
                    method: str = "sbc", inplace: bool = False, framework: str | None = None,
                    steps: int | None = None, time_first: bool = False, limit: int | None = None,
                    cfg: SimConfig | None = None, batch_size: int = 32, progress: bool = False,
                    **options) -> tuple[Any, CompressionReport]:
    """Compress a snnTorch, Norse or SpikingJelly module one-shot; returns (module with compressed weights,
    report).

    data        calibration data: a torch Dataset of (x (T, *input_shape), label), a DataLoader or an
                iterable of (x, y) batches (B, T, ...) or a project Dataset (see `sbc_onnx.data.as_dataset`
                for `steps`, `time_first` and `limit`).
    inplace     write the weights into `module` itself (default: a deep copy; `module` is untouched).
    framework   'snntorch', 'norse' or 'spikingjelly' (default: detected from the module).
    cfg         simulator settings (default: the ones the exported graph records: dt, reset, Euler).
    options     any other `sbc_onnx.compress` option (pattern, allocation, granularity, layers, ...).
    """
    framework = framework or detect_framework(module)
    bridge = _bridge(framework)
    ds = as_dataset(data, steps=steps, time_first=time_first, limit=limit)
    graph = export_module(module, _first_step(ds), framework=framework)
    names = _parameter_names(module, flatten(graph), bridge)
    cfg = cfg or SimConfig.from_graph(graph)
    new, report = compress(graph, ds, sparsity=sparsity, bits=bits, method=method, cfg=cfg, batch_size=batch_size,
                           progress=progress, **options)
    target = module if inplace else copy.deepcopy(module)
    load_weights(target, new, names, framework=framework)
    return target, report


def _first_step(ds: Dataset) -> Any:
    import torch

    return torch.as_tensor(ds.sample(0)[:1])  # (1, *input_shape): the bridges trace one batched step


def module_accuracy(module: Any, data: Any, *, framework: str | None = None, batch_size: int = 64,
                    steps: int | None = None, time_first: bool = False, limit: int | None = None) -> float:
    """Accuracy of the module's own forward pass: the class is the output with the most spikes over time
    (ties go to the lowest index, like numpy's argmax)."""
    ds = as_dataset(data, steps=steps, time_first=time_first, limit=limit)
    correct = 0
    for x_tb, y in ds.batches(batch_size):
        out = run_module(module, x_tb, framework=framework)
        counts = out.reshape(out.shape[0], out.shape[1], -1).sum(axis=0)
        correct += int(np.sum(np.argmax(counts, axis=1) == y))
        del x_tb  # freed before the next batch is built (Dataset.batches)
    return correct / ds.n
