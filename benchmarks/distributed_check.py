"""Issue #15 acceptance check: compress over Ray equals the single-process result, on cnn_sinabs (N-MNIST
recordings) and on the trained SEW-ResNet (MNIST), with sharded calibration and distributed layers.

    PYTHONPATH=. .venv/bin/python benchmarks/distributed_check.py --workers 2
    BIN=.venv/bin benchmarks/ray_cluster.sh start 6390          # a two-node loopback cluster, then
    RAY_AUTH_MODE=disabled PYTHONPATH=. .venv/bin/python benchmarks/distributed_check.py --ray-address 127.0.0.1:6390
    BIN=.venv/bin benchmarks/ray_cluster.sh stop 6390

Per model and layer: masks bitwise equal, largest weight difference relative to the layer's largest weight
(the bar: 1e-6), and the wall times of both runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def models(shared: Path, n_nmnist: int, n_mnist: int):
    import sbc_onnx as sbc
    from sbc_onnx.data import load_nmnist

    listing = Path(tempfile.mkdtemp(prefix="sbc-check-")) / "list.txt"
    lines = (shared / "nmnist_small/train500.txt").read_text().splitlines()
    listing.write_text("\n".join(lines[:n_nmnist + 1]) + "\n")
    yield ("cnn_sinabs", sbc.load_model(shared / "nir_paper/02_cnn/cnn_sinabs.nir"),
           load_nmnist(shared / "nmnist_small/train", listing), 2)
    yield ("sew_resnet_mnist", sbc.load_model(ROOT / "examples/models/sew_resnet_mnist.nir"),
           sbc.load_mnist(shared / "mnist", start=5000, limit=n_mnist, steps=4, encoding="analog", shape=(1, 28, 28)),
           8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--ray-address", default=None)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--nmnist", type=int, default=4, help="N-MNIST recordings for cnn_sinabs")
    ap.add_argument("--mnist", type=int, default=32, help="MNIST images for the SEW-ResNet")
    args = ap.parse_args()
    import sbc_onnx as sbc
    from sbc_onnx.graph import flatten

    where = {"workers": args.workers} if args.ray_address is None else {"ray_address": args.ray_address}
    worst = 0.0
    for name, g, data, batch in models(Path(args.shared), args.nmnist, args.mnist):
        kw = dict(sparsity=0.5, method="sbc", batch_size=batch, measure_damage=False)
        t0 = time.perf_counter()
        a, _ = sbc.compress(g, data, **kw)
        t1 = time.perf_counter()
        b, _ = sbc.compress(g, data, **where, **kw)
        t2 = time.perf_counter()
        print(f"{name}: single process {t1 - t0:.1f} s, {where} {t2 - t1:.1f} s")
        fa, fb = flatten(a), flatten(b)
        for n in fa.weight_nodes():
            wa, wb = np.asarray(fa.nodes[n].weight), np.asarray(fb.nodes[n].weight)
            rel = float(np.max(np.abs(wa - wb)) / max(float(np.max(np.abs(wa))), 1e-30))
            worst = max(worst, rel if np.array_equal(wa != 0, wb != 0) else np.inf)
            print(f"  {n:<16} {'x'.join(map(str, wa.shape)):<14} masks equal {np.array_equal(wa != 0, wb != 0)}, "
                  f"largest relative weight difference {rel:.1e}")
    print(f"{'PASS' if worst <= 1e-6 else 'FAIL'}: worst relative difference {worst:.1e} (masks bitwise equal: "
          f"{np.isfinite(worst)})")


if __name__ == "__main__":
    main()
