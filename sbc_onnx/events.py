"""Event recordings through tonic: the N-MNIST file reader, tonic datasets on disk, binning to frames.

tonic (https://github.com/neuromorphs/tonic) is the event-data library: its readers decode the recordings
and its ``ToFrame`` transform bins them; this module only adds the checks sbc-onnx needs (sensor bounds,
counts that fit, files that exist) and never lets tonic download anything. It knows nothing of the dataset
``.npz`` format (``data.py`` packs the frames) nor of networks.

tonic is imported when first needed: importing it also imports torch when torch is installed.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SbcError

__all__ = [
    "Binning",
    "TonicSource",
    "bin_events",
    "open_tonic",
    "read_nmnist_events",
    "to_frames",
    "tonic_names",
    "tonic_version",
]

_NMNIST_RECORD_BYTES = 5
_INT16_MAX = int(np.iinfo(np.int16).max)
SPLITS = ("train", "test", "valid")


def _tonic() -> Any:
    try:
        import tonic
    except ImportError as e:  # a broken install; tonic is a core dependency
        raise SbcError(f"the event-data library tonic cannot be imported ({e}); pip install 'tonic>=1.7,<1.8'") from e
    return tonic


# ----------------------------------------------------------------------------------------------------------
# Binning: one tonic ToFrame per recording
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binning:
    """How events become frames, as tonic ``ToFrame`` slices them: exactly one of ``time_window`` (in the
    dataset's time unit, microseconds for tonic's datasets), ``event_count`` (events per frame) or
    ``n_time_bins`` (frames per recording). The last incomplete window or count is dropped (tonic's
    default ``include_incomplete=False``)."""

    time_window: int | None = None
    event_count: int | None = None
    n_time_bins: int | None = None

    def __post_init__(self) -> None:
        given = {k: v for k, v in self.as_dict().items() if v is not None}
        if len(given) != 1:
            raise SbcError(
                "give exactly one of time window, event count or number of time bins, got "
                + (", ".join(f"{k}={v}" for k, v in given.items()) or "none")
            )
        (key, value), = given.items()
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise SbcError(f"{key} must be a positive integer, got {value!r}")

    def as_dict(self) -> dict[str, int | None]:
        return {"time_window": self.time_window, "event_count": self.event_count, "n_time_bins": self.n_time_bins}

    def describe(self) -> str:
        """The tonic call that does the binning, for the dataset's provenance."""
        args = ", ".join(f"{k}={v}" for k, v in self.as_dict().items() if v is not None)
        tail = "" if self.n_time_bins else ", last incomplete frame dropped"
        return f"tonic.transforms.ToFrame(sensor_size, {args}){tail}"

    def transform(self, sensor_size: tuple[int, int, int]) -> Any:
        return _tonic().transforms.ToFrame(sensor_size=tuple(int(s) for s in sensor_size), **self.as_dict())

    def empty_frames(self, frame_shape: tuple[int, ...]) -> np.ndarray:
        """Frames of a recording without events: one empty frame (n_time_bins empty frames when binned so).
        tonic returns them with width and height swapped; these have the shape of the other frames."""
        return np.zeros((self.n_time_bins or 1, *frame_shape), np.int16)


