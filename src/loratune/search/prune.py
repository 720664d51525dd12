"""Stopping trials that are clearly losing, with the reason (pure; no torch).

Checked at every evaluation point of a running trial:

- `diagnosis`: from 30% of the planned steps on, a partial diagnosis whose verdict is `diverged`,
  `collapsed` or `lr-too-large` (oscillation; a confident, not a tentative, finding) stops the
  trial when a finished trial's best up to the same step was better beyond the noise band
  (objectives.beyond_noise, over the same sigma as `behind-best`): more steps will not fix an lr that is too high.
- `behind-best` (successive-halving style, against the best finished trial instead of a rung
  population, because the protocol runs few trials): from half of the planned steps on, a trial whose
  best val macro-F1 so far trails the best finished trial's best at the same step by more than
  max(5 points, 3 sigma) stops, sigma the study's seed sigma once seeds ran where it is the larger, else the val
  metric's standard error (Watch.sigma); a config's seed replicates are no reference (SearchContext.references).
- `budget`: the budget would run out before the trial ends: it stops where it is (its best
  checkpoint is kept; the record says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from loratune.objectives import DEFAULT, NOISE_BAND, Objective, beyond_noise
from loratune.search.trial import trained_points

Curve = Sequence[tuple[int, float]]


@dataclass(frozen=True)
class PruneSettings:
    min_fraction: float = 0.5  # judge "behind the best" from this share of the planned steps on
    margin_min: float = 0.05  # ... when trailing by more than this (points of val macro-F1)
    margin_se: float = 3.0  # ... and by more than this many standard errors of the val metric
    diagnosis_min_fraction: float = 0.3  # act on a collapse / divergence verdict from this share on
    stop_verdicts: tuple[str, ...] = ("diverged", "collapsed", "lr-too-large")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def best_until(curve: Curve, step: int) -> float | None:
    """The best trained value of a curve at or before `step` (None when it has no point there): the untrained
    model's point is no trial's score (trial.FIRST_TRAINED_STEP)."""
    vals = [v for s, v in trained_points(curve) if s <= step and v is not None]
    return max(vals) if vals else None


def behind_best(curve: Curve, steps_planned: int, references: Sequence[tuple[str, Curve]], se: float | None,
                settings: PruneSettings = PruneSettings(), objective: Objective = DEFAULT, source: str = "") -> str | None:
    """The reason to stop when the trial trails a finished one at the same step, else None. Curves hold the
    objective's scores (larger is better); `objective` says how to show them. `se`: the sigma of one run's score
    (the study's seed sigma when seeds ran and it is the larger, else the val metric's SE), `source` naming it."""
    if not curve or steps_planned <= 0 or not references:
        return None
    step = curve[-1][0]
    if step < settings.min_fraction * steps_planned:
        return None
    mine = best_until(curve, step)
    if mine is None:
        return None
    ref_name, ref_val = None, None
    for name, ref in references:
        v = best_until(ref, step)
        if v is not None and (ref_val is None or v > ref_val):
            ref_name, ref_val = name, v
    if ref_val is None:
        return None
    margin = max(settings.margin_min, settings.margin_se * (se or 0.0))
    if beyond_noise(ref_val - mine, margin):
        return (f"behind the best: {objective.show(mine)} by step {step} of {steps_planned} vs {objective.fmt(ref_val)} for "
                f"{ref_name} by the same step; trailing by {ref_val - mine:.3f} > margin {margin:.3f} "
                f"(max({settings.margin_min:g}, {settings.margin_se:g} x {source or 'SE'} {se or 0:.3f}))")
    return None


def by_diagnosis(verdict: str | None, evidence: str, curve: Curve, steps_planned: int,
                 references: Sequence[tuple[str, Curve]], settings: PruneSettings = PruneSettings(),
                 objective: Objective = DEFAULT, se: float | None = None, source: str = "") -> str | None:
    """The reason to stop on a collapse / divergence verdict, else None. Only a trial that is also
    losing is stopped (the first trial never is): a finished trial's best up to the same step beat this trial's
    best so far beyond protocol 6's noise band (objectives.NOISE_BAND over `se`: the study's seed sigma when seeds
    ran and it is the larger, else the val metric's SE, `source` naming it; the objective's floor without one), the
    one rule of what counts as better (objectives.beyond_noise)."""
    if verdict not in settings.stop_verdicts or steps_planned <= 0 or not curve:
        return None
    step = curve[-1][0]
    if step < settings.diagnosis_min_fraction * steps_planned:
        return None
    mine = best_until(curve, step)
    if mine is None:
        return None
    noise = NOISE_BAND.width(se, objective.noise_floor)
    better = [(name, best_until(ref, step)) for name, ref in references]
    better = [(name, v) for name, v in better if v is not None and beyond_noise(v - mine, noise)]
    if not better:
        return None
    name, v = max(better, key=lambda x: x[1])
    return (f"diagnosis at step {step} of {steps_planned}: {verdict} ({evidence}); {objective.show(mine)} (best up to "
            f"step {step}) vs {objective.fmt(v)} for {name} (its best up to the same step): behind by {v - mine:.3f} > "
            f"noise {noise:.3f} ({NOISE_BAND.describe()}, sigma {'-' if se is None else f'{se:.3f}'}"
            f"{f': {source}' if source and se is not None else ''})")
