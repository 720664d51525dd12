"""The diagnosis engine: features -> every rule of the table -> findings (pure; no torch).

`diagnose(run)` computes a run's `CurveFeatures`, evaluates EVERY rule of `loratune.rules.RULES`
(never first-match-wins), applies suppressions in priority order and returns a `Diagnosis`: the
findings, each with its evidence as numbers against named thresholds, its knob moves and a
confidence that is lowered for missing signals (named) and for thin margins.

`compare(runs)` reads runs that differ in one knob (learning_rate, r, seed, lora_alpha; found by
diffing their config.yaml), measures how far each knob moved the best val metric against the noise
(seed std when >= 2 seed runs exist, else the binomial standard error from the val size) and
evaluates the `compare` rules: capacity-bound vs optimization-bound (protocol section 5),
seed-unstable, alpha-insensitive, update-too-weak, runs-never-learned (every run at a uniform guess at an lr
below the usual range), knobs-not-binding (a measured tie on a val set that resolves it, some run having learned),
differences-within-noise.

Clause logic is three-valued: a clause over a missing feature is unknown; an `all` group with an unknown
member and no false one is unknown; an `any` group is true when a member is true, unknown only when no
member could be checked at all (alternatives are routes to one conclusion: a missing route does not hold
the group open once another route was checked and failed). A rule whose condition is
true fires; one that is unknown (no clause false, some unknown) fires tentatively, with confidence
x0.75 per unknown clause, when no `required` clause is unknown and its known-true clauses are at
least as many as its unknown ones. A rule stopped by a missing `required` clause, or with every
clause unknown, is listed as not evaluated, naming what is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from loratune.config import AdapterConfig
from loratune.errors import UserError
from loratune.features import COMPARE_FEATURES, FEATURES, KIND_FEATURES, NOT_APPLICABLE, CurveFeatures, FeatureSet, \
    binomial_se, compute_features, format_value, has_binomial_se, is_full_finetune
from loratune.history_io import CALLBACK_RECORD_DIR, END_UNKNOWN_KEY, LR_RESTART_BY_FACT, LR_RESTART_FACT, \
    RunHistory, checkpoint_step, from_points, load_run
from loratune.moves import DOWN, HOLD, UP, towards
from loratune import objectives
from loratune.objectives import NOISE_BAND, at_threshold, objective
from loratune.rules import COMPARE_KNOBS, RULES, RUN_THRESHOLDS_KEY, SIGNALS, THRESHOLDS, Clause, Cond, Rule, \
    catalogue_for, default_thresholds, overridden_thresholds, overridden_values, overrides_text, \
    resolve_recorded_thresholds, resolve_thresholds, signals_for, thresholds_for_method
from loratune.store import CALLBACK_RECORD_SOURCE, RUN, STUDY_DB, StudyDbBusy, study_meta_of_trial

THRESHOLD_DEFAULTS = default_thresholds()
MISSING_FACTOR = 0.75  # confidence multiplier per unknown clause of a tentatively fired rule
THIN_MARGIN = 0.1  # a decisive clause passing within 10% (2 points for 0..1 quantities) of its threshold ...
THIN_FACTOR = 0.85  # ... multiplies the confidence by this


@dataclass(frozen=True)
class Evidence:
    """One clause checked against one feature value."""

    feature: str
    value: float | None
    op: str
    threshold_name: str
    threshold: float
    passed: bool | None  # None: the feature is missing
    text: str
    missing_reason: str | None = None
    # on a route that decided the finding (the clauses of every `all` group and the holding members of every `any`
    # group that made the rule fire); a rule's other routes are evaluated too, and their failed clauses say nothing
    # about why it fired
    decisive: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Finding:
    rule_id: str
    scope: str
    verdict: str
    knob_class: str
    moves: tuple[str, ...]
    priority: int
    confidence: float
    evidence: tuple[Evidence, ...]
    missing: tuple[tuple[str, str], ...] = ()  # (feature, why) for unknown clauses that mattered
    tentative: bool = False
    suppressed_by: str | None = None
    caveat: str | None = None
    notes: tuple[str, ...] = ()
    route: tuple[str, ...] = ()  # the readings (`Cond.why`) of the route that made it fire (per `any`, its first)

    @property
    def confidence_label(self) -> str:
        return "high" if self.confidence >= 0.75 else "medium" if self.confidence >= 0.5 else "low"

    def to_dict(self) -> dict:
        return {
            "rule_id": self.rule_id, "scope": self.scope, "verdict": self.verdict, "knob_class": self.knob_class,
            "moves": list(self.moves), "priority": self.priority, "confidence": round(self.confidence, 3),
            "confidence_label": self.confidence_label, "tentative": self.tentative,
            "suppressed_by": self.suppressed_by, "caveat": self.caveat, "notes": list(self.notes),
            "route": list(self.route),
            "missing": [{"feature": f, "why": w} for f, w in self.missing],
            "evidence": [e.to_dict() for e in self.evidence],
        }


@dataclass(frozen=True)
class NotEvaluated:
    rule_id: str
    missing: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict:
        return {"rule_id": self.rule_id, "missing": [{"feature": f, "why": w} for f, w in self.missing]}


def _primary(findings: Sequence[Finding], scope: str) -> Finding | None:
    return next((f for f in findings if f.suppressed_by is None and f.scope == scope), None)


def _moved(name: str, fall: float | None) -> str:
    """A fall feature as words: "fell 6.6%", "rose 6.6%" (a negative fall), "rose at least 100.0%" (a fall clipped at
    its floor: FeatureSpec.floor), "no fall measured" (missing)."""
    if fall is None:
        return "no fall measured"
    spec = FEATURES[name]
    return (f"{'fell' if fall >= 0 else 'rose'} {'at least ' if spec.at_floor(fall) else ''}"
            f"{format_value(spec.unit, abs(fall))}")


@dataclass(frozen=True)
class Diagnosis:
    """One run: its features, the findings (priority order, suppressed ones flagged) and the gaps."""

    run: str
    source: str
    features: CurveFeatures
    findings: tuple[Finding, ...]
    not_evaluated: tuple[NotEvaluated, ...]
    notes: tuple[str, ...] = ()
    path: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)  # name -> {"value", "source"} (external runs)
    tie_band_se: float | None = None  # the drop_se_min the rules read (an override included); None: the table's
    step_unit: str = "step"  # what the curve's x counts: "row" for a CSV with no step column (its steps are unknown)
    thresholds_overridden: Mapping[str, float] = field(default_factory=dict)  # the thresholds read, where not defaults
    thresholds_note: str = ""  # which thresholds read the run where it recorded its own (rules.RUN_THRESHOLDS_KEY)

    @property
    def active(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.suppressed_by is None)

    @property
    def primary(self) -> Finding | None:
        """The run's verdict: the highest-priority unsuppressed `curve` finding (None: inconclusive)."""
        return _primary(self.findings, "curve")

    @property
    def verdict(self) -> str:
        return self.primary.rule_id if self.primary else "inconclusive"

    @property
    def inconclusive_why(self) -> str:
        """Why no curve verdict stands: no curve rule fired, or those that fired were suppressed (by an eval or class
        finding: a suppressing curve finding would be the verdict) and by which."""
        held = [f for f in self.findings if f.scope == "curve" and f.suppressed_by]
        if not held:
            return "no curve rule fired"
        return "no curve rule stands: " + ", ".join(f"{f.rule_id} suppressed by {f.suppressed_by}" for f in held)

    def finding(self, rule_id: str) -> Finding | None:
        return next((f for f in self.findings if f.rule_id == rule_id), None)

    def fired(self, rule_id: str, *, active_only: bool = True) -> bool:
        f = self.finding(rule_id)
        return f is not None and (f.suppressed_by is None or not active_only)

    def advice(self) -> list[dict]:
        """The missing signals that would settle a tentative or unevaluated curve rule (or an inconclusive
        verdict), each with how to log it: [{signal, how, rules}]."""
        rules_by_signal: dict[str, list[str]] = {}
        stuck = [(f.rule_id, f.missing) for f in self.findings if f.tentative and f.scope in ("curve", "class")]
        stuck += [(n.rule_id, n.missing) for n in self.not_evaluated]
        if self.primary is None:  # inconclusive: a val loss curve too short (or absent) for any curve rule
            missing_all = self.features.missing
            stuck.append(("inconclusive", tuple((f, why) for f, why in missing_all.items()
                                                if any(sg.reads_curve for sg in signals_for(f, why, missing_all)))))
        for rule_id, missing in stuck:
            for feature, why in missing:
                if why.startswith(NOT_APPLICABLE):  # nothing to log: the feature cannot exist for this run
                    continue
                for sg in signals_for(feature, why, self.features.missing):
                    if rule_id not in rules_by_signal.setdefault(sg.name, []):
                        rules_by_signal[sg.name].append(rule_id)
        return [{"signal": sg.name, "how": sg.how, "rules": rules_by_signal[sg.name]}
                for sg in SIGNALS if sg.name in rules_by_signal]

    def curve_summary(self) -> list[str]:
        """One-line readings of the curves (start -> best -> final ...), for the terminal and the report."""
        v = self.features.values

        def fv(name: str) -> str:
            return format_value(FEATURES[name].unit, v.get(name))

        metric = self.features.details.get("val_metric") or "val metric"
        # a tie reads the band as the rules do: a difference equal to it up to float rounding is past it (RULE_OPS)
        band = self.tie_band_se if self.tie_band_se is not None else TIE_BAND_SE
        lines = []
        if v.get("val_metric_best") is not None:
            se = f" (noise {fv('val_metric_noise')})" if v.get("val_metric_noise") is not None else ""
            drop = v.get("val_metric_final_drop_se")
            tie = ""
            if drop is not None and (v.get("val_metric_final_drop") or 0) > 0:
                tie = (": final and best are a tie (inside the noise band)" if RULE_OPS["<"](drop, band)
                       else f": final is {drop:.1f} noise units below the best")
            lines.append(f"{metric}: {fv('val_metric_start')} at the start, best {fv('val_metric_best')}{se} "
                         f"at {fv('best_step_fraction')} of the run, final {fv('val_metric_final')}{tie}")
        details = self.features.details
        if v.get("train_loss_final") is not None:
            cut = details.get("train_loss_nonfinite_from")  # the finite series stops short: its last is no final
            if v.get("train_loss_untracked") == 1.0:  # one window: a start and a final, and no trend between them
                trend = "one train-loss window, no trend"
            elif cut is not None:  # no trend over a last half the loss never finitely reached
                trend = f"{_moved('train_loss_drop', v.get('train_loss_drop'))} to its last finite window"
            else:
                late = v.get("train_loss_late_drop")
                trend = f"{_moved('train_loss_drop', v.get('train_loss_drop'))}; " + (
                    "no reading over the last half" if late is None
                    else f"{_moved('train_loss_late_drop', late)} over the last half")
            lines.append(f"train loss: {fv('train_loss_start')} -> {fv('train_loss_final')} ({trend})"
                         + (f", then non-finite from step {cut:g}" if cut is not None else ""))
        if v.get("val_loss_min") is not None and details.get("val_loss_nonfinite_from") is not None:
            lines.append(f"val loss: {fv('val_loss_start')} -> min {fv('val_loss_min')} at "
                         f"{fv('val_loss_min_fraction')} of the run -> non-finite from step "
                         f"{details['val_loss_nonfinite_from']:g} (last finite {fv('val_loss_final')})")
        elif v.get("val_loss_min") is not None:
            rise = v.get("val_loss_rise_noise")
            tie = ""
            if rise is not None and (v.get("val_loss_rise") or 0) > 0:
                tie = (" (final and minimum are a tie, inside the noise band)" if RULE_OPS["<"](rise, band)
                       else f" ({rise:.1f} noise units above the minimum)")
            lines.append(f"val loss: {fv('val_loss_start')} -> min {fv('val_loss_min')} at "
                         f"{fv('val_loss_min_fraction')} of the run -> final {fv('val_loss_final')}{tie}")
        if v.get("gap_f1") is not None:
            lines.append(f"train/val gap: {fv('gap_f1')} ({metric.split('/')[-1]})")
        if v.get("prompt_novel_score_final") is not None or v.get("prompt_familiar_score_final") is not None:
            line = f"prompt set (chrF): familiar {fv('prompt_familiar_score_final')}, novel " \
                   f"{fv('prompt_novel_score_final')} (best {fv('prompt_novel_score_best')})"
            if v.get("prompt_gap_widening") is not None:
                se = v.get("prompt_gap_widening_se")
                line += f"; the gap widened {fv('prompt_gap_widening')} from its narrowest" + \
                    (f" ({se:.1f} noise units)" if se is not None else "")
            line += f"; outputs {fv('prompt_len_ratio_final')} the reference length, " \
                    f"{fv('prompt_repetition_final')} repeated 3-grams"
            if v.get("prompt_capped_share_final"):
                line += f", {fv('prompt_capped_share_final')} cut at train.max_new_tokens"
            lines.append(line)
        return lines

    def to_dict(self) -> dict:
        return {
            "run": self.run, "source": self.source, "path": self.path, "verdict": self.verdict,
            "findings": [f.to_dict() for f in self.findings],
            "not_evaluated": [n.to_dict() for n in self.not_evaluated],
            "features": self.features.to_dict(), "notes": list(self.notes), "advice": self.advice(),
            "facts": dict(self.facts), "step_unit": self.step_unit,
            "thresholds_overridden": dict(self.thresholds_overridden),
        }


