"""Simulation throughput: NumPy walker vs onnxruntime on cnn_sinabs.nir, N-MNIST test100.

    python benchmarks/bench_sim.py [--data /tmp/t100.npz] [--batch 100] [--single 20] [--threads 0]

Prints samples/s batched (one run over --batch samples) and one sample at a time (first --single samples),
and checks that both engines give the same output spike counts. Build the data with
`sbc-onnx data nmnist ../shared/data/nmnist_small/test ../shared/data/nmnist_small/test100.txt -o /tmp/t100.npz`
(without --data the N-MNIST files are binned on the fly)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from sbc_onnx.data import load_dataset, load_nmnist
from sbc_onnx.io.nir_io import read_nir
from sbc_onnx.io.onnx_io import ort_session, run_onnxruntime, write_onnx
from sbc_onnx.sim import SimConfig, Walker

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--single", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    a = ap.parse_args()
    ds = load_dataset(a.data) if a.data else load_nmnist(SHARED / "nmnist_small/test",
                                                          SHARED / "nmnist_small/test100.txt")
    g = read_nir(SHARED / "nir_paper/02_cnn/cnn_sinabs.nir")
    cfg = SimConfig(dt=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_onnx(g, Path(tmp) / "cnn.onnx", cfg=cfg)
        sess = ort_session(path, threads=a.threads or None)
        walker = Walker(g, cfg)
        x, _ = next(ds.batches(a.batch))
        n = x.shape[1]
        print(f"cnn_sinabs, {n} samples x {x.shape[0]} steps")
        rows = []
        t = time.perf_counter()
        w = walker.run(x, record_outputs=False).counts["12"]
        rows.append(("numpy walker", "batched", n / (time.perf_counter() - t)))
        t = time.perf_counter()
        o = run_onnxruntime(sess, {"input": x}, ["12/count_final"])["12/count_final"]
        rows.append(("onnxruntime", "batched", n / (time.perf_counter() - t)))
        print(f"output spike counts identical: {np.array_equal(w, o)}")
        k = min(a.single, n)
        t = time.perf_counter()
        for i in range(k):
            walker.run(x[:, i : i + 1], record_outputs=False)
        rows.append(("numpy walker", "1 at a time", k / (time.perf_counter() - t)))
        t = time.perf_counter()
        for i in range(k):
            run_onnxruntime(sess, {"input": np.ascontiguousarray(x[:, i : i + 1])}, ["12/count_final"])
        rows.append(("onnxruntime", "1 at a time", k / (time.perf_counter() - t)))
    for eng, mode, sps in rows:
        print(f"{eng:<14} {mode:<12} {sps:8.1f} samples/s")


if __name__ == "__main__":
    main()
