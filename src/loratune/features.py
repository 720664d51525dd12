"""Curve features: named numbers computed from a run history (pure; no torch, no numpy needed).

A history is the list of eval-point dicts of `history.jsonl` (see docs/run-record.md): flat keys
`step`, `epoch`, `train/loss`, `val/loss`, `val/macro_f1`, `val/recall/<label>`, ... The optional
`meta` is the run's `run.json` (labels, label counts, status, task).

`compute_features(points, meta)` returns a `CurveFeatures`: every name of the catalogue `FEATURES`
maps to a float (flags are 1.0 / 0.0) or to None, and every None carries the reason in `missing`
("no train_eval/* keys: the train/val F1 gap needs a scored train subsample"). Nothing here raises
on a thin or odd history; a missing signal is named, never a crash.

Conventions used by the definitions below:
- run fraction of a point = its step / the last step of the history (so 0.5 is "half-way").
- "T" is the train-loss curve: `train/loss`, the mean training loss of each window between evals
  (noisy: minibatches differ). "V" is `val/loss` (deterministic: a fixed set scored in eval mode).
- "M" is the validation metric: the run's objective when its record (run.json `objective`) names one of these the
  history logs, else `val/macro_f1`, `val/accuracy`, `val/micro_f1`, `val/subset_accuracy`, the first of them that
  moved (one stuck at a single value at every eval carries no signal: the next decides; the key used is in
  `details["val_metric"]`).
- metric values are in points of the metric's 0..1 scale (0.03 = 3 points of macro-F1).
- a null in a loss key means a non-finite value (the run record writes NaN/inf as null).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from loratune.generation import prompt_key
from loratune.objectives import SCORE_FLOOR

# ---------------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------------

# unit -> how a value is written in evidence text (see `format_value`)
UNITS = ("fraction", "points", "ratio", "count", "flag", "loss", "se", "per_epoch", "steps", "epochs", "runs", "lr",
         "perplexity")


@dataclass(frozen=True)
class FeatureSpec:
    """One named number: how it is computed (`doc`) and how evidence reads it (`phrase`)."""

    name: str
    group: str
    unit: str
    phrase: str  # evidence sentence start, e.g. "train loss fell {} over the last half of training"
    doc: str
    floor: float | None = None  # the feature is clipped at this bound: a value there stands for itself or lower

    def at_floor(self, value: float | None) -> bool:
        """Whether `value` is the clip's bound (`floor`), so the measure was it or lower: text says "or lower"."""
        return self.floor is not None and value is not None and value <= self.floor


def _spec(group: str, name: str, unit: str, phrase: str, doc: str, floor: float | None = None) -> FeatureSpec:
    assert unit in UNITS, unit
    return FeatureSpec(name=name, group=group, unit=unit, phrase=phrase, doc=doc, floor=floor)


# train_loss_late_drop's lower bound: a rise past twice the fitted mid value reads -100% (a V-shaped second half puts
# the fitted line's mid value near 0, and a 3x rise read -27,815%; every rule compares it with thresholds inside the
# range), so -100% means a rise of at least 100%, and the evidence says so
LATE_DROP_FLOOR = -1.0


# a curve of fewer points has no jitter to read (curve_jitter: two second differences at least)
JITTER_POINTS_MIN = 4

