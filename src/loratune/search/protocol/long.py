"""Train long early (issue 15): the pick at the final length from the lr grid on, and challengers.

The short trials rank configs; the model handed over is trained longer. Waiting with the long run until
every stage has spent its trials leaves the pick a short trial for most of the budget. So once the lr grid
has an incumbent, it is trained at the final length (phase 0's epochs, at most `final_max_factor` x a trial,
shortened to the budget left after the higher-priority stages' reserve; the trials' early stopping; at
`long_lr_factor` x the trial's lr, since the lr that wins short runs is too high for long ones; ending by
`early_long_by` of the budget where it can, so a good model exists at half the budget) and becomes the pick.
Every later incumbent is a challenger (successive halving: many configs at trial length, few at full length): it replaces the pick only when its trial beats the pick's trial (`champion`) beyond
noise, and is then trained long itself; its long run is the pick when it scores higher. A challenger stage
whose winner could not be trained long within the budget left cannot change the pick: it is skipped, and the
trail says so. The final training at the end reuses the long run it finds (no point is trained twice).
"""

from __future__ import annotations

from loratune.objectives import beyond_noise
from loratune.search.budget import Cost, format_amount
from loratune.search.context import SearchContext, with_
from loratune.search.stages import StageId
from loratune.search.trial import TrialRecord
from loratune.search.protocol.settings import (CONTINUE_MIN_RATIO, FINAL_LENGTH_SHRINK, METHOD, ProtocolSettings,
                                               STILL_IMPROVING_BEST_FRACTION)
from loratune.search.protocol.common import (LR, early_stopped, evidence_of, incumbent_of, lr_of, reserve, round3,
                                             trained_curve)

PHASE = StageId.EARLY_LONG.value


def curve_peak(rec: TrialRecord) -> tuple[float | None, float | None]:
    """Where a trial's best came (share of its steps) and how far its last point ended below that best, both read
    on its objective curve (the search's scale, larger is better: a loss for causal-lm, where the diagnosis's own
    val metric is token accuracy); (None, None) for a trial without trained points."""
    trained = trained_curve(rec)
    if not trained:
        return None, None
    best = max(v for _, v in trained)
    frac = min(step for step, v in trained if v == best) / trained[-1][0]
    return frac, best - trained[-1][1]


def still_improving(rec: TrialRecord) -> tuple[bool, float | None]:
    """Whether a trial was still improving when it ended (a longer run can help), and where its best came. Read
    on the trial's objective curve (`curve_peak`); a trial without a curve falls back to the diagnosis's
    features. A trial its own early stopping ended was not improving (its trained best held for `patience`
    evaluations: objectives.Patience counts from objectives.FIRST_TRAINED_STEP), wherever its trained best came."""
    frac, _ = curve_peak(rec)
    if early_stopped(rec):
        return False, frac if frac is not None else rec.result.feature("best_step_fraction")
    if frac is not None:
        return frac >= STILL_IMPROVING_BEST_FRACTION, frac
    res = rec.result
    frac = res.feature("best_step_fraction")
    return bool(res.feature("still_improving")) or (frac is not None and frac >= STILL_IMPROVING_BEST_FRACTION), frac


