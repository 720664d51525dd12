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
