"""File sizes of compressed models (issue #12 part 4): every shipped model at 80 % sparsity (float), 4 bits, and
90 % sparsity + 4 bits, written as NIR and ONNX; sizes against the dense model in the same format, and a check
that onnxruntime gives the same outputs for the compact ONNX file as for the plain one (dense float
initializers), bit for bit, and the same output spike counts as the NumPy walker.

    PYTHONPATH=. SBC_SHARED=../shared python benchmarks/file_sizes.py [--out benchmarks/results/file_sizes.md]

cnn_sinabs is compressed with the default method (sbc) on 16 N-MNIST training recordings and checked on 20
test recordings; the other models with sbc-fast on random Bernoulli spikes (16 samples x 20 steps; file sizes do not
depend on the calibration data, only on the sparsity and bits reached) and checked on random spikes.
"dense NIR" / "dense ONNX" is the dense graph written by the same writer (NIR gzip-9; ONNX compact: a dense
model whose weights lie on an integer grid, as mnist_cubalif's 8-bit ones, is stored as integers too); "nir.write"
is the nir package's own writer on the compressed graph (gzip-4, HDF5 earliest format) and "plain ONNX" the
compressed graph with dense float initializers: the sizes before this change.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import nir
import numpy as np

from sbc_onnx.data import Dataset, load_nmnist
from sbc_onnx.graph import flatten
from sbc_onnx.io.models import load_model, save_model
from sbc_onnx.io.onnx_io import ort_session, run_onnxruntime, write_onnx
from sbc_onnx.io.sizes import file_sizes
from sbc_onnx.pipeline import Plan, compress
from sbc_onnx.sim import SimConfig, Walker

SHARED = Path(os.environ.get("SBC_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"
MODELS = {"cnn_sinabs": "nir_paper/02_cnn/cnn_sinabs.nir", "mnist_cnn_if": "sinabs_mnist/mnist_cnn_if.nir",
          "mnist_cubalif": "lava_dl_mnist/mnist_cubalif.nir", "braille": "nir_paper/03_rnn/braille_noDelay_bias_zero.nir"}
SETTINGS = {"80 % float": {"sparsity": 0.8}, "4 bits": {"bits": 4}, "90 % + 4 bits": {"sparsity": 0.9, "bits": 4}}


def data(name: str, graph) -> tuple[Dataset, np.ndarray]:
    """(calibration set, check inputs time-major)."""
    if name == "cnn_sinabs":
        calib = load_nmnist(SHARED / "nmnist_small/train", SHARED / "nmnist_small/train500.txt").take(16)
        test = load_nmnist(SHARED / "nmnist_small/test", SHARED / "nmnist_small/test100.txt").take(20)
        return calib, next(test.batches(20))[0]
    fg = flatten(graph)
    shape = tuple(int(s) for s in np.asarray(fg.nodes[fg.inputs[0]].output_type["output"]).reshape(-1))
    rng = np.random.default_rng(0)
    calib = Dataset((rng.random((16, 20) + shape) < 0.2).astype(np.uint8), np.zeros(16, int))
    return calib, (rng.random((20, 8) + shape) < 0.2).astype(np.float32)


def same_outputs(plain: Path, compact: Path, graph, cfg: SimConfig, x: np.ndarray) -> tuple[bool, str]:
    """(ORT compact == ORT plain on every output, "yes" if ORT's output spike counts equal the walker's, else
    how many of them differ)."""
    a = run_onnxruntime(ort_session(plain), x)
    b = run_onnxruntime(ort_session(compact), x)
    fg = flatten(graph)
    last = [n for n in fg.spiking() if f"{n}/count_final" in b][-1]
    counts = np.zeros_like(b[f"{last}/count_final"])

    def add(t, y):
        counts[...] += y

    Walker(graph, cfg).run({fg.inputs[0]: x}, on_output={last: add})
    diff = int(np.count_nonzero(counts != b[f"{last}/count_final"]))
    return all(np.array_equal(a[k], b[k]) for k in a), "yes" if diff == 0 else f"{diff} of {counts.size} differ"


def run(name: str, tmp: Path) -> list[str]:
    dense = load_model(SHARED / MODELS[name])
    cfg = SimConfig.from_graph(dense)
    calib, x = data(name, dense)
    rows = []
    for label, opts in SETTINGS.items():
        t0 = time.perf_counter()
        method = "sbc" if name == "cnn_sinabs" else "sbc-fast"  # the sizes depend on sparsity and bits only
        new, report = compress(dense, calib, Plan.build(method=method, **opts), cfg=cfg)
        sec = time.perf_counter() - t0
        o = file_sizes(save_model(new, tmp / f"{name}.onnx", cfg=cfg, quant=report.quant), dense, cfg)
        n = file_sizes(save_model(new, tmp / f"{name}.nir", cfg=cfg), dense, cfg)
        nir.write(str(tmp / "nirwrite.nir"), copy.deepcopy(new))
        plain = write_onnx(new, tmp / f"{name}_plain.onnx", cfg=cfg, compact=False)
        same, spikes = same_outputs(plain, tmp / f"{name}.onnx", new, cfg, x)
        enc = ", ".join(f"{w.name}:{w.encoding}" for w in o.weights)
        rows.append(f"| {name} | {label} | {report.overall_sparsity:.3f} | {n.dense_bytes / 1024:.1f} | "
                    f"{(tmp / 'nirwrite.nir').stat().st_size / 1024:.1f} | {n.bytes / 1024:.1f} | {n.ratio:.2f}x | "
                    f"{o.dense_bytes / 1024:.1f} | {plain.stat().st_size / 1024:.1f} | {o.bytes / 1024:.1f} | "
                    f"{o.ratio:.2f}x | {enc} | {'yes' if same else 'NO'} | {spikes} |")
        print(rows[-1], f"({sec:.0f} s compress)", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="write the markdown table here, after the notes the file already "
                    "has (default: stdout only)")
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    head = [("| model | setting | sparsity | dense NIR KiB | nir.write KiB | NIR KiB | NIR ratio | dense ONNX KiB | "
             "plain ONNX KiB | ONNX KiB | ONNX ratio | ONNX weight encodings | ORT compact == plain | "
             "ORT spikes == walker |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += run(name, Path(tmp))
    text = "\n".join(head + rows)
    print(text)
    if args.out:  # replace the table, keep the notes above it
        out = Path(args.out)
        notes = out.read_text().split("| model |")[0] if out.exists() else ""
        out.write_text(notes + text + "\n")


if __name__ == "__main__":
    main()
