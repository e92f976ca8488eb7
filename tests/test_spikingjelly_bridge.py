"""SpikingJelly bridge (issue 13, scope 1): the exported graph reproduces SpikingJelly's own forward pass.

Acceptance: BatchNorm folding against SpikingJelly's forward pass; each exported neuron matches SpikingJelly's
spikes exactly over 100 steps (IF, LIF with and without decay_input, hard and soft reset, ParametricLIF); a
SEW BasicBlock with ADD (with and without downsample) spike for spike; IAND/AND refused naming the block; the
compressed weights load back with load_state_dict and SpikingJelly then reproduces the project's output
spikes. Single-step and multi-step. Skipped without torch or spikingjelly.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("spikingjelly.activation_based.neuron")

import torch
from spikingjelly.activation_based import functional, layer, neuron

import sbc_onnx
from sbc_onnx.bridges.spikingjelly_zoo import sew_resnet_module
from sbc_onnx.data import Dataset
from sbc_onnx.errors import SbcError
from sbc_onnx.sim import SimConfig, Walker
from sbc_onnx.torch import compress_module, export_module, load_weights, run_module

MODES = ("s", "m")


def walk(graph, x, **kw):
    return Walker(graph, SimConfig.from_graph(graph)).run(x, **kw)


def export(net, x):
    return export_module(net, torch.as_tensor(x[0]), framework="spikingjelly")


def randomize_bn(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.1)
    return net


# ---- neurons ---------------------------------------------------------------------------------------------
NEURONS = {  # kind: (neuron, input gain giving 5-95 % of steps with a spike)
    "IF hard": (lambda: neuron.IFNode(v_threshold=1.0), 1.0),
    "IF soft": (lambda: neuron.IFNode(v_threshold=0.8, v_reset=None), 1.0),
    "LIF decay_input hard": (lambda: neuron.LIFNode(tau=2.0), 3.0),
    "LIF decay_input soft": (lambda: neuron.LIFNode(tau=3.0, v_reset=None), 3.0),
    "LIF no decay_input hard": (lambda: neuron.LIFNode(tau=4.0, decay_input=False), 1.0),
    "LIF no decay_input hard v_reset": (lambda: neuron.LIFNode(tau=4.0, decay_input=False, v_reset=-0.2), 1.0),
    "LIF no decay_input soft": (lambda: neuron.LIFNode(tau=1.5, decay_input=False, v_reset=None,
                                                       v_threshold=0.7), 1.0),
    "PLIF hard": (lambda: neuron.ParametricLIFNode(init_tau=2.5), 3.0),
    "PLIF no decay_input soft": (lambda: neuron.ParametricLIFNode(init_tau=3.0, decay_input=False, v_reset=None),
                                 1.0),
}


# every kind multi-step; single-step (a Python loop over steps in SpikingJelly, slow) for one of each class
CASES = [(k, "m") for k in sorted(NEURONS)] + [(k, "s") for k in ("IF soft", "LIF no decay_input hard v_reset",
                                                                  "PLIF hard")]


@pytest.mark.parametrize("kind, mode", CASES)
def test_each_neuron_matches_spikingjelly_over_100_steps(kind, mode):
    make, gain = NEURONS[kind]
    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(6, 32), make())
    functional.set_step_mode(net, mode)
    x = (np.random.default_rng(1).normal(0.5, 2.0, (100, 8, 6)) * gain).astype(np.float32)
    graph = export(net, x)
    ref = run_module(net, x)
    got = walk(graph, x).outputs["output"]
    assert 0.05 < ref.mean() < 0.95
    np.testing.assert_array_equal(got, ref)
    assert graph.metadata["reset"] == ("subtract" if "soft" in kind else "to_v_reset")


def run_spikingjelly_checked(net, x):
    """SpikingJelly's output, and the same again: the run starts from rest (reset_net) every time."""
    a, b = run_module(net, x, framework="spikingjelly"), run_module(net, x, framework="spikingjelly")
    np.testing.assert_array_equal(a, b)
    return a


