"""The evidence stages: seed noise, the rank sweep (lr x s held by rule), the target sweep, the arms."""

from __future__ import annotations

import math

from loratune.moves import ARMS, MOVES
from loratune.objectives import beyond_noise
from loratune.search.context import SearchContext, seed_sigma, with_
from loratune.search.space import DEFAULTS, scale_of
from loratune.search.stages import StageId
from loratune.search.state import Start
from loratune.search.trial import TrialRecord
from loratune.stepsize import scale_rule, step_size
from loratune.search.protocol.settings import LR, METHOD, ProtocolSettings, RSLORA, SEED, TARGETS
from loratune.search.protocol.common import (breakeven_cap, breakeven_note, breakeven_rank, evidence_of, gain_over,
                                             incumbent_of, like_for_like, lr_of, lr_siblings, no_budget, pruned_step,
                                             r_of, reserve, round3, same_except, set_incumbent, shape_params,
                                             whole_if_ahead, with_rank_by)


# ---------------------------------------------------------------------------------------------
# seeds, rank sweep, full fine-tuning


def stage_seeds(ctx: SearchContext, s: ProtocolSettings) -> None:
    inc = incumbent_of(ctx)
    if inc is None or ctx.state.failed or s.seeds < 2:
        return
    phase = StageId.SEEDS.value
    base_seed = DEFAULTS[SEED] if ctx.state.base_seed is None else ctx.state.base_seed  # the study's training seed
    seed0 = int(inc.point.get(SEED, base_seed))
    recs = [inc]
    ctx.prefetch([ctx.spec(with_(inc.point, **{SEED: seed0 + k}), phase, f"seed noise: seed {seed0 + k}")
                  for k in range(1, s.seeds)], reserve=reserve(ctx, phase, s))
    for k in range(1, s.seeds):
        point = with_(inc.point, **{SEED: seed0 + k})
        rec = ctx.run(ctx.spec(point, phase, f"seed noise: seed {seed0 + k}"), prune=False,
                      reserve=reserve(ctx, phase, s))
        if rec is None:
            no_budget(ctx, phase, f"seed {seed0 + k}", reserve(ctx, phase, s), point)
            break
        recs.append(rec)
    values = [r.value for r in recs if r.value is not None]
    sigma = seed_sigma(values)
    if sigma is None:
        ctx.decide(phase, "noise", "seed noise not measured", "noise from the val set's binomial SE",
                   [f"{len(values)} seed run(s)"], recs, code="seed-noise-unmeasured")
        return
    ctx.state.seed_sigma, ctx.state.seed_values = sigma, list(values)
    noise, src = ctx.noise()
    ev = [f"{ctx.objective.name} over seeds: {', '.join(ctx.fmt(v) for v in values)}; sigma {sigma:.4f}",
          f"noise threshold {noise:.3f} = {src}"]
    if len(values) < 3:
        ev.append("fewer than 3 seeds: sigma is a rough estimate (protocol 6 asks for >= 3)")
    unstable = sigma >= ctx.rule_threshold("seed_std_max")
    if not unstable:
        ctx.decide(phase, "noise", "seed noise measured", "use it as the plateau threshold", ev, recs,
                   {"sigma": sigma, "values": values, "noise": noise}, code="seed-noise-measured")
        return
    # protocol 4: results differ a lot between seeds -> lr at an unstable edge -> lower lr. Act on it
    # when the lr /2 sibling was measured (no extra trial) and scores at least the unstable point's
    # seed mean: the incumbent's own value was picked as a maximum over trials, so it overstates what
    # that lr delivers on average, and comparing the lower lr with it would be unfair to the lower lr;
    # comparing with anything less than the seed mean would trade score for steadiness unmeasured.
    ev.append(f"sigma {sigma:.4f} >= {ctx.rule_threshold('seed_std_max'):g} (rules: seed_std_max)")
    mean = sum(values) / len(values)
    lower = next((r for r in lr_siblings(ctx, inc.point)
                  if math.isclose(lr_of(r.point), round3(lr_of(inc.point) / 2), rel_tol=1e-6)), None)
    move = "keep the lr; report the spread (a lower lr is the protocol-4 remedy, not measured better here)"
    if lower is not None and lower.value is not None and lower.value >= mean:
        set_incumbent(ctx, lower)
        move = f"lower the lr: incumbent = {lower.label} (lr {lr_of(lower.point):g})"
        ev.append(f"{lower.label} at lr /2 scored {ctx.fmt(lower.value)} {ctx.op('>=')} the seed mean {ctx.fmt(mean)} "
                  f"at lr {lr_of(inc.point):g}: the steadier lr loses nothing on average")
    elif lower is not None:
        ev.append(f"{lower.label} at lr /2 scored {ctx.fmt(lower.value)} {ctx.op('<')} the seed mean {ctx.fmt(mean)} "
                  f"at lr {lr_of(inc.point):g}: the higher lr is better even on average; lr kept")
    else:
        half = round3(lr_of(inc.point) / 2)
        partial = next((r for r in ctx.records if not r.result.full_length and r.value is not None
                        and same_except(r.point, inc.point, (LR,))
                        and math.isclose(lr_of(r.point), half, rel_tol=1e-6)), None)
        ev.append(f"lr /2 = {half:g} was measured only until it was pruned ({like_for_like(ctx, partial, inc)[2]}): a "
                  "partial score is no evidence of what that lr delivers on average" if partial is not None else
                  f"lr /2 = {half:g} was not measured at this capacity")
    ctx.decide(phase, "noise", "seed-unstable: lr at an unstable edge", move, ev, recs,
               {"sigma": sigma, "values": values, "noise": noise},
               code="seed-unstable-lr-lowered" if move.startswith("lower") else "seed-unstable-lr-kept")


