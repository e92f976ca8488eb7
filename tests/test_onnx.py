"""ONNX convention: checker, exact NIR round trip, onnxruntime == NumPy walker, in-place weight updates,
integer (INT4) weights, clear errors for files outside the convention."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import nir
import numpy as np
import onnx
import pytest
from onnx import helper
from topologies import ALL, DT

from sbc_onnx.compress.grids import infer_grid
from sbc_onnx.errors import SbcError
from sbc_onnx.graph import diff_graphs, flatten
from sbc_onnx.io.models import load_model
from sbc_onnx.io.onnx_common import dequantize
from sbc_onnx.io.onnx_functions import build_functions
from sbc_onnx.io.onnx_io import evaluate_onnxruntime, ort_session, read_onnx, run_onnxruntime, update_onnx, write_onnx
from sbc_onnx.io.onnx_weights import encoding_kind, owns
from sbc_onnx.sim import SimConfig, Walker

PAPER = ["nir_paper/01_lif/lif_norse.nir", "nir_paper/01_lif/lif_rockpool.nir", "nir_paper/01_lif/two_lif_neurons.nir",
         "nir_paper/02_cnn/cnn_sinabs.nir", "nir_paper/03_rnn/braille_noDelay_bias_zero.nir",
         "nir_paper/03_rnn/braille_noDelay_noBias_subtract.nir", "sinabs_mnist/mnist_cnn_if.nir",
         "lava_dl_mnist/mnist_cubalif.nir"]


def _structure(g: nir.NIRGraph):
    return ({k: (_structure(v) if isinstance(v, nir.NIRGraph) else type(v).__name__) for k, v in g.nodes.items()},
            sorted(map(tuple, g.edges)))


def assert_exact_round_trip(g: nir.NIRGraph, g2: nir.NIRGraph) -> None:
    """Same nodes, edges and parameters, parameters also with the same dtype and shape."""
    assert diff_graphs(g, g2) == []
    assert _structure(g) == _structure(g2)  # nested subgraphs come back nested, with their own edges
    fa, fb = flatten(g), flatten(g2)
    for name, na in fa.nodes.items():
        nb = fb.nodes[name]
        for f in na.__dataclass_fields__:
            va, vb = getattr(na, f), getattr(nb, f)
            if f in ("input_type", "output_type", "metadata") or va is None or isinstance(va, str):
                continue
            a, b = np.asarray(va), np.asarray(vb)
            assert a.dtype == b.dtype and a.shape == b.shape, (name, f, a.dtype, b.dtype, a.shape, b.shape)
            assert np.array_equal(a, b), (name, f)
        assert (na.metadata or {}).keys() == (nb.metadata or {}).keys()
    # per-node summation order (walker adds predecessors in edge order) and back edges are the same
    assert fa.preds == fb.preds and fa.back_preds == fb.back_preds and fa.back_edges == fb.back_edges


# ---- small graphs for every primitive ---------------------------------------------------------------------
def conv2d_graph(rng):
    c = nir.Conv2d(input_shape=(9, 9), weight=rng.normal(0, 0.8, (4, 1, 3, 3)), stride=1, padding="same",
                   dilation=2, groups=2, bias=rng.normal(0, 0.1, 4))
    c2 = nir.Conv2d(input_shape=(9, 9), weight=rng.normal(0, 0.5, (4, 4, 3, 3)), stride=2, padding=1, dilation=1,
                    groups=1, bias=np.zeros(4))
    nodes = {"input": nir.Input(np.array([2, 9, 9])), "c": c, "l": nir.IF(r=np.ones((4, 9, 9)),
             v_threshold=np.full((4, 9, 9), 0.5), v_reset=np.zeros((4, 9, 9))),
             "p": nir.SumPool2d(kernel_size=np.array([3, 3]), stride=np.array([2, 2]), padding=np.array([1, 1])),
             "c2": c2, "a": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 1]),
                                          padding=np.array([0, 0])),
             "s": nir.Scale(scale=rng.random(1) + 0.5),
             "f": nir.Flatten(input_type={"input": np.array([4, 2, 2])}, start_dim=0),
             "t": nir.Threshold(threshold=np.full(16, 0.3)), "output": nir.Output(np.array([16]))}
    edges = [("input", "c"), ("c", "l"), ("l", "p"), ("p", "c2"), ("c2", "a"), ("a", "s"), ("s", "f"), ("f", "t"),
             ("t", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), (2, 9, 9)


def conv1d_delay_graph(rng):
    n = 6
    nodes = {"input": nir.Input(np.array([3, 11])),
             "c": nir.Conv1d(input_shape=11, weight=rng.normal(0, 0.6, (2, 3, 3)), stride=2, padding=1, dilation=1,
                             groups=1, bias=np.ones(2) * 0.1),
             "f": nir.Flatten(input_type={"input": np.array([2, 6])}, start_dim=0),
             "lin": nir.Linear(weight=rng.normal(0, 0.5, (n, 12))),
             "d": nir.Delay(delay=np.array([0, 2e-4, 3e-4, 0, 1e-4, 5e-4])),
             "li": nir.LI(tau=np.full(n, 1e-3), r=np.full(n, 2.0), v_leak=np.full(n, 0.1)),
             "i": nir.I(r=np.full(n, 0.5)),
             "cli": nir.CubaLI(tau_syn=np.full(n, 2e-4), tau_mem=np.full(n, 1e-3), r=np.ones(n), v_leak=np.zeros(n),
                               w_in=np.full(n, 2.0)),
             "lif": nir.CubaLIF(tau_syn=np.full(n, 3e-4), tau_mem=rng.uniform(5e-4, 2e-3, n), r=np.full(n, 5.0),
                                v_leak=np.zeros(n), v_threshold=np.full(n, 0.4), v_reset=np.full(n, -0.1),
                                w_in=np.full(n, 1.5)),
             "output": nir.Output(np.array([n]))}
    edges = [("input", "c"), ("c", "f"), ("f", "lin"), ("lin", "d"), ("d", "li"), ("li", "i"), ("i", "cli"),
             ("cli", "lif"), ("lin", "lif"), ("lif", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), (3, 11)


def _topology(name):
    def build(rng):
        g, _ = ALL[name](rng)
        n_in = int(flatten(g).nodes["input"].output_type["output"][0])
        return g, (n_in,)
    return build


GRAPHS = {**{n: _topology(n) for n in ALL}, "conv2d_pools": conv2d_graph, "conv1d_delay_neurons": conv1d_delay_graph}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_topology_checker_round_trip_and_ort_equals_walker(name, tmp_path):
    # onnxruntime's CPU Conv has no float64 kernel: float64 files with convolutions are valid but not run here
    configs = ([] if name.startswith("conv") else [SimConfig(dt=DT, dtype="float64")]) + [
        SimConfig(dt=DT, integrator=i, reset=r, cuba_order=o)
        for i, r, o in itertools.product(("euler", "exact"), ("to_v_reset", "subtract"),
                                         ("current_first", "previous_current"))]
    active = 0
    for k, cfg in enumerate(configs):
        rng = np.random.default_rng(3)
        g, in_shape = GRAPHS[name](rng)
        path = write_onnx(g, tmp_path / f"{name}{k}.onnx", cfg=cfg)
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        g2 = read_onnx(path)
        assert_exact_round_trip(g, g2)
        cfg2 = SimConfig.from_graph(g2, dtype=cfg.dtype)
        assert cfg2 == cfg
        x = (rng.random((40, 3) + in_shape) < 0.4).astype(cfg.dtype)
        ref = Walker(g, cfg).run(x)
        got = run_onnxruntime(ort_session(path), {"input": x})
        np.testing.assert_array_equal(got["output"], ref.outputs["output"])
        for n, c in ref.counts.items():
            np.testing.assert_array_equal(got[f"{n}/count_final"], c)
        for n, st in ref.states.items():
            if isinstance(st, dict):
                for s, v in st.items():
                    np.testing.assert_array_equal(got[f"{n}/{s}_final"], v)
        active += int(np.count_nonzero(ref.outputs["output"])) + int(sum(c.sum() for c in ref.counts.values()))
    assert active > 0  # outputs/spikes are not trivially zero


@pytest.mark.parametrize("rel", PAPER)
def test_paper_graph_checker_and_exact_round_trip(data_dir, rel, tmp_path):
    g = load_model(data_dir / rel)
    cfg = SimConfig(dt=1e-4, integrator="exact", reset="subtract", cuba_order="previous_current")
    path = write_onnx(g, tmp_path / "m.onnx", cfg=cfg, metadata={"source": rel, "note": 3})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    g2 = read_onnx(path)
    assert_exact_round_trip(g, g2)
    assert SimConfig.from_graph(g2) == cfg
    assert g2.metadata["source"] == rel and g2.metadata["note"] == 3
    # and back to NIR on disk, through the CLI's path
    from sbc_onnx.io.nir_io import write_nir

    write_nir(g2, tmp_path / "back.nir")
    assert_exact_round_trip(g, load_model(tmp_path / "back.nir"))


def _lif_golden(data_dir, tmp_path, cfg, csv):
    g = load_model(data_dir / "nir_paper/01_lif/lif_norse.nir")
    rec = np.loadtxt(data_dir / "nir_paper/01_lif" / csv, delimiter=",")
    x = rec[:, 0].reshape(-1, 1, 1).astype(cfg.dtype)
    path = write_onnx(g, tmp_path / "lif.onnx", cfg=cfg)
    got = run_onnxruntime(ort_session(path), {"input": x})
    ref = Walker(read_onnx(path), cfg).run(x)
    np.testing.assert_array_equal(got["output"], ref.outputs["output"])
    if cfg.integrator == "exact" and cfg.dtype == "float64":
        # 1 - Exp(-dt/tau) in onnxruntime vs -expm1 in NumPy: the decay differs in the last double bit
        np.testing.assert_allclose(got["1/v_final"], ref.states["1"]["v"], rtol=1e-12, atol=0)
    else:
        np.testing.assert_array_equal(got["1/v_final"], ref.states["1"]["v"])
    assert np.flatnonzero(got["output"][:, 0, 0]).tolist() == np.flatnonzero(rec[:, 2]).tolist()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lif_golden_trace_onnxruntime(data_dir, tmp_path, dtype):
    _lif_golden(data_dir, tmp_path, SimConfig(dt=1e-4, dtype=dtype), "lif_norse.csv")
    _lif_golden(data_dir, tmp_path, SimConfig(dt=1e-4, integrator="exact", reset="subtract", dtype=dtype),
                "lif_exact.csv")


@pytest.mark.parametrize("order", ["current_first", "previous_current"])
def test_recurrent_cubalif_random_input(data_dir, tmp_path, order):
    g = load_model(data_dir / "nir_paper/03_rnn/braille_noDelay_bias_zero.nir")
    cfg = SimConfig(dt=1e-4, cuba_order=order)
    path = write_onnx(g, tmp_path / "rnn.onnx", cfg=cfg)
    x = (np.random.default_rng(0).random((256, 8, 12)) < 0.3).astype(np.float32)
    ref = Walker(g, cfg).run(x)
    got = run_onnxruntime(ort_session(path), {"input": x})
    np.testing.assert_array_equal(got["output"], ref.outputs["output"])
    np.testing.assert_array_equal(got["lif1.lif/count_final"], ref.counts["lif1.lif"])
    # potentials: MatMul summation order (MLAS vs OpenBLAS) differs in the last float32 bit (measured 2.4e-7 rel.)
    np.testing.assert_allclose(got["lif1.lif/v_final"], ref.states["lif1.lif"]["v"], rtol=1e-5, atol=1e-5)
    assert ref.counts["lif1.lif"].sum() > 0


@pytest.fixture(scope="module")
def t100(data_dir):
    from sbc_onnx.data import load_nmnist

    return load_nmnist(data_dir / "nmnist_small/test", data_dir / "nmnist_small/test100.txt")


def test_cnn_sinabs_ort_equals_walker_on_nmnist_test100(data_dir, t100, tmp_path):
    g = load_model(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir")
    cfg = SimConfig(dt=1.0)
    path = write_onnx(g, tmp_path / "cnn.onnx", cfg=cfg)
    x, y = next(t100.batches(100))
    ref = Walker(read_onnx(path), cfg).run(x)
    got = run_onnxruntime(ort_session(path), {"input": x})
    np.testing.assert_array_equal(got["output"], ref.outputs["output"])  # every output spike, every step
    for n, c in ref.counts.items():  # and the spike count of every neuron of every layer
        np.testing.assert_array_equal(got[f"{n}/count_final"], c)
    dv = max(float(np.abs(got[f"{n}/v_final"] - ref.states[n]["v"]).max()) for n in ref.counts)
    assert dv < 1e-3  # potentials: conv/GEMM summation order differs (measured 1.2e-4)
    pred = got["12/count_final"].argmax(axis=1)
    np.testing.assert_array_equal(pred, ref.counts["12"].argmax(axis=1))
    assert (pred == y).mean() >= 0.99
    res = evaluate_onnxruntime(path, t100.take(20), readout="count+potential", batch_size=10)
    assert res.n == 20 and res.accuracy >= 0.9


def _quantize_graph(g, bits=4):
    from sbc_onnx.compress.grids import make_grid, to_int

    quant = {}
    for n, node in flatten(g).nodes.items():
        if type(node).__name__ in ("Affine", "Linear", "Conv1d", "Conv2d"):
            W = np.asarray(node.weight, np.float64).reshape(node.weight.shape[0], -1)
            grid = make_grid(W, bits)
            q = to_int(W, grid).reshape(node.weight.shape)
            scale = grid.scale.reshape(-1).astype(np.float32)
            node.weight = dequantize(q, scale, None)
            quant[n] = (q, scale, None)
    return quant


def test_int4_file_small_and_same_accuracy(data_dir, t100, tmp_path):
    g = load_model(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir")
    quant = _quantize_graph(g)
    cfg = SimConfig(dt=1.0)
    f_float = write_onnx(g, tmp_path / "q4_float.onnx", cfg=cfg, compact=False)
    f_int = write_onnx(g, tmp_path / "q4_int.onnx", cfg=cfg, int_weights=True, quant=quant)
    f_auto = write_onnx(g, tmp_path / "q4_auto.onnx", cfg=cfg, int_weights=True)  # grid inferred
    m = onnx.load(str(f_int))
    onnx.checker.check_model(m, full_check=True)
    types = {t.name: t.data_type for t in m.graph.initializer}
    assert types["0.weight/q"] == onnx.TensorProto.INT4 and "0.weight" not in types
    size_f, size_i = os.path.getsize(f_float), os.path.getsize(f_int)
    assert size_f >= 3 * size_i, (size_f, size_i)
    assert os.path.getsize(f_auto) == size_i
    assert diff_graphs(read_onnx(f_float), read_onnx(f_int)) == []
    ds = t100.take(40)
    a = evaluate_onnxruntime(f_float, ds, batch_size=40)
    b = evaluate_onnxruntime(f_int, ds, batch_size=40)
    assert a.correct == b.correct and np.array_equal(a.predictions, b.predictions)
    assert a.firing_rates == b.firing_rates


def test_infer_grid():
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 8, (5, 7))
    s = rng.uniform(0.01, 0.1, 5).astype(np.float32)
    w = dequantize(q, s, None)
    q2, s2, _ = infer_grid(w)
    np.testing.assert_array_equal(dequantize(q2, s2, None), w)
    assert np.abs(q2).max() <= 8
    assert infer_grid(rng.normal(size=(3, 4)).astype(np.float32)) is None


def _strip(model: onnx.ModelProto, params=()) -> bytes:
    """The model without initializer data, metadata_props, and the initializers and nodes that encode the
    parameters `params` (names `n.weight`)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [t for t in m.graph.initializer if not any(owns(p, t.name) for p in params)]
    nodes = [n for n in m.graph.node if not any(owns(p, o) for p in params for o in n.output)]
    m.graph.ClearField("initializer")
    m.graph.initializer.extend(keep)
    m.graph.ClearField("node")
    m.graph.node.extend(nodes)
    for t in m.graph.initializer:
        t.ClearField("raw_data")
    m.ClearField("metadata_props")
    return m.SerializeToString()


