"""Trial records (plain data, no torch): what a search asks for and what came back.

A `TrialSpec` is a point of the search (dotted config overrides on the base config), a phase and a
purpose; its `key` (canonical JSON of the point) identifies it, so a resumed study finds a finished
trial instead of training it again. A `TrialResult` is the part of a run record and its diagnosis
that decisions read; a `TrialRecord` ties both to the study's trial number and run directory.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from loratune.errors import PARSE_ERRORS, finite_number
from loratune.objectives import FIRST_TRAINED_STEP, NOTHING_KEPT, Objective, keep_order, objective
from loratune.store import RUN

# features of the diagnosis copied into every result (the decisions and the report read them)
KEPT_FEATURES = ("val_metric_best", "val_metric_se", "val_n", "gap_f1", "train_eval_metric_final",
                 "best_step_fraction", "still_improving", "val_metric_final_drop", "val_loss_min",
                 "val_loss_rise", "val_loss_drop", "train_loss_vs_chance", "train_loss_drop")


# Step 0 is the untrained model (objectives.FIRST_TRAINED_STEP, defined there, where early stopping's Patience counts
# from it): the bar every trial is measured against, never a trial's score. A trial's value (run.json best) is its
# best *trained* point, so every search rule that reads a curve reads its trained points only (`trained_points`: where
# the best came, the score at a pruned trial's step, pruning's comparison at the same step); training's early stopping
# counts trained points only (objectives.Patience: the first trained point sets the bar), so a run it stopped did not
# beat its own trained best for `patience` evaluations (never "still improving": protocol.common.early_stopped).


def trained_points(curve) -> list[tuple[int, float]]:
    """A (step, score) curve without the untrained model's point (FIRST_TRAINED_STEP)."""
    return [(step, v) for step, v in curve if step >= FIRST_TRAINED_STEP]


# What a rank sweep's points differ in (protocol 6: r, with alpha / rsLoRA or the lr holding lr x s fixed) and its
# seed replicates: a trial that differs from the sweep's working point in anything else (other target modules, a long
# run's train.max_steps, another dropout, full fine-tuning) is not a point of the rank-vs-metric comparison, which
# holds everything but the rank (a 60-step run's or an all-linear trial's score is not the rank's).
RANK_SWEEP_FREE_KEYS = ("adapter.r", "adapter.lora_alpha", "adapter.use_rslora", "train.learning_rate", "train.seed")


def like_rank_sweep(point: Mapping[str, Any], working: Mapping[str, Any]) -> bool:
    """Whether a trial's point is comparable with the rank sweep whose working point is `working`: the same in every
    key but RANK_SWEEP_FREE_KEYS."""
    def rest(p: Mapping[str, Any]) -> dict:
        return {k: v for k, v in p.items() if k not in RANK_SWEEP_FREE_KEYS}

    return rest(point) == rest(working)


def rank_sweep_working(points: Any, point_of: Mapping[int, Mapping[str, Any]]) -> tuple[int, Mapping[str, Any]] | None:
    """The rank sweep's working point, (trial number, point), wherever the sweep measured any point (its first point's
    trial: a sweep of one point, stopped at the ceiling, has one too), so study.json's rank view and show/report read
    the same trials as a rank's score (like_rank_sweep); None without a sweep point or the trial's point
    (`point_of`: trial number -> point)."""
    first = next((p for p in points or () if isinstance(p, Mapping)), None)
    trial = first.get("trial") if first is not None else None
    try:
        n = None if trial is None or isinstance(trial, bool) else int(round(float(trial)))
    except (TypeError, ValueError, OverflowError):
        n = None
    point = point_of.get(n) if n is not None else None
    return (n, point) if point is not None else None


def canonical(point: Mapping[str, Any]) -> str:
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, float):
            return float(f"{v:.6g}")
        return v
    return json.dumps({k: plain(v) for k, v in sorted(point.items())}, sort_keys=True)


@dataclass(frozen=True)
class TrialSpec:
    name: str  # short, readable: lr2e-3, r16, full ...
    phase: str  # a stage id (search.stages.StageId: phase1-lr-grid, pair, seeds, ...) or yardstick
    point: dict[str, Any]  # dotted overrides on the base config: the whole tuned point
    purpose: str = ""

    @property
    def key(self) -> str:
        return canonical(self.point)

    def to_dict(self) -> dict:
        return {"name": self.name, "phase": self.phase, "point": dict(self.point), "purpose": self.purpose}