def stage_rank_sweep(ctx: SearchContext, s: ProtocolSettings) -> None:
    inc = incumbent_of(ctx)
    if inc is None or ctx.state.failed or inc.point.get(METHOD) == "full":
        return
    phase = StageId.RANK_SWEEP.value
    start: Start = ctx.state.start
    r0, sc = r_of(inc.point), scale_of(inc.point)
    counts = shape_params(ctx, inc)  # an older incumbent's record: per_rank from a trial of its layers that has it
    r_be = breakeven_rank(counts, r0)
    cap = start.ceiling_r
    be_cap = breakeven_cap(counts, r0) if r_be is not None else None
    be_note = breakeven_note(counts, r0) if r_be is not None else ""  # an older record's estimate, said
    be_note = f"; {be_note}" if be_note else ""
    if be_cap is not None and not s.allow_past_breakeven:  # never past the breakeven point (5.33 -> 5, not 6)
        cap = min(cap, be_cap)
    noise, src = ctx.noise()
    rule = scale_rule(s.scale_rule)
    points: list[dict] = [{"r": r0, "value": inc.value, "trial": inc.number, "rslora": bool(inc.point.get(RSLORA)),
                           "lr": lr_of(inc.point), "lr_x_s": step_size(inc.point), "note": "working point"}]
    by_breakeven = bool(be_cap) and cap == be_cap  # the sweep stops at the compute breakeven, not the ceiling
    best_rec, r, plateau, stop_why = inc, r0, None, ""
    for _ in range(s.max_rank_points):
        nxt = r * s.rank_step
        if nxt > cap:
            if r < cap:
                nxt = cap
            else:
                # one breakeven number: the cap is the last rank at or below the breakeven point, r_be the first
                # rank at or past it (the rank lora-vs-full names); calling both "the breakeven rank" read 10 and 11
                stop_why = (f"next rank {nxt} is past rank {cap}, the highest at or below the compute breakeven "
                            f"(compute-breakeven rank {r_be}, capacity ceiling {start.ceiling_r}{be_note})" if by_breakeven
                            else f"next rank {nxt} is past the capacity ceiling {cap}"
                            + (f" (compute-breakeven rank {r_be}{be_note})" if r_be is not None else ""))
                break
        point = with_rank_by(inc.point, nxt, rule.rule)  # every rank at the working point's lr x s
        rec = ctx.run(ctx.spec(point, phase, f"rank sweep r={nxt} (lr x s {step_size(point):.3g} held: "
                                             f"{rule.rule.value})"),
                      reserve=reserve(ctx, phase, s))
        if rec is None:
            no_budget(ctx, phase, f"rank {nxt}", reserve(ctx, phase, s), point)
            stop_why = "budget"
            break
        rec = whole_if_ahead(ctx, rec, best_rec, noise, phase, f"rank sweep r={nxt}", reserve(ctx, phase, s))
        if rec is None:
            no_budget(ctx, phase, f"rank {nxt} at full length", reserve(ctx, phase, s), point)
            stop_why = "budget"
            break
        _, b, note = like_for_like(ctx, rec, best_rec)  # a pruned rank: its partial score at its own step
        gain, _ = gain_over(ctx, rec, best_rec)
        points.append({"r": nxt, "value": rec.value, "trial": rec.number, "rslora": bool(point.get(RSLORA)),
                       "lr": lr_of(point), "lr_x_s": step_size(point), "gain": gain,
                       **({"pruned_step": pruned_step(rec), "compared_with": b} if note else {})})
        if beyond_noise(gain, noise):
            ctx.decide(phase, "rank", f"r={nxt} gains {gain:+.3f}", "keep sweeping",
                       [f"r {r} -> {nxt}: {ctx.fmt(best_rec.value)} -> {ctx.fmt(rec.value)}, gain {gain:+.3f} > "
                        f"threshold {noise:.3f} ({src})"], [best_rec, rec], code="rank-gain")
            best_rec, r = rec, nxt
            continue
        plateau = r
        ctx.decide(phase, "rank", f"plateau at r={r}", f"keep r={r}",
                   [f"r {r} -> {nxt}: " + (f"{note}, gain at equal steps " if note else
                                           f"{ctx.fmt(best_rec.value)} -> {ctx.fmt(rec.value)}, gain ")
                    + f"{gain if gain is None else round(gain, 4)} <= threshold {noise:.3f} ({src})"], [best_rec, rec],
                   code="rank-plateau")
        break
    if stop_why and stop_why != "budget":
        ctx.decide(phase, "rank", "sweep stopped", f"keep r={r}",
                   [stop_why, "not trained past the compute breakeven" if by_breakeven else
                    "not trained past the capacity ceiling"], [best_rec], code="rank-sweep-capped")
    if len(points) > 1:  # protocol 6: the rule that held the effective step size, recorded
        ctx.decide(phase, "step-size", f"lr x s held at {step_size(inc.point):.3g} over the sweep",
                   f"rule {rule.rule.value}: {rule.doc}",
                   [f"r={p['r']}: lr {p['lr']:g} x s = {p['lr_x_s']:.3g}" + (" (rsLoRA)" if p["rslora"] else "")
                    for p in points]
                   + ["a rank sweep that changes r without holding lr x s compares learning rates, not ranks "
                      "(protocol 6)"], [inc] + [x for x in ctx.records if x.number in {p["trial"] for p in points[1:]}],
                   {"rule": rule.rule.value, "points": [{k: p[k] for k in ("r", "lr", "lr_x_s", "rslora")}
                                                        for p in points]}, code=rule.code)
    if best_rec is not inc:
        set_incumbent(ctx, best_rec)
    ctx.state.rank_sweep = {"points": points, "plateau_r": plateau, "chosen_r": r_of(best_rec.point),
                               "threshold": noise, "threshold_source": src, "breakeven_r": r_be,
                               "ceiling_r": start.ceiling_r, "scale": sc, "rule": rule.doc,
                               "scale_rule": rule.rule.value, "step_size_code": rule.code,
                               "stopped": stop_why or None}


