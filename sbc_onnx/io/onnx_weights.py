"""How a weight tensor `n.weight` is stored in an ONNX file of the convention (docs/onnx_convention.md,
"Compact weights"), and how those encodings are read back and measured.

Six encodings, all rebuilt by standard operators outside the Scan, so onnxruntime folds them once:
- `dense`: the initializer itself;
- `int`: `DequantizeLinear(q, scale[, zero_point], axis=0)` with q INT4/UINT4/INT8/UINT8/INT16;
- `sparse`: a packed bitmask of the stored elements and their values; the dense tensor is
  `Gather(Concat([0], values), CumSum(bits) * bits)` reshaped;
- `sparse-int`: the same with the nonzero integer codes, then `DequantizeLinear`;
- `index`, `index-int`: the stored elements' relative indices (UINT4 or UINT8: how many elements each one
  skips, with zero-valued fillers bridging wider gaps, Deep Compression's scheme) and their values or codes;
  the dense tensor is `ScatterElements(zeros, CumSum(skips + 1) - 1, values)` reshaped.  Cheaper than the
  bitmask when few elements are stored (a 4-bit index costs about 4 bits a stored element, the bitmask one bit
  an element).
`encode_weight` keeps the smallest encoding that gives back the graph's tensor bit for bit (the `int` ones
only when they do, or within `_int_tolerance` when integer weights were asked for explicitly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from ..compress.grids import infer_grid
from ..errors import SbcError
from .onnx_common import dequantize

Grid = tuple[np.ndarray, np.ndarray, Any]  # (integer codes shaped like w, scale per channel or scalar, zero|None)

# the integer storage types, smallest first: (ONNX type, range, NumPy type the values are held in)
_INT_TYPES = ((TensorProto.INT4, (-8, 7), ml_dtypes.int4), (TensorProto.UINT4, (0, 15), ml_dtypes.uint4),
              (TensorProto.INT8, (-128, 127), np.int8), (TensorProto.UINT8, (0, 255), np.uint8),
              (TensorProto.INT16, (-32768, 32767), np.int16))


# the relative-index types, narrowest first: (bits, NumPy type); a stored element skips at most 2^bits - 1
_INDEX_TYPES = ((4, ml_dtypes.uint4), (8, np.uint8))


@dataclass
class Encoding:
    """The nodes (in order) and initializers that produce tensor `name`."""
    name: str
    kind: str
    nodes: list[NodeProto] = field(default_factory=list)
    inits: list[TensorProto] = field(default_factory=list)

    def size(self) -> int:
        """Serialized bytes of the encoding (what it adds to the file)."""
        return sum(t.ByteSize() for t in self.inits) + sum(n.ByteSize() for n in self.nodes)


def owns(name: str, tensor: str) -> bool:
    """Whether `tensor` (a node output or initializer name) belongs to the encoding of parameter `name`."""
    return tensor == name or tensor.startswith(name + "/")


def encode_weight(name: str, w: np.ndarray, *, grid: Grid | None = None, compact: bool = True,
                  int_weights: bool = False) -> Encoding:
    """The encoding of weight tensor `name` = `w`. `compact`: the smallest exact one (a grid is inferred
    when none is given). `int_weights`: integer storage whenever `grid` (or an inferred one) fits, within
    the tolerance `write_onnx` documents; SbcError when a given grid is unusable."""
    return min(weight_encodings(name, w, grid=grid, compact=compact, int_weights=int_weights), key=Encoding.size)


def weight_encodings(name: str, w: np.ndarray, *, grid: Grid | None = None, compact: bool = True,
                     int_weights: bool = False) -> list[Encoding]:
    """Every encoding `encode_weight` chooses from (the same arguments)."""
    w = np.ascontiguousarray(w)
    negz = (w == 0) & np.signbit(w) if w.dtype.kind == "f" else np.zeros(w.shape, bool)
    # pruning leaves -0.0 where a negative weight was zeroed: encode +0.0 there, then put the signs back
    w0 = np.where(negz, np.zeros((), w.dtype), w) if negz.any() else w
    out = name + "/unsigned" if negz.any() else name
    given = grid is not None
    if grid is None and (compact or int_weights):
        grid = infer_grid(w0)
    codes = None if grid is None else _int_codes(name, w0, grid, strict=int_weights and given)
    if codes is not None and not int_weights and not _same_bits(dequantize(*codes), w0):
        codes = None  # a compact file gives back the graph's weights bit for bit
    candidates = [] if codes is not None and int_weights else [_dense(name, w)]
    if codes is not None and (int_weights or compact):  # int_weights: integer encodings only
        candidates.append(_int(name, *codes, out=out))
    if compact and not (codes is not None and int_weights):
        candidates.append(_sparse(name, w0, out))
    if compact and codes is not None and codes[2] is None:
        candidates.append(_sparse_int(name, *codes, out=out))
    if compact:
        if not (codes is not None and int_weights):
            candidates += [_index(name, w0, width, out) for width, _ in _INDEX_TYPES]
        if codes is not None and codes[2] is None:
            candidates += [_index_int(name, *codes, width, out=out) for width, _ in _INDEX_TYPES]
    for enc in candidates:
        if enc.kind != "dense" and negz.any():
            _restore_negative_zeros(enc, name, negz, w.dtype)
    return candidates


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _int_tolerance(w: np.ndarray) -> float:
    return 1e-5 * max(float(np.abs(w.astype(np.float32)).max(initial=0.0)), 1e-30)


def _int_codes(name: str, w: np.ndarray, grid: Grid, strict: bool):
    """(codes int64, scale float32 [C] or [], zero point or None) of a usable grid; None (or SbcError when
    `strict`) otherwise."""
    def bad(msg):
        if strict:
            raise SbcError(f"{name}: {msg}")

    q, scale, zero = np.asarray(grid[0]), np.asarray(grid[1], dtype=np.float32).reshape(-1), grid[2]
    if w.dtype != np.float32:
        return bad(f"integer weights need float32 weights in the graph, not {w.dtype}")
    if q.shape != w.shape:
        return bad(f"integer weights have shape {q.shape}, the graph's {w.shape}")
    if np.any(q != np.round(q)):
        return bad("integer weights are not integers")
    if scale.size not in (1, w.shape[0]) or not np.all(scale > 0):
        return bad(f"scale must be positive, one per output channel ({w.shape[0]}) or one")
    zp = None if zero is None else np.broadcast_to(np.asarray(zero).reshape(-1), scale.shape).astype(np.int64)
    if zp is not None and np.all(zp == 0):
        zp = None
    qi = q.astype(np.int64)
    if _int_type(qi, zp) is None:
        lo, hi = int(qi.min(initial=0)), int(qi.max(initial=0))
        return bad(f"integer weights range {lo}..{hi} does not fit 16 bits")
    err = np.abs(dequantize(qi, scale, zp) - w).max(initial=0.0)
    if err > _int_tolerance(w):
        return bad(f"the integer grid does not reproduce the graph's weights (max difference {err:.3g})")
    return qi, (scale if scale.size > 1 else scale.reshape(())), zp


def _int_type(q: np.ndarray, zp) -> tuple | None:
    lo, hi = int(q.min(initial=0)), int(q.max(initial=0))
    if zp is not None:
        lo, hi = min(lo, int(zp.min())), max(hi, int(zp.max()))
    return next((t for t in _INT_TYPES if t[1][0] <= lo and hi <= t[1][1]), None)


def _dense(name: str, w: np.ndarray) -> Encoding:
    return Encoding(name, "dense", inits=[numpy_helper.from_array(w, name)])


def _int(name: str, q: np.ndarray, scale: np.ndarray, zp, out: str) -> Encoding:
    _, _, npt = _int_type(q, zp)
    enc = Encoding(name, "int", inits=[numpy_helper.from_array(q.astype(npt), name + "/q"),
                                       numpy_helper.from_array(scale, name + "/scale")])
    ins = [name + "/q", name + "/scale"]
    if zp is not None:
        enc.inits.append(numpy_helper.from_array(zp.reshape(scale.shape).astype(npt), name + "/zero_point"))
        ins.append(name + "/zero_point")
    enc.nodes.append(helper.make_node("DequantizeLinear", ins, [out], name=out, axis=0))
    return enc


def _sparse(name: str, w: np.ndarray, out: str) -> Encoding:
    flat = w.reshape(-1)
    keep = flat != 0
    enc = Encoding(name, "sparse")
    values = _init(enc, name + "/values", flat[keep])
    _scatter(enc, name, keep, w.shape, values, flat.dtype, out)
    return enc


def _sparse_int(name: str, q: np.ndarray, scale: np.ndarray, zp, out: str) -> Encoding:
    flat = q.reshape(-1)
    keep = flat != 0
    _, _, npt = _int_type(q, None)
    enc = Encoding(name, "sparse-int")
    codes = _init(enc, name + "/q", flat[keep].astype(npt))
    if npt in (ml_dtypes.int4, ml_dtypes.uint4):  # Gather has no 4-bit kernel: widen the nonzero codes first
        npt = np.int8 if npt is ml_dtypes.int4 else np.uint8
        codes = _node(enc, "Cast", [codes], name + "/q8", to=helper.np_dtype_to_tensor_dtype(np.dtype(npt)))
    _scatter(enc, name, keep, q.shape, codes, np.dtype(npt), name + "/codes")
    scale_name = _init(enc, name + "/scale", scale)
    _node(enc, "DequantizeLinear", [name + "/codes", scale_name], out, axis=0)
    return enc


def _index(name: str, w: np.ndarray, width: int, out: str) -> Encoding:
    flat = w.reshape(-1)
    keep = flat != 0
    enc = Encoding(name, "index")
    skips, slots = index_entries(keep, width)
    values = np.zeros(skips.size, flat.dtype)
    values[slots] = flat[keep]
    _scatter_indexed(enc, name, skips, width, _init(enc, name + "/values", values), w.shape, flat.dtype, out)
    return enc


def _index_int(name: str, q: np.ndarray, scale: np.ndarray, zp, width: int, out: str) -> Encoding:
    flat = q.reshape(-1)
    keep = flat != 0
    _, _, npt = _int_type(q, None)
    enc = Encoding(name, "index-int")
    skips, slots = index_entries(keep, width)
    codes = np.zeros(skips.size, np.int64)
    codes[slots] = flat[keep]
    codes = _init(enc, name + "/q", codes.astype(npt))
    if npt in (ml_dtypes.int4, ml_dtypes.uint4):  # ScatterElements has no 4-bit kernel: widen the codes first
        npt = np.int8 if npt is ml_dtypes.int4 else np.uint8
        codes = _node(enc, "Cast", [codes], name + "/q8", to=helper.np_dtype_to_tensor_dtype(np.dtype(npt)))
    _scatter_indexed(enc, name, skips, width, codes, q.shape, np.dtype(npt), name + "/codes")
    scale_name = _init(enc, name + "/scale", scale)
    _node(enc, "DequantizeLinear", [name + "/codes", scale_name], out, axis=0)
    return enc


def index_entries(keep: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The relative index of the True elements of flat `keep`: (skips, slots).  Entry j lies skips[j] elements
    after entry j-1 (entry -1 at position -1); a gap of more than 2^width - 1 elements is bridged by filler
    entries (value 0) that each skip 2^width - 1 and take the element after; slots[k] is the entry of the k-th
    True element.  The eager loop, for reading: for each kept element with g elements skipped since the last
    entry, emit (2^width - 1) fillers while g >= 2^width, g -= 2^width; then emit g."""
    pos = np.flatnonzero(keep)
    gaps = np.diff(pos, prepend=-1) - 1
    fill = gaps >> width  # fillers before each kept element
    slots = np.cumsum(fill + 1) - 1
    skips = np.full(int(slots[-1]) + 1 if slots.size else 0, (1 << width) - 1, np.int64)
    skips[slots] = gaps - (fill << width)
    return skips, slots


