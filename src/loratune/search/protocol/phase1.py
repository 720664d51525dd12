"""Phase 1: the lr centre (probe), the lr grid, the capacity verdict -> action policy, the
minimal-intervention pair and the capacity moves (the rule table's moves, applied from `loratune.moves`)."""

from __future__ import annotations

from dataclasses import dataclass

from loratune.config import within_limits
from loratune.moves import MOVES, Move, MoveContext, move
from loratune.objectives import beyond_noise
from loratune.search.budget import format_amount
from loratune.search.context import SearchContext, with_
from loratune.search.stages import StageId
from loratune.search.state import Start
from loratune.search.trial import TrialRecord
from loratune.stepsize import describe_change, scale_rule, step_size
from loratune.search.protocol.settings import (LR, LR_VERDICTS, PROBE_KEEPS_GRID_TRIALS, PROBE_MAX_SHARE_OF_TRIAL,
                                               PROBE_MIN_TRIALS_BUDGET, ProtocolSettings, R, SLOW_VERDICTS)
from loratune.search.protocol.common import (evidence_of, incumbent_of, lr_of, no_budget, r_of, reserve, round3,
                                             set_incumbent, untrained_score)


# ---------------------------------------------------------------------------------------------
# phase 1: lr grid


def clamped(asked: float, lr: float) -> str:
    """What a trial's purpose adds when its lr stopped at the config's lr limit (config.within_limits)."""
    return f" (lr {asked:g} clamped to the config's lr limit {lr:g})" if lr != asked else ""


