"""The run loop: phase 0's decisions, every stage of the table in turn, the revisit, the final training."""

from __future__ import annotations

from typing import Any, Sequence

from loratune.search.budget import format_amount
from loratune.search.context import SearchContext
from loratune.search.stages import StageId
from loratune.search.state import Start
from loratune.search.protocol.settings import ProtocolSettings
from loratune.search.protocol.common import affordable_again, incumbent_of
from loratune.search.protocol.finish import stage_full_probe
from loratune.search.protocol.long import cannot_change_pick, challenge
from loratune.search.protocol.table import STAGE, STAGE_TABLE, StageSpec


def revisit_skipped(ctx: SearchContext, s: ProtocolSettings) -> None:
    skipped = list(ctx.state.skipped)
    if not skipped or ctx.state.failed or incumbent_of(ctx) is None or ctx.state.revisited:
        return
    ctx.state.revisited = True
    todo = [(x.id.value, x.revisit) for x in STAGE_TABLE if x.revisit is not None and x.id in skipped
            and affordable_again(ctx, x.id.value, s)]
    if not todo or not ctx.meter.fits(ctx.estimate(incumbent_of(ctx).point)):
        return
    ctx.decide("revisit", "budget", "budget left after the last stage",
               "run the stages skipped for budget: " + ", ".join(n for n, _ in todo),
               [f"{ctx.meter.describe_left()}; a LoRA trial is estimated at "
                f"{format_amount(ctx.meter.budget.kind, ctx.estimate({}).amount(ctx.meter.budget.kind))}"],
               code="revisit")
    ctx.state.skipped = []
    before, seeds_before = incumbent_of(ctx), ctx.state.seed_sigma
    for _, fn in todo:
        fn(ctx, s)
        challenge(ctx, s)
    changed = incumbent_of(ctx) is not before or ctx.state.seed_sigma != seeds_before
    if changed and StageId.FULL_PROBE not in skipped:
        stage_full_probe(ctx, s)  # new incumbent or noise: decide again (the full probe trial is reused)


def run_protocol(ctx: SearchContext, start: Start, settings: ProtocolSettings = ProtocolSettings(),
                 plan: dict | None = None, stages: Sequence[StageSpec] = STAGE_TABLE) -> SearchContext:
    """Phase 0's decisions, then every stage in turn. `ctx.state.final` (or the incumbent) is the pick: from
    the early long run on (protocol.long), a later incumbent becomes it only by beating its trial beyond noise."""
    ctx.state.start = start
    ctx.state.stages = tuple(stages)
    ctx.base_point = dict(start.point)
    ctx.decide("phase0", "start-config", "start config from the assessment",
               " ".join(f"{k.split('.')[-1]}={plain(v)}" for k, v in start.point.items()),
               [f"{c['key']} = {plain(c['value'])}: {c['reason']} [{c['rule']}]" for c in start.choices]
               or [f"start point given as is: {start.point}; capacity ceiling r={start.ceiling_r}"],
               data={"point": start.point, "ceiling_r": start.ceiling_r, "facts": start.facts}, code="start-config")
    if plan:
        ctx.state.trial_steps = int(plan["max_steps"])
        ctx.state.trial_epochs = plan.get("epochs")
        ctx.trial_steps = int(plan["max_steps"])
        ctx.decide("phase0", "trial-plan", f"trials of {plan['max_steps']} steps", "plan", [plan["reason"]],
                   data=plan, code="trial-plan")
    for stage in stages:
        if stage.in_sequence and stage.run is not None and not cannot_change_pick(ctx, settings, stage):
            stage.run(ctx, settings)
            challenge(ctx, settings)  # a new incumbent against a long-run pick (protocol.long)
    revisit_skipped(ctx, settings)
    if ctx.state.final is None and incumbent_of(ctx) is not None:
        ctx.state.final = incumbent_of(ctx)
    STAGE[StageId.FINAL_TRAIN].run(ctx, settings)
    final, best = ctx.state.final, ctx.best()
    if best is not None and (final is None or (final.result.status == "pruned" and best is not final
                                               and best.value > (final.value or 0.0))):
        # the incumbent was cut short (a budget stop before it learned): recommend what did learn
        ctx.decide("finish", "pick", "the incumbent did not finish", f"pick {best.label}",
                   [f"{final.label}: {final.result.reason}" if final else "no incumbent",
                    f"{best.label} scored {ctx.fmt(best.value)} ({best.result.status}, {best.result.examples:,} "
                    "examples): the best trained run of the study"], [x for x in (final, best) if x],
                   code="finish-best-trained")
        ctx.state.final = best
    return ctx


def plain(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(str(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)
