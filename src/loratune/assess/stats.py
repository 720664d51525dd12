"""Statistics of the assessment: length distributions, distribution distances (KS, Jensen-Shannon) and
the resolution (standard errors) of the validation split."""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from loratune.assess.records import LengthStats, Resolution
from loratune.data import Split
from loratune.objectives import NOISE_BAND

def fit_length(values: Sequence[float], q: float) -> float:
    """The smallest length that q% of `values` fit in (the inverted empirical CDF: one of the lengths). What a "q% of
    texts fit in N" claim reads: numpy's default linear interpolation gave a 99th percentile of 57 tokens where 148 of
    150 texts fit only in 64 (and 1.3% exceeded it)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q, method="inverted_cdf"))


def length_stats(values: Sequence[int]) -> LengthStats:
    if len(values) == 0:
        return LengthStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    a = np.asarray(values, dtype=np.float64)
    p90, p95, p99 = (fit_length(a, q) for q in (90, 95, 99))  # "q% fit in": lengths the texts really fit in
    return LengthStats(len(a), float(a.mean()), float(np.median(a)), p90, p95, p99, int(a.max()))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    counts_a, counts_b = _value_counts(a, b)
    return float(_ks_gap(counts_a, counts_b))


def _value_counts(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's count of every value the two hold (ascending): what the KS statistic and its deals read."""
    values, side = np.unique(np.concatenate([np.asarray(a, float), np.asarray(b, float)]), return_inverse=True)
    return (np.bincount(side[: len(a)], minlength=len(values)),
            np.bincount(side[len(a):], minlength=len(values)))


def _ks_gap(counts_a: np.ndarray, counts_b: np.ndarray) -> np.ndarray:
    """The one formula of the statistic, for ks_statistic and ks_critical's deals: the two samples' counts of each
    value (ascending; one sample, or one deal, a row) -> the largest gap between their empirical CDFs, |A/n - B/m| =
    |A m - B n| / (n m) in whole numbers and one division: equal gaps are bit-equal (2/3 written as 1 - 1/3 rounds 1
    ulp above 2/3)."""
    n, m = counts_a.sum(axis=-1), counts_b.sum(axis=-1)
    gap = np.abs(np.cumsum(counts_a, axis=-1) * m[..., None] - np.cumsum(counts_b, axis=-1) * n[..., None]).max(-1)
    return gap / (n * m)  # int64 / int64: both exact as floats (< 2**53), one correctly rounded division


# The deals behind ks_critical and js_critical: random splits of the pooled rows (seeded), as many as resolve the
# 1 - alpha quantile. A fixed 400 could not: below alpha 1/400 the quantile was their largest (the alpha-1e-9 KS
# critical value was passed by 0.3% of random splits), and at 0.05 its 20 deals beyond left clean splits past it 6% of
# the time.
SHIFT_NULL_SEED = 0
SHIFT_NULL_TAIL = 20  # deals beyond the quantile, at least: the chance a random split passes it is alpha +- ~22%
SHIFT_NULL_MIN_DEALS = 2000  # and deals, at least: 100 beyond at alpha 0.05 (alpha +- 10%; 0.05 +- 0.005)
# deals x pooled values (labels, distinct lengths), at most: ~0.15 s for the KS, ~0.5 s for the divergence; past it
# (a small alpha, or many distinct values: 400 deals of 220,000 distinct lengths took 36 s) the large-sample law,
# ks_critical's asymptotic formula and js_critical's chi-square fitted to fewer deals
SHIFT_NULL_MAX_WORK = 1_000_000
# the deals behind that fit: SHIFT_NULL_MIN_DEALS, or as many as the cap allows, and at least this many (their mean
# and variance to ~10%)
SHIFT_NULL_FIT_DEALS = 200
# the largest KS (a gap between two CDFs) and Jensen-Shannon divergence (bits: log2 2) there are: the critical value at
# alpha 0, which no split passes (the strict `>`); the largest of the deals, which js_critical took, is passed by a
# split the deals missed
SHIFT_STAT_MAX = 1.0


class Critical(NamedTuple):
    """What a random split of these sizes reaches with probability alpha, and how it was found (the facts'
    `*_critical_by`: the deals, or the large-sample law and why)."""

    value: float
    by: str


def _deals(pooled: np.ndarray, m: int, count: int) -> np.ndarray:
    """`count` random splits of m of the pooled rows (counts of each value or label; seeded): one row each."""
    return np.random.default_rng(SHIFT_NULL_SEED).multivariate_hypergeometric(pooled, m, size=count)


