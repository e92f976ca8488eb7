"""Streaming time filter and SMP Hessian accumulation against the direct dense formulas."""

import numpy as np
import pytest

from sbc_onnx.compress import HessianAccumulator, TimeFilter, filter_time, kernel_matrix


@pytest.mark.parametrize("betas", [(), (0.8,), (0.6, 0.9), (1.0,)])
def test_timefilter_stream_equals_kernel_matrix(betas):
    rng = np.random.default_rng(1)
    T, U, d = 15, 3, 7
    X = (rng.random((T, U, d)) < 0.3).astype(np.float64)
    M = kernel_matrix(T, betas)
    ref = np.einsum("ts,sud->tud", M, X)
    f = TimeFilter(betas, (U, d))
    out = np.stack([f.step(X[t]) for t in range(T)])
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(filter_time(X, betas), ref, rtol=1e-12, atol=1e-12)
    f.reset()
    np.testing.assert_allclose(f.step(X[0]), X[0])  # reset clears the state


def test_kernel_matrix_single_beta_and_if():
    M = kernel_matrix(4, (0.5,))
    assert M[3, 1] == pytest.approx(0.25) and M[1, 3] == 0.0 and M[2, 2] == 1.0
    np.testing.assert_array_equal(kernel_matrix(5, (1.0,)), np.tril(np.ones((5, 5))))  # IF = cumsum
    np.testing.assert_array_equal(kernel_matrix(3, ()), np.eye(3))


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_accumulator_equals_direct_formula(precision):
    rng = np.random.default_rng(2)
    T, d, betas = 12, 9, (0.7, 0.9)
    M = kernel_matrix(T, betas)
    acc = HessianAccumulator(d, betas, precision=precision, block_rows=50)  # forces several blocks
    direct = np.zeros((d, d))
    n_total = 0
    for batch in range(3):
        n = 4 + batch
        X = (rng.random((T, n, d)) < 0.25).astype(np.float32)
        acc.add_sequence(X)
        for i in range(n):
            Z = M @ X[:, i, :].astype(np.float64)
            direct += Z.T @ Z
        n_total += n
    direct *= 2.0 / n_total
    H = acc.H
    assert acc.n_units == n_total
    assert H.dtype == np.float64 and np.array_equal(H, H.T)
    tol = 1e-5 if precision == "float32" else 1e-12
    np.testing.assert_allclose(H, direct, rtol=tol, atol=tol * np.abs(direct).max())


def test_accumulator_add_rows_and_sq_norms():
    rng = np.random.default_rng(3)
    X = (rng.random((40, 6)) < 0.5).astype(np.float64)
    acc = HessianAccumulator(6)
    acc.add(X[:25], n_units=3)
    acc.add(X[25:], n_units=2)
    np.testing.assert_allclose(acc.H, 2.0 / 5 * X.T @ X, rtol=1e-6)
    acc.add_raw_sq((X**2).sum(0))
    np.testing.assert_allclose(acc.sq_norms, X.sum(0))
    with pytest.raises(ValueError):
        acc.add(np.zeros((3, 5)), 1)


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_accumulator_fortran_rows_equal_c_rows(precision):
    """Fortran-ordered (rows, d) input (transposed im2col) takes the in-place trans=1 syrk path."""
    rng = np.random.default_rng(3)
    dt = np.float32 if precision == "float32" else np.float64
    Z = (rng.random((300, 17)) < 0.3).astype(dt) * rng.random((300, 17)).astype(dt)
    ZF = np.asfortranarray(Z)
    a = HessianAccumulator(17, precision=precision, block_rows=512)
    a.add(Z, 10)
    b = HessianAccumulator(17, precision=precision, block_rows=512)
    b.add(ZF, 10)
    c = HessianAccumulator(17, precision=precision, block_rows=64)  # F input larger than a block
    c.add(ZF, 10)
    ref = 2.0 / 10 * Z.astype(np.float64).T @ Z.astype(np.float64)
    tol = 1e-5 if precision == "float32" else 1e-12
    for acc in (a, b, c):
        np.testing.assert_allclose(acc.H, ref, rtol=tol, atol=tol)


def test_compiled_on_disk_marker(tmp_path, monkeypatch):
    """The "compiling the kernels" notice: False before both ExactOBS kernels ran once with this cache
    folder, True afterwards (the project's own marker; numba's cache is not read)."""
    from sbc_onnx.compress import _obs_kernel as k
    from sbc_onnx.compress import compiled_on_disk, prune_exact_obs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(k, "_ran", set())
    assert not compiled_on_disk()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6))
    prune_exact_obs(rng.standard_normal((3, 6)), 2 * X.T @ X / 40, 9)
    assert compiled_on_disk()
    assert [p.name[:18] for p in (tmp_path / "sbc-onnx").iterdir()] == ["numba-obs-kernels-"]
