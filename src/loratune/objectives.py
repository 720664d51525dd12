"""What a run is judged on (its objective), as data, with the names of the prompt set's scores: the val key, its direction, its name, and the smallest
difference between two runs that ever counts.

A classifier is judged on val macro-F1 (or subset accuracy, multi-label), a generative classifier
(causal-lm, label_format=generate) on the macro-F1 of the labels it writes, open generation on the val loss
per completion token (protocol 9), or on a prompt-set score the user names. The search compares runs on
one scale where larger is better: `Objective.score` (the value, or minus it for a loss); what a person
reads is the value itself (`Objective.show`).

    from loratune.objectives import objective
    o = objective("val/loss")
    o.score(2.31)          # -2.31: larger is better
    o.show(-2.31)          # 'val loss 2.310'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

# ---------------------------------------------------------------------------------------------
# the prompt set's groups and scores (generation.score_prompt_set computes them; history keys below)

PROMPT_GROUPS = ("familiar", "novel")

# metric -> what it measures (0..1 scales except len_ratio); the report and `loratune rules` read these
SCORES: Mapping[str, str] = MappingProxyType({
    "exact_match": "share of outputs equal to their reference after normalisation (lower case, whitespace "
                   "runs collapsed to one space, ends stripped)",
    "chrf": "mean sentence-level chrF (character n-grams up to 6, beta 2; sacrebleu's CHRF) on a 0..1 scale: "
            "the token-overlap score, robust to tokenisation and inflection",
    "len_ratio": "mean output length / mean reference length, in whitespace words (the ratio of the totals: a "
                 "one-word reference answered at length moves it little, where a mean of per-row ratios would be "
                 "ruled by it): well below 1 = short, vague answers; well above 1 = rambling or looping",
    "repetition": "mean share of repeated word 3-grams in an output: (3-grams - distinct 3-grams) / 3-grams, "
                  "lower-cased words; 0 for outputs under 3 words. 0 = no 3-gram repeats, near 1 = a loop",
    "empty": "share of outputs with no visible characters",
    "capped": "share of outputs that ran to train.max_new_tokens (after the template's answer prefix) without "
              "an end-of-sequence token: the cap cut them, so their length and chrF are the cap's, not the model's",
    "chrf_se": "standard error of the group's mean chrF: sample standard deviation of the per-prompt chrF / "
               "sqrt(prompts) (0.5 with a single prompt: the widest a 0..1 score can spread); the noise band of "
               "`chrf` that the diagnosis compares differences with",
})


def prompt_key(group: str, metric: str) -> str:
    """The history key of one prompt-set score, e.g. `val/prompt_novel_chrf`. The one place the format lives."""
    if group not in PROMPT_GROUPS:
        raise ValueError(f"unknown prompt group {group!r}; allowed: {', '.join(PROMPT_GROUPS)}")
    if metric not in SCORES:
        raise ValueError(f"unknown prompt-set score {metric!r}; allowed: {', '.join(SCORES)}")
    return f"val/prompt_{group}_{metric}"


PROMPT_KEYS = frozenset(prompt_key(g, m) for g in PROMPT_GROUPS for m in SCORES)  # every prompt-set history key


# ---------------------------------------------------------------------------------------------
# objectives

# Protocol 6: "the gain per step falls below noise (max(0.5 pt, 2 x seed sigma))": half a point of a score
# in [0, 1] is the smallest difference that ever counts.
SCORE_FLOOR = 0.005
# The same floor for a loss per token: 0.01 nats is a 1% change of perplexity, about what one more or one
# fewer rare token in a few thousand completion tokens moves a val loss (below it, runs are not told apart).
LOSS_FLOOR = 0.01


@dataclass(frozen=True)
class NoiseBand:
    """Protocol 6's noise band, the one definition diagnose's comparison, tune's trials and assess's val resolution
    read: a difference between two runs counts only above max(floor, sigmas x sigma). sigma is the spread of one
    run's score: its seed std once seeds ran, else (protocol 5, "noise first") its sampling SE, binomial from the
    val size or the curve's own jitter. Coded three ways (2.83 sigma in diagnose, 2 sigma or 1.41 SE in tune, 2 SE
    in assess), the same numbers were a real gain to tune and noise to diagnose."""

    floor: float  # the smallest difference that ever counts (a loss objective: LOSS_FLOOR)
    sigmas: float  # a difference must reach this many sigmas of one run's score

    def width(self, sigma: float | None, floor: float | None = None) -> float:
        """The band: differences under it are noise."""
        f = self.floor if floor is None else floor
        return f if sigma is None else max(f, self.sigmas * sigma)

    def unit(self, sigma: float, floor: float | None = None, sigmas: float | None = None) -> float:
        """The noise unit whose `sigmas` multiple is the band, max(sigma, floor / sigmas): what diagnose's
        comparison divides an effect by and holds against `effect_noise_min` (its default: `sigmas`)."""
        return max(sigma, (self.floor if floor is None else floor) / (sigmas or self.sigmas))

    def describe(self) -> str:
        return f"max({self.floor:g}, {self.sigmas:g} x sigma)"


NOISE_BAND = NoiseBand(floor=SCORE_FLOOR, sigmas=2.0)

# Two floats computed two ways and equal but for their arithmetic's rounding, relative (0.09999999999999995 is 0.1;
# 0.81 - 0.80 = 0.010000000000000009 is a band of 0.01): far below any score's resolution (1 / a val set's rows).
# The one tolerance: the noise band (beyond_noise), diagnose's thresholds and knob comparisons read it.
FLOAT_ROUNDING = 1e-9


def at_threshold(a: float, b: float) -> bool:
    """a equal to b up to float rounding (a 10% rise computed as 0.09999999999999995 is a threshold of 0.1): it
    meets `>=` / `<=` and fails `<` / `>`, so `>= t` and `< t` stay exact complements."""
    # relative: 1e-9 above a threshold of 0 is above it
    return math.isclose(a, b, rel_tol=FLOAT_ROUNDING, abs_tol=1e-15)


def beyond_noise(diff: float | None, noise: float | None) -> bool | None:
    """Protocol 6's one comparison (every "gains beyond noise" of tune and LoRA vs full, every "falls beyond the
    band"): a difference counts only above the noise band, a difference equal to it up to float rounding
    (at_threshold) does not; None (unknown) when either is missing or not a finite number (a NaN score is not
    "within noise")."""
    if diff is None or noise is None or not (math.isfinite(diff) and math.isfinite(noise)):
        return None
    return diff > noise and not at_threshold(diff, noise)


# a comparison of two scores read on values where smaller is better (a loss): the same order turned round
TURNED_ROUND = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclass(frozen=True)
class Objective:
    key: str  # the history / run.json key, e.g. val/macro_f1
    higher_is_better: bool
    name: str  # how a person reads it
    noise_floor: float  # the smallest difference between two runs that counts (in the key's own units)

    def score(self, value: float | None) -> float | None:
        """The value on the search's scale, where larger is better (None and non-finite stay None)."""
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value) if self.higher_is_better else -float(value)

    def value(self, score: float | None) -> float | None:
        """Back from the search's scale to the key's own units."""
        if score is None:
            return None
        return float(score) if self.higher_is_better else -float(score)

    def fmt(self, score: float | None) -> str:
        """The value (not the score) with three decimals; '-' when there is none."""
        v = self.value(score)
        return "-" if v is None else f"{v:.3f}"

    def show(self, score: float | None) -> str:
        return f"{self.name} {self.fmt(score)}"

    def shown_op(self, op: str) -> str:
        """The comparator `op` between two scores (larger is better) as it holds between their shown values
        (`fmt`): turned round for a loss, whose score is its negated value (score a >= score b is loss a <= loss b)."""
        return op if self.higher_is_better else TURNED_ROUND[op]

    @property
    def axis(self) -> str:
        """The name as a chart axis or column reads it: with the direction when smaller is better (a loss)."""
        return self.name if self.higher_is_better else f"{self.name} (lower is better)"

    def on(self, split: str) -> "Objective":
        """The same metric on another split: `objective("val/loss").on("test")` is test/loss, 'test loss'."""
        metric = self.key.split("/", 1)[-1]
        name = self.name.removeprefix("val ")
        return Objective(f"{split}/{metric}", self.higher_is_better, f"{split} {name}", self.noise_floor)


