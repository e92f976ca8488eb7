"""Framework-neutral datasets for calibration and evaluation: one ``.npz`` format, N-MNIST / tonic / MNIST loaders.

Dataset file format (``.npz``, written with ``np.savez_compressed``, read with ``allow_pickle=False``)
----------------------------------------------------------------------------------------------------

=================  ==========================  ==================================================================
key                shape / type                meaning
=================  ==========================  ==================================================================
``x``  (required)  ``(N, T, *input_shape)``    Input per sample and time step. Stored compactly: event counts or
                                               spikes as the smallest unsigned integer dtype that holds the
                                               maximum (``bool`` or ``uint8`` for 0/1 spikes, ``uint8`` for
                                               counts <= 255, ``uint16`` ...). Signed integers and floats are
                                               accepted as well (values are used as they are).
``y``  (required)  ``(N,)`` integer            Class label per sample.
``lengths``        ``(N,)`` integer            True number of time steps of each sample. Samples of different
                                               length are padded at the END with all-zero frames up to T;
                                               ``0 <= lengths[i] <= T``. Absent: every sample has T steps.
``x_scale``        0-d float                   The input value is ``x * x_scale`` (e.g. ``1/255`` for 8-bit
                                               pixels). When ``1/x_scale`` is an integer d the value is computed
                                               as ``x / d`` in float64, so pixels decode to exactly ``pixel/255``.
                                               Absent: scale 1.
``repeat_steps``   0-d integer >= 1            Static input: ``x`` holds a single frame (T = 1 in the file) that
                                               is presented unchanged for ``repeat_steps`` time steps; the
                                               dataset's T is then ``repeat_steps``.
``ids``            ``(N,)`` str or integer     Sample identifiers (N-MNIST file names without ``.bs2``, MNIST
                                               test-set indices ...).
``meta``           0-d str (JSON object)       Provenance: source, encoding, seed, time window, ...
=================  ==========================  ==================================================================

Axes: ``x[i, t]`` is the input of sample i at step t with the network's input shape (NIR shapes, which
exclude batch and time), e.g. ``(2, 34, 34)`` = (polarity, y, x) for N-MNIST or ``(1, 28, 28)`` /
``(784,)`` for MNIST. Unknown keys are ignored on load. Object arrays (pickles) are never written or read.

Simulators take time-major float batches: ``Dataset.batches(B)`` yields ``(x_tb, y_b)`` with ``x_tb`` of
shape ``(T, B, *input_shape)`` (float32 by default), converted batch by batch from the compact storage
(scale applied, static frames repeated, padding kept as zero frames); with ``per_step=True`` ``x_tb`` is a
`StepBatch` that converts one step when indexed. A dataset read by `load_dataset` keeps ``x`` on disk
(``io.npz_rows.NpzRows``): only the rows of the batch being used are read, so memory does not grow with N.

Encodings produced by the loaders (these reproduce the accuracies in shared/data/PROVENANCE.md)
- N-MNIST (``load_nmnist``): the recordings are read by tonic (``tonic.io.read_mnist_file``: 5-byte events,
  x, y, polarity bit 7 of byte 2, 23-bit microsecond timestamp; overflow markers y == 240 add 2**13 us to
  all later timestamps and are dropped) and binned by tonic ``ToFrame(sensor_size=(34, 34, 2),
  time_window=W)``: bin k covers ``[t0 + k W, t0 + (k+1) W)`` with t0 the sample's first timestamp, the
  number of bins is ``max(1, floor((t_last - t0) / W))`` so the last incomplete bin is DROPPED; frames hold
  event counts (not clipped) at ``[polarity, y, x]``.
- Any tonic dataset on disk (``load_tonic``: NMNIST, DVSGesture, SHD, ...): tonic's reader, then tonic
  ``ToFrame`` with the dataset's sensor size and one of time window / event count / number of time bins;
  frames ``(polarity, y, x)``, or ``(polarity, x)`` for a 1-D sensor (SHD). ``load_tonic("NMNIST", ...)``
  and ``load_nmnist`` store the same arrays for the same recordings in the same order.
- MNIST Bernoulli rate code (``load_mnist(encoding="bernoulli")``): ``rng = np.random.default_rng(seed)``
  created once, then for each selected image in order ``x = rng.random((steps, *shape)) < pixel / 255``;
  stored as bool. With ``start > 0`` the generator starts fresh at the first selected image (image
  ``start`` gets the draws image 0 gets with ``start = 0``).
- MNIST analog (``encoding="analog"``): ``pixel / 255`` at every step, stored as uint8 pixels with
  ``x_scale = 1/255`` and ``repeat_steps = steps``.
"""

from __future__ import annotations

