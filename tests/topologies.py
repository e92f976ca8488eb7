"""Small NIR graphs covering the topologies a walker must get right (shared by the sim and ONNX tests).

Every builder returns (graph, reference) where reference(x) -> output (T, B, n) computes the expected
output with explicit per-step loops written independently of the walker (float64, Euler, reset to v_reset,
dt = 1e-4)."""

from __future__ import annotations

import nir
import numpy as np

DT = 1e-4


def _lif(n, tau=2e-3, thr=0.5, r=None):
    r = np.full(n, tau / DT) if r is None else r
    return nir.LIF(tau=np.full(n, tau), r=r, v_leak=np.zeros(n), v_threshold=np.full(n, thr), v_reset=np.zeros(n))


def _affine(rng, n_out, n_in, scale=0.6):
    return nir.Affine(weight=rng.normal(0, scale, (n_out, n_in)), bias=rng.normal(0, 0.05, n_out))


def _lif_step(v, cur, node):
    k = DT / node.tau
    v = (1 - k) * v + k * (node.v_leak + node.r * cur)
    s = v > node.v_threshold
    return np.where(s, node.v_reset, v), s.astype(float)


def _aff(x, node):
    return x @ node.weight.T + node.bias


def sequential(rng):
    a1, l1, a2, l2 = _affine(rng, 6, 4), _lif(6), _affine(rng, 3, 6), _lif(3)
    g = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([4])), "a1": a1, "l1": l1, "a2": a2, "l2": l2,
               "output": nir.Output(np.array([3]))},
        edges=[("input", "a1"), ("a1", "l1"), ("l1", "a2"), ("a2", "l2"), ("l2", "output")])

    def ref(x):
        v1, v2, out = np.zeros((x.shape[1], 6)), np.zeros((x.shape[1], 3)), []
        for xt in x:
            v1, s1 = _lif_step(v1, _aff(xt, a1), l1)
            v2, s2 = _lif_step(v2, _aff(s1, a2), l2)
            out.append(s2)
        return np.stack(out)

    return g, ref


def recurrent_first(rng):
    """Input -> Affine <-> I (integrator), the cycle at the input (NIR test_recurrent_on_first_node)."""
    a = _affine(rng, 3, 3, 0.3)
    integ = nir.I(r=np.full(3, 0.5))
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([3])), "a": a, "i": integ,
                            "output": nir.Output(np.array([3]))},
                     edges=[("input", "a"), ("a", "i"), ("i", "a"), ("i", "output")])

    def ref(x):
        v, prev, out = np.zeros((x.shape[1], 3)), np.zeros((x.shape[1], 3)), []
        for xt in x:
            v = v + 0.5 * _aff(xt + prev, a)
            prev = v
            out.append(v)
        return np.stack(out)

    return g, ref


def recurrent_second(rng):
    """Affine1 -> LIF <-> Affine_rec ; LIF -> Affine3 (recurrent layer in the middle)."""
    a1, rec, a3, l1 = _affine(rng, 5, 4), _affine(rng, 5, 5, 0.5), _affine(rng, 2, 5), _lif(5)
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([4])), "a1": a1, "l1": l1, "rec": rec, "a3": a3,
                            "output": nir.Output(np.array([2]))},
                     edges=[("input", "a1"), ("a1", "l1"), ("l1", "rec"), ("rec", "l1"), ("l1", "a3"),
                            ("a3", "output")])

    def ref(x):
        v, rec_out, out = np.zeros((x.shape[1], 5)), np.zeros((x.shape[1], 5)), []
        for xt in x:
            v, s = _lif_step(v, _aff(xt, a1) + rec_out, l1)
            rec_out = _aff(s, rec)
            out.append(_aff(s, a3))
        return np.stack(out)

    return g, ref


def branches_merging(rng):
    """Two independent branches summed into one LIF (fan-in = sum)."""
    b1, b2, lj = _affine(rng, 3, 4), _affine(rng, 3, 4), _lif(3)
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([4])), "b1": b1, "b2": b2, "j": lj,
                            "output": nir.Output(np.array([3]))},
                     edges=[("input", "b1"), ("input", "b2"), ("b1", "j"), ("b2", "j"), ("j", "output")])

    def ref(x):
        v, out = np.zeros((x.shape[1], 3)), []
        for xt in x:
            v, s = _lif_step(v, _aff(xt, b1) + _aff(xt, b2), lj)
            out.append(s)
        return np.stack(out)

    return g, ref


def split_merge(rng):
    """pre (LIF) splits into two LIF branches of different widths, merged by one Affine each into a sum."""
    pre_a, pre_l = _affine(rng, 5, 4), _lif(5)
    br1_a, br1_l, br2_a, br2_l = _affine(rng, 3, 5), _lif(3), _affine(rng, 6, 5), _lif(6)
    m1, m2 = _affine(rng, 2, 3), _affine(rng, 2, 6)
    g = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([4])), "pa": pre_a, "pl": pre_l, "b1a": br1_a, "b1l": br1_l,
               "b2a": br2_a, "b2l": br2_l, "m1": m1, "m2": m2, "output": nir.Output(np.array([2]))},
        edges=[("input", "pa"), ("pa", "pl"), ("pl", "b1a"), ("b1a", "b1l"), ("pl", "b2a"), ("b2a", "b2l"),
               ("b1l", "m1"), ("b2l", "m2"), ("m1", "output"), ("m2", "output")])

    def ref(x):
        B = x.shape[1]
        v0, v1, v2, out = np.zeros((B, 5)), np.zeros((B, 3)), np.zeros((B, 6)), []
        for xt in x:
            v0, s0 = _lif_step(v0, _aff(xt, pre_a), pre_l)
            v1, s1 = _lif_step(v1, _aff(s0, br1_a), br1_l)
            v2, s2 = _lif_step(v2, _aff(s0, br2_a), br2_l)
            out.append(_aff(s1, m1) + _aff(s2, m2))
        return np.stack(out)

    return g, ref


