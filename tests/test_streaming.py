"""Datasets stay on disk: batches are read as they are used (io/npz_rows.py, data.StepBatch), calibration
on a streamed dataset is the calibration on the same arrays in memory, and the memory estimate counts a
batch, not the dataset (memory.py)."""

from __future__ import annotations

import tracemalloc

import nir
import numpy as np
import pytest

from sbc_onnx.calibrate import calibrate
from sbc_onnx.data import Dataset, StepBatch, load_dataset, save_dataset
from sbc_onnx.io.npz_rows import NpzRows
from sbc_onnx.memory import estimate_peak, process_rss
from sbc_onnx.sim import SimConfig, Walker


def small_cnn(rng) -> nir.NIRGraph:
    """Conv2d(2->3, 3x3, pad 1) -> LIF -> Flatten -> Affine(75->4) -> LIF, on (2, 5, 5) inputs."""
    n1, n2 = (3, 5, 5), (4,)
    nodes = {
        "input": nir.Input(np.array([2, 5, 5])),
        "c": nir.Conv2d(input_shape=(5, 5), weight=rng.normal(0, 0.6, (3, 2, 3, 3)), stride=1, padding=1,
                        dilation=1, groups=1, bias=np.zeros(3)),
        "l1": nir.LIF(tau=np.full(n1, 2e-3), r=np.ones(n1), v_leak=np.zeros(n1), v_threshold=np.full(n1, 0.5)),
        "f": nir.Flatten(input_type={"input": np.array(n1)}, start_dim=0),
        "a": nir.Affine(weight=rng.normal(0, 0.4, (4, 75)), bias=np.zeros(4)),
        "l2": nir.LIF(tau=np.full(n2, 2e-3), r=np.ones(n2), v_leak=np.zeros(n2), v_threshold=np.full(n2, 0.5)),
        "output": nir.Output(np.array([4])),
    }
    edges = [("input", "c"), ("c", "l1"), ("l1", "f"), ("f", "a"), ("a", "l2"), ("l2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def ragged_counts(rng, n: int, steps: int, shape=(2, 5, 5)) -> Dataset:
    x = rng.poisson(0.4, (n, steps) + shape).astype(np.uint8)
    lengths = rng.integers(steps // 2, steps + 1, n)
    for i, k in enumerate(lengths):
        x[i, k:] = 0
    return Dataset(x, rng.integers(0, 4, n), lengths=lengths, x_scale=0.5)


def test_streamed_calibration_gives_the_in_memory_hessians(tmp_path):
    rng = np.random.default_rng(3)
    graph, ds = small_cnn(rng), ragged_counts(rng, 21, 12)
    walker = Walker(graph, SimConfig(dt=1e-3))
    on_disk = load_dataset(save_dataset(ds, tmp_path / "d.npz"))
    assert isinstance(on_disk.x, NpzRows)
    # a subset out of order and a batch size that leaves a partial batch: both read through the file
    pick = np.array([20, 3, 4, 5, 0, 19, 7, 7, 11])
    for a, b in ((ds, on_disk), (ds.subset(pick), on_disk.subset(pick))):
        mem = calibrate(walker, a, batch_size=4, input_norms=True)
        disk = calibrate(walker, b, batch_size=4, input_norms=True)
        assert mem.n_samples == disk.n_samples == a.n
        for name in mem.layers:
            assert np.array_equal(mem.layers[name].H, disk.layers[name].H)
            assert np.array_equal(mem.layers[name].acc._sq, disk.layers[name].acc._sq)
            assert mem.layers[name].inputs == disk.layers[name].inputs
        assert np.abs(mem.layers["a"].H).sum() > 0


def test_step_batches_equal_whole_batches(tmp_path):
    rng = np.random.default_rng(4)
    ragged = ragged_counts(rng, 7, 6)
    static = Dataset(rng.integers(0, 256, (5, 1, 3)).astype(np.uint8), np.arange(5), x_scale=1 / 255,
                     repeat_steps=4)
    for ds in (ragged, static, load_dataset(save_dataset(ragged, tmp_path / "r.npz"))):
        for (xa, ya, la), (xb, yb, lb) in zip(ds.batches(3, with_lengths=True),
                                              ds.batches(3, with_lengths=True, per_step=True)):
            assert isinstance(xa, np.ndarray) and isinstance(xb, StepBatch) and xa.shape == xb.shape
            assert np.array_equal(ya, yb) and np.array_equal(la, lb)
            for t in range(xa.shape[0]):
                step = xb[t]
                assert step.dtype == xa.dtype and np.array_equal(step, xa[t])
            assert np.array_equal(np.asarray(xb), xa)
    # static frames decode to pixel/255 exactly at every step
    x0 = next(static.batches(5))[0]
    assert np.array_equal(x0[3], (static.x[:, 0].astype(np.float64) / 255).astype(np.float32))


def test_lazy_selection_reads_the_rows_asked_for(tmp_path):
    rng = np.random.default_rng(5)
    ds = ragged_counts(rng, 30, 4)
    lazy = load_dataset(save_dataset(ds, tmp_path / "d.npz"))
    idx = np.array([29, 0, 15, 15, 16, 2, -1])
    assert np.array_equal(lazy.subset(idx).x[np.arange(7)], ds.x[idx])
    assert np.array_equal(lazy.take(5, start=10).subset([4, 0]).x[:], ds.x[[14, 10]])
    flat = lazy.reshaped((50,))
    assert flat.input_shape == (50,) and np.array_equal(flat.x[[3, 1]], ds.x[[3, 1]].reshape(2, 4, 50))
    assert np.array_equal(np.asarray(lazy.x), ds.x)


def test_reading_batches_never_holds_the_whole_array(tmp_path):
    """x takes 12.8 MB once decompressed (0.5 MB in the file); loading the dataset (which reads x through
    once, for its CRC) and going through it in batches of 4 may allocate a small fraction of that. np.load of
    the whole member would not."""
    rng = np.random.default_rng(6)
    x = (rng.random((500, 50, 2, 16, 16)) < 0.02).astype(np.uint8)
    path = save_dataset(Dataset(x, rng.integers(0, 10, 500)), tmp_path / "big.npz")
    whole = x.nbytes
    del x
    tracemalloc.start()
    try:
        ds = load_dataset(path)
        seen = 0
        for x_tb, y in ds.batches(4, per_step=True):
            seen += int(sum(x_tb[t].sum() for t in range(x_tb.shape[0])))
            del x_tb
        for x_tb, y in ds.batches(4):  # whole float batches too: 4 x 50 x 512 float32 = 0.4 MB
            del x_tb
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen > 0
    assert peak < whole / 6, f"peak {peak} bytes while reading a {whole}-byte array in batches"


def test_estimate_counts_a_batch_not_the_dataset(tmp_path):
    rng = np.random.default_rng(7)
    walker = Walker(small_cnn(rng), SimConfig(dt=1e-3))
    few = load_dataset(save_dataset(ragged_counts(rng, 8, 20), tmp_path / "few.npz"))
    many = load_dataset(save_dataset(ragged_counts(rng, 200, 20), tmp_path / "many.npz"))
    layers = ["c", "a"]
    e_few, e_many = (estimate_peak(walker, layers, d, 8) for d in (few, many))
    assert (e_few.batch, e_few.simulation, e_few.calibration, e_few.damage) == \
           (e_many.batch, e_many.simulation, e_many.calibration, e_many.damage)
    # one batch: 8 stored samples (20 x 50 uint8) and one float32 step of 8 samples
    assert e_few.batch == 8 * 20 * 50 + 8 * 50 * 4
    # a step of the walker for one sample: inputs and outputs of every node, states, counts, im2col columns
    # (25 positions x 18 values) -- at least the conv input and output, the LIF state and the columns
    assert e_few.simulation >= 8 * 4 * (50 + 75 + 75 + 25 * 18)
    # Hessians: d = 18 (conv) and 75 (affine): 12 bytes per entry (float64 sum, float32 block product)
    assert e_few.calibration >= 12 * (18 * 18 + 75 * 75)
    assert e_few.process == pytest.approx(process_rss(), rel=0.2)
    assert e_few.total == e_few.process + e_few.batch + e_few.simulation + max(e_few.calibration, e_few.damage)
    assert "expected peak memory" in e_few.describe()
    smaller = estimate_peak(walker, layers, many, 2)
    assert smaller.batch < e_many.batch and smaller.simulation < e_many.simulation


def test_rows_on_disk_index_like_the_array(tmp_path):
    """Tuple keys index the rows read from disk like the in-memory array (rows first, then the rest)."""
    x = np.random.default_rng(0).random((5, 4, 3)).astype(np.float32)
    save_dataset(Dataset(x, np.zeros(5, int)), tmp_path / "a.npz")
    rows = load_dataset(tmp_path / "a.npz").x
    for key in [(1, slice(0, 2)), (slice(1, 4), 2), ([0, 3], slice(None), 1), (2,), 3, slice(None, None, 2), [4, 0]]:
        np.testing.assert_array_equal(rows[key], x[key], err_msg=str(key))
