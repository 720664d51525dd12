"""Grid, random, TPE and TPE + Hyperband search over the same space, through Optuna's samplers, with
the same budget accounting, trial length, pruning and storage as the protocol (protocol section 7).

Each step asks the study's sampler for a trial, lets the space suggest every knob (`space.suggest`),
turns the values into config overrides and runs them with `ctx.run`: same `Meter`, same `Watch`
(pruning of clearly losing trials, budget stop), same run directories. The space holds the training
length too (1-8x a trial), as the protocol's final training does; a draw too long for the budget left
is marked failed and drawn again. The loop stops when a trial of the planned length no longer fits the
budget (or the grid is exhausted). The pick is the best val macro-F1.

`prepare_yardstick` sets the study's sampler (and pruner) up before the loop and records how:

- TPE (`tpe`, `tpe-hyperband`) starts with random trials before its model guides the draws; their
  number is sized to the budget (`startup_trials`: at most a third of the trials that fit, counted at the
  space's expected trial length, the mean cost over the length knob's choices, and at most
  MAX_STARTUP_TRIALS), decision `tpe-startup`.
- `tpe-hyperband` adds Optuna's `HyperbandPruner` (multi-fidelity, decision `hyperband-pruner`). Its
  resource is optimizer steps *within* a trial: every eval point a trial reports (`trial.report(value,
  step)` in `SearchContext._on_eval`) is judged against the trials of its bracket that reached the same
  rung, and a trial outside the top 1/HYPERBAND_REDUCTION stops there through the `Watch` (decision
  `trial-pruned-hyperband`; the run ends as interrupted with `pruned by tune: hyperband: ...`, its best
  adapter saved, the Optuna trial PRUNED). The length knob stays in the space as for the other samplers:
  it sets how far a trial may run (its `train.max_steps`, with the lr schedule over that length), and
  Hyperband cuts it short. So rungs start at the first eval point of a 1x trial (min_resource) and end at
  the longest draw (max_resource = 8x a trial), and a long draw is compared at a rung with shorter ones
  at the same step even though its schedule is less far along. The Watch's own rules (behind the best,
  a diverged diagnosis, the budget) keep applying on top; a pruned trial is charged what it trained.
"""

from __future__ import annotations

import warnings
from typing import Any

from loratune.config import SEED_MAX
from loratune.errors import UserError
from loratune.search.budget import format_amount
from loratune.search.context import SearchContext
from loratune.search.space import SearchSpace, to_overrides

STRATEGIES = ("protocol", "grid", "random", "tpe", "tpe-hyperband")
MAX_MISSES = 50  # draws in a row whose training length does not fit the budget left before the search stops

# TPE's random start-up trials, sized to the budget (issue 15): at most 1/STARTUP_SHARE of the trials
# that fit are random, so at least two thirds of a small budget are guided by the model. The trials that fit
# are counted at the space's expected trial length (`expected_trial_cost`: a random draw takes each of the
# length knob's 1-8x choices alike, 3.75x a trial on average), not at 1x: counted at 1x, a 10,000-example
# budget "held" 13 trials and got 4 start-up draws, while the studies trained 5-7 trials, 56-78% of them random.
STARTUP_SHARE = 3
# What TPE would like before its model guides: it splits the trials so far into good (the top 10%, at least
# one) and bad ones and needs one good and a couple of bad ones before its two densities say much. It is no
# floor (a floor put more than a third of a small budget into random draws): when fewer than
# MIN_STARTUP_TRIALS x STARTUP_SHARE trials fit, the start-up stays a third and the decision says so ...
# (the rule keeps 2 start-up trials from 6 trials that fit, 1 from 3, none below 3: `loratune tune --strategy tpe`'s
# default budgets hold 3-4 trials of the expected length, so they get 1)
MIN_STARTUP_TRIALS = 3
# ... nor more than Optuna's own default: past it, more random trials only delay the guided ones
MAX_STARTUP_TRIALS = 10
# the verdict of the `tpe-startup` decision (bench/tuning.py reads the count back from stored trails; `startup_verdict`
# fills it: '1 random start-up trial', '4 random start-up trials')
STARTUP_VERDICT = "{n} random start-up trial{s} before TPE's model guides"
# What a start-up below MIN_STARTUP_TRIALS means, said in the decision. Optuna's TPE (5.0) counts the top 10% of the
# finished trials, at least one, as good: below 10 trials that is the single best trial, and each guided draw sits next
# to it. Measured on the default space with 1 start-up trial (200 sampler seeds; tests/unit/test_yardstick.py checks
# it on fewer), the first guided draw shares on average 4.9 of its 6 categorical knobs with the best trial so far and
# its training length in 81% of seeds, where a random draw shares 1.7 and 24%. Its prior, what it draws from with no
# trial, is uniform over each categorical knob but, for the log-scaled lr, a Gaussian over log lr centred mid-range
# with the range's width as sigma (truncated to the range), not uniform.
STARTUP_NONE_EVIDENCE = (
    "fewer than {share} trials fit: no random start-up. TPE's first draw comes from its prior (uniform over each "
    "categorical knob; for the lr a wide Gaussian over log lr centred mid-range, not uniform), and each later draw "
    "sits next to the best trial so far (with fewer than 10 trials TPE's 'good' set is that one trial: most knobs and "
    "often the length the same), so the study refines around its first draw rather than exploring the space")
