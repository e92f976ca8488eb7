"""Threshold repair (repair.py): compressed firing rates brought back to the dense ones on calibration data."""

import copy

import nir
import numpy as np
import pytest

from sbc_onnx.data import Dataset
from sbc_onnx.repair import firing_rates, repair_thresholds
from sbc_onnx.sim import SimConfig


def _net(rng, n_in=40, n_hid=32, n_out=10):
    nodes = {
        "input": nir.Input(np.array([n_in])),
        "fc1": nir.Linear(rng.normal(0, 0.5, (n_hid, n_in)).astype(np.float32)),
        "if1": nir.IF(r=np.ones(n_hid, np.float32), v_threshold=np.ones(n_hid, np.float32),
                      v_reset=np.zeros(n_hid, np.float32)),
        "fc2": nir.Linear(rng.normal(0, 0.5, (n_out, n_hid)).astype(np.float32)),
        "if2": nir.IF(r=np.ones(n_out, np.float32), v_threshold=np.float32(1.0) * np.ones(n_out, np.float32),
                      v_reset=np.zeros(n_out, np.float32)),
        "output": nir.Output(np.array([n_out])),
    }
    edges = [("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "if2"), ("if2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def _damaged(graph, keep=0.8, gain=0.8):
    """Magnitude pruning to `keep` and a lost gain: the kind of damage that moves firing rates."""
    g = copy.deepcopy(graph)
    for n in ("fc1", "fc2"):
        w = g.nodes[n].weight
        g.nodes[n].weight = (w * (np.abs(w) >= np.quantile(np.abs(w), 1 - keep)) * gain).astype(np.float32)
    return g


@pytest.fixture
def case():
    rng = np.random.default_rng(3)
    graph = _net(rng)
    data = Dataset((rng.random((64, 60, 40)) < 0.3).astype(np.uint8), rng.integers(0, 10, 64))
    return graph, _damaged(graph), data, SimConfig()


def test_repair_matches_dense_rates_within_5_percent(case):
    dense, comp, data, cfg = case
    weights = {n: comp.nodes[n].weight.copy() for n in ("fc1", "fc2")}
    rep = repair_thresholds(dense, comp, data, cfg, passes=6)
    assert rep.error(rep.rates_before) > 0.1  # the damage is real
    after = firing_rates(comp, data, cfg, ["if1", "if2"])
    assert rep.error(after) < 0.05
    for n, w in weights.items():  # only thresholds changed
        np.testing.assert_array_equal(comp.nodes[n].weight, w)
    assert not np.allclose(comp.nodes["if1"].v_threshold, 1.0)


def test_rates_are_per_channel_spikes_per_step(case):
    dense, _, data, cfg = case
    from sbc_onnx.graph import flatten
    from sbc_onnx.sim import Walker
    spikes = []
    x, _ = next(data.batches(64))
    Walker(flatten(dense), cfg).run(x, on_output={"if1": lambda t, s: spikes.append(np.asarray(s))},
                                    record_outputs=False)
    want = np.stack(spikes).mean(axis=(0, 1))
    np.testing.assert_allclose(firing_rates(dense, data, cfg, ["if1"], batch_size=64)["if1"], want)


def test_shared_parameters_become_per_channel_and_the_model_still_writes(case, tmp_path):
    import sbc_onnx as sbc

    dense, comp, data, cfg = case
    for f in ("r", "v_threshold", "v_reset"):  # one value shared by the layer's neurons
        setattr(comp.nodes["if2"], f, np.asarray(getattr(comp.nodes["if2"], f)[0]))
    repair_thresholds(dense, comp, data, cfg, passes=1, neurons=["if2"])
    node = comp.nodes["if2"]
    assert np.shape(node.v_threshold) == np.shape(node.r) == np.shape(node.v_reset) == (10,)
    assert len(np.unique(node.v_threshold)) > 1 and len(np.unique(node.r)) == 1
    for ext in ("nir", "onnx"):  # NIR keeps a node's parameters one shape
        sbc.save_model(comp, tmp_path / f"m.{ext}", cfg=cfg)
        np.testing.assert_array_equal(sbc.load_model(tmp_path / f"m.{ext}").nodes["if2"].v_threshold, node.v_threshold)


def test_per_layer_repair_keeps_one_threshold_per_layer(case):
    """For chips with one threshold per layer: one factor per layer, its mean rate brought back (within 5 %)."""
    dense, comp, data, cfg = case
    names = ["if1", "if2"]
    want = {n: float(r.mean()) for n, r in firing_rates(dense, data, cfg, names).items()}
    before = {n: float(r.mean()) for n, r in firing_rates(comp, data, cfg, names).items()}
    report = repair_thresholds(dense, comp, data, cfg, per_layer=True)
    after = {n: float(r.mean()) for n, r in firing_rates(comp, data, cfg, names).items()}
    for n in names:
        assert len(np.unique(comp.nodes[n].v_threshold)) == 1  # still homogeneous
        assert abs(after[n] - want[n]) <= 0.05 * want[n] < abs(before[n] - want[n]), (n, before, after, want)
    assert report.passes > 0


def test_repair_on_a_chip_with_one_threshold_per_layer_passes_check(case, tmp_path):
    """--target with --repair: the repaired integer model still satisfies the profile (`check`)."""
    from sbc_onnx.hardware.check import check_graph
    from sbc_onnx.hardware.deploy import compress_for_target, target_plan
    from sbc_onnx.hardware.profiles import load_profile

    dense, _, data, cfg = case
    profile = load_profile("speck")
    assert profile.homogeneous_params
    plan = target_plan(profile, sparsity=0.8, repair=True)
    assert plan.repair and plan.repair_per_layer
    int_g, _, deploy = compress_for_target(dense, data, profile, plan, cfg=cfg)
    assert not deploy.errors, deploy.errors
    assert [v for v in check_graph(int_g, profile, cfg) if v.severity == "error"] == []