def longer_may_help(ctx: SearchContext, rec: TrialRecord) -> tuple[bool, float | None, str]:
    """Whether a longer run of `rec` may score higher than its trial, where its best came, and the evidence line.
    Yes when it was still improving when the trial ended (`still_improving`), and also when its best came earlier
    but its last point is inside the noise band of that best (`ctx.noise`, the band phase 2's early stopping reads):
    a curve that held level inside the noise at the end of a decaying schedule has not shown that a longer one
    would not help. Only a fall beyond the noise is a peak. A trial without an objective curve: `still_improving`."""
    still, frac = still_improving(rec)
    if early_stopped(rec):  # its own early stopping saw no gain for `patience` evaluations: a longer run is no help
        return False, frac, (f"{rec.label}: early stopping ended it at step {rec.result.steps_done} of "
                             f"{rec.result.steps_planned}: not improving")
    if still:
        return True, frac, f"{rec.label}: best {ctx.objective.name} at {frac or 0:.0%} of its trial, still improving"
    _, drop = curve_peak(rec)
    if drop is None:
        return False, frac, f"{rec.label}: best {ctx.objective.name} at {frac or 0:.0%} of its trial"
    band, _ = ctx.noise()
    where = f"{rec.label}: best {ctx.objective.name} at {frac or 0:.0%} of its trial, the end {drop:.3f} below it"
    if not beyond_noise(drop, band):  # the one rule: a fall equal to the band is inside it
        return True, frac, f"{where}, inside the noise band {band:.3f}: level, not past a peak"
    return False, frac, f"{where}, beyond the noise band {band:.3f}: past its peak"


def long_steps_wanted(ctx: SearchContext, s: ProtocolSettings) -> int:
    """The final length before the budget shortens it: phase 0's epoch count for a full run, at most
    `final_max_factor` x a trial."""
    steps0 = int(ctx.trial_steps)
    trial_epochs = float(ctx.state.trial_epochs or 0.0)
    want = steps0 * s.final_max_factor
    start = ctx.state.start
    if start is not None and start.epochs and trial_epochs > 0:
        want = min(want, steps0 * float(start.epochs) / trial_epochs)
    return int(want)


def epochs_cap_line(ctx: SearchContext, s: ProtocolSettings) -> str | None:
    """Why no long run is wanted at all, whatever the budget: phase 0's epoch count caps a full run below the
    shortest long run (`final_min_factor` x a trial); None when it does not."""
    want, least = long_steps_wanted(ctx, s), s.final_min_factor * int(ctx.trial_steps)
    if want >= least:
        return None
    start = ctx.state.start
    return (f"phase 0's {float(start.epochs):g} epochs (a trial covers {float(ctx.state.trial_epochs):.2g}) cap a "
            f"full run at {want} steps, under the shortest long run ({s.final_min_factor:g}x the "
            f"{int(ctx.trial_steps)}-step trial): the budget is not what stops it")


def final_length(ctx: SearchContext, point: dict, want: int, n_runs: int, min_steps: float,
                 held: Cost = Cost()) -> int | None:
    """The longest run of `point` (from `want` steps, shortened by FINAL_LENGTH_SHRINK steps) of which `n_runs`
    fit the budget left after `held`; None when even `min_steps` does not."""
    steps = want
    while steps >= min_steps:
        one = ctx.estimate(with_(point, **{"train.max_steps": steps}))
        if ctx.meter.fits(one * n_runs, held):
            return steps
        steps = int(steps * FINAL_LENGTH_SHRINK)
    return None


def min_long_cost(ctx: SearchContext, s: ProtocolSettings, point: dict) -> Cost:
    """The shortest long run the protocol trains (`final_min_factor` x a trial) of `point`."""
    return ctx.estimate(with_(point, **{"train.max_steps": int(s.final_min_factor * ctx.trial_steps)}))


def deadline_hold(ctx: SearchContext, share: float | None) -> Cost:
    """What a run must leave unspent for it to end by `share` of the budget (a Cost in the budget's unit, kept
    back like a stage reserve); nothing for no share or a trials budget (a long run is one trial whatever its
    length)."""
    kind = ctx.meter.budget.kind
    if share is None or kind == "trials":
        return Cost()
    keep = (1.0 - share) * ctx.meter.budget.limit
    if kind == "wall_s":  # `left` is net of the finishing reserve already
        return Cost(wall_s=max(0.0, keep - ctx.meter.reserve_s))
    return Cost(examples=int(keep))


