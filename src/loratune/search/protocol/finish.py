"""LoRA vs full fine-tuning, and the pick trained longer with the budget left."""

from __future__ import annotations

import math

from loratune.config import LORA_ONLY_KEYS, LORA_VARIANT_KEYS
from loratune.objectives import beyond_noise
from loratune.search.budget import Cost
from loratune.search.context import SearchContext, with_
from loratune.search.space import DEFAULTS
from loratune.search.stages import StageId
from loratune.search.state import Start
from loratune.search.trial import TrialRecord
from loratune.search.protocol.settings import (CONTINUE_LR_FACTOR, CONTINUE_MIN_RATIO, COST_FREE_KEYS, FULL_LR_MAX,
                                               FULL_LR_MIN, INIT_FROM, LR, METHOD, SEED, PROBE_MAX_SHARE_OF_TRIAL,
                                               ProtocolSettings)
from loratune.search.protocol.common import (breakeven_rank, evidence_of, incumbent_of, lr_of, no_budget, pruned_step,
                                             r_of, reserve, round3, same_except, set_incumbent,
                                             shape_params)
from loratune.search.protocol.long import (epochs_cap_line, final_length, is_full, long_of, long_steps_wanted,
                                           longer_may_help, pick_line, promote, replaced_pick, still_improving,
                                           unaffordable_line)