def to_frames(events: np.ndarray, sensor_size: tuple[int, int, int], binning: Binning) -> np.ndarray:
    """Event counts per frame from tonic's ``ToFrame``: shape (T, P, H, W), or (T, P, W) for a 1-D sensor.

    ``events`` is a structured array with fields x, t, p (and y). Events outside the sensor are an error
    (tonic would fail with an IndexError or wrap around); so is a count that could overflow tonic's int16 frames.
    """
    w, h, p = (int(s) for s in sensor_size)
    names = events.dtype.names or ()
    if len(events) == 0:  # tonic drops y from the frames of events without it (SHD: 700 channels, no y)
        return binning.empty_frames((p, h, w) if "y" in names else (p, w))
    bounds = [("x", w), ("y", h)] if "y" in names else [("x", w)]
    for field, size in bounds:
        v = events[field]
        if v.min() < 0 or v.max() >= size:
            raise SbcError(f"events outside the {w}x{h} sensor: {field} in {v.min()}..{v.max()}")
    if p > 1 and (events["p"].min() < 0 or events["p"].max() >= p):
        raise SbcError(f"event polarities {events['p'].min()}..{events['p'].max()} do not fit {p} channels")
    if np.any(np.diff(events["t"]) < 0):
        raise SbcError("event timestamps are not sorted in time (tonic bins sorted recordings)")
    _check_counts_fit(events, (w, h, p))
    try:
        # ToFrame writes a single-polarity sensor's p in place; work on a copy so the caller's events stay intact
        return binning.transform(sensor_size)(events.copy() if p == 1 else events)
    except ValueError as e:  # e.g. two polarities on a one-channel sensor
        raise SbcError(f"tonic cannot bin these events ({e})") from e


def _check_counts_fit(events: np.ndarray, sensor: tuple[int, int, int]) -> None:
    """tonic's frames are int16 and wrap around silently; no frame can hold more events of one pixel than the
    whole recording does, so a recording whose busiest pixel fires at most 32767 times is safe."""
    if len(events) <= _INT16_MAX:
        return
    w, h, p = sensor
    pix = events["x"].astype(np.int64)
    if "y" in (events.dtype.names or ()):
        pix = pix + w * events["y"].astype(np.int64)
    if p > 1:
        pix = pix + w * h * events["p"].astype(np.int64)
    busiest = int(np.bincount(pix).max())
    if busiest > _INT16_MAX:
        raise SbcError(f"one pixel has {busiest} events, more than tonic's int16 frames can count ({_INT16_MAX})")


def bin_events(events: Any, time_window_us: int, sensor: tuple[int, int] = (34, 34)) -> np.ndarray:
    """N-MNIST events -> event counts (T, 2, height, width), binned by tonic
    ``ToFrame(sensor_size=(w, h, 2), time_window=W)``: bin k is ``[t0 + k W, t0 + (k+1) W)`` with t0 the first
    timestamp, ``T = max(1, floor((t_last - t0) / W))``, events in the last incomplete bin dropped.

    ``events``: anything with fields x, y, p, t (tonic's structured array, or a dict of arrays).
    """
    ev = _as_nmnist_events(events)
    if len(ev) == 0:
        raise SbcError("sample has no events")
    return to_frames(ev, (sensor[0], sensor[1], 2), Binning(time_window=int(time_window_us)))


def _as_nmnist_events(events: Any) -> np.ndarray:
    dtype = _tonic().datasets.NMNIST.dtype
    if isinstance(events, np.ndarray) and events.dtype == dtype:
        return events
    fields = [np.asarray(events[k]) for k in dtype.names]
    return _tonic().io.make_structured_array(*fields, dtype=dtype)


def read_nmnist_events(path: str | os.PathLike) -> np.ndarray:
    """One N-MNIST recording (``.bs2``/``.bin``) read by tonic (``tonic.io.read_mnist_file``).

    Returns tonic's structured array with int64 fields x, y, t (microseconds), p. Timestamp overflow
    markers (y == 240) add 2**13 us to themselves and all later events and are removed. Events outside
    the 34x34 sensor are an error.
    """
    tonic = _tonic()
    p = Path(path)
    try:
        size = p.stat().st_size
        if size % _NMNIST_RECORD_BYTES:
            raise SbcError(f"N-MNIST file {p} is truncated or not N-MNIST: {size} bytes is not a multiple of 5")
        ev = tonic.io.read_mnist_file(str(p), dtype=tonic.datasets.NMNIST.dtype)
    except OSError as e:
        raise SbcError(f"cannot read N-MNIST file {p}: {e}") from e
    w, h, _ = tonic.datasets.NMNIST.sensor_size
    if len(ev) and (ev["x"].max() >= w or ev["y"].max() >= h):
        raise SbcError(
            f"N-MNIST file {p} has events outside the {w}x{h} sensor (max x {ev['x'].max()}, max y {ev['y'].max()})"
        )
    return ev