def _scatter_indexed(enc: Encoding, name: str, skips: np.ndarray, width: int, values: str, shape, dtype,
                     out: str) -> None:
    """Nodes giving `out` (shape `shape`): `values` (one per index entry) at the entries' flat positions
    CumSum(skips + 1) - 1, zeros elsewhere; the skips stored as the `width`-bit unsigned index."""
    p = name + "/"
    npt = dict(_INDEX_TYPES)[width]
    idx = _node(enc, "Cast", [_init(enc, p + "index", skips.astype(npt))], p + "skips", to=TensorProto.INT64)
    one = _init(enc, p + "one", np.array(1, np.int64))
    steps = _node(enc, "Add", [idx, one], p + "steps")
    ends = _node(enc, "CumSum", [steps, _init(enc, p + "axis0", np.array(0, np.int64))], p + "ends")
    pos = _node(enc, "Sub", [ends, one], p + "positions")
    zero = helper.make_tensor(p + "zero", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [1], [0])
    zeros = _node(enc, "ConstantOfShape", [_init(enc, p + "size", np.array([int(np.prod(shape))], np.int64))],
                  p + "zeros", value=zero)
    flat = _node(enc, "ScatterElements", [zeros, pos, values], p + "dense_flat", axis=0)
    _node(enc, "Reshape", [flat, _init(enc, p + "shape", np.array(shape, np.int64))], out)