def full_lr_probe(ctx: SearchContext, s: ProtocolSettings, inc: TrialRecord) -> TrialRecord | None:
    """Full fine-tuning at its own lr (protocol 1: ~1/10 of LoRA's, a prior): short runs at
    `full_lr_factors` x (LoRA lr x full_lr_ratio), inside FULL_LR_MIN..MAX, 1x first and the others while
    the budget holds them and the full-length probe; the best probe's lr is the lr of the full-length probe
    LoRA is compared with (the same trial length on both sides). Without a trial plan (or trials too short
    to probe) the probes are full-length trials and the best of them is the probe."""
    phase = StageId.FULL_PROBE.value
    prior = round3(lr_of(inc.point) * s.full_lr_ratio)
    centre = min(FULL_LR_MAX, max(FULL_LR_MIN, prior))
    lrs: list[float] = []
    for f in s.full_lr_factors:
        x = min(FULL_LR_MAX, max(FULL_LR_MIN, round3(centre * f)))
        if x in lrs and centre in (FULL_LR_MIN, FULL_LR_MAX):  # a factor clamped onto a probed lr at the range's
            x = round3(min(lrs) / 2) if centre == FULL_LR_MAX else round3(max(lrs) * 2)  # edge: one more inside it
        if x not in lrs and FULL_LR_MIN <= x <= FULL_LR_MAX:
            lrs.append(x)
    steps = int(ctx.trial_steps or 0)
    p_steps = max(s.lr_probe_min_steps, int(round(steps * s.lr_probe_fraction))) if steps else 0
    # plain full fine-tuning: the LoRA-only keys and variants (LoRA+, DoRA) of the incumbent's point go (the config
    # resets them too: config.replace), so the probe is neither refused nor named after a LoRA knob it does not read
    full_point = with_({k: v for k, v in inc.point.items() if k not in LORA_ONLY_KEYS + LORA_VARIANT_KEYS},
                       **{METHOD: "full", LR: centre})
    # short probes only when a probe and the full-length probe they lead to both fit (else one trial at 1x)
    short = (bool(steps) and p_steps <= steps * PROBE_MAX_SHARE_OF_TRIAL and len(lrs) > 1
             and ctx.meter.fits(ctx.estimate(with_(full_point, **{"train.max_steps": p_steps}))
                                + ctx.estimate(full_point), reserve(ctx, phase, s)))
    keep = ctx.estimate(full_point) if short else Cost()  # the full-length probe the short ones lead to
    runs: list[TrialRecord] = []
    for i, lr in enumerate(lrs):
        point = with_(full_point, **{LR: lr, **({"train.max_steps": p_steps} if short else {})})
        if i and not ctx.meter.fits(ctx.estimate(point), keep + reserve(ctx, phase, s)):
            ctx.decide(phase, "full-lr-probe", "stop probing full fine-tuning's lr", "keep the budget for the probe",
                       [f"lr {lr:g} not probed: {ctx.meter.describe_left()}"], runs, code="full-lr-probe-stopped")
            break
        what = f"{p_steps} steps" if short else "a trial"
        # the multiplier is of the prior (LoRA lr x ratio) the label names, not of the centre it was clamped to
        rec = ctx.run(ctx.spec(point, phase, f"full fine-tuning lr probe: {what} at lr {lr:g} ({lr / prior:.3g}x "
                                             f"LoRA lr {lr_of(inc.point):g} x {s.full_lr_ratio:g} = {prior:g}"
                                             + (f"; the centre kept inside protocol 1's lr range "
                                                f"{FULL_LR_MIN:g}..{FULL_LR_MAX:g}: {centre:g}" if centre != prior
                                                else "") + ")"), prune=False)
        if rec is None:
            break
        runs.append(rec)
    scored = [r for r in runs if r.value is not None]
    if not scored:  # none ran (budget: None), or every probe failed (the last one: stage_full_probe says so)
        return runs[-1] if runs else None
    best = max(scored, key=lambda r: r.rank)
    lr = lr_of(best.point)
    rows = [f"lr {lr_of(r.point):g}: {ctx.show(r.value)} ({r.result.verdict})" for r in runs]
    if len(runs) > 1:
        ctx.decide(phase, "full-lr-probe", f"full fine-tuning's lr {lr:g}",
                   f"the full-fine-tuning probe at lr {lr:g}" + (" (full length)" if short else ""),
                   rows + [f"LoRA lr {lr_of(inc.point):g} x {s.full_lr_ratio:g} = {prior:g}"
                           + (f", kept inside protocol 1's lr range {FULL_LR_MIN:g}..{FULL_LR_MAX:g}: {centre:g}"
                              if centre != prior else "")
                           + " is a prior (protocol 1); full fine-tuning is compared at the best lr of its own probe"
                           + (f" ({p_steps}-step runs)" if short else "")]
                   + ([f"the best lr, {lr:g}, is the {'top' if lr == FULL_LR_MAX else 'bottom'} of that range: "
                       "full fine-tuning's own best may lie beyond it"] if lr in (FULL_LR_MIN, FULL_LR_MAX) else []),
                   runs,
                   {"lrs": [{"lr": lr_of(r.point), "value": r.value, "trial": r.number} for r in runs],
                    "centre": centre, "best_lr": lr, "short_steps": p_steps if short else None},
                   code="full-lr-probe-best")
    if not short:
        return best
    return ctx.run(ctx.spec(with_(full_point, **{LR: lr}), phase,
                            f"full fine-tuning probe (lr {lr:g}, the best of its lr probe)"), prune=False)


def measured_cost(ctx: SearchContext, rec: TrialRecord) -> tuple[float | None, float | None, float | None, int,
                                                                  tuple[int | None, int | None, int | None]]:
    """(step s, memory above the trial's start MB, peak MB, n, (the trial each of the three came from)): the least
    of the measurements of every finished trial with `rec`'s shape (the same point but for COST_FREE_KEYS): neither
    the order trials ran in nor a one-time cost of the process's first trial decides LoRA vs full. The trials are
    named so a table shows each number beside the trial that measured it, not under `rec`'s number."""
    def shape(p: dict) -> dict:
        return {k: v for k, v in p.items() if k not in COST_FREE_KEYS}

    same = [r for r in ctx.records if r.result.ok and shape(r.point) == shape(rec.point)] or [rec]

    def least(field: str) -> tuple[float | None, int | None]:
        got = [(getattr(r.result, field), r.number) for r in same if getattr(r.result, field) is not None]
        return min(got) if got else (None, None)

    (step, a), (delta, b), (peak, c) = least("mean_step_s"), least("memory_delta_mb"), least("peak_memory_mb")
    return step, delta, peak, len(same), (a, b, c)


