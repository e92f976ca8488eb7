"""Train a small SEW-ResNet on MNIST with SpikingJelly (issue 13, scope 3), then export and check it.

Network (SpikingJelly's own blocks, multi-step mode, T = 4, direct encoding, no max pooling so that NIR
can hold it):

    stem    layer.Conv2d(1, W, 3, stride=2, padding=1, bias=False) + layer.BatchNorm2d + IFNode -> 14 x 14
    stage 1 sew_resnet.BasicBlock(W, W)                       (cnf='ADD'), 14 x 14
    stage 2 sew_resnet.BasicBlock(W, 2W, stride 2, conv1x1 + BN downsample), 7 x 7
    stage 3 sew_resnet.BasicBlock(2W, 4W, stride 2, conv1x1 + BN downsample), 4 x 4
    head    layer.AdaptiveAvgPool2d(1), layer.Flatten, layer.Linear(4W, 10)  (no neuron after it)

The stride-2 stem (in place of ResNet's stride-2 max pool, which NIR cannot hold) keeps the training
within the CPU budget of the issue on this shared 2-core machine.

Neurons: `neuron.IFNode(v_reset=0.0)` (SpikingJelly's default: hard reset to zero, which NIR's IF holds in
its own v_reset field), v_threshold 1, SpikingJelly's default surrogate (Sigmoid). The class is the
readout summed over the T steps; the loss is cross-entropy on that sum. Input: MNIST exactly as
`sbc-onnx data mnist DIR --encoding analog --steps 4` writes it (pixel/255, shape (1, 28, 28), the same
frame at every step), read with the same reader (`sbc_onnx.data.load_mnist`); no input normalization.

Data split (the shared MNIST is the 10k test set): training on images 2000-4999 and 6000-9999 only;
0-1999 are the evaluation images, 5000-5999 the calibration pool of benchmarks/accuracy.py.

Stages
    python benchmarks/train_sew_resnet.py            train (seeded), save the state_dict, print
                                                     SpikingJelly's accuracy on images 0-1999
    python benchmarks/train_sew_resnet.py --export   load the saved state_dict, export through the
                                                     SpikingJelly bridge to examples/models/sew_resnet_mnist.nir,
                                                     print the accuracy in SpikingJelly, the project's simulator
                                                     and onnxruntime on images 0-1999, and write
                                                     benchmarks/results/sew_resnet_mnist.md

The state_dict goes to $XDG_CACHE_HOME/sbc-onnx/sew_resnet_mnist.pt (else ~/.cache/sbc-onnx/) and, when
it is under 1 MB, to benchmarks/results/sew_resnet_mnist.pt; --export reads the results copy if the
cache has none. Training records its recipe and figures in benchmarks/results/sew_resnet_mnist_train.json,
which --export folds into the markdown report.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("SBC_SHARED", ROOT.parent / "shared"))
MNIST = SHARED / "data" / "mnist"
RES = ROOT / "benchmarks" / "results"
MODEL_OUT = ROOT / "examples" / "models" / "sew_resnet_mnist.nir"
TRAIN_JSON = RES / "sew_resnet_mnist_train.json"
REPORT = RES / "sew_resnet_mnist.md"
RESULTS_PT = RES / "sew_resnet_mnist.pt"

T = 4
N_CLASSES = 10
TRAIN_RANGES = ((2000, 5000), (6000, 10000))  # [start, stop) of MNIST test images used for training
EVAL_START, EVAL_N = 0, 2000

RECIPE = dict(width=16, epochs=6, batch_size=64, threads=1, lr=2e-3, weight_decay=0.0, seed=0, T=T,
              neuron="spikingjelly.activation_based.neuron.IFNode(v_reset=0.0, v_threshold=1.0), default "
                     "surrogate (Sigmoid)",
              schedule="Adam, cosine annealing of the learning rate to 0 over all steps",
              loss="cross-entropy on the readout summed over T",
              input="MNIST analog (pixel/255 every step, shape (1, 28, 28)), no normalization",
              train_images="MNIST test 2000-4999 and 6000-9999 (7000 images), reshuffled every epoch (numpy seed)")


def versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "spikingjelly", "numpy", "nir", "onnxruntime")}


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sbc-onnx" / "sew_resnet_mnist.pt"


# ------------------------------------------------------------------------------------------------ model
def build(width: int):
    """The SEW-ResNet above, in multi-step mode."""
    from spikingjelly.activation_based import functional, layer, neuron
    from torch import nn

    from sbc_onnx.bridges.spikingjelly_zoo import sew_resnet_module

    block = sew_resnet_module().BasicBlock

    def sn():
        return neuron.IFNode(v_reset=0.0)

    def down(cin, cout):
        return nn.Sequential(layer.Conv2d(cin, cout, 1, stride=2, bias=False), layer.BatchNorm2d(cout))

    w = width
    net = nn.Sequential(
        layer.Conv2d(1, w, 3, stride=2, padding=1, bias=False), layer.BatchNorm2d(w), sn(),
        block(w, w, cnf="ADD", spiking_neuron=neuron.IFNode, v_reset=0.0),
        block(w, 2 * w, stride=2, downsample=down(w, 2 * w), cnf="ADD", spiking_neuron=neuron.IFNode, v_reset=0.0),
        block(2 * w, 4 * w, stride=2, downsample=down(2 * w, 4 * w), cnf="ADD", spiking_neuron=neuron.IFNode,
              v_reset=0.0),
        layer.AdaptiveAvgPool2d((1, 1)), layer.Flatten(), layer.Linear(4 * w, N_CLASSES),
    )
    functional.set_step_mode(net, "m")
    return net


def frames(ds):
    """(N, 1, 28, 28) float32 frames of an analog MNIST Dataset: step 0 of what its batches feed the
    simulator (every step carries the same frame)."""
    assert ds.steps == T
    return np.concatenate([x_tb[0] for x_tb, _ in ds.batches(500)])


def mnist(start: int, n: int):
    from sbc_onnx.data import load_mnist

    return load_mnist(MNIST, steps=T, encoding="analog", start=start, limit=n, shape=(1, 28, 28))


def sj_logits(net, x, batch_size=250):
    """SpikingJelly's forward pass from rest: the readout summed over T, (N, 10) numpy."""
    import torch
    from spikingjelly.activation_based import functional

    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[s:s + batch_size])
            functional.reset_net(net)
            out.append(net(xb.unsqueeze(0).repeat(T, 1, 1, 1, 1)).sum(0).numpy())
    functional.reset_net(net)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------ train