STARTUP_FEW_EVIDENCE = (
    "fewer than {few} trials fit: the start-up stays a third ({n} random trial{s}), below the {wanted} TPE would like. "
    "With fewer than 10 trials TPE's 'good' set is the single best trial, so each guided draw sits next to it (most "
    "knobs and often the length the same): the study explores {n} random point{s} and then refines around the best "
    "of {them} rather than exploring further (more start-up draws would leave more than a third of the budget random)")

# Hyperband's reduction factor eta: at every rung (min_resource x eta^k steps) the top 1/eta of a
# bracket's trials go on. 3 is what Li et al. (2018) recommend and Optuna's default; with rungs from the
# first of a 1x trial's 6 eval points up to 8x a trial it makes 4 brackets (rungs at 1/6, 1/2, 1.5 and 4.5
# trials), from aggressive early stopping to none.
HYPERBAND_REDUCTION = 3
HYPERBAND_PREFIX = "hyperband"  # how a Hyperband stop reason starts (the trail tells it from the Watch's)

# The codes of the decisions a yardstick records (SearchContext.decide(code=...)), as the protocol's
# DECISION_CODES: tests and tools read the code; verdict and move beside it are for people.
YARDSTICK_CODES: dict[str, str] = {
    "trial-plan": "phase 0: the length of one trial (recorded by tune)",
    "tpe-startup": "TPE's random start-up trials, sized to the budget",
    "sampler-reseeded": "a resumed study's sampler seeded past its finished trials, so it draws new points",
    "cut-trial-again": "a resumed study trains the points of its trials cut mid-way (killed, interrupted) again first",
    "study-resumed": "a resumed study: the trials killed or interrupted processes lost, and what they spent (by tune)",
    "hyperband-pruner": "tpe-hyperband: the pruner's rungs, in optimizer steps within a trial",
    "space": "the knobs the sampler draws",
    "trial-pruned-hyperband": "a trial stopped by Hyperband: outside the top of its bracket at a rung",
    "trial-pruned": "a trial stopped by the Watch: behind the best, a diverged diagnosis, or the budget",
    "stop": "the search stopped: budget spent or grid exhausted",
    "pick": "the best val trial is the pick",
}


def trial_lengths(space: SearchSpace, start_point: dict) -> tuple:
    """The training lengths (train.max_steps) the space draws alike; the start point's alone when it has no
    length knob."""
    if "train.max_steps" in space.keys:
        return tuple(space["train.max_steps"].choices)
    return (start_point.get("train.max_steps"),)


def expected_trial_cost(ctx: SearchContext, space: SearchSpace, start_point: dict) -> float:
    """The estimated cost of one drawn trial in the budget's unit: the mean over the length knob's choices (a
    random draw takes each alike), the start point's cost when the space has no length knob."""
    kind = ctx.meter.budget.kind
    costs = [ctx.estimate({**start_point, **({"train.max_steps": n} if n is not None else {})}).amount(kind)
             for n in trial_lengths(space, start_point)]
    return sum(costs) / len(costs)


def trials_that_fit(ctx: SearchContext, space: SearchSpace, start_point: dict) -> int:
    """How many trials of the space's expected length the budget left holds (`expected_trial_cost`)."""
    one = expected_trial_cost(ctx, space, start_point)
    return max(0, int(ctx.meter.left / one + 1e-9)) if one > 0 else 0


