"""`compress()`: plan -> calibrate -> allocate -> compress the layers -> report.

Only weights change: the input graph is deep-copied, each weight node's `weight` is replaced by an array
of the same shape and dtype, every other node, parameter and the graph metadata are copied exactly.
Simulation settings and the compression provenance (`compression_metadata`) are stamped when the model
is saved (`save_model(graph, path, cfg=cfg, metadata=compression_metadata(report))`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import nir
import numpy as np

from .budget_plan import BudgetLayer, BudgetPlan, StorageBits, SynOpsOf, check_memory_floor, plan_budget
from .budget_search import SCORES, OutputDistance, search_plan
from .calibrate import Calibration, LayerCalibration, calibrate, kernel_betas
from .compress import (ALLOCATIONS, METHODS, SCHEMES, Allocation, Budget, LayerStats, Method, compiled_on_disk,
                       compress_groups, get_method, load_kernels, make_allocation, nm_pattern)
from .compress.budget import BudgetSpec, parse_budget
from .compress.cost import layer_flops
from .compress.grids import GRANULARITIES
from .compress.layer import stored_weight
from .data import as_dataset
from .errors import SbcError
from .graph import FlatGraph, flatten
from .memory import estimate_peak
from .memory_plan import MemoryPlan, available_memory, plan_memory, to_bytes
from .progress import LayerProgress, phase_line, progress_bar, step_progress
from .repair import RepairReport, repair_thresholds
from .sim import SimConfig, Walker
from .sim.config import config_for
from .workdir import WorkDir, data_hash, graph_hash

log = logging.getLogger("sbc_onnx")



# ---------------------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class Plan:
    """What compress() does, checked once when built (`Plan.build`).

    method      sbc, sbc-fast, obc, magnitude, wanda, rtn (compress.METHODS)
    allocation  how the sparsity is split across layers: lamp (exponent lamp_p), uniform, global, obs
                (compress/allocation.py); obs needs the dense calibration (not sequential)
    sequential  each layer's Hessian is collected with the already-compressed upstream layers (default:
                all layers see the dense model, the authors' choice)
    layers      the weight layers to compress (default: all)
    budget      a whole-model budget (memory or SynOps) instead of sparsity and bits: each layer's
                sparsity and bit width are chosen to fit it (budget_plan.py; planned on the dense
                calibration). With sequential (memory budgets only) the plan stays the dense one and each
                layer is then re-solved against the Hessian of the already-compressed upstream
    repair      after compression, rescale the spiking neurons' thresholds per channel so that their
                calibration firing rates match the dense model's (repair.py); weights are unchanged
    reset_aware the SMP objective shortened by each fed neuron's calibration firing rate (reset to v_reset
                forgets the integrated input; calibrate.py "smp-reset"); smp methods only
    budget_search  with a budget: score this many candidate plans (the DP with per-layer cost weights,
                drawn by a search seeded with search_seed) end to end on the calibration data and keep
                the one closest to the dense network's output (budget_search.py); 0: the plain DP plan;
                search_score: the distance ("counts": squared spike-count difference; "xent": cross-entropy
                against the dense prediction)
    """
    method: Method
    allocation: Allocation
    sparsity: float | None = None
    bits: int | None = None
    pattern: tuple[int, int] | None = None
    grid: str = "symmetric"
    granularity: str = "channel"
    sequential: bool = False
    rel_damp: float = 0.01
    exact_resolve: bool = False
    layers: tuple[str, ...] | None = None
    budget: BudgetSpec | None = None
    repair: bool = False
    repair_per_layer: bool = False  # one threshold factor per layer (chips with one threshold per layer)
    budget_search: int = 0
    search_seed: int = 0
    search_score: str = "counts"
    reset_aware: bool = False

    @classmethod
    def build(cls, *, sparsity: float | None = None, bits: int | None = None, method: str | Method = "sbc",
              pattern: str | tuple | None = None, allocation: str = "lamp", lamp_p: float = 2.0,
              grid: str | None = None, granularity: str | None = None, sequential: bool = False,
              rel_damp: float = 0.01, exact_resolve: bool = False, layers: list[str] | None = None,
              budget: str | BudgetSpec | None = None, repair: bool = False, budget_search: int = 0,
              search_seed: int = 0, search_score: str = "counts", reset_aware: bool = False,
              repair_per_layer: bool = False) -> Plan:
        """The checked plan (SbcError names what is wrong); grid, granularity None: symmetric, channel.
        budget: e.g. "memory=10KiB" or a BudgetSpec (its option sets)."""
        _check_choice(grid, SCHEMES, "grid")
        _check_choice(granularity, GRANULARITIES, "granularity")
        budget = _budget_spec(budget, sparsity, bits, pattern, sequential)
        if budget is None:
            _check_budget(sparsity, bits, pattern)
        _check_number(rel_damp, "rel_damp (--damp)", minimum=0.0)
        _check_search(budget_search, search_seed, budget)
        _check_choice(search_score, SCORES, "search_score (--search-score)")
        _check_number(lamp_p, "lamp_p (--lamp-p)", minimum=0.0, open_min=True)
        plan = cls(method=_method(method), allocation=_allocation(allocation, lamp_p, rel_damp),
                   sparsity=None if sparsity is None else float(sparsity), bits=None if bits is None else int(bits),
                   pattern=_pattern(pattern), grid=grid or "symmetric", granularity=granularity or "channel",
                   sequential=bool(sequential), rel_damp=float(rel_damp), exact_resolve=bool(exact_resolve),
                   layers=None if layers is None else tuple(layers), budget=budget,
                   repair=bool(repair), repair_per_layer=bool(repair_per_layer),
                   budget_search=int(budget_search), search_seed=int(search_seed),
                   search_score=search_score or "counts", reset_aware=bool(reset_aware))
        if plan.reset_aware and plan.method.objective != "smp":
            raise SbcError(f"--reset-aware shortens the SMP objective; method {plan.method.name} uses the "
                           f"{plan.method.objective!r} objective")
        if plan.allocation.needs_hessian and plan.sparsity and plan.sequential:
            raise SbcError(f"allocation {plan.allocation.name} needs the dense calibration of every layer up "
                           "front and unstructured pruning (not --sequential, not --pattern)")
        return plan

    @property
    def objective(self) -> str:
        """The objective the calibration collects the Hessians for (calibrate.OBJECTIVES)."""
        return "smp-reset" if self.reset_aware else self.method.objective

    @property
    def prunes(self) -> bool:
        return bool(self.sparsity) or self.pattern is not None

    @property
    def pattern_text(self) -> str | None:
        return None if self.pattern is None else f"{self.pattern[0]}:{self.pattern[1]}"

    @property
    def runs_obs_trace(self) -> bool:
        """Whether the compiled ExactOBS kernels run (pruning or allocation)."""
        budget_prunes = self.budget is not None and max(self.budget.sparsities) > 0
        return ((self.method.obs_trace and (self.prunes or budget_prunes))
                or (self.allocation.obs_trace and bool(self.sparsity)))

    def describe(self) -> str:
        if self.budget is not None:
            return f"method {self.method.name}, budget {self.budget.text()}"
        what = [f"sparsity {self.sparsity:g}" if self.sparsity is not None else "",
                f"pattern {self.pattern_text}" if self.pattern else "", f"{self.bits} bits" if self.bits else ""]
        return f"method {self.method.name}, " + ", ".join(x for x in what if x)


def _check_choice(value, choices, what: str) -> None:
    if value is not None and value not in choices:
        raise SbcError(f"{what} must be one of {', '.join(choices)}")


def _check_search(n, seed, budget) -> None:
    for value, what in ((n, "budget_search (--budget-search)"), (seed, "search_seed (--search-seed)")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise SbcError(f"{what} must be a whole number >= 0, got {value!r}")
    if n and budget is None:
        raise SbcError("--budget-search searches the plans of a budget: give --budget")


def _check_number(value, what: str, *, minimum: float, open_min: bool = False) -> None:
    """SbcError unless `value` is a finite number >= minimum (> minimum if open_min)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v < minimum or (open_min and v == minimum):
        raise SbcError(f"{what} must be a finite number {'>' if open_min else '>='} {minimum:g}, got {value!r}")


