"""Compressed models make smaller files (issue #12, part 4): sparse and low-bit ONNX weights in compact
encodings that read back bit for bit and run identically in onnxruntime; NIR files gzip-compressed and
still read by nir.read; the sizes the compress report prints."""

from __future__ import annotations

import os

import nir
import numpy as np
import pytest

from sbc_onnx.graph import diff_graphs, flatten
from sbc_onnx.io.models import load_model, save_model
from sbc_onnx.io.onnx_common import dequantize
from sbc_onnx.io.onnx_weights import index_entries
from sbc_onnx.io.onnx_io import ort_session, read_onnx, run_onnxruntime, write_onnx
from sbc_onnx.io.sizes import file_sizes, weight_storage
from sbc_onnx.sim import SimConfig, Walker

CFG = SimConfig(dt=1e-3)


def _lif(n: int) -> nir.LIF:
    return nir.LIF(tau=np.full(n, 5e-3), r=np.full(n, 1.0), v_leak=np.zeros(n), v_threshold=np.full(n, 0.1))


def _mlp(w1: np.ndarray, w2: np.ndarray) -> nir.NIRGraph:
    nodes = {"in": nir.Input(np.array([w1.shape[1]])), "fc1": nir.Affine(w1, np.zeros(w1.shape[0], np.float32)),
             "lif1": _lif(w1.shape[0]), "fc2": nir.Linear(w2), "lif2": _lif(w2.shape[0]),
             "out": nir.Output(np.array([w2.shape[0]]))}
    edges = [("in", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "lif2"), ("lif2", "out")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def _weights(kind: str, shape, rng, negative_zeros: bool = False) -> np.ndarray:
    """float32 weights of a compressed layer with a share of zeros at which `kind` is the smallest encoding (the
    bitmask costs a bit an element, a 4-bit relative index 4 bits a stored one, a dense 4-bit grid 4 bits an
    element), on a 4-bit per-row grid (int kinds), half of the zeros -0.0 (`negative_zeros`)."""
    if "int" in kind:
        q = rng.integers(-8, 8, shape)
        w = dequantize(q, rng.uniform(0.05, 0.2, shape[0]).astype(np.float32), None)
    else:
        w = rng.normal(0, 0.3, shape).astype(np.float32)
    if "sparse" in kind or "index" in kind:
        w[rng.random(shape) < {"sparse": 0.5, "sparse-int": 0.45}.get(kind, 0.95)] = 0
    if negative_zeros:  # pruning leaves -0.0 where a negative weight was zeroed: it must come back with its sign
        w[(w == 0) & (rng.random(shape) < 0.5)] = -0.0
    return w


def _spikes(x: np.ndarray) -> np.ndarray:
    return (x > 0).astype(np.float32)


@pytest.mark.parametrize("negative_zeros", [False, True])
@pytest.mark.parametrize("kind", ["sparse", "int", "sparse-int", "index", "index-int"])
def test_compact_onnx_is_smaller_exact_and_runs_identically(kind, negative_zeros, tmp_path):
    rng = np.random.default_rng(0)
    g = _mlp(_weights(kind, (190, 127), rng, negative_zeros),  # sizes not multiples of 8
             _weights(kind, (10, 190), rng, negative_zeros))
    assert np.signbit(g.nodes["fc1"].weight[g.nodes["fc1"].weight == 0]).any() == negative_zeros
    plain = write_onnx(g, tmp_path / "plain.onnx", cfg=CFG, compact=False)
    small = write_onnx(g, tmp_path / "small.onnx", cfg=CFG)
    assert {s.name: s.encoding for s in weight_storage(small)}["fc1"] == kind
    assert os.path.getsize(small) < os.path.getsize(plain)
    back = flatten(read_onnx(small)).nodes
    for n in ("fc1", "fc2"):  # bit for bit, signs of zeros included
        assert np.asarray(back[n].weight).tobytes() == g.nodes[n].weight.tobytes()
    x = _spikes(rng.random((40, 5, 127)) - 0.5)
    a = run_onnxruntime(ort_session(plain), x)
    b = run_onnxruntime(ort_session(small), x)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert b["lif2/count_final"].sum() > 0  # the comparison sees spikes, not silence
    counts = {}
    Walker(g, CFG).run({"in": x}, on_output={"lif2": lambda t, y: counts.__setitem__(t, y)})
    np.testing.assert_array_equal(sum(counts.values()), b["lif2/count_final"])


@pytest.mark.parametrize("width", [4, 8])
def test_relative_index_matches_its_eager_loop(width):
    """index_entries against the loop its docstring gives, and the positions the graph rebuilds from it."""
    rng = np.random.default_rng(5)
    for n, density in [(1, 1.0), (7, 0.5), (300, 0.01), (1000, 0.1), (1000, 0.9), (50, 0.0)]:
        keep = rng.random(n) < density
        skips, slots, last = [], [], -1
        for p in np.flatnonzero(keep):
            g = p - last - 1
            while g >= 1 << width:
                skips.append((1 << width) - 1)
                g -= 1 << width
            slots.append(len(skips))
            skips.append(g)
            last = p
        got = index_entries(keep, width)
        assert np.array_equal(got[0], skips) and np.array_equal(got[1], slots)
        pos = np.cumsum(got[0] + 1) - 1  # what CumSum(skips + 1) - 1 gives the graph
        assert np.array_equal(pos[got[1]], np.flatnonzero(keep)) and (pos < n).all()
        assert got[0].max(initial=0) < 1 << width


def test_dense_weights_stay_plain_initializers(tmp_path):
    rng = np.random.default_rng(1)
    g = _mlp(rng.normal(size=(32, 16)).astype(np.float32), rng.normal(size=(4, 32)).astype(np.float32))
    path = write_onnx(g, tmp_path / "d.onnx", cfg=CFG)
    assert {s.encoding for s in weight_storage(path)} == {"dense"}
    assert os.path.getsize(path) == os.path.getsize(write_onnx(g, tmp_path / "p.onnx", cfg=CFG, compact=False))


def test_nir_file_compact_and_read_by_nir(tmp_path):
    rng = np.random.default_rng(2)
    g = _mlp(_weights("sparse-int", (96, 64), rng), _weights("sparse-int", (10, 96), rng))
    path = save_model(g, tmp_path / "c.nir", cfg=CFG)
    nir.write(str(tmp_path / "nir_default.nir"), g)  # the nir package's own writer, same graph
    assert os.path.getsize(path) < os.path.getsize(tmp_path / "nir_default.nir")
    assert diff_graphs(g, nir.read(str(path))) == []
    assert load_model(path).nodes["fc1"].weight.tobytes() == g.nodes["fc1"].weight.tobytes()


def test_file_sizes_measure_the_written_file(tmp_path):
    rng = np.random.default_rng(3)
    dense = _mlp(rng.normal(size=(96, 64)).astype(np.float32), rng.normal(size=(10, 96)).astype(np.float32))
    small = _mlp(_weights("index-int", (96, 64), rng), _weights("index-int", (10, 96), rng))
    for ext in ("onnx", "nir"):
        path = save_model(small, tmp_path / f"c.{ext}", cfg=CFG)
        sizes = file_sizes(path, dense, CFG)
        ref = save_model(dense, tmp_path / f"d.{ext}", cfg=CFG)
        assert sizes.bytes == os.path.getsize(path) and sizes.dense_bytes == os.path.getsize(ref)
        assert sizes.ratio == sizes.dense_bytes / sizes.bytes > 1.5
        fc1 = next(w for w in sizes.weights if w.name == "fc1")
        assert fc1.dense_bytes == 96 * 64 * 4 and 0 < fc1.stored_bytes < fc1.dense_bytes / 4
        if ext == "onnx":  # per index entry a 4-bit code and a 4- or 8-bit skip (fillers bridge wider gaps),
            keep = small.nodes["fc1"].weight.reshape(-1) != 0  # float32 scales, a few small constants
            entries = {w: index_entries(keep, w)[0].size for w in (4, 8)}
            assert entries[4] > entries[8] == np.count_nonzero(keep)
            least = min((e * w + 7) // 8 + (e + 1) // 2 for w, e in entries.items()) + 96 * 4
            assert fc1.encoding == "index-int" and least <= fc1.stored_bytes <= least + 128, (least, fc1)
        assert str(path) in sizes.table() and sizes.to_dict()["ratio"] == sizes.ratio


def test_cnn_sinabs_90_percent_4_bits_files(data_dir, tmp_path):
    """The issue's acceptance on the real model: >= 4x smaller as ONNX, smaller as NIR, identical onnxruntime
    spikes (magnitude + RTN on random spikes keeps it fast; benchmarks/file_sizes.py runs SBC on N-MNIST)."""
    from sbc_onnx.data import Dataset
    from sbc_onnx.pipeline import Plan, compress

    dense = load_model(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir")
    rng = np.random.default_rng(4)
    calib = Dataset((rng.random((4, 8, 2, 34, 34)) < 0.2).astype(np.uint8), np.zeros(4, int))
    cfg = SimConfig(dt=1.0)
    new, report = compress(dense, calib, Plan.build(sparsity=0.9, bits=4, method="magnitude"), cfg=cfg)
    onnx_sizes = file_sizes(save_model(new, tmp_path / "c.onnx", cfg=cfg, quant=report.quant), dense, cfg)
    nir_sizes = file_sizes(save_model(new, tmp_path / "c.nir", cfg=cfg), dense, cfg)
    assert onnx_sizes.ratio >= 4, onnx_sizes.table()
    assert nir_sizes.bytes < nir_sizes.dense_bytes, nir_sizes.table()
    plain = write_onnx(new, tmp_path / "plain.onnx", cfg=cfg, compact=False)
    x = _spikes(rng.random((12, 3, 2, 34, 34)) - 0.8)
    a = run_onnxruntime(ort_session(plain), x)
    b = run_onnxruntime(ort_session(tmp_path / "c.onnx"), x)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert b["12/count_final"].sum() > 0


def test_grid_off_by_rounding_is_not_used_without_int_weights(tmp_path):
    """A compact file gives back the graph's weights bit for bit: a grid that reproduces them only within the
    int_weights tolerance leaves them float (and int_weights=True still uses it, as documented)."""
    rng = np.random.default_rng(5)
    q = rng.integers(-8, 8, (96, 64))
    scale = rng.uniform(0.05, 0.2, 96).astype(np.float32)
    w = dequantize(q, scale, None)
    w[3, 5] = np.nextafter(w[3, 5], np.float32(np.inf))  # one ulp off the grid
    g = _mlp(w, _weights("int", (10, 96), rng))
    quant = {"fc1": (q, scale, None)}
    exact = write_onnx(g, tmp_path / "exact.onnx", cfg=CFG, quant=quant)
    assert flatten(read_onnx(exact)).nodes["fc1"].weight.tobytes() == w.tobytes()
    assert {s.name: s.encoding for s in weight_storage(exact)}["fc1"] in ("dense", "sparse")
    forced = write_onnx(g, tmp_path / "forced.onnx", cfg=CFG, quant=quant, int_weights=True)
    assert {s.name: s.encoding for s in weight_storage(forced)}["fc1"] == "int"


def test_compress_cli_reports_file_sizes(tiny_lif_files, tmp_path, capsys):
    import json

    from sbc_onnx.cli import main

    d = tiny_lif_files
    out, report = tmp_path / "c.onnx", tmp_path / "r.json"
    assert main(["compress", str(d / "m.nir"), "--calib", str(d / "c.npz"), "--sparsity", "0.5", "--bits", "4",
                 "-o", str(out), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    files = json.loads(report.read_text())["files"]
    assert len(files) == 1 and files[0]["path"] == str(out) and files[0]["bytes"] == os.path.getsize(out)
    g = load_model(d / "m.nir")
    dense = save_model(g, tmp_path / "d.onnx", cfg=SimConfig.from_graph(g))  # the model before compression
    assert files[0]["dense_bytes"] == os.path.getsize(dense)
    assert {w["name"] for w in files[0]["weights"]} == set(flatten(load_model(out)).weight_nodes())
    assert f"{out!s}: {os.path.getsize(out) / 1024:.1f} KiB" in printed


def test_dense_reference_is_written_like_the_file(tmp_path):
    """A dense model whose weights lie on an integer grid is stored as integers by the compact writer: the
    reference the ratio uses is that file, not a float one."""
    rng = np.random.default_rng(6)
    dense = _mlp(_weights("int", (96, 64), rng), _weights("int", (10, 96), rng))
    small = _mlp(_weights("sparse-int", (96, 64), rng), _weights("sparse-int", (10, 96), rng))
    path = save_model(small, tmp_path / "c.onnx", cfg=CFG)
    same = save_model(dense, tmp_path / "d.onnx", cfg=CFG)
    plain = save_model(dense, tmp_path / "p.onnx", cfg=CFG, compact=False)
    assert file_sizes(path, dense, CFG).dense_bytes == os.path.getsize(same) < os.path.getsize(plain)
    assert file_sizes(path, dense, CFG, compact=False).dense_bytes == os.path.getsize(plain)
