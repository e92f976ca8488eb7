"""One call from torch (issue 12): sbc_onnx.torch.compress_module on snnTorch and Norse networks.

Acceptance: for each framework an MLP, a Conv2d + pooling + Flatten + Linear net and a recurrent net go
through compress_module and back; the returned module (same class, compressed weights) reproduces the
project simulator's output spikes on the independently compressed graph exactly on 20 inputs, batched, and
the imported graph does so unbatched too. Skipped without the torch extra / Norse.
"""

from __future__ import annotations

import types
import warnings

import nir
import numpy as np
import pytest

import sbc_onnx
from sbc_onnx.data import Dataset, as_dataset
from sbc_onnx.errors import SbcError
from sbc_onnx.sim import SimConfig, Walker

T, N_CALIB, N_TEST = 25, 32, 20
KINDS = ("mlp", "conv", "recurrent")


def spikes(shape, p=0.3, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < p).astype(np.float32)


def walk(graph, x) -> np.ndarray:
    res = Walker(graph, SimConfig.from_graph(graph, dtype="float64")).run(x)
    (out,) = res.outputs.values()
    return out


def input_shape(kind):
    return (1, 8, 8) if kind == "conv" else (8,)


# ---- networks (weights scaled so that every layer spikes, but not always) --------------------------------
def snntorch_net(kind):
    import snntorch as snn
    import torch

    torch.manual_seed(0)

    def leaky(n):
        return snn.Leaky(beta=torch.rand(n) * 0.3 + 0.6, threshold=torch.rand(n) * 0.5 + 0.5,
                         reset_mechanism="zero", reset_delay=False, init_hidden=True)

    if kind == "mlp":
        layers = [torch.nn.Linear(8, 16), leaky(16), torch.nn.Linear(16, 4), leaky(4)]
    elif kind == "conv":
        layers = [torch.nn.Conv2d(1, 4, 3, padding=1), leaky((4, 8, 8)), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
                  torch.nn.Linear(64, 4), leaky(4)]
    else:
        rec = snn.RLeaky(beta=torch.rand(16) * 0.3 + 0.6, linear_features=16, reset_mechanism="zero",
                         reset_delay=False, init_hidden=True)
        layers = [torch.nn.Linear(8, 16), rec, torch.nn.Linear(16, 4), leaky(4)]
    net = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.mul_(3.0)
    return net


def norse_net(kind):
    import norse.torch as nt
    import torch
    from norse.torch.functional.lif import LIFParameters
    from norse.torch.functional.lif_box import LIFBoxParameters

    torch.manual_seed(0)

    def box(shape):
        return nt.LIFBoxCell(LIFBoxParameters(tau_mem_inv=1 / (torch.rand(shape) * 0.01 + 0.005),
                                              v_th=torch.rand(shape) * 0.5 + 0.3), dt=1e-3)

    if kind == "mlp":
        layers = [torch.nn.Linear(8, 16), box(16), torch.nn.Linear(16, 4, bias=False), box(4)]
    elif kind == "conv":
        layers = [torch.nn.Conv2d(1, 4, 3, padding=1), box((4, 8, 8)), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
                  torch.nn.Linear(64, 4), box(4)]
    else:
        cell = nt.LIFRecurrentCell(16, 12, p=LIFParameters(v_th=torch.tensor(0.3)), dt=1e-3)
        layers = [torch.nn.Linear(8, 16), cell, torch.nn.Linear(12, 4), box(4)]
    net = nt.SequentialState(*layers)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.mul_(8.0)
        if kind == "recurrent":
            net[1].recurrent_weights.mul_(4.0)
    return net


@pytest.fixture(scope="module", params=["snntorch", "norse"])
def fw(request):
    pytest.importorskip("torch")
    pytest.importorskip("nirtorch")
    pytest.importorskip(request.param)
    from sbc_onnx.bridges import norse_bridge, snntorch_bridge

    bridge = snntorch_bridge if request.param == "snntorch" else norse_bridge
    make = snntorch_net if request.param == "snntorch" else norse_net
    short = request.param
    return types.SimpleNamespace(name=request.param, make=make, imp=getattr(bridge, f"import_{short}"),
                                 run=getattr(bridge, f"run_{short}"))


def loader(kind, n=N_CALIB, seed=1, batch_size=8):
    import torch

    x = torch.as_tensor(spikes((n, T) + input_shape(kind), seed=seed))
    y = torch.as_tensor(np.random.default_rng(seed).integers(0, 4, n))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