def _check_budget(sparsity, bits, pattern) -> None:
    if sparsity is None and bits is None and pattern is None:
        raise SbcError("nothing to do: give a sparsity, a bit width or an N:M pattern")
    if sparsity is not None and not 0 <= float(sparsity) < 1:  # NaN fails too
        raise SbcError(f"sparsity must be in [0, 1), got {sparsity}")
    if bits is not None and not 2 <= int(bits) <= 8:
        raise SbcError(f"bits must be between 2 and 8, got {bits}")
    if pattern is not None and sparsity is not None:
        raise SbcError("give either --sparsity or --pattern, not both")


def _budget_spec(budget, sparsity, bits, pattern, sequential) -> BudgetSpec | None:
    if budget is None:
        return None
    if sparsity is not None or bits is not None or pattern is not None:
        raise SbcError("a budget chooses every layer's sparsity and bit width: give it without "
                       "--sparsity, --bits or --pattern")
    if isinstance(budget, BudgetSpec):
        spec = budget
    else:
        try:
            spec = parse_budget(budget)
        except ValueError as e:
            raise SbcError(str(e)) from None
    if sequential and spec.kind != "memory":
        raise SbcError("a SynOps budget holds only for the weights planned on the dense calibration "
                       "(not --sequential): which weights are kept, not how many, sets their SynOps")
    return spec


def _method(method) -> Method:
    try:
        return get_method(method)
    except ValueError:
        raise SbcError(f"method must be one of {', '.join(METHODS)}") from None


def _allocation(name, lamp_p, rel_damp) -> Allocation:
    _check_choice(name, ALLOCATIONS, "allocation")
    try:
        return make_allocation(name, lamp_p=lamp_p, rel_damp=rel_damp)
    except ValueError as e:
        raise SbcError(str(e)) from None


def _pattern(pattern) -> tuple[int, int] | None:
    try:
        return nm_pattern(pattern)
    except ValueError as e:
        raise SbcError(str(e)) from None


# ---------------------------------------------------------------------------------------------- report

@dataclass
class LayerReport:
    name: str
    kind: str
    shape: tuple
    neuron: str | None
    kernel: str
    sparsity: float
    bits: int | None
    objective_before: float
    objective_after: float
    damp: float | None
    seconds: float
    hessian_seconds: float
    fallback: str | None = None
    escalations: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    firing_rate_dense: float | None = None
    firing_rate_compressed: float | None = None
    van_rossum: float | None = None  # per neuron per sample, dense vs compressed output spikes


@dataclass
class CompressionReport:
    method: str
    sparsity: float | None
    bits: int | None
    pattern: str | None
    allocation: str
    sim: dict
    n_calibration: int
    layers: list[LayerReport]
    overall_sparsity: float
    seconds: dict
    notes: list = field(default_factory=list)
    accuracy_dense: float | None = None
    accuracy_compressed: float | None = None
    budget: dict | None = None  # the budget's plan: limit, used, per-layer choice (budget_plan.BudgetPlan)
    repair: dict | None = None  # threshold repair: rate errors before/after, passes (repair.RepairReport)
    # layer -> (integer codes shaped like the weight, per-output-channel scale, zero point); W = s (q - z)
    quant: dict = field(default_factory=dict, repr=False)
    files: list = field(default_factory=list)  # written files: sizes against the dense model (io/sizes.py)
    # over Ray: workers, per layer the bytes moved through the object store and its tasks' seconds
    # (distributed/traffic.py), the sharded calibrations' bytes and seconds
    distributed: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("quant")
        return d

    def table(self) -> str:
        head = (f"{'layer':<12} {'kind':<7} {'shape':<14} {'sparsity':>8} {'bits':>4} {'obj.base':>9} "
                f"{'obj.'+self.method:>9} {'damp':>7} {'hess s':>6} {'comp s':>6} {'rate d/c':>13} {'VRD':>8}")
        lines = [head, "-" * len(head)] + [_table_row(r) for r in self.layers]
        lines.append(f"overall sparsity {self.overall_sparsity:.4f} over {len(self.layers)} layers; "
                     "obj = relative layer output error tr(dW H dW^T)/tr(W H W^T); base = magnitude/RTN; "
                     "hess s = seconds accumulating the layer's Hessian (part of calibration), comp s = seconds "
                     "compressing it")
        if self.budget:
            b = self.budget
            used = (f"{b['used'] / 8192:.2f} of {b['limit'] / 8192:.2f} KiB of weight storage"
                    if b["kind"] == "memory" else f"{b['used']:.4g} of {b['limit']:.4g} SynOps per sample")
            lines.append(f"budget {b['budget']}: the chosen plan uses {used}")
            if "search" in b:
                sr = b["search"]
                lines.append(f"budget search: candidate {sr['chosen'] + 1} of {sr['candidates']} chosen, calibration "
                             f"output distance {sr['score_chosen']:.4g} (plain DP plan {sr['score_dp']:.4g})")
        return "\n".join(lines)


