"""The objective table: direction, how a score is shown, and the search's curves on a loss."""

from __future__ import annotations

import pytest

from loratune.objectives import LOSS_FLOOR, SCORE_FLOOR, lm_metrics, objective
from loratune.search.runner import curve_of, score_at


def test_a_loss_is_scored_negated_and_shown_as_itself():
    o = objective("val/loss")
    assert (o.higher_is_better, o.noise_floor) == (False, LOSS_FLOOR)
    assert o.score(2.31) == -2.31 and o.value(-2.31) == 2.31 and o.show(-2.31) == "val loss 2.310"
    assert o.score(float("nan")) is None and o.score(None) is None and o.fmt(None) == "-"


def test_a_comparison_of_scores_is_printed_turned_round_beside_shown_losses():
    loss, f1 = objective("val/loss"), objective("val/macro_f1")
    a, b = loss.score(2.561), loss.score(1.860)
    assert a < b and f"{loss.fmt(a)} {loss.shown_op('<')} {loss.fmt(b)}" == "2.561 > 1.860"
    assert [loss.shown_op(op) for op in ("<", "<=", ">", ">=")] == [">", ">=", "<", "<="]
    assert [f1.shown_op(op) for op in ("<", "<=", ">", ">=")] == ["<", "<=", ">", ">="]


def test_a_classifier_metric_and_a_prompt_set_score_are_larger_is_better():
    assert objective("val/macro_f1").score(0.8) == 0.8 and objective(None).key == "val/macro_f1"
    p = objective("val/prompt_novel_chrf")
    assert p.higher_is_better and p.noise_floor == SCORE_FLOOR and p.show(0.42) == "novel prompt-set chrf 0.420"


def test_curves_on_a_loss_rise_as_the_loss_falls():
    points = [{"step": 0, "val/loss": 3.0}, {"step": 5, "val/loss": 2.5}, {"step": 10, "val/loss": float("nan")}]
    assert curve_of(points, "val/loss") == ((0, -3.0), (5, -2.5))
    # a classifier's old record without its key falls back to accuracy; a loss never does
    assert score_at({"val/accuracy": 0.7}, "val/macro_f1") == 0.7
    assert score_at({"val/accuracy": 0.7}, "val/loss") is None


@pytest.mark.parametrize("labels,prompts,expected", [
    (False, False, ("loss",)),
    (True, False, ("loss", "macro_f1", "weighted_f1", "accuracy")),
    (False, True, ("loss", "prompt_familiar_chrf", "prompt_familiar_exact_match", "prompt_novel_chrf",
                   "prompt_novel_exact_match")),
])
def test_a_causal_lm_run_offers_the_objectives_it_computes(labels, prompts, expected):
    assert lm_metrics(labels, prompts) == expected


def test_the_same_metric_on_test_and_the_axis_says_which_way_is_better():
    loss, f1 = objective("val/loss"), objective(None)
    assert (loss.on("test").key, loss.on("test").name) == ("test/loss", "test loss")
    assert (f1.on("test").key, f1.on("test").name) == ("test/macro_f1", "test macro-F1")
    assert loss.on("test").higher_is_better is False and f1.on("test").higher_is_better is True
    assert loss.axis == "val loss (lower is better)" and f1.axis == "val macro-F1"


def test_a_trial_is_valued_at_its_best_trained_point_never_the_untrained_model():
    """A trial the wall budget cut after one step (no trained evaluation) took its run.json best, the untrained
    model's step 0, as its value: it became the lr grid's 'trained best', the incumbent and the recommendation.
    Its value is now its best trained point (trial.FIRST_TRAINED_STEP), and none without one."""
    from loratune.search.runner import result_from

    untrained = {"step": 0, "val/macro_f1": 0.033}
    cut = {"status": "interrupted", "best": untrained, "objective": "val/macro_f1", "examples_seen": 8}
    assert result_from(cut, None, 3.0, pruned="budget", curve=((0, 0.033),)).value is None
    assert result_from(cut, None, 3.0, pruned="budget").value is None
    # trained points all below the untrained model: the best of them, not step 0's
    assert result_from(cut, None, 3.0, curve=((0, 0.033), (4, 0.02), (8, 0.025))).value == 0.025
    trained = {**cut, "best": {"step": 8, "val/macro_f1": 0.4}}
    assert result_from(trained, None, 3.0, curve=((0, 0.033), (8, 0.4))).value == 0.4
    assert result_from({**cut, "best": {"val/macro_f1": 0.4}}, None, 3.0).value == 0.4  # an old record: no step


