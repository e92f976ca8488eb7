"""Dataset layer: .npz format, N-MNIST decoding/binning (tonic ToFrame semantics), MNIST encodings, CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from sbc_onnx.data import (
    Dataset,
    bin_events,
    compact_dtype,
    load_dataset,
    load_mnist,
    load_nmnist,
    read_labels_file,
    read_nmnist_events,
    save_dataset,
)
from sbc_onnx.errors import SbcError

TEST100_HIST = [8, 14, 8, 11, 14, 7, 10, 15, 2, 11]
MNIST_TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------------------------------------- helpers


def write_bs2(path: Path, events: list[tuple[int, int, int, int]]) -> None:
    """events: (x, y, p, t_us) -> N-MNIST 5-byte records (written independently of the decoder)."""
    out = bytearray()
    for x, y, p, t in events:
        out += bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    path.write_bytes(bytes(out))


def write_labels(path: Path, rows: list[tuple[str, int]]) -> None:
    text = "#sample #class\r\n" + "".join(f"{i}\t{c}\r\n" for i, c in rows)
    path.write_bytes(text.encode())


def tonic_to_frame(events: dict, time_window: int) -> np.ndarray:
    """Literal re-implementation of tonic ToFrame(sensor_size=(34,34,2), time_window) (include_incomplete=False):
    SliceByTime.get_slice_metadata + to_frame_numpy's np.add.at."""
    t = events["t"]
    n_slices = int(np.floor(((t[-1] - t[0]) - time_window) / time_window) + 1)
    n_slices = max(n_slices, 1)
    starts = np.arange(n_slices) * time_window + t[0]
    ends = starts + time_window
    i0 = np.searchsorted(t, starts)[:n_slices]
    i1 = np.searchsorted(t, ends)[:n_slices]
    frames = np.zeros((n_slices, 2, 34, 34), dtype=int)
    for i, (a, b) in enumerate(zip(i0, i1)):
        np.add.at(frames, (i, events["p"][a:b], events["y"][a:b], events["x"][a:b]), 1)
    return frames


def provenance_decode(path: Path) -> dict:
    """The decoding recipe quoted in shared/data/PROVENANCE.md."""
    b = np.fromfile(path, np.uint8).astype(np.int64)
    return {
        "x": b[0::5],
        "y": b[1::5],
        "p": b[2::5] >> 7,
        "t": ((b[2::5] & 0x7F) << 16) | (b[3::5] << 8) | b[4::5],
    }