def startup_trials(fit: int) -> int:
    """TPE's random start-up trials for a budget that holds `fit` trials: a third of them (rounded down), at
    most MAX_STARTUP_TRIALS; 0 when fewer than STARTUP_SHARE fit."""
    return min(MAX_STARTUP_TRIALS, fit // STARTUP_SHARE)


def startup_verdict(n: int) -> str:
    """The `tpe-startup` decision's verdict for `n` start-up trials (STARTUP_VERDICT)."""
    return STARTUP_VERDICT.format(n=n, s="" if n == 1 else "s")


def startup_evidence(fit: int, n_startup: int) -> list[str]:
    """What the `tpe-startup` decision says of a start-up below what TPE would like (MIN_STARTUP_TRIALS): what TPE's
    draws are then (STARTUP_NONE_EVIDENCE, STARTUP_FEW_EVIDENCE)."""
    if n_startup >= MIN_STARTUP_TRIALS:
        return []
    if n_startup == 0:
        return [STARTUP_NONE_EVIDENCE.format(share=STARTUP_SHARE)]
    one = n_startup == 1
    return [STARTUP_FEW_EVIDENCE.format(few=MIN_STARTUP_TRIALS * STARTUP_SHARE, n=n_startup, s="" if one else "s",
                                        wanted=MIN_STARTUP_TRIALS, them="it" if one else "them")]


def make_sampler(strategy: str, space: SearchSpace, seed: int = 0, n_startup_trials: int = MIN_STARTUP_TRIALS):
    import optuna

    if strategy == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy in ("tpe", "tpe-hyperband"):
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    raise ValueError(strategy)


def hyperband_resources(space: SearchSpace, trial_steps: int, eval_every: int) -> tuple[int, int]:
    """(min_resource, max_resource) in optimizer steps: the first eval point of a 1x trial, the longest
    training length the space draws (the planned trial when the space has no length knob)."""
    lengths = space["train.max_steps"].choices if "train.max_steps" in space.keys else (trial_steps,)
    low = max(1, int(eval_every))
    return low, max(low, int(max(lengths)))


def make_pruner(strategy: str, space: SearchSpace, trial_steps: int, eval_every: int):
    """Optuna's Hyperband for tpe-hyperband; None for the other samplers (the Watch's rules only)."""
    import optuna

    if strategy != "tpe-hyperband":
        return None
    low, high = hyperband_resources(space, trial_steps, eval_every)
    return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=high, reduction_factor=HYPERBAND_REDUCTION)


def hyperband_check(trial, step: int, score: float, shown: str) -> str | None:
    """`SearchContext.trial_pruner` for tpe-hyperband: the study's pruner on the score just reported
    (`shown`: as a person reads it, e.g. 'val macro-F1 0.412')."""
    if not trial.should_prune():
        return None
    return (f"{HYPERBAND_PREFIX}: {shown} at step {step} is outside the top 1/{HYPERBAND_REDUCTION} of "
            "its bracket's trials at this rung")


