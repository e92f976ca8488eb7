"""Grids, LAMP allocation, masks (N:M, magnitude, Wanda): exact counts and definitions."""


import numpy as np
import pytest

from sbc_onnx.compress import (allocate, check_nm, from_int, lamp_scores, magnitude_mask, make_grid, nm_mask,
                               quantize, to_int, wanda_mask)
from sbc_onnx.compress.masks import nm_prune_count


def test_symmetric_grid_matches_gptq_quantizer():
    W = np.array([[0.5, -1.0, 0.26, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, -0.1, 1.4, -2.9]])
    g = make_grid(W, 2)
    # GPTQ sym: scale = 2 max|w| / (2^b - 1); q = clamp(round(w/scale) + 2, 0, 3); w = scale (q - 2)
    scale = 2 * np.abs(W).max(1, keepdims=True) / 3
    scale[1] = 1.0
    ref = scale * (np.clip(np.round(W / scale) + 2, 0, 3) - 2)
    np.testing.assert_allclose(quantize(W, g), ref)
    assert g.qmin == -2 and g.qmax == 1
    q = to_int(W, g)
    assert q.min() >= -2 and q.max() <= 1
    np.testing.assert_allclose(from_int(q, g), ref)
    assert np.all(quantize(W, g)[1] == 0)  # all-zero row: no division by zero, stays 0


def test_restricted_and_asymmetric_grids():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 20))
    g = make_grid(W, 3, "symmetric_restricted")
    Wq = quantize(W, g)
    assert np.allclose(np.abs(Wq).max(1), np.abs(W).max(1))  # the extreme weight is exactly representable
    assert len(np.unique(np.round(Wq[0] / g.scale[0, 0]))) <= 7
    ga = make_grid(W, 4, "asymmetric")
    err = np.abs(quantize(W, ga) - W)
    assert np.all(err <= ga.scale / 2 + 1e-12)
    gt = make_grid(W, 4, granularity="tensor")
    assert np.ndim(gt.scale) == 0
    with pytest.raises(ValueError):
        make_grid(W, 4, "bogus")


def test_lamp_scores_equal_direct_quadratic_definition():
    w = np.array([[0.3, -1.2, 0.3], [2.0, 0.05, -0.3]])  # includes ties in |w|
    for p in (2, 3):
        s = lamp_scores(w, p)
        a = np.abs(w).ravel()
        direct = [a[u] ** p / sum(a[v] ** p for v in range(a.size) if a[v] >= a[u]) for u in range(a.size)]
        np.testing.assert_allclose(s.ravel(), direct)


@pytest.mark.parametrize("method", ["lamp", "uniform", "global"])
@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9, 1.0])
def test_allocate_exact_totals(method, sparsity):
    rng = np.random.default_rng(4)
    layers = [rng.standard_normal(s) for s in [(7, 13), (30, 5), (3, 3, 2), (101,)]]
    counts = allocate(layers, sparsity, method)
    n = sum(x.size for x in layers)
    assert sum(counts) == int(np.floor(sparsity * n + 1e-9))
    assert all(0 <= c <= x.size for c, x in zip(counts, layers))


def test_lamp_allocation_prefers_layers_with_small_relative_weights():
    rng = np.random.default_rng(5)
    a = rng.standard_normal(200)
    b = rng.standard_normal(200) * 1e-3  # LAMP is scale-invariant per layer ...
    ca, cb = allocate([a, b], 0.5, "lamp")
    assert abs(ca - cb) <= 40   # ... so both layers get similar counts,
    ga, gb = allocate([a, b], 0.5, "global")
    assert gb == 200            # while global magnitude empties the small layer


@pytest.mark.parametrize("pattern,d", [((2, 4), 16), ((1, 4), 18), ((3, 8), 24), ((2, 4), 6)])
def test_nm_masks_valid(pattern, d):
    rng = np.random.default_rng(6)
    s = rng.random((5, d))
    m = nm_mask(s, pattern)
    assert check_nm(m, pattern)
    assert (~m).sum() == nm_prune_count(m.shape, pattern)
    # pruned entries are the smallest within each group
    n, M = pattern
    for g0 in range(0, d, M):
        blk, mk = s[:, g0:g0 + M], m[:, g0:g0 + M]
        for r in range(5):
            if (~mk[r]).any() and mk[r].any():
                assert blk[r][~mk[r]].max() <= blk[r][mk[r]].min()


def test_check_nm_rejects_bad_mask():
    m = np.ones((2, 8), bool)
    m[0, :2] = False
    assert not check_nm(m, (2, 4))


def test_magnitude_mask_exact_k_with_ties():
    W = np.array([[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]])
    m = magnitude_mask(W, 3)
    assert (~m).sum() == 3
    # both 0.5 go, then the first 1.0 in row-major order (stable)
    assert not m[0, 2] and not m[1, 0] and not m[0, 0] and m[0, 1]
    for k in range(W.size + 1):
        assert (~magnitude_mask(W, k)).sum() == k


def test_wanda_row_and_layer_scope():
    rng = np.random.default_rng(7)
    W = rng.standard_normal((6, 10))
    sq = rng.random(10) * 5
    for k in (0, 13, 31, 60):
        mr = wanda_mask(W, sq, k, scope="row")
        ml = wanda_mask(W, sq, k, scope="layer")
        assert (~mr).sum() == k and (~ml).sum() == k
        per_row = (~mr).sum(1)
        assert per_row.max() - per_row.min() <= 1
    # a silent input (sq = 0) is pruned first by wanda's metric
    sq[3] = 0
    assert not wanda_mask(W, sq, 6, scope="row")[:, 3].any()
    assert check_nm(wanda_mask(W[:, :8], sq[:8], pattern=(2, 4)), (2, 4))


def test_allocate_by_scores_is_the_global_k_smallest():
    from sbc_onnx.compress import allocate_by_scores

    rng = np.random.default_rng(3)
    scores = [rng.random((4, 5)), rng.random(7) * 0.5, rng.random((2, 3)) * 2]
    for sp in (0.0, 0.3, 0.55, 1.0):
        counts = allocate_by_scores(scores, sp)
        k = int(np.floor(sp * 33 + 1e-9))
        assert sum(counts) == k
        flat = sorted((v, li) for li, x in enumerate(scores) for v in np.ravel(x))[:k]
        assert counts == [sum(1 for _, li in flat if li == j) for j in range(3)]
