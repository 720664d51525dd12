"""The diagnosis rule table, as data (protocol sections 3-5).

A rule is a row: an id, a condition over named features (`loratune.features.FEATURES`, or
`COMPARE_FEATURES` for rules that compare runs) with named thresholds, a verdict, the class of knob
it points at, the knob moves, a priority and the ids it suppresses. Conditions are plain data
(`Clause(feature, op, threshold_name)` inside `all_(...)` / `any_(...)` groups), so `loratune rules`
prints them and every finding can say "train loss fell 3.0% over the last half of training; rule
needs < 10.0%". Thresholds live in one named table (`THRESHOLDS`) and can be overridden from YAML
(`load_thresholds`). The engine that evaluates every row is `loratune.diagnose`.

Scopes: `curve` rules give a run its verdict (the protocol's capacity and optimization tables);
`class` rules are per-class findings reported next to it; `eval` rules judge the measurement itself;
`compare` rules judge a set of runs that differ in one knob.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Union

from loratune.errors import UserError, require_file
from loratune.features import (COMPARE_FEATURES, FEATURE_DOMAINS, FEATURES, NO_VAL_METRIC, NOT_APPLICABLE,
                               UNIT_DOMAINS, VAL_LOSS_NOISE_FLOOR)
from loratune.moves import R, adapter_only, is_move, move
from loratune.objectives import NOISE_BAND

OPS = ("<", "<=", ">", ">=")
KNOB_CLASSES = ("capacity", "optimization", "data", "budget")
SCOPES = ("curve", "class", "eval", "compare")
# the knobs `compare` groups runs by (runs that differ in exactly one of them), in the order it reports them
COMPARE_KNOBS = ("learning_rate", "r", "lora_alpha", "seed")


@dataclass(frozen=True)
class Clause:
    """`feature op threshold`, e.g. Clause("train_loss_late_drop", "<", "plateau_late_drop_max").

    `required`: when the feature is missing the rule is not evaluated at all (instead of firing with
    lowered confidence)."""

    feature: str
    op: str
    threshold: str
    required: bool = False

    def leaves(self) -> Iterator["Clause"]:
        yield self


@dataclass(frozen=True)
class Cond:
    """`all` / `any` of clauses and nested conditions."""

    mode: str
    items: tuple[Union[Clause, "Cond"], ...]
    why: str = ""  # a route's reading in a few words, said with a finding that this route made fire
    # a gate: says which runs a route is for (a full fine-tune below the top of its lr range), no evidence of the
    # verdict: its clauses never count as positive evidence (diagnose.evaluate_rule), as KIND_FEATURES' do not
    gate: bool = False
    # a route of its own, read as a rule of its own would be: with its signal missing it stays open (the rule fires
    # tentatively on its evidence alone) however its sibling routes fail (diagnose._eval)
    alone: bool = False

    def leaves(self) -> Iterator[Clause]:
        for item in self.items:
            yield from item.leaves()


def c(feature: str, op: str, threshold: str, required: bool = False) -> Clause:
    return Clause(feature, op, threshold, required)


def all_(*items: Clause | Cond, why: str = "", gate: bool = False, alone: bool = False) -> Cond:
    return Cond("all", tuple(items), why, gate=gate, alone=alone)


def any_(*items: Clause | Cond, why: str = "", gate: bool = False) -> Cond:
    return Cond("any", tuple(items), why, gate=gate)


@dataclass(frozen=True)
class ValueRange:
    """The values a threshold of one unit can mean something at: below `lo` (or at it, `lo_exclusive`) or above `hi`
    a rule reading it fires on every run or on none (a loss ratio under 0; flag_on 0 makes every yes/no feature yes,
    so a healthy run is called diverged)."""

    lo: float | None = None
    hi: float | None = None
    lo_exclusive: bool = False
    why: str = ""
    hi_exclusive: bool = False

    def problem(self, value: float) -> str | None:
        """What is wrong with `value` (a finite number), or None."""
        low = self.lo is not None and (value < self.lo or (self.lo_exclusive and value == self.lo))
        high = self.hi is not None and (value > self.hi or (self.hi_exclusive and value == self.hi))
        if low or high:
            parts = ([f"{'>' if self.lo_exclusive else '>='} {self.lo:g}"] if self.lo is not None else []) + \
                    ([f"{'<' if self.hi_exclusive else '<='} {self.hi:g}"] if self.hi is not None else [])
            return f"a number {' and '.join(parts)} ({self.why})"
        return None


# unit -> the range its thresholds take. Units of signed quantities (gains and drops in points, shares of a move,
# slopes, gaps, noise units) take any finite number: a negative one still reads as a condition
UNIT_RANGES: Mapping[str, ValueRange] = MappingProxyType({
    "flag": ValueRange(0.0, 1.0, lo_exclusive=True, why="yes/no features are 0 or 1; the default 0.5 splits them"),
    "ratio": ValueRange(0.0, why="a ratio of losses, counts or effects is never negative"),
    "count": ValueRange(0.0, why="it counts evals, values or pairs"),
    "runs": ValueRange(0.0, why="it counts runs"),
    "lr": ValueRange(0.0, why="a learning rate is never negative"),
    "perplexity": ValueRange(1.0, why="a perplexity is exp(a loss), never below 1"),
})
ANY_FINITE = ValueRange(why="any finite number")


@dataclass(frozen=True)
class Threshold:
    name: str
    value: float
    unit: str  # same unit vocabulary as the features (for formatting); UNIT_RANGES: the values it takes
    doc: str

    @property
    def allowed(self) -> ValueRange:
        return UNIT_RANGES.get(self.unit, ANY_FINITE)


@dataclass(frozen=True)
class Rule:
    id: str
    scope: str
    when: Cond
    verdict: str
    knob_class: str
    moves: tuple[str, ...]
    priority: int
    suppresses: tuple[str, ...] = ()
    confidence: float = 0.8  # before lowering for missing signals and thin margins
    source: str = ""  # the protocol line the row implements
    caveat: str | None = None
    # compare rules: the knob group the rule reads (learning_rate, r, lora_alpha, seed); its notes show that group, and
    # its moves, written for a better run at the knob's larger value, are turned towards the group's better run
    # (loratune.moves.towards)
    knob: str | None = None
    # the moves for a full fine-tune (run.json `method: full`), where `moves` turn knobs only an adapter has
    # (moves.adapter_only: r, targets, lora_dropout); None: `moves` without those
    full_moves: tuple[str, ...] | None = None
    # the verdict and caveat for a full fine-tune, where `verdict` / `caveat` speak of LoRA's knobs; None: the same
    full_verdict: str | None = None
    full_caveat: str | None = None

    def moves_for(self, method: str | None, lr_high: bool = False) -> tuple[str, ...]:
        """The moves of this row for a run trained by `method` ("full": every weight, no adapter knobs); `lr_high`: its
        lr at or above high_lr_min read for its method (thresholds_for_method), where a full fine-tune's lr already
        sits above its range and no move raises it (LR_UP_MOVES)."""
        if method != "full":
            return self.moves
        moves = self.full_moves if self.full_moves is not None else tuple(m for m in self.moves if not adapter_only(m))
        return tuple(m for m in moves if not (lr_high and is_move(m) and move(m).id in LR_UP_MOVES))

    def verdict_for(self, method: str | None) -> str:
        return self.full_verdict if method == "full" and self.full_verdict is not None else self.verdict

    def caveat_for(self, method: str | None) -> str | None:
        """The caveat for a run trained by `method`: full_caveat where set; for a full fine-tune whose moves raise no
        rank, the caveat without PAIR_CAVEAT (its pair experiment raises a rank a full fine-tune does not have)."""
        if method != "full":
            return self.caveat
        if self.full_caveat is not None:
            return self.full_caveat
        if self.caveat is None or PAIR_CAVEAT not in self.caveat \
                or any(move(m).knob == R for m in self.moves_for(method) if is_move(m)):
            return self.caveat
        return self.caveat.replace(PAIR_CAVEAT, "").removesuffix(PAIR_THEN).strip() or None

    def features(self) -> list[str]:
        return list(dict.fromkeys(cl.feature for cl in self.when.leaves()))


# the moves that raise the lr: none is said to a full fine-tune whose lr is already above its range (Rule.moves_for)
LR_UP_MOVES = ("lr-x2",)


# Protocol 1's learning-rate ranges, stated once: the usual range, LoRA's centre, and full fine-tuning's (LoRA wants
# ~10x the full-fine-tuning lr: its centre / 10). The rules' texts and the tune protocol's full-fine-tuning lr
# probe (search.protocol.settings: FULL_LR_MIN, FULL_LR_MAX) read them here.
USUAL_LR_RANGE = (1e-5, 1e-3)
LORA_LR_CENTRE = (1e-4, 5e-4)
LORA_OVER_FULL_LR = 10
FULL_FT_LR_RANGE = tuple(float(f"{x / LORA_OVER_FULL_LR:.3g}") for x in LORA_LR_CENTRE)  # 1e-5..5e-5


# the lr thresholds set against LoRA's range (protocol 1): a full fine-tune, whose range sits LORA_OVER_FULL_LR x lower,
# reads each at 1/LORA_OVER_FULL_LR of its value (given or default), here and nowhere else
LORA_RANGE_LR_THRESHOLDS = ("collapse_lr_min", "high_lr_min", "lora_lr_floor")


def thresholds_for_method(values: Mapping[str, float], method: str | None) -> Mapping[str, float]:
    """The thresholds a run trained by `method` is read with: for a full fine-tune ("full"), LORA_RANGE_LR_THRESHOLDS
    divided by LORA_OVER_FULL_LR (protocol 1: LoRA wants ~10x the full-fine-tuning lr); for any other run, `values`."""
    if method != "full":
        return values
    return {**values, **{n: values[n] / LORA_OVER_FULL_LR for n in LORA_RANGE_LR_THRESHOLDS if n in values}}


def _lr_range(lo_hi: tuple) -> str:
    return "..".join(f"{x:.0e}".replace("e-0", "e-") for x in lo_hi)


_USUAL, _LORA_CENTRE, _FULL = _lr_range(USUAL_LR_RANGE), _lr_range(LORA_LR_CENTRE), _lr_range(FULL_FT_LR_RANGE)
_FULL_READS = (f"Set against LoRA's range: a full fine-tune (method full) reads it at 1/{LORA_OVER_FULL_LR} of its "
               f"value (full fine-tuning's range {_FULL}; rules.thresholds_for_method).")


def _t(name: str, value: float, unit: str, doc: str) -> Threshold:
    return Threshold(name, float(value), unit, doc)


_THRESHOLDS = (
    # divergence and instability
    _t("nonfinite_min", 1, "count", "Any non-finite loss or gradient value."),
    _t("flag_on", 0.5, "flag", "A yes/no feature is yes."),
    _t("diverged_loss_ratio", 1.5, "ratio", "Train loss ending at this multiple of its start has blown up."),
    _t("diverged_loss_floor", 1.0, "loss", "A train loss that rose by diverged_loss_ratio has blown up only when it "
       "ends at least this high: a loss that starts near 0 (a model already fitted, a resumed run) can multiply "
       "and still sit far below any untrained value (0.0009 -> 0.0068 is memorisation wobbling, not an explosion)."),
    _t("diverged_chance_ratio", 2.0, "ratio", "Train loss ending at this multiple of ln(classes) has blown up, even "
       "when the first logged loss already includes the explosion (a uniform guess scores 1x)."),
    _t("diverged_val_loss_ratio", 10.0, "ratio", "Val loss ending at this multiple of its first eval has blown up "
       "when the val metric also ended below where it began (diverged_val_metric_gain_max): read only where the "
       "train loss is not logged (logging_strategy='no'; a logged train loss decides by its own routes). Overfitting's confident errors lift a val loss a few "
       "times over its minimum while the metric keeps what it learned; an explosion takes both. Set at twice the "
       "largest ratio an overfit run of the corpus reached (4.9, fold T's DanielHevdeli, its metric below its start); "
       "no corpus run reaches it (bench/diagnose_external.py: no verdict moved), so synthetic curves test it."),
    _t("diverged_val_metric_gain_max", 0.0, "points", "A val metric that ended below its first eval has lost all "
       "it learned (diverged_val_loss_ratio's second half)."),
    _t("collapse_pred_share", 0.5, "fraction", "Share of val predictions in one class that counts as collapse."),
    _t("collapse_loss_vs_chance", 0.8, "ratio", "Train loss at least this share of ln(classes): pinned near chance."),
    _t("collapse_peak_chance_ratio", 1.5, "ratio", "A train loss that reached this multiple of ln(classes) and "
       "ended pinned near it collapsed under too high an lr (read without per-class numbers: a too-small lr "
       "never takes the loss above a uniform guess). A logged value is a window's mean, so its steps went higher: "
       "half again above a uniform guess is already far above it (fold AC's bencejdanko: Mistral-7B adapter on "
       "binary sentiment at 2.6e-4, a window at 1.98 x ln 2, ending at 1.03 x ln 2 with the F1 back at the "
       "one-class 0.333 mid-run; the corpus reads the same from 1.3 to 1.9, and 2.0 left that run healthy)."),
    _t("spike_peak_chance_ratio", 1.5, "ratio", "A train loss whose lasting peak (train_loss_spike_vs_chance: the "
       "moving mean train_loss_max_rise reads, so one window's batch noise on a long per-step curve is no peak) "
       "climbed back up to this multiple of ln(classes) (a uniform guess) mid-run was thrown out of what it had learned by too large a step (protocol 4: "
       "loss oscillates -> lr too large; 5b: an explosion is a train loss above ln(classes)), even where it recovered "
       "as a decaying schedule shrank the step: a too-small lr never takes the loss above a uniform guess, and lr x2 "
       "makes the spike a collapse (MiniLM LoRA on 12 BANKING77 classes at 1.5e-2: 2.06 -> 1.28, then a window at "
       "2.39 x ln 12, the val loss 4.04, F1 0.721 at the end as the lr decayed; at 3e-2 it collapsed, F1 0.054). "
       "collapse_peak_chance_ratio's level: half again above a uniform guess is already far above it..."),
    _t("spike_rise_min", 0.5, "fraction", "...and the climb back up from its running minimum at least this share of its "
       "start: the peak is a spike after a fall, not a first window that began high (a fresh head starts at "
       "ln(classes), so a peak at spike_peak_chance_ratio after a fall has climbed half its start or more)..."),
    _t("spike_val_loss_chance_min", 1.0, "ratio", "...and the val side saw it: at the eval nearest the peak the val "
       "loss above this multiple of ln(classes), a model thrown out of what it had learned (the 1.5e-2 run: val loss "
       "4.04 = 1.63 x ln 12, F1 0.18), or the val metric below its best before by drop_se_min; one noisy window of "
       "a healthy run leaves the val side where it was (a binary classifier logged every step at batch 4: a window "
       "at 1.5 x ln 2 on 22 of 30 simulated seeds, val loss 0.3, F1 0.9 throughout)."),
    _t("collapse_lr_min", 1e-2, "lr", "A learning rate this large (AdamW) that leaves the loss pinned at chance or "
       "the val metric where it started is the cause: it is 10x the top of LoRA's usual range (protocol 1: "
       f"{USUAL_LR_RANGE[0]:g}..{USUAL_LR_RANGE[1]:g}, centre {LORA_LR_CENTRE[0]:g}..{LORA_LR_CENTRE[1]:g}), "
       f"full fine-tuning 10x lower; a too-small lr is never this large. {_FULL_READS}"),
    _t("never_learned_metric_max", 0.05, "points", "A val metric (accuracy, F1) whose best stayed below this never "
       "learned the val task at all (darekpe79, fold H: entity F1 0.000, 0.000, 0.012 on a NER run whose train loss "
       "sat at the majority 'O' tag's level): with no generalisation to lose, a rising val loss is the model growing "
       "sure of its one-class answer (protocol 3-4's collapse), not overfitting, which needs a fit that generalised "
       "and then lost it (protocol 3)."),
    _t("no_gain_max", 0.05, "points", "The val metric gaining less than this from its first eval: it never learned "
       "(read so by lr-too-large only where the first eval left at least this much room below a perfect score, so "
       "that it could have been gained at all: a token tagger at lr 1e-2 scored 0.993 at its first eval, 1.000 "
       "after, its val loss -99.7% to its low at the last eval, and read lr-too-large)."),
    _t("metric_dead_max", 0.0, "points", "A val metric never above this at any eval (an F1 of exactly 0 throughout): "
       "the model never predicted the classes it scores; no such run is healthy."),
    _t("collapse_loss_rise", 0.1, "fraction", "A collapse from too high an lr shows the train loss climbing back "
       "up by this share of its start (a too-small lr shows a smooth fall instead)."),
    _t("collapse_val_rise_share", 0.35, "fraction", "...or the val loss moving up this share of the time."),
    _t("collapse_repeat_share_max", 0.5, "fraction", "Without per-class numbers, the val metric logging one and the "
       "same value at more than this share of the evals (on more than few_evals_max evals): the predictions did not "
       "change (protocol 5b: a collapse is a loss pinned near ln(classes) with the predictions on one class)."),
    _t("frozen_loss_repeats_min", 3, "count", "A val loss that logged one and the same value (to the printed digit) at "
       "this many evals, more than collapse_repeat_share_max of them, came from outputs that stopped moving: a mean "
       "over an eval set does not repeat while the model's predictions change (fold AE's will-elsen: 1.301563 at 3 "
       "of 5 evals, at the label prior's entropy; fold AA's NLP613-Metaplexia: 6.238281 = ln 512 at all 3, a span "
       "head uniform over the positions). Two equal values can be a coincidence of rounding; three are not."),
    _t("preference_start_ratio_max", 1.0 + VAL_LOSS_NOISE_FLOOR, "ratio", "A DPO val loss whose lowest eval stays "
       "above this multiple of ln 2 (the loss where the policy is its reference) never made the policy better than "
       "where it started on held-out pairs (fold AE's Jason-Toskov: Llama-3-8B QLoRA DPO at 5e-5, 0.876 -> 0.942 after "
       "the warm-up and back only to 0.749 as the cosine decayed; fold V's PranavGrandhi, 0.708 at best, 1.021x). "
       f"Above ln 2 by more than a val loss's noise floor (features.VAL_LOSS_NOISE_FLOOR, {VAL_LOSS_NOISE_FLOOR:.1%}): "
       "a policy that did not "
       "move is its reference, ln 2 to float32's last digit (TRL DPO at lr 1e-7: 0.6931471824645996 at every eval, "
       "1 + 3e-9 of ln 2, every reward margin 0.0), and one that creeps toward ln 2 from just above it is a too-small "
       "lr's pace (at lr 1e-5: 1.00067 -> 1.00013 of ln 2, margins -0.0009 -> -0.0002), not a policy made worse."),
    _t("pinned_val_drop_max", 0.05, "fraction", "...or, for frozen predictions, a val loss that fell less than this "
       "from its first eval to its minimum: pinned where the first eval left it (a class prior's entropy, not "
       "ln(classes), when the classes are unbalanced and their count unknown: fold N's pramanik-souvik, 0.631 -> "
       "0.617 over 10 epochs beside an accuracy of 0.6929 at every eval)."),
    _t("frozen_rise_share_min", 0.0, "fraction", "...and a val loss that did not fall at every eval (some of its "
       "movement upward): a loss that creeps down at each eval is moving, a too-small lr's pace, not a pinned one "
       "(fold R's Zaitun-dev: a warmup longer than the run, -0.4% in six falls)."),
    _t("pinned_loss_ratio_min", 0.98, "ratio", "...while the train loss ended at this share of its start or higher: it "
       "did not fall at all (features.IMPROVE_MIN_REL, 2%, is the least relative move counted as a fall): pinned, "
       "not protocol 4's slow, steady fall."),
    _t("usual_lr_min", 1e-5, "lr", f"...at a peak lr at or above the low end of protocol 1's usual range ({_USUAL}, "
       f"full fine-tuning {_FULL}): steps of a usual size that moved no prediction are a collapse; steps below it "
       "that moved none are too small (a warmup that never reached an lr: macyrm, fold E). A LoRA adapter's floor is "
       "lora_lr_floor instead (its range sits 10x higher)."),
    _t("lr_far_below_max", 3e-6, "lr", "A peak lr under a third of usual_lr_min, the low end of protocol 1's range "
       f"({_USUAL}; full fine-tuning {_FULL}): for a classifier, steps too small for any method whatever the "
       "curve's decayed tail shows (a large language model's full fine-tuning may sit lower; classifiers only)."),
    _t("osc_loss_rise", 0.15, "fraction", "Oscillation: train loss climbs back above its running minimum by "
       "this share of its start."),
    _t("osc_metric_drop", 0.05, "points", "Oscillation: val metric falls this much between two evals."),
    _t("osc_metric_drop_se", 3.0, "se", "...and that fall is this many standard errors."),
    _t("rebound_min", 0.2, "fraction", "Oscillation without a noise band to beat: after its lowest point the train "
       "loss lives this far above it on average (a falling or settled loss sits within batch noise of its low; "
       "between 0.13 and 0.21 in the external corpus's lr-too-large and healthy runs, "
       "bench/results/diagnose_external.md)."),
    _t("rebound_min_fraction_max", 0.6, "fraction", "...and the low came at most this far into the run (a late low "
       "with a few windows after it is a noise wiggle of a settled loss)."),
    # capacity
    _t("fit_loss_vs_chance_max", 0.1, "ratio", "Train loss below this share of ln(classes) (or of its start, "
       "which is ~ln(classes) for a fresh head): memorized."),
    _t("fit_metric_min", 0.95, "points", "Train-subsample metric at or above this: memorized."),
    _t("fit_loss_over_start_max", 0.25, "ratio", "Train loss below this share of its start: the training set is "
       "being memorized (loss-only runs, where no train-subsample metric exists)."),
    _t("val_loss_rise_min", 0.1, "fraction", "Val loss rising this much from its minimum counts as rising."),
    _t("short_turn_fraction_min", 0.5, "fraction", "On a curve of few_evals_max (3) evals, a val-loss minimum this far "
       "into the run or later, not at the end, is at the second eval: the loss fell, then turned at the last."),
    _t("rise_noise_min", 2.0, "se", "...and the rise must clear the noise band: this many noise units of a "
       "difference of two points (finetune-doctor's band is 2x the eval's step-to-step noise)."),
    _t("val_loss_rise_small_min", 0.03, "fraction", "In a run scored by its losses alone, a smaller val-loss rise "
       "from its minimum that still counts as rising when it clears `rise_noise_strong_min` while the train loss "
       "keeps falling (protocol 5b: 'stays above it by more than the noise'; the 10% floor guards rises near the "
       "band)."),
    _t("rise_noise_strong_min", 4.0, "se", "...twice the band a rise must clear: this many noise units of a difference "
       "of two points."),
    _t("val_metric_drop_min", 0.02, "points", "Val metric ending this far below its best counts as falling."),
    _t("drop_se_min", 2.0, "se", "A fall of the val metric must reach this many standard errors to count."),
    _t("memorised_perplexity_max", 1.1, "perplexity", "A language model whose per-token perplexity on its own training "
       "completions is at most this (train loss <= 0.095 nats; a pretrained model starts at 2-4 nats) has memorised "
       "them: with the val loss no longer setting new lows, more epochs only memorise (the TRL overfit run of the "
       "external corpus ends at 1.009, its healthy sibling at 1.55)."),
    _t("memorised_gap_min", 0.1, "loss", "...and the val loss at least this far (nats per token) above the train "
       "loss: new completions are predicted worse than the training ones (a task whose outputs nearly copy their "
       "inputs, e.g. text rewriting, has a train and a val loss near 0 together: low entropy, not memory)."),
    _t("prompt_gap_widening_min", 0.05, "points", "The familiar-minus-novel prompt-set chrF gap widening this much "
       "from its narrowest point (5 points of chrF) counts as widening..."),
    _t("prompt_drift_min", 0.03, "points", "...and the novel prompts' chrF ending this far below its best counts as "
       "drifting (both also beyond their noise bands). Provisional: set from the chrF spread of a 20-prompt group, "
       "not fitted on runs yet."),
    _t("vague_len_ratio_max", 0.6, "ratio", "Outputs at most this share of the references' length..."),
    _t("vague_capped_share_max", 0.2, "fraction", "...with fewer than this share of the outputs cut at "
       "train.max_new_tokens: vague answers stop short on their own, so a short length that capped outputs make "
       "(a perfect model read len_ratio 0.5 with the cap at half the references' length) is the cap's, not the "
       "rank's (raise train.max_new_tokens). A fifth: len_ratio is a ratio of totals, and outputs cut before the "
       "references' end carry most of the missing words. Provisional, not fitted on runs..."),
    _t("vague_score_max", 0.25, "points", "...with chrF below this on familiar and on novel prompts: short, vague, "
       "over-general answers on both (protocol 9: rank or training too small). Provisional, not fitted on runs."),
    _t("looping_repetition_min", 0.2, "fraction", "A fifth of the outputs' word 3-grams being repeats: greedy outputs "
       "loop (normal prose repeats few 3-grams)..."),
    _t("looping_rise_min", 0.1, "fraction", "...and that share rose this much from its lowest eval point."),
    _t("early_turn_fraction_max", 0.5, "fraction", "A val loss whose minimum came this early while the train loss was "
       "still falling over the second half: the train/val divergence is the fit (a train loss near zero is not "
       "needed: full fine-tuning on large data, or a class-weighted loss, never gets there)."),
    _t("fit_after_turn_share_min", 0.5, "fraction", "...or most of the train loss's fall came after the val loss's "
       "minimum (that came early): the model fitted its training rows while new ones got worse, the widening "
       "val-minus-train gap of protocol 5b, even when the train loss is level by the second half (a seq2seq run of "
       "fold D, bench/results/diagnose_external_notes.md)."),
    _t("lm_late_fall_min", 0.02, "fraction", "A language model's train loss falling at least this share over the "
       "second half is still fitting its training rows (the 2% a new low must beat to count as progress, "
       "features.IMPROVE_MIN_REL): with its val loss turned in the first half, the val-minus-train gap widens (5b), "
       "though an entropy floor (protocol 9) keeps the fall from plateau_late_drop_max's 10% (Bhattars1 6%, Kyzu07 "
       "8%, fold I); a level loss moves less (a BART run of fold D, al-Reza89, level after 45%: 0.4%)."),
    _t("late_min_fraction", 0.9, "fraction", "Val loss at its minimum this late: the run has not started to "
       "degrade (a metric dip then is noise). Likewise a train loss at its (smoothed) minimum this late has not "
       "climbed back up: a rise of one window on the way down is batch noise, not protocol 4's oscillation."),
    _t("overfit_gap_min", 0.15, "points", "Train/val metric gap at or above this is large."),
    _t("novel_gap_min", 0.10, "points", "Familiar minus novel val macro-F1 at or above this is a phrasing gap."),
    _t("novel_gap_growth_min", 0.0, "points", "The familiar-novel gap must not have shrunk since the first eval."),
    _t("familiar_fit_min", 0.90, "points", "Familiar-phrasing val macro-F1 at or above this counts as fitted."),
    _t("compound_gap_min", 0.25, "points", "Single-intent rows out-scoring compound (multi-intent) rows by this much "
       "in exact match."),
    _t("single_fit_min", 0.85, "points", "Single-intent val exact match at or above this: single intents are learned."),
    _t("slices_low_max", 0.60, "points", "Familiar and novel val macro-F1 both below this: both low."),
    _t("plateau_late_drop_max", 0.1, "fraction", "Train loss falling less than this over the last half: plateaued."),
    _t("rise_trend_min", 0.7, "points", "A val loss's rank trend (Kendall tau, at least 6 evals from its minimum on) at "
       "least this: it climbed as a whole (a flat noisy tail reaches 0.73 by chance under 3% of the time)."),
    _t("plateau_late_share_max", 0.25, "fraction", "Less than this share of the val loss's fall in the last half: "
       "the fall happened early and flattened."),
    _t("underfit_min_drop", 0.05, "fraction", "Val loss fell at least this much: the model learned, then "
       "stopped (a loss that never moved is an optimization problem, not a capacity limit)."),
    _t("high_lr_min", 1.5e-3, "lr", "An AdamW lr above the top of LoRA's usual range (protocol 1: "
       f"{USUAL_LR_RANGE[0]:g}..{USUAL_LR_RANGE[1]:g}, centre {LORA_LR_CENTRE[0]:g}..{LORA_LR_CENTRE[1]:g}) "
       "that still leaves the train loss stuck high and flat: the step is not what is missing, the "
       "adapter's capacity is (the external corpus's r=1-2 single-module adapters at 2e-3..1e-2). A full fine-tune "
       "has no capacity to add: underfit-capacity reads it only below this lr, where learning_rate x2 is a step "
       f"inside its range. {_FULL_READS}"),
    _t("stuck_loss_ratio_min", 0.6, "ratio", "...stuck high: the train loss ended at this share of its start or more..."),
    _t("stuck_val_drop_max", 0.1, "fraction", "...and the val loss fell less than this from its first eval to its "
       "minimum (a val loss still falling by more is a run that is learning: prompt tuning runs at lr 3e-2)."),
    _t("underfit_fit_max", 0.6, "points", "Train-subsample metric below this: the model cannot fit training data."),
    _t("underfit_loss_vs_chance_min", 0.3, "ratio", "Train loss still at this share of ln(classes) (or of its "
       "start) or more."),
    _t("underfit_gap_max", 0.1, "points", "Train/val metric gap below this is small."),
    _t("underfit_metric_max", 0.6, "points", "Val metric below this is low."),
    _t("flat_per_epoch_max", 0.02, "per_epoch", "Val metric gaining less than this per epoch late: more epochs "
       "change nothing."),
    # optimization
    _t("slow_drop_max", 0.3, "fraction", "Val loss falling less than this (start to min) over the run: slow "
       "(meaningful when the first eval is at step 0, as in loratune runs, and for a classifier, whose fresh head "
       "starts near ln(classes); a language model's pretrained loss sits above an entropy floor and may lose far "
       "less while learning well: LLM SFT runs of folds D and F labelled healthy fell 6% and 28%)."),
    _t("early_eval_fraction_max", 0.05, "fraction", "A first eval at most this far into the run measures the "
       "fall from the start (a Trainer run's first eval, one epoch in, does not)."),
    _t("slow_runs_to_fit_min", 2.0, "runs", "At its late pace the train loss needs at least this many more run "
       "lengths to reach a tenth of its start: far from what the run shows is reachable."),
    _t("lora_lr_floor", 1e-4, "lr", "The low end of LoRA's usual learning rate (protocol 1: AdamW, LoRA centre "
       f"{_LORA_CENTRE}, about {LORA_OVER_FULL_LR}x full fine-tuning's {_FULL}; the centre moves down with model size, "
       "and 1e-4 is "
       "where QLoRA-scale 7B-65B runs sit). A LoRA run below it that learned little (train loss down less than "
       "healthy_loss_drop_min (a language model: or from its first eval on), val loss less than "
       "healthy_val_loss_drop_min, "
       "still at its low at the end, its plan run to at least plan_cut_max) is read "
       "as too small a step: the lr prior of the fold-D reviewers (bench/results/diagnose_external_notes.md). "
       f"{_FULL_READS}"),
    _t("still_train_ratio_min", 0.9, "ratio", "Nothing moved: the train loss ended at this share of its start or "
       "higher..."),
    _t("still_val_drop_max", 0.03, "fraction", "...and the val loss fell less than this from its first eval to its "
       "minimum: the weights barely changed (an lr that is 10-100x too small; or the adapter is not being updated)."),
    _t("still_metric_max", 0.6, "points", "...while the val metric, where logged, stayed below this (a run that is "
       "already good and flat has nothing left to learn, not too small a step)."),
    _t("steady_late_share_min", 0.3, "fraction", "At least this share of the val loss's fall in the last half: "
       "still falling as fast as early (steady, not plateaued)."),
    _t("steady_rise_share_max", 0.2, "fraction", "Val loss moving up at most this share of the time: steady."),
    _t("still_falling_min", 0.0, "fraction", "Val loss fell over the last half (more than this)."),
    # budget
    _t("late_best_fraction_min", 0.72, "fraction", "Best val metric this late in the run: the run ended too soon "
       "(0.8 before; fitted on fold A of the external corpus, bench/results/diagnose_external.md)."),
    _t("few_evals_max", 3, "count", "With this few eval points the metric's 'new high' is one comparison, mostly "
       "inside its noise; the val loss (continuous) says whether the run was still improving."),
    _t("remaining_gain_min", 0.02, "fraction", "A run is undertrained only when its val loss, extrapolated "
       "from its recent falls, still has this share of itself to lose (a fall that halves at each eval is converging: "
       "more epochs buy little; the same 2% a new low must beat to count as progress, features.IMPROVE_MIN_REL)."),
    _t("remaining_noise_min", 2.0, "se", "...and, read on the val loss (a run with no val metric), that remaining fall "
       "reaches this many noise units of a difference of two points: inside the band (rise_noise_min's), the better "
       "loss more training promises could not be told from the one reached (protocol 5b: noise first), so the run has "
       "converged, not stopped early (reviewers of folds D and F called such runs healthy: 'gains shrinking to "
       "nothing as the lr reaches 0', bench/results/diagnose_external_notes.md)."),
    _t("tail_noise_points_min", 10, "count", "...a noise band to hold it against needs this many val-loss points: the "
       "jitter is read from the curve's second half from 5 points on (features.JITTER_TAIL_POINTS); on fewer it is "
       "read over the whole curve and takes in the curve's bend, so a shorter curve's 'within noise' is no measurement "
       "and its convergence is not claimed, unless its recent falls are no falls (val_loss_remaining_gain 0: the last "
       "window's mean fall is a rise, the curve stopped by its own numbers; fold G's arminwitte, 4 evals, the last "
       "+0.005 above its minimum)."),
    _t("late_gain_se_min", 2.0, "se", "A run with a val metric is read on the metric: its last third's new high "
       "must beat the earlier best by this many standard errors (drop_se_min's band: inside it two numbers are a tie, "
       "protocol 5b) to say the run was still improving; a smaller gain is read on the val loss like a loss-only run "
       "(converged when its remaining fall is inside the noise band or a sliver of the loss). A metric creeping +1 pt "
       "(1.2 SE) over the last third of 30 epochs while the val loss has 0.8% left is converged (fold G, rdavidm42); "
       "one jumping 3.2 SE at the last evals is not (fold A, oos-triple-slow-r4)."),
    _t("zero_loss_max", 0.0035, "loss", "A val loss at or below this (nats per row, or per token) leaves nothing "
       "to gain that counts: a misclassified row costs at least ln 2, so a classifier's val error rate is at most the "
       "loss / ln 2 = 0.5 point, the smallest difference the protocol counts (section 6; features.METRIC_NOISE_FLOOR), "
       "and a language model already gives the right token 99.65% on average. Its falls, however steady in relative "
       "terms, are not a run stopped early (MosheOfer1, fold G: 0.0033 -> 0.0030 over 7 evals as the lr decays)."),
    _t("metric_ceiling_max", 0.995, "points", "A val metric (accuracy, F1: 1 at best) whose best is at or above this "
       "has under 0.5 point left to gain, the smallest difference the protocol counts (section 6; "
       "features.METRIC_NOISE_FLOOR): however steady its last rise, more epochs buy nothing that counts, so the run is "
       "not undertrained (kmanoj845, fold H: accuracy 0.9874 -> 0.9987, a new high at 8 SE, 0.13 point left)."),
    _t("plan_cut_max", 0.5, "fraction", "A run that stopped before this share of its own planned steps, its val loss "
       "still falling to a low at the last eval, is undertrained even when its logged falls shrink: most of its "
       "schedule (and of a decaying schedule's lr budget) never ran, so a fall extrapolated from the logged pace reads "
       "a cut schedule, not convergence (protocol 5: still falling -> learning; amerob, fold F: 30% of its plan)."),
    _t("late_val_drop_min", 0.03, "fraction", "Val loss still falling this much over the last half."),
    # healthy
    _t("healthy_gain_min", 0.1, "points", "Val metric gaining at least this from the start."),
    _t("healthy_loss_drop_min", 0.3, "fraction", "Train loss falling at least this much."),
    _t("healthy_val_loss_drop_min", 0.1, "fraction", "...or, without a val metric, the val loss falling at least "
       "this much from its first eval to its minimum."),
    _t("healthy_gain_se_min", 2.0, "se", "...or, for a run with a val metric, the metric gaining this many noise "
       "units (its standard error) from its first eval to its best, ending within drop_se_min of it, the val loss "
       "within its noise band of its minimum and the train loss down healthy_loss_drop_min: improvements count beyond noise (protocol "
       "5b), and what a metric can gain depends on the task's ceiling (an 11-label exact match near 0.27), which one "
       "curve lacks, as healthy_drop_noise_min says of the val loss (HeavY-Futhark, fold I: +4.1 points at 5 SE)."),
    _t("healthy_drop_noise_min", 2.0, "se", "...or, for any kind of run, the val loss falling this many noise units "
       "of a difference of two points from its first eval to its minimum (the band a rise must clear, "
       "rise_noise_min), ending within that band of its best, the train loss falling too."),
    _t("healthy_metric_moved_se_min", 1.0, "se", "A run that logged a val metric over more than few_evals_max evals, the "
       "metric not at its ceiling (metric_ceiling_max), is not read healthy (eval-metric-unmoved suppresses it) when "
       "its val loss fell beyond its band while that metric rose less than this many noise units above its first "
       "eval: a loss that fell while the task's own metric never left its noise band measures something else "
       "(padding tokens scored, a metric stuck at one output; protocol 5b). Munna-Prasad-Gupta, "
       "fold Z: t5 En->Hi, val loss -12%, BLEU 0 at every eval, exact match +0.2 point at 0.5 SE; johnkidsm, fold Z: "
       "whisper on 6 clips, val loss -15%, word accuracy back at its first eval's 0.621."),
    # per class
    _t("confused_count_min", 3, "count", "A confused pair needs this many val errors to count."),
    _t("confused_rate_min", 0.3, "fraction", "Share of a class's val rows lost to one other class."),
    _t("confused_persist_min", 0.6, "fraction", "Share of the top confused pairs that did not improve."),
    _t("tail_count_ratio_min", 2.0, "ratio", "Head classes with at least this multiple of the tail's training "
       "rows: the data has a long tail."),
    _t("tail_gap_min", 0.3, "points", "Head classes out-recalling tail classes by this much."),
    _t("tail_recall_max", 0.4, "points", "Tail classes' mean val recall at or below this."),
    _t("symmetric_pairs_min", 1, "count", "Class pairs confused in both directions on training rows."),
    _t("noise_fit_min", 0.7, "points", "Label noise: the model fits most training rows (train metric >= this)..."),
    _t("noise_fit_max", 0.97, "points", "...but not all of them (train metric <= this)."),
    # measurement
    _t("eval_se_max", 0.025, "points", "Val metric standard error at or above this: differences under 2 SE "
       "(5 points) cannot be told from noise."),
    # comparisons
    _t("never_left_chance_min", 0.95, "ratio", "Every compared run's final train loss at this share of ln(classes) or "
       "more (min_train_loss_vs_chance): no run left a uniform guess, and no tie of theirs is knobs-not-binding's (MiniLM LoRA on 12 BANKING77 classes at lr 1e-6 and 2e-6, r 8 and 16: "
       "0.998-0.999 x ln 12, F1 at chance); the runs did not learn, so no knob of theirs was measured."),
    _t("not_binding_effect_noise_max", 1.0, "se", "Every knob effect under this many noise units (one run's sigma), "
       "on a val set whose noise unit is under eval_se_max: a measured tie, the knobs do not bind at these values (r 16 "
       "vs 8 on 300 val rows: 0.5 units of 0.012); between it and effect_noise_min an effect near the band's edge may "
       "still separate with more val data (the trainer corpus's good triples: 1.9-2.0 units of 0.013-0.015)."),
    _t("effect_noise_min", NOISE_BAND.sigmas, "se", "A knob effect must reach this many noise units (one run's "
       "sigma) to count: protocol 6's band max(0.5 pt, 2 x sigma), objectives.NOISE_BAND."),
    _t("binding_ratio_min", 1.5, "ratio", "One knob's effect this many times the other's names the binding knob."),
    _t("seed_std_max", 0.02, "points", "Seed std of best val metric at or above this: unstable."),
    _t("alpha_effect_noise_max", 1.0, "se", "A lora_alpha effect under this many noise units: insensitive."),
    _t("weak_lr_loss_max", 0.05, "fraction", "Learning-rate changes moving the min val loss less than this."),
    _t("weak_gap_min", 0.1, "points", "A train/val gap this large makes more rank unwanted (overfit risk)."),
    _t("max_scale", 4.0, "ratio", "The update scale s (lora_alpha / r; / sqrt(r) under rsLoRA) a scale x2 step may "
       "reach: beyond it a scale step is just a hidden lr increase (protocol 4), so update-too-weak is not "
       "prescribed there and tune keeps the scale (an lr step measures the same thing)."),
)

THRESHOLDS: Mapping[str, Threshold] = MappingProxyType({t.name: t for t in _THRESHOLDS})

# Protocol 5: rank is never raised on one curve's word. Every single-run rule that moves "r x2" carries this caveat.
PAIR_CAVEAT = ("one curve cannot separate a capacity limit from a too-small learning rate (protocol 5): run the pair "
               "experiment (r x2 vs learning_rate x2 from this start) before raising rank")
PAIR_THEN = "; then: "  # a caveat that comes before PAIR_CAVEAT ends with this (Rule.caveat_for drops both for full)

# what a full fine-tune's underfit verdicts say: it has no rank or module to add, so its move is one lr step (protocol 5:
# a curve that looks capacity-bound is often the lr; protocol 4: x2, never an order of magnitude)...
FULL_UNDERFIT_CAVEAT = ("a full fine-tune has no rank or module to add: the lr is the knob left (protocol 5); if "
                        "learning_rate x2 does not lift the plateau either, the base model is the limit")
# ...which is a step within its range only below the top of it (high_lr_min, read against full fine-tuning's range:
# thresholds_for_method): the gate of underfit-capacity, both-slices-low and lr-too-small, whose full move is
# learning_rate x2 (a gate: for every other run it holds and counts as no evidence; Rule.moves_for drops an lr x2 from
# any other rule's moves for a full fine-tune at or above it: undertrained says epochs up only there)
_FULL_LR_BELOW_HIGH = any_(c("full_finetune", "<", "flag_on"), c("peak_lr", "<", "high_lr_min"), gate=True)


def _full_lr_at_high(required: bool = False) -> Cond:
    """The gate of a route for a full fine-tune at or above the top of its lr range (high_lr_min read against full
    fine-tuning's range), the runs _FULL_LR_BELOW_HIGH leaves out; `required`: a route whose claim is about that lr
    (not evaluated with none logged)."""
    return all_(c("full_finetune", ">=", "flag_on"), c("peak_lr", ">=", "high_lr_min", required=required), gate=True)


def _stalled(at: str, *settled: Clause) -> Cond:
    """underfit-capacity's evidence, in two parts (lr-too-large reads both for a full fine-tune above its lr range):
    the loss stalled (fell, then flattened early; or stuck high at an lr `at` the top of the run's range, with the
    `settled` clauses: no still-falling loss) ..."""
    return any_(all_(c("val_loss_drop", ">=", "underfit_min_drop"),
                     c("val_loss_late_share", "<", "plateau_late_share_max"),
                     why="the val loss fell, then flattened early, and stayed high"),
                all_(c("peak_lr", ">=", "high_lr_min"),
                     c("train_loss_final_over_start", ">=", "stuck_loss_ratio_min"),
                     c("val_loss_drop", "<", "stuck_val_drop_max"),
                     *settled,
                     why=f"the loss stuck high at an lr already {at}"))


# ...high, with train and val both low and a small gap, and more epochs changing nothing
_UNDERFIT_LOW = all_(c("train_loss_late_drop", "<", "plateau_late_drop_max"),
                     # a classifier's fit is low below underfit_fit_max; a language model's token accuracy has an
                     # entropy ceiling far below 1 (as its loss has a floor), so 0.58 of it is no sign of a poor fit
                     any_(all_(c("train_eval_metric_final", "<", "underfit_fit_max"),
                               c("classifier", ">=", "flag_on")),
                          c("train_loss_vs_chance", ">=", "underfit_loss_vs_chance_min"),
                          # a fresh head starts near ln(classes), so its start is the reference; a language model
                          # starts at a pretrained loss with an entropy floor below, so 0.3 of it is no sign of 'high'
                          all_(c("train_loss_final_over_start", ">=", "underfit_loss_vs_chance_min"),
                               c("classifier", ">=", "flag_on")),
                          all_(c("generative", ">=", "flag_on"),  # SFT: short, vague answers on both prompt groups
                               c("prompt_len_ratio_final", "<=", "vague_len_ratio_max", required=True),
                               c("prompt_capped_share_final", "<", "vague_capped_share_max"),  # not the cap's
                               c("prompt_familiar_score_final", "<", "vague_score_max", required=True),
                               c("prompt_novel_score_final", "<", "vague_score_max", required=True))),
                     c("gap_f1", "<", "underfit_gap_max"),
                     c("val_metric_best", "<", "underfit_metric_max"),
                     c("val_metric_gain_per_epoch_late", "<", "flat_per_epoch_max"))

# the train loss pinned near ln(classes): a collapse's loss, one the model did not learn down from its first guess
_LOSS_AT_CHANCE = c("train_loss_vs_chance", ">=", "collapse_loss_vs_chance")

# protocol 5b's collapse of a classifier: its predictions on one class, or its val metric frozen, with the loss pinned
# near ln(classes): `collapsed` reads it at an lr inside the usual range, lr-too-large for a full fine-tune above its
# own range (below its collapse_lr_min) where the train loss too stayed near chance
_ONE_CLASS = all_(c("classifier", ">=", "flag_on"), any_(
    # per-class numbers: one class takes most predictions with the loss pinned, and the val metric no longer climbing:
    # a metric still rising beyond its noise at the end is a model still leaving its first guess (a 12-step lr probe
    # at 1e-3: 0.028 -> 0.265, 51% of the predictions on one class, train loss 0.92 x ln 20), not predictions that
    # stopped changing
    all_(c("val_pred_top_share", ">=", "collapse_pred_share"),
         _LOSS_AT_CHANCE,
         c("still_improving", "<", "flag_on")),
    # without per-class numbers, the predictions frozen: the val metric repeating one value at most of more than a few
    # evals and never rising, the loss pinned: the train loss near ln(classes) and not falling at all, or the val loss
    # where its first eval left it, jittering rather than creeping down. yanmingk (J, DeBERTa-v2-xlarge, accuracy
    # 0.405 at 3 of 4 evals, train loss 0.95 x ln 3 over 1,600 steps at 1.4e-5); pramanik-souvik (N, accuracy 0.6929
    # at all 10 evals, the majority share); PechimuthuMithil (Q, SST-2 at the class share 0.5092)
    all_(c("val_metric_logged", ">=", "flag_on"),
         c("n_eval_points", ">", "few_evals_max"),
         c("val_metric_repeat_share", ">", "collapse_repeat_share_max"),
         c("val_metric_gain", "<", "no_gain_max"),
         any_(all_(_LOSS_AT_CHANCE,
                   c("train_loss_final_over_start", ">=", "pinned_loss_ratio_min")),
              all_(c("val_loss_drop", "<", "pinned_val_drop_max"),
                   c("val_loss_rise_share", ">", "frozen_rise_share_min"))))),
    why="a classifier on one class: its predictions, or its val metric, stopped changing with the loss pinned")


_CURVE_AND_CLASS = ("collapsed", "lr-too-large", "overfit-capacity", "underfit-capacity", "lr-too-small",
                    "undertrained", "healthy", "confusable-classes-unresolved", "long-tail-collapse",
                    "label-noise-suspected", "novel-phrasing-gap", "both-slices-low", "compound-intents-missed",
                    "generations-looping")

_RULES = (
    Rule(
        id="diverged", scope="curve", priority=100, knob_class="optimization", confidence=0.95,
        when=any_(all_(c("nonfinite_values", ">=", "nonfinite_min"), why="non-finite losses (nan / inf)"),
                  all_(c("status_diverged", ">=", "flag_on"), why="the run recorded itself as diverged"),
                  all_(c("train_loss_final_over_start", ">=", "diverged_loss_ratio"),
                       c("train_loss_final", ">=", "diverged_loss_floor"),
                       why="the train loss ended at a multiple of its start"),
                  all_(c("train_loss_vs_chance", ">=", "diverged_chance_ratio"),
                       why="the train loss ended far above a uniform guess's ln(classes)"),
                  all_(c("train_loss_logged", "<", "flag_on"),
                       c("val_loss_final_over_start", ">=", "diverged_val_loss_ratio"),
                       c("val_loss_final", ">=", "diverged_loss_floor"),
                       c("val_metric_final_vs_start", "<", "diverged_val_metric_gain_max"),
                       why="no train loss logged: the val loss ended at a multiple of its first eval and the val "
                           "metric below where it began")),
        verdict="diverged: non-finite or exploding loss",
        moves=("learning_rate /10", "check data"),
        suppresses=_CURVE_AND_CLASS,
        source="protocol 4: non-finite loss -> diverged -> lr /10, check data",
    ),
    Rule(
        id="collapsed", scope="curve", priority=85, knob_class="optimization", confidence=0.8,
        # protocol 3's failure "where too high an lr does not explode but collapses the model to predicting one class"
        # and 5b's "a collapse is a loss pinned near ln(classes) with the predictions on one class", read at an lr
        # inside protocol 1's range, where the lr alone does not say it (far above it, lr-too-large reads the same
        # curve; below usual_lr_min, steps too small also move no prediction). Below lr-too-large: where its
        # routes read the same run (a loss that spiked above ln(classes) first, an oscillation), the lr is named
        when=all_(c("peak_lr", ">=", "usual_lr_min"),
                  c("peak_lr", "<", "collapse_lr_min"),
                  any_(_ONE_CLASS,
                       # any task: the val loss itself repeating one value at most evals (the outputs frozen; a val
                       # metric, where logged, not moving either), pinned: near ln(classes), or beside a train loss
                       # that did not fall at all (a loss of 0 repeating is a target the model fits exactly, not a
                       # collapse: neither pin holds there)
                       all_(c("val_loss_repeats", ">=", "frozen_loss_repeats_min"),
                            c("val_loss_repeat_share", ">", "collapse_repeat_share_max"),
                            any_(c("val_metric_logged", "<", "flag_on"), c("val_metric_gain", "<", "no_gain_max")),
                            any_(c("val_loss_vs_chance", ">=", "collapse_loss_vs_chance"),
                                 c("train_loss_final_over_start", ">=", "pinned_loss_ratio_min")),
                            why="the val loss repeats one value at most evals with the loss pinned: the outputs "
                                "stopped moving")),
                  # ...and, for a LoRA adapter, at or above LoRA's own floor (protocol 1: LoRA centre 1e-4..5e-4,
                  # 10x full fine-tuning's): a LoRA run below it whose predictions never moved took steps too small
                  # to move them (lr-too-small's lr prior), and lr /2 would walk away from its range
                  any_(c("lora_adapter", "<", "flag_on"), c("peak_lr", ">=", "lora_lr_floor"))),
        verdict="collapsed to one class: the predictions stopped changing (one class, or one metric or loss value at "
                "every eval) with the loss pinned, at an lr inside the usual range",
        moves=("learning_rate /2", "check data"),
        suppresses=tuple(x for x in _CURVE_AND_CLASS if x not in ("collapsed", "lr-too-large")),
        source="protocol 3: too high an lr can collapse the model to predicting one class (loss pinned near "
               "ln(classes)); 5b: a collapse is a loss pinned near ln(classes) with the predictions on one class",
    ),
    Rule(
        id="lr-too-large", scope="curve", priority=90, knob_class="optimization", confidence=0.8,
        when=any_(
            all_(c("train_loss_peak_vs_chance", ">=", "collapse_peak_chance_ratio"),
                 _LOSS_AT_CHANCE,
                 why="the train loss went far above ln(classes) and ended pinned near it: a collapse"),
            # a spike the run recovered from is read too: a loss thrown far above a uniform guess mid-run is an lr too
            # large (protocol 4), whatever the decaying schedule let it reach after (undertrained's lr x2 doubled
            # the step that threw it)
            all_(c("train_loss_spike_vs_chance", ">=", "spike_peak_chance_ratio"),
                 c("train_loss_max_rise", ">=", "spike_rise_min"),
                 any_(c("val_loss_at_spike_vs_chance", ">", "spike_val_loss_chance_min"),
                      c("val_metric_at_spike_drop_se", ">=", "drop_se_min")),
                 why="the train loss spiked mid-run far above ln(classes), a uniform guess: too large a step"),
            all_(c("peak_lr", ">=", "collapse_lr_min"),
                 _LOSS_AT_CHANCE,
                 # ...with the predictions not learning (protocol 5b: a collapse is a loss pinned near ln(classes)
                 # WITH the predictions on one class): not a val metric that ended healthy_gain_min above its first
                 # eval, gained beyond its noise and held it, nor a val loss that fell beyond its noise, held it and
                 # ended below the pin. A tiny BERT on 4 balanced classes at lr 0.06 (macro-F1 0.10 -> 0.783 at
                 # 7 noise units, val loss 1.415 -> 1.021 = 0.74 x ln 4 falling at every eval, train loss 0.81 x
                 # ln 4) is learning, and lr /2 made it worse
                 any_(c("val_metric_logged", "<", "flag_on"),
                      c("val_metric_final_vs_start", "<", "healthy_gain_min"),
                      c("val_metric_gain_se", "<", "healthy_gain_se_min"),
                      c("val_metric_final_drop_se", ">=", "drop_se_min")),
                 any_(c("val_loss_logged", "<", "flag_on"),
                      c("val_loss_vs_chance", ">=", "collapse_loss_vs_chance"),
                      c("val_loss_drop_noise", "<", "healthy_drop_noise_min"),
                      c("val_loss_rise_noise", ">=", "rise_noise_min")),
                 why="an lr far above the usual range with the train loss pinned near ln(classes) and the val "
                     "metric and loss not learning"),
            all_(c("peak_lr", ">=", "collapse_lr_min"),
                 c("val_metric_gain", "<", "no_gain_max"),
                 # ...where the first eval left the metric room to gain no_gain_max: one within it of a perfect
                 # score could gain nothing that counts, however well the run learned (a token tagger at lr 1e-2:
                 # 0.993 at its first eval, ten steps in, then 1.000 at every eval). Room in points, not in noise
                 # units: a run pinned at 0.900 with 40 val rows (noise 0.05) could have gained 0.1 and did not
                 c("val_metric_room", ">=", "no_gain_max"),
                 # ...and the val loss did not fall beyond its noise to a low at the end that bounds the val error
                 # rate under half a point (the same tagger: 0.303 -> 0.0009): that run learned its val set. A val
                 # loss falling back from a first eval that blew up also falls beyond its noise to a low at the end,
                 # but to ln(classes), far above 0 (folds A and B's diverged runs at lr 1e-1, their metric flat at
                 # the one-class level: lr-too-large is accepted there). That last route is a classifier's: a per-row
                 # loss has 0 as its floor, a generative run's token loss has the text's entropy, never near 0, so a
                 # generative classifier whose val loss fell beyond its noise to a late low (1.465, falling, at lr
                 # 0.025, its labels not named yet) learned, and the route does not exist for it
                 any_(c("val_loss_logged", "<", "flag_on"),
                      c("val_loss_drop_noise", "<", "healthy_drop_noise_min"),
                      c("val_loss_min_fraction", "<", "late_min_fraction"),
                      all_(c("classifier", ">=", "flag_on"), c("val_loss_final", ">", "zero_loss_max"))),
                 why="an lr far above the usual range with a val metric that never gained"),
            all_(any_(c("val_pred_top_share", ">=", "collapse_pred_share"),
                      # without per-class numbers: the val metric never rose above its first eval and the val loss
                      # ended well above its low (a too-small lr's flat loss jitters about its level instead)
                      all_(c("val_metric_gain", "<", "no_gain_max"),
                           c("val_loss_rise", ">=", "val_loss_rise_min"))),
                 _LOSS_AT_CHANCE,
                 any_(c("train_loss_max_rise", ">=", "collapse_loss_rise"),
                      c("val_loss_rise_share", ">=", "collapse_val_rise_share")),
                 why="collapsed to one class (or no metric gain beside a rising val loss), the loss pinned near "
                     "ln(classes) and thrown about"),
            # the train loss climbed back up while the val metric swung beyond its noise; unless the train loss went on
            # to memorise the training set (a tenth of its start or below: it descended, its bumps the noise of single
            # logged windows) while the val loss rose beyond its noise: that is the overfit of protocol 3, as the
            # climb-back route below reads it (fold O's stanleyKS: 1.10 -> 0.0008 over 100 epochs, a bump in epoch
            # 15, the val loss +231% at 8 noise units; fold J's jerichomcleod, memorised too, swings with its val
            # loss inside its noise: lr)
            all_(c("train_loss_max_rise", ">=", "osc_loss_rise"),
                 c("val_metric_max_drop", ">=", "osc_metric_drop"),
                 c("val_metric_max_drop_se", ">=", "osc_metric_drop_se"),
                 any_(c("train_loss_final_over_start", ">", "fit_loss_vs_chance_max"),
                      c("val_loss_rise_noise", "<", "rise_noise_min")),
                 # ...nor, with the val loss risen beyond its noise, made most of its fall after the val loss's
                 # minimum: a train loss descending while the val loss climbs is protocol 3's overfit, as the next
                 # route reads it (fold AW's LineIntegralx: Longformer, val loss 2.5x its minimum at 33% in a steady
                 # climb, Kendall tau 0.91 over 20 evals, all of the train loss's fall after that minimum; both
                 # reviews overfit-capacity)
                 any_(c("val_loss_rise_noise", "<", "rise_noise_min"),
                      c("train_loss_drop", "<", "plateau_late_drop_max"),
                      c("train_loss_fall_after_val_min", "<=", "fit_after_turn_share_min")),
                 why="the train loss climbed back up while the val metric swung beyond its noise"),
            # the train loss climbed back up while the val loss rose or swung, and stayed up (its low before the
            # last tenth) or climbed while the val loss rose (after its minimum): a bump before the val loss turned,
            # then a fall to the train loss's low at the end while the val loss rises, is the overfit of protocol 3
            # (train loss falls, val loss rises; CurseARealSword, fold G), not an oscillation
            all_(c("train_loss_max_rise", ">=", "osc_loss_rise"),
                 # the val loss rose beyond its noise by a visible amount, as the swing below must climb: a 1% creep
                 # beyond a tight band on a long, precise curve is a settled loss, not a step that throws it about
                 # (fold AH's ikramMc: Llama-3.1-8B QLoRA, +1.3% at 4.6 noise units over 58 evals, per-step train
                 # losses swinging 1.10-1.98; both reviews overfit-capacity or healthy)
                 any_(all_(c("val_loss_rise_noise", ">=", "rise_noise_min"),
                           c("val_loss_rise", ">=", "val_loss_rise_small_min")),
                      # (a swing: most of the val loss's movement upward, and one climb of val_loss_rise_small_min
                      # at least; a 1% drift is all upward too: fold Z's almaratss and atharshlakshmi, runs that
                      # start converged, every curve flat within its noise, a train loss of 0.03-0.09 whose windows
                      # differ by 15-20%)
                      all_(c("val_loss_rise_share", ">=", "collapse_val_rise_share"),
                           c("val_loss_max_swing", ">=", "val_loss_rise_small_min"))),
                 any_(c("train_loss_min_fraction", "<", "late_min_fraction"),
                      c("train_loss_rise_after_val_min", ">=", "osc_loss_rise")),
                 # ...and did not memorise the training set: a train loss ending at a tenth of its start or below
                 # descended, its bumps the noise of single logged windows (a notebook's per-epoch losses), and a
                 # val loss rising beside it is the overfit of protocol 3 (fold M's atikulmunna: 0.41 -> 0.03; a
                 # spike after the val loss's minimum in a run ending at 0.2x its start stays oscillation)
                 c("train_loss_final_over_start", ">", "fit_loss_vs_chance_max"),
                 # ...nor made most (over half) of its fall after the val loss's minimum: a train loss still
                 # descending while the val loss rises is protocol 3's overfit (train falls, val rises), its climbs
                 # the noise of the single batches a notebook's table shows (fold T's KarlsonAV: 0.39 -> 0.16, 53% of
                 # the fall after the val minimum at 60%, the val loss +63%; fold R's federicabologna, fold M's
                 # AIR-Group11); an oscillating lr's train loss falls before the val loss turns, or not at all
                 # (siasio, fold A)
                 any_(c("train_loss_drop", "<", "plateau_late_drop_max"),
                      c("train_loss_fall_after_val_min", "<=", "fit_after_turn_share_min")),
                 why="the train loss climbed back up while the val loss rose or swung"),
            all_(c("train_loss_rebound", ">=", "rebound_min"),
                 c("train_loss_min_fraction", "<=", "rebound_min_fraction_max"),
                 c("val_loss_rise", ">=", "val_loss_rise_min"),
                 why="the train loss found a low early and lived above it while the val loss rose"),
            # a DPO loss (ln 2 at step 0, where the policy is its reference) above ln 2 at every one of more than a
            # few evals: the first steps already made the policy rank held-out pairs worse than the model it started
            # from and it never got back; unless the train loss memorised its pairs (a tenth of its start or below),
            # protocol 3's overfit (fold V's Tooba26: 0.79 -> 0.007 while the val loss climbs 0.76 -> 1.64)
            all_(c("val_loss_min_vs_reference", ">", "preference_start_ratio_max"),
                 c("n_eval_points", ">", "few_evals_max"),
                 c("train_loss_final_over_start", ">", "fit_loss_vs_chance_max"),
                 why="a DPO policy never beat its reference's ln 2 on held-out pairs"),
            # a full fine-tune above the top of its own lr range (high_lr_min read against full fine-tuning's range,
            # thresholds_for_method: 1.5e-4, 3x the top of its 1e-5..5e-5) whose loss stalled high, train and val both
            # low: underfit-capacity's evidence, where a full fine-tune has no capacity to add and its lr sits out of
            # its range (protocol 1: LoRA wants ~10x the full-fine-tuning lr); lr x2 would step further out
            # Its own route (alone): where a Trainer run logs no train-subsample metric (gap_f1 missing) it fires
            # tentatively as underfit-capacity would, however the routes above fail; the lr is its gate. A loss still
            # falling at its end has not stuck (the val loss's late fall, as the flattened route's late share reads it)
            # Its claim is about the lr: with none logged (peak_lr missing) the rule is not evaluated (`required`)
            # a full fine-tune above the top of its own lr range whose classifier collapsed to one class (protocol 5b:
            # the predictions on one class, or its val metric frozen, with the loss pinned near ln(classes)), below
            # the collapse routes' collapse_lr_min (1e-3 for a full fine-tune): the collapse, read as one. Before the
            # stalled route below, whose reading ("stalled high, train and val both low") read a full fine-tune's
            # collapse at 2e-4 (val accuracy at the majority share, loss at ln 4 throughout). The train loss pinned
            # near chance too: one that learned (down to 0.4 x ln(classes)) beside a val metric frozen on one class
            # is no lr too large, likelier the data or the val split's: `collapsed` reads it, with "check data"
            all_(_full_lr_at_high(required=True), _ONE_CLASS, _LOSS_AT_CHANCE,
                 why="a full fine-tune at an lr above its usual range collapsed to one class"),
            all_(_full_lr_at_high(required=True),
                 _stalled("above a full fine-tune's usual range", c("val_loss_still_falling", "<", "flag_on")),
                 _UNDERFIT_LOW,
                 why="a full fine-tune at an lr above its usual range stalled high, train and val both low",
                 alone=True)),
        verdict="learning rate too large: collapsed to one class (loss pinned near ln(classes)), the train loss "
                "spiked far above ln(classes) or climbs back up while the val metric or loss swings, a DPO policy "
                "never beat its reference's ln 2, or a full fine-tune above its lr range stalled high",
        moves=("learning_rate /2",),
        suppresses=tuple(x for x in _CURVE_AND_CLASS if x != "lr-too-large"),
        source="protocol 3-4: loss oscillates, F1 unstable step to step -> lr /2; too high an lr can collapse "
               "the model to one class (loss pinned near ln(classes))",
    ),
    Rule(
        id="overfit-capacity", scope="curve", priority=70, knob_class="capacity", confidence=0.8,
        when=all_(any_(all_(c("train_loss_vs_chance", "<=", "fit_loss_vs_chance_max"),
                            why="the train loss at a tenth of ln(classes) or less: memorised"),
                       all_(c("train_loss_final_over_start", "<=", "fit_loss_over_start_max"),
                            why="the train loss at a tenth of its start or less: memorised"),
                       all_(c("train_eval_metric_final", ">=", "fit_metric_min"),
                            why="the train-subsample metric near perfect: memorised"),
                       # any run: the train loss still falling over the second half while the val loss rises beyond
                       # its noise (below) is the val-minus-train gap widening (5b; no near-zero train loss needed:
                       # an SFT run's entropy floor, a BERT run's third epoch, fold D's Ainna278, fold G's UgoLabbe)
                       all_(c("train_loss_late_drop", ">=", "plateau_late_drop_max"),
                            why="the train loss still falling over the second half"),
                       # any run: the train loss kept falling long after the val loss turned (its minimum in the
                       # first half); the rise itself must still clear the noise band below
                       all_(c("train_loss_late_drop", ">=", "plateau_late_drop_max"),
                            c("val_loss_min_fraction", "<=", "early_turn_fraction_max"),
                            why="the train loss kept falling long after the val loss turned"),
                       # ...or made most of its fall after the val loss turned (early), then went flat: the
                       # val-minus-train gap widened (5b) though the second half of the train loss is level
                       all_(c("train_loss_drop", ">=", "plateau_late_drop_max"),
                            c("train_loss_fall_after_val_min", ">=", "fit_after_turn_share_min"),
                            c("val_loss_min_fraction", "<=", "early_turn_fraction_max"),
                            why="most of the train loss's fall came after the val loss turned"),
                       # ...or, for a language model, still falling at all over the second half after the val loss
                       # turned in the first: its loss sits above an entropy floor (protocol 9), so no share of its
                       # start measures the fit; the widening val-minus-train gap does (5b)
                       all_(c("generative", ">=", "flag_on"),
                            c("train_loss_late_drop", ">=", "lm_late_fall_min"),
                            c("val_loss_min_fraction", "<=", "early_turn_fraction_max"),
                            why="a language model's train loss still falling after its val loss turned early"),
                       # ...or a run that logged no train-loss trend (one window or none: logging_steps longer than
                       # the run), read on its validation side alone, as healthy's route for such a run is: the train
                       # side is missing, not flat, and a val loss that passed its minimum and stays above it (by
                       # val_loss_rise_min at every later eval, or rising at each) and ends above it by
                       # val_loss_rise_min and beyond the noise band is protocol 5b's overfit on the val side (fold
                       # AE's AppleMax1992: CodeBERT, one train window, val loss 0.88 at 57% -> 0.97 -> 1.12 -> 1.38 at
                       # 10 noise units, accuracy 2 SE below its best; fold T's Benerugg: +57% held +20%, 6.7 units)
                       all_(c("train_loss_untracked", ">=", "flag_on"),
                            any_(c("val_loss_rise_steady", ">=", "flag_on"),
                                 c("val_loss_rise_held", ">=", "val_loss_rise_min")),
                            c("val_loss_rise", ">=", "val_loss_rise_min"),
                            c("val_loss_rise_noise", ">=", "rise_noise_min"),
                            why="no train-loss trend logged: the val loss passed its minimum and stayed above it"),
                       # ...or, with no train-loss trend logged, a curve of exactly few_evals_max evals (a Trainer
                       # run's three epochs) whose val loss fell to its minimum at the second and rose at the last by
                       # val_loss_rise_min and beyond its noise (below): the one eval past the turn is all such a
                       # curve has, and 5b's "passed its minimum" is read on it (fold Z's eriktks, fold AF's
                       # ZahraShourmeij, fold AK's frserras: +14-22% at the third epoch, 4.8-6.7 noise units, the
                       # metric at its best: both reviews accept overfit-capacity)
                       all_(c("train_loss_untracked", ">=", "flag_on"),
                            c("n_eval_points", "<=", "few_evals_max"),
                            c("n_eval_points", ">=", "few_evals_max"),
                            c("val_loss_min_fraction", ">=", "short_turn_fraction_min"),
                            why="a three-eval curve, no train-loss trend logged: the val loss fell, then rose at "
                                "the last eval")),
                  any_(all_(c("val_loss_rise", ">=", "val_loss_rise_min"),
                            c("val_loss_rise_noise", ">=", "rise_noise_min"),
                            why="the val loss ended 10% or more above its minimum, beyond its noise"),
                       # a short curve (under tail_noise_points_min evals) whose every eval after the minimum stays
                       # above it by val_loss_rise_min: its jitter, read from 2-3 second differences, is mostly the
                       # turn itself, so no noise band can clear even a 16-57% rise (fold M's Henry-325, hstoklosa);
                       # a rise each later eval repeats is not one noisy point
                       all_(c("n_eval_points", "<", "tail_noise_points_min"),
                            c("val_loss_rise_held", ">=", "val_loss_rise_min"),
                            # ...not beside a val metric at its ceiling: a solved task's val loss moves by single
                            # examples (fold S's Cansutunc: 0.0156 -> 0.0208 at accuracy 1.000 then 0.9956, n 227)
                            any_(c("val_metric_logged", "<", "flag_on"),
                                 c("val_metric_best", "<", "metric_ceiling_max")),
                            why="a short curve whose every eval after the minimum stayed 10% above it"),
                       # ...or whose val loss rose at every eval after its minimum, ending val_loss_rise_small_min
                       # above it, while the train loss still fell over the second half: a rise that grows at each
                       # later eval is a trend, not one noisy point, and the widening gap is 5b's overfit (fold L's
                       # Caarevalor: 1.495 -> 1.501 -> 1.546 -> 1.621 over 5 evals, train -25% over the second half;
                       # fold M's ed0228: +1.7%, +4.6% over 3)
                       all_(c("n_eval_points", "<", "tail_noise_points_min"),
                            c("val_loss_rise_steady", ">=", "flag_on"),
                            c("val_loss_rise", ">=", "val_loss_rise_small_min"),
                            c("train_loss_late_drop", ">=", "plateau_late_drop_max"),
                            # ...where a val metric is logged, it speaks: one still improving over the last third (a
                            # new best beyond its noise) says the small rise beside it is the loss's confidence, not
                            # overfit (fold Y's sccn: wav2vec2 on TIMIT, val loss +5.1% over two evals, WER still
                            # falling to the last); on a curve of few_evals_max evals that reading rests on one
                            # point against one, and the rise each later eval repeats is the stronger evidence
                            any_(c("val_metric_logged", "<", "flag_on"),
                                 c("still_improving", "<", "flag_on"),
                                 c("n_eval_points", "<=", "few_evals_max")),
                            why="a short curve whose val loss rose at every eval after its minimum"),
                       # a run scored by its losses alone: a smaller rise far beyond the noise while the train loss
                       # still falls over the second half is the gap widening, however small a share of the loss the
                       # rise is (fold L's Dekanenko: +5.5% over six rising evals at 9.7 noise units). Where a val
                       # metric is logged it speaks instead: a small rise with the metric holding is not overfit;
                       # unless the val loss turned in the first half: half a run spent above its minimum, far beyond
                       # its noise, is 5b's overfit whatever the metric (fold S's lionelmesnam: minimum at epoch 7 of
                       # 20, +8% at ~8 noise units, accuracy flat within its SE)
                       all_(any_(c("val_metric_logged", "<", "flag_on"),
                                 c("val_loss_min_fraction", "<=", "early_turn_fraction_max")),
                            c("val_loss_rise", ">=", "val_loss_rise_small_min"),
                            # ...or a rise every one of many later evals holds beyond the noise band: a long curve's
                            # last point is one draw, but five or more evals all above the minimum by the band are a
                            # level, not jitter (fold T's Mostafa-Elnabawy: the third epoch's 32 evals all 2.8 noise
                            # units or more above the minimum at 67%, +4.3% at the end, the train loss -31% over the
                            # second half as the epoch's repeats come round)
                            any_(c("val_loss_rise_noise", ">=", "rise_noise_strong_min"),
                                 c("val_loss_rise_held_noise", ">=", "rise_noise_min")),
                            c("train_loss_late_drop", ">=", "plateau_late_drop_max"),
                            why="a small val-loss rise far beyond its noise, or held beyond it at many evals"),
                       # a language model's val loss that turned in the first half and ended above its minimum beyond
                       # the noise band: protocol 5b's overfit ("passed its minimum and stays above it by more than
                       # the noise"), however small a share of a loss of ~2 nats above an entropy floor the rise is
                       # (val_loss_rise_min's 10% is a classifier's scale, as slow_drop_max's 30% fall is): Bhattars1
                       # +0.8% at 2.7 noise units and Kyzu07 +1.9% at 6.9 (fold I), P-Zande +1.2% at 4.2 (fold C)
                       all_(c("generative", ">=", "flag_on"),
                            c("val_loss_rise_noise", ">=", "rise_noise_min"),
                            c("val_loss_min_fraction", "<=", "early_turn_fraction_max"),
                            why="a language model's val loss turned early and ended beyond its noise above the minimum"),
                       # ...or turned later but rose at every eval after its minimum, the lowest of them above it
                       # beyond the noise band: "stays above it by more than the noise" (5b) read at each later eval,
                       # not at one (fold AU's zenloger: Qwen3-0.6B LoRA, minimum at 53% of the run, eight rises in a
                       # row to +2.3% at 8.1 noise units, the lowest later eval 2.3 units above it, train -10% over the
                       # second half: both reviews overfit-capacity, nothing else accepted)
                       all_(c("generative", ">=", "flag_on"),
                            c("val_loss_rise_steady", ">=", "flag_on"),
                            c("val_loss_rise_held_noise", ">=", "rise_noise_min"),
                            why="a language model's val loss rose at every eval after its minimum, each beyond its noise"),
                       # ...or, at any kind of run, a val loss that turned in the first half and climbed as a whole
                       # (a rank trend over at least 6 evals from its minimum on) to 10% above it: protocol 5b's trend
                       # test beside the noise band, for a zigzag tail whose every step is inside the band (fold AV's
                       # RamyHamrouni: Llama-3.2-1B SFT, minimum at 33%, then 1.897 1.916 2.024 2.000 2.139 2.098, +11%
                       # at 1.5 noise units, tau 0.81; both reviews overfit-capacity, nothing else accepted)
                       all_(c("val_loss_rise_trend", ">=", "rise_trend_min"),
                            c("val_loss_rise", ">=", "val_loss_rise_min"),
                            c("val_loss_min_fraction", "<=", "early_turn_fraction_max"),
                            why="the val loss turned early and climbed as a whole (a rank trend) to 10% above its minimum"),
                       all_(c("val_metric_final_drop", ">=", "val_metric_drop_min"),
                            c("val_metric_final_drop_se", ">=", "drop_se_min"),
                            # the val loss, where logged, past its minimum too; a run scored by a val metric
                            # alone is read on the metric, protocol 5b's second overfit reading ("the val metric's
                            # best lies well before the end and the end is below it by more than the noise")
                            any_(c("val_loss_min_fraction", "<", "late_min_fraction"),
                                 c("val_loss_logged", "<", "flag_on")),
                            why="the val metric's best well before the end, the end below it beyond its noise"),
                       all_(c("val_loss_rise", ">=", "val_loss_rise_min"),
                            c("gap_f1", ">=", "overfit_gap_min"),
                            why="the val loss rose beside a large train/val metric gap"),
                       # a long curve whose val loss went flat (under late_val_drop_min over the second half) while
                       # the train loss, already down to a fitted share of its start, kept falling: protocol 5b's
                       # widening val-minus-train loss gap, the second half's training all memorisation (fold M's
                       # ALFA-group: MLM, 50 epochs, train 3.04 -> 0.40, val 2.7 +- 0.17 from epoch 2 on)
                       all_(c("n_eval_points", ">=", "tail_noise_points_min"),
                            c("train_loss_final_over_start", "<=", "fit_loss_over_start_max"),
                            c("train_loss_late_drop", ">=", "plateau_late_drop_max"),
                            c("val_loss_late_drop", "<", "late_val_drop_min"),
                            # ...past its minimum (ended above it, the minimum before the last tenth): a val loss
                            # flat at its best at the end has converged (fold C's WELCOME-project: 0.0122 -> 0.0119
                            # over the last 30 evals, BLEU best at 84%)
                            c("val_loss_rise", ">", "still_falling_min"),
                            c("val_loss_min_fraction", "<", "late_min_fraction"),
                            # ...and, where a val metric speaks, above it by more than the noise (5b): a final and a
                            # minimum inside the band beside a metric that held are a tie (MiniLM LoRA, 8 rows per
                            # class, 40 epochs: +2.4% at 1.1 noise units, F1 0.947-0.960 from step 60 on); a run scored
                            # by its losses alone keeps the widening gap as its evidence (ALFA-group's MLM)
                            any_(c("val_loss_rise_noise", ">=", "rise_noise_min"),
                                 c("val_metric_logged", "<", "flag_on")),
                            why="the val loss went flat past its minimum while the fitted train loss kept falling"),
                       all_(c("generative", ">=", "flag_on"),  # the prompt set: exact on familiar, drifting on new
                            c("prompt_gap_widening", ">=", "prompt_gap_widening_min"),
                            c("prompt_gap_widening_se", ">=", "rise_noise_min"),
                            c("prompt_novel_drift", ">=", "prompt_drift_min"),
                            c("prompt_novel_drift_se", ">=", "drop_se_min"),
                            why="the familiar-novel prompt gap widens while novel prompts drift below their best"),
                       all_(c("generative", ">=", "flag_on"),  # training completions memorised, val loss stalled
                            c("train_perplexity_final", "<=", "memorised_perplexity_max"),
                            c("gap_loss", ">=", "memorised_gap_min"),
                            c("val_loss_still_falling", "<", "flag_on"),
                            why="the training completions memorised while the val loss stopped falling")),
                  # a val metric, where logged, that ever rose off ~0: a model that never got the val task has no
                  # generalisation to lose (collapse, protocol 3-4), whatever its val loss does
                  any_(c("val_metric_logged", "<", "flag_on"),
                       c("val_metric_best", ">=", "never_learned_metric_max"))),
        verdict="overfit (capacity): train loss near zero (or still falling) while val loss rises / val "
                "metric falls beyond noise (or rises with a large train/val gap); for SFT also: the familiar-novel "
                "prompt-set gap widens while novel prompts drift below their best, or the training completions are "
                "memorised while the val loss has stopped falling",
        moves=("r /2", "-ffn", "lora_dropout up"),
        # a full fine-tune has no rank, targets or lora_dropout to lower: its regularizer is the weight decay (protocol
        # 3 lowers capacity and touches no lr for a capacity verdict; protocol 6's LoRA-vs-full probe is the other way)
        full_moves=("weight_decay 0.1",),
        suppresses=("healthy", "undertrained"),
        source="protocol 3: train loss races to ~0, val loss rises / val F1 falls -> lower rank or remove modules; "
               "protocol 9: rank too high reads as exact answers on familiar prompts, drift on new ones (the gap "
               "widens); 5b: a widening val-minus-train loss gap is the same story",
    ),
    Rule(
        id="underfit-capacity", scope="curve", priority=60, knob_class="capacity", confidence=0.6,
        when=all_(_stalled("at the top of LoRA's range"),
                  # ...and, for a full fine-tune, an lr below the top of its own range (high_lr_min, read against full
                  # fine-tuning's range: thresholds_for_method): it has no capacity to add and its move is
                  # learning_rate x2, a step out of its range at an lr already that high (lr-too-large reads it there)
                  _FULL_LR_BELOW_HIGH,
                  _UNDERFIT_LOW),
        verdict="underfit (capacity): the loss fell, then plateaued early and high (or stayed high at an lr "
                "already at the top of LoRA's range); train and val both low, small gap",
        moves=("r x2", "+ffn", "+attn.k, attn.o", "+layers"),
        # a full fine-tune trains every weight: no rank, module or layer is left to add (protocol 3's capacity
        # moves), and the rule's own evidence says more epochs change nothing (val_metric_gain_per_epoch_late). What
        # binds is the lr (protocol 5: a curve that looks capacity-bound is often the lr, and lr and training length
        # are what usually bind a classifier), one x2 step (protocol 4: never an order of magnitude)
        full_moves=("learning_rate x2",),
        full_verdict="underfit: the loss fell, then plateaued early and high; train and val both low, small gap, "
                     "with every weight trained",
        full_caveat=FULL_UNDERFIT_CAVEAT,
        suppresses=("healthy", "undertrained"),
        source="protocol 3: train loss will not go down; train and val both low with a small gap; more epochs "
               "change nothing -> raise rank or add modules; protocol 9: rank too low reads as vague, over-general "
               "answers that miss the style and the domain detail on familiar and novel prompts alike",
        caveat=PAIR_CAVEAT,
    ),
    Rule(
        id="lr-too-small", scope="curve", priority=50, knob_class="optimization", confidence=0.7,
        when=any_(all_(any_(all_(c("val_loss_drop", "<", "slow_drop_max"),
                                 c("first_eval_fraction", "<=", "early_eval_fraction_max"),
                                 # a 30% fall is a fresh head's from ln(classes); a language model starts at its
                                 # pretrained loss above an entropy floor (protocol 9) and may lose far less while
                                 # learning well: slow for it is a fall still going at the end, its extrapolated
                                 # remaining fall beyond the noise band and 2% of the loss (not converged)
                                 any_(c("classifier", ">=", "flag_on"),
                                      all_(c("val_loss_remaining_noise", ">=", "remaining_noise_min"),
                                           c("val_loss_remaining_gain", ">=", "remaining_gain_min")))),
                            # a tenth of its start is reachable for a classifier's loss, not for a language model's
                            # (an entropy floor) or a regression's (the noise variance)
                            all_(c("classifier", ">=", "flag_on"),
                                 c("train_loss_runs_to_fit", ">=", "slow_runs_to_fit_min"),
                                 # ...and it lost less than a healthy run's share (a classifier that lost more and
                                 # is still falling is learning at a fair pace: undertrained, not too small a step),
                                 # counted from ln(classes) where a first window far below it hides the first fall
                                 # (fold AD's MingjunHu: bert-base on 650k Yelp rows, a first window of 10,000 steps
                                 # at 0.54 x ln 5, -22% after it, -58% from chance)
                                 c("train_loss_drop_since_chance", "<", "healthy_loss_drop_min")),
                            # any kind of run: both losses fell less than a healthy run's (steady, below), and
                            # the fall is still going: its extrapolated remaining fall beyond the noise band (on a
                            # curve long enough to read one); a fall that has run out inside its noise has converged,
                            # and slow is a fall still going at the end (protocol 4-5; 5b: noise first): ALLITi (F,
                            # 0.5 noise units left of a -3.7% fall over 36 evals), hitsdiff (H), nesrinebentmessek (D).
                            # A curve too short for a tail band (under tail_noise_points_min evals) must still have
                            # remaining_gain_min of its loss left to lose at its recent pace: a fall that has run out is
                            # converged, not slow (fold O's Areeb196: GPT-2 on recipes, -0.079 then -0.026 as the lr
                            # decays, 0.7% left; fold N's DarkFighterLuke, 0.4% left)
                            all_(c("train_loss_drop", "<", "healthy_loss_drop_min"),
                                 c("val_loss_drop", "<", "healthy_val_loss_drop_min"),
                                 any_(all_(c("n_eval_points", "<", "tail_noise_points_min"),
                                           c("val_loss_remaining_gain", ">=", "remaining_gain_min")),
                                      c("val_loss_remaining_noise", ">=", "remaining_noise_min")))),
                       c("val_loss_late_share", ">=", "steady_late_share_min"),
                       c("val_loss_rise_share", "<=", "steady_rise_share_max"),
                       c("val_loss_late_drop", ">", "still_falling_min"),
                       # ...and not a language model's adapter at an lr inside LoRA's usual range (lora_lr_floor up to
                       # high_lr_min; prompt tuning's 0.3 is outside it: fold W's roxyrong): a pretrained
                       # model's loss starts near its entropy floor and falls slowly at a fair step (protocol 1:
                       # LoRA's lr range; 9), so a slow fall there is read as healthy or undertrained, not as too
                       # small a step (fold T's WaliMuhammadAhmad, Llama-3.1-8B LoRA at 2e-4; fold AI's usadiqgriffin,
                       # Llama-3 LoRA at 1e-4, val -3.9% over 4 evals: both reviews healthy). Above that range only
                       # where the adapter is not known to be LoRA's (no peft_type LORA read): a LoRA adapter at the
                       # top of its range or past it has no smaller step to blame (fold AV's MSDS-Capstone: GPT-2 LoRA
                       # at 5e-3, still falling at its end: both reviews undertrained)
                       # A full fine-tune reads both bounds against its own range (thresholds_for_method) and, its
                       # method known, has no smaller step to blame above it either
                       any_(c("classifier", ">=", "flag_on"), c("lora", "<", "flag_on"),
                            c("peak_lr", "<", "lora_lr_floor"),
                            all_(c("peak_lr", ">=", "high_lr_min"), c("lora_adapter", "<", "flag_on"),
                                 c("full_finetune", "<", "flag_on"))),
                       # ...a full fine-tune (a classifier too) only below its range's top: x2 steps inside it
                       _FULL_LR_BELOW_HIGH,
                       why="both losses fall slowly and steadily, still falling at the end"),
                  # the lr prior: a LoRA run below LoRA's usual lr that learned little and was still at its best
                  # when it ended (a language model's loss has no reachable floor to measure the pace against).
                  # For a language model "learned little" may also be read on the train loss over the span its val
                  # loss is read on (from its first eval): its fall to the data's format comes in its first hundreds
                  # of steps, before that eval, and says nothing of the step size after (protocol 5: both losses;
                  # 9: the entropy floor); a train loss still falling a healthy share after the first eval learned
                  # (the fold-D near miss of joo9810/hori). "At its best when it ended" is at the last eval
                  # wherever it came (val_loss_still_falling: the last third's low beyond the noise, 5b), not only in
                  # the last tenth of the steps; and the run had its schedule: one cut before plan_cut_max of its
                  # plan learned little because most of it never ran (amerob, F). TobyYang7 Quant-GPT (J, Qwen-7B
                  # LoRA at 3e-5, train 6.2 -> 0.63 by its first eval and -6% after, val -4.1% to a low at its last
                  # eval at 86%)
                  all_(c("lora", ">=", "flag_on"),
                       c("peak_lr", "<", "lora_lr_floor"),
                       any_(c("train_loss_drop", "<", "healthy_loss_drop_min"),
                            all_(c("generative", ">=", "flag_on"),
                                 c("train_loss_drop_after_first_eval", "<", "healthy_loss_drop_min")),
                            # ...or, with no train loss logged at all, read on the val side alone: the val loss
                            # (below) and, where logged, a val metric that gained less than a healthy run's (fold U's
                            # Meerschwein: Longformer LoRA r=8 at 2e-5, every row 'No log', val loss -1.2% over 3
                            # epochs, accuracy +0.007)
                            all_(c("train_loss_logged", "<", "flag_on"),
                                 any_(c("val_metric_logged", "<", "flag_on"),
                                      c("val_metric_gain", "<", "healthy_gain_min")))),
                       c("val_loss_drop", "<", "healthy_val_loss_drop_min"),
                       c("val_loss_rise", "<", "val_loss_rise_min"),
                       any_(c("val_loss_min_fraction", ">=", "late_min_fraction"),
                            c("val_loss_still_falling", ">=", "flag_on")),
                       c("plan_done_fraction", ">=", "plan_cut_max"),
                       why="a LoRA run below LoRA's usual lr that learned little and was still at its best at the "
                           "end"),
                  # the lr prior for a classifier: a peak lr far below protocol 1's range that left the train loss
                  # above a fitted share of its start, the val loss not past its low, the plan run: the steps were
                  # too small to finish the fit, however converged the tail of a schedule decaying to 0 reads
                  # (fold T's b-paisley: DistilBERT-NER at 1e-6 linear to 0, 30 epochs, train 0.64x its start,
                  # F1 0.64, the val loss at its low at 87% with 0.2% left at its pace)
                  all_(c("classifier", ">=", "flag_on"),
                       c("peak_lr", "<", "lr_far_below_max"),
                       c("train_loss_final_over_start", ">", "fit_loss_over_start_max"),
                       c("val_loss_rise", "<", "val_loss_rise_min"),
                       c("plan_done_fraction", ">=", "plan_cut_max"),
                       why="a classifier at an lr far below the usual range that left its train loss unfitted"),
                  # ...or both losses barely moved over a plan that ran (a run cut before plan_cut_max of its plan
                  # did not give its step the steps to show, as the routes above read it: fold D's joo9810, LoRA SFT
                  # stopped at 34% of its plan, train -8%, val -0.8%; reviews underfit, inconclusive or healthy)
                  all_(c("n_eval_points", ">", "few_evals_max"),
                       c("train_loss_final_over_start", ">=", "still_train_ratio_min"),
                       c("val_loss_drop", "<", "still_val_drop_max"),
                       c("val_loss_rise", "<", "val_loss_rise_min"),
                       c("plan_done_fraction", ">=", "plan_cut_max"),
                       c("peak_lr", "<", "collapse_lr_min"),
                       any_(c("val_metric_best", "<", "still_metric_max"),
                            c("val_metric_logged", "<", "flag_on")),
                       _FULL_LR_BELOW_HIGH,
                       why="both losses barely moved over a plan that ran")),
        verdict="learning rate too small: loss falls slowly but steadily, or barely moves at all",
        moves=("learning_rate x2",),
        suppresses=("undertrained", "healthy", "confusable-classes-unresolved", "long-tail-collapse",
                    "label-noise-suspected"),
        source="protocol 4-5: loss falls but very slowly, steadily -> lr x2 (within +-2x steps)",
    ),
    Rule(
        id="undertrained", scope="curve", priority=40, knob_class="budget", confidence=0.7,
        when=all_(any_(all_(c("still_improving", ">=", "flag_on"),
                            c("best_step_fraction", ">=", "late_best_fraction_min"),
                            c("n_eval_points", ">", "few_evals_max"),
                            why="the val metric still improving beyond its noise, its best at the end"),
                       all_(c("val_loss_still_falling", ">=", "flag_on"),
                            c("val_loss_min_fraction", ">=", "late_min_fraction"),
                            c("n_eval_points", "<=", "few_evals_max"),
                            any_(c("val_loss_remaining_gain", ">=", "remaining_gain_min"),
                                 c("plan_done_fraction", "<", "plan_cut_max")),
                            why="a short curve whose val loss was still falling to its low at the last eval")),
                  # converged is not undertrained (protocol 5b, noise first): a run read on its val loss (no val
                  # metric) whose extrapolated remaining fall is inside the noise band, or a sliver of the loss, has
                  # reached what its schedule gives; a run with a val metric is read on the metric's rise beyond its
                  # noise (still_improving, late_gain_se_min); a curve too short to read a tail noise band is
                  # judged on remaining_gain_min alone, as a long curve is first (or on its plan, cut before
                  # plan_cut_max): once its pace leaves under 2% to lose, it stopped by its own numbers, no band
                  # needed (arminwitte, fold G: the last fall none; fold M's EfeSelamet: 7 evals, falls -0.11 ...
                  # -0.011, -0.0005, both reviews healthy; fold F's amerob: cut at 30% of its plan); and
                  # not once its train loss has fallen below fit_loss_over_start_max of its start: the run has fitted
                  # its training rows (protocol 3), more epochs buy the val loss only what beats its noise band, so
                  # its remaining fall is read against the band as a long curve's is (5b, noise first):
                  # anonauthors123 (J, 3 evals, 1.2 noise units left), quangbmk66dsai02 (E), clinc150-healthy-d (B)
                  any_(all_(c("val_metric_logged", ">=", "flag_on"),
                            c("val_metric_late_gain_se", ">=", "late_gain_se_min")),
                       all_(c("n_eval_points", "<", "tail_noise_points_min"),
                            any_(c("val_loss_remaining_gain", ">=", "remaining_gain_min"),
                                 c("plan_done_fraction", "<", "plan_cut_max")),
                            # (a run that logged no train-loss trend: nothing says its training rows are fitted)
                            any_(c("train_loss_final_over_start", ">", "fit_loss_over_start_max"),
                                 c("train_loss_untracked", ">=", "flag_on"))),
                       # ...the val loss's remaining fall beyond its band is the reading of a loss-only run only:
                       # with a val metric, still improving is the metric's rise (protocol 5: real F1 gains), and a
                       # val loss still creeping down under a metric that tied its best has converged
                       # (timothymcgarvey, H: entity F1 0.941 twice, val loss -2.4% at 2.4 noise units)
                       all_(c("val_metric_logged", "<", "flag_on"),
                            c("val_loss_remaining_noise", ">=", "remaining_noise_min"),
                            c("val_loss_remaining_gain", ">=", "remaining_gain_min"))),
                  any_(c("val_loss_late_drop", ">=", "late_val_drop_min"),
                       c("train_loss_late_drop", ">=", "plateau_late_drop_max"),
                       # ...or, a full fine-tune at or above the top of its lr range, any late fall: a slow steady
                       # one is lr-too-small's below it, but a step that large has no smaller step to blame (lr-too-
                       # small's gate), so a fit still improving there wants the epochs (moves_for: no lr x2)
                       all_(_full_lr_at_high(), c("val_loss_late_drop", ">", "still_falling_min"))),
                  # a val loss that has risen beyond its noise since its minimum: longer training buys over-confidence
                  c("val_loss_rise_noise", "<", "rise_noise_min"),
                  # a val loss at ~0 has nothing left to gain that counts, whatever its relative pace
                  c("val_loss_final", ">", "zero_loss_max"),
                  # ...nor has a val metric within half a point of its ceiling (section 6's smallest difference)
                  any_(c("val_metric_logged", "<", "flag_on"),
                       c("val_metric_best", "<", "metric_ceiling_max"))),
        verdict="undertrained: still improving when the run ended",
        moves=("epochs up", "learning_rate x2"),  # the steps it was cut short of first; then protocol 5's lr
        suppresses=("healthy",),
        source="protocol 5: loss still falling steadily with real F1 gains -> the model is learning, steps are "
               "small -> lr",
    ),
    Rule(
        id="healthy", scope="curve", priority=0, knob_class="capacity", confidence=0.75,
        when=all_(any_(all_(any_(c("val_metric_gain", ">=", "healthy_gain_min"),
                                 # a run read on its val loss alone (no val metric, as undertrained reads it) must
                                 # see that fall clear the noise band too (protocol 5b: a fall inside it is not a
                                 # fall; CoderJzy, fold H: -84% at 1.9 SE, then 2x its minimum); a run with a val
                                 # metric has the metric's hold (below) as its second witness
                                 all_(c("val_loss_drop", ">=", "healthy_val_loss_drop_min"),
                                      any_(c("val_metric_logged", ">=", "flag_on"),
                                           c("val_loss_drop_noise", ">=", "healthy_drop_noise_min")))),
                            any_(c("train_loss_drop", ">=", "healthy_loss_drop_min"),
                                 # a language model's token loss has an entropy floor: its val loss (perplexity,
                                 # protocol 9) is the measure, and a train loss that fell at all agrees with it
                                 all_(c("generative", ">=", "flag_on"),
                                      c("train_loss_drop", ">", "still_falling_min"),
                                      c("val_loss_drop", ">=", "healthy_val_loss_drop_min"))),
                            why="train and val both improved: the val metric or loss gained, the train loss fell"),
                       # any kind of run: the val loss improved beyond its noise band and ended within it of its
                       # best, the train loss falling with it (protocol 5b: improvements count beyond noise; what
                       # share of its start a loss can lose depends on the task's floor, which one curve lacks)
                       all_(c("val_loss_drop_noise", ">=", "healthy_drop_noise_min"),
                            c("val_loss_rise_share", "<=", "steady_rise_share_max"),
                            c("train_loss_drop", ">", "still_falling_min"),
                            c("val_loss_rise_noise", "<", "rise_noise_min"),
                            # ...and, but for a language model (an entropy floor to settle on), the train loss lost a
                            # healthy run's share or is still falling: a loss pinned flat far above 0 for most of the
                            # run is protocol 3's "train loss will not go down", not health (Satya-Check, fold G:
                            # -26% in the first tenth, then flat at the class prior's entropy, eval equal)
                            any_(c("generative", ">=", "flag_on"),
                                 c("train_loss_drop", ">=", "healthy_loss_drop_min"),
                                 c("train_loss_late_drop", ">", "still_falling_min")),
                            why="the val loss fell beyond its noise and held, beside a falling train loss"),
                       # a run with a val metric: the metric gained beyond its noise and held, the val loss inside
                       # its band of its minimum, the train loss down a healthy run's share (the same reading on the
                       # metric; a metric that rose while the train loss stayed pinned is no fit, protocol 3)
                       all_(c("val_metric_gain_se", ">=", "healthy_gain_se_min"),
                            c("val_metric_final_drop_se", "<", "drop_se_min"),
                            # (a run that logged no val loss: the metric's best late in the run instead, the hold
                            # read on the metric alone; fold M's JachinLin2022: first-token accuracy +5.3 points at
                            # 10.5 SE, best at 77%; fold D's 29aitch, best at 33% beside a memorised train loss, not)
                            any_(c("val_loss_rise_noise", "<", "rise_noise_min"),
                                 all_(c("val_loss_logged", "<", "flag_on"),
                                      c("best_step_fraction", ">=", "late_best_fraction_min"))),
                            c("train_loss_drop", ">=", "healthy_loss_drop_min"),
                            why="the val metric gained beyond its noise and held, beside a falling train loss"),
                       # ...or, its gain not measured (a Trainer run's first eval comes an epoch in, after most of
                       # the learning; 3 evals give no noise band to measure one against): the metric at a level that
                       # is no underfit's, ended within val_metric_drop_min of its best, the val loss inside its band
                       # of its minimum, the train loss down a healthy run's share: nothing to fix (protocol 3's
                       # "capacity adequate"; fold P's saulleyva: token F1 0.927 -> 0.946 over 3 epochs, train -81%)
                       # ...or a short curve (under tail_noise_points_min evals, no band of its own to measure a
                       # gain against) whose val loss ended inside its noise band and within val_loss_rise_min of its
                       # minimum while the train loss fell a healthy run's share: a tie is a tie (protocol 4), and
                       # nothing in the curve asks for a move (fold Q's Abhis-123 and MbeleckBerle: SQuAD, 3 epochs,
                       # val loss +3.2% and +2.3% at its last eval, inside its band, train -37%)
                       all_(c("n_eval_points", "<", "tail_noise_points_min"),
                            c("val_loss_rise_noise", "<", "rise_noise_min"),
                            c("val_loss_rise", "<", "val_loss_rise_min"),
                            # ...or, a language model (an entropy floor: no share of its start measures the fit,
                            # as the first route reads it), a train loss that fell at all beside a val loss whose
                            # pace leaves under remaining_gain_min to lose: converged, not slow (fold O's Shiv162003:
                            # bart-large-cnn, train -19%, val -0.060 then -0.0025; fold P's satojkovic: distilgpt2,
                            # train -3%, val -0.011 then -0.001; both reviews of each: healthy)
                            any_(c("train_loss_drop", ">=", "healthy_loss_drop_min"),
                                 all_(c("generative", ">=", "flag_on"),
                                      c("train_loss_drop", ">", "still_falling_min"),
                                      c("val_loss_remaining_gain", "<", "remaining_gain_min"))),
                            # ...a val metric, where logged, not below its best beyond its noise
                            any_(c("val_metric_logged", "<", "flag_on"),
                                 c("val_metric_final_drop_se", "<", "drop_se_min")),
                            why="a short curve: the train loss fell and the val loss held within its noise"),
                       # ...or a run that logged no train-loss trend (one window or none: logging_steps longer than
                       # the run; the gate is not applicable to any other run, so this route never closes the group
                       # for one), read on its validation side alone: the val loss fell beyond its noise band, ended
                       # inside it and within val_loss_rise_min of its minimum, with little left to lose at its pace
                       # (or what is left inside the band), and a val metric, where logged, within val_metric_drop_min
                       # of its best. The train side is missing, not flat (fold AA's dannyleo16, loganathanspr,
                       # xiluohe, fold M's BenjiKCF: both reviews healthy); still falling, undertrained reads it
                       all_(c("train_loss_untracked", ">=", "flag_on"),
                            # (or, with a val metric, the metric gained beyond its noise and held: the third
                            # route's reading of the validation side; fold Z's Warzkos: entity F1 +1.7 points at
                            # 3.2 SE, best at the end, the val loss's fall 1.1 noise units beside a +7% bump)
                            any_(c("val_loss_drop_noise", ">=", "healthy_drop_noise_min"),
                                 all_(c("val_metric_gain_se", ">=", "healthy_gain_se_min"),
                                      c("val_metric_final_drop_se", "<", "drop_se_min"))),
                            c("val_loss_rise_noise", "<", "rise_noise_min"),
                            c("val_loss_rise", "<", "val_loss_rise_min"),
                            any_(c("val_loss_remaining_gain", "<", "remaining_gain_min"),
                                 c("val_loss_remaining_noise", "<", "remaining_noise_min")),
                            any_(c("val_metric_logged", "<", "flag_on"),
                                 c("val_metric_final_drop", "<", "val_metric_drop_min")),
                            why="no train-loss trend logged: the val side improved beyond its noise and settled"),
                       all_(c("val_metric_best", ">=", "underfit_metric_max"),
                            c("val_metric_final_drop", "<", "val_metric_drop_min"),
                            # the val loss inside its band or under val_loss_rise_min above its minimum: a small
                            # rise with the metric at its best is not overfit (overfit's small-rise route reads it so;
                            # fold Q's UmaKrishnaPrasadB: +7.8% at 2.7 noise units, accuracy best at its last eval)
                            any_(c("val_loss_rise_noise", "<", "rise_noise_min"),
                                 c("val_loss_rise", "<", "val_loss_rise_min")),
                            c("train_loss_drop", ">=", "healthy_loss_drop_min"),
                            why="the val metric high and held, beside a falling train loss")),
                  any_(c("val_loss_rise", "<", "val_loss_rise_min"),
                       c("val_loss_rise_noise", "<", "rise_noise_min")),
                  any_(c("val_metric_final_drop", "<", "val_metric_drop_min"),
                       c("val_metric_final_drop_se", "<", "drop_se_min"),
                       c("val_loss_min_fraction", ">=", "late_min_fraction"),
                       c("val_metric_logged", "<", "flag_on")),
                  # a val metric, where logged, that rose above nothing at some eval: an F1 of exactly 0 at every
                  # eval is a model that never predicted the classes it scores, however its loss fell (fold AW's
                  # Zain1796: a RoBERTa NER run, entity F1 0 and token accuracy 0.977634, the 'O' share, at all 3
                  # evals while the val loss fell 13%; both reviews: not healthy)
                  any_(c("val_metric_logged", "<", "flag_on"), c("val_metric_best", ">", "metric_dead_max")),
                  c("gap_f1", "<", "overfit_gap_min")),
        verdict="capacity adequate: train and val both improved and held",
        moves=("keep capacity", "phase 2: tune learning_rate"),
        source="protocol 3: train and val both improve steadily -> capacity adequate, go to phase 2",
    ),
    Rule(
        id="confusable-classes-unresolved", scope="class", priority=30, knob_class="capacity", confidence=0.6,
        when=all_(c("confused_top_count", ">=", "confused_count_min"),
                  c("confused_top_rate", ">=", "confused_rate_min"),
                  c("confused_pairs_persist_share", ">=", "confused_persist_min")),
        verdict="the most confusable classes stay confused: the confusion barely moved since the first eval",
        moves=("+ffn", "r x2", "inspect the pair's labels"),
        caveat=PAIR_CAVEAT,
        source="protocol 3: the most confusable classes stay confused (the confusion matrix barely moves)",
    ),
    Rule(
        id="long-tail-collapse", scope="class", priority=30, knob_class="data", confidence=0.7,
        when=all_(c("tail_head_count_ratio", ">=", "tail_count_ratio_min", required=True),
                  c("tail_head_recall_gap", ">=", "tail_gap_min"),
                  c("tail_recall", "<=", "tail_recall_max")),
        verdict="long-tail classes collapse: rare classes are recalled far worse than frequent ones",
        moves=("oversample tail", "class weights", "more tail data"),
        source="protocol 2: long-tail share; 3: per-class recall becomes uneven",
    ),
    Rule(
        id="novel-phrasing-gap", scope="class", priority=25, knob_class="capacity", confidence=0.6,
        when=all_(c("familiar_novel_gap", ">=", "novel_gap_min", required=True),
                  c("familiar_novel_gap_growth", ">=", "novel_gap_growth_min", required=True),
                  c("familiar_metric_final", ">=", "familiar_fit_min")),
        verdict="overfitting evidence: right on phrasing close to the training texts, wrong on new phrasing",
        moves=("r /2", "lora_dropout up", "more varied training phrasing"),
        source="founding notes / protocol 3: an overfit model is right on phrasing it has seen and wrong on "
               "new phrasing (val slices `familiar` vs `novel`)",
    ),
    Rule(
        id="both-slices-low", scope="class", priority=24, knob_class="capacity", confidence=0.5,
        when=all_(c("familiar_metric_final", "<", "slices_low_max", required=True),
                  c("novel_metric_final", "<", "slices_low_max", required=True),
                  _FULL_LR_BELOW_HIGH),  # a full fine-tune: its lr move is a step within its range
        verdict="underfitting evidence: even phrasing close to the training texts scores low",
        moves=("r x2", "+ffn"),
        # protocol 3's underfit, as underfit-capacity reads it: a full fine-tune has no rank or module to add, the lr
        # is what binds (protocol 5), one x2 step (protocol 4)
        full_moves=("learning_rate x2",),
        full_caveat=FULL_UNDERFIT_CAVEAT,
        caveat=PAIR_CAVEAT,
        source="founding notes / protocol 3: an underfit model fails paraphrases and handles even the "
               "standard phrasing poorly",
    ),
    Rule(
        id="compound-intents-missed", scope="class", priority=23, knob_class="capacity", confidence=0.5,
        when=all_(c("compound_gap", ">=", "compound_gap_min", required=True),
                  c("single_metric_final", ">=", "single_fit_min", required=True)),
        verdict="multi-intent rows fail while single-intent rows fit: the weak spot of a small adapter",
        moves=("+ffn", "r x2"),
        # no full move: protocol 3 names compound inputs only among an adapter's underfit signs (its moves capacity),
        # and single-intent rows that fit say the lr is not what fails; the caveat's loss and decoding checks stand
        full_verdict="multi-intent rows fail while single-intent rows fit, with every weight trained",
        caveat="check the multi-label loss and decoding first (focal or pos_weight loss, tuned thresholds, a cap "
               "on labels per row move this slice more than capacity does)" + PAIR_THEN + PAIR_CAVEAT,
        source="founding notes: multi-intent inputs and compound sentences are where a weak adapter fails first",
    ),
    Rule(
        id="label-noise-suspected", scope="class", priority=20, knob_class="data", confidence=0.5,
        when=all_(c("train_confused_symmetric_pairs", ">=", "symmetric_pairs_min", required=True),
                  c("train_eval_metric_final", ">=", "noise_fit_min"),
                  c("train_eval_metric_final", "<=", "noise_fit_max"),
                  c("train_loss_late_drop", "<", "plateau_late_drop_max")),
        verdict="label noise suspected: training rows of some class pairs stay confused both ways while the "
                "rest fits",
        moves=("check labels (loratune assess)", "relabel or merge the pair"),
        source="protocol 2: label consistency (identical texts with different labels)",
    ),
    Rule(
        id="generations-looping", scope="class", priority=22, knob_class="data", confidence=0.6,
        when=all_(c("generative", ">=", "flag_on", required=True),
                  c("prompt_repetition_final", ">=", "looping_repetition_min", required=True),
                  c("prompt_repetition_rise", ">=", "looping_rise_min")),
        verdict="greedy outputs loop: a growing share of their word 3-grams are repeats",
        moves=("check data",),
        caveat="check that every training completion ends with the end-of-sequence token (the template adds it) so "
               "the model learns where to stop; loops that grow while the train loss races to zero are "
               "memorisation (see overfit-capacity)",
        source="protocol 9: the prompt set's repetition statistics turn degenerate output into a number",
    ),
    Rule(
        id="eval-loss-broken", scope="eval", priority=12, knob_class="data", confidence=0.9,
        when=all_(c("val_loss_nonfinite_evals", ">=", "nonfinite_min", required=True)),
        verdict="the eval loss is non-finite (NaN/inf) while the train loss on the same weights stays finite: the "
                "evaluation is broken, not the model (the curve verdict reads the signals that are finite)",
        moves=("check data",),
        caveat="a NaN eval loss beside a finite train loss is usually an eval set whose labels are all masked "
               "(-100: no completion tokens after truncation, or a collator that masks everything), so the mean "
               "loss is 0/0; fix the eval labels so that eval_loss is finite and logged",
        source="protocol 4: a non-finite loss is a divergence when it is the model's (the train loss); 5b: when a "
               "decisive signal is missing, say which one and how to log it",
    ),
    Rule(
        id="eval-metric-unmoved", scope="eval", priority=11, knob_class="data", confidence=0.7,
        when=all_(c("val_metric_logged", ">=", "flag_on", required=True),
                  c("n_eval_points", ">", "few_evals_max"),
                  c("val_metric_best", "<", "metric_ceiling_max"),
                  c("val_metric_gain_se", "<", "healthy_metric_moved_se_min", required=True),
                  # ...a band that is the noise, not its upper bound (the binomial formula over the rows of a token
                  # accuracy read from a few evals): inside a bound, only a metric that gained less than no_gain_max
                  # never rose (TRL SFT, packing: 8 eval rows in 2 packed sequences, val_n 2, a band of 0.35 while
                  # the val loss fell 4.13 -> 3.11 and the token accuracy rose 0.10 -> 0.35, read "check data")
                  any_(c("val_metric_noise_bound", "<", "flag_on"),
                       c("val_metric_gain", "<", "no_gain_max"),
                       why="the val metric's band is its noise, or an upper bound it gained too little to leave"),
                  # ...while the val loss fell beyond its band and held there: the loss reads as a fit
                  c("val_loss_drop_noise", ">=", "healthy_drop_noise_min", required=True),
                  c("val_loss_rise_noise", "<", "rise_noise_min")),
        verdict="the val loss fell beyond its noise band but the val metric never rose out of its own: the loss and "
                "the metric disagree, so the curve is not read as healthy",
        moves=("check data",),
        suppresses=("healthy",),
        caveat="a loss that falls while the task's metric stays flat usually scores something other than the task: "
               "seq2seq labels padded without -100 (the loss learns the padding), a metric computed on empty decoded "
               "outputs, a classifier stuck on one class (its loss settles at the class prior while accuracy "
               "stays at chance: see collapsed), or an eval set too small for the metric to move; check the labels "
               "and a few predictions, then rerun",
        source="protocol 5b: improvements count beyond noise, on the metric the task is judged by; when a decisive "
               "signal is missing or broken, say which one and how to log it",
    ),
    Rule(
        id="eval-too-noisy", scope="eval", priority=10, knob_class="data", confidence=0.9,
        when=all_(c("val_metric_se", ">=", "eval_se_max", required=True)),
        verdict="the val set is too small to separate differences under 2 standard errors",
        moves=("more val data",),
        source="protocol 4-6: feedback is val macro-F1; gains below noise do not count",
    ),
    # comparisons between runs that differ in one knob -----------------------------------------
    Rule(
        id="seed-unstable", scope="compare", knob="seed", priority=70, knob_class="optimization", confidence=0.8,
        when=all_(c("seed_std", ">=", "seed_std_max", required=True)),
        verdict="results differ a lot between seeds: the learning rate is at an unstable edge",
        moves=("learning_rate /2", "report seed spread"),
        source="protocol 4: results differ a lot between seeds -> lower lr, report seed spread",
    ),
    Rule(
        id="capacity-bound", scope="compare", knob="r", priority=60, knob_class="capacity", confidence=0.8,
        when=all_(c("r_effect_noise", ">=", "effect_noise_min", required=True),
                  c("r_over_lr_effect", ">=", "binding_ratio_min", required=True)),
        # the ratio is required: the binding knob is decided by both arms of the pair (protocol 5); two runs that differ
        # only in r read "more sensitive to rank than to learning rate" with no lr arm measured (confidence 0.6)
        verdict="capacity-bound: the val metric is more sensitive to rank than to learning rate",
        moves=("r x2", "+ffn"),  # towards the better run: r /2, -ffn where the lower rank did better
        source="protocol 5: minimal-intervention pair; the knob the val metric is more sensitive to binds",
    ),
    Rule(
        id="optimization-bound", scope="compare", knob="learning_rate", priority=60, knob_class="optimization",
        confidence=0.8,
        when=all_(c("lr_effect_noise", ">=", "effect_noise_min", required=True),
                  c("lr_over_r_effect", ">=", "binding_ratio_min", required=True)),
        verdict="optimization-bound: the val metric is more sensitive to learning rate than to rank",
        moves=("learning_rate x2",),  # towards the better run: /2 where the lower lr did better
        source="protocol 5: minimal-intervention pair; the knob the val metric is more sensitive to binds",
    ),
    Rule(
        id="update-too-weak", scope="compare", priority=30, knob_class="optimization", confidence=0.6,
        # protocol 4's condition is both halves: "more rank unwanted" is the overfit risk a train/val metric gap
        # shows; with no train-subsample metric in any run that half is unknown, and the rule is not evaluated
        # (a weak lr effect alone is not this verdict: a val set too small to separate the runs reads the same)
        # a scale x2 step past max_scale is just a hidden lr increase (protocol 4: rarely above 4): not prescribed
        when=all_(c("lr_loss_effect", "<", "weak_lr_loss_max", required=True),
                  c("gap_f1_max", ">=", "weak_gap_min", required=True),
                  c("scale_x2", "<=", "max_scale")),
        verdict="LoRA update too weak: lr changes barely move the loss and more rank risks overfitting",
        moves=("scale x2 (lora_alpha x2)",),
        # no full move: protocol 4's only move here is LoRA's scale s; a full fine-tune has none, and the lr is what
        # barely moved the loss (nor does protocol 4 name another knob)
        full_verdict="lr changes barely move the loss while the train/val gap is large, with every weight trained "
                     "(no LoRA scale to raise)",
        source="protocol 4: lr changes barely move the loss, more rank unwanted -> scale s 1 -> 2 (rarely above 4)",
    ),
    Rule(
        id="alpha-insensitive", scope="compare", knob="lora_alpha", priority=20, knob_class="optimization",
        confidence=0.7,
        when=all_(c("alpha_effect_noise", "<", "alpha_effect_noise_max", required=True)),
        verdict="alpha-insensitive: changing lora_alpha moved the val metric less than the noise",
        moves=("keep lora_alpha", "tune learning_rate instead"),
        source="protocol 1/4: alpha is a hidden lr; measure it against an lr step",
    ),
    Rule(
        id="runs-never-learned", scope="compare", priority=15, knob_class="optimization", confidence=0.8,
        # every run pinned at a uniform guess at an lr below protocol 1's range: the pair measured nothing (no knob
        # binds a model that never moved), and neither a bigger val set nor a higher rank makes it learn
        when=all_(c("min_train_loss_vs_chance", ">=", "never_left_chance_min", required=True),
                  c("max_peak_lr", "<", "usual_lr_min", required=True)),
        verdict="the runs did not learn: every train loss stayed at ln(classes), a uniform guess, at an lr below the "
                f"usual range ({_USUAL}): the lr is far too small, so the compared knobs were not measured",
        moves=("learning_rate x2",),
        suppresses=("differences-within-noise", "knobs-not-binding"),
        source="protocol 4-5: loss falls very slowly or not at all -> lr too small -> lr x2",
    ),
    Rule(
        id="knobs-not-binding", scope="compare", priority=12, knob_class="optimization", confidence=0.8,
        # a null result on a val set that resolves small effects: the knobs compared do not bind at these values
        # (protocol 5: the knob the metric is more sensitive to binds; here neither moved it), not a noise problem
        when=all_(c("max_effect_noise", "<", "not_binding_effect_noise_max", required=True),
                  c("metric_noise", "<", "eval_se_max", required=True),
                  # ...and some run learned: runs that all stayed at a uniform guess measured no knob (a tie of
                  # models that never moved is no tie of the knobs); at an lr below the usual range
                  # runs-never-learned says lr x2, at a usual or high lr the per-run findings speak
                  any_(c("min_train_loss_vs_chance", "<", "never_left_chance_min"),
                       c("chance_level_unread", ">=", "flag_on"))),
        verdict="the knobs compared did not bind: every knob effect is under one noise unit of a val set that "
                "resolves small differences (a measured tie, not a val set too small)",
        moves=("keep either value",),
        source="protocol 5: the knob the validation metric is more sensitive to is the binding one; 5b: inside the "
               "band two numbers are a tie, and the verdict says so",
    ),
    Rule(
        id="differences-within-noise", scope="compare", priority=10, knob_class="data", confidence=0.8,
        # ...only where the noise unit is large (eval_se_max) or an effect nears the band's edge: a smaller unit with
        # every effect well inside it is a measured tie, knobs-not-binding's (runs compared on their val loss have no
        # binomial SE to judge it by)
        when=all_(c("max_effect_noise", "<", "effect_noise_min", required=True),
                  any_(c("metric_noise", ">=", "eval_se_max"), c("compared_on_loss", ">=", "flag_on"),
                       c("max_effect_noise", ">=", "not_binding_effect_noise_max"))),
        verdict="the differences between these runs are within noise: the val set (or seed count) is too small "
                "to separate them",
        moves=("more val data", "more seeds"),
        source="protocol 5-6: report both deltas and the seed noise next to them",
    ),
)

RULES: tuple[Rule, ...] = _RULES


@dataclass(frozen=True)
class Signal:
    """A signal a run may lack, the features it feeds, and how to log it next time (protocol 5b: when a
    decisive signal is missing, say which one and how to log it)."""

    name: str
    features: tuple[str, ...]
    how: str
    # advised on an inconclusive verdict when one of its features is missing: a curve too short for any rule
    reads_curve: bool = False
    # the reasons a feature goes missing for that make this signal the one to log, whatever signal lists the
    # feature: a run with no val metric lacks val_metric_se for want of the metric, not of the val size
    reasons: tuple[str, ...] = ()


_SIGNALS = (
    Signal("a val loss curve", ("val_loss_start", "val_loss_min", "val_loss_final", "val_loss_drop", "val_loss_rise",
                                "val_loss_min_fraction", "val_loss_late_drop", "val_loss_late_share",
                                "val_loss_rise_share", "val_loss_noise", "val_loss_rise_noise",
                                "val_loss_drop_noise"),
           "evaluate during training: eval_strategy='steps' with eval_steps about a tenth of the run, and an "
           "eval_dataset (at least 4 eval points give a noise band); `loratune train`: eval_steps=N, or a larger "
           "max_eval_share when a short run's evaluation budget left it few points (run.json evaluation)",
           reads_curve=True),
    Signal("a val metric (macro-F1 or accuracy)", ("val_metric_start", "val_metric_best", "val_metric_final",
                                                   "val_metric_gain", "val_metric_room", "val_metric_final_drop",
                                                   "val_metric_final_drop_se", "val_metric_max_drop",
                                                   "val_metric_max_drop_se", "val_metric_late_gain",
                                                   "val_metric_gain_per_epoch_late", "val_metric_noise"),
           "pass compute_metrics to the Trainer returning {'macro_f1': f1_score(labels, preds, average='macro'), "
           "'accuracy': ...} (scikit-learn)", reasons=(NO_VAL_METRIC,)),
    Signal("a train-subsample metric", ("train_eval_metric_final", "gap_f1"),
           "evaluate a fixed slice of the training data like the val set: eval_dataset={'val': val_ds, "
           "'train': train_ds.select(range(500))} logs eval_train_* beside eval_val_*"),
    Signal("the val size", ("val_n", "val_metric_se"),
           "keep eval_runtime and eval_samples_per_second in the log (the Trainer writes them), or a val_n column "
           "in a CSV"),
    Signal("the number of classes", ("n_classes", "train_loss_vs_chance", "val_loss_vs_chance"),
           "save the model config beside the state (model.config.save_pretrained(output_dir): its id2label), or "
           "log the first train loss at step 1 (logging_steps=1 at the start, or logging_first_step=True)"),
    Signal("a prompt set", ("prompt_familiar_score_final", "prompt_novel_score_final", "prompt_novel_drift",
                            "prompt_novel_drift_se", "prompt_gap_widening",
                            "prompt_gap_widening_se", "prompt_len_ratio_final", "prompt_repetition_final",
                            "prompt_repetition_rise"),
           "causal-lm: set data.prompt_set to a JSONL file of {\"prompt\", \"reference\", \"group\"} rows, 20 or "
           "more per group (familiar: close to the training prompts; novel: unlike them; the shipped demo's "
           "demo_data/instructions/prompt_set.jsonl is one); loratune generates greedily at every eval and logs "
           "val/prompt_<group>_<metric>. With TRL / the Trainer: generate in a callback's on_evaluate and log "
           "loratune.generation.score_prompt_set(items, outputs) under the same keys"),
    Signal("per-class val recall and precision", ("val_recall_min", "val_pred_top_share", "val_recall_zero_share",
                                                  "tail_recall", "confused_top_count"),
           "train with `loratune train` (it records per-class numbers and confusions at every eval), or log "
           "recall/precision per class from compute_metrics"),
)

SIGNALS: tuple[Signal, ...] = _SIGNALS


def signals_for(feature: str, why: str | None = None, missing: Mapping[str, str] | None = None) -> tuple[Signal, ...]:
    """The signals to log for a missing feature (none: not one a user logs). `why` it is missing, where known, first:
    a signal that names that reason (Signal.reasons) is the one to log; the feature's own signal too where another
    of its features is `missing` for another reason (no val metric and the val size unknown: both)."""
    own = next((sg for sg in SIGNALS if feature in sg.features), None)
    by_reason = next((sg for sg in SIGNALS if why is not None and why in sg.reasons), None)
    if by_reason is None or by_reason is own:
        return () if own is None else (own,)
    missing = missing or {}
    also = own is not None and any(f != feature and missing.get(f) not in (None, why)
                                   and not missing[f].startswith(NOT_APPLICABLE) for f in own.features)
    return (by_reason, own) if also else (by_reason,)


def rule_by_id(rule_id: str, rules: tuple[Rule, ...] = RULES) -> Rule:
    for r in rules:
        if r.id == rule_id:
            return r
    raise KeyError(rule_id)


# what every printer (diagnose, show, report, the callback, train) writes for a finding's empty move list
NO_MOVE = "none"
NO_MOVE_FULL = "none for a full fine-tune (this rule's moves, {}, turn adapter knobs it does not have)"


def moves_text(rule_id: str | None, moves: tuple[str, ...] | list[str]) -> str:
    """A finding's moves as one line: its moves, else `none` and why (Rule.moves_for leaves a full fine-tune none of
    a rule whose every move is an adapter's: both-slices-low's r x2, +ffn)."""
    if moves:
        return ", ".join(moves)
    rule = next((r for r in RULES if r.id == rule_id), None)
    return NO_MOVE_FULL.format(", ".join(rule.moves)) if rule is not None and rule.moves else NO_MOVE


def catalogue_for(rule: Rule) -> Mapping:
    """The feature catalogue a rule's clauses name."""
    return COMPARE_FEATURES if rule.scope == "compare" else FEATURES