def _chance_critical(pooled: np.ndarray, m: int, alpha: float, statistic: Callable[[np.ndarray], np.ndarray],
                     large_sample: Callable[[float, str], Critical]) -> Critical:
    """The one reading of `alpha` for ks_critical and js_critical: the value of `statistic` (of the m-row side's
    counts, a deal a row) that a random split of m of the pooled rows passes with probability alpha.

    Over enough deals that SHIFT_NULL_TAIL lie beyond it (at least SHIFT_NULL_MIN_DEALS): the deal with floor(alpha
    D) of the D deals above its rank, a value a deal reached, so a split equal to it is bit-equal and not past it.
    Deals past SHIFT_NULL_MAX_WORK: large_sample(alpha, why). Alpha 0 (or less): SHIFT_STAT_MAX, never past; alpha 1
    (or more): the smallest deal."""
    if alpha <= 0:
        return Critical(SHIFT_STAT_MAX, "alpha 0: the statistic's largest value, never past")
    alpha = min(1.0, alpha)
    need = max(SHIFT_NULL_MIN_DEALS, SHIFT_NULL_TAIL / alpha)
    if need * len(pooled) > SHIFT_NULL_MAX_WORK:
        return large_sample(alpha, f"alpha {alpha:g} needs {need:,.0f} random deals of {len(pooled):,} values, past "
                                   f"the cap of {SHIFT_NULL_MAX_WORK:,} deal-values")
    count = math.ceil(need)
    null = np.sort(statistic(_deals(pooled, m, count)))
    return Critical(float(null[count - 1 - min(count - 1, math.floor(alpha * count))]), f"{count:,} random deals")


def ks_critical(a: Sequence[float], b: Sequence[float], alpha: float) -> Critical:
    """The two-sample KS statistic that a sample of len(b) rows dealt at random from the pooled values of both (the
    rest the other sample) reaches with probability `alpha` (_chance_critical; a multivariate hypergeometric draw of
    b's counts of each value), as js_critical's. 200 vs 20 rows: ~0.3. The deals count the ties of whole-number
    lengths, and hold at any size: the asymptotic c(alpha) sqrt((n + m) / (n m)) passes 1 at 20 vs 2 rows, so a KS of
    1, which a random deal reaches 2 / C(22, 2) = 0.9% of the time, was never past it. Each deal's statistic is
    ks_statistic's formula (_ks_gap). Past the deals' cap (a small alpha, many distinct values: large samples) that
    asymptotic formula, c(alpha) = sqrt(-ln(alpha / 2) / 2), at most 1 (ties make it conservative). 1 where a side
    is empty."""
    if len(a) == 0 or len(b) == 0:
        return Critical(1.0, "a side has no rows")
    pooled = sum(_value_counts(a, b))
    n, m = len(a), len(b)

    def asymptotic(alpha: float, why: str) -> Critical:
        c = math.sqrt((math.log(2) - math.log(alpha)) / 2)
        return Critical(min(SHIFT_STAT_MAX, c * math.sqrt((n + m) / (n * m))),
                        f"the asymptotic c(alpha) sqrt((n + m) / (n m)): {why}")

    return _chance_critical(pooled, m, alpha, lambda q: _ks_gap(pooled - q, q), asymptotic)