def stage_target_sweep(ctx: SearchContext, s: ProtocolSettings) -> None:
    """The other capacity axis at the working point: the same rank, scale and lr on more modules
    (protocol 1: Q/V, then K/O, then the FFN). Kept only when it gains beyond the noise band
    (objectives.beyond_noise, the same rule as the rank sweep); the parameter cost is part of the evidence."""
    inc = incumbent_of(ctx)
    if inc is None or ctx.state.failed or inc.point.get(METHOD) == "full" or not s.target_sweep:
        return
    phase = StageId.TARGET_SWEEP.value
    now = [str(t) for t in inc.point.get(TARGETS, [])]
    if now == list(s.target_sweep):
        ctx.decide(phase, "targets", "already on every module set of the sweep", "keep targets", [str(now)], [inc],
                   code="targets-already")
        return
    noise, src = ctx.noise()
    arms: list[TrialRecord] = []
    for f in s.target_lr_factors:  # protocol 1: capacities are compared over a small lr grid, not at one lr
        if arms and beyond_noise(max((a.value or 0.0) for a in arms) - (inc.value or 0.0), noise):
            break  # the wider module set already gains beyond noise: no further lr needed
        point = with_(inc.point, **{TARGETS: list(s.target_sweep), LR: round3(lr_of(inc.point) * f)})
        rec = ctx.run(ctx.spec(point, phase, f"target sweep: {','.join(s.target_sweep)} at r={r_of(inc.point)}, "
                               f"{f:g}x lr"), reserve=reserve(ctx, phase, s))
        if rec is None:
            no_budget(ctx, phase, f"the target sweep at {f:g}x lr", reserve(ctx, phase, s), point)
            break
        arms.append(rec)
    if not arms:
        return
    rec = max(arms, key=lambda r: r.rank)
    rec = whole_if_ahead(ctx, rec, inc, noise, phase, "target sweep", reserve(ctx, phase, s)) or rec
    gain, note = gain_over(ctx, rec, inc)
    pa, pb = inc.result.params.get("adapter"), rec.result.params.get("adapter")
    ev = [f"{','.join(now)} -> {','.join(s.target_sweep)} at r={r_of(inc.point)}: {ctx.fmt(inc.value)} -> "
          f"{ctx.fmt(rec.value)} (best of lr {', '.join(f'{lr_of(a.point):g}: {ctx.fmt(a.value)}' for a in arms)}), "
          + (f"{note}, gain at equal steps " if note else "gain ")
          + f"{gain if gain is None else round(gain, 4)} vs threshold {noise:.3f} ({src})",
          f"LoRA parameters {pa:,} -> {pb:,}" if pa and pb else "parameter counts unknown"]
    ev += evidence_of(ctx, rec)
    if beyond_noise(gain, noise) and not note:
        set_incumbent(ctx, rec)
        ctx.decide(phase, "targets", f"{','.join(s.target_sweep)} gains {gain:+.3f}", f"incumbent = {rec.label}", ev,
                   [inc, rec], {"gain": gain, "noise": noise}, code="targets-gain")
    else:
        ctx.decide(phase, "targets", "no gain beyond noise", f"keep {','.join(now)}", ev, [inc, rec],
                   {"gain": gain, "noise": noise}, code="targets-no-gain")