# what a comparison scores runs by -> which way is better (+1: higher, -1: lower): the best val metric when every
# configured run has one, else the lowest val loss (loss-only Trainer and SFT runs)
METRIC_MEASURE, LOSS_MEASURE = "best val metric", "lowest val loss"
MEASURES: Mapping[str, int] = {METRIC_MEASURE: 1, LOSS_MEASURE: -1}


@dataclass(frozen=True)
class KnobGroup:
    """Runs identical except for one knob."""

    knob: str  # learning_rate | r | seed | lora_alpha
    # (run, knob value, the measure in its own sign: best val metric or lowest val loss, min val loss)
    runs: tuple[tuple[str, Any, float | None, float | None], ...]
    effect: float | None  # max - min of the measure (a size: the same for either sign)
    note: str = ""
    measure: str = METRIC_MEASURE
    # the group's own noise unit (one run's sigma) and where it came from: the seed std where seed runs give one (the
    # comparison's), else the root mean square of the group's own runs' SEs: a run beside the group, not in it,
    # does not move its effect / noise (k_r4 vs k_a8: 1.9 units, 2.0 with k_r8 passed beside them)
    noise: float | None = None
    noise_source: str = ""

    def effect_noise(self) -> float | None:
        """The effect in the group's noise units (None: no effect or no noise)."""
        return self.effect / self.noise if self.effect is not None and self.noise else None

    def best(self) -> tuple[str, Any, float | None, float | None] | None:
        """The row with the best measure (the highest metric, the lowest loss); None when no run has one."""
        ok = [row for row in self.runs if row[2] is not None]
        return max(ok, key=lambda row: MEASURES[self.measure] * row[2]) if ok else None

    def to_dict(self) -> dict:
        return {"knob": self.knob, "effect": self.effect, "note": self.note, "measure": self.measure,
                "noise": self.noise, "noise_source": self.noise_source, "runs": [{"run": r, "value": v, "measured": m, "val_loss_min": l} for r, v, m, l in self.runs]}


@dataclass(frozen=True)
class Comparison:
    runs: tuple[str, ...]
    groups: tuple[KnobGroup, ...]
    features: CurveFeatures
    findings: tuple[Finding, ...]
    not_evaluated: tuple[NotEvaluated, ...]
    notes: tuple[str, ...] = ()
    measure: str = METRIC_MEASURE  # a key of MEASURES
    thresholds_overridden: Mapping[str, float] = field(default_factory=dict)  # the thresholds read, where not defaults

    @property
    def active(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.suppressed_by is None)

    def fired(self, rule_id: str) -> bool:
        return any(f.rule_id == rule_id for f in self.active)

    def to_dict(self) -> dict:
        return {"runs": list(self.runs), "measure": self.measure,
                "better": "higher" if MEASURES[self.measure] > 0 else "lower",
                "groups": [g.to_dict() for g in self.groups],
                "features": self.features.to_dict(), "findings": [f.to_dict() for f in self.findings],
                "not_evaluated": [n.to_dict() for n in self.not_evaluated], "notes": list(self.notes),
                "thresholds_overridden": dict(self.thresholds_overridden)}


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------

# a feature at its threshold up to float rounding (objectives.at_threshold) meets `>=` / `<=` and fails `<` / `>`
RULE_OPS = {"<": lambda a, b: a < b and not at_threshold(a, b), "<=": lambda a, b: a <= b or at_threshold(a, b),
            ">": lambda a, b: a > b and not at_threshold(a, b), ">=": lambda a, b: a >= b or at_threshold(a, b)}


def _evidence(cl: Clause, features: CurveFeatures, thresholds: Mapping[str, float], catalogue) -> Evidence:
    spec = catalogue[cl.feature]
    t = thresholds[cl.threshold]
    v = features.values.get(cl.feature)
    t_text = format_value(THRESHOLDS[cl.threshold].unit, t)
    if v is None:
        why = features.missing.get(cl.feature, "missing")
        text = f"{spec.phrase.format('?')}: missing ({why}); rule needs {cl.op} {t_text}"
        return Evidence(cl.feature, None, cl.op, cl.threshold, t, None, text, why)
    passed = bool(RULE_OPS[cl.op](v, t))
    shown = format_value(spec.unit, v) + (" or lower" if spec.at_floor(v) else "")  # a clipped value: it or lower
    text = f"{spec.phrase.format(shown)}; rule needs {cl.op} {t_text}"
    return Evidence(cl.feature, v, cl.op, cl.threshold, t, passed, text)


def _margin(ev: Evidence) -> float:
    """How far a passing value is from its threshold, in units of THIN_MARGIN's scale: absolute for
    0..1 quantities (fractions, metric points; 0.1 = 10 points), relative otherwise."""
    unit = THRESHOLDS[ev.threshold_name].unit
    if unit in ("fraction", "points", "flag"):
        return abs(ev.value - ev.threshold) * 5  # 2 points from the threshold counts as thin
    return abs(ev.value - ev.threshold) / max(abs(ev.threshold), 0.01)


NA = "n/a"  # _eval's state of a route that does not exist for this kind of run


def _not_applicable(e: Evidence) -> bool:
    return e.passed is None and (e.missing_reason or "").startswith(NOT_APPLICABLE)


