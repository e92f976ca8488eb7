"""The budget plan search (budget_search.py): seeded, within the budget, best of its candidates."""

import numpy as np
import pytest

from sbc_onnx.budget_plan import BudgetPlan
from sbc_onnx.budget_search import search_plan
from sbc_onnx.compress.budget import BudgetSpec


def synthetic_plan(seed=0, layers=5):
    """A memory plan over 5 layers x 12 options with random measured costs and sizes (bits), the DP's
    own choice made: sizes fall and costs rise with the option's compression, as measured ones do."""
    rng = np.random.default_rng(seed)
    spec = BudgetSpec("memory", 60, sparsities=(0.0, 0.5, 0.75, 0.9), bits=(8, 4, 2))
    n_opt = len(spec.options())
    sizes = [sorted(rng.integers(10, 200, n_opt).tolist(), reverse=True) for _ in range(layers)]
    costs = [sorted((rng.random(n_opt) * 10.0 ** rng.uniform(-3, 0)).tolist()) for _ in range(layers)]
    return BudgetPlan(spec, spec.options(), [], costs, sizes, 0, [f"l{i}" for i in range(layers)]).refit(spec)


def network_score(plan, seed=1):
    """A stand-in for the end-to-end distance: each layer's cost matters to the output by its own factor
    (up to 100x apart), which the unweighted DP cannot see."""
    amp = 10.0 ** np.random.default_rng(seed).uniform(-1, 1, len(plan.costs))
    return lambda picks: float(sum(a * plan.costs[l][o] for l, (a, o) in enumerate(zip(amp, picks))))


def test_search_is_seeded_fits_the_budget_and_picks_its_best():
    plan = synthetic_plan()
    score = network_score(plan)
    chosen, result = search_plan(plan, score, 12, seed=3)
    again, result2 = search_plan(plan, score, 12, seed=3)
    assert result.candidates == result2.candidates and chosen.picks == again.picks
    other = search_plan(plan, score, 12, seed=4)[1]
    assert [c.picks for c in other.candidates] != [c.picks for c in result.candidates]
    assert len(result.candidates) == 12
    assert len({c.picks for c in result.candidates}) == 12  # each plan is scored once
    assert result.candidates[0].picks == tuple(plan.picks)  # the plain DP's plan is a candidate
    for c in result.candidates:
        assert c.used == sum(plan.sizes[l][o] for l, o in enumerate(c.picks)) <= plan.limit()
        assert c.score == score(c.picks)
    scores = [c.score for c in result.candidates]
    assert result.best == int(np.argmin(scores))
    assert tuple(chosen.picks) == result.candidates[result.best].picks
    assert chosen.used == result.candidates[result.best].used <= plan.limit()
    assert chosen.to_dict()["search"]["score_chosen"] == min(scores)
    # the layer factors the DP cannot see: the search finds a better plan than the unweighted one
    assert min(scores) < scores[0]


def test_search_reaches_the_optimum_of_a_weighted_objective():
    """When the end-to-end score is a weighted sum of the layer costs, some weights make the DP return its
    exact optimum; the coordinate search gets there from the unweighted plan."""
    plan = synthetic_plan(seed=13, layers=4)
    score = network_score(plan, seed=14)
    amp = 10.0 ** np.random.default_rng(14).uniform(-1, 1, 4)
    optimum = score(plan.reweighted(amp).picks)
    assert score(plan.picks) > optimum
    _, result = search_plan(plan, score, 25, seed=0)
    assert min(c.score for c in result.candidates) == pytest.approx(optimum)


def test_one_candidate_is_the_plain_plan_and_none_is_refused():
    plan = synthetic_plan()
    chosen, result = search_plan(plan, network_score(plan), 1)
    assert chosen.picks == plan.picks and result.proposals == 1
    with pytest.raises(ValueError):
        search_plan(plan, network_score(plan), 0)


@pytest.fixture(scope="module")
def mlp3():
    """A 32-40-24-10 LIF MLP and 16 calibration samples of random spikes: at 1500 B the budget has a
    few plans, and the calibration output distance prefers another than the plain DP's."""
    import nir
    from topologies import DT, _affine, _lif

    import sbc_onnx as sbc
    from sbc_onnx.data import Dataset

    rng = np.random.default_rng(2)
    nodes = {"input": nir.Input(np.array([32])), "a1": _affine(rng, 40, 32), "l1": _lif(40),
             "a2": _affine(rng, 24, 40), "l2": _lif(24), "a3": _affine(rng, 10, 24), "l3": _lif(10),
             "output": nir.Output(np.array([10]))}
    g = nir.NIRGraph(nodes=nodes, edges=[("input", "a1"), ("a1", "l1"), ("l1", "a2"), ("a2", "l2"), ("l2", "a3"),
                                         ("a3", "l3"), ("l3", "output")])
    for n in ("a1", "a2", "a3"):  # float32, as the frameworks export: the integer encodings need it
        g.nodes[n].weight, g.nodes[n].bias = g.nodes[n].weight.astype(np.float32), g.nodes[n].bias.astype(np.float32)
    data = Dataset((rng.random((16, 30, 32)) < 0.3).astype(np.uint8), rng.integers(0, 10, 16))
    return g, sbc.SimConfig(dt=DT), data


