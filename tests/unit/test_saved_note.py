"""run.json saved_model.note on the step-0 model (train.start_model): a warm start (train.init_from) begins from a
trained model, so its notes name that model rather than calling it untrained."""

from __future__ import annotations

from loratune.train import saved_note, start_note


def test_a_better_step0_model_is_named_by_how_the_run_started():
    run = {"best": {"step": 20, "val/loss": 1.8265}, "start": {"step": 0, "val/loss": 1.0348}}
    assert start_note(run, "val/loss", False, "runs/r2/adapter") == (
        "; the starting model (init_from runs/r2/adapter) at step 0 scored better (val/loss 1.0348 vs 1.8265)")
    assert start_note(run, "val/loss", False, None) == (
        "; the untrained model at step 0 scored better (val/loss 1.0348 vs 1.8265)")
    # higher is better (a classifier's macro-F1): the same rule, the other direction
    f1 = {"best": {"step": 8, "val/macro_f1": 0.4}, "start": {"step": 0, "val/macro_f1": 0.6}}
    assert start_note(f1, "val/macro_f1", True, None) == (
        "; the untrained model at step 0 scored better (val/macro_f1 0.6000 vs 0.4000)")
    assert start_note(f1, "val/macro_f1", False, None) == ""  # the trained model is the better one
    assert start_note({"best": {"val/loss": 1.0}}, "val/loss", False, None) == ""  # no step 0 scored


def test_a_saved_model_of_learning_rate_zero_steps_is_the_step0_model():
    assert saved_note(1, "lowest val loss", 1, "runs/r2/adapter").startswith(
        "adapter/ holds the model of step 1, which is the starting model (init_from runs/r2/adapter): every step")
    assert saved_note(1, "lowest val loss", 1).startswith(
        "adapter/ holds the model of step 1, which is the untrained model: every step")
    assert saved_note(4, "lowest val loss", 1, "x") == (
        "adapter/ holds the model of step 4, the lowest val loss among the trained evaluation points")


def test_an_untrained_saved_model_early_stopping_kept_does_not_blame_the_run_length():
    """Early stopping cut a warmup run after its lr-0 step: the note said "(a longer run, or warmup_ratio=0, trains
    it)" of a run that had 15 planned steps; it names early stopping and its patience instead."""
    note = saved_note(1, "best val macro-F1", 1, early_stopped=True)
    assert note.startswith("adapter/ holds the model of step 1, which is the untrained model: every step")
    assert "early stopping ended the run" in note and "early_stopping_patience" in note and "longer run" not in note
    assert "a longer run" in saved_note(1, "best val macro-F1", 1)
    assert saved_note(3, "best val macro-F1", 1, early_stopped=True) == (
        "adapter/ holds the model of step 3, the best val macro-F1 among the trained evaluation points")


def test_an_untrained_saved_model_over_evaluated_trained_points_says_the_run_did_not_learn():
    """Without early stopping, a run whose trained points (steps 2-15) all tied the lr-0 step 1 kept step 1 with a
    note blaming the run's length ("a longer run ... trains it"); that wording is for a run whose last evaluation is
    within its lr-0 steps only."""
    note = saved_note(1, "best val macro-F1", 1, last_eval=15)
    assert note == ("adapter/ holds the model of step 1, which is the untrained model: every step up to it ran at "
                    "learning rate 0 (the warmup starts at 0), and no later, trained evaluation point (steps 2-15) "
                    "scored better than it: the run did not learn (`loratune diagnose` on the run says why)")
    for last in (None, 1):  # the last evaluation was an lr-0 step: the run's length left it untrained
        assert saved_note(1, "best val macro-F1", 1, last_eval=last).endswith(
            ", so no evaluation point was a trained one (a longer run, or warmup_ratio=0, trains it)")
    assert "early stopping ended the run" in saved_note(1, "best val macro-F1", 1, early_stopped=True, last_eval=3)
    assert saved_note(2, "best val macro-F1", 1, last_eval=15).endswith("among the trained evaluation points")