def long_run(ctx: SearchContext, s: ProtocolSettings, rec: TrialRecord, why: str,
             held: Cost = Cost(), by: float | None = None) -> TrialRecord | None:
    """`rec`'s config trained at the final length (one run, at its lr), or None when it does not fit. `by`: the
    run ends by this share of the budget when a run of at least `final_min_factor` x a trial can (its length
    capped); when only the deadline stops every such run, the shortest long run is trained."""
    steps0 = int(ctx.trial_steps)
    want, least = long_steps_wanted(ctx, s), s.final_min_factor * steps0
    free = steps = final_length(ctx, rec.point, want, 1, least, held)  # the length without the deadline
    hold = deadline_hold(ctx, by)
    if free is not None and hold.amount(ctx.meter.budget.kind) > held.amount(ctx.meter.budget.kind):
        steps = final_length(ctx, rec.point, want, 1, least, hold)
    capped = "" if steps is None or steps == free else f", capped to end by {by:.0%} of the budget"
    if steps is None and free is not None:  # only the deadline stops it: the shortest long run
        steps = max(int(least), 1)
        capped = f", the shortest long run (it cannot end by {by:.0%} of the budget)"
    if steps is None:
        return None
    lr = long_lr(s, rec.point)
    point = with_(rec.point, **{"train.max_steps": steps, LR: lr})
    at = "" if lr == lr_of(rec.point) else f" at lr {lr:g} ({s.long_lr_factor:g}x the trial's)"
    return ctx.run(ctx.spec(point, PHASE, f"{why}: {steps} steps ({steps / steps0:.1f}x a trial){at}{capped}"),
                   prune=False, reserve=held)


def long_lr(s: ProtocolSettings, point: dict) -> float:
    """The lr a long run of `point` (a trial's config) trains at: its lr x `long_lr_factor`."""
    lr = lr_of(point)
    return lr if s.long_lr_factor == 1 else round3(lr * s.long_lr_factor)


def unaffordable_line(ctx: SearchContext, s: ProtocolSettings, rec: TrialRecord, held: Cost) -> str:
    kind = ctx.meter.budget.kind
    need = min_long_cost(ctx, s, rec.point).amount(kind)
    return (f"{s.final_min_factor:g}x the trial length would need ~{format_amount(kind, need)}; "
            f"{ctx.meter.describe_left()}" + (f", ~{format_amount(kind, held.amount(kind))} held back for "
                                              "higher-priority stages" if held.amount(kind) else ""))


def stage_early_long(ctx: SearchContext, s: ProtocolSettings) -> None:
    """The lr grid's incumbent at the final length, before the evidence stages (issue 15 item 2)."""
    inc = incumbent_of(ctx)
    if not s.early_long or not s.final_train or inc is None or ctx.state.failed or not ctx.trial_steps:
        return
    longer, _, why = longer_may_help(ctx, inc)
    if not longer:
        ctx.decide(PHASE, "early-long", "the incumbent peaked inside its trial", "no long run: its trial is the pick",
                   [f"{why}; a longer run would not help", "later incumbents follow the stages' own rules"], [inc],
                   code="early-long-peaked")
        return
    held = reserve(ctx, PHASE, s)
    run = long_run(ctx, s, inc, "train long early", held, by=s.early_long_by)
    if run is None and (cap := epochs_cap_line(ctx, s)) is not None:
        ctx.decide(PHASE, "early-long", "still improving; phase 0's epochs leave no room for a long run",
                   "the pick stays a trial", [f"{inc.label} was still improving when its {ctx.trial_steps}-step "
                                              "trial ended", cap], [inc], code="early-long-epochs-capped")
        return
    if run is None:
        ctx.decide(PHASE, "early-long", "still improving; a long run does not fit yet",
                   "the pick stays a trial; the final training tries again with the budget left",
                   [f"{inc.label} was still improving when its {ctx.trial_steps}-step trial ended",
                    unaffordable_line(ctx, s, inc, held)], [inc], code="early-long-unaffordable")
        return
    ctx.state.champion = inc
    steps = int(run.point["train.max_steps"])
    want = long_steps_wanted(ctx, s)
    ev = [f"{why} (a {ctx.trial_steps}-step trial)",
          f"{steps} steps ({steps / ctx.trial_steps:.1f}x a trial) at lr {lr_of(run.point):g} ({s.long_lr_factor:g}x "
          f"the trial's: the best lr falls as the run grows, protocol 3), early stopping on {ctx.objective.name}: "
          f"{ctx.fmt(inc.value)} -> {ctx.fmt(run.value)}",
          *([f"{steps} of the {want} steps wanted: the run ends by {s.early_long_by:.0%} of the budget where it can "
             "(a good model early)" + (f"; the final training continues it from its weights when the budget left "
                                       f"holds {CONTINUE_MIN_RATIO:g}x its length in more steps" if s.continue_long
                                       else "")] if steps < want and s.early_long_by is not None else []),
          "later incumbents are challengers: trained long only when they beat this trial beyond noise"]
    data = {"trial": inc.number, "long_trial": run.number, "steps": steps, "steps_wanted": want, "value": run.value,
            "trial_value": inc.value}
    if run.value is not None and (inc.value is None or run.value > inc.value):
        ctx.state.final = run
        ctx.decide(PHASE, "early-long", "trained long early", f"pick = {run.label}", ev + evidence_of(ctx, run),
                   [inc, run], data, code="early-long-trained")
    else:
        ctx.state.final = inc
        ctx.decide(PHASE, "early-long", "the long run did not score higher", f"pick = {inc.label} (its trial)",
                   ev + evidence_of(ctx, run), [inc, run], data, code="early-long-no-gain")


