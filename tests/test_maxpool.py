"""Max pooling, the node kind beyond NIR 1.0 (sbc_onnx/nodes.py): the simulator op against brute force, the
ONNX convention (onnxruntime == walker, round trip), `.nir` output refused by name before any work, and
compression of a pooled network end to end."""

from __future__ import annotations

import nir
import numpy as np
import onnx
import pytest

import sbc_onnx as sbc
from sbc_onnx.calibrate import calibrate
from sbc_onnx.cli import main
from sbc_onnx.data import Dataset, save_dataset
from sbc_onnx.errors import SbcError
from sbc_onnx.graph import diff_graphs, flatten
from sbc_onnx.io.onnx_io import ort_session, read_onnx, run_onnxruntime, write_onnx
from sbc_onnx.nodes import MaxPool2d
from sbc_onnx.primitives import NONLINEAR, primitive
from sbc_onnx.sim import SimConfig, Walker
from sbc_onnx.sim.ops import build_op

CFG = SimConfig(dt=1e-3)
C, H = 3, 8


def _pool(k, s, p):
    return MaxPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))


def brute_max_pool(x: np.ndarray, k, s, p) -> np.ndarray:
    """Window maxima by explicit loops over output positions, padded cells skipped (PyTorch semantics)."""
    b, c, h, w = x.shape
    ho, wo = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    y = np.empty((b, c, ho, wo), x.dtype)
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * s[0] - p[0], j * s[1] - p[1]
            win = x[:, :, max(r0, 0):min(r0 + k[0], h), max(c0, 0):min(c0 + k[1], w)]
            y[:, :, i, j] = win.max(axis=(2, 3))
    return y


@pytest.mark.parametrize("k,s,p,shape", [
    ((3, 3), (2, 2), (1, 1), (7, 9)),   # sew_resnet's pool, odd sizes: floor mode drops nothing here
    ((2, 2), (2, 2), (0, 0), (7, 6)),   # floor mode drops the last row
    ((3, 2), (1, 2), (1, 0), (5, 5)),   # asymmetric kernel, stride 1, padding in one dim only
    ((4, 4), (3, 3), (2, 2), (9, 10)),  # padding = half the kernel: border windows hold one real cell
])
def test_sim_op_equals_brute_force_on_negative_values(k, s, p, shape):
    # negative inputs: a zero-padded max would differ from -inf padding at the borders
    x = np.random.default_rng(1).normal(-1.0, 1.0, (2, 3, *shape)).astype(np.float32)
    op = build_op("pool", _pool(k, s, p), CFG)
    y, _ = op.step(x, op.init_state(x))
    np.testing.assert_array_equal(y, brute_max_pool(x, k, s, p))
    assert y.shape[2:] == _pool(k, s, p).output_shape((3, *shape))[1:]


def test_padding_over_half_the_kernel_is_refused_by_name():
    with pytest.raises(SbcError, match="'pool'.*padding"):
        build_op("pool", _pool((2, 2), (1, 1), (2, 2)), CFG)


def test_catalogue_role_is_nonlinear_without_parameters():
    p = primitive("MaxPool2d")
    assert p.role == NONLINEAR and p.params == () and not p.spiking and p.state == ()


def pooled_graph(rng, pool_first: bool = False) -> nir.NIRGraph:
    """conv -> IF -> maxpool(3, 2, 1) -> conv -> IF -> Output (pool_first: conv -> maxpool -> IF -> ...)."""
    ones = lambda *s: np.ones(s)
    c1 = nir.Conv2d(input_shape=(H, H), weight=rng.normal(0.3, 0.6, (C, 1, 3, 3)), stride=1, padding=1,
                    dilation=1, groups=1, bias=rng.normal(0, 0.1, C))
    c2 = nir.Conv2d(input_shape=(4, 4), weight=rng.normal(0.2, 0.5, (4, C, 3, 3)), stride=1, padding=1,
                    dilation=1, groups=1, bias=rng.normal(0, 0.1, 4))
    n1_shape = (C, 4, 4) if pool_first else (C, H, H)
    nodes = {"input": nir.Input(np.array([1, H, H])), "c1": c1,
             "n1": nir.IF(r=ones(*n1_shape), v_threshold=ones(*n1_shape), v_reset=0 * ones(*n1_shape)),
             "pool": _pool((3, 3), (2, 2), (1, 1)).set_input_shape((C, H, H)), "c2": c2,
             "n2": nir.IF(r=ones(4, 4, 4), v_threshold=ones(4, 4, 4), v_reset=0 * ones(4, 4, 4)),
             "output": nir.Output(np.array([4, 4, 4]))}
    chain = ["input", "c1", "pool", "n1"] if pool_first else ["input", "c1", "n1", "pool"]
    chain += ["c2", "n2", "output"]
    return nir.NIRGraph(nodes=nodes, edges=list(zip(chain, chain[1:])))


def _spikes(n, t=12, seed=0):
    return (np.random.default_rng(seed).random((n, t, 1, H, H)) < 0.4).astype(np.float32)


def test_onnxruntime_spikes_equal_the_walker_and_the_file_round_trips(tmp_path):
    g = pooled_graph(np.random.default_rng(0))
    path = write_onnx(g, tmp_path / "m.onnx", cfg=CFG)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    pool_fn = next(f for f in model.functions if f.name == "MaxPool2d")
    assert [n.op_type for n in pool_fn.node] == ["MaxPool"]  # the standard op, inside the convention
    x = np.swapaxes(_spikes(5), 0, 1)  # time-major (T, B, ...)
    ref = Walker(g, CFG).run(x)
    got = run_onnxruntime(ort_session(path), {"input": x})
    assert ref.outputs["output"].sum() > 0 and ref.counts["n1"].sum() > 0  # the comparison is not all zeros
    np.testing.assert_array_equal(got["output"], ref.outputs["output"])
    for n, c in ref.counts.items():
        np.testing.assert_array_equal(got[f"{n}/count_final"], c)
    g2 = read_onnx(path)
    assert isinstance(g2.nodes["pool"], MaxPool2d)
    assert diff_graphs(g, g2) == []
    np.testing.assert_array_equal(g2.nodes["pool"].output_type["output"], [C, 4, 4])
    np.testing.assert_array_equal(Walker(g2, CFG).run(x).outputs["output"], ref.outputs["output"])


