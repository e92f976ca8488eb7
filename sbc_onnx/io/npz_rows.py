"""Rows of one array inside an ``.npz`` archive, read from disk on demand.

A dataset's ``x`` (N, T, *shape) can be far larger than memory once decompressed, while calibration and
evaluation only ever need a batch of samples at a time. `NpzRows` parses the member's ``.npy`` header and
reads the bytes of the requested rows through the zip member's stream (deflated members, as
``np.savez_compressed`` writes them, decompress as they are read; stored ones as ``np.savez`` writes them
are read as they are), so the memory held is the batch, never the whole array. The open member is kept
between reads: rows read in increasing order (a pass over the data in batches) decompress the member once.
Going back to an earlier row reopens it.

`NpzRows` behaves like a read-only array for what the code needs: ``shape``, ``dtype``, ``ndim``,
``len()``, indexing with an int, a slice or an integer array (the rows are read and returned as an
ndarray), ``select`` (a lazy view of some rows, nothing read) and ``reshape_rows``. ``np.asarray`` reads
everything (explicitly, for the callers that want the whole array).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..errors import SbcError

__all__ = ["NpzRows", "open_rows"]

_SKIP_CHUNK = 1 << 18  # bytes read from a member at a time (skipping forward, filling a batch, the CRC pass)
_CHUNK_BYTES = 8 << 20  # default size of the chunks `chunks()` yields


class _Member:
    """One ``.npy`` member of a zip archive: its header, and the open stream with its current position."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self._zip: zipfile.ZipFile | None = None
        self._f: IO[bytes] | None = None
        self._pos = 0  # bytes of array data consumed from _f
        f = self._open()
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # pragma: no cover - numpy raises on unknown versions in read_magic
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as e:
            self.close()
            raise SbcError(f"{path}: cannot read dataset array {name!r} ({e})") from e
        if dtype.hasobject:
            self.close()
            raise SbcError(f"{path}: cannot read dataset array {name!r} (it holds Python objects; pickles are "
                           "never read)")
        self.shape, self.dtype, self.fortran = tuple(int(s) for s in shape), dtype, bool(fortran)
        self.header_bytes = f.tell()

    def __getstate__(self) -> dict:
        """Pickled (a shard of a dataset sent to another process) without its open stream: the copy reopens
        the file on its first read."""
        state = dict(self.__dict__)
        state.update(_zip=None, _f=None, _pos=0)
        return state

    def _open(self) -> IO[bytes]:
        self.close()
        self._zip = zipfile.ZipFile(self.path)
        self._f = self._zip.open(self.name)
        self._pos = 0
        return self._f

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        if self._zip is not None:
            self._zip.close()
        self._f = self._zip = None

    def read_into(self, start: int, out: memoryview) -> None:
        """Fill `out` with array data from byte `start` (forward from the current position, else reopened),
        a chunk at a time: no copy of the whole range is made on the way. A damaged member (bad deflate
        data or CRC, found only when it is read) is an SbcError naming the file."""
        try:
            self._read_into(start, out)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            self.close()
            raise SbcError(f"{self.path}: cannot read dataset array {self.name!r}: the archive is damaged ({e})") \
                from e

    def _read_into(self, start: int, out: memoryview) -> None:
        if self._f is None or start < self._pos:
            self._open().read(self.header_bytes)
        f = self._f
        assert f is not None
        while self._pos < start:  # decompress and drop, a chunk at a time (ZipExtFile.seek reads 16 MiB blocks)
            got = len(f.read(min(_SKIP_CHUNK, start - self._pos)))
            if got == 0:
                break
            self._pos += got
        done = 0
        while done < len(out):
            data = f.read(min(_SKIP_CHUNK, len(out) - done))
            if not data:
                raise SbcError(f"{self.path}: array {self.name!r} is truncated (the archive is damaged)")
            out[done:done + len(data)] = data
            done += len(data)
        self._pos += done

    def check_archive(self) -> None:
        """Read the whole member once, a chunk at a time, so that zip's CRC check runs now: a damaged file is
        refused when it is opened, not in the middle of a run."""
        try:
            with zipfile.ZipFile(self.path) as z, z.open(self.name) as f:
                while f.read(_SKIP_CHUNK):
                    pass
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise SbcError(f"{self.path}: cannot read dataset array {self.name!r}: the archive is damaged ({e})") \
                from e

    def __del__(self) -> None:
        self.close()


