"""What a written model file really stores: its size against the dense model written in the same format, and
the bytes each weight tensor takes in it (one place for the compress report and any storage budget).

- weight_storage(path) -> [WeightStorage]       per weight tensor: encoding, dense bytes, stored bytes
- file_sizes(path, dense_graph, cfg=) -> FileSizes   the file against `dense_graph` written the same way
"""

from __future__ import annotations

import copy
import functools
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import nir
import numpy as np

from ..errors import SbcError
from ..graph import flatten
from ..sim.config import SimConfig
from .models import model_format, save_model


@dataclass
class WeightStorage:
    name: str  # flat node name
    encoding: str  # ONNX: dense / int / sparse / sparse-int / index / index-int; NIR: the HDF5 filters
    dense_bytes: int  # the tensor at its dtype, uncompressed
    stored_bytes: int  # what the file holds for it

    @property
    def ratio(self) -> float:
        return self.dense_bytes / max(self.stored_bytes, 1)


@dataclass
class FileSizes:
    path: str
    format: str
    bytes: int  # the written file
    dense_bytes: int  # the dense model written the same way (format, settings, compact encodings)
    weights: list[WeightStorage] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.dense_bytes / max(self.bytes, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}

    def table(self) -> str:
        head = (f"{self.path}: {self.bytes / 1024:.1f} KiB, dense {self.format.upper()} "
                f"{self.dense_bytes / 1024:.1f} KiB, {self.ratio:.2f}x smaller")
        lines = [head, f"  {'weight':<12} {'encoding':<14} {'dense B':>9} {'stored B':>9} {'ratio':>7}"]
        lines += [f"  {w.name:<12} {w.encoding:<14} {w.dense_bytes:>9} {w.stored_bytes:>9} {w.ratio:>6.2f}x"
                  for w in self.weights]
        return "\n".join(lines)


def weight_storage(path: str | os.PathLike) -> list[WeightStorage]:
    """Per weight tensor of the model file at `path`: its encoding, dense and stored bytes."""
    if model_format(path) == "onnx":
        return _onnx_storage(path)
    return _nir_storage(path)


def _onnx_storage(path) -> list[WeightStorage]:
    from .onnx_import import model_to_graph
    from .onnx_io import load_proto  # on first use, as io/models.py
    from .onnx_weights import encoding_kind, stored_bytes

    model = load_proto(path)
    fg = flatten(model_to_graph(model, path))
    out = []
    for n in fg.weight_nodes():
        name = f"{n}.weight"
        out.append(WeightStorage(n, encoding_kind(model.graph.node, name), np.asarray(fg.nodes[n].weight).nbytes,
                                 stored_bytes(model.graph.initializer, name)))
    return out


def _nir_storage(path) -> list[WeightStorage]:
    out = []
    with h5py.File(path, "r") as f:
        def walk(group, prefix):
            for name, sub in group.get("nodes", {}).items():
                if "weight" in sub and isinstance(sub["weight"], h5py.Dataset):
                    d = sub["weight"]
                    filters = "+".join(k for k in ("shuffle", "compression") if getattr(d, k))
                    filters = filters.replace("compression", d.compression or "") or "none"
                    out.append(WeightStorage(prefix + name, filters, int(d.size * d.dtype.itemsize),
                                             int(d.id.get_storage_size())))
                if "nodes" in sub:
                    walk(sub, prefix + name + ".")

        walk(f["node"], "")
    return out


def file_sizes(path: str | os.PathLike, dense_graph: nir.NIRGraph, cfg: SimConfig | None = None, *,
               compact: bool = True) -> FileSizes:
    """The written file at `path` against `dense_graph` (the model before compression) written by the same
    writer: same format, `cfg` and `compact`, so the ratio is what compression gained (a dense model whose
    weights already lie on an integer grid is stored as integers too)."""
    path = Path(path)
    fmt = model_format(path)
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / f"dense.{fmt}"
        save_model(copy.deepcopy(dense_graph), ref, cfg=cfg, compact=compact)  # write_nir edits what it writes
        dense = ref.stat().st_size
    return FileSizes(str(path), fmt, path.stat().st_size, dense, weight_storage(path))


