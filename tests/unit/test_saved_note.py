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
