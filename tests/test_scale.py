"""Compression under a memory budget (issue #13, scope 5): calibration in several passes with Hessians spilled
to a work folder, resuming an interrupted run, and refusing what cannot work before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sbc_onnx as sbc
import sbc_onnx.memory_plan as planner
from sbc_onnx import pipeline
from sbc_onnx.calibrate import calibrate
from sbc_onnx.cli import main
from sbc_onnx.data import Dataset, save_dataset
from sbc_onnx.errors import SbcError
from sbc_onnx.graph import flatten
from sbc_onnx.pipeline import Plan, memory_plan
from sbc_onnx.sim import SimConfig
from sbc_onnx.synthetic import sew_resnet_graph

CFG = SimConfig(dt=1.0)
BATCH = 2


def _graph(seed=0):
    return sew_resnet_graph(image=16, widths=(4, 8, 8, 8), blocks=(1, 1, 1, 1), classes=5, seed=seed)


def _data(seed=0, n=4):
    return Dataset(np.random.default_rng(seed).normal(size=(n, 3, 3, 16, 16)).astype(np.float32), np.zeros(n, int))


@pytest.fixture(autouse=True)
def _no_resident_memory(monkeypatch):
    """The budgets below are sized from the layers alone: the test process's own size is left out."""
    monkeypatch.setattr(planner, "process_rss", lambda: 0)


def _tight_budget(graph, data, plan) -> int:
    """A budget that holds the largest layer with room for about two: several calibration passes."""
    mp = memory_plan(graph, data, plan, cfg=CFG, batch_size=BATCH, max_memory="1GiB")
    cal = max(n.calibration for n in mp.layers)
    return mp.step + max(n.transient for n in mp.layers) + max(2 * cal, max(n.compression for n in mp.layers))


def _weights(g, names):
    fg = flatten(g)
    return {n: np.asarray(fg.nodes[n].weight) for n in names}


def _run(graph, data, plan, **kw):
    return sbc.compress(graph, data, plan, cfg=CFG, batch_size=BATCH, measure_damage=False, **kw)


@pytest.mark.parametrize("options", [dict(sparsity=0.5), dict(bits=4, method="sbc-fast")])
def test_several_passes_give_the_one_pass_hessians_and_weights(tmp_path, options):
    graph, data, plan = _graph(), _data(), Plan.build(**options)
    budget = _tight_budget(graph, data, plan)
    passes = memory_plan(graph, data, plan, cfg=CFG, batch_size=BATCH, max_memory=budget).passes
    assert len(passes) >= 2, passes
    ref, ref_rep = _run(graph, data, plan)
    new, rep = _run(graph, data, plan, max_memory=budget, resume=tmp_path / "w")
    names = [r.name for r in ref_rep.layers]
    one = calibrate(sbc.Walker(graph, CFG), data, batch_size=BATCH)
    for i, n in enumerate(names):
        np.testing.assert_array_equal(np.load(tmp_path / "w" / "hessians" / f"{i:04d}.H.npy"), one.layers[n].H)
    got, want = _weights(new, names), _weights(ref, names)
    for n in names:
        np.testing.assert_array_equal(got[n], want[n])
    assert [r.objective_after for r in rep.layers] == [r.objective_after for r in ref_rep.layers]
    assert rep.quant.keys() == ref_rep.quant.keys()


def test_spilled_passes_without_a_work_folder_leave_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.tempfile, "tempdir", str(tmp_path))
    graph, data, plan = _graph(), _data(), Plan.build(sparsity=0.5, method="sbc-fast")
    ref, _ = _run(graph, data, plan)
    new, rep = _run(graph, data, plan, max_memory=_tight_budget(graph, data, plan))
    for n, w in _weights(ref, [r.name for r in rep.layers]).items():
        np.testing.assert_array_equal(_weights(new, [n])[n], w)
    assert list(tmp_path.iterdir()) == []


class _Stop(Exception):
    pass


def _counting(monkeypatch, name):
    calls = []
    original = getattr(pipeline, name)

    def wrapper(*a, **kw):
        calls.append(kw.get("layers"))
        return original(*a, **kw)
    monkeypatch.setattr(pipeline, name, wrapper)
    return calls


@pytest.mark.parametrize("k", [4])
def test_resume_after_a_kill_at_layer_k_recomputes_no_finished_layer(tmp_path, monkeypatch, k):
    graph, data, plan = _graph(), _data(), Plan.build(sparsity=0.5, bits=4)
    ref, ref_rep = _run(graph, data, plan)
    n = len(ref_rep.layers)

    def stop(i, total, name):
        assert total == n
        if i == k:
            raise _Stop
    with pytest.raises(_Stop):
        _run(graph, data, plan, resume=tmp_path / "w", on_layer=stop)
    layers = _counting(monkeypatch, "compress_groups")
    passes = _counting(monkeypatch, "calibrate")
    new, rep = _run(graph, data, plan, resume=tmp_path / "w")
    assert len(layers) == n - k - 1  # only the unfinished layers
    assert passes == []  # every Hessian was spilled before the first layer was compressed
    for name, w in _weights(ref, [r.name for r in ref_rep.layers]).items():
        np.testing.assert_array_equal(_weights(new, [name])[name], w)
    for name in ref_rep.quant:
        for a, b in zip(rep.quant[name], ref_rep.quant[name]):
            np.testing.assert_array_equal(a, b)
    assert [r.sparsity for r in rep.layers] == [r.sparsity for r in ref_rep.layers]


