"""The primitive catalogue (sbc_onnx/primitives.py) against brute force.

Each neuron kind's simulator step (built from its catalogue stages) is compared with the textbook update
written out explicitly here, over 50 steps of random input, for every discretization setting; the SMP
kernel decays, the folding fields, state names, roles and parameter fields are checked against explicit
tables and against the NIR classes.
"""

from __future__ import annotations

import dataclasses
import itertools

import nir
import numpy as np
import pytest

from sbc_onnx.errors import SbcError
from sbc_onnx.nodes import EXTRA_NODES
from sbc_onnx.primitives import (CATALOGUE, LINEAR, NEURON, NONLINEAR, PARAM_FIELDS, PORT, WEIGHT, kinds,
                                 lookup, primitive)
from sbc_onnx.sim.config import SimConfig
from sbc_onnx.sim.ops import build_op

N, B, T = 7, 3, 50
NEURON_KINDS = ("LIF", "LI", "IF", "I", "CubaLIF", "CubaLI")
CONFIGS = [SimConfig(dt=1e-4, integrator=i, reset=r, cuba_order=c, dtype="float64")
           for i, r, c in itertools.product(("euler", "exact"), ("to_v_reset", "subtract"),
                                            ("current_first", "previous_current"))]


def _ids(cfg: SimConfig) -> str:
    return f"{cfg.integrator}-{cfg.reset}-{cfg.cuba_order}"


# ------------------------------------------------------------------------------------------------------
# random neurons and the textbook dynamics
# ------------------------------------------------------------------------------------------------------
def make_neuron(kind: str, rng: np.random.Generator):
    """A NIR node of `kind` with per-neuron random parameters chosen so that spiking kinds fire often
    but not always (taus give k = dt/tau in [0.03, 0.3] at dt = 1e-4)."""
    ranges = {"tau": (3e-4, 3e-3), "tau_syn": (3e-4, 3e-3), "tau_mem": (3e-4, 3e-3), "r": (0.5, 2.0),
              "v_leak": (-0.3, 0.3), "v_threshold": (0.6, 1.4), "v_reset": (-0.4, 0.2), "w_in": (2.0, 4.0)}
    p = {f: rng.uniform(lo, hi, N) for f, (lo, hi) in ranges.items()}
    fields = [f.name for f in dataclasses.fields(getattr(nir, kind)) if f.name in p]
    return getattr(nir, kind)(**{f: p[f] for f in fields})


def decay(tau, cfg: SimConfig):
    """k: the fraction of the way to the target per step."""
    return cfg.dt / tau if cfg.integrator == "euler" else 1.0 - np.exp(-cfg.dt / tau)


def textbook(kind: str, node, x: np.ndarray, cfg: SimConfig):
    """Outputs (T, B, N) and final state {name: (B, N)} by the explicit formulas, float64.

    LIF/LI    v = (1-k) v + k (v_leak + r x)
    IF/I      v = v + r x                      (dt ignored)
    CubaLIF/LI  i' = (1-ks) i + ks w_in x ;  v = (1-km) v + km (v_leak + r j),  j = i' (current_first)
                                                                                  or i (previous_current)
    spiking kinds: s = v > v_threshold ; v = v_reset where s (to_v_reset) or v - v_threshold*s (subtract)
    """
    v = np.zeros((B, N))
    i = np.zeros((B, N))
    ys = []
    for t in range(T):
        if kind in ("LIF", "LI"):
            k = decay(node.tau, cfg)
            v = (1 - k) * v + k * (node.v_leak + node.r * x[t])
        elif kind in ("IF", "I"):
            v = v + node.r * x[t]
        else:
            ks, km = decay(node.tau_syn, cfg), decay(node.tau_mem, cfg)
            i_new = (1 - ks) * i + ks * node.w_in * x[t]
            j = i_new if cfg.cuba_order == "current_first" else i
            v = (1 - km) * v + km * (node.v_leak + node.r * j)
            i = i_new
        if kind in ("LIF", "IF", "CubaLIF"):
            s = v > node.v_threshold
            reset = 0.0 if node.v_reset is None else node.v_reset
            v = np.where(s, reset, v) if cfg.reset == "to_v_reset" else v - node.v_threshold * s
            ys.append(s.astype(np.float64))
        else:
            ys.append(v.copy())
    state = {"v": v} if kind not in ("CubaLIF", "CubaLI") else {"i": i, "v": v}
    return np.stack(ys), state


def simulate(node, x: np.ndarray, cfg: SimConfig):
    op = build_op("n", node, cfg)
    state = op.init_state(x[0])
    ys = []
    for t in range(T):
        y, state = op.step(x[t], state)
        ys.append(np.array(y, copy=True))
    return np.stack(ys), state