def prepare_yardstick(ctx: SearchContext, space: SearchSpace, start_point: dict, strategy: str, seed: int = 0,
                      eval_every: int = 0) -> Any:
    """Set the study's sampler (and for tpe-hyperband its pruner) up for `run_yardstick` and record how;
    `eval_every`: the steps between a 1x trial's eval points (train.plan_steps; tpe-hyperband's first
    rung). Returns the sampler."""
    from loratune.search.study import FAILED_AGAIN

    study = ctx.store.optuna
    n_startup = MIN_STARTUP_TRIALS
    if strategy in ("tpe", "tpe-hyperband"):
        kind, lengths = ctx.meter.budget.kind, trial_lengths(space, start_point)
        mean_cost = expected_trial_cost(ctx, space, start_point)
        fit = trials_that_fit(ctx, space, start_point)
        n_startup = startup_trials(fit)
        ctx.decide(strategy, "startup", startup_verdict(n_startup),
                   "sample", [f"about {fit} trials of the space's expected length fit ({ctx.meter.describe_left()}): "
                              f"a drawn trial costs {format_amount(kind, mean_cost)} on average over the lengths "
                              f"{', '.join(str(n) for n in lengths if n is not None) or 'of the start point'}",
                              f"a third of them, at most {MAX_STARTUP_TRIALS}: {n_startup}",
                              *startup_evidence(fit, n_startup)],
                   data={"n_startup_trials": n_startup, "trials_fit": fit, "share": f"1/{STARTUP_SHARE}",
                         "trial_cost_mean": mean_cost, "unit": kind, "lengths": list(lengths),
                         "wanted": MIN_STARTUP_TRIALS, "max": MAX_STARTUP_TRIALS}, code="tpe-startup")
    # a resumed study draws on from where it stopped: the stored seed alone would restart the sampler's stream and
    # draw the finished trials' points again (a random study's resume retrained exactly its own trials)
    done = len(study.get_trials(deepcopy=False))
    reseed = (seed + done) % (SEED_MAX + 1)  # (a seed near the top wraps: the samplers take no larger one)
    study.sampler = make_sampler(strategy, space, reseed, n_startup)
    if done:
        # this session's own (its seed, the trials it found): recorded after the replay, never replaced by an earlier
        # session's decision of the same code
        ctx.decide_after_replay(strategy, "sampler-seed", f"sampler seed {seed} + {done} finished trials", "sample",
                                [f"the study holds {done} trial(s): seeded {reseed}, the sampler draws new "
                                 "points"], data={"seed": seed, "trials_before": done}, code="sampler-reseeded")
    given_up: list[dict] = []
    again = cut_points(ctx, strategy, given_up)

    for point in again:  # the sampler's next asks: what an uninterrupted study trained at these trials
        study.enqueue_trial(point["params"])
    # (a point that failed is asked again FAILED_AGAIN times: one that fails each time would stop every resume)
    once = f"; a failed point is trained again at most {FAILED_AGAIN} time(s), then given up"
    if again:
        ctx.decide_after_replay(strategy, "retrain", f"{len(again)} trial(s) cut mid-way: trained again", "sample",
                                [f"trial #{p['number']} ({p['name']}) was {p['status']}: its point is asked again "
                                 "first (trained when it fits the budget left, as any draw)"
                                 + (once if p["status"] == "failed" else "") for p in again],
                                trials=[p["number"] for p in again],
                                data={"points": again}, code="cut-trial-again")
    if given_up:
        ctx.decide_after_replay(strategy, "retrain", f"{len(given_up)} point(s) that failed again: not asked again",
                                "sample", [f"trial #{p['number']} ({p['name']}) failed {p['failed']} times: its point "
                                           "is not asked again (an error that stops tune there each time, e.g. a "
                                           "config that cannot train); the sampler draws new points" for p in given_up],
                                trials=[p["number"] for p in given_up],
                                data={"points": given_up}, code="failed-point-given-up")
    if strategy == "tpe-hyperband":
        if eval_every <= 0:
            raise ValueError("tpe-hyperband needs the steps between a trial's eval points (eval_every)")
        low, high = hyperband_resources(space, ctx.trial_steps, eval_every)
        study.pruner = make_pruner(strategy, space, ctx.trial_steps, eval_every)
        ctx.trial_pruner = hyperband_check
        rungs = []
        while not rungs or rungs[-1] * HYPERBAND_REDUCTION <= high:
            rungs.append(low * HYPERBAND_REDUCTION ** len(rungs))
        ctx.decide(strategy, "pruner", f"Hyperband over steps {low}..{high}, keeping the top 1/{HYPERBAND_REDUCTION}",
                   "prune", [f"min resource: the first eval point of a 1x trial (step {low})",
                             f"max resource: the longest draw ({high} steps)",
                             f"{len(rungs)} brackets; rungs at steps {', '.join(map(str, rungs))}"],
                   data={"min_resource": low, "max_resource": high, "reduction_factor": HYPERBAND_REDUCTION,
                         "rungs": rungs}, code="hyperband-pruner")
    return study.sampler


def cut_points(ctx: SearchContext, strategy: str, given_up: list[dict] | None = None) -> list[dict]:
    """The sampled points of this strategy's trials that were cut mid-way (`study.LOST_STATUSES`) and never trained
    since, nor queued again: {number, name, status, params}, one per point. A point whose trials `failed` more than
    once (trained again FAILED_AGAIN times, and failed again) is left out, and listed in `given_up` when given."""
    from collections import Counter

    from optuna.trial import TrialState

    from loratune.search.study import FAILED_AGAIN, LOST_STATUSES

    study = ctx.store.optuna
    trained = {r.key for r in ctx.store.records()}
    queued = [t.system_attrs.get("fixed_params")
              for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    cut = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
           if t.user_attrs.get("phase") == strategy and t.user_attrs.get("status") in LOST_STATUSES
           and "record" not in t.user_attrs and t.params]
    failed = Counter(t.user_attrs.get("key") for t in cut if t.user_attrs.get("status") == "failed")
    out, seen = [], set()
    for t in cut:
        a = t.user_attrs
        if a.get("key") in trained or a.get("key") in seen or t.params in queued:
            continue
        seen.add(a.get("key"))
        point = {"number": t.number, "name": a.get("name", "?"), "status": a.get("status"), "params": dict(t.params)}
        if failed[a.get("key")] > FAILED_AGAIN:
            if given_up is not None:
                given_up.append({**point, "failed": failed[a.get("key")]})
            continue
        out.append(point)
    return out


