"""Hardware deployment: profiles, scale folding, integer model vs float twin, constraint checks, energy report."""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest

from sbc_onnx.cli import main
from sbc_onnx.errors import SbcError
from sbc_onnx.graph import flatten
from sbc_onnx.hardware import (
    check_graph,
    compare_table,
    energy_report,
    fold_scales,
    integerize,
    load_profile,
    profile_names,
    write_deployment,
)
from sbc_onnx.hardware.fanout import layer_fanout
from sbc_onnx.hardware.profiles import PROFILE_DIR, UNCITED
from sbc_onnx.io.nir_io import read_nir
from sbc_onnx.sim import SimConfig, Walker

PROFILES = ["loihi2", "speck", "spinnaker2", "xylo-audio2", "brainscales2"]


# ---------------------------------------------------------------- profiles

@pytest.mark.parametrize("name", PROFILES + ["int4", "int8"])
def test_profiles_load_and_validate(name):
    p = load_profile(name)
    assert p.name == name and (p.sources or p.citations)
    assert p.weight_min < 0 < p.weight_max
    assert p.grid_scheme in ("symmetric", "symmetric_restricted")
    lo, hi = p.weight_min, p.weight_max
    assert hi <= 2 ** (p.weight_bits - 1) - 1 and lo >= -(2 ** (p.weight_bits - 1))


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_constraint_cites_its_source(name):
    """Each constraint of a built-in profile is {"value", "source"}: a repository file and line (with the commit
    and the quoted text), or null with the reason no public source was found."""
    raw = json.loads((PROFILE_DIR / f"{name}.json").read_text())
    constraints = {k: v for k, v in raw.items() if k not in UNCITED}
    assert constraints
    for k, v in constraints.items():
        assert isinstance(v, dict) and set(v) >= {"value", "source"}, f"{name}.{k} has no source"
        src = v["source"]
        if src is None:
            assert v.get("why", "").strip(), f"{name}.{k}: a null source needs a why"
            continue
        assert src.get("repo") and len(src.get("commit", "")) == 40, f"{name}.{k}: repository and commit"
        assert src.get("file") and isinstance(src.get("line"), int) and src["line"] >= 1, f"{name}.{k}: file and line"
        assert src.get("quote"), f"{name}.{k}: the quoted line"
    p = load_profile(name)
    assert {k for k, _, _ in p.citations} == set(constraints)
    for k in constraints:  # the loader unwrapped every value
        value = raw[k]["value"]
        assert getattr(p, k) == (tuple(value) if isinstance(value, list) else value)


def test_cli_profiles_prints_each_constraint_with_its_source(capsys):
    assert main(["profiles", "speck"]) == 0
    out = capsys.readouterr().out
    sources = out.split("sources:")[1].splitlines()
    bias = next(x for x in sources if x.split()[:1] == ["bias_bits"])
    assert "synsense/sinabs@904eb89398" in bias and "discretize.py:268" in bias and "WEIGHT_PRECISION_BITS" in bias
    assert main(["profiles", "loihi2"]) == 0
    cores = next(x for x in capsys.readouterr().out.splitlines() if x.split()[:1] == ["cores"] and "source" in x)
    assert "no public source: only a secondary source" in cores


@pytest.mark.parametrize("source, match", [
    ({"repo": "a/b", "commit": "0" * 40, "file": "x.py"}, "line"),
    ({"repo": "a/b", "commit": "0" * 40, "line": 3}, "file"),
    ({"repo": "a/b", "file": "x.py", "line": 3}, "commit"),
    ({"repo": "a/b", "commit": "0" * 40, "file": "x.py", "line": 0}, "line"),
    (None, "why"),
])
def test_profile_citation_without_file_and_line_is_refused(tmp_path, source, match):
    d = json.loads((PROFILE_DIR / "speck.json").read_text())
    d["bias_bits"] = {"value": 8, "source": source}
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(SbcError, match=match):
        load_profile(tmp_path / "p.json")


