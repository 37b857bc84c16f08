"""Rank statistics between a predictor (the supernet) and ground truth, in plain numpy.

Kendall's τ-b and Spearman's ρ both handle ties the way ``scipy.stats`` does (τ-b; average ranks).
Top-k overlap and percentiles follow the definitions in ``docs/analysis/README.md``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import DnasError

ArrayLike = Sequence[float] | np.ndarray


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise DnasError(f"rank correlation needs two equally long lists, got {a.size} and {b.size}")
    return a, b


def kendall_tau(x: ArrayLike, y: ArrayLike, chunk: int | None = None) -> float:
    """Kendall's τ-b: Σ sign(Δx)·sign(Δy) / sqrt(#pairs untied in x · #pairs untied in y).

    O(n²) pair comparisons in chunks of rows (default: about 2²⁰ pairs per chunk, so 15,625
    architectures need a few tens of MB). NaN when fewer than two values or either side is constant.
    """
    a, b = _pair(x, y)
    n = a.size
    if n < 2:
        return math.nan
    chunk = max(1, (1 << 20) // n) if chunk is None else chunk
    concord = untied_x = untied_y = 0.0
    for s in range(0, n, chunk):
        sx = np.sign(a[s:s + chunk, None] - a[None, :])
        sy = np.sign(b[s:s + chunk, None] - b[None, :])
        concord += float((sx * sy).sum())
        untied_x += float(np.abs(sx).sum())
        untied_y += float(np.abs(sy).sum())
    # Every pair was counted twice (i, j) and (j, i); the factor cancels in the ratio.
    if untied_x == 0 or untied_y == 0:
        return math.nan
    return concord / math.sqrt(untied_x * untied_y)


def average_ranks(x: ArrayLike) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span (scipy's ``rankdata(method='average')``)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(a.size, dtype=np.float64)
    # Group boundaries of equal values in sorted order; each group gets the mean of its positions.
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], a.size]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def spearman_rho(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's ρ: Pearson correlation of average ranks; NaN for constant inputs, n < 2 or any NaN
    (as scipy.stats.spearmanr, whose default propagates it)."""
    a, b = _pair(x, y)
    if a.size < 2 or np.isnan(a).any() or np.isnan(b).any():
        return math.nan
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return math.nan if den == 0 else float((ra * rb).sum()) / den


def top_indices(x: ArrayLike, k: int) -> np.ndarray:
    """Indices of the k largest values; ties go to the earlier index (a stable, documented choice)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    return np.argsort(-a, kind="mergesort")[:k]


def top_k_size(fraction: float, n: int) -> int:
    """k = ceil(fraction · n), at least 1."""
    if not 0 < fraction <= 1:
        raise DnasError(f"top-k fraction must be in (0, 1], got {fraction}")
    return max(1, math.ceil(fraction * n - 1e-9))


def top_k_overlap(pred: ArrayLike, truth: ArrayLike, fraction: float) -> float:
    """|top-k by prediction ∩ top-k by truth| / k with k = ceil(fraction · n)."""
    a, b = _pair(pred, truth)
    k = top_k_size(fraction, a.size)
    return len(set(top_indices(a, k).tolist()) & set(top_indices(b, k).tolist())) / k


def bottom_k_overlap(pred: ArrayLike, truth: ArrayLike, fraction: float) -> float:
    """The same for the k worst: how well the predictor recognises the architectures to prune."""
    a, b = _pair(pred, truth)
    return top_k_overlap(-a, -b, fraction)


def percentile_of(value: float, population: ArrayLike) -> float:
    """Fraction of ``population`` with a value <= ``value`` (1.0 = the best there is)."""
    p = np.asarray(population, dtype=np.float64).ravel()
    if p.size == 0:
        raise DnasError("percentile of an empty population")
    return float((p <= value).sum()) / p.size