def read_idx_gz(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


@pytest.fixture(scope="module")
def test100(data_dir):
    d = data_dir / "nmnist_small"
    return load_nmnist(d / "test", d / "test100.txt")


@pytest.fixture(scope="module")
def mnist_images(data_dir):
    imgs = read_idx_gz(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = read_idx_gz(data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz", 8)
    return imgs, labels


# ---------------------------------------------------------------------------------------------- N-MNIST


def test_nmnist_synthetic_events_to_frames(tmp_path):
    d = tmp_path / "ev"
    d.mkdir()
    # sample "a": t0 = 500, t_last - t0 = 3100 -> 3 bins [500,1500) [1500,2500) [2500,3500); t=3600 dropped
    write_bs2(
        d / "a.bs2",
        [
            (3, 5, 1, 500),
            (3, 5, 1, 1499),  # same bin, same pixel -> count 2 (not clipped)
            (0, 33, 0, 1500),  # bin boundary belongs to the next bin
            (33, 0, 1, 2499),
            (10, 20, 0, 2500),
            (10, 20, 0, 3499),
            (1, 2, 1, 3600),  # in the incomplete 4th bin -> dropped
        ],
    )
    # sample "b": shorter than one window -> exactly one bin holding every event (tonic: max(n, 1))
    write_bs2(d / "b.bs2", [(7, 8, 0, 0), (7, 8, 1, 400)])
    # sample "c": t_last - t0 == 2 windows exactly -> 2 bins; the event at t0 + 2000 starts a 3rd bin: dropped
    write_bs2(d / "c.bs2", [(2, 3, 1, 70_000), (4, 5, 0, 71_000), (6, 7, 1, 72_000)])
    write_labels(tmp_path / "labels.txt", [("a", 3), ("b", 9), ("c", 0)])

    ds = load_nmnist(d, tmp_path / "labels.txt", time_window_us=1000)
    assert ds.n == 3 and ds.steps == 3 and ds.input_shape == (2, 34, 34)
    assert ds.lengths.tolist() == [3, 1, 2]
    assert ds.y.tolist() == [3, 9, 0]
    assert ds.ids.tolist() == ["a", "b", "c"]
    assert ds.x.dtype == np.uint8

    exp = np.zeros((3, 3, 2, 34, 34), np.int64)
    exp[0, 0, 1, 5, 3] = 2  # [t, polarity, y, x]
    exp[0, 1, 0, 33, 0] = 1
    exp[0, 1, 1, 0, 33] = 1
    exp[0, 2, 0, 20, 10] = 2
    exp[1, 0, 0, 8, 7] = 1
    exp[1, 0, 1, 8, 7] = 1
    exp[2, 0, 1, 3, 2] = 1
    exp[2, 1, 0, 5, 4] = 1
    np.testing.assert_array_equal(ds.x, exp)
    assert ds.meta["events_total"] == 12 and ds.meta["events_in_frames"] == 10

    # the public binning helper agrees with a literal tonic re-implementation on each sample
    for name in "abc":
        ev = read_nmnist_events(d / f"{name}.bs2")
        np.testing.assert_array_equal(bin_events(ev, 1000), tonic_to_frame(ev, 1000))

    # a coarser window: "a" has floor(3100 / 2000) = 1 bin of 2 ms
    ds2 = load_nmnist(d, tmp_path / "labels.txt", time_window_us=2000)
    assert ds2.lengths.tolist() == [1, 1, 1]
    assert int(ds2.x[0].sum()) == 4


def test_nmnist_overflow_markers(tmp_path):
    # y == 240 marks a timestamp overflow: +2**13 us from that record on, and the marker itself is dropped
    write_bs2(tmp_path / "o.bs2", [(1, 1, 0, 100), (0, 240, 0, 0), (2, 2, 1, 50)])
    ev = read_nmnist_events(tmp_path / "o.bs2")
    assert ev["t"].tolist() == [100, 8192 + 50]
    assert ev["x"].tolist() == [1, 2] and ev["p"].tolist() == [0, 1]


def test_nmnist_test100_real(test100, data_dir):
    d = data_dir / "nmnist_small"
    ds = test100
    labels = np.loadtxt(d / "test100.txt", skiprows=1, dtype=int)
    assert ds.n == 100 and ds.input_shape == (2, 34, 34)
    np.testing.assert_array_equal(ds.y, labels[:, 1])
    assert ds.ids.tolist() == [str(i) for i in labels[:, 0]]
    assert ds.label_histogram().tolist() == TEST100_HIST

    total = kept = 0
    for i, sid in enumerate(ds.ids):
        ev = provenance_decode(d / "test" / f"{sid}.bs2")
        t = ev["t"]
        n_bins = max(1, (t[-1] - t[0]) // 1000)
        assert ds.lengths[i] == n_bins
        total += t.size
        kept += int(np.count_nonzero(t - t[0] < n_bins * 1000))
        # padding after the true length is empty
        assert not ds.x[i, n_bins:].any()
    assert total == 385_596  # PROVENANCE
    assert 385_596 - 5000 < kept < 385_596  # some, but few, events fall in dropped partial bins
    assert int(ds.x.sum(dtype=np.int64)) == kept
    assert ds.meta["events_total"] == total and ds.meta["events_in_frames"] == kept

    # element-wise equality with a literal tonic ToFrame re-implementation on a few real recordings
    for i in (0, 41, 99):
        ev = provenance_decode(d / "test" / f"{ds.ids[i]}.bs2")
        ref = tonic_to_frame(ev, 1000)
        np.testing.assert_array_equal(ds.x[i, : ds.lengths[i]], ref)


def test_nmnist_errors(tmp_path, data_dir):
    d = data_dir / "nmnist_small"
    with pytest.raises(SbcError, match="directory not found"):
        load_nmnist(tmp_path / "nope", d / "test100.txt")
    with pytest.raises(SbcError, match="labels file not found"):
        load_nmnist(d / "test", tmp_path / "nope.txt")
    # labels name a sample that is not in the directory -> the file is named
    write_labels(tmp_path / "l.txt", [("60001", 7), ("99999", 1)])
    with pytest.raises(SbcError, match=r"99999\.bs2"):
        load_nmnist(d / "test", tmp_path / "l.txt")
    # malformed label files
    (tmp_path / "bad1.txt").write_bytes(b"#sample #class\r\n60001\t7\t3\r\n")
    with pytest.raises(SbcError, match="line 2"):
        read_labels_file(tmp_path / "bad1.txt")
    (tmp_path / "bad2.txt").write_bytes(b"#sample #class\r\n60001\tseven\r\n")
    with pytest.raises(SbcError, match="not an integer"):
        read_labels_file(tmp_path / "bad2.txt")
    (tmp_path / "bad3.txt").write_bytes(b"#sample #class\r\n")
    with pytest.raises(SbcError, match="no samples"):
        read_labels_file(tmp_path / "bad3.txt")
    # broken recordings
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "t.bs2").write_bytes(b"\x01\x02\x03\x04\x05\x06")
    write_labels(tmp_path / "t.txt", [("t", 1)])
    with pytest.raises(SbcError, match="multiple of 5"):
        load_nmnist(ev, tmp_path / "t.txt")
    write_bs2(ev / "t.bs2", [(40, 1, 0, 0)])
    with pytest.raises(SbcError, match="outside the 34x34 sensor"):
        load_nmnist(ev, tmp_path / "t.txt")
    (ev / "t.bs2").write_bytes(b"")
    with pytest.raises(SbcError, match="no events"):
        load_nmnist(ev, tmp_path / "t.txt")
    with pytest.raises(SbcError, match="time window"):
        load_nmnist(d / "test", d / "test100.txt", time_window_us=0)


# ---------------------------------------------------------------------------------------------- MNIST


def test_mnist_labels_and_analog(data_dir, mnist_images):
    imgs, labels = mnist_images
    ds = load_mnist(data_dir / "mnist", steps=32, encoding="analog")
    assert ds.n == 10_000 and ds.steps == 32 and ds.input_shape == (1, 28, 28)
    assert ds.label_histogram().tolist() == MNIST_TEST_HIST
    np.testing.assert_array_equal(ds.y, labels)
    assert ds.x.dtype == np.uint8 and ds.x.shape == (10_000, 1, 1, 28, 28)
    assert ds.repeat_steps == 32 and ds.x_scale == 1 / 255
    # every step carries exactly pixel/255 (float64), and its float32 rounding in float32 batches
    x64 = ds.sample(7, dtype=np.float64)
    assert x64.shape == (32, 1, 28, 28)
    exact = imgs[7].astype(np.float64) / 255
    for t in (0, 31):
        np.testing.assert_array_equal(x64[t, 0], exact)
    x_tb, y_b = next(ds.take(3, start=5).reshaped((784,)).batches(2))
    assert x_tb.dtype == np.float32 and x_tb.shape == (32, 2, 784)
    np.testing.assert_array_equal(x_tb[17, 1], (imgs[6].astype(np.float64) / 255).astype(np.float32).ravel())
    assert y_b.tolist() == labels[5:7].tolist()


def test_mnist_bernoulli_matches_provenance_recipe(data_dir, mnist_images):
    imgs, labels = mnist_images
    ds = load_mnist(data_dir / "mnist", steps=100, limit=3, seed=0)
    assert ds.x.dtype == np.bool_ and ds.x.shape == (3, 100, 1, 28, 28)
    rng = np.random.default_rng(0)
    for i in range(3):
        ref = rng.random((100, 1, 28, 28)) < imgs[i].reshape(1, 28, 28) / 255
        np.testing.assert_array_equal(ds.x[i], ref)
    assert ds.y.tolist() == labels[:3].tolist()
    assert 0.05 < ds.x.mean() < 0.2  # MNIST mean intensity is ~0.13

    # same draws with a flat (784,) input shape
    flat = load_mnist(data_dir / "mnist", steps=100, limit=3, seed=0, shape=(784,))
    np.testing.assert_array_equal(flat.x.reshape(ds.x.shape), ds.x)
    # start > 0: the generator starts fresh at the first selected image
    st = load_mnist(data_dir / "mnist", steps=10, limit=2, start=5, seed=3)
    rng = np.random.default_rng(3)
    for i in range(2):
        np.testing.assert_array_equal(st.x[i], rng.random((10, 1, 28, 28)) < imgs[5 + i] / 255)
    assert st.ids.tolist() == [5, 6]
    other = load_mnist(data_dir / "mnist", steps=10, limit=2, start=5, seed=4)
    assert not np.array_equal(other.x, st.x)


def test_mnist_errors(tmp_path, data_dir):
    m = data_dir / "mnist"
    with pytest.raises(SbcError, match="directory not found"):
        load_mnist(tmp_path / "none", steps=10)
    with pytest.raises(SbcError, match="MNIST file not found"):
        load_mnist(tmp_path, steps=10)
    with pytest.raises(SbcError, match="encoding"):
        load_mnist(m, steps=10, encoding="poisson")
    with pytest.raises(SbcError, match="784"):
        load_mnist(m, steps=10, shape=(2, 28, 28))
    with pytest.raises(SbcError, match="steps"):
        load_mnist(m, steps=0)
    with pytest.raises(SbcError, match="start"):
        load_mnist(m, steps=1, start=10_000)
    # images and labels swapped -> magic number check
    bad = tmp_path / "swapped"
    bad.mkdir()
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes((m / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes((m / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(SbcError, match="magic number 2049, expected 2051"):
        load_mnist(bad, steps=1)
    # truncated raw (uncompressed) file
    raw = tmp_path / "raw"
    raw.mkdir()
    with gzip.open(m / "t10k-images-idx3-ubyte.gz") as f:
        (raw / "t10k-images-idx3-ubyte").write_bytes(f.read()[:5000])
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes((m / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(SbcError, match="header says"):
        load_mnist(raw, steps=1)


# ---------------------------------------------------------------------------------------------- .npz format


def test_npz_round_trip_preserves_everything(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 300, size=(5, 4, 3, 2))  # int64 counts up to 299 -> stored as uint16
    lengths = np.array([4, 2, 3, 4, 0])
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    ds = Dataset(x, np.array([1, 0, 4, 2, 2]), lengths=lengths, x_scale=0.5, ids=["s1", "s2", "s3", "s4", "s5"],
                 meta={"source": "unit", "seed": 3})
    p = save_dataset(ds, tmp_path / "sub" / "d.npz")
    assert p == tmp_path / "sub" / "d.npz" and p.is_file()
    back = load_dataset(p)
    assert back.x.dtype == np.uint16
    np.testing.assert_array_equal(back.x, x)
    np.testing.assert_array_equal(back.y, ds.y)
    np.testing.assert_array_equal(back.lengths, lengths)
    assert back.x_scale == 0.5 and back.repeat_steps is None
    assert back.ids.tolist() == ["s1", "s2", "s3", "s4", "s5"]
    assert back.meta == {"source": "unit", "seed": 3}
    with np.load(p, allow_pickle=False) as z:
        assert json.loads(str(z["meta"])) == {"seed": 3, "source": "unit"}

    # static input with repeat_steps: one stored frame, T from repeat_steps
    st = Dataset(np.array([[[0, 255]], [[128, 1]]], np.uint8), np.array([3, 4]), x_scale=1 / 255, repeat_steps=6)
    back = load_dataset(save_dataset(st, tmp_path / "s.npz"))
    assert back.steps == 6 and back.x.shape == (2, 1, 2) and back.repeat_steps == 6 and back.x_scale == 1 / 255
    assert back.lengths is None and back.ids is None and back.meta == {}
    np.testing.assert_array_equal(back.x, st.x)

    # 0/1 data is stored as uint8 (bool stays bool)
    assert compact_dtype(np.array([0, 1, 1])) == np.uint8
    assert compact_dtype(np.array([True, False])) == np.bool_
    assert compact_dtype(np.array([0.0, 70000.0])) == np.uint32
    assert compact_dtype(np.array([-1, 3])) == np.int8
    assert compact_dtype(np.array([0.5, 1.0])) == np.float64


def test_batches_time_major_float32():
    x = np.arange(5 * 3 * 2, dtype=np.uint8).reshape(5, 3, 2)
    ds = Dataset(x, np.arange(5), lengths=[3, 3, 1, 2, 3])
    out = list(ds.batches(2))
    assert [b[0].shape for b in out] == [(3, 2, 2), (3, 2, 2), (3, 1, 2)]
    for xb, _ in out:
        assert xb.dtype == np.float32 and xb.flags.c_contiguous and xb.flags.writeable
    np.testing.assert_array_equal(np.concatenate([b[0] for b in out], axis=1), np.transpose(x, (1, 0, 2)))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in out]), np.arange(5))
    lens = [b[2].tolist() for b in ds.batches(2, with_lengths=True)]
    assert lens == [[3, 3], [1, 2], [3]]
    # repeat_steps + x_scale: every step is the same scaled frame
    st = Dataset(np.array([[[0, 255, 51]]], np.uint8), np.array([1]), x_scale=1 / 255, repeat_steps=4)
    ((xb, yb),) = list(st.batches(8))
    assert xb.shape == (4, 1, 3) and xb.flags.writeable and yb.tolist() == [1]
    np.testing.assert_array_equal(xb, np.broadcast_to(np.array([0, 1, 51 / 255], np.float32), (4, 1, 3)))
    assert next(st.batches(1, with_lengths=True))[2].tolist() == [4]
    with pytest.raises(SbcError, match="batch size"):
        next(ds.batches(0))


def test_subset_take_reshaped():
    x = np.arange(6 * 2 * 4).reshape(6, 2, 4)
    ds = Dataset(x, np.arange(6) % 3, lengths=[2, 1, 2, 2, 1, 2], ids=np.arange(10, 16), meta={"a": 1})
    s = ds.subset([4, 0])
    np.testing.assert_array_equal(s.x, x[[4, 0]])
    assert s.y.tolist() == [1, 0] and s.lengths.tolist() == [1, 2] and s.ids.tolist() == [14, 10]
    assert s.meta == {"a": 1}
    t = ds.take(2, start=3)
    assert t.ids.tolist() == [13, 14] and t.n == 2
    assert ds.take(None, start=4).n == 2 and ds.take(100).n == 6
    r = ds.reshaped((2, 2))
    assert r.input_shape == (2, 2) and r.steps == 2 and r.x.shape == (6, 2, 2, 2)
    with pytest.raises(SbcError, match="cannot reshape"):
        ds.reshaped((3,))
    with pytest.raises(SbcError, match="out of range"):
        ds.subset([6])
    with pytest.raises(SbcError, match="start"):
        ds.take(1, start=7)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(SbcError, match="not found"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(SbcError, match="not an .npz"):
        load_dataset(tmp_path / "text.npz")

    def npz(name, **arrays):
        p = tmp_path / name
        with open(p, "wb") as f:
            np.savez(f, **arrays)
        return p

    x = np.zeros((3, 2, 4), np.uint8)
    with pytest.raises(SbcError, match="missing required array.*y"):
        load_dataset(npz("noy.npz", x=x))
    with pytest.raises(SbcError, match="3 samples but y has 2"):
        load_dataset(npz("mismatch.npz", x=x, y=np.zeros(2, int)))
    with pytest.raises(SbcError, match=r"shape \(N, T"):
        load_dataset(npz("flat.npz", x=np.zeros(3), y=np.zeros(3, int)))
    with pytest.raises(SbcError, match="y must have shape"):
        load_dataset(npz("y2d.npz", x=x, y=np.zeros((3, 1), int)))
    with pytest.raises(SbcError, match="integer labels"):
        load_dataset(npz("yfloat.npz", x=x, y=np.array([0.5, 1, 2])))
    with pytest.raises(SbcError, match="lengths must lie in 0..2"):
        load_dataset(npz("len.npz", x=x, y=np.zeros(3, int), lengths=np.array([1, 2, 5])))
    with pytest.raises(SbcError, match="T = 1"):
        load_dataset(npz("rep.npz", x=x, y=np.zeros(3, int), repeat_steps=np.array(4)))
    with pytest.raises(SbcError, match="not valid JSON"):
        load_dataset(npz("meta.npz", x=x, y=np.zeros(3, int), meta=np.array("{oops")))
    with pytest.raises(SbcError, match="cannot read dataset array"):
        load_dataset(npz("obj.npz", x=np.array([None, 1], dtype=object), y=np.zeros(2, int)))
    p = npz("fine.npz", x=x, y=np.zeros(3, int), extra=np.ones(2))  # unknown keys are ignored
    assert load_dataset(p).n == 3


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_main():
    from sbc_onnx.cli import main

    return main


def test_cli_nmnist_info(cli_main, data_dir, tmp_path, capsys):
    d = data_dir / "nmnist_small"
    out = tmp_path / "t100.npz"
    assert cli_main(["data", "nmnist", str(d / "test"), str(d / "test100.txt"), "-o", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "100 samples" in line and "(2, 34, 34)" in line and str(out) in line
    ds = load_dataset(out)
    assert ds.n == 100 and ds.meta["time_window_us"] == 1000 and ds.meta["events_total"] == 385_596
    assert ds.label_histogram().tolist() == TEST100_HIST

    assert cli_main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "histogram [8, 14, 8, 11, 14, 7, 10, 15, 2, 11]" in text and "uint8" in text
    assert "100 samples, 313 steps (lengths 296..313)" in text


def test_cli_mnist(cli_main, data_dir, tmp_path, capsys):
    out = tmp_path / "m.npz"
    args = ["data", "mnist", str(data_dir / "mnist"), "-o", str(out), "--steps", "20", "--limit", "4"]
    assert cli_main(args + ["--start", "2", "--seed", "1", "--shape", "784"]) == 0
    assert "4 samples" in capsys.readouterr().out
    ds = load_dataset(out)
    assert ds.input_shape == (784,) and ds.steps == 20 and ds.ids.tolist() == [2, 3, 4, 5]
    ref = load_mnist(data_dir / "mnist", steps=20, limit=4, start=2, seed=1, shape=(784,))
    np.testing.assert_array_equal(ds.x, ref.x)

    out2 = tmp_path / "a.npz"
    assert cli_main(["data", "mnist", str(data_dir / "mnist"), "-o", str(out2), "--steps", "32",
                     "--encoding", "analog", "--limit", "10"]) == 0
    a = load_dataset(out2)
    assert a.repeat_steps == 32 and a.steps == 32 and a.x.shape == (10, 1, 1, 28, 28)
    assert cli_main(["data", "info", str(out2)]) == 0
    assert "repeat_steps: 32" in capsys.readouterr().out


def test_cli_errors(cli_main, data_dir, tmp_path, capsys):
    assert cli_main(["data", "info", str(tmp_path / "nope.npz")]) == 2
    assert "error: dataset file not found" in capsys.readouterr().err
    d = data_dir / "nmnist_small"
    assert cli_main(["data", "nmnist", str(tmp_path), str(d / "test100.txt"), "-o", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: N-MNIST sample file not found") and "60001.bs2" in err
    assert cli_main(["data", "mnist", str(data_dir / "mnist"), "-o", str(tmp_path / "o.npz"), "--steps", "5",
                     "--shape", "1,a"]) == 2
    assert "--shape" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()