def _init(enc: Encoding, tname: str, value) -> str:
    value = np.asarray(value)
    enc.inits.append(numpy_helper.from_array(value if value.ndim == 0 else np.ascontiguousarray(value), tname))
    return tname


def _node(enc: Encoding, op: str, inputs: list[str], output: str, **attrs) -> str:
    enc.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
    return output


def _unpack(enc: Encoding, mask_name: str, bits: np.ndarray, to: int, out: str) -> str:
    """Store boolean `bits` packed as initializer `mask_name`, a column [ceil(N/8), 1] of bytes (bit j of byte
    i is element 8i + j: np.packbits, little bit order), and unpack it to `out` = the N flat bits, type `to`."""
    mask = _init(enc, mask_name, np.packbits(bits.reshape(-1), bitorder="little").reshape(-1, 1))
    p = mask_name + "_"
    shifted = _node(enc, "BitShift", [mask, _init(enc, p + "shifts", np.arange(8, dtype=np.uint8))],
                    p + "shifted", direction="RIGHT")
    bit = _node(enc, "BitwiseAnd", [shifted, _init(enc, p + "one", np.array(1, np.uint8))], p + "bits")
    flat = _node(enc, "Reshape", [bit, _init(enc, p + "flat", np.array([-1], np.int64))], p + "flat_bits")
    if bits.size % 8:  # drop the padding bits of the last byte
        flat = _node(enc, "Slice", [flat, _init(enc, p + "start", np.array([0], np.int64)),
                                    _init(enc, p + "size", np.array([bits.size], np.int64))], p + "n")
    return _node(enc, "Cast", [flat], out, to=to)