def _table_row(r: LayerReport) -> str:
    rate = "" if r.firing_rate_dense is None else f"{r.firing_rate_dense:.3f}/{r.firing_rate_compressed:.3f}"
    damp = f"{r.damp:.0e}" if r.damp is not None else "-"
    vrd = f"{r.van_rossum:.4f}" if r.van_rossum is not None else "-"
    return (f"{r.name:<12} {r.kind:<7} {'x'.join(map(str, r.shape)):<14} {r.sparsity:>8.3f} "
            f"{r.bits if r.bits else '-':>4} {r.objective_before:>9.4f} {r.objective_after:>9.4f} "
            f"{damp:>7} {r.hessian_seconds:>6.2f} {r.seconds:>6.2f} {rate:>13} {vrd:>8}"
            + (f"  fallback: {r.fallback}" if r.fallback else ""))


def compression_metadata(report: CompressionReport) -> dict[str, Any]:
    """The provenance a compressed model's file records (the caller passes it to save_model)."""
    meta = {"sbc_onnx.method": report.method, "sbc_onnx.allocation": report.allocation,
            "sbc_onnx.overall_sparsity": float(report.overall_sparsity),
            "sbc_onnx.n_calibration": int(report.n_calibration)}
    if report.sparsity is not None:
        meta["sbc_onnx.sparsity"] = float(report.sparsity)
    if report.bits is not None:
        meta["sbc_onnx.bits"] = int(report.bits)
    if report.pattern is not None:
        meta["sbc_onnx.pattern"] = report.pattern
    if report.budget is not None:
        meta["sbc_onnx.budget"] = report.budget["budget"]
        if "search" in report.budget:
            meta["sbc_onnx.budget_search"] = str(report.budget["search"]["candidates"])
    return meta


# ---------------------------------------------------------------------------------------------- compress

def compress(graph: nir.NIRGraph, calib, plan: Plan | None = None, *, cfg: SimConfig | None = None,
             calibration: Calibration | None = None, batch_size: int = 32, measure_damage: bool = True,
             progress: bool = False, storage: StorageBits | None = None, synops: SynOpsOf | None = None,
             max_memory: int | str | None = None, resume: str | os.PathLike | None = None,
             on_layer=None, workers: int | None = None, ray_address: str | None = None,
             **options) -> tuple[nir.NIRGraph, CompressionReport]:
    """Compress `graph` one-shot; returns (new graph, report). `calib` is a Dataset (.batches()), or a torch
    Dataset / DataLoader / iterable of (x, y) (converted by `data.as_dataset`).

    plan        a `Plan`; or give its options as keywords instead (`Plan.build`: sparsity, bits, method,
                pattern, allocation, lamp_p, grid, granularity, sequential, rel_damp, exact_resolve,
                layers), e.g. compress(graph, calib, sparsity=0.9, method="sbc").
    calibration a Calibration from `calibrate()` on the dense graph to reuse (sweeps over sparsity/bits
                share one calibration pass); its objective must match the method ("current" for obc).
    cfg         the simulation settings; default: the graph's metadata, with a note naming every default
                assumed for a setting it does not record (`sim.config.config_for`).
    storage     for a memory budget: the bits a layer's weights take in the output format
                (io.sizes.storage_model(path)); synops: for a SynOps budget, the SynOps per sample of a
                layer's weights on the calibration activity (hardware.energy.synops_model).
    max_memory  a peak-memory budget (bytes or text such as "8GiB"; memory_plan.py): the layers' Hessians are
                collected in as many calibration passes as it needs, spilled to disk and compressed one at
                a time; a budget below the largest single layer's need is refused before any work. With
                `resume` and no max_memory: the machine's available memory.
    resume      a work folder (workdir.py): spilled Hessians and each finished layer are kept there, and a
                run given the same folder, model, options and calibration data continues where the last
                one stopped (no finished layer is computed again; the result is identical).
    on_layer    on_layer(k, n, name) after layer k of n is compressed (and saved to `resume`).
    workers     run the calibration and the layers on a local Ray runtime of this many worker processes
                (one thread each); ray_address: on the Ray cluster there instead ("auto": the local one
                `ray start` runs). The result is the single-process one (distributed/; needs the
                `distributed` extra). Neither given: Ray is not imported.
    A layer whose calibration input is dead or saturated, or whose Hessian is not finite, stops the
    compression with an SbcError naming it (`Calibration.check`), before any weight changes.
    """
    if plan is None:
        plan = Plan.build(**options)
    elif options:
        raise TypeError(f"give either a plan or its options, not both ({', '.join(options)})")
    calib = calib if hasattr(calib, "batches") else as_dataset(calib)
    run = _Compression(graph, calib, plan, cfg or config_for(graph), batch_size, progress)
    run.storage, run.synops, run.damage = storage, synops, measure_damage
    check_budget_floor(graph, plan, storage, layers=run.names)
    try:
        run.connect(workers, ray_address)
        run.setup_memory(max_memory, resume, calibration)
        run.calibrate(calibration)
        budget = run.allocate()
        run.compress_layers(budget, on_layer)
    finally:
        run.drop_spill()
        run.disconnect()
    if plan.repair:
        run.repair(graph)
    report = run.report()
    if measure_damage:
        run.measure_damage(report)
    report.seconds["total"] = time.perf_counter() - run.t_start
    return run.new, report