def train(args) -> None:
    import torch
    import torch.nn.functional as F
    from spikingjelly.activation_based import functional

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rec = dict(RECIPE, threads=args.threads, width=args.width, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
               seed=args.seed)

    parts = [mnist(a, b - a) for a, b in TRAIN_RANGES]
    x_tr = np.concatenate([frames(p) for p in parts])
    y_tr = np.concatenate([p.y for p in parts])
    ev = mnist(EVAL_START, EVAL_N)
    x_ev, y_ev = frames(ev), ev.y
    if args.limit:
        x_tr, y_tr = x_tr[:args.limit], y_tr[:args.limit]
    print(f"training on {len(x_tr)} images, evaluation on {len(x_ev)}; recipe {json.dumps(rec)}", flush=True)

    net = build(args.width)
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, weight_decay=rec["weight_decay"])
    steps_per_epoch = -(-len(x_tr) // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
    rng = np.random.default_rng(args.seed)
    xt, yt = torch.as_tensor(x_tr), torch.as_tensor(y_tr)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    history = []
    for ep in range(args.epochs):
        net.train()
        order = rng.permutation(len(x_tr))
        loss_sum, correct = 0.0, 0
        for s in range(0, len(order), args.batch_size):
            idx = torch.as_tensor(order[s:s + args.batch_size])
            xb, yb = xt[idx], yt[idx]
            functional.reset_net(net)
            logits = net(xb.unsqueeze(0).repeat(T, 1, 1, 1, 1)).sum(0)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        functional.reset_net(net)
        # no per-epoch evaluation: the evaluation images would cost a third of an epoch each time
        row = dict(epoch=ep + 1, loss=loss_sum / len(order), train_acc=correct / len(order),
                   wall_s=round(time.perf_counter() - wall0, 1), cpu_s=round(time.process_time() - cpu0, 1))
        history.append(row)
        print(f"epoch {ep + 1}/{args.epochs}: loss {row['loss']:.4f}, train acc {100 * row['train_acc']:.2f} % "
              f"(BN in train mode); wall {row['wall_s']:.0f} s, CPU {row['cpu_s']:.0f} s", flush=True)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    net.eval()
    acc = float(np.mean(sj_logits(net, x_ev).argmax(1) == y_ev))
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    path = Path(args.out) if args.out else cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    size = path.stat().st_size
    print(f"saved {path} ({size} bytes)")
    if not args.out and not args.limit and size < 1_000_000:
        RES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, RESULTS_PT)
        print(f"copied to {RESULTS_PT.relative_to(ROOT)}")
    print(f"SpikingJelly accuracy on MNIST test 0-1999 (BN eval): {100 * acc:.2f} %")
    print(f"training time: wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min (process); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; {n_params} parameters")
    if not args.out and not args.limit:
        rec.update(parameters=n_params, train_wall_s=round(wall, 1), train_cpu_s=round(cpu, 1),
                   sj_eval_acc=acc, history=history, state_dict_bytes=size,
                   versions=versions(),
                   command="python benchmarks/train_sew_resnet.py", load=os.getloadavg()[0])
        TRAIN_JSON.write_text(json.dumps(rec, indent=1) + "\n")
        print(f"wrote {TRAIN_JSON.relative_to(ROOT)}")


