"""Walker against explicit per-step reference loops: topologies and every primitive."""

from __future__ import annotations

import nir
import numpy as np
import pytest

from sbc_onnx.errors import SbcError
from sbc_onnx.graph import flatten
from sbc_onnx.sim import REGISTRY, SimConfig, Walker

from topologies import ALL, DT

CFG = SimConfig(dt=DT, dtype="float64")


@pytest.mark.parametrize("name", sorted(ALL))
def test_topology_matches_reference(name):
    rng = np.random.default_rng(3)
    graph, ref = ALL[name](rng)
    n_in = int(flatten(graph).nodes["input"].output_type["output"][0])
    x = (rng.random((40, 3, n_in)) < 0.4).astype(float)
    out = Walker(graph, CFG).run(x).outputs["output"]
    expected = ref(x)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    if name not in ("recurrent_first",):
        assert 0 < np.count_nonzero(expected)  # the test exercises spikes, not an all-zero trace


def test_back_edges_found():
    rng = np.random.default_rng(0)
    fg = flatten(ALL["recurrent_second"](rng)[0])
    assert fg.back_edges == {("rec", "l1")}
    assert fg.order.index("a1") < fg.order.index("l1") < fg.order.index("rec")
    fg = flatten(ALL["nested_subgraph"](rng)[0])
    assert ("rnn.w_rec", "rnn.lif") in fg.back_edges