def stage_lr_probe(ctx: SearchContext, s: ProtocolSettings) -> None:
    """The lr centre from short runs (a coarse, run-based stand-in for an lr range test): the start
    config at the assessment's lr for a quarter of a trial, then x4 steps up while the metric rises
    and the diagnosis shows no collapse or divergence (down when the first one collapses). The best
    probe's lr becomes the centre of the phase-1 grid, whose {0.5, 1, 2}x brackets it at full length."""
    start: Start = ctx.state.start
    steps = int(ctx.state.trial_steps or 0)
    phase = StageId.LR_PROBE.value
    if not s.lr_probe or not steps:
        return
    p_steps = max(s.lr_probe_min_steps, int(round(steps * s.lr_probe_fraction)))
    b = ctx.meter.budget
    if b.kind == "trials" and b.limit < PROBE_MIN_TRIALS_BUDGET:
        ctx.decide(phase, "lr-probe", "probe skipped", f"lr centre {start.lr_centre:g} from phase 0",
                   [f"a budget of {int(b.limit)} trials counts each short probe as a whole trial"],
                   code="lr-probe-skipped")
        return
    if p_steps > steps * PROBE_MAX_SHARE_OF_TRIAL:
        ctx.decide(phase, "lr-probe", "trials too short to probe", f"lr centre {start.lr_centre:g} from phase 0",
                   [f"a probe of {p_steps} steps would be more than half of a {steps}-step trial"],
                   code="lr-probe-too-short")
        return

    def bad(rec: TrialRecord | None) -> bool:
        return rec is None or rec.value is None or rec.result.verdict in LR_VERDICTS

    def probe(lr: float) -> TrialRecord | None:
        asked, lr = round3(lr), within_limits(LR, round3(lr))  # x4 up from near the config's lr limit stops at it
        point = with_(start.point, **{LR: lr, "train.max_steps": p_steps})
        return ctx.run(ctx.spec(point, phase, f"lr probe: {p_steps} steps at lr {lr:g}" + clamped(asked, lr)),
                       reserve=reserve(ctx, phase, s))

    first = probe(start.lr_centre)
    if first is None:
        no_budget(ctx, phase, "the lr probe")
        return
    probes = [first]
    factor = 1 / s.lr_probe_factor if bad(first) else s.lr_probe_factor
    for _ in range(s.lr_probe_max_moves):
        last = probes[-1]
        grid_two = ctx.estimate(start.point)
        need = ctx.estimate(last.point) + grid_two * PROBE_KEEPS_GRID_TRIALS
        if not ctx.meter.fits(need):
            ctx.decide(phase, "lr-probe", "stop probing", "keep the budget for full-length trials",
                       [f"another probe and two grid trials need ~{format_amount(ctx.meter.budget.kind, need.amount(ctx.meter.budget.kind))}"
                        f"; {ctx.meter.describe_left()}"], [last], code="lr-probe-stopped")
            break
        if within_limits(LR, round3(lr_of(last.point) * factor)) == lr_of(last.point):
            ctx.decide(phase, "lr-probe", "stop probing", "the config's lr limit is reached",
                       [f"lr {lr_of(last.point):g} x {factor:g} clamps to lr {lr_of(last.point):g} itself"], [last],
                       code="lr-probe-at-limit")
            break
        rec = probe(lr_of(last.point) * factor)
        if rec is None:
            break
        probes.append(rec)
        if factor > 1 and (bad(rec) or (rec.value or 0) <= (last.value or 0)):
            break  # the metric turned (or the run collapsed): the centre is below
        if factor < 1 and not bad(rec):
            break  # the first lr that does not collapse
    # a probe that collapsed or diverged learned nothing to centre on, whatever its score: when none learned, the
    # centre stays phase 0's (protocol 3), never the lowest of equal chance-level scores
    good = [r for r in probes if not bad(r)]
    if not good:
        ctx.decide(phase, "lr-probe", "no probe learned", f"lr centre {start.lr_centre:g} from phase 0",
                   [line for r in probes for line in evidence_of(ctx, r, 1)], probes, code="lr-probe-no-learner")
        return
    top = max(good, key=lambda r: r.value)
    noise, src = ctx.noise()
    # protocol 3: "pick a value safely below where the loss turns up": the lowest lr within noise of the best
    best = min((r for r in good if r.value >= top.value - noise), key=lambda r: lr_of(r.point))
    centre = lr_of(best.point)
    ctx.state.lr_centre = centre
    rows = [f"lr {lr_of(r.point):g}: {ctx.show(r.value)} after {r.result.steps_done} steps "
            f"({r.result.verdict})" for r in probes]
    if best is not top:
        rows.append(f"lr {lr_of(top.point):g} scored highest, but lr {centre:g} is within noise {noise:.3f} ({src}) of "
                    "it: the centre is the lower one, safely below where the metric turns (protocol 3)")
    ctx.decide(phase, "lr-probe", f"lr centre {centre:g}", f"phase-1 grid around {centre:g}",
               rows + [f"phase 0 proposed {start.lr_centre:g}; protocol 3: the centre moves with model size, scale, "
                       "batch and budget; short runs favour larger lrs, so the grid also tries 0.5x"], probes,
               {"probes": {str(lr_of(r.point)): r.value for r in probes}, "steps": p_steps, "centre": centre},
               code="lr-probe-centre")


