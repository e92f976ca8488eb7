"""`sbc-onnx compress` end to end on a small synthetic model: one command path with or without --target,
the report, --eval, and bad options as one error line with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sbc_onnx as sbc
from sbc_onnx.cli import main
from sbc_onnx.data import load_dataset
from sbc_onnx.graph import flatten
from sbc_onnx.hardware.deploy import compress_for_target

from topologies import DT


@pytest.fixture(scope="module")
def files(tiny_lif_files):
    return tiny_lif_files


def _run(files, tmp_path, *args):
    return main(["compress", str(files / "m.nir"), "--calib", str(files / "c.npz"), *args])


def test_target_keeps_every_option_and_writes_the_report(files, tmp_path, capsys):
    out, rep_path = tmp_path / "o.nir", tmp_path / "r.json"
    assert _run(files, tmp_path, "-o", str(out), "--target", "loihi2", "--sparsity", "0.5", "--method", "sbc-fast",
                "--sequential", "--exact-resolve", "--report", str(rep_path)) == 1  # Loihi's NIR path has no bias
    assert "ERROR   bias           [a1]" in capsys.readouterr().out  # listed, and every file still written
    rep = json.loads(rep_path.read_text())
    assert rep["target"]["profile"] == "loihi2" and rep["bits"] == 8 and rep["method"] == "sbc-fast"
    assert rep["overall_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert [r["layer"] for r in rep["target"]["layers"]] == ["a1", "a2"]
    # --sequential and --exact-resolve reached the compression: the integer model is the library's
    # with both options, and not the one without them
    graph = sbc.load_model(files / "m.nir")
    cfg = sbc.SimConfig.from_graph(graph)
    calib = load_dataset(files / "c.npz")
    kw = dict(cfg=cfg, sparsity=0.5, method="sbc-fast", progress=False)
    with_opts, _, _ = compress_for_target(graph, calib, "loihi2", sequential=True, exact_resolve=True, **kw)
    without, _, _ = compress_for_target(graph, calib, "loihi2", **kw)
    written = flatten(sbc.load_model(out))
    for name in ("a1", "a2"):
        np.testing.assert_array_equal(written.nodes[name].weight, flatten(with_opts).nodes[name].weight)
    assert any(not np.array_equal(written.nodes[n].weight, flatten(without).nodes[n].weight) for n in ("a1", "a2"))
    assert (tmp_path / "o.float.nir").exists()
    meta = sbc.load_model(out).metadata
    assert meta["sbc_onnx.method"] == "sbc-fast" and float(meta["dt"]) == DT  # provenance and settings, on save


def test_eval_prints_dense_and_compressed_accuracy(files, tmp_path, capsys):
    out, rep_path = tmp_path / "o.nir", tmp_path / "r.json"
    assert _run(files, tmp_path, "-o", str(out), "--sparsity", "0.7", "--eval", str(files / "c.npz"),
                "--report", str(rep_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    dense = next(x for x in lines if x.startswith("dense "))
    comp = next(x for x in lines if x.startswith("compressed "))
    data, cfg = load_dataset(files / "c.npz"), sbc.SimConfig(dt=DT)
    ref_dense = sbc.evaluate(sbc.load_model(files / "m.nir"), data, cfg)
    ref_comp = sbc.evaluate(sbc.load_model(out), data, cfg)
    assert dense.split(None, 1)[1] == ref_dense.line() and comp.split(None, 1)[1] == ref_comp.line()
    rates = lines[lines.index("compressed model:") + 2:][:2]  # the compressed model's firing rates
    assert [r.split() for r in rates] == [[n, f"{v:.4f}"] for n, v in ref_comp.firing_rates.items()]
    assert ref_comp.firing_rates != ref_dense.firing_rates
    rep = json.loads(rep_path.read_text())
    assert (rep["accuracy_dense"], rep["accuracy_compressed"]) == (ref_dense.accuracy, ref_comp.accuracy)
    assert "target" not in rep


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "0.5", "--pattern", "2:4"], "not both"),
    (["--pattern", "4:2"], "N:M"),
    ([], "nothing to do"),
    (["--sparsity", "0.5", "--allocation", "obs", "--sequential"], "allocation obs"),
    (["--target", "int4", "--bits", "6"], "does not fit"),
    (["--target", "loihi2", "--grid", "asymmetric"], "does not fit"),
    (["--target", "loihi2", "--granularity", "channel"], "does not fit"),
    (["--target", "nochip"], "unknown hardware profile"),
])
def test_bad_options_exit_2_with_one_line(files, tmp_path, capsys, args, message):
    assert _run(files, tmp_path, "-o", str(tmp_path / "o.nir"), *args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], captured.err
    assert not (tmp_path / "o.nir").exists()


def test_target_output_must_be_nir_and_outputs_are_not_overwritten(files, tmp_path, capsys):
    assert _run(files, tmp_path, "-o", str(tmp_path / "o.onnx"), "--target", "loihi2") == 2
    assert "writes NIR" in capsys.readouterr().err
    (tmp_path / "o.float.nir").write_text("keep")
    assert _run(files, tmp_path, "-o", str(tmp_path / "o.nir"), "--target", "loihi2") == 2
    assert "o.float.nir exists" in capsys.readouterr().err
    assert (tmp_path / "o.float.nir").read_text() == "keep"


def test_unknown_method_exits_2_with_one_line(files, tmp_path, capsys):
    """Rejected by the option parser (click): exit 2, one `error:` line naming the choices."""
    assert _run(files, tmp_path, "-o", str(tmp_path / "o.nir"), "--method", "foo") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "'foo' is not one of" in err[0] and "sbc-fast" in err[0]