import gzip
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SbcError, existing_file
from .events import Binning, bin_events, open_tonic, read_nmnist_events, tonic_version
from .io.atomic import write_atomic
from .io.npz_rows import NpzRows, open_rows
from .progress import iterate

__all__ = [
    "NMNIST_SENSOR",
    "Dataset",
    "StepBatch",
    "as_dataset",
    "bin_events",
    "compact_dtype",
    "load_dataset",
    "load_mnist",
    "load_nmnist",
    "load_tonic",
    "read_labels_file",
    "read_nmnist_events",
    "save_dataset",
]

NMNIST_SENSOR = (34, 34)  # (width, height)


# ----------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------


def compact_dtype(a: np.ndarray) -> np.dtype:
    """Smallest dtype that holds ``a`` exactly: bool stays bool; integer (or integral float) values become the
    smallest unsigned integer type (signed if negative); other floats keep their dtype."""
    a = np.asarray(a)
    if a.dtype == np.bool_:
        return np.dtype(np.bool_)
    if a.size == 0:
        return np.dtype(np.uint8) if a.dtype.kind in "iuf" else a.dtype
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            return a.dtype
    elif a.dtype.kind not in "iu":
        return a.dtype
    lo, hi = a.min(), a.max()
    candidates = (np.uint8, np.uint16, np.uint32, np.uint64) if lo >= 0 else (np.int8, np.int16, np.int32, np.int64)
    for dt in candidates:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return a.dtype


def _check_finite(x: np.ndarray | NpzRows) -> None:
    """SbcError if float ``x`` holds NaN/inf. An array on disk is checked a chunk at a time, once (its
    views, e.g. a subset, inherit the result)."""
    if isinstance(x, NpzRows) and x.verified:
        return
    parts = x.chunks() if isinstance(x, NpzRows) else (x,)
    bad = sum(int(c.size - np.count_nonzero(np.isfinite(c))) for c in parts)
    if bad:
        raise SbcError(f"dataset x has {bad} NaN/inf value(s); inputs must be finite")
    if isinstance(x, NpzRows):
        x.verified = True


def _scale_divisor(x_scale: float) -> int | None:
    """The integer d with 1/d == x_scale exactly (so x / d is the exact quotient), else None."""
    if x_scale <= 0:
        return None
    d = round(1.0 / x_scale)
    if d >= 1 and 1.0 / d == x_scale:
        return int(d)
    return None


