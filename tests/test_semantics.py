"""No silent semantics (issue #12, part 2): a setting the model does not record is assumed with one note
naming it and its option (--strict refuses instead); a neuron Euler cannot step (dt/tau > 1), a layer whose
calibration input is dead or saturated, and a non-finite Hessian each end with one error (exit 2).

The two cases of the issue: an snnTorch export (default subtract reset) whose metadata was lost, and a Norse
LIF with tau = 1e-5 at dt = 1e-4."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import nir
import numpy as np
import pytest
from topologies import ALL, DT

import sbc_onnx as sbc
from sbc_onnx.calibrate import calibrate
from sbc_onnx.cli import main
from sbc_onnx.data import Dataset, save_dataset
from sbc_onnx.errors import SbcError
from sbc_onnx.sim.config import assumed_settings, config_for


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the CLI in-process; returns (exit code, stdout, stderr lines). The library's note handler is
    made afresh so that it writes to this test's captured stderr."""
    monkeypatch.setattr(logging.getLogger("sbc_onnx"), "handlers", [])

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err.strip().splitlines()
    return run


def spike_data(path, n_in, n=8, steps=30, p=0.3, seed=0, n_classes=3):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, steps, n_in)) < p).astype(np.uint8)
    save_dataset(Dataset(x, rng.integers(0, n_classes, n)), path)
    return path


def lif_graph(**lif_changes):
    """The two-layer LIF model of tests/topologies.py, with fields of its first LIF replaced."""
    graph, _ = ALL["sequential"](np.random.default_rng(0))
    for k, v in lif_changes.items():
        setattr(graph.nodes["l1"], k, np.full(6, v, dtype=np.float64))
    return graph


# ---------------------------------------------------------------------------------------------- assumptions

def test_only_the_settings_a_graph_uses_are_assumed():
    lif = lif_graph()
    assert assumed_settings(lif) == {"dt": 1e-4, "integrator": "euler", "reset": "to_v_reset"}
    lif.metadata = sbc.SimConfig(dt=DT).to_metadata()
    assert assumed_settings(lif) == {}
    lif.metadata = {"dt": DT, "integrator": "exact"}
    assert assumed_settings(lif, reset=None) == {"reset": "to_v_reset"}
    assert assumed_settings(lif, reset="subtract") == {}
    n = 3  # IF steps without dt or integrator; a CubaLIF also depends on the update order
    if_graph = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "i": nir.IF(r=np.ones(n), v_threshold=np.ones(n),
                                                                                   v_reset=np.zeros(n)),
                                   "output": nir.Output(np.array([n]))},
                            edges=[("input", "i"), ("i", "output")])
    assert assumed_settings(if_graph) == {"reset": "to_v_reset"}
    cuba = nir.CubaLIF(tau_syn=np.full(n, 1e-3), tau_mem=np.full(n, 1e-3), r=np.ones(n), v_leak=np.zeros(n),
                       v_threshold=np.ones(n), v_reset=np.zeros(n), w_in=np.ones(n))
    if_graph.nodes["i"] = cuba
    assert set(assumed_settings(if_graph)) == {"dt", "integrator", "reset", "cuba_order"}


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_config_for_notes_once_or_refuses(monkeypatch):
    graph, seen = lif_graph(), Collect()
    monkeypatch.setattr(logging.getLogger("sbc_onnx"), "handlers", [seen])
    monkeypatch.setattr(logging.getLogger("sbc_onnx"), "level", logging.INFO)
    cfg = config_for(graph, source="m.nir", integrator="exact")
    notes = seen.messages
    assert len(notes) == 1, notes
    assert "m.nir" in notes[0] and "dt=0.0001 (--dt)" in notes[0] and "reset=to_v_reset (--reset)" in notes[0]
    assert "integrator" not in notes[0] and cfg.integrator == "exact"
    with pytest.raises(SbcError, match="does not record dt, reset, .*give --dt, --reset$"):
        config_for(graph, strict=True, integrator="exact")
    assert config_for(graph, strict=True, dt=DT, integrator="euler", reset="subtract").reset == "subtract"