def test_update_onnx_changes_only_weight_initializers_and_metadata(data_dir, tmp_path):
    src = write_onnx(load_model(data_dir / "nir_paper/03_rnn/braille_noDelay_bias_zero.nir"),
                     tmp_path / "src.onnx", cfg=SimConfig(dt=1e-4))
    g = read_onnx(src)
    fg = flatten(g)
    for name, share in (("fc1", 25), ("lif1.w_rec", 50)):
        w = fg.nodes[name].weight
        w[np.abs(w) < np.percentile(np.abs(w), share)] = 0  # "compression": prune a quarter / half
        fg.nodes[name].bias = fg.nodes[name].bias + 1
    out = update_onnx(src, g, tmp_path / "out.onnx", metadata={"compression": "sparsity 0.5", "level": 0.5})
    a, b = onnx.load(str(src)), onnx.load(str(out))
    # every field but weight encodings, initializer data and metadata_props is identical
    assert _strip(a, ["lif1.w_rec.weight"]) == _strip(b, ["lif1.w_rec.weight"])
    new = {t.name: t.raw_data for t in b.graph.initializer}
    changed = {t.name for t in a.graph.initializer if t.name in new and t.raw_data != new[t.name]}
    # fc1 (12 x 38, a quarter pruned) is too small for a sparse encoding to pay for its nodes: rewritten in
    # place, as the biases
    assert changed == {"fc1.weight", "fc1.bias", "lif1.w_rec.bias"}
    assert encoding_kind(b.graph.node, "lif1.w_rec.weight") == "index"  # 38 x 38 half pruned: index + values
    meta_a = {p.key: p.value for p in a.metadata_props}
    meta_b = {p.key: p.value for p in b.metadata_props}
    assert {k: v for k, v in meta_b.items() if k in meta_a} == meta_a
    assert meta_b["compression"] == "sparsity 0.5" and meta_b["nir.json.level"] == "0.5"
    assert read_onnx(out).metadata["level"] == 0.5  # typed, as a file from write_onnx
    assert_exact_round_trip(g, read_onnx(out))
    onnx.checker.check_model(b, full_check=True)
    # non-weight parameters cannot be changed in place
    fg.nodes["lif2"].v_threshold = fg.nodes["lif2"].v_threshold * 2
    with pytest.raises(SbcError, match="lif2.*v_threshold"):
        update_onnx(src, g, tmp_path / "bad.onnx")