def residual(rng):
    """a -> b(LIF) -> c -> d(LIF) -> e, skip a -> e, e -> f(LIF) (NIR test_residual)."""
    a, c, e = _affine(rng, 4, 4), _affine(rng, 4, 4), nir.Scale(scale=np.full(4, 0.9))
    b, d, f = _lif(4), _lif(4), _lif(4)
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([4])), "a": a, "b": b, "c": c, "d": d, "e": e, "f": f,
                            "output": nir.Output(np.array([4]))},
                     edges=[("input", "a"), ("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("a", "e"),
                            ("e", "f"), ("f", "output")])

    def ref(x):
        B = x.shape[1]
        vb, vd, vf, out = np.zeros((B, 4)), np.zeros((B, 4)), np.zeros((B, 4)), []
        for xt in x:
            ya = _aff(xt, a)
            vb, sb = _lif_step(vb, ya, b)
            vd, sd = _lif_step(vd, _aff(sb, c), d)
            vf, sf = _lif_step(vf, 0.9 * (sd + ya), f)
            out.append(sf)
        return np.stack(out)

    return g, ref


def shared_fanout_dag(rng):
    """a -> {b, c}, b -> d, c -> {d, e}, {d, e} -> f (NIR test_complex), all LIF after Affines."""
    a = _affine(rng, 4, 3)
    bl, cl, dl, el, fl = _lif(4), _lif(4), _lif(4), _lif(4), _lif(2)
    w_bd, w_cd, w_ce, w_df, w_ef = (_affine(rng, 4, 4), _affine(rng, 4, 4), _affine(rng, 4, 4),
                                    _affine(rng, 2, 4), _affine(rng, 2, 4))
    nodes = {"input": nir.Input(np.array([3])), "a": a, "b": bl, "c": cl, "d": dl, "e": el, "f": fl,
             "bd": w_bd, "cd": w_cd, "ce": w_ce, "df": w_df, "ef": w_ef, "output": nir.Output(np.array([2]))}
    edges = [("input", "a"), ("a", "b"), ("a", "c"), ("b", "bd"), ("bd", "d"), ("c", "cd"), ("cd", "d"),
             ("c", "ce"), ("ce", "e"), ("d", "df"), ("e", "ef"), ("df", "f"), ("ef", "f"), ("f", "output")]
    g = nir.NIRGraph(nodes=nodes, edges=edges)

    def ref(x):
        B = x.shape[1]
        v = {k: np.zeros((B, 4)) for k in "bcde"}
        vf, out = np.zeros((B, 2)), []
        for xt in x:
            ya = _aff(xt, a)
            v["b"], sb = _lif_step(v["b"], ya, bl)
            v["c"], sc = _lif_step(v["c"], ya, cl)
            v["d"], sd = _lif_step(v["d"], _aff(sb, w_bd) + _aff(sc, w_cd), dl)
            v["e"], se = _lif_step(v["e"], _aff(sc, w_ce), el)
            vf, sf = _lif_step(vf, _aff(sd, w_df) + _aff(se, w_ef), fl)
            out.append(sf)
        return np.stack(out)

    return g, ref


def nested_subgraph(rng):
    """A recurrent CubaLIF layer packaged as a nested NIRGraph (as snnTorch's RSynaptic exports)."""
    n = 5
    lif = nir.CubaLIF(tau_syn=np.full(n, 5e-4), tau_mem=np.full(n, 1e-3), r=np.full(n, 10.0),
                      v_leak=np.zeros(n), v_threshold=np.full(n, 1.0), v_reset=np.zeros(n), w_in=np.full(n, 5.0))
    rec = _affine(rng, n, n, 0.4)
    sub = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "lif": lif, "w_rec": rec,
                              "output": nir.Output(np.array([n]))},
                       edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")])
    fc = _affine(rng, n, 3, 1.0)
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([3])), "fc": fc, "rnn": sub,
                            "output": nir.Output(np.array([n]))},
                     edges=[("input", "fc"), ("fc", "rnn"), ("rnn", "output")])

    def ref(x):
        B = x.shape[1]
        i, v, prev, out = np.zeros((B, n)), np.zeros((B, n)), np.zeros((B, n)), []
        for xt in x:
            cur = _aff(xt, fc) + prev
            i = i + DT / lif.tau_syn * (lif.w_in * cur - i)
            v = v + DT / lif.tau_mem * (lif.v_leak - v + lif.r * i)
            s = v > lif.v_threshold
            v = np.where(s, lif.v_reset, v)
            prev = _aff(s.astype(float), rec)
            out.append(s.astype(float))
        return np.stack(out)

    return g, ref


ALL = {f.__name__: f for f in (sequential, recurrent_first, recurrent_second, branches_merging, split_merge,
                               residual, shared_fanout_dag, nested_subgraph)}