def test_compress_applies_the_searched_plan_within_the_budget(mlp3, tmp_path):
    import sbc_onnx as sbc
    from sbc_onnx.budget_search import OutputDistance
    from sbc_onnx.io.sizes import OnnxStorage, weight_storage

    g, cfg, data = mlp3
    budget = 1500

    def run(n):
        return sbc.compress(g, data, budget=f"memory={budget}B", budget_search=n, storage=OnnxStorage(),
                            cfg=cfg, measure_damage=False)

    (g1, r1), (g2, _), (g0, r0) = run(6), run(6), run(0)
    for n in ("a1", "a2", "a3"):  # seeded: the same weights again
        assert np.array_equal(g1.nodes[n].weight, g2.nodes[n].weight)
    s = r1.budget["search"]
    assert s["chosen"] == int(np.argmin(s["scores"])) and s["score_chosen"] < s["score_dp"]
    assert s["score_dp"] == s["scores"][0]
    assert "search" not in r0.budget and r1.budget["used"] <= 8 * budget
    assert any(not np.array_equal(g0.nodes[n].weight, g1.nodes[n].weight) for n in ("a1", "a2", "a3"))
    # the written weights are the chosen candidate's: their calibration distance is the one it was scored by
    distance = OutputDistance(g, data, cfg)
    assert distance({n: g0.nodes[n].weight for n in ("a1", "a2", "a3")}) == pytest.approx(s["score_dp"], rel=1e-6)
    assert distance({n: g1.nodes[n].weight for n in ("a1", "a2", "a3")}) == pytest.approx(s["score_chosen"], rel=1e-6)
    assert distance({n: g.nodes[n].weight for n in ("a1", "a2", "a3")}) == 0.0
    path = tmp_path / "m.onnx"
    sbc.save_model(g1, path, cfg=cfg, quant=r1.quant)
    assert sum(w.stored_bytes for w in weight_storage(path)) <= budget


def test_search_options_are_checked():
    from sbc_onnx.errors import SbcError
    from sbc_onnx.pipeline import Plan

    with pytest.raises(SbcError, match="give --budget"):
        Plan.build(sparsity=0.5, budget_search=4)
    with pytest.raises(SbcError, match="whole number"):
        Plan.build(budget="memory=1KiB", budget_search=-1)
    assert Plan.build(budget="memory=1KiB", budget_search=4, search_seed=2).budget_search == 4


def test_cross_entropy_score_against_the_dense_prediction(mlp3):
    """kind "xent": the mean -log softmax of the compressed output counts at the dense network's argmax."""
    import copy

    import sbc_onnx as sbc
    from sbc_onnx.budget_search import OutputDistance

    g, cfg, data = mlp3
    counts = sbc.Walker(g, cfg).run(np.swapaxes(data.x, 0, 1).astype(np.float32), record_outputs=False).counts["l3"]
    labels = np.argmax(counts, axis=1)
    rng = np.random.default_rng(0)
    noisy = {n: (g.nodes[n].weight * (1 + 0.5 * rng.standard_normal(g.nodes[n].weight.shape))).astype(np.float32)
             for n in ("a1", "a2", "a3")}
    gc = copy.deepcopy(g)
    for n, w in noisy.items():
        gc.nodes[n].weight = w
    c = sbc.Walker(gc, cfg).run(np.swapaxes(data.x, 0, 1).astype(np.float32), record_outputs=False).counts["l3"]
    c = c.astype(np.float64)
    want = np.mean(np.log(np.exp(c).sum(axis=1)) - c[np.arange(len(labels)), labels])
    distance = OutputDistance(g, data, cfg, batch_size=5, kind="xent")  # batches: the outputs are joined in order
    assert want > 0.1 and distance(noisy) == pytest.approx(want, rel=1e-9)
    assert distance({n: g.nodes[n].weight for n in noisy}) < want  # the dense network itself scores better
