"""The work folder of a long compression: spilled Hessians and finished layers, so a run can resume.

    DIR/manifest.json           what the folder belongs to: hashes of the model, the options and the
                                calibration data; a resume with anything else is refused (one line)
    DIR/hessians/NNNN.H.npy     layer NNNN's calibration Hessian (float64), .sq.npy its input norms,
    DIR/hessians/NNNN.json      its calibration record, written last: the layer counts as done only then
    DIR/layers/NNNN.npz         a compressed layer's weight (and integer codes), .json its report, last

Every file is written atomically (io/atomic.py), the record after the arrays it vouches for, so a run
killed at any point leaves only complete entries that a resume can trust; a hidden temporary file left
by SIGKILL is never read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SbcError
from .graph import FlatGraph
from .io.atomic import write_atomic, write_text_atomic

__all__ = ["StoredHessian", "WorkDir", "data_hash", "finished_layers", "graph_hash", "remove_temporaries"]

FORMAT = "sbc-onnx-work/1"


def graph_hash(fg: FlatGraph) -> str:
    """SHA-256 over every node's kind and parameters (arrays by dtype, shape and bytes) and the edges."""
    h = hashlib.sha256()
    for name in sorted(fg.nodes):
        node = fg.nodes[name]
        h.update(f"{name}\0{type(node).__name__}\0".encode())
        for key in sorted(getattr(node, "__dataclass_fields__", {})):
            if key in ("input_type", "output_type", "metadata"):
                continue
            _update(h, key, getattr(node, key))
    h.update(repr(sorted(map(tuple, fg.edges))).encode())
    return h.hexdigest()