def test_profile_errors(tmp_path):
    with pytest.raises(SbcError, match="unknown hardware profile"):
        load_profile("truenorth9000")
    with pytest.raises(SbcError, match="int2 .. int8"):
        load_profile("int12")
    bad = json.loads((PROFILE_DIR / "speck.json").read_text())
    bad["weight_max"] = 100
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SbcError, match="not a symmetric"):
        load_profile(tmp_path / "bad.json")
    assert set(PROFILES) <= set(profile_names())


# ---------------------------------------------------------------- folding

def _net(kind, rng, n_in=12, n_hid=16, n_out=6):
    def neuron(n):
        thr = rng.uniform(0.5, 1.5, n)
        vr = rng.uniform(-0.2, 0.2, n)
        if kind == "IF":
            return nir.IF(r=np.ones(n), v_threshold=thr, v_reset=vr)
        return nir.LIF(tau=rng.uniform(2e-3, 2e-2, n), r=rng.uniform(0.5, 2, n), v_leak=rng.uniform(-0.1, 0.3, n),
                       v_threshold=thr, v_reset=vr)

    g = nir.NIRGraph.from_list(
        nir.Affine(weight=rng.normal(0, 0.6, (n_hid, n_in)), bias=rng.normal(0, 0.05, n_hid)),
        neuron(n_hid),
        nir.Linear(weight=rng.normal(0, 0.5, (n_out, n_hid))),
        neuron(n_out))
    return g


@pytest.mark.parametrize("kind", ["IF", "LIF"])
@pytest.mark.parametrize("reset", ["to_v_reset", "subtract"])
def test_folding_keeps_spike_trains(kind, reset):
    rng = np.random.default_rng(1)
    g = _net(kind, rng)
    cfg = SimConfig(dt=1e-3, reset=reset, dtype="float64")
    fg = flatten(g)
    layers = [n for n in fg.order if fg.kind(n) in ("Affine", "Linear")]
    scales = {l: rng.uniform(0.01, 3.0, np.asarray(fg.nodes[l].weight).shape[0]) for l in layers}
    folded, nmap = fold_scales(g, scales)
    assert set(nmap) == {n for n in fg.order if fg.kind(n) == kind}
    x = (rng.random((200, 8, 12)) < 0.3).astype(np.float64)
    rec = {}

    def grab(tag):
        return {n: (lambda t, y, n=n: rec.setdefault((tag, n), []).append(y.copy())) for n in nmap}

    Walker(g, cfg).run(x, on_output=grab("a"), record_outputs=False)
    Walker(folded, cfg).run(x, on_output=grab("b"), record_outputs=False)
    total = 0
    for n in nmap:
        a, b = np.stack(rec[("a", n)]), np.stack(rec[("b", n)])
        np.testing.assert_array_equal(a, b)  # every spike of every neuron at every step
        total += a.sum()
    assert total > 100  # the comparison is about real activity
    # folding really changed the parameters (state scaled by 1/s)
    ffg = flatten(folded)
    n0 = next(iter(nmap))
    assert not np.allclose(np.asarray(ffg.nodes[n0].v_threshold), np.asarray(fg.nodes[n0].v_threshold))