def lora_name(rec: TrialRecord) -> str:
    """LoRA, DoRA, LoRA+ or both, as the trial trained (its run's config; a record without it: its point)."""
    from loratune.decide import method_name

    return rec.result.method or method_name("lora", bool(rec.point.get("adapter.use_dora")),
                                            str(rec.point.get("train.optimizer") or "adamw"))


def stage_full_probe(ctx: SearchContext, s: ProtocolSettings) -> None:
    from loratune.decide import CostPoint, DecideInputs, DecideThresholds, decide

    inc = incumbent_of(ctx)
    if inc is None or ctx.state.failed:
        return
    phase = StageId.FULL_PROBE.value
    done = (ctx.state.lora_vs_full or {}).get("full_trial")
    full = next((r for r in ctx.records if r.number == done), None)  # one probe per study: a new decision reuses it
    if full is None and s.full_probe:
        full = full_lr_probe(ctx, s, inc)
        if full is None:
            no_budget(ctx, phase, "the full-fine-tuning probe")
        elif full.value is None:  # it ran and failed: said as a failure, not as a budget skip
            tried = [r for r in ctx.records if r.spec.phase == phase and r.value is None]
            ctx.decide(phase, "full-probe", "the full-fine-tuning probe failed", "compare without it",
                       [f"{r.label}: {r.result.status}" + (f" ({r.result.reason})" if r.result.reason else "")
                        for r in tried], tried, code="full-probe-failed")
    lora = [r for r in ctx.records if r.point.get(METHOD, DEFAULTS[METHOD]) == "lora" and r.value is not None
            and r.result.params.get("adapter")]
    highest = max(lora, key=lambda r: (r_of(r.point), r.value or 0)) if lora else None
    # the target is met when any LoRA run trained to its length met it (the pick may be a long run): a pruned
    # trial's partial score is no run's result
    best_lora = max((r for r in lora if r.result.full_length), key=lambda r: r.rank, default=None)

    involved = [r for r in (inc, highest, full) if r is not None]
    costs = {r.number: measured_cost(ctx, r) for r in involved}
    use_delta = all(costs[r.number][1] is not None for r in involved)

    def cp(rec: TrialRecord, label: str) -> CostPoint:
        step, delta, peak, _, (step_at, delta_at, peak_at) = costs[rec.number]
        return CostPoint.from_run(label, rec.point.get(METHOD, DEFAULTS[METHOD]), None if rec.point.get(METHOD) == "full"
                                  else r_of(rec.point), rec.value, rec.result.params, step,
                                  delta if use_delta else peak, rec.result.examples, rec.number,
                                  step_trial=step_at, memory_trial=delta_at if use_delta else peak_at,
                                  memory_kind="above-start" if use_delta else "process-peak")

    noise, src = ctx.noise()
    sweep = ctx.state.rank_sweep or {}
    plateau = None if not sweep or len(sweep.get("points", [])) < 2 else sweep.get("plateau_r") is not None
    inputs = DecideInputs(
        # the study's best when the probe ran, not necessarily its final pick (trials after it can beat it)
        chosen=cp(inc, f"{lora_name(inc)} r={r_of(inc.point)} (best at the probe, #{inc.number})"),
        highest=cp(highest, f"{lora_name(highest)} r={r_of(highest.point)} (highest rank tried"  # its val: a partial score, said so
                   + (f", pruned at step {pruned_step(highest)})" if not highest.result.full_length else ")"))
        if highest and highest is not inc else None,
        full=cp(full, "full fine-tuning") if full is not None and full.value is not None else None,
        full_failed=(f"the full-fine-tuning probe {full.label} {full.result.status}"
                     if full is not None and full.value is None else ""),
        noise=noise, noise_source=src, plateau=plateau,
        plateau_detail=(f"plateau at r={sweep.get('plateau_r')}" if sweep.get("plateau_r") is not None else
                        "points " + ", ".join(f"r={p['r']}: {ctx.fmt(p['value'])}" for p in sweep.get("points", [])))
        if sweep else "",
        target=s.target,
        breakeven_r=sweep.get("breakeven_r") or breakeven_rank(shape_params(ctx, inc), r_of(inc.point)),
        objective=ctx.objective, best_lora=best_lora.value if best_lora is not None else None,
        best_lora_label=best_lora.label if best_lora is not None else "")
    out = decide(inputs, DecideThresholds(**ctx.thresholds["lora_vs_full"]))  # the study's (tune --thresholds)
    basis = ("the trial's own peak above the process's memory at its start (the peak was reset as the trial "
             "started), the least over trials of the same shape" if use_delta else
             "the process's running peak (it could not be reset per trial): ORDER-DEPENDENT, a trial that ran after "
             "a larger one reads the larger one's peak")
    ctx.state.lora_vs_full = {**out.to_dict(), "full_trial": full.number if full else None,
                              "memory_basis": basis, "memory_per_trial": use_delta,
                              "measurements": {str(n): c[3] for n, c in costs.items()}}
    ev = [f"{r.id}: {'holds' if r.holds else 'unknown' if r.holds is None else 'does not hold'} - {r.text}"
          for r in out.reasons]
    ev.append(f"memory and step time: {basis}; measurements per config: "
              + ", ".join(f"trial {n}: {c[3]}" for n, c in costs.items()))
    ctx.decide(phase, "lora-vs-full", f"choose {out.choice}", out.summary, ev,
               [inc] + ([full] if full else []) + ([highest] if highest and highest is not inc else []),
               {"table": list(out.table), "memory_per_trial": use_delta}, code=f"choose-{out.choice}")
    if out.choice == "full" and full is not None and not is_full(ctx.state.final):
        if ctx.state.champion is not None:  # a long LoRA run is the pick: full fine-tuning is trained long too
            promote(ctx, s, full, [f"LoRA vs full chose full fine-tuning: {out.summary}"],
                    {"challenger": full.number, "champion": ctx.state.champion.number}, replace=True)
        else:
            ctx.state.final = full