def _direct_conv2d(x, w, b, stride, pad, dil, groups):
    """Textbook loops (PyTorch semantics) for small tensors."""
    B, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    Ho = (H + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    y = np.zeros((B, O, Ho, Wo))
    og = O // groups
    for o in range(O):
        g = o // og
        for i in range(Ho):
            for j in range(Wo):
                for c in range(Cg):
                    for p in range(kh):
                        for q in range(kw):
                            y[:, o, i, j] += w[o, c, p, q] * xp[:, g * Cg + c, i * stride[0] + p * dil[0],
                                                                  j * stride[1] + q * dil[1]]
        y[:, o] += b[o]
    return y


@pytest.mark.parametrize("stride,pad,dil,groups", [((1, 1), (0, 0), (1, 1), 1), ((2, 1), (1, 2), (1, 1), 1),
                                                   ((1, 1), (2, 1), (2, 1), 2)])
def test_conv2d_and_pools(stride, pad, dil, groups):
    rng = np.random.default_rng(1)
    x = rng.random((2, 4, 7, 8))
    w, b = rng.normal(size=(6, 4 // groups, 3, 2)), rng.normal(size=6)
    node = nir.Conv2d(input_shape=(7, 8), weight=w, stride=stride, padding=pad, dilation=dil, groups=groups, bias=b)
    op = REGISTRY["Conv2d"](node, CFG)
    y, _ = op.step(x, None)
    np.testing.assert_allclose(y, _direct_conv2d(x, w, b, stride, pad, dil, groups), atol=1e-10)
    pool = REGISTRY["SumPool2d"](nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                               padding=np.array([0, 0])), CFG)
    z, _ = pool.step(x, None)
    np.testing.assert_allclose(z, x[:, :, :6, :8].reshape(2, 4, 3, 2, 4, 2).sum(axis=(3, 5)))
    avg = REGISTRY["AvgPool2d"](nir.AvgPool2d(kernel_size=np.array([3, 3]), stride=np.array([1, 2]),
                                              padding=np.array([1, 1])), CFG)
    z, _ = avg.step(x, None)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    assert z.shape == (2, 4, 7, 4)
    np.testing.assert_allclose(z[:, :, 2, 1], xp[:, :, 2:5, 2:5].sum(axis=(2, 3)) / 9)


def test_conv_same_padding_and_conv1d():
    rng = np.random.default_rng(2)
    x = rng.random((2, 3, 9, 9))
    w, b = rng.normal(size=(2, 3, 3, 3)), np.zeros(2)
    op = REGISTRY["Conv2d"](nir.Conv2d(input_shape=(9, 9), weight=w, stride=1, padding="same", dilation=2,
                                       groups=1, bias=b), CFG)
    y, _ = op.step(x, None)
    np.testing.assert_allclose(y, _direct_conv2d(x, w, b, (1, 1), (2, 2), (2, 2), 1), atol=1e-10)
    x1 = rng.random((2, 3, 11))
    w1 = rng.normal(size=(4, 3, 3))
    op1 = REGISTRY["Conv1d"](nir.Conv1d(input_shape=11, weight=w1, stride=2, padding=1, dilation=1, groups=1,
                                        bias=np.ones(4)), CFG)
    y1, _ = op1.step(x1, None)
    ref = _direct_conv2d(x1[..., None], w1[..., None], np.ones(4), (2, 1), (1, 0), (1, 1), 1)[..., 0]
    np.testing.assert_allclose(y1, ref, atol=1e-10)


def test_neuron_primitives_single_steps():
    x = np.array([[0.5, 2.0]])
    li = REGISTRY["LI"](nir.LI(tau=np.array([1e-3, 2e-3]), r=np.array([1.0, 2.0]), v_leak=np.array([0.1, 0.0])), CFG)
    st = li.init_state(x)
    y, st = li.step(x, st)
    np.testing.assert_allclose(y, [[0.1 * (0.1 + 0.5), 0.05 * 4.0]])
    i_op = REGISTRY["I"](nir.I(r=np.array([2.0, 3.0])), CFG)
    st = i_op.init_state(x)
    y, st = i_op.step(x, st)
    y, st = i_op.step(x, st)
    np.testing.assert_allclose(y, [[2.0, 12.0]])  # dt-free per-step integration
    th = REGISTRY["Threshold"](nir.Threshold(threshold=np.array([0.5, 1.0])), CFG)
    np.testing.assert_array_equal(th.step(x, None)[0], [[0.0, 1.0]])  # strict >
    cuba = nir.CubaLI(tau_syn=np.full(2, 2e-4), tau_mem=np.full(2, 1e-3), r=np.ones(2), v_leak=np.zeros(2),
                      w_in=np.full(2, 2.0))
    for order, v1 in (("current_first", 0.1 * 0.5 * 2 * 0.5), ("previous_current", 0.0)):
        op = REGISTRY["CubaLI"](cuba, CFG.with_(cuba_order=order))
        st = op.init_state(x)
        y, st = op.step(x, st)
        assert y[0, 0] == pytest.approx(v1)


def test_if_reset_modes():
    node = nir.IF(r=np.ones(1), v_threshold=np.ones(1), v_reset=np.full(1, -0.25))
    for reset, expected_v in (("to_v_reset", -0.25), ("subtract", 0.5)):
        op = REGISTRY["IF"](node, CFG.with_(reset=reset))
        st = op.init_state(np.zeros((1, 1)))
        s, st = op.step(np.full((1, 1), 1.5), st)
        assert s[0, 0] == 1 and st["v"][0, 0] == pytest.approx(expected_v)


def test_delay_and_flatten():
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([2, 3])), "f": nir.Flatten(input_type={"input": np.array([2, 3])},
                                                                                   start_dim=0),
                            "d": nir.Delay(delay=np.array([0, 2e-4, 3e-4, 0, 1e-4, 0])),
                            "output": nir.Output(np.array([6]))},
                     edges=[("input", "f"), ("f", "d"), ("d", "output")])
    x = np.random.default_rng(0).random((6, 2, 2, 3))
    out = Walker(g, CFG).run(x).outputs["output"]
    flat = x.reshape(6, 2, 6)
    for j, d in enumerate([0, 2, 3, 0, 1, 0]):
        np.testing.assert_allclose(out[d:, :, j], flat[: 6 - d, :, j])
        assert np.all(out[:d, :, j] == 0)


def test_unsupported_node_named():
    from nir.ir.graph import Identity  # exists in nir but is not a serializable primitive

    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([2])), "odd": Identity(np.array([2])),
                            "output": nir.Output(np.array([2]))},
                     edges=[("input", "odd"), ("odd", "output")], type_check=False)
    with pytest.raises(SbcError, match="'odd'.*Identity"):
        Walker(g, CFG)


def test_braille_graphs_run(data_dir):
    from sbc_onnx.io.nir_io import read_nir

    for f in ("braille_noDelay_bias_zero.nir", "braille_noDelay_noBias_subtract.nir"):
        g = read_nir(data_dir / "nir_paper/03_rnn" / f)
        x = (np.random.default_rng(0).random((200, 4, 12)) < 0.3).astype(np.float32)
        res = Walker(g, SimConfig(dt=1e-4)).run(x)
        assert res.outputs["output"].shape == (200, 4, 7)
        assert res.counts["lif1.lif"].sum() > 0