class NpzRows:
    """Rows ``index`` of a member array (all rows when None), each of shape ``row_shape``."""

    def __init__(self, member: _Member, index: np.ndarray | None = None,
                 row_shape: tuple[int, ...] | None = None) -> None:
        self._m = member
        self._index = index
        self._row_shape = tuple(member.shape[1:]) if row_shape is None else tuple(row_shape)
        self.verified = False  # set by the owner once every value was checked (e.g. finite); kept by views

    def check_archive(self) -> None:
        """SbcError if the member is damaged (its CRC, checked by reading it all once without keeping it)."""
        self._m.check_archive()

    @property
    def member_shape(self) -> tuple[int, ...]:
        """Shape of the whole array in the file."""
        return self._m.shape

    # -- array-like ----------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        n = self._m.shape[0] if self._index is None else len(self._index)
        return (n,) + self._row_shape

    @property
    def dtype(self) -> np.dtype:
        return self._m.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self._row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"NpzRows({self._m.path}:{self._m.name}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # rows first (read from disk), then the rest on the rows read
            if not key:
                return np.asarray(self)
            rows = self[key[0]]
            return rows[key[1:]] if isinstance(key[0], (int, np.integer)) else rows[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            return self.read(np.array([key]))[0]
        if isinstance(key, slice):
            return self.read(np.arange(len(self))[key])
        return self.read(np.asarray(key))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.read(np.arange(len(self)))
        return a if dtype is None else a.astype(dtype, copy=False)

    # -- views ---------------------------------------------------------------------------------------------
    def select(self, idx: np.ndarray) -> NpzRows:
        """The rows at `idx` (integer positions in this view), read when they are indexed."""
        idx = self._positions(idx)
        base = idx if self._index is None else self._index[idx]
        view = NpzRows(self._m, base, self._row_shape)
        view.verified = self.verified
        return view

    def reshape_rows(self, row_shape: tuple[int, ...]) -> NpzRows:
        """The same rows seen with another row shape of the same size."""
        view = NpzRows(self._m, self._index, row_shape)
        view.verified = self.verified
        return view

    # -- reading -------------------------------------------------------------------------------------------
    def _positions(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        return np.where(idx < 0, idx + n, idx)

    def read(self, idx: np.ndarray) -> np.ndarray:
        """The rows at `idx` as a new ndarray (n, *row_shape); the file is read in increasing row order,
        one run of consecutive rows at a time."""
        pos = self._positions(idx)
        base = pos if self._index is None else self._index[pos]
        out = np.empty((len(base),) + self._row_shape, dtype=self.dtype)
        if self._m.fortran:  # np.save never writes Fortran order for C-ordered arrays; read it whole
            whole = self._read_fortran()
            out[...] = whole[base].reshape(out.shape)
            return out
        flat = out.reshape(len(base), -1)
        rb = self.row_bytes  # a reshaped view has rows of the member's size
        order = np.argsort(base, kind="stable")
        sorted_base = base[order]
        i = 0
        while i < len(order):
            j = i + 1
            while j < len(order) and sorted_base[j] in (sorted_base[j - 1], sorted_base[j - 1] + 1):
                j += 1
            first, last = int(sorted_base[i]), int(sorted_base[j - 1])
            into = order[i:j]
            if last - first + 1 == j - i and np.array_equal(into, np.arange(into[0], into[0] + j - i)):
                self._m.read_into(first * rb, _bytes_of(flat[into[0]:into[0] + j - i]))  # rows in place
            else:  # repeated or reordered rows: read the run, then place its rows
                run = np.empty((last - first + 1, flat.shape[1]), dtype=self.dtype)
                self._m.read_into(first * rb, _bytes_of(run))
                flat[into] = run[sorted_base[i:j] - first]
            i = j
        return out

    def _read_fortran(self) -> np.ndarray:
        with zipfile.ZipFile(self._m.path) as z, z.open(self._m.name) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def chunks(self, max_bytes: int = _CHUNK_BYTES) -> Iterator[np.ndarray]:
        """All rows in order, a chunk of at most `max_bytes` (at least one row) at a time."""
        step = max(1, max_bytes // max(1, self.row_bytes))
        for s in range(0, len(self), step):
            yield self.read(np.arange(s, min(len(self), s + step)))


def _bytes_of(a: np.ndarray) -> memoryview:
    """The bytes of C-contiguous `a`, writable in place."""
    return memoryview(a.reshape(-1).view(np.uint8))


def open_rows(path: str | os.PathLike, member: str) -> NpzRows:
    """The array stored as `member` (e.g. ``x.npy``) of the ``.npz`` archive at `path`."""
    return NpzRows(_Member(Path(path), member))
