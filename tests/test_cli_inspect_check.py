"""CLI end to end: `sbc-onnx inspect` (the node table) and `sbc-onnx check --target` (violations, exit codes).

The commands run through `sbc_onnx.cli.main`, which returns the exit code; the tables and violation lists
are read back from the captured output and compared with what the graphs were built to contain.
"""

from __future__ import annotations

import nir
import numpy as np
import pytest

from sbc_onnx.cli import main
from sbc_onnx.graph import flatten
from sbc_onnx.hardware import integerize
from sbc_onnx.io.models import save_model
from sbc_onnx.io.nir_io import read_nir
from sbc_onnx.sim import SimConfig


def _save(graph: nir.NIRGraph, path, dt: float = 1e-3) -> str:
    save_model(graph, path, cfg=SimConfig(dt=dt))
    return str(path)


def _table(text: str) -> tuple[dict[str, tuple[str, str]], str]:
    """inspect's rows as {node: (type, details)} in printed order, and the summary line after them."""
    lines = text.splitlines()
    assert lines[0].split() == ["node", "type", "input", "output", "params", "details"]
    rows = {}
    for i, line in enumerate(lines[1:], 1):
        if " nodes, " in line:
            return rows, line
        cells = line.split(None, 5)  # node, type, input, output, params never contain spaces
        rows[cells[0]] = (cells[1], cells[5] if len(cells) > 5 else "")
    raise AssertionError(f"no summary line in:\n{text}")


def _details(cell: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in cell.split())


def _violations(text: str) -> list[tuple[str, str, str]]:
    """(severity, rule, node) of every line `check` printed."""
    out = []
    for line in text.splitlines():
        sev, rule, rest = line.split(None, 2)
        assert sev in ("ERROR", "WARNING"), line
        out.append((sev, rule, rest[1:rest.index("]")] if rest.startswith("[") else ""))
    return out


# ---------------------------------------------------------------- inspect

def _recurrent_lif() -> nir.NIRGraph:
    """in -> fc -> lif -> out with a recurrent Linear lif -> rec -> lif; known sparsities 9/24 and 6/36."""
    w = (np.arange(1, 25, dtype=np.float32) / 10).reshape(6, 4)
    w.flat[[0, 1, 5, 7, 10, 13, 20, 22, 23]] = 0
    rec = (np.arange(1, 37, dtype=np.float32) / 10).reshape(6, 6)  # on no <= 8-bit grid, like fc
    np.fill_diagonal(rec, 0)
    lif = nir.LIF(tau=np.full(6, 0.02), r=np.ones(6), v_leak=np.linspace(0, 0.5, 6), v_threshold=np.full(6, 1.5),
                  v_reset=np.zeros(6))
    return nir.NIRGraph(
        nodes={"in": nir.Input(np.array([4])), "fc": nir.Linear(weight=w), "lif": lif,
               "rec": nir.Linear(weight=rec), "out": nir.Output(np.array([6]))},
        edges=[("in", "fc"), ("fc", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "out")])


def test_inspect_lists_every_node_with_type_parameters_and_sparsity(tmp_path, capsys):
    path = _save(_recurrent_lif(), tmp_path / "rec.nir")
    assert main(["inspect", path]) == 0
    rows, summary = _table(capsys.readouterr().out)
    assert {n: t for n, (t, _) in rows.items()} == {"in": "Input", "fc": "Linear", "lif": "LIF", "rec": "Linear",
                                                    "out": "Output"}
    assert list(rows) == flatten(read_nir(path)).order  # simulation order
    assert _details(rows["fc"][1]) == {"sparsity": "0.375", "dtype": "float32"}
    assert _details(rows["rec"][1]) == {"sparsity": "0.167", "dtype": "float32"}
    # neuron parameters: first value, "~" where they differ across the layer
    assert _details(rows["lif"][1]) == {"tau": "0.02", "r": "1", "v_leak": "0~", "v_threshold": "1.5", "v_reset": "0"}
    assert rows["in"][1] == rows["out"][1] == ""
    assert summary.startswith("5 nodes, 5 edges, recurrent (back) edges: rec->lif; 60 weights+biases; format nir")