_CATALOGUE = (
    # run shape ------------------------------------------------------------------------------
    _spec("run", "steps", "steps", "the run took {} optimizer steps", "Last step in the history."),
    _spec("run", "epochs", "epochs", "the run covered {} epochs", "Epoch count at the last point."),
    _spec("run", "n_eval_points", "count", "the history has {} eval points",
          "Number of points that carry an evaluation (`is_eval_point`: a key of a scored split, `val/...`, "
          "`train_eval/...`, `eval_<name>/...`); a train-only point (the train-loss window a Trainer logs after its "
          "last eval, or each train log of a run with no eval) is no eval."),
    _spec("run", "plan_done_fraction", "fraction", "the run stopped at {} of its planned steps",
          "steps_done / steps_planned (trainer_state.json global_step / max_steps, or run.json): under 1 the schedule "
          "was cut (a run stopped early, or a checkpoint taken mid-run)."),
    _spec("run", "generative", "flag", "the run is a language model (a token loss): {}",
          "1 for task `causal-lm` (run.json), or `seq2seq` / `masked-lm` read from a side file (GENERATIVE_TASKS), "
          "or a history with prompt-set keys (`val/prompt_*`), `val/perplexity` "
          "or `val/token_accuracy`; not applicable (missing) for a classifier. A kind gate: a rule route that holds "
          "only for generative runs names it, and a classifier's diagnosis drops that route."),
    _spec("run", "classifier", "flag", "the run is a classifier: {}",
          "1 for a classification run (single- or multi-label); not applicable (missing) for a generative run; "
          "unknown (missing) when nothing says it is one (no task from a side file, no class count, no val "
          "metric): the single-label default is then a guess. The "
          "other kind gate: a route that holds only for classifiers (a loss judged against a fresh head's start "
          "near ln(classes)) names it."),
    _spec("run", "n_classes", "count", "the task has {} classes",
          "Number of labels (run.json `labels`, else the per-class keys of the history)."),
    _spec("run", "peak_lr", "lr", "the largest learning rate logged was {}",
          "Largest learning rate logged anywhere in the history: every train log's `learning_rate` (a Trainer "
          "window's `lr_max`, its `lr` at the eval step), not only the rate at the eval steps, which under a "
          "warm-up or a decay misses the schedule's top; the config's `train.learning_rate` (a loratune "
          "config.yaml, or the `learning_rate` fact) only when no rate is logged (source in "
          "`details['peak_lr_source']`)."),
    _spec("run", "lora", "flag", "the run trained a LoRA adapter: {}",
          "1 when the run trained a LoRA adapter (adapter_config.json `peft_type` LORA / ADALORA, or run.json "
          "`method: lora`); not applicable (missing) for full fine-tuning or another peft method (prompt tuning, "
          "IA3), whose usual learning rates differ; missing when no side file says. A kind gate: the routes that "
          "read the lr against LoRA's usual range name it."),
    _spec("run", "lora_adapter", "flag", "the run is known to have trained a LoRA adapter: {}",
          "1 when `lora` is 1; 0 for every other run, full fine-tuning, another peft method or a method no side file "
          "says (never missing, unlike `lora`): the gate of a route that reads the lr against protocol 1's general "
          "range for every run but a LoRA one, whose range starts at lora_lr_floor (a `lora` clause would drop out "
          "of such a route for exactly the runs it is for)."),
    _spec("run", "full_finetune", "flag", "the run is known to be a full fine-tune: {}",
          "1 when the run trained every weight, no adapter (run.json `method: full`, or a Trainer folder that saved a "
          "whole model and no adapter_config.json: history_io's method fact); 0 for every other run (never missing). "
          "A kind gate: a route whose move is only right inside the method's usual lr range names it (a full "
          "fine-tune's range sits LORA_OVER_FULL_LR x below LoRA's, rules.thresholds_for_method)."),
    _spec("run", "val_n", "count", "the validation set has {} rows",
          "`val/n` at the last point (rows scored), else the sum of val label counts in run.json, else the smallest n "
          "that puts every val accuracy on the lattice k/n (accuracy_lattice_n)."),
    _spec("run", "train_examples_per_class", "ratio", "training data has {} examples per class",
          "Mean training examples per class (run.json `label_counts.train`)."),
    # train loss (T) -------------------------------------------------------------------------
    _spec("train loss", "train_loss_start", "loss", "train loss started at {}",
          "First step's loss (`train/loss_first` of the first window), else the first window mean; a generative "
          "run takes the window mean when it is the larger (one small batch of a pretrained LM's loss is too noisy)."),
    _spec("train loss", "train_loss_final", "loss", "train loss ended at {}", "Last window mean of T."),
    _spec("train loss", "train_loss_logged", "flag", "the run logged a train loss: {}",
          "1 when the history has a `train/loss` value at any step, 0 when it has none (a notebook whose "
          "logging_steps is longer than the run: every row of its table reads 'No log')."),
    _spec("train loss", "train_loss_untracked", "flag", "the run logged no train-loss trend: {}",
          "1 when the history has one `train/loss` value or none (a Trainer whose logging_steps outlast the run logs "
          "its mean once, or never): no train-loss fall can be read. A kind gate (KIND_FEATURES): a run with two or "
          "more has it not applicable, so a route for untracked runs changes nothing for the others."),
    _spec("train loss", "train_loss_drop", "fraction", "train loss fell {} over the run",
          "(start - final) / start of T; negative when the loss grew."),
    _spec("train loss", "train_loss_drop_since_chance", "fraction", "train loss fell {} from where the run began",
          "The larger of train_loss_drop and 1 - final / ln(classes) where the class count is known (a fresh head "
          "starts at ln(classes), so a first window already far below it hides the fall made inside it), else "
          "train_loss_drop."),
    _spec("train loss", "train_loss_drop_after_first_eval", "fraction",
          "train loss fell {} from the first window after the first eval to the end",
          "(T_w - final) / T_w, T_w the first train-loss window that starts at or after the first val-loss point and "
          "is not the last: the train loss's fall over the span the val loss's fall is read on (a language model "
          "makes its fall to the data's format in its first hundreds of steps, before its first eval)."),
    _spec("train loss", "train_loss_final_over_start", "ratio", "train loss ended at {} its start",
          "final / start of T (above 1: the loss grew)."),
    _spec("train loss", "train_loss_late_drop", "fraction", "train loss fell {} over the last half of training",
          "Relative fall of T over the second half of the run, from a least-squares line through the "
          "second-half points (robust to window noise): (fit(0.5) - fit(1.0)) / fit(0.5), at least -1 (a rise of "
          "100% or more reads -1: LATE_DROP_FLOOR).", floor=LATE_DROP_FLOOR),
    _spec("train loss", "train_loss_late_slope", "ratio", "train loss late slope is {} of its start per run",
          "Least-squares slope of T over the second half, per whole run length, divided by the start loss "
          "(negative = falling)."),
    _spec("train loss", "train_loss_plateau_fraction", "fraction",
          "train loss reached 90% of its total fall at {} of the run",
          "Run fraction where the smoothed T (3-point moving mean) first reached 90% of its total fall "
          "(start -> minimum); 0 when it never fell by 2%. Early (< 0.5) and high = an early plateau."),
    _spec("train loss", "train_loss_runs_to_fit", "runs",
          "at its late pace the train loss needs {} more to reach a tenth of its start",
          "(final T - 0.1 x start) / the fall per run length of the second half's least-squares line: how far "
          "what the run reached is from what it shows is reachable. 0 when T is already below a tenth of its "
          "start; missing when T is not falling over the second half."),
    _spec("train loss", "train_perplexity_final", "perplexity", "the training completions' perplexity ended at {}",
          "exp(final T) of a generative run: per-token perplexity on its own training completions (near 1 = "
          "memorised). Not applicable to a classifier."),
    _spec("train loss", "train_loss_peak_vs_chance", "ratio", "train loss peaked at {} of ln(classes)",
          "Largest window mean of T / ln(n_classes): far above 1, the run blew up at some point (even when its "
          "first logged loss already includes the blow-up). Single-label only."),
    _spec("train loss", "train_loss_spike_vs_chance", "ratio", "train loss's lasting peak was {} of ln(classes)",
          "Largest value of the moving mean train_loss_max_rise reads (T itself on a curve under "
          "RISE_SMOOTH_WINDOWS_PER x 2 windows) / ln(n_classes): a peak that lasted past one window's batch noise. "
          "Its step (`details['train_loss_spike_step']`) is where the val side is read (val_loss_at_spike_vs_chance, "
          "val_metric_at_spike_drop_se). Single-label only."),
    _spec("train loss", "val_loss_at_spike_vs_chance", "ratio", "at the train loss's peak the val loss was {} of "
          "ln(classes)",
          "V at the eval nearest the step of train_loss_spike_vs_chance (the later of two as near) / ln(n_classes): "
          "above 1, the spike threw the model out of what it had learned, not one noisy batch. Single-label only."),
    _spec("train loss", "train_loss_vs_chance", "ratio", "train loss ended at {} of ln(classes)",
          "Final T / ln(n_classes): 1 = the loss of a uniform guess, the level a collapsed model is "
          "pinned to; near 0 = the training set is memorized. Single-label only."),
    _spec("train loss", "val_loss_vs_chance", "ratio", "val loss ended at {} of ln(classes)",
          "Final V / ln(n_classes). Single-label only."),
    # train-loss oscillation ----------------------------------------------------------------
    _spec("oscillation", "train_loss_cv", "ratio", "per-step train loss varied by {} of its mean within windows",
          "Median over windows of `train/loss_std` / `train/loss` (step-to-step spread)."),
    _spec("oscillation", "train_loss_rise_share", "fraction",
          "{} of the train loss's window-to-window movement was upward",
          "Sum of rises / sum of absolute changes between successive windows of T (0 = only falls, "
          "0.5 = pure noise, 1 = only rises)."),
    _spec("oscillation", "train_loss_max_rise", "fraction", "train loss climbed back up by {} of its start at worst",
          "Largest rise of T above its running minimum, divided by the start loss (spikes, blow-ups); on a curve "
          "of RISE_SMOOTH_WINDOWS_PER x 2 windows or more, of T's centred moving mean over one window in "
          "RISE_SMOOTH_WINDOWS_PER (single windows' batch noise is no climb)."),
    _spec("oscillation", "train_loss_rebound", "fraction",
          "after its lowest point the train loss sat {} above it on average",
          "Mean of T over the windows after the minimum of the smoothed T (3-point moving mean), divided by that "
          "minimum, minus 1: a loss that found a low and then lived above it (a constant or too-large lr "
          "bouncing out of the minimum). 0 when the minimum is among the last `REBOUND_MIN_AFTER` windows."),
    _spec("oscillation", "train_loss_min_fraction", "fraction", "the train loss was lowest at {} of the run",
          "Run fraction of the smoothed T's minimum (3-point moving mean)."),
    _spec("oscillation", "grad_norm_spike", "ratio", "the largest gradient norm was {} the median",
          "max / median of `train/grad_norm` over windows."),
    _spec("oscillation", "val_metric_max_drop", "points", "val metric fell by up to {} between successive evals",
          "Largest drop of M between two successive eval points."),
    _spec("oscillation", "val_metric_drops", "points", "val metric lost {} in total across its falls",
          "Sum of all drops of M between successive eval points (its downward movement)."),
    _spec("oscillation", "val_metric_max_drop_se", "se", "val metric's largest step-to-step drop was {}",
          "val_metric_max_drop / val_metric_noise (how many noise units)."),
    # val loss (V) ---------------------------------------------------------------------------
    _spec("run", "first_eval_fraction", "fraction", "the first eval came at {} of the run",
          "Run fraction of the first val-loss (else val-metric) point: 0 when the run was scored before training "
          "(loratune does), often one epoch in for a Trainer run, so a fall 'from the start' is not measured."),
    _spec("val loss", "val_loss_start", "loss", "val loss started at {}", "First V (step 0 when recorded)."),
    _spec("val loss", "val_loss_min", "loss", "val loss reached a minimum of {}", "Minimum of V."),
    _spec("val loss", "val_loss_final", "loss", "val loss ended at {}", "Last V."),
    _spec("val loss", "val_loss_final_over_start", "ratio", "val loss ended at {} of its first eval",
          "Last V / first V (an exploding val loss, read where no train loss was logged)."),
    _spec("val loss", "val_loss_drop", "fraction", "val loss fell {} from its start to its minimum",
          "(start - min) / start of V."),
    _spec("val loss", "val_loss_rise", "fraction", "val loss rose {} from its minimum",
          "(final - min) / min of V."),
    _spec("val loss", "val_loss_rise_held", "fraction", "every val loss after its minimum stayed {} or more above it",
          "min over the points after V's minimum of (v - min) / min, with at least `HELD_POINTS_MIN` such points: a "
          "rise that every later eval repeats is no single noisy point, whatever a short curve's jitter reads (4-5 "
          "evals give 2-3 second differences, and the turn itself inflates them)."),
    _spec("val loss", "val_loss_rise_held_noise", "se",
          "every val loss after its minimum stayed {} above it",
          "min over the points after V's minimum of (v - min V) / (sqrt 2 x val_loss_noise), with at least "
          "`HELD_NOISE_POINTS_MIN` such points: a rise every one of many later evals repeats, in units of the noise "
          "of a difference of two points. Where the curve only jittered about a level after its minimum, later evals "
          "fall back within that band (the minimum is the low extreme of the jitter); five or more all staying beyond "
          "it is a held rise however small its last point reads."),
    _spec("val loss", "val_loss_rise_steady", "flag", "the val loss rose at every eval after its minimum: {}",
          "1 when each of the (at least `HELD_POINTS_MIN`) evals after V's minimum is above the one before it: on a "
          "short curve, a rise that grows at each later eval is a trend, not one noisy point."),
    _spec("val loss", "val_loss_rise_trend", "points", "from its minimum on, the val loss's rank trend (Kendall tau) is {}",
          "Kendall's tau between eval order and V over the evals from V's minimum to the end (at least "
          "`TREND_POINTS_MIN` of them): 1 when each later eval is above every earlier one, ~0 for a flat noisy tail. "
          "A trend test beside the noise band (protocol 5b): a zigzag tail whose every step is inside the band can "
          "still climb as a whole."),
    _spec("val loss", "train_loss_rise_after_val_min", "fraction",
          "from the val loss's minimum on, the train loss climbed back up by {} of its start at worst",
          "Largest rise of T above its running minimum (from the start) at or after the step of the val loss's "
          "minimum, divided by the start loss: train_loss_max_rise over the stretch where the val loss rose. A spike "
          "of the train loss before the val loss turned did not make the val loss rise (protocol 3-4: a train loss "
          "falling while the val loss rises is the fit; one that climbs back while it rises is the step)."),
    _spec("val loss", "train_loss_fall_after_val_min", "fraction",
          "{} of the train loss's fall came after the val loss's minimum",
          "(train loss at the val minimum's step - final train loss) / (train loss start - final): the share of the "
          "fit made while the val loss was rising, i.e. the val-minus-train loss gap widening on the train side "
          "(protocol 5b: a widening gap is the fit). Missing when the train loss did not fall."),
    _spec("val loss", "val_loss_min_fraction", "fraction", "val loss hit its minimum at {} of the run",
          "Run fraction of V's minimum."),
    _spec("val loss", "val_loss_late_drop", "fraction", "val loss fell {} over the last half of training",
          "(V(0.5) - V(final)) / V(0.5), V(0.5) linearly interpolated at mid-run."),
    _spec("val loss", "val_loss_late_share", "fraction",
          "{} of the val loss's fall came in the second half (in learning-rate time)",
          "(V(mid) - V(final)) / (V(start) - V(final)), with mid = half-way in learning-rate time (cumulative "
          "lr x steps, from the `lr` of each eval point; steps when absent), so a decaying schedule does not "
          "fake a plateau: ~0.5 for a steady learner, ~0 when the fall happened early and the curve "
          "flattened. Missing when V did not fall by 0.01%."),
    _spec("val loss", "val_loss_noise", "loss", "the val loss's eval-to-eval jitter is {}",
          "Noise of one val-loss point, from the curve itself: median |second difference| / (0.6745 sqrt 6) (the "
          "robust spread of V around a locally straight line; a smooth curve gives ~0), floored at 0.2% of the "
          "median V (`VAL_LOSS_NOISE_FLOOR`). With 2-3 points: assumed `SHORT_CURVE_LOSS_NOISE_REL` of the "
          "median V (`details['val_loss_noise_source']` says which)."),
    _spec("val loss", "val_loss_rise_noise", "se", "val loss ended {} above its minimum",
          "(final V - min V) / (sqrt 2 x val_loss_noise): the rise in units of the noise of a difference of two "
          "points."),
    _spec("val loss", "val_loss_repeats", "count", "{} evals logged the same val loss",
          "How many of V's points equal (to the logged precision) its most frequent value."),
    _spec("val loss", "val_loss_repeat_share", "fraction", "{} of the evals logged the same val loss",
          "Share of V's points equal (to the logged precision) to its most frequent value: a loss averaged over an "
          "eval set does not repeat to the printed digit while the model's outputs move, so a repeat at most evals is "
          "the loss-only witness of predictions that stopped changing (the twin of val_metric_repeat_share)."),
    _spec("val loss", "val_loss_min_vs_reference", "ratio", "val loss stayed at or above {} of ln 2, a DPO "
          "policy's start",
          "Min V / ln 2 for a pairwise preference loss (DPO's default sigmoid loss: the history logs reward margins "
          "and no NLL, log-odds or KL term beside them, and its first logged loss is near ln 2: "
          "PREFERENCE_START_BAND; IPO and sigmoid+sft start elsewhere). At step 0 the policy is its reference, every margin is 0 "
          "and the loss is exactly ln 2, the ln(classes) of a two-way choice, so the min is over the evals after step 0 "
          "(all of them when none is later); above ln 2 (beyond a val loss's noise floor: "
          "preference_start_ratio_max) at every such eval, the training "
          "never made the policy rank held-out pairs better than the model it started from."),
    _spec("val loss", "val_loss_drop_noise", "se", "val loss fell {} from its first eval to its minimum",
          "(first V - min V) / (sqrt 2 x val_loss_noise): the val loss's improvement in units of the noise of a "
          "difference of two points, the same band a rise must clear (protocol 5b: a fall inside it is not a fall)."),
    _spec("val loss", "val_loss_remaining_gain", "fraction",
          "at the pace of its last evals the val loss has {} of itself left to lose",
          "The val loss's recent falls extrapolated: the mean fall per eval over the last `REMAINING_WINDOW` evals (g2) "
          "and over the window before it (g1; with 3 or 4 points, the last two single falls); a shrinking fall "
          "(q = (g2/g1)^(1/window) < 1 per eval) converges geometrically, leaving g2 q / (1 - q), at most the last val "
          "loss itself (a loss cannot fall below zero); a fall that does not "
          "shrink (or a single fall, with two points) leaves `REMAINING_AHEAD` more falls of g2. Divided by the last "
          "val loss; 0 when the recent falls are not falls. What training longer at the run's own pace could still "
          "buy (averaging two falls per window keeps one jittered eval from deciding it)."),
    _spec("val loss", "val_loss_remaining_noise", "se", "at the pace of its last evals the val loss has {} left to lose",
          "The remaining fall of val_loss_remaining_gain (in loss, not a share) / (sqrt 2 x val_loss_noise): what "
          "training longer could still buy, in units of the noise of a difference of two points (protocol 5b: inside "
          "the band, the better loss it promises could not be told from the one reached: converged)."),
    _spec("val loss", "val_loss_logged", "flag", "the run logged a val loss: {}",
          "1 when the history has a `val/loss` key at any eval (finite or not), 0 when it has none (a run scored "
          "by a val metric alone, e.g. the ChatGLM / GLM finetune demos' ROUGE / BLEU)."),
    _spec("val loss", "val_loss_still_falling", "flag", "val loss still setting new lows at the end: {}",
          "1 when V's lowest point in the last third of the run is below its lowest before by more than "
          "val_loss_noise and `IMPROVE_MIN_REL` of the loss (with 2 points: the last vs the first)."),
    _spec("val loss", "val_loss_rise_share", "fraction", "{} of the val loss's movement was upward",
          "Sum of rises / sum of absolute changes of V (0 = monotone fall), read over at most "
          "`RISE_SHARE_POINTS_MAX` points: a longer V is first averaged in that many contiguous blocks."),
    _spec("val loss", "val_loss_max_swing", "fraction", "the val loss climbed at most {} above its low so far",
          "max over points of (V - the lowest V before it) / that low, on the same blocks as val_loss_rise_share: "
          "the largest climb, wherever the curve ended (a rise share of 100% can be a 1% drift; a swing that came "
          "back down ends at its minimum)."),
    # val metric (M) -------------------------------------------------------------------------
    _spec("val metric", "val_metric_logged", "flag", "the run logged a val metric: {}",
          "1 when the history has a val metric (macro-F1, accuracy, ...), 0 for a loss-only run."),
    _spec("val metric", "val_metric_start", "points", "val metric started at {}", "First M."),
    _spec("val metric", "val_metric_best", "points", "val metric peaked at {}", "Maximum of M."),
    _spec("val metric", "val_metric_final", "points", "val metric ended at {}", "Last M."),
    _spec("val metric", "val_metric_final_vs_start", "points", "val metric ended {} from its first eval",
          "Last M - first M (negative: the run ended below where it began)."),
    _spec("val metric", "val_metric_gain", "points", "val metric gained {} from start to best", "best - start of M."),
    _spec("val metric", "val_metric_gain_se", "se", "val metric gained {} from start to best",
          "val_metric_gain / val_metric_noise."),
    _spec("val metric", "val_metric_room", "points", "the first eval left {} of room below a perfect score",
          "1 - first M: how far the first eval sat below the metric's ceiling (every val metric is a share in [0, 1]; "
          "an error rate is read as 1 - rate). Under no_gain_max the run could not have gained what the 'never "
          "gained' reading asks for, however well it learned (a token tagger at 0.993 at its first eval, ten steps "
          "in, 1.000 after)."),
    _spec("val metric", "val_metric_final_drop", "points", "val metric ended {} below its best", "best - final of M."),
    _spec("val metric", "val_metric_repeat_share", "fraction", "{} of the evals logged the same val metric value",
          "Share of M's points equal (to the logged precision) to its most frequent value: a count metric (accuracy, "
          "F1) that repeats exactly from eval to eval is a model whose predictions did not change (protocol 5b: "
          "without per-class numbers, the witness of predictions pinned on one class)."),
    _spec("val metric", "val_metric_final_drop_se", "se", "val metric ended {} below its best",
          "val_metric_final_drop / val_metric_noise."),
    _spec("val metric", "val_metric_at_spike_drop_se", "se", "at the train loss's peak the val metric sat {} below "
          "its best before",
          "(max of M over the evals before the one nearest the step of train_loss_spike_vs_chance - M there) / "
          "val_metric_noise: the val side of a train-loss spike (0 at the first eval)."),
    _spec("val metric", "best_step_fraction", "fraction", "the best val point came at {} of the run",
          "Run fraction of the first point reaching M's maximum (without a val metric: V's minimum)."),
    _spec("val metric", "val_metric_late_gain", "points", "val metric set a new high of +{} in the last third",
          "max of M over the last third of the run - max of M before it (negative: no new high)."),
    _spec("val metric", "val_metric_late_gain_se", "se", "the last third's new high was {}",
          "val_metric_late_gain / val_metric_noise."),
    _spec("val metric", "val_metric_gain_per_epoch_late", "per_epoch",
          "val metric moved {} over the last half (sensitivity to more epochs)",
          "Least-squares slope of M against epoch over the second half of the run: what one more epoch "
          "is worth at the current pace."),
    _spec("val metric", "still_improving", "flag", "val metric still improving at the end: {}",
          "1 when val_metric_late_gain exceeds one noise unit (val_metric_noise; 0.01 when it is unknown). "
          "Without a val metric: 1 when V's lowest point in the last third is below its lowest before by more "
          "than val_loss_noise."),
    _spec("noise", "val_metric_noise", "points", "the val metric's noise is {}",
          "The noise band of one val-metric point: the binomial standard error when the val size is known "
          "(`val_metric_se`), else the metric curve's own jitter (median |second difference| / (0.6745 sqrt 6), "
          f"floored at 0.005, needs >= {JITTER_POINTS_MIN} points; for a mean of per-row scores (ROUGE-L) read from fewer than "
          "`ROW_MEAN_JITTER_POINTS_MIN` points, the binomial formula's upper bound when the val size is known); "
          "`details['val_metric_noise_source']` says which. Every `*_se` "
          "feature of the val metric is in units of this."),
    _spec("noise", "val_metric_noise_bound", "flag", "the val metric's noise band is an upper bound: {}",
          "1 when val_metric_noise is the binomial formula's upper bound on a mean of per-row scores (a token "
          "accuracy, ROUGE-L read from fewer than `ROW_MEAN_JITTER_POINTS_MIN` points), not the noise itself: a gain "
          "beyond it is real, a gain inside it is not shown to be noise (tokens scored within a row, a packed eval's "
          "rows that are not its sequences); 0 for any other noise band."),
    _spec("noise", "val_metric_se", "points", "the val metric's standard error is {}",
          "Binomial standard error sqrt(q(1-q)/n), q = (p n + 1)/(n + 2) (p = final M, n = val rows; the +1/+2 "
          "keeps a perfect score on a small set uncertain). For macro-F1 it is a lower bound (per-class F1 "
          "is noisier than accuracy)."),
    # train/val gap --------------------------------------------------------------------------
    _spec("gap", "train_eval_metric_final", "points", "train-subsample metric ended at {}",
          "Last `train_eval/<metric>` (same metric as M, scored on a fixed train subsample)."),
    _spec("gap", "gap_f1", "points", "the train/val metric gap is {}",
          "train_eval metric - val metric at the last point (train_eval/macro_f1 - val/macro_f1)."),
    _spec("gap", "gap_loss", "loss", "the val/train loss gap is {}",
          "val/loss - train_eval/loss at the last point (falls back to the window train/loss; "
          "`details['gap_loss_train_key']` says which)."),
    # generalization slices (slices.py: familiar / novel thirds of validation) --------------------
    _spec("slices", "familiar_metric_final", "points", "val macro-F1 on familiar phrasing ended at {}",
          "Last `val_familiar/macro_f1`: the third of validation texts closest to a training text."),
    _spec("slices", "novel_metric_final", "points", "val macro-F1 on novel phrasing ended at {}",
          "Last `val_novel/macro_f1`: the third of validation texts farthest from any training text."),
    _spec("slices", "familiar_novel_gap", "points", "familiar minus novel val macro-F1 is {}",
          "val_familiar/macro_f1 - val_novel/macro_f1 at the last point with both."),
    _spec("slices", "familiar_novel_gap_growth", "points", "the familiar-novel gap grew by {} since the first eval",
          "familiar_novel_gap at the last point minus at the first point after step 0 (widening = overfitting)."),
    _spec("slices", "compound_metric_final", "points", "exact match on compound (multi-intent) val rows ended at {}",
          "Last `val_compound/subset_accuracy` (rows with two or more true labels; multi-label runs)."),
    _spec("slices", "single_metric_final", "points", "exact match on single-intent val rows ended at {}",
          "Last `val_single/subset_accuracy`."),
    _spec("slices", "compound_gap", "points", "single-intent minus compound exact match is {}",
          "single_metric_final - compound_metric_final at the last point with both."),
    # prompt set of a generative run (generation.py: `val/prompt_<group>_<metric>`, greedy outputs scored) -------
    _spec("prompt set", "prompt_familiar_score_final", "points", "chrF on familiar prompts ended at {}",
          "Last `val/prompt_familiar_chrf` (prompts close to the training prompts)."),
    _spec("prompt set", "prompt_novel_score_final", "points", "chrF on novel prompts ended at {}",
          "Last `val/prompt_novel_chrf` (prompts unlike the training prompts)."),
    _spec("prompt set", "prompt_novel_score_best", "points", "chrF on novel prompts peaked at {}",
          "Maximum of `val/prompt_novel_chrf` over the eval points."),
    _spec("prompt set", "prompt_novel_drift", "points", "chrF on novel prompts ended {} below its best",
          "prompt_novel_score_best - prompt_novel_score_final: drift on new prompts."),
    _spec("prompt set", "prompt_novel_drift_se", "se", "the novel prompts' drift from their best is {}",
          "prompt_novel_drift / (sqrt 2 x the novel chrF's noise): a difference of two points in noise units. The "
          "noise is `val/prompt_novel_chrf_se` (the standard error over the prompts) at the last point, else the "
          f"curve's own jitter (>= {JITTER_POINTS_MIN} points), floored at METRIC_NOISE_FLOOR."),
    _spec("prompt set", "prompt_gap_final", "points", "familiar minus novel prompt chrF ended at {}",
          "val/prompt_familiar_chrf - val/prompt_novel_chrf at the last point with both."),
    _spec("prompt set", "prompt_gap_widening", "points", "the familiar-novel chrF gap widened by {} from its narrowest",
          "familiar's lead over novel at the last point - its smallest lead over the eval points, a novel lead "
          "counting as no lead (0 when the last point is the narrowest or novel leads at the end): exact on what "
          "resembles training, drifting on the rest (protocol 9: memorising)."),
    _spec("prompt set", "prompt_gap_widening_se", "se", "the familiar-novel gap's widening is {}",
          "prompt_gap_widening / (sqrt 2 x the gap's noise); the gap's noise is sqrt(se_familiar^2 + se_novel^2) "
          f"from `val/prompt_<group>_chrf_se` at the last point, else the gap curve's own jitter (>= {JITTER_POINTS_MIN} points), "
          "floored at METRIC_NOISE_FLOOR. Missing with neither."),
    _spec("prompt set", "prompt_len_ratio_final", "ratio", "outputs ended at {} the length of the references",
          "Mean over the groups of the last `val/prompt_<group>_len_ratio` (output words / reference words): well "
          "below 1 with low chrF = short, vague, over-general answers."),
    _spec("prompt set", "prompt_capped_share_final", "fraction", "{} of the outputs ran to train.max_new_tokens",
          "Mean over the groups of the last `val/prompt_<group>_capped`: the share of outputs that hit the token cap "
          "without an end-of-sequence token (their length is the cap's: a short len_ratio there is not vagueness). "
          "Missing in a history from before it was logged."),
    _spec("prompt set", "prompt_familiar_exact_final", "points", "exact match on familiar prompts ended at {}",
          "Last `val/prompt_familiar_exact_match`."),
    _spec("prompt set", "prompt_repetition_final", "fraction", "{} of the outputs' word 3-grams are repeats at the end",
          "Mean over the groups of the last `val/prompt_<group>_repetition`."),
    _spec("prompt set", "prompt_repetition_rise", "fraction", "the outputs' repeated 3-gram share rose {} from its lowest",
          "prompt_repetition_final - the lowest group-mean repetition over the eval points: greedy outputs "
          "starting to loop."),
    # stability -------------------------------------------------------------------------------
    _spec("stability", "nonfinite_values", "count", "{} non-finite loss / gradient values were recorded",
          "Count of NaN/inf (null) values in train/loss, train/loss_std, train/grad_norm, val/loss, "
          "train_eval/loss after step 0, and of train-loss windows logged as exactly 0 after a window at "
          "FILTERED_PRIOR_MIN or more (the Trainer's nan/inf filter's empty mean), unless a 0 also follows a window "
          "in (0, NATURAL_ZERO_PRIOR_MAX): a loss that reaches 0 on its own."),
    _spec("stability", "val_loss_nonfinite_evals", "count", "{} evals logged a non-finite val loss while the train "
          "loss stayed finite",
          "Count of null (NaN/inf) `val/loss` values when they are the only non-finite values of the run and the "
          "train loss is finite at every window, at least one of them after the first such eval: the weights that "
          "were evaluated went on to train on finite losses, so the evaluation failed (e.g. every eval label masked, "
          "a 0/0 mean), not the model. These are not counted in nonfinite_values; 0 when there are none."),
    _spec("stability", "status_diverged", "flag", "run.json status is 'diverged': {}",
          "1 when the trainer stopped the run as diverged."),
    # collapse --------------------------------------------------------------------------------
    _spec("collapse", "val_pred_top_share", "fraction", "{} of val predictions went to one class",
          "Estimated share of val predictions given to the most-predicted class (per class: recall x "
          "support / precision; confused pairs as a lower bound). Near 1: collapsed to one class."),
    _spec("collapse", "val_recall_zero_share", "fraction", "{} of classes have zero val recall",
          "Share of classes (with val support) whose recall is 0 at the last point."),
    # per class -------------------------------------------------------------------------------
    _spec("per class", "val_recall_min", "points", "the worst class's val recall is {}", "Minimum per-class recall."),
    _spec("per class", "val_recall_spread", "points", "per-class val recall spreads {} (p90 - p10)",
          "90th minus 10th percentile of per-class val recall at the last point."),
    _spec("per class", "val_recall_std", "points", "per-class val recall has a std of {}",
          "Standard deviation of per-class val recall at the last point."),
    _spec("per class", "val_recall_collapsed_share", "fraction", "{} of classes lost half their best recall",
          "Share of classes whose recall reached >= 0.5 during the run but ends at <= half that best."),
    _spec("per class", "tail_head_count_ratio", "ratio", "head classes have {} the training rows of tail classes",
          "Median train count of the head classes / median of the tail classes (run.json label_counts.train); "
          "tail: under LONG_TAIL_COUNT (20) training rows (protocol 2), head: the rest. Missing with no tail."),
    _spec("per class", "tail_recall", "points", "tail classes' mean val recall is {}",
          "Mean val recall of the classes with under LONG_TAIL_COUNT (20) training rows (needs run.json "
          "label_counts)."),
    _spec("per class", "head_recall", "points", "head classes' mean val recall is {}",
          "Mean val recall of the classes with at least LONG_TAIL_COUNT (20) training rows."),
    _spec("per class", "tail_head_recall_gap", "points", "head classes out-recall tail classes by {}",
          "head_recall - tail_recall."),
    _spec("per class", "confused_top_count", "count", "the most confused pair has {} val errors",
          "Count of the most frequent (true, predicted) error pair at the last point."),
    _spec("per class", "confused_top_rate", "fraction", "{} of its class goes to the most confused pair",
          "Most confused pair's count / val support of its true class."),
    _spec("per class", "confused_pairs_persist_share", "fraction", "{} of the top confused pairs did not improve",
          "Of the (up to 5) most confused pairs at the end with >= 2 errors, the share already present at the "
          "first eval after training started and not reduced by 25% since."),
    _spec("per class", "confused_symmetric_pairs", "count", "{} class pairs are confused both ways on val",
          "Pairs (a, b) with both a->b and b->a among the top val confused pairs (>= 2 errors each)."),
    _spec("per class", "train_confused_symmetric_pairs", "count",
          "{} class pairs are confused both ways on the train subsample",
          "Same on `train_eval/confused_pairs`: training rows the model cannot fit, in both directions."),
    _spec("per class", "class_gap_max", "points", "the largest per-class train/val recall gap is {}",
          "max over classes of train_eval recall - val recall at the last point."),
    _spec("per class", "class_gap_mean", "points", "the mean per-class train/val recall gap is {}",
          "mean over classes of train_eval recall - val recall at the last point."),
)