def test_folding_conv_pool_flatten_per_channel():
    """Per-output-channel scales carried through SumPool2d and Flatten to a (C, H, W) IF and a dense IF."""
    rng = np.random.default_rng(2)
    g = nir.NIRGraph(
        nodes={"in": nir.Input(np.array([2, 8, 8])),
               "c": nir.Conv2d(input_shape=(8, 8), weight=rng.normal(0, 0.5, (4, 2, 3, 3)), stride=1, padding=1,
                               dilation=1, groups=1, bias=rng.normal(0, 0.05, 4)),
               "n1": nir.IF(r=np.ones((4, 8, 8)), v_threshold=np.full((4, 8, 8), 1.0), v_reset=np.zeros((4, 8, 8))),
               "p": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
               "f": nir.Flatten(start_dim=0, end_dim=-1, input_type={"input": np.array([4, 4, 4])}),
               "d": nir.Linear(weight=rng.normal(0, 0.3, (5, 64))),
               "n2": nir.IF(r=np.ones(5), v_threshold=np.full(5, 1.0), v_reset=np.zeros(5)),
               "out": nir.Output(np.array([5]))},
        edges=[("in", "c"), ("c", "n1"), ("n1", "p"), ("p", "f"), ("f", "d"), ("d", "n2"), ("n2", "out")])
    cfg = SimConfig(dt=1.0, dtype="float64")
    folded, nmap = fold_scales(g, {"c": rng.uniform(0.1, 2, 4), "d": rng.uniform(0.1, 2, 5)})
    assert nmap["n1"].shape == (4, 8, 8) and np.ptp(nmap["n1"][1]) == 0
    x = (rng.random((60, 4, 2, 8, 8)) < 0.4).astype(np.float64)
    a, b = Walker(g, cfg).run(x), Walker(folded, cfg).run(x)
    for n in ("n1", "n2"):
        np.testing.assert_array_equal(a.counts[n], b.counts[n])
    assert a.counts["n1"].sum() > 50 and a.counts["n2"].sum() > 5


def test_folding_refuses_unscaled_inputs():
    rng = np.random.default_rng(3)
    g = nir.NIRGraph(
        nodes={"in": nir.Input(np.array([4])), "w": nir.Linear(weight=rng.normal(size=(4, 4))),
               "n": nir.IF(r=np.ones(4), v_threshold=np.ones(4), v_reset=np.zeros(4)), "out": nir.Output(np.array([4]))},
        edges=[("in", "w"), ("w", "n"), ("in", "n"), ("n", "out")])
    with pytest.raises(SbcError, match="carries no weight scale"):
        fold_scales(g, {"w": np.ones(4) * 2})


def test_integerize_twin_is_exact_and_requantizes_shared_neurons():
    """Two layers feeding one neuron with different scales: re-quantized to a shared scale; the integer
    model and its twin give identical spikes; thresholds become integers."""
    rng = np.random.default_rng(4)
    qa = rng.integers(-127, 128, (6, 5))
    qb = rng.integers(-127, 128, (6, 3))
    sa, sb = np.full(6, 0.011), np.full(6, 0.007)
    g = nir.NIRGraph(
        nodes={"x": nir.Input(np.array([5])), "y": nir.Input(np.array([3])),
               "a": nir.Linear(weight=(qa * sa[:, None]).astype(np.float32)),
               "b": nir.Linear(weight=(qb * sb[:, None]).astype(np.float32)),
               "n": nir.IF(r=np.ones(6), v_threshold=np.full(6, 1.0), v_reset=np.zeros(6)),
               "out": nir.Output(np.array([6]))},
        edges=[("x", "a"), ("y", "b"), ("a", "n"), ("b", "n"), ("n", "out")])
    im = integerize(g, {"a": (qa, sa, None), "b": (qb, sb, None)}, "speck")
    assert any("re-quantized" in n for n in im.notes)
    fi = flatten(im.int_graph)
    assert np.asarray(fi.nodes["a"].weight).dtype.kind == "i"
    assert np.asarray(fi.nodes["n"].v_threshold).dtype.kind == "i"
    xs = {"x": rng.integers(0, 2, (100, 4, 5)).astype(np.float32), "y": rng.integers(0, 2, (100, 4, 3)).astype(np.float32)}
    cfg = SimConfig(dt=1.0)
    ri, rt = Walker(im.int_graph, cfg).run(xs), Walker(im.float_graph, cfg).run(xs)
    np.testing.assert_array_equal(ri.counts["n"], rt.counts["n"])
    assert ri.counts["n"].sum() > 20
    rules = {v.rule for v in check_graph(im.int_graph, "speck", cfg)}
    assert not rules & {"weight-bits", "threshold-bits", "state-bits", "granularity", "homogeneous"}, rules


