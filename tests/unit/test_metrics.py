from __future__ import annotations

import numpy as np
import pytest

from loratune.metrics import multi_label_scores, single_label_scores, standard_error, top_confused_pairs

LABELS = ("a", "b", "c")


def onehot_logits(pred):
    out = np.full((len(pred), 3), -5.0)
    out[np.arange(len(pred)), pred] = 5.0
    return out


def test_single_label_values():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    s, cm = single_label_scores("val", onehot_logits(pred), y_true, LABELS, loss=0.5)
    assert s["val/accuracy"] == pytest.approx(4 / 6)
    # per class: a P=1/2 R=1/2, b P=2/3 R=1, c P=1 R=1/2
    assert s["val/recall/a"] == 0.5 and s["val/recall/b"] == 1.0 and s["val/precision/b"] == pytest.approx(2 / 3)
    f1 = [0.5, 0.8, 2 / 3]
    assert s["val/macro_f1"] == pytest.approx(np.mean(f1))
    assert s["val/support/c"] == 2 and s["val/loss"] == 0.5 and s["val/n"] == 6
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert {(p["true"], p["pred"], p["count"]) for p in s["val/confused_pairs"]} == {("c", "a", 1), ("a", "b", 1)}


def test_unseen_label_rows_are_errors():
    y_true = np.array([0, 1, -1, -1])  # two rows carry a label the model does not know
    pred = np.array([0, 1, 2, 0])
    s, cm = single_label_scores("val", onehot_logits(pred), y_true, LABELS)
    assert s["val/accuracy"] == 0.5
    assert s["val/precision/c"] == 0.0  # predicting c for an unknown label is a false positive
    assert cm.sum() == 2


def test_a_generated_output_naming_no_label_on_a_row_of_an_unknown_label_is_an_error():
    """Both are -1 (generative classification): 1 of 9 rows read as right with every output naming no label."""
    from loratune.metrics import prediction_scores

    s, _ = prediction_scores("val", np.array([-1, -1, 0]), np.array([-1, 0, 0]), LABELS)
    assert s["val/accuracy"] == pytest.approx(1 / 3)


def test_confused_pairs_sorted_and_bounded():
    cm = np.array([[5, 3, 0], [1, 5, 0], [0, 7, 2]])
    pairs = top_confused_pairs(cm, LABELS, top=2)
    assert pairs == [{"true": "c", "pred": "b", "count": 7}, {"true": "a", "pred": "b", "count": 3}]


