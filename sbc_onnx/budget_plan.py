"""Compression to a whole-model budget: the per-layer sparsity and bit width (docs/sbc_method.md §B).

Each layer's cost of every option is its relative SMP objective, measured with its dense calibration
Hessian (`compress.budget.option_costs`); each option's size is measured on the weights it produces: the
bits the output format stores for them (`storage`, memory budget: its `exact` measure of the very weight and
grid the model will hold when it has one, else its bound by nonzero count) or the synaptic operations per sample of
their non-zero fan-out on the dense calibration activity (`synops`, SynOps budget; the SMP objective keeps
the weights of busy inputs, so SynOps do not fall in proportion to sparsity).
`compress.budget.choose_options` then picks one option per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .compress import Budget, Method
from .compress.budget import BudgetSpec, Option, choose_options, option_costs
from .compress.layer import stored_weight
from .errors import SbcError

__all__ = ["BudgetLayer", "BudgetPlan", "StorageBits", "SynOpsOf", "check_memory_floor", "plan_budget"]

# bits a layer's weights take in the output at most: (weight shape, non-zero weights, bit width or None, dtype
# name, the layer's flat node name); it may also have exact(weight, (codes, scale, zero) or None, node name) ->
# the bits of that very weight (io.sizes.OnnxStorage)
StorageBits = Callable[[tuple, int, "int | None", str, str], int]
# SynOps per sample of a layer with these weights (layer name, weight array), on the calibration activity
SynOpsOf = Callable[[str, np.ndarray], float]


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
    kept: list[list[int]] = field(default_factory=list)  # per layer, per option: non-zero weights (memory)
    # per layer, per option: the compressed weight (its own shape and dtype), kept for the plan search only
    weights: list[list[np.ndarray]] = field(default_factory=list, repr=False)
    search: dict | None = None  # the plan search's record (budget_search.SearchResult.to_dict)

    def chosen(self, layer: int) -> Option:
        return self.options[self.picks[layer]]

    def to_budget(self, layers: Sequence[BudgetLayer], *, resolve: StorageBits | None = None) -> Budget:
        """The per-layer prune counts and bit widths of the plan.  resolve (the memory budget's storage
        model): the layers will be compressed against other Hessians than the plan's (sequential
        calibration), which may round a different number of weights to zero on the grid; a layer then
        prunes, beyond its option's count, down to the most non-zeros whose storage (monotone in them)
        stays within its planned size, so the budget holds whatever the re-solve rounds to zero."""
        counts = [self.chosen(i).prune_count(int(np.size(l.W))) for i, l in enumerate(layers)]
        if resolve is not None:
            if self.spec.kind != "memory" or not self.kept:
                raise SbcError("only a memory budget can be re-solved layer by layer (its storage depends on "
                               "the non-zero count alone)")
            counts = [int(np.size(l.W)) - self._most_kept(i, l, k, resolve) for i, (k, l) in
                      enumerate(zip(counts, layers))]
        return Budget(counts, bits=[self.chosen(i).bits for i in range(len(layers))])

    def _most_kept(self, i: int, layer: BudgetLayer, pruned: int, storage: StorageBits) -> int:
        """The most non-zeros (at most the option's own) layer i may keep within its planned size."""
        lo, hi = self.kept[i][self.picks[i]], int(np.size(layer.W)) - pruned  # storage(lo) is the plan's size
        fits = lambda kept: storage(tuple(layer.shape), kept, self.chosen(i).bits, layer.dtype, layer.name) <= \
            self.sizes[i][self.picks[i]]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    def refit(self, spec: BudgetSpec) -> BudgetPlan:
        """The plan for another amount of the same kind and options: the measured costs and sizes do not
        depend on the amount, only the choice does (SbcError if nothing fits)."""
        if (spec.kind, spec.sparsities, spec.bits) != (self.spec.kind, self.spec.sparsities, self.spec.bits):
            raise ValueError("refit needs a budget of the same kind and options")
        plan = BudgetPlan(spec, self.options, [], self.costs, self.sizes, 0, self.names, self.kept)
        return _choose(plan)

    def reweighted(self, w) -> BudgetPlan:
        """The plan of least summed *weighted* cost sum_l w_l cost[l][o] within the same limit: every
        choice it makes fits the budget (the sizes are the measured ones)."""
        costs = [[float(w_l) * c for c in row] for w_l, row in zip(w, self.costs)]
        chosen = _choose(replace(self, costs=costs, picks=[], used=0))
        return self.with_picks(chosen.picks)

    def with_picks(self, picks) -> BudgetPlan:
        """This plan with the given option per layer (its size recomputed)."""
        picks = [int(p) for p in picks]
        return replace(self, picks=picks, used=int(sum(self.sizes[l][o] for l, o in enumerate(picks))),
                       search=None)

    def weights_of(self, picks) -> dict[str, np.ndarray]:
        """{layer name: compressed weight} of the options `picks` (needs the plan's kept weights)."""
        if not self.weights:
            raise ValueError("the plan was made without keep_weights=True")
        return {n: self.weights[l][int(o)] for l, (n, o) in enumerate(zip(self.names, picks))}

    def limit(self) -> int:
        """The budget in the units of `sizes` (bits for memory)."""
        return self.spec.amount * 8 if self.spec.kind == "memory" else self.spec.amount

    def to_dict(self) -> dict:
        return {"budget": self.spec.text(), "kind": self.spec.kind, "limit": self.limit(), "used": self.used,
                "layers": {n: {"sparsity": self.chosen(i).sparsity, "bits": self.chosen(i).bits,
                               "cost": self.costs[i][self.picks[i]], "size": self.sizes[i][self.picks[i]],
                               **({"kept": self.kept[i][self.picks[i]]} if self.kept else {})}
                           for i, n in enumerate(self.names)},
                **({"search": self.search} if self.search is not None else {})}


def plan_budget(layers: Sequence[BudgetLayer], spec: BudgetSpec, *, method: Method,
                storage: StorageBits | None = None, synops: SynOpsOf | None = None, rel_damp: float = 0.01,
                grid_scheme: str = "symmetric", granularity: str = "channel",
                keep_weights: bool = False, exact_sizes: bool = True) -> BudgetPlan:
    """The per-layer option of least summed objective within `spec` (SbcError if none fits).  Sizes are
    measured on each option's compressed weights: the storage of their non-zeros (memory), or the
    SynOps of their non-zero fan-out (synops), so the final compression, which recomputes the chosen
    option identically, has exactly the planned size.  keep_weights: the plan also holds every option's
    compressed weights (`BudgetPlan.weights`, as many copies of each layer as options: for the plan
    search, budget_search.py).  exact_sizes=False: a memory option's size is the storage model's bound by
    nonzero count even where it can measure the very weight (for layers re-solved later,
    `BudgetPlan.to_budget(resolve=)`)."""
    if spec.kind == "memory" and storage is None:
        raise SbcError("a memory budget needs the output format's storage model")
    if spec.kind == "synops" and synops is None:
        raise SbcError("a SynOps budget needs the calibration SynOps model (hardware.energy.synops_model)")
    options = spec.options()
    costs, sizes, kept, weights = [], [], [], []
    for layer in layers:
        nonzeros: list[int] = []
        sizer = _sizer(layer, spec, storage, synops, nonzeros, exact_sizes)
        if keep_weights:
            weights.append([])
            sizer = _keeping(sizer, layer, weights[-1])
        c, s = option_costs(layer.W, layer.H, layer.groups, options, method=method, rel_damp=rel_damp,
                            grid_scheme=grid_scheme, granularity=granularity, size_of=sizer)
        costs.append(list(c))
        sizes.append([int(x) for x in s])
        kept.append(nonzeros)
    plan = BudgetPlan(spec, options, [], costs, sizes, 0, [l.name for l in layers],
                      kept if spec.kind == "memory" else [], weights)
    return _choose(plan)


def _choose(plan: BudgetPlan) -> BudgetPlan:
    """`plan` with the picks of least summed cost within its limit."""
    try:
        choice = choose_options(plan.costs, plan.sizes, plan.limit())
    except ValueError:
        smallest = sum(min(s) for s in plan.sizes)
        raise SbcError(f"no choice of the allowed sparsities and bit widths fits {plan.spec.text()}: the "
                       f"smallest model needs {_amount(plan.spec, smallest)}") from None
    plan.picks, plan.used = list(choice.picks), choice.size
    return plan


def check_memory_floor(shapes: Sequence[tuple], dtypes: Sequence[str], spec: BudgetSpec,
                       storage: StorageBits) -> None:
    """SbcError before any work when even storing no weight at all (the bitmask and scales of each layer
    at its smallest option) would not fit the memory budget."""
    floor = sum(min(storage(tuple(shape), 0, b, dt) for b in spec.bits) for shape, dt in zip(shapes, dtypes))
    if floor > 8 * spec.amount:
        raise SbcError(f"no choice of the allowed sparsities and bit widths fits {spec.text()}: even with every "
                       f"weight pruned the layers' masks and scales need {_amount(spec, floor)}")


def _sizer(layer: BudgetLayer, spec: BudgetSpec, storage, synops, nonzeros: list[int], exact_sizes: bool):
    """size_of(option, compressed layer matrix, its groups' results) for this layer and budget kind; a memory
    sizer appends each option's non-zero count to `nonzeros`."""
    if spec.kind == "memory":
        exact = getattr(storage, "exact", None) if exact_sizes else None

        def size_of(o, Wc, parts=None):
            nonzeros.append(int(np.count_nonzero(Wc)))
            if exact is None:
                return storage(tuple(layer.shape), nonzeros[-1], o.bits, layer.dtype, layer.name)
            if parts is None:
                return exact(np.reshape(Wc, layer.shape).astype(layer.dtype), None, layer.name)
            w, quant = stored_weight(parts, layer.shape, layer.dtype)  # what the pipeline will set
            return exact(w, quant if o.bits else None, layer.name)
        return size_of
    return lambda o, Wc, parts=None: int(np.ceil(synops(layer.name, np.reshape(Wc, layer.shape))))


def _keeping(size_of, layer: BudgetLayer, out: list[np.ndarray]):
    """size_of that also appends each option's compressed weight, in the layer's shape and dtype, to out."""
    def keep(o, Wc, parts=None):
        out.append(np.reshape(np.asarray(Wc), layer.shape).astype(layer.dtype))
        return size_of(o, Wc, parts)
    return keep


def _amount(spec: BudgetSpec, size: int) -> str:
    return f"{size / 8 / 1024:.2f} KiB" if spec.kind == "memory" else f"{size:.4g} SynOps"