def check_budget_floor(graph: nir.NIRGraph, plan: Plan, storage: StorageBits | None, layers=None) -> None:
    """For a memory budget: SbcError before any work if the layers' masks and scales alone exceed it."""
    if plan.budget is None or plan.budget.kind != "memory" or storage is None:
        return
    fg = flatten(graph)
    ws = [np.asarray(fg.nodes[n].weight) for n in (layers or fg.weight_nodes())]
    check_memory_floor([w.shape for w in ws], [w.dtype.name for w in ws], plan.budget, storage)


def memory_plan(graph: nir.NIRGraph, calib, plan: Plan, *, cfg: SimConfig | None = None, batch_size: int = 32,
                max_memory: int | str | None = None) -> MemoryPlan:
    """The calibration passes `compress(..., max_memory=...)` will run (memory_plan.py); SbcError if the budget
    cannot hold the largest single layer. max_memory None: the machine's available memory."""
    calib = calib if hasattr(calib, "batches") else as_dataset(calib)
    cfg = cfg or config_for(graph)
    walker = Walker(flatten(graph), cfg)
    return _memory_plan(walker, _layer_names(walker.fg, plan.layers), calib, plan, batch_size, max_memory)


def _memory_plan(walker: Walker, names: list[str], data, plan: Plan, batch_size: int, max_memory) -> MemoryPlan:
    budget, source = ((to_bytes(max_memory), "--max-memory") if max_memory is not None
                      else (available_memory(), "available memory"))
    sample = next(iter(data.batches(1)), None)
    if sample is None:
        raise SbcError("the calibration dataset is empty")
    betas = {n: kernel_betas(walker.fg, n, walker.cfg, plan.method.objective) for n in names}
    at_once = plan.budget is not None or (plan.allocation.needs_hessian and bool(plan.sparsity))
    return plan_memory(walker, sample[0], names, betas, budget=budget, batch_size=batch_size, source=source,
                       hessians_at_once=at_once)


def check_resume(graph: nir.NIRGraph, calib, plan: Plan, resume, *, cfg: SimConfig | None = None,
                 batch_size: int = 32) -> None:
    """SbcError (one line) unless `resume` is a new or empty folder or a work folder made for this model,
    plan, settings and calibration data (workdir.py); writes nothing."""
    calib = calib if hasattr(calib, "batches") else as_dataset(calib)
    fg = flatten(graph)
    WorkDir.check(resume, _layer_names(fg, plan.layers),
                  _binding(fg, calib, plan, cfg or config_for(graph), batch_size))


def _binding(fg: FlatGraph, data, plan: Plan, cfg: SimConfig, batch_size: int) -> dict:
    return {"model": graph_hash(fg), "options": _plan_binding(plan, cfg, batch_size),
            "calibration": data_hash(data, batch_size)}


def _plan_binding(plan: Plan, cfg: SimConfig, batch_size: int) -> dict:
    """The options a work folder is bound to (everything the weights depend on), JSON-able."""
    return {"method": plan.method.name, "allocation": repr(plan.allocation), "sparsity": plan.sparsity,
            "bits": plan.bits, "pattern": plan.pattern_text, "grid": plan.grid, "granularity": plan.granularity,
            "sequential": plan.sequential, "rel_damp": plan.rel_damp, "exact_resolve": plan.exact_resolve,
            "layers": None if plan.layers is None else list(plan.layers),
            "budget": None if plan.budget is None else repr(plan.budget), "sim": cfg.to_metadata(),
            "batch_size": int(batch_size),
            **({"budget_search": plan.budget_search, "search_seed": plan.search_seed, "search_score": plan.search_score}
               if plan.budget_search else {}),
            **({"objective": plan.objective} if plan.reset_aware else {})}


STOP_AFTER_ENV = "SBC_ONNX_TEST_STOP_AFTER_LAYER"  # tests: interrupt a run once layer k (0-based) is saved


def _layer_matrix(node) -> np.ndarray:
    w = np.asarray(node.weight)
    return w.reshape(w.shape[0], -1) if w.ndim > 2 else w


def _layer_names(fg: FlatGraph, layers) -> list[str]:
    names = list(layers or fg.weight_nodes())
    unknown = [n for n in names if n not in fg.nodes]
    if unknown:
        raise SbcError(f"unknown layer(s) {unknown}; weight layers are {fg.weight_nodes()}")
    if not names:
        raise SbcError("the graph has no weight layers to compress")
    return names


