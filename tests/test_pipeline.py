"""compress(): calibration Hessians, only weights change, budgets, and the CLI end to end."""

from __future__ import annotations

import copy
import json

import nir
import numpy as np
import pytest

import sbc_onnx as sbc
from sbc_onnx import pipeline
from sbc_onnx.calibrate import calibrate, fed_neuron, kernel_betas
from sbc_onnx.cli import main
from sbc_onnx.compress import LayerStats, compress_layer, group_blocks, kernel_matrix, make_allocation
from sbc_onnx.data import Dataset
from sbc_onnx.graph import diff_graphs, flatten

from topologies import ALL, DT

CFG = sbc.SimConfig(dt=DT, dtype="float64")


def _spikes(rng, n, T, d, p=0.3):
    return Dataset((rng.random((n, T, d)) < p).astype(np.uint8), rng.integers(0, 2, n))


def test_hessian_equals_direct_formula():
    """H of a layer = 2/N sum_n (M X_n)^T (M X_n) with M the fed LIF's Euler kernel, X its input spikes."""
    rng = np.random.default_rng(0)
    graph, _ = ALL["sequential"](rng)
    ds = _spikes(rng, 6, 25, 4)
    walker = sbc.Walker(graph, CFG)
    cal = calibrate(walker, ds, batch_size=4)
    # layer a1 reads the input directly; its neuron l1 has tau 2e-3 -> beta = 1 - dt/tau
    beta = 1 - DT / 2e-3
    assert kernel_betas(walker.fg, "a1", CFG) == pytest.approx((beta,))
    M = kernel_matrix(25, (beta,))
    X = ds.x.astype(np.float64)
    H = sum((M @ x).T @ (M @ x) for x in X) * 2 / len(X)
    np.testing.assert_allclose(cal.layers["a1"].H, H, rtol=1e-5)
    # layer a2 reads l1's spikes: record them and check too
    rec = []
    walker.run(np.swapaxes(X, 0, 1), on_input={"a2": lambda t, x: rec.append(x.copy())})
    S = np.stack(rec, 1)  # (n, T, 6)
    H2 = sum((M @ s).T @ (M @ s) for s in S) * 2 / len(S)
    np.testing.assert_allclose(cal.layers["a2"].H, H2, rtol=1e-5)
    cur = calibrate(walker, ds, objective="current")
    np.testing.assert_allclose(cur.layers["a1"].H, sum(x.T @ x for x in X) * 2 / len(X), rtol=1e-5)