def _eval(node: Cond | Clause, ev: dict[Clause, Evidence], gates_open: bool = False
          ) -> tuple[bool | None | str, float]:
    """Three-valued truth of a condition and the relative margin of its decisive clauses. A clause over a feature
    that cannot exist for this kind of run (missing for a `NOT_APPLICABLE` reason: ln(classes) of a language model,
    the prompt set of a classifier) removes its route: an `all` group holding one is `NA`, an `any` group drops
    its `NA` members (and is `NA` when none is left), so a route written for one kind of run changes nothing for
    the other. `gates_open`: a gate left open by a missing signal read as holding (_gate_held)."""
    if isinstance(node, Clause):
        e = ev[node]
        if _not_applicable(e):
            return NA, 0.0
        return e.passed, (_margin(e) if e.passed else 0.0)
    results = [_eval(item, ev, gates_open) for item in node.items]
    if node.mode == "all" and any(s == NA or (s is False and isinstance(item, Cond) and item.gate)
                                  for item, (s, _) in zip(node.items, results)):
        # (a route whose gate fails is not for this run, as one over a feature it cannot have: it closes no group)
        return NA, 0.0
    alone = [_holds_open(item, s, ev) for item, (s, _) in zip(node.items, results) if s != NA]
    results = [(s, m) for s, m in results if s != NA]
    if not results:
        return NA, 0.0
    states = [s for s, _ in results]
    if node.mode == "all":
        if any(s is False for s in states):
            return False, 0.0
        margins = [m for s, m in results if s]
        if node.gate and all(s is True for s in states):
            return True, math.inf  # a gate is no evidence: its margin thins no finding (Cond.gate)
        return (None if any(s is None for s in states) else True), (min(margins) if margins else math.inf)
    if node.gate and any(s is True for s in states):
        return True, math.inf
    if any(s is True for s in states):
        return True, max(m for s, m in results if s)
    if node.gate:
        # a gate says which runs a route is for, not a route to the verdict: one whose deciding signal is missing
        # (a full fine-tune with no lr logged) stays open, the rule tentative with that signal listed missing
        if gates_open and any(s is None for s in states):
            return True, math.inf
        return (None if any(s is None for s in states) else False), 0.0
    # alternatives are routes to the same conclusion: once one route could be checked and failed, a route
    # whose signal is missing (a Trainer run's train-subsample metric, a loss-only run's val metric) does
    # not hold the group open; only when no route can be checked is the group unknown. A route of its own
    # (`Cond.alone`) stays open, with its own margin, as the rule it stands for would, and so does a route held
    # open only by its gate (_gate_held: a full fine-tune with no lr logged), on its evidence's margin
    held = [m for (s, m), own in zip(results, alone) if s is None and own]
    if held:
        return None, max(held)
    return (None if all(s is None for s in states) else False), 0.0


def _decision_path(node: Cond | Clause, ev: dict[Clause, Evidence], first: bool = False,
                   skip: tuple[Cond, ...] = ()) -> list[Cond | Clause]:
    """The groups and clauses that made a condition hold (or left it open, where it is unknown), outermost first:
    every member of an `all` group, of an `any` group the members that hold (or, with none holding, the open ones;
    `first`: only the first of them, passing over the routes in `skip`). Empty for a condition that failed or does
    not apply."""
    state, _ = _eval(node, ev)
    if state is False or state == NA:
        return []
    if isinstance(node, Clause):
        return [node]
    results = [(item, _eval(item, ev)[0]) for item in _held_open(node, ev)]
    if node.mode == "any":
        want = True if any(s is True for _, s in results) else None
        results = [(item, s) for item, s in results if s is want and item not in skip][:1 if first else None]
    return [node] + [n for item, s in results if s is not False and s != NA
                     for n in _decision_path(item, ev, first, skip)]


def _readings(rule: Rule, ev: dict[Clause, Evidence], skip: tuple[Cond, ...] = ()) -> tuple[str, ...]:
    """The readings (`Cond.why`) of the route that made `rule` fire, per `any` its first holding member not in
    `skip`: what a finding says this run showed."""
    return tuple(dict.fromkeys(n.why for n in _decision_path(rule.when, ev, first=True, skip=skip)
                               if isinstance(n, Cond) and n.why))


def _rule_evidence(rule: Rule, features: CurveFeatures, thresholds: Mapping[str, float]) -> dict[Clause, Evidence]:
    catalogue = catalogue_for(rule)
    thresholds = thresholds_for_method(thresholds, features.details.get("method"))  # a full fine-tune's lr range
    return {cl: _evidence(cl, features, thresholds, catalogue) for cl in dict.fromkeys(rule.when.leaves())}


def route_reading(rule: Rule, features: CurveFeatures, thresholds: Mapping[str, float],
                  skip: tuple[Cond, ...] = ()) -> tuple[str, ...]:
    """A finding's `route` read over the rule's other holding routes than those in `skip` (empty when none holds):
    what the run showed where a route's reading is not to be said yet (the callback's MIDRUN_WAITS)."""
    return _readings(rule, _rule_evidence(rule, features, thresholds), skip)


def _open_unknowns(node: Cond | Clause, ev: dict[Clause, Evidence]) -> list[Clause]:
    """Unknown clauses that could still change the outcome (not inside an already-true `any` group)."""
    if isinstance(node, Clause):
        return [node] if ev[node].passed is None and not _not_applicable(ev[node]) else []
    state, _ = _eval(node, ev)
    if state is not None:  # decided, or not applicable
        return []
    return [cl for item in _held_open(node, ev) for cl in _open_unknowns(item, ev)]


def _holds_open(item: Cond | Clause, state: bool | None | str, ev: dict[Clause, Evidence]) -> bool:
    """Whether a route of an `any` group stays open however its sibling routes fail (_eval): a route of its own
    (`Cond.alone`), or one open only because a gate's signal is missing (_gate_held)."""
    return isinstance(item, Cond) and (item.alone or (state is None and _gate_held(item, ev)))


def _gate_held(node: Cond, ev: dict[Clause, Evidence]) -> bool:
    """Whether `node` is open only because a gate (`Cond.gate`) in it is: it holds with its open gates read as
    holding. A gate says which runs a route is for, so a missing lr leaves a full fine-tune's route open, not closed."""
    return bool(_gates(node)) and _eval(node, ev, gates_open=True)[0] is True


def _held_open(node: Cond, ev: dict[Clause, Evidence]) -> tuple[Cond | Clause, ...]:
    """`node`'s members, or of an `any` group that a route of its own (`Cond.alone`) holds open where another route
    failed, those routes alone: the rest closed with the failed route (_eval)."""
    if node.mode != "any" or _eval(node, ev)[0] is not None:
        return node.items
    states = [(item, _eval(item, ev)[0]) for item in node.items]
    own = tuple(item for item, st in states if st is None and _holds_open(item, st, ev))
    return own if own and any(st is False for _, st in states) else node.items


def _open_alone(node: Cond | Clause, ev: dict[Clause, Evidence]) -> list[Cond]:
    """The routes of their own (`Cond.alone`) that are open (unknown) in `node`."""
    if isinstance(node, Clause):
        return []
    if node.alone and _eval(node, ev)[0] is None:
        return [node]
    return [r for item in node.items for r in _open_alone(item, ev)]


def _gates(node: Cond | Clause) -> list[Cond]:
    """The gates (`Cond.gate`) in `node`."""
    if isinstance(node, Clause):
        return []
    return [node] if node.gate else [g for item in node.items for g in _gates(item)]


def evaluate_rule(rule: Rule, features: CurveFeatures, thresholds: Mapping[str, float]
                  ) -> Finding | NotEvaluated | None:
    """A Finding when the rule fires, NotEvaluated when missing signals stop it, None when it does not."""
    leaves = list(dict.fromkeys(rule.when.leaves()))
    ev = _rule_evidence(rule, features, thresholds)
    state, margin = _eval(rule.when, ev)
    if state is False or state == NA:
        return None
    leaves = [cl for cl in leaves if not _not_applicable(ev[cl])]  # the evidence this run can have
    unknown = list(dict.fromkeys(_open_unknowns(rule.when, ev)))
    missing = tuple(dict.fromkeys((cl.feature, ev[cl].missing_reason or "missing") for cl in unknown))
    if state is None:
        # a route of its own left open (`Cond.alone`) is weighed on its own evidence, as the rule it stands for is
        own = [cl for r in _open_alone(rule.when, ev) for cl in r.leaves() if not _not_applicable(ev[cl])]
        pool = list(dict.fromkeys(own)) or leaves
        # a kind gate (`generative`, `classifier`) or a gate (`Cond.gate`: a full fine-tune's lr below its range's
        # top) says which runs a route is for: no evidence of the verdict
        # (a gate's clause read again in a route, the same feature, op and threshold, is the gate's, not evidence)
        gates = {(cl.feature, cl.op, cl.threshold) for g in _gates(rule.when) for cl in g.leaves()}
        known_true = sum(1 for cl in pool if ev[cl].passed and cl.feature not in KIND_FEATURES
                         and (cl.feature, cl.op, cl.threshold) not in gates)
        if any(cl.required for cl in unknown) or len(unknown) == len(pool):
            return NotEvaluated(rule.id, missing)
        if known_true < len(unknown):
            return None  # too little positive evidence to fire on; the gaps show in the missing signals
    path = _decision_path(rule.when, ev)
    deciding = {n for n in path if isinstance(n, Clause)}
    confidence = rule.confidence
    if state is None:
        confidence *= MISSING_FACTOR ** len(unknown)
    if margin < THIN_MARGIN:
        confidence *= THIN_FACTOR
    method = features.details.get("method")  # "full": the row's moves and words for a full fine-tune
    lr = features.values.get("peak_lr")
    lr_high = lr is not None and lr >= thresholds_for_method(thresholds, method).get("high_lr_min", math.inf)
    return Finding(
        rule_id=rule.id, scope=rule.scope, verdict=rule.verdict_for(method), knob_class=rule.knob_class,
        moves=rule.moves_for(method, lr_high),
        priority=rule.priority, confidence=confidence,
        evidence=tuple(replace(ev[cl], decisive=cl in deciding) for cl in leaves),
        missing=missing if state is None else (), tentative=state is None, caveat=rule.caveat_for(method),
        route=_readings(rule, ev),
    )


def evaluate_rules(features: CurveFeatures, rules: Sequence[Rule], thresholds: Mapping[str, float]
                   ) -> tuple[tuple[Finding, ...], tuple[NotEvaluated, ...]]:
    """Evaluate every rule; then, in priority order, mark findings suppressed by an active finding."""
    fired: list[Finding] = []
    gaps: list[NotEvaluated] = []
    for rule in rules:
        out = evaluate_rule(rule, features, thresholds)
        if isinstance(out, Finding):
            fired.append(out)
        elif isinstance(out, NotEvaluated):
            gaps.append(out)
    by_id = {r.id: r for r in rules}
    fired.sort(key=lambda f: (-f.priority, -f.confidence, f.rule_id))
    active: list[Finding] = []
    result = []
    for f in fired:
        by = next((a.rule_id for a in active if f.rule_id in by_id[a.rule_id].suppresses), None)
        if by is None:
            active.append(f)
            result.append(f)
        else:
            result.append(Finding(**{**f.__dict__, "suppressed_by": by}))
    return tuple(result), tuple(gaps)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