def pick_line(ctx: SearchContext, pick: TrialRecord, replaced: bool = False) -> str:
    """The evidence line naming the pick a decision started from; once the decision replaces it, "the pick before
    it" (a trail that names the old pick as "the pick" while its move sets another contradicts itself)."""
    return f"the pick{' before it' if replaced else ''}: {pick.label}, {ctx.show(pick.value)}"


def replaced_pick(ctx: SearchContext, pick: TrialRecord, ev: list[str]) -> list[str]:
    """`ev` with its line naming `pick` as the pick reworded: the decision replaces it."""
    return [pick_line(ctx, pick, replaced=True) if e == pick_line(ctx, pick) else e for e in ev]


def challenge(ctx: SearchContext, s: ProtocolSettings) -> None:
    """After a stage: a new incumbent replaces the pick only when it beats the pick's trial beyond noise."""
    champ, inc = ctx.state.champion, incumbent_of(ctx)
    if champ is None or inc is None or inc is champ or ctx.state.failed or inc.number in ctx.state.challenged:
        return
    ctx.state.challenged.append(inc.number)
    noise, src = ctx.noise()
    pick = ctx.state.final
    gain = (inc.value - champ.value) if inc.value is not None and champ.value is not None else None
    ev = [f"challenger {inc.label} ({inc.spec.phase}): {ctx.show(inc.value)} vs the pick's trial {champ.label} "
          f"{ctx.fmt(champ.value)} at trial length: gain {'?' if gain is None else f'{gain:+.3f}'}, noise {noise:.3f} "
          f"({src})", pick_line(ctx, pick)]
    data = {"challenger": inc.number, "champion": champ.number, "gain": gain, "noise": noise, "pick": pick.number}
    if not beyond_noise(gain, noise):
        ctx.decide(PHASE, "challenger", "within noise of the pick's trial", f"keep the pick {pick.label}",
                   ev + ["a gain inside the noise is not told apart from none: the long run stays the pick"],
                   [champ, inc, pick], data, code="challenger-within-noise")
        return
    promote(ctx, s, inc, ev, data)