def test_multi_label():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    logits = np.where(np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]]) == 1, 4.0, -4.0)
    s = multi_label_scores("val", logits, y, LABELS, unseen_rows=np.array([True, False, False]))
    assert s["val/subset_accuracy"] == 0.0  # row 0 matches but carries an unseen label
    # tp 4, fp 1, fn 1 + row 0's unseen label (a false negative: it was 2*4/(2*4+1+1), the unseen label dropped)
    assert s["val/micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    assert s["val/recall/b"] == 0.5


def test_standard_error():
    assert standard_error(0.5, 100) == pytest.approx(0.05)
    assert np.isnan(standard_error(0.5, 0))


def test_macro_f1_averages_the_classes_the_split_holds_or_the_model_predicted():
    import numpy as np

    from loratune.metrics import prediction_scores

    labels = ("a", "b", "c")
    right, _ = prediction_scores("val", np.array([0, 0]), np.array([0, 0]), labels)
    assert right["val/accuracy"] == 1.0 and right["val/macro_f1"] == 1.0  # b and c: no row, no prediction
    wrong, _ = prediction_scores("val", np.array([0, 1]), np.array([0, 0]), labels)
    assert wrong["val/macro_f1"] == (2 / 3 + 0.0) / 2  # a: P 1, R 1/2; b: a false positive, F1 0; c: not counted
    # the per-class keys still list every class; c has no F1 (nor precision): NaN, not 0 (written null)
    assert np.isnan(wrong["val/f1/c"]) and np.isnan(wrong["val/precision/c"]) and wrong["val/support/c"] == 0
    assert wrong["val/f1/b"] == 0.0 and wrong["val/precision/b"] == 0.0  # b was predicted: a defined 0


@pytest.mark.parametrize("multi", [False, True])
def test_a_class_with_no_row_and_no_prediction_has_no_per_class_f1_or_precision_as_macro_f1_says(multi):
    """One rule (metrics.scored_classes) for which classes have an F1: macro-F1 is the mean of exactly the per-class
    F1s that are not NaN. Before, a class missing from validation and never predicted was written F1 0.0 and
    precision 0.0, which show and the report printed as F1 0.000 and charted in the F1 distribution's [0, 0.1) bar
    while macro-F1 left it out."""
    from loratune.metrics import macro_f1, prediction_scores, scored_classes

    labels = ("card_lost", "balance", "transfer", "pin")  # pin: no validation row, never predicted
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    if multi:
        y1, p1 = np.eye(4, dtype=int)[y], np.eye(4, dtype=int)[pred]
        s = multi_label_scores("val", np.where(p1 == 1, 5.0, -5.0), y1, labels)
        assert scored_classes(y1, p1, 4).tolist() == [True, True, True, False]
    else:
        s, _ = prediction_scores("val", pred, y, labels)
        assert scored_classes(y, pred, 4).tolist() == [True, True, True, False]
    assert np.isnan(s["val/f1/pin"]) and np.isnan(s["val/precision/pin"])
    assert s["val/recall/pin"] == 0.0 and s["val/support/pin"] == 0
    f1 = [s[f"val/f1/{lab}"] for lab in labels]
    assert f1[:3] == pytest.approx([0.5, 0.8, 2 / 3])
    assert s["val/macro_f1"] == pytest.approx(np.nanmean(f1)) == pytest.approx(np.mean(f1[:3]))
    # predicted but absent from validation: a false positive, F1 and precision a defined 0, in macro-F1 too
    s2, _ = prediction_scores("val", np.array([0, 3]), np.array([0, 0]), labels)
    assert s2["val/f1/pin"] == 0.0 and s2["val/precision/pin"] == 0.0
    assert s2["val/macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2) == macro_f1(np.array([0, 0]), np.array([0, 3]), 4)
    # -1 (an output naming no label, a row of a label train never had) is no class
    assert scored_classes(np.array([-1, 0]), np.array([-1, -1]), 4).tolist() == [True, False, False, False]


def test_multi_label_macro_f1_is_scikit_learns_with_absent_labels_left_out_of_the_average():
    """A label with no row and no prediction has no F1: scikit-learn's zero_division=np.nan leaves it out of the
    average, the number metrics.macro_f1 gives (its default, zero_division=0 over every column, would score the
    label 0 and read perfect predictions of a split without two of four labels as 0.5)."""
    from sklearn.metrics import f1_score

    from loratune.metrics import macro_f1

    rng = np.random.default_rng(0)
    for trial in range(20):
        y = (rng.random((30, 6)) < 0.3).astype(int)
        p = (rng.random((30, 6)) < 0.3).astype(int)
        absent = rng.choice(6, size=trial % 4, replace=False)
        y[:, absent] = 0
        p[:, absent] = 0
        want = f1_score(y, p, average="macro", zero_division=np.nan)
        assert macro_f1(y, p, 6) == pytest.approx(want)
    y = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])
    assert macro_f1(y, y.copy(), 4) == 1.0 and f1_score(y, y, average="macro", zero_division=0) == 0.5


def test_the_divergence_advice_names_clipping_only_when_gradients_were_not_clipped():
    from loratune.train import diverged

    assert diverged(10.0, 2.0).endswith("lower learning_rate (/10) or set max_grad_norm (e.g. 1.0)")
    assert diverged(10.0, 2.0, clipped=True).endswith("lower learning_rate (/10)")
    assert diverged(7.9, 2.0, clipped=True) is None and diverged(float("nan"), 2.0) == "non-finite loss"


