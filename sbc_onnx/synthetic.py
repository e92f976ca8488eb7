"""ResNet-shaped spiking NIR graphs with seeded random weights, for scale tests and benchmarks.

`sew_resnet_graph` has the layer shapes of SpikingJelly's SEW-ResNet (cnf ADD): a 7x7 stride-2 stem, four
stages of basic blocks (3x3 convolutions, a 1x1 stride-2 downsample where the shape changes), a global
average pool and a fully connected readout; every convolution (batch norm folded into its bias) feeds an
IF neuron, and a block's output is its second neuron's spikes plus its input (the ADD connection, summed
in a Scale(1) junction). The stem's max pooling is a 2x2 average pooling here (same shapes). With
`widths=(64, 128, 256, 512)`, `blocks=(2, 2, 2, 2)` and a 3 x 224 x 224 input it has sew_resnet18's
21 weight layers and their shapes; small widths and inputs make CI-size graphs of the same topology.
"""

from __future__ import annotations

import nir
import numpy as np

__all__ = ["linear_lif_graph", "sew_resnet_graph"]


def _conv(rng, c_in, c_out, k, stride, size, gain):
    w = rng.normal(0.0, gain / np.sqrt(c_in * k * k), size=(c_out, c_in, k, k)).astype(np.float32)
    b = rng.normal(0.0, 0.1, size=c_out).astype(np.float32)  # a folded batch norm's shift
    return nir.Conv2d(input_shape=(size, size), weight=w, stride=stride, padding=k // 2, dilation=1, groups=1,
                      bias=b)


def _if(c, size, threshold):
    shape = (c, size, size)
    return nir.IF(r=np.ones(shape, np.float32), v_threshold=np.full(shape, threshold, np.float32),
                  v_reset=np.zeros(shape, np.float32))


def sew_resnet_graph(*, image: int = 224, channels: int = 3, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2),
                     classes: int = 1000, seed: int = 0, gain: float = 2.0, threshold: float = 0.5) -> nir.NIRGraph:
    """The graph described in the module docstring (weights N(0, gain^2 / fan_in), IF thresholds)."""
    rng = np.random.default_rng(seed)
    nodes: dict = {"input": nir.Input(np.array([channels, image, image]))}
    edges: list = []
    size = (image + 2 * 3 - 7) // 2 + 1
    nodes["conv1"], nodes["sn1"] = _conv(rng, channels, widths[0], 7, 2, image, gain), _if(widths[0], size, threshold)
    nodes["pool"] = nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
    edges += [("input", "conv1"), ("conv1", "sn1"), ("sn1", "pool")]
    prev, c_prev, size = "pool", widths[0], size // 2
    for s, (width, n_blocks) in enumerate(zip(widths, blocks)):
        for b in range(n_blocks):
            stride = 2 if (s > 0 and b == 0) else 1
            out = (size + 2 - 3) // stride + 1
            p = f"layer{s + 1}.{b}."
            nodes[p + "conv1"] = _conv(rng, c_prev, width, 3, stride, size, gain)
            nodes[p + "sn1"] = _if(width, out, threshold)
            nodes[p + "conv2"] = _conv(rng, width, width, 3, 1, out, gain)
            nodes[p + "sn2"] = _if(width, out, threshold)
            nodes[p + "add"] = nir.Scale(np.ones((width, out, out), np.float32))
            edges += [(prev, p + "conv1"), (p + "conv1", p + "sn1"), (p + "sn1", p + "conv2"),
                      (p + "conv2", p + "sn2"), (p + "sn2", p + "add")]
            if stride != 1 or c_prev != width:
                nodes[p + "downsample"] = nir.Conv2d(input_shape=(size, size), **_ds(rng, c_prev, width, gain))
                nodes[p + "downsample_sn"] = _if(width, out, threshold)
                edges += [(prev, p + "downsample"), (p + "downsample", p + "downsample_sn"),
                          (p + "downsample_sn", p + "add")]
            else:
                edges.append((prev, p + "add"))
            prev, c_prev, size = p + "add", width, out
    nodes["avgpool"] = nir.AvgPool2d(kernel_size=np.array([size, size]), stride=np.array([size, size]),
                                     padding=np.array([0, 0]))
    nodes["flatten"] = nir.Flatten(input_type={"input": np.array([c_prev, 1, 1])}, start_dim=0, end_dim=-1)
    fc = rng.normal(0.0, 1.0 / np.sqrt(c_prev), size=(classes, c_prev)).astype(np.float32)
    nodes["fc"] = nir.Affine(weight=fc, bias=np.zeros(classes, np.float32))
    nodes["output"] = nir.Output(np.array([classes]))
    edges += [(prev, "avgpool"), ("avgpool", "flatten"), ("flatten", "fc"), ("fc", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _ds(rng, c_in, c_out, gain) -> dict:
    w = rng.normal(0.0, gain / np.sqrt(c_in), size=(c_out, c_in, 1, 1)).astype(np.float32)
    return dict(weight=w, stride=2, padding=0, dilation=1, groups=1,
                bias=rng.normal(0.0, 0.1, size=c_out).astype(np.float32))


def linear_lif_graph(rng, d_in: int, d_out: int, *, weight_std: float = 0.05, tau: float = 2.0) -> nir.NIRGraph:
    """input -> Affine (normal weights, zero bias) -> LIF (tau = r = `tau`, threshold 1) -> output: one layer
    feeding leaky neurons, the shape of the kernel benchmarks' and tests' Hessian layers."""
    return nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([d_in])}),
               "fc": nir.Affine(weight=rng.normal(0, weight_std, (d_out, d_in)), bias=np.zeros(d_out)),
               "lif": nir.LIF(tau=np.full(d_out, tau), r=np.full(d_out, tau), v_leak=np.zeros(d_out),
                              v_threshold=np.ones(d_out), v_reset=np.zeros(d_out)),
               "output": nir.Output(output_type={"output": np.array([d_out])})},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
