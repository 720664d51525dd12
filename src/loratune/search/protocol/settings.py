"""The protocol's settings, the config keys it turns, and its named constants (each with its reason)."""

from __future__ import annotations

from dataclasses import dataclass

from loratune.moves import ARMS
from loratune.rules import USUAL_LR_RANGE
from loratune.stepsize import scale_rule


LR = "train.learning_rate"
R = "adapter.r"
ALPHA = "adapter.lora_alpha"
TARGETS = "adapter.target_modules"
LAYERS = "adapter.layers_to_transform"
DROPOUT = "adapter.lora_dropout"
WD = "train.weight_decay"
RSLORA = "adapter.use_rslora"
METHOD = "adapter.method"
SEED = "train.seed"
SLOW_VERDICTS = ("underfit-capacity", "lr-too-small")  # ambiguous slow learning (protocol 5)
LR_VERDICTS = ("diverged", "collapsed", "lr-too-large")

# -- named constants, each with its reason -------------------------------------------------------------
# A trials budget counts a quarter-length lr probe as a whole trial: below this many trials the three
# probes would take a quarter of the budget, more than the lr grid they place is worth.
PROBE_MIN_TRIALS_BUDGET = 12

# A probe longer than half a trial is no cheaper than the grid point it stands in for.
PROBE_MAX_SHARE_OF_TRIAL = 0.5

# Before another probe, the budget must still hold this many full-length grid trials (1x and 2x): the
# grid, not the probe, decides the incumbent.
PROBE_KEEPS_GRID_TRIALS = 2

# A trial whose best val metric came this late (share of its steps) was still improving when it ended:
# the final training runs it longer (matches the diagnosis' late_best_fraction_min neighbourhood, 0.72-0.8).
STILL_IMPROVING_BEST_FRACTION = 0.8

# A best val metric before this share of the steps, followed by a real fall, is an early peak: the final
# config gets early stopping with this patience (evaluations) -- the best checkpoint is kept either way.
EARLY_PEAK_BEST_FRACTION = 0.7
EARLY_STOPPING_PATIENCE = 2

# Full fine-tuning's lr is the measured LoRA lr x full_lr_ratio (protocol 1: LoRA wants ~10x full fine-tuning's lr),
# kept inside protocol 1's usual lr range (rules.USUAL_LR_RANGE, 1e-5 .. 1e-3). rules.FULL_FT_LR_RANGE (LoRA's prior
# centre / 10: 1e-5 .. 5e-5) is the prior for the models that centre describes, not a clamp on the measured lr: a
# small model whose LoRA lr is 4e-3 had full fine-tuning probed at 5e-5 / 2.5e-5 / 1.25e-5 under that clamp, its best
# at the range's top (val macro-F1 0.144 / 0.036 / 0.015 at 44 steps, 0.444 at full length), where 4e-4 gave 0.752.
FULL_LR_MIN, FULL_LR_MAX = USUAL_LR_RANGE

# The final training's length shrinks by this factor per try until the runs fit the budget left.
FINAL_LENGTH_SHRINK = 0.8

# The final training continues a capped early long run (`early_long_by`) from its saved weights (a warm start,
# `train.init_from`: it costs only its own steps, where a longer run from scratch costs the whole length again
# and never fit in v10's studies) when the budget left holds at least this x its length in more steps: fewer
# are mostly the restart's warmup and decay.
CONTINUE_MIN_RATIO = 0.25
# ... at this x the long run's lr (its schedule starts afresh: warmup, then decay over the new steps). Measured
# (bench/results/continuation.md): a restart at the run's own peak lr undid part of what it had learned
# (banking77-20 seed 0: val 0.965 -> 0.949, early-stopped), at half of it the run gained on val.
CONTINUE_LR_FACTOR = 0.5
INIT_FROM = "train.init_from"  # the config key of a warm start