class _Compression:
    """One compress() call: the copy being compressed, its calibrations, timings and layer reports."""

    def __init__(self, graph, data, plan: Plan, cfg: SimConfig, batch_size: int, progress: bool):
        self.t_start = time.perf_counter()
        self.plan, self.data, self.cfg, self.batch_size, self.progress = plan, data, cfg, batch_size, progress
        self.new = copy.deepcopy(graph)
        self.fg = flatten(self.new)
        self.names = _layer_names(self.fg, plan.layers)
        self.dense = Walker(flatten(graph), cfg)
        self.seconds = {"calibration": 0.0, "compression": 0.0, "damage": 0.0}
        self.calibs: dict[str, Calibration] = {}
        self.layers: list[LayerReport] = []
        self.quant: dict[str, tuple] = {}
        self.notes: list[str] = []
        self.storage: StorageBits | None = None
        self.synops: SynOpsOf | None = None
        self.budget_plan: BudgetPlan | None = None
        self.repair_report: RepairReport | None = None
        self.damage = True  # whether the spike damage is measured (a pass over the calibration set)
        self.memory: MemoryPlan | None = None
        self.work: WorkDir | None = None   # spilled Hessians (and, when resumable, finished layers)
        self.resumable = False
        self._spill_dir: str | None = None  # a temporary work folder, removed at the end
        self.cluster = None  # a distributed.Cluster when the run is spread over Ray workers
        self.distributed: dict | None = None  # what the cluster moved and timed (CompressionReport.distributed)

    # ---- cluster
    def connect(self, workers: int | None, ray_address: str | None) -> None:
        if workers is None and ray_address is None:
            return  # Ray is not imported
        if self.plan.reset_aware:
            raise SbcError("--reset-aware measures the firing rates over the whole calibration set first; it does "
                           "not run on Ray workers (drop --workers / --ray-address)")
        from .distributed import connect

        self.cluster = connect(workers, ray_address)
        log.info("distributed over %s", self.cluster.describe())
        if self.plan.sequential:
            log.info("--sequential: each layer is calibrated behind the compressed ones, so the layers run one "
                     "after another; the workers share each layer's calibration shards and trace row chunks")

    def disconnect(self) -> None:
        if self.cluster is not None:
            self.distributed = {"workers": self.cluster.workers, "layers": (self.distributed or {}).get("layers", {}),
                                "calibration": self.cluster.calibration_records}
            self.cluster.close()
            self.cluster = None

    def _runner(self):
        from .distributed import LayerRunner

        plan = self.plan
        return LayerRunner(self.cluster, self._layer_options(), obs_trace=plan.method.obs_trace and plan.prunes,
                           rel_damp=plan.rel_damp)

    def _layer_options(self) -> dict:
        """The options of compress_groups every layer shares."""
        plan = self.plan
        return dict(method=plan.method, pattern=plan.pattern, grid_scheme=plan.grid, granularity=plan.granularity,
                    rel_damp=plan.rel_damp, exact_resolve=plan.exact_resolve)

    # ---- memory
    def setup_memory(self, max_memory, resume, given: Calibration | None) -> None:
        """Plan the calibration passes for `max_memory` and open the work folder, before any work."""
        if max_memory is None and resume is None:
            return
        if given is not None:
            if resume is not None:
                raise SbcError("a precomputed calibration cannot be combined with resume")
            return  # its Hessians are in memory already
        binding = _binding(self.dense.fg, self.data, self.plan, self.cfg, self.batch_size) if resume else None
        if resume is not None:
            WorkDir.check(resume, self.names, binding)  # before the memory plan's sample step
        self.memory = _memory_plan(self.dense, self.names, self.data, self.plan, self.batch_size, max_memory)
        if resume is None and not self.memory.spill:
            return
        if resume is None:
            self._spill_dir = tempfile.mkdtemp(prefix="sbc-onnx-hessians-")
            binding = {}
        self.work = WorkDir.open(resume if resume is not None else self._spill_dir, self.names, binding)
        self.resumable = resume is not None

    def drop_spill(self) -> None:
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill_dir = None

    # ---- calibrate
    def calibrate(self, given: Calibration | None) -> None:
        """Every layer's Hessian from one pass over the dense model, or `given`; sequential plans
        calibrate each layer just before it is compressed (`layer_calibration`)."""
        if self.plan.runs_obs_trace:
            if not compiled_on_disk():
                log.info("compiling the ExactOBS kernels with numba (first run after an install or update; "
                         "cached afterwards)")
            load_kernels()  # now, so that the estimate below measures the memory they take
        log.info("%s", estimate_peak(self.dense, self.names, self.data, self.batch_size,
                                     input_norms=self.plan.method.input_norms, damage=self.damage).describe())
        if given is not None:
            self._check_given(given)
            self.calibs = dict.fromkeys(self.names, given)
        elif self._dense_calibration() and self.work is not None:
            self.calibs = dict.fromkeys(self.names, self._calibrate_spilled())
        elif self._dense_calibration():
            self.calibs = dict.fromkeys(self.names, self._calibrate(self.dense, self.names, self.progress))

    def _dense_calibration(self) -> bool:
        """Whether every layer's dense Hessian is needed up front: not sequential, or a budget's plan."""
        return not self.plan.sequential or self.plan.budget is not None

    def _check_given(self, cal: Calibration) -> None:
        method = self.plan.method
        if not self._dense_calibration():
            raise SbcError("a precomputed calibration cannot be used with sequential calibration")
        if cal.objective != self.plan.objective:
            raise SbcError(f"the calibration was collected for the {cal.objective!r} objective; "
                           f"method {method.name}{' with --reset-aware' if self.plan.reset_aware else ''} needs "
                           f"{self.plan.objective!r}")
        if method.input_norms and not cal.input_norms:
            raise SbcError(f"method {method.name} needs a calibration collected with input_norms=True")
        missing = [n for n in self.names if n not in cal.layers]
        if missing:
            raise SbcError(f"the calibration has no Hessian for layer(s) {missing}")
        cal.check(self.names)

    def _calibrate(self, walker: Walker, layers: list[str], progress: bool) -> Calibration:
        t0 = time.perf_counter()
        run = calibrate if self.cluster is None else self.cluster.calibrate  # the latter: in shards of batches
        cal = run(walker, self.data, layers=layers, objective=self.plan.objective,
                  batch_size=self.batch_size, progress=progress, input_norms=self.plan.method.input_norms)
        self.seconds["calibration"] += time.perf_counter() - t0
        cal.check(layers)  # before any layer is compressed
        return cal

    def _calibrate_spilled(self) -> Calibration:
        """The memory plan's passes, each collecting its layers' Hessians and spilling them to the work
        folder (layers already there are not collected again); one Calibration reading them back, one
        layer at a time, identical to the one-pass calibration."""
        todo = [[n for n in p if not self.work.has_hessian(n)] for p in self.memory.passes]
        todo = [p for p in todo if p]
        for i, layers in enumerate(todo):
            phase_line(f"calibration pass {i + 1}/{len(todo)}: {len(layers)} layer(s), {layers[0]} ... {layers[-1]}",
                       self.progress)
            self._spill(self._calibrate(self.dense, layers, self.progress and len(todo) == 1), layers)
        return self._stored_calibration()

    def _spill(self, cal: Calibration, layers: list[str]) -> None:
        for n in layers:
            lc = cal.layers[n]
            record = {"kind": lc.kind, "neuron": lc.neuron, "betas": list(lc.betas), "groups": lc.groups,
                      "seconds": lc.seconds, "n_units": lc.acc.n_units, "n_samples": cal.n_samples,
                      "steps": cal.steps, "objective": cal.objective, "input_norms": cal.input_norms,
                      "notes": [m for m in cal.notes if m.startswith(f"layer {n}:")]}
            self.work.save_hessian(n, lc.acc.H, lc.acc.sq_norms, record)
            lc.acc = lc.filt = None  # this layer's accumulator is on disk now

    def _stored_calibration(self) -> Calibration:
        layers, notes, rec = {}, [], {}
        for n in self.names:
            acc, rec = self.work.hessian(n)
            layers[n] = LayerCalibration(n, rec["kind"], rec["neuron"], tuple(rec["betas"]), acc,
                                         groups=rec["groups"], seconds=rec["seconds"])
            notes += rec["notes"]
        return Calibration(layers=layers, n_samples=rec["n_samples"], steps=rec["steps"],
                           seconds=self.seconds["calibration"], objective=rec["objective"],
                           input_norms=rec["input_norms"], notes=notes)

    def layer_calibration(self, name: str) -> LayerCalibration:
        if self.plan.sequential:  # a new walker: upstream layers already carry their compressed weights
            self.calibs[name] = self._calibrate(Walker(self.fg, self.cfg), [name], progress=False)
        return self.calibs[name].layers[name]

    # ---- allocate
    def allocate(self) -> Budget:
        plan = self.plan
        if plan.budget is not None:
            return self._plan_budget()
        if not plan.sparsity:
            return Budget([0] * len(self.names))
        t0 = time.perf_counter()
        stats = [self._stats(n) for n in self.names]
        if self.cluster is not None and plan.allocation.needs_hessian and plan.allocation.obs_trace:
            traces = self._runner().traces([(s.W, s.H, s.groups) for s in stats])  # in row chunks
            stats = [replace(s, traces=tuple(t)) for s, t in zip(stats, traces)]
        budget = plan.allocation.allocate(stats, plan.sparsity)
        self.seconds["compression"] += time.perf_counter() - t0
        if not plan.method.obs_trace:
            budget.traces = []  # only ExactOBS pruning reuses the allocation's traces
        return budget

    def _plan_budget(self) -> Budget:
        t0 = time.perf_counter()
        plan = self.plan
        layers = [BudgetLayer(n, _layer_matrix(self.fg.nodes[n]), self.calibs[n].layers[n].H,
                              self.calibs[n].layers[n].groups, tuple(np.shape(self.fg.nodes[n].weight)),
                              np.asarray(self.fg.nodes[n].weight).dtype.name)
                  for n in self.names]
        # sequential: the layers are re-solved against other Hessians, so the plan's sizes are the storage
        # bound by nonzero count, which to_budget(resolve=) then keeps each re-solved layer within
        self.budget_plan = plan_budget(layers, plan.budget, method=plan.method, storage=self.storage,
                                       synops=self.synops, rel_damp=plan.rel_damp, grid_scheme=plan.grid,
                                       granularity=plan.granularity, keep_weights=plan.budget_search > 0,
                                       exact_sizes=not plan.sequential)
        self.seconds["budget"] = time.perf_counter() - t0
        if plan.budget_search:
            self._search_budget()
        return self.budget_plan.to_budget(layers, resolve=self.storage if plan.sequential else None)

    def _search_budget(self) -> None:
        """Replace the DP's plan by the best of plan.budget_search candidates scored end to end on the
        calibration data (budget_search.py); the kept option weights are dropped afterwards."""
        t0, plan, bp = time.perf_counter(), self.plan, self.budget_plan
        phase_line(f"budget search: {plan.budget_search} candidate plans, each one simulation of the "
                   f"{self.data.n} calibration samples (seed {plan.search_seed}, score {plan.search_score})",
                   self.progress)
        distance = OutputDistance(self.dense.fg, self.data, self.cfg, batch_size=self.batch_size,
                                  kind=plan.search_score)
        chosen, _ = search_plan(bp, lambda picks: distance(bp.weights_of(picks)), plan.budget_search,
                                seed=plan.search_seed, progress=lambda text: phase_line(text, self.progress))
        chosen.weights = []
        self.budget_plan = chosen
        self.seconds["budget_search"] = time.perf_counter() - t0

    def _stats(self, name: str) -> LayerStats:
        W2 = _layer_matrix(self.fg.nodes[name])
        if not self.plan.allocation.needs_hessian:
            return LayerStats(W2)
        lc = self.calibs[name].layers[name]
        return LayerStats(W2, lc.H, lc.groups)

    # ---- compress the layers
    def compress_layers(self, budget: Budget, on_layer=None) -> None:
        n = len(self.names)
        shapes = [_layer_matrix(self.fg.nodes[name]).shape for name in self.names]
        lp = LayerProgress(self.names, [self._cost(s, budget.bits_of(i, self.plan.bits)) for i, s in enumerate(shapes)],
                           "compressing", self.progress)
        stop = os.environ.get(STOP_AFTER_ENV)
        computed = self._computed_layers(budget, lp)  # (seconds, report) of each layer not restored, in order
        for i, (name, k) in enumerate(zip(self.names, budget.counts)):
            shape = f"{shapes[i][0]} x {shapes[i][1]}"
            if self.resumable and self.work.has_layer(name):
                self.layers.append(self._restore_layer(name))
                lp.done(i, None, shape)
                continue
            if computed is None:
                report = self._compress_layer(name, k, budget.traces_of(i), lp.bar, budget.bits_of(i, self.plan.bits))
                seconds = report.seconds
            else:
                seconds, report, what = next(computed)
                shape += what
            self.layers.append(report)
            if self.resumable:
                self.work.save_layer(name, self.fg.nodes[name].weight, self.quant.get(name), report)
            lp.done(i, seconds, shape)
            if on_layer is not None:
                on_layer(i, n, name)
            if stop is not None and int(stop) == i:
                raise KeyboardInterrupt(f"{STOP_AFTER_ENV}={stop}")
        lp.close()

    def _computed_layers(self, budget: Budget, lp: LayerProgress):
        """With a cluster: an iterator of (wall seconds since the last one, report, progress text) of the layers
        not restored, in layer order, computed across the cluster (distributed/layers.py); else None."""
        return None if self.cluster is None else self._distributed_layers(budget, lp)

    def _distributed_layers(self, budget: Budget, lp: LayerProgress):
        from .distributed import LayerJob

        plan, runner = self.plan, self._runner()
        todo = [i for i, n in enumerate(self.names) if not (self.resumable and self.work.has_layer(n))]

        lcs = {}

        def jobs():  # drawn lazily: a sequential layer is calibrated once the one before it is applied
            for i in todo:
                lc = lcs[i] = self.layer_calibration(self.names[i])
                yield LayerJob(i, _layer_matrix(self.fg.nodes[self.names[i]]), lc.H, lc.groups, budget.counts[i],
                               budget.bits_of(i, plan.bits), lc.acc.sq_norms if plan.method.input_norms else None,
                               budget.traces_of(i))

        def chunks_text() -> str:
            return f"; row chunks {runner.chunks_done}/{runner.chunks_total} done across the cluster"

        def on_wait() -> None:
            if lp.bar is not None:
                lp.bar.set_postfix_str(chunks_text().lstrip("; "), refresh=True)

        window = 1 if plan.sequential else 2 * self.cluster.workers  # layers computing at once
        t_last = time.perf_counter()
        self.distributed = {"layers": {}}
        for job, parts, trace_seconds in runner.run(jobs(), window, on_wait, in_order=plan.sequential):
            name = self.names[job.index]
            self.distributed["layers"][name] = runner.records[job.index]
            if parts:
                parts[0].seconds += trace_seconds  # the layer's time includes its trace's row chunks
            report = self._layer_report(name, lcs.pop(job.index), np.asarray(self.fg.nodes[name].weight), parts,
                                        job.bits)
            if lp.bar is not None:
                lp.bar.update(1)
            now = time.perf_counter()
            self.seconds["compression"] += now - t_last  # wall time: the layers overlap
            yield now - t_last, report, chunks_text()
            t_last = time.perf_counter()

    def _cost(self, shape, bits) -> float:
        """The layer's weight in the ETA: its algorithm's flops plus the report's two objectives
        tr(dW H dW^T), which every method pays (2 d_out d_in^2 each)."""
        return (layer_flops(self.plan.method, shape[0], shape[1], prunes=self.plan.prunes, quantizes=bool(bits))
                + 4.0 * shape[0] * shape[1] ** 2)

    def _restore_layer(self, name: str) -> LayerReport:
        """A layer finished by an earlier run of this work folder: its weight, codes, report and notes."""
        weight, quant, fields = self.work.layer(name)
        node = self.fg.nodes[name]
        node.weight = weight.astype(np.asarray(node.weight).dtype, copy=False)
        if quant is not None:
            self.quant[name] = quant
        fields["shape"] = tuple(fields["shape"])
        report = LayerReport(**fields)
        self.notes.extend(f"{name}: {m}" for m in report.notes + report.escalations)
        return report

    def _compress_layer(self, name: str, k: int, traces, bar, bits: int | None) -> LayerReport:
        plan = self.plan
        lc = self.layer_calibration(name)
        node = self.fg.nodes[name]
        t0 = time.perf_counter()
        W = np.asarray(node.weight)
        shown = [0.0]  # share of this layer already added to the bar (the ExactOBS trace moves it)
        parts = compress_groups(
            _layer_matrix(node), lc.H, lc.groups, k, bits=bits,
            sq_norms=lc.acc.sq_norms if plan.method.input_norms else None,
            traces=traces, on_rows=_layer_progress(bar, shown, lc.groups), **self._layer_options())
        report = self._layer_report(name, lc, W, parts, bits)
        self.seconds["compression"] += time.perf_counter() - t0
        if bar is not None:
            bar.update(1 - shown[0])
        return report

    def _layer_report(self, name: str, lc: LayerCalibration, W: np.ndarray, parts, bits: int | None) -> LayerReport:
        """The layer's new weight (set on the node) from its groups' results, and its report."""
        node = self.fg.nodes[name]
        node.weight = self._new_weight(name, W, parts, bits)
        esc, layer_notes, fallback = self._log_layer(name, parts)
        W_new = node.weight
        return LayerReport(
            name=name, kind=self.fg.kind(name), shape=tuple(W.shape), neuron=lc.neuron,
            kernel=_kernel_name(lc.betas), sparsity=float(1 - np.count_nonzero(W_new) / W_new.size),
            bits=bits, objective_before=float(np.mean([r.objective_before for r in parts])),
            objective_after=float(np.mean([r.objective_after for r in parts])),
            damp=max((r.damp for r in parts if r.damp is not None), default=None),
            seconds=float(sum(r.seconds for r in parts)), hessian_seconds=lc.seconds,
            fallback=fallback, escalations=esc, notes=layer_notes)

    def _new_weight(self, name: str, W: np.ndarray, parts, bits: int | None) -> np.ndarray:
        W_new, quant = stored_weight(parts, W.shape, W.dtype)
        if bits and quant is not None:
            self.quant[name] = quant
        return W_new

    def _log_layer(self, name: str, parts) -> tuple[list, list, str | None]:
        esc = [e for r in parts for e in r.escalations]
        layer_notes = list(dict.fromkeys(n for r in parts for n in r.notes))  # groups repeat notes
        self.notes.extend(f"{name}: {n}" for n in layer_notes + esc)
        fallback = "; ".join(sorted({r.fallback for r in parts if r.fallback})) or None
        if fallback:
            log.warning("layer %s fell back: %s", name, fallback)
        for e in esc:
            log.info("layer %s: %s", name, e)
        return esc, layer_notes, fallback

    # ---- report
    def report(self) -> CompressionReport:
        plan = self.plan
        cals = list(self.calibs.values())
        cal_notes = [n for c in cals for n in c.notes] if plan.sequential or not cals else cals[0].notes
        weights = [np.asarray(self.fg.nodes[n].weight) for n in self.names]
        total = sum(w.size for w in weights)
        zeros = sum(w.size - np.count_nonzero(w) for w in weights)
        return CompressionReport(
            method=plan.method.name, sparsity=plan.sparsity, bits=plan.bits, pattern=plan.pattern_text,
            allocation=plan.allocation.name, sim=self.cfg.to_metadata(),
            n_calibration=cals[0].n_samples if cals else self.data.n,
            layers=self.layers, overall_sparsity=zeros / total if total else 0.0, seconds=self.seconds,
            notes=self.notes + list(cal_notes), quant=self.quant,
            budget=None if self.budget_plan is None else self.budget_plan.to_dict(),
            repair=None if self.repair_report is None else self.repair_report.to_dict(),
            distributed=self.distributed)

    def repair(self, dense: nir.NIRGraph) -> None:
        t0 = time.perf_counter()
        r = repair_thresholds(dense, self.new, self.data, self.cfg, batch_size=self.batch_size,
                              per_layer=self.plan.repair_per_layer)
        self.repair_report = r
        self.notes.append(r.summary())
        self.seconds["repair"] = time.perf_counter() - t0

    def measure_damage(self, report: CompressionReport) -> None:
        t0 = time.perf_counter()
        measure_spike_damage(self.dense, Walker(self.fg, self.cfg), self.data, report.layers,
                             batch_size=self.batch_size, progress=self.progress)
        self.seconds["damage"] = time.perf_counter() - t0


