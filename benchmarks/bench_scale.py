"""ImageNet-shape SEW-ResNet18 on one machine (issue #13 scope 5): calibration, Hessians and compression per
layer under a --max-memory budget, with the peak RSS of every run (writes benchmarks/results/scale.md).

    .venv/bin/python benchmarks/bench_scale.py [--model synthetic|spikingjelly] [--image 224] [--steps 4]
        [--samples 8] [--max-memory 8GiB] [--rows 4] [--layers a,b] [--kill-at 8]
        [--jobs fast,quant,rows,fast-mem[,full-sbc][,full-obc]] [--work DIR] [--report-only] [--quick | --tiny]

The model: `--model spikingjelly` builds SpikingJelly's own `sew_resnet18(cnf='ADD', spiking_neuron=IFNode)`
(seeded random weights, batch norms with random running statistics, folded by the bridge; multi-step) and
exports it with `sbc_onnx.torch.export_module(..., framework="spikingjelly")`; `--model synthetic` builds
`sbc_onnx.synthetic.sew_resnet_graph`, a NIR graph of the same 21 weight layers and shapes (stem max pool as
a 2x2 average pool). Calibration: `--samples` random static images repeated over `--steps` steps.

Runs, each in its own process so that its peak RSS (getrusage) is its own:
  fast      `compress(method="sbc-fast", sparsity=0.5, max_memory=..., resume=DIR)`, the whole network; it is
            SIGKILLed once layer --kill-at has finished and run again on the same folder (a resume): the
            restored layers are counted and its weights compared with the in-memory run below
  fast-mem  the same without a work folder (one pass in memory if the budget allows): the reference weights
  quant     `compress(method="sbc", bits=4, ...)`: GPTQ on the SMP Hessian, the whole network
  rows      ExactOBS (`sbc` at 50 %, and `obc`'s code on the same Hessians) on --rows rows of each layer of
            --layers, with the layer's Hessian from fast's work folder; the whole layer's time is projected
            as setup + (t_rows - setup) * d_out / rows, setup = the damped inverse and damped H every row
            shares (timed on its own). obc's own Hessian (M = I) is not collected here: its cost does not
            depend on the Hessian's values, so its time is the same code on the SMP one (--row-methods).
  full-sbc  (--jobs ...,full-sbc) the real `sbc` 50 % run of the whole network: hours on a shared 2-core machine.
  full-obc  (--jobs ...,full-obc) the same with `obc` (ExactOBS on the current Hessian, M = I).
  scale-out (--jobs scale-out) issue #15: one single-process calibration, then the compression phase of `sbc`
            50 % given it, on a local Ray runtime of 1 worker and on --workers N (or the cluster at
            --ray-address, e.g. benchmarks/ray_cluster.sh's) in the same run: parallel efficiency
            t_1 / (N t_N), and whether masks are bitwise equal and weights within 1e-6 relative
            (--layers a,b: those layers only, e.g. for a short check).
--workers N / --ray-address ADDR also run the other compress jobs over Ray (distributed/).
Per layer: d_out x d_in, its forward in the calibration walk (s), its Hessian accumulation (s, rows d_in^2
flops), compression (s; flops by `sbc_onnx.compress.cost.layer_flops`), and the fraction of sgemm speed
(float32 2048^3 matmul measured in the same run, best of 3).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------------------------------------- model, data

def build_model(kind: str, image: int, steps: int, seed: int = 0, tiny: bool = False):
    """(NIR graph, SimConfig) of SEW-ResNet18 (or SEW-ResNet152: kind "sew_resnet152") at `image` x `image`."""
    from sbc_onnx.sim import SimConfig

    if kind == "synthetic":
        from sbc_onnx.synthetic import sew_resnet_graph
        small = dict(widths=(8, 16, 16, 32), classes=10) if tiny else {}
        return sew_resnet_graph(image=image, seed=seed, **small), SimConfig(dt=1.0)
    import torch
    from spikingjelly.activation_based import functional, neuron

    from sbc_onnx.bridges.spikingjelly_zoo import sew_resnet_module
    from sbc_onnx.sim.config import config_for
    from sbc_onnx.torch import export_module

    torch.manual_seed(seed)
    # SpikingJelly's own networks: sew_resnet152 is its Bottleneck variant with the real [3, 8, 36, 3] blocks
    build = sew_resnet_module().sew_resnet152 if kind == "sew_resnet152" else sew_resnet_module().sew_resnet18
    net = build(cnf="ADD", spiking_neuron=neuron.IFNode)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
    net.eval()
    functional.set_step_mode(net, "m")
    graph = export_module(net, torch.zeros(1, 3, image, image), framework="spikingjelly")
    return graph, config_for(graph)


def calibration_data(n: int, steps: int, image: int, seed: int = 1):
    from sbc_onnx.data import Dataset

    x = np.random.default_rng(seed).normal(size=(n, 1, 3, image, image)).astype(np.float32)
    return Dataset(x, np.zeros(n, np.int64), repeat_steps=steps)


def sgemm_gflops(n: int = 2048, reps: int = 3) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = a.T.copy()
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------------- jobs (child processes)

def _timed_forward(forward: dict):
    """Wrap the walker's ops of weight layers so that each one's forward seconds add up in `forward`."""
    import sbc_onnx.sim.walker as walker_mod
    from sbc_onnx.primitives import kinds, lookup

    build = walker_mod.build_op
    weights = set(kinds("weight"))

    def timed_build(name, node, cfg):
        op = build(name, node, cfg)
        prim = lookup(node)
        if prim is not None and prim.kind in weights:
            step = op.step

            def timed(x, state):
                t = time.perf_counter()
                out = step(x, state)
                forward[name] = forward.get(name, 0.0) + time.perf_counter() - t
                return out
            op.step = timed
        return op
    walker_mod.build_op = timed_build


def job(args) -> None:
    """One run in this process; its JSON result on stdout's last line."""
    import sbc_onnx as sbc
    from sbc_onnx.memory import peak_rss
    from sbc_onnx.memory_plan import step_sizes

    graph, cfg = build_model(args.model, args.image, args.steps, tiny=args.tiny)
    data = calibration_data(args.samples, args.steps, args.image)
    out: dict = {"job": args.job}
    if args.job == "rows":
        out["layers"] = rows_job(graph, cfg, args)
    elif args.job == "scale-out":
        out.update(scale_out_job(graph, cfg, data, args))
    else:
        forward: dict[str, float] = {}
        _timed_forward(forward)
        opts = {"fast": dict(method="sbc-fast", sparsity=0.5), "fast-mem": dict(method="sbc-fast", sparsity=0.5),
                "quant": dict(method="sbc", bits=4), "full-sbc": dict(method="sbc", sparsity=0.5),
                "full-obc": dict(method="obc", sparsity=0.5)}[args.job]
        resume = None if args.job == "fast-mem" else str(Path(args.work) / args.job)
        from sbc_onnx.pipeline import Plan, memory_plan
        mp = memory_plan(graph, data, Plan.build(**opts), cfg=cfg, batch_size=args.samples, max_memory=args.max_memory)
        print(mp.describe(), file=sys.stderr, flush=True)
        out["passes"] = [list(p) for p in mp.passes]
        t0 = time.perf_counter()
        new, rep = sbc.compress(graph, data, cfg=cfg, batch_size=args.samples, progress=True, measure_damage=False,
                                max_memory=args.max_memory, resume=resume, workers=args.workers,
                                ray_address=args.ray_address, **opts)
        out["seconds"] = {**rep.seconds, "wall": time.perf_counter() - t0}
        out["layers"] = [{"name": r.name, "shape": r.shape, "hessian_s": r.hessian_seconds, "comp_s": r.seconds,
                          "sparsity": r.sparsity, "objective": r.objective_after} for r in rep.layers]
        out["forward"] = forward
        walker = sbc.Walker(graph, cfg)
        _, sizes = step_sizes(walker, next(data.batches(1))[0])
        out["out_elements"] = {n: s[1] for n, s in sizes.items()}
        weights = {r.name: np.asarray(sbc.graph.flatten(new).nodes[r.name].weight) for r in rep.layers}
        np.savez(Path(args.work) / f"{args.job}_weights.npz", **{f"w{i}": weights[r.name]
                                                                  for i, r in enumerate(rep.layers)})
    out["peak_rss"] = peak_rss()
    print(json.dumps(out))


