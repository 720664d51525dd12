"""The stage table: one row per stage (id, phase, priority, planned trials, revisit, function)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from loratune.search.context import SearchContext
from loratune.search.stages import StageId
from loratune.search.protocol.settings import METHOD, ProtocolSettings
from loratune.search.protocol.phase1 import stage_capacity, stage_lr_grid, stage_lr_probe
from loratune.search.protocol.phase2 import lr_steps, stage_phase2
from loratune.search.protocol.sweeps import stage_arms, stage_rank_sweep, stage_seeds, stage_target_sweep
from loratune.search.protocol.finish import stage_final_train, stage_full_probe
from loratune.search.protocol.long import stage_early_long


def ran_once(stage: StageId) -> Callable[[SearchContext, ProtocolSettings], int]:
    """A stage that plans its trials until it has run one."""
    def left(ctx: SearchContext, s: ProtocolSettings) -> int:
        return 0 if any(r.spec.phase == stage for r in ctx.records) else STAGE[stage].planned
    return left


def seeds_left(ctx: SearchContext, s: ProtocolSettings) -> int:
    return max(0, s.seeds - 1 - sum(1 for r in ctx.records if r.spec.phase == StageId.SEEDS))


def full_probe_left(ctx: SearchContext, s: ProtocolSettings) -> int:
    return 0 if not s.full_probe or any(r.spec.phase == StageId.FULL_PROBE for r in ctx.records) else 1


@dataclass(frozen=True)
class StageSpec:
    """A stage of the protocol: one row, read by the run loop, the budget reservation, the trial-length
    plan, the end-of-study revisit and (through `stages.TRAIL_PHASES`) the report."""

    id: StageId
    phase: str  # the protocol section it implements
    priority: int  # lower is kept first when the budget is short (its trials are held back for)
    planned: int  # trials it plans (the trial-length plan divides the budget by their sum)
    run: Callable[[SearchContext, ProtocolSettings], None] | None  # None: run inside another stage (the pair)
    revisit: Callable[[SearchContext, ProtocolSettings], None] | None = None  # rerun when skipped for budget
    in_sequence: bool = True  # run in turn by run_protocol (the final training runs after the revisit)
    cost_point: dict = field(default_factory=dict)  # the point its trials are estimated at
    remaining: Callable[[SearchContext, ProtocolSettings], int] | None = None  # trials still planned (default: all)
    # its winner is a challenger of a long-run pick (protocol.long): skipped when its trials and one long run
    # of its winner do not fit the budget left (its outcome could not change the pick)
    challenger: bool = False

    def still_planned(self, ctx: SearchContext, s: ProtocolSettings) -> int:
        return self.planned if self.remaining is None else self.remaining(ctx, s)

    @property
    def title(self) -> str:
        return self.id.title


# The protocol, in order. Priorities: the lr grid (and its probe) first, since every later stage starts from its
# incumbent; then the LoRA-vs-full probe (the largest possible change of the pick), the early long run (a good model
# early, issue 15 item 2: the grid's incumbent is trained long before the evidence stages; it plans no trial: its
# length comes from the budget left, so the trial-length plan does not change; a promoted challenger's long run holds
# back what this row does), the seeds (the noise later comparisons read; without them `SearchContext.noise` reads the
# val metric's binomial SE), the rank and target sweeps; the optional moves last. (Before protocol version 13 the
# seeds outranked the early long run: on BANKING77's 77 classes their two trials were held back ahead of it and no
# long run was ever trained.) A stage skipped for budget is revisited when budget is left at the end (the estimates
# before the first measurements, and a machine whose speed changes, can leave budget unused), in this order; LoRA vs
# full is then decided again.
STAGE_TABLE: tuple[StageSpec, ...] = (
    StageSpec(StageId.LR_PROBE, "phase 1: lr centre", 1, 1, stage_lr_probe),  # three quarter-length runs
    StageSpec(StageId.LR_GRID, "phase 1: lr grid", 1, 3, stage_lr_grid),
    StageSpec(StageId.EARLY_LONG, "issue 15: train long early", 3, 0, stage_early_long),
    StageSpec(StageId.PAIR, "protocol 5: minimal-intervention pair", 6, 1, None, in_sequence=False),
    StageSpec(StageId.CAPACITY, "phase 1: capacity", 7, 1, stage_capacity),
    StageSpec(StageId.PHASE2, "phase 2: optimization", 8, 1, stage_phase2, revisit=lambda ctx, s: lr_steps(ctx, s)),
    StageSpec(StageId.SEEDS, "protocol 6: seed noise", 4, 2, stage_seeds, revisit=lambda ctx, s: stage_seeds(ctx, s),
              remaining=seeds_left),
    StageSpec(StageId.RANK_SWEEP, "protocol 6: rank sweep", 4, 1, stage_rank_sweep,
              revisit=lambda ctx, s: stage_rank_sweep(ctx, s), remaining=ran_once(StageId.RANK_SWEEP), challenger=True),
    StageSpec(StageId.TARGET_SWEEP, "protocol 1/6: target sweep", 5, 2, stage_target_sweep,
              revisit=lambda ctx, s: stage_target_sweep(ctx, s), remaining=ran_once(StageId.TARGET_SWEEP),
              challenger=True),
    StageSpec(StageId.ARMS, "issue 15: LoRA+ / DoRA arms", 9, 0, stage_arms,  # optional: on budget left, unplanned
              revisit=lambda ctx, s: stage_arms(ctx, s), remaining=ran_once(StageId.ARMS), challenger=True),
    StageSpec(StageId.FULL_PROBE, "protocol 6: LoRA vs full fine-tuning", 2, 1, stage_full_probe,
              revisit=lambda ctx, s: stage_full_probe(ctx, s), cost_point={METHOD: "full"}, remaining=full_probe_left,
              challenger=True),
    StageSpec(StageId.FINAL_TRAIN, "final: the pick trained longer", 10, 0, stage_final_train, in_sequence=False),
)


STAGE: dict[StageId, StageSpec] = {x.id: x for x in STAGE_TABLE}