def test_errors(tmp_path):
    with pytest.raises(SbcError, match="not found"):
        read_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf at all\xff" * 3)
    with pytest.raises(SbcError, match="not an ONNX model"):
        read_onnx(tmp_path / "junk.onnx")
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])],
                          "mlp", [x], [y])
    onnx.save(helper.make_model(g), str(tmp_path / "mlp.onnx"))
    with pytest.raises(SbcError, match="outside the sbc-onnx SNN convention.*Relu, Sigmoid"):
        read_onnx(tmp_path / "mlp.onnx")


def test_cli_convert_and_eval_engines(data_dir, tmp_path):
    from click.testing import CliRunner

    from sbc_onnx.cli import cli
    from sbc_onnx.data import Dataset, save_dataset

    runner = CliRunner()
    src = data_dir / "nir_paper/03_rnn/braille_noDelay_noBias_subtract.nir"
    r = runner.invoke(cli, ["convert", str(src), str(tmp_path / "b.onnx"), "--reset", "subtract"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["convert", str(tmp_path / "b.onnx"), str(tmp_path / "b.nir")])
    assert r.exit_code == 0, r.output
    assert_exact_round_trip(load_model(src), load_model(tmp_path / "b.nir"))
    assert load_model(tmp_path / "b.nir").metadata["reset"] == "subtract"
    rng = np.random.default_rng(1)
    save_dataset(Dataset(rng.random((12, 50, 12)) < 0.3, rng.integers(0, 7, 12)), tmp_path / "d.npz")
    lines = {}
    for engine in ("numpy", "onnxruntime"):
        r = runner.invoke(cli, ["eval", str(tmp_path / "b.onnx"), "--data", str(tmp_path / "d.npz"),
                                "--engine", engine])
        assert r.exit_code == 0, r.output
        lines[engine] = [ln for ln in r.output.splitlines() if "accuracy" in ln or ln.startswith("  ")]
    assert lines["numpy"] == lines["onnxruntime"]  # same firing rates and accuracy


def _doc_functions() -> dict[str, tuple[list[str], list[str], list[str]]]:
    """The step-function table of docs/onnx_convention.md: name -> (attributes, inputs, outputs)."""
    doc = (Path(__file__).resolve().parents[1] / "docs/onnx_convention.md").read_text()
    row = re.compile(r"^\| ((?:`\w+`(?:, )?)+) ?(?:<([^>]*)>)? \| ([^|]*?) -> ([^|]*?) \|")
    names = lambda text: [t.strip().split("=")[0] for t in text.split(",") if t.strip()]
    table = {}
    for line in doc.splitlines():
        if m := row.match(line):
            for kind in re.findall(r"`(\w+)`", m.group(1)):
                table[kind] = (names(m.group(2) or ""), names(m.group(3)), names(m.group(4)))
    return table


def test_convention_doc_lists_every_step_function_as_generated():
    """The functions are generated from the catalogue; the document must say what they take and give."""
    doc = _doc_functions()
    functions = {f.name: f for f in build_functions()}
    assert sorted(doc) == sorted(functions)
    for name, f in functions.items():
        attrs, ins, outs = doc[name]
        assert (ins, outs) == (list(f.input), list(f.output)), name
        assert sorted(attrs) == sorted(f.attribute), name