def test_keep_order_breaks_a_tie_on_the_val_loss_for_causal_lm_and_multi_label_runs():
    """The one keep rule (sft and train keep by it, the report reads an unfinished run's best by it). A multi-label
    run kept the first of tied exact-match points: step 8 (subset accuracy 0.1, val loss 4.53) over step 24 (0.1,
    4.25, every other score better)."""
    from loratune.objectives import keep_order

    a = {"val/macro_f1": 0.8393, "val/loss": 0.9297}
    b = {"val/macro_f1": 0.8393, "val/loss": 0.6336}
    assert keep_order(b, "val/macro_f1", "causal-lm") > keep_order(a, "val/macro_f1", "causal-lm")
    assert keep_order(b, "val/macro_f1", "causal-lm") == (0.8393, -0.6336)
    step8 = {"val/subset_accuracy": 0.1, "val/loss": 4.532}
    step24 = {"val/subset_accuracy": 0.1, "val/loss": 4.253}
    assert keep_order(step24, "val/subset_accuracy", "multi_label") == (0.1, -4.253)
    assert keep_order(step24, "val/subset_accuracy", "multi_label") > keep_order(step8, "val/subset_accuracy",
                                                                                  "multi_label")
    # a better objective wins whatever the loss
    assert keep_order({"val/subset_accuracy": 0.15, "val/loss": 9.0}, "val/subset_accuracy", "multi_label") > \
        keep_order(step24, "val/subset_accuracy", "multi_label")
    # a single-label classifier keeps the first of ties; a loss objective has no tie-break
    assert keep_order(a, "val/macro_f1", "single_label") == keep_order(b, "val/macro_f1", "single_label")
    assert keep_order(b, "val/loss", "causal-lm") == (-0.6336, 0.0)
    assert keep_order({"val/loss": 1.0}, "val/macro_f1", "causal-lm") is None  # no objective: never kept
    assert keep_order({"val/macro_f1": float("nan")}, "val/macro_f1", "causal-lm") is None


def test_patience_counts_in_the_order_the_kept_model_follows():
    """Early stopping's one rule (train and sft count by it). A multi-label run's tie in exact match with a lower val
    loss moved the saved model to it (keep_order) but counted as no improvement: patience 1 stopped the run at step
    16, the step it had just saved (0.1 at val loss 4.53 at step 8, 0.1 at 4.30 at step 16)."""
    from loratune.objectives import Patience, keep_order

    def counts(points, key, task, min_gain=0.0):
        patience = Patience(min_gain)
        return [patience.count(i, keep_order(p, key, task)) for i, p in enumerate(points, 1)]

    ml = [{"val/subset_accuracy": a, "val/loss": v} for a, v in ((0.0, 5.51), (0.1, 4.53), (0.1, 4.30), (0.1, 4.41),
                                                                  (0.1, 4.35), (0.1, 4.29), (0.15, 4.6))]
    # a tie counts where its val loss is below the lowest at that score (4.41 and 4.35 are not: 4.30 was)
    assert counts(ml, "val/subset_accuracy", "multi_label") == [0, 0, 0, 1, 2, 0, 0]
    assert counts(ml, "val/subset_accuracy", "causal-lm") == [0, 0, 0, 1, 2, 0, 0]
    # a single-label classifier keeps the first of ties, and patience counts a tie as no gain
    assert counts(ml, "val/subset_accuracy", "single_label") == [0, 0, 1, 2, 3, 4, 0]
    # a gain must pass min_gain (early_stopping_threshold); under it, a tie's rule: a lower val loss is progress
    assert counts(ml, "val/subset_accuracy", "multi_label", min_gain=0.5) == [0, 0, 0, 1, 2, 0, 1]
    assert counts(ml, "val/subset_accuracy", "single_label", min_gain=0.05) == [0, 0, 1, 2, 3, 4, 5]
    # a loss objective: only a lower loss gains
    assert counts([{"val/loss": v} for v in (2.0, 1.5, 1.5, 1.6, 1.4)], "val/loss", "causal-lm") == [0, 0, 1, 2, 0]
    # until a point has a finite objective every point counts as progress; a later one without it as none
    nan = float("nan")
    assert counts([{"val/macro_f1": nan}, {}, {"val/macro_f1": 0.2, "val/loss": 1.0}, {"val/macro_f1": nan},
                   {"val/macro_f1": 0.2, "val/loss": nan}], "val/macro_f1", "causal-lm") == [0, 0, 0, 1, 2]


def test_kept_step_is_the_model_training_keeps_a_trained_point_the_first_of_ties():
    """The report reads an unfinished run's best by the rule training keeps its model by (objectives.keeps): step 0
    (the base model) is never kept while a trained point has a score; a single-label tie keeps the earlier point, a
    causal-lm tie the lower val loss; step 0's point stands only until a trained point has one."""
    from loratune.objectives import NOTHING_KEPT, keep_order, keeps, kept_step

    tied = [{"step": s, "val/macro_f1": 0.03333333333333333, "val/loss": v}
            for s, v in ((0, 1.669), (50, 1.656), (100, 1.619))]
    assert kept_step(tied, "val/macro_f1", "single_label") == 50
    assert kept_step(tied, "val/macro_f1", "causal-lm") == 100  # the tie goes to the lower val loss
    assert kept_step(tied, "val/loss", "causal-lm") == 100
    assert kept_step(tied[:1], "val/macro_f1", "single_label") == 0  # no trained point yet: the record's step 0
    assert kept_step([tied[0], {"step": 50, "val/loss": 1.0}], "val/macro_f1", "single_label") == 0
    assert kept_step([{"step": 0, "val/loss": 1.0}], "val/macro_f1", "single_label") is None
    assert kept_step([{**tied[0], "val/macro_f1": 0.9}] + tied[1:], "val/macro_f1", "single_label") == 50
    # the step-by-step rule training calls
    key = keep_order(tied[0], "val/macro_f1", "single_label")
    assert not keeps(0, key, NOTHING_KEPT) and keeps(50, key, NOTHING_KEPT) and not keeps(100, key, key)
    assert not keeps(50, None, NOTHING_KEPT)


