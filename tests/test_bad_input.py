"""Bad input is refused up front, in one line (issue #14, hardening): numbers that cannot run away, options
checked before any work, paths checked before any simulation, dataset content and model parameters
checked before use.  CLI cases run `main([...])` and expect exit code 2 and exactly one `error:` line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bad_input_cases import CASES, expand, make_base, problems, snapshot
from topologies import ALL, DT

import sbc_onnx as sbc
from sbc_onnx.cli import main
from sbc_onnx.compress import compress_layer, numerics
from sbc_onnx.compress.allocation import Lamp, lamp_scores
from sbc_onnx.compress.numerics import FactorizationError, damped_cholesky
from sbc_onnx.data import Dataset
from sbc_onnx.errors import SbcError
from sbc_onnx.pipeline import Plan


@pytest.fixture(scope="module")
def files(tiny_lif_files):
    return tiny_lif_files


def one_error(capsys, *needles: str) -> str:
    """The single `error:` line on stderr (and nothing else there); it contains every needle."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def compress_args(files, out, *args):
    return ["compress", str(files / "m.nir"), "--calib", str(files / "c.npz"), "-o", str(out), *args]


# ---------------------------------------------------------------------------------------------- 1. numerics

def _counting_potrf(monkeypatch, limit=50):
    """Count the Cholesky factorizations; a runaway escalation fails the test instead of hanging it."""
    calls = []
    real = numerics.lapack.dpotrf

    def potrf(*a, **kw):
        calls.append(1)
        if len(calls) > limit:
            raise RuntimeError("damping escalation does not end")
        return real(*a, **kw)

    monkeypatch.setattr(numerics.lapack, "dpotrf", potrf)
    return calls


@pytest.mark.parametrize("rel_damp", [np.nan, np.inf, -1.0, -np.inf])
def test_damping_must_be_finite_and_non_negative(monkeypatch, rel_damp):
    calls = _counting_potrf(monkeypatch)
    with pytest.raises(ValueError, match="finite number >= 0"):
        damped_cholesky(np.eye(3), rel_damp)
    with pytest.raises(ValueError, match="max_damp"):
        damped_cholesky(np.eye(3), 0.01, max_damp=rel_damp)
    assert not calls


def test_damping_escalation_is_bounded(monkeypatch):
    """An indefinite H and a tiny start far below the ceiling: at most MAX_ATTEMPTS factorizations, the last
    at the ceiling, then FactorizationError (the layer falls back)."""
    calls = _counting_potrf(monkeypatch, limit=1000)
    H = -np.eye(4) + 0.1 * np.ones((4, 4))
    with pytest.raises(FactorizationError, match="rel_damp=0.001 "):
        damped_cholesky(H, 1e-300, max_damp=1e-3)
    assert len(calls) == numerics.MAX_ATTEMPTS
    calls.clear()
    L, rd, _, esc = damped_cholesky(-0.5 * np.eye(3), 1e-12, max_damp=10.0)  # needs lambda > 0.5
    assert rd == 10.0 and len(esc) == numerics.MAX_ATTEMPTS - 1 and np.all(np.isfinite(L))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow is the point
def test_non_finite_lambda_or_factor_stops_the_layer():
    with pytest.raises(FactorizationError, match="damping overflows"):
        damped_cholesky(np.diag([1.79e308, 1.79e308]))
    with pytest.raises(FactorizationError, match="non-finite"):
        damped_cholesky(np.array([[1.79e308]]))  # lambda finite, H + lambda overflows
    r = compress_layer(np.ones((2, 1)), np.array([[1.79e308]]), method="sbc-fast", n_prune=1)
    assert r.fallback and "non-finite" in r.fallback and np.all(np.isfinite(r.W))  # reported, never silent


@pytest.mark.parametrize("kw,needle", [
    ({"rel_damp": np.nan}, "rel_damp"), ({"rel_damp": -1}, "rel_damp"), ({"rel_damp": np.inf}, "rel_damp"),
    ({"lamp_p": np.nan}, "lamp_p"), ({"lamp_p": 0}, "lamp_p"), ({"lamp_p": -2}, "lamp_p"),
    ({"lamp_p": np.inf}, "lamp_p"), ({"sparsity": np.nan}, "sparsity"),
])
def test_plan_refuses_non_finite_or_out_of_range_numbers(kw, needle):
    with pytest.raises(SbcError, match=needle):
        Plan.build(**{"sparsity": 0.5, **kw})


def test_plan_accepts_zero_damping():
    assert Plan.build(sparsity=0.5, rel_damp=0).rel_damp == 0.0


@pytest.mark.parametrize("p", [np.nan, 0.0, -1.0, np.inf])
def test_lamp_exponent_must_be_finite_positive(p):
    with pytest.raises(ValueError, match="LAMP exponent"):
        Lamp(p)
    with pytest.raises(ValueError, match="LAMP exponent"):
        lamp_scores(np.ones(3), p)