@pytest.mark.parametrize("v_reset", [0.0, None])
def test_spikingjelly_fires_at_v_equal_to_threshold(v_reset):
    """SpikingJelly fires on v >= v_threshold, the simulator on v > threshold: with inputs on a 1/4 grid v
    reaches the threshold exactly, and the exported threshold must still give SpikingJelly's spikes."""
    net = torch.nn.Sequential(neuron.IFNode(v_threshold=1.0, v_reset=v_reset))
    x = (np.random.default_rng(2).integers(0, 3, (40, 4, 5)) / 4).astype(np.float32)
    graph = export(net, x)
    ref = run_spikingjelly_checked(net, x)
    np.testing.assert_array_equal(walk(graph, x).outputs["output"], ref)
    graph.nodes["0"].v_threshold = np.ones(5)  # the plain threshold misses the spikes at v == 1
    assert walk(graph, x).outputs["output"].sum() < ref.sum()


# ---- BatchNorm -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_batchnorm_is_folded_as_spikingjelly_computes_it(bias):
    torch.manual_seed(3)
    conv, bn = layer.Conv2d(2, 4, 3, padding=1, bias=bias), layer.BatchNorm2d(4)
    fc, bn1 = layer.Linear(64, 5, bias=bias), layer.BatchNorm1d(5)
    net = randomize_bn(torch.nn.Sequential(conv, bn, neuron.IFNode(), layer.Flatten(), fc, bn1, neuron.IFNode()))
    net.eval()
    x = np.random.default_rng(4).random((3, 6, 2, 4, 4)).astype(np.float32)
    graph = export(net, x)
    assert {"1", "5"}.isdisjoint(graph.nodes)  # no BatchNorm node: folded into "0" and "4"
    currents = {}
    walk(graph, x, on_output={n: (lambda t, y, n=n: currents.setdefault(n, []).append(y)) for n in ("0", "4")})
    with torch.no_grad():
        xt = torch.as_tensor(x)
        functional.reset_net(net)
        for t in range(x.shape[0]):
            c1 = bn(conv(xt[t]))
            np.testing.assert_allclose(currents["0"][t], c1.numpy(), rtol=1e-5, atol=1e-5)
            s = net[3](net[2](c1))
            np.testing.assert_allclose(currents["4"][t], bn1(fc(s)).numpy(), rtol=1e-5, atol=1e-5)
            net[6](bn1(fc(s)))
        functional.reset_net(net)
    assert graph.nodes["0"].bias is not None and np.any(graph.nodes["0"].bias != 0)
    assert type(graph.nodes["4"]).__name__ == "Affine"  # a Linear without bias gets the folded one
    np.testing.assert_array_equal(walk(graph, x).outputs["output"], run_module(net, x))


def test_batchnorm_that_follows_no_layer_is_refused():
    net = torch.nn.Sequential(layer.Conv2d(1, 2, 3), neuron.IFNode(), layer.BatchNorm2d(2), neuron.IFNode())
    with pytest.raises(SbcError, match="'2' does not directly follow a Conv2d"):
        export(net, np.zeros((1, 1, 1, 5, 5), np.float32))


# ---- SEW blocks ------------------------------------------------------------------------------------------
def sew_block(downsample: bool, cnf="ADD", seed=5):
    sew = sew_resnet_module()
    torch.manual_seed(seed)
    ds = torch.nn.Sequential(layer.Conv2d(4, 8, 1, stride=2, bias=False), layer.BatchNorm2d(8)) if downsample else None
    block = sew.BasicBlock(4, 8 if downsample else 4, stride=2 if downsample else 1, downsample=ds, cnf=cnf,
                           spiking_neuron=neuron.IFNode)
    return randomize_bn(block, seed)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("downsample", [False, True])