def stage_lr_grid(ctx: SearchContext, s: ProtocolSettings) -> None:
    start: Start = ctx.state.start
    centre = float(ctx.state.lr_centre or start.lr_centre)
    phase = StageId.LR_GRID.value
    done: dict[float, TrialRecord] = {}
    for f in s.lr_factors:
        if f > 1 and 1.0 in done and (done[1.0].value is None or done[1.0].result.verdict in LR_VERDICTS):
            ctx.decide(phase, "lr-grid-skip", f"{f:g}x not needed", f"skip lr {round3(centre * f):g}",
                       [f"lr 1x ({round3(centre):g}) already reads {done[1.0].result.verdict} "
                        f"({ctx.show(done[1.0].value)}): a larger lr can only be worse (protocol 4: lr too large -> lr /2)"],
                       [done[1.0]], code="lr-grid-skip-up")
            continue
        if f < 1 and s.skip_dominated_lr and 1.0 in done and 2.0 in done:
            lo, hi = done[1.0].value, done[2.0].value
            noise, src = ctx.noise()
            if lo is not None and hi is not None and beyond_noise(hi - lo, noise):
                ctx.decide(phase, "lr-grid-skip", f"{f:g}x not needed", f"skip lr {round3(centre * f):g}",
                           [f"lr 2x beat 1x by {hi - lo:+.3f} > noise {noise:.3f} ({src}): the metric rises with lr "
                            "here, so a smaller lr cannot be the best of the grid"], [done[1.0], done[2.0]],
                           code="lr-grid-skip-down")
                continue
        lr = within_limits(LR, round3(centre * f))
        if f != 1 and lr in {lr_of(r.point) for r in done.values()}:
            ctx.decide(phase, "lr-grid-skip", f"{f:g}x not needed", f"skip lr {round3(centre * f):g}",
                       [f"lr {round3(centre * f):g} clamps to the config's lr limit {lr:g}, already run"],
                       [r for r in done.values() if lr_of(r.point) == lr], code="lr-grid-skip-at-limit")
            continue
        point = with_(start.point, **{LR: lr})
        rec = ctx.run(ctx.spec(point, phase, f"start config at {f:g}x the lr centre" + clamped(round3(centre * f), lr)),
                      reserve=reserve(ctx, phase, s))
        if rec is None:
            no_budget(ctx, phase, f"lr {f:g}x", reserve(ctx, phase, s), point)
            break
        done[f] = rec
    inc = ctx.best(list(done.values()))
    if inc is None and done:  # every grid point failed or diverged: protocol 4, lr /10
        point = MOVES["lr-tenth"].on(with_(start.point, **{LR: centre}))
        rec = ctx.run(ctx.spec(point, phase, "every grid point failed: lr /10"))
        inc = rec if rec is not None and rec.value is not None else None
    if inc is None:
        ctx.state.failed = True
        ctx.decide(phase, "lr-grid", "no trial learned", "stop",
                   [line for r in done.values() for line in evidence_of(ctx, r, 2)] or ["no trial could run"],
                   code="lr-grid-failed")
        return
    set_incumbent(ctx, inc)
    rows = [f"lr {lr_of(r.point):g}: {ctx.show(r.value)} ({r.result.verdict})" for r in done.values()]
    ctx.decide(phase, "lr-grid", f"best lr {lr_of(inc.point):g}", f"incumbent = {inc.label}",
               rows + evidence_of(ctx, inc), list(done.values()),
               {"grid": {str(lr_of(r.point)): r.value for r in done.values()}, "centre": centre}, code="lr-grid-best")
    untrained = untrained_score(inc)  # every grid trial starts from the same model: the bar (trial.FIRST_TRAINED_STEP)
    noise, src = ctx.noise()
    if untrained is not None and all(r.value is None or not beyond_noise(r.value - untrained, noise) for r in done.values()):
        ctx.decide(phase, "lr-grid", "no grid lr beat the untrained model beyond noise",
                   f"incumbent = {inc.label}, a trial no better than the untrained model",
                   [f"the untrained model (step 0) scored {ctx.fmt(untrained)}; the grid's trained bests: "
                    + ", ".join(f"lr {lr_of(r.point):g}: {ctx.fmt(r.value)}" for r in done.values())
                    + f"; noise {noise:.3f} ({src})"], list(done.values()),
                   {"untrained": untrained, "noise": noise,
                    "gains": {str(lr_of(r.point)): (None if r.value is None else r.value - untrained)
                              for r in done.values()}}, code="lr-grid-no-gain-over-untrained")


# ---------------------------------------------------------------------------------------------
# phase 1: capacity


@dataclass(frozen=True)
class VerdictAction:
    """A row of a verdict -> action policy: which diagnosis verdicts it covers, what the stage does, and
    the decision it records (code, verdict text with {v} for the verdict, move text)."""

    verdicts: tuple[str, ...]
    action: str
    code: str
    verdict: str
    move: str
    secondary: bool = False  # also when one of the verdicts fired beside another primary verdict
    note: str = ""  # an evidence line the decision adds

    def matches(self, result) -> bool:
        return result.verdict in self.verdicts or (self.secondary and any(result.fired(x) for x in self.verdicts))


# phase 1 (protocol 3 and 5): the incumbent's verdict -> what the capacity stage does, first match wins
CAPACITY_POLICY: tuple[VerdictAction, ...] = (
    VerdictAction(("healthy",), "keep", "capacity-adequate", "capacity adequate", "keep capacity; go to phase 2"),
    VerdictAction(LR_VERDICTS, "keep", "capacity-lr-problem", "{v}: an optimization problem",
                  "capacity kept; phase 2 fixes the lr", note="protocol 3: do not touch capacity to fix an lr problem"),
    VerdictAction(("overfit-capacity",), "lower", "capacity-overfit", "overfit (capacity)",
                  "lower capacity one knob at a time"),
    # ambiguous slow learning: a single curve cannot tell a capacity limit from a too-small lr (protocol 5)
    VerdictAction(SLOW_VERDICTS, "pair", "", "", "", secondary=True),
)


