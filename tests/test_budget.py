"""The budget search (compress/budget.py) against brute force over every combination of options."""

import itertools

import numpy as np
import pytest

from sbc_onnx.compress.budget import choose_options


def brute_force(cost, size, budget):
    best = (np.inf, None)
    for picks in itertools.product(*(range(len(c)) for c in cost)):
        s = sum(size[l][o] for l, o in enumerate(picks))
        c = sum(cost[l][o] for l, o in enumerate(picks))
        if s <= budget and c < best[0]:
            best = (c, picks)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_knapsack_is_optimal_on_small_cases(seed):
    rng = np.random.default_rng(seed)
    n_layers = int(rng.integers(1, 5))
    cost = [rng.random(int(rng.integers(1, 6))) for _ in range(n_layers)]
    size = [rng.integers(0, 30, len(c)) for c in cost]
    budget = int(rng.integers(0, 80))
    want_cost, want = brute_force(cost, size, budget)
    if want is None:
        with pytest.raises(ValueError, match="fits the budget"):
            choose_options(cost, size, budget)
        return
    got = choose_options(cost, size, budget)
    assert got.unit == 1
    assert got.cost == pytest.approx(want_cost, abs=1e-12)
    assert got.size <= budget
    assert got.size == sum(size[l][o] for l, o in enumerate(got.picks))


def test_coarse_units_still_fit_the_true_budget():
    rng = np.random.default_rng(7)
    cost = [np.sort(rng.random(8))[::-1] for _ in range(6)]
    size = [np.sort(rng.integers(1_000, 100_000, 8)) for _ in range(6)]
    budget = 250_000
    got = choose_options(cost, size, budget, max_cells=1000)
    assert got.unit > 1 and got.size <= budget
    exact_cost, _ = brute_force(cost, size, budget)
    assert got.cost >= exact_cost - 1e-12
    # the rounding loses at most one unit per layer of capacity
    relaxed_cost, _ = brute_force(cost, size, budget - got.unit * len(cost))
    assert got.cost <= relaxed_cost + 1e-12


def test_unavailable_options_are_never_picked():
    cost = [[np.inf, 1.0], [0.0, np.nan, 5.0]]
    size = [[0, 10], [0, 0, 1]]
    got = choose_options(cost, size, 10)
    assert got.picks == (1, 0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        choose_options([[1.0, 2.0]], [[1]], 5)
    with pytest.raises(ValueError):
        choose_options([[1.0]], [[-1]], 5)


def test_parse_budget_units_and_errors():
    from sbc_onnx.compress.budget import parse_budget
    assert parse_budget("memory=10KiB").amount == 10 * 1024
    assert parse_budget("memory=64kB").amount == 64_000
    assert parse_budget("synops=2.5M").amount == 2_500_000
    for bad in ("memory=", "memory=-1", "memory=nan", "mem=3", "memory=10XB", "synops=0"):
        with pytest.raises(ValueError):
            parse_budget(bad)


@pytest.mark.parametrize("shape,kept,bits", [((16, 2, 5, 5), 800, None), ((16, 2, 5, 5), 80, 4),
                                             ((30, 20), 61, 8), ((30, 20), 600, 3), ((10, 7), 0, None),
                                             ((48, 32), 461, 8), ((10, 128), 224, 4)])
def test_onnx_storage_model_is_what_the_writer_stores(shape, kept, bits, tmp_path):
    """The exact measure equals the bytes a written file holds for a real weight, also for small tensors
    where the node names decide the encoding; the bound by nonzero count equals them for the count-only
    encodings (bitmask, dense) and bounds the relative index, whose fillers depend on the gaps."""
    import nir

    import sbc_onnx as sbc
    from sbc_onnx.io.sizes import OnnxStorage, onnx_weight_bits, weight_storage

    rng = np.random.default_rng(0)
    n = int(np.prod(shape))
    if bits is None:
        w = rng.normal(size=n).astype(np.float32)
        quant = None
    else:
        top = 2 ** (bits - 1)
        q = rng.integers(-top, top, n)
        q[q == 0] = 1
        scale = (rng.random(shape[0]) + 0.5).astype(np.float32)
    keep = np.zeros(n, bool)
    keep[rng.choice(n, kept, replace=False)] = True
    if bits is None:
        w = np.where(keep, w, 0).reshape(shape)
    else:
        q = np.where(keep, q, 0).reshape(shape)
        w = (q * scale.reshape((-1,) + (1,) * (len(shape) - 1))).astype(np.float32)
        quant = {"layer": (q, scale, np.zeros(shape[0], np.int64))}
    node = nir.Conv2d(None, w, 1, 0, 1, 1, np.zeros(shape[0], np.float32)) if len(shape) == 4 else \
        nir.Linear(w)
    in_shape = (shape[1], 9, 9) if len(shape) == 4 else (shape[1],)
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array(in_shape)), "layer": node,
                            "output": nir.Output(np.array([shape[0], 5, 5] if len(shape) == 4 else [shape[0]]))},
                     edges=[("input", "layer"), ("layer", "output")])
    path = tmp_path / "m.onnx"
    sbc.save_model(g, path, quant=quant)
    storage = {s.name: s for s in weight_storage(path)}["layer"]
    assert OnnxStorage.exact(w, None if quant is None else quant["layer"], "layer") == 8 * storage.stored_bytes
    bound = onnx_weight_bits(shape, kept, bits, "float32", "layer")
    assert bound == OnnxStorage()(shape, kept, bits, "float32", "layer")
    if storage.encoding.startswith("index"):
        assert bound >= 8 * storage.stored_bytes
    else:
        assert bound == 8 * storage.stored_bytes, storage.encoding