def test_sew_basic_block_with_add_matches_spike_for_spike(downsample, mode):
    block = sew_block(downsample)
    functional.set_step_mode(block, mode)
    x = (np.random.default_rng(6).random((12, 3, 4, 6, 6)) < 0.4).astype(np.float32)
    graph = export(block, x)
    ref = run_module(block, x)
    assert set(np.unique(ref)) == {0.0, 1.0, 2.0}  # a sum of two spike tensors
    np.testing.assert_array_equal(walk(graph, x).outputs["output"], ref)
    fed = sorted(s for s, d in graph.edges if d == "output")
    assert fed == (["downsample_sn", "sn2"] if downsample else ["input", "sn2"])  # ADD: two edges, no node


@pytest.mark.parametrize("cnf", ["IAND", "AND"])
def test_iand_and_and_are_refused_naming_the_block(cnf):
    net = torch.nn.Sequential(torch.nn.Sequential(sew_block(False)), sew_block(False, cnf=cnf))
    with pytest.raises(SbcError, match=f"^1 joins its branches with {cnf}, which is not linear"):
        export(net, np.zeros((1, 1, 4, 6, 6), np.float32))


def test_unknown_modules_and_operations_are_refused_by_name():
    class Mul(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = layer.Linear(3, 3), neuron.IFNode()

        def forward(self, x):
            return self.b(self.a(x)) * x

    with pytest.raises(SbcError, match="'mul' .*not linear"):
        export(Mul(), np.zeros((1, 2, 3), np.float32))

    class Rate(torch.nn.Module):  # a readout averaging over time inside the forward pass
        def __init__(self):
            super().__init__()
            self.a, self.b = layer.Linear(3, 3, step_mode="m"), neuron.IFNode(step_mode="m")

        def forward(self, x):
            return self.b(self.a(x)).mean(0)

    with pytest.raises(SbcError, match="operation 'mean' .*has no NIR equivalent"):
        export(Rate(), np.zeros((1, 2, 3), np.float32))
    with pytest.raises(SbcError, match=r"module '1' \(torch.nn.modules.activation.ReLU\) has no NIR equivalent"):
        export(torch.nn.Sequential(layer.Linear(3, 3), torch.nn.ReLU()), np.zeros((1, 2, 3), np.float32))
    torch_conv_multi_step = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), neuron.IFNode(step_mode="m"))
    with pytest.raises(SbcError, match=r"^module '0' fails on the sample in step mode 'm': Expected 3D .*\]$"):
        export(torch_conv_multi_step, np.zeros((1, 1, 1, 5, 5), np.float32))
    with pytest.raises(SbcError, match="KLIFNode has no NIR equivalent"):
        export(torch.nn.Sequential(layer.Linear(3, 3), neuron.KLIFNode()), np.zeros((1, 2, 3), np.float32))