@functools.lru_cache(maxsize=4096)
def onnx_weight_bits(shape: tuple, kept: int, bits: int | None, dtype: str = "float32",
                     node: str | None = None) -> int:
    """Bits of initializer data (as `weight_storage` counts them) that `write_onnx` stores at most for a
    `dtype` weight of `shape` with `kept` nonzero entries on a symmetric per-channel `bits`-bit grid (None:
    float values off any grid), as the weight of flat node `node`; `onnx_tensor_bits` is exact for a given
    tensor.  Found by encoding stand-in tensors of that structure whose codes span the whole grid.  The
    bitmask and dense encodings' sizes depend on the count alone; the relative index's fillers depend on the
    gaps, fewest with the nonzeros first, most with them last (one gap of all the zeros).  The writer keeps
    the encoding of fewest serialized bytes, nodes included (a tensor's nodes and initializer headers are the
    same whatever its values), so whichever it keeps stores at most the fewest serialized bytes of the
    encodings with the nonzeros last less the least header and node bytes among those that can be kept: the
    best count-only one, and each index that beats it with the nonzeros first.  Exact whenever no index can
    win.  Names decide between encodings of a small tensor (its nodes carry them), so give `node`."""
    from .onnx_weights import weight_encodings  # on first use, as the other ONNX helpers

    n = int(np.prod(shape))
    if not 0 <= kept <= n:
        raise ValueError(f"kept must be in [0, {n}], got {kept}")
    tensor = "w" if node is None else f"{node}.weight"  # the writer's name (onnx_export _Builder.param)

    def encodings(at_end: bool):
        w, grid = _stand_in(shape, kept, bits, dtype, at_end)
        return weight_encodings(tensor, w, grid=grid)

    first, last = encodings(False), encodings(True)
    fixed = min((e for e in last if not e.kind.startswith("index")), key=lambda e: e.size())
    index = [(best, worst) for best, worst in zip(first, last)
             if best.kind.startswith("index") and best.size() < fixed.size()]
    if not index:
        return _data_bits(fixed)
    most = min([fixed.size()] + [worst.size() for _, worst in index])
    overhead = min(e.size() - _data_bits(e) // 8 for e in [fixed] + [best for best, _ in index])
    return 8 * (most - overhead)


def _stand_in(shape, kept: int, bits: int | None, dtype: str, at_end: bool) -> tuple:
    """(weight, grid) with `kept` nonzeros, first or last in flat order, whose codes span the whole grid."""
    n = int(np.prod(shape))
    where = slice(n - kept, n) if at_end else slice(0, kept)
    if bits is None:
        flat = np.zeros(n, dtype)
        flat[where] = np.pi * (1 + np.arange(kept) / max(n, 1))
        return flat.reshape(shape), None
    top = 2 ** (bits - 1)
    codes = np.zeros(n, np.int64)
    codes[where] = np.where(np.arange(kept) % 2, top - 1, -top)  # both ends of the grid
    scale = np.full(int(shape[0]) if len(shape) else 1, 2.0**-bits, np.float32)
    q = codes.reshape(shape)
    w = (q.astype(np.float32) * scale.reshape((-1,) + (1,) * (len(shape) - 1))).astype(dtype)
    return w, (q, scale, None)


def _data_bits(enc) -> int:
    return 8 * sum(len(t.raw_data) if t.raw_data else t.ByteSize() for t in enc.inits)


def onnx_tensor_bits(w: np.ndarray, grid: tuple | None, node: str | None = None) -> int:
    """Bits of initializer data (as `weight_storage` counts them) that `write_onnx` stores for the weight `w`
    of flat node `node` with integer grid `grid` = (codes, scale, zero point) as the compression reports it
    (None: none given; the writer then looks for one itself)."""
    from .onnx_weights import encode_weight  # on first use, as the other ONNX helpers

    tensor = "w" if node is None else f"{node}.weight"  # the writer's name (onnx_export _Builder.param)
    return _data_bits(encode_weight(tensor, np.asarray(w), grid=grid))


class OnnxStorage:
    """The storage model of a memory budget for ONNX output: called as (shape, kept, bits, dtype, node) it
    bounds a layer's bits by its nonzero count (`onnx_weight_bits`: exact for every encoding but the
    relative index); `exact(w, grid, node)` measures a given compressed weight (`onnx_tensor_bits`)."""

    def __call__(self, shape: tuple, kept: int, bits: int | None, dtype: str = "float32",
                 node: str | None = None) -> int:
        return onnx_weight_bits(tuple(shape), int(kept), bits, dtype, node)

    @staticmethod
    def exact(w: np.ndarray, grid: tuple | None, node: str | None = None) -> int:
        return onnx_tensor_bits(w, grid, node)


def storage_model(path: str | os.PathLike):
    """The storage model of a memory budget for an output written to `path` (`OnnxStorage`).  Only ONNX has
    one: a NIR file's gzip compression depends on the values, and is known only once written."""
    if model_format(path) != "onnx":
        raise SbcError(f"{path}: a memory budget counts the weight storage of an ONNX file; NIR files are "
                       "gzip-compressed, so their size is known only once written: write .onnx")
    return OnnxStorage()
