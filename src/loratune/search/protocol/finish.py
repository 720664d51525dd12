"""LoRA vs full fine-tuning, and the pick trained longer with the budget left."""

from __future__ import annotations

from loratune.search.budget import format_amount
from loratune.search.context import SearchContext, with_
from loratune.search.space import DEFAULTS
from loratune.search.stages import StageId
from loratune.search.state import Start
from loratune.search.trial import TrialRecord
from loratune.search.protocol.settings import (FINAL_LENGTH_SHRINK, FULL_LR_MAX, FULL_LR_MIN, LR, METHOD,
                                               ProtocolSettings, STILL_IMPROVING_BEST_FRACTION)
from loratune.search.protocol.common import (breakeven_rank, evidence_of, incumbent_of, lr_of, no_budget, r_of, round3,
                                             set_incumbent)


def stage_full_probe(ctx: SearchContext, s: ProtocolSettings) -> None:
    from loratune.decide import CostPoint, DecideInputs, decide

    inc = incumbent_of(ctx)
    if inc is None or ctx.state.failed:
        return
    phase = StageId.FULL_PROBE.value
    full = next((r for r in ctx.records if r.point.get(METHOD) == "full" and r.value is not None), None)
    if full is None and s.full_probe:  # one probe per study: a second decision reuses it
        lr = min(FULL_LR_MAX, max(FULL_LR_MIN, round3(lr_of(inc.point) * s.full_lr_ratio)))
        point = with_(inc.point, **{METHOD: "full", LR: lr})
        full = ctx.run(ctx.spec(point, phase, f"full fine-tuning probe (lr {lr:g} = LoRA lr x {s.full_lr_ratio:g})"),
                       prune=False)
        if full is None:
            no_budget(ctx, phase, "the full-fine-tuning probe")
    lora = [r for r in ctx.records if r.point.get(METHOD, DEFAULTS[METHOD]) == "lora" and r.value is not None
            and r.result.params.get("adapter")]
    highest = max(lora, key=lambda r: (r_of(r.point), r.value or 0)) if lora else None

    involved = [r for r in (inc, highest, full) if r is not None]
    use_delta = all(r.result.memory_delta_mb is not None for r in involved)

    def cp(rec: TrialRecord, label: str) -> CostPoint:
        mem = rec.result.memory_delta_mb if use_delta else rec.result.peak_memory_mb
        return CostPoint.from_run(label, rec.point.get(METHOD, DEFAULTS[METHOD]), None if rec.point.get(METHOD) == "full"
                                  else r_of(rec.point), rec.value, rec.result.params, rec.result.mean_step_s,
                                  mem, rec.result.examples, rec.number)

    noise, src = ctx.noise()
    sweep = ctx.state.rank_sweep or {}
    plateau = None if not sweep or len(sweep.get("points", [])) < 2 else sweep.get("plateau_r") is not None
    inputs = DecideInputs(
        chosen=cp(inc, f"LoRA r={r_of(inc.point)} (chosen)"),
        highest=cp(highest, f"LoRA r={r_of(highest.point)} (highest rank tried)") if highest and highest is not inc else None,
        full=cp(full, "full fine-tuning") if full is not None and full.value is not None else None,
        noise=noise, noise_source=src, plateau=plateau,
        plateau_detail=(f"plateau at r={sweep.get('plateau_r')}" if sweep.get("plateau_r") is not None else
                        f"points {[(p['r'], p['value']) for p in sweep.get('points', [])]}") if sweep else "",
        target=s.target, breakeven_r=sweep.get("breakeven_r") or breakeven_rank(inc.result.params, r_of(inc.point)),
        objective=ctx.objective)
    out = decide(inputs)
    ctx.state.lora_vs_full = {**out.to_dict(), "full_trial": full.number if full else None,
                                 "memory_basis": ("peak above the process's memory at the trial's start" if use_delta
                                                  else "peak of the process during the trial")}
    if out.choice == "full" and full is not None:
        ctx.state.final = full
    ev = [f"{r.id}: {'holds' if r.holds else 'unknown' if r.holds is None else 'does not hold'} - {r.text}"
          for r in out.reasons]
    ctx.decide(phase, "lora-vs-full", f"choose {out.choice}", out.summary, ev,
               [inc] + ([full] if full else []) + ([highest] if highest and highest is not inc else []),
               {"table": list(out.table)}, code=f"choose-{out.choice}")