def test_inspect_real_cnn_reports_each_layers_sparsity(data_dir, tmp_path, capsys):
    g = read_nir(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir")
    fg = flatten(g)
    expected = {}
    for k, n in enumerate(fg.weight_nodes()):  # prune each layer to a different, known sparsity
        w = np.array(fg.nodes[n].weight)
        w.flat[: int(w.size * (0.1 + 0.15 * k))] = 0
        fg.nodes[n].weight = w
        expected[n] = f"{1 - np.count_nonzero(w) / w.size:.3f}"
    assert len(set(expected.values())) == len(expected) == 5
    path = _save(g, tmp_path / "cnn_pruned.nir", dt=1.0)
    assert main(["inspect", path]) == 0
    rows, summary = _table(capsys.readouterr().out)
    assert list(rows) == fg.order
    assert all(rows[n][0] == fg.kind(n) for n in fg.order)
    for n, sparsity in expected.items():
        assert _details(rows[n][1]) == {"sparsity": sparsity, "dtype": "float32"}, n
    for n in fg.neurons():
        d = _details(rows[n][1])
        assert set(d) == {"r", "v_threshold", "v_reset"}, n
        assert float(d["v_threshold"]) == pytest.approx(float(np.asarray(fg.nodes[n].v_threshold).flat[0]), rel=1e-3)
    assert summary.startswith(f"{len(fg.order)} nodes, {len(fg.edges)} edges, recurrent (back) edges: none;")


# ---------------------------------------------------------------- check --target

@pytest.mark.parametrize("target, expected", [
    ("loihi2", {("ERROR", "weight-bits", "fc"), ("ERROR", "weight-bits", "rec"), ("ERROR", "threshold-bits", "lif"),
                ("ERROR", "homogeneous", "lif")}),
    ("speck", {("ERROR", "node-type", "lif"), ("ERROR", "weight-bits", "fc"), ("ERROR", "weight-bits", "rec"),
               ("ERROR", "threshold-bits", "lif"), ("ERROR", "homogeneous", "lif"), ("ERROR", "decay", "lif")}),
])
def test_check_float_model_fails_with_every_violation_listed(tmp_path, capsys, target, expected):
    path = _save(_recurrent_lif(), tmp_path / "float.nir")
    assert main(["check", path, "--target", target]) == 1
    out, err = capsys.readouterr()
    found = _violations(out)
    assert len(found) == len(set(found))
    assert set(found) == expected
    assert f"{len(expected)} violation(s), 0 warning(s) for {target}" in err


def _if_net(rng) -> tuple[nir.NIRGraph, dict]:
    """Float IF network whose weights are integer codes times a per-layer scale."""
    q1, q2 = rng.integers(-127, 128, (8, 5)), rng.integers(-127, 128, (3, 8))
    s1, s2 = np.full(8, 0.011), np.full(3, 0.007)
    g = nir.NIRGraph.from_list(
        nir.Input(np.array([5])), nir.Linear(weight=(q1 * s1[:, None]).astype(np.float32)),
        nir.IF(r=np.ones(8), v_threshold=np.full(8, 1.0), v_reset=np.zeros(8)),
        nir.Linear(weight=(q2 * s2[:, None]).astype(np.float32)),
        nir.IF(r=np.ones(3), v_threshold=np.full(3, 1.0), v_reset=np.zeros(3)), nir.Output(np.array([3])))
    return g, {"linear": (q1, s1, None), "linear_1": (q2, s2, None)}


@pytest.mark.parametrize("target", ["speck", "loihi2"])
def test_check_passes_the_integer_model_and_fails_its_float_twin(tmp_path, capsys, target):
    g, codes = _if_net(np.random.default_rng(0))
    im = integerize(g, codes, target)
    ok = _save(im.int_graph, tmp_path / "int.nir", dt=1.0)
    assert main(["check", ok, "--target", target]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines() == [f"{ok}: 0 violation(s), 0 warning(s) for {target} -- OK"]
    # the float twin has the same weights but non-integer thresholds (threshold * scale)
    twin = _save(im.float_graph, tmp_path / "twin.nir", dt=1.0)
    assert main(["check", twin, "--target", target]) == 1
    assert set(_violations(capsys.readouterr().out)) == {("ERROR", "threshold-bits", "if"),
                                                         ("ERROR", "threshold-bits", "if_1")}


def test_check_warnings_do_not_fail(tmp_path, capsys):
    """Loihi's 12-bit decay rounds dt/tau = 1/3000 to 1/4096: a warning, and the check still passes."""
    rng = np.random.default_rng(1)
    g = nir.NIRGraph.from_list(
        nir.Input(np.array([5])), nir.Linear(weight=rng.integers(-128, 128, (4, 5)).astype(np.int8)),
        nir.LIF(tau=np.full(4, 3000.0), r=np.ones(4), v_leak=np.zeros(4), v_threshold=np.full(4, 100),
                v_reset=np.zeros(4)), nir.Output(np.array([4])))
    path = _save(g, tmp_path / "lif.nir")
    assert main(["check", path, "--target", "loihi2", "--dt", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert _violations(lines[0]) == [("WARNING", "decay", "lif")] and "by up to 26.8%" in lines[0]
    assert lines[1:] == [f"{path}: 0 violation(s), 1 warning(s) for loihi2 -- OK"]


def test_check_unknown_target_is_bad_input(tmp_path, capsys):
    path = _save(_recurrent_lif(), tmp_path / "m.nir")
    assert main(["check", path, "--target", "nochip"]) == 2
    assert "unknown hardware profile 'nochip'" in capsys.readouterr().err
