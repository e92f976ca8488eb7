"""Budget plan search on the calibration data, end to end (docs/sbc_method.md §B.3; SPDY's search).

The budget's dynamic programme (`budget_plan.plan_budget`) minimises the *summed* per-layer objective, a
proxy: how much a layer's error costs at the network's output differs from layer to layer (a spike
nonlinearity amplifies some layers' errors more than others).  The search keeps the exact knapsack but
scales each layer's costs by a weight w_l, so every candidate it makes meets the budget by construction,
and scores each distinct plan by running the whole compressed network on the calibration data against the
dense one (`OutputDistance`).  The weights are moved by a seeded coordinate search (`search_plan`) from the
unweighted plan, which is scored first: the search never picks a plan the calibration scores worse than
the plain DP's.  The compressed weights of every (layer, option) come from the plan's own option pass
(`BudgetPlan.weights`), so a candidate costs one simulation of the calibration set and no compression.
Only the calibration data is ever simulated.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .budget_plan import BudgetPlan
from .evaluate import output_source
from .graph import FlatGraph, flatten
from .sim import SimConfig, Walker

__all__ = ["SCORES", "Candidate", "OutputDistance", "SearchResult", "search_plan"]

# how far a coordinate move tries to push one layer's log weight, in turn, until the DP's plan changes
MOVES = np.log(2.0) * np.array([0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
RESTART = 1.0            # a restart draws log w_l ~ N(best, RESTART) for every layer
PROPOSALS_PER_PLAN = 60  # give up after this many DP solves per wanted plan (few distinct plans exist)


@dataclass(frozen=True)
class Candidate:
    weights: tuple[float, ...]   # the per-layer cost weights of the DP that made it
    picks: tuple[int, ...]       # its option per layer
    used: int                    # its size (the budget's units)
    score: float                 # its calibration distance to the dense network (smaller is better)


@dataclass
class SearchResult:
    candidates: list[Candidate] = field(default_factory=list)  # every distinct plan scored, in order
    best: int = 0                                              # index of the chosen one
    proposals: int = 0                                         # DP solves, duplicates included
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"candidates": len(self.candidates), "proposals": self.proposals, "chosen": self.best,
                "score_dp": self.candidates[0].score, "score_chosen": self.candidates[self.best].score,
                "scores": [c.score for c in self.candidates], "seconds": self.seconds}


def search_plan(plan: BudgetPlan, score: Callable[[Sequence[int]], float], n: int, *, seed: int = 0,
                progress: Callable[[str], None] | None = None) -> tuple[BudgetPlan, SearchResult]:
    """The plan of the least `score(picks)` among `n` distinct candidate plans within `plan`'s budget
    (fewer if the weights cannot reach n distinct plans), and the search record.  Candidate 0 is `plan`'s
    own (unweighted) choice.  Then a coordinate search on the log weights: layer by layer (in a seeded
    order), each way, the smallest move of MOVES that gives an unseen plan is scored and kept if it beats
    the best; a sweep without improvement restarts from a seeded random step around the best weights.
    The same seed gives the same candidates.  `progress(text)` after each one."""
    if n < 1:
        raise ValueError("the search needs at least one candidate")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    search = _Search(plan, score, n, PROPOSALS_PER_PLAN * n, progress)
    n_layers = len(plan.costs)
    best_logw = current = np.zeros(n_layers)
    search.propose(current)
    while not search.done():
        improved = False
        for l in rng.permutation(n_layers):
            for way in rng.permutation([1.0, -1.0]):
                logw = search.move(current, int(l), float(way))
                if logw is not None and search.last_improved:
                    best_logw = current = logw
                    improved = True
                if search.done():
                    break
            if search.done():
                break
        if not improved and not search.done():  # a local optimum of the moves: restart near the best
            current = best_logw + rng.normal(0.0, RESTART, n_layers)
            search.propose(current)
            if search.last_improved:
                best_logw = current
    result = search.result
    result.seconds = time.perf_counter() - t0
    chosen = plan.with_picks(list(result.candidates[result.best].picks))
    chosen.search = result.to_dict()
    return chosen, result


class _Search:
    """The candidates scored so far, the proposal count and the stopping rule of one search."""

    def __init__(self, plan, score, n, limit, progress):
        self.plan, self.score, self.n, self.limit, self.progress = plan, score, n, limit, progress
        self.result = SearchResult()
        self.seen: set[tuple[int, ...]] = set()
        self.last_improved = False

    def done(self) -> bool:
        return len(self.result.candidates) >= self.n or self.result.proposals >= self.limit

    def propose(self, logw: np.ndarray) -> bool:
        """Solve the DP with weights exp(logw) and score its plan if unseen (True then); last_improved:
        whether it beat the best."""
        r = self.result
        r.proposals += 1
        self.last_improved = False
        chosen = self.plan.reweighted(np.exp(logw))
        picks = tuple(chosen.picks)
        if picks in self.seen:
            return False
        self.seen.add(picks)
        s = float(self.score(picks))
        r.candidates.append(Candidate(tuple(float(w) for w in np.exp(logw)), picks, chosen.used, s))
        if s < r.candidates[r.best].score:
            r.best, self.last_improved = len(r.candidates) - 1, True
        if self.progress is not None:
            self.progress(f"budget search: candidate {len(r.candidates)}/{self.n} scores {s:.4g} "
                          f"(best {r.candidates[r.best].score:.4g}, plain DP {r.candidates[0].score:.4g})")
        return True

    def move(self, base: np.ndarray, layer: int, way: float) -> np.ndarray | None:
        """The log weights of the smallest move of `layer`'s weight `way` that gives an unseen plan
        (scored), or None."""
        for step in MOVES:
            if self.done():
                return None
            logw = base.copy()
            logw[layer] += way * step
            if self.propose(logw):
                return logw
        return None


SCORES = ("counts", "xent")


class OutputDistance:
    """score(weights) of a compressed network on calibration data against the dense one, from the outputs:
    the spike counts of the node feeding the graph's output (its final value if that node does not spike:
    a potential readout).  kind "counts": sum over samples and outputs of (compressed - dense)^2 / sum of
    dense^2; "xent": the mean cross-entropy of softmax(compressed outputs) against the dense prediction
    (argmax, as the readout takes it).  The dense outputs are simulated once; each call simulates the
    network with the given layer weights."""

    def __init__(self, dense: FlatGraph, data, cfg: SimConfig, *, batch_size: int = 32, kind: str = "counts"):
        if kind not in SCORES:
            raise ValueError(f"the search score is one of {', '.join(SCORES)}, got {kind!r}")
        self.fg = copy.deepcopy(dense if isinstance(dense, FlatGraph) else flatten(dense))
        self.data, self.cfg, self.batch_size, self.kind = data, cfg, batch_size, kind
        self.src, self.out = output_source(self.fg), self.fg.outputs[0]
        self.dense = self._outputs(Walker(self.fg, cfg))
        self.norm = float(sum(np.sum(d * d) for d in self.dense)) or 1.0
        self.calls = 0

    def __call__(self, weights: dict[str, np.ndarray]) -> float:
        saved = {n: self.fg.nodes[n].weight for n in weights}
        try:
            for n, w in weights.items():
                self.fg.nodes[n].weight = w
            outs = self._outputs(Walker(self.fg, self.cfg))
        finally:
            for n, w in saved.items():
                self.fg.nodes[n].weight = w
        self.calls += 1
        if self.kind == "xent":
            return _cross_entropy(np.concatenate(outs), np.argmax(np.concatenate(self.dense), axis=1))
        return float(sum(np.sum((o - d) ** 2) for o, d in zip(outs, self.dense))) / self.norm

    def _outputs(self, walker: Walker) -> list[np.ndarray]:
        spiking = self.src in walker.spiking
        outs = []
        for x_tb, _ in self.data.batches(self.batch_size, per_step=True):
            res = walker.run(x_tb, record_outputs=False)
            y = res.counts[self.src] if spiking else res.outputs[self.out]
            outs.append(np.asarray(y, np.float64).reshape(np.shape(y)[0], -1))
            del x_tb, res
        return outs


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log softmax(logits)[label] over the rows (log-sum-exp shifted by the row maximum)."""
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))