class Dataset:
    """Samples ``x`` (compact storage, see the module docstring) with labels ``y``.

    Attributes: ``x`` (N, T_file, *input_shape) as stored, ``y`` (N,) int64, ``lengths`` (N,) or None,
    ``x_scale`` float or None, ``repeat_steps`` int or None, ``ids`` (N,) or None, ``meta`` dict.
    Derived: ``n`` (N), ``steps`` (T presented to the network), ``input_shape``.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        lengths: np.ndarray | None = None,
        x_scale: float | None = None,
        repeat_steps: int | None = None,
        ids: np.ndarray | Sequence | None = None,
        meta: dict | None = None,
    ) -> None:
        if not isinstance(x, NpzRows):
            x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim < 2:
            raise SbcError(f"dataset x must have shape (N, T, *input_shape), got shape {x.shape}")
        if x.dtype.kind not in "biuf":
            raise SbcError(f"dataset x must be numeric (bool, int or float), got dtype {x.dtype}")
        if x.dtype.kind == "f":
            _check_finite(x)
        if y.ndim != 1:
            raise SbcError(f"dataset y must have shape (N,), got shape {y.shape}")
        if y.dtype.kind == "f" and y.size and np.array_equal(y, np.round(y)):
            y = y.astype(np.int64)
        if y.dtype.kind not in "iu":
            raise SbcError(f"dataset y must hold integer labels, got dtype {y.dtype}")
        if x.shape[0] != y.shape[0]:
            raise SbcError(f"dataset x has {x.shape[0]} samples but y has {y.shape[0]} labels")
        n = x.shape[0]
        if repeat_steps is not None:
            repeat_steps = int(repeat_steps)
            if repeat_steps < 1:
                raise SbcError(f"dataset repeat_steps must be >= 1, got {repeat_steps}")
            if x.shape[1] != 1:
                raise SbcError(
                    f"dataset with repeat_steps stores one frame per sample (T = 1 in x), got x shape {x.shape}"
                )
        steps = repeat_steps if repeat_steps is not None else x.shape[1]
        if steps == 0:
            raise SbcError(f"dataset has no time steps (T = 0 in x of shape {x.shape})")
        if lengths is not None:
            lengths = np.asarray(lengths)
            if lengths.shape != (n,) or (lengths.size and lengths.dtype.kind not in "iu"):
                raise SbcError(
                    f"dataset lengths must be {n} integers (one per sample), got shape {lengths.shape} "
                    f"dtype {lengths.dtype}"
                )
            lengths = lengths.astype(np.int64)
            if lengths.size and (lengths.min() < 0 or lengths.max() > steps):
                raise SbcError(f"dataset lengths must lie in 0..{steps} (T), got {lengths.min()}..{lengths.max()}")
        if x_scale is not None:
            x_scale = float(x_scale)
            if not np.isfinite(x_scale):
                raise SbcError(f"dataset x_scale must be a finite number, got {x_scale}")
        if ids is not None:
            ids = np.asarray(ids)
            if ids.shape != (n,):
                raise SbcError(f"dataset ids must have shape ({n},), got {ids.shape}")
            if ids.dtype.kind == "O":
                ids = ids.astype(str)
            if ids.dtype.kind not in "iuU":
                raise SbcError(f"dataset ids must be strings or integers, got dtype {ids.dtype}")
        self.x = x
        self.y = y.astype(np.int64, copy=False)
        self.lengths = lengths
        self.x_scale = x_scale
        self.repeat_steps = repeat_steps
        self.ids = ids
        self.meta = dict(meta or {})

    # -- shape ---------------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def steps(self) -> int:
        return int(self.repeat_steps if self.repeat_steps is not None else self.x.shape[1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[2:])

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        extra = []
        if self.repeat_steps is not None:
            extra.append(f"repeat_steps={self.repeat_steps}")
        if self.x_scale is not None:
            extra.append(f"x_scale={self.x_scale:.6g}")
        if self.lengths is not None and self.n:
            extra.append(f"lengths={self.lengths.min()}..{self.lengths.max()}")
        tail = (", " + ", ".join(extra)) if extra else ""
        return f"Dataset(n={self.n}, steps={self.steps}, input_shape={self.input_shape}, dtype={self.x.dtype}{tail})"

    # -- selection -----------------------------------------------------------------------------------------
    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """A new dataset with the samples at ``indices`` (in that order; a bool mask works too)."""
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            if idx.shape != (self.n,):
                raise SbcError(f"subset mask must have shape ({self.n},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise SbcError(f"subset indices must be a 1-D list of integers, got shape {idx.shape} dtype {idx.dtype}")
        if idx.size and (idx.min() < -self.n or idx.max() >= self.n):
            raise SbcError(f"subset index out of range for a dataset of {self.n} samples")
        return Dataset(
            self.x.select(idx) if isinstance(self.x, NpzRows) else self.x[idx],
            self.y[idx],
            lengths=None if self.lengths is None else self.lengths[idx],
            x_scale=self.x_scale,
            repeat_steps=self.repeat_steps,
            ids=None if self.ids is None else self.ids[idx],
            meta=self.meta,
        )

    def take(self, limit: int | None, start: int = 0) -> Dataset:
        """Samples ``start .. start+limit-1`` (``limit=None``: to the end; a limit is >= 1)."""
        if start < 0 or start > self.n:
            raise SbcError(f"start {start} is outside the dataset (0..{self.n})")
        if limit is not None and limit < 1:  # 0 would silently select nothing (or, to a caller, "all")
            raise SbcError(f"limit must be >= 1, got {limit}")
        stop = self.n if limit is None else min(self.n, start + limit)
        return self.subset(np.arange(start, stop))

    def reshaped(self, input_shape: Sequence[int]) -> Dataset:
        """Same samples with another per-step input shape of the same size (e.g. (1, 28, 28) <-> (784,))."""
        shape = tuple(int(s) for s in input_shape)
        if any(s <= 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) != int(np.prod(self.input_shape)):
            raise SbcError(
                f"cannot reshape inputs of shape {self.input_shape} ({int(np.prod(self.input_shape))} values) "
                f"to {shape}"
            )
        x = self.x
        return Dataset(
            x.reshape_rows(x.shape[1:2] + shape) if isinstance(x, NpzRows) else x.reshape(x.shape[:2] + shape),
            self.y,
            lengths=self.lengths,
            x_scale=self.x_scale,
            repeat_steps=self.repeat_steps,
            ids=self.ids,
            meta=self.meta,
        )

    # -- conversion to simulator input ---------------------------------------------------------------------
    def _decode(self, xs: np.ndarray, out: np.ndarray) -> None:
        """Stored values ``xs`` -> input values written into ``out`` (same shape; a scale is applied in
        float64, then cast, one time step at a time)."""
        if self.x_scale is None or self.x_scale == 1.0:
            np.copyto(out, xs, casting="unsafe")  # the values of xs.astype(out.dtype), without a second copy
            return
        d = _scale_divisor(self.x_scale)
        for t in range(xs.shape[0]):
            v = xs[t].astype(np.float64)
            out[t] = v / d if d is not None else v * self.x_scale

    def sample(self, i: int, dtype: Any = np.float32) -> np.ndarray:
        """Input of sample ``i`` as ``(T, *input_shape)`` values (padding included)."""
        return np.asarray(StepBatch(self, self.x[np.array([i])], dtype))[:, 0]

    def batches(
        self, batch_size: int, *, dtype: Any = np.float32, with_lengths: bool = False, per_step: bool = False
    ) -> Iterator[tuple[Any, ...]]:
        """Iterate over the samples in order: ``(x_tb, y_b)`` with ``x_tb`` of shape ``(T, B, *input_shape)``.

        Each batch is read (from disk when ``x`` is there) and converted from the compact storage when it is
        produced: the whole dataset is never held. ``x_tb`` is an ndarray; with ``per_step=True`` it is a
        `StepBatch`, which holds only the stored rows and converts a time step when it is indexed
        (``x_tb[t]``), for consumers that read one step at a time such as the walker. ``with_lengths=True``
        adds a third item, the (B,) true lengths (T if not ragged).
        """
        if int(batch_size) < 1:
            raise SbcError(f"batch size must be >= 1, got {batch_size}")
        batch_size = int(batch_size)
        # Nothing of a batch stays referenced here once it is yielded: the next batch is built while the
        # consumer may still hold this one, and a local would make that three batches.
        for s in range(0, self.n, batch_size):
            idx = np.arange(s, min(self.n, s + batch_size))
            x_tb = StepBatch(self, self.x[idx], dtype)
            if not per_step:
                x_tb = np.asarray(x_tb)
            if with_lengths:
                lens = self.lengths[idx] if self.lengths is not None else np.full(idx.size, self.steps, np.int64)
                yield x_tb, self.y[idx], lens
            else:
                yield x_tb, self.y[idx]
            del x_tb

    def check_labels(self, n_classes: int) -> None:
        """SbcError unless every label is a class of a network with ``n_classes`` outputs (0..n_classes-1)."""
        if self.n and (self.y.min() < 0 or self.y.max() >= n_classes):
            bad = self.y[(self.y < 0) | (self.y >= n_classes)]
            raise SbcError(f"dataset labels must lie in 0..{n_classes - 1} (the network has {n_classes} outputs); "
                           f"found {bad.size} outside, e.g. {int(bad[0])}")

    def label_histogram(self, n_classes: int | None = None) -> np.ndarray:
        if self.n == 0:
            return np.zeros(n_classes or 0, np.int64)
        if self.y.min() < 0:
            raise SbcError("labels must be >= 0 for a histogram")
        return np.bincount(self.y, minlength=n_classes or 0)


class StepBatch:
    """A batch ``(T, B, *input_shape)`` of input values that holds only the stored rows ``(B, T_file, ...)``
    and converts one time step when it is indexed: ``batch[t]`` is a new ``(B, *input_shape)`` array.
    ``np.asarray(batch)`` converts every step at once (the array `Dataset.batches` yields by default)."""

    def __init__(self, ds: Dataset, stored: np.ndarray, dtype: Any) -> None:
        self._ds, self._stored, self.dtype = ds, stored, np.dtype(dtype)
        self.shape = (ds.steps, stored.shape[0]) + tuple(stored.shape[2:])
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, t: Any) -> np.ndarray:
        if not isinstance(t, (int, np.integer)):
            return np.asarray(self)[t]
        steps = self.shape[0]
        if not -steps <= t < steps:
            raise IndexError(f"time step {t} is outside 0..{steps - 1}")
        frame = self._stored[:, 0 if self._ds.repeat_steps is not None else int(t) % steps]
        out = np.empty(frame.shape, self.dtype)
        self._ds._decode(frame[None], out[None])
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        stored = self._stored  # (B, T_file, *shape)
        xt = np.empty((stored.shape[1], stored.shape[0]) + stored.shape[2:], dtype=self.dtype)
        self._ds._decode(np.moveaxis(stored, 1, 0), xt)
        if self._ds.repeat_steps is not None:
            xt = np.ascontiguousarray(np.broadcast_to(xt, self.shape))
        return xt if dtype is None else xt.astype(dtype, copy=False)


# ----------------------------------------------------------------------------------------------------------
# .npz I/O
# ----------------------------------------------------------------------------------------------------------


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read a dataset ``.npz`` (format in the module docstring); raises ``SbcError`` on any bad input.

    ``x`` stays on disk: the returned dataset's ``x`` is an ``io.npz_rows.NpzRows`` whose rows are read
    (decompressed) batch by batch when the data is used, so memory does not grow with the number of samples.
    It is read through once here, without being kept, so that a damaged archive (zip CRC) is refused now.
    The small arrays (``y``, ``lengths``, ``ids``, ...) are read at once."""
    p = existing_file(path, "dataset file")
    if not zipfile.is_zipfile(p):
        raise SbcError(f"{p} is not an .npz dataset (not a zip archive; write it with sbc-onnx data ... or np.savez)")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                raise SbcError(
                    f"{p}: dataset is missing required array(s) {', '.join(missing)} (found: {', '.join(sorted(keys)) or 'none'})"
                )
            x = _x_rows(p, z)
            y = z["y"]
            lengths = z["lengths"] if "lengths" in keys else None
            x_scale = _scalar(z["x_scale"], "x_scale", p, float) if "x_scale" in keys else None
            repeat = _scalar(z["repeat_steps"], "repeat_steps", p, int) if "repeat_steps" in keys else None
            ids = z["ids"] if "ids" in keys else None
            meta = _parse_meta(z["meta"], p) if "meta" in keys else {}
    except SbcError:
        raise
    except ValueError as e:  # e.g. an object array that would need pickle
        raise SbcError(f"{p}: cannot read dataset array ({e})") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise SbcError(f"{p}: cannot read dataset file ({e})") from e
    try:
        return Dataset(x, y, lengths=lengths, x_scale=x_scale, repeat_steps=repeat, ids=ids, meta=meta)
    except SbcError as e:
        raise SbcError(f"{p}: {e}") from None