def run_yardstick(ctx: SearchContext, space: SearchSpace, start_point: dict, strategy: str,
                  max_trials: int | None = None) -> SearchContext:
    """Sample-and-run until the budget (or the grid) is spent. The study's sampler must be set."""
    phase = strategy
    ctx.base_point = dict(start_point)
    # a resumed study: what finished before counts (and is charged) first
    for rec in ctx.store.records():
        if rec.spec.phase == phase and all(r.number != rec.number for r in ctx.records):
            ctx.run(rec.spec)
    grid = space.grid() if strategy == "grid" else {}
    ctx.decide(phase, "space", f"{strategy} over {len(space.dims)} knobs", "search",
               [f"{d.key}: " + (f"grid {list(grid[d.key])}" if d.key in grid else
                                str(list(d.choices)) if d.kind == "choice" else f"log-uniform {d.low:g}..{d.high:g}")
                for d in space.dims], data=space.to_dict())
    study = ctx.store.optuna
    n = misses = 0
    while max_trials is None or n < max_trials:
        if strategy == "grid" and _grid_done(study):
            ctx.decide(phase, "stop", "grid exhausted", "stop", [f"{space.grid_size()} grid points"])
            break
        if not ctx.may_start(start_point, per_length=False):  # the first trial starts under any budget left
            if not ctx.records:  # "budget spent" with nothing trained reads as a search that ran
                b, m = ctx.meter.budget, ctx.meter
                kept = f", {format_amount('wall_s', m.reserve_s)} kept back to finish" if b.kind == "wall_s" else ""
                raise UserError(f"the budget {b.text or b.describe()} holds no trial: startup and the assessment "
                                f"spent {format_amount('wall_s', m.spent.wall_s)}{kept}",
                                "give a larger --budget (this study continues with --resume --budget ...)")
            ctx.decide(phase, "stop", "budget spent", "stop", [ctx.meter.describe_left()])
            break
        with warnings.catch_warnings():  # loratune sends each running trial's heartbeat itself (search.study
            # Study._beat), outside Study.optimize: optuna's warning about that is no news to the user
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        values = space.suggest(trial)
        point = {**start_point, **to_overrides(values, start_point)}
        if not ctx.may_start(point, per_length=False):  # a long draw the budget left cannot hold: draw again
            ctx.store.fail(trial, "its training length does not fit the budget left", status="skipped")
            misses += 1
            if misses >= MAX_MISSES:
                ctx.decide(phase, "stop", "budget spent", "stop",
                           [f"{MAX_MISSES} draws in a row did not fit the budget left", ctx.meter.describe_left()])
                break
            continue
        misses = 0
        rec = ctx.run(ctx.spec(point, phase, f"{strategy} sample"), trial=trial, reuse=False)
        if rec is None:  # cannot happen after the fits() check, but never leave a trial RUNNING
            ctx.store.fail(trial, "budget")
            break
        n += 1
        if rec.result.status == "pruned":
            why = rec.result.reason.removeprefix("pruned: ")
            ctx.decide(phase, "prune", f"{rec.label} stopped at step {rec.result.steps_done} of "
                       f"{rec.result.steps_planned}", "stop trial", [why], [rec],
                       code="trial-pruned-hyperband" if why.startswith(HYPERBAND_PREFIX) else "trial-pruned")
    best = ctx.best()
    if best is not None:
        ctx.state.final = best
        ctx.decide(phase, "pick", f"best {ctx.show(best.value)}", f"pick {best.label}",
                   [f"{len(ctx.records)} trials; best {best.label}"], [best])
    return ctx


def _grid_done(study) -> bool:
    sampler = study.sampler
    try:
        return bool(sampler.is_exhausted(study))
    except Exception:
        return False