CAPACITY_DEFAULT = VerdictAction((), "keep", "capacity-no-limit", "{v}: no capacity limit shown",
                                 "keep capacity; go to phase 2")


def stage_capacity(ctx: SearchContext, s: ProtocolSettings) -> None:
    inc = incumbent_of(ctx)
    if inc is None or ctx.state.failed:
        return
    phase = StageId.CAPACITY.value
    v = inc.result.verdict
    row = next((x for x in CAPACITY_POLICY if x.matches(inc.result)), CAPACITY_DEFAULT)
    if row.action == "pair":
        binding = run_pair(ctx, s) if s.pair else "unaffordable"
        if binding == "capacity":  # the knob the metric is sensitive to, either way (protocol 5): r x2 hurt -> down
            run_capacity_moves(ctx, s, down=(ctx.state.pair or {}).get("r_delta", 0.0) < 0)
        elif binding == "unaffordable" and v == "underfit-capacity":
            ctx.decide(phase, "capacity-verdict", "underfit (capacity), unconfirmed",
                       "one capacity step (r x2) without the pair",
                       ["the pair experiment is not affordable: following the single curve's verdict, which cannot "
                        "separate a capacity limit from a too-small lr (protocol 5)"], [inc],
                       code="capacity-underfit-unconfirmed")
            run_capacity_moves(ctx, s, down=False, max_moves=1)
        return
    ctx.decide(phase, "capacity-verdict", row.verdict.format(v=v), row.move,
               evidence_of(ctx, inc) + ([row.note] if row.note else []), [inc], {"verdict": v, "action": row.action},
               code=row.code)
    if row.action == "lower":
        run_capacity_moves(ctx, s, down=True)


