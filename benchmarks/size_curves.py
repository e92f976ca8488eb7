"""Accuracy against model size and SynOps for every shipped network (issue #16): sbc with whole-model
budgets next to the fixed-rate grid of benchmarks/accuracy.py (LAMP / uniform sparsity, bit widths; sbc,
obc, magnitude / rtn) on the same axes.

The networks, calibration draws, evaluation sets and the compress call are accuracy.py's (`Net`,
`compress_job`, `run_job`): one protocol.  Two kinds of points:

- grid: a job of accuracy.py's result cache (--acc-cache; its accuracy is read there, never recomputed).
  Its model is compressed again (deterministic: the same calibration pass and options; the per-layer
  sparsity is checked against the cached one) to measure what the accuracy cache lacks: the weight bytes
  the compact ONNX writer stores (`io.sizes.weight_storage` on the written file) and the SynOps per
  sample (`hardware.energy.synops_model`: the non-zero fan-out of each layer on the dense model's activity
  over calibration draw 0, one fixed activity for every point of a network).
- budget: sbc with `--budget memory=X` (or `synops=X`) on each draw, evaluated here.

Every measured point is cached in --cache (a JSON file, resumed on rerun); --report-only rewrites
benchmarks/results/size_curves.md and size_curves_<net>.png from the caches.

    python benchmarks/size_curves.py --nets nmnist --acc-cache PATH --cache PATH [--grid] [--budgets] [--report-only]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy as A
import budget as B  # its on-disk calibration cache

import sbc_onnx as sbc
from sbc_onnx import pipeline
from sbc_onnx.budget_plan import plan_budget
from sbc_onnx.graph import flatten
from sbc_onnx.hardware.energy import synops_model
from sbc_onnx.io.sizes import OnnxStorage, weight_storage

RES = ROOT / "benchmarks" / "results"
# the grid points drawn: method -> the accuracy.py job kinds and options (LAMP p = 2 is the default {})
GRID_METHODS = {"sbc": ("sparsity", "bits"), "obc": ("sparsity", "bits"), "magnitude": ("sparsity",),
                "rtn": ("bits",)}
UNIFORM = {"allocation": "uniform"}
# memory budgets per network, spanning the sizes of the grid's points (size_curves.md lists both)
BUDGETS = {"nmnist": ["memory=8KiB", "memory=10KiB", "memory=14KiB", "memory=20KiB"],
           "cubalif": ["memory=24KiB", "memory=32KiB", "memory=48KiB", "memory=64KiB"],
           "ifcnn": ["memory=24KiB", "memory=40KiB"],
           A.SEW: ["memory=16KiB", "memory=24KiB", "memory=40KiB"]}
SYNOPS_BUDGETS = {"nmnist": ["synops=300k", "synops=600k", "synops=1M"],
                  "cubalif": ["synops=30k", "synops=60k", "synops=120k"],
                  "ifcnn": ["synops=1.5M", "synops=3M", "synops=6M"],
                  A.SEW: ["synops=300k", "synops=600k", "synops=1.2M"]}


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def save(path: Path, key: str, value: dict) -> None:
    cache = load(path)
    cache[key] = value
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=0))
    tmp.replace(path)


def grid_keys(acc: dict, net: str) -> list[str]:
    """The accuracy cache's jobs drawn on the curves: the grid of GRID_METHODS (LAMP p = 2), uniform
    allocation (an accuracy.py option job) and the dense run."""
    out = []
    for k in acc:
        j = json.loads(k)
        if j["net"] != net:
            continue
        grid = j["kind"] in GRID_METHODS.get(j["method"], ()) and j["opts"] == {}
        uniform = j["kind"] == "option" and j["opts"] == UNIFORM
        if grid or uniform or j["kind"] == "dense":
            out.append(k)
    return sorted(out)


class Measure:
    """Stored bytes and SynOps of a network's compressed graphs (SynOps on draw 0's dense activity)."""

    def __init__(self, net: A.Net):
        self.net = net
        t0 = time.perf_counter()
        self.synops_of = synops_model(net.graph, net.calib_set(0), net.cfg)
        self.synops_s = time.perf_counter() - t0
        self.names = flatten(net.graph).weight_nodes()

    def __call__(self, g, quant) -> dict:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.onnx"
            sbc.save_model(g, path, cfg=self.net.cfg, quant=quant)
            ws = weight_storage(path)
            onnx_bytes = path.stat().st_size
        fg = flatten(g)
        return {"weight_bytes": sum(w.stored_bytes for w in ws), "onnx_bytes": onnx_bytes,
                "synops": sum(self.synops_of(n, fg.nodes[n].weight) for n in self.names)}


def use_disk_calibrations(net: A.Net, j: dict) -> None:
    """Preload the calibration pass job j uses from budget.py's on-disk cache (computed once there)."""
    key = (j["draw"], "current" if j["method"] == "obc" else "smp")
    if key not in net.cals:
        net.cals[key] = (B.calibration(net, *key), None)


