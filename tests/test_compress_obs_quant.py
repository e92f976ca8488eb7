"""Second-order methods: ExactOBS (sbc/obc), SparseGPT (sbc-fast), GPTQ; numerics and compress_layer."""

import numpy as np
import pytest

from sbc_onnx.compress import (FactorizationError, check_nm, compress_layer, damped_inverse, exact_resolve,
                               kernel_matrix, make_grid, prune_exact_obs, prune_sparsegpt, quantize,
                               quantize_gptq, quantize_rtn, relative_objective, upper_inverse_factor)
from sbc_onnx.compress.numerics import damped_hessian


def spikes(rng, n, T, d, rate=0.25):
    return (rng.random((n, T, d)) < rate).astype(np.float64)


def smp_rows(X, betas):
    """Stacked filtered rows M X_n of every sample (n*T, d) and the SMP Hessian 2/n sum (M X)^T (M X)."""
    M = kernel_matrix(X.shape[1], betas)
    Z = np.concatenate([M @ x for x in X])
    return Z, 2.0 / X.shape[0] * Z.T @ Z


def obj(W0, W, H):
    D = W0 - W
    return float(np.einsum("ij,jk,ik->", D, H, D))


@pytest.mark.parametrize("rel_damp", [0.0, 0.01])
def test_group_obs_equals_bruteforce_masked_lstsq(rel_damp):
    rng = np.random.default_rng(10)
    X = spikes(rng, 6, 20, 12)
    Z, H = smp_rows(X, (0.8,))
    W = rng.standard_normal((5, 12))
    r = prune_exact_obs(W, H, 30, rel_damp=rel_damp)
    assert (~r.mask).sum() == 30 and np.all(r.W[~r.mask] == 0)
    lam = damped_hessian(H, r.damp)[1]
    aug = np.sqrt(lam * X.shape[0] / 2)  # damping == extra rows sqrt(n lam/2) I in the least squares
    A = np.vstack([Z, aug * np.eye(12)])
    for i in range(5):
        K = r.mask[i]
        y = A @ W[i]
        wK, *_ = np.linalg.lstsq(A[:, K], y, rcond=None)
        np.testing.assert_allclose(r.W[i, K], wK, rtol=1e-7, atol=1e-8)


def test_exact_obs_trace_matches_eager_greedy_and_exact_k():
    rng = np.random.default_rng(11)
    X = spikes(rng, 8, 10, 20)
    _, H = smp_rows(X, (0.7,))
    W = rng.standard_normal((7, 20))
    Hinv, _, _ = damped_inverse(H)
    r = prune_exact_obs(W, H, 61, b_in=1)
    for i in range(7):  # eager one-weight-at-a-time OBS greedy in float64
        w, Hi, alive, order = W[i].copy(), Hinv.copy(), np.ones(20, bool), []
        for _ in range(20):
            sc = np.where(alive, w**2 / np.where(alive, np.diag(Hi), 1), np.inf)
            p = int(np.argmin(sc))
            order.append(p)
            w -= Hi[:, p] * w[p] / Hi[p, p]
            Hi -= np.outer(Hi[:, p], Hi[p]) / Hi[p, p]
            alive[p] = False
        assert order[:10] == list(r.order[i, :10])
    assert (~r.mask).sum() == 61
    # a prefix of every row's order is pruned
    for i in range(7):
        n_i = (~r.mask[i]).sum()
        assert set(r.order[i, :n_i]) == set(np.flatnonzero(~r.mask[i]))


def eager_group_trace(w, Hinv, b_in):
    """Reference Step 1 for one row in float64: the b_in smallest scores, one group-OBS update."""
    w, Hi, alive, order, scores = w.copy(), Hinv.copy(), np.ones(len(w), bool), [], []
    while alive.any():
        sc = np.where(alive, w**2 / np.where(alive, np.diag(Hi), 1), np.inf)
        P = np.argsort(sc, kind="stable")[:min(b_in, alive.sum())]
        order += list(P)
        scores += list(sc[P])
        Kp = np.linalg.inv(Hi[np.ix_(P, P)])
        w -= Hi[:, P] @ Kp @ w[P]
        Hi -= Hi[:, P] @ Kp @ Hi[P, :]
        alive[P] = False
    return np.array(order), np.array(scores)