def test_speck_bias_is_fitted_into_the_8_bit_weight_precision():
    """sinabs discretizes a Speck bias with the 8-bit weight precision: a bias worth 300 weight codes makes
    integerize enlarge the layer's one scale until bias and weights both fit; integer model == twin."""
    rng = np.random.default_rng(8)
    q = rng.integers(-127, 128, (6, 5))
    s = np.full(6, 0.01)
    bias = np.array([3.0, -1.2, 0.5, 0.0, 2.0, -0.4])  # 3.0 / 0.01 = 300 codes
    g = nir.NIRGraph.from_list(
        nir.Input(np.array([5])), nir.Affine(weight=(q * s[:, None]).astype(np.float32), bias=bias),
        nir.IF(r=np.ones(6), v_threshold=np.full(6, 4.0), v_reset=np.zeros(6)), nir.Output(np.array([6])))
    im = integerize(g, {"affine": (q, s, None)}, "speck")
    fi = flatten(im.int_graph)
    b = np.asarray(fi.nodes["affine"].bias)
    assert b.dtype.kind == "i" and b.min() >= -128 and b.max() <= 127 and b.max() >= 120  # fits, barely rounded
    assert any("8-bit bias of speck" in n for n in im.notes)
    cfg = SimConfig(dt=1.0)
    assert not [v for v in check_graph(im.int_graph, "speck", cfg) if v.rule in ("bias-bits", "weight-bits")]
    x = rng.integers(0, 2, (80, 4, 5)).astype(np.float32)
    ri, rt = Walker(im.int_graph, cfg).run(x), Walker(im.float_graph, cfg).run(x)
    np.testing.assert_array_equal(ri.counts["if"], rt.counts["if"])
    assert ri.counts["if"].sum() > 10
    # spinnaker2 keeps neuron parameters and biases float: no re-quantization for the bias
    assert not any("bias" in n for n in integerize(g, {"affine": (q, s, None)}, "spinnaker2").notes)


def test_xylo_threshold_overflow_enlarges_only_that_neurons_scale():
    """Xylo stores int16 thresholds with one scale per target neuron: a threshold worth 10^5 weight codes
    gets its neuron's scale enlarged (Rockpool's channel_quantize does the same); the other neurons keep
    theirs, and the integer model still spikes exactly like its twin."""
    rng = np.random.default_rng(9)
    q = rng.integers(-127, 128, (4, 6))
    s = np.full(4, 1e-4)
    thr = np.array([10.0, 0.02, 0.03, 0.02])  # 10 / 1e-4 = 100000 > 32767
    g = nir.NIRGraph.from_list(
        nir.Input(np.array([6])), nir.Linear(weight=(q * s[:, None]).astype(np.float32)),
        nir.LIF(tau=np.full(4, 2.0), r=np.ones(4), v_leak=np.zeros(4), v_threshold=thr, v_reset=np.zeros(4)),
        nir.Output(np.array([4])))
    im = integerize(g, {"linear": (q, s, None)}, "xylo-audio2")
    fi = flatten(im.int_graph)
    t = np.asarray(fi.nodes["lif"].v_threshold)
    assert t.max() <= 32767 and t[0] >= 32000  # fits, and only just
    scale = np.asarray(fi.nodes["linear"].metadata["sbc_onnx.scale"])
    assert scale[0] > 3 * s[0] and np.allclose(scale[1:], s[1:], rtol=2 ** -8)
    assert any("16-bit threshold of xylo-audio2" in n for n in im.notes)
    cfg = SimConfig(dt=1.0, reset="subtract")
    assert not [v for v in check_graph(im.int_graph, "xylo-audio2", cfg) if v.rule.endswith("-bits")]
    x = rng.integers(0, 2, (60, 4, 6)).astype(np.float32)
    ri, rt = Walker(im.int_graph, cfg).run(x), Walker(im.float_graph, cfg).run(x)
    np.testing.assert_array_equal(ri.counts["lif"], rt.counts["lif"])


# ---------------------------------------------------------------- check