ALWAYS, NEVER = "always", "never"  # a clause's or condition's reading over every run (None: it can go either way)


def clause_state(cl: Clause, value: float, catalogue: Mapping) -> str | None:
    """ALWAYS when `cl` (its threshold at `value`) holds for every value its feature can take (features.FEATURE_DOMAINS,
    or UNIT_DOMAINS by the feature's unit), NEVER when for none, else None (an unbounded feature: None)."""
    spec = catalogue.get(cl.feature)
    domain = FEATURE_DOMAINS.get(cl.feature) or (UNIT_DOMAINS.get(spec.unit) if spec else None)
    if domain is None:
        return None
    lo, hi = domain
    hi = math.inf if hi is None else hi
    always = {">=": value <= lo, ">": value < lo, "<": value > hi, "<=": value >= hi}[cl.op]
    never = {">=": value > hi, ">": value >= hi, "<": value <= lo, "<=": value < lo}[cl.op]
    return ALWAYS if always else NEVER if never else None


def cond_state(cond: Cond | Clause, values: Mapping[str, float], catalogue: Mapping) -> str | None:
    """`cond`'s reading over every run with `values`: an `all` holds always when each item does, never when one never
    does; an `any` the other way round."""
    if isinstance(cond, Clause):  # (a threshold or op the table lacks: check_table names it)
        known = cond.threshold in values and cond.op in OPS
        return clause_state(cond, values[cond.threshold], catalogue) if known else None
    states = [cond_state(item, values, catalogue) for item in cond.items]
    first, other = (ALWAYS, NEVER) if cond.mode == "any" else (NEVER, ALWAYS)
    return first if first in states else other if all(st == other for st in states) else None