# Config keys that change no tensor's size and no step's work: trials that differ only in them measure the
# same memory and step time, so LoRA vs full takes the least of their measurements as the config's cost (a
# one-time cost paid by whichever trial ran first in the process, or a neighbour's load on a shared machine,
# then counts against neither method; protocol 6: "measured ... on this hardware").
COST_FREE_KEYS = (LR, SEED, DROPOUT, WD, "train.max_steps", "train.early_stopping_patience")

# Phase-0 defaults of the trial-length plan: ~100 training examples/s (MiniLM on 2 CPU cores, with
# evaluation), 45 s per trial of model load and set-up, short trials of 1-3 epochs (protocol 3).
PLAN_EXAMPLES_PER_S = 100.0
PLAN_OVERHEAD_S = 45.0
# ... and per task (model.task -> (examples/s, overhead s)): a causal-lm trial is a decoder of 100M+ parameters
# on 8 x 128-token sequences, ~5 s a step in float32 here (SmolLM2-135M, LoRA r=16 on all linears), so ~1.5
# examples/s with its evaluations; loading and dequantising a GGUF base takes a minute or more
PLAN_PRIORS = {"classification": (PLAN_EXAMPLES_PER_S, PLAN_OVERHEAD_S), "causal-lm": (1.5, 90.0)}
SHORT_TRIAL_EPOCHS = (1.0, 3.0)

# phase 2 against overfitting once capacity is judged adequate (protocol 1: dropout and weight decay are the
# regularization knobs), in this order: dropout acts on the adapter alone, weight decay on every weight
REGULARIZATION_MOVES = ("dropout-up", "weight-decay-up")