def drive(rng, kind: str = ""):
    """Random input currents (an integrator gets smaller ones, so that it does not fire every step)."""
    return rng.uniform(-0.5, 3.0, (T, B, N)) * (0.4 if kind in ("IF", "I") else 1.0)


# ------------------------------------------------------------------------------------------------------
# the simulator step of every neuron kind
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids)
@pytest.mark.parametrize("kind", NEURON_KINDS)
def test_neuron_step_matches_textbook(kind, cfg):
    rng = np.random.default_rng(sum(map(ord, kind)))
    node = make_neuron(kind, rng)
    x = drive(rng, kind)
    y, state = simulate(node, x, cfg)
    y_ref, state_ref = textbook(kind, node, x, cfg)
    if primitive(kind).spiking:
        rate = y_ref.mean()
        assert 0.03 < rate < 0.97, f"test input should make {kind} fire sometimes (rate {rate:.2f})"
        np.testing.assert_array_equal(y, y_ref)
    else:
        np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    assert set(state) == set(state_ref) == set(primitive(kind).state)
    for name in state_ref:
        np.testing.assert_allclose(state[name], state_ref[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ("LIF", "IF", "CubaLIF"))
def test_absent_v_reset_resets_to_zero(kind):
    rng = np.random.default_rng(5)
    node = make_neuron(kind, rng)
    node.v_reset = None
    x = drive(rng, kind)
    cfg = SimConfig(dtype="float64")
    y, state = simulate(node, x, cfg)
    y_ref, state_ref = textbook(kind, node, x, cfg)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(state["v"], state_ref["v"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ("IF", "I"))
def test_integrators_ignore_dt(kind):
    rng = np.random.default_rng(1)
    node, x = make_neuron(kind, rng), drive(rng, kind)
    a = simulate(node, x, SimConfig(dt=1e-4, dtype="float64"))[0]
    b = simulate(node, x, SimConfig(dt=0.5, integrator="exact", dtype="float64"))[0]
    np.testing.assert_array_equal(a, b)


def test_euler_and_exact_differ():
    """The integrator setting reaches the step (a mutation that ignores it would pass the other tests
    only if the textbook formula ignored it too)."""
    rng = np.random.default_rng(2)
    node, x = make_neuron("LI", rng), drive(rng)
    a = simulate(node, x, SimConfig(integrator="euler", dtype="float64"))[0]
    b = simulate(node, x, SimConfig(integrator="exact", dtype="float64"))[0]
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("reset", ("to_v_reset", "subtract"))
@pytest.mark.parametrize("kind", NEURON_KINDS)
def test_scaled_fields_make_the_neuron_homogeneous(kind, reset):
    """Scaling the input and every `scaled_fields` entry by c scales the state by c and leaves the spikes
    unchanged (what hardware folding relies on); a field missing from the list would break it."""
    rng = np.random.default_rng(3)
    node, x = make_neuron(kind, rng), drive(rng, kind)
    c = 0.37
    scaled = dataclasses.replace(node, **{f: getattr(node, f) * c for f in primitive(kind).scaled_fields})
    cfg = SimConfig(dtype="float64", reset=reset)
    y, st = simulate(node, x, cfg)
    ys, sts = simulate(scaled, x * c, cfg)
    if primitive(kind).spiking:
        np.testing.assert_array_equal(ys, y)
    else:
        np.testing.assert_allclose(ys, y * c, rtol=1e-10, atol=1e-12)
    for name in st:
        np.testing.assert_allclose(sts[name], st[name] * c, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------------
# the declared properties of every kind
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS[::2], ids=_ids)  # integrator x reset; cuba_order is irrelevant
@pytest.mark.parametrize("kind", NEURON_KINDS)
def test_kernel_betas_are_one_minus_decay_per_stage(kind, cfg):
    rng = np.random.default_rng(4)
    node = make_neuron(kind, rng)
    betas = primitive(kind).kernel_betas(node, cfg)
    if kind in ("IF", "I"):
        expected = (1.0,)
    elif kind in ("LIF", "LI"):
        expected = (np.mean(1 - decay(node.tau, cfg)),)
    else:  # synaptic stage first, then the membrane
        expected = (np.mean(1 - decay(node.tau_syn, cfg)), np.mean(1 - decay(node.tau_mem, cfg)))
    assert len(betas) == len(expected)
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
    if cfg.integrator == "exact" and kind in ("LIF", "LI"):
        np.testing.assert_allclose(betas[0], np.mean(np.exp(-cfg.dt / node.tau)), rtol=1e-12)


def test_kernel_betas_of_uniform_taus_are_exact():
    cfg = SimConfig(dt=1e-3)
    node = nir.CubaLIF(tau_syn=np.full(4, 5e-3), tau_mem=np.full(4, 2e-2), r=np.ones(4), v_leak=np.zeros(4),
                       v_threshold=np.ones(4), v_reset=np.zeros(4), w_in=np.ones(4))
    assert primitive(node).kernel_betas(node, cfg) == pytest.approx((1 - 0.2, 1 - 0.05), rel=1e-12)


EXPECTED = {  # kind: (role, spiking, state, scaled_fields)
    "Input": (PORT, False, (), ()),
    "Output": (PORT, False, (), ()),
    "Affine": (WEIGHT, False, (), ()),
    "Linear": (WEIGHT, False, (), ()),
    "Conv1d": (WEIGHT, False, (), ()),
    "Conv2d": (WEIGHT, False, (), ()),
    "Scale": (LINEAR, False, (), ()),
    "SumPool2d": (LINEAR, False, (), ()),
    "AvgPool2d": (LINEAR, False, (), ()),
    "Flatten": (LINEAR, False, (), ()),
    "Delay": (LINEAR, False, ("buf",), ()),
    "Threshold": (NONLINEAR, True, (), ()),
    "MaxPool2d": (NONLINEAR, False, (), ()),  # beyond NIR (sbc_onnx/nodes.py)
    "LIF": (NEURON, True, ("v",), ("v_leak", "v_threshold", "v_reset")),
    "LI": (NEURON, False, ("v",), ("v_leak",)),
    "IF": (NEURON, True, ("v",), ("v_threshold", "v_reset")),
    "I": (NEURON, False, ("v",), ()),
    "CubaLIF": (NEURON, True, ("i", "v"), ("v_leak", "v_threshold", "v_reset")),
    "CubaLI": (NEURON, False, ("i", "v"), ("v_leak",)),
}


def test_catalogue_is_the_expected_table():
    assert set(CATALOGUE) == set(EXPECTED)
    for kind, (role, spiking, state, scaled) in EXPECTED.items():
        p = CATALOGUE[kind]
        assert (p.role, p.spiking, p.state, p.scaled_fields) == (role, spiking, state, scaled), kind
        assert p.kind == kind
    assert CATALOGUE["Conv1d"].conv and CATALOGUE["Conv2d"].conv and not CATALOGUE["Affine"].conv
    assert [k for k in CATALOGUE if CATALOGUE[k].leaky] == ["LIF", "LI", "CubaLIF", "CubaLI"]
    assert CATALOGUE["CubaLIF"].tau_fields == ("tau_syn", "tau_mem")


def test_kind_queries():
    assert set(kinds(NEURON)) == set(NEURON_KINDS)
    assert set(kinds(NEURON, spiking=True)) == {"LIF", "IF", "CubaLIF"}
    assert set(kinds(spiking=True)) == {"LIF", "IF", "CubaLIF", "Threshold"}
    assert set(kinds(WEIGHT)) == {"Affine", "Linear", "Conv1d", "Conv2d"}
    assert set(kinds()) == set(CATALOGUE)
    node = make_neuron("LIF", np.random.default_rng(0))
    assert primitive(node) is primitive("LIF") is lookup(node)
    assert lookup("NoSuchKind") is None
    with pytest.raises(SbcError, match="not supported"):
        primitive("NoSuchKind")


# fields that describe geometry / layout (kept as node attributes, not parameter tensors)
STRUCTURAL = {"input_shape", "stride", "padding", "dilation", "groups", "kernel_size", "start_dim", "end_dim"}
NIR_BOOKKEEPING = {"input_type", "output_type", "metadata"}


@pytest.mark.parametrize("kind", sorted(CATALOGUE))
def test_param_fields_cover_the_nir_class(kind):
    """Every field of the NIR class is a declared parameter (a tensor), a known structural field or NIR
    bookkeeping; every declared parameter is a field of the class. A new numeric field in `nir` fails."""
    fields = {f.name for f in dataclasses.fields(EXTRA_NODES.get(kind) or getattr(nir, kind))}
    params = set(CATALOGUE[kind].params)
    assert params <= fields, f"{kind} declares fields nir.{kind} does not have: {params - fields}"
    assert params <= set(PARAM_FIELDS)
    unknown = fields - params - STRUCTURAL - NIR_BOOKKEEPING
    assert not unknown, f"nir.{kind} fields not in the catalogue: {sorted(unknown)}"
    p = CATALOGUE[kind]
    for s in p.stages:  # the stages name fields the class has
        assert {f for f in (s.tau, s.gain, s.leak) if f} <= params
    assert {f for f in (p.threshold, p.reset) if f} <= params


def test_param_fields_are_the_union():
    assert set(PARAM_FIELDS) == {f for p in CATALOGUE.values() for f in p.params}
    assert len(PARAM_FIELDS) == len(set(PARAM_FIELDS))
    assert not set(PARAM_FIELDS) & STRUCTURAL
