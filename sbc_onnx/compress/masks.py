"""Masks (True = kept) from scores: magnitude, Wanda, N:M.

Every "prune k" function prunes exactly k entries; ties are broken stably by flat index (row-major),
so the output is deterministic.  N:M patterns are given as (n, m) = keep n of every m consecutive
inputs of a row (2:4 keeps 2 of 4).  For convs the caller orders d_in as C_in*kh*kw.  When d_in is
not a multiple of m, the last partial group of r < m inputs keeps min(n, r) (prunes max(0, r - n)).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "select_smallest", "nm_pattern", "prune_lowest", "row_counts_even", "mask_from_row_counts", "nm_mask",
    "nm_prune_count", "magnitude_mask", "wanda_scores", "wanda_mask", "check_nm",
]


def select_smallest(scores: np.ndarray, k: int) -> np.ndarray:
    """Bool array shaped like ``scores``, True at its k smallest entries: exactly the first k of a stable
    argsort of the flattened array (ties in row-major index order, NaN after everything).

    Found by a partition threshold, O(n) instead of a sort's O(n log n): the k-th value, everything
    below it, then the first ties at it in index order.  Compares in the scores' own float type."""
    s = np.asarray(scores)
    flat = s.ravel()
    k = int(k)
    if not 0 <= k <= flat.size:
        raise ValueError(f"cannot select {k} of {flat.size} entries")
    if k == 0 or k == flat.size:
        return np.full(s.shape, k > 0)
    v = np.partition(flat, k - 1)[k - 1]  # NaN sorts last, as in a sort
    nan = bool(np.isnan(v))
    sel = ~np.isnan(flat) if nan else flat < v
    need = k - int(np.count_nonzero(sel))
    if need:  # the first ties at v, in index order
        sel[np.flatnonzero(np.isnan(flat) if nan else flat == v)[:need]] = True
    return sel.reshape(s.shape)


def nm_pattern(pattern) -> tuple[int, int] | None:
    """The N:M pattern (n, m) from "N:M" or a pair, checked once for every caller: keep n of every m
    consecutive inputs, 0 < n < m.  None (no pattern) passes through."""
    if pattern is None:
        return None
    try:
        n, m = (int(v) for v in (pattern.split(":") if isinstance(pattern, str) else pattern))
    except (TypeError, ValueError) as e:
        raise ValueError(f"pattern must look like N:M (e.g. 2:4), got {pattern!r}") from e
    if not 0 < n < m:
        raise ValueError(f"pattern N:M needs 0 < N < M, got {pattern!r}")
    return n, m


def prune_lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask pruning exactly the k lowest scores of the whole array (stable ties)."""
    s = np.asarray(scores, dtype=np.float64)
    if not 0 <= int(k) <= s.size:
        raise ValueError(f"cannot prune {k} of {s.size} weights")
    return ~select_smallest(s, k)


def row_counts_even(scores: np.ndarray, k: int) -> np.ndarray:
    """Split k over rows as evenly as possible: every row prunes floor(k/rows); the k % rows extra
    prunings go to the rows whose next candidate (the (base+1)-th smallest score) is smallest."""
    s = np.asarray(scores, dtype=np.float64)
    rows, cols = s.shape
    if not 0 <= k <= s.size:
        raise ValueError(f"cannot prune {k} of {s.size} weights")
    base, extra = divmod(int(k), rows)
    counts = np.full(rows, base, dtype=np.int64)
    if extra:
        nxt = np.sort(s, axis=1)[:, base]
        counts[np.argsort(nxt, kind="stable")[:extra]] += 1
    return counts


def mask_from_row_counts(scores: np.ndarray, counts) -> np.ndarray:
    """Prune the counts[i] lowest scores of row i."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(s.shape[1])[None, :].repeat(s.shape[0], 0), axis=1)
    return rank >= np.asarray(counts)[:, None]


def nm_prune_count(shape, pattern) -> int:
    """Total number of weights an (n, m) pattern prunes in a (d_out, d_in) matrix."""
    n, m = pattern
    d_out, d_in = shape
    full, r = divmod(d_in, m)
    return d_out * (full * (m - n) + max(0, r - n))


def nm_mask(scores: np.ndarray, pattern) -> np.ndarray:
    """Keep the n highest scores in every group of m consecutive inputs of each row."""
    n, m = nm_pattern(pattern)
    s = np.asarray(scores, dtype=np.float64)
    rows, d = s.shape
    G = -(-d // m)
    pad = np.full((rows, G * m), np.inf)  # padding is "kept" and dropped again below
    pad[:, :d] = s
    g = pad.reshape(rows, G, m)
    order = np.argsort(g, axis=2, kind="stable")  # ascending: the first m-n (real) entries are pruned
    valid = np.ones((G, m), dtype=np.int64)
    if d % m:
        valid[-1, d % m:] = 0
    n_prune = np.maximum(valid.sum(1) - n, 0)  # per group
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(m), g.shape).copy(), axis=2)
    keep = rank >= n_prune[None, :, None]
    return keep.reshape(rows, G * m)[:, :d]


def check_nm(mask: np.ndarray, pattern) -> bool:
    """True if every group of m consecutive inputs keeps at most n (and the pruned count is exact)."""
    n, m = pattern
    rows, d = mask.shape
    for g0 in range(0, d, m):
        kept = mask[:, g0:g0 + m].sum(1)
        if np.any(kept != min(n, mask[:, g0:g0 + m].shape[1])):
            return False
    return True


def magnitude_mask(W: np.ndarray, k: int | None = None, *, pattern=None) -> np.ndarray:
    """Per-layer magnitude pruning: exactly k smallest |w| (or the N:M pattern on |w|)."""
    a = np.abs(np.asarray(W, dtype=np.float64))
    if pattern is not None:
        return nm_mask(a, pattern)
    return prune_lowest(a, k)


def wanda_scores(W: np.ndarray, sq_norms: np.ndarray) -> np.ndarray:
    """|w_ij| * sqrt(sum_t x_j^2) (Wanda; for 0/1 spikes sum x^2 is input j's spike count)."""
    return np.abs(np.asarray(W, dtype=np.float64)) * np.sqrt(np.asarray(sq_norms, np.float64))[None, :]


def wanda_mask(W, sq_norms, k: int | None = None, *, scope: str = "row", pattern=None) -> np.ndarray:
    """Wanda mask with exactly k pruned.  scope="row" (Wanda's comparison group): k spread evenly over
    rows (see row_counts_even); scope="layer": the k lowest scores of the whole layer."""
    s = wanda_scores(W, sq_norms)
    if pattern is not None:
        return nm_mask(s, pattern)
    if scope == "layer":
        return prune_lowest(s, k)
    if scope != "row":
        raise ValueError(f"scope must be 'row' or 'layer', not {scope!r}")
    return mask_from_row_counts(s, row_counts_even(s, k))