def test_layer_after_the_pool_calibrates_on_the_pooled_spikes():
    g = pooled_graph(np.random.default_rng(0))
    x = _spikes(6)
    seen = []
    Walker(g, CFG).run(np.swapaxes(x, 0, 1), on_output={"pool": lambda t, y: seen.append(y.copy())})
    pooled = np.swapaxes(np.stack(seen), 0, 1)  # (N, T, C, 4, 4): what c2 receives
    # the same layer and neuron fed the pooled spikes directly: the Hessians must be the same
    fg = flatten(g)
    alone = nir.NIRGraph(nodes={"input": nir.Input(np.array([C, 4, 4])), "c2": fg.nodes["c2"],
                                "n2": fg.nodes["n2"], "output": nir.Output(np.array([4, 4, 4]))},
                         edges=[("input", "c2"), ("c2", "n2"), ("n2", "output")])
    y = np.zeros(len(x), np.int64)
    h_full = calibrate(Walker(g, CFG), Dataset(x, y), layers=["c2"]).layers["c2"].H
    h_alone = calibrate(Walker(alone, CFG), Dataset(pooled, y), layers=["c2"]).layers["c2"].H
    assert np.abs(h_full).max() > 0
    np.testing.assert_allclose(h_full, h_alone, rtol=1e-6, atol=1e-9)


def test_a_layer_feeding_the_pool_before_its_neuron_gets_the_identity_kernel_and_a_note():
    g = pooled_graph(np.random.default_rng(0), pool_first=True)
    cal = calibrate(Walker(g, CFG), Dataset(_spikes(4), np.zeros(4, np.int64)))
    assert cal.layers["c1"].neuron is None and cal.layers["c1"].betas == ()
    assert cal.layers["c2"].betas == (1.0,)  # c2 -> IF: the cumulative sum
    assert any("c1" in n and "pool (MaxPool2d)" in n and "identity" in n for n in cal.notes), cal.notes


@pytest.fixture
def pooled_files(tmp_path):
    g = pooled_graph(np.random.default_rng(0))
    m = sbc.save_model(g, tmp_path / "m.onnx", cfg=CFG)
    c = save_dataset(Dataset(_spikes(8).astype(np.uint8), np.arange(8) % 3), tmp_path / "c.npz")
    return m, c


@pytest.mark.parametrize("cmd", ["convert", "compress", "compress --target"])
def test_nir_output_is_refused_with_one_line_and_no_file(pooled_files, tmp_path, capsys, cmd):
    m, c = pooled_files
    out = tmp_path / "o.nir"
    argv = {"convert": ["convert", str(m), str(out)],
            "compress": ["compress", str(m), "--calib", str(c), "-o", str(out), "--sparsity", "0.5"],
            "compress --target": ["compress", str(m), "--calib", str(c), "-o", str(out), "--target", "loihi2"],
            }[cmd]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out}: node 'pool' is MaxPool2d, which NIR 1.0 cannot hold: write the model as .onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "m.onnx"]


def test_save_model_refuses_nir_and_the_nir_reader_names_the_kind(tmp_path):
    g = pooled_graph(np.random.default_rng(0))
    with pytest.raises(SbcError, match="'pool' is MaxPool2d.*write the model as .onnx"):
        sbc.save_model(g, tmp_path / "m.nir", cfg=CFG)
    assert not list(tmp_path.iterdir())
    nir.write(tmp_path / "raw.nir", g)  # below the project's writer: a file NIR readers cannot load
    with pytest.raises(SbcError, match="'pool' has type 'MaxPool2d', which NIR .* does not define"):
        sbc.load_model(tmp_path / "raw.nir")


def test_compress_onnx_with_maxpool_writes_onnx_end_to_end(pooled_files, tmp_path, capsys):
    m, c = pooled_files
    out = tmp_path / "o.onnx"
    assert main(["compress", str(m), "--calib", str(c), "-o", str(out), "--sparsity", "0.5", "--bits", "4"]) == 0
    g0, g1 = sbc.load_model(m), sbc.load_model(out)
    assert isinstance(g1.nodes["pool"], MaxPool2d)
    assert diff_graphs(g0, g1, ignore_fields=("weight",)) == []  # only weights changed
    w = np.concatenate([np.ravel(g1.nodes[n].weight) for n in ("c1", "c2")])
    assert 0.4 < np.mean(w == 0) < 0.6
    x = np.swapaxes(_spikes(3, seed=5), 0, 1)
    got = run_onnxruntime(ort_session(out), {"input": x})
    np.testing.assert_array_equal(got["output"], Walker(g1, CFG).run(x).outputs["output"])


def test_energy_counts_a_layer_after_the_pool_as_spike_driven():
    from sbc_onnx.hardware.energy import energy_report

    g = pooled_graph(np.random.default_rng(0))
    rep = energy_report(g, Dataset(_spikes(4), np.zeros(4, np.int64)), CFG)
    c2 = next(layer for layer in rep.layers if layer.name == "c2")
    assert c2.spike_input and c2.synops_per_sample > 0 and c2.macs_per_sample == 0