TIE_BAND_SE = THRESHOLDS["drop_se_min"].value  # differences under this many noise units read as ties
PARTIAL_STATUSES = ("running", "interrupted", "died", "failed")  # run.json statuses of a run that did not finish


def as_run(source: RunHistory | str | Path | Sequence[dict], meta: Mapping[str, Any] | None = None,
           config: Mapping[str, Any] | None = None, name: str | None = None) -> RunHistory:
    if isinstance(source, RunHistory):
        return source
    if isinstance(source, (str, Path)):
        return load_run(source)
    return from_points(list(source), meta=meta, config=config, name=name or "run")


def diagnose(source: RunHistory | str | Path | Sequence[dict], *, meta: Mapping[str, Any] | None = None,
             thresholds: Mapping[str, float] | None = None, rules: Sequence[Rule] = RULES,
             name: str | None = None) -> Diagnosis:
    """Diagnose one run: a run directory / trainer_state.json / CSV path, a RunHistory, or eval points
    (with `meta` = run.json). `thresholds`: overrides by name (see `loratune rules`)."""
    run = as_run(source, meta=meta, name=name)
    values, used, thresholds_note, notes = _run_thresholds(run, thresholds)
    features = compute_features(run.points, run.meta, run.config)
    run_rules = [r for r in rules if r.scope != "compare"]
    findings, gaps = evaluate_rules(features, run_rules, values)
    notes = ((thresholds_note,) if thresholds_note else ()) + tuple(notes) + tuple(run.notes)
    if _partial(run):
        why = f"status {run.meta['status']}" if run.meta.get("status") in PARTIAL_STATUSES else "no end-of-run entry"
        notes = (f"partial run ({why}): the curves stop where the run stopped, so 'still improving' and "
                 "'ended too soon' read the last point, not the planned end",) + tuple(notes)
    facts = {k: {"value": f.value, "source": f.source} for k, f in run.facts.items()}
    return Diagnosis(run=name or run.name, source=run.source, features=features, findings=findings,
                     not_evaluated=gaps, notes=notes, path=run.path, facts=facts, tie_band_se=values["drop_se_min"],
                     step_unit=run.meta.get("step_unit", "step"), thresholds_overridden=used,
                     thresholds_note=thresholds_note)


def _recorded_thresholds(run: RunHistory) -> tuple[Mapping[str, Any] | None, str, list[str]]:
    """(the diagnosis overrides `run` records it was judged by, where they are recorded, notes), or (None, '', notes):
    its run.json's RUN_THRESHOLDS_KEY (a tune trial's, the HF callback's), else, for a trial its study lists whose
    study.db lies beside its trials/ (one trained before trials recorded them), the study's --thresholds; a study.db
    a running tune holds past the busy timeout leaves the defaults, said (a note), never in silence."""
    if RUN_THRESHOLDS_KEY in run.meta:
        where = f"its run.json ({Path(run.path) / RUN})" if run.path else "its run.json"
        recorded = run.meta[RUN_THRESHOLDS_KEY]
        if recorded is not None and not isinstance(recorded, Mapping):
            raise UserError(f"run '{run.name}': `{RUN_THRESHOLDS_KEY}` in {where} is {recorded!r:.60}, not a mapping "
                            "of threshold names to values", f"restore the record, or remove `{RUN_THRESHOLDS_KEY}` "
                            "from the run.json to read the run with the defaults")
        return recorded or {}, where, []
    try:
        study = study_meta_of_trial(run.path)
    except StudyDbBusy as e:
        return None, "", [f"thresholds: the defaults; its study's thresholds could not be read ({e.db} is locked: a "
                          "tune is writing to it): run again when the study is idle"]
    stored = study[1].get("thresholds") if study else None
    if isinstance(stored, Mapping):  # every table's overrides (tune --thresholds): the diagnosis reads its own
        return {k: v for k, v in stored.items() if k in THRESHOLDS}, f"its study's ({study[0] / STUDY_DB})", []
    return None, "", []


def _run_thresholds(run: RunHistory, thresholds: Mapping[str, float] | None
                    ) -> tuple[dict[str, float], dict[str, float], str, list[str]]:
    """(the thresholds `run` is read with, those of them not defaults, the note saying which, the notes on recorded
    values the ranges now refuse: rules.resolve_recorded_thresholds): `thresholds` where given, else those the run
    recorded it was judged by (_recorded_thresholds), else the defaults."""
    recorded, where, unread = _recorded_thresholds(run)
    if thresholds is not None:
        values = resolve_thresholds(thresholds)
        used = overridden_thresholds(values)
        had = overridden_values(recorded, THRESHOLD_DEFAULTS)
        note = (f"thresholds: {overrides_text(used, 'the defaults')} as given here; this run was judged by others "
                f"({where}): {overrides_text(had, 'the defaults')}") if recorded is not None and had != used else ""
        return values, used, note, []
    if recorded is None:
        return resolve_thresholds({}), {}, "", unread
    values, notes = resolve_recorded_thresholds(recorded, where)
    used = overridden_thresholds(values)
    note = f"thresholds: the ones this run was judged by ({where}): {overrides_text(used)}" if used else ""
    return values, used, note, notes


def _partial(run: RunHistory) -> bool:
    """A run that stopped before its planned end: a checkpoint's or a dead run's log, a record still running."""
    return bool(run.meta.get("partial")) or run.meta.get("status") in PARTIAL_STATUSES


# ---------------------------------------------------------------------------------------------
# Several runs that differ in one knob
# ---------------------------------------------------------------------------------------------

KNOBS = {"learning_rate": "learning_rate", "lr": "learning_rate", "r": "r", "seed": "seed",
         "lora_alpha": "lora_alpha"}
IGNORED_KEYS = ("output_dir", "num_threads", "run_name", "logging_dir", "name")
# how far apart two values of a knob may read and still be one value: a learning rate read back from a logged schedule
# carries the fit's rounding (history_io._round_lr: within 0.5%); every other number (seed, r, steps) is compared
# exactly (within 1%, seeds 1234 and 1235 were one seed), floats within their arithmetic's rounding
READ_BACK_TOLERANCE = {"learning_rate": 0.01}
# how far a run trained, a key of its own: a partial run (a checkpoint, a run that died) stopped at its steps done,
# short of the plan, so it is no same-budget experiment (protocol 5) with a run that reached its planned end
TRAINED_KEY = "train.steps_done"
TRAINED_TO_PLAN = "planned end"
# what the run was trained to do (history_io's task: single_label, multi_label, causal-lm, ...): runs of different
# tasks are no knob experiment, whatever their knobs (a multi-label run's exact match is no single-label accuracy)
TASK_KEY = "data.task"
CLASSES_KEY = "data.n_classes"  # the task's size (config.json id2label, the run's labels, or an estimate)
# the step after which a run's logged learning rate jumped back up (history_io.LR_RESTART_FACT: a resume with a longer
# max_steps restarts a decay that had reached 0), a key of every run: such a run trained on another schedule than one
# that decayed once, so it is no one-knob lr point beside it (protocol 5b: runs differing in one knob)
LR_RESTART_KEY = "train.lr_restart_step"
NO_LR_RESTART = "none"
# the adapter's keys that peft reads as a default when its config leaves them out or null (layers_to_transform:
# every layer; no rank / alpha pattern): a run whose adapter config is known (its targets) holds them, so all layers
# against [10, 11] is a difference, not a key only one run knows (all layers: loratune's own default, config.py's)
ADAPTER_DEFAULTS = {"adapter.layers_to_transform": next(f.default for f in fields(AdapterConfig)
                                                        if f.name == "layers_to_transform"),
                    "adapter.rank_pattern": (), "adapter.alpha_pattern": ()}
# keys whose mapping is one value (peft's per-module rank / alpha), compared whole: {"value": 64} against {}
WHOLE_KEYS = ("rank_pattern", "alpha_pattern")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if k in WHOLE_KEYS and isinstance(v, Mapping):
            out[key] = tuple(sorted((str(m), x) for m, x in v.items()))
        elif isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def _knob_of(key: str) -> str | None:
    return KNOBS.get(key.rsplit(".", 1)[-1])