@dataclass(frozen=True)
class ProtocolSettings:
    lr_probe: bool = True  # find the lr centre with short runs first (protocol 3: "find it cheaply first")
    lr_probe_factor: float = 4.0  # probe ladder step
    lr_probe_max_moves: int = 2  # probes beyond the first, up (or down when the first collapses)
    lr_probe_fraction: float = 0.25  # probe length: this share of a trial's steps ...
    lr_probe_min_steps: int = 10  # ... but at least this many
    lr_factors: tuple[float, ...] = (1.0, 2.0, 0.5)  # the coarse grid, in the order run
    skip_dominated_lr: bool = True  # skip 0.5x when 2x beat 1x beyond noise
    pair: bool = True
    max_capacity_moves: int = 3
    max_lr_steps: int = 2
    seeds: int = 3
    rank_step: int = 4
    max_rank_points: int = 2
    target_sweep: tuple[str, ...] = ("all-linear",)  # the module set the target sweep tries
    target_lr_factors: tuple[float, ...] = (1.0, 0.5)  # ... at these x the working lr (more modules: stronger update)
    full_probe: bool = True
    final_train: bool = True  # budget left at the end: train a still-improving pick for longer
    final_min_factor: float = 2.0  # ... only when at least this x a trial's steps fit
    final_max_factor: float = 8.0  # ... and at most this x (or phase 0's epoch count, the smaller)
    # ... at these x the pick's lr, when the budget holds one long run per factor (else at 1x only): the
    # lr chosen on short trials need not suit a run several times longer (protocol 3: the best lr moves
    # with the budget), so the long run gets its own x2 step down, measured
    final_lr_factors: tuple[float, ...] = (0.5, 1.0)
    full_lr_ratio: float = 0.1  # full fine-tuning lr = LoRA lr x this (LoRA wants ~10x, protocol 1) ...
    # ... a prior, so full fine-tuning gets its own short lr probe at these x it (1x first; each kept inside
    # FULL_LR_MIN..MAX), and the best probe's lr is the lr of the full-length full-fine-tuning probe
    full_lr_factors: tuple[float, ...] = (1.0, 0.5, 2.0)
    # issue 15 "train long early": the lr grid's incumbent trained at the final length before the evidence
    # stages (a good model early); later incumbents are challengers, trained long only when they beat the
    # pick's trial beyond noise at trial length (successive halving)
    early_long: bool = True
    # ... and every long run (early, promoted) trains at the trial's lr x this: the lr that won on short trials
    # is too high for a run several times longer (protocol 3: the best lr moves with the budget). Measured: v7's
    # end-of-study pair won at lr /2 in 4 of 4 banking77-20 studies (+0.7 to +2.2 pt val); v8, training long at
    # the trial's lr, picked lr 8e-3 long runs averaging 0.924 test against 0.962 for 2e-3..4e-3
    # (bench/results/tuning_notes.md). The final training tries the other `final_lr_factors` at its length.
    long_lr_factor: float = 0.5
    # ... and the early long run ends by this share of the budget (its length capped, at least
    # `final_min_factor` x a trial): a good model at half the budget is the compute target (issue 15: the pick
    # so far at 50% at least every yardstick's final). v9, uncapped, ended its 312-step run at 60-80% of the
    # budget, its pick at 50% a 47-step trial (banking77-20 0.901 vs the samplers' final 0.951-0.955). With
    # `continue_long` the final training continues it from its weights. Measured (v10, 5 replicates): the pick
    # at 50% 0.901 -> 0.933 on banking77-20, 0.959 -> 0.965 on clinc150-20; the final pick -0.7 pt on banking
    # (a 159-step run instead of 312), unchanged on clinc (bench/results/tuning_notes.md). None: no cap (v9;
    # wall/examples budgets only: a trials budget counts a long run as one trial whatever its length)
    early_long_by: float | None = 0.5
    # ... and the final training continues a capped early long run that was still improving from its saved weights
    # with the budget left (`CONTINUE_MIN_RATIO`, `CONTINUE_LR_FACTOR`; it replaces the pick only beyond the noise).
    # Off by default until the tuning bench shows it pays: measured with it on (5 replicates per dataset) it ran in
    # 2 of 10 studies and replaced no pick; by the bench's pick so far (the best-val trial) banking77-20 seed 0's
    # continued run (val +1.0 pt, inside the noise) scored test 0.930 against the early run's 0.955, and training
    # the same total length from scratch gained 0.1-0.4 pt, inside the noise (bench/results/tuning_notes.md)
    continue_long: bool = False
    allow_past_breakeven: bool = False
    target: float | None = None
    # the effective step size lr x s (loratune.stepsize): how a rank change holds it fixed, by rule
    scale_rule: str = "rslora"  # the rank sweep (x4 steps, the pick may keep the rank): rank-stable spelling
    move_scale_rule: str = "alpha_follows_r"  # the pair's rank arm and the capacity moves r x2, r /2
    # variants tried after the target sweep, each at its own lr (moves.ARMS: loraplus, dora); off by default
    # until the tuning bench shows they pay (issue 15: "modern knobs where they pay")
    arms: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        scale_rule(self.scale_rule), scale_rule(self.move_scale_rule)  # an unknown rule fails here, by name
        if self.early_long_by is not None and not 0 < self.early_long_by <= 1:
            raise ValueError(f"early_long_by {self.early_long_by!r} is a share of the budget: give one in (0, 1], "
                             "or None for no cap")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {', '.join(map(repr, unknown))}; known: {', '.join(ARMS)}")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def user_settings(target: float | None = None, full_probe: bool = True, arms=()) -> ProtocolSettings:
    """The settings a user gives (`tune --target / --no-full-probe / --arms`, api.tune's target=, full_probe=, arms=),
    an unknown arm refused as a UserError naming both spellings: the CLI's and the API's one check (api.tune's was a
    raw ValueError)."""
    from loratune.errors import UserError

    try:
        return ProtocolSettings(target=target, full_probe=full_probe, arms=tuple(arms))
    except ValueError as exc:
        raise UserError(f"arms (--arms): {exc}", f"give known arms, e.g. --arms {','.join(ARMS)} "
                        f"(arms={list(ARMS)!r}), or none") from None