FEATURES: Mapping[str, FeatureSpec] = MappingProxyType({s.name: s for s in _CATALOGUE})

# The values a feature can take, where bounded (name -> (lowest, highest or None)): shares, run fractions and val
# metrics lie in [0, 1] (every val metric is a share: val_metric_room), counts are never negative. A diagnosis
# threshold is refused at a value that makes a rule fire on every run over them (rules.always_firing: nonfinite_min 0
# made every run `diverged`).
UNIT_DOMAINS: Mapping[str, tuple[float, float | None]] = MappingProxyType({"count": (0.0, None)})
_SHARE = (0.0, 1.0)
FEATURE_DOMAINS: Mapping[str, tuple[float, float | None]] = MappingProxyType({
    # fractions: shares of predictions, points, changes, outputs, errors; positions in the run
    **dict.fromkeys(("val_pred_top_share", "val_metric_repeat_share", "val_loss_rise_share", "val_loss_repeat_share",
                     "val_loss_min_fraction", "train_loss_min_fraction", "prompt_capped_share_final",
                     "prompt_repetition_final", "first_eval_fraction", "best_step_fraction", "confused_top_rate",
                     "confused_pairs_persist_share"), _SHARE),
    # points: val / train_eval metrics and their slices, chrF scores, the room below the ceiling
    **dict.fromkeys(("val_metric_best", "train_eval_metric_final", "familiar_metric_final", "novel_metric_final",
                     "single_metric_final", "tail_recall", "prompt_familiar_score_final", "prompt_novel_score_final",
                     "val_metric_room"), _SHARE),
    "val_loss_rise_trend": (-1.0, 1.0),  # Kendall's tau
    "val_metric_se": (0.0, 1.0), "seed_std": (0.0, None),
})

# a preference run's own score: the share of held-out pairs whose chosen answer the policy rewards above the rejected
# one (TRL's eval_rewards/accuracies; a share of pairs, so binomial). Its token accuracy scores the chosen answers as
# an SFT target, which DPO does not train toward: a good run's stays flat while its reward accuracy climbs
PREFERENCE_KIND, PREFERENCE_METRIC = "preference", "rewards/accuracies"
METRIC_KEYS = ("macro_f1", "accuracy", "micro_f1", "subset_accuracy", "token_accuracy", "rouge_l", "word_accuracy",
               "char_accuracy")
# metrics that are no share of rows (a share of tokens or words, a mean of per-row overlap scores): the row count gives
# them no binomial standard error, so the curve's own jitter is their noise (protocol 5b), and they mark a generative
# run (word_accuracy / char_accuracy: 1 - WER / CER, as the reader writes them)
ROW_MEAN_METRICS = ("token_accuracy", "rouge_l", "word_accuracy", "char_accuracy")
# ...and the count a row-mean metric's noise bound reads in place of the rows (`val/n`) where a point records it: the
# token accuracy weighs each row by its tokens, so its rows are worth fewer equal rows (sft.effective_rows: a loratune
# run records `<split>/n_effective` beside `<split>/n`, the rows scored)
ROW_MEAN_COUNT = {"token_accuracy": "n_effective"}


def has_binomial_se(metric: str | None) -> bool:
    """Whether a val metric (`macro_f1` or `val/macro_f1`) is a share of rows, so that the row count gives it a
    binomial standard error (a run's noise band and a comparison's noise both read this)."""
    return metric is not None and metric.removeprefix("val/") not in ROW_MEAN_METRICS

# the train-loss features read across windows (a fall, a rise, a shape, a spread): unknown where the windows are sums of
# unequal micro-batch counts that the log cannot tell apart (an epoch's shorter last step under gradient accumulation,
# history_io._window_shares)
TRAIN_LOSS_ACROSS_WINDOWS = ("train_loss_drop", "train_loss_final_over_start", "train_loss_drop_since_chance",
                             "train_loss_drop_after_first_eval", "train_loss_late_drop", "train_loss_late_slope",
                             "train_loss_plateau_fraction", "train_loss_runs_to_fit", "train_loss_rise_share",
                             "train_loss_max_rise", "train_loss_rebound", "train_loss_min_fraction", "train_loss_cv",
                             "train_loss_fall_after_val_min", "train_loss_rise_after_val_min",
                             "train_loss_spike_vs_chance", "val_loss_at_spike_vs_chance",
                             "val_metric_at_spike_drop_se")
# ...but a jitter read from fewer points than this (one or two second differences) is no band: where the eval size is
# known, the [0, 1] bound on a mean's standard error stands in (`_val_metric`)
ROW_MEAN_JITTER_POINTS_MIN = 5
# a new val-loss low counts as improvement only past its noise and this share of the loss: a smooth, converged
# curve keeps creeping down by fractions of a percent, which more epochs do not turn into a better model
IMPROVE_MIN_REL = 0.02
# a language model's first window more than this multiple of its first batch blew up inside that window (the TRL
# lr=0.5 run: 4.9x); below it, the first batch was a lucky draw of rows (bench/results/sft.md: 1.04 vs 2.19 nats)
FIRST_WINDOW_MAX = 2.5
REMAINING_AHEAD = 3  # a val loss falling without slowing: count three more falls like its last (a short horizon)
REMAINING_WINDOW = 2  # evals averaged per window when the remaining fall compares the last falls with those before
RISE_SMOOTH_WINDOWS_PER = 40  # train_loss_max_rise: a moving mean over one window in this many (a curve of 80+ windows)
REBOUND_MIN_AFTER = 3  # windows after the train loss's minimum needed to read a rebound (fewer: a last-point wiggle)
FIT_TARGET_SHARE = 0.1  # "fitted": the train loss at a tenth of its start (train_loss_runs_to_fit)
LOSS_KEYS = ("train/loss", "train/loss_std", "train/grad_norm", "val/loss", "train_eval/loss")
GENERATIVE_TASK = "causal-lm"
# tasks read from a run's side files (history_io.PEFT_TASK_TYPES / ARCH_TASKS): which are language models (a token
# loss above an entropy floor: causal, seq2seq, and masked LM, whose masked tokens have one too; fold R's priyashah23,
# MLM domain adaptation, train -8%, val -0.037 then -0.014), which are classifiers (a loss that can fall to ~0 from a
# fresh head's ln(classes)); the rest (regression, extractive QA) are neither kind, so no route gated on a kind holds
# for them
GENERATIVE_TASKS = (GENERATIVE_TASK, "seq2seq", "masked-lm")
CLASSIFIER_TASKS = ("single_label", "multi_label", "token-classification")
PROMPT_KEY_PREFIX = "val/prompt_"  # generation.prompt_key writes every prompt-set key under it
# a missing feature whose reason starts with this cannot exist for this kind of run (ln(classes) of a language
# model, the prompt set of a classifier): no signal to log, so the diagnosis gives no advice for it
NOT_APPLICABLE = "does not apply: "
# why every val-metric feature is missing when the history holds no val metric at all: the signal to log is the metric
# (rules.SIGNALS reads this reason), whatever else a feature also needs (val_metric_se: the val size too)
NO_VAL_METRIC = "no val metric (val/macro_f1, val/accuracy, ...) in the history"
# an online RL run (history_io.TRL_KINDS: GRPO, RLOO, PPO). Its loss is ~ beta x KL to the reference (plus a
# policy term whose mean is ~0): 0 at the start and rising by design as the policy moves, so a rise from its minimum
# is no overfit and its lowest value no best run. Its fit is its reward, which no rule reads yet: no loss feature.
RL_KIND = "rl"
RL_LOSS_WHY = (NOT_APPLICABLE + "an RL run's loss (GRPO, RLOO, PPO: ~ beta x KL to its reference, 0 at the start "
               "and rising by design) measures no fit: judge the run by its reward (eval_reward on held-out prompts)")
CLASSIFIER_GROUPS = ("per class", "collapse", "slices")  # catalogue groups that need classes
# gates naming which kind of run a rule route is for (no evidence)
KIND_FEATURES = ("generative", "classifier", "lora", "lora_adapter", "full_finetune", "train_loss_untracked")
# adapter_config.json `peft_type`s that train a low-rank update (LoRA's lr range applies; protocol 1)
LORA_PEFT_TYPES = ("LORA", "ADALORA")
# the split of a `<split>/<metric>` key that is the training loop's own log, not an evaluation (train/loss,
# train/loss_std, train/grad_norm, ...); every other split (val, train_eval, val_compound, eval_<name>) was scored
TRAIN_LOG_SPLIT = "train"


def is_eval_point(point: Mapping[str, Any]) -> bool:
    """A point that carries an evaluation: a `<split>/...` key of a scored split (a null value counts: the eval ran
    and gave a non-finite number). A point with only train-log keys (`train/...`, `lr`, `epoch`) is none: the
    window a Trainer logs after its last eval (TobyYang7 Quant-GPT, J: 3 evals, and a 4th point from the train
    logs up to its last step), or each train log of a run that logged no eval."""
    return any("/" in k and k.split("/", 1)[0] != TRAIN_LOG_SPLIT for k in point)


HUGE_VALUE = 1e6  # a feature value from here on is written in scientific notation (a fraction: 1e6 is 1e8 %)


def safe_mean(values: Sequence[float]) -> float:
    """The mean of finite values (at least one), overflow-safe, within their range: a sum past the largest float
    (losses of 1.7e308, an exploded run) is taken of the values each divided by their count first, so the mean stays
    the finite value it is. The one such mean: a train log's window (history_io), a long line's buckets
    (report.charts.thin_line), show's trend characters (commands.show.spark)."""
    n = len(values)
    mean = sum(values) / n
    if not math.isfinite(mean):
        mean = math.fsum(v / n for v in values)
    return min(max(mean, min(values)), max(values))


def format_value(unit: str, value: float | None) -> str:
    """A feature value (or threshold) as evidence text writes it."""
    if value is None:
        return "missing"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if abs(value) >= HUGE_VALUE and unit not in ("flag", "count", "steps"):  # an exploded loss: 3.4e+38, not 39 digits
        if unit == "fraction":
            return f"{value * 100:.3g}%"
        return f"{value:.3g}" + ("x" if unit == "ratio" else " SE" if unit == "se" else "")
    if unit == "fraction":
        return f"{value:.1%}"
    if unit == "points":
        return f"{value:.3f}"
    if unit == "ratio":
        return f"{value:.2f}x"
    if unit in ("count", "steps"):
        return f"{value:g}" if value != int(value) else str(int(value))
    if unit == "flag":
        return "yes" if value >= 0.5 else "no"
    if unit == "loss":
        return f"{value:.3f}"
    if unit == "se":
        return f"{value:.1f} SE"
    if unit == "per_epoch":
        return f"{value:+.3f}/epoch"
    if unit == "epochs":
        return f"{value:.2f}"
    if unit == "perplexity":  # a plain number (exp of a loss), not a multiple: 1.009 memorised, 1.55 not
        return f"{value:.3f}"
    if unit == "runs":
        return f"{value:.1f} run lengths"
    if unit == "lr":
        return f"{value:.3g}"
    return f"{value:g}"


