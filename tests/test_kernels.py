"""Fast kernels against their readable twins, and the same result whatever the thread count (#13, #15)."""

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import sbc_onnx as sbc
from sbc_onnx.calibrate import calibrate
from sbc_onnx.compress import (
    HessianAccumulator,
    damped_inverse,
    eager_hessian,
    filter_time,
    make_grid,
    obs_trace,
    prune_exact_obs,
    quantize,
    quantize_gptq,
    quantize_gptq_eager,
)
from sbc_onnx.compress import threads as th
from sbc_onnx.compress._obs_kernel import sub_solve_rows
from sbc_onnx.data import Dataset
from sbc_onnx.synthetic import linear_lif_graph


def spike_H(rng, d, rows=600, beta=0.6):
    Z = filter_time((rng.random((rows // 20, 20, d)) < 0.15).astype(np.float64), (beta,), axis=1)
    return 2.0 / 20 * Z.reshape(-1, d).T @ Z.reshape(-1, d)


def test_buffered_rows_give_the_bits_of_one_call_and_the_eager_hessian():
    rng = np.random.default_rng(0)
    Z = ((rng.random((1000, 37)) < 0.2) * rng.random((1000, 37))).astype(np.float32)
    one = HessianAccumulator(37, block_rows=300)
    one.add(Z, 10)
    many = HessianAccumulator(37, block_rows=300)
    cuts = [0, 7, 9, 300, 301, 650, 999, 1000]  # pieces smaller, equal and across block boundaries
    for a, b in zip(cuts, cuts[1:]):
        many.add(Z[a:b], 10 if a == 0 else 0)
    np.testing.assert_array_equal(many.H, one.H)
    ref = eager_hessian(Z, 10)
    np.testing.assert_allclose(many.H, ref, rtol=0, atol=2e-6 * np.abs(ref).max())  # float32 blocks of 300
    np.testing.assert_allclose(many.diag, np.diag(ref), rtol=2e-6)
    f64 = HessianAccumulator(37, precision="float64", block_rows=300)
    for a, b in zip(cuts, cuts[1:]):
        f64.add(Z[a:b], 10 if a == 0 else 0)
    np.testing.assert_allclose(f64.H, ref, rtol=1e-13, atol=1e-13 * np.abs(ref).max())  # float64 round-off
    assert HessianAccumulator(4608).block_rows * 4608 * 4 <= HessianAccumulator.BUFFER_BYTES  # bounded buffer


def test_calibration_observer_equals_eager_hessian_of_the_filtered_rows():
    """The observer (one small piece of rows per step, buffered) against 2/B sum (M X)^T (M X)."""
    rng = np.random.default_rng(1)
    d, do, T, B = 23, 5, 30, 6
    g = linear_lif_graph(rng, d, do, weight_std=0.3)
    X = (rng.random((B, T, d)) < 0.2).astype(np.uint8)
    cal = calibrate(sbc.Walker(g, sbc.SimConfig(dt=1.0, dtype="float64")), Dataset(X, np.zeros(B, int)), batch_size=4)
    lc = cal.layers["fc"]
    assert lc.betas == (0.5,)
    Z = filter_time(X.astype(np.float64), lc.betas, axis=1).reshape(-1, d)
    ref = eager_hessian(Z, B)
    np.testing.assert_allclose(lc.H, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


@pytest.fixture
def forced_threads(monkeypatch):
    """Threads used whatever the size (the thresholds would keep these small tests on one thread)."""
    monkeypatch.setattr(th, "PARALLEL_MIN_FLOP", 0)
    old = numba.get_num_threads()
    yield
    numba.set_num_threads(old)


@pytest.mark.parametrize("err_from", [False, True])
def test_compiled_grid_columns_equal_their_numpy_form(err_from):
    """The compiled quantization sub-block (_grid_sub_block) against GridFix's NumPy form (the generic
    per-column path), in float64 so that both give the same grid points: a grid that clamps many
    compensated values at both ends, masked entries, errors against the original weights or the current."""
    from sbc_onnx.compress._sweep import GridFix, obs_sweep

    rng = np.random.default_rng(11)
    d, n = 45, 9
    H = spike_H(rng, d)
    U, _, _ = damped_inverse(H, 0.01)
    U = np.linalg.cholesky(U[::-1, ::-1])[::-1, ::-1].T  # upper, U^T U = H^-1
    Wt = rng.standard_normal((d, n)) * 2.0
    keep = rng.random((d, n)) > 0.2
    scale = np.full(n, 0.5)
    fix = GridFix(scale, np.full(n, -2.0), np.full(n, 1.0), keep * scale[None, :])
    out = {}
    for name, f in (("compiled", fix), ("numpy", lambda i, w, o: fix(i, w, o))):
        A = Wt.copy()
        obs_sweep(A, U, f, blocksize=16, sub=4, err_from=Wt.copy() if err_from else None)
        out[name] = A
    np.testing.assert_array_equal(out["compiled"], out["numpy"])
    q = out["compiled"] / 0.5
    assert (q == -2).mean() > 0.1 and (q == 1).mean() > 0.1  # both bounds were hit
    assert np.all(out["compiled"][~keep] == 0)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has one thread")
def test_exact_obs_same_bits_at_one_and_two_threads(forced_threads):
    rng = np.random.default_rng(2)
    H = spike_H(rng, 48)
    W = rng.standard_normal((9, 48))
    out = {}
    for n in (1, 2):
        numba.set_num_threads(n)
        out[n] = prune_exact_obs(W, H, 200), obs_trace(W, damped_inverse(H)[0], pattern=(2, 4))
    (a, (oa, sa)), (b, (ob, sb)) = out[1], out[2]
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(oa, ob)
    np.testing.assert_array_equal(sa, sb)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has one thread")
def test_masked_solves_same_bits_at_one_and_two_threads_and_equal_numpy(forced_threads):
    rng = np.random.default_rng(3)
    A = spike_H(rng, 30) + 0.1 * np.eye(30)
    sel = rng.random((11, 30)) < 0.6
    sel[4] = False  # an empty row stays 0
    rhs = rng.standard_normal((11, 30))
    X = {}
    for n in (1, 2):
        numba.set_num_threads(n)
        X[n] = np.zeros((11, 30))
        assert sub_solve_rows(A, sel, rhs, X[n]).size == 0
    np.testing.assert_array_equal(X[1], X[2])
    for i in range(11):
        S = np.flatnonzero(sel[i])
        ref = np.zeros(30)
        if S.size:
            ref[S] = np.linalg.solve(A[np.ix_(S, S)], rhs[i, S])
        np.testing.assert_allclose(X[2][i], ref, rtol=1e-9, atol=1e-12)


def test_thread_policy_by_size_and_blas_limit():
    assert th.row_threads(10, 256**3) == 1 or 10 * 256**3 >= th.PARALLEL_MIN_FLOP
    assert th.row_threads(4, 64**3) == 1  # a tiny layer never starts threads
    assert th.row_threads(1, 1e12) == 1  # one row: nothing to split
    if numba.get_num_threads() > 1:
        assert th.row_threads(500, 2048**3) == min(numba.get_num_threads(), 500)
    with th.blas_threads():
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")


@pytest.mark.parametrize("masked", [False, True])
def test_gptq_v_form_equals_the_eager_loop(masked):
    """The V-form sweep (no inverse factor; float32) against §2.3's float64 per-column loop: every weight
    on the same grid point (the float32 sweep's rounding never moved one across a rounding boundary)."""
    rng = np.random.default_rng(4 + masked)
    d = 70
    H = spike_H(rng, d)
    H[:, [5, 11]] = H[[5, 11], :] = 0  # dead inputs
    W = rng.standard_normal((12, d))
    mask = prune_exact_obs(W, H, 300).mask if masked else None
    W0 = np.where(mask, W, 0) if masked else W
    g = make_grid(W0, 3)
    fast = quantize_gptq(W0, H, g, mask=mask, blocksize=16, sub=4)
    ref = quantize_gptq_eager(W0, H, g, mask=mask)
    np.testing.assert_allclose(fast.W, quantize(ref, g) if not masked else np.where(mask, quantize(ref, g), 0),
                               rtol=0, atol=1e-12)
    kept = np.ones_like(W, bool) if mask is None else mask
    assert np.mean((fast.W != quantize(W0, g))[kept]) > 0.05  # not RTN


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has one thread")
def test_whole_layer_same_bits_at_one_and_two_threads_of_numba_and_blas():
    """With the default thresholds, numba and BLAS both at 1 or at 2 threads: ExactOBS (factorization,
    row-parallel trace and solves) and GPTQ give identical bits (OpenBLAS's threaded potrf does not: the
    factorizations run on one thread)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(6)
    d = 300
    H = spike_H(rng, d, rows=1200)
    W = rng.standard_normal((8, d))
    g = make_grid(W, 4)
    old, out = numba.get_num_threads(), {}
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            with threadpool_limits(n, user_api="blas"):
                out[n] = prune_exact_obs(W, H, W.size // 2), quantize_gptq(W, H, g)
    finally:
        numba.set_num_threads(old)
    (a, qa), (b, qb) = out[1], out[2]
    assert W.shape[0] * d**3 >= th.PARALLEL_MIN_FLOP  # the trace did run on two threads
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(qa.W, qb.W)


def test_hessian_and_masked_solve_same_bits_at_one_and_two_blas_threads():
    """OpenBLAS's threaded syrk / gemm round differently with the thread count; compress/ runs them on
    one thread, so the library's thread setting does not reach the results."""
    from threadpoolctl import threadpool_limits

    from sbc_onnx.compress.obs import masked_solve

    rng = np.random.default_rng(7)
    Z = ((rng.random((400, 300)) < 0.1) * rng.random((400, 300))).astype(np.float32)
    H = eager_hessian(Z, 20) + 0.01 * np.eye(300)
    W = rng.standard_normal((6, 300))
    mask = rng.random((6, 300)) < 0.5
    out = {}
    for n in (1, 2):
        with threadpool_limits(n, user_api="blas"):
            acc = HessianAccumulator(300)
            acc.add(Z, 20)
            out[n] = acc.H, masked_solve(W, H, mask)
    np.testing.assert_array_equal(out[1][0], out[2][0])
    np.testing.assert_array_equal(out[1][1], out[2][1])


def test_inverse_diagonal_float32_and_its_float64_fallback():
    """GPTQ's order values: the float32 path against the float64 inverse, and a matrix float32 cannot
    factor (no damping, a dead input) handled by the float64 path's escalation, as before."""
    from sbc_onnx.compress.numerics import inverse_diagonal

    rng = np.random.default_rng(12)
    H = spike_H(rng, 60)
    d, rd, esc = inverse_diagonal(H, 0.01)
    ref = np.diag(damped_inverse(H, 0.01)[0])
    np.testing.assert_allclose(d, ref, rtol=1e-4)
    assert rd == 0.01 and esc == []
    H[:, 7] = H[7, :] = 0  # dead input and no damping: singular
    d, rd, esc = inverse_diagonal(H, 0.0)
    assert rd == 0.01 and esc  # escalated once, by the float64 path
    np.testing.assert_allclose(d, np.diag(damped_inverse(H, 0.01)[0]), rtol=1e-12)


def test_float32_factor_is_checked_and_falls_back_to_float64():
    """GPTQ's main factor in float32: the permuted, flipped damped H's factor against float64's; None
    (so quantize_gptq takes the float64 path) when its backward error is not small against the damping:
    a Hessian with a huge common component next to a tiny damping, and a singular one without damping."""
    from sbc_onnx.compress.numerics import damped_cholesky, damped_cholesky32, damped_hessian

    rng = np.random.default_rng(13)
    H = spike_H(rng, 80)
    perm = rng.permutation(80)
    L32 = damped_cholesky32(H, 0.01, perm=perm, reverse=True)
    L64 = damped_cholesky(H, 0.01, reverse=True, perm=perm)[0]
    assert L32.dtype == np.float32
    np.testing.assert_allclose(L32, L64, rtol=0, atol=1e-5 * np.abs(L64).max())
    np.testing.assert_allclose(damped_cholesky32(H, 0.01), damped_cholesky(H, 0.01)[0], rtol=0,
                               atol=1e-5 * np.abs(L64).max())  # no permutation, no flip
    v = rng.random(80) + 1.0
    Hbad = H + 1e7 * np.outer(v, v)  # float32 rounding of this norm is large next to a small damping
    refused = 0
    for rd in np.logspace(-8, -2, 13):
        L = damped_cholesky32(Hbad, rd)
        Hd, lam = damped_hessian(Hbad, rd)
        if L is not None:  # accepted: the whole backward error is small against lambda
            assert np.linalg.norm(L.astype(np.float64) @ L.T.astype(np.float64) - Hd, 2) <= 0.1 * lam
        elif damped_cholesky32(Hbad, rd, tol=np.inf) is not None:
            refused += 1  # float32 factors it, only the check refuses
    assert refused >= 1 and damped_cholesky32(Hbad, 1e-2) is not None
    Hs = H.copy()
    Hs[:, 3] = Hs[3, :] = 0
    assert damped_cholesky32(Hs, 0.0) is None  # singular: not positive definite
    W = rng.standard_normal((6, 80))
    g = make_grid(W, 4)
    q = quantize_gptq(W, Hbad, g, rel_damp=1e-8, max_damp=1e-8)
    ref = quantize_gptq_eager(W, Hbad, g, rel_damp=1e-8)
    assert np.mean(q.W == quantize(ref, g)) > 0.97  # the float64 path: the eager loop's grid points


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has one thread")
def test_split_pieces_on_threads_give_the_same_bits_and_the_eager_results():
    """Wide layers: the Hessian block product in two pieces and diag(H^-1) from the blocked triangular
    inverse, run on one or on two threads (threads.parallel_map): identical bits, and the readable results."""
    from sbc_onnx.compress.hessian import HessianAccumulator as HA
    from sbc_onnx.compress.numerics import inverse_column_norms
    from scipy.linalg import lapack

    rng = np.random.default_rng(14)
    d = 1400  # the inverse's last merge (about 700^3 flop) runs on threads
    assert HA.split_at(d) is not None and HA.split_at(HA.SPLIT_MIN_D - 1) is None
    Z = ((rng.random((1500, d)) < 0.1) * rng.random((1500, d))).astype(np.float32)
    old, out = numba.get_num_threads(), {}
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            acc = HA(d, block_rows=700)
            acc.add(Z, 30)
            H = acc.H
            L = lapack.spotrf((H + 0.01 * np.eye(d)).astype(np.float32), lower=1, clean=1)[0]
            out[n] = H, inverse_column_norms(L)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(out[1][0], out[2][0])
    np.testing.assert_array_equal(out[1][1], out[2][1])
    ref = eager_hessian(Z, 30)
    np.testing.assert_allclose(out[1][0], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    Linv = lapack.dtrtri(L.astype(np.float64), lower=1)[0]
    np.testing.assert_allclose(out[1][1], (Linv**2).sum(axis=0), rtol=1e-4)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has one thread")
def test_gptq_row_pieces_and_blocked_factor_on_threads_same_bits():
    """A layer large enough for every threaded piece of GPTQ (the order's solves, the blocked float32
    Cholesky, sweeps of row pieces): identical at 1 and 2 threads, and on the eager loop's grid points."""
    from sbc_onnx.compress._cholesky import NB
    from sbc_onnx.compress.gptq import ROW_PIECE

    rng = np.random.default_rng(15)
    d, d_out = 900, 2 * ROW_PIECE + 5
    assert d > NB and d_out * d * d >= th.PARALLEL_MIN_FLOP
    H = spike_H(rng, d, rows=3000)
    W = rng.standard_normal((d_out, d))
    g = make_grid(W, 3)
    old, out = numba.get_num_threads(), {}
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            out[n] = quantize_gptq(W, H, g)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(out[1].W, out[2].W)
    np.testing.assert_array_equal(out[1].order, out[2].order)
    ref = quantize(quantize_gptq_eager(W, H, g), g)
    assert np.mean(out[1].W == ref) > 0.99


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has one thread")
def test_blocked_triangular_inverse_against_lapack():
    """_cholesky.trtri_blocked (leaf blocks, two merge levels, trmm pieces on threads) against its readable
    twin, LAPACK's strtri: the same inverse to float32 rounding, the same bits at 1 and 2 threads, the other
    triangle untouched, and the same info for a zero on the diagonal inside a later leaf."""
    from sbc_onnx.compress._cholesky import TRI_LEAF, trtri_blocked, trtri_eager

    rng = np.random.default_rng(17)
    d = 2 * TRI_LEAF + 77
    H = spike_H(rng, d, rows=4 * d).astype(np.float32) + np.float32(0.05) * np.eye(d, dtype=np.float32)
    L = np.asfortranarray(np.tril(np.linalg.cholesky(H.astype(np.float64))).astype(np.float32))
    L[np.triu_indices(d, 1)] = 7.0  # must stay as it is
    old, out = numba.get_num_threads(), {}
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            X = L.copy(order="F")
            assert trtri_blocked(X) == 0
            out[n] = X
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(out[1], out[2])
    ref, info = trtri_eager(np.tril(L))
    assert info == 0
    np.testing.assert_allclose(np.tril(out[1]), np.tril(ref), rtol=0, atol=1e-5 * np.abs(ref).max())
    exact = np.linalg.inv(np.tril(L).astype(np.float64))
    assert np.abs(np.tril(out[1]) - exact).max() <= 1e-5 * np.abs(exact).max()
    assert np.all(np.triu(out[1], 1) == np.triu(L, 1))
    bad = L.copy(order="F")
    k = d - 100
    bad[k, k] = 0.0
    assert trtri_blocked(bad) == trtri_eager(np.tril(bad))[1] == k + 1


def test_blocked_cholesky_against_lapack():
    """_cholesky.potrf_blocked (several 256-wide blocks, pieces on threads) against its readable twin,
    LAPACK's spotrf: the same factor to float32 rounding, and the same info on a matrix that is not
    positive definite (the order of the first non-positive leading minor, inside a later block)."""
    from sbc_onnx.compress._cholesky import NB, potrf_blocked, potrf_eager

    rng = np.random.default_rng(16)
    d = 2 * NB + 77
    H = spike_H(rng, d, rows=4 * d).astype(np.float32) + np.float32(0.05) * np.eye(d, dtype=np.float32)
    A = np.asfortranarray(H)
    assert potrf_blocked(A) == 0
    ref, info = potrf_eager(H)
    assert info == 0
    np.testing.assert_allclose(np.tril(A), ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    np.testing.assert_array_equal(np.triu(A, 1), np.triu(H, 1))  # the other triangle untouched
    bad = H.copy()
    k = NB + 40
    bad[k, k] = -1.0
    assert potrf_blocked(np.asfortranarray(bad)) == potrf_eager(bad)[1] == k + 1


@pytest.mark.parametrize("threads", [1, 2])
def test_run_graph_respects_dependencies_stops_and_raises(threads):
    """threads.run_graph (the blocked Cholesky's schedule): every task starts after all of its
    dependencies have finished, the ready task with the smallest key goes first on one thread, a task
    returning a true value stops the run (its dependents never start), and an exception reaches the caller."""
    import threading
    import time

    rng = np.random.default_rng(18)
    keys = list(range(40))
    deps = {k: sorted(set(rng.choice(k, size=min(k, 3), replace=False).tolist())) if k else [] for k in keys}
    log, lock = [], threading.Lock()

    def task(k):
        def run():
            with lock:
                log.append(("start", k))
            time.sleep(0.001 * (k % 3))
            with lock:
                log.append(("end", k))
        return run

    old = numba.get_num_threads()
    try:
        numba.set_num_threads(threads)
        out = th.run_graph({k: task(k) for k in keys}, deps, flop=th.PARALLEL_MIN_FLOP)
        assert sorted(out) == keys
        pos = {ev: i for i, ev in enumerate(log)}
        for k in keys:
            assert all(pos[("end", d)] < pos[("start", k)] for d in deps[k])
        if threads == 1:
            assert [k for ev, k in log if ev == "start"] == keys  # every task's deps have smaller keys
        calls = []
        stop = {0: lambda: calls.append(0), 1: lambda: calls.append(1) or 5, 2: lambda: calls.append(2),
                3: lambda: calls.append(3)}
        out = th.run_graph(stop, {1: [0], 2: [1], 3: [2]}, flop=th.PARALLEL_MIN_FLOP)
        assert out[1] == 5 and calls == [0, 1]

        def boom():
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            th.run_graph({0: boom, 1: lambda: None}, {1: [0]}, flop=th.PARALLEL_MIN_FLOP)
        with pytest.raises(RuntimeError, match="never became ready"):  # a cycle
            th.run_graph({0: lambda: None, 1: lambda: None, 2: lambda: None}, {1: [2], 2: [1]},
                         flop=th.PARALLEL_MIN_FLOP)
    finally:
        numba.set_num_threads(old)


def test_calibration_runs_blas_on_one_thread():
    """The whole calibration pass (the simulation's products too) runs BLAS on one thread, so OpenBLAS's
    busy-waiting idle workers never take a core from the observers' pieces; the limit is lifted afterwards."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(19)
    g = linear_lif_graph(rng, 40, 8)
    ds = Dataset((rng.random((4, 6, 40)) < 0.3).astype(np.uint8), np.zeros(4, int))
    walker = sbc.Walker(g, sbc.SimConfig(dt=1.0))
    seen = []
    run = walker.run

    def spy(*a, **k):
        seen.append([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"])
        return run(*a, **k)

    walker.run = spy
    with threadpool_limits(2, user_api="blas"):
        calibrate(walker, ds, batch_size=2)
        after = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert len(seen) == 2 and all(n == [1] * len(n) for n in seen)
    assert after and all(n == 2 for n in after)