def test_check_lists_real_violations_on_oversized_graph():
    rng = np.random.default_rng(5)
    g = nir.NIRGraph.from_list(
        nir.Linear(weight=rng.normal(size=(600, 1024)).astype(np.float32)),
        nir.LIF(tau=np.full(600, 0.01), r=np.ones(600), v_leak=np.zeros(600), v_threshold=np.full(600, 1.0),
                v_reset=np.zeros(600)))
    rules = {v.rule for v in check_graph(g, "brainscales2") if v.severity == "error"}
    assert {"fan-in", "neurons", "node-type", "weight-bits"} <= rules, rules
    msgs = [v.message for v in check_graph(g, "brainscales2")]
    assert any("need 2048 synapse rows" in m and "brainscales2 allows 256" in m for m in msgs)  # 1024 inputs x 2 signs
    rules = {v.rule for v in check_graph(g, "xylo-audio2") if v.severity == "error"}
    assert {"inputs", "outputs", "fan-out", "reset"} <= rules, rules  # 600 hidden fit in 1000


def _linear_cubalif(w):
    n = w.shape[0]
    return nir.NIRGraph.from_list(
        nir.Input(np.array([w.shape[1]])), nir.Linear(weight=w),
        nir.CubaLIF(tau_mem=np.full(n, 0.01), tau_syn=np.full(n, 0.005), r=np.ones(n), v_leak=np.zeros(n),
                    v_threshold=np.ones(n), v_reset=np.zeros(n), w_in=np.ones(n)), nir.Output(np.array([n])))


def test_brainscales2_fan_in_counts_a_row_per_input_and_sign():
    """Each neuron has 150 non-zero inputs (<= 256 rows), but the 150 inputs reach one neuron excitatorily and
    another inhibitorily: the layer takes 150 + 150 synapse rows, which the chip does not have."""
    w = np.zeros((4, 200), np.int8)
    w[0, :150], w[1, :150] = 5, -5
    w[2, 150:], w[3, 150:] = 7, 7  # 50 more inputs, one sign: 50 rows
    rows = [v for v in check_graph(_linear_cubalif(w), "brainscales2", SimConfig(dt=1e-3)) if v.rule == "fan-in"]
    assert len(rows) == 1 and "need 350 synapse rows" in rows[0].message
    w[1, :150] = 0  # one sign per input: 200 rows fit
    assert not [v for v in check_graph(_linear_cubalif(w), "brainscales2", SimConfig(dt=1e-3)) if v.rule == "fan-in"]
    w[1, :57] = -5  # 57 inputs with both signs: 257 rows
    rows = [v for v in check_graph(_linear_cubalif(w), "brainscales2", SimConfig(dt=1e-3)) if v.rule == "fan-in"]
    assert len(rows) == 1 and "need 257 synapse rows" in rows[0].message


def test_check_speck_rules():
    rng = np.random.default_rng(6)
    g = nir.NIRGraph.from_list(
        nir.Input(np.array([2, 200, 200])),
        nir.Conv2d(input_shape=(200, 200), weight=rng.integers(-5, 5, (8, 2, 17, 17)).astype(np.int8), stride=3,
                   padding=0, dilation=1, groups=1, bias=np.zeros(8)),
        nir.LIF(tau=np.full((8, 62, 62), 5.0), r=np.ones((8, 62, 62)), v_leak=np.zeros((8, 62, 62)),
                v_threshold=np.full((8, 62, 62), 10), v_reset=np.zeros((8, 62, 62))))
    rules = {v.rule for v in check_graph(g, "speck")}
    assert {"input-size", "kernel", "stride", "node-type", "decay"} <= rules, rules


def test_fanout_exact_against_brute_force():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, 2, 3, 3)) * (rng.random((3, 2, 3, 3)) < 0.5)
    node = nir.Conv2d(input_shape=(7, 6), weight=w, stride=2, padding=1, dilation=1, groups=1, bias=np.zeros(3))
    fo = layer_fanout(node)
    OH, OW = (7 + 2 - 3) // 2 + 1, (6 + 2 - 3) // 2 + 1
    ref = np.zeros((2, 7, 6))
    for o in range(3):
        for oy in range(OH):
            for ox in range(OW):
                for c in range(2):
                    for ky in range(3):
                        for kx in range(3):
                            y, x = oy * 2 - 1 + ky, ox * 2 - 1 + kx
                            if 0 <= y < 7 and 0 <= x < 6 and w[o, c, ky, kx] != 0:
                                ref[c, y, x] += 1
    np.testing.assert_array_equal(fo, ref)