# ---------------------------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveFeatures:
    """Named numbers of one run. `values[name]` is a float or None; `missing[name]` says why None."""

    values: Mapping[str, float | None]
    missing: Mapping[str, str]
    details: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float | None:
        return self.values[name]

    def get(self, name: str) -> float | None:
        return self.values.get(name)

    def to_dict(self) -> dict:
        return {"values": dict(self.values), "missing": dict(self.missing), "details": dict(self.details)}


class FeatureSet:
    """Collects values, reasons for missing ones, and details while features of one catalogue are computed;
    `done()` freezes them into a CurveFeatures holding every name of the catalogue."""

    def __init__(self, catalogue: Mapping[str, FeatureSpec] | None = None) -> None:
        self.catalogue = FEATURES if catalogue is None else catalogue
        self.values: dict[str, float | None] = {}
        self.missing: dict[str, str] = {}
        self.details: dict[str, Any] = {}

    def set(self, name: str, value: float | None, why: str = "") -> None:
        assert name in self.catalogue, name
        if value is None or (isinstance(value, float) and math.isnan(value)):
            self.values[name] = None
            self.missing[name] = why or "not computable from this history"
        else:
            self.values[name] = float(value)
            self.missing.pop(name, None)

    def miss(self, names: Iterable[str], why: str) -> None:
        for n in names:
            self.set(n, None, why)

    def done(self) -> CurveFeatures:
        for name in self.catalogue:  # anything not reached is missing, with a generic reason
            if name not in self.values:
                self.set(name, None, "not computable from this history")
        ordered = {n: self.values[n] for n in self.catalogue}
        missing = {n: self.missing[n] for n in self.catalogue if n in self.missing}
        return CurveFeatures(MappingProxyType(ordered), MappingProxyType(missing), MappingProxyType(self.details))


# ---------------------------------------------------------------------------------------------
# Small numeric helpers (plain Python: a history has tens of points)
# ---------------------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    """A finite float, or None (absent, null, NaN, inf, non-numeric)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _series(points: Sequence[dict], key: str, *, min_step: int = -1) -> list[tuple[float, float]]:
    """[(step, value)] of the finite values of `key`, in step order."""
    out = []
    for p in points:
        s = _num(p.get("step"))
        v = _num(p.get(key))
        if s is not None and v is not None and s > min_step:
            out.append((s, v))
    return out


def _nonfinite_from(points: Sequence[dict], key: str, *, min_step: int = -1,
                    marks: Iterable[float] = ()) -> float | None:
    """The step from which `key` is non-finite (NaN / inf, null in a record) at every point that logs it, when a finite
    value came before: the finite series (`_series`) then ends short of the run, and its last value is no final.
    None when the last logged value is finite. `marks`: steps whose 0.0 stands for non-finite steps (the Trainer's
    nan/inf filter, `_filtered_windows`)."""
    marked = set(marks)
    logged = [(s, _num(p[key]) is None or s in marked) for p in points
              if key in p and (s := _num(p.get("step"))) is not None and s > min_step]
    if not logged or not logged[-1][1] or all(bad for _, bad in logged):
        return None
    i = len(logged) - 1
    while logged[i - 1][1]:
        i -= 1
    return logged[i][0]