def knob_view(h: RunHistory) -> dict[str, Any]:
    """A run's config as flat keys, in one vocabulary for every source, so a loratune run and a Trainer run
    can be compared: the training length is `train.steps` (planned steps: run.json `steps_planned`, or the
    Trainer's max_steps) instead of max_steps/num_train_epochs; `adapter.target_modules` holds the module
    names peft adapted when the run's adapter_config.json says them; `layers_to_transform: all` is no list. Keys
    the run's task does not read are left out (a default that changed between versions, the multi-label loss of a
    single-label run, is no difference between two runs)."""
    from loratune.config import GENERATE_READS, MULTI_LABEL_ONLY_KEYS, TASK_ONLY_KEYS

    flat = _flatten(h.config)
    task = flat.get("model.task")
    generating = task == "causal-lm" and flat.get("data.label_format") == "generate"
    unread = [k for k, owner in TASK_ONLY_KEYS.items() if task and owner != task
              and not (generating and k in GENERATE_READS)]
    if h.meta.get("task") == "single_label":
        unread += MULTI_LABEL_ONLY_KEYS
    for k in unread:
        flat.pop(k, None)
    steps = h.meta.get("steps_planned")
    for k in ("train.max_steps", "train.num_train_epochs"):
        flat.pop(k, None)
    if isinstance(steps, (int, float)) and steps > 0:
        flat["train.steps"] = int(steps)
    done = _steps_done(h)
    flat[TRAINED_KEY] = (done if _partial(h) and done is not None
                         else _UNKNOWN_STEPS_DONE if _partial(h) else TRAINED_TO_PLAN)
    restart, by = h.facts.get(LR_RESTART_FACT), h.facts.get(LR_RESTART_BY_FACT)
    flat[LR_RESTART_KEY] = (NO_LR_RESTART if restart is None else
                            _RestartStep(restart.value, by.value if by is not None else restart.value))
    if isinstance(h.meta.get("task"), str):
        flat[TASK_KEY] = h.meta["task"]
    if "target_modules" in h.facts and "adapter.target_modules" in flat:
        v = h.facts["target_modules"].value
        flat["adapter.target_modules"] = tuple(v) if isinstance(v, list) else v
    if "adapter.target_modules" in flat:
        model = h.meta.get("model") if isinstance(h.meta.get("model"), Mapping) else {}
        targets = flat["adapter.target_modules"]
        # no adapter_config.json (a run that diverged or died before saving one): loratune's groups and their layer
        # selections, resolved as its plan does, name the modules its adapter_config.json would have (_peft_targets'
        # form), so the run pairs with its finished twin
        resolved = None if "target_modules" in h.facts else _config_targets(
            targets, flat.get("adapter.layers_to_transform"), model)
        flat["adapter.target_modules"] = (
            resolved if resolved is not None
            else _peft_targets(targets, model.get("num_layers"), model.get("model_type")))
    if "adapter.target_modules" in flat or "adapter.layers_to_transform" in flat:
        for k, default in ADAPTER_DEFAULTS.items():
            if flat.get(k) is None:
                flat[k] = default
    # the task's size, where the files say it (config.json id2label, the run's label set), or an estimate from the
    # first loss (_EstimatedClasses: equal to any count within its error): runs of different datasets (12 classes
    # against 35, an estimated 9 against 63) are no knob experiment, whatever their knobs
    labels = h.meta.get("labels")
    fact = h.facts.get("n_classes")
    n_classes = len(labels) if isinstance(labels, (list, tuple)) and labels else h.meta.get("n_classes")
    if isinstance(n_classes, int) and not isinstance(n_classes, bool):
        estimated = fact is not None and str(fact.source).startswith("estimated") and not labels
        flat[CLASSES_KEY] = _EstimatedClasses(n_classes) if estimated else n_classes
    return flat


@dataclass(frozen=True, eq=False)
class _RestartStep:
    """The step after which a run's logged rate jumped back up, as the log brackets it: after step `last` (its last
    sample before the jump), at the latest after `by` (the step before its first restarted sample). Equal to another
    where their brackets meet: the same schedule logged every 1 / 2 / 3 steps reads 23 / 22 / 21 as its last sample
    before the jump, and is one schedule."""

    last: int
    by: int

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _RestartStep) and self.last <= other.by and other.last <= self.by

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return f"{self.last}" if self.by == self.last else f"{self.last}-{self.by}"

    __repr__ = __str__


class _UnknownStepsDone:
    """A partial run's steps done where no file says them: equal to no other run's (two runs that both died at
    unknown steps are no same-budget pair: one at step 20, the other at 180)."""

    def __eq__(self, other: Any) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "unknown"


_UNKNOWN_STEPS_DONE = _UnknownStepsDone()


@dataclass(frozen=True, eq=False)
class _EstimatedClasses:
    """A class count estimated from the first train loss (~ ln(classes), history_io._classes_from_first_loss): one
    count with any other whose ln lies within the estimate's error (history_io.estimated_classes_ln), with another
    estimate where their ranges meet: an estimated 63 is config.json's 77, not 151; an estimated 9 is 10, not 5 or
    an estimated 27."""

    n: int

    def __eq__(self, other: Any) -> bool:
        from loratune.history_io import estimated_classes_ln

        n = other.n if isinstance(other, _EstimatedClasses) else other
        if not isinstance(n, int) or isinstance(n, bool) or n < 2 or self.n < 2:
            return False
        lo, hi = estimated_classes_ln(self.n)
        olo, ohi = estimated_classes_ln(n) if isinstance(other, _EstimatedClasses) else (math.log(n), math.log(n))
        return lo <= ohi and olo <= hi

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"~{self.n} (estimated)"


def _peft_targets(targets: Any, depth: Any, model_type: Any = None) -> Any:
    """peft target names in one form for every source. peft matches a name as a suffix of the module path ('query'
    adapts 'bert.encoder.layer.0.attention.self.query' and every other '...query'), so the full paths peft resolved
    (a loratune run's adapter_config.json) read as the shortest name that selects just their modules, as a Trainer
    user writes them: when the paths cover the same layers for every module and every one of the model's `depth`
    layers, each block-relative name shortens to its shortest suffix that no other module of the block (the group
    table's, for a known model_type) ends with. Paths that leave layers out, or whose depth is unknown, stay as they
    are (a difference, not a guess); names without a layer index are peft's suffixes already."""
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
        return targets  # a regex string or "all-linear": compared literally
    layers: dict[str, set[int]] = {}
    for t in targets:
        parts = t.split(".")
        at = [i for i, p in enumerate(parts) if p.isdigit()]
        if not at:
            return tuple(sorted(targets))
        layers.setdefault(".".join(parts[at[-1] + 1:]), set()).add(int(parts[at[-1]]))
    every = set(range(depth)) if isinstance(depth, int) and not isinstance(depth, bool) and depth > 0 else None
    if every is None:
        return tuple(sorted(targets))
    if any(at != every for at in layers.values()):
        # some modules on some layers only (loratune's `ffn@top:2`): each module with its blocks, where the model's
        # block pattern reads every path in one stack; else literal
        layout = _block_layout(targets, model_type)
        return (_layered_names(layout, every, model_type) if layout is not None
                and all(b <= every for b in layout.values()) else tuple(sorted(targets)))
    return _shortest_names(layers, model_type)


# a module adapted on some blocks only, as _peft_targets / _config_targets name it: `intermediate.dense@4,5`
LAYERED_NAME = "{name}@{blocks}"


def _block_layout(paths: Sequence[str], model_type: Any) -> dict[str, set[int]] | None:
    """Full module paths as {block-relative name: the blocks it is on}, read with the group table's block pattern
    for `model_type` (adapt.GROUP_TABLE, what resolve_targets reads); None for an unknown model_type, a path the
    pattern does not read, or paths in more than one stack (their prefixes differ)."""
    import re

    from loratune.adapt import GROUP_TABLE

    table = GROUP_TABLE.get(model_type) if isinstance(model_type, str) else None
    if table is None:
        return None
    pattern = re.compile(table["blocks"])
    stacks, layout = set(), {}
    for p in paths:
        m = pattern.match(p)
        if m is None or not p[m.end():]:
            return None
        stacks.add((p[:m.start(1)], p[m.end(1):m.end()]))
        layout.setdefault(p[m.end():], set()).add(int(m.group(1)))
    return layout if len(stacks) == 1 else None


def _layered_names(layout: Mapping[str, set[int]], every: set[int], model_type: Any) -> tuple[str, ...]:
    """{block-relative name: blocks} as peft's shortest names (_shortest_names), each on fewer than `every` block
    with its blocks (LAYERED_NAME): ('intermediate.dense@4,5', 'output.dense@4,5', 'query', 'value')."""
    short = _shortest_map(layout, model_type)
    return tuple(sorted(short[rel] if blocks == every else
                        LAYERED_NAME.format(name=short[rel], blocks=",".join(str(b) for b in sorted(blocks)))
                        for rel, blocks in layout.items()))


def _config_targets(targets: Any, layers_to_transform: Any, model: Mapping[str, Any]) -> tuple[str, ...] | None:
    """A loratune config's target_modules (groups, composites, all-linear, raw names, each with its layer selection)
    and layers_to_transform as the modules its plan adapts, in _peft_targets' form for the same modules' full paths:
    adapt.select_sites (resolve_targets' rule) on the sites of the group table (each of run.json's model num_layers
    blocks holding each of the table's modules, a tabled block's linear layers) with run.json's depth as the shared
    depth. Without a block count, targets on every block resolve on one; None where they do not resolve so (an
    unknown model_type, a layer selection without a block count, a name the table has not: literal)."""
    from loratune.adapt import GROUP_TABLE, LinearSite, select_sites
    from loratune.config import parse_layers
    from loratune.errors import UserError

    model_type, n_blocks, depth = model.get("model_type"), model.get("num_layers"), model.get("depth")
    table = GROUP_TABLE.get(model_type) if isinstance(model_type, str) else None
    if table is None or not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
        return None
    ltt = "all" if layers_to_transform is None else layers_to_transform
    if not isinstance(n_blocks, int) or isinstance(n_blocks, bool) or n_blocks < 1:
        try:  # no block count: only targets on every block resolve (on any count of blocks alike)
            if any("@" in t for t in targets) or parse_layers(ltt) is not None:
                return None
        except ValueError:
            return None
        n_blocks, depth = 1, None
    # run.json's depth is adapt.depth (shared_depth or the blocks): the layers a selection counts for one stack
    shared = depth if isinstance(depth, int) and not isinstance(depth, bool) and depth > n_blocks else None
    modules = sorted({m for g, m in table.items() if g != "blocks"})
    sites = [LinearSite(f"<block {i}>.{m}", i, m, 0, 0) for i in range(n_blocks) for m in modules]
    try:
        chosen, unknown = select_sites(sites, targets, ltt, table, shared)
    except UserError:
        return None
    if unknown:
        return None
    layout: dict[str, set[int]] = {}
    for site in chosen:
        layout.setdefault(site.relative, set()).add(site.layer)
    return _layered_names(layout, set(range(n_blocks)), model_type)


def _shortest_map(relative: Any, model_type: Any) -> dict[str, str]:
    """Block-relative module names (attention.self.query) -> the shortest suffix peft would match to just that module
    among the block's modules (the run's, and the group table's for a known model_type): 'query'."""
    from loratune.adapt import GROUP_TABLE

    table = GROUP_TABLE.get(model_type, {}) if isinstance(model_type, str) else {}
    block = set(relative) | {v for k, v in table.items() if k != "blocks"}

    def shortest(rel: str) -> str:
        parts = rel.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if {m for m in block if m == suffix or m.endswith("." + suffix)} == {rel}:
                return suffix
        return rel

    return {rel: shortest(rel) for rel in relative}


