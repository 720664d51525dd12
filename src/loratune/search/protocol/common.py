"""What every stage shares: reading points, the incumbent, budget reservation, evidence lines."""

from __future__ import annotations

from typing import Sequence

from loratune.params import breakeven_rank as compute_breakeven_rank
from loratune.params import highest_rank_within_breakeven
from loratune.search.budget import Cost, format_amount
from loratune.search.context import SearchContext
from loratune.search.space import DEFAULTS
from loratune.search.stages import StageId
from loratune.search.trial import TrialRecord
from loratune.stepsize import with_rank
from loratune.search.protocol.settings import LR, ProtocolSettings, R


# ---------------------------------------------------------------------------------------------
# helpers


def reserve(ctx: SearchContext, stage: str | StageId, settings: ProtocolSettings, stages: Sequence = ()) -> Cost:
    """The estimated cost of the later stages that outrank `stage` (held back before its trials), in
    priority order and only as far as they still fit: holding budget back for a stage that cannot run
    anyway would only stop the ones that can. `stages`: the stage table (default: the one `run_protocol`
    runs, `ctx.state.stages`)."""
    table = list(stages or ctx.state.stages)
    ids = [x.id for x in table]
    if StageId(stage) not in ids:
        return Cost()
    me = table[ids.index(StageId(stage))]
    later = sorted((x for x in table[ids.index(me.id) + 1:] if x.priority < me.priority),
                   key=lambda x: x.priority)
    total = Cost()
    for row in later:
        n = row.still_planned(ctx, settings)
        if n <= 0:
            continue
        need = ctx.estimate(row.cost_point) * n
        if ctx.meter.fits(need, total):
            total = total + need
    return total


def evidence_of(ctx: SearchContext, rec: TrialRecord, n: int = 4) -> list[str]:
    """The diagnosis of a trial as evidence lines: the verdict, then its primary finding's clauses."""
    res = rec.result
    lines = [f"{rec.label}: {ctx.show(rec.value)} ({res.status}, {res.examples:,} examples), "
             f"diagnosis: {res.verdict}"]
    f = res.finding(res.verdict)
    if f:
        lines += [f"  {e}" for e in f.get("evidence", [])[:n]]
    if res.status == "pruned":
        lines.append(f"  {res.reason.split(' (')[0]}")
    return lines


def cur_lr(rec: TrialRecord) -> float:
    return lr_of(rec.point)


def lr_of(p: dict) -> float:
    return float(p.get(LR, DEFAULTS[LR]))


def r_of(p: dict) -> int:
    return int(p.get(R, DEFAULTS[R]))


def round3(x: float) -> float:
    return float(f"{x:.3g}")


def with_rank_by(point: dict, r: int, rule: str) -> dict:
    """Change the rank holding the effective step size lr x s fixed by `rule` (stepsize.SCALE_RULES)."""
    return with_rank(point, r, rule)


def same_except(a: dict, b: dict, keys: Sequence[str]) -> bool:
    ka = {k: v for k, v in a.items() if k not in keys}
    kb = {k: v for k, v in b.items() if k not in keys}
    return ka == kb


def incumbent_of(ctx: SearchContext) -> TrialRecord | None:
    return ctx.state.incumbent


def set_incumbent(ctx: SearchContext, rec: TrialRecord) -> None:
    ctx.state.incumbent = rec


def no_budget(ctx: SearchContext, phase: str, what: str, held: Cost | None = None) -> None:
    skipped = ctx.state.skipped
    if phase not in skipped:
        skipped.append(phase)
    extra = ""
    if held is not None and held.trials:
        extra = f"; held back for higher-priority stages: ~{held.trials} trial(s)"
    ctx.decide(phase, "budget", "not affordable", f"skip {what}",
               [f"estimated trial cost {format_amount(ctx.meter.budget.kind, ctx.estimate({}).amount(ctx.meter.budget.kind))}"
                f", {ctx.meter.describe_left()}{extra}"], code="budget-skip")


def lr_siblings(ctx: SearchContext, point: dict) -> list[TrialRecord]:
    """Trials at `point` but for the lr, trained to their full length (a pruned one is no comparison)."""
    return [r for r in ctx.records if r.value is not None and r.result.full_length
            and same_except(r.point, point, (LR,))]


def breakeven_rank(params: dict, r: int) -> int | None:
    """The compute-breakeven rank (params.breakeven_rank) of a trained run's parameter counts at rank r."""
    adapter, adapted = params.get("adapter"), params.get("adapted_weights")
    if not adapter or r <= 0:
        return None
    return compute_breakeven_rank(adapted, adapter / r)


def breakeven_cap(params: dict, r: int) -> int | None:
    """The highest rank a rank sweep trains without passing the compute breakeven (params.highest_rank_within_
    breakeven) of a trained run's parameter counts at rank r."""
    adapter, adapted = params.get("adapter"), params.get("adapted_weights")
    if not adapter or r <= 0:
        return None
    return highest_rank_within_breakeven(adapted, adapter / r)