# ---- acceptance ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_compress_module_reproduces_the_simulated_compressed_graph(fw, kind):
    import torch

    from sbc_onnx.torch import compress_module, export_module, run_module

    net = fw.make(kind)
    dense_state = {k: v.clone() for k, v in net.state_dict().items()}
    data = loader(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small, report = compress_module(net, data, sparsity=0.5, bits=8)
        # the reference: the library's own graph API on the exported dense graph (deterministic)
        graph = export_module(net, torch.zeros((2,) + input_shape(kind)))
        ref_graph, _ = sbc_onnx.compress(graph, as_dataset(data), sparsity=0.5, bits=8, method="sbc",
                                         cfg=SimConfig.from_graph(graph))
    assert type(small) is type(net) and small is not net
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in dense_state.items())  # the input is untouched
    assert len(report.layers) == len(sbc_onnx.graph.flatten(graph).weight_nodes())
    if kind == "recurrent":  # the recurrent weight is a compressed layer like the others
        assert any(r.name.endswith(".w_rec") for r in report.layers)
    x = spikes((T, N_TEST) + input_shape(kind), seed=2)
    ref = walk(ref_graph, x)
    got = run_module(small, x)
    assert 0 < ref.sum() < ref.size
    np.testing.assert_array_equal(got, ref)
    assert not np.array_equal(got, run_module(net, x))  # not vacuous: compression changed the spikes
    if kind != "conv":  # unbatched too (torch's nn.Flatten(1) in the user's conv net needs a batch axis)
        np.testing.assert_array_equal(run_module(small, x[:, 0]), ref[:, 0])
    # the user's own module class loads the compressed state (same names and shapes)
    fresh = fw.make(kind)
    fresh.load_state_dict(small.state_dict())
    np.testing.assert_array_equal(run_module(fresh, x), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_imported_graph_runs_batched_and_unbatched(fw, kind):
    """The dense module == the walker on its export == the graph imported back, batched (B = 20) and for one
    sample without a batch axis (nn.Flatten(0) from snnTorch's importer folded the batch into features)."""
    import torch

    from sbc_onnx.torch import export_module

    net = fw.make(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = export_module(net, torch.zeros((3,) + input_shape(kind)))
        model = fw.imp(graph)
    x = spikes((T, N_TEST) + input_shape(kind), seed=3)
    ref = walk(graph, x)
    assert 0 < ref.sum() < ref.size
    np.testing.assert_array_equal(fw.run(net, x), ref)  # the framework's own forward pass, dense
    if kind != "conv":
        np.testing.assert_array_equal(fw.run(net, x[:, 0]), ref[:, 0])
    np.testing.assert_array_equal(fw.run(model, x), ref)
    np.testing.assert_array_equal(fw.run(model, x[:, 0]), ref[:, 0])  # (T, *input_shape): no batch axis


def test_inplace_updates_the_module_itself(fw):
    from sbc_onnx.torch import compress_module

    net = fw.make("mlp")
    before = net[0].weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same, _ = compress_module(net, loader("mlp"), sparsity=0.5, inplace=True)
    assert same is net
    assert float((net[0].weight == 0).float().mean()) > 0 and not np.array_equal(before, net[0].weight.detach())


# ---- refusals --------------------------------------------------------------------------------------------
def test_snntorch_recurrent_cells_nir_cannot_express_are_refused():
    snn = pytest.importorskip("snntorch")
    import torch

    from sbc_onnx.torch import compress_module

    for cell, reason in ((snn.RSynaptic(alpha=0.5, beta=0.8, linear_features=4, init_hidden=True), "RSynaptic"),
                         (snn.RLeaky(beta=0.8, linear_features=4, reset_mechanism="zero", init_hidden=True),
                          "reset_delay")):
        net = torch.nn.Sequential(torch.nn.Linear(8, 4), cell)
        with pytest.raises(SbcError, match=reason):
            compress_module(net, loader("mlp"), sparsity=0.5)


def test_framework_detection_and_unknown_spikingjelly_modules():
    torch = pytest.importorskip("torch")
    from sbc_onnx.torch import compress_module, detect_framework

    with pytest.raises(SbcError, match="no snntorch, norse"):
        detect_framework(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    # a SpikingJelly module is recognised by its package; one the bridge does not know is refused by name
    sj_neuron = type("LIFNode", (torch.nn.Module,), {"__module__": "spikingjelly.activation_based.neuron",
                                                     "forward": lambda self, x: x})
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), sj_neuron())
    assert detect_framework(net) == "spikingjelly"
    pytest.importorskip("spikingjelly.activation_based.neuron")
    with pytest.raises(SbcError, match=r"module '1' \(spikingjelly.activation_based.neuron.LIFNode\) has no NIR"):
        compress_module(net, loader("mlp"), sparsity=0.5)


# ---- data ------------------------------------------------------------------------------------------------
def test_as_dataset_accepts_torch_datasets_loaders_and_iterables():
    torch = pytest.importorskip("torch")
    x = spikes((10, 6, 3), seed=4)
    y = np.arange(10) % 3
    ref = Dataset(x, y)
    tds = torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    dl = torch.utils.data.DataLoader(tds, batch_size=4)
    time_first = [(torch.as_tensor(x[i:i + 5]).transpose(0, 1), torch.as_tensor(y[i:i + 5])) for i in (0, 5)]
    for data, kw in ((tds, {}), (dl, {}), (list(zip(x, y)), {}), (time_first, {"time_first": True})):
        ds = as_dataset(data, **kw)
        np.testing.assert_array_equal(ds.x, ref.x)
        np.testing.assert_array_equal(ds.y, ref.y)
    assert as_dataset(dl, limit=6).n == 6
    frames = as_dataset([(x[i, 0], y[i]) for i in range(10)], steps=7)  # one frame per sample, held 7 steps
    xb, _ = next(frames.batches(10))
    assert xb.shape == (7, 10, 3) and np.array_equal(xb[6], x[:, 0])
    assert as_dataset(ref) is ref


def test_as_dataset_refuses_bad_items():
    with pytest.raises(SbcError, match="pair"):
        as_dataset([np.zeros(3)])
    with pytest.raises(SbcError, match="batch axis"):
        as_dataset([(np.zeros((4, 5, 3)), np.zeros(3, np.int64))])
    with pytest.raises(SbcError, match="one shape"):
        as_dataset([(np.zeros((5, 3)), 0), (np.zeros((5, 4)), 1)])
    with pytest.raises(SbcError, match="no samples"):
        as_dataset([])
    with pytest.raises(SbcError, match="integers"):
        as_dataset([(np.zeros((5, 3)), 0.5)])


def test_nir_graph_of_recurrent_cell_has_its_weights_in_a_cycle(fw):
    """The recurrent weight is a weight node on a back edge of the exported graph."""
    import torch

    from sbc_onnx.torch import export_module

    graph = export_module(fw.make("recurrent"), torch.zeros(2, 8))
    fg = sbc_onnx.graph.flatten(graph)
    assert ("1.w_rec", "1.lif") in fg.back_edges or ("1.lif", "1.w_rec") in fg.back_edges
    assert isinstance(fg.nodes["1.w_rec"], (nir.Linear, nir.Affine))


def test_compress_and_evaluate_take_torch_data():
    """sbc_onnx.compress / evaluate accept a torch DataLoader as they accept the project Dataset."""
    torch = pytest.importorskip("torch")
    from topologies import ALL, DT

    rng = np.random.default_rng(5)
    graph, _ = ALL["sequential"](rng)
    x, y = spikes((24, 30, 4), seed=6), rng.integers(0, 3, 24)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y)),
                                     batch_size=5)
    cfg = SimConfig(dt=DT)
    a = sbc_onnx.evaluate(graph, dl, cfg)
    b = sbc_onnx.evaluate(graph, Dataset(x, y), cfg)
    assert a.n == 24 and np.array_equal(a.predictions, b.predictions)
    ga, _ = sbc_onnx.compress(graph, dl, sparsity=0.5, cfg=cfg, measure_damage=False)
    gb, _ = sbc_onnx.compress(graph, Dataset(x, y), sparsity=0.5, cfg=cfg, measure_damage=False)
    for k in sbc_onnx.graph.flatten(ga).weight_nodes():
        np.testing.assert_array_equal(ga.nodes[k].weight, gb.nodes[k].weight)


