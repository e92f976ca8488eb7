"""The reset-aware SMP objective (calibrate.py "smp-reset"; --reset-aware)."""

import nir
import numpy as np
import pytest
from topologies import DT, _affine, _lif

import sbc_onnx as sbc
from sbc_onnx.calibrate import calibrate
from sbc_onnx.data import Dataset


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(3)
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([32])), "a1": _affine(rng, 40, 32), "l1": _lif(40),
                            "a2": _affine(rng, 10, 40), "l2": _lif(10), "output": nir.Output(np.array([10]))},
                     edges=[("input", "a1"), ("a1", "l1"), ("l1", "a2"), ("a2", "l2"), ("l2", "output")])
    data = Dataset((rng.random((12, 30, 32)) < 0.3).astype(np.uint8), rng.integers(0, 10, 12))
    return g, sbc.SimConfig(dt=DT), data


def test_membrane_decay_is_shortened_by_the_fed_neurons_rate(mlp):
    g, cfg, data = mlp
    walker = sbc.Walker(g, cfg)
    plain = calibrate(walker, data, objective="smp")
    aware = calibrate(walker, data, objective="smp-reset")
    counts = walker.run(np.swapaxes(data.x, 0, 1).astype(np.float32), record_outputs=False).counts
    for layer, neuron in (("a1", "l1"), ("a2", "l2")):
        rate = counts[neuron].sum() / (counts[neuron].size * data.x.shape[1])  # spikes per neuron per step
        assert 0 < rate < 1
        b = plain.layers[layer].betas
        assert aware.layers[layer].betas == pytest.approx(b[:-1] + (b[-1] * (1 - rate),), rel=1e-6)
        assert not np.allclose(aware.layers[layer].H, plain.layers[layer].H)
    # reset by subtraction keeps the integrated error: the plain SMP kernel
    sub = sbc.Walker(g, cfg.with_(reset="subtract"))
    assert calibrate(sub, data, objective="smp-reset").layers["a1"].betas == \
        calibrate(sub, data, objective="smp").layers["a1"].betas


def test_compress_reset_aware(mlp):
    from sbc_onnx.errors import SbcError

    g, cfg, data = mlp
    g1, r1 = sbc.compress(g, data, sparsity=0.5, cfg=cfg, reset_aware=True, measure_damage=False)
    g0, _ = sbc.compress(g, data, sparsity=0.5, cfg=cfg, measure_damage=False)
    assert r1.overall_sparsity == pytest.approx(0.5, abs=0.01)
    assert not np.array_equal(g1.nodes["a1"].weight, g0.nodes["a1"].weight)
    with pytest.raises(SbcError, match="reset-aware"):
        sbc.compress(g, data, sparsity=0.5, cfg=cfg, method="obc", reset_aware=True)
    plain = calibrate(sbc.Walker(g, cfg), data, objective="smp")
    with pytest.raises(SbcError, match="smp-reset"):  # a calibration of the plain objective is refused
        sbc.compress(g, data, sparsity=0.5, cfg=cfg, reset_aware=True, calibration=plain)