def _shortest_names(relative: Any, model_type: Any) -> tuple[str, ...]:
    """Block-relative module names as peft's shortest suffixes (_shortest_map), sorted: ('query', 'value')."""
    return tuple(sorted(_shortest_map(relative, model_type).values()))


def _knob_value(cfg: Mapping[str, Any], knob: str) -> Any:
    return next((v for k, v in cfg.items() if _knob_of(k) == knob), None)


def _same(a: Any, b: Any, knob: str | None = None) -> bool:
    """Equal config values: integers exactly, a knob read back from a log within its READ_BACK_TOLERANCE (a learning
    rate's fit), other floats within their rounding."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        return math.isclose(float(a), float(b), rel_tol=READ_BACK_TOLERANCE.get(knob or "", objectives.FLOAT_ROUNDING),
                            abs_tol=1e-12)
    return a == b


def _distinct(values: Sequence[Any], knob: str) -> list[Any]:
    """The knob's values, one per value `_same` tells apart (the first read of each): 2e-4 and 2.001e-4 read back
    from two logs are one learning rate."""
    out: list[Any] = []
    for v in values:
        if not any(_same(v, u, knob) for u in out):
            out.append(v)
    return out


def _differs_only_in(a: Mapping[str, Any], b: Mapping[str, Any], knob: str, mode: str | None
                     ) -> tuple[bool, set[str]]:
    """(a and b agree on every key both know, except `knob`; the keys only one of them knows). For r with
    mode "scale", lora_alpha is compared as lora_alpha / r."""
    unknown = set(a) ^ set(b)
    for k in set(a) & set(b):
        kk = _knob_of(k)
        if kk == knob or k.rsplit(".", 1)[-1] in IGNORED_KEYS:
            continue
        va, vb = a[k], b[k]
        if mode == "scale" and kk == "lora_alpha":
            ra, rb = _knob_value(a, "r"), _knob_value(b, "r")
            if ra and rb and va is not None and vb is not None:  # peft's scale: / sqrt(r) under rsLoRA
                va, vb = (float(v) / (math.sqrt(float(r)) if _rslora(c) else float(r))
                          for v, r, c in ((va, ra, a), (vb, rb, b)))
        if not _same(va, vb, kk):
            return False, unknown
    return True, {k for k in unknown if k.rsplit(".", 1)[-1] not in IGNORED_KEYS}


PAIRS_SAID_MAX = 10  # the pairs a comparison note names with the keys they differ in (no knob group; LEFT_OUT)
PAIRS_MORE = "; and {n} more pairs"  # what the note says of the pairs past PAIRS_SAID_MAX
# what a comparison with no knob group says of each pair it names (_pair_said): the keys both know that differ; where
# none does, the keys they agree on, and that the others are known to one run only (a CSV with its learning_rate
# beside a Trainer dir: no key differs, yet no knob group, as r, lora_dropout, ... are the dir's alone)
PAIR_DIFFERS = "{a} vs {b} differ in {keys}"
PAIR_AGREES_ONE_SIDED = "{a} vs {b} agree on every key both know ({keys}); the other keys are known to one run only"
PAIR_AGREES = "{a} vs {b} agree on every key ({keys})"
PAIR_SHARES_NONE = "{a} vs {b} share no config key"
# what a comparison with knob groups says of the runs in none of them, each beside the run nearest it (the fewest keys
# differ): a run left out silently read as a run compared
LEFT_OUT = "in no knob group (each beside its nearest run): {pairs}"


def _differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The keys both runs know on which they differ (their last part: `lora_dropout`, `target_modules`), sorted:
    what a pair that is no one-knob experiment differs in (protocol 5b: a comparison finds which knob differs)."""
    return sorted({k.rsplit(".", 1)[-1] for k in set(a) & set(b)
                   if k.rsplit(".", 1)[-1] not in IGNORED_KEYS and not _same(a[k], b[k], _knob_of(k))})


def _pairs_said(pairs: Sequence[tuple[str, str]], flat: Mapping[str, Mapping[str, Any]]) -> str:
    """The first PAIRS_SAID_MAX pairs as _pair_said says each, and how many more there are (PAIRS_MORE)."""
    said = "; ".join(_pair_said(a, b, flat[a], flat[b]) for a, b in pairs[:PAIRS_SAID_MAX])
    return said + (PAIRS_MORE.format(n=len(pairs) - PAIRS_SAID_MAX) if len(pairs) > PAIRS_SAID_MAX else "")


def _pair_said(a: str, b: str, ca: Mapping[str, Any], cb: Mapping[str, Any]) -> str:
    """What a pair that is no one-knob experiment differs in (PAIR_DIFFERS), or, where no key both know differs, what
    they agree on; the keys loratune adds to every run (steps done, restart, task, classes, kind) are no config key
    a user set, so they are not named as agreed."""
    keys = _differing_keys(ca, cb)
    if keys:
        return PAIR_DIFFERS.format(a=a, b=b, keys=", ".join(keys))
    derived = (TRAINED_KEY, LR_RESTART_KEY, TASK_KEY, CLASSES_KEY, RUN_KIND_KEY)
    shared = sorted({k.rsplit(".", 1)[-1] for k in set(ca) & set(cb)
                     if k not in derived and k.rsplit(".", 1)[-1] not in IGNORED_KEYS})
    one_sided = {k for k in set(ca) ^ set(cb) if k.rsplit(".", 1)[-1] not in IGNORED_KEYS}
    if not shared:
        return PAIR_SHARES_NONE.format(a=a, b=b)
    return (PAIR_AGREES_ONE_SIDED if one_sided else PAIR_AGREES).format(a=a, b=b, keys=", ".join(shared))


def _rslora(cfg: Mapping[str, Any]) -> bool:
    return any(k.rsplit(".", 1)[-1] == "use_rslora" and v is True for k, v in cfg.items())


def _scale_x2(flat: Mapping[str, Mapping[str, Any]], best: Mapping[str, float | None], sign: int) -> float | None:
    """2 x the update scale s of the best run by the measure (lora_alpha / r, / sqrt(r) under rsLoRA): where
    update-too-weak's scale x2 move would take it. None when no run has a measure and both knobs."""
    scored = [n for n in flat if best.get(n) is not None]
    if not scored:
        return None
    cfg = flat[max(scored, key=lambda n: sign * best[n])]
    r, alpha = _knob_value(cfg, "r"), _knob_value(cfg, "lora_alpha")
    if not isinstance(r, (int, float)) or not isinstance(alpha, (int, float)) or r <= 0:
        return None
    from loratune.stepsize import ALPHA, R, RSLORA, scale_read

    return 2 * scale_read({R: float(r), ALPHA: float(alpha), RSLORA: _rslora(cfg)})


# what a run trains (history_io.TRL_KINDS' preference / rl / reward-model, else a classifier or a language model by
# the kind gates): a config key of its own in a knob comparison
RUN_KIND_KEY = "run.kind"


def _run_folder(h: RunHistory) -> Path | None:
    """Where the run a history was read from lives: a Trainer checkpoint's is its output dir (checkpoint-60 of out/
    is out/'s run), a trainer_state.json's its folder, LoratuneCallback's record (out/loratune) its Trainer's output
    dir, another file (a CSV, a notebook's table) itself; None for a history with no path."""
    if not h.path:
        return None
    p = Path(h.path).resolve()
    if p.name == "trainer_state.json" or (h.source == CALLBACK_RECORD_SOURCE and p.name == CALLBACK_RECORD_DIR):
        p = p.parent
    return p.parent if checkpoint_step(p) is not None else p


def _steps_done(h: RunHistory) -> int | None:
    """How far a partial run trained (run.json / the Trainer state's steps done); None where no file says it."""
    done = h.meta.get("steps_done")
    return int(done) if isinstance(done, (int, float)) and not isinstance(done, bool) else None


def _progress(h: RunHistory) -> tuple[bool, int]:
    """How far a read of a run got, to keep the furthest of one run's reads: a finished run before any partial one,
    then the most steps done (an unknown count the least)."""
    done = _steps_done(h)
    return (not _partial(h), done if done is not None else -1)


def _progress_said(h: RunHistory) -> str:
    done = _steps_done(h)
    if not _partial(h):
        return "end unknown" if h.meta.get(END_UNKNOWN_KEY) else "finished"
    return f"{done} steps done" if done is not None else "partial, steps unknown"


def _run_kind(h: RunHistory, f: CurveFeatures) -> str | None:
    kind = h.meta.get("trl_kind")
    if kind and kind != "sft":
        return str(kind)
    return "classifier" if f.values.get("classifier") else "language model" if f.values.get("generative") else None


def _groups(flat: dict[str, dict[str, Any]], knob: str) -> list[tuple[list[str], str]]:
    """Sets of runs that agree on every config key they both know except `knob` (for r: with lora_alpha
    fixed, or with the scale lora_alpha/r fixed), with at least two values of the knob. Keys only some runs
    know (a Trainer run has no seed or dataset in its files) are assumed equal, and the note says so."""
    variants = [("lora_alpha fixed", "alpha"), ("scale lora_alpha/r fixed", "scale")] if knob == "r" else [("", None)]
    found: list[tuple[list[str], str]] = []
    names = sorted(flat)
    for note, mode in variants:
        for seed_run in names:
            if _knob_value(flat[seed_run], knob) is None:
                continue
            members, assumed = [seed_run], set()
            for other in names:
                if other == seed_run or _knob_value(flat[other], knob) is None:
                    continue
                checks = [_differs_only_in(flat[m], flat[other], knob, mode) for m in members]
                if all(ok for ok, _ in checks):
                    members.append(other)
                    for _, unk in checks:
                        assumed |= unk
            values = _distinct([_knob_value(flat[m], knob) for m in members], knob)
            if len(members) < 2 or len(values) < 2:
                continue
            if any(set(members) <= set(g) for g, _ in found):
                continue
            found = [(g, n) for g, n in found if not set(g) < set(members)]
            full_note = note
            if mode == "scale" and any(_rslora(flat[m]) for m in members):
                full_note = "scale lora_alpha/sqrt(r) fixed (rsLoRA)"
            if assumed:
                full_note = (note + "; " if note else "") + "assumed equal (not known for every run): " + \
                    ", ".join(sorted(k.rsplit(".", 1)[-1] for k in assumed))
            counts = [flat[m].get(CLASSES_KEY) for m in sorted(members) if CLASSES_KEY in flat[m]]
            said = list(dict.fromkeys(f"~{c.n}" if isinstance(c, _EstimatedClasses) else str(c) for c in counts))
            if len(said) > 1 and any(isinstance(c, _EstimatedClasses) for c in counts):
                # the pairing rests on an estimate taking two counts as one task (~63 and 77): say so (one estimate
                # read alike from every run's first loss is no assumption)
                full_note = (full_note + "; " if full_note else "") + "n_classes estimated: " + " vs ".join(said)
            found.append((sorted(members), full_note))
    return found