def stage_final_train(ctx: SearchContext, s: ProtocolSettings) -> None:
    """Budget left after every stage goes to the pick itself. The short trials ranked the configs; when
    the pick was still improving as its trial ended (the trial length limits the score), it is trained
    again for longer: phase 0's epoch count (at most `final_max_factor` x a trial), shortened to what
    the budget still holds, with early stopping on val macro-F1. The best lr of a short trial need not
    be the best lr of a run several times longer, so when the budget holds one long run per factor of
    `final_lr_factors` (lr /2 and lr), each is run at the same length; otherwise one run at the pick's
    lr. The best long run replaces the pick only when it scores higher on val; either way the decision
    says what the longer runs gained. A long run the early stage or a promotion already trained
    (protocol.long) is reused: only its other lrs are run, at its length."""
    inc = incumbent_of(ctx)
    final = ctx.state.final
    if not s.final_train or inc is None or ctx.state.failed or not ctx.trial_steps:
        return
    if is_full(final):
        return
    phase = StageId.FINAL_TRAIN.value
    champ = ctx.state.champion
    if champ is not None:  # the early long run ran (protocol.long): an incumbent within noise of its trial is not
        noise, _ = ctx.noise()  # the pick's config; one trained long already is not trained again
        latest = inc
        inc = inc if inc is champ or beats(inc, champ, noise) else champ
        long = long_of(ctx, s, inc)
        if long is not None:
            reuse_long_run(ctx, s, inc, long, final, why_reused(ctx, latest, champ, noise), latest)
            return
    longer, _, curve_line = longer_may_help(ctx, inc)
    if not longer:
        ctx.decide(phase, "final-train", "the pick peaked inside its trial", "keep the trial's adapter",
                   [f"{curve_line}; a longer run would not help"], [inc], code="final-train-peaked")
        return
    start: Start = ctx.state.start
    steps0 = int(ctx.trial_steps)
    trial_epochs = float(ctx.state.trial_epochs or 0.0)
    want = long_steps_wanted(ctx, s)
    lr = float(inc.point.get(LR, start.lr_centre))
    lrs = [lr if f == 1 else round3(lr * f) for f in s.final_lr_factors] or [lr]
    steps = final_length(ctx, inc.point, int(want), len(lrs), s.final_min_factor * steps0)
    if steps is None and len(lrs) > 1:
        lrs = [lr]  # one long run only: at the lr the short trials chose (measured), not a guess
        steps = final_length(ctx, inc.point, int(want), 1, s.final_min_factor * steps0)
    if steps is None and (cap := epochs_cap_line(ctx, s)) is not None:
        ctx.decide(phase, "final-train", "still improving; phase 0's epochs leave no room for a longer run",
                   "keep the trial's adapter", [f"{curve_line} (a {steps0}-step trial)", cap], [inc],
                   code="final-train-epochs-capped")
        return
    if steps is None:
        ctx.decide(phase, "final-train", "still improving; a longer run is not affordable", "keep the trial's adapter",
                   [f"{curve_line} (a {steps0}-step trial)", unaffordable_line(ctx, s, inc, Cost())], [inc],
                   code="final-train-unaffordable")
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
    best, settled = scored[0], []
    for r in scored[1:]:  # the pair of lrs: one rule with the reused long run's (settle_lrs; no stage set either lr)
        replace, line, _ = settle_lrs(ctx, best, r, over=f"lr {lr_of(best.point):g}")
        settled += [line] if line else []
        best = r if replace else best
    # against the trial, and against a long run that is the pick (a challenger promoted here, at the end)
    bar = max(v for v in (inc.value, final.value if final is not None and champ is not None else None, -1e30)
              if v is not None)
    gain = (best.value - inc.value) if inc.value is not None else None
    ev = [f"{curve_line} (a {steps0}-step trial)",
          f"{steps} steps ({steps / steps0:.1f}x; phase 0 planned {start.epochs or '?'} epochs for a full run, a trial is "
          f"{trial_epochs:.2f}), early stopping on {ctx.objective.name}: {ctx.fmt(inc.value)} -> {ctx.fmt(best.value)}"
          + (f" (gain {gain:+.3f})" if gain is not None else "")]
    if bar != inc.value:
        ev.append(f"the pick before it: {final.label}, {ctx.show(final.value)}")
    if len(scored) > 1:
        ev.append("lr for the long run (the short trials' lr need not suit a longer one): "
                  + ", ".join(f"lr {r.point[LR]:g} -> {ctx.fmt(r.value)}" for r in scored)
                  + f"; best {best.point[LR]:g}" + "".join(f" ({x})" for x in settled))
    ev += evidence_of(ctx, best)
    data = {"steps": steps, "gain": gain, "lrs": [{"lr": r.point[LR], "value": r.value, "trial": r.number}
                                                 for r in runs]}
    if gain is not None and best.value > bar:
        set_incumbent(ctx, best)
        ctx.state.final = best
        ctx.decide(phase, "final-train", "longer training helps", f"pick = {best.label}", ev, [inc, *runs], data,
                   code="final-train-helps")
    else:
        ctx.decide(phase, "final-train", "longer training does not help", f"keep {(final or inc).label}", ev,
                   [inc, *runs], data, code="final-train-no-gain")