OBJECTIVES: dict[str, Objective] = {o.key: o for o in (
    Objective("val/macro_f1", True, "val macro-F1", SCORE_FLOOR),
    Objective("val/weighted_f1", True, "val weighted F1", SCORE_FLOOR),
    Objective("val/accuracy", True, "val accuracy", SCORE_FLOOR),
    Objective("val/subset_accuracy", True, "val subset accuracy", SCORE_FLOOR),
    Objective("val/micro_f1", True, "val micro-F1", SCORE_FLOOR),
    Objective("val/samples_f1", True, "val samples F1", SCORE_FLOOR),
    Objective("val/loss", False, "val loss", LOSS_FLOOR),
)}
# prompt-set scores a causal-lm run may be judged on (train.metric_for_best_model=prompt_novel_chrf ...): each
# in [0, 1], larger is better (generation.SCORES); length, repetition and empty share have no "better" end
PROMPT_OBJECTIVE_SCORES = ("chrf", "exact_match")
OBJECTIVES.update({o.key: o for o in (
    Objective(prompt_key(group, m), True, f"{group} prompt-set {m.replace('_', ' ')}", SCORE_FLOOR)
    for group in PROMPT_GROUPS for m in PROMPT_OBJECTIVE_SCORES)})
MACRO_F1 = OBJECTIVES["val/macro_f1"]  # the classifier's default; study.json's val_macro_f1 column holds it alone
DEFAULT = MACRO_F1
# train.metric_for_best_model's values (besides auto): the table's keys without "val/"; which task computes
# which is checked where the task resolves it (train.objective_key, sft.objective_key)
METRIC_CHOICES = tuple(k.removeprefix("val/") for k in OBJECTIVES)
CLASSIFIER_METRICS = ("macro_f1", "weighted_f1", "accuracy", "subset_accuracy", "micro_f1", "samples_f1")
# a causal-lm run computes its val loss always, a classifier's single-label scores when it generates labels
# (data.label_format=generate), the prompt-set scores when it has a prompt set (data.prompt_set)
GENERATED_LABEL_METRICS = ("macro_f1", "weighted_f1", "accuracy")


