"""Grid, random and TPE search over the same space, through Optuna's samplers, with the same budget
accounting, trial length, pruning and storage as the protocol (protocol section 7).

Each step asks the study's sampler for a trial, lets the space suggest every knob (`space.suggest`),
turns the values into config overrides and runs them with `ctx.run`: same `Meter`, same `Watch`
(pruning of clearly losing trials, budget stop), same run directories. The space holds the training
length too (1-8x a trial), as the protocol's final training does; a draw too long for the budget left
is marked failed and drawn again. The loop stops when a trial of the planned length no longer fits the
budget (or the grid is exhausted). The pick is the best val macro-F1.
"""

from __future__ import annotations

from loratune.search.context import SearchContext, fmt_f1
from loratune.search.space import SearchSpace, to_overrides

STRATEGIES = ("protocol", "grid", "random", "tpe")
MAX_MISSES = 50  # draws in a row whose training length does not fit the budget left before the search stops


def make_sampler(strategy: str, space: SearchSpace, seed: int = 0):
    import optuna

    if strategy == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    raise ValueError(strategy)


def run_yardstick(ctx: SearchContext, space: SearchSpace, start_point: dict, strategy: str,
                  max_trials: int | None = None) -> SearchContext:
    """Sample-and-run until the budget (or the grid) is spent. The study's sampler must be set."""
    phase = strategy
    ctx.base_point = dict(start_point)
    # a resumed study: what finished before counts (and is charged) first
    for rec in ctx.store.records():
        if rec.spec.phase == phase and all(r.number != rec.number for r in ctx.records):
            ctx.run(rec.spec)
    ctx.decide(phase, "space", f"{strategy} over {len(space.dims)} knobs", "search",
               [f"{d.key}: {list(d.choices) if d.kind == 'choice' else f'log-uniform {d.low:g}..{d.high:g}'}"
                for d in space.dims], data=space.to_dict())
    study = ctx.store.optuna
    n = misses = 0
    while max_trials is None or n < max_trials:
        if strategy == "grid" and _grid_done(study):
            ctx.decide(phase, "stop", "grid exhausted", "stop", [f"{space.grid_size()} grid points"])
            break
        if not ctx.meter.fits(ctx.estimate(start_point)):
            ctx.decide(phase, "stop", "budget spent", "stop", [ctx.meter.describe_left()])
            break
        trial = study.ask()
        values = space.suggest(trial)
        point = {**start_point, **to_overrides(values)}
        if not ctx.meter.fits(ctx.estimate(point)):  # a long draw the budget left cannot hold: draw again
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
    best = ctx.best()
    if best is not None:
        ctx.state.final = best
        ctx.decide(phase, "pick", f"best val macro-F1 {fmt_f1(best.value)}", f"pick {best.label}",
                   [f"{len(ctx.records)} trials; best {best.label}"], [best])
    return ctx


def _grid_done(study) -> bool:
    sampler = study.sampler
    try:
        return bool(sampler.is_exhausted(study))
    except Exception:
        return False
