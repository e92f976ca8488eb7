"""Peak memory of `sbc-onnx compress` against the number of calibration recordings (issue 14).

Builds the N-MNIST dataset of the first 400 recordings of shared/data/nmnist_small/train500.txt with
`sbc-onnx data nmnist` (as the README does), then runs `sbc-onnx compress cnn_sinabs.nir --sparsity 0.5`
with --calib-limit 25, 100 and 400, each in a fresh child process, and reads the child's peak resident set
from os.wait4 (ru_maxrss). The estimate the run prints ("expected peak memory: X MiB ...") is parsed from its
stderr. Writes benchmarks/results/memory.md: the three peaks, the estimates, the spread of the peaks
(max/min - 1, must be < 10 %) and estimate/peak (must be within 30 %).

Usage: python benchmarks/bench_memory.py [--limits 25,100,400] [--workdir DIR] [--batch-size 32]
Exit 1 if an acceptance bound is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SBC_SHARED", ROOT.parent / "shared")) / "data"
MODEL = SHARED / "nir_paper/02_cnn/cnn_sinabs.nir"
RECORDINGS = SHARED / "nmnist_small/train"
LABELS = SHARED / "nmnist_small/train500.txt"
OUT = ROOT / "benchmarks/results/memory.md"
ESTIMATE = re.compile(r"expected peak memory: ([0-9.]+) MiB \((.*)\)")
MiB = 2**20


def run(argv: list[str]) -> tuple[int, int, str, float]:
    """(exit code, peak RSS bytes, stderr, seconds) of `sbc-onnx argv` in a fresh child process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, "-m", "sbc_onnx", *argv], stdout=subprocess.DEVNULL, stderr=err,
                             env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return p.returncode, peak, text, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limits", default="25,100,400")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=None)
    a = ap.parse_args()
    limits = [int(s) for s in a.limits.split(",")]
    work = a.workdir or Path(tempfile.mkdtemp(prefix="sbc-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    n = max(limits)
    lines = LABELS.read_text().splitlines()
    header, rows = lines[0], [ln for ln in lines[1:] if ln.strip() and not ln.startswith("#")]
    if len(rows) < n:
        sys.exit(f"{LABELS} lists {len(rows)} recordings, fewer than {n}")
    labels = work / f"train{n}.txt"
    labels.write_text("\n".join([header, *rows[:n]]) + "\n")
    data = work / f"nmnist_train{n}.npz"
    if not data.exists():
        code, _, text, _ = run(["data", "nmnist", str(RECORDINGS), str(labels), "-o", str(data)])
        if code:
            sys.exit(f"sbc-onnx data nmnist failed:\n{text}")
    results = []
    for limit in limits:
        out = work / f"out{limit}.nir"
        code, peak, text, sec = run(["compress", str(MODEL), "--calib", str(data), "--calib-limit", str(limit),
                                     "-o", str(out), "--sparsity", "0.5", "--batch-size", str(a.batch_size),
                                     "--force"])
        m = ESTIMATE.search(text)
        if code or m is None:
            sys.exit(f"compress --calib-limit {limit} failed (exit {code}) or printed no estimate:\n{text}")
        results.append((limit, peak, float(m.group(1)) * MiB, m.group(2), sec))
        print(f"{limit:4d} recordings: peak {peak / MiB:.1f} MiB, estimate {float(m.group(1)):.1f} MiB "
              f"({m.group(2)}), {sec:.0f} s", flush=True)
    peaks = [r[1] for r in results]
    spread = max(peaks) / min(peaks) - 1
    ratios = [r[2] / r[1] for r in results]
    ok = spread < 0.10 and all(abs(q - 1) <= 0.30 for q in ratios)
    setup = (f"`python benchmarks/bench_memory.py --limits {a.limits}` (issue 14). Model `cnn_sinabs.nir`, "
             f"`--sparsity 0.5` (method sbc, LAMP), `--batch-size {a.batch_size}`; calibration set: the first {n} "
             f"recordings of `nmnist_small/train500.txt` (`sbc-onnx data nmnist`, {data.stat().st_size / 1e6:.1f} "
             "MB on disk), `--calib-limit` N. Each run is a fresh process; peak = its ru_maxrss from os.wait4; the "
             "estimate is the line `compress` prints before calibrating (`sbc_onnx/memory.py`).")
    md = ["# Peak memory of `compress` against the number of calibration recordings", "", setup, "",
          f"Machine: {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cores (shared).", "",
          ("| recordings | peak RSS (MiB) | printed estimate (MiB) | estimate / peak | parts of the estimate (MiB) "
           "| run (s) |"), "|---:|---:|---:|---:|---|---:|"]
    for (limit, peak, est, parts, sec), q in zip(results, ratios):
        md.append(f"| {limit} | {peak / MiB:.1f} | {est / MiB:.1f} | {q:.3f} | {parts} | {sec:.0f} |")
    verdict = "Both bounds hold." if ok else "**A bound is missed.**"
    md += ["", (f"Spread of the peaks, max/min - 1: **{spread * 100:.1f} %** (bound: < 10 %). "
                f"Estimate/peak: {min(ratios):.3f} .. {max(ratios):.3f} (bound: within 30 %). {verdict}"), ""]
    OUT.write_text("\n".join(md))
    print(f"spread {spread * 100:.1f} %, estimate/peak {min(ratios):.3f}..{max(ratios):.3f}; wrote {OUT}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