def promote(ctx: SearchContext, s: ProtocolSettings, rec: TrialRecord, ev: list[str], data: dict,
            replace: bool = False) -> None:
    """Train a winning challenger long (its trial when it peaked inside it); its run is the pick when it scores
    higher than the pick (`replace`: whatever it scores, when another rule chose it: LoRA vs full)."""
    pick = ctx.state.final
    longer, _, why = longer_may_help(ctx, rec)
    if longer:
        held = reserve(ctx, PHASE, s)
        run = long_run(ctx, s, rec, "promoted challenger", held)
        if run is None:
            ev = ev + [unaffordable_line(ctx, s, rec, held)]
            if replace:
                ctx.state.final, ctx.state.champion = rec, rec
                ev = replaced_pick(ctx, pick, ev)
            ctx.decide(PHASE, "challenger", "beats the pick beyond noise; a long run does not fit",
                       f"pick = {rec.label} (its trial)" if replace else
                       f"keep the pick {pick.label}; the final training tries again with the budget left",
                       ev, [rec, pick], data, code="challenger-unaffordable")
            return
        ev = ev + [f"{rec.label} trained long: {ctx.fmt(rec.value)} -> {ctx.fmt(run.value)}"]
    else:
        run = rec
        ev = ev + [f"{why}: its trial is its full-length model"]
    data = {**data, "long_trial": run.number if run is not rec else None, "value": run.value}
    if replace or (run.value is not None and (pick.value is None or run.value > pick.value)):
        ctx.state.final, ctx.state.champion = run, rec
        ctx.decide(PHASE, "challenger", "beats the pick beyond noise", f"pick = {run.label}",
                   replaced_pick(ctx, pick, ev) + evidence_of(ctx, run), [rec, run, pick], data, code="challenger-promoted")
    else:
        ctx.decide(PHASE, "challenger", "beats the pick's trial, not the pick", f"keep the pick {pick.label}",
                   ev + [f"{run.label} {ctx.fmt(run.value)} {ctx.op('<=')} the pick {ctx.fmt(pick.value)}"],
                   [rec, run, pick], data, code="challenger-long-no-gain")


def cannot_change_pick(ctx: SearchContext, s: ProtocolSettings, stage) -> bool:
    """Before a challenger stage (`StageSpec.challenger`): with a long run as the pick, a stage whose trials and
    one long run of its winner do not fit the budget left cannot change the pick: skip it, saying why."""
    champ, inc = ctx.state.champion, incumbent_of(ctx)
    if not stage.challenger or champ is None or inc is None or ctx.state.failed or ctx.state.final is champ:
        return False
    n = stage.still_planned(ctx, s)
    if n <= 0:
        return False
    point = with_(inc.point, **stage.cost_point)
    trials, promo = ctx.estimate(point) * n, min_long_cost(ctx, s, point)
    if ctx.meter.fits(trials + promo):
        return False
    kind = ctx.meter.budget.kind
    ctx.decide(stage.id.value, "skip", "its outcome cannot change the pick within the budget", f"skip {stage.title}",
               [f"the pick is {ctx.state.final.label} ({ctx.show(ctx.state.final.value)}), a long run; a challenger "
                "replaces it only through a long run of its own",
                f"{n} trial(s) ~{format_amount(kind, trials.amount(kind))} + its winner's shortest long run "
                f"({s.final_min_factor:g}x a trial) ~{format_amount(kind, promo.amount(kind))}; "
                f"{ctx.meter.describe_left()}"], [ctx.state.final],
               {"trials": n, "need": (trials + promo).to_dict(), "left": ctx.meter.left},
               code="stage-cannot-change-pick")
    return True


def long_of(ctx: SearchContext, s: ProtocolSettings, rec: TrialRecord) -> TrialRecord | None:
    """A long run of `rec`'s config this study already trained (early or as a promotion: at `long_lr`)."""
    def bare(p: dict) -> dict:
        return {k: v for k, v in p.items() if k not in ("train.max_steps", LR)}

    lr = long_lr(s, rec.point)
    return next((r for r in reversed(ctx.records) if r.spec.phase == PHASE and r is not rec
                 and bare(r.point) == bare(rec.point) and lr_of(r.point) == lr), None)


def is_full(rec: TrialRecord | None) -> bool:
    return rec is not None and rec.point.get(METHOD) == "full"
