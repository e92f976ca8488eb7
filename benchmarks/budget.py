"""Compression to a memory budget on cnn_sinabs (issue #16): budget search, threshold repair, baselines.

For each calibration draw (80 of N-MNIST train 1-100, seeded as benchmarks/accuracy.py draws them) and each
setting, compress cnn_sinabs, measure the weight storage the written ONNX file really takes, and evaluate
on the 500 evaluation recordings (test100 + train 101-500).  Results append to a JSON-lines log, so an
interrupted run resumes; the markdown table is rebuilt from the log.

    python benchmarks/budget.py [--budget memory=10KiB] [--draws 0,1,2] [--settings ...] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


import accuracy as A
import numpy as np

import sbc_onnx as sbc
from sbc_onnx.compress.budget import parse_budget
from sbc_onnx.io.sizes import OnnxStorage, weight_storage

CACHE = Path.home() / ".cache" / "sbc-onnx" / "budget"
CALIBRATION_FORMAT = "v3"  # v2: LayerCalibration.inputs (the calibration checks of #12); v3: HessianAccumulator._fill
# the runs since the writer has the relative index (io/onnx_weights.py); the bitmask-only runs before it are
# budget_runs_bitmask.jsonl (their table: budget_runs_bitmask.md, `--log ... --report-only`)
LOG = ROOT / "benchmarks" / "results" / "budget_runs.jsonl"

# name -> compress() options (a budget, or a fixed rate as the baseline at a similar size) and whether to repair
SETTINGS = {
    "sbc-budget": {"method": "sbc", "budget": True},
    "sbc-budget+repair": {"method": "sbc", "budget": True, "repair": True},
    "obc-budget": {"method": "obc", "budget": True},
    "magnitude-budget": {"method": "magnitude", "budget": True},
    "sbc-90%-8bit": {"method": "sbc", "sparsity": 0.9, "bits": 8},
    "sbc-90%-8bit+repair": {"method": "sbc", "sparsity": 0.9, "bits": 8, "repair": True},
    "sbc-dense-2bit": {"method": "sbc", "bits": 2},
    "sbc-dense-2bit+repair": {"method": "sbc", "bits": 2, "repair": True},
    # the dense plan, each layer re-solved against the compressed upstream's Hessian (pruned to its planned non-zeros)
    "sbc-budget+sequential": {"method": "sbc", "budget": True, "sequential": True},
    # a finer option set: bits 2, 3, 4, 5, 6, 8 (and float), sparsity in steps of 2.5 %
    "sbc-budget-fine": {"method": "sbc", "budget": "fine"},
    "sbc-budget-fine+sequential": {"method": "sbc", "budget": "fine", "sequential": True},
    # the plan of 16 / 32 candidates (DP with searched per-layer cost weights, seed 0) closest to the dense
    # network's output spike counts on the calibration draw (budget_search.py)
    "sbc-budget+search16": {"method": "sbc", "budget": True, "budget_search": 16},
    "sbc-budget+search32": {"method": "sbc", "budget": True, "budget_search": 32},
    # the same, scored by the cross-entropy against the dense network's prediction (--search-score xent)
    "sbc-budget+search16-xent": {"method": "sbc", "budget": True, "budget_search": 16, "search_score": "xent"},
    # the reset-aware SMP objective (calibrate.py "smp-reset"): plan and compression on its Hessians
    "sbc-budget+reset-aware": {"method": "sbc", "budget": True, "reset_aware": True},
    "sbc-90%-8bit+reset-aware": {"method": "sbc", "sparsity": 0.9, "bits": 8, "reset_aware": True},
}
FINE = {"sparsities": [i / 40 for i in range(40)], "bits": [None, 8, 6, 5, 4, 3, 2]}


def calibration(net, draw, objective):
    # pickles of the Calibration class: the version tag changes when the class gains fields
    path = CACHE / f"{net.key}-{draw}-{objective}-{CALIBRATION_FORMAT}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    cal, _ = net.calibration(draw, objective)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(cal))
    return cal


def run(net, name, draw, budget):
    opts = dict(SETTINGS[name])
    kind = opts.pop("budget", False)
    if kind:
        opts["budget"] = parse_budget(budget, **FINE) if kind == "fine" else budget
    objective = "current" if opts["method"] == "obc" else "smp-reset" if opts.get("reset_aware") else "smp"
    calib = net.calib_set(draw)
    t0 = time.perf_counter()
    g, rep = sbc.compress(net.graph, calib, cfg=net.cfg, measure_damage=False, batch_size=50, progress=True,
                          calibration=calibration(net, draw, objective), storage=OnnxStorage(), **opts)
    out = {"setting": name, "draw": draw, "budget": budget, "compress_s": time.perf_counter() - t0,
           "layers": {l.name: [round(l.sparsity, 4), l.bits] for l in rep.layers}}
    if rep.budget and "search" in rep.budget:
        sr = rep.budget["search"]
        out["search"] = {k: sr[k] for k in ("candidates", "proposals", "chosen", "score_dp", "score_chosen")}
        out["search_s"] = rep.seconds["budget_search"]
    if rep.repair:
        out.update(repair_s=rep.seconds["repair"],
                   rate_error=[rep.repair["rate_error_before"], rep.repair["rate_error_after"]])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        sbc.save_model(g, path, cfg=net.cfg, quant=rep.quant)
        out["onnx_bytes"] = path.stat().st_size
        out["weight_bytes"] = sum(w.stored_bytes for w in weight_storage(path))
    out["acc"] = sbc.evaluate(g, net.eval, net.cfg, batch_size=250).accuracy
    return out


def report(budget: str, log: Path = LOG) -> str:
    """Markdown table of the logged runs at `budget`: mean (and each draw) per setting."""
    rows = [r for r in map(json.loads, log.read_text().splitlines()) if r["budget"] == budget] if log.exists() else []
    lines = [f"# cnn_sinabs under a weight-storage budget ({budget})", "",
             ("Generated by `python benchmarks/budget.py --report-only` from `budget_runs.jsonl`. Calibration: a draw "
             "= 80 of N-MNIST train 1-100 (seeded as in accuracy.py); evaluation: the 500 recordings of "
             "accuracy_nmnist.md (dense 98.2 %). Weight bytes: initializer data of the weights in the written "
             "compact .onnx (`io/sizes.weight_storage`; the writer has the relative index since session 9, the "
             "bitmask-only runs before it: budget_runs_bitmask.md). Rate error: sum_c |rate - dense| / sum_c dense, mean over "
             "neuron layers, before -> after repair. Plan search (`--budget-search`): per draw, the candidate chosen "
             "(0 = the plain DP plan) of those scored, and the calibration score of the plain plan -> the chosen one."),
             "", "| setting | draws | accuracy mean | per draw | weight bytes | rate error (repair) | plan search |",
             "|---|---|---|---|---|---|---|"]
    for name in SETTINGS:
        rs = sorted((r for r in rows if r["setting"] == name), key=lambda r: r["draw"])
        if not rs:
            continue
        accs = [r["acc"] for r in rs]
        rate = "; ".join(f"{r['rate_error'][0]:.3f} -> {r['rate_error'][1]:.3f}" for r in rs if "rate_error" in r)
        search = "; ".join(f"{s['chosen']} of {s['candidates']}: {s['score_dp']:.3g} -> {s['score_chosen']:.3g}"
                           for s in (r["search"] for r in rs if "search" in r))
        lines.append(f"| {name} | {len(rs)} | {100 * np.mean(accs):.1f} % | "
                     f"{', '.join(f'{100 * a:.1f}' for a in accs)} | {max(r['weight_bytes'] for r in rs)} | {rate} | {search} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="memory=10KiB")
    ap.add_argument("--draws", default="0,1,2")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--log", type=Path, default=LOG, help="the JSON-lines log (another path: a trial run; its table "
                    "goes next to it as .md instead of results/budget.md)")
    a = ap.parse_args()
    log_path = a.log
    out = ROOT / "benchmarks" / "results" / "budget.md" if log_path == LOG else log_path.with_suffix(".md")
    if a.report_only:
        out.write_text(report(a.budget, log_path))
        print(out.read_text())
        return
    done = {(r["setting"], r["draw"], r["budget"]) for r in map(json.loads, log_path.read_text().splitlines())} \
        if log_path.exists() else set()
    net = A.Net("nmnist")
    for draw in map(int, a.draws.split(",")):
        for name in a.settings.split(","):
            if (name, draw, a.budget) in done:
                continue
            r = run(net, name, draw, a.budget)
            print(json.dumps(r), flush=True)
            with log_path.open("a") as f:
                f.write(json.dumps(r) + "\n")
    out.write_text(report(a.budget, log_path))


if __name__ == "__main__":
    main()