def _kernel_name(betas) -> str:
    if not betas:
        return "identity"
    if betas == (1.0,):
        return "cumsum"
    return "exp(" + ",".join(f"{b:.4g}" for b in betas) + ")"


# ---------------------------------------------------------------------------------------------- spike damage

def measure_spike_damage(dense: Walker, comp: Walker, dataset, reports: list[LayerReport], *,
                         batch_size: int = 32, progress: bool = False) -> None:
    """Per layer: firing rate of the fed neuron, dense and compressed, and the Van Rossum distance
    between their spike trains on the calibration data (kernel: the neuron's own leak; non-leaky
    neurons use tau = 10 steps), as squared distance per neuron per sample, summed over time."""
    targets = _spiking_targets(dense, reports)
    if not targets:
        return
    decay = {n: _van_rossum_decay(dense, n) for n in targets}
    acc = {n: {"d": 0.0, "sd": 0.0, "sc": 0.0, "cells": 0, "steps": 1} for n in targets}
    bar = progress_bar(getattr(dataset, "n", None), "measuring spike damage", progress)
    for x_tb, y in dataset.batches(batch_size, per_step=True):
        packed: dict[str, list] = {n: [] for n in targets}
        dense.run(x_tb, on_output={n: _packer(packed[n]) for n in targets}, record_outputs=False,
                  on_step=step_progress(bar, len(y) / 2, x_tb.shape[0]))
        dists = {n: _Distance(acc[n], packed[n], decay[n]) for n in targets}
        comp.run(x_tb, on_output={n: d.step for n, d in dists.items()}, record_outputs=False,
                 on_step=step_progress(bar, len(y) / 2, x_tb.shape[0]))
        for d in dists.values():
            d.finish()
        del x_tb, packed, dists  # freed before the next batch is built (Dataset.batches)
    if bar is not None:
        bar.close()
    for n, r in targets.items():
        r.van_rossum, r.firing_rate_dense, r.firing_rate_compressed = _damage(acc[n])