_PLANS: dict = {}


def _plan_once(layers, spec, **kw):
    """pipeline.plan_budget, measured once per calibration pass, method and option set: a budget of another
    amount refits the same measured costs and sizes (BudgetPlan.refit; the same choice plan_budget makes)."""
    key = (tuple(id(l.H) for l in layers), kw["method"].name, spec.kind, spec.sparsities, spec.bits,
           kw.get("rel_damp"), kw.get("grid_scheme"), kw.get("granularity"))
    if key not in _PLANS:
        _PLANS[key] = plan_budget(layers, spec, **kw)
    return _PLANS[key].refit(spec)


pipeline.plan_budget = _plan_once


def measure_grid(net: A.Net, acc: dict, cache: Path, measure: Measure) -> None:
    done = load(cache)
    for k in grid_keys(acc, net.key):
        if k in done:
            continue
        j = json.loads(k)
        if j["kind"] == "dense":
            r = measure(net.graph, None)
        else:
            use_disk_calibrations(net, j)
            g, rep, comp_s, _ = A.compress_job(net, j)
            r = measure(g, rep.quant)
            layers = {lr.name: round(lr.sparsity, 4) for lr in rep.layers}
            cached = acc[k].get("layer_sparsity") or {}
            r.update(compress_s=comp_s, layer_sparsity=layers,
                     sparsity_diff=max((abs(layers[n] - cached.get(n, np.nan)) for n in layers), default=0.0))
        r["acc"] = acc[k]["acc"]
        save(cache, k, r)
        print(f"{A.describe(j)}: {r['weight_bytes']} B, {r['synops']:.4g} SynOps, acc {100 * r['acc']:.1f} %"
              + (f"  (per-layer sparsity differs from the cached run by {r['sparsity_diff']:.4f})"
                 if r.get("sparsity_diff", 0) else ""),
              flush=True)


def budget_job(net: str, spec: str, draw: int) -> dict:
    return A.job(net, "budget", "sbc", draw, opts={"budget": spec})


def run_budgets(net: A.Net, specs: list[str], draws: list[int], cache: Path, measure: Measure) -> None:
    for spec in specs:
        for d in draws:
            j = budget_job(net.key, spec, d)
            k = A.job_key(j)
            if k in load(cache):
                continue
            use_disk_calibrations(net, j)
            synops = (synops_model(net.graph, net.calib_set(d), net.cfg) if spec.startswith("synops") else None)
            try:
                g, rep, comp_s, _ = A.compress_job(net, j, storage=OnnxStorage(), synops=synops)
            except sbc.SbcError as e:  # too small a budget: say so, go on with the others
                print(f"{A.describe(j)}: {e}", flush=True)
                break
            t0 = time.perf_counter()
            accuracy = sbc.evaluate(g, net.eval, net.cfg, readout=net.readout, batch_size=250).accuracy
            r = measure(g, rep.quant)
            r.update(acc=accuracy, compress_s=comp_s, eval_s=time.perf_counter() - t0,
                     planned=rep.budget["used"], limit=rep.budget["limit"],
                     layers={n: [v["sparsity"], v["bits"]] for n, v in rep.budget["layers"].items()})
            save(cache, k, r)
            print(f"{A.describe(j)}: {r['weight_bytes']} B, {r['synops']:.4g} SynOps, acc "
                  f"{100 * accuracy:.1f} % (compress {comp_s:.0f} s, eval {r['eval_s']:.0f} s)", flush=True)


