"""Kernels against this machine's floors, each floor measured in the same run (issues #13 and #15).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_kernels.py [--reps 3] [--obs-rows 2] [--layer-rows 100]
                                                              [--out benchmarks/results/kernels.md]

1. SMP Hessian of a Linear 2312 -> 256 layer feeding LIF neurons (tau = 2 dt, Euler: beta = 0.5), T = 100,
   B = 16, Bernoulli(0.1) input spikes: the calibration observer's own time (Calibration layer seconds:
   filtering, buffering, syrk blocks, the last block's fold) against the floor, the same filtered rows in
   one float32 syrk call (NumPy Z^T Z); one float64 call is shown too.
2. GPTQ 4-bit (GPTQ order) on that layer's H against the floor: one float64 Cholesky of H (dpotrf,
   measured; at 2 threads OpenBLAS's own threaded dpotrf) + the sweep's d_out d_in^2 flop at the measured
   sgemm speed.  The last column times the factor stage as it was in float64 (potrf + trtri for the
   order's diag(H^-1), then the potrf of the permuted H); quantize_gptq now runs both factorizations in
   float32 on fixed pieces that use every core (docs/sbc_method.md §A.3).
3. ExactOBS rows at d_in = 4608 (a SEW-ResNet18 layer's width): trace and compensation per row (50 %)
   against d_in^3 flop at sgemm speed, one thread.
4. ExactOBS on a 2048 -> 500 layer (50 %) at 1 and 2 threads (numba rows and BLAS), --layer-rows rows of
   it (times scaled to 500 rows when fewer); the results must be identical.
5. A tiny 256 -> 10 layer (ExactOBS 50 % + GPTQ 4 bits) at 1 and 2 threads with the size thresholds of
   compress/threads.py, and with the thresholds off (threads forced), plus the row-parallel trace forced
   to 1 or 2 threads at a few sizes: the measurement behind threads.PARALLEL_MIN_FLOP.

"1 thread" / "2 threads" set both numba's thread count and the BLAS libraries' (threadpoolctl). The floors
use them; compress/ runs every BLAS call on one thread (OpenBLAS's threaded calls round differently with
the thread count, compress/threads.py), so the kernels' extra cores come only from the row-parallel
ExactOBS kernels (numba) and from the fixed pieces run on Python threads (threads.parallel_map /
run_graph).  The machine is shared: each figure is the minimum of --reps runs, the kernel and its floor
alternate inside the same loop (sections 1-2: each timed call after a short pause, `settle`), and the load
average is printed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numba
import numpy as np
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

import sbc_onnx as sbc
from sbc_onnx.calibrate import calibrate
from sbc_onnx.compress import damped_inverse, make_grid, obs_trace, prune_exact_obs, quantize_gptq, upper_inverse_factor
from sbc_onnx.compress import threads as th
from sbc_onnx.compress.hessian import filter_time
from sbc_onnx.compress.numerics import damped_cholesky, damped_hessian
from sbc_onnx.synthetic import linear_lif_graph
from sbc_onnx.data import Dataset

OUT = Path(__file__).parent / "results" / "kernels.md"
lines: list[str] = []


def say(s: str = "") -> None:
    print(s, flush=True)
    lines.append(s)


class threads:
    """numba and BLAS thread counts for a block of measurements."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.old = numba.get_num_threads()
        numba.set_num_threads(self.n)
        self.lim = threadpool_limits(self.n, user_api="blas")
        return self

    def __exit__(self, *exc):
        self.lim.restore_original_limits()
        numba.set_num_threads(self.old)


def settle(seconds: float = 0.25) -> None:
    """A pause before a timed call of sections 1-2: after a threaded BLAS call (the floors, at 2 threads)
    OpenBLAS's idle worker threads busy-wait for a while and take a core from whatever runs next; the pause
    lets them sleep, so that neither the kernel nor its floor pays for the other's threads."""
    time.sleep(seconds)


