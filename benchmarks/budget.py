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

import sbc_onnx as sbc
from sbc_onnx.io.sizes import onnx_weight_bits, weight_storage

CACHE = Path.home() / ".cache" / "sbc-onnx" / "budget"
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
}


def calibration(net, draw, objective):
    path = CACHE / f"{net.key}-{draw}-{objective}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    cal, _ = net.calibration(draw, objective)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(cal))
    return cal


def run(net, name, draw, budget):
    opts = dict(SETTINGS[name])
    if opts.pop("budget", False):
        opts["budget"] = budget
    objective = "current" if opts["method"] == "obc" else "smp"
    calib = net.calib_set(draw)
    t0 = time.perf_counter()
    g, rep = sbc.compress(net.graph, calib, cfg=net.cfg, measure_damage=False, batch_size=50,
                          calibration=calibration(net, draw, objective), storage=onnx_weight_bits, **opts)
    out = {"setting": name, "draw": draw, "budget": budget, "compress_s": time.perf_counter() - t0,
           "layers": {l.name: [round(l.sparsity, 4), l.bits] for l in rep.layers}}
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="memory=10KiB")
    ap.add_argument("--draws", default="0,1,2")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    a = ap.parse_args()
    done = {(r["setting"], r["draw"], r["budget"]) for r in map(json.loads, LOG.read_text().splitlines())} \
        if LOG.exists() else set()
    net = A.Net("nmnist")
    for draw in map(int, a.draws.split(",")):
        for name in a.settings.split(","):
            if (name, draw, a.budget) in done:
                continue
            r = run(net, name, draw, a.budget)
            print(json.dumps(r), flush=True)
            with LOG.open("a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