def _restore_negative_zeros(enc: Encoding, name: str, negz: np.ndarray, dtype) -> None:
    """`name` = Where(negative-zero mask, -0.0, `name/unsigned`)."""
    where = _unpack(enc, name + "/negative_zeros", negz, TensorProto.BOOL, name + "/is_negative_zero")
    flat = _node(enc, "Reshape", [where, _init(enc, name + "/negative_zeros_shape", np.array(negz.shape, np.int64))],
                 name + "/negative_zero_mask")
    _node(enc, "Where", [flat, _init(enc, name + "/minus_zero", np.array(-0.0, dtype)), name + "/unsigned"], name)


def _scatter(enc: Encoding, name: str, keep: np.ndarray, shape, values: str, dtype: np.dtype, out: str) -> None:
    """Nodes giving `out` (shape `shape`): the kept elements (flat order) take `values` in order, the others
    0. The mask is stored packed: bit j of byte i is element 8i + j (np.packbits, little bit order)."""
    p = name + "/"
    bits = _unpack(enc, p + "mask", keep, TensorProto.INT64, p + "keep")
    rank = _node(enc, "CumSum", [bits, _init(enc, p + "axis0", np.array(0, np.int64))], p + "rank")
    pos = _node(enc, "Mul", [rank, bits], p + "pos")  # 0 for a dropped element, else 1 + its index in values
    padded = _node(enc, "Concat", [_init(enc, p + "zero", np.zeros(1, dtype)), values], p + "padded", axis=0)
    dense = _node(enc, "Gather", [padded, pos], p + "dense_flat", axis=0)
    _node(enc, "Reshape", [dense, _init(enc, p + "shape", np.array(shape, np.int64))], out)