def stage_final_train(ctx: SearchContext, s: ProtocolSettings) -> None:
    """Budget left after every stage goes to the pick itself. The short trials ranked the configs; when
    the pick was still improving as its trial ended (the trial length limits the score), it is trained
    again for longer: phase 0's epoch count (at most `final_max_factor` x a trial), shortened to what
    the budget still holds, with early stopping on val macro-F1. The best lr of a short trial need not
    be the best lr of a run several times longer, so when the budget holds one long run per factor of
    `final_lr_factors` (lr /2 and lr), each is run at the same length; otherwise one run at the pick's
    lr. The best long run replaces the pick only when it scores higher on val; either way the decision
    says what the longer runs gained."""
    inc = incumbent_of(ctx)
    final = ctx.state.final
    if not s.final_train or inc is None or ctx.state.failed or not ctx.trial_steps:
        return
    if final is not None and final.point.get(METHOD) == "full":
        return
    phase = StageId.FINAL_TRAIN.value
    res = inc.result
    frac = res.feature("best_step_fraction")
    still = bool(res.feature("still_improving")) or (frac is not None and frac >= STILL_IMPROVING_BEST_FRACTION)
    if not still:
        ctx.decide(phase, "final-train", "the pick peaked inside its trial", "keep the trial's adapter",
                   [f"{inc.label}: best {ctx.objective.name} at {frac or 0:.0%} of the run; a longer run would not help"], [inc],
                   code="final-train-peaked")
        return
    start: Start = ctx.state.start
    steps0 = int(ctx.trial_steps)
    trial_epochs = float(ctx.state.trial_epochs or 0.0)
    want = steps0 * s.final_max_factor
    if start.epochs and trial_epochs > 0:
        want = min(want, steps0 * float(start.epochs) / trial_epochs)
    lr = float(inc.point.get(LR, start.lr_centre))
    lrs = [lr if f == 1 else round3(lr * f) for f in s.final_lr_factors] or [lr]
    steps = final_length(ctx, inc, int(want), len(lrs), s.final_min_factor * steps0)
    if steps is None and len(lrs) > 1:
        lrs = [lr]  # one long run only: at the lr the short trials chose (measured), not a guess
        steps = final_length(ctx, inc, int(want), 1, s.final_min_factor * steps0)
    if steps is None:
        ctx.decide(phase, "final-train", "still improving; a longer run is not affordable", "keep the trial's adapter",
                   [f"{inc.label} was still improving when its {steps0}-step trial ended",
                    f"{s.final_min_factor:g}x the trial length would need ~{format_amount(ctx.meter.budget.kind, ctx.estimate(with_(inc.point, **{'train.max_steps': int(s.final_min_factor * steps0)})).amount(ctx.meter.budget.kind))}; "
                    f"{ctx.meter.describe_left()}"], [inc], code="final-train-unaffordable")
        return
    runs = []
    why = f"the pick trained longer: {steps} steps ({steps / steps0:.1f}x a trial)"
    ctx.prefetch([ctx.spec(with_(inc.point, **{LR: x, "train.max_steps": steps}), phase,
                           why + ("" if x == lr else f" at lr {x:g} ({x / lr:g}x)")) for x in lrs])
    for x in lrs:
        point = with_(inc.point, **{LR: x, "train.max_steps": steps})
        rec = ctx.run(ctx.spec(point, phase, why + ("" if x == lr else f" at lr {x:g} ({x / lr:g}x)")), prune=False)
        if rec is None:
            no_budget(ctx, phase, f"the longer run at lr {x:g}")
            break
        runs.append(rec)
    scored = [r for r in runs if r.value is not None]
    if not scored:
        return
    best = max(scored, key=lambda r: (r.value, -r.number))
    gain = (best.value - inc.value) if inc.value is not None else None
    ev = [f"{inc.label} was still improving when its {steps0}-step trial ended (best at {frac or 0:.0%} of the run)",
          f"{steps} steps ({steps / steps0:.1f}x; phase 0 planned {start.epochs or '?'} epochs for a full run, a trial is "
          f"{trial_epochs:.2f}), early stopping on {ctx.objective.name}: {ctx.fmt(inc.value)} -> {ctx.fmt(best.value)}"
          + (f" (gain {gain:+.3f})" if gain is not None else "")]
    if len(scored) > 1:
        ev.append("lr for the long run (the short trials' lr need not suit a longer one): "
                  + ", ".join(f"lr {r.point[LR]:g} -> {ctx.fmt(r.value)}" for r in scored)
                  + f"; best {best.point[LR]:g}")
    ev += evidence_of(ctx, best)
    data = {"steps": steps, "gain": gain, "lrs": [{"lr": r.point[LR], "value": r.value, "trial": r.number}
                                                 for r in runs]}
    if gain is not None and gain > 0:
        set_incumbent(ctx, best)
        ctx.state.final = best
        ctx.decide(phase, "final-train", "longer training helps", f"pick = {best.label}", ev, [inc, *runs], data,
                   code="final-train-helps")
    else:
        ctx.decide(phase, "final-train", "longer training does not help", f"keep {inc.label}", ev, [inc, *runs], data,
                   code="final-train-no-gain")


def final_length(ctx: SearchContext, inc, want: int, n_runs: int, min_steps: float) -> int | None:
    """The longest run (from `want` steps, shortened by 0.8 steps) of which `n_runs` fit the budget left;
    None when even `min_steps` does not."""
    steps = want
    while steps >= min_steps:
        one = ctx.estimate(with_(inc.point, **{"train.max_steps": steps}))
        if ctx.meter.fits(one * n_runs):
            return steps
        steps = int(steps * FINAL_LENGTH_SHRINK)
    return None
