"""Compress snnTorch and Norse networks in one call and print their accuracy before and after.

    PYTHONPATH=. python examples/torch_roundtrip.py [--sparsity 0.8] [--bits 4] [--epochs 8]

Per framework, three tiny nets (an MLP, Conv2d + AvgPool2d + Flatten + Linear, and a recurrent net: snnTorch
RLeaky, Norse LIFRecurrentCell) are trained (the Norse MLP and conv nets have the snnTorch nets' dynamics,
decay 0.9, threshold 1, reset to zero, and take their trained weights x10, as Norse scales the input by dt/tau) for a few seconds on a synthetic task (4 classes of 8x8 Bernoulli spike patterns: one bright
quadrant per class), then `sbc_onnx.torch.compress_module` compresses each one (SBC) and hands back the
same module class with the compressed weights. The accuracy of the module's own forward pass is printed
before and after, with a check that the returned module spikes exactly like the project's simulator on
20 test inputs. Needs the torch extra (torch, snntorch, nirtorch) and norse.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import snntorch as snn
import torch

from sbc_onnx.sim import SimConfig, Walker
from sbc_onnx.torch import compress_module, export_module, module_accuracy, run_module

T, SIDE, CLASSES = 20, 8, 4


def synthetic(n: int, seed: int) -> torch.utils.data.TensorDataset:
    """Samples (T, 1, 8, 8): background rate 0.1, the class's quadrant at rate 0.16 (noisy on purpose)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    rate = np.full((n, 1, SIDE, SIDE), 0.1)
    h = SIDE // 2
    for i, c in enumerate(y):
        rate[i, 0, (c // 2) * h:(c // 2 + 1) * h, (c % 2) * h:(c % 2 + 1) * h] = 0.16
    x = (rng.random((n, T, 1, SIDE, SIDE)) < rate[:, None]).astype(np.float32)
    return torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y))


def leaky() -> snn.Leaky:
    # reset to zero without delay: the reset NIR (and so the round trip) expresses exactly
    return snn.Leaky(beta=0.9, reset_mechanism="zero", reset_delay=False, init_hidden=True)


def nets() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    flat = SIDE * SIDE
    return {
        "mlp": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(flat, 32), leaky(),
                                   torch.nn.Linear(32, CLASSES), leaky()),
        "conv": torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), leaky(), torch.nn.AvgPool2d(2),
                                    torch.nn.Flatten(), torch.nn.Linear(4 * 16, CLASSES), leaky()),
        "recurrent": torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(flat, 32),
            snn.RLeaky(beta=0.9, linear_features=32, reset_mechanism="zero", reset_delay=False, init_hidden=True),
            torch.nn.Linear(32, CLASSES), leaky()),
    }


def norse_nets() -> dict[str, torch.nn.Module]:
    import norse.torch as nt
    from norse.torch.functional.lif import LIFParameters
    from norse.torch.functional.lif_box import LIFBoxParameters

    torch.manual_seed(0)
    flat = SIDE * SIDE

    def box():  # LIF without synaptic current, tau 10 ms at dt 1 ms: the decay 0.9 of the snnTorch nets
        return nt.LIFBoxCell(LIFBoxParameters(tau_mem_inv=torch.tensor(100.0), v_th=torch.tensor(1.0)), dt=1e-3)

    nets = {
        "mlp": nt.SequentialState(torch.nn.Flatten(), torch.nn.Linear(flat, 32), box(), torch.nn.Linear(32, CLASSES),
                                  box()),
        "conv": nt.SequentialState(torch.nn.Conv2d(1, 4, 3, padding=1), box(), torch.nn.AvgPool2d(2),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 16, CLASSES), box()),
        "recurrent": nt.SequentialState(
            torch.nn.Flatten(), torch.nn.Linear(flat, 32),
            nt.LIFRecurrentCell(32, 24, p=LIFParameters(v_th=torch.tensor(0.5)), dt=1e-3),
            torch.nn.Linear(24, CLASSES), box()),
    }
    with torch.no_grad():  # Norse scales the input by dt/tau = 0.1: x10 gives the snnTorch nets' drive
        for m in (m for net in nets.values() for m in net.modules()):
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.mul_(10.0)
    return nets


def spike_counts(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, classes) output spike counts of a fresh run over x (B, T, ...), snnTorch or Norse."""
    if isinstance(net, torch.nn.Sequential) and not hasattr(net, "stateful_layers"):
        for m in net.modules():
            if isinstance(m, snn.SpikingNeuron):
                m.reset_mem()
        return sum(net(x[:, t]) for t in range(T))
    counts, state = 0, None
    for t in range(T):
        out, state = net(x[:, t], state)
        counts = counts + out
    return counts


def train(net: torch.nn.Module, data, epochs: int, lr: float = 5e-3) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        for x, y in torch.utils.data.DataLoader(data, batch_size=32, shuffle=True):
            counts = spike_counts(net, x)
            loss = torch.nn.functional.cross_entropy(counts, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()


def matches_simulator(module: torch.nn.Module, data) -> bool:
    """The module's own output spikes == the project simulator's on its exported graph (20 inputs)."""
    x = np.stack([data[i][0].numpy() for i in range(20)], axis=1)  # (T, 20, 1, 8, 8)
    graph = export_module(module, torch.as_tensor(x[0, :2]))
    (sim,) = Walker(graph, SimConfig.from_graph(graph, dtype="float64")).run(x).outputs.values()
    return bool(np.array_equal(run_module(module, x), sim))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny nets: threads only add overhead
    train_ds, test_ds = synthetic(256, seed=0), synthetic(200, seed=1)
    calib = torch.utils.data.Subset(train_ds, range(64))
    print(f"SBC, sparsity {args.sparsity}, {args.bits} bits; accuracy of the module's own forward pass on "
          f"{len(test_ds)} synthetic test samples")
    every = [("snntorch", n, m) for n, m in nets().items()] + [("norse", n, m) for n, m in norse_nets().items()]
    trained: dict[str, torch.nn.Module] = {}  # snnTorch nets the Norse MLP and conv nets copy
    for fw, name, net in every:
        t0 = time.perf_counter()
        if fw == "norse" and name != "recurrent":  # same dynamics as the snnTorch net: reuse its training
            copy_weights(trained[name], net, gain=10.0)
        else:
            train(net, train_ds, args.epochs)
        trained.setdefault(name, net)
        t_train = time.perf_counter() - t0
        before = module_accuracy(net, test_ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            small, _ = compress_module(net, calib, sparsity=args.sparsity, bits=args.bits, method="sbc")
        after = module_accuracy(small, test_ds)
        zeros = sum(int((small.get_parameter(p) == 0).sum()) for p in _weights(small))
        total = sum(small.get_parameter(p).numel() for p in _weights(small))
        print(f"{fw:8s} {name:10s} accuracy {before:.3f} -> {after:.3f}   weights zero {zeros / total:.2f}   "
              f"type {type(small).__name__}   exact vs simulator: {matches_simulator(small, test_ds)}   "
              f"(train {t_train:.0f} s, total {time.perf_counter() - t0:.0f} s)", flush=True)


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module, gain: float) -> None:
    """The Linear/Conv2d parameters of `src` into those of `dst`, in order, times `gain`."""
    layers = [m for m in src.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with torch.no_grad():
        for a, b in zip(layers, [m for m in dst.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]):
            b.weight.copy_(a.weight * gain)
            b.bias.copy_(a.bias * gain)


def _weights(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if n.endswith("weight") and p.ndim >= 2]


if __name__ == "__main__":
    main()