def test_a_warm_starts_divergence_bar_is_4x_its_step_1_and_diagnoses_multiple_of_the_unadapted_models_loss():
    """A warm start (train.init_from) with step-1 loss 0.581 and an un-adapted model's loss of 1.66 whose window means
    were 2.354, 6.042, 3.901 was never stopped: the bar was 4 x max(0.581, 1.66) = 6.64. The next bar,
    max(4 x 0.581, 1 x un-adapted), also stopped a warm start that recovers (step 1 0.0158, un-adapted 1.62, windows
    0.18, 2.53, 1.25, 1.14, 0.50, 0.79: diverged at 2.53, where main's run completed, macro-F1 0.56 -> 0.61, and
    `diagnose` calls it lr-too-large). The un-adapted multiple is now the diagnosis' own (rules diverged_chance_ratio,
    2): bars 3.32 and 3.24, the first run stopped at 6.04, the second runs on."""
    from loratune.rules import THRESHOLDS
    from loratune.train import DIVERGENCE_FACTOR, WARM_FRESH_FACTOR, divergence_bar, diverged

    assert WARM_FRESH_FACTOR == THRESHOLDS["diverged_chance_ratio"].value == 2.0
    assert divergence_bar(0.581, 1.66) == pytest.approx(max(DIVERGENCE_FACTOR * 0.581, WARM_FRESH_FACTOR * 1.66))
    assert divergence_bar(0.581, 1.66) == pytest.approx(3.32)
    assert divergence_bar(0.0158, 1.62) == pytest.approx(3.24)

    def first_stop(windows, start, fresh):
        return next((i for i, w in enumerate(windows) if diverged(w, start, fresh=fresh)), None)

    assert first_stop([2.354, 6.042, 3.901], 0.581, 1.66) == 1  # the hunter's run: stopped at 6.04
    assert first_stop([0.18, 2.53, 1.25, 1.14, 0.50, 0.79], 0.0158, 1.62) is None  # a bump it recovers from
    why = diverged(6.042, 0.581, clipped=True, fresh=1.66)
    assert why == ("train loss exploded: 6.04 over the last window, 10x its start (0.581) and 3.6x the un-adapted "
                   "model's loss (1.66); lower learning_rate (/10)")
    assert diverged(0.126, 0.0142, fresh=1.1) is None  # a restart bump: 9x, under the un-adapted model's 1.1
    assert diverged(2.0, 0.4, fresh=2.5) is None  # 5x its start, still below the un-adapted model
    assert diverged(2.354, 0.581) and divergence_bar(0.581) == pytest.approx(2.324)  # a fresh start: 4x step 1
    assert divergence_bar(0.581, float("nan")) is None  # a warm start with no un-adapted reference (full)
    assert diverged(float("inf"), 0.581, fresh=float("nan")) == "non-finite loss"


def test_a_warm_start_whose_step_1_loss_is_0_is_held_to_the_unadapted_models_multiple():
    """A warm start whose saved model fits step 1's batch exactly (loss 0.0) had no ratio check at all (divergence_bar
    None: only a non-finite loss stopped it) although its un-adapted model's loss was measured (main's bar: 4 x it).
    The bar is now that multiple alone; a fresh start at 0 still has none."""
    from loratune.train import WARM_FRESH_FACTOR, divergence_bar, diverged

    assert divergence_bar(0.0, 1.62) == pytest.approx(WARM_FRESH_FACTOR * 1.62) == pytest.approx(3.24)
    assert diverged(3.1, 0.0, fresh=1.62) is None
    assert diverged(3.5, 0.0, clipped=True, fresh=1.62) == ("train loss exploded: 3.5 over the last window, from a "
                                                           "start of 0 and 2.2x the un-adapted model's loss (1.62); "
                                                           "lower learning_rate (/10)")
    assert divergence_bar(0.0) is None and divergence_bar(0.0, float("nan")) is None
    assert diverged(1e6, 0.0) is None and diverged(float("nan"), 0.0, fresh=1.62) == "non-finite loss"


def test_compound_and_single_rows_count_labels_as_the_data_writes_them():
    """[pin, refund] with refund unknown to the model was a single row, and [refund] was in neither slice; the
    slices' compound n (every label counted) then stood beside a subset accuracy over other rows."""
    y = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])  # rows: [a, b], [a, refund], [b], [refund]
    counts = np.array([2, 2, 1, 1])
    unseen = np.array([False, True, False, True])
    s = multi_label_scores("test", np.zeros((4, 2)), y, ("a", "b"), unseen, pred=y.copy(), label_counts=counts)
    assert (s["test_compound/n"], s["test_single/n"]) == (2, 2)  # every row in one of them
    assert s["test_compound/subset_accuracy"] == 0.5 and s["test_single/subset_accuracy"] == 0.5  # unknown: wrong