def lm_metrics(generates_labels: bool, has_prompt_set: bool) -> tuple[str, ...]:
    """train.metric_for_best_model values a causal-lm run computes (besides auto)."""
    return (("loss",) + (GENERATED_LABEL_METRICS if generates_labels else ())
            + (tuple(k.removeprefix("val/") for k in OBJECTIVES if k.startswith("val/prompt_")) if has_prompt_set
               else ()))


# tasks whose run breaks a tie in a larger-is-better objective on the lower val loss: their objectives are coarse
# counts that tie often, a generative classifier's macro-F1 (0.0 at every point until an output names a label) and
# a multi-label run's exact match (subset accuracy, 0.1 at step 8 and at step 24 on 20 val rows, every other score
# and the val loss better at 24), so the first of ties would keep a stale model; a single-label classifier keeps
# the first of ties
LOSS_TIE_BREAK_TASKS = ("causal-lm", "multi_label")


def keep_order(point: Mapping, key: str, task: str | None) -> tuple[float, float] | None:
    """Where a history point stands in the order a run keeps its best model by (a larger tuple is better): its
    objective's score, then, for a task in LOSS_TIE_BREAK_TASKS with a larger-is-better objective, minus its val
    loss (-inf where it is not a finite number). None: the point has no finite objective. The one statement of the
    rule: training keeps by it, early stopping counts by it (Patience) and the report reads an unfinished run's best
    by it, so none of them reads one tie another way."""
    def number(v) -> float:  # a numpy scalar as the float it is; anything else (None, a flag, text): NaN
        if isinstance(v, bool):
            return math.nan
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    o = objective(key)
    score = o.score(number(point.get(key)))
    if score is None:
        return None
    if not (o.higher_is_better and task in LOSS_TIE_BREAK_TASKS):
        return score, 0.0
    # a val loss that is not a finite number (inf, NaN, absent) is the worst tie-break: the history writes inf and
    # NaN as null (store.json_safe), and training's -inf (a later tie kept) against the report's NaN (the earlier
    # kept: no comparison with NaN holds) named different steps as the kept model
    loss = number(point.get("val/loss"))
    return score, (-loss if math.isfinite(loss) else -math.inf)


# the keep_order of "no model kept yet": every point with a finite objective is ahead of it
NOTHING_KEPT = (-math.inf, -math.inf)


def keeps(step: float, key: tuple[float, float] | None, kept: tuple[float, float]) -> bool:
    """Whether a run keeps the model of an eval point at `step` (`key`: its keep_order) in place of the one kept so
    far (`kept`: that one's keep_order, NOTHING_KEPT before any): a *trained* point (step 0 is the base model with a
    fresh head, or the warm start's model: never the kept one) strictly ahead in keep_order, so a tie keeps the
    earlier point. The one statement of the rule: train and sft keep by it (a point whose train loss diverged aside,
    train.diverged) and the report reads an unfinished run's best by it (kept_step)."""
    return step > 0 and key is not None and key > kept


def kept_step(points, key: str, task: str | None) -> float | None:
    """The step of the model a run keeps, read from its history (`points`: eval points in step order, each with a
    `step`): the last point `keeps` takes; step 0's point when no trained point has a finite `key` (the record's
    `best` until a trained model is saved); None when no point has one."""
    kept, step, first = NOTHING_KEPT, None, None
    for p in points:
        s, k = p.get("step"), keep_order(p, key, task)
        if s is None or k is None:
            continue
        first = s if first is None else first
        if keeps(s, k, kept):
            kept, step = k, s
    return step if step is not None else first


# the first step whose evaluation point is a trained model's: step 0's is the untrained model (the base with a fresh
# head, or a warm start's), never a score of the run's training. Early stopping (Patience) and every search rule that
# reads a trial's curve (search.trial.trained_points) count from it.
FIRST_TRAINED_STEP = 1


