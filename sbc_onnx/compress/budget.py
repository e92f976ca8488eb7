"""Per-layer options under a whole-model budget: a multiple-choice knapsack (docs/sbc_method.md §B).

Every layer l has options o (a sparsity and a bit width); option o of layer l costs ``cost[l][o]`` (the
layer's relative SMP objective after compressing it that way, measured on the calibration Hessian) and
uses ``size[l][o]`` units of the budget (bits of weight storage, synaptic operations, ...).  We pick one
option per layer minimising the summed cost with the summed size <= the budget: OBC's and SPDY's
layer-wise budget search, solved exactly by dynamic programming over the budget.

When the budget is too fine to tabulate (more than ``max_cells`` units), sizes are counted in coarser
units rounded *up* and the budget rounded *down*, so the chosen plan always fits the true budget; it is
then optimal up to that rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BudgetChoice", "choose_options"]


@dataclass(frozen=True)
class BudgetChoice:
    picks: tuple[int, ...]   # the chosen option of every layer
    cost: float              # summed cost of the picks
    size: int                # summed size of the picks (in the caller's units)
    unit: int                # the tabulation unit (1 = exact)


def choose_options(cost, size, budget: int, *, max_cells: int = 1 << 18) -> BudgetChoice:
    """The option per layer of least summed cost whose summed size fits `budget` (all sizes >= 0
    integers).  cost and size: sequences of per-layer sequences (layers may have different numbers of
    options; a non-finite cost marks an option as unavailable).  ValueError if nothing fits."""
    costs = [np.asarray(c, np.float64) for c in cost]
    sizes = [np.asarray(s, np.int64) for s in size]
    _check(costs, sizes, budget)
    unit = max(1, math.ceil(budget / max_cells))
    cap = budget // unit
    best = np.zeros(cap + 1)  # best[c]: least cost of the layers so far using at most c units
    choice = []
    for c_l, s_l in zip(costs, sizes):
        units = -(-s_l // unit)  # ceil: the rounded plan never exceeds the true budget
        new = np.full(cap + 1, np.inf)
        arg = np.full(cap + 1, -1, np.int32)
        for o in np.flatnonzero(np.isfinite(c_l) & (units <= cap)):
            cand = np.full(cap + 1, np.inf)
            cand[units[o]:] = best[: cap + 1 - units[o]] + c_l[o]
            better = cand < new  # strict: ties keep the earlier option
            new[better], arg[better] = cand[better], o
        best = new
        choice.append(arg)
    if not np.isfinite(best[cap]):
        need = sum(int(s[np.isfinite(c)].min()) if np.isfinite(c).any() else 0 for c, s in zip(costs, sizes))
        raise ValueError(f"no choice of options fits the budget {budget} (the smallest needs {need})")
    picks, c = [], cap
    for l in range(len(costs) - 1, -1, -1):
        o = int(choice[l][c])
        picks.append(o)
        c -= int(-(-sizes[l][o] // unit))
    picks.reverse()
    return BudgetChoice(tuple(picks), float(sum(costs[l][o] for l, o in enumerate(picks))),
                        int(sum(sizes[l][o] for l, o in enumerate(picks))), unit)


def _check(costs, sizes, budget) -> None:
    if len(costs) != len(sizes) or any(c.shape != s.shape or c.ndim != 1 for c, s in zip(costs, sizes)):
        raise ValueError("cost and size need one equally long row of options per layer")
    if any(s.size == 0 for s in sizes):
        raise ValueError("every layer needs at least one option")
    if any((s < 0).any() for s in sizes) or int(budget) < 0:
        raise ValueError("sizes and the budget must be >= 0")