def beats(rec: TrialRecord, champ: TrialRecord, noise: float) -> bool:
    return rec.value is not None and champ.value is not None and bool(beyond_noise(rec.value - champ.value, noise))


def why_reused(ctx: SearchContext, latest: TrialRecord, champ: TrialRecord, noise: float) -> str:
    """Why the config trained long already is the one the final training reuses, as it happened: the latest
    incumbent is the long run's own trial, it beat that trial beyond noise (a promoted challenger, trained long
    then), or it did not (the long run's config stays)."""
    if latest is champ:
        return "it is still the incumbent"
    if beats(latest, champ, noise):
        return (f"it beat the earlier long run's trial ({champ.label}, {ctx.fmt(champ.value)}) beyond the noise "
                f"{noise:.3f} and was trained long as a challenger")
    return (f"the later incumbent {latest.label} ({ctx.fmt(latest.value)}) did not beat its trial beyond the noise "
            f"{noise:.3f}")


def moved_lr(inc: TrialRecord, latest: TrialRecord | None) -> bool:
    """Whether a stage after the long run moved the incumbent's lr (the seeds stage lowering a seed-unstable lr, a
    phase-2 step) away from the lr of the long run's trial `inc`, without beating that trial beyond noise: the
    incumbent `latest` is `inc`'s config at another lr."""
    return (latest is not None and latest is not inc
            and not math.isclose(lr_of(latest.point), lr_of(inc.point), rel_tol=1e-9)
            and same_except(latest.point, inc.point, (LR, SEED)))