# ------------------------------------------------------------------------------------------------ export
def time_sum_readout(graph):
    """The graph with an integrator (nir.I, r = 1: v += x per step) between the readout layer and the output,
    unless one is there already: the trained network's class is its Linear readout summed over the T steps
    (the training loop sums; no SpikingJelly module does), and the `potential` readout of the project's
    simulator and onnxruntime reads the integrator's value after the last step, i.e. that sum."""
    import nir

    outs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
    if len(outs) != 1:
        raise SystemExit(f"the exported graph has {len(outs)} outputs; expected one")
    out = outs[0]
    srcs = [a for a, b in graph.edges if b == out]
    if len(srcs) != 1:
        raise SystemExit(f"output {out!r} has {len(srcs)} sources; expected the Linear readout")
    src = graph.nodes[srcs[0]]
    if isinstance(src, nir.I):
        return graph
    if not isinstance(src, (nir.Affine, nir.Linear)):
        raise SystemExit(f"output {out!r} is fed by {type(src).__name__} {srcs[0]!r}; expected the Linear readout")
    name = "readout_sum"
    assert name not in graph.nodes
    nodes = dict(graph.nodes)
    nodes[name] = nir.I(r=np.ones(N_CLASSES, dtype=np.float32))
    edges = [e for e in graph.edges if e != (srcs[0], out)] + [(srcs[0], name), (name, out)]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(graph.metadata or {}))


def load_state(args):
    import torch

    cands = [Path(args.state)] if args.state else [cache_path(), RESULTS_PT]
    for c in cands:
        if c.is_file():
            return torch.load(c, map_location="cpu", weights_only=True), c
    raise SystemExit(f"no trained state_dict at {' or '.join(map(str, cands))}: train first")


