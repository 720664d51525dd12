"""What every stage shares: reading points, the incumbent, budget reservation, evidence lines."""

from __future__ import annotations

from typing import Sequence

from loratune.adapt import record_per_rank
from loratune.objectives import beyond_noise
from loratune.params import breakeven_rank as compute_breakeven_rank
from loratune.params import highest_rank_within_breakeven
from loratune.search.budget import Cost, format_amount
from loratune.search.context import SearchContext
from loratune.search.space import DEFAULTS
from loratune.search.stages import StageId
from loratune.search.trial import FIRST_TRAINED_STEP, TrialRecord, trained_points
from loratune.stepsize import with_rank
from loratune.search.protocol.settings import LAYERS, LR, METHOD, ProtocolSettings, R, TARGETS


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
    # the diagnosis judges the run's objective when it is a metric it reads (features.METRIC_KEYS); on another one
    # (a prompt-set score) its "val metric" is the first that moved: said, so a clause is not read as the objective's
    read = res.features.get("val_metric")
    on = f" (its val metric: {read}, not the objective)" if read and read != res.objective else ""
    lines = [f"{rec.label}: {ctx.show(rec.value)} ({res.status}, {res.examples:,} examples), "
             f"diagnosis{on}: {res.verdict}"]
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


def no_budget(ctx: SearchContext, phase: str, what: str, held: Cost | None = None, point: dict | None = None) -> None:
    """Record a stage's trial skipped for budget: the skipped trial's own estimated cost (`point`; without it the
    start point's), what is left, and what is held back for higher-priority stages (`held`: the reserve the trial
    was refused under; a zero reserve is said too). The point is kept, so the revisit reruns the stage only once
    that trial fits (`affordable_again`)."""
    skipped = ctx.state.skipped
    if phase not in skipped:
        skipped.append(phase)
    if point is not None:
        ctx.state.skipped_points.setdefault(phase, dict(point))
    kind = ctx.meter.budget.kind
    extra = ""
    if held is not None:
        amount = max(held.amount(kind), float(held.trials) if kind == "trials" else 0.0)
        extra = (f"; held back for higher-priority stages: ~{format_amount(kind, amount)}" if amount
                 else "; nothing held back for other stages")
    ctx.decide(phase, "budget", "not affordable", f"skip {what}",
               [f"estimated cost of this trial {format_amount(kind, ctx.estimate(point or {}).amount(kind))}"
                f", {ctx.meter.describe_left()}{extra}"], code="budget-skip")


def affordable_again(ctx: SearchContext, phase: str, s: ProtocolSettings) -> bool:
    """Whether the trial a stage skipped for budget (`no_budget`) fits now, under the reserve the stage holds now:
    a stage whose affordability did not change is not run again only to skip the same trial."""
    point = ctx.state.skipped_points.get(phase)
    if point is None:  # skipped without its point: the revisit's own check (a LoRA trial fits) decides
        return True
    return ctx.meter.fits(ctx.estimate(point), reserve(ctx, phase, s))


def lr_siblings(ctx: SearchContext, point: dict) -> list[TrialRecord]:
    """Trials at `point` but for the lr, trained to their full length (a pruned one is no comparison)."""
    return [r for r in ctx.records if r.value is not None and r.result.full_length
            and same_except(r.point, point, (LR,))]


def pruned_step(rec: TrialRecord) -> int | None:
    """The step a pruned trial was last evaluated at (where its partial score is from); None: trained to its length."""
    if rec.result.full_length:
        return None
    steps = [s for s, _ in rec.result.curve]
    return max(steps) if steps else int(rec.result.steps_done or 0)


def trained_curve(rec: TrialRecord) -> list[tuple[int, float]]:
    """`rec`'s objective curve without the untrained model's point (trial.FIRST_TRAINED_STEP)."""
    return trained_points(rec.result.curve)


def untrained_score(rec: TrialRecord) -> float | None:
    """The untrained model's objective score on `rec`'s curve (its step-0 point), None when not recorded."""
    return next((v for step, v in rec.result.curve if step < FIRST_TRAINED_STEP), None)


def early_stopped(rec: TrialRecord) -> bool:
    """Ended by training's own early stopping: completed (not pruned, not diverged) before its planned steps."""
    res = rec.result
    return res.status == "completed" and bool(res.steps_planned) and 0 < res.steps_done < res.steps_planned


def score_at(rec: TrialRecord, step: int) -> float | None:
    """`rec`'s best trained objective score over its evaluations up to `step` (what a trial pruned there would have
    read: a trial's score never counts the untrained model's, trial.FIRST_TRAINED_STEP)."""
    got = [v for s, v in trained_curve(rec) if s <= step]
    return max(got) if got else None