def moved_lr_line(ctx: SearchContext, inc: TrialRecord, latest: TrialRecord | None) -> str | None:
    """When `moved_lr` holds, said, with the stage that moved it (the last decision naming the incumbent), so a
    long run at the lr that stage moved away from is not read as the incumbent's."""
    if not moved_lr(inc, latest):
        return None
    by = next((d for d in reversed(ctx.decisions) if latest.label in str(d.get("move", ""))), None)
    how = f"the {by['phase']} stage set it ({by['code']}: {by['move']})" if by else "a later stage set it"
    return (f"the incumbent {latest.label} is at lr {lr_of(latest.point):g}, not the lr {lr_of(inc.point):g} of the "
            f"long run's trial {inc.label}: {how}; the long run's other lrs are factors of its trial's lr, and one "
            f"replaces the pick only beyond the noise")


def settle_lrs(ctx: SearchContext, pick: TrialRecord, other: TrialRecord,
               held: float | None = None, over: str = "the pick") -> tuple[bool, str | None, dict]:
    """The final training's one rule for two runs at different lrs and the same length (lr /2 and lr of
    `final_lr_factors`; a reused long run and its run at the other lr): whether `other` replaces `pick`. The
    higher val score wins (no stage chose between these lrs: `long_lr_factor`'s lr /2 is a default, not a
    decision), except where an earlier stage set the lr `held` (`moved_lr`: it moved the incumbent's lr away from
    the long run's trial's) and `pick` is at it: then `other` must beat it beyond the noise
    (objectives.beyond_noise over ctx.noise(); protocol 5b: inside the band is a tie, and a tie does not overturn
    the earlier decision). Returns (replace, the comparison for the evidence when `other` scores higher, data)."""
    if other.value is None:
        return False, None, {}
    if pick.value is None:
        return True, None, {}
    gain = other.value - pick.value  # differences of scores: no sign to undo
    if gain <= 0:
        return False, None, {}
    noise, source = ctx.noise()
    data = {"gain": gain, "noise": noise}
    holds = held is not None and math.isclose(lr_of(pick.point), held, rel_tol=1e-9)
    if beyond_noise(gain, noise):
        return True, f"gain {gain:.3f} over {over}: beyond the noise band {noise:.3f} ({source})", data
    if holds:
        return False, (f"gain {gain:.3f} over {over}: inside the noise band {noise:.3f} ({source}), a tie: a tie "
                       f"does not overturn the earlier decision, the pick {pick.label} (lr {lr_of(pick.point):g}) is "
                       f"kept: a stage set its lr"), data
    return True, (f"gain {gain:.3f} over {over}: inside the noise band {noise:.3f} ({source}), a tie; no stage chose "
                  f"between these lrs (lr {lr_of(pick.point):g} is no earlier decision), so the higher score is kept"), data