# ------------------------------------------------------------------------------------------------ report
def curves(cache: dict, net: str) -> dict:
    """label -> [(KiB, SynOps, acc mean %, acc std, n draws, setting)] sorted by size, and the dense point."""
    groups: dict[tuple, list] = {}
    dense = None
    for k, v in cache.items():
        j = json.loads(k)
        if j["net"] != net:
            continue
        if j["kind"] == "dense":
            dense = v
            continue
        if j["kind"] == "budget":
            spec = j["opts"]["budget"]
            label, setting = f"sbc, {'memory' if spec.startswith('memory') else 'SynOps'} budget", spec
        elif j["kind"] == "option":
            label, setting = f"{j['method']}, uniform", f"{j['sparsity']:.0%}"
        elif j["kind"] == "sparsity":
            label, setting = f"{j['method']}, LAMP sparsity", f"{j['sparsity']:.0%}"
        else:
            label, setting = f"{j['method']}, bits", f"{j['bits']} bits"
        groups.setdefault((label, setting), []).append(v)
    out: dict[str, list] = {}
    for (label, setting), vs in groups.items():
        acc = 100 * np.array([v["acc"] for v in vs])
        out.setdefault(label, []).append((np.mean([v["weight_bytes"] for v in vs]) / 1024,
                                          np.mean([v["synops"] for v in vs]), acc.mean(),
                                          acc.std(ddof=1) if acc.size > 1 else 0.0, acc.size, setting))
    return {"dense": dense, "curves": {k: sorted(v) for k, v in sorted(out.items())}}


STYLE = {"sbc, memory budget": ("k", "*"), "sbc, SynOps budget": ("C1", "P"), "sbc, LAMP sparsity": ("C0", "o"), "sbc, bits": ("C0", "s"),
         "sbc, uniform": ("C0", "^"), "obc, LAMP sparsity": ("C2", "o"), "obc, bits": ("C2", "s"),
         "obc, uniform": ("C2", "^"), "magnitude, LAMP sparsity": ("C3", "o"), "rtn, bits": ("C3", "s")}


