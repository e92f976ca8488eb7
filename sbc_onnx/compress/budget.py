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
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .allocation import group_blocks, total_prune_count
from .layer import compress_groups
from .methods import Method, get_method
from .numerics import FactorizationError
from .obs import trace_layer

__all__ = ["BUDGET_KINDS", "BudgetChoice", "BudgetSpec", "Option", "choose_options", "option_costs",
           "parse_budget", "parse_bytes"]

BUDGET_KINDS = ("memory", "synops")
DEFAULT_SPARSITIES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97)
DEFAULT_BITS = (None, 8, 4, 3, 2)
_BYTES = {"": 1, "b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
_COUNT = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


@dataclass(frozen=True)
class BudgetSpec:
    """A whole-model budget: `memory` in bytes of weight storage as the output file stores it, or
    `synops` in synaptic operations per sample; and the options each layer may take."""
    kind: str
    amount: int
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    bits: tuple[int | None, ...] = DEFAULT_BITS

    def options(self) -> list[Option]:
        return [Option(float(s), b) for s in self.sparsities for b in self.bits]

    def text(self) -> str:
        return f"{self.kind}={_bytes_text(self.amount) if self.kind == 'memory' else f'{self.amount:g}'}"


def parse_budget(text: str, *, sparsities=None, bits=None) -> BudgetSpec:
    """'memory=64KiB' (B, KB, KiB, MB, MiB, GB, GiB; a bare number is bytes) or 'synops=2.5M'
    (k, M, G); sparsities in [0, 1) and bits in 2..8 (None: float weights) restrict the options."""
    kind, sep, value = str(text).partition("=")
    kind, value = kind.strip().lower(), value.strip().lower().replace(" ", "")
    if not sep or kind not in BUDGET_KINDS:
        raise ValueError(f"a budget is memory=SIZE or synops=COUNT (e.g. memory=64KiB), got {text!r}")
    amount = _amount(value, _BYTES if kind == "memory" else _COUNT)
    if not math.isfinite(amount) or amount <= 0:
        raise ValueError(f"the {kind} budget must be a finite amount > 0, got {value!r}")
    sp = tuple(sorted({0.0, *(float(x) for x in (sparsities or DEFAULT_SPARSITIES))}))
    bt = tuple(bits) if bits else DEFAULT_BITS
    if any(not 0 <= x < 1 for x in sp):
        raise ValueError("budget sparsities must be in [0, 1)")
    if any(b is not None and not 2 <= int(b) <= 8 for b in bt):
        raise ValueError("budget bit widths must be between 2 and 8")
    return BudgetSpec(kind, math.floor(amount), sp, bt)


def _amount(value: str, table: dict) -> float:
    """A number with an optional unit of `table` ('64kib' -> 65536.0); NaN if it is not one."""
    m = re.fullmatch(r"([0-9.]+(?:e[+-]?[0-9]+)?)([a-z]*)", value)
    try:
        return float(m.group(1)) * table[m.group(2)] if m else math.nan
    except (KeyError, ValueError):
        return math.nan


def parse_bytes(text: str) -> int:
    """'8GiB', '512MB', '1e9' (B, KB, KiB, MB, MiB, GB, GiB; a bare number is bytes) -> bytes (ValueError
    unless a finite amount > 0)."""
    amount = _amount(str(text).strip().lower().replace(" ", ""), _BYTES)
    if not math.isfinite(amount) or amount < 1:
        raise ValueError(f"a size is a finite amount >= 1 byte such as 8GiB or 512MB, got {text!r}")
    return math.floor(amount)


def _bytes_text(n: int) -> str:
    return f"{n / 2**10:.1f}KiB" if n >= 2**10 else f"{n}B"


@dataclass(frozen=True)
class Option:
    """One way to compress a layer: a sparsity in [0, 1) and a bit width (None: float weights)."""
    sparsity: float
    bits: int | None

    def prune_count(self, n: int) -> int:
        return total_prune_count([n], self.sparsity)


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


def option_costs(W, H, groups: int, options, *, method: str | Method = "sbc", rel_damp: float = 0.01,
                 grid_scheme: str = "symmetric", granularity: str = "channel",
                 size_of: Callable[..., int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cost, size) of every option for one layer matrix W (d_out, d_in/groups) with its dense Hessian H.
    cost: the relative SMP objective tr(dW H dW^T)/tr(W H W^T) of the method's result (mean over groups,
    as the compress report gives it); size: size_of(option, compressed W, its groups' results or None when
    the option leaves W as it is) (0 without it).  The ExactOBS trace, which serves every sparsity of a
    row, runs once."""
    m = get_method(method)
    traces = None
    if m.obs_trace and any(o.sparsity > 0 for o in options):
        traces = [_trace(np.asarray(W[rows], np.float64), H[cols, cols], rel_damp)
                  for _, rows, cols in group_blocks(np.shape(W), groups)]
    costs, sizes = np.zeros(len(options)), np.zeros(len(options), np.int64)
    for i, o in enumerate(options):
        Wc, parts = np.asarray(W), None
        if o.sparsity > 0 or o.bits is not None:
            parts = compress_groups(W, H, groups, o.prune_count(int(np.size(W))), method=m, bits=o.bits,
                                    grid_scheme=grid_scheme, granularity=granularity, rel_damp=rel_damp,
                                    traces=traces)
            costs[i] = float(np.mean([r.objective_after for r in parts]))
            Wc = np.concatenate([r.W for r in parts], axis=0)
        if size_of is not None:
            sizes[i] = int(size_of(o, Wc, parts))
    return costs, sizes


def _trace(W, H, rel_damp):
    try:
        return trace_layer(W, H, rel_damp=rel_damp)
    except FactorizationError:  # compress_layer falls back to magnitude pruning for this group
        return None
