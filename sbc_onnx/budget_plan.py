"""Compression to a whole-model budget: the per-layer sparsity and bit width (docs/sbc_method.md §B).

Each layer's cost of every option is its relative SMP objective, measured with its dense calibration
Hessian (`compress.budget.option_costs`); each option's size is what the output stores (`storage`, bits
of weight storage for a memory budget) or the synaptic operations it keeps (dense SynOps per sample times
the kept fraction, for a SynOps budget).  `compress.budget.choose_options` then picks one option per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .compress import Budget, Method
from .compress.budget import BudgetSpec, Option, choose_options, option_costs
from .errors import SbcError

__all__ = ["BudgetLayer", "BudgetPlan", "StorageBits", "plan_budget"]

# bits a layer's weights take in the output: (weight shape, weights kept, bit width or None for float, dtype name)
StorageBits = Callable[[tuple, int, "int | None", str], int]


@dataclass(frozen=True)
class BudgetLayer:
    name: str
    W: np.ndarray        # the layer matrix (d_out, d_in / groups)
    H: np.ndarray        # its dense calibration Hessian
    groups: int
    shape: tuple         # the weight's own shape (what the output stores)
    dtype: str = "float32"


@dataclass
class BudgetPlan:
    spec: BudgetSpec
    options: list[Option]
    picks: list[int]                 # chosen option per layer
    costs: list[list[float]]         # per layer, per option
    sizes: list[list[int]]           # per layer, per option (bits, or SynOps per sample)
    used: int
    names: list[str] = field(default_factory=list)

    def chosen(self, layer: int) -> Option:
        return self.options[self.picks[layer]]

    def to_budget(self, layers: Sequence[BudgetLayer]) -> Budget:
        counts = [self.chosen(i).prune_count(int(np.size(l.W))) for i, l in enumerate(layers)]
        return Budget(counts, bits=[self.chosen(i).bits for i in range(len(layers))])

    def limit(self) -> int:
        """The budget in the units of `sizes` (bits for memory)."""
        return self.spec.amount * 8 if self.spec.kind == "memory" else self.spec.amount

    def summary(self) -> str:
        unit = (lambda v: f"{v / 8192:.2f} KiB") if self.spec.kind == "memory" else (lambda v: f"{v:.4g} SynOps")
        plan = ", ".join(f"{n} {self.chosen(i).label()}" for i, n in enumerate(self.names))
        return (f"budget {self.spec.text()}: uses {unit(self.used)} of {unit(self.limit())}; "
                f"summed relative objective {sum(self.costs[i][o] for i, o in enumerate(self.picks)):.4f}; "
                f"plan {plan}")

    def to_dict(self) -> dict:
        return {"budget": self.spec.text(), "kind": self.spec.kind, "limit": self.limit(), "used": self.used,
                "layers": {n: {"sparsity": self.chosen(i).sparsity, "bits": self.chosen(i).bits,
                               "cost": self.costs[i][self.picks[i]], "size": self.sizes[i][self.picks[i]]}
                           for i, n in enumerate(self.names)}}


def plan_budget(layers: Sequence[BudgetLayer], spec: BudgetSpec, *, method: Method, storage: StorageBits | None,
                synops: Mapping[str, float] | None = None, rel_damp: float = 0.01, grid_scheme: str = "symmetric",
                granularity: str = "channel") -> BudgetPlan:
    """The per-layer option of least summed objective within `spec` (SbcError if none fits)."""
    options = spec.options()
    costs = [option_costs(l.W, l.H, l.groups, options, method=method, rel_damp=rel_damp, grid_scheme=grid_scheme,
                          granularity=granularity) for l in layers]
    sizes = [[_size(l, o, spec, storage, synops) for o in options] for l in layers]
    plan = BudgetPlan(spec, options, [], [list(c) for c in costs], sizes, 0, [l.name for l in layers])
    try:
        choice = choose_options(costs, sizes, plan.limit())
    except ValueError:
        smallest = sum(min(s) for s in sizes)
        raise SbcError(f"no choice of the allowed sparsities and bit widths fits {spec.text()}: the smallest "
                       f"model needs {_amount(spec, smallest)}") from None
    plan.picks, plan.used = list(choice.picks), choice.size
    return plan


def _size(layer: BudgetLayer, o: Option, spec: BudgetSpec, storage, synops) -> int:
    n = int(np.prod(layer.shape))
    kept = n - o.prune_count(int(np.size(layer.W)))
    if spec.kind == "memory":
        if storage is None:
            raise SbcError("a memory budget needs the output format's storage model")
        return int(storage(tuple(layer.shape), kept, o.bits, layer.dtype))
    if synops is None or layer.name not in synops:
        raise SbcError(f"a SynOps budget needs the dense SynOps of layer {layer.name}")
    return int(np.ceil(synops[layer.name] * kept / n))


def _amount(spec: BudgetSpec, size: int) -> str:
    return f"{size / 8 / 1024:.2f} KiB" if spec.kind == "memory" else f"{size:.4g} SynOps"