@dataclass
class Patience:
    """Early stopping's count of evaluations without improvement, in the order the kept model follows (keep_order): a
    point improves on the best so far where its score gains more than `min_gain` (train.early_stopping_threshold) or,
    where keep_order breaks ties on the val loss (LOSS_TIE_BREAK_TASKS), its score is at least the best's and its val
    loss below the lowest seen at that score. The kept model moves to such a point, so counting it as no improvement
    stopped a multi-label run on the step it had just saved. Until a point has a finite objective, every point counts
    as one. Only trained points count (FIRST_TRAINED_STEP on): step 0's (the untrained model, or a warm start's)
    never sets the bar, as the kept model never is it and the HF Trainer's EarlyStoppingCallback, whose first
    evaluation comes after training steps, sets its best_metric there: a warmup's first step runs at learning rate 0,
    so the step-1 point scores no better than step 0's and patience 1 ended the run there, keeping the untrained
    model. The one statement of the rule: train and sft count by it."""

    min_gain: float
    best: tuple[float, float] | None = None  # the keep_order of the last gain, its val-loss part lowered by ties
    since: int = 0  # evaluations since the last improvement

    def count(self, step: float, key: tuple[float, float] | None) -> int:
        """Read one evaluation point (`step`, `key`: its keep_order); the trained evaluations since the last
        improvement (0 before FIRST_TRAINED_STEP: step 0's point is not read)."""
        if step < FIRST_TRAINED_STEP:
            return 0
        best = self.best
        if best is None or key is not None and key[0] > best[0] + self.min_gain:
            self.best, self.since = key, 0
        elif key is not None and key[0] >= best[0] and key[1] > best[1]:  # a tie (or a gain under min_gain)
            self.best, self.since = (best[0], key[1]), 0  # whose val loss fell: the kept model's tie-break
        else:
            self.since += 1
        return self.since


def objective(key: str | None) -> Objective:
    """The objective of a key (None: val macro-F1, as records made before the objective was recorded); a key
    not in the table is read as a [0, 1] score, larger better."""
    if not key:
        return DEFAULT
    return OBJECTIVES.get(key) or Objective(key, True, key, SCORE_FLOOR)


# ---------------------------------------------------------------------------------------------
# the pick's test score

# why a prompt-set objective (val/prompt_novel_chrf ...) has no test score: the prompt set is one set of prompts
# (data.prompt_set), generated and scored the same whatever split a run is evaluated on, so its "test" number is the
# very number the pick was chosen on
PROMPT_SET_ONE_SET = "the prompt set is one set, scored the same whatever the split"
PROMPT_SET_NO_TEST = (f"a prompt-set objective has no held-out test score: {PROMPT_SET_ONE_SET}, so its score on test is "
                      "the number the pick was chosen on")


@dataclass(frozen=True)
class PickTestScore:
    """What a study says of its pick's test score (`pick_test_score`): the metric shown and its value, whether it is the
    objective's own test score (`held_out`), and when it is not, why (`note`)."""

    metric: Objective | None  # the test metric shown (test/subset_accuracy, test/loss ...); None: nothing to show
    value: float | None
    held_out: bool  # the objective's own score on the test split
    note: str = ""  # why what is shown is not the objective's test score ("" when it is, or nothing was scored)

    def text(self, digits: int = 4) -> str:
        """'test loss 1.8647' for the objective's own test score; 'measured on test: test loss 2.1271 (not the
        objective: ...)' for another metric; '' when nothing was scored on test."""
        if self.metric is None or self.value is None:
            return self.note
        shown = f"{self.metric.name} {self.value:.{digits}f}"
        return shown if self.held_out else f"measured on test: {shown} ({self.note})"


def pick_test_score(key: str | None, test: Mapping | None) -> PickTestScore:
    """The pick's test score, the one rule summary's finish decision, `loratune show`, the report and tune's print
    read: the objective's metric on test (test/subset_accuracy for val/subset_accuracy) when it was scored; a
    prompt-set objective never has one (PROMPT_SET_NO_TEST), and what test measured (its loss) is shown as that, never
    as the objective's test score; an objective whose test metric was not scored (an older record) shows the test
    macro-F1 or loss it has, named as itself."""
    o = objective(key)
    test = test or {}

    def scored(k: str) -> bool:
        v = test.get(k)
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    prompt_set = o.key in PROMPT_KEYS
    own = o.on("test")
    if not prompt_set and scored(own.key):
        return PickTestScore(own, float(test[own.key]), True)
    note = PROMPT_SET_NO_TEST if prompt_set else f"{own.name} was not scored"
    other = next((m for m in (MACRO_F1.on("test"), OBJECTIVES["val/loss"].on("test"))
                  if m.key != own.key and scored(m.key)), None)
    return PickTestScore(other, None if other is None else float(test[other.key]), False, note if test else "")
