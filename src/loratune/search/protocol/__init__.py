"""The staged tuning autopilot: protocol sections 2-6 as a composition of stages.

    phase 0  start config + capacity ceiling from `loratune assess`          (start_config)
             the lr centre from quarter-length probes, x4 steps                (stage_lr_probe)
    phase 1  the start config on a coarse lr grid {1, 2, 0.5} x centre         (stage_lr_grid)
    long     its incumbent at the final length, before the evidence stages;   (stage_early_long)
             later incumbents are challengers, trained long only when they
             beat the pick's trial beyond noise                                (long.challenge)
             capacity verdict; ambiguous slow learning -> the minimal-          (stage_capacity)
             intervention pair (only lr x2, only r x2); capacity moves one
             knob at a time from the best so far
    phase 2  lr in x2 steps, scale s 2 -> 4 when lr barely moves the loss,    (stage_phase2)
             dropout / weight decay against overfitting, early stopping
    noise    the incumbent on 3 seeds: sigma, the plateau threshold            (stage_seeds)
    sweep    rank x4 up to the ceiling / compute breakeven, lr x s held fixed  (stage_rank_sweep)
             by rule (rsLoRA or lr compensation, `loratune.stepsize`)
             every linear layer (all-linear) at 1x and 0.5x the lr             (stage_target_sweep)
    full     full fine-tuning's own short lr probe, then a full-length probe   (stage_full_probe)
             at its best lr, same data and budget; LoRA vs full
    final    budget left: the still-improving pick trained longer (a long run  (stage_final_train)
             already trained is reused), at lr /2 and lr when two fit

The package: `settings` (ProtocolSettings, keys, named constants), `codes` (DECISION_CODES), `common`
(what every stage shares), `phase0`, `phase1`, `phase2`, `long`, `sweeps`, `finish` (the stages), `table`
(STAGE_TABLE: one row per stage) and `run` (run_protocol).

Each stage reads what earlier ones fixed (the incumbent, like Optuna's PartialFixedSampler fixes the
winners of a stage) from `ctx.state` (a typed `ProtocolState`), runs trials through `ctx.run` and records every decision with
its evidence through `ctx.decide`. Stages never train directly and never read a clock: with a scripted
runner (tests) the whole path runs in milliseconds, and a resumed study replays it from the finished
trials to the same point.

Every stage is a row of `STAGE_TABLE` (id, phase, priority, planned trials, revisit, function).
When the budget is short, stages are cut by priority: before a trial of a stage, the
estimated cost of the higher-priority stages still to come is held back, so the lr grid, the
full-fine-tuning probe, the early long run, the seeds and the rank and target sweeps get their trials (in
that order) before optional moves do.
Seed instability (protocol 4) lowers the lr when the lr /2 trial scores at least the incumbent's seed mean.
"""

from __future__ import annotations

from loratune.search.protocol import common
from loratune.search.protocol.codes import DECISION_CODES
from loratune.search.protocol.common import breakeven_rank, cur_lr, evidence_of, lr_of, r_of
from loratune.search.protocol.phase0 import plan_trial_length, start_config, start_from_assessment
from loratune.search.protocol.phase1 import CAPACITY_POLICY, VerdictAction, capacity_moves
from loratune.search.protocol.run import run_protocol
from loratune.search.protocol.settings import ProtocolSettings
from loratune.search.protocol.table import STAGE, STAGE_TABLE, StageSpec
from loratune.search.state import ProtocolState, Start
from loratune.search.stages import StageId

_lr, _r = lr_of, r_of  # the names callers used before the package (tests/unit/test_one_place.py)


def reserve(ctx, stage, settings, stages=None):
    """`common.reserve` with the stage table the protocol runs (STAGE_TABLE unless one is running)."""
    return common.reserve(ctx, stage, settings, stages or ctx.state.stages or STAGE_TABLE)


__all__ = ["CAPACITY_POLICY", "DECISION_CODES", "STAGE", "STAGE_TABLE", "ProtocolSettings", "ProtocolState", "StageId",
           "StageSpec", "Start", "VerdictAction", "breakeven_rank", "capacity_moves", "cur_lr", "evidence_of",
           "plan_trial_length", "reserve", "run_protocol", "start_config", "start_from_assessment"]