def _x_rows(p: Path, z: Any) -> NpzRows | np.ndarray:
    """``x`` read lazily from its member (``x.npy``); an array of fewer than 2 axes is read as it is (it is
    refused by `Dataset` with the usual message)."""
    member = "x.npy" if "x.npy" in z.zip.namelist() else "x"
    rows = open_rows(p, member)
    if len(rows.member_shape) < 2:
        return z["x"]
    rows.check_archive()  # every byte decompressed once now (not kept): a damaged file stops before any work
    return rows


def _scalar(a: np.ndarray, name: str, p: Path, kind: type) -> Any:
    if a.size != 1 or a.dtype.kind not in ("iuf" if kind is float else "iu"):
        raise SbcError(f"{p}: '{name}' must be a single {'number' if kind is float else 'integer'}, got {a.dtype} {a.shape}")
    return kind(a.reshape(()))


def _parse_meta(a: np.ndarray, p: Path) -> dict:
    if a.dtype.kind not in "US" or a.size != 1:
        raise SbcError(f"{p}: 'meta' must be a JSON string, got {a.dtype} {a.shape}")
    s = a.reshape(()).item()
    if isinstance(s, bytes):
        s = s.decode("utf-8")
    try:
        meta = json.loads(s) if s else {}
    except json.JSONDecodeError as e:
        raise SbcError(f"{p}: 'meta' is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise SbcError(f"{p}: 'meta' must be a JSON object, got {type(meta).__name__}")
    return meta


def save_dataset(ds: Dataset, path: str | os.PathLike, *, compact: bool = True) -> Path:
    """Write ``ds`` as a compressed ``.npz`` at exactly ``path`` (parent folders are created).

    With ``compact`` (default) integer-valued ``x`` is stored in the smallest dtype that holds it
    (see ``compact_dtype``). Returns the path written.
    """
    p = Path(path)
    x = ds.x
    if compact:
        dt = compact_dtype(x)
        if dt != x.dtype:
            x = x.astype(dt)
    arrays: dict[str, np.ndarray] = {"x": x, "y": ds.y.astype(compact_dtype(ds.y) if ds.n else np.int64)}
    if arrays["y"].dtype.kind not in "iu":
        arrays["y"] = ds.y.astype(np.int64)
    if ds.lengths is not None:
        arrays["lengths"] = ds.lengths.astype(compact_dtype(ds.lengths) if ds.n else np.int64)
    if ds.x_scale is not None:
        arrays["x_scale"] = np.array(ds.x_scale, np.float64)
    if ds.repeat_steps is not None:
        arrays["repeat_steps"] = np.array(ds.repeat_steps, np.int64)
    if ds.ids is not None:
        arrays["ids"] = ds.ids
    arrays["meta"] = np.array(json.dumps(ds.meta, sort_keys=True, default=_json_default))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SbcError(f"cannot write dataset to {p}: {e}") from e

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a path, savez would append ".npz" to it
            np.savez_compressed(f, **arrays)

    return write_atomic(p, write)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"meta value of type {type(o).__name__} is not JSON serialisable")