def identity_net(name):
    """4 inputs -> 4 neurons, one to one: the class with most output spikes is the busiest input."""
    import torch

    lin = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():  # one input spike crosses the threshold (Norse: v += dt/tau (x - v), dt/tau = 0.1)
        lin.weight.copy_(torch.eye(4) * (1.5 if name == "snntorch" else 15.0))
    if name == "snntorch":
        import snntorch as snn

        return torch.nn.Sequential(lin, snn.Leaky(beta=0.5, reset_mechanism="zero", reset_delay=False,
                                                  init_hidden=True))
    import norse.torch as nt

    return nt.SequentialState(lin, nt.LIFBoxCell(dt=1e-3))


def test_module_accuracy_reads_the_most_spiking_output(fw):
    """The busiest input channel (label) drives most spikes, the last step is often silent: accuracy 1 only
    with spikes counted over all steps of each sample."""
    from sbc_onnx.torch import module_accuracy, run_module

    net = identity_net(fw.name)
    rng = np.random.default_rng(8)
    y = rng.integers(0, 4, 16)
    rates = np.full((16, 4), 0.1)
    rates[np.arange(16), y] = 0.6
    x = (rng.random((T, 16, 4)) < rates).astype(np.float32)
    x[-1] = 0  # nothing at the last step
    counts = run_module(net, x).sum(axis=0)
    assert np.array_equal(counts.argmax(axis=1), y)  # the setup: the label's neuron spikes most
    samples = np.moveaxis(x, 1, 0)  # (B, T, 4)
    assert module_accuracy(net, list(zip(samples, y)), batch_size=5) == 1.0
    assert module_accuracy(net, list(zip(samples, (y + 1) % 4))) == 0.0