def like_for_like(ctx: SearchContext, rec: TrialRecord, ref: TrialRecord) -> tuple[float | None, float | None, str]:
    """(`rec`'s score, `ref`'s score, note) at one length. A trial trained to its length: both values, no note. A
    pruned one: its partial score against `ref`'s at the step it was pruned at (`ref`'s curve), and a note that says
    so: a pruned trial's partial score is never set against a full-length one (the one rule every stage follows)."""
    step = pruned_step(rec)
    if step is None:
        return rec.value, ref.value, ""
    other = score_at(ref, step) if ref.value is not None else None
    planned, why = rec.result.steps_planned, rec.result.reason.removeprefix("pruned: ").split(" (")[0] or "pruned"
    note = (f"{rec.label} was pruned at step {step}" + (f" of {planned}" if planned else "")
            + f" ({why}): {ctx.fmt(rec.value)} there vs "
            + (f"{ctx.fmt(other)} for {ref.label} (its best up to that step)" if other is not None
               else f"{ref.label} not evaluated by that step"))
    return rec.value, other, note


def gain_over(ctx: SearchContext, rec: TrialRecord, ref: TrialRecord) -> tuple[float | None, str]:
    """`rec`'s gain over `ref` at one length (`like_for_like`) and the note saying when `rec` was pruned."""
    a, b, note = like_for_like(ctx, rec, ref)
    return (a - b if a is not None and b is not None else None), note


def step_gain(ctx: SearchContext, rec: TrialRecord, ref: TrialRecord) -> tuple[bool, str, dict]:
    """Whether one step (`rec`, a move from the incumbent `ref`) is better, by the one rule of the sweeps
    (objectives.beyond_noise over `ctx.noise()`): its gain at one length (`gain_over`) must pass the noise band;
    inside the band the two are a tie (protocol 5b) and the lower-change incumbent is kept. A pruned step is
    never better (a partial score is no incumbent). Returns (better, the comparison for the evidence, data)."""
    gain, note = gain_over(ctx, rec, ref)
    noise, src = ctx.noise()
    better = not note and bool(beyond_noise(gain, noise))
    tie = not note and gain is not None and not better and not beyond_noise(-gain, noise)
    data = {"gain": gain, "noise": noise, "tie": tie}
    if note:
        return False, note, data
    if gain is None:
        return False, f"{ctx.fmt(ref.value)} -> {ctx.fmt(rec.value)}", data
    judged = ("beyond" if better else "within" if tie else "a loss beyond") + f" noise {noise:.3f} ({src})"
    return better, (f"{ctx.fmt(ref.value)} -> {ctx.fmt(rec.value)}, gain {gain:+.3f}, {judged}"
                    + (": a tie, the incumbent (the smaller change) is kept" if tie else "")), data


def whole_if_ahead(ctx: SearchContext, rec: TrialRecord, ref: TrialRecord, noise: float, phase: str, why: str,
                   held: Cost = Cost()) -> TrialRecord | None:
    """`rec`, or, when it was pruned while ahead of `ref` at its step beyond the noise (objectives.beyond_noise; or with no score of `ref`
    there), its point trained again whole: a partial score is no gain. None: that run is not affordable."""
    gain, note = gain_over(ctx, rec, ref)
    if not note or (gain is not None and not beyond_noise(gain, noise)):
        return rec
    return ctx.run(ctx.spec(rec.point, phase, f"{why}: its pruned trial trained again, whole"), reserve=held, full=True)


def shape_params(ctx: SearchContext, rec: TrialRecord) -> dict:
    """`rec`'s parameter counts (run.json params) for the breakeven. A record written before params.per_rank (a
    resumed study's older trial) takes per_rank from a trial of the same adapted layers that records it (the same
    method, target modules, layers and adapted weights: the same sites, the same sum of d_in + d_out, whatever its
    rank, bias or DoRA); with none, it is left as it is (adapter / r, said: adapt.record_per_rank)."""
    params = rec.result.params or {}
    if record_per_rank(params, None)[0] is not None or not params.get("adapted_weights"):
        return params
    keys = (METHOD, TARGETS, LAYERS)
    same = (o for o in ctx.records if all(o.point.get(k, DEFAULTS.get(k)) == rec.point.get(k, DEFAULTS.get(k))
                                          for k in keys)
            and (o.result.params or {}).get("adapted_weights") == params["adapted_weights"])
    own = next((n for n in (record_per_rank(o.result.params or {}, None)[0] for o in same) if n is not None), None)
    return params if own is None else {**params, "per_rank": own}


def breakeven_rank(params: dict, r: int) -> int | None:
    """The compute-breakeven rank (params.breakeven_rank) of a trained run's parameter counts at rank r: from LoRA's
    A and B parameters per rank (adapt.record_per_rank), never its whole adapter count, whose trained biases and
    DoRA magnitudes do not grow with r (bias=all at r=4 read 38 for MiniLM's 64)."""
    per_rank, _ = record_per_rank(params, r)
    return compute_breakeven_rank(params.get("adapted_weights"), per_rank)


def breakeven_cap(params: dict, r: int) -> int | None:
    """The highest rank a rank sweep trains without passing the compute breakeven (params.highest_rank_within_
    breakeven) of a trained run's parameter counts at rank r (per rank as `breakeven_rank`)."""
    per_rank, _ = record_per_rank(params, r)
    return highest_rank_within_breakeven(params.get("adapted_weights"), per_rank)


def breakeven_note(params: dict, r: int) -> str:
    """How the per-rank count behind `breakeven_rank` was had when the record does not hold it (adapt.record_per_rank),
    else ""."""
    return record_per_rank(params, r)[1]