# ---------------------------------------------------------------------------------------------- issue case 1

@pytest.fixture(scope="module")
def snntorch_subtract(tmp_path_factory):
    """An snnTorch Leaky net with snnTorch's default reset (subtract), exported, its metadata stripped."""
    pytest.importorskip("torch")
    pytest.importorskip("snntorch")
    pytest.importorskip("nirtorch")
    import snntorch as snn
    import torch

    from sbc_onnx.bridges import export_snntorch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), snn.Leaky(beta=0.9, init_hidden=True),
                              torch.nn.Linear(6, 3), snn.Leaky(beta=0.9, init_hidden=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bridge warns that NIR cannot express subtract
        graph = export_snntorch(net, torch.zeros(1, 4))
    assert graph.metadata["reset"] == "subtract"  # what the file should have said
    graph.metadata = {}
    d = tmp_path_factory.mktemp("snn")
    sbc.save_model(graph, d / "m.nir")
    return d / "m.nir", spike_data(d / "d.npz", 4)


def run_cli(*args):
    """The CLI in a fresh process (the note goes through the library's logger to the real stderr);
    returns (exit code, stderr lines)."""
    r = subprocess.run([sys.executable, "-m", "sbc_onnx", *map(str, args)], capture_output=True, text=True, check=False,
                       timeout=300)
    return r.returncode, r.stderr.strip().splitlines()


def notes(err):
    return [line for line in err if line.startswith("note:") and "does not record" in line]


def test_snntorch_subtract_without_metadata_is_not_silent(snntorch_subtract, cli):
    model, data = snntorch_subtract
    code, err = run_cli("eval", model, "--data", data)
    assert code == 0, err
    (note,) = notes(err)
    assert "reset=to_v_reset (--reset)" in note and "dt=0.0001 (--dt)" in note and "integrator=euler" in note
    code, out, err = cli("eval", model, "--data", data, "--strict")
    assert code == 2 and out == "" and len(err) == 1 and err[0].startswith("error: ")
    assert "--reset" in err[0] and "--dt" in err[0] and "--integrator" in err[0]
    code, err = run_cli("eval", model, "--data", data, "--strict", "--reset", "subtract", "--dt", "1e-4",
                        "--integrator", "euler")
    assert code == 0 and not notes(err)


def test_strict_compress_refuses_before_writing(snntorch_subtract, cli, tmp_path):
    model, data = snntorch_subtract
    out = tmp_path / "c.nir"
    code, _, err = cli("compress", model, "--calib", data, "-o", out, "--sparsity", "0.5", "--strict")
    assert code == 2 and len(err) == 1 and "--reset" in err[0] and not out.exists()


# ---------------------------------------------------------------------------------------------- issue case 2

@pytest.fixture(scope="module")
def norse_fast_tau(tmp_path_factory):
    """A Norse LIF net with tau = 1e-5 stepped at dt = 1e-4 (dt/tau = 10), exported with its metadata."""
    pytest.importorskip("torch")
    pytest.importorskip("nirtorch")
    pytest.importorskip("norse")
    import norse.torch as nt
    import torch
    from norse.torch.functional.lif_box import LIFBoxParameters

    from sbc_onnx.bridges import export_norse

    torch.manual_seed(0)
    slow = LIFBoxParameters(tau_mem_inv=torch.tensor(100.0), v_th=torch.tensor(0.3))
    fast = LIFBoxParameters(tau_mem_inv=torch.tensor(1e5), v_th=torch.tensor(0.3))
    net = nt.SequentialState(torch.nn.Linear(4, 6), nt.LIFBoxCell(slow, dt=1e-4), torch.nn.Linear(6, 3),
                             nt.LIFBoxCell(fast, dt=1e-4))
    graph = export_norse(net, torch.zeros(1, 4))
    d = tmp_path_factory.mktemp("norse")
    sbc.save_model(graph, d / "m.nir")
    return d / "m.nir", spike_data(d / "d.npz", 4)


def test_norse_dt_over_tau_10_is_an_error(norse_fast_tau, cli, tmp_path):
    model, data = norse_fast_tau
    out = tmp_path / "c.nir"
    code, _, err = cli("compress", model, "--calib", data, "-o", out, "--sparsity", "0.5")
    assert code == 2 and not out.exists()
    assert len(err) == 1 and err[0].startswith("error: node '3' (LIF): dt/tau = 10 > 1"), err
    assert "--integrator exact" in err[0]
    code, _, err = cli("eval", model, "--data", data)
    assert code == 2 and "dt/tau = 10" in err[-1]
    code, _, err = cli("eval", model, "--data", data, "--integrator", "exact")  # a zero-order hold steps it
    assert code == 0


@pytest.mark.parametrize("tau, ok", [(DT, True), (DT / 1.01, False)])
def test_euler_limit_is_dt_equal_tau(tau, ok):
    graph = lif_graph(tau=tau)
    cfg = sbc.SimConfig(dt=DT)
    if ok:  # k = 1: a memoryless neuron (snnTorch beta = 0), steppable
        sbc.Walker(graph, cfg)
        return
    with pytest.raises(SbcError, match="node 'l1' \\(LIF\\): .*dt/tau = 1.01 > 1"):
        sbc.Walker(graph, cfg)
    sbc.Walker(graph, cfg.with_(integrator="exact"))


# ---------------------------------------------------------------------------------------------- calibration

def _data(n=8, steps=30, p=0.3, seed=1):
    rng = np.random.default_rng(seed)
    return Dataset((rng.random((n, steps, 4)) < p).astype(np.uint8), rng.integers(0, 3, n))


def test_dead_layer_input_is_an_error(tmp_path, cli):
    graph = lif_graph(v_threshold=1e9)  # l1 never fires: a2's input is zero everywhere
    model = sbc.save_model(graph, tmp_path / "m.nir", cfg=sbc.SimConfig(dt=DT))
    data = spike_data(tmp_path / "d.npz", 4)
    out = tmp_path / "c.nir"
    code, _, err = cli("compress", model, "--calib", data, "-o", out, "--sparsity", "0.5")
    assert code == 2 and not out.exists()
    errors = [line for line in err if line.startswith("error:")]
    assert errors == err[-1:] and "layer a2: over the 8 calibration sample(s), its input never spiked" in err[-1], err


def test_saturated_layer_input_is_an_error():
    graph = lif_graph(v_threshold=-1e9)  # l1 fires at every step: a2's input is one everywhere
    with pytest.raises(SbcError, match="layer a2: over .*, its input is saturated.*rate 1\\b"):
        sbc.compress(graph, _data(), sparsity=0.5, cfg=sbc.SimConfig(dt=DT))


def test_a_layer_that_spikes_only_in_some_samples_is_fine():
    """The check is a whole-calibration-set statistic: a sample in which a layer is silent is legitimate."""
    x = _data().x.copy()
    x[:4] = 0  # half the samples have no input spikes at all
    _, report = sbc.compress(lif_graph(), Dataset(x, _data().y), sparsity=0.5, cfg=sbc.SimConfig(dt=DT),
                             measure_damage=False)
    assert [r.name for r in report.layers] == ["a1", "a2"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf * 0 in the accumulation is the point
def test_non_finite_hessian_is_an_error_naming_the_layer():
    graph, data, cfg = lif_graph(), _data(), sbc.SimConfig(dt=DT)
    cal = calibrate(sbc.Walker(graph, cfg), data)
    cal.check()  # a healthy calibration passes
    acc = cal.layers["a2"].acc
    acc.add(np.full((1, acc.d), np.inf), 0)  # what a diverging filter or an overflow accumulates
    before = np.asarray(graph.nodes["a2"].weight).copy()
    with pytest.raises(SbcError, match="layer a2: over .*, its calibration Hessian has non-finite entries"):
        sbc.compress(graph, data, sparsity=0.5, cfg=cfg, calibration=cal)
    np.testing.assert_array_equal(graph.nodes["a2"].weight, before)