@dataclass(frozen=True)
class TrialResult:
    status: str  # completed | pruned | diverged | failed
    value: float | None  # the run's best objective as a score, larger is better (val macro-F1; minus a val loss)
    examples: int  # training examples processed (the compute unit)
    wall_s: float  # the trial's whole wall time: model load, training, evaluation, diagnosis
    steps_planned: int = 0
    steps_done: int = 0
    mean_step_s: float | None = None
    peak_memory_mb: float | None = None  # run.json: the process's peak during the trial
    memory_delta_mb: float | None = None  # that peak above the process's memory when the trial started
    params: dict = field(default_factory=dict)  # run.json params
    best: dict = field(default_factory=dict)  # step, val/macro_f1, val/loss, val/accuracy, train_eval/macro_f1
    curve: tuple[tuple[int, float], ...] = ()  # (step, objective score) at every eval point
    verdict: str = "inconclusive"  # the diagnosis' primary rule id
    findings: tuple[dict, ...] = ()  # active findings: rule_id, verdict, moves, confidence, evidence
    features: dict = field(default_factory=dict)  # KEPT_FEATURES
    reason: str = ""  # why the run ended (a pruned trial: the pruning reason)
    objective: str = "val/macro_f1"  # the key `value` scores (objectives.objective(key) shows it)
    method: str = ""  # what trained (decide.method_name: LoRA, DoRA, LoRA+, full fine-tuning); "": not recorded
    task: str = ""  # run.json task (causal-lm, single_label, multi_label): which tie-break its ranking takes

    @property
    def order(self) -> tuple[float, float]:
        """Where this result stands among a study's (a larger tuple is better): objectives.keep_order of its kept
        point, the rule training keeps its best model by: the value, then for a task in LOSS_TIE_BREAK_TASKS (a
        generative classifier's macro-F1, 0.0 at every trial until an output names a label) the lower val loss of
        that point. No value: behind every scored result (NOTHING_KEPT)."""
        if not self.ok:
            return NOTHING_KEPT
        return kept_order(self.objective, objective(self.objective).value(self.value), self.best, self.task)

    @property
    def ok(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    @property
    def full_length(self) -> bool:
        """Trained for its planned length: a pruned trial stopped early (at a rung, or beside losing references), and
        its value is no evidence beside full-length trials' (lr siblings, the pair's arms)."""
        return self.status != "pruned"

    def fired(self, rule_id: str) -> bool:
        return any(f.get("rule_id") == rule_id for f in self.findings)

    def finding(self, rule_id: str) -> dict | None:
        return next((f for f in self.findings if f.get("rule_id") == rule_id), None)

    def feature(self, name: str) -> float | None:
        return self.features.get(name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["curve"] = [list(x) for x in self.curve]
        d["findings"] = list(self.findings)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialResult":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["curve"] = tuple((int(s), float(v)) for s, v in known.get("curve", ()))
        known["findings"] = tuple(known.get("findings", ()))
        return cls(**known)


def kept_order(key: str, value: float | None, best: Mapping[str, Any], task: str | None) -> tuple[float, float]:
    """Where a trial's result stands among a study's (a larger tuple is better): objectives.keep_order of its kept
    point (`value`: the objective `key`'s value as a person reads it; `best`: the record's best point, whose val
    loss breaks ties; `task`: run.json's). A value taken from the curve (the record's best is the untrained model)
    has no val loss. No finite value: NOTHING_KEPT. TrialResult.order and the study report's TrialView read it."""
    point = {"val/loss": kept_loss(best), key: value}  # a val-loss objective: its value, never the kept point's
    return keep_order(point, key, task) or NOTHING_KEPT


def kept_loss(best: Mapping[str, Any]) -> float | None:
    """The val loss of a trial's kept point (the record's `best`); None where the value was taken from the curve
    (the record's best is the untrained model) or none was logged."""
    if int(best.get("step", FIRST_TRAINED_STEP)) < FIRST_TRAINED_STEP:
        return None
    loss = best.get("val/loss")
    return float(loss) if finite_number(loss) else None


def flat_objective_note(o: Objective, trials: Sequence[tuple[str, float | None, float | None]],
                        pick: str) -> str | None:
    """What to say beside a pick when the study's objective never moved: every scored trial (`trials`: label,
    score, kept point's val loss) tied at one value, e.g. a generative classifier's macro-F1 0.0 before any output
    names a label. The pick then stands by the protocol's rule (a change needs a gain beyond noise), not by a
    better score, and the val loss may favour another trial: the note names that trial with both losses. None
    when fewer than two trials were scored or they differ. The finish decision, show and the report say it."""
    scored = [t for t in trials if t[1] is not None]
    if len(scored) < 2 or len({t[1] for t in scored}) > 1:
        return None
    text = (f"{o.name} never moved off {o.fmt(scored[0][1])} in any trial ({len(scored)} scored): it tells no trial "
            "from another, and the pick is not a better score (a change needs a gain beyond noise)")
    losses = [(loss, i) for i, (_, _, loss) in enumerate(scored) if loss is not None]
    if not losses:
        return text
    low, i = min(losses)
    mine = next((loss for label, _, loss in scored if label == pick), None)
    if scored[i][0] == pick:
        return text + f"; the val loss favours the pick too ({low:.3f}, the lowest of {len(losses)})"
    return text + (f"; the val loss favours {scored[i][0]} (val loss {low:.3f}, the pick's "
                   + (f"{mine:.3f})" if mine is not None else "not logged)"))


def recorded_task(result: Mapping[str, Any], run_dir: str | None) -> str:
    """A stored trial result's task (TrialResult.task, which tie-break its ranking takes): the record's own, or for a
    record written before results kept it, the task in its run's run.json (`run_dir`: as found in the study,
    store.in_study); "" where neither says. Every reader of a study's records takes it here (TrialRecord.loaded: the
    study's records and a resumed key's; the study report's trials), so a resumed study and its report rank an old
    study's trials by one rule and name the same best."""
    if result.get("task"):
        return str(result["task"])
    try:
        run = json.loads((Path(run_dir) / RUN).read_text(encoding="utf-8")) if run_dir else None
    except (OSError, *PARSE_ERRORS):
        run = None
    return str(run.get("task") or "") if isinstance(run, dict) else ""


def study_rank(order: tuple[float, float], number: int) -> tuple[float, float, int]:
    """The key a study picks the best of trials by (max): a trial's order (kept_order: its value, then the
    tie-break training keeps by), then the earlier trial. The one rule context.best, every stage's best-of and the
    study report's best (tile, `show`'s best so far) read."""
    return (*order, -number)


@dataclass(frozen=True)
class TrialRecord:
    number: int
    spec: TrialSpec
    run_dir: str
    result: TrialResult
    reused: bool = False  # found finished in the study (resume) instead of trained now

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def value(self) -> float | None:
        return self.result.value if self.result.ok else None

    @property
    def point(self) -> dict:
        return self.spec.point

    @property
    def label(self) -> str:
        return f"#{self.number} {self.spec.name}"

    @property
    def rank(self) -> tuple[float, float, int]:
        """The key a study picks the best of trials by (max): study_rank of the result's order."""
        return study_rank(self.result.order, self.number)

    def to_dict(self) -> dict:
        return {"number": self.number, "spec": self.spec.to_dict(), "run_dir": self.run_dir,
                "result": self.result.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialRecord":
        s = d["spec"]
        return cls(int(d["number"]), TrialSpec(s["name"], s["phase"], dict(s["point"]), s.get("purpose", "")),
                   d["run_dir"], TrialResult.from_dict(d["result"]))

    @classmethod
    def loaded(cls, d: Mapping[str, Any], run_dir: str | None) -> "TrialRecord":
        """A study's stored record `d` as the study reads it back: its run directory as found in the study
        (`run_dir`, store.in_study) and its task as recorded_task reads it (run.json's, for a record older than
        TrialResult.task)."""
        rec = cls.from_dict(d)
        return replace(rec, run_dir=run_dir,
                       result=replace(rec.result, task=recorded_task(d.get("result") or {}, run_dir)))


def short_name(point: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> str:
    """A readable name from what differs from `base` (or the main knobs): lr2e-3-r16-s4-full."""
    base = base or {}
    parts = []
    abbrev = (("adapter.method", ""), ("train.optimizer", ""), ("adapter.use_dora", ""),
              ("train.learning_rate", "lr"), ("adapter.r", "r"),
              ("adapter.target_modules", "t-"), ("adapter.layers_to_transform", "L"), ("adapter.use_rslora", "rs"),
              ("adapter.lora_alpha", "a"), ("adapter.lora_dropout", "do"), ("train.weight_decay", "wd"),
              ("train.seed", "seed"), ("train.max_steps", "steps"))
    for key, tag in abbrev:
        if key not in point or (base and base.get(key) == point.get(key)):
            continue
        v = point[key]
        if key == "adapter.method":
            if v == "full":
                parts.append("full")
            continue
        if key == "train.optimizer":
            # an arm's trials (LoRA+) would otherwise share a plain LoRA trial's name at the same lr
            if v and v != "adamw":
                parts.append(str(v))
            continue
        if key == "adapter.use_dora":
            if v:
                parts.append("dora")
            continue
        if key == "adapter.use_rslora":
            if v:
                parts.append("rs")
            continue
        if key == "adapter.target_modules":
            v = "+".join(str(x).replace("attn.", "").replace("ffn@top:", "ffnT").replace("ffn.", "f")
                         for x in (v if isinstance(v, (list, tuple)) else [v]))
            parts.append(f"t-{v}")
            continue
        if isinstance(v, float):
            # three significant digits, as round3 makes them: 2.5e-4 read "3e-4", an lr the trial did not train at
            v = (re.sub(r"\.?0*e", "e", f"{v:.2e}").replace("e-0", "e-").replace("e+0", "e") if 0 < v < 0.01
                 else f"{v:g}")
        parts.append(f"{tag}{v}")
    if point.get("train.init_from") and not (base and base.get("train.init_from") == point["train.init_from"]):
        parts.append("cont")  # a warm start from a saved model (the trail names which)
    name = "-".join(parts) or "start"
    return re.sub(r"[^A-Za-z0-9_.+=-]", "", name)[:60]
