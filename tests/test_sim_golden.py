"""Golden tests: the walker against recordings and accuracies measured by independent simulators."""

from __future__ import annotations

import numpy as np
import pytest

from sbc_onnx.data import load_mnist, load_nmnist
from sbc_onnx.evaluate import evaluate
from sbc_onnx.io.nir_io import read_nir
from sbc_onnx.sim import SimConfig, Walker


def _lif_trace(data_dir, csv_name, cfg):
    g = read_nir(data_dir / "nir_paper/01_lif/lif_norse.nir")
    rec = np.loadtxt(data_dir / "nir_paper/01_lif" / csv_name, delimiter=",")
    v = []
    res = Walker(g, cfg).run(rec[:, 0].reshape(-1, 1, 1), on_state={"1": lambda t, s: v.append(s["v"][0, 0])})
    return rec, np.array(v), res.outputs["output"][:, 0, 0]


def test_lif_norse_euler_reset_to_v_reset(data_dir):
    rec, v, spikes = _lif_trace(data_dir, "lif_norse.csv", SimConfig(dt=1e-4, dtype="float64"))
    assert np.flatnonzero(spikes).tolist() == np.flatnonzero(rec[:, 2]).tolist() == [460, 510, 710, 760]
    assert np.abs(v - rec[:, 1]).max() < 1e-6


def test_lif_exact_subtract(data_dir):
    cfg = SimConfig(dt=1e-4, integrator="exact", reset="subtract", dtype="float64")
    rec, _, spikes = _lif_trace(data_dir, "lif_exact.csv", cfg)
    assert np.flatnonzero(spikes).tolist() == np.flatnonzero(rec[:, 2]).tolist()


def test_lif_euler_is_not_exact(data_dir):
    """The two integrators must differ on this trace (otherwise the tests above prove nothing)."""
    _, v_euler, _ = _lif_trace(data_dir, "lif_norse.csv", SimConfig(dt=1e-4, dtype="float64"))
    _, v_exact, _ = _lif_trace(data_dir, "lif_norse.csv", SimConfig(dt=1e-4, integrator="exact", dtype="float64"))
    assert np.abs(v_euler - v_exact).max() > 1e-4


@pytest.fixture(scope="module")
def nmnist_test(data_dir):
    return load_nmnist(data_dir / "nmnist_small/test", data_dir / "nmnist_small/test100.txt")


def test_cnn_sinabs_nmnist_test100(data_dir, nmnist_test):
    g = read_nir(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir")
    res = evaluate(g, nmnist_test, SimConfig(), batch_size=100)
    assert res.accuracy >= 0.99, res.line()


@pytest.mark.slow
def test_cnn_sinabs_nmnist_train500(data_dir):
    ds = load_nmnist(data_dir / "nmnist_small/train", data_dir / "nmnist_small/train500.txt")
    g = read_nir(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir")
    res = evaluate(g, ds, SimConfig(), batch_size=100)
    assert res.accuracy >= 0.97, res.line()


@pytest.fixture(scope="module")
def mnist_rate(data_dir):
    return load_mnist(data_dir / "mnist", steps=100, encoding="bernoulli", limit=1000, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("reset,low,high", [("subtract", 0.95, 1.0), ("to_v_reset", 0.875, 0.915)])
def test_sinabs_mnist_if_cnn(data_dir, mnist_rate, reset, low, high):
    """Independent simulator: 96.2 % with subtract, 89.5 % with the graph's reset to zero."""
    g = read_nir(data_dir / "sinabs_mnist/mnist_cnn_if.nir")
    res = evaluate(g, mnist_rate, SimConfig(reset=reset), batch_size=250)
    assert low <= res.accuracy <= high, res.line()


def test_lava_cubalif_mnist(data_dir):
    """lava-dl CUBA-LIF net: dt=1e-4 (graph metadata), Euler, current first, analog IF encoder, T=32:
    94.05 % on the first 2000 test images (the fixed-point Loihi simulation gives 94.00 %)."""
    g = read_nir(data_dir / "lava_dl_mnist/mnist_cubalif.nir")
    cfg = SimConfig.from_metadata(g.metadata)
    assert cfg.dt == pytest.approx(1e-4) and cfg.integrator == "euler"
    ds = load_mnist(data_dir / "mnist", steps=32, encoding="analog", limit=2000, shape=(784,))
    res = evaluate(g, ds, cfg, batch_size=500)
    assert abs(res.accuracy - 0.9405) <= 0.005, res.line()