@pytest.mark.parametrize("b_in", [1, 3])
def test_exact_obs_trace_with_lazy_flushes_and_compaction(b_in):
    """The lazy downdates and the shrinking active set (flushes every 6 eliminations) change
    nothing: same greedy order and scores as the eager float64 trace."""
    from sbc_onnx.compress import obs

    rng = np.random.default_rng(12)
    d = 41
    X = spikes(rng, 30, 12, d)
    _, H = smp_rows(X, (0.8,))
    W = rng.standard_normal((19, d))
    Hinv, _, _ = damped_inverse(H)
    order, scores = obs.obs_trace(W, Hinv, b_in=b_in, flush=6)
    for i in range(19):
        o, sc = eager_group_trace(W[i], Hinv, b_in)
        n = 3 * d // 4  # float32 trace: allow near-ties to flip at the very end
        assert list(order[i, :n]) == list(o[:n])
        np.testing.assert_allclose(scores[i, :n], sc[:n], rtol=2e-3, atol=1e-9)
        assert sorted(order[i]) == list(range(d))


def eager_nm_trace(w, Hinv, b_in, n, m):
    """Reference N:M Step 1 for one row in float64: per iteration the b_in smallest group minima over
    the groups with capacity left (each group of m eliminates m - n), one group-OBS update."""
    d = len(w)
    w, Hi, alive, order = w.copy(), Hinv.copy(), np.ones(d, bool), []
    cap = np.array([m - n] * (d // m) + ([max(0, d % m - n)] if d % m else []))
    while cap.sum():
        sc = np.where(alive, w**2 / np.where(alive, np.diag(Hi), 1), np.inf)
        cand = [g * m + int(np.argmin(sc[g * m:(g + 1) * m])) for g in range(len(cap)) if cap[g] > 0]
        cand.sort(key=lambda q: (sc[q], q))
        P = np.array(cand[:min(b_in, len(cand))])
        cap[P // m] -= 1
        order += list(P)
        Kp = np.linalg.inv(Hi[np.ix_(P, P)])
        w -= Hi[:, P] @ Kp @ w[P]
        Hi -= Hi[:, P] @ Kp @ Hi[P, :]
        alive[P] = False
    return np.array(order)


@pytest.mark.parametrize("b_in", [1, 2])
def test_exact_obs_nm_trace_matches_eager_capacity_greedy(b_in):
    from sbc_onnx.compress.obs import obs_trace

    rng = np.random.default_rng(15)
    d = 26  # 6 groups of 4 and a tail of 2
    _, H = smp_rows(spikes(rng, 20, 12, d), (0.8,))
    Hinv, _, _ = damped_inverse(H)
    W = rng.standard_normal((8, d))
    order, _ = obs_trace(W, Hinv, b_in=b_in, pattern=(2, 4), flush=4)
    assert order.shape == (8, 12)
    for i in range(8):
        ref = eager_nm_trace(W[i], Hinv, b_in, 2, 4)
        assert list(order[i, :9]) == list(ref[:9])  # float32 trace: near-ties may flip at the very end
        assert sorted(order[i]) == sorted(ref)


def test_small_inverse_gauss_jordan_and_fallbacks():
    from sbc_onnx.compress._obs_kernel import _small_inverse

    rng = np.random.default_rng(16)
    for n in (1, 2, 3, 6):
        B = rng.standard_normal((n, n + 2))
        G = B @ B.T
        K = np.empty((n, n), np.float32)
        _small_inverse(G, np.empty((n, 2 * n)), K)
        np.testing.assert_allclose(K, np.linalg.inv(G), rtol=1e-4, atol=1e-5)
    G = np.array([[0.0, 0.0], [0.0, 2.0]])  # a vanished pivot: the diagonal fallback
    K = np.empty((2, 2), np.float32)
    _small_inverse(G, np.empty((2, 4)), K)
    np.testing.assert_array_equal(K, [[0.0, 0.0], [0.0, 0.5]])
    _small_inverse(np.array([[np.nan, 0.0], [0.0, 1.0]]), np.empty((2, 4)), K)
    assert np.all(K == 0)


def test_sbc_beats_obc_when_the_leak_matters():
    rng = np.random.default_rng(12)
    n, T, h = 16, 30, 12
    S = spikes(rng, n, T, h, 0.2)
    shifted = np.concatenate([np.zeros((n, 1, h)), S[:, :-1]], axis=1)  # the same train one step later
    X = np.concatenate([S, shifted, spikes(rng, n, T, 8, 0.2)], axis=2)
    _, H_smp = smp_rows(X, (0.9,))
    _, H_obc = smp_rows(X, ())
    W = rng.standard_normal((10, X.shape[2]))
    k = W.size // 2
    sbc = compress_layer(W, H_smp, method="sbc", n_prune=k)
    obc = compress_layer(W, H_obc, method="obc", n_prune=k)
    e_sbc, e_obc = relative_objective(W, [sbc.W, obc.W], H_smp)
    assert e_sbc < 0.8 * e_obc
    # quantization too (2 bits, where compensation matters most)
    qs = compress_layer(W, H_smp, method="sbc", bits=2)
    qo = compress_layer(W, H_obc, method="obc", bits=2)
    q_sbc, q_obc = relative_objective(W, [qs.W, qo.W], H_smp)
    assert q_sbc < q_obc


def test_exact_obs_nm_pattern():
    rng = np.random.default_rng(13)
    _, H = smp_rows(spikes(rng, 8, 12, 18), (0.8,))
    W = rng.standard_normal((6, 18))
    r = prune_exact_obs(W, H, pattern=(2, 4))  # 18 = 4 full groups + a tail of 2 (tail keeps 2)
    assert check_nm(r.mask, (2, 4)) and (~r.mask).sum() == 6 * 8
    ref, _, _ = exact_resolve(W, H, r.mask)
    np.testing.assert_allclose(r.W, ref, atol=1e-10)


def test_sparsegpt_exact_k_nm_and_exact_resolve_improves():
    rng = np.random.default_rng(14)
    _, H = smp_rows(spikes(rng, 20, 15, 64), (0.85,))
    W = rng.standard_normal((24, 64))
    for k in (0, 1, 777, W.size // 2, W.size):
        r = prune_sparsegpt(W, H, k, blocksize=16, sub=8)
        assert (~r.mask).sum() == k and np.all(r.W[~r.mask] == 0)
    r = prune_sparsegpt(W, H, W.size // 2, blocksize=16, sub=8)
    Hd = damped_hessian(H, r.damp)[0]
    W2, _, _ = exact_resolve(W, H, r.mask)
    assert obj(W, W2, Hd) < obj(W, r.W, Hd) * 0.999  # the sweep is not the masked LS optimum
    mag = np.where(np.abs(W) > np.median(np.abs(W)), W, 0)
    assert obj(W, r.W, H) < obj(W, mag, H)
    nm = prune_sparsegpt(W, H, pattern=(2, 4), sub=6)
    assert check_nm(nm.mask, (2, 4)) and (~nm.mask).sum() == W.size // 2


def test_sparsegpt_blocking_invariance():
    rng = np.random.default_rng(15)
    _, H = smp_rows(spikes(rng, 10, 10, 48), (0.5,))
    W = rng.standard_normal((8, 48))
    a = prune_sparsegpt(W, H, pattern=(1, 4), blocksize=16, sub=4)
    b = prune_sparsegpt(W, H, pattern=(1, 4), blocksize=48, sub=48)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.W, b.W, atol=1e-5)


def test_gptq_matches_spec_loop_differs_from_rtn_and_is_better():
    rng = np.random.default_rng(16)
    _, H = smp_rows(spikes(rng, 12, 20, 40), (0.9,))
    W = rng.standard_normal((16, 40))
    g = make_grid(W, 3)
    q = quantize_gptq(W, H, g, blocksize=16, sub=4)
    rtn = quantize_rtn(W, g)
    assert np.mean(q.W != rtn.W) > 0.1
    assert obj(W, q.W, H) < 0.9 * obj(W, rtn.W, H)
    np.testing.assert_allclose(quantize(q.W, g), q.W)  # on the grid
    # docs/sbc_method.md §2.3 per-column loop with rank-1 downdates of H^-1, static order argsort(diag(H^-1))
    Hinv, _, _ = damped_inverse(H)
    Wr, Hi = W.copy(), Hinv.copy()
    for c in np.argsort(np.diag(Hinv), kind="stable"):
        wq = quantize(Wr[:, [c]], g)[:, 0]
        e = (Wr[:, c] - wq) / Hi[c, c]
        Wr -= np.outer(e, Hi[:, c])
        Wr[:, c] = wq
        Hi -= np.outer(Hi[:, c], Hi[c]) / Hi[c, c]
    np.testing.assert_allclose(q.W, quantize(Wr, g), atol=1e-6)


def test_gptq_keeps_mask_and_dead_inputs_are_rtn():
    rng = np.random.default_rng(17)
    X = spikes(rng, 10, 12, 30)
    X[:, :, [4, 9]] = 0  # two inputs never fire in calibration
    _, H = smp_rows(X, (0.8,))
    W = rng.standard_normal((12, 30))
    g = make_grid(W, 4)
    q = quantize_gptq(W, H, g)
    np.testing.assert_allclose(q.W[:, [4, 9]], quantize(W, g)[:, [4, 9]])  # RTN of the original
    # pruned then quantized with the mask: a dead weight the budget keeps is never compensated into by
    # either step, so it ends as the RTN of its original value (not zeroed for being silent)
    p = prune_exact_obs(W, H, 12)
    gm = make_grid(p.W, 4)
    kept = p.mask[:, [4, 9]]
    assert kept.any() and (~kept).any()  # the budget prunes some dead weights and keeps others
    qm = quantize_gptq(p.W, H, gm, mask=p.mask)
    np.testing.assert_allclose(qm.W[:, [4, 9]][kept], quantize(W, gm)[:, [4, 9]][kept])
    assert np.count_nonzero(quantize(W, gm)[:, [4, 9]][kept]) > 0
    p = prune_exact_obs(W, H, 150)
    qm = quantize_gptq(p.W, H, make_grid(p.W, 4), mask=p.mask)
    assert np.all(qm.W[~p.mask] == 0)  # quantizing never un-prunes
    assert obj(p.W, qm.W, H) < obj(p.W, quantize_rtn(p.W, make_grid(p.W, 4), p.mask).W, H)


def test_damping_escalation_and_fallback_are_reported():
    rng = np.random.default_rng(18)
    _, H = smp_rows(spikes(rng, 10, 10, 16), (0.8,))
    W = rng.standard_normal((6, 16))
    # mildly indefinite (rank-deficient H shifted down): 0.01 fails, 0.1 works -> escalations reported
    Z, _ = smp_rows(spikes(rng, 1, 6, 16, 0.5), (0.8,))
    Hl = Z.T @ Z
    Hm = Hl - 0.05 * np.mean(np.diag(Hl)) * np.eye(16)
    _, rd, esc = damped_inverse(Hm)
    assert rd > 0.01 and esc
    r = compress_layer(W, Hm, method="sbc-fast", n_prune=40, bits=4)
    assert r.fallback is None and r.escalations and r.damp > 0.01
    # strongly indefinite and NaN: FactorizationError -> magnitude + RTN fallback
    Hs = H - 5 * np.mean(np.diag(H)) * np.eye(16)
    with pytest.raises(FactorizationError):
        upper_inverse_factor(Hs)
    for Hbad in (Hs, np.where(np.eye(16) > 0, np.nan, H)):
        r = compress_layer(W, Hbad, method="sbc", n_prune=40, bits=4)
        assert r.fallback and "magnitude" in r.fallback and "RTN" in r.fallback
        assert (~r.mask).sum() == 40
        g = make_grid(np.where(r.mask, W, 0), 4)
        np.testing.assert_allclose(r.W, quantize_rtn(np.where(r.mask, W, 0), g, r.mask).W.astype(W.dtype))


@pytest.mark.parametrize("method", ["sbc", "sbc-fast", "obc", "magnitude", "wanda"])
def test_compress_layer_deterministic_exact_and_informative(method):
    rng = np.random.default_rng(19)
    X = spikes(rng, 10, 15, 40)
    _, H = smp_rows(X, (0.8,))
    W = rng.standard_normal((20, 40)).astype(np.float32)
    kw = dict(method=method, n_prune=333, bits=3, sq_norms=X.sum((0, 1)))
    a, b = compress_layer(W, H, **kw), compress_layer(W, H, **kw)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.W.dtype == np.float32 and a.W.shape == W.shape
    assert (~a.mask).sum() == 333 and np.all(a.W[~a.mask] == 0)
    if method in ("sbc", "sbc-fast", "obc"):
        assert a.objective_after < a.objective_before and a.damp == pytest.approx(0.01)
    if method == "magnitude":
        assert a.objective_after == pytest.approx(a.objective_before)
    nm = compress_layer(W, H, method=method, pattern=(2, 4), sq_norms=X.sum((0, 1)))
    assert check_nm(nm.mask, (2, 4))


def test_masked_solve_equals_per_row_solves():
    """Both forms (P-side via Hinv, K-side via Hd), mixed row sizes, all-kept and all-pruned rows."""
    from sbc_onnx.compress.obs import masked_solve

    rng = np.random.default_rng(21)
    _, H = smp_rows(spikes(rng, 6, 12, 24), (0.8,))
    Hinv, rd, _ = damped_inverse(H)
    Hd, _ = damped_hessian(H, rd)
    W = rng.standard_normal((9, 24))
    mask = rng.random((9, 24)) < np.linspace(0.05, 0.95, 9)[:, None]
    mask[0] = True
    mask[1] = False
    for inv in (Hinv, None):
        got = masked_solve(W, Hd, mask, inv)
        for i in range(9):
            K, P = np.flatnonzero(mask[i]), np.flatnonzero(~mask[i])
            ref = np.where(mask[i], W[i], 0.0)
            if K.size and P.size:
                ref[K] = W[i, K] + np.linalg.solve(Hd[np.ix_(K, K)], Hd[np.ix_(K, P)] @ W[i, P])
            np.testing.assert_allclose(got[i], ref, rtol=1e-9, atol=1e-10)
        assert np.all(got[~mask] == 0)


def test_select_smallest_equals_stable_argsort_selection():
    """The one k-smallest selection (ExactOBS's layer-global mask, SparseGPT's blocks, magnitude masks,
    allocations) by partition threshold selects exactly the first k of a stable argsort: ties in index
    order, +inf and NaN scores, float32 and float64, any shape."""
    from sbc_onnx.compress import select_smallest

    rng = np.random.default_rng(22)
    for t in range(400):
        r, c = rng.integers(1, 7), rng.integers(1, 9)
        S = rng.standard_normal((r, c))
        if t % 2:
            S = np.round(S)
        if t % 5 == 0:
            S[0, 0] = np.inf
        if t % 3 == 0:
            S[rng.random((r, c)) < 0.3] = np.nan
        if t % 7 == 0:
            S = S.astype(np.float32)
        k = int(rng.integers(0, r * c + 1))
        ref = np.zeros(r * c, bool)
        ref[np.argsort(S.ravel(), kind="stable")[:k]] = True
        got = select_smallest(S, k)
        assert got.shape == S.shape
        np.testing.assert_array_equal(got.ravel(), ref)
    with pytest.raises(ValueError):
        select_smallest(np.zeros(3), 4)


def test_obs_trace_progress_in_row_chunks_changes_nothing():
    from sbc_onnx.compress.obs import obs_trace

    rng = np.random.default_rng(23)
    d = 300  # 2^32 / d^3 -> chunks of 160 rows
    _, H = smp_rows(spikes(rng, 10, 40, d, 0.1), (0.8,))
    Hinv, _, _ = damped_inverse(H)
    W = rng.standard_normal((200, d))
    calls = []
    o1, s1 = obs_trace(W, Hinv)
    o2, s2 = obs_trace(W, Hinv, on_rows=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(s1, s2)
    assert calls == [(160, 200), (200, 200)]