def scale_out_job(graph, cfg, data, args) -> dict:
    """The compression phase of sbc 50 % on 1 worker and on N (same calibration, same run)."""
    import sbc_onnx as sbc
    from sbc_onnx.calibrate import calibrate

    cal = calibrate(sbc.Walker(graph, cfg), data, layers=args.layers.split(",") if args.layers else None,
                    batch_size=args.samples, progress=True)
    runs, weights = {}, {}
    where = ({"ray_address": args.ray_address} if args.ray_address else {"workers": args.workers or 2})
    for label, kw in (("1", {"workers": 1}), ("N", where)):
        t0 = time.perf_counter()
        new, rep = sbc.compress(graph, data, cfg=cfg, calibration=cal, batch_size=args.samples, progress=True,
                                measure_damage=False, method="sbc", sparsity=0.5,
                                layers=args.layers.split(",") if args.layers else None, **kw)
        runs[label] = {"compression": rep.seconds["compression"], "wall": time.perf_counter() - t0,
                       "distributed": rep.distributed,
                       "layers": [{"name": r.name, "shape": r.shape, "seconds": r.seconds} for r in rep.layers]}
        fg = sbc.graph.flatten(new)
        weights[label] = [np.asarray(fg.nodes[r.name].weight) for r in rep.layers]
    n = args.workers or _cluster_cpus(args.ray_address)
    costs = runtime_costs(n, args.ray_address)
    # what a sharded calibration on n workers would send back per layer: n shards' sums, from the arrays
    from sbc_onnx.calibrate import shard_sums
    from sbc_onnx.distributed.traffic import nbytes
    sums = shard_sums(cal)["layers"]
    costs["shard_sums_by_layer"] = {name: n * nbytes(v) for name, v in sums.items()}
    same_masks = all(np.array_equal(a != 0, b != 0) for a, b in zip(weights["1"], weights["N"]))
    rel = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30)) for a, b in zip(weights["1"], weights["N"]))
    return {"runs": runs, "n": n, "where": where, "same_masks": same_masks, "max_rel_diff": rel, "costs": costs,
            "efficiency": runs["1"]["compression"] / (n * runs["N"]["compression"])}