def always_firing(values: Mapping[str, float], rules: tuple[Rule, ...] = RULES) -> list[str]:
    """Each rule that `values` (the diagnosis table) make fire on every run: a clause holding for every value of its
    feature where that is its route's only condition, or the route's other clauses hold always too (nonfinite_min 0:
    `nonfinite_values >= 0`, `diverged` on every run). A value that makes a clause hold for no run switches a route
    off, and is a user's to choose (a route is turned off alone by raising or lowering its own threshold)."""
    problems = []
    for r in rules:
        cat = catalogue_for(r)
        if cond_state(r.when, values, cat) != ALWAYS:
            continue
        routes = [i for i in r.when.items if cond_state(i, values, cat) == ALWAYS] if r.when.mode == "any" else [r.when]
        route = routes[0]
        held = [cl for cl in route.leaves() if clause_state(cl, values[cl.threshold], cat) == ALWAYS]
        names = " and ".join(dict.fromkeys(f"'{cl.threshold}' at {values[cl.threshold]:.12g}" for cl in held))
        said = ", ".join(dict.fromkeys(f"`{cl.feature} {cl.op} {cl.threshold}`" for cl in held))
        why = f" (its route '{route.why}')" if isinstance(route, Cond) and route.why else ""
        problems.append(f"threshold {names} makes {said} hold for every run, and with it rule '{r.id}'{why}: every "
                        f"run would be {r.id}")
    return problems


