"""Write NIR files that consumers pinned to nir <= 1.0.4 can read (sinabs 3.1.x, Rockpool 3.1.x).

nir >= 1.0.5 always writes ``v_reset`` for LIF / IF / CubaLIF; nir <= 1.0.4 builds every node with
``cls(**fields)`` and fails on it ("LIF.__init__() got an unexpected keyword argument 'v_reset'"). It fails
the same way on a ``metadata`` group under the node types whose 1.0.4 dataclasses have no metadata field
(Input, Output, Linear, Conv2d, Scale, AvgPool2d), and it has no CubaLI at all.

`write_nir_legacy` writes the nir 1.0.4 HDF5 layout:
- ``v_reset`` is omitted when it is all zero (1.0.4 resets to 0; nir 1.0.8 reads the file back with
  v_reset = 0, so the graph is unchanged); a non-zero v_reset cannot be expressed and raises ValueError;
- node metadata is dropped (with a warning) where nir 1.0.4 has no such field; graph metadata is kept;
- CubaLI and any field nir 1.0.4 does not know raise ValueError instead of writing an unreadable file.
The layout mirrors nir 1.0.4's own writer: /version, /node/type, /node/edges, /node/nodes/<name>/<field>.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..io.atomic import write_atomic

__all__ = ["write_nir_legacy", "LEGACY_VERSION", "LEGACY_FIELDS"]

LEGACY_VERSION = "1.0.4"

# Serialized fields per node type in nir 1.0.4 (its dataclass fields minus input_type/output_type, which
# NIRNode.to_dict drops, except Flatten, which stores input_type; Input/Output store "shape").
LEGACY_FIELDS: dict[str, set[str]] = {
    "Affine": {"weight", "bias", "metadata"},
    "AvgPool2d": {"kernel_size", "stride", "padding"},
    "Conv1d": {"input_shape", "weight", "stride", "padding", "dilation", "groups", "bias", "metadata"},
    "Conv2d": {"input_shape", "weight", "stride", "padding", "dilation", "groups", "bias"},
    "CubaLIF": {"tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "w_in", "metadata"},
    "Delay": {"delay", "metadata"},
    "Flatten": {"input_type", "start_dim", "end_dim", "metadata"},
    "I": {"r", "metadata"},
    "IF": {"r", "v_threshold", "metadata"},
    "Input": {"shape"},
    "LI": {"tau", "r", "v_leak", "metadata"},
    "LIF": {"tau", "r", "v_leak", "v_threshold", "metadata"},
    "Linear": {"weight"},
    "NIRGraph": {"nodes", "edges", "metadata"},
    "Output": {"shape"},
    "Scale": {"scale"},
    "SumPool2d": {"kernel_size", "stride", "padding", "metadata"},
    "Threshold": {"threshold", "metadata"},
}


def _legacy_dict(d: dict[str, Any], path: str, dropped: list[str]) -> dict[str, Any]:
    kind = d["type"]
    if kind not in LEGACY_FIELDS:
        raise ValueError(f"node {path or '<graph>'!r}: NIR {kind} does not exist in nir <= {LEGACY_VERSION}")
    allowed = LEGACY_FIELDS[kind]
    out: dict[str, Any] = {"type": kind}
    for key, value in d.items():
        if key == "type":
            continue
        if key == "v_reset":
            if value is not None and np.any(np.asarray(value) != 0):
                raise ValueError(
                    f"node {path!r}: v_reset != 0 cannot be written for nir <= {LEGACY_VERSION} (it always "
                    "resets to 0)"
                )
            continue
        if key == "metadata":
            if value:
                if "metadata" in allowed:
                    out[key] = value
                else:
                    dropped.append(path)
            continue
        if key == "nodes":
            prefix = f"{path}." if path else ""
            out[key] = {name: _legacy_dict(sub, prefix + name, dropped) for name, sub in value.items()}
            continue
        if key not in allowed:
            raise ValueError(f"node {path or '<graph>'!r}: field {key!r} of {kind} is unknown to nir <= "
                             f"{LEGACY_VERSION}")
        if value is None:
            raise ValueError(f"node {path!r}: field {key!r} of {kind} is undefined (run graph.infer_types())")
        out[key] = value
    return out


def _write_group(group: h5py.Group, d: dict[str, Any]) -> None:
    for key, value in d.items():
        if key == "edges":
            edges = np.array([[str(a), str(b)] for a, b in value], dtype=object).reshape(-1, 2)
            group.create_dataset(key, data=edges, dtype=h5py.string_dtype())
        elif isinstance(value, dict):
            _write_group(group.create_group(str(key)), value)
        elif isinstance(value, str):
            group.create_dataset(key, data=value, dtype=h5py.string_dtype())
        else:
            arr = np.asarray(value)
            if arr.dtype.kind in "OU":
                group.create_dataset(key, data=arr.astype(object), dtype=h5py.string_dtype())
            elif arr.ndim > 0 and arr.size > 1:
                group.create_dataset(key, data=arr, compression="gzip")
            else:
                group.create_dataset(key, data=arr)


def write_nir_legacy(graph, path: str | os.PathLike) -> Path:
    """Write `graph` (nir.NIRGraph, nir >= 1.0.5 in memory) atomically as a file nir <= 1.0.4 can `nir.read`.

    Returns the path. Raises ValueError for what the old format cannot express (non-zero v_reset, CubaLI),
    before any file is touched.
    """
    dropped: list[str] = []
    d = _legacy_dict(graph.to_dict(), "", dropped)
    if dropped:
        warnings.warn(
            f"nir <= {LEGACY_VERSION} has no metadata on these nodes; dropped: {', '.join(dropped)}",
            stacklevel=2,
        )

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("version", data=LEGACY_VERSION, dtype=h5py.string_dtype())
            _write_group(f.create_group("node"), d)

    return write_atomic(path, write)