def test_kept_step_reads_a_non_finite_val_loss_as_training_kept_by_it():
    """A multi-label run at subset accuracy 0.1 / 0.2 / 0.2 with val loss 1.0 / inf / 0.5: training kept step 16
    (its tie-break -inf at step 8), but the history writes inf as null (store.json_safe) and kept_step read NaN there,
    which no comparison passes: the report named step 8. A val loss that is not a finite number (inf, NaN, null,
    absent) is the worst tie-break, so training and the report agree."""
    import json
    import math

    from loratune.objectives import NOTHING_KEPT, Patience, keep_order, keeps, kept_step
    from loratune.store import json_safe

    for bad in (math.inf, math.nan, None):
        pts = [{"step": 0, "val/subset_accuracy": 0.1, "val/loss": 1.0},
               {"step": 8, "val/subset_accuracy": 0.2, "val/loss": bad},
               {"step": 16, "val/subset_accuracy": 0.2, "val/loss": 0.5}]
        kept, trained = NOTHING_KEPT, None
        for p in pts:  # training's loop (train.evaluate_now)
            k = keep_order(p, "val/subset_accuracy", "multi_label")
            if keeps(p["step"], k, kept):
                kept, trained = k, p["step"]
        history = [json.loads(json.dumps(json_safe(p))) for p in pts]
        assert trained == 16 and kept_step(history, "val/subset_accuracy", "multi_label") == 16, bad
        assert kept_step(pts, "val/subset_accuracy", "multi_label") == 16
        assert keep_order(pts[1], "val/subset_accuracy", "multi_label") == (0.2, -math.inf)
        # early stopping counts the move to step 16 as progress, as the kept model moved
        patience = Patience(0.0)
        assert [patience.count(p["step"], keep_order(p, "val/subset_accuracy", "multi_label"))
                for p in history] == [0, 0, 0]
    # a val loss of -inf is no better than inf: not a finite number
    assert keep_order({"val/subset_accuracy": 0.2, "val/loss": -math.inf}, "val/subset_accuracy",
                      "multi_label") == (0.2, -math.inf)
    # both ties without a finite loss: the first stays
    assert kept_step([{"step": 8, "val/subset_accuracy": 0.2, "val/loss": None},
                      {"step": 16, "val/subset_accuracy": 0.2}], "val/subset_accuracy", "multi_label") == 8


def test_patience_never_takes_step_0_as_its_bar():
    """Step 0's point (the untrained model) set the bar: a warmup's step 1 runs at lr 0 and scores as step 0, so
    patience 1 ended the run after step 1. As the HF Trainer's EarlyStoppingCallback, the first trained point sets
    it; step 0's point counts as nothing, whatever it scored."""
    from loratune.objectives import Patience, keep_order

    pts = [{"step": 0, "val/macro_f1": 0.9}, {"step": 1, "val/macro_f1": 0.1}, {"step": 2, "val/macro_f1": 0.1},
           {"step": 3, "val/macro_f1": 0.2}, {"step": 4, "val/macro_f1": 0.15}]
    patience = Patience(0.0)
    assert [patience.count(p["step"], keep_order(p, "val/macro_f1", "single_label")) for p in pts] == [0, 0, 1, 0, 1]


def test_patience_counts_from_the_one_first_trained_step(monkeypatch):
    """"Trained points start at step 1" was written twice: Patience skipped `not step` while the search's rules (and
    protocol.long's docstring) named trial.FIRST_TRAINED_STEP. One constant now, in objectives, that both read."""
    from loratune import objectives
    from loratune.search import trial

    assert trial.FIRST_TRAINED_STEP is objectives.FIRST_TRAINED_STEP == 1
    p = objectives.Patience(0.0)
    assert p.count(0, (0.9, -1.0)) == 0 and p.best is None  # the untrained point never sets the bar
    monkeypatch.setattr(objectives, "FIRST_TRAINED_STEP", 2)  # Patience reads the constant, not its own rule
    assert p.count(1, (0.9, -1.0)) == 0 and p.best is None
    assert p.count(2, (0.5, -1.0)) == 0 and p.best == (0.5, -1.0)
    assert p.count(3, (0.5, -1.0)) == 1