def reuse_long_run(ctx: SearchContext, s: ProtocolSettings, inc: TrialRecord, long: TrialRecord,
                   final: TrialRecord, why: str = "it is still the incumbent", latest: TrialRecord | None = None) -> None:
    """`inc` was trained long already (protocol.long, at `long_lr_factor` x its lr): not trained again. The
    other lrs of `final_lr_factors` (x the trial's lr) run at its length when they all fit (the short trials'
    lr need not suit a longer run); the best of them is the pick when it beats the pick beyond the noise
    (protocol 5b: inside the band it is a tie, and a tie does not overturn the earlier decision: the pick, at the
    lower lr the long run trains at or the lr an earlier stage steadied, stays). `latest`: the incumbent now, when
    a later stage moved its lr away from `inc`'s (the trail says so)."""
    phase = StageId.FINAL_TRAIN.value
    steps = int(long.point.get("train.max_steps") or 0)
    if continue_long_run(ctx, s, long, final):
        return
    lr = lr_of(inc.point)
    others = [x for x in dict.fromkeys(lr if f == 1 else round3(lr * f) for f in s.final_lr_factors)
              if x != lr_of(long.point)]
    ev = [f"{inc.label} was trained long already: {long.label}, {steps} steps, {ctx.show(long.value)} (its trial "
          f"{ctx.fmt(inc.value)}); {why}, so it is not trained again",
          pick_line(ctx, final)]
    if (moved := moved_lr_line(ctx, inc, latest)) is not None:
        ev.append(moved)
    runs: list[TrialRecord] = []
    need = Cost()
    for x in others:  # a run of them the study finished already (an earlier session's) is reused, not paid again
        need = need + ctx.to_train(with_(long.point, **{LR: x}), phase)
    if others and steps and (need == Cost() or ctx.meter.fits(need)):  # reuses only: free even past the budget
        for x in others:
            why = f"the long run at lr {x:g} ({x / lr:g}x the trial's): the short trials' lr need not suit it"
            rec = ctx.run(ctx.spec(with_(long.point, **{LR: x}), phase, why), prune=False)
            if rec is None:
                no_budget(ctx, phase, f"the longer run at lr {x:g}")
                break
            runs.append(rec)
    elif others:
        ev.append(f"its run at lr {', '.join(f'{x:g}' for x in others)} does not fit: {ctx.meter.describe_left()}")
    scored = [r for r in runs if r.value is not None]
    best = max(scored, key=lambda r: r.rank) if scored else None
    data = {"long_trial": long.number, "steps": steps,
            "lrs": [{"lr": r.point[LR], "value": r.value, "trial": r.number} for r in [long, *runs]]}
    if scored:
        ev.append("lr for the long run (the short trials' lr need not suit a longer one): "
                  + ", ".join(f"lr {r.point[LR]:g} -> {ctx.fmt(r.value)}" for r in [long, *runs]))
    held = lr_of(latest.point) if latest is not None and moved_lr(inc, latest) else None
    replace, line, settled = settle_lrs(ctx, final, best, held) if best is not None else (False, None, {})
    if line is not None:
        ev.append(line)
    data.update(settled)
    if replace:
        ctx.state.final = best
        ev = replaced_pick(ctx, final, ev)
        ctx.decide(phase, "final-train", "the long run at another lr scores higher", f"pick = {best.label}",
                   ev + evidence_of(ctx, best), [long, *runs], data, code="final-train-helps")
    elif final is long:
        ctx.decide(phase, "final-train", "the long run is reused" + (
            ", its run at another lr ties with it" if settled else ""), f"keep {final.label}", ev,
                   [long, *runs], data, code="final-train-reused")
    else:  # the pick is a trial (the long run scored no higher): nothing is reused, the trial's adapter is kept
        ctx.decide(phase, "final-train", "the long run at another lr does not replace the pick" + (
            ", a tie" if settled else ""),
                   f"keep {final.label}", ev, [long, *runs], data, code="final-train-no-gain")


def saved_model(rec: TrialRecord) -> str | None:
    """The folder a finished trial saved its model to (RunStore's adapter/), or None when it saved none (no
    trained evaluation point: run.json saved_model) or none its run.json vouches for (store.adapter_step, the check
    predict and a warm start make)."""
    from pathlib import Path

    from loratune.errors import UserError
    from loratune.store import RUN, RunStore, adapter_step, read_json

    if not rec.run_dir or not rec.result.best.get("step"):
        return None
    store = RunStore(Path(rec.run_dir))
    if (store.path / RUN).is_file():
        try:
            if adapter_step(read_json(store.path / RUN), store.path)[1]:
                return None
        except UserError:  # a damaged run.json vouches for nothing
            return None
    return str(store.adapter_dir)