# ---------------------------------------------------------------- cnn_sinabs acceptance (slow-ish)

@pytest.fixture(scope="module")
def t100(data_dir):
    from sbc_onnx.data import load_nmnist

    return load_nmnist(data_dir / "nmnist_small/test", data_dir / "nmnist_small/test100.txt")


@pytest.fixture(scope="module")
def deployed(data_dir, t100, tmp_path_factory):
    """cnn_sinabs compressed for speck and loihi2 (calibration: 6 training samples, to keep CI short)."""
    from sbc_onnx.calibrate import calibrate
    from sbc_onnx.data import load_nmnist
    from sbc_onnx.hardware import compress_for_target

    cal = load_nmnist(data_dir / "nmnist_small/train", data_dir / "nmnist_small/train500.txt").take(6)
    g = read_nir(data_dir / "nir_paper/02_cnn/cnn_sinabs.nir")
    cfg = SimConfig(dt=1.0)
    hess = calibrate(Walker(g, cfg), cal)  # one calibration pass shared by both targets
    out = {}
    d = tmp_path_factory.mktemp("deploy")
    for target in ("speck", "loihi2"):
        ig, fgr, rep = compress_for_target(g, cal, target, cfg=cfg, measure_damage=False, calibration=hess)
        a, b = write_deployment(ig, fgr, d / f"cnn_{target}.nir", cfg)
        out[target] = (a, b, rep)
    return g, cfg, out


@pytest.mark.parametrize("target", ["speck", "loihi2"])
def test_cnn_sinabs_target_check_passes_and_int_equals_twin(deployed, t100, target):
    g, cfg, out = deployed
    a, b, rep = out[target]
    assert [v for v in rep.violations if v.severity == "error"] == []
    ig, tw = read_nir(a), read_nir(b)
    assert [v for v in check_graph(ig, target) if v.severity == "error"] == []
    assert [v for v in check_graph(g, target) if v.rule == "weight-bits"]  # the float original does not fit
    fi = flatten(ig)
    assert all(np.asarray(fi.nodes[n].weight).dtype == np.int8 for n in ("0", "2", "5", "9", "11"))
    p = load_profile(target)
    for n in ("0", "2", "5", "9", "11"):
        w = np.asarray(fi.nodes[n].weight)
        assert p.weight_min <= w.min() and w.max() <= p.weight_max
    x, y = next(t100.batches(100))
    ri, rt = Walker(ig, cfg).run(x, record_outputs=False), Walker(tw, cfg).run(x, record_outputs=False)
    for n in ri.counts:  # equal spike counts of every neuron of every layer
        np.testing.assert_array_equal(ri.counts[n], rt.counts[n])
    acc_i = (ri.counts["12"].argmax(1) == y).mean()
    acc_t = (rt.counts["12"].argmax(1) == y).mean()
    assert acc_i == acc_t >= 0.95
    assert a.stat().st_size < b.stat().st_size


def test_cnn_sinabs_energy_report_dense_vs_compressed(deployed, t100):
    g, cfg, out = deployed
    ig = read_nir(out["speck"][0])
    ds = t100.take(10)
    dense = energy_report(g, ds, cfg, name="dense")
    comp = energy_report(ig, ds, cfg, name="speck")
    assert dense.layers[0].macs_per_sample > 0 and dense.layers[0].synops_per_sample == 0
    assert all(l.synops_per_sample > 0 for l in dense.layers[1:])
    # energy follows the stated formula with the default constants
    assert dense.e_ac_pj == 0.9 and dense.e_mac_pj == 4.6
    assert np.isclose(dense.energy_pj, 0.9 * dense.synops + 4.6 * dense.macs)
    assert comp.memory("dense") * 4 == dense.memory("dense")  # int8 vs float32
    text = compare_table(dense, comp)
    assert "SynOps/sample" in text and "0.9 pJ" in text and "4.6 pJ" in text
    # synops of a layer = events x non-zero fan-out: consistent with an independent count for the last layer
    l11 = next(l for l in dense.layers if l.name == "11")
    assert l11.synops_per_sample == pytest.approx(l11.events_per_sample * l11.mean_fanout, rel=0.2)