def export(args) -> None:
    import torch

    import sbc_onnx as sbc
    from sbc_onnx.io.onnx_io import evaluate_onnxruntime
    from sbc_onnx.torch import export_module

    torch.set_num_threads(args.threads)
    state, src = load_state(args)
    width = int(state["0.weight"].shape[0])
    net = build(width)
    net.load_state_dict(state)
    net.eval()
    ev = mnist(EVAL_START, EVAL_N)
    x_ev = frames(ev)
    t0 = time.perf_counter()
    logits_sj = sj_logits(net, x_ev)
    pred_sj = logits_sj.argmax(1)
    acc_sj = float(np.mean(pred_sj == ev.y))
    sj_s = time.perf_counter() - t0
    print(f"loaded {src}; SpikingJelly: accuracy {100 * acc_sj:.2f} % on MNIST test 0-1999 ({sj_s:.0f} s)", flush=True)

    graph = time_sum_readout(export_module(net, torch.as_tensor(x_ev[:1]), framework="spikingjelly"))
    cfg = sbc.SimConfig.from_graph(graph)  # the settings the bridge recorded for SpikingJelly's neurons
    out = Path(args.model_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sbc.save_model(graph, out, cfg=cfg)
    size = out.stat().st_size
    print(f"wrote {out} ({size} bytes); settings {cfg}")
    if size > 2_000_000:
        raise SystemExit(f"{out} is {size} bytes, over the 2 MB the repository takes")
    graph = sbc.load_model(out)  # evaluate what was written
    cfg = sbc.SimConfig.from_graph(graph)

    t0 = time.perf_counter()
    r_sim = sbc.evaluate(graph, ev, cfg, readout="potential", batch_size=250)
    sim_s = time.perf_counter() - t0
    print(f"project simulator: {r_sim.line()} ({sim_s:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "sew_resnet_mnist.onnx"
        sbc.save_model(graph, onnx_path, cfg=cfg)
        t0 = time.perf_counter()
        r_ort = evaluate_onnxruntime(onnx_path, ev, readout="potential", batch_size=250)
        ort_s = time.perf_counter() - t0
    print(f"onnxruntime: {r_ort.line()} ({ort_s:.0f} s)", flush=True)
    agree_sim = float(np.mean(r_sim.predictions == pred_sj))
    agree_ort = float(np.mean(r_ort.predictions == pred_sj))
    accs = {"SpikingJelly": acc_sj, "project simulator": r_sim.accuracy, "onnxruntime": r_ort.accuracy}
    spread = 100 * (max(accs.values()) - min(accs.values()))
    print(f"predictions equal to SpikingJelly's: simulator {100 * agree_sim:.2f} %, onnxruntime "
          f"{100 * agree_ort:.2f} %; accuracy spread {spread:.2f} points (issue 13 asks <= 0.5)")
    write_report(dict(accs=accs, agree_sim=agree_sim, agree_ort=agree_ort, spread=spread, size=size, cfg=str(cfg),
                      seconds={"SpikingJelly": sj_s, "project simulator": sim_s, "onnxruntime": ort_s},
                      rates=r_sim.firing_rates, state=str(src.name), model=out), Path(args.report))
    if spread > 0.5:
        raise SystemExit("the three engines disagree by more than 0.5 point (issue 13)")


def write_report(x: dict, path: Path) -> None:
    rec = json.loads(TRAIN_JSON.read_text()) if TRAIN_JSON.exists() else None
    model = x["model"]
    shown = model.relative_to(ROOT) if model.is_relative_to(ROOT) else model
    L = ["# SEW-ResNet on MNIST (SpikingJelly, IF, ADD, T = 4)", "",
         "Generated by `benchmarks/train_sew_resnet.py` (training) and `--export` (the rest); nothing here is typed "
         "by hand.", "", "## Network and recipe", ""]
    L += ["```", (__doc__ or "").split("\n\n", 1)[1].split("Stages")[0].strip(), "```", ""]
    if rec:
        L += [f"- {k}: {rec[k]}" for k in ("width", "parameters", "epochs", "batch_size", "lr", "schedule", "loss",
                                           "neuron", "input", "train_images", "seed", "threads", "versions")
              if k in rec]
        L += [f"- command: `{rec['command']}`", "",
              f"Training time: wall {rec['train_wall_s'] / 60:.1f} min, CPU {rec['train_cpu_s'] / 60:.1f} min "
              f"(process CPU time; a shared 2-core machine, load average {rec['load']:.1f} at the end). "
              f"SpikingJelly accuracy on MNIST test 0-1999 right after training: {100 * rec['sj_eval_acc']:.2f} %.",
              "", "| epoch | loss | train accuracy (BN in train mode) | wall s | CPU s |", "|---|---|---|---|---|"]
        L += [f"| {h['epoch']} | {h['loss']:.4f} | {100 * h['train_acc']:.2f} % | {h['wall_s']:.0f} | "
              f"{h['cpu_s']:.0f} |" for h in rec["history"]]
    else:
        L += ["(no training record: benchmarks/results/sew_resnet_mnist_train.json is missing)"]
    L += ["", "## Exported graph and dense accuracy on MNIST test 0-1999", "",
          f"`{shown}` ({x['size']} bytes) from `{x['state']}`, exported with "
          "`sbc_onnx.torch.export_module(net, sample, framework=\"spikingjelly\")` (BatchNorm folded), with an "
          "integrator `readout_sum` (nir.I, r = 1) after the Linear readout: the class is the readout summed over "
          f"the 4 steps, read with `--readout potential`. Simulator settings stamped in the file: {x['cfg']}. "
          f"Package versions at export: {versions()}.", "",
          "| engine | accuracy | seconds |", "|---|---|---|"]
    L += [f"| {k} | {100 * v:.2f} % | {x['seconds'][k]:.0f} |" for k, v in x["accs"].items()]
    L += ["", f"Predictions equal to SpikingJelly's: project simulator {100 * x['agree_sim']:.2f} %, onnxruntime "
          f"{100 * x['agree_ort']:.2f} %. Spread of the three accuracies: {x['spread']:.2f} points "
          "(issue 13 asks at most 0.5).", "", "Firing rates in the project's simulator (spikes per neuron per step):",
          "", "| node | rate |", "|---|---|"]
    L += [f"| {k} | {v:.4f} |" for k, v in x["rates"].items()]
    L += ["", "Reproduce:", "", "```",
          "SBC_SHARED=/work/shared python benchmarks/train_sew_resnet.py           # train (seeded)",
          "SBC_SHARED=/work/shared python benchmarks/train_sew_resnet.py --export  # export + three engines",
          "sbc-onnx data mnist $SBC_SHARED/data/mnist -o mnist_analog4.npz --steps 4 --encoding analog --limit 2000",
          f"sbc-onnx eval {shown} --data mnist_analog4.npz --readout potential", "```", ""]
    path.write_text("\n".join(L))
    print(f"wrote {path}")


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", action="store_true", help="export the saved state_dict and check it (see above)")
    ap.add_argument("--width", type=int, default=RECIPE["width"])
    ap.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    ap.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    ap.add_argument("--lr", type=float, default=RECIPE["lr"])
    ap.add_argument("--seed", type=int, default=RECIPE["seed"])
    # one thread by default: on a shared, loaded 2-core machine two torch threads spin-wait and spend
    # several times the CPU of one thread per step (the report states the thread count used)
    ap.add_argument("--threads", type=int, default=RECIPE["threads"],
                    help="torch threads (OMP_NUM_THREADS follows unless already set)")
    ap.add_argument("--limit", type=int, default=None,
                    help="train on the first N training images only (a smoke test: nothing is recorded)")
    ap.add_argument("--out", default=None, help="state_dict path (default: the cache; nothing is recorded)")
    ap.add_argument("--state", default=None, help="--export: the state_dict to load (default: cache, then "
                                                  "benchmarks/results/sew_resnet_mnist.pt)")
    ap.add_argument("--model-out", default=str(MODEL_OUT), help="--export: where to write the graph")
    ap.add_argument("--report", default=str(REPORT), help="--export: where to write the markdown report")
    args = ap.parse_args()
    if args.export:
        export(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