@pytest.fixture(scope="module")
def mlp_files(tmp_path_factory):
    """A 32-48-10 LIF MLP (8 KB of float32 weights) and 24 calibration samples of random spikes."""
    import nir
    from topologies import DT, _affine, _lif

    import sbc_onnx as sbc
    from sbc_onnx.data import Dataset, save_dataset

    d = tmp_path_factory.mktemp("mlp")
    rng = np.random.default_rng(1)
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([32])), "a1": _affine(rng, 48, 32), "l1": _lif(48),
                            "a2": _affine(rng, 10, 48), "l2": _lif(10), "output": nir.Output(np.array([10]))},
                     edges=[("input", "a1"), ("a1", "l1"), ("l1", "a2"), ("a2", "l2"), ("l2", "output")])
    for n in ("a1", "a2"):  # float32, as the frameworks export: the integer encodings need it
        g.nodes[n].weight, g.nodes[n].bias = g.nodes[n].weight.astype(np.float32), g.nodes[n].bias.astype(np.float32)
    sbc.save_model(g, d / "m.nir", cfg=sbc.SimConfig(dt=DT))
    save_dataset(Dataset((rng.random((24, 30, 32)) < 0.3).astype(np.uint8), rng.integers(0, 10, 24)), d / "c.npz")
    return d


def _compress_cli(files, *args):
    from sbc_onnx.cli import main
    return main(["compress", str(files / "m.nir"), "--calib", str(files / "c.npz"), *args])


@pytest.mark.parametrize("budget", [3000, 1500, 700])
def test_cli_budget_is_met_in_the_written_file(mlp_files, tmp_path, capsys, budget):
    import json

    from sbc_onnx.io.sizes import weight_storage

    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    assert _compress_cli(mlp_files, "-o", str(out), "--budget", f"memory={budget}B", "--report", str(rep)) == 0
    text = capsys.readouterr().out
    stored = sum(w.stored_bytes for w in weight_storage(out))
    dense = sum(w.dense_bytes for w in weight_storage(out))
    assert stored <= budget < dense
    r = json.loads(rep.read_text())
    assert r["budget"]["limit"] == 8 * budget and r["budget"]["used"] <= 8 * budget
    # each layer's planned size is what the file stores for it, whatever its encoding (relative index included)
    per_layer = {w.name: 8 * w.stored_bytes for w in weight_storage(out)}
    assert {n: layer["size"] for n, layer in r["budget"]["layers"].items()} == per_layer
    assert "budget memory=" in text and "the chosen plan uses" in text
    assert any(layer["bits"] for layer in r["layers"])  # float32 weights: low bits pay at these budgets


