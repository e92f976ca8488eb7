"""tonic as the event-data library: `data tonic NAME DIR` for datasets on disk (N-MNIST on the shared
recordings, DVS Gesture and SHD on tiny files written here in tonic's layout), and `data nmnist` read and
binned by tonic, checked against a brute-force reader kept in this file."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from sbc_onnx.cli import main
from sbc_onnx.data import load_dataset, load_nmnist, load_tonic, read_labels_file
from sbc_onnx.errors import SbcError
from sbc_onnx.events import Binning, open_tonic

N_SHARED = 12  # recordings from the shared test set used here (the first twelve: eight classes)


# ---------------------------------------------------------------------------------------------- helpers


def brute_force_events(path: Path) -> list[tuple[int, int, int, int]]:
    """N-MNIST file -> (x, y, p, t) per event, one record at a time in plain Python (no tonic, no NumPy):
    5-byte records, overflow markers (y == 240) add 2**13 us from there on and are dropped."""
    raw = path.read_bytes()
    events, offset = [], 0
    for k in range(0, len(raw), 5):
        x, y, b2, b3, b4 = raw[k : k + 5]
        if y == 240:
            offset += 1 << 13
            continue
        events.append((x, y, b2 >> 7, (((b2 & 0x7F) << 16) | (b3 << 8) | b4) + offset))
    return events


def brute_force_frames(path: Path, window_us: int, n_bins: int | None = None) -> np.ndarray:
    """(T, 2, 34, 34) counts in bins of `window_us` from the first timestamp; T = max(1, (t_last - t0) // W)
    unless given, and events past T bins (the incomplete last one) dropped."""
    events = brute_force_events(path)
    t0, t_last = events[0][3], events[-1][3]
    n_bins = n_bins or max(1, (t_last - t0) // window_us)
    frames = np.zeros((n_bins, 2, 34, 34), np.int64)
    for x, y, p, t in events:
        k = (t - t0) // window_us
        if k < n_bins:
            frames[k, p, y, x] += 1
    return frames


@pytest.fixture(scope="module")
def nmnist_tonic_layout(data_dir, tmp_path_factory):
    """The first shared test recordings in tonic's N-MNIST layout (NMNIST/Test/<digit>/<id>.bin, symlinks),
    and a labels file listing them in tonic's order (digit folders, then file names)."""
    src = data_dir / "nmnist_small"
    ids, labels = read_labels_file(src / "test100.txt")
    root = tmp_path_factory.mktemp("tonic")
    for sid, lab in zip(ids[:N_SHARED], labels[:N_SHARED]):
        d = root / "NMNIST" / "Test" / str(lab)
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(src / "test" / f"{sid}.bs2", d / f"{sid}.bin")
    order = sorted(range(N_SHARED), key=lambda i: (labels[i], ids[i]))
    rows = "".join(f"{ids[i]}\t{labels[i]}\r\n" for i in order)
    (root / "labels.txt").write_bytes(("#sample #class\r\n" + rows).encode())
    return root, src / "test"


def write_dvs_gesture(root: Path, samples: dict[str, list[tuple[int, int, int, int]]]) -> None:
    """tonic's DVS Gesture layout: DVSGesture/ibmGestureTest/<user>_<lighting>/<label>.npy, rows (x, y, p, t ms)."""
    for rel, rows in samples.items():
        f = root / "DVSGesture" / "ibmGestureTest" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        np.save(f, np.array(rows, np.int64))


def write_shd(root: Path, samples: list[tuple[list[float], list[int], int]], split: str = "test") -> None:
    """tonic's SHD layout: SHD/shd_<split>.h5 with spikes/times (s), spikes/units, labels, extra/*."""
    (root / "SHD").mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "SHD" / f"shd_{split}.h5", "w") as f:
        times = f.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float64))
        units = f.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (t, u, _) in enumerate(samples):
            times[i] = np.array(t, np.float64)
            units[i] = np.array(u, np.uint16)
        f["labels"] = np.array([lab for _, _, lab in samples], np.uint8)
        f["extra/keys"] = np.array([b"zero", b"one"])
        f["extra/speaker"] = np.zeros(len(samples), np.uint8)


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "meta"}


# ---------------------------------------------------------------------------------------------- N-MNIST


def test_data_tonic_nmnist_equals_data_nmnist(nmnist_tonic_layout, tmp_path, capsys):
    """Acceptance: `data tonic NMNIST DIR` and `data nmnist` store the same arrays for the same recordings,
    and both equal a brute-force reading of the files."""
    root, bs2_dir = nmnist_tonic_layout
    a, b = tmp_path / "tonic.npz", tmp_path / "nmnist.npz"
    assert main(["data", "tonic", "NMNIST", str(root), "-o", str(a)]) == 0
    assert main(["data", "nmnist", str(bs2_dir), str(root / "labels.txt"), "-o", str(b)]) == 0
    assert f"{N_SHARED} samples" in capsys.readouterr().out
    got, ref = arrays(a), arrays(b)
    assert sorted(got) == sorted(ref) == ["ids", "lengths", "x", "y"]
    for k in ref:
        assert got[k].dtype == ref[k].dtype, k
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)

    ds = load_dataset(a)
    assert ds.meta["source"] == "tonic NMNIST" and ds.meta["split"] == "test" and ds.meta["time_window"] == 1000
    assert ds.meta["sensor_size"] == [34, 34, 2]
    assert ds.meta["events_in_frames"] == int(np.asarray(ds.x).sum(dtype=np.int64)) < ds.meta["events_total"]
    for i, sid in enumerate(ds.ids):
        np.testing.assert_array_equal(ds.x[i, : ds.lengths[i]], brute_force_frames(bs2_dir / f"{sid}.bs2", 1000))
        assert not ds.x[i, ds.lengths[i] :].any()


