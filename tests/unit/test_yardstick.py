"""Grid / random / TPE over the same space as the protocol, on scripted trial outcomes (no training):
the training length is a knob of the space, longer draws are charged for their length, and a draw the
budget left cannot hold is skipped (marked in the study), never run past the budget."""

from __future__ import annotations

import pytest

from loratune.search.budget import Budget, CostModel, Meter
from loratune.search.context import SearchContext
from loratune.search.space import LENGTH_FACTORS, default_space, to_overrides
from loratune.search.study import Study
from loratune.search.trial import TrialResult
from loratune.search.yardstick import make_sampler, run_yardstick

START = {"adapter.r": 8, "adapter.lora_alpha": 16.0, "adapter.target_modules": ["attn.q", "attn.v"],
         "train.learning_rate": 1e-3}
TRIAL_STEPS, TRIAL_EXAMPLES = 50, 800  # 16 examples a step


class LengthWorld:
    """val macro-F1 grows with the training length; a run processes 16 examples per step."""

    def __init__(self):
        self.calls = []

    def run(self, spec, run_dir, watch=None):
        self.calls.append(spec)
        steps = int(spec.point.get("train.max_steps") or TRIAL_STEPS)
        v = 0.6 + 0.05 * (steps // TRIAL_STEPS).bit_length()
        return TrialResult(status="completed", value=v, examples=16 * steps, wall_s=steps / 10,
                           steps_planned=steps, steps_done=steps, best={"step": steps, "val/macro_f1": v},
                           curve=((0, 0.0), (steps, v)), verdict="healthy", findings=(),
                           features={"val_metric_se": 0.01})

    def compare(self, run_dirs):
        return None

    def evaluate(self, run_dir, split="test"):
        return {"test/macro_f1": 0.8}


def test_space_holds_the_training_length_only_when_the_trial_length_is_known():
    space = default_space(START, 32, trial_steps=TRIAL_STEPS)
    dim = space["train.max_steps"]
    assert dim.choices == tuple(TRIAL_STEPS * f for f in LENGTH_FACTORS) == (50, 100, 200, 400)
    assert dim.role == "optimization"
    assert to_overrides({"train.max_steps": 200})["train.max_steps"] == 200
    assert "train.max_steps" not in default_space(START, 32).keys
    assert default_space(START, 32, trial_steps=TRIAL_STEPS).grid_size() == 4 * default_space(START, 32).grid_size()


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_long_draws_are_charged_for_their_length_and_never_overrun_the_budget(strategy, tmp_path):
    import optuna

    budget = 3000  # examples: a 4x draw (3,200) never fits, an 8x draw (6,400) neither
    store = Study.open(tmp_path / strategy, meta={"strategy": strategy})
    space = default_space(START, 32, trial_steps=TRIAL_STEPS)
    store.optuna.sampler = make_sampler(strategy, space, seed=3)
    runner = LengthWorld()
    ctx = SearchContext(store=store, runner=runner, meter=Meter(Budget.parse(f"{budget}ex")),
                        trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
    run_yardstick(ctx, space, START, strategy)

    ran = [int(s.point["train.max_steps"]) for s in runner.calls]
    assert ran and set(ran) <= {50, 100}, ran  # 200 and 400 steps cannot fit a 3,000-example budget
    assert sum(16 * s for s in ran) == ctx.meter.spent.examples <= budget
    # the study holds every draw: the skipped ones as failed trials saying why, the rest with records
    trials = store.optuna.get_trials(deepcopy=False)
    skipped = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert skipped, "a long draw should have been skipped"
    assert all(t.user_attrs["status"] == "skipped" and "does not fit" in t.user_attrs["reason"] for t in skipped)
    assert all(t.params["train.max_steps"] * 16 > budget - _spent_before(trials, t) for t in skipped)
    assert len(trials) - len(skipped) == len(ran)
    # the pick is the longest run, which scores highest here
    assert ctx.state["final"].point["train.max_steps"] == max(ran)
    assert ctx.decisions[-1]["kind"] == "pick"


def _spent_before(trials, skipped) -> int:
    return sum(16 * t.params["train.max_steps"] for t in trials
               if t.number < skipped.number and "record" in t.user_attrs)


def test_a_sampler_draws_the_arms_each_at_its_own_lr(tmp_path):
    store = Study.open(tmp_path / "random", meta={"strategy": "random"})
    space = default_space(START, 32, trial_steps=TRIAL_STEPS, arms=("loraplus", "dora"))
    store.optuna.sampler = make_sampler("random", space, seed=0)
    runner = LengthWorld()
    ctx = SearchContext(store=store, runner=runner, meter=Meter(Budget.parse("12trials")),
                        trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
    run_yardstick(ctx, space, START, "random")
    trials = [t for t in store.optuna.get_trials(deepcopy=False) if t.user_attrs.get("status") != "skipped"]
    drawn = {t.params["adapter.arm"] for t in trials}
    assert drawn == {"lora", "loraplus", "dora"}  # 12 random draws of 3 arms
    for t, spec in zip(trials, runner.calls):
        arm, lr = t.params["adapter.arm"], t.params["train.learning_rate"]
        assert spec.point.get("train.optimizer") == ("loraplus" if arm == "loraplus" else None)
        assert spec.point.get("adapter.use_dora") == (True if arm == "dora" else None)
        assert spec.point["train.learning_rate"] == pytest.approx(lr * (0.5 if arm == "loraplus" else 1.0), rel=1e-2)


# ---------------------------------------------------------------- TPE start-up sizing and tpe-hyperband (issue 15)
@pytest.mark.parametrize("budget,fit,startup", [
    # the trials that fit are counted at the space's expected length: the mean of 1, 2, 4 and 8x a trial
    # (3.75x), in the budget's unit; a budget in trials counts every trial as one whatever its length
    ("2trials", 2, 0),  # fewer than 3 fit: no start-up (TPE's first draw comes from its prior)
    ("6trials", 6, 2),  # a third, even below the 3 TPE would like (no floor pushes it past a third)
    ("21trials", 21, 7),  # a third
    ("60trials", 60, 10),  # a third is 20: Optuna's default (10) caps it
    ("9600ex", 3, 1),  # a 1x trial is 800 examples, a drawn one 3,000 on average: 3 fit, not 12
    ("30000ex", 10, 3),  # 10 drawn trials of 3,000 examples fit (37 of 1x did: the old count gave 10 start-ups)
    ("100s", 3, 1),  # at the prior 100 examples/s a drawn trial of 3,000 examples takes 30 s: 3 fit, not 12
])
@pytest.mark.parametrize("strategy", ["tpe", "tpe-hyperband"])
def test_tpe_startup_trials_are_at_most_a_third_of_the_trials_that_fit(strategy, budget, fit, startup, tmp_path):
    from loratune.search.yardstick import MAX_STARTUP_TRIALS, STARTUP_SHARE, prepare_yardstick

    assert startup == min(MAX_STARTUP_TRIALS, fit // STARTUP_SHARE) and startup * STARTUP_SHARE <= fit
    store = Study.open(tmp_path / "s", meta={"strategy": strategy})
    space = default_space(START, 32, trial_steps=TRIAL_STEPS)
    ctx = SearchContext(store=store, runner=LengthWorld(), meter=Meter(Budget.parse(budget)),
                        trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
    sampler = prepare_yardstick(ctx, space, START, strategy, seed=1, eval_every=TRIAL_STEPS // 6)
    d = next(d for d in ctx.decisions if d["code"] == "tpe-startup")
    assert (d["data"]["trials_fit"], d["data"]["n_startup_trials"]) == (fit, startup)
    assert d["data"]["lengths"] == [50, 100, 200, 400]
    unit = Budget.parse(budget).kind
    assert d["data"]["trial_cost_mean"] == pytest.approx({"trials": 1.0, "examples": 3000.0, "wall_s": 30.0}[unit])
    assert store.optuna.sampler is sampler and sampler._n_startup_trials == startup  # what Optuna was given
    # a start-up below the 3 TPE would like is said in the decision, and what TPE does then
    said = " ".join(d["evidence"])
    assert ("no random start-up" in said) == (startup == 0)
    assert ("the start-up stays a third" in said) == (0 < startup < 3)
    assert ("sits next to" in said) == (startup < 3)  # what TPE's guided draws are with so few trials
    assert d["verdict"] == f"{startup} random start-up trial{'' if startup == 1 else 's'} before TPE's model guides"


def test_a_small_start_up_says_plainly_what_tpe_draws_then():
    """The default budgets of `loratune tune --strategy tpe` hold 3-4 trials of the expected length: 1 start-up trial.
    The decision read 'stays a third (1), below the 3 TPE would like' and '1 random start-up trials'; and of no start-up
    that TPE's prior is 'uniform over the space, as a random draw' (for the lr it is a wide Gaussian over log lr)."""
    from loratune.search.yardstick import startup_evidence, startup_verdict

    assert startup_verdict(1) == "1 random start-up trial before TPE's model guides"
    assert startup_verdict(2) == "2 random start-up trials before TPE's model guides"
    one = " ".join(startup_evidence(4, 1))
    assert "the start-up stays a third (1 random trial)" in one and "1 random trials" not in one
    assert "explores 1 random point and then refines around the best of it" in one
    assert "each guided draw sits next to it" in one and "single best trial" in one
    two = " ".join(startup_evidence(7, 2))
    assert "(2 random trials)" in two and "explores 2 random points and then refines around the best of them" in two
    none = " ".join(startup_evidence(2, 0))
    assert "uniform over the space" not in none and "a wide Gaussian over log lr centred mid-range, not uniform" in none
    assert "sits next to the best trial so far" in none
    assert startup_evidence(9, 3) == []


def test_with_one_start_up_trial_tpes_first_guided_draw_sits_next_to_the_first():
    """What the decision says of a start-up of 1, measured on Optuna's TPE over the default space: its second draw
    shares most categorical knobs (and mostly the length) with the first, where two random draws share few."""
    import warnings

    import optuna

    from loratune.search.yardstick import make_sampler as sampler_of

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = default_space(START, 32, trial_steps=TRIAL_STEPS)
    knobs = [d.key for d in space.dims if d.kind == "choice"]

    def shared(strategy: str, seed: int) -> tuple[int, bool]:
        study = optuna.create_study(direction="maximize", sampler=sampler_of(strategy, space, seed, 1))
        drawn = []
        for value in (0.5, 0.6):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = study.ask()
                drawn.append(space.suggest(trial))
            study.tell(trial, value)
        a, b = drawn
        return sum(a[k] == b[k] for k in knobs), a["train.max_steps"] == b["train.max_steps"]

    tpe = [shared("tpe", seed) for seed in range(40)]
    rnd = [shared("random", seed) for seed in range(40)]
    assert len(knobs) == 6
    assert sum(n for n, _ in tpe) / 40 >= 4 and sum(n for n, _ in rnd) / 40 < 2.5
    assert sum(same for _, same in tpe) >= 24 and sum(same for _, same in rnd) <= 16


def test_tpe_startup_counts_the_start_points_length_when_the_space_draws_none(tmp_path):
    from loratune.search.yardstick import prepare_yardstick

    store = Study.open(tmp_path / "s", meta={"strategy": "tpe"})
    ctx = SearchContext(store=store, runner=LengthWorld(), meter=Meter(Budget.parse("9600ex")),
                        trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
    prepare_yardstick(ctx, default_space(START, 32), START, "tpe", seed=1)
    d = next(d for d in ctx.decisions if d["code"] == "tpe-startup")
    assert (d["data"]["trials_fit"], d["data"]["n_startup_trials"], d["data"]["trial_cost_mean"]) == (12, 4, 800.0)


def test_random_and_grid_have_no_startup_and_no_pruner(tmp_path):
    from loratune.search.yardstick import prepare_yardstick

    for strategy in ("random", "grid"):
        store = Study.open(tmp_path / strategy, meta={"strategy": strategy})
        ctx = SearchContext(store=store, runner=LengthWorld(), meter=Meter(Budget.parse("20trials")),
                            trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
        prepare_yardstick(ctx, default_space(START, 32, trial_steps=TRIAL_STEPS), START, strategy)
        assert ctx.decisions == [] and ctx.trial_pruner is None
        assert type(store.optuna.pruner).__name__ != "HyperbandPruner"


def lr_ceiling(point) -> float:
    """The val macro-F1 a trial climbs to: highest at lr 1e-3, lower the further the lr is (log scale)."""
    import math

    return max(0.05, 0.85 - 0.25 * abs(math.log2(point["train.learning_rate"] / 1e-3)))


class CurveWorld:
    """Trials train for their `train.max_steps` and evaluate as `train` does (every steps // 6 steps, and at
    the end); each eval point goes through the tune callback (runner.WatchCallback, as `train` calls it),
    so the study's pruner stops a trial exactly where a real one would stop. The val macro-F1 rises
    towards `ceiling(point)`."""

    def __init__(self, ceiling=lr_ceiling, evals: int = 6):
        self.ceiling, self.evals, self.calls, self.stopped = ceiling, evals, [], {}

    def run(self, spec, run_dir, watch=None):
        from dataclasses import replace

        from loratune.search.runner import Watch, WatchCallback, curve_of, result_from

        self.calls.append(spec)
        steps = int(spec.point.get("train.max_steps") or TRIAL_STEPS)
        every = max(1, steps // self.evals)
        callback = WatchCallback(watch or Watch(prune=False), 0.0)
        points, why = [], None
        for s in sorted({every * k for k in range(1, self.evals + 1) if every * k <= steps} | {steps}):
            v = self.ceiling(spec.point) * (1 - 0.5 ** (s / 10))
            points.append({"step": s, "examples_seen": 16 * s, "val/macro_f1": v})
            why = callback.on_eval(points[-1], {"steps_planned": steps, "examples_seen": 16 * s,
                                                "objective": "val/macro_f1"})
            if why:
                break
        done = points[-1]["step"]
        self.stopped[len(self.calls) - 1] = done
        run = {"status": "interrupted" if why else "completed", "steps_planned": steps, "steps_done": done,
               "examples_seen": 16 * done, "objective": "val/macro_f1",
               "best": max(points, key=lambda p: p["val/macro_f1"])}
        res = result_from(run, None, done / 10, pruned=why)
        return replace(res, curve=curve_of(points), features={"val_metric_se": 0.01})

    def compare(self, run_dirs):
        return None

    def evaluate(self, run_dir, split="test"):
        return {"test/macro_f1": 0.8}


def _hyperband_ctx(tmp_path, budget, space, eval_every, runner, study_name="loratune"):
    from loratune.search.yardstick import prepare_yardstick

    store = Study.open(tmp_path / "hb", meta={"strategy": "tpe-hyperband"}, name=study_name)
    ctx = SearchContext(store=store, runner=runner, meter=Meter(Budget.parse(budget)),
                        trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
    prepare_yardstick(ctx, space, START, "tpe-hyperband", seed=0, eval_every=eval_every)
    return ctx, store


def test_tpe_hyperband_prunes_a_clearly_losing_trial_and_keeps_the_winner(tmp_path):
    import optuna

    from loratune.search.yardstick import YARDSTICK_CODES

    # one bracket (a rung at step 24 of a 50-step trial, its third eval point; none past 50): plain successive
    # halving, so the second trial meets the first at the rung whatever bracket a trial number would hash to
    space = default_space(START, 32)
    runner = CurveWorld()
    ctx, store = _hyperband_ctx(tmp_path, "100trials", space, 24, runner)
    store.optuna.enqueue_trial({"train.learning_rate": 1e-3})  # the winner first: ceiling 0.85
    store.optuna.enqueue_trial({"train.learning_rate": 1.3e-4})  # lr / 8: ceiling 0.11, clearly losing
    run_yardstick(ctx, space, START, "tpe-hyperband", max_trials=2)

    trials = store.optuna.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert [t.user_attrs["status"] for t in trials] == ["completed", "pruned"]
    assert runner.stopped == {0: 50, 1: 24}  # the loser ran to the rung only, and is charged that much
    assert ctx.meter.spent.examples == 16 * (50 + 24)
    loser = ctx.records[1].result
    assert loser.status == "pruned" and loser.reason.startswith("pruned: hyperband: val macro-F1 0.")
    codes = [d["code"] for d in ctx.decisions]
    assert codes == ["tpe-startup", "hyperband-pruner", "space", "trial-pruned-hyperband", "pick"]
    assert set(codes) <= set(YARDSTICK_CODES)
    hb = next(d for d in ctx.decisions if d["code"] == "hyperband-pruner")["data"]
    assert (hb["min_resource"], hb["max_resource"], hb["rungs"]) == (24, 50, [24])
    assert next(d for d in ctx.decisions if d["code"] == "trial-pruned-hyperband")["trials"] == [1]
    assert ctx.state["final"].number == 0 and ctx.state["final"].value == pytest.approx(0.85 * (1 - 0.5 ** 5))


def test_tpe_hyperband_over_the_length_knob_stops_losers_at_rungs_within_the_budget(tmp_path):
    import optuna

    from loratune.search.yardstick import HYPERBAND_REDUCTION

    # the real shape: rungs from a 1x trial's first eval point (50 // 6 = 8 steps) to the longest draw (8x)
    space = default_space(START, 32, trial_steps=TRIAL_STEPS)
    runner = CurveWorld()
    budget = 30_000
    ctx, store = _hyperband_ctx(tmp_path, f"{budget}ex", space, TRIAL_STEPS // 6, runner)
    run_yardstick(ctx, space, START, "tpe-hyperband")

    hb = next(d for d in ctx.decisions if d["code"] == "hyperband-pruner")["data"]
    assert (hb["min_resource"], hb["max_resource"]) == (8, 400)
    assert hb["rungs"] == [8 * HYPERBAND_REDUCTION ** k for k in range(4)]  # 8, 24, 72, 216
    trials = {t.number: t for t in store.optuna.get_trials(deepcopy=False)}
    pruned = [r for r in ctx.records if r.result.status == "pruned"]
    by_hb = [r for r in pruned if r.result.reason.startswith("pruned: hyperband")]
    assert by_hb, "Hyperband should stop some of the losing draws"
    for r in pruned:
        assert trials[r.number].state == optuna.trial.TrialState.PRUNED
        assert r.result.steps_done < r.result.steps_planned
    # a Hyperband stop happens at a rung: the first eval point at or past one
    for r in by_hb:
        assert any(rung <= r.result.steps_done < rung + max(1, r.result.steps_planned // 6) for rung in hb["rungs"])
    pruned_codes = [d["code"] for d in ctx.decisions if d["kind"] == "prune"]
    assert pruned_codes.count("trial-pruned-hyperband") == len(by_hb)
    assert len(pruned_codes) == len(pruned)
    # a pruned trial is charged what it trained; the whole search stays within the budget
    assert ctx.meter.spent.examples == sum(16 * r.result.steps_done for r in ctx.records) <= budget
    best = ctx.state["final"]
    assert best.result.status == "completed"
    assert all(r.value <= best.value for r in pruned)


def test_cli_strategy_choices_are_the_yardstick_strategies():
    from loratune.cli import build_parser
    from loratune.search.yardstick import STRATEGIES

    tune = build_parser()._defaults["_commands"]["tune"]
    action = next(a for a in tune._actions if "--strategy" in a.option_strings)
    assert tuple(action.choices) == STRATEGIES


def test_a_resumed_random_study_draws_new_points_and_the_grid_trail_names_its_values(tmp_path):
    """A resumed random study restarted its sampler's stream from the stored seed and trained its own 6 trials
    again; a grid's 'space' line said log-uniform for the lr it walks as 5 values."""
    from loratune.search.yardstick import prepare_yardstick

    def study(budget, resume):
        store = Study.open(tmp_path / "random", meta={"strategy": "random"}, resume=resume)
        space = default_space(START, 32, trial_steps=TRIAL_STEPS)
        runner = LengthWorld()
        ctx = SearchContext(store=store, runner=runner, meter=Meter(Budget.parse(budget)),
                            trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
        prepare_yardstick(ctx, space, START, "random", seed=7)
        run_yardstick(ctx, space, START, "random")
        store.close()
        return ctx, runner

    _, first = study("4trials", False)
    ctx, again = study("8trials", True)
    old = {s.key for s in first.calls}
    assert again.calls and not old & {s.key for s in again.calls}
    assert any(d.get("code") == "sampler-reseeded" for d in ctx.decisions)
    store = Study.open(tmp_path / "grid", meta={"strategy": "grid"})
    space = default_space(START, 32)
    ctx = SearchContext(store=store, runner=LengthWorld(), meter=Meter(Budget.parse("2trials")),
                        trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
    prepare_yardstick(ctx, space, START, "grid")
    run_yardstick(ctx, space, START, "grid")
    line = next(e for d in ctx.decisions if d["kind"] == "space" for e in d["evidence"]
                if e.startswith("train.learning_rate"))
    assert "grid [" in line and "log-uniform" not in line


def test_a_pruned_trial_has_its_record_value_in_the_optuna_storage(tmp_path):
    """Optuna's tell(PRUNED) stored the last reported value (0.40) while the record, the trail and the report read
    the trial's best (0.60); samplers read the storage's."""
    import optuna

    from loratune.search.trial import TrialSpec

    store = Study.open(tmp_path / "pruned", meta={"strategy": "tpe"})
    try:
        spec = TrialSpec("lr2e-3", "phase1", {"train.learning_rate": 2e-3})
        trial, run_dir = store.start(spec)
        trial.report(0.60, 10)
        trial.report(0.40, 20)  # it fell: pruned here
        rec = store.finish(trial, spec, run_dir, TrialResult(status="pruned", value=0.60, examples=320, wall_s=2.0,
                                                             best={"step": 10, "val/macro_f1": 0.60}))
        stored = store.optuna.get_trials(deepcopy=False)[0]
        assert stored.state == optuna.trial.TrialState.PRUNED
        assert stored.value == rec.value == 0.60 and store.records()[0].value == 0.60
    finally:
        store.close()


def test_a_resumed_random_study_trains_the_point_of_its_cut_trial_again(tmp_path):
    """The sampler was reseeded past the study's trials and nothing asked the cut trial's point again: the resumed
    study searched other points than an uninterrupted one (the README: a trial cut mid-way is trained again)."""
    class Cut(LengthWorld):
        def run(self, spec, run_dir, watch=None):
            if len(self.calls) == 2:
                self.calls.append(spec)
                raise KeyboardInterrupt  # SIGTERM mid-way through the third trial
            return super().run(spec, run_dir, watch)

    def study(runner, budget, resume):
        return _random_study(tmp_path / "random", runner, budget, resume)

    first = Cut()
    with pytest.raises(KeyboardInterrupt):
        study(first, "4trials", False)
    cut = first.calls[2]
    again = LengthWorld()
    ctx = study(again, "4trials", True)
    assert again.calls[0].key == cut.key  # its point first, then new draws
    assert [s.key for s in again.calls].count(cut.key) == 1
    d = next(x for x in ctx.decisions if x["code"] == "cut-trial-again")
    assert d["trials"] == [2] and d["data"]["points"][0]["status"] == "interrupted"
    resumed = Study.open(tmp_path / "random", resume=True)
    try:
        from loratune.search.yardstick import cut_points

        ctx.store = resumed
        assert cut_points(ctx, "random") == []  # trained: never queued again by a later resume
    finally:
        resumed.close()


def test_a_point_that_failed_again_is_not_asked_again_by_every_resume(tmp_path):
    """A `failed` trial (an error stopped tune) was queued again by each resume: a point that always fails (a config
    that cannot train) stopped every resume at once. It is trained again once (a full disk since freed), then given
    up, and the ledger says which."""
    from loratune.errors import UserError
    from loratune.search.study import FAILED_AGAIN

    bad = []

    class Bad(LengthWorld):
        def run(self, spec, run_dir, watch=None):
            if (not bad and len(self.calls) == 2) or spec.key in bad:
                bad[:] = [spec.key]
                self.calls.append(spec)
                raise UserError("the model cannot load at this point", "give another point")
            return super().run(spec, run_dir, watch)

    def study(runner, resume):
        return _random_study(tmp_path / "random", runner, "5trials", resume)

    with pytest.raises(UserError):
        study(Bad(), False)
    assert FAILED_AGAIN == 1
    again = Bad()
    with pytest.raises(UserError):  # trained again once: it fails again
        study(again, True)
    assert [s.key for s in again.calls] == bad
    last = Bad()
    ctx = study(last, True)  # given up: the resume goes on with new draws
    assert bad[0] not in [s.key for s in last.calls] and last.calls
    d = next(x for x in ctx.decisions if x["code"] == "failed-point-given-up")
    assert d["trials"] == [2] and d["data"]["points"][0]["failed"] == 2
    assert d["evidence"][0].startswith("trial #2 (")
    assert "failed 2 times: its point is not asked again" in d["evidence"][0]
    assert not [x for x in ctx.decisions if x["code"] == "cut-trial-again"]


def test_a_sampler_study_does_not_warn_about_its_heartbeat(tmp_path):
    """`tune --strategy tpe` printed optuna's 'Heartbeat of storage is supposed to be used with Study.optimize'
    at every draw: loratune beats each running trial itself, so the warning is noise to the user."""
    import warnings

    store = Study.open(tmp_path / "tpe", meta={"strategy": "tpe"})
    space = default_space(START, 32, trial_steps=TRIAL_STEPS)
    store.optuna.sampler = make_sampler("tpe", space, seed=0)
    ctx = SearchContext(store=store, runner=LengthWorld(), meter=Meter(Budget.parse("3trials")),
                        trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_yardstick(ctx, space, START, "tpe")
    assert ctx.records and not [w for w in caught if "Heartbeat of storage" in str(w.message)]


@pytest.mark.parametrize("strategy", ["random", "tpe", "grid"])
def test_a_budget_below_one_trial_still_trains_the_first_as_the_protocol_does(strategy, tmp_path):
    # 500 examples hold no 800-example trial: the sampler ran nothing, decided "budget spent" with 500 of 500 left
    # and exited 1 without a recommendation
    store = Study.open(tmp_path / strategy, meta={"strategy": strategy})
    space = default_space(START, 32, trial_steps=TRIAL_STEPS)
    store.optuna.sampler = make_sampler(strategy, space, seed=0)
    runner = LengthWorld()
    ctx = SearchContext(store=store, runner=runner, meter=Meter(Budget.parse("500ex")),
                        trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
    run_yardstick(ctx, space, START, strategy)
    assert [int(s.point["train.max_steps"]) for s in runner.calls] == [TRIAL_STEPS]  # one trial, no longer draw
    assert ctx.state["final"] is ctx.records[0] and ctx.decisions[-1]["kind"] == "pick"


def test_a_wall_budget_spent_before_the_first_trial_is_refused_not_called_spent(tmp_path):
    from loratune.errors import UserError
    from loratune.search.budget import Cost

    store = Study.open(tmp_path / "s", meta={"strategy": "random"})
    space = default_space(START, 32, trial_steps=TRIAL_STEPS)
    store.optuna.sampler = make_sampler("random", space, seed=0)
    meter = Meter(Budget.parse("20s"), reserve_s=15.0)
    meter.charge(Cost(6.0, 0, 0), "startup (this session)")
    ctx = SearchContext(store=store, runner=LengthWorld(), meter=meter, trial_examples=TRIAL_EXAMPLES,
                        trial_steps=TRIAL_STEPS, costs=CostModel())
    with pytest.raises(UserError) as got:
        run_yardstick(ctx, space, START, "random")
    want = "the budget 20s holds no trial: startup and the assessment spent 6s, 15s kept back to finish"
    assert got.value.problem == want and "larger --budget" in got.value.fix
    assert not [d for d in ctx.decisions if d["kind"] == "stop"]


def test_a_wall_budget_charges_the_real_time_between_and_around_trials(tmp_path):
    # only each trial's own training time was charged: the sampler, the study's records, decisions and a trial's
    # setup (~0.8 s a trial) were not, and a 1m budget ended after 82 s, "spent 45s"
    class Clock:
        t = 100.0

        def __call__(self):
            self.t += 0.25  # every reading: time passes outside training (sampler, records, decisions)
            return self.t

    clock = Clock()

    class Timed(LengthWorld):
        def run(self, spec, run_dir, watch=None):
            res = super().run(spec, run_dir, watch)
            clock.t += 0.5 + res.wall_s  # model setup, then the training the result measures
            return res

    store = Study.open(tmp_path / "s", meta={"strategy": "random"})
    space = default_space(START, 32, trial_steps=TRIAL_STEPS)
    store.optuna.sampler = make_sampler("random", space, seed=0)
    started = clock.t
    ctx = SearchContext(store=store, runner=Timed(), meter=Meter(Budget.parse("40s")), trial_examples=TRIAL_EXAMPLES,
                        trial_steps=TRIAL_STEPS, costs=CostModel(), clock=clock, since=started)
    run_yardstick(ctx, space, START, "random")
    ctx.charge_elapsed("after the last trial")
    spent = ctx.meter.spent.wall_s
    assert spent == pytest.approx(clock.t - started)  # the meter charged every second the session took
    assert sum(c.cost.wall_s for c in ctx.meter.ledger) == pytest.approx(spent)  # and its ledger adds up
    trained = sum(r.result.wall_s for r in ctx.records)
    outside = [c for c in ctx.meter.ledger if c.cost.trials == 0]
    assert outside and sum(c.cost.wall_s for c in outside) == pytest.approx(spent - trained)
    # the trial that starts last fits what was left when it started: the session ends about on budget
    last = ctx.records[-1].result.wall_s
    assert spent - 40 < last + 2, [c.to_dict() for c in ctx.meter.ledger]


@pytest.mark.parametrize("strategy", ["random", "grid"])
def test_a_sampler_over_an_rslora_start_trains_the_scale_it_drew(strategy, tmp_path):
    """use_rslora=true in the start point: a drawn scale s becomes lora_alpha = s x sqrt(r) (rsLoRA scales by
    alpha / sqrt(r)), not s x r, so the trained scale is the one the sampler drew and recorded."""
    import math

    from loratune.stepsize import scale_of

    start = {**START, "adapter.use_rslora": True, "adapter.lora_alpha": 8 * math.sqrt(8)}
    store = Study.open(tmp_path / strategy, meta={"strategy": strategy})
    space = default_space(start, 32, trial_steps=TRIAL_STEPS)
    store.optuna.sampler = make_sampler(strategy, space, seed=1)
    runner = LengthWorld()
    ctx = SearchContext(store=store, runner=runner, meter=Meter(Budget.parse("6trials")),
                        trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
    run_yardstick(ctx, space, start, strategy)
    trials = [t for t in store.optuna.get_trials(deepcopy=False) if t.user_attrs.get("status") != "skipped"]
    assert trials and len(trials) == len(runner.calls)
    for t, spec in zip(trials, runner.calls):
        p = spec.point
        assert p["adapter.use_rslora"] is True
        assert p["adapter.lora_alpha"] == pytest.approx(t.params["adapter.scale"] * math.sqrt(p["adapter.r"]), rel=5e-3)
        assert scale_of(p) == pytest.approx(t.params["adapter.scale"], rel=5e-3)
    # a rank the draw does not set is the start point's, not the default's
    assert to_overrides({"adapter.scale": 2.0}, {"adapter.r": 16, "adapter.use_rslora": True}) == {
        "adapter.lora_alpha": 8.0}


def _random_study(folder, runner, budget: str, resume: bool):
    """A random-strategy study of `budget` in `folder` (resumed or not), run to its end or its first error."""
    from loratune.search.yardstick import prepare_yardstick

    store = Study.open(folder, meta={"strategy": "random"}, resume=resume)
    ctx = SearchContext(store=store, runner=runner, meter=Meter(Budget.parse(budget)),
                        trial_examples=TRIAL_EXAMPLES, trial_steps=TRIAL_STEPS, costs=CostModel())
    space = default_space(START, 32, trial_steps=TRIAL_STEPS)
    try:
        prepare_yardstick(ctx, space, START, "random", seed=7)
        run_yardstick(ctx, space, START, "random")
    finally:
        store.close()
    return ctx


def test_a_studys_space_is_the_one_it_recorded_with_each_knob_as_its_trials_drew_it():
    import optuna

    from loratune.search.space import SearchSpace, default_space, study_space

    today = default_space({"adapter.r": 4}, ceiling_r=4, trial_steps=8)  # today's rules: r [2, 4]
    assert today["adapter.r"].choices == (2, 4)
    began = default_space({"adapter.r": 4}, ceiling_r=8, trial_steps=8)  # what an older version recorded
    assert SearchSpace.from_dict(began.to_dict()) == began  # the record round-trips
    assert study_space(today, None, {}) == today  # a new study: today's
    assert study_space(today, began.to_dict(), {})["adapter.r"].choices == (2, 4, 8)
    # the trials' draws win over any record (a trail already rewritten with today's space)
    drawn = {"adapter.r": optuna.distributions.CategoricalDistribution([2, 4, 8]),
             "train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    got = study_space(today, today.to_dict(), drawn)
    assert got["adapter.r"].choices == (2, 4, 8) and got.keys == today.keys
    assert (got["train.learning_rate"].low, got["train.learning_rate"].high) == (1e-4, 1e-2)
    for t in got.dims:  # every drawn knob as Optuna holds it: the next draw is compatible
        if t.key in drawn:
            optuna.distributions.check_distribution_compatibility(drawn[t.key], t.distribution())
    with pytest.raises(ValueError, match="adapter.r"):  # a draw no Dim holds
        study_space(today, None, {"adapter.r": optuna.distributions.IntDistribution(2, 8)})