def timed(f):
    t0 = time.perf_counter()
    r = f()
    return time.perf_counter() - t0, r


def sgemm_speed(n=2048, reps=3):
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((2, n, n)).astype(np.float32)
    return 2 * n**3 / min(timed(lambda: A @ B)[0] for _ in range(reps))


def load() -> str:
    return "load average %.1f / %.1f / %.1f (1 / 5 / 15 min)" % os.getloadavg()


def hessian_layer(rng, d=2312, d_out=256, T=100, B=16):
    g = linear_lif_graph(rng, d, d_out)
    ds = Dataset((rng.random((B, T, d)) < 0.1).astype(np.uint8), np.zeros(B, int))
    return sbc.Walker(g, sbc.SimConfig(dt=1.0, dtype="float32")), ds


def section_hessian_gptq(reps):
    rng = np.random.default_rng(0)
    walker, ds = hessian_layer(rng)
    d, d_out, B = 2312, 256, ds.n
    say("## 1-2. Linear 2312 -> 256, T = 100, B = 16, Bernoulli(0.1), LIF tau = 2 dt (beta 0.5)\n")
    say("| threads | SMP Hessian (observer) s | floor: one float32 syrk s | ratio | one float64 syrk s | "
        "GPTQ 4-bit s (factor / sweep) | floor: dpotrf + sweep flop at sgemm s | ratio | "
        "factor stage with a float64 order (potrf + trtri + potrf) s |")
    say("|---|---|---|---|---|---|---|---|---|")
    W = rng.normal(0, 0.05, (d_out, d))
    grid = make_grid(W, 4)
    for n in (1, 2):
        with threads(n):
            obs, f32, f64, gq, split, chol, old, sg = [], [], [], [], [], [], [], []
            for _ in range(reps):
                settle()
                cal = calibrate(walker, ds, batch_size=B)
                lc = cal.layers["fc"]
                obs.append(lc.seconds)
                X = ds.x.astype(np.float32).transpose(1, 0, 2)
                Z = filter_time(X, lc.betas).reshape(-1, d).astype(np.float32)
                settle()
                t, S = timed(lambda: Z.T @ Z)
                f32.append(t)
                Zd = Z.astype(np.float64)
                settle()
                f64.append(timed(lambda: Zd.T @ Zd)[0])
                H = lc.H
                settle()
                t, q = timed(lambda: quantize_gptq(W, H, grid))
                gq.append(t)
                split.append((q.seconds["factor"], q.seconds["sweep"]))
                Hd, _ = damped_hessian(H, 0.01)
                settle()
                chol.append(timed(lambda: lapack.dpotrf(Hd, lower=1, clean=0))[0])
                settle()
                old.append(timed(lambda: (upper_inverse_factor(H), damped_cholesky(H, reverse=True)))[0])
                settle()
                sg.append(sgemm_speed(reps=1))
            rel = np.abs(2.0 / B * S.astype(np.float64) - H).max() / np.abs(H).max()
            sweep_floor = d_out * d * d / max(sg)
            fl = min(chol) + sweep_floor
            sp = min(split)
            say(f"| {n} | {min(obs):.3f} | {min(f32):.3f} | {min(obs) / min(f32):.2f} | {min(f64):.3f} | "
                f"{min(gq):.3f} ({sp[0]:.3f} / {sp[1]:.3f}) | {min(chol):.3f} + {sweep_floor:.3f} = {fl:.3f} | "
                f"{min(gq) / fl:.2f} | {min(old):.3f} |")
    say(f"\nH from the observer vs the one-call float32 syrk: max relative difference {rel:.1e}. "
        f"sgemm speed (best of runs): {max(sg) / 1e9:.1f} GFLOP/s at the last thread count.\n")