def test_softmax_makes_one_array_of_the_logits_size_and_leaves_them_as_they_were():
    """predict's softmax over a large file's logits made three more arrays of their size (shifted, exp, quotient)."""
    from loratune.metrics import softmax

    from support import traced_peak

    logits = np.random.default_rng(0).normal(size=(2000, 500)).astype(np.float32)
    logits[0, :3] = [1000.0, 999.0, -1000.0]  # large values: the max shift keeps exp finite
    before = logits.copy()
    p, peak = traced_peak(softmax, logits)
    assert peak < 1.5 * logits.nbytes, (peak, logits.nbytes)
    np.testing.assert_array_equal(logits, before)
    e = np.exp(before.astype(np.float64) - before.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert p.dtype == np.float32 and p[0, 0] == pytest.approx(1 / (1 + np.exp(-1.0)), rel=1e-6)


def _raw_label_scores(true_sets, pred_sets):
    """scikit-learn over every label the data writes (the reference the run's numbers must equal)."""
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    mlb = MultiLabelBinarizer().fit(list(true_sets) + list(pred_sets))
    yt, yp = mlb.transform(true_sets), mlb.transform(pred_sets)
    return {avg: f1_score(yt, yp, average=avg, zero_division=1.0 if avg == "samples" else 0)
            for avg in ("micro", "weighted", "samples")}


def test_multi_label_unseen_labels_are_false_negatives_in_micro_weighted_and_samples_f1():
    """[a, refund] predicted [a] is half right, not a perfect row: it scored micro 1.0, samples 1.0 before."""
    true_sets = [["a", "refund"], ["a", "refund"], ["b"], ["b", "c"], ["c", "refund", "pin"]]
    pred_sets = [["a"], ["a"], ["b"], ["b", "c"], ["c"]]
    index = {lab: i for i, lab in enumerate(LABELS)}

    def hot(sets):
        return np.array([[int(lab in row) for lab in LABELS] for row in sets])

    y, pred = hot(true_sets), hot(pred_sets)
    counts = np.array([len(row) for row in true_sets])
    unseen = np.array([any(lab not in index for lab in row) for row in true_sets])
    s = multi_label_scores("val", np.where(pred == 1, 4.0, -4.0), y, LABELS, unseen_rows=unseen, pred=pred,
                           label_counts=counts)
    ref = _raw_label_scores(true_sets, pred_sets)
    assert s["val/micro_f1"] == pytest.approx(ref["micro"]) == pytest.approx(2 * 6 / (2 * 6 + 0 + 4))
    assert s["val/weighted_f1"] == pytest.approx(ref["weighted"]) == pytest.approx(6 / 10)
    assert s["val/samples_f1"] == pytest.approx(ref["samples"])
    assert s["val/subset_accuracy"] == pytest.approx(2 / 5)
    assert s["val/macro_f1"] == 1.0  # the trained classes only: every a, b, c is right (docs/run-record.md)
    # compound rows: [a, refund] x2, [b, c], [c, refund, pin]: per-row F1 2/3, 2/3, 1, 1/2
    assert s["val_compound/samples_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 0.5) / 4)
    assert s["val_compound/n"] == 4


def test_single_label_weighted_f1_counts_unseen_label_rows_as_errors_with_their_support():
    """Unseen-label rows had weight 0: weighted-F1 read 0.92 with accuracy 0.81."""
    from sklearn.metrics import f1_score

    from loratune.metrics import prediction_scores

    raw_true = ["a", "a", "b", "b", "c", "refund", "refund", "refund"]
    raw_pred = ["a", "a", "b", "c", "c", "a", "b", "b"]
    index = {lab: i for i, lab in enumerate(LABELS)}
    s, _ = prediction_scores("val", np.array([index[p] for p in raw_pred]),
                             np.array([index.get(t, -1) for t in raw_true]), LABELS)
    ref = f1_score(raw_true, raw_pred, average="weighted", zero_division=0)
    assert s["val/weighted_f1"] == pytest.approx(ref) == pytest.approx((2 * 0.8 + 2 * 0.4 + 2 / 3) / 8)
    assert s["val/accuracy"] == 4 / 8


def test_the_probe_bootstrap_reads_the_scored_classes_rule_and_empty_score_from_metrics(monkeypatch):
    """difficulty._f1_counts (the bootstrap's macro-F1 from counts) had its own copy of which classes are scored
    ((tp + fp + fn) > 0) and of the score with none (0.0): it now reads metrics.scored_counts and
    metrics.NO_SCORED_CLASS_MACRO_F1, and agrees with metrics.macro_f1 on the same rows."""
    from loratune import difficulty, metrics

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, (12, 5)) * (rng.random((12, 5)) < 0.4)
        p = rng.integers(0, 2, (12, 5)) * (rng.random((12, 5)) < 0.4)
        tp, fp, fn = (y & p).sum(0), ((1 - y) & p).sum(0), (y & (1 - p)).sum(0)
        assert difficulty._f1_counts(tp, fp, fn) == pytest.approx(metrics.macro_f1(y, p, 5))
    zero = np.zeros(3)
    assert difficulty._f1_counts(zero, zero, zero) == metrics.NO_SCORED_CLASS_MACRO_F1
    seen = []
    monkeypatch.setattr(metrics, "scored_counts", lambda t, q: seen.append((t.tolist(), q.tolist())) or t > 0)
    monkeypatch.setattr(metrics, "NO_SCORED_CLASS_MACRO_F1", -1.0)
    assert difficulty._f1_counts(np.array([1.0, 0]), np.array([0.0, 2]), np.array([1.0, 0])) == 2 / 3
    assert seen == [([2.0, 0.0], [1.0, 2.0])]  # rows (tp + fn), predictions (tp + fp): the class-1 FPs left out
    assert difficulty._f1_counts(zero, zero, zero) == -1.0


def test_macro_f1_with_no_scored_class_is_the_one_stated_score_and_every_per_class_f1_is_nan():
    """No row of a known class and no prediction of one (a generative model naming no label on rows of labels it
    never learned; multi-label rows with no label and none predicted; no rows): no class has an F1 (NaN per class)
    and macro-F1 is metrics.NO_SCORED_CLASS_MACRO_F1, 0.0, stated once. Before, it fell to f1_score over every
    class at zero_division=0 (0.0 by accident of that fallback, undocumented), and on no rows raised ValueError."""
    from loratune.metrics import NO_SCORED_CLASS_MACRO_F1, macro_f1, prediction_scores

    assert NO_SCORED_CLASS_MACRO_F1 == 0.0
    s, _ = prediction_scores("val", np.array([-1, -1]), np.array([-1, -1]), ("a", "b"))
    assert s["val/macro_f1"] == NO_SCORED_CLASS_MACRO_F1 and s["val/accuracy"] == 0.0  # every row an error
    assert all(np.isnan(s[f"val/{m}/{lab}"]) for m in ("f1", "precision") for lab in ("a", "b"))
    ml = multi_label_scores("val", np.full((2, 2), -5.0), np.zeros((2, 2), int), ("a", "b"))
    assert ml["val/macro_f1"] == NO_SCORED_CLASS_MACRO_F1 == ml["val/micro_f1"]  # F1 averages: 0 with nothing in
    assert np.isnan(ml["val/f1/a"]) and np.isnan(ml["val/f1/b"])
    assert macro_f1(np.array([], int), np.array([], int), 3) == NO_SCORED_CLASS_MACRO_F1  # raised ValueError
    assert macro_f1(np.zeros((0, 3), int), np.zeros((0, 3), int), 3) == NO_SCORED_CLASS_MACRO_F1


def test_a_warm_starts_un_adapted_multiple_is_the_runs_own_diverged_chance_ratio():
    """train.warm_fresh_factor: the ratio the run's record says it is judged by (a tune trial's --thresholds), else the
    default; a record value that is no number (a hand-edited run.json) falls back to the default."""
    from loratune.train import WARM_FRESH_FACTOR, divergence_bar, diverged, warm_fresh_factor

    assert warm_fresh_factor(None) == warm_fresh_factor({}) == WARM_FRESH_FACTOR == 2.0
    assert warm_fresh_factor({"diverged_chance_ratio": 5}) == 5.0
    assert warm_fresh_factor({"diverged_chance_ratio": "x"}) == warm_fresh_factor({"diverged_chance_ratio": True}) == 2.0
    assert divergence_bar(0.581, 1.66, warm_fresh_factor({"diverged_chance_ratio": 5})) == pytest.approx(8.3)
    assert diverged(6.042, 0.581, fresh=1.66) and diverged(6.042, 0.581, fresh=1.66, fresh_factor=5.0) is None