# ---------------------------------------------------------------------------------------------- 2. the CLI cases

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("base"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the ONNX writer runs the bad models once
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_case(base, tmp_path, capsys, case):
    """Every case of tests/bad_input_cases.py (the table docs/bad_input.md is made of): exit 2, one `error:`
    line naming the problem, nothing written, the inputs unchanged."""
    argv = expand(case, base, tmp_path)
    before = snapshot(tmp_path, base["m"].parent)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert problems(case, code, err, before, snapshot(tmp_path, base["m"].parent)) == [], err


def test_take_refuses_a_zero_limit():
    ds = Dataset(np.zeros((4, 2, 3), np.uint8), np.zeros(4, int))
    with pytest.raises(SbcError, match="limit must be >= 1"):
        ds.take(0)
    assert ds.take(1).n == 1


# ---------------------------------------------------------------------------------------------- 3. paths

def test_compress_read_only_directory_fails_at_the_start(files, tmp_path, capsys, monkeypatch):
    from sbc_onnx.io import paths

    ro = tmp_path / "ro"
    ro.mkdir()
    real = paths.os.access
    monkeypatch.setattr(paths.os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    assert main(compress_args(files, ro / "o.nir", "--sparsity", "0.5")) == 2
    one_error(capsys, "not writable", str(ro))


def test_convert_refuses_to_overwrite_its_input(files, tmp_path, capsys):
    src = tmp_path / "m.nir"
    src.write_bytes((files / "m.nir").read_bytes())
    before = src.read_bytes()
    assert main(["convert", str(src), str(src)]) == 2
    one_error(capsys, "refusing to overwrite the input")
    assert main(["convert", str(src), str(tmp_path / "." / "m.nir")]) == 2  # the same file under another name
    one_error(capsys, "refusing to overwrite the input")
    assert src.read_bytes() == before
    assert main(["convert", str(src), str(tmp_path / "missing" / "m.onnx")]) == 2
    one_error(capsys, "does not exist")


def test_check_output_unit(tmp_path):
    from sbc_onnx.io.paths import check_output

    f = tmp_path / "f.txt"
    f.write_text("x")
    assert check_output(tmp_path / "new.nir") == tmp_path / "new.nir"
    assert check_output(tmp_path / "a" / "b" / "new.npz", make_dirs=True)  # the writer creates the folders
    with pytest.raises(SbcError, match="exists; use --force"):
        check_output(f, force=False)
    with pytest.raises(SbcError, match="refusing to overwrite the input"):
        check_output(f, inputs=[str(f)])
    with pytest.raises(SbcError, match="not a directory"):
        check_output(f / "x.nir")
    with pytest.raises(SbcError, match="does not exist"):
        check_output(tmp_path / "no" / "x.nir")


# ---------------------------------------------------------------------------------------------- 4. datasets

def _spikes(n=6, t=5, shape=(4,)):
    return (np.random.default_rng(1).random((n, t, *shape)) < 0.3).astype(np.float32)


def test_dataset_content_unit(files):
    with pytest.raises(SbcError, match="NaN/inf"):
        Dataset(np.full((2, 3, 4), np.nan), [0, 1])
    with pytest.raises(SbcError, match="T = 0"):
        Dataset(np.zeros((2, 0, 4)), [0, 1])
    ds = Dataset(_spikes(), [0, 1, 2, 2, 1, 3])
    with pytest.raises(SbcError, match="0..2"):
        ds.check_labels(3)
    ds.check_labels(4)
    with pytest.raises(SbcError, match="labels must lie in 0..2"):  # the library's evaluation too
        sbc.evaluate(sbc.load_model(files / "m.nir"), ds, sbc.SimConfig(dt=DT))


# ---------------------------------------------------------------------------------------------- 5. models

def _model(tmp_path, name, change):
    """The two-layer LIF model with one parameter changed, written unchecked (the writers do not judge)."""
    graph, _ = ALL["sequential"](np.random.default_rng(0))
    change(graph)
    return sbc.save_model(graph, tmp_path / name, cfg=sbc.SimConfig(dt=DT))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the ONNX writer runs the bad model once
@pytest.mark.parametrize("ext", ["nir", "onnx"])
@pytest.mark.parametrize("tau", [0.0, -2e-3])
def test_non_positive_time_constants_are_refused_with_the_node_named(tmp_path, capsys, ext, tau):
    def bad_tau(g):
        g.nodes["l2"].tau[1] = tau

    path = _model(tmp_path, f"tau.{ext}", bad_tau)
    with pytest.raises(SbcError, match="node 'l2' \\(LIF\\) parameter 'tau' must be positive"):
        sbc.load_model(path)
    assert main(["inspect", str(path)]) == 2
    one_error(capsys, "'l2'", "tau", "positive")


def test_cuba_synaptic_time_constant_is_checked_too():
    import nir

    from sbc_onnx.io.nir_io import check_parameters

    n = 2
    cuba = nir.CubaLIF(tau_syn=np.array([1e-3, 0.0]), tau_mem=np.full(n, 1e-3), r=np.ones(n), v_leak=np.zeros(n),
                       v_threshold=np.ones(n), v_reset=np.zeros(n), w_in=np.ones(n))
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "c": cuba, "output": nir.Output(np.array([n]))},
                     edges=[("input", "c"), ("c", "output")])
    with pytest.raises(SbcError, match="'c' \\(CubaLIF\\) parameter 'tau_syn'"):
        check_parameters(g)