def _compare_thresholds(histories: Sequence[RunHistory], names: Sequence[str],
                        thresholds: Mapping[str, float] | None) -> tuple[dict[str, float], list[str]]:
    """(the thresholds a comparison reads, its notes on them): `thresholds` where given; else those the runs
    recorded they were judged by (_run_thresholds) where every run's agree; the defaults where they differ, said."""
    if thresholds is not None:
        return resolve_thresholds(thresholds), []
    reads = [_run_thresholds(h, None) for h in histories]
    used = [r[1] for r in reads]
    if all(u == used[0] for u in used):
        said = [f"thresholds: the ones these runs were judged by: {overrides_text(used[0])}"] if used[0] else []
        return reads[0][0], said + list(dict.fromkeys(n for r in reads for n in r[3]))
    each = "; ".join(f"{n}: {overrides_text(u, 'the defaults')}" for n, u in zip(names, used))
    return resolve_thresholds({}), [f"thresholds: the runs were judged by different thresholds ({each}): compared "
                                    "with the defaults (give --thresholds to compare with others)"]


def compare(runs: Sequence[RunHistory | str | Path], *, thresholds: Mapping[str, float] | None = None,
            rules: Sequence[Rule] = RULES) -> Comparison:
    """Multi-run verdicts for runs that differ in one knob (see the module docstring)."""
    histories = [as_run(item) for item in runs]
    names = _unique_names([h.name for h in histories])
    values, notes = _compare_thresholds(histories, names, thresholds)
    flat: dict[str, dict[str, Any]] = {}
    feats: dict[str, CurveFeatures] = {}
    # a run and its own checkpoint (or one run given twice) are one run read at two points: no experiment. The read
    # that got furthest stands for the run, whatever the order given (_progress)
    owners: dict[Path, list[int]] = {}
    for i, h in enumerate(histories):
        owner = _run_folder(h)
        if owner is not None:
            owners.setdefault(owner, []).append(i)
    kept = {owner: max(reads, key=lambda i: (_progress(histories[i]), -i)) for owner, reads in owners.items()}
    for name, h in zip(names, histories):
        feats[name] = compute_features(h.points, h.meta, h.config)
        owner = _run_folder(h)
        keep = kept.get(owner, None) if owner is not None else None
        if keep is not None and names[keep] != name:
            notes.append(f"{name} ({_progress_said(h)}): the same run as {names[keep]} "
                         f"({_progress_said(histories[keep])}, {owner}), which stands for it; left out of the knob "
                         "comparison")
        elif h.config:
            flat[name] = knob_view(h)
        else:
            notes.append(f"{name}: no config, left out of the knob comparison")
    partial = [n for n in flat if flat[n].get(TRAINED_KEY) != TRAINED_TO_PLAN]
    if partial:
        notes.append("runs that stopped short of their planned steps are compared only with runs stopped at the same "
                     "step (protocol 5: same budget): " + ", ".join(
                         f"{n} ({flat[n][TRAINED_KEY]} steps done)" if isinstance(flat[n][TRAINED_KEY], int)
                         else f"{n} (steps done unknown: compared with none)" for n in partial))
    restarted = [n for n in flat if flat[n][LR_RESTART_KEY] != NO_LR_RESTART]
    if restarted:
        notes.append("runs whose learning rate jumped back up (a resume with a longer max_steps, or a restarting "
                     "schedule) trained on another schedule than runs whose rate decayed once: compared only with runs "
                     "that restarted at the same step: " + ", ".join(
                         f"{n} (restarts after step {flat[n][LR_RESTART_KEY]})" for n in restarted))
    kinds = {n: _run_kind(h, feats[n]) for n, h in zip(names, histories) if n in flat}
    if len({k for k in kinds.values() if k}) > 1:
        # runs of different kinds differ in more than a knob (a DPO loss and an SFT loss at two learning rates): the
        # kind is one more config key, so only runs of one kind form a knob group
        for n, k in kinds.items():
            if k:
                flat[n] = {**flat[n], RUN_KIND_KEY: k}
        notes.append("runs of different kinds are compared only within their kind: " +
                     ", ".join(f"{n} ({k or 'unknown'})" for n, k in kinds.items()))
    vloss = {n: f.values.get("val_loss_min") for n, f in feats.items()}
    # the measure (MEASURES), in its own sign: loss-only Trainer and SFT runs are compared on their val loss
    use_loss = any(feats[n].values.get("val_metric_best") is None for n in flat) and \
        all(vloss[n] is not None for n in flat)
    measure = LOSS_MEASURE if use_loss else METRIC_MEASURE
    best = {n: vloss[n] if use_loss else f.values.get("val_metric_best") for n, f in feats.items()}

    groups: list[KnobGroup] = []
    for knob in COMPARE_KNOBS:
        for members, note in _groups(flat, knob):
            rows = [(m, _knob_value(flat[m], knob), best[m], vloss[m]) for m in members]
            rows.sort(key=lambda r: (r[1] is None, r[1]))
            by_value: dict[Any, list[float]] = {}
            distinct = _distinct([row[1] for row in rows], knob)
            for _, kv, m, _ in rows:
                if m is not None:  # values within the knob's read-back tolerance are one value
                    by_value.setdefault(next(u for u in distinct if _same(kv, u, knob)), []).append(m)
            means = [sum(v) / len(v) for v in by_value.values()]
            effect = (max(means) - min(means)) if len(means) >= 2 else None
            groups.append(KnobGroup(knob, tuple(rows), effect, note, measure))
    grouped = {row[0] for g in groups for row in g.runs}
    if groups and set(flat) - grouped:
        nearest: list[tuple[str, str]] = []
        for n in sorted(set(flat) - grouped):
            near = min((o for o in sorted(flat) if o != n), key=lambda o: len(_differing_keys(flat[n], flat[o])))
            # a pair said once (two identical runs are each the other's nearest); a partial run beside a run it
            # differs from in its steps done only is the partial-runs note's already
            if (near, n) not in nearest and not (
                    n in partial and _differing_keys(flat[n], flat[near]) == [TRAINED_KEY.rsplit(".", 1)[-1]]):
                nearest.append((n, near))
        if nearest:
            notes.append(LEFT_OUT.format(pairs=_pairs_said(nearest, flat)))
    if len(flat) >= 2 and not groups:
        pairs = [(a, b) for i, a in enumerate(sorted(flat)) for b in sorted(flat)[i + 1:]]
        notes.append(f"no two runs differ in exactly one of {', '.join(COMPARE_KNOBS)}: " + _pairs_said(pairs, flat))

    acc = FeatureSet(COMPARE_FEATURES)
    if histories and all(is_full_finetune(h.meta) for h in histories):
        acc.details["method"] = "full"  # the compare rules' moves and words for full fine-tunes (Rule.moves_for)
    # noise: one run's sigma (seed std when available, else the binomial SE of each run's val size) as the unit of
    # protocol 6's band: effect_noise_min of it is objectives.NOISE_BAND's max(0.5 pt, 2 x sigma), as tune reads it
    k_min = values["effect_noise_min"]
    # a loss comparison keeps the floor tune's loss objective reads (its SearchContext.noise): without it two seeds
    # a hair apart made a 0.3% val-loss difference 42 noise units, and identical seeds made the noise unknown
    floor = objective("val/loss").noise_floor if use_loss else None
    seed_groups = [g for g in groups if g.knob == "seed"]
    variances = []
    for g in seed_groups:
        ms = [r[2] for r in g.runs if r[2] is not None]
        if len(ms) >= 2:
            mean = sum(ms) / len(ms)
            variances.append((sum((x - mean) ** 2 for x in ms) / (len(ms) - 1), len(ms)))
    if variances:
        seed_std = math.sqrt(sum(v * (n - 1) for v, n in variances) / sum(n - 1 for _, n in variances))
        acc.set("seed_std", seed_std)
        noise = NOISE_BAND.unit(seed_std, floor, k_min)
        k = sum(n for _, n in variances)
        acc.details["noise_source"] = f"seed std over {k} runs ({len(variances)} group(s))"
    else:
        acc.set("seed_std", None, "no two runs differ only in seed")
        # the runs whose differences are measured: those in a knob group (every configured run when none is)
        measured = [n for n in flat if any(n == row[0] for g in groups for row in g.runs)] or list(flat)
        noise, source = _runs_noise(measured, feats, best, use_loss, floor, k_min)
        acc.details["noise_source"] = source or ("unknown: no seed runs, no val size and too few eval points" if flat
                                                 else "unknown: no run has a config to compare")
        # each group against its own runs' noise, not every measured run's
        groups = [replace(g, noise=gn, noise_source=gs or "unknown: no val size and too few eval points")
                  for g in groups
                  for gn, gs in [_runs_noise([row[0] for row in g.runs], feats, best, use_loss, floor, k_min)]]
    if variances:
        groups = [replace(g, noise=noise, noise_source=acc.details["noise_source"]) for g in groups]
    acc.details["measure"] = measure
    acc.details["effect_noise_min"] = k_min  # what an effect is held against, in noise units (_annotate says it)
    acc.set("noise", noise, "no seed runs and no val size: noise unknown")
    acc.set("compared_on_loss", 1.0 if use_loss else 0.0)
    if use_loss:
        acc.miss(("metric_noise",), NOT_APPLICABLE + "the runs are compared on their val loss")
    else:
        acc.set("metric_noise", noise, "no seed runs and no val size: noise unknown")

    effects: dict[str, float | None] = {}
    for knob, feat in EFFECT_KNOBS.items():
        es = [g.effect for g in groups if g.knob == knob and g.effect is not None]
        effects[feat] = max(es) if es else None
        why = f"no runs differing only in {knob}"
        acc.set(f"{feat}_effect", effects[feat], why)
        # each group's effect in its own noise units (KnobGroup.noise), the largest of the knob's groups
        ens = [en for g in groups if g.knob == knob and (en := g.effect_noise()) is not None]
        acc.set(f"{feat}_effect_noise", max(ens) if ens else None, why if effects[feat] is None else "noise unknown")
    lr, r = effects["lr"], effects["r"]
    acc.set("r_over_lr_effect", r / max(lr, 1e-4) if r is not None and lr is not None else None,
            "needs both a learning-rate group and a rank group (the minimal-intervention pair)")
    acc.set("lr_over_r_effect", lr / max(r, 1e-4) if r is not None and lr is not None else None,
            "needs both a learning-rate group and a rank group (the minimal-intervention pair)")
    loudest = _loudest(groups)
    acc.set("max_effect_noise", loudest.effect_noise() if loudest else None, "no knob groups or noise unknown")
    lr_loss = []
    for g in groups:
        if g.knob == "learning_rate":
            ls = [row[3] for row in g.runs if row[3] is not None]
            if len(ls) >= 2 and sum(ls) > 0:
                lr_loss.append((max(ls) - min(ls)) / (sum(ls) / len(ls)))
    acc.set("lr_loss_effect", max(lr_loss) if lr_loss else None, "no learning-rate group with val loss")
    gaps_f1 = [f.values.get("gap_f1") for f in feats.values() if f.values.get("gap_f1") is not None]
    acc.set("gap_f1_max", max(gaps_f1) if gaps_f1 else None, "no train_eval metric in any run")
    chance = [f.values.get("train_loss_vs_chance") for f in feats.values()]
    # no run read against ln(classes) (a multi-label run, one with no train loss): whether a run left chance is
    # unread, and the rules that ask it read the runs as before it was asked
    acc.set("chance_level_unread", 0.0 if chance and all(x is not None for x in chance) else 1.0)
    if chance and all(x is not None for x in chance):
        acc.set("min_train_loss_vs_chance", min(chance))
    else:
        acc.miss(("min_train_loss_vs_chance",), (NOT_APPLICABLE + "not every run is a single-label classifier")
                 if any(f.values.get("classifier") != 1.0 for f in feats.values())
                 else "a run has no train loss or no class count")
    lrs = [f.values.get("peak_lr") for f in feats.values()]
    acc.set("max_peak_lr", max(lrs) if lrs and all(x is not None for x in lrs) else None,
            "a run logged no learning rate")
    acc.set("scale_x2", _scale_x2(flat, best, MEASURES[measure]),
            "no compared run with a measure and both r and lora_alpha in its config")
    lr_groups = [g for g in groups if g.knob == "learning_rate"]
    r_groups = [g for g in groups if g.knob == "r"]
    if lr_groups and r_groups and not any({x[0] for x in a.runs} & {x[0] for x in b.runs}
                                          for a in lr_groups for b in r_groups):
        notes.append("the learning-rate and rank groups share no run: not a minimal-intervention pair from one start")
    features = acc.done()
    cmp_rules = [rr for rr in rules if rr.scope == "compare"]
    findings, gaps = evaluate_rules(features, cmp_rules, values)
    by_id = {rr.id: rr for rr in cmp_rules}
    findings = tuple(_annotate(f, by_id.get(f.rule_id), groups, features) for f in findings)
    return Comparison(runs=tuple(names), groups=tuple(groups), features=features, findings=findings,
                      not_evaluated=gaps, notes=tuple(notes), measure=measure,
                      thresholds_overridden=overridden_thresholds(values))