# ---- reading back -----------------------------------------------------------------------------------------
DECODE_OPS: dict[str, Callable[..., np.ndarray]] = {
    "BitShift": lambda n, x, s: (np.right_shift if _attr(n, "direction") == "RIGHT" else np.left_shift)(x, s),
    "BitwiseAnd": lambda n, a, b: np.bitwise_and(a, b),
    "Reshape": lambda n, x, shape: x.reshape(tuple(int(s) for s in shape)),
    "Slice": lambda n, x, start, end: x[int(start[0]):int(end[0])],
    "Cast": lambda n, x: x.astype(helper.tensor_dtype_to_np_dtype(_attr(n, "to"))),
    "CumSum": lambda n, x, axis: np.cumsum(x, axis=int(axis)),
    "Mul": lambda n, a, b: a * b,
    "Add": lambda n, a, b: a + b,
    "Sub": lambda n, a, b: a - b,
    "ConstantOfShape": lambda n, shape: np.full(tuple(int(s) for s in shape), numpy_helper.to_array(
        _attr(n, "value")).reshape(-1)[0]),
    "ScatterElements": lambda n, x, i, u: _scatter_axis0(n, x, i, u),
    "Concat": lambda n, *xs: np.concatenate(xs, axis=_attr(n, "axis")),
    "Gather": lambda n, x, i: np.take(x, i, axis=_attr(n, "axis") or 0),
    "Where": lambda n, c, x, y: np.where(c, x, y),
    "Expand": lambda n, x, shape: np.broadcast_to(x, tuple(int(s) for s in shape)).copy(),
    "DequantizeLinear": lambda n, q, s, z=None: _dequantize_axis0(n, q, s, z),
}


def _attr(n: NodeProto, key: str):
    v = next((helper.get_attribute_value(a) for a in n.attribute if a.name == key), None)
    return v.decode() if isinstance(v, bytes) else v


def _scatter_axis0(n: NodeProto, x, i, u) -> np.ndarray:
    if (_attr(n, "axis") or 0) != 0 or x.ndim != 1 or _attr(n, "reduction") not in (None, "none"):
        raise SbcError(f"tensor {n.output[0]!r}: ScatterElements must scatter along axis 0 of a flat tensor")
    out = x.copy()
    out[i] = u
    return out


def _dequantize_axis0(n: NodeProto, q, scale, zero) -> np.ndarray:
    axis = _attr(n, "axis")
    if (1 if axis is None else axis) != 0:
        raise SbcError(f"tensor {n.output[0]!r}: DequantizeLinear must use axis 0 in this convention")
    return dequantize(q, scale, zero)


def decode_node(n: NodeProto, args: list[np.ndarray]) -> np.ndarray:
    """NumPy value of one parameter-preparation node of the convention (the ops `encode_weight` writes)."""
    if n.op_type not in DECODE_OPS:
        raise SbcError(f"parameter tensor {n.output[0]!r} is produced by {n.op_type}; the convention stores "
                       "parameters as initializers, Expand(value, shape), DequantizeLinear or the compact weight "
                       "encodings")
    return DECODE_OPS[n.op_type](n, *args)


# ---- sizes ------------------------------------------------------------------------------------------------
def stored_bytes(inits, name: str) -> int:
    """Bytes of tensor data the file stores for parameter `name` (its initializers, as serialized)."""
    return sum(len(t.raw_data) if t.raw_data else t.ByteSize() for t in inits if owns(name, t.name))


def encoding_kind(nodes, name: str) -> str:
    ops = {n.op_type for n in nodes if any(owns(name, o) for o in n.output)}
    sparse = "sparse" if "Gather" in ops else "index" if "ScatterElements" in ops else ""
    if "DequantizeLinear" in ops:
        return f"{sparse}-int" if sparse else "int"
    return sparse or "dense"