def test_cli_check_report_exit_codes(deployed, data_dir, tmp_path, capsys):
    _g, _cfg, out = deployed
    a = out["speck"][0]
    cnn = data_dir / "nir_paper/02_cnn/cnn_sinabs.nir"
    assert main(["check", str(a), "--target", "speck"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["check", str(cnn), "--target", "speck"]) == 1
    assert "weight-bits" in capsys.readouterr().out
    assert main(["check", str(cnn), "--target", "nochip"]) == 2
    capsys.readouterr()
    from sbc_onnx.data import load_nmnist, save_dataset

    save_dataset(load_nmnist(data_dir / "nmnist_small/test", data_dir / "nmnist_small/test100.txt").take(10),
                 tmp_path / "t10.npz")
    png = tmp_path / "r.png"
    assert main(["report", str(a), "--data", str(tmp_path / "t10.npz"), "--baseline", str(cnn), "--plot", str(png),
                 "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "SynOps/sample" in text and "0.9 pJ x SynOps + 4.6 pJ x MACs" in text
    assert png.stat().st_size > 1000
    rep = json.loads((tmp_path / "r.json").read_text())
    assert len(rep["reports"]) == 2 and rep["reports"][1]["synops_per_sample"] > 0


# ---------------------------------------------------------------- compress --target: exit code

def _violation_keys(text: str) -> set[tuple[str, str | None]]:
    """(rule, node) of every ERROR line `check` / `compress --target` prints."""
    keys = set()
    for line in text.splitlines():
        if line.startswith("ERROR"):
            parts = line.split()
            keys.add((parts[1], parts[2][1:-1] if parts[2].startswith("[") else None))
    return keys


def test_cli_compress_for_a_chip_the_model_cannot_fit_writes_lists_and_exits_1(data_dir, tmp_path, capsys):
    """cnn_sinabs for Xylo Audio 2: both files are written, every violation of the integer model is listed,
    the exit code is 1 (as `check` on the written file)."""
    from sbc_onnx.data import Dataset, load_nmnist, save_dataset

    one = load_nmnist(data_dir / "nmnist_small/train", data_dir / "nmnist_small/train500.txt").take(1)
    save_dataset(Dataset(one.x[:, 100:130], one.y), tmp_path / "c.npz")  # 30 steps keep the calibration short
    cnn, out = data_dir / "nir_paper/02_cnn/cnn_sinabs.nir", tmp_path / "cnn_xylo.nir"
    assert main(["compress", str(cnn), "--calib", str(tmp_path / "c.npz"), "--dt", "1", "--target", "xylo-audio2",
                 "--method", "rtn", "-o", str(out)]) == 1
    printed, err = capsys.readouterr()
    listed = _violation_keys(printed)
    assert out.exists() and out.with_name("cnn_xylo.float.nir").exists()
    assert f"violates {len(listed)} constraint(s) of xylo-audio2" in err
    found = {(v.rule, v.node) for v in check_graph(read_nir(out), "xylo-audio2", SimConfig(dt=1.0))
             if v.severity == "error"}
    assert listed == found
    # the model cannot fit whatever the compression: convolutions, 8970 neurons, 2312 inputs, 10 outputs
    assert {("node-type", "0"), ("neurons", None), ("inputs", "input"), ("outputs", "output")} <= listed
    assert main(["check", str(out), "--target", "xylo-audio2"]) == 1
    assert _violation_keys(capsys.readouterr().out) == listed