def spike_hessian(rng, d, rows):
    Z = (rng.random((rows, d)) < 0.1).astype(np.float32)
    Z = filter_time(Z.reshape(rows // 50, 50, d).transpose(1, 0, 2), (0.5,)).reshape(-1, d).astype(np.float32)
    return 2.0 / rows * (Z.T @ Z).astype(np.float64)


def section_obs_rows(rows, reps):
    d = 4608
    rng = np.random.default_rng(1)
    say(f"## 3. ExactOBS rows at d_in = {d} (50 %), 1 thread\n")
    H = spike_hessian(rng, d, 6000)
    W = rng.standard_normal((rows, d))
    with threads(1):
        sg = max(sgemm_speed() for _ in range(2))
        tf, (Hinv, _, _) = timed(lambda: damped_inverse(H))
        tr = []
        for _ in range(max(1, reps - 1)):
            tr.append(timed(lambda: obs_trace(W, Hinv))[0])
        t, r = timed(lambda: prune_exact_obs(W, H, W.size // 2))
        sg = max(sg, sgemm_speed())
    trace = min(tr + [r.seconds["trace"]]) / rows
    comp = r.seconds["compensate"] / rows
    ref = d**3 / sg
    say(f"sgemm {sg / 1e9:.1f} GFLOP/s (1 thread); reference d_in^3 / R_sgemm = {ref:.2f} s per row.\n")
    say("| per row | seconds | / reference |")
    say("|---|---|---|")
    say(f"| trace | {trace:.2f} | {trace / ref:.2f} |")
    say(f"| compensation (masked solve, 50 %) | {comp:.2f} | {comp / ref:.2f} |")
    say(f"| factorization of H (damped inverse, {tf:.1f} s once per layer) over 512 rows | {tf / 512:.3f} | "
        f"{tf / 512 / ref:.3f} |")
    tot = trace + comp + tf / 512
    say(f"| **total** | **{tot:.2f}** | **{tot / ref:.2f}** (target <= 3) |")
    say(f"\n{rows} rows timed; the trace is the best of {len(tr) + 1} runs.\n")


def section_layer(rows, reps):
    d, d_out = 2048, 500
    rng = np.random.default_rng(2)
    say("## 4. ExactOBS 2048 -> 500 (50 %) at 1 and 2 threads\n")
    H = spike_hessian(rng, d, 6000)
    W = rng.standard_normal((d_out, d))[:rows]
    times: dict[int, list] = {1: [], 2: []}
    res = {}
    for _ in range(reps):
        for n in (1, 2):
            with threads(n):
                t, r = timed(lambda: prune_exact_obs(W, H, W.size // 2))
            times[n].append((t, r.seconds))
            res[n] = r
    same = np.array_equal(res[1].mask, res[2].mask) and np.array_equal(res[1].W, res[2].W) \
        and np.array_equal(res[1].scores, res[2].scores)
    scale = d_out / rows
    say(f"{rows} of the 500 rows timed{f', times scaled by {scale:g} (factorization included once)' if rows < d_out else ''}; "
        f"best of {reps} runs each, 1 and 2 threads alternating.\n")
    say("| threads | seconds (500 rows) | factor / trace / compensate s | speed-up |")
    say("|---|---|---|---|")
    best = {}
    for n in (1, 2):
        t, s = min(times[n], key=lambda x: x[0])
        best[n] = s["factor"] + (t - s["factor"]) * scale
        say(f"| {n} | {best[n]:.1f} | {s['factor']:.2f} / {s['trace'] * scale:.1f} / {s['compensate'] * scale:.1f} | "
            f"{best[1] / best[n]:.2f}x |")
    say(f"\nSame result at 1 and 2 threads (masks, weights and trace scores bitwise): {same}.\n")


def section_tiny(reps):
    rng = np.random.default_rng(3)
    d, d_out = 256, 10
    H = spike_hessian(rng, d, 2000)
    W = rng.standard_normal((d_out, d))
    g = make_grid(W, 4)
    say("## 5. Tiny 256 -> 10 layer (ExactOBS 50 % + GPTQ 4 bits), and where row threads pay\n")
    run = lambda: (prune_exact_obs(W, H, W.size // 2), quantize_gptq(W, H, g))
    rows = []
    for label, forced in (("thresholds of compress/threads.py", False), ("thresholds off (threads forced)", True)):
        old = th.PARALLEL_MIN_FLOP
        if forced:
            th.PARALLEL_MIN_FLOP = 0
        try:
            t = {}
            for n in (1, 2):
                with threads(n):
                    run()
                    t[n] = min(timed(run)[0] for _ in range(reps))
        finally:
            th.PARALLEL_MIN_FLOP = old
        rows.append(f"| {label} | {t[1] * 1e3:.1f} | {t[2] * 1e3:.1f} | {t[1] / t[2]:.2f}x |")
    say("| 256 -> 10 | 1 thread ms | 2 threads ms | speed-up |")
    say("|---|---|---|---|")
    for r in rows:
        say(r)
    say("\nRow-parallel trace alone, threads forced (total flop = rows d^3):\n")
    say("| d | rows | rows d^3 flop | 1 thread ms | 2 threads ms | speed-up |")
    say("|---|---|---|---|---|---|")
    old = th.PARALLEL_MIN_FLOP
    th.PARALLEL_MIN_FLOP = 0
    try:
        for dd, nr in ((64, 4), (128, 8), (256, 4), (256, 10), (256, 64), (512, 8), (512, 32)):
            Hs = spike_hessian(rng, dd, 2000)
            Hinv = damped_inverse(Hs)[0]
            Ws = rng.standard_normal((nr, dd))
            t = {}
            for n in (1, 2):
                with threads(n):
                    obs_trace(Ws, Hinv)
                    t[n] = min(timed(lambda: obs_trace(Ws, Hinv))[0] for _ in range(reps))
            say(f"| {dd} | {nr} | {nr * dd**3:.1e} | {t[1] * 1e3:.2f} | {t[2] * 1e3:.2f} | {t[1] / t[2]:.2f}x |")
    finally:
        th.PARALLEL_MIN_FLOP = old
    say(f"\nThreshold used: threads.PARALLEL_MIN_FLOP = {th.PARALLEL_MIN_FLOP:.0e} (row-parallel kernels; "
        "the factorizations always run on one BLAS thread, for identical results).\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--obs-rows", type=int, default=2, help="rows timed at d_in = 4608")
    ap.add_argument("--layer-rows", type=int, default=100, help="rows of the 2048 -> 500 layer timed")
    ap.add_argument("--only", default="12345", help="sections to run, e.g. 15")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    t0 = time.perf_counter()
    prune_exact_obs(np.ones((2, 8)), np.eye(8) + 0.1, 8)  # numba kernels loaded (or compiled) before timing
    with threads(2):
        th.PARALLEL_MIN_FLOP, old = 0, th.PARALLEL_MIN_FLOP
        prune_exact_obs(np.ones((2, 8)), np.eye(8) + 0.1, 8)  # ... and their parallel twins
        th.PARALLEL_MIN_FLOP = old
    say("# Kernels against this machine's floors\n")
    say(f"Command: `PYTHONPATH=. .venv/bin/python benchmarks/bench_kernels.py --reps {a.reps} --obs-rows "
        f"{a.obs_rows} --layer-rows {a.layer_rows}`; {os.cpu_count()} cores; at start: {load()}. "
        f"Kernels loaded in {time.perf_counter() - t0:.1f} s.\n")
    if "1" in a.only or "2" in a.only:
        section_hessian_gptq(a.reps)
    if "3" in a.only:
        section_obs_rows(a.obs_rows, a.reps)
    if "4" in a.only:
        section_layer(a.layer_rows, max(2, a.reps - 1))
    if "5" in a.only:
        section_tiny(max(3, a.reps))
    say(f"At the end: {load()}; {time.perf_counter() - t0:.0f} s in all.")
    a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
