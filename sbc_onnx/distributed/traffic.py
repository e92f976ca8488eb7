"""What compression moves through Ray's object store, counted from the arrays themselves, and the per-task times.

`nbytes(obj)`: the bytes of every NumPy array in a result (tuples, lists, dicts, dataclasses), what Ray stores
for it out of band (pickle protocol 5 buffers; the small pickled rest is not counted).  `LayerTraffic` is one
layer's record, filled by the driver (what it puts and gets) and by the layer task (what its trace chunks and
nested masked-solve tasks put and got, and every task's seconds); `CompressionReport.distributed` holds them.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import numpy as np


def nbytes(obj: Any) -> int:
    """The bytes of the NumPy arrays in `obj` (recursively through tuples, lists, dicts and dataclasses)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return len(obj)
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


def pickled_bytes(obj: Any) -> int:
    """The size of `obj` as Ray serialises an object of any kind (pickle protocol 5, buffers in band)."""
    return len(pickle.dumps(obj, protocol=5))


def layer_record(info: dict, *, put: dict, result_bytes: int, chunks: int) -> dict:
    """One layer's record: `put` (the driver's puts, by name), the layer task's `info` (tasks.compress_layer_task)
    and the result the driver got back.  Bytes by kind, then totals; per-task seconds as lists."""
    b = {**{f"put_{k}": int(v) for k, v in put.items()}, **info["bytes"], "get_result": int(result_bytes)}
    return {"bytes": b, "put": sum(v for k, v in b.items() if k.startswith("put_")),
            "get": sum(v for k, v in b.items() if k.startswith("get_")), "chunks": chunks,
            "seconds": info["seconds"]}