def _update(h, key: str, value: Any) -> None:
    a = np.asarray(value) if not isinstance(value, (dict, str)) else None
    if a is not None and a.dtype != object:
        h.update(f"{key}:{a.dtype.str}:{a.shape}\0".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    else:
        h.update(f"{key}={value!r}\0".encode())


def data_hash(dataset, batch_size: int) -> str:
    """SHA-256 over the calibration batches as the walker sees them (values, lengths, batch size)."""
    h = hashlib.sha256(f"batch {int(batch_size)}\0".encode())
    for x_tb, _, lengths in dataset.batches(batch_size, with_lengths=True):
        x = np.ascontiguousarray(x_tb)
        h.update(f"{x.dtype.str}:{x.shape}\0".encode())
        h.update(x.tobytes())
        h.update(np.asarray(lengths, np.int64).tobytes())
    return h.hexdigest()


class StoredHessian:
    """A spilled layer Hessian with the accumulator's read interface (H, sq_norms, n_units, is_finite);
    H is read from disk each time it is asked for, so only the layer being compressed holds it."""

    def __init__(self, path_H: Path, path_sq: Path, n_units: int):
        self._H, self._sq, self.n_units = path_H, path_sq, int(n_units)

    @property
    def H(self) -> np.ndarray:
        return np.load(self._H)

    @property
    def sq_norms(self) -> np.ndarray:
        return np.load(self._sq)

    @property
    def is_finite(self) -> bool:
        return True  # checked when it was collected, before it was written


class WorkDir:
    """One work folder bound to (model, options, calibration data) by its manifest."""

    def __init__(self, path: str | Path, layers: list[str]):
        self.path = Path(path)
        self.layers = list(layers)
        self._stem = {n: f"{i:04d}" for i, n in enumerate(self.layers)}

    @classmethod
    def open(cls, path: str | Path, layers: list[str], binding: dict[str, Any]) -> WorkDir:
        """Create the folder (and its manifest), or reopen one made for the same `binding` (SbcError naming
        what differs otherwise). binding: JSON-able {"model": hash, "options": {...}, "calibration": hash}."""
        wd = cls.check(path, layers, binding)
        man = wd.path / "manifest.json"
        if not man.is_file():
            wd.path.mkdir(parents=True, exist_ok=True)
            manifest = {"format": FORMAT, **binding, "layers": list(layers)}
            write_text_atomic(man, json.dumps(manifest, indent=1, sort_keys=True))
        (wd.path / "hessians").mkdir(exist_ok=True)
        (wd.path / "layers").mkdir(exist_ok=True)
        return wd

    @classmethod
    def check(cls, path: str | Path, layers: list[str], binding: dict[str, Any]) -> WorkDir:
        """SbcError unless `path` is missing, an empty folder or a work folder made for `binding`; writes
        nothing."""
        wd = cls(path, layers)
        manifest = {"format": FORMAT, **binding, "layers": list(layers)}
        man = wd.path / "manifest.json"
        if wd.path.exists() and not wd.path.is_dir():
            raise SbcError(f"--resume {wd.path} is a file, not a folder")
        if man.is_file():
            try:
                old = json.loads(man.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise SbcError(f"--resume {wd.path}: unreadable manifest.json ({e})") from None
            differs = [k for k in manifest if old.get(k) != manifest[k]]
            if differs:
                raise SbcError(f"--resume {wd.path} was made for another {' and '.join(_what(k) for k in differs)}; "
                               "give a new folder or the same model, options and calibration data")
        elif wd.path.is_dir() and any(p for p in wd.path.iterdir() if not p.name.startswith(".")):
            raise SbcError(f"--resume {wd.path} is a non-empty folder without a manifest.json: not a work folder")
        return wd

    # ---- Hessians
    def _h(self, name: str, suffix: str) -> Path:
        return self.path / "hessians" / f"{self._stem[name]}.{suffix}"

    def has_hessian(self, name: str) -> bool:
        return self._h(name, "json").is_file()

    def save_hessian(self, name: str, H: np.ndarray, sq_norms: np.ndarray, record: dict[str, Any]) -> None:
        _save_npy(self._h(name, "H.npy"), np.asarray(H, np.float64))
        _save_npy(self._h(name, "sq.npy"), np.asarray(sq_norms, np.float64))
        write_text_atomic(self._h(name, "json"), json.dumps({"layer": name, **record}, indent=1))

    def hessian(self, name: str) -> tuple[StoredHessian, dict[str, Any]]:
        record = _read_json(self._h(name, "json"))
        return StoredHessian(self._h(name, "H.npy"), self._h(name, "sq.npy"), record["n_units"]), record

    # ---- compressed layers
    def _l(self, name: str, suffix: str) -> Path:
        return self.path / "layers" / f"{self._stem[name]}.{suffix}"

    def has_layer(self, name: str) -> bool:
        return self._l(name, "json").is_file()

    def save_layer(self, name: str, weight: np.ndarray, quant: tuple | None, report) -> None:
        arrays = {"weight": np.asarray(weight)}
        if quant is not None:
            arrays.update(q=quant[0], scale=quant[1], zero=quant[2])

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        write_atomic(self._l(name, "npz"), write)
        write_text_atomic(self._l(name, "json"), json.dumps(asdict(report), indent=1, default=_jsonable))

    def layer(self, name: str) -> tuple[np.ndarray, tuple | None, dict[str, Any]]:
        """(weight, (q, scale, zero) or None, the LayerReport's fields) of a finished layer."""
        with np.load(self._l(name, "npz")) as z:
            weight = z["weight"]
            quant = (z["q"], z["scale"], z["zero"]) if "q" in z.files else None
        return weight, quant, _read_json(self._l(name, "json"))


def finished_layers(path: str | Path) -> int:
    """How many finished layers the work folder at `path` holds (their records: written last)."""
    return len(list((Path(path) / "layers").glob("*.json")))


def remove_temporaries(path: str | Path) -> list[Path]:
    """Remove the hidden temporary files (io/atomic.py) a process ended mid-write left in the work folder at
    `path`; call it only when no process writes there. The paths removed."""
    gone = []
    for sub in ("", "layers", "hessians"):
        for tmp in (Path(path) / sub).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def _what(key: str) -> str:
    return {"model": "model", "options": "set of options", "calibration": "calibration data",
            "layers": "set of layers", "format": "version of sbc-onnx"}.get(key, key)


def _save_npy(path: Path, a: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
            np.save(f, a)
    write_atomic(path, write)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SbcError(f"could not read {path}: {e}") from None


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")