def stage_arms(ctx: SearchContext, s: ProtocolSettings) -> None:
    """LoRA+ and DoRA (moves.ARMS), one after the other from the incumbent, each over its own small lr grid
    (an arm changes the effective step: LoRA+ multiplies B's lr by 16, DoRA adds a trained magnitude), the
    next lr only when the first did not already gain beyond noise. Kept when the best of its grid gains at
    least the noise threshold, like the rank and target sweeps."""
    inc = incumbent_of(ctx)
    if not s.arms or inc is None or ctx.state.failed or inc.point.get(METHOD) == "full":
        return
    phase = StageId.ARMS.value
    for arm_id in s.arms:
        arm, inc = ARMS[arm_id], incumbent_of(ctx)
        mv = MOVES[arm.move]
        base = mv.on(inc.point)
        if base is None:
            ctx.decide(phase, "arm", f"{mv.text} already on", "keep", [f"{inc.label} already uses {mv.text}"], [inc],
                       code="arm-already-on")
            continue
        noise, src = ctx.noise()
        runs: list[TrialRecord] = []
        for f in arm.lr_factors:
            if runs and beyond_noise(max((r.value or 0.0) for r in runs) - (inc.value or 0.0), noise):
                break  # already gains beyond noise at the first lr
            point = with_(base, **{LR: round3(lr_of(inc.point) * f)})
            rec = ctx.run(ctx.spec(point, phase, f"arm {mv.text} at {f:g}x lr"), reserve=reserve(ctx, phase, s))
            if rec is None:
                no_budget(ctx, phase, f"{mv.text} at {f:g}x lr", reserve(ctx, phase, s), point)
                break
            runs.append(rec)
        if not runs:
            return
        best = max(runs, key=lambda r: r.rank)
        best = whole_if_ahead(ctx, best, inc, noise, phase, f"arm {mv.text}", reserve(ctx, phase, s)) or best
        gain, note = gain_over(ctx, best, inc)
        ev = [f"{mv.text} ({arm.doc}) from {inc.label}: {ctx.fmt(inc.value)} -> {ctx.fmt(best.value)} (best of lr "
              + ", ".join(f"{lr_of(r.point):g}: {ctx.fmt(r.value)}" for r in runs)
              + (f"), {note}, gain at equal steps " if note else "), gain ")
              + f"{gain if gain is None else round(gain, 4)} vs threshold {noise:.3f} ({src})"]
        ev += evidence_of(ctx, best)
        data = {"arm": arm.id, "move": mv.id, "gain": gain, "noise": noise,
                "lrs": [{"lr": lr_of(r.point), "value": r.value, "trial": r.number} for r in runs]}
        if beyond_noise(gain, noise) and not note:
            set_incumbent(ctx, best)
            ctx.decide(phase, "arm", f"{mv.text} gains {gain:+.3f}", f"incumbent = {best.label}", ev, [inc, *runs],
                       data, code="arm-gain")
        else:
            ctx.decide(phase, "arm", f"{mv.text}: no gain beyond noise", f"keep {inc.label}", ev, [inc, *runs], data,
                       code="arm-no-gain")