# ----------------------------------------------------------------------------------------------------------
# N-MNIST
# ----------------------------------------------------------------------------------------------------------


def read_labels_file(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Parse an N-MNIST/SLAYER label file: ``#sample #class`` header, then ``<id><TAB><class>`` rows (CRLF or
    LF). Lines starting with ``#`` and blank lines are skipped. Returns (ids, labels)."""
    p = Path(path)
    if not p.is_file():
        raise SbcError(f"labels file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SbcError(f"labels file {p} is not a text file ({e})") from e
    ids: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if len(parts) != 2:
            raise SbcError(
                f"labels file {p}, line {lineno}: expected '<sample id><TAB><class>', got {line.strip()!r}"
            )
        try:
            lab = int(parts[1])
        except ValueError:
            raise SbcError(f"labels file {p}, line {lineno}: class {parts[1]!r} is not an integer") from None
        if lab < 0:
            raise SbcError(f"labels file {p}, line {lineno}: class {lab} is negative")
        ids.append(parts[0])
        labels.append(lab)
    if not ids:
        raise SbcError(f"labels file {p} lists no samples (expected '#sample #class' then '<id><TAB><class>' rows)")
    dup = len(ids) - len(set(ids))
    if dup:
        raise SbcError(f"labels file {p} lists {dup} sample id(s) more than once")
    return ids, np.array(labels, np.int64)


def _pack_frames(frames: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-sample frame stacks ``(T_i, *shape)`` -> ``x`` of shape ``(N, max T_i, *shape)`` zero-padded at the
    end, in the smallest dtype that holds the counts, the lengths ``T_i`` and the sum of all counts.

    Samples are kept sparse (flat indices and counts of the nonzero entries) until the padded array is
    allocated, so only one dense frame stack exists at a time besides ``x``.
    """
    sparse: list[tuple[np.ndarray, np.ndarray]] = []
    lengths: list[int] = []
    shape: tuple[int, ...] | None = None
    max_count = kept = 0
    for i, fr in enumerate(frames):
        if shape is None:
            shape = fr.shape[1:]
        elif fr.shape[1:] != shape:
            raise SbcError(f"sample {i} has frames of shape {fr.shape[1:]}, the first sample {shape}")
        flat = fr.reshape(-1)
        idx = np.flatnonzero(flat)
        vals = flat[idx].astype(np.int64)
        sparse.append((idx, vals))
        lengths.append(fr.shape[0])
        kept += int(vals.sum())
        max_count = max(max_count, int(vals.max(initial=0)))
    if shape is None:
        raise SbcError("no samples to pack")
    t_max = max(lengths)
    frame = int(np.prod(shape, dtype=np.int64))
    x = np.zeros((len(sparse), t_max * frame), dtype=compact_dtype(np.array([0, max_count])))
    for i, (idx, vals) in enumerate(sparse):
        x[i, idx] = vals
    return x.reshape((len(sparse), t_max) + shape), np.array(lengths, np.int64), kept


def load_nmnist(
    directory: str | os.PathLike,
    labels_file: str | os.PathLike,
    time_window_us: int = 1000,
    *,
    progress: bool = False,
) -> Dataset:
    """N-MNIST recordings as event-count frames (T, 2, 34, 34), one sample per row of ``labels_file``.

    Sample ``<id>`` is read from ``directory/<id>.bs2`` by tonic's reader and binned by tonic's
    ``ToFrame`` (``events.read_nmnist_events``, ``events.bin_events``); order and labels follow the labels
    file. Samples of different length are zero-padded at the end to the longest; ``lengths`` holds the
    true T.
    """
    d = Path(directory)
    if not d.is_dir():
        raise SbcError(f"N-MNIST directory not found: {d}")
    tw = int(time_window_us)
    if tw != time_window_us or tw < 1:
        raise SbcError(f"time window must be a positive integer number of microseconds, got {time_window_us}")
    ids, labels = read_labels_file(labels_file)
    files = [d / f"{i}.bs2" for i in ids]
    missing = [f for f in files if not f.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SbcError(f"N-MNIST sample file not found: {missing[0]}{more} (listed in {labels_file})")
    n_events = 0

    def frames() -> Iterator[np.ndarray]:
        nonlocal n_events
        for f in iterate(files, "N-MNIST", "file", progress):
            ev = read_nmnist_events(f)
            if len(ev) == 0:
                raise SbcError(f"N-MNIST file {f} has no events")
            n_events += len(ev)
            yield bin_events(ev, tw, NMNIST_SENSOR)

    x, lengths, n_kept = _pack_frames(frames())
    w, h = NMNIST_SENSOR
    meta = {
        "source": "N-MNIST",
        "directory": str(d),
        "labels_file": str(labels_file),
        "encoding": "event counts per time bin, frames (polarity, y, x); tonic ToFrame binning, last incomplete bin dropped",
        "time_window_us": tw,
        "sensor_size": [w, h, 2],
        "events_total": n_events,
        "events_in_frames": n_kept,
    }
    return Dataset(x, labels, lengths=lengths, ids=np.array(ids), meta=meta)


# ----------------------------------------------------------------------------------------------------------
# Any tonic dataset on disk
# ----------------------------------------------------------------------------------------------------------


def load_tonic(
    name: str,
    directory: str | os.PathLike,
    *,
    split: str | None = None,
    time_window: int | None = None,
    event_count: int | None = None,
    n_time_bins: int | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> Dataset:
    """A tonic dataset (``tonic.datasets.<name>``: NMNIST, DVSGesture, SHD, ...) read from its files under
    ``directory`` (tonic's ``save_to``, holding ``<Name>/``; nothing is downloaded) and binned by tonic's
    ``ToFrame`` with the dataset's sensor size.

    Binning: one of ``time_window`` (microseconds; the default, 1000, when none is given), ``event_count``
    or ``n_time_bins``. ``split``: train/test (default test). ``limit``: the first samples (file-path order
    for datasets stored one sample per file, as tonic lists N-MNIST).
    Frames are (polarity, y, x), or (polarity, x) for a 1-D sensor such as SHD's 700 channels.
    """
    if limit is not None and limit < 1:
        raise SbcError(f"limit must be >= 1, got {limit}")
    if time_window is None and event_count is None and n_time_bins is None:
        time_window = 1000
    binning = Binning(time_window=time_window, event_count=event_count, n_time_bins=n_time_bins)
    src = open_tonic(name, directory, split)
    n = src.n if limit is None else min(src.n, limit)
    labels: list[int] = []
    n_events = 0

    def frames() -> Iterator[np.ndarray]:
        nonlocal n_events
        stream = iterate(src.frames(binning, n), src.name, "sample", progress, total=n)
        for fr, label, n_ev in stream:
            labels.append(label)
            n_events += n_ev
            yield fr

    x, lengths, n_kept = _pack_frames(frames())
    meta = {
        "source": f"tonic {src.name}",
        "directory": str(src.directory),
        "split": src.split,
        "encoding": f"event counts per frame, {binning.describe()}",
        **{k: v for k, v in binning.as_dict().items() if v is not None},
        "sensor_size": list(src.sensor_size),
        "tonic_version": tonic_version(),
        "events_total": n_events,
        "events_in_frames": n_kept,
    }
    return Dataset(x, np.array(labels, np.int64), lengths=lengths, ids=src.ids()[:n], meta=meta)


# ----------------------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------------------

_IDX_IMAGES = 2051
_IDX_LABELS = 2049


def _find_idx(d: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (d / name).is_file():
            return d / name
    raise SbcError(f"MNIST file not found: {d / stem} (or {stem}.gz)")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise SbcError(f"cannot read MNIST file {path}: {e}") from e
    if len(raw) < 8:
        raise SbcError(f"{path} is not an MNIST idx file (only {len(raw)} bytes)")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        what = "images" if magic == _IDX_IMAGES else "labels"
        raise SbcError(f"{path} is not an MNIST idx {what} file: magic number {got}, expected {magic}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    off = 4 + 4 * ndim
    need = int(np.prod(dims, dtype=np.int64))
    if len(raw) - off != need:
        raise SbcError(f"{path}: header says {dims} ({need} bytes of data) but the file holds {len(raw) - off}")
    return np.frombuffer(raw, np.uint8, offset=off).reshape(dims)


def load_mnist(
    directory: str | os.PathLike,
    *,
    steps: int,
    encoding: str = "bernoulli",
    limit: int | None = None,
    start: int = 0,
    seed: int = 0,
    shape: Sequence[int] = (1, 28, 28),
    split: str = "test",
    progress: bool = False,
) -> Dataset:
    """MNIST images (``t10k-*`` for split "test", ``train-*`` for "train", raw or .gz idx files) as spikes.

    ``encoding="bernoulli"``: ``rng = np.random.default_rng(seed)`` once, then per selected image in order
    ``rng.random((steps, *shape)) < pixel/255`` (bool). The generator starts fresh at image ``start``.
    ``encoding="analog"``: ``pixel/255`` every step (uint8 + ``x_scale=1/255`` + ``repeat_steps=steps``).
    ``shape``: per-step input shape, e.g. (1, 28, 28) for conv nets or (784,) for dense nets.
    """
    d = Path(directory)
    if not d.is_dir():
        raise SbcError(f"MNIST directory not found: {d}")
    if encoding not in ("bernoulli", "analog"):
        raise SbcError(f"unknown MNIST encoding {encoding!r} (use 'bernoulli' or 'analog')")
    if split not in ("test", "train"):
        raise SbcError(f"unknown MNIST split {split!r} (use 'test' or 'train')")
    steps = int(steps)
    if steps < 1:
        raise SbcError(f"steps must be >= 1, got {steps}")
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape) or int(np.prod(shape)) != 784:
        raise SbcError(f"MNIST input shape must have 784 = 28*28 values, got {shape}")
    prefix = "t10k" if split == "test" else "train"
    images = _read_idx(_find_idx(d, f"{prefix}-images-idx3-ubyte"), _IDX_IMAGES)
    labels = _read_idx(_find_idx(d, f"{prefix}-labels-idx1-ubyte"), _IDX_LABELS)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise SbcError(f"MNIST images must be 28x28, got {images.shape[1:]}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise SbcError(f"MNIST has {images.shape[0]} images but {labels.size} labels")
    n_all = images.shape[0]
    if not 0 <= start < n_all:
        raise SbcError(f"start {start} is outside the {n_all} MNIST {split} images (0..{n_all - 1})")
    if limit is not None and limit < 1:
        raise SbcError(f"limit must be >= 1, got {limit}")
    stop = n_all if limit is None else min(n_all, start + int(limit))
    sel = images[start:stop].reshape((stop - start,) + shape)
    y = labels[start:stop].astype(np.int64)
    meta: dict[str, Any] = {
        "source": f"MNIST {split}",
        "directory": str(d),
        "encoding": encoding,
        "steps": steps,
        "start": start,
        "limit": limit,
        "shape": list(shape),
    }
    ids = np.arange(start, stop, dtype=np.int64)
    if encoding == "analog":
        meta["recipe"] = "pixel/255 at every step"
        return Dataset(sel[:, None].copy(), y, x_scale=1.0 / 255.0, repeat_steps=steps, ids=ids, meta=meta)
    meta["seed"] = seed
    meta["recipe"] = (
        "rng = np.random.default_rng(seed) once; per image in order: rng.random((steps, *shape)) < pixel/255"
    )
    rng = np.random.default_rng(seed)
    x = np.empty((stop - start, steps) + shape, dtype=np.bool_)
    for i in iterate(range(stop - start), "MNIST", "img", progress):
        np.less(rng.random((steps,) + shape), sel[i].astype(np.float64) / 255.0, out=x[i])
    return Dataset(x, y, ids=ids, meta=meta)


# -- datasets from torch (duck-typed: no torch import) -----------------------------------------------------
def as_dataset(data: Any, *, steps: int | None = None, time_first: bool = False, limit: int | None = None) -> Dataset:
    """A project Dataset from `data`: a Dataset (returned as is), a torch ``Dataset`` of ``(x, y)`` samples,
    a ``DataLoader`` or any iterable of ``(x, y)`` pairs.

    An item whose label is a scalar is one sample, ``x`` of shape ``(T, *input_shape)``; a label vector of
    length B makes it a batch, ``x`` of shape ``(B, T, *input_shape)`` (``(T, B, ...)`` with
    ``time_first=True``, snnTorch's layout). ``steps``: the samples have no time axis (``x`` is one frame,
    ``(*input_shape)``) and each is presented for ``steps`` steps. ``limit``: stop after that many samples.
    """
    if isinstance(data, Dataset):
        return data if limit is None else data.take(limit)
    if limit is not None and int(limit) < 1:
        raise SbcError(f"limit must be >= 1, got {limit}")
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    n = 0
    for item in _items(data):
        x, y = _pair(item)
        if y.ndim == 0:
            x, y = x[None], y[None]
        elif time_first and x.ndim >= 2 and steps is None:
            x = np.moveaxis(x, 1, 0)
        if x.shape[0] != len(y):
            raise SbcError(f"a batch of {len(y)} labels needs x with a batch axis of {len(y)} (time_first="
                           f"{time_first}), got x of shape {x.shape}")
        xs.append(x if steps is None else x[:, None])
        ys.append(y)
        n += len(y)
        if limit is not None and n >= limit:
            break
    if not xs:
        raise SbcError("the data holds no samples")
    _check_item_shapes(xs, ys)
    x, y = np.concatenate(xs), np.concatenate(ys)
    stop = n if limit is None else int(limit)
    return Dataset(x[:stop], y[:stop], repeat_steps=steps)


def _items(data: Any):
    """Items of a map-style torch Dataset (by index), else of the iterable."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (list, tuple)) \
            and not hasattr(data, "batch_size"):
        return (data[i] for i in range(len(data)))
    try:
        return iter(data)
    except TypeError as e:
        raise SbcError(f"data must be a Dataset, a torch Dataset/DataLoader or an iterable of (x, y); got "
                       f"{type(data).__name__}") from e


def _pair(item: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise SbcError(f"each data item must be an (x, y) pair, got {type(item).__name__}")
    x, y = (np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for v in item[:2])
    if y.ndim > 1 or x.ndim < 1:
        raise SbcError(f"each item must be (x, label) or (x batch, label vector); got x {x.shape}, y {y.shape}")
    return x, y


def _check_item_shapes(xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise SbcError(f"all samples must have one shape (T, *input_shape); got {sorted(shapes)}")
    if any(y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.array_equal(y, np.round(y))) for y in ys):
        raise SbcError("labels must be integers")