def test_fed_neuron_through_pool_and_flatten(data_dir):
    fg = flatten(sbc.load_model(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir"))
    assert [fed_neuron(fg, n) for n in ("0", "2", "5", "9", "11")] == ["1", "3", "6", "10", "12"]
    assert kernel_betas(fg, "0", CFG) == (1.0,)  # IF: cumulative sum
    lava = flatten(sbc.load_model(data_dir / "lava_dl_mnist/mnist_cubalif.nir"))
    betas = kernel_betas(lava, "fc1", CFG)
    assert betas == pytest.approx((1 - 410 / 4096, 1 - 410 / 4096), rel=1e-4)  # CubaLIF: syn then mem


@pytest.mark.parametrize("method", ["sbc", "sbc-fast", "obc", "magnitude", "wanda"])
def test_only_weights_change_and_budget_is_exact(method):
    rng = np.random.default_rng(1)
    graph, _ = ALL["shared_fanout_dag"](rng)
    before = ALL["shared_fanout_dag"](np.random.default_rng(1))[0]
    new, report = sbc.compress(graph, _spikes(rng, 8, 30, 3), sparsity=0.5, method=method, cfg=CFG)
    assert diff_graphs(graph, before) == []  # the input graph is untouched
    changed = diff_graphs(before, new)
    assert changed and all(c.endswith(".weight differs") for c in changed)
    fg = flatten(new)
    weights = [fg.nodes[r.name].weight for r in report.layers]
    total = sum(w.size for w in weights)
    assert sum(w.size - np.count_nonzero(w) for w in weights) == int(0.5 * total)
    assert report.overall_sparsity == pytest.approx(int(0.5 * total) / total)


def test_quantized_weights_on_grid_and_codes_reported():
    rng = np.random.default_rng(2)
    graph, _ = ALL["sequential"](rng)
    new, report = sbc.compress(graph, _spikes(rng, 8, 30, 4), sparsity=0.3, bits=3, cfg=CFG)
    for name, (q, scale, zero) in report.quant.items():
        w = flatten(new).nodes[name].weight
        assert q.shape == w.shape and q.min() >= -4 and q.max() <= 3
        assert np.array_equal(w, (q - zero[:, None]).astype(w.dtype) * scale.astype(w.dtype)[:, None])
        assert np.all(q[w == 0] == zero[np.nonzero(w == 0)[0]])


def test_precomputed_calibration_and_sequential(monkeypatch):
    rng = np.random.default_rng(3)
    graph, _ = ALL["residual"](rng)
    ds = _spikes(rng, 8, 30, 4)
    cal = calibrate(sbc.Walker(graph, CFG), ds)
    a, _ = sbc.compress(graph, ds, sparsity=0.6, cfg=CFG)
    b, _ = sbc.compress(graph, ds, sparsity=0.6, cfg=CFG, calibration=cal)
    assert diff_graphs(a, b) == []
    with pytest.raises(sbc.SbcError, match="objective"):
        sbc.compress(graph, ds, sparsity=0.6, cfg=CFG, method="obc", calibration=cal)
    seen = []  # every calibration the sequential pass collects
    monkeypatch.setattr(pipeline, "calibrate", lambda *a, **k: seen.append(calibrate(*a, **k)) or seen[-1])
    c, _ = sbc.compress(graph, ds, sparsity=0.6, cfg=CFG, sequential=True)
    H = {n: c_.layers[n].H for c_ in seen for n in c_.layers}
    assert [list(c_.layers) for c_ in seen] == [["a"], ["c"]]
    # the first layer sees the same input either way ...
    fa, fc = flatten(a), flatten(c)
    assert np.array_equal(fa.nodes["a"].weight, fc.nodes["a"].weight)
    np.testing.assert_array_equal(H["a"], cal.layers["a"].H)
    # ... the downstream layer's Hessian is collected with the upstream layer already compressed
    assert not np.allclose(H["c"], cal.layers["c"].H)
    upstream = copy.deepcopy(graph)
    upstream.nodes["a"].weight = fc.nodes["a"].weight
    np.testing.assert_array_equal(H["c"], calibrate(sbc.Walker(upstream, CFG), ds, layers=["c"]).layers["c"].H)


def test_grouped_conv_is_compressed_per_group():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(4, 2, 3, 3))
    g = nir.NIRGraph(nodes={
        "input": nir.Input(np.array([4, 6, 6])),
        "conv": nir.Conv2d(input_shape=(6, 6), weight=w, stride=1, padding=1, dilation=1, groups=2,
                           bias=np.zeros(4)),
        "if": nir.IF(r=np.ones((4, 6, 6)), v_threshold=np.ones((4, 6, 6)), v_reset=np.zeros((4, 6, 6))),
        "output": nir.Output(np.array([4, 6, 6]))},
        edges=[("input", "conv"), ("conv", "if"), ("if", "output")],
        type_check=False)  # nir 1.0.8 infers C_in = weight.shape[1], ignoring groups
    ds = Dataset((rng.random((6, 10, 4, 6, 6)) < 0.3).astype(np.uint8), np.zeros(6, int))
    new, rep = sbc.compress(g, ds, sparsity=0.5, cfg=CFG)
    assert np.count_nonzero(new.nodes["conv"].weight) == w.size // 2
    assert rep.layers[0].objective_after < rep.layers[0].objective_before


def test_spike_damage_rates_and_van_rossum_distance():
    """Firing rates are the walker's, dense and compressed; the Van Rossum distance is 0 for an unchanged
    model and the filtered spike-train difference (kernel: the LIF's Euler leak) otherwise."""
    rng = np.random.default_rng(7)
    graph, _ = ALL["sequential"](rng)
    ds = _spikes(rng, 8, 30, 4)
    same, rep0 = sbc.compress(graph, ds, sparsity=0.0, cfg=CFG)
    new, rep = sbc.compress(graph, ds, sparsity=0.7, cfg=CFG)
    assert diff_graphs(graph, same) == []
    x_tb, _ = next(ds.batches(32))

    def spikes(g):
        rec = {"l1": [], "l2": []}
        sbc.Walker(g, CFG).run(x_tb, on_output={n: (lambda out: lambda t, s: out.append(s.copy()))(rec[n])
                                                for n in rec})
        return {n: np.stack(v).astype(np.float64) for n, v in rec.items()}  # (T, B, neurons)

    dense, comp = spikes(graph), spikes(new)
    beta = 1 - DT / 2e-3  # l1, l2: tau 2e-3, Euler
    for r0, r in zip(rep0.layers, rep.layers):
        n = r.neuron
        assert r0.van_rossum == 0 and r0.firing_rate_compressed == r0.firing_rate_dense
        assert r0.firing_rate_dense == pytest.approx(dense[n].mean()) == r.firing_rate_dense
        assert r.firing_rate_compressed == pytest.approx(comp[n].mean())
        f, dist = 0.0, 0.0
        for d_t, c_t in zip(dense[n], comp[n]):
            f = beta * f + (d_t - c_t)
            dist += np.sum(f * f)
        assert r.van_rossum == pytest.approx(dist / dense[n][0].size)
    assert all(r.van_rossum > 0 for r in rep.layers)


def test_obs_allocation_reuses_its_traces_exactly():
    """The ExactOBS traces the obs allocation runs are handed to the layers' pruning: the weights equal
    pruning every layer (every group of a grouped convolution) from scratch with the allocation's counts."""
    rng = np.random.default_rng(6)
    graph, _ = ALL["residual"](rng)
    ds = _spikes(rng, 8, 30, 4)
    conv = nir.NIRGraph(nodes={
        "input": nir.Input(np.array([4, 6, 6])),
        "conv": nir.Conv2d(input_shape=(6, 6), weight=rng.normal(size=(4, 2, 3, 3)), stride=1, padding=1,
                           dilation=1, groups=2, bias=np.zeros(4)),
        "if": nir.IF(r=np.ones((4, 6, 6)), v_threshold=np.ones((4, 6, 6)), v_reset=np.zeros((4, 6, 6))),
        "output": nir.Output(np.array([4, 6, 6]))},
        edges=[("input", "conv"), ("conv", "if"), ("if", "output")], type_check=False)
    conv_ds = Dataset((rng.random((6, 10, 4, 6, 6)) < 0.3).astype(np.uint8), np.zeros(6, int))
    for g, data in ((graph, ds), (conv, conv_ds)):
        for method in ("sbc", "obc"):
            objective = "current" if method == "obc" else "smp"
            cal = calibrate(sbc.Walker(g, CFG), data, objective=objective)
            new, rep = sbc.compress(g, data, sparsity=0.7, method=method, allocation="obs", cfg=CFG,
                                    calibration=cal, measure_damage=False)
            fg, fn = flatten(g), flatten(new)
            names = [r.name for r in rep.layers]
            mats = {n: np.asarray(fg.nodes[n].weight).reshape(len(fg.nodes[n].weight), -1) for n in names}
            stats = [LayerStats(mats[n], cal.layers[n].H, cal.layers[n].groups) for n in names]
            counts = make_allocation("obs").allocate(stats, 0.7).counts
            for n, k in zip(names, counts):
                groups = cal.layers[n].groups
                for gi, rows, cols in group_blocks(mats[n].shape, groups):
                    k_g = int(round(k * (gi + 1) / groups)) - int(round(k * gi / groups))
                    ref = compress_layer(mats[n][rows], cal.layers[n].H[cols, cols], method=method, n_prune=k_g)
                    got = np.asarray(fn.nodes[n].weight).reshape(mats[n].shape)[rows]
                    np.testing.assert_array_equal(got, ref.W)


def test_obs_allocation_exact_budget_and_refuses_sequential():
    rng = np.random.default_rng(6)
    graph, _ = ALL["residual"](rng)
    ds = _spikes(rng, 8, 30, 4)
    cal = calibrate(sbc.Walker(graph, CFG), ds)
    new, rep = sbc.compress(graph, ds, sparsity=0.7, allocation="obs", cfg=CFG, calibration=cal)
    fg = flatten(new)
    weights = [fg.nodes[r.name].weight for r in rep.layers]
    total = sum(w.size for w in weights)
    assert sum(w.size - np.count_nonzero(w) for w in weights) == int(0.7 * total)
    assert rep.allocation == "obs"
    with pytest.raises(sbc.SbcError, match="allocation obs"):
        sbc.compress(graph, ds, sparsity=0.7, allocation="obs", cfg=CFG, sequential=True)


def test_bad_arguments():
    rng = np.random.default_rng(5)
    graph, _ = ALL["sequential"](rng)
    ds = _spikes(rng, 4, 10, 4)
    for kw, msg in (({}, "nothing to do"), ({"sparsity": 1.2}, "sparsity"), ({"bits": 1}, "bits"),
                    ({"sparsity": 0.5, "method": "foo"}, "method"), ({"pattern": "4:2"}, "N:M"),
                    ({"sparsity": 0.5, "pattern": "2:4"}, "not both")):
        with pytest.raises(sbc.SbcError, match=msg):
            sbc.compress(graph, ds, cfg=CFG, **kw)


def test_cli_compress_cnn_sinabs_end_to_end(data_dir, tmp_path, capsys):
    """Acceptance: 70 % sparsity with sbc keeps cnn_sinabs within 2 points of dense on test100."""
    train = sbc.load_nmnist(data_dir / "nmnist_small/train", data_dir / "nmnist_small/train500.txt").take(50)
    test = sbc.load_nmnist(data_dir / "nmnist_small/test", data_dir / "nmnist_small/test100.txt")
    sbc.save_dataset(train, tmp_path / "calib.npz")
    sbc.save_dataset(test, tmp_path / "test.npz")
    model = str(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir")
    out = tmp_path / "c70.nir"
    assert main(["compress", model, "--calib", str(tmp_path / "calib.npz"), "--sparsity", "0.7",
                 "--method", "sbc", "-o", str(out), "--report", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    g = nir.read(out)  # type checks on
    assert diff_graphs(sbc.load_model(model), g, ignore_fields=("weight",)) == []
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["overall_sparsity"] >= 0.7 - 1e-4 and len(rep["layers"]) == 5  # floor(0.7 N) / N
    for lay in rep["layers"]:  # spike damage measured on the calibration data (values: test_spike_damage_...)
        assert 0 < lay["firing_rate_dense"] < 1 and 0 <= lay["firing_rate_compressed"] < 1
        assert lay["van_rossum"] > 0 or lay["firing_rate_compressed"] == lay["firing_rate_dense"]
    assert main(["eval", model, "--data", str(tmp_path / "test.npz")]) == 0
    dense_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["eval", str(out), "--data", str(tmp_path / "test.npz")]) == 0
    comp_line = capsys.readouterr().out.strip().splitlines()[-1]
    dense, comp = (float(line.split()[1]) for line in (dense_line, comp_line))
    assert comp_line.startswith("accuracy ") and dense - comp <= 0.02, (dense_line, comp_line)
    # refuses to overwrite its input
    assert main(["compress", str(out), "--calib", str(tmp_path / "calib.npz"), "--sparsity", "0.5",
                 "-o", str(out), "--force"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