def check_table(rules: tuple[Rule, ...] = RULES, thresholds: Mapping[str, Threshold] = THRESHOLDS) -> list[str]:
    """Problems with a rule table (unknown features/thresholds/ops/ids, unit mismatches); [] when sound."""
    problems = []
    ids = [r.id for r in rules]
    for dup in {i for i in ids if ids.count(i) > 1}:
        problems.append(f"duplicate rule id {dup}")
    for r in rules:
        if r.scope not in SCOPES:
            problems.append(f"{r.id}: unknown scope {r.scope}")
        if r.knob_class not in KNOB_CLASSES:
            problems.append(f"{r.id}: unknown knob class {r.knob_class}")
        cat = catalogue_for(r)
        for cl in r.when.leaves():
            if cl.feature not in cat:
                problems.append(f"{r.id}: unknown feature {cl.feature}")
            if cl.op not in OPS:
                problems.append(f"{r.id}: unknown op {cl.op}")
            if cl.threshold not in thresholds:
                problems.append(f"{r.id}: unknown threshold {cl.threshold}")
            elif cl.feature in cat and cat[cl.feature].unit != thresholds[cl.threshold].unit:
                problems.append(f"{r.id}: {cl.feature} ({cat[cl.feature].unit}) vs {cl.threshold} "
                                f"({thresholds[cl.threshold].unit})")
        for s in r.suppresses:
            if s not in ids:
                problems.append(f"{r.id}: suppresses unknown rule {s}")
        for m in r.moves + (r.full_moves or ()):  # a move is defined once: a row of loratune.moves.MOVES (by id or text)
            if not is_move(m):
                problems.append(f"{r.id}: unknown move {m!r} (add it to loratune.moves.MOVES)")
        for m in r.full_moves or ():  # a full fine-tune has no adapter knob to turn
            if is_move(m) and adapter_only(m):
                problems.append(f"{r.id}: full move {m!r} turns an adapter-only knob (a full fine-tune has none)")
        if r.knob is not None and (r.scope != "compare" or r.knob not in COMPARE_KNOBS):
            problems.append(f"{r.id}: knob {r.knob} is no compare knob ({', '.join(COMPARE_KNOBS)}) of a compare rule")
    problems += [f"threshold defaults: {p}" for p in order_problems({"diagnosis": {n: t.value for n, t in
                                                                                   thresholds.items()}})]
    problems += [f"threshold defaults: {p}" for p in always_firing({n: t.value for n, t in thresholds.items()}, rules)]
    for t in thresholds.values():
        problem = t.allowed.problem(t.value)
        if problem:
            problems.append(f"threshold {t.name}: its default {t.value:g} is outside its unit's range ({problem})")
    for sg in SIGNALS:
        for f in sg.features:
            if f not in FEATURES:
                problems.append(f"signal {sg.name!r}: unknown feature {f}")
    return problems


