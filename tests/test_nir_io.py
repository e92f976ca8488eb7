"""NIR reading/writing on the real paper graphs, round trips, and one clear error line per bad input."""

from __future__ import annotations

import os
import shutil

import h5py
import nir
import numpy as np
import pytest

from sbc_onnx.cli import main
from sbc_onnx.graph import diff_graphs
from sbc_onnx.io.nir_io import read_nir, write_nir

from topologies import ALL

PAPER = ["nir_paper/01_lif/lif_norse.nir", "nir_paper/01_lif/lif_rockpool.nir",
         "nir_paper/01_lif/two_lif_neurons.nir", "nir_paper/02_cnn/cnn_sinabs.nir",
         "nir_paper/03_rnn/braille_noDelay_bias_zero.nir", "nir_paper/03_rnn/braille_noDelay_noBias_subtract.nir",
         "sinabs_mnist/mnist_cnn_if.nir", "lava_dl_mnist/mnist_cubalif.nir"]


@pytest.mark.parametrize("rel", PAPER)
def test_round_trip_paper_graphs(data_dir, tmp_path, rel):
    g = read_nir(data_dir / rel)
    out = write_nir(g, tmp_path / "g.nir", metadata={"dt": 1e-4})
    g2 = nir.read(out)  # type checking on
    g_orig = read_nir(data_dir / rel)
    assert diff_graphs(g_orig, g2) == []
    assert float(g2.metadata["dt"]) == 1e-4
    for key, value in (g_orig.metadata or {}).items():  # metadata kept, values too
        if key != "dt":
            assert np.array_equal(np.asarray(g2.metadata[key]), np.asarray(value)), key


def test_rockpool_loaded_without_type_check_and_said(data_dir, caplog):
    with caplog.at_level("WARNING", logger="sbc_onnx"):
        g = read_nir(data_dir / "nir_paper/01_lif/lif_rockpool.nir")
    assert "without type checking" in caplog.text
    assert g.nodes["output"].input_type["input"].tolist() == [1]


@pytest.mark.parametrize("name", sorted(ALL))
def test_round_trip_topologies(tmp_path, name):
    g, _ = ALL[name](np.random.default_rng(0))
    write_nir(g, tmp_path / "t.nir")
    assert diff_graphs(ALL[name](np.random.default_rng(0))[0], nir.read(tmp_path / "t.nir")) == []


def test_diff_graphs_sees_a_changed_weight():
    g1, _ = ALL["sequential"](np.random.default_rng(0))
    g2, _ = ALL["sequential"](np.random.default_rng(0))
    g2.nodes["a2"].weight[0, 0] += 1e-7
    assert diff_graphs(g1, g2) == ["a2.weight differs"]


def test_no_zero_d_params_written(tmp_path):
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([3])), "a": nir.Linear(weight=np.eye(3)),
                            "l": nir.LIF(tau=np.array(1e-3), r=np.array(10.0), v_leak=np.array(0.0),
                                         v_threshold=np.array(1.0), v_reset=np.array(0.0)),
                            "output": nir.Output(np.array([3]))},
                     edges=[("input", "a"), ("a", "l"), ("l", "output")], type_check=False)
    g.nodes["l"].input_type = {"input": np.array([3])}
    g.nodes["l"].output_type = {"output": np.array([3])}
    write_nir(g, tmp_path / "s.nir")
    back = nir.read(tmp_path / "s.nir")
    for f, value in (("tau", 1e-3), ("r", 10.0), ("v_leak", 0.0), ("v_threshold", 1.0), ("v_reset", 0.0)):
        np.testing.assert_array_equal(getattr(back.nodes["l"], f), np.full(3, value), err_msg=f)


# ---- bad input: one line, non-zero exit, no traceback ------------------------------------------------


def _run_cli(capsys, *args):
    code = main(list(map(str, args)))
    err = capsys.readouterr().err
    return code, err


def _writable_copy(src, dst):
    shutil.copy(src, dst)
    os.chmod(dst, 0o644)
    return dst


def test_missing_file(capsys, tmp_path):
    code, err = _run_cli(capsys, "inspect", tmp_path / "nope.nir")
    assert code == 2 and "file not found" in err and "Traceback" not in err


def test_not_hdf5(capsys, tmp_path):
    p = tmp_path / "bad.nir"
    p.write_text("hello")
    code, err = _run_cli(capsys, "inspect", p)
    assert code == 2 and "not a NIR file" in err


def test_truncated(capsys, tmp_path, data_dir):
    data = (data_dir / "nir_paper/02_cnn/cnn_sinabs.nir").read_bytes()
    p = tmp_path / "trunc.nir"
    p.write_bytes(data[: len(data) // 2])
    code, err = _run_cli(capsys, "inspect", p)
    assert code == 2 and ("truncated" in err or "not a NIR file" in err)
    assert len(err.strip().splitlines()) == 1


def test_unsupported_node_type(capsys, tmp_path, data_dir):
    p = _writable_copy(data_dir / "nir_paper/01_lif/lif_norse.nir", tmp_path / "odd.nir")
    with h5py.File(p, "r+") as f:
        del f["node/nodes/1/type"]
        f["node/nodes/1/type"] = "Resonator"
    code, err = _run_cli(capsys, "inspect", p)
    assert code == 2 and "'1'" in err and "Resonator" in err


def test_nan_parameters(capsys, tmp_path, data_dir):
    p = _writable_copy(data_dir / "nir_paper/01_lif/lif_norse.nir", tmp_path / "nan.nir")
    with h5py.File(p, "r+") as f:
        tau = f["node/nodes/1/tau"][()]
        del f["node/nodes/1/tau"]
        f["node/nodes/1/tau"] = np.full_like(tau, np.nan)
    code, err = _run_cli(capsys, "inspect", p)
    assert code == 2 and "NaN" in err and "tau" in err


def test_data_shape_mismatch(capsys, tmp_path, data_dir):
    from sbc_onnx.data import Dataset, save_dataset

    save_dataset(Dataset(np.zeros((2, 5, 3, 7), np.uint8), np.zeros(2, int)), tmp_path / "d.npz")
    code, err = _run_cli(capsys, "eval", data_dir / "nir_paper/02_cnn/cnn_sinabs.nir", "--data", tmp_path / "d.npz")
    assert code == 2 and "(3, 7)" in err and "(2, 34, 34)" in err


def test_eval_cli_end_to_end(capsys, tmp_path, data_dir):
    from sbc_onnx.data import load_nmnist, save_dataset

    ds = load_nmnist(data_dir / "nmnist_small/test", data_dir / "nmnist_small/test100.txt").take(20)
    save_dataset(ds, tmp_path / "t20.npz")
    code = main(["eval", str(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir"), "--data", str(tmp_path / "t20.npz")])
    out = capsys.readouterr().out
    assert code == 0
    assert out.strip().splitlines()[-1] == "accuracy 1.0000 (20/20)"
    assert "firing rate" in out