def js_critical(train_counts: Mapping[str, float], split_counts: Mapping[str, float], alpha: float) -> Critical:
    """The Jensen-Shannon divergence (bits) that a split of this size dealt at random from the pooled labels of both
    reaches with probability `alpha` (_chance_critical; a multivariate hypergeometric draw of the split's counts).
    30 rows of 10 classes reach ~0.1 bits by chance alone.
    Each deal's divergence is js_divergence's formula (_js_bits), so a split whose counts a deal drew (labels swapped
    aside) has that deal's divergence bit for bit: equal to its critical value is not past it by a rounding step (the
    formula written twice put a divergence of 0.11571906015888446 past its own 0.11571906015888445).
    Past the deals' cap: a scaled chi-square a chi2(dof), the divergence's large-sample law (8 ln 2 n m / (n + m) JS
    -> chi2(labels - 1)), with a and dof fitted to the mean and variance of deals (SHIFT_NULL_FIT_DEALS): the law
    itself is 0.8 of the deals' quantile at 150 labels of 200 rows (few rows a label), the fit within ~3% there, and
    above it where labels have a row or two (10 labels of 2 rows at alpha 1e-4: 0.43 bits for the deals' 0.36)."""
    labels = sorted(set(train_counts) | set(split_counts))
    pooled = np.array([int(train_counts.get(k, 0)) + int(split_counts.get(k, 0)) for k in labels], np.int64)
    m = int(sum(int(split_counts.get(k, 0)) for k in labels))
    n = int(pooled.sum()) - m
    if m == 0 or n == 0 or len(labels) < 2:
        return Critical(0.0, "a side has no rows, or one label: no divergence")

    def divergences(q: np.ndarray) -> np.ndarray:
        return _js_bits((pooled - q).astype(float), q.astype(float))[0]

    def fitted(alpha: float, why: str) -> Critical:
        from scipy.special import chdtri  # the chi-square's inverse survival function (scipy.stats: a 2 s import)

        count = max(SHIFT_NULL_FIT_DEALS, min(SHIFT_NULL_MIN_DEALS, SHIFT_NULL_MAX_WORK // len(labels)))
        null = divergences(_deals(pooled, m, count))
        mean, var = float(null.mean()), float(null.var())
        value = float(null.max()) if var <= 0 else var / (2 * mean) * float(chdtri(2 * mean * mean / var, alpha))
        return Critical(min(SHIFT_STAT_MAX, value),
                        f"a scaled chi-square fitted to {count:,} random deals' mean and variance: {why}")

    return _chance_critical(pooled, m, alpha, divergences, fitted)


def js_divergence(p: Mapping[str, float], q: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """Jensen-Shannon divergence in bits between two count (or share) maps, and each label's term."""
    labels = sorted(set(p) | set(q))
    P = np.array([p.get(k, 0.0) for k in labels], float)
    Q = np.array([q.get(k, 0.0) for k in labels], float)
    if P.sum() == 0 or Q.sum() == 0:
        return 0.0, {}
    js, per = _js_bits(P[None], Q[None])
    return float(js[0]), dict(zip(labels, per[0].tolist()))


def _js_bits(P: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one formula of the divergence, for js_divergence and js_critical's deals: aligned count vectors, a pair a
    row (each with a positive sum) -> each row's divergence in bits and each label's term."""
    P, Q = P / P.sum(axis=-1, keepdims=True), Q / Q.sum(axis=-1, keepdims=True)
    M = (P + Q) / 2

    def terms(X):
        out = np.zeros_like(X)
        nz = X > 0
        out[nz] = X[nz] * np.log2(X[nz] / M[nz])
        return out

    per = 0.5 * terms(P) + 0.5 * terms(Q)
    # summed exactly (fsum: the correctly rounded sum, in any order): the same terms in another label order (a deal
    # that swaps two labels of equal pooled counts) sum to the same bits, not 1 ulp apart; within 0..SHIFT_STAT_MAX,
    # the divergence's own bounds, against a rounding step outside them (alpha 0's critical value is never passed)
    return np.array([min(max(math.fsum(row), 0.0), SHIFT_STAT_MAX) for row in per.tolist()]), per


def round_up(x: float, multiple: int = 8) -> int:
    return int(math.ceil(x / multiple) * multiple)


def measured_se(bootstrap_se: float | None) -> float | None:
    """The probe's bootstrap SE, or None where it measured none: a bootstrap of predictions that are all right or all
    wrong is 0 (2 rows), not a known macro-F1. The one rule for the resolution estimate and the probe's summary."""
    return bootstrap_se if bootstrap_se else None


def estimate_resolution(val: Split, *, accuracy: float | None = None, bootstrap_se: float | None = None,
                        assumed_accuracy: float = 0.9, labels: Sequence[str] | None = None) -> Resolution:
    """Standard errors of val accuracy and macro-F1 for this val size.

    accuracy: binomial sqrt(p(1-p)/n) over every row. macro-F1: the bootstrap SE of the probe's val predictions
    when given, else the SE of macro-recall, sqrt(sum_k p(1-p)/n_k) / K, with each class at p, over the K classes
    macro-F1 averages (metrics.macro_f1): those of `labels` (the classes the model learns; None: every label of val)
    with a validation row. A validation label the model never learns is no class of that average (its rows count
    only against the classes they are predicted as): counted as one, 1 row of it took the SE of 2 classes of 10 rows
    from 0.076 to 0.125.
    """
    p = accuracy if accuracy is not None else assumed_accuracy
    n = len(val)
    learned = set(labels) if labels is not None else None
    counts = [c for lab, c in val.label_counts().items() if c > 0 and (learned is None or lab in learned)]
    k = max(1, len(counts))
    # the SE at p seen as (hits + 1) / (n + 2) (Laplace): a probe right (or wrong) on every row of a small split
    # says the rate is near 1 (or 0), not that it is known exactly; at p itself the SE would be 0 (4 rows: 0.000)
    ps = (p * n + 1) / (n + 2)
    acc_se = math.sqrt(ps * (1 - ps) / max(1, n))
    approx = math.sqrt(sum(ps * (1 - ps) / c for c in counts)) / k if counts else 0.0
    if measured_se(bootstrap_se) is not None:
        se, method = bootstrap_se, "bootstrap of the probe's val predictions"
    else:
        se, method = approx, "binomial approximation (per-class recall at the accuracy)"
    return Resolution(n, len(counts), p, acc_se, se, method, NOISE_BAND.width(se), ps)  # protocol 6's band