def _ols(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line y = a + b x; returns (a, b). Needs >= 2 distinct xs."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return my, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def _interp(series: Sequence[tuple[float, float]], x: float) -> float:
    """Linear interpolation of a step-sorted series at x (clamped at the ends)."""
    if x <= series[0][0]:
        return series[0][1]
    for (x0, y0), (x1, y1) in zip(series, series[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return series[-1][1]


def _interpolator(series: Sequence[tuple[float, float]]):
    """x -> _interp(series, x), by bisection: O(log n) a call where _interp scans the series.

    Callers that read one series at every eval (the lr clock) would otherwise be O(evals x points). The value is the
    same float _interp returns: bisect_left finds the first bracket x0 < x <= x1, the one _interp's scan stops at, and
    the formula is the same expression; a series out of step order keeps the scan (its first bracket is no
    bisection)."""
    xs = [x for x, _ in series]
    if any(b < a for a, b in zip(xs, xs[1:])):
        return lambda x: _interp(series, x)

    def at(x: float) -> float:
        if x <= xs[0]:
            return series[0][1]
        j = bisect.bisect_left(xs, x)
        if x != x or j >= len(xs):  # NaN brackets nowhere in _interp's scan either: the last value
            return series[-1][1]
        (x0, y0), (x1, y1) = series[j - 1], series[j]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return at


# the val loss's rise share is read over at most this many points (means of contiguous blocks of evals): the
# jitter's up-and-down movement adds up with every eval while the trend's fall does not, so on a long curve the share
# of upward movement tends to one half once the loss has settled, however much it fell and however well it holds
# (HenryECA, fold I: -3.4% by 18% of 70 evals, then level within its noise: 0.39). Ten points is the count from which
# a curve's own noise band is read (rules.py tail_noise_points_min), and block means of k evals shrink the jitter
# by about sqrt(k), not the trend; a curve of 10 evals or fewer is read as logged
RISE_SHARE_POINTS_MAX = 10
HELD_POINTS_MIN = 2  # val_loss_rise_held reads a rise only when this many evals follow the minimum
# val_loss_rise_trend reads a trend only over this many evals from the minimum on (the minimum and 5 later): with 6
# points a Kendall tau of 0.73 or more comes by chance from a flat noisy curve less than 3% of the time (one-sided)
TREND_POINTS_MIN = 6
HELD_NOISE_POINTS_MIN = 5  # val_loss_rise_held_noise reads a held rise in noise units from this many later evals
# two logged values are "the same" (val_loss_repeats, val_metric_repeat_share) within this share of their size: a
# float32 eval loss carries ~6e-8 of relative precision and a reduction in another order moves it a few ulps, so a
# frozen model's loss logged 2.3025851 then 2.3025853; exact equality read those as moving predictions and turned
# "collapsed" into "lr-too-small". 1e-6 is ~16 ulps, far under a learning model's eval-to-eval change and under the
# step of any accuracy (1/n for n up to 100,000, LATTICE_N_MAX)
REPEAT_REL_TOL = 1e-6


def _block_means(values: Sequence[float], n_max: int) -> list[float]:
    """`values` as the means of at most `n_max` contiguous blocks of (nearly) equal length."""
    n = len(values)
    if n <= n_max:
        return list(values)
    cuts = [round(i * n / n_max) for i in range(n_max + 1)]
    return [sum(values[a:b]) / (b - a) for a, b in zip(cuts, cuts[1:])]


def _rise_share(values: Sequence[float]) -> float | None:
    diffs = [b - a for a, b in zip(values, values[1:])]
    total = sum(abs(d) for d in diffs)
    if not diffs or total == 0:
        return None if not diffs else 0.0
    return sum(d for d in diffs if d > 0) / total


def kendall_tau(xs: Sequence[float]) -> float:
    """Kendall's tau-a between position and value: (concordant - discordant pairs) / all pairs; ties count 0."""
    n = len(xs)
    pairs = sum((xs[j] > xs[i]) - (xs[j] < xs[i]) for i in range(n) for j in range(i + 1, n))
    return pairs / (n * (n - 1) / 2) if n > 1 else 0.0


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _std(xs: Sequence[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


# Floors of the curve-jitter noise estimates: a perfectly smooth curve would otherwise make any wiggle
# "many noise units". 0.5 point of a metric is the smallest difference the protocol counts (section 6);
# 0.2% of a loss is below what a deterministic val loss moves between two evals of a learning run.
METRIC_NOISE_FLOOR = SCORE_FLOOR
VAL_LOSS_NOISE_FLOOR = 0.002
_MAD_TO_SIGMA = 0.6745


# a val loss with fewer than JITTER_POINTS_MIN points: assume this share of the loss (about the median
# relative jitter of the val losses in the external corpus, bench/results/diagnose_external.md)
SHORT_CURVE_LOSS_NOISE_REL = 0.02
JITTER_TAIL_POINTS = 5  # the jitter is read from the second half of the run when it has this many points


def curve_jitter(values: Sequence[float], *, floor: float = 0.0) -> float | None:
    """Noise of one point of a curve, from the curve itself: the robust spread of its second differences
    (y[i+1] - 2 y[i] + y[i-1] has variance 6 sigma^2 for white noise on a locally straight line), so a
    smooth trend adds little and a zigzag a lot. Read over the second half of the curve when it has
    `JITTER_TAIL_POINTS` points (the steep first fall of a learning curve is curvature, not noise), else
    over the whole curve. None with fewer than JITTER_POINTS_MIN points."""
    if len(values) < JITTER_POINTS_MIN:
        return None
    tail = values[len(values) // 2:]
    use = tail if len(tail) >= JITTER_TAIL_POINTS else values
    d2 = [abs(c - 2 * b + a) for a, b, c in zip(use, use[1:], use[2:])]
    return max(_median(d2) / _MAD_TO_SIGMA / math.sqrt(6), floor)


# what a run logged without its val size is judged against (a reader says it where no val_n is logged): the noise
# bands of val_metric_noise and val_loss_noise read from the curve itself, never skipped (a CSV said "noise checks
# are skipped" and then judged its curve "6.2 noise units" from its jitter)
NO_VAL_SIZE_NOISE = ("no binomial standard error: the noise band of each val curve is its own eval-to-eval jitter "
                     f"(from {JITTER_POINTS_MIN} evals on; a val loss of fewer evals is given "
                     f"{SHORT_CURVE_LOSS_NOISE_REL:.0%} of its value, and an accuracy's k/n values can give the val "
                     "size); a val_n column gives the binomial band")


# An accuracy is a share of rows, k/n: when no val size is logged (a notebook's table, a trainer_state.json without
# eval runtime), the smallest n that puts every logged accuracy on the lattice k/n is the val size, or a divisor of it
# so rarely that it is ignored (a run of 5+ evals would need every count to share a factor). The lattice is read only
# where luck cannot make it: at least LATTICE_POINTS_MIN evals with 3 distinct values, and n no larger than the size at
# which one value would land within its display rounding of some k/n by chance LATTICE_FALSE_FIT_MAX of the time (a
# table printing 6 decimals: n up to 50,000; 4 decimals: up to 500). A lattice n is a floor on the metric's noise, not
# the noise: a token-level accuracy sits on a lattice of tokens, which are correlated (`_val_metric` takes the larger
# of the band it gives and the curve's own jitter).
LATTICE_POINTS_MIN = 4
LATTICE_DISTINCT_MIN = 3
LATTICE_FALSE_FIT_MAX = 0.05
LATTICE_N_MAX = 100_000  # a search bound (full-precision floats would allow millions)
LATTICE_SOURCE = "the val accuracy's lattice"


def _decimals(v: float) -> int:
    s = repr(float(v))
    return 17 if "e" in s else len(s.split(".")[1]) if "." in s else 0


def accuracy_lattice_n(values: Sequence[float]) -> int | None:
    """The smallest n with every value k/n (within its printed rounding), or None where the values are too few, too
    alike, or too coarsely printed for the lattice to stand out from chance (see LATTICE_FALSE_FIT_MAX)."""
    vals = [float(v) for v in values if _num(v) is not None and 0.0 <= float(v) <= 1.0]
    if len(vals) < LATTICE_POINTS_MIN or len(set(vals)) < LATTICE_DISTINCT_MIN:
        return None
    tol = max(0.5 * 10.0 ** -max(_decimals(v) for v in vals), 1e-9)
    for n in range(2, min(int(LATTICE_FALSE_FIT_MAX / (2 * tol)), LATTICE_N_MAX) + 1):
        if all(abs(v * n - round(v * n)) <= tol * n + 1e-9 for v in vals):
            return n
    return None


def binomial_se(p: float, n: float) -> float | None:
    """sqrt(q(1-q)/n) with q = (p n + 1) / (n + 2), so a perfect or zero score on a small set still
    carries its uncertainty (plain p(1-p) would give 0 at p = 1); None when n is unknown."""
    if n is None or n <= 0 or p is None:
        return None
    p = min(max(p, 0.0), 1.0)
    q = (p * n + 1.0) / (n + 2.0)
    return math.sqrt(q * (1.0 - q) / n)


# ---------------------------------------------------------------------------------------------
# The computation
# ---------------------------------------------------------------------------------------------


def val_metric_key(pts: Sequence[dict], meta: Mapping[str, Any]) -> str | None:
    """The val metric M (a METRIC_KEYS name): the run's own objective when its record names one the history logs
    (a multi-label run keeps its model by subset accuracy: judged on macro-F1, the diagnosis missed a fall the
    objective took); else the first of METRIC_KEYS that moved: one stuck at a single value at every eval (an F1 of
    exactly 0.0 throughout while the accuracy beside it rises: an entity scheme the scorer does not read) carries no
    signal."""
    own = str(meta.get("objective") or "").removeprefix("val/")
    if own in METRIC_KEYS and _series(pts, f"val/{own}"):
        return own
    if meta.get("trl_kind") == PREFERENCE_KIND and _series(pts, f"val/{PREFERENCE_METRIC}"):
        return PREFERENCE_METRIC
    logged = [m for m in METRIC_KEYS if _series(pts, f"val/{m}")]
    return next((m for m in logged if len({v for _, v in _series(pts, f"val/{m}")}) > 1), logged[0] if logged
                else None)


def compute_features(points: Sequence[dict], meta: Mapping[str, Any] | None = None,
                     config: Mapping[str, Any] | None = None) -> CurveFeatures:
    """Every feature of `FEATURES` for one run history (list of eval-point dicts), its run.json and its config
    (`RunHistory.config`: read only for what the history does not log)."""
    meta = dict(meta or {})
    acc = FeatureSet()
    pts = sorted((p for p in points if _num(p.get("step")) is not None), key=lambda p: p["step"])
    rl = meta.get("trl_kind") == RL_KIND
    if rl:  # its loss is no fit to judge (RL_LOSS_WHY): no loss feature is read from it
        pts = [{k: v for k, v in p.items() if not (k.startswith("train/loss") or k in ("val/loss",
                                                                                         "train_eval/loss"))}
               for p in pts]
    acc.details["n_points_without_step"] = len(points) - len(pts)
    if not pts:
        acc.miss(FEATURES, "the history has no eval points with a step")
        return acc.done()

    last_step = float(pts[-1]["step"])
    frac = (lambda s: s / last_step) if last_step > 0 else (lambda s: 0.0)
    acc.set("steps", last_step)
    acc.set("n_eval_points", sum(1 for p in pts if is_eval_point(p)))
    planned, done = _num(meta.get("steps_planned")), _num(meta.get("steps_done"))
    acc.set("plan_done_fraction", (done if done is not None else last_step) / planned if planned else None,
            "the planned number of steps is unknown (no max_steps in trainer_state.json, no run.json steps_planned)")
    ep = _num(pts[-1].get("epoch"))
    acc.set("epochs", ep, "no `epoch` key in the history")

    metric = val_metric_key(pts, meta)
    acc.details["val_metric"] = f"val/{metric}" if metric else None
    task = meta.get("task") or ("multi_label" if metric in ("micro_f1", "subset_accuracy") or any(
        "val/subset_accuracy" in p for p in pts) else "single_label")
    acc.details["task"] = task
    labels = _labels(pts, meta)
    generative = task in GENERATIVE_TASKS or metric in ROW_MEAN_METRICS or any(
        k.startswith(PROMPT_KEY_PREFIX) or k == "val/perplexity" for p in pts for k in p)
    acc.set("generative", 1.0 if generative else None, NOT_APPLICABLE + f"a {task} run")
    # nothing in the run says it is a classifier (no task from a side file, no class count, no val metric): the
    # single-label default is a guess, not a fact (protocol 5b: the knobs of a run are facts to read, not to assume)
    guessed = not meta.get("task") and not _labels(pts, meta) and not _num(meta.get("n_classes")) and metric is None
    acc.set("classifier", 1.0 if task in CLASSIFIER_TASKS and not generative and not guessed else None,
            "nothing says this run is a classifier (no adapter_config.json task_type or config.json architecture, "
            "no class count, no val metric)" if guessed and not generative
            else NOT_APPLICABLE + f"a {'generative' if generative else task} run")
    k = len(labels) if labels else _num(meta.get("n_classes"))
    acc.set("n_classes", k, NOT_APPLICABLE + "a generative run has no classes" if generative
            else "no labels in run.json and no per-class keys in the history")
    chance = math.log(k) if (k and k >= 2 and task == "single_label" and not generative) else None
    why_chance = (NOT_APPLICABLE + "a language model's loss has no ln(classes) reference (its start loss is the "
                  "reference)" if generative
                  else "multi-label (BCE) has no single-class chance loss" if task == "multi_label"
                  else NOT_APPLICABLE + f"a {task} loss has no ln(classes) reference" if task != "single_label"
                  else "number of classes unknown")

    first = next((p for p in pts if _num(p.get("val/loss")) is not None), None) or \
        next((p for p in pts if metric and _num(p.get(f"val/{metric}")) is not None), None)
    acc.set("first_eval_fraction", frac(first["step"]) if first else None, "no val points")
    _peak_lr(acc, pts, config or {})
    _method(acc, meta)
    _run_size(acc, pts, meta)
    if meta.get("train_loss_summed"):
        # the train losses are sums over an unknown number of accumulation micro-batches (history_io._summed_losses):
        # N x ln(classes) is no blow-up, so they are not compared with ln(classes) (diverged, lr-too-large)
        _train_loss(acc, pts, frac, None, "the train losses look summed over gradient-accumulation micro-batches "
                    "(their count unknown): not comparable with ln(classes)")
    else:
        _train_loss(acc, pts, frac, chance, why_chance)
    tl = acc.values.get("train_loss_final")
    acc.set("train_perplexity_final", math.exp(min(tl, 50.0)) if generative and tl is not None else None,
            "no `train/loss` values in the history" if generative else NOT_APPLICABLE + "a classifier")
    _val_loss(acc, pts, frac, chance, why_chance)
    unequal = next((x["unequal_windows"] for key in ("train_loss_summed", "train_loss_scale")
                    if isinstance(x := meta.get(key), Mapping) and x.get("unequal_windows")), None)
    if unequal:
        # the windows sum unequal counts of micro-batch means that cannot be told apart (history_io._window_shares):
        # the loss's values stand as logged, but no fall, rise or shape read across windows is a measurement
        acc.miss(TRAIN_LOSS_ACROSS_WINDOWS, unequal)
    _val_metric(acc, pts, frac, metric)
    _val_loss_progress(acc, pts, frac, loss_only=metric is None)
    _val_at_spike(acc, pts, metric, chance, why_chance)
    _gaps(acc, pts, metric)
    _slices(acc, pts, meta)
    _prompt_set(acc, pts, generative)
    _compound(acc, pts)
    _stability(acc, pts, meta)
    _per_class(acc, pts, meta, labels)
    if rl:
        acc.miss([n for n, spec in FEATURES.items() if spec.group in ("train loss", "val loss")], RL_LOSS_WHY)
    if generative:  # open generation has no classes: say so instead of asking for per-class logs
        for name, spec in FEATURES.items():
            if spec.group in CLASSIFIER_GROUPS and acc.values.get(name) is None \
                    and not acc.missing.get(name, "").startswith(NOT_APPLICABLE):
                acc.set(name, None, NOT_APPLICABLE + "open generation has no classes (a run that generates labels "
                        "and logs per-class numbers is read like a classifier's)")
    return acc.done()


# a history point's learning rate after its step's scheduler update (the rate the next step uses): what a loratune
# record older than store.RECORD_VERSION 2 logged as `lr`, renamed so by history_io.read_loratune_run. A point's `lr`
# is the rate its own step used (the HF Trainer's `learning_rate`), `lr_max` the largest its window's steps used
LR_NEXT_KEY = "lr_next"


def lr_samples(pts: Sequence[dict]) -> list[tuple[float, float]]:
    """(step, the rate that step used), step-sorted: a point's `lr` at its step, an older record's `lr_next` (the
    rate the following step uses) one step later."""
    out = [(s, v) for s, v in _series(pts, "lr") if v >= 0]
    out += [(s + 1, v) for s, v in _series(pts, LR_NEXT_KEY) if v >= 0]
    return sorted(out)


def _peak_lr(acc: FeatureSet, pts: Sequence[dict], config: Mapping[str, Any]) -> None:
    """`peak_lr`: the largest rate of every logged one (protocol 5b: the lr per step from the log), else the
    configured rate. A point's `lr_max` bounds its `lr`; an older record's `lr_next` (within a warmup, above every
    rate its window used; after the last step, no step's) counts only where no `lr_max` was logged."""
    if any(_num(p.get("lr_max")) is not None for p in pts):
        logged = [v for key in ("lr", "lr_max") for _, v in _series(pts, key) if v >= 0]
    else:  # (a sample past the last step, an older record's last `lr_next`, is a rate no step used)
        last = max(float(p["step"]) for p in pts)
        logged = [v for s, v in lr_samples(pts) if s <= last]
    train = config.get("train") if isinstance(config.get("train"), Mapping) else {}
    configured = _num(train.get("learning_rate"))
    if logged:
        acc.set("peak_lr", max(logged))
        acc.details["peak_lr_source"] = "the largest logged learning rate"
    elif configured is not None and configured >= 0:
        acc.set("peak_lr", configured)
        acc.details["peak_lr_source"] = "the config's train.learning_rate (no learning rate logged)"
    else:
        acc.set("peak_lr", None, "no `lr` in the history and no learning_rate in the config")


def _labels(pts: Sequence[dict], meta: Mapping[str, Any]) -> list[str]:
    if isinstance(meta.get("labels"), (list, tuple)) and meta["labels"]:
        return [str(x) for x in meta["labels"]]
    seen: dict[str, None] = {}
    for p in pts:
        for key in p:
            if key.startswith("val/recall/") or key.startswith("train_eval/recall/"):
                seen[key.split("/", 2)[2]] = None
    return list(seen)


def _peft_and_lora(meta: Mapping[str, Any]) -> tuple[Any, bool]:
    """(the adapter_config.json `peft_type` fact, whether the run trained a LoRA adapter) of a run's meta."""
    facts = meta.get("facts") if isinstance(meta.get("facts"), dict) else {}
    peft = facts.get("peft_type", {}).get("value") if isinstance(facts.get("peft_type"), dict) else None
    return peft, meta.get("method") == "lora" or str(peft).upper() in LORA_PEFT_TYPES


def is_full_finetune(meta: Mapping[str, Any]) -> bool:
    """Whether a run's meta says it trained every weight, no adapter (`method: full`, no LoRA peft_type read)."""
    return meta.get("method") == "full" and not _peft_and_lora(meta)[1]


def _method(acc: FeatureSet, meta: Mapping[str, Any]) -> None:
    """`lora`: what trained, from run.json `method` or the adapter_config.json `peft_type` fact."""
    peft, is_lora = _peft_and_lora(meta)
    method = meta.get("method")
    full = is_full_finetune(meta)
    if full:
        acc.details["method"] = "full"  # the rules' moves for it (Rule.moves_for) and lr thresholds (thresholds_for_method)
    acc.set("lora_adapter", 1.0 if is_lora else 0.0)
    acc.set("full_finetune", 1.0 if full else 0.0)
    if is_lora:
        acc.set("lora", 1.0)
    elif method or peft:
        acc.set("lora", None, NOT_APPLICABLE + f"the run trained {'every weight' if method == 'full' else peft} "
                "(LoRA's lr range does not apply)")
    else:
        acc.set("lora", None, "no adapter_config.json (peft_type) and no run.json method: whether the run trained "
                "a LoRA adapter is unknown")


def _run_size(acc: FeatureSet, pts: Sequence[dict], meta: Mapping[str, Any]) -> None:
    n = next((_num(p.get("val/n")) for p in reversed(pts) if _num(p.get("val/n")) is not None), None)
    counts = (meta.get("label_counts") or {}) if isinstance(meta.get("label_counts"), dict) else {}
    if n is None and isinstance(counts.get("val"), dict) and counts["val"]:
        n = float(sum(v for v in counts["val"].values() if _num(v) is not None))
        acc.details["val_n_source"] = "run.json label_counts.val"
    elif n is not None:
        acc.details["val_n_source"] = "val/n"
    elif (lat := accuracy_lattice_n([v for _, v in _series(pts, "val/accuracy")])) is not None:
        n = float(lat)
        acc.details["val_n_source"] = f"{LATTICE_SOURCE}: every val accuracy is k/{lat}"
    acc.set("val_n", n, "no `val/n` in the history and no val label counts in run.json")
    train = counts.get("train") if isinstance(counts.get("train"), dict) else None
    if train:
        acc.set("train_examples_per_class", sum(train.values()) / len(train))
    else:
        acc.set("train_examples_per_class", None, "run.json has no label_counts.train")


def _train_loss(acc: FeatureSet, pts, frac, chance, why_chance) -> None:
    T = _series(pts, "train/loss", min_step=0)
    acc.set("train_loss_logged", 1.0 if T else 0.0)
    acc.set("train_loss_untracked", 1.0 if len(T) < 2 else None,
            NOT_APPLICABLE + f"the run logged {len(T)} train-loss windows")
    names = ("train_loss_start", "train_loss_final", "train_loss_drop", "train_loss_final_over_start",
             "train_loss_late_drop", "train_loss_late_slope", "train_loss_plateau_fraction",
             "train_loss_vs_chance", "train_loss_rise_share", "train_loss_max_rise", "train_loss_cv",
             "train_loss_runs_to_fit", "train_loss_peak_vs_chance", "train_loss_rebound", "train_loss_min_fraction",
             "train_loss_drop_after_first_eval", "train_loss_drop_since_chance", "train_loss_spike_vs_chance")
    if not T:
        acc.miss(names, "no `train/loss` values in the history")
        return
    first = next((p for p in pts if _num(p.get("train/loss")) is not None and p["step"] > 0), None)
    # a fresh classifier head's first batch sits at ln(classes) before any learning, so it is the start; a language
    # model starts at its pretrained loss, and one small batch of it swings 1-3 nats with the rows drawn (a false
    # 'diverged' in bench/results/sft.md): its start is the larger of that batch and the first window's mean
    start = _num(first.get("train/loss_first")) if first else None
    acc.details["train_loss_start_source"] = "train/loss_first" if start is not None else "first train/loss"
    if start is not None and acc.values.get("generative") == 1.0 and start < T[0][1] <= FIRST_WINDOW_MAX * start:
        start = None
        acc.details["train_loss_start_source"] = ("first train/loss window mean (above the first batch's loss: one "
                                                  "small batch of a language model's loss is too noisy to start from)")
    start = start if start is not None else T[0][1]
    final = T[-1][1]
    tail = _nonfinite_from(pts, "train/loss", min_step=0, marks=[row["step"] for row in _filtered_windows(pts)])
    if tail is not None:  # for the summary: the last finite window is no final (the rules read the finite series)
        acc.details["train_loss_nonfinite_from"] = tail
    acc.set("train_loss_start", start)
    acc.set("train_loss_final", final)
    acc.set("train_loss_vs_chance", final / chance if chance else None, why_chance)
    acc.set("train_loss_peak_vs_chance", max(v for _, v in T) / chance if chance else None, why_chance)
    if len(T) < 2 and start == final:
        # one logged value (a Trainer whose logging_steps outlast the run logs its mean once): no fall to read, and
        # a fall of 0 is not the same as no fall measured
        acc.miss(("train_loss_drop", "train_loss_final_over_start", "train_loss_plateau_fraction",
                  "train_loss_max_rise", "train_loss_drop_since_chance", "train_loss_spike_vs_chance"),
                 "one train loss logged (no trend): log more often (logging_steps about a tenth of an epoch)")
    elif start <= 0:
        acc.miss(("train_loss_drop", "train_loss_final_over_start", "train_loss_late_slope",
                  "train_loss_plateau_fraction", "train_loss_max_rise", "train_loss_drop_since_chance",
                  "train_loss_spike_vs_chance"),
                 "the start train loss is 0")
    else:
        acc.set("train_loss_drop", (start - final) / start)
        acc.set("train_loss_final_over_start", final / start)
        # a fresh head starts at ln(classes); a first logged window already well below it (a long window, a run
        # continuing from a trained model) hides the fall the run made before it
        acc.set("train_loss_drop_since_chance", max((start - final) / start, 1.0 - final / chance) if chance
                else (start - final) / start)
        # a long curve of logged windows is read on its moving mean: the worst rise of single windows above their
        # running minimum grows with their count (the extreme of batch noise), where a climb back up lasts
        vals = _moving_mean([v for _, v in T], len(T) // RISE_SMOOTH_WINDOWS_PER)
        run_min = vals[0]
        worst = 0.0
        for v in vals:
            worst = max(worst, v - run_min)
            run_min = min(run_min, v)
        acc.set("train_loss_max_rise", worst / start)
        # ...and its highest point, on the same moving mean: a spike that lasted, not one window's batch noise
        i_peak = max(range(len(vals)), key=lambda k: vals[k])
        acc.details["train_loss_spike_step"] = T[i_peak][0]
        acc.set("train_loss_spike_vs_chance", vals[i_peak] / chance if chance else None, why_chance)
        acc.set("train_loss_plateau_fraction", _plateau_fraction(T, start, frac))
    _rebound(acc, T, frac)
    if len(T) < 2:
        acc.miss(("train_loss_late_drop", "train_loss_late_slope", "train_loss_rise_share"),
                 "fewer than 2 train-loss windows")
    else:
        late = [(frac(s), v) for s, v in T if frac(s) >= 0.5 - 1e-9]
        if len(late) >= 3:
            a, b = _ols([x for x, _ in late], [y for _, y in late])
            # the line's end clamped at the lowest late loss logged: a convex fall (flat, then a steep drop that
            # flattens) puts the straight line's end below 0, and "fell 100.0% over the last half" was read of a loss
            # that ended at 0.124
            y_mid, y_end = max(a + b * 0.5, 0.0), max(a + b * 1.0, min(y for _, y in late))
            acc.details["train_loss_late_method"] = "least-squares line over the second half"
            acc.set("train_loss_late_slope", b / start if start > 0 else None, "the start train loss is 0")
            target = FIT_TARGET_SHARE * start
            if y_end <= target:
                acc.set("train_loss_runs_to_fit", 0.0)
            elif b < 0:
                acc.set("train_loss_runs_to_fit", (y_end - target) / -b)
            else:
                acc.set("train_loss_runs_to_fit", None, "the train loss is not falling over the second half")
        else:
            y_mid, y_end = _interp([(frac(s), v) for s, v in T], 0.5), final
            acc.details["train_loss_late_method"] = "mid-run point vs final (fewer than 3 late points)"
            acc.set("train_loss_late_slope", (y_end - y_mid) / 0.5 / start if start > 0 else None,
                    "the start train loss is 0")
            acc.set("train_loss_runs_to_fit", None, "fewer than 3 train-loss windows over the second half")
        # within [LATE_DROP_FLOOR, 1]: a rise past twice the mid value reads -100% (its reason, where it is defined);
        # a line whose middle is at 0 (clamped: a V-shaped second half) that ends above it rose without bound, its
        # floor too: 0.0 there printed "fell 0.0% over the last half" of a loss that rose from 0.01 to 5.0
        acc.set("train_loss_late_drop", max(LATE_DROP_FLOOR, min(1.0, (y_mid - y_end) / y_mid)) if y_mid > 0
                else LATE_DROP_FLOOR if y_end > y_mid else 0.0)
        acc.set("train_loss_rise_share", _rise_share([v for _, v in T]))
    v0 = next((p["step"] for p in pts if _num(p.get("val/loss")) is not None), None)
    after = [v for s, v in T if v0 is not None and s > v0]
    if len(after) >= 2 and after[0] > 0:
        acc.set("train_loss_drop_after_first_eval", (after[0] - final) / after[0])
    else:
        acc.set("train_loss_drop_after_first_eval", None, "no val loss, or fewer than 2 train-loss windows after "
                "the first val-loss point")
    cvs = [_num(p.get("train/loss_std")) / _num(p.get("train/loss")) for p in pts
           if _num(p.get("train/loss_std")) is not None and (_num(p.get("train/loss")) or 0) > 0]
    acc.set("train_loss_cv", _median(cvs) if cvs else None, "no `train/loss_std` in the history")


def _val_at_spike(acc: FeatureSet, pts, metric, chance, why_chance) -> None:
    """The val side at the eval nearest the train loss's lasting peak (the later of two as near): its val loss
    against ln(classes) and its val metric's fall below the best before it, in noise units."""
    step = acc.details.get("train_loss_spike_step")
    why = "no train-loss peak measured (fewer than 2 train-loss windows, or none)"
    if step is not None and acc.values.get("train_loss_spike_vs_chance") is None:
        step, why = None, acc.missing.get("train_loss_spike_vs_chance", why)

    def nearest(series):
        return min(range(len(series)), key=lambda k: (abs(series[k][0] - step), -series[k][0]))

    V = _series(pts, "val/loss", min_step=0)
    if step is None or not V or not chance:
        acc.set("val_loss_at_spike_vs_chance", None,
                why if step is None else why_chance if not chance else "no `val/loss` values in the history")
    else:
        acc.set("val_loss_at_spike_vs_chance", V[nearest(V)][1] / chance)
    M = _series(pts, f"val/{metric}", min_step=0) if metric else []
    noise = acc.values.get("val_metric_noise")
    if step is None or not M or not noise:
        acc.set("val_metric_at_spike_drop_se", None,
                why if step is None else "no val metric in the history" if not M
                else acc.missing.get("val_metric_noise", "no val-metric noise band"))
    else:
        i = nearest(M)
        before = [v for _, v in M[:i]]
        acc.set("val_metric_at_spike_drop_se", max(0.0, max(before) - M[i][1]) / noise if before else 0.0)


def _repeat_count(vals: Sequence[float]) -> int:
    """How many of `vals` lie within `REPEAT_REL_TOL` of one of them (the most such): the count of its most frequent
    value to the logged precision. Sorted and bisected: a count per value is O(n^2) on a long curve."""
    ordered = sorted(vals)
    best = 0
    for v in ordered:
        tol = REPEAT_REL_TOL * abs(v)
        best = max(best, bisect.bisect_right(ordered, v + tol) - bisect.bisect_left(ordered, v - tol))
    return best


def _moving_mean(vals: list[float], width: int) -> list[float]:
    """Centred moving mean over `width` points, an even width rounded up to odd (shorter at the ends); the values as
    they are for a width under 2."""
    if width < 2:
        return list(vals)
    h = width // 2
    return [sum(vals[max(0, i - h): i + h + 1]) / len(vals[max(0, i - h): i + h + 1]) for i in range(len(vals))]


def _rebound(acc: FeatureSet, T, frac) -> None:
    vals = [v for _, v in T]
    smooth = _moving_mean(vals, 3)
    # the last of equal lowest values: a table that rounds (the Trainer's notebook table shows 6 decimals) writes a
    # loss still falling below 5e-7 as 0.000000 at every later row, and the loss was lowest at the last of them
    lowest = min(smooth)
    i = max(k for k, v in enumerate(smooth) if v <= lowest)
    acc.set("train_loss_min_fraction", frac(T[i][0]))
    after = vals[i + 1:]
    if smooth[i] <= 0:
        acc.set("train_loss_rebound", None, "the train loss reached 0")
    elif len(after) < REBOUND_MIN_AFTER:
        acc.set("train_loss_rebound", 0.0)
    else:
        acc.set("train_loss_rebound", sum(after) / len(after) / smooth[i] - 1.0)


def _plateau_fraction(T, start, frac) -> float:
    vals = [v for _, v in T]
    smooth = _moving_mean(vals, 3)
    curve = [(0.0, start)] + [(frac(s), v) for (s, _), v in zip(T, smooth)]
    lowest = min(v for _, v in curve)
    total = start - lowest
    if total <= 0.02 * start:
        return 0.0
    target = start - 0.9 * total
    return next(x for x, v in curve if v <= target + 1e-12)


# A pairwise preference loss: DPO's default (TRL's loss_type "sigmoid") is -log sigmoid(margin), exactly ln 2 at step 0,
# where the policy is its reference and every reward margin is 0. A history that logs the reward margins (the
# Trainer's eval_rewards/margins, a notebook table's "Rewards/margins") is a preference run; one that also logs an
# NLL, log-odds or KL term (CPO, ORPO, RPO add an NLL term; KTO logs its KL estimate) has a loss whose start is not ln 2.
PREFERENCE_START_LOSS = math.log(2)
PREFERENCE_MARGIN_KEYS = ("rewards_margins",)
PREFERENCE_OTHER_TERM_MARKS = ("nll", "log_odds", "kl")
# Not every loss_type of a DPO trainer starts at ln 2, and not every one logs its extra term: IPO starts at
# 1/(4 beta^2) (25 at beta 0.1), TRL's "sigmoid,sft" (RPO) at ln 2 + the NLL (4.7 on the tiny Llama), both with the
# same keys as the sigmoid loss. ln 2 is the run's reference only where its own start (its first logged train or val
# loss) is within this share of ln 2; a sigmoid loss's first window after a warm-up sits above it (fold AE's
# Jason-Toskov: 0.818 train, 0.876 val, 1.26x), IPO and RPO far outside.
PREFERENCE_START_BAND = 0.5


def _preference_loss(pts: Sequence[dict]) -> bool:
    keys = {"_" + k.replace("/", "_") + "_" for p in pts for k in p}
    if not any(f"_{m}_" in k for k in keys for m in PREFERENCE_MARGIN_KEYS) or \
            any(f"_{m}_" in k for k in keys for m in PREFERENCE_OTHER_TERM_MARKS):
        return False
    starts = [s[0][1] for key in ("train/loss", "val/loss") if (s := _series(pts, key))]
    return any(abs(v / PREFERENCE_START_LOSS - 1.0) <= PREFERENCE_START_BAND for v in starts)


def _val_loss(acc: FeatureSet, pts, frac, chance, why_chance) -> None:
    V = _series(pts, "val/loss")
    acc.set("val_loss_logged", 1.0 if any("val/loss" in p for p in pts) else 0.0)
    names = ("val_loss_start", "val_loss_min", "val_loss_final", "val_loss_drop", "val_loss_rise", "val_loss_rise_held",
             "val_loss_rise_held_noise", "val_loss_rise_steady", "val_loss_rise_trend", "val_loss_min_fraction",
             "val_loss_late_drop",
             "val_loss_late_share", "val_loss_rise_share", "val_loss_vs_chance", "val_loss_noise",
             "val_loss_rise_noise", "val_loss_drop_noise", "val_loss_repeats", "val_loss_repeat_share",
             "val_loss_min_vs_reference", "val_loss_final_over_start")
    if not V:
        broken = any("val/loss" in p for p in pts)  # logged, every value non-finite
        acc.miss(names, "the val loss is non-finite (NaN/inf) at every eval while the train loss is finite: the "
                 "evaluation is broken (e.g. every eval label masked to -100), fix it to log a finite eval_loss"
                 if broken else "no `val/loss` values in the history")
        return
    start, final = V[0][1], V[-1][1]
    if (tail := _nonfinite_from(pts, "val/loss")) is not None:  # for the summary, as the train loss's
        acc.details["val_loss_nonfinite_from"] = tail
    i_min = min(range(len(V)), key=lambda i: V[i][1])
    vmin = V[i_min][1]
    acc.set("val_loss_start", start)
    acc.set("val_loss_min", vmin)
    acc.set("val_loss_final", final)
    acc.set("val_loss_final_over_start", final / start if start > 0 else None, "val loss starts at 0")
    acc.set("val_loss_vs_chance", final / chance if chance else None, why_chance)
    acc.set("val_loss_drop", (start - vmin) / start if start > 0 else None, "val loss starts at 0")
    acc.set("val_loss_rise", (final - vmin) / vmin if vmin > 0 else None, "val loss minimum is 0")
    later = [v for _, v in V[i_min + 1:]]
    acc.set("val_loss_rise_held", (min(later) - vmin) / vmin if vmin > 0 and len(later) >= HELD_POINTS_MIN else None,
            f"fewer than {HELD_POINTS_MIN} evals after the val loss's minimum (or a minimum of 0)")
    acc.set("val_loss_rise_steady", (1.0 if all(b > a for a, b in zip([vmin] + later, later)) else 0.0)
            if len(later) >= HELD_POINTS_MIN else None,
            f"fewer than {HELD_POINTS_MIN} evals after the val loss's minimum")
    tail = [vmin] + later
    acc.set("val_loss_rise_trend", kendall_tau(tail) if len(tail) >= TREND_POINTS_MIN else None,
            f"fewer than {TREND_POINTS_MIN} evals from the val loss's minimum on")
    acc.set("val_loss_min_fraction", frac(V[i_min][0]))
    vs = [v for _, v in V]
    repeats = _repeat_count(vs)
    acc.set("val_loss_repeats", float(repeats))
    acc.set("val_loss_repeat_share", repeats / len(vs) if len(vs) >= 2 else None, "fewer than 2 val-loss points")
    # the min over the evals after step 0: an eval_on_start eval is the policy at its reference, ln 2 exactly
    # whatever the lr, so a min that counted it could never stay above ln 2 (a swapped-pairs run at lr 5e-3: 1.000 at
    # step 0, then 1.074 -> 1.224 of ln 2)
    trained = [v for s, v in V if s > 0]
    acc.set("val_loss_min_vs_reference", min(trained or vs) / PREFERENCE_START_LOSS if _preference_loss(pts) else None,
            NOT_APPLICABLE + "not a pairwise preference (DPO) loss that starts at ln 2: no reward margins logged, an "
            "NLL, log-odds or KL term beside them (CPO, ORPO, RPO, KTO), or a first loss far from ln 2 (IPO, "
            "sigmoid+sft)")
    T = _series(pts, "train/loss", min_step=0)
    t_start = acc.values.get("train_loss_start")
    fell = t_start - T[-1][1] if T and t_start is not None else 0.0
    after = (min(t_start, _interp(T, V[i_min][0])) - T[-1][1]) / fell if fell > 0 else None
    acc.set("train_loss_fall_after_val_min", after, "the train loss did not fall (or was not logged)")
    if T and t_start:
        run_min, worst = T[0][1], 0.0
        for s, v in T:
            if s >= V[i_min][0]:
                worst = max(worst, v - run_min)
            run_min = min(run_min, v)
        acc.set("train_loss_rise_after_val_min", worst / t_start)
    else:
        acc.set("train_loss_rise_after_val_min", None, "no train loss (or a start train loss of 0)")
    vals = [v for _, v in V]
    noise = curve_jitter(vals, floor=VAL_LOSS_NOISE_FLOOR * _median(vals))
    if noise is None and len(vals) >= 2:
        noise = SHORT_CURVE_LOSS_NOISE_REL * _median(vals)
        acc.details["val_loss_noise_source"] = (f"assumed: {SHORT_CURVE_LOSS_NOISE_REL:.0%} of the val loss (fewer "
                                                f"than {JITTER_POINTS_MIN} points, no jitter to read)")
    elif noise is not None:
        acc.details["val_loss_noise_source"] = "the val-loss curve's own eval-to-eval jitter"
    acc.set("val_loss_noise", noise, "a single val-loss point: no noise band for the val loss")
    acc.set("val_loss_rise_noise", (final - vmin) / (math.sqrt(2) * noise) if noise else None,
            "a single val-loss point: no noise band for the val loss")
    acc.set("val_loss_drop_noise", (start - vmin) / (math.sqrt(2) * noise) if noise else None,
            "a single val-loss point: no noise band for the val loss")
    acc.set("val_loss_rise_held_noise", (min(later) - vmin) / (math.sqrt(2) * noise)
            if noise and len(later) >= HELD_NOISE_POINTS_MIN else None,
            f"fewer than {HELD_NOISE_POINTS_MIN} evals after the val loss's minimum (or no noise band)")
    if len(V) < 3:
        acc.miss(("val_loss_late_drop", "val_loss_late_share", "val_loss_rise_share"),
                 "fewer than 3 val-loss points")
        return
    curve = [(frac(s), v) for s, v in V]
    mid = _interp(curve, 0.5)
    acc.set("val_loss_late_drop", (mid - final) / mid if mid > 0 else None, "val loss is 0 at mid-run")
    fell = start - final
    if start > 0 and fell > 1e-4 * start:  # V is deterministic: even a small steady fall is signal
        clock = _lr_clock(pts)
        if clock is not None:
            acc.details["late_share_axis"] = "learning-rate time (cumulative lr x steps)"
            lr_curve = [(clock(s), v) for s, v in V]
            mid_lr = _interp(lr_curve, 0.5 * clock(V[-1][0]))
            acc.set("val_loss_late_share", (mid_lr - final) / fell)
        else:
            acc.details["late_share_axis"] = "steps (no lr in the history)"
            acc.set("val_loss_late_share", (mid - final) / fell)
    else:
        acc.set("val_loss_late_share", None, "val loss did not fall (by 0.01%) over the run")
    blocks = _block_means([v for _, v in V], RISE_SHARE_POINTS_MAX)
    acc.set("val_loss_rise_share", _rise_share(blocks))
    lows = [min(blocks[:i]) for i in range(1, len(blocks))]
    acc.set("val_loss_max_swing", max((b - lo) / lo for b, lo in zip(blocks[1:], lows)) if lows and min(lows) > 0
            else None, "fewer than 2 val-loss points, or a val loss at or below 0")


def _lr_clock(pts: Sequence[dict]):
    """step -> cumulative learning rate x steps (trapezoids between the logged rates, lr_samples), or None without
    `lr`.

    Progress per unit of this clock is what a steady learner keeps constant: under a decaying schedule
    the loss slows down per step even when nothing else limits it."""
    lr = lr_samples(pts)
    if len(lr) < 2:
        return None
    marks = [(lr[0][0], 0.0)]
    for (s0, a), (s1, b) in zip(lr, lr[1:]):
        marks.append((s1, marks[-1][1] + 0.5 * (a + b) * (s1 - s0)))
    if marks[-1][1] <= 0:
        return None
    return _interpolator(marks)


def _val_metric(acc: FeatureSet, pts, frac, metric) -> None:
    names = ("val_metric_start", "val_metric_best", "val_metric_final", "val_metric_gain", "val_metric_gain_se",
             "val_metric_room", "val_metric_final_drop", "best_step_fraction", "val_metric_late_gain",
             "val_metric_late_gain_se",
             "val_metric_gain_per_epoch_late", "still_improving", "val_metric_se", "val_metric_max_drop",
             "val_metric_drops", "val_metric_max_drop_se", "val_metric_noise", "val_metric_repeat_share",
             "val_metric_final_vs_start", "val_metric_final_drop_se", "val_metric_noise_bound")
    acc.set("val_metric_logged", 0.0 if metric is None else 1.0)
    if metric is None:
        acc.miss(names, NO_VAL_METRIC)
        return
    M = _series(pts, f"val/{metric}")
    vals = [v for _, v in M]
    best = max(vals)
    i_best = next(i for i, v in enumerate(vals) if v >= best - 1e-12)
    acc.set("val_metric_start", vals[0])
    acc.set("val_metric_best", best)
    acc.set("val_metric_final", vals[-1])
    acc.set("val_metric_final_vs_start", vals[-1] - vals[0])
    acc.set("val_metric_gain", best - vals[0])
    acc.set("val_metric_room", 1.0 - vals[0])  # the most it could gain (a share in [0, 1])
    acc.set("val_metric_final_drop", best - vals[-1])
    acc.set("best_step_fraction", frac(M[i_best][0]))
    drops = [a - b for a, b in zip(vals, vals[1:]) if a > b]
    if len(vals) >= 2:
        acc.set("val_metric_max_drop", max(drops) if drops else 0.0)
        acc.set("val_metric_drops", sum(drops))
        acc.set("val_metric_repeat_share", _repeat_count(vals) / len(vals))
    else:
        acc.miss(("val_metric_max_drop", "val_metric_drops", "val_metric_repeat_share"),
                 "fewer than 2 val-metric points")

    n = acc.values.get("val_n")
    if metric in ROW_MEAN_COUNT:  # what the metric's rows are worth, where the points say it
        n = next((v for p in reversed(pts) if (v := _num(p.get(f"val/{ROW_MEAN_COUNT[metric]}"))) is not None), n)
    if not has_binomial_se(metric):  # a share of tokens, or a mean of overlap scores, not a share of rows
        se = None
        acc.set("val_metric_se", None, NOT_APPLICABLE + f"{metric} is no share of rows (tokens correlated within a "
                "row, or a mean of per-row overlap scores), so the row count gives no binomial standard error; the "
                "curve's jitter is its noise")
    else:
        se = binomial_se(vals[-1], n) if n else None
        acc.set("val_metric_se", se, "val size unknown (no `val/n`), so no standard error")
    jitter = curve_jitter(vals, floor=METRIC_NOISE_FLOOR)
    bounded = not has_binomial_se(metric) and len(vals) < ROW_MEAN_JITTER_POINTS_MIN and bool(n)
    acc.set("val_metric_noise_bound", 1.0 if bounded else 0.0)
    if bounded:
        # a jitter read from one or two second differences is no band (protocol 5b, noise first); a mean of n
        # per-row scores in [0, 1] has a variance of at most p(1 - p) / n (Bhatia-Davis), so the binomial formula
        # bounds its standard error from above: the band stands in, conservative
        jitter = binomial_se(vals[-1], n)
        acc.details["val_metric_noise_source"] = "the [0, 1] bound on a mean of per-row scores (binomial formula)"
    if se and str(acc.details.get("val_n_source", "")).startswith(LATTICE_SOURCE) and jitter is not None \
            and jitter > se:
        noise, acc.details["val_metric_noise_source"] = jitter, ("the metric curve's own eval-to-eval jitter (above "
                                                                 "the binomial standard error of the lattice's val size)")
    elif se:
        noise, acc.details["val_metric_noise_source"] = se, "binomial standard error from the val size"
    elif jitter is not None:
        noise = jitter
        acc.details.setdefault("val_metric_noise_source", "the metric curve's own eval-to-eval jitter")
    else:
        noise = None
    why_noise = f"val size unknown and fewer than {JITTER_POINTS_MIN} metric points: no noise band"
    acc.set("val_metric_noise", noise, why_noise)
    se = noise  # every *_se feature below is in units of the noise band
    if se:
        acc.set("val_metric_final_drop_se", (best - vals[-1]) / se)
        acc.set("val_metric_gain_se", (best - vals[0]) / se)
    else:
        acc.set("val_metric_final_drop_se", None, why_noise)
        acc.set("val_metric_gain_se", None, why_noise)
    if se is not None and se > 0 and acc.values.get("val_metric_max_drop") is not None:
        acc.set("val_metric_max_drop_se", acc.values["val_metric_max_drop"] / se)
    else:
        acc.set("val_metric_max_drop_se", None, why_noise)

    early = [v for s, v in M if frac(s) <= 2 / 3 + 1e-9]
    late = [v for s, v in M if frac(s) > 2 / 3 + 1e-9]
    if early and late:
        gain = max(late) - max(early)
        acc.set("val_metric_late_gain", gain)
        if se:
            acc.set("val_metric_late_gain_se", gain / se)
        else:
            acc.set("val_metric_late_gain_se", None, why_noise)
        acc.set("still_improving", 1.0 if gain > (se if se else 0.01) else 0.0)
        acc.details["still_improving_margin"] = "one noise unit" if se else "0.01 (noise unknown)"
    else:
        acc.miss(("val_metric_late_gain", "val_metric_late_gain_se", "still_improving"),
                 "no val-metric points on both sides of 2/3 of the run")

    Me = [(_num(p.get("epoch")), _num(p.get(f"val/{metric}"))) for p in pts if frac(p["step"]) >= 0.5 - 1e-9]
    Me = [(e, v) for e, v in Me if e is not None and v is not None]
    if len(Me) >= 2 and Me[-1][0] > Me[0][0]:
        acc.set("val_metric_gain_per_epoch_late", _ols([e for e, _ in Me], [v for _, v in Me])[1])
    else:
        acc.set("val_metric_gain_per_epoch_late", None,
                "needs `epoch` and >= 2 val-metric points over the second half of the run")


def remaining_fall(values: Sequence[float]) -> float:
    """What a falling curve has left to lose at its own recent pace (`val_loss_remaining_gain`'s numerator): the mean
    fall per point over the last `REMAINING_WINDOW` points against the window before it, extrapolated geometrically
    when it shrinks, `REMAINING_AHEAD` more falls when it does not; 0 when the recent falls are not falls."""
    falls = [a - b for a, b in zip(values, values[1:])]
    if not falls:
        return 0.0
    w = max(1, min(REMAINING_WINDOW, len(falls) // 2))
    g2 = sum(falls[-w:]) / w
    g1 = sum(falls[-2 * w:-w]) / w if len(falls) >= 2 * w else 0.0
    if g2 <= 0:
        return 0.0
    if g1 <= 0 or g2 >= g1:
        return REMAINING_AHEAD * g2
    q = (g2 / g1) ** (1.0 / w)
    # a loss cannot fall below zero: near-constant falls (q -> 1) would otherwise extrapolate to many times the loss
    return min(g2 * q / (1 - q), max(values[-1], 0.0))


def _val_loss_progress(acc: FeatureSet, pts, frac, *, loss_only: bool) -> None:
    """`val_loss_still_falling` for every run; without a val metric, `best_step_fraction` and
    `still_improving` read the val loss too (its minimum is the best point), so loss-only runs (many
    Trainer and every SFT run) are judged on the same rows."""
    V = _series(pts, "val/loss")
    if not V:
        acc.set("val_loss_still_falling", None, "no `val/loss` values in the history")
        return
    early = [v for s, v in V if frac(s) <= 2 / 3 + 1e-9] or [V[0][1]]
    late = [v for s, v in V if frac(s) > 2 / 3 + 1e-9]
    noise = acc.values.get("val_loss_noise")
    if late and noise and len(V) >= 2:
        margin = max(noise, IMPROVE_MIN_REL * min(early))
        acc.set("val_loss_still_falling", 1.0 if min(early) - min(late) > margin else 0.0)
    else:
        acc.set("val_loss_still_falling", None, "fewer than 2 val-loss points")
    if len(V) >= 2 and V[-1][1] > 0:
        left = remaining_fall([v for _, v in V])
        acc.set("val_loss_remaining_gain", left / V[-1][1])
        acc.set("val_loss_remaining_noise", left / (math.sqrt(2) * noise) if noise else None,
                "no noise band for the val loss")
    else:
        acc.miss(("val_loss_remaining_gain", "val_loss_remaining_noise"), "fewer than 2 val-loss points")
    if loss_only:
        i_min = min(range(len(V)), key=lambda i: V[i][1])
        acc.set("best_step_fraction", frac(V[i_min][0]))
        acc.set("still_improving", acc.values.get("val_loss_still_falling"),
                acc.missing.get("val_loss_still_falling", ""))
        acc.details["still_improving_margin"] = f"one val-loss noise unit and {IMPROVE_MIN_REL:.0%} of the loss"
        acc.details["progress_signal"] = "val/loss (no val metric)"


_PROMPT_NAMES = tuple(n for n, s in FEATURES.items() if s.group == "prompt set")


def _prompt_set(acc: FeatureSet, pts, generative: bool) -> None:
    """Features of the prompt set's scores (generation.py). The noise of a group's chrF is its standard error
    over the prompts (`chrf_se`, logged beside it); without it, the curve's own jitter."""
    if not generative:
        acc.miss(_PROMPT_NAMES, NOT_APPLICABLE + "a classifier has no prompt set (its familiar/novel slices are "
                 "the val_familiar / val_novel features)")
        return
    fam, nov = (_series(pts, prompt_key(g, "chrf")) for g in ("familiar", "novel"))
    if not fam and not nov:
        acc.miss(_PROMPT_NAMES, "no prompt-set scores (`val/prompt_<group>_chrf`): set data.prompt_set")
        return

    def last_of(metric: str) -> list[float]:
        return [v for v in (next((_num(p.get(prompt_key(g, metric))) for p in reversed(pts)
                                  if _num(p.get(prompt_key(g, metric))) is not None), None)
                            for g in ("familiar", "novel")) if v is not None]

    def noise(series: list[tuple[float, float]], se_keys: list[str]) -> float | None:
        ses = [next((_num(p.get(key)) for p in reversed(pts) if _num(p.get(key)) is not None), None)
               for key in se_keys]
        if ses and all(s is not None for s in ses):
            return max(math.sqrt(sum(s * s for s in ses)), METRIC_NOISE_FLOOR)
        return curve_jitter([v for _, v in series], floor=METRIC_NOISE_FLOOR)

    why_group = "no `val/prompt_{}_chrf` in the history (the prompt set has no {} rows)"
    acc.set("prompt_familiar_score_final", fam[-1][1] if fam else None, why_group.format("familiar", "familiar"))
    famx = [v for _, v in _series(pts, prompt_key("familiar", "exact_match"))]
    acc.set("prompt_familiar_exact_final", famx[-1] if famx else None,
            "no `val/prompt_familiar_exact_match` in the history")
    if nov:
        vals = [v for _, v in nov]
        best = max(vals)
        acc.set("prompt_novel_score_final", vals[-1])
        acc.set("prompt_novel_score_best", best)
        acc.set("prompt_novel_drift", best - vals[-1])
        n = noise(nov, [prompt_key("novel", "chrf_se")])
        acc.set("prompt_novel_drift_se", (best - vals[-1]) / (math.sqrt(2) * n) if n else None,
                f"no `val/prompt_novel_chrf_se` and fewer than {JITTER_POINTS_MIN} points: no noise band")
    else:
        acc.miss(("prompt_novel_score_final", "prompt_novel_score_best", "prompt_novel_drift", "prompt_novel_drift_se"),
                 why_group.format("novel", "novel"))
    fam_at, nov_at = dict(fam), dict(nov)
    both = [(s, fam_at[s] - nov_at[s]) for s, _ in fam if s in nov_at]  # (step, familiar - novel)
    gap_names = ("prompt_gap_final", "prompt_gap_widening", "prompt_gap_widening_se")
    if not both:
        acc.miss(gap_names, "needs familiar and novel prompt-set scores at the same eval point")
    else:
        gaps = [g for _, g in both]
        acc.set("prompt_gap_final", gaps[-1])
        # protocol 9's memorising sign is familiar >> novel: only familiar's lead can widen. A novel lead counts as
        # no lead (the signed minimum took novel 0.6 ahead as the "narrowest" gap, so a final tie read as widened)
        leads = [max(g, 0.0) for g in gaps]
        widening = leads[-1] - min(leads)
        acc.set("prompt_gap_widening", widening)
        n = noise(both, [prompt_key(g, "chrf_se") for g in ("familiar", "novel")])
        acc.set("prompt_gap_widening_se", widening / (math.sqrt(2) * n) if n else None,
                f"no `val/prompt_<group>_chrf_se` and fewer than {JITTER_POINTS_MIN} points: no noise band")
    ratios = last_of("len_ratio")
    acc.set("prompt_len_ratio_final", sum(ratios) / len(ratios) if ratios else None,
            "no `val/prompt_<group>_len_ratio` in the history")
    capped = last_of("capped")
    acc.set("prompt_capped_share_final", sum(capped) / len(capped) if capped else None,
            "no `val/prompt_<group>_capped` in the history (a run from before it was logged)")
    rep = []
    for p in pts:
        vs = [_num(p.get(prompt_key(g, "repetition"))) for g in ("familiar", "novel")]
        vs = [v for v in vs if v is not None]
        if vs:
            rep.append(sum(vs) / len(vs))
    acc.set("prompt_repetition_final", rep[-1] if rep else None, "no `val/prompt_<group>_repetition` in the history")
    acc.set("prompt_repetition_rise", rep[-1] - min(rep) if rep else None,
            "no `val/prompt_<group>_repetition` in the history")


def _compound(acc: FeatureSet, pts) -> None:
    both = [p for p in pts if _num(p.get("val_compound/subset_accuracy")) is not None
            and _num(p.get("val_single/subset_accuracy")) is not None]
    names = ("compound_metric_final", "single_metric_final", "compound_gap")
    if not both:
        # a multi-label run records each group's row count (metrics.multi_label_row_scores) and scores a group only
        # where validation has rows of it: an empty group is the reason, not the task or the run's age
        counted = [p for p in pts if any(_num(p.get(f"val_{g}/n")) is not None for g in ("compound", "single"))]
        empty = [f"{what} rows (val_{g}/n 0)" for g, what in (("compound", "compound (two or more labels)"),
                                                             ("single", "single-label"))
                 if counted and _num(counted[-1].get(f"val_{g}/n")) == 0]
        acc.miss(names, f"validation has no {' and no '.join(empty)}: no compound vs single-label gap to measure"
                 if empty else "no val_compound / val_single exact match (single-label data, or an older run)")
        return
    last = both[-1]
    acc.set("compound_metric_final", last["val_compound/subset_accuracy"])
    acc.set("single_metric_final", last["val_single/subset_accuracy"])
    acc.set("compound_gap", last["val_single/subset_accuracy"] - last["val_compound/subset_accuracy"])


def _slices(acc: FeatureSet, pts, meta: Mapping[str, Any]) -> None:
    both = [p for p in pts if _num(p.get("val_familiar/macro_f1")) is not None
            and _num(p.get("val_novel/macro_f1")) is not None and (_num(p.get("step")) or 0) > 0]
    names = ("familiar_metric_final", "novel_metric_final", "familiar_novel_gap", "familiar_novel_gap_growth")
    if not both:
        # the run's record says why it cut no familiar/novel slices (slices.assign_slices: too few rows, no spread)
        rec = meta.get("slices") if isinstance(meta.get("slices"), dict) else {}
        why = (rec.get("skipped") if isinstance(rec.get("skipped"), dict) else {}).get("familiar/novel")
        acc.miss(names, f"no familiar / novel slices: {why}" if isinstance(why, str) else
                 "no val_familiar / val_novel slice metrics after step 0 (train.slices off, or an older run)")
        return
    first, last = both[0], both[-1]
    gap = last["val_familiar/macro_f1"] - last["val_novel/macro_f1"]
    acc.set("familiar_metric_final", last["val_familiar/macro_f1"])
    acc.set("novel_metric_final", last["val_novel/macro_f1"])
    acc.set("familiar_novel_gap", gap)
    if len(both) >= 2:
        acc.set("familiar_novel_gap_growth", gap - (first["val_familiar/macro_f1"] - first["val_novel/macro_f1"]))
    else:
        acc.set("familiar_novel_gap_growth", None, "needs slice metrics at two eval points after step 0")


def _gaps(acc: FeatureSet, pts, metric) -> None:
    last_val = next((p for p in reversed(pts) if metric and _num(p.get(f"val/{metric}")) is not None), None)
    te_key = f"train_eval/{metric}" if metric else None
    last_te = next((p for p in reversed(pts) if te_key and _num(p.get(te_key)) is not None), None)
    if last_te is None:
        why = "no train_eval/* metric: the train/val gap needs a scored train subsample"
        acc.miss(("train_eval_metric_final", "gap_f1"), why)
    else:
        acc.set("train_eval_metric_final", last_te[te_key])
        if last_val is not None:
            acc.set("gap_f1", last_te[te_key] - last_val[f"val/{metric}"])
        else:
            acc.set("gap_f1", None, "no val metric")
    last_vl = next((p for p in reversed(pts) if _num(p.get("val/loss")) is not None), None)
    for key in ("train_eval/loss", "train/loss"):
        last_tl = next((p for p in reversed(pts) if _num(p.get(key)) is not None), None)
        if last_tl is not None:
            break
    if last_vl is None or last_tl is None:
        acc.set("gap_loss", None, "needs val/loss and train_eval/loss (or train/loss)")
    else:
        acc.details["gap_loss_train_key"] = key
        acc.set("gap_loss", last_vl["val/loss"] - last_tl[key])


def _stability(acc: FeatureSet, pts, meta) -> None:
    bad = []
    overflow = []
    last_grad = next((p for p in reversed(pts) if "train/grad_norm" in p), None)
    for p in pts:
        if (_num(p.get("step")) or 0) <= 0:
            continue
        for key in LOSS_KEYS:
            if key in p and _num(p[key]) is None:
                row = {"step": p["step"], "key": key, "value": p[key] if p[key] is None else str(p[key])}
                # an infinite gradient norm beside a finite loss, not at the end, is a float16 loss-scale overflow:
                # the scaler skips that step and lowers its scale (a divergence shows in the loss, or persists)
                fp16_skip = (key == "train/grad_norm" and _num(p.get("train/loss")) is not None
                             and p is not last_grad)
                (overflow if fp16_skip else bad).append(row)
    bad.extend(_filtered_windows(pts))
    bad.sort(key=lambda row: row["step"])
    eval_faults = _eval_faults(pts, bad)
    if eval_faults:
        bad = []
        acc.details["val_loss_nonfinite"] = eval_faults[:20]
    acc.set("val_loss_nonfinite_evals", len(eval_faults))
    acc.set("nonfinite_values", len(bad))
    acc.details["nonfinite"] = bad[:20]
    if overflow:
        acc.details["grad_overflow_skipped"] = overflow[:20]
    status = meta.get("status")
    if status:
        acc.set("status_diverged", 1.0 if status == "diverged" else 0.0)
        acc.details["status"] = status
        if meta.get("reason"):
            acc.details["status_reason"] = meta["reason"]
    else:
        acc.set("status_diverged", None, "no run.json status")
    g = [v for _, v in _series(pts, "train/grad_norm", min_step=0)]
    med = _median(g) if g else 0.0
    acc.set("grad_norm_spike", max(g) / med if g and med > 0 else None, "no `train/grad_norm` in the history")


# The Trainer's `logging_nan_inf_filter` (on by default) drops a non-finite step's loss from the logged mean; when every
# step of a logging window was non-finite, the window logs exactly 0.0. A train loss of exactly 0 right after a window
# at FILTERED_PRIOR_MIN or more is that mark: no optimiser takes a window's mean loss from a nat to below a printed
# 0.000000 in one window, where a fitted model's loss reaching 0.0 (a saturated softmax) gets there from near 0.
FILTERED_PRIOR_MIN = 1.0
# ... unless the run shows that its loss reaches a logged 0.0 on its own: a 0.0 right after a window above 0 and below
# NATURAL_ZERO_PRIOR_MAX (within a hundredth of a nat of zero) is a loss that got there from near 0 (a preference loss
# whose margins saturate, a memorised batch; the Trainer rounds the logged loss to 4 decimals). In such a run, logged one
# step at a time, a 0.0 after a hard batch's 2.07 is the same saturation, not the filter (fold AK's Prathyusha-Guduru:
# DPO of Mistral-7B, 67 zeros after windows of 0.0001-0.009, one after 2.067). A run whose every zero follows a
# window at FILTERED_PRIOR_MIN or more, or another zero, keeps the filter's reading.
NATURAL_ZERO_PRIOR_MAX = 0.01


def _filtered_windows(pts: Sequence[dict]) -> list[dict]:
    """Train-loss windows logged as exactly 0.0 after a window at FILTERED_PRIOR_MIN or more: non-finite steps the
    Trainer's nan/inf filter hid, counted with the non-finite values; none where a 0.0 also follows a window in
    (0, NATURAL_ZERO_PRIOR_MAX), a loss that reaches 0.0 on its own."""
    out, prev = [], None
    for p in pts:
        v = _num(p.get("train/loss"))
        if v is None:
            continue
        if v == 0.0 and prev is not None and 0.0 < prev < NATURAL_ZERO_PRIOR_MAX:
            return []
        if v == 0.0 and prev is not None and prev >= FILTERED_PRIOR_MIN and (_num(p.get("step")) or 0) > 0:
            out.append({"step": p["step"], "key": "train/loss",
                        "value": f"0.0 after {prev:.4g}: every step of the window non-finite (logging_nan_inf_filter)"})
        prev = v
    return out


def _eval_faults(pts: Sequence[dict], bad: list[dict]) -> list[dict]:
    """The non-finite val losses that are the evaluation's fault (`val_loss_nonfinite_evals`): all of `bad` when
    every entry is a `val/loss`, the train loss is finite at every window and one finite window comes after the first
    of them; else [] (a NaN eval of weights that never trained again, e.g. the last eval of a run that just blew up,
    is still the model's)."""
    if not bad or any(row["key"] != "val/loss" for row in bad):
        return []
    if any("train/loss" in p and _num(p["train/loss"]) is None for p in pts):
        return []
    first = min(row["step"] for row in bad)
    return bad if any(p["step"] > first and _num(p.get("train/loss")) is not None for p in pts) else []


def _class_values(p: dict, split: str, labels: Sequence[str], stat: str) -> dict[str, float]:
    out = {}
    for lab in labels:
        v = _num(p.get(f"{split}/{stat}/{lab}"))
        if v is not None:
            out[lab] = v
    return out


def _per_class(acc: FeatureSet, pts, meta, labels) -> None:
    recall_names = ("val_recall_min", "val_recall_spread", "val_recall_std", "val_recall_collapsed_share",
                    "val_recall_zero_share", "val_pred_top_share", "tail_head_count_ratio", "tail_recall",
                    "head_recall", "tail_head_recall_gap", "class_gap_max", "class_gap_mean")
    pair_names = ("confused_top_count", "confused_top_rate", "confused_pairs_persist_share",
                  "confused_symmetric_pairs")
    last = next((p for p in reversed(pts) if labels and _class_values(p, "val", labels, "recall")), None)
    support = _class_values(last, "val", labels, "support") if last is not None else {}
    recall = {c: r for c, r in _class_values(last, "val", labels, "recall").items()
              if support.get(c, 1) > 0} if last is not None else {}
    if last is None:
        acc.miss(recall_names, "no per-class val recall (`val/recall/<label>`) in the history")
    elif not recall:  # every class of train has no validation row (a validation split of other labels)
        acc.miss(recall_names, "no class of train has a validation row: per-class recall is undefined")
    else:
        acc.details["per_class_step"] = last["step"]
        rs = list(recall.values())
        acc.set("val_recall_min", min(rs))
        acc.set("val_recall_spread", quantile(rs, 0.9) - quantile(rs, 0.1))
        acc.set("val_recall_std", _std(rs))
        acc.set("val_recall_zero_share", sum(r == 0 for r in rs) / len(rs))
        acc.details["worst_classes"] = sorted(recall.items(), key=lambda kv: kv[1])[:5]
        best_r: dict[str, float] = {}
        for p in pts:
            for c, r in _class_values(p, "val", labels, "recall").items():
                best_r[c] = max(best_r.get(c, 0.0), r)
        collapsed = [c for c, r in recall.items() if best_r.get(c, 0) >= 0.5 and r <= 0.5 * best_r[c]]
        acc.set("val_recall_collapsed_share", len(collapsed) / len(recall))
        acc.details["collapsed_classes"] = collapsed[:20]
        acc.set("val_pred_top_share", _pred_top_share(last, labels, support))
        _tail_head(acc, meta, recall)
        te = _class_values(last, "train_eval", labels, "recall")
        gaps = {c: te[c] - recall[c] for c in recall if c in te}
        if gaps:
            acc.set("class_gap_max", max(gaps.values()))
            acc.set("class_gap_mean", sum(gaps.values()) / len(gaps))
            acc.details["largest_class_gaps"] = sorted(gaps.items(), key=lambda kv: -kv[1])[:5]
        else:
            acc.miss(("class_gap_max", "class_gap_mean"), "no per-class train_eval recall in the history")

    pairs_pts = [p for p in pts if isinstance(p.get("val/confused_pairs"), list)]
    if not pairs_pts:
        # a multi-label run scores each label on its own (a row's labels are no one predicted class mistaken for
        # another): it never records confusion pairs, and no logging would give them
        acc.miss(pair_names, NOT_APPLICABLE + "a multi_label run (each label is scored on its own: no confusion "
                 "pairs)" if acc.details.get("task") == "multi_label" else "no `val/confused_pairs` in the history")
    else:
        final = pairs_pts[-1]["val/confused_pairs"]
        acc.details["confused_pairs"] = final[:5]
        if final:
            def rate(q):
                sup = _num(pairs_pts[-1].get(f"val/support/{q['true']}"))
                return q["count"] / sup if sup else None
            # pairs tied on count come in label order: the top one is the larger share of its true class (then the
            # names), so renaming labels does not change the feature
            tied = [q for q in final if q["count"] == final[0]["count"]]
            top = min(tied, key=lambda q: (-(rate(q) or 0.0), str(q["true"]), str(q["pred"])))
            acc.set("confused_top_count", top["count"])
            acc.set("confused_top_rate", rate(top), "no val support for the pair's class")
        else:
            acc.set("confused_top_count", 0.0)
            acc.set("confused_top_rate", 0.0)
        acc.set("confused_symmetric_pairs", _symmetric(final))
        refs = [p for p in pairs_pts[:-1] if p["step"] > 0] or pairs_pts[:-1]
        if not refs:
            acc.set("confused_pairs_persist_share", None, "only one eval point with confused pairs")
        else:
            ref = {(q["true"], q["pred"]): q["count"] for q in refs[0]["val/confused_pairs"]}
            acc.details["confused_pairs_reference_step"] = refs[0]["step"]
            top5 = [q for q in final[:5] if q["count"] >= 2]
            persist = [q for q in top5 if (q["true"], q["pred"]) in ref
                       and q["count"] >= 0.75 * ref[(q["true"], q["pred"])]]
            acc.set("confused_pairs_persist_share", len(persist) / len(top5) if top5 else 0.0)
            acc.details["persistent_pairs"] = [
                {**q, "count_at_reference": ref[(q["true"], q["pred"])]} for q in persist]
    tpairs = next((p["train_eval/confused_pairs"] for p in reversed(pts)
                   if isinstance(p.get("train_eval/confused_pairs"), list)), None)
    acc.set("train_confused_symmetric_pairs", _symmetric(tpairs) if tpairs is not None else None,
            "no `train_eval/confused_pairs` in the history")


def _symmetric(pairs: Sequence[dict], min_count: int = 2) -> float:
    seen = {(q["true"], q["pred"]) for q in pairs if q.get("count", 0) >= min_count}
    return float(sum(1 for a, b in seen if (b, a) in seen and a < b))


def _pred_top_share(p: dict, labels, support: dict[str, float]) -> float | None:
    """Largest share of val predictions given to one class, estimated from per-class numbers."""
    n = _num(p.get("val/n")) or (sum(support.values()) if support else None)
    if not n:
        return None
    prec = _class_values(p, "val", labels, "precision")
    rec = _class_values(p, "val", labels, "recall")
    est = 0.0
    for c in labels:
        if prec.get(c, 0) > 0 and c in rec and c in support:
            est = max(est, rec[c] * support[c] / prec[c])
    pred_err: dict[str, float] = {}
    for q in p.get("val/confused_pairs") or []:
        pred_err[q["pred"]] = pred_err.get(q["pred"], 0) + q["count"]
    for c, e in pred_err.items():  # lower bound: errors into c + c's own hits
        est = max(est, e + rec.get(c, 0) * support.get(c, 0))
    return min(1.0, est / n)


# Protocol 2's long tail: "classes under e.g. 20 examples". The one definition of a tail class: assess's
# long_tail_count defaults to it, and the diagnosis and the report mark tail classes by it. A bottom quartile by
# count called classes of 100+ rows "tail" and advised "more tail data" for them.
LONG_TAIL_COUNT = 20


TAIL_HEAD_MIN_CLASSES = 4  # classes (with train counts and val recall) a tail/head comparison needs


def tail_head_split(counts: Mapping[str, float], tail_count: float = LONG_TAIL_COUNT) -> tuple[list[str], list[str]]:
    """(tail, head): the classes with fewer than `tail_count` training rows, and the rest."""
    return [c for c, n in counts.items() if n < tail_count], [c for c, n in counts.items() if n >= tail_count]


def _tail_head(acc: FeatureSet, meta, recall: dict[str, float]) -> None:
    names = ("tail_head_count_ratio", "tail_recall", "head_recall", "tail_head_recall_gap")
    counts = ((meta.get("label_counts") or {}).get("train") if isinstance(meta.get("label_counts"), dict)
              else None)
    if not counts:
        acc.miss(names, "run.json has no label_counts.train (needed to tell tail from head classes)")
        return
    have = {c: float(n) for c, n in counts.items() if c in recall and _num(n) is not None}
    if len(have) < TAIL_HEAD_MIN_CLASSES:
        # the run recorded its counts and per-class recall: the data has too few classes, nothing to log next time
        acc.miss(names, (NOT_APPLICABLE if recall else "") + f"fewer than {TAIL_HEAD_MIN_CLASSES} classes with both "
                 "train counts and val recall")
        return
    tail, head = tail_head_split(have)
    if not tail or not head:
        acc.miss(names, NOT_APPLICABLE + (f"no class has under {LONG_TAIL_COUNT} training rows (no long tail)"
                                          if not tail else f"every class has under {LONG_TAIL_COUNT} training rows"))
        return
    acc.set("tail_head_count_ratio", _median([have[c] for c in head]) / max(_median([have[c] for c in tail]), 1e-9))
    t = sum(recall[c] for c in tail) / len(tail)
    h = sum(recall[c] for c in head) / len(head)
    acc.details["tail_classes"] = sorted(tail)[:20]
    acc.set("tail_recall", t)
    acc.set("head_recall", h)
    acc.set("tail_head_recall_gap", h - t)


# ---------------------------------------------------------------------------------------------
# Comparison features (several runs that differ in one knob; computed by `diagnose.compare`)
# ---------------------------------------------------------------------------------------------

_COMPARE_CATALOGUE = (
    _spec("compare", "lr_effect", "points", "changing only the learning rate moved best val metric by {}",
          "Range (max - min) of the best val metric over runs that differ only in learning_rate "
          "(the largest such group)."),
    _spec("compare", "r_effect", "points", "changing only the rank moved best val metric by {}",
          "Same over runs that differ only in r (lora_alpha may move with r when the scale is kept)."),
    _spec("compare", "alpha_effect", "points", "changing only lora_alpha moved best val metric by {}",
          "Same over runs that differ only in lora_alpha."),
    _spec("compare", "lr_effect_noise", "se", "the learning-rate effect is {} of noise",
          "A learning-rate group's effect / its own noise (the seed std, else the RMS of its runs' SEs), the "
          "largest such group."),
    _spec("compare", "r_effect_noise", "se", "the rank effect is {} of noise", "Same over the rank groups."),
    _spec("compare", "alpha_effect_noise", "se", "the lora_alpha effect is {} of noise",
          "Same over the lora_alpha groups."),
    _spec("compare", "max_effect_noise", "se", "the largest knob effect is {} of noise",
          "max of the knob groups' effect / own noise."),
    _spec("compare", "r_over_lr_effect", "ratio", "the rank moved the metric {} as much as the learning rate",
          "r_effect / lr_effect (both measured from the same start: the minimal-intervention pair)."),
    _spec("compare", "lr_over_r_effect", "ratio", "the learning rate moved the metric {} as much as the rank",
          "lr_effect / r_effect."),
    _spec("compare", "seed_std", "points", "best val metric varies by {} (std) across seeds",
          "Sample standard deviation of the best val metric over runs that differ only in seed."),
    _spec("compare", "noise", "points", "one run's noise unit is {}",
          "Protocol 6's sigma of one run's best val metric: seed_std when >= 2 seed runs exist, else the "
          "root mean square of the runs' binomial SEs from their val sizes (their curve jitter without; "
          "`details['noise_source']` says which); floored at 0.5 point / effect_noise_min, so an effect of "
          "effect_noise_min (2) units is objectives.NOISE_BAND: max(0.5 pt, 2 x sigma)."),
    _spec("compare", "metric_noise", "points", "one run's noise unit on the val metric is {}",
          "`noise` where the runs are compared on their val metric (points); does not apply where they are compared on "
          "their val loss."),
    _spec("compare", "compared_on_loss", "flag", "the runs are compared on their val loss: {}",
          "1 where a compared run logged no val metric, so the runs are compared on their minimum val loss."),
    _spec("compare", "min_train_loss_vs_chance", "ratio", "the lowest final train loss of the runs is {} of ln(classes)",
          "min over the compared runs of train_loss_vs_chance: near 1, no run left a uniform guess. Single-label only."),
    _spec("compare", "chance_level_unread", "flag", "no run's train loss is read against ln(classes): {}",
          "1 where min_train_loss_vs_chance is missing (not every run a single-label classifier with a final train "
          "loss): whether any run learned is unread."),
    _spec("compare", "max_peak_lr", "lr", "the largest peak learning rate of the runs is {}",
          "max over the compared runs of peak_lr."),
    _spec("compare", "lr_loss_effect", "fraction", "changing only the learning rate moved the min val loss by {}",
          "Range of the minimum val loss over the learning-rate group / its mean."),
    _spec("compare", "gap_f1_max", "points", "the largest train/val metric gap among the runs is {}",
          "max over the compared runs of gap_f1 (overfit risk of adding rank)."),
    _spec("compare", "scale_x2", "ratio", "a scale x2 step from the best run would take the scale s to {}",
          "2 x the update scale s (lora_alpha / r; / sqrt(r) under rsLoRA) of the best run by the compared "
          "measure: what update-too-weak's scale x2 move would reach."),
)

COMPARE_FEATURES: Mapping[str, FeatureSpec] = MappingProxyType({s.name: s for s in _COMPARE_CATALOGUE})