def plot(net: str, data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for label, pts in data["curves"].items():
        color, marker = STYLE.get(label, ("C7", "x"))
        ls = "-" if "sparsity" in label or "budget" in label else "--"
        for ax, col in ((axes[0], 0), (axes[1], 1)):
            pts = sorted(pts, key=lambda p: p[col])  # each panel in its own x order
            x = [p[col] for p in pts]
            ax.errorbar(x, [p[2] for p in pts], yerr=[p[3] for p in pts], color=color, marker=marker, ls=ls,
                        capsize=3, label=label, ms=9 if marker in "*P" else 5)
    d = data["dense"]
    for ax, key, xl in ((axes[0], "weight_bytes", "KiB of weights stored (compact ONNX)"),
                        (axes[1], "synops", "SynOps per sample (dense calibration activity)")):
        if d is not None:
            ax.axhline(100 * d["acc"], color="k", ls=":", lw=1, label="dense")
        ax.set_xscale("log")
        if key == "weight_bytes":  # plain KiB numbers on the log axis
            fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(fmt)
            ax.xaxis.set_minor_formatter(fmt)
            ax.tick_params(axis="x", which="minor", labelsize=7)
        else:
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xl)
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3, which="both")
        lo = min(p[2] for pts in data["curves"].values() for p in pts) if data["curves"] else 0
        ax.set_ylim(max(0, lo - 5), 100)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(A.TITLES[net][1], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def best_grid_rows(data: dict) -> list[str]:
    """Each budget point against the most accurate fixed-rate grid point that is no larger (KiB, or SynOps
    for a SynOps budget)."""
    grid = [(label, p) for label, pts in data["curves"].items() if "budget" not in label for p in pts]
    rows = []
    for label, pts in data["curves"].items():
        if "budget" not in label:
            continue
        col = 0 if "memory" in label else 1
        for p in pts:
            fits = [(q[2], lab, q) for lab, q in grid if q[col] <= p[col]]
            best = max(fits, key=lambda t: t[0]) if fits else None
            rows.append(f"| {p[5]} | {p[0]:.2f} | {p[1]:.4g} | {p[2]:.1f} ± {p[3]:.1f} | "
                        + (f"{best[1]} {best[2][5]}: {best[0]:.1f} ({best[2][0]:.2f} KiB, {best[2][1]:.4g} SynOps)"
                           if best else "none this small") + " |")
    if not rows:
        return []
    return [("Budget points against the most accurate grid point no larger (in KiB for a memory budget, in SynOps "
             "for a SynOps budget):"), "", "| budget | KiB | SynOps | sbc, budget % | best grid point no larger |",
            "|---|---|---|---|---|", *rows, ""]


def report(cache: dict, nets: list[str]) -> str:
    L = ["# Accuracy against stored size and SynOps (issue #16)", "",
         ("Generated by `python benchmarks/size_curves.py --report-only` from its cache. Protocols, draws and "
         "evaluation sets: benchmarks/accuracy.py (accuracy_*.md); the grid's accuracies are that cache's. "
         "KiB: the weights' initializer data in the compact ONNX file the writer stores (`io/sizes.weight_storage`; "
         "biases and neuron parameters excluded). SynOps: per sample, each layer's non-zero fan-out on the dense "
         "model's activity over calibration draw 0 (`hardware/energy.synops_model`; a layer fed by the input "
         "counts 0), so it measures the weights, not the compressed network's own spikes. Cells: accuracy mean "
         "± std over the draws (n); size and SynOps are means over the draws. sbc, budget: `--budget` on each "
         "draw (the per-layer sparsity and bit width chosen to fit)."), ""]
    for net in nets:
        data = curves(cache, net)
        if not data["curves"]:
            continue
        L += [f"## {A.TITLES[net][1]}", "", f"![{net}](size_curves_{net}.png)", ""]
        d = data["dense"]
        if d is not None:
            L += [f"Dense: {100 * d['acc']:.1f} %, {d['weight_bytes'] / 1024:.1f} KiB, {d['synops']:.4g} SynOps.", ""]
        diffs = [v["sparsity_diff"] for k, v in cache.items() if json.loads(k)["net"] == net and "sparsity_diff" in v]
        if diffs:
            L += [(f"Grid models compressed again for their bytes and SynOps: {sum(d == 0 for d in diffs)} of "
                   f"{len(diffs)} with the per-layer sparsity of the evaluated run exactly; largest difference "
                   f"{max(diffs):.4f} (zeros of the quantization grid)."), ""]
        L += best_grid_rows(data) + ["| curve | setting | KiB stored | SynOps / sample | accuracy % | n |",
                                     "|---|---|---|---|---|---|"]
        for label, pts in data["curves"].items():
            for kib, syn, m, sd, n, setting in pts:
                L.append(f"| {label} | {setting} | {kib:.2f} | {syn:.4g} | {m:.1f}"
                         + (f" ± {sd:.1f}" if n > 1 else "") + f" | {n} |")
        L.append("")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="nmnist,cubalif,ifcnn," + A.SEW)
    ap.add_argument("--acc-cache", type=Path, action="append", default=None,
                    help="accuracy.py result cache(s) to read (repeatable); default: accuracy.py's default cache")
    ap.add_argument("--cache", type=Path, required=True, help="this benchmark's cache of measured points")
    ap.add_argument("--grid", action="store_true", help="measure bytes and SynOps of the cached grid jobs")
    ap.add_argument("--budgets", action="store_true", help="run the budget points (evaluated)")
    ap.add_argument("--draws", default="0,1,2")
    ap.add_argument("--kinds", default="memory,synops", help="the budget kinds to run (--budgets)")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    nets = a.nets.split(",")
    acc = {}
    for p in a.acc_cache or [A.default_cache()]:
        acc.update(load(p))
    if not a.report_only:
        for n in nets:
            net = A.Net(n)
            measure = Measure(net)
            print(f"{n}: SynOps model in {measure.synops_s:.0f} s", flush=True)
            if a.grid:
                measure_grid(net, acc, a.cache, measure)
            if a.budgets:
                specs = BUDGETS.get(n, []) + SYNOPS_BUDGETS.get(n, [])
                run_budgets(net, [x for x in specs if x.split("=")[0] in a.kinds.split(",")],
                            [int(d) for d in a.draws.split(",")], a.cache, measure)
    cache = load(a.cache)
    shown = [n for n in A.NETS if n in nets]
    for n in shown:
        data = curves(cache, n)
        if data["curves"]:
            plot(n, data, RES / f"size_curves_{n}.png")
    (RES / "size_curves.md").write_text(report(cache, shown))


if __name__ == "__main__":
    main()