def run_pair(ctx: SearchContext, s: ProtocolSettings) -> str:
    """The minimal-intervention pair from the incumbent: only lr x2, only r x2, same budget (protocol 5).
    Returns the binding knob: capacity | optimization | neither | unaffordable."""
    phase = StageId.PAIR.value
    inc = incumbent_of(ctx)
    start: Start = ctx.state.start
    a_point = MOVES["lr-x2"].on(inc.point)  # the minimal intervention: one move each, the same rows the
    b_point = MOVES["r-x2"].on(inc.point, MoveContext(scale_rule=s.move_scale_rule))  # diagnosis prescribes
    if r_of(b_point) > start.ceiling_r:
        ctx.decide(phase, "pair", "rank arm above the capacity ceiling", "no pair; rank kept",
                   [f"r x2 = {r_of(b_point)} > ceiling {start.ceiling_r} (phase 0)"], [inc],
                   code="pair-rank-above-ceiling")
        return "neither"
    known = {r.key for r in ctx.records if r.result.full_length}  # a pruned trial is trained again, whole
    new = [p for p in (inc.point, a_point, b_point) if ctx.spec(p, phase).key not in known]
    est = ctx.estimate(inc.point)
    need = est * len(new)
    held = reserve(ctx, phase, s)
    if not ctx.meter.fits(need, held):
        kind = ctx.meter.budget.kind
        ctx.decide(phase, "pair", "pair not affordable", "follow the prior: keep rank, tune lr in phase 2",
                   [f"the pair needs {len(new)} new trial(s) (~{format_amount(kind, need.amount(kind))}); "
                    f"{ctx.meter.describe_left()}, of which ~{format_amount(kind, held.amount(kind))} is held back "
                    "for the higher-priority stages",
                    "protocol 5 prior: on classification with a trained head rank seldom binds while lr and "
                    "training length often do; a single curve cannot tell them apart, and this was not tested"],
                   [inc], code="pair-unaffordable")
        return "unaffordable"
    arms = [ctx.spec(a_point, phase, "pair: only lr x2"),
            ctx.spec(b_point, phase, f"pair: only r x2 (lr x s held: {s.move_scale_rule})")]
    ctx.prefetch(arms, reserve=reserve(ctx, phase, s))  # independent: workers may train one meanwhile
    if not inc.result.full_length:  # the deltas are from the incumbent: a pruned one is trained again, whole
        whole = ctx.run(ctx.spec(inc.point, phase, "pair: the pruned incumbent at full length"), full=True)
        if whole is not None and whole.value is not None:
            inc = whole
            set_incumbent(ctx, whole)
    a = ctx.run(arms[0], full=True)  # the deltas compare trials of one length: unpruned, a pruned record not reused
    b = ctx.run(arms[1], full=True)
    if (not inc.result.full_length or a is None or b is None or a.value is None or b.value is None
            or inc.value is None):
        ctx.decide(phase, "pair", "pair incomplete", "follow the prior: keep rank, tune lr in phase 2",
                   [f"lr arm: {a.label if a else 'not run'}, rank arm: {b.label if b else 'not run'}"
                    + ("" if inc.result.full_length else f"; the incumbent {inc.label} was pruned and not trained "
                       "again: no comparison at one length")], [inc], code="pair-incomplete")
        return "unaffordable"
    dl, dr = a.value - inc.value, b.value - inc.value
    noise, src = ctx.noise()
    ratio = ctx.rule_threshold("binding_ratio_min")  # the compare rules' own ratio, as the study sets it (--thresholds)
    cmp = ctx.runner.compare([inc.run_dir, a.run_dir, b.run_dir]) or {}
    fired = {f["rule_id"]: f for f in cmp.get("findings", [])}
    if "capacity-bound" in fired:
        binding, how = "capacity", "compare: capacity-bound fired"
    elif "optimization-bound" in fired:
        binding, how = "optimization", "compare: optimization-bound fired"
    elif not beyond_noise(max(abs(dl), abs(dr)), noise):  # the one rule: equal to the band is within it
        binding, how = "neither", f"both |deltas| <= noise {noise:.3f}"
    elif abs(dr) >= ratio * abs(dl):
        binding, how = "capacity", f"|r delta| >= {ratio:g} x |lr delta| (binding_ratio_min)"
    elif abs(dl) >= ratio * abs(dr):
        binding, how = "optimization", f"|lr delta| >= {ratio:g} x |r delta| (binding_ratio_min)"
    else:
        binding = "capacity" if abs(dr) > abs(dl) else "optimization"
        how = f"both knobs matter (ratio < {ratio:g}, binding_ratio_min); following the larger delta"
    ctx.state.pair = {"from": inc.number, "lr_trial": a.number, "r_trial": b.number,
                         "lr": [lr_of(inc.point), lr_of(a.point)], "r": [r_of(inc.point), r_of(b.point)],
                         "base": inc.value, "lr_value": a.value, "r_value": b.value,
                         "lr_delta": dl, "r_delta": dr, "noise": noise, "noise_source": src,
                         "binding": binding, "how": how, "compare": cmp.get("findings", []),
                         "compare_noise": cmp.get("noise"), "compare_noise_source": cmp.get("noise_source"),
                         "step_size": describe_change(inc.point, b.point, s.move_scale_rule)}
    move = "keep the incumbent"
    if binding == "capacity" and beyond_noise(dr, noise):
        set_incumbent(ctx, b)
        move = f"follow the rank: incumbent = {b.label}"
    elif binding == "capacity" and dr < 0:
        move = "follow the rank: r x2 hurt; capacity steps down"
    elif binding == "optimization" and dl > 0:
        set_incumbent(ctx, a)
        move = f"follow the lr: incumbent = {a.label}; phase 2 keeps stepping lr"
    elif binding == "optimization":
        move = "follow the lr: x2 hurt; phase 2 steps lr the other way"
    elif binding == "neither":
        move = "neither knob moved the metric beyond noise: keep rank (prior), tune lr in phase 2"
    ev = [f"from {inc.label} ({ctx.show(inc.value)}, diagnosis {inc.result.verdict})",
          f"only lr x2 ({lr_of(inc.point):g} -> {lr_of(a.point):g}), {a.label}: {ctx.fmt(a.value)}, delta {dl:+.3f}",
          f"only r x2 ({r_of(inc.point)} -> {r_of(b.point)}, lr x s held at {step_size(b.point):.3g} by "
          f"{scale_rule(s.move_scale_rule).doc}), {b.label}: {ctx.fmt(b.value)}, delta {dr:+.3f}",
          f"noise {noise:.3f} ({src})", how]
    ev += [f"compare: {f['rule_id']}: {f['verdict']}" for f in cmp.get("findings", [])]
    ctx.decide(phase, "pair", f"binding knob: {binding}", move, ev, [inc, a, b], ctx.state.pair, code=f"pair-{binding}")
    return binding


