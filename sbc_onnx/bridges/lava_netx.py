"""lava-dl netx ``.net`` (HDF5) -> NIR, for Dense networks of CUBA (current-based LIF) neurons.

Mapping (shared/data/lava_dl_mnist/PROVENANCE.md; Lava's fixed-point CUBA model, state scaled by 1/4096):
    Lava per step:  u = u*(4096-iDecay)/4096 + (a_in<<6);  v = v*(4096-vDecay)/4096 + u;  s = v > vThMant<<6
    NIR CubaLIF, forward Euler at dt (current first, then v with the new current):
        Linear.weight = W / 64                                  (netx integer weights, exact in float32)
        tau_syn = dt*4096/iDecay,  w_in = tau_syn/dt           (1 - dt/tau_syn = (4096-iDecay)/4096)
        tau_mem = dt*4096/vDecay,  r    = tau_mem/dt
        v_threshold = vThMant/64,  v_leak = 0,  v_reset = 0
    dt defaults to 1e-4 s (the NIR repository's Lava convention); only the ratios tau/dt matter.
Differences NIR cannot carry (see PROVENANCE.md): Lava rounds decays toward zero in fixed point, and Lava's
Dense delays every layer by one step (NIR synapses are instantaneous).

``encoder=True`` prepends the IF rate encoder the tutorial feeds pixels through (``v += x`` per step, spike
if v > 1, reset to 0), as in shared ``mnist_cubalif.nir``; the .net file itself has no input layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import nir
import numpy as np

from ._common import sim_metadata

__all__ = ["netx_to_nir", "NETX_WEIGHT_SCALE", "NETX_DECAY_SCALE"]

NETX_WEIGHT_SCALE = 64  # weights and thresholds are MSB-aligned by << 6
NETX_DECAY_SCALE = 4096  # 12-bit decays


def _scalar(group: h5py.Group, key: str, layer: str) -> Any:
    if key not in group:
        raise ValueError(f"netx layer {layer}: missing {group.name}/{key}")
    v = group[key][()]
    if isinstance(v, bytes):
        return v.decode()
    v = np.asarray(v)
    if v.size != 1:
        raise ValueError(f"netx layer {layer}: {group.name}/{key} must be a scalar, got shape {v.shape}")
    return v.reshape(-1)[0].item()


def _cuba(neuron: h5py.Group, n: int, dt: float, layer: str) -> nir.CubaLIF:
    kind = _scalar(neuron, "type", layer)
    if str(kind).upper() != "CUBA":
        raise ValueError(f"netx layer {layer}: neuron type {kind!r} is not supported (only CUBA)")
    if "gradedSpike" in neuron and bool(_scalar(neuron, "gradedSpike", layer)):
        raise ValueError(f"netx layer {layer}: graded spikes cannot be expressed in NIR")
    if "refDelay" in neuron and int(_scalar(neuron, "refDelay", layer)) > 1:
        raise ValueError(f"netx layer {layer}: refractory delay > 1 cannot be expressed in NIR")
    i_decay = int(_scalar(neuron, "iDecay", layer))
    v_decay = int(_scalar(neuron, "vDecay", layer))
    vth = int(_scalar(neuron, "vThMant", layer))
    for name, d in (("iDecay", i_decay), ("vDecay", v_decay)):
        if not 0 < d <= NETX_DECAY_SCALE:
            raise ValueError(f"netx layer {layer}: {name} = {d} outside 1..4096 (0 = no decay has no finite tau)")
    tau_syn = np.full(n, dt * NETX_DECAY_SCALE / i_decay)
    tau_mem = np.full(n, dt * NETX_DECAY_SCALE / v_decay)
    node = nir.CubaLIF(
        tau_syn=tau_syn,
        tau_mem=tau_mem,
        r=tau_mem / dt,
        v_leak=np.zeros(n),
        v_threshold=np.full(n, vth / NETX_WEIGHT_SCALE),
        v_reset=np.zeros(n),
        w_in=tau_syn / dt,
        metadata={
            "iDecay": np.int64(i_decay), "vDecay": np.int64(v_decay), "vThMant": np.int64(vth),
            "loihi_decay_i": f"({NETX_DECAY_SCALE}-{i_decay})/{NETX_DECAY_SCALE} = 1 - dt/tau_syn",
            "loihi_decay_v": f"({NETX_DECAY_SCALE}-{v_decay})/{NETX_DECAY_SCALE} = 1 - dt/tau_mem",
        },
    )
    return node


def netx_to_nir(path: str | os.PathLike, *, dt: float = 1e-4, encoder: bool = False) -> nir.NIRGraph:
    """Read a lava-dl netx HDF5 network (Dense + CUBA layers) and return the equivalent NIR graph.

    Nodes: ``input [-> encoder IF] -> fc1 Linear -> lif1 CubaLIF -> fc2 -> lif2 ... -> output``.
    """
    path = Path(path)
    dt = float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number, got {dt!r}")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} is not a lava-dl netx file (not HDF5)")
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    with h5py.File(path, "r") as f:
        if "layer" not in f:
            raise ValueError(f"{path}: no /layer group (not a netx network)")
        keys = sorted(f["layer"].keys(), key=lambda k: int(k))
        if not keys:
            raise ValueError(f"{path}: the network has no layers")
        prev, n_in = None, None
        for i, key in enumerate(keys, start=1):
            layer = f["layer"][key]
            kind = _scalar(layer, "type", key) if layer["type"].shape == () else layer["type"][()][0].decode()
            if kind != "dense":
                raise ValueError(f"netx layer {key}: type {kind!r} is not supported (only dense)")
            for unsupported in ("bias", "delay"):
                if unsupported in layer:
                    raise ValueError(f"netx layer {key}: '{unsupported}' is not supported by this converter")
            w = np.asarray(layer["weight"][()])
            if w.ndim != 2:
                raise ValueError(f"netx layer {key}: dense weight must be 2-D, got shape {w.shape}")
            if n_in is not None and w.shape[1] != n_in:
                raise ValueError(f"netx layer {key}: {w.shape[1]} inputs, but the previous layer has {n_in} neurons")
            if n_in is None:
                n_in = w.shape[1]
                nodes["input"] = nir.Input(input_type=np.array([n_in]))
                prev = "input"
                if encoder:
                    nodes["encoder"] = nir.IF(
                        r=np.ones(n_in), v_threshold=np.ones(n_in), v_reset=np.zeros(n_in),
                        metadata={"note": "input rate encoder: v += r*x per step (no dt), spike if v > 1, v = 0"},
                    )
                    edges.append(("input", "encoder"))
                    prev = "encoder"
            weight = (w.astype(np.float32) / np.float32(NETX_WEIGHT_SCALE)).astype(np.float32)
            fc, lif = f"fc{i}", f"lif{i}"
            nodes[fc] = nir.Linear(weight=weight, metadata={
                "netx_layer": np.int64(int(key)), "weight_int_scale": np.int64(NETX_WEIGHT_SCALE),
                "note": f"weight = netx integer weight / {NETX_WEIGHT_SCALE} (exact)",
            })
            nodes[lif] = _cuba(layer["neuron"], w.shape[0], dt, key)
            edges += [(prev, fc), (fc, lif)]
            prev, n_in = lif, w.shape[0]
        nodes["output"] = nir.Output(output_type=np.array([n_in]))
        edges.append((prev, "output"))
    meta = sim_metadata(
        dt, "to_v_reset", source=f"lava-dl netx {path.name}",
        synaptic_delay="Lava netx Dense delays each layer by one step; this graph has instantaneous synapses",
    )
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)