# ----------------------------------------------------------------------------------------------------------
# tonic datasets whose files are on disk
# ----------------------------------------------------------------------------------------------------------


def _registry() -> dict[str, type]:
    tonic = _tonic()
    out = {}
    for name in getattr(tonic.datasets, "__all__", dir(tonic.datasets)):
        cls = getattr(tonic.datasets, name, None)
        if inspect.isclass(cls) and issubclass(cls, tonic.Dataset):
            out[name] = cls
    return out


def tonic_names() -> list[str]:
    """The dataset names tonic knows (``tonic.datasets.<Name>``)."""
    return sorted(_registry())


def _lookup(name: str) -> type:
    reg = _registry()
    if name in reg:
        return reg[name]
    folded = {k.lower(): v for k, v in reg.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise SbcError(f"tonic has no dataset {name!r}; known: {', '.join(sorted(reg))}")


def _refuse_download(self: Any) -> None:
    raise SbcError(
        f"tonic {type(self).__name__}: the dataset files are not in {self.location_on_system} and sbc-onnx "
        "never downloads; put the extracted files there in tonic's layout"
    )


def _offline(cls: type) -> type:
    """The tonic dataset class with its download switched off: it reads whatever is on disk.

    tonic checks for the downloaded archive (and, for N-MNIST, all 10 000+ files) before reading, and
    downloads when the check fails; here the check always passes and a download is an error. The class
    keeps its name: tonic finds its files under ``save_to/<class name>``.
    """
    return type(cls.__name__, (cls,), {"download": _refuse_download, "_check_exists": lambda self: True,
                                       "__module__": __name__, "__doc__": cls.__doc__})


def _split_kwargs(cls: type, split: str | None) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    if split is not None and split not in SPLITS:
        raise SbcError(f"unknown split {split!r} (use {', '.join(SPLITS)})")
    if "train" in params:
        if split == "valid":
            raise SbcError(f"tonic {cls.__name__} has only the splits train and test")
        return {"train": split == "train"}
    if "split" in params:
        return {"split": split or "test"}
    if split is not None:
        raise SbcError(f"tonic {cls.__name__} has no train/test split; leave the split out")
    return {}


def _dataset_dir(cls: type, directory: str | os.PathLike) -> Path:
    """tonic's ``save_to``: the folder that holds ``<Name>/`` (the ``<Name>`` folder itself is accepted too)."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise SbcError(f"dataset directory not found: {d}")
    if not (d / cls.__name__).is_dir() and d.name == cls.__name__:
        d = d.parent
    if not (d / cls.__name__).is_dir():
        raise SbcError(f"no {cls.__name__} folder in {d}: tonic keeps the {cls.__name__} files in {d / cls.__name__}")
    return d


class TonicSource:
    """A tonic dataset read from disk only: ``len``, ``sensor_size``, ``ids`` and ``sample(i) -> (events, label)``.

    Samples stored one per file come in file-path order (tonic's own order for N-MNIST)."""

    def __init__(self, name: str, directory: str | os.PathLike, split: str | None = None) -> None:
        cls = _lookup(name)
        self.name = cls.__name__
        self.split_kwargs = _split_kwargs(cls, split)
        self.split = None if not self.split_kwargs else split or "test"
        self.directory = _dataset_dir(cls, directory)
        try:
            self.dataset = _offline(cls)(str(self.directory), **self.split_kwargs)
            n = len(self.dataset)
        except SbcError:
            raise
        except TypeError as e:  # a constructor that needs more than save_to and the split
            raise SbcError(f"tonic {self.name} cannot be built from a folder and a split alone ({e})") from e
        except (OSError, ValueError, KeyError) as e:
            raise SbcError(f"tonic {self.name}: cannot read the files in {self.directory / self.name} ({e})") from e
        if n == 0:
            raise SbcError(f"tonic {self.name}: no samples found under {self.location} (tonic's on-disk layout)")
        self.n = int(n)
        sensor = getattr(self.dataset, "sensor_size", None)
        if sensor is None or len(sensor) != 3:
            raise SbcError(f"tonic {self.name} does not declare a (width, height, polarities) sensor size")
        self.sensor_size = tuple(int(s) for s in sensor)
        files = self._files()
        # by file path: tonic's own order where it sorts (N-MNIST), and the same on every machine where it lists
        # files as the file system returns them (DVS Gesture), so that --limit picks the same samples
        self.order = list(range(self.n)) if files is None else sorted(range(self.n), key=lambda i: Path(files[i]).parts)

    @property
    def location(self) -> Path:
        return Path(self.dataset.location_on_system, getattr(self.dataset, "folder_name", "") or "")

    def __len__(self) -> int:
        return self.n

    def _files(self) -> list[str] | None:
        """The sample files, when the dataset lists one file per sample (tonic's ``data``)."""
        files = getattr(self.dataset, "data", None)
        if not isinstance(files, list) or len(files) != self.n or not all(isinstance(f, str) for f in files):
            return None
        return files

    def ids(self) -> np.ndarray:
        """Sample ids in sample order: file names without extension when the dataset lists one file per sample
        and they are unique, else the files' paths under the dataset folder; indices when samples are not files."""
        files = self._files()
        if files is None:
            return np.arange(self.n, dtype=np.int64)
        files = [files[i] for i in self.order]
        stems = [Path(f).stem for f in files]
        if len(set(stems)) == len(stems):
            return np.array(stems)
        return np.array([os.path.relpath(os.path.splitext(f)[0], self.location) for f in files])

    def sample(self, i: int) -> tuple[np.ndarray, int]:
        """Sample ``i`` in sample order (file-path order for datasets of files): tonic's events and label."""
        try:
            events, label = self.dataset[self.order[i]]
        except SbcError:
            raise
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise SbcError(f"tonic {self.name}: cannot read sample {i} ({e})") from e
        names = getattr(getattr(events, "dtype", None), "names", None) or ()
        if not isinstance(events, np.ndarray) or not {"x", "t", "p"} <= set(names):
            raise SbcError(f"tonic {self.name}: sample {i} is a {type(events).__name__}, not an event array with "
                           "fields x, t, p; sbc-onnx bins event recordings only")
        lab = np.asarray(label)
        if lab.size != 1 or lab.dtype.kind not in "iu":
            raise SbcError(f"tonic {self.name}: sample {i} has label {label!r}, not one integer class")
        return events, int(lab.reshape(()))

    def frames(self, binning: Binning, limit: int | None = None) -> Iterator[tuple[np.ndarray, int, int]]:
        """``(frames, label, n_events)`` for samples 0 .. limit-1 in sample order."""
        for i in range(self.n if limit is None else min(self.n, limit)):
            events, label = self.sample(i)
            try:
                fr = to_frames(events, self.sensor_size, binning)
            except SbcError as e:
                raise SbcError(f"tonic {self.name} sample {i}: {e}") from None
            yield fr, label, len(events)


def open_tonic(name: str, directory: str | os.PathLike, split: str | None = None) -> TonicSource:
    """The tonic dataset ``tonic.datasets.<name>`` (case-insensitive) from its files under ``directory``.

    ``directory`` is tonic's ``save_to`` (holding ``<Name>/``); nothing is downloaded. ``split``:
    train/test (valid for datasets with one); None = test, or no split for datasets without one.
    """
    return TonicSource(name, directory, split)


def tonic_version() -> str:
    return str(getattr(_tonic(), "__version__", "unknown"))