def test_a_flattening_view_with_the_batch_size_read_from_the_input():
    class View(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.sn, self.fc = layer.Conv2d(1, 2, 3), neuron.IFNode(), layer.Linear(8, 3)

        def forward(self, x):
            s = self.sn(self.conv(x))
            return self.fc(s.view(s.size(0), -1))

    torch.manual_seed(12)
    net = View()
    x = np.random.default_rng(12).random((10, 3, 1, 4, 4)).astype(np.float32) * 4
    graph = export(net, x)
    assert type(graph.nodes["view"]).__name__ == "Flatten"
    np.testing.assert_allclose(walk(graph, x).outputs["output"], run_module(net, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(SbcError, match=r"'1' changes the batch axis \(\(2, 2, 2, 2\) -> \(16,\)\)"):
        export(torch.nn.Sequential(layer.Conv2d(1, 2, 3), torch.nn.Flatten(0)), x)


def test_max_pooling_becomes_the_project_max_pool_node():
    net = torch.nn.Sequential(layer.Conv2d(1, 2, 3, padding=1), neuron.IFNode(), layer.MaxPool2d(2),
                              layer.AdaptiveAvgPool2d((2, 2)), layer.Flatten(), layer.Linear(8, 3))
    graph = export(net, np.zeros((1, 1, 1, 8, 8), np.float32))
    node = graph.nodes["2"]
    assert type(node).__name__ == "MaxPool2d"
    assert list(node.kernel_size) == [2, 2] and list(node.stride) == [2, 2] and list(node.padding) == [0, 0]
    assert list(graph.nodes["3"].kernel_size) == [2, 2]  # adaptive 4x4 -> 2x2: an AvgPool2d of 2
    with pytest.raises(SbcError, match="AdaptiveAvgPool2d from 3x3 to 2x2"):
        export(torch.nn.Sequential(layer.AdaptiveAvgPool2d(2)), np.zeros((1, 1, 1, 3, 3), np.float32))


# ---- weights back ----------------------------------------------------------------------------------------
class TinySEW(torch.nn.Module):
    def __init__(self):
        super().__init__()
        sew = sew_resnet_module()
        torch.manual_seed(7)
        self.conv = layer.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = layer.BatchNorm2d(4)
        self.sn = neuron.IFNode()
        self.block = sew.BasicBlock(4, 4, cnf="ADD", spiking_neuron=neuron.IFNode)
        self.pool = layer.AdaptiveAvgPool2d((1, 1))
        self.fc = layer.Linear(4, 3)
        randomize_bn(self, 7)
        with torch.no_grad():
            self.fc.weight.mul_(4.0)

    def forward(self, x):
        x = self.pool(self.block(self.sn(self.bn(self.conv(x)))))
        return self.fc(torch.flatten(x, 2 if self.pool.step_mode == "m" else 1))


@pytest.mark.parametrize("mode", MODES)
def test_compressed_weights_load_back_and_spikingjelly_reproduces_the_project(mode, caplog):
    net = TinySEW()
    functional.set_step_mode(net, mode)
    rng = np.random.default_rng(8)
    data = Dataset(rng.random((16, 4, 1, 6, 6)).astype(np.float32) * 2, rng.integers(0, 3, 16))
    with caplog.at_level(logging.WARNING, logger="sbc_onnx"):
        small, report = compress_module(net, data, sparsity=0.5, bits=8)
    assert "BatchNorm stays folded" in caplog.text and "bn" in caplog.text
    graph = export(net, data.x[:1, 0][None])
    ref_graph, _ = sbc_onnx.compress(graph, data, sparsity=0.5, bits=8, cfg=SimConfig.from_graph(graph))
    assert len(report.layers) == 4  # conv, block.conv1, block.conv2, fc
    x = rng.random((6, 5, 1, 6, 6)).astype(np.float32) * 2
    inner = []
    res = walk(ref_graph, x, on_output={"block.sn2": lambda t, y: inner.append(y)})
    ref = res.outputs["output"]
    sj_inner = []
    hook = small.block.sn2.register_forward_hook(lambda m, i, o: sj_inner.append(o.detach().numpy()))
    got = run_module(small, x)
    hook.remove()
    # the spikes inside are SpikingJelly's, spike for spike; fc's readout currents up to float rounding
    sj_spikes = np.concatenate(sj_inner) if mode == "m" else np.stack(sj_inner)
    assert 0 < sj_spikes.mean() < 1
    np.testing.assert_array_equal(np.stack(inner), sj_spikes)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, run_module(net, x), atol=1e-3)  # not vacuous: compression changed the output
    layers = (small.conv, small.block.conv1, small.block.conv2, small.fc)
    zeros = sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)
    assert 0.45 <= zeros <= 0.55
    # the BatchNorm is the identity plus the folded bias, in SpikingJelly's own forward pass
    y = torch.randn((1, 2, 4, 3, 3) if mode == "m" else (2, 4, 3, 3))
    small.eval()
    with torch.no_grad():
        np.testing.assert_array_equal(small.bn(y).numpy(), (y + small.bn.bias.view(-1, 1, 1)).numpy())
    fresh = TinySEW()
    functional.set_step_mode(fresh, mode)
    fresh.load_state_dict(small.state_dict())
    np.testing.assert_array_equal(run_module(fresh, x), got)
    # the spikes inside agree too: the compressed graph exported back from the module holds the same weights
    back = export(small, x)
    for name in ("conv", "block.conv1", "block.conv2", "fc"):
        np.testing.assert_array_equal(back.nodes[name].weight, ref_graph.nodes[name].weight)
        np.testing.assert_array_equal(back.nodes[name].bias, ref_graph.nodes[name].bias)


def test_load_weights_leaves_plain_modules_to_the_copy():
    net = torch.nn.Sequential(layer.Linear(3, 2, bias=False))
    graph = export(net, np.zeros((1, 1, 3), np.float32))
    graph.nodes["0"].weight = np.full((2, 3), 0.5, np.float32)
    load_weights(net, graph, {"0": "0.weight"})
    assert torch.equal(net[0].weight, torch.full((2, 3), 0.5))


def test_seq_to_ann_container_exports_module_by_module():
    torch.manual_seed(9)
    net = torch.nn.Sequential(
        layer.SeqToANNContainer(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4)),
        neuron.IFNode(),
        layer.SeqToANNContainer(torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 6),
                                torch.nn.BatchNorm1d(6)),
        neuron.LIFNode(tau=2.0))
    functional.set_step_mode(net, "m")
    randomize_bn(net, 9)
    with torch.no_grad():
        net[2][2].weight.mul_(6.0)
    x = np.random.default_rng(10).random((30, 4, 1, 4, 4)).astype(np.float32) * 3
    graph = export(net, x)
    assert [n for n in graph.nodes if n not in ("input", "output")] == ["0.0", "1", "2.0", "2.1", "2.2", "3"]
    ref = run_module(net, x)
    assert 0 < ref.mean() < 1
    np.testing.assert_array_equal(walk(graph, x).outputs["output"], ref)
    inside = torch.nn.Sequential(layer.SeqToANNContainer(torch.nn.Linear(3, 3), neuron.IFNode()))
    functional.set_step_mode(inside, "m")
    with pytest.raises(SbcError, match="'0.1': IFNode inside a SeqToANNContainer"):
        export(inside, np.zeros((1, 1, 3), np.float32))