def _spiking_targets(walker: Walker, reports: list[LayerReport]) -> dict[str, LayerReport]:
    """{fed neuron: its layer's report} for the layers that feed a spiking neuron."""
    return {r.neuron: r for r in reports if r.neuron is not None and walker.ops[r.neuron].spiking}


def _van_rossum_decay(walker: Walker, neuron: str) -> float:
    """The per-step decay of the distance filter: the neuron's membrane leak (0.9 if it has none)."""
    k = walker.fg.prim(neuron).decays(walker.fg.nodes[neuron], walker.cfg)[-1]  # the membrane stage
    return 0.9 if k is None else float(np.mean(1 - k))


def _packer(out: list):
    """Observer keeping the dense spikes of every step as bits (1 bit per neuron): the compressed run
    compares against them step by step, so no spike train is held as bytes or floats."""
    return lambda t, s: out.append(np.packbits(np.asarray(s) != 0))


class _Distance:
    """The compressed run's observer: adds the filtered difference of the spike trains to the sums `a`,
    step by step against the packed dense spikes."""

    def __init__(self, a: dict, packed: list, decay: float) -> None:
        self.a, self.packed, self.decay = a, packed, decay
        self.f: np.ndarray | None = None
        self.steps = 0

    def step(self, t: int, s: np.ndarray) -> None:
        sc = np.asarray(s) != 0
        sd = np.unpackbits(self.packed[t], count=sc.size).reshape(sc.shape).view(bool)
        self.packed[t] = None  # this step's bits are no longer needed
        if self.f is None:
            self.f = np.zeros(sc.shape, dtype=np.float64)
        self.f = self.decay * self.f + (sd.astype(np.int8) - sc.astype(np.int8))
        self.a["d"] += float(np.sum(self.f * self.f))
        self.a["sd"] += float(sd.sum())
        self.a["sc"] += float(sc.sum())
        self.steps += 1

    def finish(self) -> None:
        if self.f is not None:
            self.a["cells"] += self.f.size
            self.a["steps"] = self.steps


def _damage(a: dict) -> tuple[float, float, float]:
    """(Van Rossum distance per neuron per sample, dense rate, compressed rate) from the sums."""
    cells, steps = a["cells"], a["steps"]
    return a["d"] / cells, a["sd"] / (cells * steps), a["sc"] / (cells * steps)


# ---------------------------------------------------------------------------------------------- progress

def _layer_progress(bar, shown, groups):
    """on_rows(g, done, total) callback moving the layer bar within a layer: group g of ``groups`` is
    done to done/total (at most 0.9 of the layer: the compensation follows the trace)."""
    if bar is None:
        return None

    def on_rows(g, done, total):
        frac = 0.9 * (g + done / max(total, 1)) / groups
        if frac > shown[0]:
            bar.update(frac - shown[0])
            shown[0] = frac
    return on_rows