def continue_long_run(ctx: SearchContext, s: ProtocolSettings, long: TrialRecord, final: TrialRecord) -> bool:
    """A long run shorter than the final length (the early one, capped to end by `early_long_by` of the budget)
    that was still improving at its end is trained on from its saved weights (`train.init_from`, a warm start:
    fresh optimizer and schedule) at `CONTINUE_LR_FACTOR` x its lr, for the steps it lacks of the final length,
    shortened to fit the budget left, at least `CONTINUE_MIN_RATIO` x its length. The continued run is the pick
    when it scores higher beyond the noise. False (nothing run, nothing decided) when `continue_long` is off, the
    run peaked inside its length, saved no model, or too few steps fit: the final training then runs the long
    run's other lrs (`reuse_long_run`)."""
    if not s.continue_long:
        return False
    phase = StageId.FINAL_TRAIN.value
    steps = int(long.point.get("train.max_steps") or 0)
    want = long_steps_wanted(ctx, s)
    still, frac = still_improving(long)
    weights = saved_model(long)
    least = CONTINUE_MIN_RATIO * steps
    if not steps or not still or weights is None or want - steps < least:
        return False
    lr = round3(lr_of(long.point) * CONTINUE_LR_FACTOR)
    point = with_(long.point, **{LR: lr, INIT_FROM: weights})
    more = final_length(ctx, point, want - steps, 1, least)
    if more is None:
        return False
    why = (f"the long run continued from its weights: {more} more steps ({more / steps:.2f}x its {steps}) at lr "
           f"{lr:g} with the budget left")
    rec = ctx.run(ctx.spec(with_(point, **{"train.max_steps": more}), phase, why), prune=False)
    if rec is None:
        no_budget(ctx, phase, "the continued run")
        return True
    ev = [f"{long.label} ({steps} steps, {ctx.show(long.value)}) was still improving when it ended (best at "
          f"{frac or 0:.0%}); the budget left holds {more} more steps, {more / steps:.2f}x it (at least "
          f"{CONTINUE_MIN_RATIO:g}x to be worth a restart's warmup)",
          f"started from its saved weights, a fresh schedule at lr {lr:g} ({CONTINUE_LR_FACTOR:g}x its lr: a restart "
          f"at its own peak undoes part of what it learned), early stopping on {ctx.objective.name}: "
          f"{ctx.fmt(long.value)} -> {ctx.fmt(rec.value)}; {steps + more} steps in all, the cost of {more}",
          f"the pick before it: {final.label}, {ctx.show(final.value)}"]
    noise, src = ctx.noise()
    gain = rec.value - final.value if rec.value is not None and final.value is not None else None
    data = {"long_trial": long.number, "steps": more, "from_steps": steps, "value": rec.value, "init_from": weights,
            "gain": gain, "noise": noise,
            "lrs": [{"lr": lr_of(r.point), "value": r.value, "trial": r.number} for r in (long, rec)]}
    # like a challenger, it replaces the pick only beyond the noise: a gain inside it is not told apart from none
    if rec.value is not None and (final.value is None or beyond_noise(gain, noise)):
        ctx.state.final = rec
        ctx.decide(phase, "final-train", "the continued run scores higher beyond noise", f"pick = {rec.label}",
                   ev + [f"gain {gain if gain is not None else float('nan'):+.3f} > noise {noise:.3f} ({src})"]
                   + evidence_of(ctx, rec), [long, rec], data, code="final-train-continued")
    else:
        ctx.decide(phase, "final-train", "the continued run does not score higher beyond noise", f"keep {final.label}",
                   ev + [f"gain {'?' if gain is None else f'{gain:+.3f}'} <= noise {noise:.3f} ({src}): a gain "
                         "inside the noise is not told apart from none"],
                   [long, rec], data, code="final-train-continued-no-gain")
    return True
