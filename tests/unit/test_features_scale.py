"""Curve features stay linear-ish in the number of evals: the lr clock is read by bisection, not by a scan per eval,
and gives the very floats the scan gave (diagnose's verdicts must not move)."""

from __future__ import annotations

import math
import random

import pytest

from loratune import features
from loratune.features import _interp, compute_features


def _random_series(rng: random.Random, n: int, *, sorted_steps: bool = True) -> list[tuple[float, float]]:
    xs = [float(rng.choice([rng.randint(0, 50), rng.uniform(0, 50)])) for _ in range(n)]
    if sorted_steps:
        xs.sort()  # duplicates kept: a history may log one step twice
    return [(x, rng.uniform(-3, 3)) for x in xs]


@pytest.mark.parametrize("seed", range(40))
def test_interpolator_equals_the_scan_bit_for_bit(seed):
    rng = random.Random(seed)
    series = _random_series(rng, rng.randint(1, 30), sorted_steps=seed % 5 != 0)
    at = features._interpolator(series)
    probes = [x for x, _ in series] + [rng.uniform(-5, 55) for _ in range(50)] + [-1e9, 1e9, math.nan, -0.0]
    for x in probes:
        got, want = at(x), _interp(series, x)
        assert got == want or (math.isnan(got) and math.isnan(want)), (series, x)


def _long_run(n: int) -> list[dict]:
    """n evals, one per step, lr logged at each (linear decay), a noisy falling val loss with repeated values."""
    rng = random.Random(0)
    pts = []
    for s in range(n):
        pts.append({"step": s, "epoch": s / n, "lr": 1e-3 * (1 - s / n) + 1e-6,
                    "train/loss": 2.0 / (1 + s / 50) + 0.01 * rng.random(),
                    "val/loss": round(2.0 / (1 + s / 60) + 0.02 * rng.random(), 2),
                    "val/macro_f1": round(min(0.9, s / n + 0.05 * rng.random()), 2), "val/n": 400})
    return pts


def test_long_curve_reads_the_lr_clock_without_a_scan_per_eval(monkeypatch):
    calls = []
    real = features._interp
    monkeypatch.setattr(features, "_interp", lambda series, x: calls.append(len(series)) or real(series, x))
    f = compute_features(_long_run(3000))
    assert f.details["late_share_axis"].startswith("learning-rate time")
    assert f["val_loss_late_share"] is not None
    # a handful of single reads (mid-run points); the old clock scanned the lr series once per eval (3,000 calls)
    assert len(calls) < 20


def test_repeat_counts_on_a_long_curve():
    pts = _long_run(3000)
    f = compute_features(pts)
    vs = [p["val/loss"] for p in pts]
    ms = [p["val/macro_f1"] for p in pts]
    assert f["val_loss_repeats"] == max(vs.count(v) for v in set(vs))
    assert f["val_loss_repeat_share"] == pytest.approx(f["val_loss_repeats"] / len(vs))
    assert f["val_metric_repeat_share"] == pytest.approx(max(ms.count(v) for v in set(ms)) / len(ms))
