"""The default evaluation schedule (train.plan_steps with max_eval_share): a short run evaluates fewer
times, so evaluating never costs more than the cap allows; a run long enough keeps evals_per_run points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loratune.config import load_config
from loratune.train import (STEP0_SPLITS, TRAIN_FORWARDS_PER_EXAMPLE, eval_budget_rows, eval_rows_per_point,
                            plan_steps, robustness_skip)


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


def test_step0_scores_validation_only():
    assert STEP0_SPLITS == ("val",)
    assert eval_rows_per_point(1003, 512) == (1003, 1515)


@pytest.mark.parametrize("steps,step0_rows,eval_rows,every", [
    (40, 1003, 1515, 40),   # config (a) of the throughput bench: still one point after step 0
    (150, 1003, 1515, 38),  # budget 7,200 rows: (7,200 - 1,003) // 1,515 = 4 points (with a full step 0: 3)
    (290, 604, 1116, 29),   # the demo keeps evals_per_run (10) after step 0
])
def test_a_cheaper_step0_leaves_more_of_the_budget_to_later_points(steps, step0_rows, eval_rows, every):
    c = cfg(f"max_steps={steps}")
    assert plan_steps(c, 9003, eval_rows, step0_rows)[1] == every
    points = len(range(every, steps, every)) + 1  # the loop's points after step 0: multiples of `every`, and the end
    # (37 gave 5 points, 7,063 >)
    assert step0_rows + points * eval_rows <= eval_budget_rows(c, steps, 9003) or points == 1


def test_eval_budget_rows():
    assert eval_budget_rows(cfg("max_steps=40"), 40, 9003) == 0.5 * TRAIN_FORWARDS_PER_EXAMPLE * 40 * 32 == 1920
    assert eval_budget_rows(cfg("max_steps=40", "gradient_accumulation_steps=2", "max_eval_share=1"), 40,
                            9003) == 7680
    assert eval_budget_rows(cfg("max_steps=40", "eval_steps=5"), 40, 9003) is None  # an explicit schedule: no cap
    assert eval_budget_rows(cfg("max_steps=40", "max_eval_share=0"), 40, 9003) is None


def test_the_budget_counts_the_rows_a_step_really_trains():
    # a batch larger than the data trains the data's rows, not the nominal batch: 6 steps of batch 256 on 48 rows
    # are 288 examples, a budget of 0.5 x 3 x 288 = 432 rows (was 0.5 x 3 x 6 x 256 = 2,304)
    assert eval_budget_rows(cfg("max_steps=6", "per_device_train_batch_size=256"), 6, 48) == 432
    # an epoch's last step trains its remainder: 48 rows at batch 8 x accum 5 are 2 steps a pass (40 + 8 rows)
    assert eval_budget_rows(cfg("max_steps=3", "gradient_accumulation_steps=5", "per_device_train_batch_size=8"), 3,
                            48) == int(0.5 * 3 * (48 + 40))
    # with 200 validation rows a point, that budget has room for step 0 alone: one point, at the end
    assert plan_steps(cfg("max_steps=6", "per_device_train_batch_size=256"), 48, 200 + 48, 200) == (6, 6)


@pytest.mark.parametrize("overrides,steps,examples", [
    (("num_train_epochs=1", "gradient_accumulation_steps=5"), 2, 48),  # 6 batches: 5 + 1 (was 2 x 5 = 80 rows)
    (("num_train_epochs=3", "gradient_accumulation_steps=4", "per_device_train_batch_size=7"), 6, 144),  # 7: 4 + 3
    (("num_train_epochs=2", "gradient_accumulation_steps=2"), 6, 96),  # divides: as before
    (("num_train_epochs=1.5", "gradient_accumulation_steps=5"), 3, 88),  # half an epoch more: its first step
])
def test_an_epoch_ends_with_a_step_on_its_remainder(overrides, steps, examples):
    from loratune.train import examples_planned, step_groups, steps_per_epoch

    c = cfg("per_device_train_batch_size=8", *overrides, "max_eval_share=0")
    assert plan_steps(c, 48, 248, 200)[0] == steps
    assert examples_planned(c, 48, steps) == examples
    # the loop's step groups: an epoch's batches in groups of accum, the last group the remainder, never the next
    # epoch's batches
    t = c.train
    bs = t.per_device_train_batch_size
    batches = [list(range(i, min(48, i + bs))) for i in range(0, 48, bs)]
    groups = step_groups(lambda: batches, t.gradient_accumulation_steps)
    dealt = [next(groups) for _ in range(steps)]
    assert sum(len(rows) for g in dealt for rows in g) == examples
    assert [b for g in dealt[:steps_per_epoch(c, 48)] for b in g] == batches  # one epoch's steps: its batches


def test_robustness_probe_is_charged_to_the_budget():
    assert robustness_skip(None, 10_000, 1_000) is None  # no cap: it runs
    assert robustness_skip(3_000, 2_000, 1_000) is None  # fits exactly
    why = robustness_skip(1_920, 2_518, 980)
    assert why is not None and "2518" in why and "1920" in why and "3498" in why


def _enc(*lengths):
    from loratune.sft_data import SFTEncoded
    return SFTEncoded(ids=[[1] * n for n in lengths], prompt_lens=np.zeros(len(lengths), dtype=np.int64))


def test_a_causal_lm_point_is_priced_in_mean_training_rows_with_generation_per_decode_step():
    from loratune.sft import DECODE_STEP_TOKENS, GEN_BATCH, eval_cost_rows

    train = _enc(10, 30)  # the mean training row: 20 tokens
    scored = {"val": _enc(5, 15), "train_eval": _enc(40)}
    assert eval_cost_rows(scored, [], train) == (1, 3)  # 20 tokens at step 0 (val only), 60 later
    prompts = [[7] * 4] * 3  # 12 prompt tokens, one batch: 5 decode steps
    gen = 12 + 5 * DECODE_STEP_TOKENS
    assert eval_cost_rows(scored, [(prompts, 5)], train) == (math.ceil((20 + gen) / 20), math.ceil((60 + gen) / 20))
    # a decode step costs the same for one row as for GEN_BATCH: one more prompt past a full batch is a second batch
    full, over = [[7]] * GEN_BATCH, [[7]] * (GEN_BATCH + 1)
    assert eval_cost_rows({}, [(full, 5)], train)[0] == math.ceil((GEN_BATCH + 5 * DECODE_STEP_TOKENS) / 20)
    assert eval_cost_rows({}, [(over, 5)], train)[0] == math.ceil((GEN_BATCH + 1 + 10 * DECODE_STEP_TOKENS) / 20)
    assert eval_cost_rows({}, [([], 64)], train) == (0, 0)  # no prompt set: nothing generated


def test_the_train_loss_keeps_evals_per_run_points_when_evaluation_is_thinned():
    from loratune.train import TRAIN_LOG_MIN_STEPS, train_log_every

    assert train_log_every(cfg("max_steps=75"), 75, 75) == 7  # one eval after step 0: the train loss every 7 steps
    assert train_log_every(cfg("max_steps=40"), 40, 20) == TRAIN_LOG_MIN_STEPS == 5  # not a window of 4 steps
    assert train_log_every(cfg("max_steps=12"), 12, 4) is None  # windows of 5 would be longer than the evals'
    assert train_log_every(cfg("max_steps=40"), 40, 9) is None  # two windows of 5 do not fit between evaluations
    assert train_log_every(cfg("max_steps=40"), 40, 10) == 5
    assert train_log_every(cfg("max_steps=290"), 290, 29) is None  # evaluation as dense as evals_per_run asks
    assert train_log_every(cfg("max_steps=75", "eval_steps=75"), 75, 75) is None  # a schedule given: as given
    assert train_log_every(cfg("max_steps=75", "evals_per_run=3"), 75, 75) == 25


def test_val_loss_only_points_fill_the_budget_left_between_the_full_points():
    from loratune.train import loss_points_every

    forty = cfg("max_steps=40")
    # evals_per_run 10 over 40 steps: every 4 steps, at least TRAIN_LOG_MIN_STEPS (5); full points at 20 and 40
    # score the loss already, so 5, 10, 15, 25, 30, 35 cost 6 x 9 = 54 rows
    assert loss_points_every(forty, 40, 20, 100, 9) == 5
    assert loss_points_every(forty, 40, 20, 54, 9) == 5
    # 40 rows left: every 6 (6 points, 54), 7 (5, 45) and 8 (4 points, 36 rows) in turn
    assert loss_points_every(forty, 40, 20, 40, 9) == 8
    # nothing fits before two loss windows no longer fit between the full points
    assert loss_points_every(forty, 40, 20, 5, 9) is None
    assert loss_points_every(forty, 40, 20, -10, 9) is None  # the full points took the whole budget
    assert loss_points_every(forty, 40, 9, 1000, 9) is None  # full points as dense as a loss window
    assert loss_points_every(cfg("max_steps=40", "eval_steps=20"), 40, 20, 1000, 9) is None  # a schedule given
    assert loss_points_every(forty, 40, 20, None, 9) is None  # no cap (max_eval_share 0)
    # the demo (75 steps, step 0 and the last step only): every 7 steps, 10 points
    assert loss_points_every(cfg("max_steps=75"), 75, 75, 200, 20) == 7