def test_cli_budget_refusals(mlp_files, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert _compress_cli(mlp_files, "-o", str(out), "--budget", "memory=100B") == 2
    assert "no choice of the allowed sparsities and bit widths fits" in capsys.readouterr().err
    assert not out.exists()
    assert _compress_cli(mlp_files, "-o", str(tmp_path / "o.nir"), "--budget", "memory=1KiB") == 2
    assert "write .onnx" in capsys.readouterr().err
    assert _compress_cli(mlp_files, "-o", str(out), "--budget", "memory=1KiB", "--bits", "4") == 2
    assert "without --sparsity, --bits or --pattern" in capsys.readouterr().err
    assert _compress_cli(mlp_files, "-o", str(out), "--budget", "memory=lots") == 2


def test_synops_budget_counts_the_kept_fan_out(mlp_files):
    """A SynOps budget sizes each option by the SynOps of its own non-zero fan-out on the dense calibration
    activity: the plan fits, and the final weights do exactly the planned SynOps on that activity."""
    import sbc_onnx as sbc
    from sbc_onnx.data import load_dataset
    from sbc_onnx.hardware.energy import energy_report, synops_model

    graph = sbc.load_model(mlp_files / "m.nir")
    cfg = sbc.SimConfig.from_graph(graph)
    data = load_dataset(mlp_files / "c.npz")
    model = synops_model(graph, data, cfg)
    dense = {l.name: l.synops_per_sample for l in energy_report(graph, data, cfg).layers}
    assert model("a2", graph.nodes["a2"].weight) == pytest.approx(dense["a2"]) and model("a1", graph.nodes["a1"].weight) == 0
    limit = int(0.4 * sum(dense.values()))
    g, rep = sbc.compress(graph, data, budget=f"synops={limit}", synops=model, cfg=cfg, measure_damage=False)
    assert rep.budget["kind"] == "synops" and rep.budget["used"] <= limit
    final = sum(int(np.ceil(model(n, g.nodes[n].weight))) for n in ("a1", "a2"))
    assert final == rep.budget["used"]


def test_cli_synops_budget(mlp_files, tmp_path, capsys):
    out = tmp_path / "o.nir"
    assert _compress_cli(mlp_files, "-o", str(out), "--budget", "synops=1000") == 0
    assert "SynOps per sample" in capsys.readouterr().out


def test_cli_synops_budget_on_a_chip(mlp_files, tmp_path, capsys):
    """--target with a SynOps budget: every layer at the chip's width, the plan within the budget, the
    integer model passes the chip's check; a memory budget is refused before any work."""
    import json

    import sbc_onnx as sbc
    from sbc_onnx.hardware import check_graph, load_profile

    out, rep = tmp_path / "o.nir", tmp_path / "r.json"
    assert _compress_cli(mlp_files, "-o", str(out), "--budget", "synops=1000", "--target", "int6",
                         "--report", str(rep)) == 0  # exit 1 if the chip's check failed
    r = json.loads(rep.read_text())
    assert r["budget"]["used"] <= 1000 and r["budget"]["kind"] == "synops"
    assert {layer["bits"] for layer in r["budget"]["layers"].values()} == {6}
    assert any(layer["sparsity"] > 0 for layer in r["budget"]["layers"].values())  # 1000 < the dense SynOps
    g = sbc.load_model(out)
    assert not [v for v in check_graph(g, load_profile("int6"), sbc.SimConfig.from_graph(g)) if v.severity == "error"]
    for n in ("a1", "a2"):  # 6-bit integer codes
        w = np.asarray(g.nodes[n].weight)
        assert np.array_equal(w, np.round(w)) and -32 <= w.min() and w.max() <= 31
    assert _compress_cli(mlp_files, "-o", str(tmp_path / "m.nir"), "--budget", "memory=1KiB", "--target",
                         "loihi2") == 2
    assert "--target takes a synops budget" in capsys.readouterr().err
    assert not (tmp_path / "m.nir").exists()


@pytest.mark.parametrize("budget", [3000, 2000])
def test_sequential_budget_keeps_the_plan_and_holds_in_the_written_file(mlp_files, tmp_path, budget):
    """--sequential with a memory budget: the dense plan is kept (same per-layer options), each layer is
    re-solved against the compressed upstream (other weights than the dense-calibrated run), and every
    layer, hence the written file, stays within its planned storage."""
    import sbc_onnx as sbc
    from sbc_onnx.data import load_dataset
    from sbc_onnx.io.sizes import OnnxStorage, weight_storage

    graph = sbc.load_model(mlp_files / "m.nir")
    cfg = sbc.SimConfig.from_graph(graph)
    data = load_dataset(mlp_files / "c.npz")
    runs = {seq: sbc.compress(graph, data, budget=f"memory={budget}B", sequential=seq, storage=OnnxStorage(),
                              cfg=cfg, measure_damage=False) for seq in (False, True)}
    (g0, r0), (g1, r1) = runs[False], runs[True]
    plan = r1.budget["layers"]
    assert {n: (l["sparsity"], l["bits"]) for n, l in plan.items()} == \
        {n: (l["sparsity"], l["bits"]) for n, l in r0.budget["layers"].items()}
    assert any(not np.array_equal(g0.nodes[n].weight, g1.nodes[n].weight) for n in plan)
    for n, layer in plan.items():
        assert r1.layers[[l.name for l in r1.layers].index(n)].bits == layer["bits"]
    path = tmp_path / "s.onnx"
    sbc.save_model(g1, path, cfg=cfg, quant=r1.quant)
    stored = {w.name: w.stored_bytes for w in weight_storage(path)}
    assert all(8 * stored[n] <= layer["size"] for n, layer in plan.items())
    assert sum(stored.values()) <= budget


def test_sequential_synops_budget_is_refused():
    from sbc_onnx.errors import SbcError
    from sbc_onnx.pipeline import Plan

    with pytest.raises(SbcError, match="not --sequential"):
        Plan.build(budget="synops=1000", sequential=True)
    assert Plan.build(budget="memory=1KiB", sequential=True).sequential


@pytest.mark.parametrize("per_kept, planned_kept, want_kept", [(10, 40, 40), (0, 40, 50), (10, 50, 50)])
def test_resolved_layers_keep_the_most_non_zeros_within_their_planned_size(per_kept, planned_kept, want_kept):
    """A re-solved layer prunes beyond its option's count only as far as its storage needs: down to the most
    non-zeros whose storage is within the planned size (a storage that ignores the non-zeros: no more)."""
    from sbc_onnx.budget_plan import BudgetLayer, BudgetPlan
    from sbc_onnx.compress.budget import BudgetSpec, Option

    def storage(shape, kept, bits, dtype, node):
        return 100 + per_kept * kept

    layer = BudgetLayer("l", np.ones((10, 10)), np.eye(10), 1, (10, 10))
    spec = BudgetSpec("memory", 10_000)
    plan = BudgetPlan(spec, [Option(0.5, 4)], [0], [[0.1]], [[storage(None, planned_kept, 4, None, "l")]], 0, ["l"],
                      [[planned_kept]])
    assert plan.to_budget([layer]).counts == [50]
    assert plan.to_budget([layer], resolve=storage).counts == [100 - want_kept]


@pytest.mark.parametrize("shape,kept,bits", [((256, 128), 3000, 4), ((64, 96), 300, 8), ((40, 50), 150, None)])
def test_storage_bound_holds_wherever_the_nonzeros_are(shape, kept, bits):
    """The relative index's fillers depend on where the nonzeros are: the bound by count must hold for any
    placement, and the writer must pick the index here (else the case tests nothing)."""
    from sbc_onnx.io.onnx_weights import encode_weight
    from sbc_onnx.io.sizes import OnnxStorage, onnx_weight_bits

    rng = np.random.default_rng(4)
    n = int(np.prod(shape))
    bound = onnx_weight_bits(shape, kept, bits, "float32", "layer")
    for trial in range(12):
        keep = np.zeros(n, bool)
        if trial == 0:
            keep[n - kept:] = True  # the bound's own worst case: one gap of all the zeros
        else:
            keep[rng.choice(n, kept, replace=False) if trial % 2 else
                 np.sort(rng.choice(n // 3, kept, replace=False)) * 3] = True
        if bits is None:
            w, grid = np.where(keep, rng.normal(size=n), 0).astype(np.float32).reshape(shape), None
        else:
            top = 2 ** (bits - 1)
            q = np.where(keep, rng.choice([-top, top - 1], n), 0).reshape(shape)
            scale = np.full(shape[0], 0.125, np.float32)
            w, grid = (q * scale[:, None]).astype(np.float32), (q, scale, None)
        assert encode_weight("layer.weight", w, grid=grid).kind.startswith("index")
        exact = OnnxStorage.exact(w, grid, "layer")
        # at its own worst case the bound is loose by at most the node bytes of the encodings it weighs
        assert exact <= bound and (trial > 0 or bound <= exact + 8 * 200), (trial, exact, bound)