def test_data_nmnist_equals_brute_force_reader(data_dir, tmp_path):
    """`load_nmnist` (tonic's reader and ToFrame) against the brute-force reader, at two window lengths."""
    src = data_dir / "nmnist_small"
    rows = (src / "test100.txt").read_bytes().splitlines(keepends=True)
    (tmp_path / "five.txt").write_bytes(b"".join(rows[:1] + rows[40:45]))  # header, then samples 40..44
    ds = load_nmnist(src / "test", tmp_path / "five.txt")
    coarse = load_nmnist(src / "test", tmp_path / "five.txt", time_window_us=7000)
    assert ds.n == coarse.n == 5
    for i, sid in enumerate(ds.ids):
        np.testing.assert_array_equal(ds.x[i, : ds.lengths[i]], brute_force_frames(src / "test" / f"{sid}.bs2", 1000))
        ref = brute_force_frames(src / "test" / f"{sid}.bs2", 7000)
        np.testing.assert_array_equal(coarse.x[i, : coarse.lengths[i]], ref)


def test_tonic_nmnist_options(nmnist_tonic_layout, tmp_path):
    root, bs2_dir = nmnist_tonic_layout
    full = load_tonic("nmnist", root)  # names are case-insensitive; the dataset folder itself works too
    lim = load_tonic("NMNIST", root / "NMNIST", limit=3, time_window=1000)
    assert lim.n == 3 and lim.ids.tolist() == full.ids[:3].tolist()
    np.testing.assert_array_equal(lim.x, full.x[:3, : lim.steps])
    # n_time_bins: a fixed number of frames; every event from t0 to t0 + 10 * ((t_last - t0) // 10) is kept
    bins = load_tonic("NMNIST", root, n_time_bins=10, limit=2)
    assert bins.steps == 10 and bins.lengths.tolist() == [10, 10]
    for i, sid in enumerate(bins.ids):
        ev = brute_force_events(bs2_dir / f"{sid}.bs2")
        width = (ev[-1][3] - ev[0][3]) // 10
        np.testing.assert_array_equal(bins.x[i], brute_force_frames(bs2_dir / f"{sid}.bs2", width, 10))
    # event_count: floor(n / count) frames of exactly that many events each
    counts = load_tonic("NMNIST", root, event_count=500, limit=2)
    for i, sid in enumerate(counts.ids):
        assert counts.lengths[i] == len(brute_force_events(bs2_dir / f"{sid}.bs2")) // 500
        per_frame = counts.x[i, : counts.lengths[i]].reshape(counts.lengths[i], -1).sum(axis=1)
        assert (per_frame == 500).all()
    # the training split reads NMNIST/Train, absent here
    with pytest.raises(SbcError, match="no samples found under .*Train"):
        load_tonic("NMNIST", root, split="train")


# ---------------------------------------------------------------------------------------------- DVS Gesture, SHD


def test_tonic_dvs_gesture_from_disk(tmp_path, monkeypatch):
    # t in ms (tonic converts to us); window 5 ms: duration 10 ms -> 2 frames, the event at 10 ms is dropped
    write_dvs_gesture(tmp_path, {
        "user24_led/3.npy": [(1, 2, 0, 0), (1, 2, 1, 5), (127, 0, 1, 9), (5, 6, 0, 10)],
        "user25_fluorescent/3.npy": [(0, 0, 1, 0), (0, 0, 1, 3)],
        "user25_fluorescent/10.npy": [(9, 8, 1, 4), (9, 8, 1, 4), (3, 3, 0, 7)],
    })
    # tonic lists DVS Gesture files in the file system's order: make that the reverse of the sorted order
    walk = os.walk
    monkeypatch.setattr(os, "walk", lambda top: ((p, d, sorted(f, reverse=True)) for p, d, f in walk(top)))
    assert main(["data", "tonic", "DVSGesture", str(tmp_path), "-o", str(tmp_path / "g.npz"),
                 "--time-window", "5000"]) == 0
    ds = load_dataset(tmp_path / "g.npz")
    assert ds.input_shape == (2, 128, 128) and ds.meta["sensor_size"] == [128, 128, 2]
    # samples in file-path order whatever the listing; file names repeat, so ids are paths under the split
    assert ds.ids.tolist() == ["user24_led/3", "user25_fluorescent/10", "user25_fluorescent/3"]
    exp = {
        "user24_led/3": (3, [(0, 0, 2, 1, 1), (1, 1, 2, 1, 1), (1, 1, 0, 127, 1)], 2),
        "user25_fluorescent/3": (3, [(0, 1, 0, 0, 2)], 1),
        "user25_fluorescent/10": (10, [(0, 1, 8, 9, 2), (0, 0, 3, 3, 1)], 1),
    }
    for i, sid in enumerate(ds.ids.tolist()):
        label, entries, length = exp[sid]
        ref = np.zeros((ds.steps, 2, 128, 128), np.int64)
        for t, p, y, x, c in entries:
            ref[t, p, y, x] = c
        assert ds.y[i] == label and ds.lengths[i] == length
        np.testing.assert_array_equal(ds.x[i], ref)