def test_sew_resnet18_exports_with_its_max_pooling_and_fan_in():
    """SpikingJelly's own sew_resnet18 (small input for speed): every BatchNorm folded, each ADD a fan-in."""
    net = sew_resnet_module().sew_resnet18(cnf="ADD", spiking_neuron=neuron.IFNode)
    functional.set_step_mode(net, "m")
    graph = export_module(net, torch.zeros(1, 3, 16, 16), framework="spikingjelly")
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert kinds.count("Conv2d") == 20 and kinds.count("IF") == 20 and kinds.count("MaxPool2d") == 1
    assert "BatchNorm2d" not in kinds and "layer1.0.bn1" not in graph.nodes

    def into(node):
        return sorted(s for s, d in graph.edges if d == node)

    assert into("layer1.1.conv1") == ["layer1.0.sn2", "maxpool"]  # layer1.0 = maxpool + its branch
    assert into("layer2.0.conv1") == into("layer2.0.downsample.0") == ["layer1.0.sn2", "layer1.1.sn2", "maxpool"]
    assert into("avgpool") == ["layer4.0.downsample_sn", "layer4.0.sn2", "layer4.1.sn2"]
    assert graph.metadata["spikingjelly_step_mode"] == "m" and graph.metadata["dt"] == 1.0


def test_batchnorm_without_affine_exports_but_cannot_take_the_bias_back():
    net = torch.nn.Sequential(layer.Conv2d(1, 2, 3, bias=False), layer.BatchNorm2d(2, affine=False), neuron.IFNode(),
                              layer.Flatten(), layer.Linear(18, 2))
    x = np.random.default_rng(11).random((4, 4, 1, 5, 5)).astype(np.float32)
    graph = export(net, x)
    np.testing.assert_allclose(walk(graph, x).outputs["output"], run_module(net, x), rtol=1e-5, atol=1e-6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(SbcError, match="BatchNorm '1' has no bias"):
        compress_module(net, Dataset(x.transpose(1, 0, 2, 3, 4), np.zeros(4, int)), sparsity=0.5, inplace=True)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
