"""Small statistics shared by the report and the library API (no plotting imports)."""

from __future__ import annotations

import math

import numpy as np


def wilson(k: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval for k successes out of n (nan, nan for n = 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # at k = 0 (k = n) the bound is exactly 0 (1); the float formula leaves ~1e-19 there, which turns
    # error bars (p - lo) negative
    lo = 0.0 if k <= 0 else max(0.0, centre - half)
    hi = 1.0 if k >= n else min(1.0, centre + half)
    return (lo, hi)


# ------------------------------------------------------------------------- paired and group statistics
# The report compares models on the same examples: paired statistics (bootstrap over shared examples,
# exact McNemar) use that pairing, which is far more sensitive than comparing two Wilson intervals.

def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs (b: only the first model right, c: only the
    second): 2 P(X <= min(b, c)) with X ~ Binomial(b + c, 1/2), capped at 1; 1.0 without discordant pairs.
    Exact because discordant counts are often small at the n of a robustness run, where chi-square is poor."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    from scipy.stats import binom

    return float(min(1.0, 2.0 * binom.cdf(min(b, c), b + c, 0.5)))


def holm_adjust(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of a family of tests (same order as ``pvalues``): sort ascending,
    multiply the i-th smallest (0-based) by (m - i), take the running maximum, cap at 1. Rejecting where the
    adjusted p < alpha controls the family-wise error rate at alpha under any dependence between the tests
    (Holm 1979), which the report's comparisons have: they share models, examples and attacks. NaN p-values
    are left NaN and do not count in the family size."""
    p = np.asarray(pvalues, dtype=float).ravel()
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    if (p[ok] < 0).any() or (p[ok] > 1).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[ok].min():.3g}..{p[ok].max():.3g}")
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out[order] = np.minimum(adj, 1.0)
    return out


def _boot_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``values``, vectorised in chunks of ~4M draws."""
    n = values.size
    out = np.empty(n_boot)
    step = max(1, 4_000_000 // max(n, 1))
    for i in range(0, n_boot, step):
        m = min(step, n_boot - i)
        out[i:i + m] = values[rng.integers(0, n, (m, n))].mean(axis=1)
    return out


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    a = (1 - level) / 2
    if not np.isfinite(samples).any():
        return (math.nan, math.nan)
    lo, hi = np.nanquantile(samples, [a, 1 - a])
    return (float(lo), float(hi))


def paired_se(diff) -> float:
    """Standard error of the mean of per-example paired differences ``diff`` (sample SD / sqrt(n)): e.g.
    correct_a - correct_b on the same images gives the SE of acc(a) - acc(b). nan for fewer than 2 examples."""
    d = np.asarray(diff, dtype=float).ravel()
    return float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan


def paired_bootstrap(diff, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of per-example paired differences ``diff`` (e.g. correct_dynamic - correct_static
    on the examples both models saw) and its percentile bootstrap interval, resampling whole examples so the
    pairing is kept. Fixed ``seed``: the report is reproducible. (nan, nan, nan) for no examples."""
    d = np.asarray(diff, dtype=float).ravel()
    if d.size == 0:
        return (math.nan, math.nan, math.nan)
    lo, hi = _interval(_boot_means(d, n_boot, np.random.default_rng(seed)), level)
    return (float(d.mean()), lo, hi)


def bootstrap_mean_diff(x, y, *, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, float]:
    """(mean(x) - mean(y), lo, hi) for two independent groups (e.g. broken vs surviving examples), each
    resampled on its own; nan when a group is empty."""
    x, y = (np.asarray(v, dtype=float).ravel() for v in (x, y))
    if x.size == 0 or y.size == 0:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    lo, hi = _interval(_boot_means(x, n_boot, rng) - _boot_means(y, n_boot, rng), level)
    return (float(x.mean() - y.mean()), lo, hi)


def cohens_d(x, y) -> float:
    """Standardised mean difference (mean(x) - mean(y)) / pooled SD; nan when it is undefined."""
    x, y = (np.asarray(v, dtype=float).ravel() for v in (x, y))
    if x.size < 2 or y.size < 2:
        return math.nan
    pooled = ((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2)
    return float((x.mean() - y.mean()) / math.sqrt(pooled)) if pooled > 0 else math.nan


def rank_biserial(x, y) -> float:
    """Rank-biserial correlation P(x > y) - P(x < y) over all cross-group pairs (ties count half), in [-1, 1]:
    an effect size that suits skewed measures such as attention KL; nan when a group is empty."""
    from scipy.stats import rankdata

    x, y = (np.asarray(v, dtype=float).ravel() for v in (x, y))
    if x.size == 0 or y.size == 0:
        return math.nan
    ranks = rankdata(np.concatenate([x, y]))
    u = ranks[:x.size].sum() - x.size * (x.size + 1) / 2
    return float(2 * u / (x.size * y.size) - 1)


def spearman_bootstrap(x, y, *, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """(rho, lo, hi): Spearman's rank correlation and its percentile bootstrap interval over the units (e.g.
    models); resamples where either variable is constant are left out. nan when n < 3 or a variable is constant."""
    from scipy.stats import rankdata

    x, y = (np.asarray(v, dtype=float).ravel() for v in (x, y))
    if x.size != y.size:
        raise ValueError(f"x and y differ in length ({x.size} vs {y.size})")
    if x.size < 3:
        return (math.nan, math.nan, math.nan)

    def rho(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # row-wise, a and b of shape (m, n)
        ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
        ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
        den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), np.nan)

    r0 = float(rho(x[None], y[None])[0])
    if math.isnan(r0):
        return (math.nan, math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, x.size, (n_boot, x.size))
    lo, hi = _interval(rho(x[idx], y[idx]), level)
    return (r0, lo, hi)