def test_tonic_shd_from_disk(tmp_path):
    # spike times in seconds (tonic converts to us), 700 channels, one polarity: frames (1, 700)
    # the third sample has no spikes: one empty frame, of the same shape as the others
    write_shd(tmp_path, [([0.0, 0.0004, 0.0012, 0.0021], [0, 699, 3, 3], 1), ([0.5, 0.5003], [10, 10], 0),
                         ([], [], 1)])
    ds = load_tonic("SHD", tmp_path, time_window=1000)
    assert ds.input_shape == (1, 700) and ds.ids.tolist() == [0, 1, 2] and ds.y.tolist() == [1, 0, 1]
    assert ds.lengths.tolist() == [2, 1, 1]
    ref = np.zeros((3, 2, 1, 700), np.int64)
    ref[0, 0, 0, [0, 699]] = 1
    ref[0, 1, 0, 3] = 1  # t = 1.2 ms; 2.1 ms is in the dropped incomplete frame
    ref[1, 0, 0, 10] = 2
    np.testing.assert_array_equal(ds.x, ref)
    assert ds.meta["events_total"] == 6 and ds.meta["events_in_frames"] == 5
    # the training file is another file
    with pytest.raises(SbcError, match="SHD"):
        load_tonic("SHD", tmp_path, split="train")


# ---------------------------------------------------------------------------------------------- errors


def test_tonic_never_downloads(tmp_path, monkeypatch):
    import tonic.dataset

    def no_network(*a, **k):
        raise AssertionError("tonic tried to download")

    monkeypatch.setattr(tonic.dataset, "download_and_extract_archive", no_network)
    (tmp_path / "NMNIST").mkdir()
    with pytest.raises(SbcError, match="no samples found"):
        open_tonic("NMNIST", tmp_path)
    (tmp_path / "SHD").mkdir()
    with pytest.raises(SbcError, match="cannot read the files"):
        open_tonic("SHD", tmp_path)


def test_tonic_errors(tmp_path, capsys):
    out = tmp_path / "o.npz"
    with pytest.raises(SbcError, match="directory not found"):
        load_tonic("NMNIST", tmp_path / "nope")
    with pytest.raises(SbcError, match=r"no NMNIST folder in .*NMNIST"):
        load_tonic("NMNIST", tmp_path)
    with pytest.raises(SbcError, match="tonic has no dataset 'NotAThing'; known: .*DVSGesture.*NMNIST.*SHD"):
        load_tonic("NotAThing", tmp_path)
    with pytest.raises(SbcError, match="only the splits train and test"):
        load_tonic("NMNIST", tmp_path, split="valid")
    with pytest.raises(SbcError, match="exactly one of"):
        Binning(time_window=1000, n_time_bins=3)
    with pytest.raises(SbcError, match="positive integer"):
        Binning(event_count=0)
    # events off the sensor and counts that overflow tonic's int16 frames are errors, not wrapped values
    write_dvs_gesture(tmp_path, {"user1_led/0.npy": [(128, 0, 0, 0), (0, 0, 0, 1)]})
    with pytest.raises(SbcError, match="sample 0: events outside the 128x128 sensor"):
        load_tonic("DVSGesture", tmp_path)
    # datasets whose samples are not plain event arrays (e.g. events with IMU data and images) are refused
    src = open_tonic("DVSGesture", tmp_path)
    src.dataset = [((np.zeros(3), np.zeros(2)), 0)]
    with pytest.raises(SbcError, match="sample 0 is a tuple, not an event array"):
        src.sample(0)
    src.dataset = [(np.zeros(3, [("x", int), ("t", int), ("p", int)]), "left")]
    with pytest.raises(SbcError, match="label 'left', not one integer class"):
        src.sample(0)
    write_shd(tmp_path, [(list(np.linspace(0, 1e-3, 40_000)), [5] * 40_000, 0)])
    with pytest.raises(SbcError, match="one pixel has 40000 events.*int16"):
        load_tonic("SHD", tmp_path, n_time_bins=1)
    # the CLI: one error line, exit code 2, nothing written
    assert main(["data", "tonic", "NMNIST", str(tmp_path), "-o", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: no NMNIST folder")
    assert main(["data", "tonic", "NMNIST", str(tmp_path), "-o", str(out), "--time-window", "5",
                 "--event-count", "3"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["data", "tonic", "NMNIST", str(tmp_path), "-o", str(out), "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
    assert not out.exists()