def capacity_moves(down: bool) -> tuple[Move, ...]:
    """The capacity moves the diagnosis prescribes, in its order: `overfit-capacity`'s moves to lower
    capacity, `underfit-capacity`'s to raise it (rules table -> moves table; the protocol adds none)."""
    from loratune.rules import rule_by_id

    rule = rule_by_id("overfit-capacity" if down else "underfit-capacity")
    return tuple(m for m in (move(x) for x in rule.moves) if m.actionable)


def run_capacity_moves(ctx: SearchContext, s: ProtocolSettings, *, down: bool, max_moves: int | None = None) -> None:
    phase = StageId.CAPACITY.value
    start: Start = ctx.state.start
    tried = 0
    limit = max_moves if max_moves is not None else s.max_capacity_moves
    inc = incumbent_of(ctx)
    rule = s.move_scale_rule
    mc = MoveContext(ceiling_r=start.ceiling_r, scale_rule=rule)
    # every lowering move is listed (one that does not apply says so); a raising move only where it applies
    # to the incumbent as the moves start, except the rank (its ceiling is worth saying)
    queue = [m for m in capacity_moves(down) if down or m.knob == R or m.on(inc.point, mc) is not None]
    while queue and tried < limit:
        mv = queue.pop(0)
        name = mv.text
        inc = incumbent_of(ctx)
        point = mv.on(inc.point, mc)
        if point is None:
            ctx.decide(phase, "capacity-move", f"{name}: not applicable", "next knob",
                       [f"{name} from {inc.label} is out of range (ceiling r={start.ceiling_r}) or already there"], [inc],
                       code="capacity-move-not-applicable")
            continue
        held = reserve(ctx, phase, s)
        rec = ctx.run(ctx.spec(point, phase, f"capacity move: {name}"), reserve=held)
        if rec is None:
            no_budget(ctx, phase, f"capacity move {name}", held)
            return
        tried += 1
        noise, src = ctx.noise()
        gain = (rec.value - inc.value) if rec.value is not None and inc.value is not None else None
        accept = gain is not None and (gain > 0 if down else bool(beyond_noise(gain, noise)))
        accept_when = "any gain (less capacity)" if down else f"gain > noise {noise:.3f} ({src})"
        ev = [f"{name} from {inc.label}: {ctx.fmt(inc.value)} -> {ctx.fmt(rec.value)} "
              f"(gain {gain:+.3f})" if gain is not None else f"{name}: no result", f"accept when {accept_when}"]
        ev += evidence_of(ctx, rec)
        data = {"gain": gain, "noise": noise, "move": mv.id}
        if r_of(point) != r_of(inc.point):
            data["step_size"] = describe_change(inc.point, point, rule)
            ev.insert(1, f"lr x s held at {step_size(point):.3g}: {data['step_size']['doc']} "
                         f"[{data['step_size']['code']}]")
        if accept:
            set_incumbent(ctx, rec)
            ctx.decide(phase, "capacity-move", f"{name} helps", f"incumbent = {rec.label}", ev, [inc, rec], data,
                       code="capacity-move-kept")
            adequate = rec.result.verdict == "healthy" or (down and rec.result.verdict != "overfit-capacity")
            if adequate:
                ctx.decide(phase, "capacity-verdict", "capacity adequate", "go to phase 2", evidence_of(ctx, rec), [rec],
                           code="capacity-adequate")
                return
        else:
            ctx.decide(phase, "capacity-move", f"{name} does not help", "keep the incumbent; next knob", ev,
                       [inc, rec], data, code="capacity-move-rejected")