def test_resume_after_a_kill_in_a_later_calibration_pass_keeps_the_earlier_passes(tmp_path, monkeypatch):
    graph, data, plan = _graph(), _data(), Plan.build(sparsity=0.5, method="sbc-fast")
    budget = _tight_budget(graph, data, plan)
    passes = memory_plan(graph, data, plan, cfg=CFG, batch_size=BATCH, max_memory=budget).passes
    original = pipeline.calibrate
    seen = []

    def second_pass_dies(*a, **kw):
        seen.append(kw["layers"])
        if len(seen) == 2:
            raise _Stop
        return original(*a, **kw)
    monkeypatch.setattr(pipeline, "calibrate", second_pass_dies)
    with pytest.raises(_Stop):
        _run(graph, data, plan, max_memory=budget, resume=tmp_path / "w")
    monkeypatch.setattr(pipeline, "calibrate", original)
    again = _counting(monkeypatch, "calibrate")
    new, rep = _run(graph, data, plan, max_memory=budget, resume=tmp_path / "w")
    assert [list(p) for p in passes[1:]] == again  # the first pass is not walked again
    ref, _ = _run(graph, data, plan)
    for name, w in _weights(ref, [r.name for r in rep.layers]).items():
        np.testing.assert_array_equal(_weights(new, [name])[name], w)


@pytest.mark.parametrize("change, needle", [
    (dict(options=dict(sparsity=0.6)), "another set of options"),
    (dict(options=dict(sparsity=0.5, method="sbc-fast")), "another set of options"),
    (dict(graph_seed=1), "another model"),
    (dict(data_seed=1), "another calibration data"),
])
def test_resume_with_another_model_options_or_data_is_refused(tmp_path, change, needle):
    graph, data = _graph(), _data()
    _run(graph, data, Plan.build(sparsity=0.5, method="magnitude"), resume=tmp_path / "w")
    before = sorted(p.name for p in (tmp_path / "w" / "layers").iterdir())
    g2, d2 = _graph(change.get("graph_seed", 0)), _data(change.get("data_seed", 0))
    plan = Plan.build(**change.get("options", dict(sparsity=0.5, method="magnitude")))
    with pytest.raises(SbcError, match=needle):
        _run(g2, d2, plan, resume=tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w" / "layers").iterdir()) == before


def test_a_budget_below_the_largest_layer_is_refused_before_any_work(monkeypatch):
    graph, data, plan = _graph(), _data(), Plan.build(sparsity=0.5)
    mp = memory_plan(graph, data, plan, cfg=CFG, batch_size=BATCH, max_memory="1GiB")
    biggest = max(mp.layers, key=lambda n: n.calibration)
    calls = _counting(monkeypatch, "calibrate")
    with pytest.raises(SbcError, match=f"too small: layer {biggest.name}"):
        _run(graph, data, plan, max_memory=mp.step + biggest.calibration // 2)
    assert calls == []


def test_cli_resume_after_an_interrupt_and_layer_lines(tmp_path, monkeypatch, capsys):
    graph, data = _graph(), _data()
    sbc.save_model(graph, tmp_path / "m.nir", cfg=CFG)
    save_dataset(data, tmp_path / "c.npz")
    args = ["compress", str(tmp_path / "m.nir"), "--calib", str(tmp_path / "c.npz"), "--sparsity", "0.5",
            "--method", "sbc-fast", "--batch-size", str(BATCH), "--max-memory", "4GiB"]
    assert main([*args, "-o", str(tmp_path / "ref.nir")]) == 0
    err = capsys.readouterr().err
    assert "memory budget 4.00 GiB (--max-memory)" in err
    assert "compressing layer 13/13 fc 5 x 8" in err and "ETA" in err
    monkeypatch.setenv(pipeline.STOP_AFTER_ENV, "2")
    work = tmp_path / "work"
    assert main([*args, "-o", str(tmp_path / "o.nir"), "--resume", str(work)]) == 130
    assert not (tmp_path / "o.nir").exists()
    assert len(list((work / "layers").glob("*.json"))) == 3
    monkeypatch.delenv(pipeline.STOP_AFTER_ENV)
    assert main([*args, "-o", str(tmp_path / "o.nir"), "--resume", str(work)]) == 0
    err = capsys.readouterr().err
    assert "compressing layer 3/13 layer1.0.conv2 4 x 36: restored" in err
    assert "compressing layer 4/13 layer2.0.conv1 8 x 36: restored" not in err
    ref, new = sbc.load_model(tmp_path / "ref.nir"), sbc.load_model(tmp_path / "o.nir")
    for n, w in _weights(ref, flatten(ref).weight_nodes()).items():
        np.testing.assert_array_equal(_weights(new, [n])[n], w)
    manifest = json.loads((work / "manifest.json").read_text())
    assert manifest["options"]["method"] == "sbc-fast" and len(manifest["layers"]) == 13