def runtime_costs(workers: int, address: str | None, tasks: int = 400) -> dict:
    """The projection's measured inputs: the per-task overhead (empty tasks through a runtime of `workers`,
    wall x workers / tasks) and the loopback TCP bandwidth (bytes/s)."""
    import ray

    from sbc_onnx.distributed.cluster import ONE_THREAD_ENV

    kw = dict(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": ONE_THREAD_ENV})
    ray.init(address=address, **kw) if address else ray.init(address="local", num_cpus=workers, **kw)
    try:
        noop = ray.remote(num_cpus=1)(_noop)
        ray.get([noop.remote() for _ in range(4 * workers)])  # the workers started
        t0 = time.perf_counter()
        ray.get([noop.remote() for _ in range(tasks)])
        overhead = (time.perf_counter() - t0) * workers / tasks
    finally:
        ray.shutdown()
    return {"task_overhead": overhead, "bandwidth": loopback_bandwidth(), "tasks_timed": tasks}


def _noop():
    return None


def loopback_bandwidth(total: int = 1 << 29, block: int = 1 << 22) -> float:
    """Bytes/s through one TCP connection on 127.0.0.1 (best of 3)."""
    import socket
    import threading

    best = 0.0
    for _ in range(3):
        srv = socket.create_server(("127.0.0.1", 0))
        got = [0]

        def receive():
            conn, _ = srv.accept()
            buf = bytearray(block)
            with conn:
                while got[0] < total:
                    k = conn.recv_into(buf)
                    if not k:
                        break
                    got[0] += k
        th = threading.Thread(target=receive)
        th.start()
        data = b"\0" * block
        t0 = time.perf_counter()
        with socket.create_connection(srv.getsockname()) as c:
            for _ in range(total // block):
                c.sendall(data)
        th.join()
        best = max(best, got[0] / (time.perf_counter() - t0))
        srv.close()
    return best


def _cluster_cpus(address: str) -> int:
    import ray

    ray.init(address=address, include_dashboard=False)
    try:
        return int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()


def rows_job(graph, cfg, args) -> list[dict]:
    """ExactOBS on a row subset of each layer, with the Hessian spilled by the `fast` run."""
    from sbc_onnx.compress import compress_groups, get_method
    from sbc_onnx.compress.numerics import damped_hessian, damped_inverse
    from sbc_onnx.graph import flatten
    from sbc_onnx.workdir import WorkDir

    fg = flatten(graph)
    names = fg.weight_nodes()
    work = WorkDir(Path(args.work) / "fast", names)
    chosen = args.layers.split(",") if args.layers else names
    out = []
    for name in chosen:
        W = np.asarray(fg.nodes[name].weight)
        W2 = W.reshape(W.shape[0], -1).astype(np.float64)
        rows = min(args.rows, W2.shape[0])
        idx = np.random.default_rng(0).choice(W2.shape[0], rows, replace=False)
        stored, _ = work.hessian(name)
        H = stored.H
        res = {"name": name, "rows": rows, "d_out": W2.shape[0], "d_in": W2.shape[1]}
        t = time.perf_counter()
        damped_hessian(H, damped_inverse(H, 0.01)[1])  # what every row shares: computed once per layer
        res["setup"] = time.perf_counter() - t
        for method in args.row_methods.split(","):
            t = time.perf_counter()
            compress_groups(W2[idx], H, 1, int(0.5 * W2[idx].size), method=get_method(method))
            res[method] = time.perf_counter() - t
        out.append(res)
        del H
    return out


# ---------------------------------------------------------------------------------------------- driver

def run_child(args, name: str, kill_at: int | None = None) -> tuple[dict | None, list[str]]:
    """Run job `name` in a child process; with kill_at, SIGKILL it once layer kill_at+1 is reported done."""
    argv = [sys.executable, __file__, "--job", name, *args.passthrough]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # the result goes to a file, not a pipe: a whole network's JSON outgrows the pipe buffer, and the child
    # would block writing it while this process still reads its stderr
    with tempfile.TemporaryFile("w+") as result:
        p = subprocess.Popen(argv, stdout=result, stderr=subprocess.PIPE, text=True, env=env)
        lines = []
        for line in p.stderr:
            lines.append(line.rstrip())
            print(f"  [{name}] {line.rstrip()}", file=sys.stderr, flush=True)
            if kill_at is not None and line.startswith(f"compressing layer {kill_at + 1}/"):
                p.send_signal(signal.SIGKILL)
                p.wait()
                return None, lines
        if p.wait() != 0:
            raise SystemExit(f"job {name} failed ({p.returncode}): {lines[-5:]}")
        result.seek(0)
        return json.loads(result.read().strip().splitlines()[-1]), lines


def project(row: dict, method: str) -> float:
    """A whole layer's time from `rows` of its rows: the shared setup once, the rest scaled by d_out/rows."""
    if method not in row:
        return float("nan")
    setup = min(row["setup"], row[method])
    return setup + (row[method] - setup) * row["d_out"] / row["rows"]


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def table(fast: dict, quant: dict, rows: dict, sgemm: float, n_samples: int, steps: int) -> list[str]:
    from sbc_onnx.compress.cost import hessian_flops, layer_flops

    by_rows = {r["name"]: r for r in rows["layers"]} if rows else {}
    qs = {r["name"]: r for r in quant["layers"]} if quant else {}
    head = ("| layer | d_out x d_in | fwd s | H s | H Gflop | H % sgemm | sbc-fast s | % sgemm | 4-bit s | % sgemm "
            "| sbc s (rows) | sbc s proj. | sbc Gflop | % sgemm | obc s proj. |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    tot = {"fast": 0.0, "quant": 0.0, "sbc": 0.0, "obc": 0.0, "H": 0.0, "fwd": 0.0}
    for r in fast["layers"]:
        n = r["name"]
        d_out = r["shape"][0]
        d_in = int(np.prod(r["shape"][1:]))
        positions = max(1, fast["out_elements"][n] // d_out)
        hf = hessian_flops(n_samples * steps * positions, d_in)
        ff, qf = layer_flops("sbc-fast", d_out, d_in), layer_flops("sbc", d_out, d_in, prunes=False, quantizes=True)
        of = layer_flops("sbc", d_out, d_in)
        pct = lambda f, s: f"{100 * f / s / 1e9 / sgemm:.0f}" if s > 0 else "-"
        fwd = fast["forward"].get(n, 0.0)
        row = by_rows.get(n)
        q = qs[n]["comp_s"] if n in qs else float("nan")
        tot["fast"] += r["comp_s"]
        tot["quant"] += q if np.isfinite(q) else 0.0
        tot["H"] += r["hessian_s"]
        tot["fwd"] += fwd
        if row:
            proj, oproj = project(row, "sbc"), project(row, "obc")
            tot["sbc"] += proj
            tot["obc"] += oproj if np.isfinite(oproj) else 0.0
            sbc_cells = f"{row['sbc']:.2f} ({row['rows']}) | {proj:.0f} | {of / 1e9:.0f} | {pct(of, proj)} | {oproj:.0f}"
        else:
            sbc_cells = "- | - | - | - | -"
        lines.append(f"| {n} | {d_out} x {d_in} | {fwd:.1f} | {r['hessian_s']:.1f} | {hf / 1e9:.0f} | "
                     f"{pct(hf, r['hessian_s'])} | {r['comp_s']:.1f} | {pct(ff, r['comp_s'])} | {q:.1f} | "
                     f"{pct(qf, q)} | {sbc_cells} |")
    lines.append(f"| **total** | | {tot['fwd']:.0f} | {tot['H']:.0f} | | | {tot['fast']:.0f} | | {tot['quant']:.0f} | "
                 f"| | {tot['sbc']:.0f} | | | {tot['obc']:.0f} |")
    return lines, tot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["synthetic", "spikingjelly", "sew_resnet152"], default="synthetic",
                    help="sew_resnet152: SpikingJelly's SEW-ResNet152 (random weights; for the compression phase, "
                    "--jobs scale-out with --layers)")
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-memory", default="8GiB")
    ap.add_argument("--rows", type=int, default=4, help="rows per layer for the ExactOBS timing")
    ap.add_argument("--row-methods", default="sbc,obc", help="methods timed on row subsets")
    ap.add_argument("--layers", default="", help="comma-separated layers for the ExactOBS timing (default: all)")
    ap.add_argument("--kill-at", type=int, default=8, help="SIGKILL the first fast run after this layer (0-based)")
    ap.add_argument("--jobs", default="fast,quant,rows,fast-mem",
                    help="runs, in order (full-sbc / full-obc: the whole sbc / obc 50 %% compression, "
                         "hours)")
    ap.add_argument("--work", default=None, help="work folder (default: a new one under /tmp); results go there "
                    "as JSON, so --report-only can write the table from the runs that finished")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--plans", default="8GiB,2GiB,1.5GiB,1GiB",
                    help="budgets whose calibration passes the report lists (planned, not run)")
    ap.add_argument("--out", default=str(RESULTS / "scale.md"))
    ap.add_argument("--quick", action="store_true", help="64 x 64 images, 2 samples")
    ap.add_argument("--tiny", action="store_true", help="a smoke run of the script: small widths, 32 x 32")
    ap.add_argument("--workers", type=int, default=None, help="compress over a local Ray runtime of N workers")
    ap.add_argument("--ray-address", default=None, help="compress over the Ray cluster at this address")
    ap.add_argument("--speeds-from", default="", help="work folders of other scale-out runs of the same model whose "
                    "measured layers also set the whole network's per-layer speeds")
    ap.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.image, args.samples = 64, 2
    if args.tiny:
        args.image, args.samples, args.kill_at = 32, 2, 3
    if args.job:
        job(args)
        return
    import tempfile

    args.work = args.work or tempfile.mkdtemp(prefix="bench-scale-")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    args.passthrough = ["--model", args.model, "--image", str(args.image), "--steps", str(args.steps),
                        "--samples", str(args.samples), "--max-memory", args.max_memory, "--rows", str(args.rows),
                        "--row-methods", args.row_methods, "--layers", args.layers, "--work", args.work,
                        *(["--tiny"] if args.tiny else []),
                        *(["--workers", str(args.workers)] if args.workers else []),
                        *(["--ray-address", args.ray_address] if args.ray_address else [])]
    if not args.report_only:
        _save(work, "sgemm", {"gflops": sgemm_gflops()})
        print(f"work folder {args.work}", file=sys.stderr)
        for name in args.jobs.split(","):
            if name == "fast":
                t0 = time.perf_counter()
                _, lines_k = run_child(args, "fast", kill_at=args.kill_at)
                t_killed = time.perf_counter() - t0
                fast, lines = run_child(args, "fast")
                fast["killed"] = {"after_layer": args.kill_at + 1, "seconds": t_killed, "lines": lines_k,
                                  "resumed_lines": lines}
                _save(work, "fast", fast)
            else:
                _save(work, name, run_child(args, name)[0])
        _save(work, "sgemm2", {"gflops": sgemm_gflops()})
    md = report(args, work)
    Path(args.out).write_text("\n".join(md))
    print("\n".join(md))


def _save(work: Path, name: str, data: dict) -> None:
    (work / f"{name}.json").write_text(json.dumps(data))


def _load(work: Path, name: str) -> dict | None:
    p = work / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def report(args, work: Path) -> list[str]:
    """scale.md from the runs found in the work folder."""
    fast, mem, quant, rows, full, full_obc = (_load(work, n) for n in ("fast", "fast-mem", "quant", "rows", "full-sbc",
                                                                       "full-obc"))
    scale = _load(work, "scale-out")
    sgemm = max(d["gflops"] for d in (_load(work, "sgemm"), _load(work, "sgemm2")) if d)
    base = mem or fast
    md = [f"# ImageNet-shape SEW-ResNet18 under --max-memory {args.max_memory} (`benchmarks/bench_scale.py`)", "",
          f"Model: {args.model} ("
          + {"synthetic": "`sbc_onnx.synthetic.sew_resnet_graph`", "spikingjelly": "SpikingJelly sew_resnet18",
             "sew_resnet152": "SpikingJelly sew_resnet152"}[args.model]
          + f"), {args.image} x {args.image}, T = {args.steps}, {args.samples} random calibration images; sgemm "
          f"{sgemm:.1f} GFLOP/s (float32 2048^3, best of the runs before and after). The machine is shared (2 cores, "
          "other jobs running): timings are noisy.", ""]
    if fast:
        k = fast["killed"]
        lines = k["resumed_lines"]
        restored = sum(1 for ln in lines if ": restored;" in ln)
        computed = sum(1 for ln in lines if ln.startswith("compressing layer") and ": restored;" not in ln)
        plan = next((ln for ln in k["lines"] if ln.startswith("memory budget")), "-")
        passes = sum(1 for ln in k["lines"] if ln.startswith("calibration pass"))
        md += [f"- plan: {plan}; calibration pass lines printed: {passes}",
               f"- sbc-fast 50 % with a work folder: SIGKILLed once layer {k['after_layer']} was done "
               f"({k['seconds']:.0f} s), run again on the folder: {restored} layers restored, {computed} computed, "
               f"calibration {fast['seconds']['calibration']:.1f} s (every Hessian had been spilled); "
               f"peak RSS of the resumed run {gib(fast['peak_rss'])}"]
    if mem:
        same = None
        if fast:
            a, b = np.load(work / "fast_weights.npz"), np.load(work / "fast-mem_weights.npz")
            same = all(np.array_equal(a[f], b[f]) for f in b.files)
        md += [f"- sbc-fast 50 % in memory (no work folder): calibration {mem['seconds']['calibration']:.0f} s, "
               f"compression {mem['seconds']['compression']:.0f} s, peak RSS {gib(mem['peak_rss'])}"
               + (f"; weights bitwise identical to the killed-and-resumed run: {same}" if same is not None else "")]
    if quant:
        md += [f"- sbc 4 bits (GPTQ on the SMP Hessian): calibration {quant['seconds']['calibration']:.0f} s, "
               f"compression {quant['seconds']['compression']:.0f} s, peak RSS {gib(quant['peak_rss'])}"]
    if rows:
        md += [f"- ExactOBS row timing ({args.rows} rows per layer, Hessians from the sbc-fast work folder): peak "
               f"RSS {gib(rows['peak_rss'])}"]
    if scale:
        r = scale["runs"]
        md += [f"- scale-out (Ray, {scale['where']}): sbc 50 % compression phase {r['1']['compression']:.0f} s on 1 "
               f"worker, {r['N']['compression']:.0f} s on {scale['n']}: parallel efficiency "
               f"{100 * scale['efficiency']:.0f} %; masks bitwise equal: {scale['same_masks']}, largest relative "
               f"weight difference {scale['max_rel_diff']:.1e}"]
        if "costs" in scale:
            md += ["", *scale_out_tables(scale, args)]
    md += ["- the full sbc 50 % run: " + (f"{full['seconds']['wall']:.0f} s, peak RSS {gib(full['peak_rss'])}"
                                           if full else "not run (--jobs full-sbc; hours here)")]
    md += ["- the full obc 50 % run: " + (f"{full_obc['seconds']['wall']:.0f} s (calibration "
                                           f"{full_obc['seconds']['calibration']:.0f} s, compression "
                                           f"{full_obc['seconds']['compression']:.0f} s), peak RSS "
                                           f"{gib(full_obc['peak_rss'])}"
                                           if full_obc else "not run (--jobs full-obc; hours here)")]
    if base:
        body, tot = table(base, quant, rows, sgemm, args.samples, args.steps)
        md += [f"- whole network compression time: sbc-fast {tot['fast']:.0f} s (measured), 4-bit sbc "
               f"{tot['quant']:.0f} s (measured), sbc 50 % {tot['sbc']:.0f} s and obc {tot['obc']:.0f} s "
               "(projected from the row subsets)", "",
               "Per layer: fwd s = its forward in the calibration walk, H s = its Hessian accumulation (filter, "
               "unfold, syrk; rows d_in^2 flops), compression flops from `sbc_onnx.compress.cost.layer_flops`, "
               "% sgemm = achieved flop rate / sgemm rate; sbc s (rows) = ExactOBS on that many rows, proj. = "
               "setup + (t - setup) d_out / rows.", "", *body, ""]
    return md + plans(args)


MiB = 2**20
PROJECT_WORKERS = [1, 2, 8, 32, 128]


def scale_out_tables(scale: dict, args) -> list[str]:
    """Bytes through the object store per layer (the N-worker run), task seconds (the 1-worker run), the
    projection for PROJECT_WORKERS (distributed/projection.py) and, for the whole network, every layer's flops
    and projected seconds at the measured per-layer speed."""
    from sbc_onnx.distributed.projection import layer_tasks, project

    runs, costs, n = scale["runs"], scale["costs"], scale["n"]
    recN, rec1 = runs["N"]["distributed"]["layers"], runs["1"]["distributed"]["layers"]
    shapes = {x["name"]: x["shape"] for x in runs["1"]["layers"]}
    mib = lambda b: f"{b / MiB:.1f}"
    md = [f"Bytes through the object store per layer, {n} workers (MiB; counted from the arrays put and got: "
          "`CompressionReport.distributed`). put: the driver's W and H (and input norms), the H^-1 task's result, "
          "the row chunks' results, the nested masked-solve operands and results; get: each row chunk's W and "
          "H^-1, the layer task's W, H and chunk results, the solve blocks' operands, the driver's result. "
          f"Calibration: the {n} shards' Hessian sums of the layer (what a sharded calibration sends back).", "",
          "| layer | d_out x d_in | row chunks | put | get | W | H | H^-1 | chunk results | solve blocks | result "
          "| calibration shard sums |", "|" + "---|" * 12]
    for name, r in recN.items():
        b = r["bytes"]
        d_out, d_in = shapes[name][0], int(np.prod(shapes[name][1:]))
        md.append(f"| {name} | {d_out} x {d_in} | {r['chunks']} | {mib(r['put'])} | {mib(r['get'])} | "
                  f"{mib(b['put_W'])} | {mib(b['put_H'])} | {mib(b['put_inverse'])} | {mib(b['put_chunk_results'])} | "
                  f"{mib(b['put_solve_shared'] + b['get_solve_blocks'])} | {mib(b['get_result'])} | "
                  f"{mib(costs['shard_sums_by_layer'].get(name, 0))} |")
    md += ["", "Task seconds per layer (the 1-worker run, one thread per task): S = all its tasks, C = its chain "
           "(H^-1, slowest row chunk, layer task, slowest solve block).", "",
           "| layer | tasks | S s | C s | H^-1 s | chunk s (min-max) | layer task s | solve blocks |",
           "|---|---|---|---|---|---|---|---|"]
    for name, r in rec1.items():
        work, path, k = layer_tasks(r)
        sec = r["seconds"]
        ch = sec["chunks"]
        md.append(f"| {name} | {k} | {work:.1f} | {path:.1f} | {sum(sec['inverse']):.2f} | "
                  + (f"{min(ch):.2f}-{max(ch):.2f}" if ch else "-") + f" | {sec['layer_task']:.2f} | "
                  f"{len(sec['solve_blocks'])} |")
    proj = project(runs["1"]["distributed"], PROJECT_WORKERS, bandwidth=costs["bandwidth"],
                   task_overhead=costs["task_overhead"])
    measured = {1: runs["1"]["compression"], n: runs["N"]["compression"]}
    md += ["", f"Projection of this compression phase (distributed/projection.py): T(N) = max(C, S/N) + n o / N + "
           "D / B + G(N) / (N B), from the 1-worker run's task seconds; C: the longest layer chain, S: all task "
           f"seconds, n: {sum(layer_tasks(r)[2] for r in rec1.values())} tasks, o = "
           f"{1e3 * costs['task_overhead']:.1f} ms per task (measured: {costs['tasks_timed']} empty tasks on the "
           f"{n}-worker runtime, wall x {n} / tasks), D: bytes through the driver, G(N): bytes the tasks move (every get "
           f"counted as a transfer, except that a layer's H^-1 and W cross to each node once: min(row chunks, N) times), B = {costs['bandwidth'] / 1e9:.2f} GB/s (one TCP connection on loopback, "
           "measured). Measured wall times beside it where this run has them.", "",
           "| workers | projected s | bound | S/N s | C s | overhead s | transfer s | measured s | efficiency "
           "(projected) |", "|---|---|---|---|---|---|---|---|---|"]
    for p in proj:
        got = measured.get(p.workers)
        md.append(f"| {p.workers} | {p.seconds:.1f} | {p.bound} | {p.work:.1f} | {p.critical_path:.1f} | "
                  f"{p.overhead:.2f} | {p.transfer:.3f} | " + (f"{got:.1f}" if got is not None else "-")
                  + f" | {100 * proj[0].seconds / (p.workers * p.seconds):.0f} % |")
    for extra in filter(None, args.speeds_from.split(",")):  # other scale-out runs of this model: more speeds
        more = _load(Path(extra), "scale-out")["runs"]["1"]
        rec1 = {**rec1, **more["distributed"]["layers"]}
        shapes = {**shapes, **{x["name"]: x["shape"] for x in more["layers"]}}
    return md + ["", *whole_network(args, rec1, shapes)]


def whole_network(args, rec1: dict, measured_shapes: dict) -> list[str]:
    """Every weight layer of the model with its `sbc` 50 % flops (compress.cost.layer_flops) and its seconds on
    one worker projected at the speed (flop/s of S) of the measured layer nearest in d_in (log scale)."""
    from sbc_onnx.compress.cost import layer_flops
    from sbc_onnx.distributed.projection import layer_tasks
    from sbc_onnx.graph import flatten

    graph, _ = build_model(args.model, args.image, args.steps, tiny=args.tiny)
    fg = flatten(graph)
    speed, src = {}, {}
    for name, r in rec1.items():  # per d_in: the speed of the measured layer of most flops
        d_out, d_in = measured_shapes[name][0], int(np.prod(measured_shapes[name][1:]))
        f = layer_flops("sbc", d_out, d_in)
        if f > src.get(d_in, (0.0, ""))[0]:
            speed[d_in], src[d_in] = f / layer_tasks(r)[0], (f, name)
    rows, total_f, total_s = [], 0.0, 0.0
    for name in fg.weight_nodes():
        w = np.asarray(fg.nodes[name].weight)
        d_out, d_in = w.shape[0], int(np.prod(w.shape[1:]))
        f = layer_flops("sbc", d_out, d_in)
        near = min(speed, key=lambda d: abs(np.log(d / d_in)))
        sec = f / speed[near]
        total_f, total_s = total_f + f, total_s + sec
        rows.append(f"| {name} | {d_out} x {d_in} | {f / 1e9:.1f} | {src[near][1]} | {sec:.0f} |")
    return [f"Whole network ({args.model}, {len(rows)} weight layers): sbc 50 % compression {total_f:.3g} flop, "
            f"projected {total_s:.0f} s = {total_s / 3600:.1f} h on one worker (each layer at the speed of the "
            "measured layer nearest in d_in); the work term alone at N workers: "
            + ", ".join(f"{N}: {total_s / N / 3600:.2f} h" for N in PROJECT_WORKERS[1:]) + ".", "",
            "Measured speeds (S of the layer's tasks, one thread each): "
            + ", ".join(f"d_in {d} ({src[d][1]}): {speed[d] / 1e9:.1f} GFLOP/s" for d in sorted(speed)) + ".", "",
            "| layer | d_out x d_in | Gflop | speed of | projected s (1 worker) |", "|---|---|---|---|---|",
            *rows, ""]


def plans(args) -> list[str]:
    """What `memory_plan` makes of other budgets for this model and data (planned only, not run)."""
    from sbc_onnx.errors import SbcError
    from sbc_onnx.pipeline import Plan, memory_plan

    graph, cfg = build_model(args.model, args.image, args.steps, tiny=args.tiny)
    data = calibration_data(args.samples, args.steps, args.image)
    if not args.plans:
        return []
    out = ["Calibration passes `memory_plan` chooses for other budgets (sbc 50 %, batch = all samples; planned, "
           "not run):", ""]
    for b in args.plans.split(","):
        try:
            mp = memory_plan(graph, data, Plan.build(sparsity=0.5), cfg=cfg, batch_size=args.samples, max_memory=b)
            out.append(f"- {b}: {len(mp.passes)} pass(es) of {[len(p) for p in mp.passes]} layers, estimated peak "
                       f"{gib(mp.peak)}")
        except SbcError as e:
            out.append(f"- {b}: refused before any work: {e}")
    return out + [""]


if __name__ == "__main__":
    main()