# ---------------------------------------------------------------------------------------------
# Thresholds: defaults + YAML overrides
# ---------------------------------------------------------------------------------------------


def default_thresholds() -> dict[str, float]:
    return {name: t.value for name, t in THRESHOLDS.items()}


def _check_value(table: str, name: str, default: Any, value: Any,
                 allowed: ValueRange | None = None) -> tuple[Any, str | None]:
    """The override as the table holds it, and the problem or None (a file's `1e-05` is a number by now:
    read_threshold_file). The value is None where it is no finite number; a number out of its range comes back with
    its problem (a recorded value is read with a note: resolve_recorded_tables). A diagnosis threshold takes its
    unit's range (UNIT_RANGES; signed units any number; the rules it makes fire on every run: always_firing);
    assess and LoRA-vs-full values are counts, shares and
    ratios: >= 0, a count (an int default) a whole number, and one with a range of its own (`allowed`) in it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"threshold '{name}': got {value!r}; allowed: a number"
    if not math.isfinite(value):  # nan compares false with everything: each rule reading it silently changes verdict
        return None, f"threshold '{name}': got {value!r}; allowed: a finite number"
    if table == "diagnosis":
        problem = THRESHOLDS[name].allowed.problem(value) if name in THRESHOLDS else None
        return float(value), (f"threshold '{name}': got {value!r}; allowed: {problem}" if problem else None)
    if value < 0:
        return float(value), f"threshold '{name}': got {value!r}; allowed: a number >= 0"
    problem = allowed.problem(value) if allowed is not None else None
    if problem:
        return float(value), f"threshold '{name}': got {value!r}; allowed: {problem}"
    if isinstance(default, int):
        if value != int(value):
            return value, f"threshold '{name}': got {value!r}; allowed: a whole number (it counts rows or items)"
        return int(value), None
    return float(value), None


@dataclass(frozen=True)
class ThresholdOrder:
    """Two thresholds whose order the rules need: `low` <= `high` (a band's ends, a weaker and a stronger cut). Names
    may be of any table `loratune rules` lists; a pair is checked where both are in the tables resolved."""

    low: str
    high: str
    why: str


THRESHOLD_ORDERS: tuple[ThresholdOrder, ...] = (
    ThresholdOrder("hard_probe_f1", "easy_probe_f1", "a probe F1 between them would be both a hard and an easy task "
                   "(assess: below hard_probe_f1 hard, above easy_probe_f1 easy)"),
)  # (the label-noise band's ends, noise_fit_min / noise_fit_max, are no such pair: the wrong way round
# the band is empty and label-noise switched off, a user's to choose; nor are a weaker and a stronger cut of separate
# routes, rise_noise_min / rise_noise_strong_min: each route is turned off alone by raising its own)


def order_problems(tables: Mapping[str, Mapping[str, Any]],
                   orders: tuple[ThresholdOrder, ...] = THRESHOLD_ORDERS) -> list[str]:
    """Each pair of `orders` whose values in `tables` (table -> name -> value) are the wrong way round."""
    values = {name: value for table in tables.values() for name, value in table.items()}
    return [f"'{o.low}' ({values[o.low]:g}) must not exceed '{o.high}' ({values[o.high]:g}): {o.why}"
            for o in orders if o.low in values and o.high in values and values[o.low] > values[o.high]]


def _resolve(overrides: Mapping[str, Any] | None, tables: Mapping[str, Mapping[str, Any]],
             ranges: Mapping[str, ValueRange] | None, fixed: Mapping[str, str] | None
             ) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
    """(the tables with `overrides` applied, what cannot be read at all: unknown or fixed names, values no finite
    number; what is out of the allowed ranges: a value out of its range, a pair the wrong way round, a rule made to
    fire on every run). A value out of range is applied."""
    tables = {table: dict(values) for table, values in tables.items()}
    owner = {name: table for table, values in tables.items() for name in values}
    unreadable, out_of_range = [], []
    for name, value in (overrides or {}).items():
        table = owner.get(name)
        if table is None and name in (fixed or {}):
            unreadable.append(f"threshold '{name}' is fixed ({fixed[name]}: `loratune rules` shows it, marked fixed; "
                              "no --thresholds file overrides it)")
            continue
        if table is None:
            close = difflib.get_close_matches(str(name), list(owner), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            unreadable.append(f"unknown threshold '{name}'{hint}")
            continue
        checked, problem = _check_value(table, name, tables[table][name], value, (ranges or {}).get(name))
        if checked is None:
            unreadable.append(problem)
            continue
        tables[table][name] = checked
        if problem:
            out_of_range.append(problem)
    if not unreadable:  # pairs whose order the rules need (THRESHOLD_ORDERS), rules made to fire on every run
        out_of_range += order_problems(tables)
        out_of_range += always_firing(tables["diagnosis"]) if "diagnosis" in tables else []
    return tables, unreadable, out_of_range


THRESHOLDS_FIX = ("use the names listed by `loratune rules` (not those marked fixed), each with a number in its "
                  "allowed range")


def resolve_threshold_tables(overrides: Mapping[str, Any] | None, tables: Mapping[str, Mapping[str, Any]],
                             ranges: Mapping[str, ValueRange] | None = None,
                             fixed: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """`tables` (table -> name -> default; a name unique across tables) with `overrides` applied. Unknown names or
    bad values raise one UserError naming all. `loratune.thresholds` passes every table `loratune rules` lists, and
    `ranges` (name -> ValueRange) for the non-diagnosis values bounded above, and `fixed` (name -> the table that lists
    it): numbers `loratune rules` shows that no file overrides, refused as such rather than as unknown."""
    tables, unreadable, out_of_range = _resolve(overrides, tables, ranges, fixed)
    if unreadable or out_of_range:
        raise UserError("invalid thresholds: " + "; ".join(unreadable + out_of_range), THRESHOLDS_FIX)
    return tables


def resolve_recorded_tables(overrides: Mapping[str, Any] | None, tables: Mapping[str, Mapping[str, Any]], where: str,
                            ranges: Mapping[str, ValueRange] | None = None, fixed: Mapping[str, str] | None = None
                            ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """As resolve_threshold_tables, for overrides a record holds (`where`: a run's run.json, a study's study.db), not
    ones a user writes now: a value the ranges refuse (taken by an earlier version) is read as recorded, with a note
    naming `where`; what cannot be read at all raises a UserError naming `where`."""
    tables, unreadable, out_of_range = _resolve(overrides, tables, ranges, fixed)
    if unreadable:
        raise UserError(f"the thresholds recorded in {where} cannot be read: " + "; ".join(unreadable),
                        f"restore the record in {where}, or remove the entries named to read it with the defaults")
    notes = [f"thresholds recorded in {where} read as recorded, though a --thresholds file may no longer give them: "
             + "; ".join(out_of_range)] if out_of_range else []
    return tables, notes


def resolve_thresholds(overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The diagnosis thresholds: defaults with `overrides` applied (a file naming the other tables' thresholds
    too goes through `loratune.thresholds.load_threshold_tables`)."""
    return resolve_threshold_tables(overrides, {"diagnosis": default_thresholds()})["diagnosis"]


def resolve_recorded_thresholds(overrides: Mapping[str, Any] | None, where: str) -> tuple[dict[str, float], list[str]]:
    """The diagnosis thresholds a record holds (resolve_recorded_tables), and its notes."""
    tables, notes = resolve_recorded_tables(overrides, {"diagnosis": default_thresholds()}, where)
    return tables["diagnosis"], notes


def read_threshold_file(path: str | Path | None) -> dict[str, Any]:
    """The overrides of a YAML file (`name: value` lines, or all of them under a `thresholds:` key), unchecked. Read
    as a config file is (config.read_yaml_file: `~` expanded, a name given twice refused); names beside a
    `thresholds:` section are refused, not dropped."""
    if path is None:
        return {}
    from loratune.config import read_yaml_file

    p, data = read_yaml_file(path, "thresholds file", "write `name: value` lines")
    if isinstance(data.get("thresholds"), dict):
        beside = [str(k) for k in data if k != "thresholds"]
        if beside:
            raise UserError(f"thresholds file '{p}' gives {', '.join(beside)} beside its `thresholds:` section, which "
                            "would be ignored", "write every name under `thresholds:`, or every one at the top level")
        data = data["thresholds"]
    return {name: _file_number(value) for name, value in data.items()}


def _file_number(value: Any) -> Any:
    """A file's value as a number where it reads as one: YAML 1.1 reads `1e-05` (no dot; what `loratune rules`
    prints) as a string, so it is read as a config file's number is (config.to_number); 'big' stays a string and is
    refused by the value check. (A Python caller's thresholds= mapping takes numbers only.)"""
    from loratune.config import to_number

    if not isinstance(value, str):
        return value
    ok, number, _ = to_number(value)
    return number if ok else value


# the run.json key holding the diagnosis thresholds a run was judged by where they differ from the defaults (name ->
# value; a tune trial's: the study's --thresholds): diagnose reads them back for that run (show, diagnose, report, the
# trackers' verdict) unless it is given thresholds of its own
RUN_THRESHOLDS_KEY = "diagnosis_thresholds"


def overridden_values(values: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """name -> value of each threshold in `values` that differs from its default in `defaults` (a file naming a
    default changes no decision, so it is no override)."""
    return {k: v for k, v in sorted((values or {}).items()) if k in defaults and v != defaults[k]}


def overridden_thresholds(values: Mapping[str, float] | None) -> dict[str, float]:
    """name -> value of each diagnosis threshold in `values` that differs from its default."""
    return overridden_values(values, default_thresholds())


def run_thresholds_entry(values: Mapping[str, float] | None) -> dict[str, dict[str, float]]:
    """What a run's record (run.json) carries of the diagnosis thresholds `values` it is judged by: RUN_THRESHOLDS_KEY
    -> the overrides, or nothing where they are the defaults (a tune trial's, the HF callback's record)."""
    overrides = overridden_thresholds(values) if values is not None else {}
    return {RUN_THRESHOLDS_KEY: overrides} if overrides else {}


def overrides_text(overrides: Mapping[str, Any] | None, none: str = "none") -> str:
    """Overrides on one line ('a=1, b=10%'; `none` where there are none), each diagnosis threshold printed as rule
    conditions print it (format_threshold), another table's at full precision too."""
    def shown(name: str, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return str(value)
        return format_threshold(THRESHOLDS[name].unit if name in THRESHOLDS else "", value)

    return ", ".join(f"{k}={shown(k, v)}" for k, v in sorted((overrides or {}).items())) or none


def load_thresholds(path: str | Path | None) -> dict[str, float]:
    """The diagnosis thresholds with the file's overrides (diagnosis names only)."""
    return resolve_thresholds(read_threshold_file(path))


# ---------------------------------------------------------------------------------------------
# Printing conditions
# ---------------------------------------------------------------------------------------------


# a threshold's unit -> the suffix its value is printed with (a share as a percentage); a threshold is printed at full
# precision (format_threshold), never rounded as a measured value is (features.format_value): zero_loss_max 0.0035
# printed as 0.004, and a 0.0004 override as 0.000 / 0.0%
THRESHOLD_SUFFIX: Mapping[str, str] = MappingProxyType({"fraction": "%", "ratio": "x", "se": " SE"})
THRESHOLD_DIGITS = 12  # significant digits: every value a user writes round-trips; float noise (0.1 * 100) never shows


def format_threshold(unit: str, value: float) -> str:
    """A threshold's value as rule conditions print it: every digit it has (10%, 0.04%, 0.0035, 1e-05, 1.5x)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    shown = value * 100 if unit == "fraction" else value
    return f"{shown:.{THRESHOLD_DIGITS}g}{THRESHOLD_SUFFIX.get(unit, '')}"


# what `loratune rules` says of a gate and of a route of its own (Cond.gate, Cond.alone), in text and as JSON keys
GATE_MARK = "[gate: which runs this route is for; not evidence]"
ALONE_MARK = "[own route: read as a rule of its own]"
# a rule's full-fine-tune moves at an lr at or above its range's top (Rule.moves_for, lr_high) where none is left
NO_MOVE_LR_HIGH = "none (no move raises the lr of a full fine-tune already above its range)"


def threshold_text(name: str, thresholds: Mapping[str, float] | None = None) -> str:
    """A threshold's value as rule conditions print it; one read against full fine-tuning's range
    (LORA_RANGE_LR_THRESHOLDS, thresholds_for_method) with that value too."""
    values = thresholds or default_thresholds()
    unit = THRESHOLDS[name].unit
    text = format_threshold(unit, values[name])
    if name in LORA_RANGE_LR_THRESHOLDS:
        text += f"; {format_threshold(unit, thresholds_for_method(values, 'full')[name])} for a full fine-tune"
    return text


def describe_clause(cl: Clause, thresholds: Mapping[str, float] | None = None) -> str:
    req = " [required]" if cl.required else ""
    return f"{cl.feature} {cl.op} {cl.threshold} ({threshold_text(cl.threshold, thresholds)}){req}"


def _marks(cond: Cond) -> str:
    return "".join(f" {m}" for m, on in ((GATE_MARK, cond.gate), (ALONE_MARK, cond.alone)) if on)


def describe(cond: Cond | Clause, thresholds: Mapping[str, float] | None = None, indent: int = 0) -> str:
    """A condition as indented text: `all of:` / `any of:` and one clause per line."""
    pad = "  " * indent
    if isinstance(cond, Clause):
        return pad + describe_clause(cond, thresholds)
    if len(cond.items) == 1 and isinstance(cond.items[0], Clause) and not _marks(cond):
        return pad + describe_clause(cond.items[0], thresholds)
    lines = [f"{pad}{cond.mode} of:{_marks(cond)}"]
    lines += [describe(item, thresholds, indent + 1) for item in cond.items]
    return "\n".join(lines)


def cond_to_data(cond: Cond | Clause) -> dict:
    """A condition as JSON-ready data."""
    if isinstance(cond, Clause):
        return {"feature": cond.feature, "op": cond.op, "threshold": cond.threshold, "required": cond.required}
    return {cond.mode: [cond_to_data(i) for i in cond.items],
            **({"gate": True} if cond.gate else {}), **({"alone": True} if cond.alone else {})}


def rule_to_data(rule: Rule, thresholds: Mapping[str, float] | None = None) -> dict:
    values = thresholds or default_thresholds()
    return {
        "id": rule.id, "scope": rule.scope, "priority": rule.priority, "verdict": rule.verdict,
        "knob_class": rule.knob_class, "moves": list(rule.moves), "full_moves": list(rule.moves_for("full")),
        # ...at an lr at or above high_lr_min read for a full fine-tune (Rule.moves_for: no lr x2 there)
        "full_moves_lr_high": list(rule.moves_for("full", lr_high=True)),
        "full_verdict": rule.verdict_for("full"), "full_caveat": rule.caveat_for("full"),
        "suppresses": list(rule.suppresses),
        "confidence": rule.confidence, "when": cond_to_data(rule.when),
        "thresholds": {cl.threshold: values[cl.threshold] for cl in rule.when.leaves()},
        "full_thresholds": {cl.threshold: thresholds_for_method(values, "full")[cl.threshold]
                            for cl in rule.when.leaves() if cl.threshold in LORA_RANGE_LR_THRESHOLDS},
        "source": rule.source, "caveat": rule.caveat,
    }
