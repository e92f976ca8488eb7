"""Does flushing every Hessian accumulator at the end of each batch (calibrate.py, issue #15: shards of whole
batches then fold the float32 blocks of one pass) slow the single-process calibration?

    PYTHONPATH=. .venv/bin/python benchmarks/bench_batch_flush.py [--samples 256] [--reps 3]

The trained SEW-ResNet (examples/models/sew_resnet_mnist.nir: T = 4, batch 32, so a dense layer gets few rows
per batch) is calibrated alternately with the per-batch flush (as shipped) and with the accumulator folding
only full blocks (the behaviour before), in the same process; prints the total and the summed per-layer
Hessian seconds of each run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mnist", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    args = ap.parse_args()

    import sbc_onnx as sbc
    from sbc_onnx.calibrate import calibrate
    from sbc_onnx.compress.hessian import HessianAccumulator

    g = sbc.load_model(ROOT / "examples" / "models" / "sew_resnet_mnist.nir")
    data = sbc.load_mnist(args.mnist, start=5000, limit=args.samples, steps=4, encoding="analog", shape=(1, 28, 28))
    walker = sbc.Walker(g, sbc.SimConfig.from_graph(g))
    real = HessianAccumulator.flush
    per_batch = {"on": True}

    def flush(self):  # off: only a full block is folded (what the accumulator did before the per-batch flush)
        if per_batch["on"] or self._fill == self.block_rows:
            real(self)

    HessianAccumulator.flush = flush
    calibrate(walker, data.take(32), batch_size=32)  # warm-up
    for _ in range(args.reps):
        for on in (True, False):
            per_batch["on"] = on
            t = time.perf_counter()
            c = calibrate(walker, data, batch_size=32)
            dt = time.perf_counter() - t
            per_batch["on"] = True
            hs = sum(lc.seconds for lc in c.layers.values())
            print(f"{'per-batch flush' if on else 'full blocks only'}: total {dt:.2f} s, Hessian seconds {hs:.2f}")


if __name__ == "__main__":
    main()
