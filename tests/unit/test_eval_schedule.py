"""The default evaluation schedule (train.plan_steps with max_eval_share): a short run evaluates fewer
times, so evaluating never costs more than the cap allows; a run long enough keeps evals_per_run points."""

from __future__ import annotations

import pytest

from loratune.config import load_config
from loratune.train import TRAIN_FORWARDS_PER_EXAMPLE, plan_steps


def cfg(*overrides):
    return load_config(None, list(overrides))


@pytest.mark.parametrize("steps,eval_rows,every", [
    (60, 1515, 60),     # 60 steps of BANKING77 (val 1,003 + 512): one point after step 0, at the end
    (290, 1116, 29),    # the demo: 290 steps, val 604 + 512: evals_per_run (10) fits the cap
    (1000, 1515, 100),  # long runs: unchanged
    (5, 100000, 5),     # a huge validation split: still one point at the end
])
def test_short_runs_evaluate_less(steps, eval_rows, every):
    assert plan_steps(cfg(f"max_steps={steps}"), 9003, eval_rows)[1] == every


@pytest.mark.parametrize("steps", [10, 60, 150, 290, 600, 2000])
@pytest.mark.parametrize("eval_rows", [300, 1116, 1515, 5000])
def test_evaluation_stays_within_the_share(steps, eval_rows):
    c = cfg(f"max_steps={steps}")
    _, every = plan_steps(c, 9003, eval_rows)
    points = 1 + steps // every + (steps % every != 0)  # step 0, every `every` steps, and the last step
    work = TRAIN_FORWARDS_PER_EXAMPLE * steps * 32
    assert points <= max(2, c.train.max_eval_share * work // eval_rows + 1)  # +1: the end may fall between
    assert points <= c.train.evals_per_run + 2


def test_explicit_eval_steps_and_no_cap_are_kept():
    assert plan_steps(cfg("max_steps=60", "eval_steps=6"), 9003, 1515)[1] == 6
    assert plan_steps(cfg("max_steps=60", "max_eval_share=0"), 9003, 1515)[1] == 6
    assert plan_steps(cfg("max_steps=60"), 9003)[1] == 6  # no eval_rows given: evals_per_run as before