def _runs_noise(runs: Sequence[str], feats: Mapping[str, CurveFeatures], best: Mapping[str, float | None],
                use_loss: bool, floor: float | None, k_min: float) -> tuple[float | None, str | None]:
    """One run's sigma over `runs` where no seed runs give one (compare's noise unit: NOISE_BAND's), and where it came
    from: the root mean square of the runs' SEs (the val loss curves' jitter; or the binomial SE of the val size; or
    the metric curves' jitter). (None, None) where no run has one."""
    if use_loss:
        ses = [feats[n].values.get("val_loss_noise") for n in runs]
        source = "the val-loss curves' own jitter"
    else:
        # the single-run policy: only a share of rows has a binomial SE (token accuracy, ROUGE: their jitter)
        ses = [binomial_se(best[n], feats[n].values.get("val_n")) for n in runs
               if best[n] is not None and feats[n].values.get("val_n")
               and has_binomial_se(feats[n].details.get("val_metric"))]
        source = "binomial standard error from val size"
        if not [x for x in ses if x is not None]:
            ses = [feats[n].values.get("val_metric_noise") for n in runs]
            source = "the metric curves' own jitter"
    ses = [x for x in ses if x is not None]
    if not ses:
        return None, None
    # one run's sigma: the root mean square of the runs' SEs (protocol 6's band is over it, not over the difference
    # of two runs, whose std is sqrt(2) x it)
    rms = math.sqrt(sum(x * x for x in ses) / len(ses))
    return NOISE_BAND.unit(rms, floor, k_min), (f"{source}: the root mean square of {len(ses)} runs' SE ({rms:.4f})"
                                                if len(ses) > 1 else f"{source} ({rms:.4f})") + "; no seed runs"


# the knobs whose groups' effects the comparison measures (feature prefix: lr_effect, r_effect_noise, ...); seed
# groups give the noise, not an effect
EFFECT_KNOBS: Mapping[str, str] = {"learning_rate": "lr", "r": "r", "lora_alpha": "alpha"}


def _loudest(groups: Sequence[KnobGroup]) -> KnobGroup | None:
    """The group that sets max_effect_noise: the largest effect in its own noise units (None: no group has one)."""
    return max((g for g in groups if g.knob in EFFECT_KNOBS and g.effect_noise() is not None),
               key=lambda g: g.effect_noise(), default=None)


def _direction(g: KnobGroup) -> str | None:
    """Where the better run of a group lies: UP (at the largest value tried), DOWN (the smallest) or HOLD (between)."""
    top = g.best()
    values = [row[1] for row in g.runs if row[2] is not None and isinstance(row[1], (int, float))]
    if top is None or not isinstance(top[1], (int, float)) or len(set(values)) < 2:
        return None
    return UP if top[1] >= max(values) else DOWN if top[1] <= min(values) else HOLD


def _annotate(f: Finding, rule: Rule | None, groups: Sequence[KnobGroup], features: CurveFeatures) -> Finding:
    """Add the better run, the deltas and the noise source to a comparison finding, and turn its moves towards the
    better run of the group it reads (the one with the largest effect, which the rule's feature took)."""
    knob = rule.knob if rule is not None else None
    moves = f.moves
    read = [g for g in groups if g.knob == knob and knob != "seed"]
    # the noise the groups read were held against (each group's own: KnobGroup.noise), else the comparison's
    sources = list(dict.fromkeys(g.noise_source for g in read if g.noise_source))
    # a knob-less rule that reads max_effect_noise read one group's effect against that group's own noise: name the
    # group and its noise, not the pooled noise of every run (lora_alpha's 0.175 over its 2 runs' 0.090 is 1.9 units;
    # "4 runs' SE (0.084)" was not what the rule compared)
    loud = _loudest(groups) if knob is None and rule is not None and "max_effect_noise" in rule.features() else None
    if loud is not None:
        knob, read = loud.knob, [loud]
        sources = [f"the {loud.knob} group's own, which sets max_effect_noise ({loud.effect_noise():.1f} units): "
                   f"{loud.noise_source}"]
    sources = sources or [features.details.get("noise_source")]
    notes = [f"noise: {'; '.join(map(str, sources))}"]
    for g in read:
        top = g.best()
        if top is None:
            continue
        lower = MEASURES[g.measure] < 0
        notes.append(f"best {knob}: {top[1]} (run {top[0]}, {g.measure} {top[2]:.3f})")
        deltas = [f"{row[0]} ({knob}={row[1]}): {row[2] - top[2]:+.3f}" for row in g.runs
                  if row[2] is not None and row is not top]
        noise = g.noise
        k_min = features.details.get("effect_noise_min")
        # the number the rules compare, named as what it is: one run's sigma (the noise unit), and the effect it takes
        # to count (effect_noise_min units: NOISE_BAND's band). Called "noise of a difference", it understated that
        # difference's own std (sqrt 2 x it), while the band is over one run's sigma (protocol 6)
        band = (f"; noise unit (one run's sigma) {noise:.3f}: an effect counts from {k_min * noise:.3f} "
                f"(effect_noise_min {k_min:g} units)" if noise and k_min else f"; noise unit {noise:.3f}" if noise
                else "")
        if deltas:
            notes.append(f"{knob} deltas vs the best run" + (" (val loss: lower is better)" if lower else "") + ": "
                         + ", ".join(deltas) + band)
    # the group the rule's feature took: the largest effect in its own noise units (the largest effect, noise unknown)
    decided = max((g for g in read if g.effect is not None),
                  key=lambda g: (g.effect_noise() is not None, g.effect_noise() or g.effect), default=None)
    # (a knob-less rule's moves do not turn: the group it named is not the knob it moves)
    direction = _direction(decided) if decided is not None and loud is None else None
    if direction is not None:
        moves = towards(f.moves, direction)
    return Finding(**{**f.__dict__, "moves": moves, "notes": tuple(notes)})


def _unique_names(names: list[str]) -> list[str]:
    out, seen = [], {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out
