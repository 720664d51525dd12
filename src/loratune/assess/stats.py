"""Statistics of the assessment: length distributions, distribution distances (KS, Jensen-Shannon) and
the resolution (standard errors) of the validation split."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from loratune.assess.records import LengthStats, Resolution
from loratune.data import Split
from loratune.objectives import NOISE_BAND

def length_stats(values: Sequence[int]) -> LengthStats:
    if len(values) == 0:
        return LengthStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p95, p99 = (float(x) for x in np.percentile(a, [50, 90, 95, 99]))
    return LengthStats(len(a), float(a.mean()), p50, p90, p95, p99, int(a.max()))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    values, side = np.unique(np.concatenate([np.asarray(a, float), np.asarray(b, float)]), return_inverse=True)
    counts_a = np.bincount(side[: len(a)], minlength=len(values))
    return _ks_gap(counts_a, np.bincount(side[len(a):], minlength=len(values)))


def _ks_gap(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """The one formula of the statistic, for ks_statistic and ks_critical's deals: the two samples' counts of each
    value (ascending) -> the largest gap between their empirical CDFs, |A/n - B/m| = |A m - B n| / (n m) in whole
    numbers and one division: equal gaps are bit-equal (2/3 written as 1 - 1/3 rounds 1 ulp above 2/3)."""
    n, m = int(counts_a.sum()), int(counts_b.sum())
    return int(np.max(np.abs(np.cumsum(counts_a) * m - np.cumsum(counts_b) * n))) / (n * m)


SHIFT_NULL_DRAWS = 400  # random deals of the pooled rows behind js_critical and ks_critical
SHIFT_NULL_SEED = 0
# the largest KS (a gap between two CDFs) and Jensen-Shannon divergence (bits: log2 2) there are: the critical value at
# alpha 0, which no split passes (the strict `>`); the largest of the deals, which js_critical took, is passed by a
# split the deals missed
SHIFT_STAT_MAX = 1.0


def _chance_quantile(null: Sequence[float], alpha: float) -> float:
    """The one reading of `alpha` for ks_critical and js_critical: the 1 - alpha quantile of the deals' statistics
    (`null`); alpha 0 (or less): SHIFT_STAT_MAX, never past; alpha 1 (or more): the smallest deal."""
    if alpha <= 0:
        return SHIFT_STAT_MAX
    return float(np.quantile(null, 1 - min(1.0, alpha)))


def ks_critical(a: Sequence[float], b: Sequence[float], alpha: float) -> float:
    """The two-sample KS statistic that a sample of len(b) rows dealt at random from the pooled values of both (the
    rest the other sample) reaches with probability `alpha`: the 1 - alpha quantile over SHIFT_NULL_DRAWS deals
    (seeded; a multivariate hypergeometric draw of b's counts of each value), as js_critical's. 200 vs 20 rows: ~0.3.
    The deal counts the ties of whole-number lengths, and holds at any size: the asymptotic c(alpha) sqrt((n + m) /
    (n m)) passes 1 at 20 vs 2 rows, so a KS of 1, which a random deal reaches 2 / C(22, 2) = 0.9% of the time,
    was never past it. Each deal's statistic is ks_statistic's formula (_ks_gap): equal to it is bit-equal. 1 where a
    side is empty; alpha as _chance_quantile reads it."""
    if len(a) == 0 or len(b) == 0:
        return 1.0
    values, side = np.unique(np.concatenate([np.asarray(a, float), np.asarray(b, float)]), return_inverse=True)
    pooled = np.bincount(side, minlength=len(values))
    deals = np.random.default_rng(SHIFT_NULL_SEED).multivariate_hypergeometric(pooled, len(b), size=SHIFT_NULL_DRAWS)
    return _chance_quantile([_ks_gap(pooled - q, q) for q in deals], alpha)


def js_critical(train_counts: Mapping[str, float], split_counts: Mapping[str, float], alpha: float) -> float:
    """The Jensen-Shannon divergence (bits) that a split of this size dealt at random from the pooled labels of both
    reaches with probability `alpha`: the 1 - alpha quantile over SHIFT_NULL_DRAWS deals (seeded; a multivariate
    hypergeometric draw of the split's counts). 30 rows of 10 classes reach ~0.1 bits by chance alone.
    Each deal's divergence is js_divergence's formula (_js_bits), so a split whose counts a deal drew (labels swapped
    aside) has that deal's divergence bit for bit: equal to its critical value is not past it by a rounding step (the
    formula written twice put a divergence of 0.11571906015888446 past its own 0.11571906015888445). alpha as
    _chance_quantile reads it."""
    labels = sorted(set(train_counts) | set(split_counts))
    pooled = np.array([int(train_counts.get(k, 0)) + int(split_counts.get(k, 0)) for k in labels], np.int64)
    m = int(sum(int(split_counts.get(k, 0)) for k in labels))
    n = int(pooled.sum()) - m
    if m == 0 or n == 0 or len(labels) < 2:
        return 0.0
    deals = np.random.default_rng(SHIFT_NULL_SEED).multivariate_hypergeometric(pooled, m, size=SHIFT_NULL_DRAWS)
    return _chance_quantile([_js_bits((pooled - q).astype(float), q.astype(float))[0] for q in deals], alpha)


def js_divergence(p: Mapping[str, float], q: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """Jensen-Shannon divergence in bits between two count (or share) maps, and each label's term."""
    labels = sorted(set(p) | set(q))
    P = np.array([p.get(k, 0.0) for k in labels], float)
    Q = np.array([q.get(k, 0.0) for k in labels], float)
    if P.sum() == 0 or Q.sum() == 0:
        return 0.0, {}
    js, per = _js_bits(P, Q)
    return js, dict(zip(labels, per.tolist()))


def _js_bits(P: np.ndarray, Q: np.ndarray) -> tuple[float, np.ndarray]:
    """The one formula of the divergence, for js_divergence and js_critical's deals: two aligned count vectors (each
    with a positive sum) -> the divergence in bits and each label's term."""
    P, Q = P / P.sum(), Q / Q.sum()
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
    return min(max(math.fsum(per.tolist()), 0.0), SHIFT_STAT_MAX), per


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
