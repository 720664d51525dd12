"""Multi-label metrics, decoding, threshold tuning and losses against hand-computed cases (issue 19)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loratune.metrics import (Decoding, crossfit_thresholds, decode, multi_label_row_scores, multi_label_scores,
                              tune_thresholds)

LABELS = ("a", "b", "c")
Y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1]])
PRED = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])


def test_metric_definitions_by_hand():
    s = multi_label_scores("val", np.zeros_like(Y, dtype=float), Y, LABELS, pred=PRED)
    # exact match: rows 0 and 2
    assert s["val/subset_accuracy"] == pytest.approx(0.5)
    # micro: tp 4, fp 0, fn 2 (row 1's b, row 3's c) -> 2*4 / (2*4 + 0 + 2)
    assert s["val/micro_f1"] == pytest.approx(0.8)
    # macro: a 1; b tp 1 fn 1 -> 2/3; c tp 1 fn 1 -> 2/3
    assert s["val/macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # samples: per row F1 1, 2/3 (p 1, r 1/2), 1, 2/3
    assert s["val/samples_f1"] == pytest.approx((1 + 2 / 3 + 1 + 2 / 3) / 4)
    assert (s["val/recall/a"], s["val/recall/b"], s["val/recall/c"]) == (1.0, 0.5, 0.5)
    # compound slice (2+ true labels): rows 1 and 3, neither exact; single rows 0 and 2 both exact
    assert s["val_compound/n"] == 2 and s["val_compound/subset_accuracy"] == 0.0
    assert s["val_compound/samples_f1"] == pytest.approx(2 / 3)
    assert s["val_single/n"] == 2 and s["val_single/subset_accuracy"] == 1.0
    assert s["val/labels_per_row"] == 1.0  # four predicted labels on four rows


def test_samples_f1_counts_a_right_empty_answer():
    y = np.array([[0, 0, 0], [1, 0, 0]])
    pred = np.array([[0, 0, 0], [0, 0, 0]])
    s = multi_label_scores("val", np.zeros((2, 3)), y, LABELS, pred=pred)
    assert s["val/samples_f1"] == pytest.approx(0.5)  # row 0 right (1), row 1 missed (0)
    assert s["val/subset_accuracy"] == 0.5


def test_unseen_rows_fail_the_slices_too():
    s = multi_label_row_scores("test", PRED, Y, np.array([True, False, False, False]))
    assert s["test_single/subset_accuracy"] == 0.5  # row 0 matches but carries a label the model does not know


def test_fixed_threshold_without_pred_is_the_old_behaviour():
    logits = np.where(PRED == 1, 3.0, -3.0)
    assert multi_label_scores("v", logits, Y, LABELS)["v/subset_accuracy"] == 0.5


# ------------------------------------------------------------------ decoding


def dec(th=(0.5, 0.5, 0.5), **kw):
    return Decoding(np.array(th, dtype=float), **kw)


def test_per_label_threshold():
    assert decode(np.array([[0.4, 0.35, 0.1]]), dec((0.5, 0.3, 0.5))).tolist() == [[0, 1, 0]]


def test_at_least_one_label_unless_empty_allowed():
    p = np.array([[0.2, 0.1, 0.3]])
    assert decode(p, dec(min_labels=1)).tolist() == [[0, 0, 1]]
    assert decode(p, dec(min_labels=0)).tolist() == [[0, 0, 0]]


def test_the_fallback_label_is_the_largest_margin_over_its_own_threshold():
    # a: logit .45 - logit .5 = -0.20; b: logit .09 - logit .10 = -0.12 -> b, though a's probability is higher
    assert decode(np.array([[0.45, 0.09, 0.2]]), dec((0.5, 0.1, 0.5), min_labels=1)).tolist() == [[0, 1, 0]]


def test_cap_keeps_the_largest_margins():
    p = np.array([[0.9, 0.8, 0.7], [0.6, 0.1, 0.95]])
    assert decode(p, dec(max_labels=2)).tolist() == [[1, 1, 0], [1, 0, 1]]
    assert decode(p, dec(max_labels=1)).tolist() == [[1, 0, 0], [0, 0, 1]]


def test_none_label_is_exclusive_and_takes_empty_rows():
    d = dec(none_index=2, min_labels=0)
    p = np.array([[0.9, 0.1, 0.95], [0.95, 0.1, 0.9], [0.1, 0.1, 0.1], [0.1, 0.1, 0.8]])
    assert decode(p, d).tolist() == [[0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 1]]


def test_decoding_round_trips_through_a_dict():
    d = dec((0.3, 0.42, 0.7), min_labels=1, max_labels=2, none_index=1)
    back = Decoding.from_dict(d.to_dict(LABELS), LABELS)
    assert back.thresholds.tolist() == [0.3, 0.42, 0.7]
    assert (back.min_labels, back.max_labels, back.none_index) == (1, 2, 1)
    old = Decoding.from_dict(None, LABELS)  # a run saved before decoding existed: 0.5, empty allowed, no cap
    assert old.thresholds.tolist() == [0.5] * 3 and old.min_labels == 0 and old.max_labels is None


def test_an_older_runs_decomposed_decoding_names_its_labels_in_their_read_form():
    """A run saved before labels were NFC-normalised wrote label_map.json's labels, threshold keys and none label as
    its data spelt them ('café' as e + U+0301). Its labels and threshold keys are read NFC (data.label_form), its none
    label was not: predict and evaluate refused the run, naming a label it has."""
    import unicodedata

    from loratune.metrics import decoding_problems

    def nfd(text: str) -> str:
        return unicodedata.normalize("NFD", text)

    labels = ("always", "café", "pin")  # as inference reads them: NFC
    saved = dec((0.3, 0.42, 0.7), min_labels=0, none_index=1).to_dict(labels)
    old = {**saved, "thresholds": {nfd(k): v for k, v in saved["thresholds"].items()}, "none_label": nfd("café")}
    assert old["none_label"] != "café" and decoding_problems(old, labels) == []
    back = Decoding.from_dict(old, labels)
    assert back.thresholds.tolist() == [0.3, 0.42, 0.7] and (back.none_index, back.min_labels) == (1, 0)
    # a none label that is no label of the run, in any form, is still refused
    assert decoding_problems({**old, "none_label": nfd("cafés")}, labels) == [
        f"decoding.none_label: {nfd('cafés')!r} (one of the run's labels, or null)"]


_TH = {"b": 0.42, "c": 0.7}  # the thresholds a patch below leaves as written


@pytest.mark.parametrize("patch,problem", [
    ({"thresholds": {"a": "high", **_TH}}, "decoding.thresholds.a: 'high' (a number in [0, 1])"),
    ({"thresholds": {"a": None, **_TH}}, "decoding.thresholds.a: None (a number in [0, 1])"),
    ({"thresholds": {"a": 1.5, **_TH}}, "decoding.thresholds.a: 1.5 (a number in [0, 1])"),
    ({"thresholds": {"a": -1, **_TH}}, "decoding.thresholds.a: -1 (a number in [0, 1])"),
    ({"thresholds": {"a": 0.3, "A": 0.3, **_TH}},
     "decoding.thresholds.A: not a label of the run (one of 'a', 'b', 'c')"),
    ({"thresholds": [0.5, 0.5, 0.5]}, "decoding.thresholds: [0.5, 0.5, 0.5] (an object of label -> a number in "
                                      "[0, 1], one per label of the run)"),
    # a label's threshold (or the whole object) deleted by hand: the label decoded at 0.5, unsaid
    ({"thresholds": _TH}, "decoding.thresholds: no threshold for 'a' (a number in [0, 1] per label of the run)"),
    ({"thresholds": {"b": 0.42}}, "decoding.thresholds: no threshold for 'a', 'c' (a number in [0, 1] per label of "
                                  "the run)"),
    ({"thresholds": {}}, "decoding.thresholds: {} (an object of label -> a number in [0, 1], one per label of the "
                         "run)"),
    ({"thresholds": None}, "decoding.thresholds: missing (an object of label -> a number in [0, 1], one per label of "
                           "the run)"),
    ({"min_labels": None}, "decoding.min_labels: None (0: an empty answer allowed, or 1: at least one)"),
    ({"min_labels": True}, "decoding.min_labels: True (0: an empty answer allowed, or 1: at least one)"),
    ({"max_labels": "2"}, "decoding.max_labels: '2' (a whole number of at least 1, or null: no cap)"),
    ({"max_labels": 0}, "decoding.max_labels: 0 (a whole number of at least 1, or null: no cap)"),
    ({"none_label": "oos"}, "decoding.none_label: 'oos' (one of the run's labels, or null)"),
])
def test_a_hand_edited_decoding_is_refused_naming_the_key_and_the_value(patch, problem):
    """label_map.json's decoding edited by hand ('high', null, "2", a list): float()/int()/> raised a traceback from
    predict and evaluate; 1.5, -1, an unknown none label and a label's threshold left out were taken silently."""
    from loratune.metrics import decoding_problems

    d = {**dec((0.3, 0.42, 0.7), max_labels=2).to_dict(LABELS), **patch}
    assert decoding_problems(d, LABELS) == [problem]
    with pytest.raises(ValueError, match=re.escape(problem)):
        Decoding.from_dict(d, LABELS)
    assert decoding_problems(dec((0.0, 1.0, 0.5)).to_dict(LABELS), LABELS) == []  # the ends of [0, 1] are kept


def test_a_decoding_without_its_thresholds_object_is_refused_and_one_without_a_block_reads_as_before():
    """A multi-label label_map.json whose decoding lost its `thresholds` object decoded every label at 0.5, unsaid;
    a run saved before decoding existed (no block, null, {}) still reads as the old behaviour."""
    from loratune.metrics import decoding_problems

    d = dec((0.3, 0.42, 0.7), max_labels=2).to_dict(LABELS)
    del d["thresholds"]
    problem = "decoding.thresholds: missing (an object of label -> a number in [0, 1], one per label of the run)"
    assert decoding_problems(d, LABELS) == [problem]
    with pytest.raises(ValueError, match=re.escape(problem)):
        Decoding.from_dict(d, LABELS)
    for old in (None, {}):
        back = Decoding.from_dict(old, LABELS)
        assert back.thresholds.tolist() == [0.5] * 3 and (back.min_labels, back.max_labels) == (0, None)
    # many labels left out: the first 8 named, the rest counted
    many = tuple(f"l{i}" for i in range(12))
    assert decoding_problems({"thresholds": {"l0": 0.5, "l1": 0.5}, "min_labels": 1}, many) == [
        "decoding.thresholds: no threshold for " + ", ".join(repr(f"l{i}") for i in range(2, 10))
        + " (+2 more) (a number in [0, 1] per label of the run)"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4), min_size=1, max_size=12),
       st.integers(0, 1), st.integers(1, 3), st.sampled_from([None, 3]))
def test_decoder_constraints_hold_for_any_probabilities(rows, min_labels, cap, none):
    p = np.array(rows)
    out = decode(p, Decoding(np.array([0.5, 0.3, 0.7, 0.5]), min_labels, cap, none))
    n = out.sum(axis=1)
    assert (n <= cap).all()
    if min_labels or none is not None:
        assert (n >= 1).all()
    if none is not None:
        assert ((out[:, none] == 0) | (n == 1)).all()  # the none label never stands beside another


# ------------------------------------------------------------------ threshold tuning


def test_tuned_thresholds_sit_in_the_middle_of_the_best_plateau():
    p = np.array([[0.3, 0.2], [0.3, 0.2], [0.3, 0.2], [0.1, 0.9], [0.1, 0.8], [0.1, 0.95]])
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]])
    t = tune_thresholds(p, y)
    # label a: F1 1 for 0.12..0.30 (10 grid values) -> the 6th, 0.22; label b: 0.22..0.80 (30) -> 0.52
    assert t.tolist() == pytest.approx([0.22, 0.52])


def test_a_rare_label_keeps_the_global_threshold():
    p = np.array([[0.9, 0.05], [0.8, 0.1], [0.1, 0.3], [0.2, 0.1], [0.85, 0.1], [0.1, 0.1]])
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [1, 0], [0, 0]])  # b has one positive: below MIN_POSITIVES
    t = tune_thresholds(p, y)
    assert t[1] == t[0] or t[1] == pytest.approx(tune_thresholds(p, y, min_positives=99)[1])
    assert t[1] == pytest.approx(tune_thresholds(p, y, min_positives=99)[0])


def test_crossfit_thresholds_come_from_the_other_fold():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 3)) < 0.3).astype(int)
    p = np.clip(y * 0.5 + rng.random((40, 3)) * 0.5, 0, 1)
    t = crossfit_thresholds(p, y, seed=1)
    assert t.shape == (40, 3)
    fold = np.random.default_rng(1).permutation(40) % 2
    assert t[fold == 0][0].tolist() == pytest.approx(tune_thresholds(p[fold == 1], y[fold == 1]).tolist())


# ------------------------------------------------------------------ losses


def test_losses_by_hand():
    torch = pytest.importorskip("torch")
    from loratune.losses import LossSpec, compute_loss, pos_weights, sigmoid_focal_loss

    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0]])
    # entry 1: p .5, ce ln 2, (1 - p_t)^2 = .25; entry 2: p_t = 1 - sigmoid(2), ce = log(1 + e^2)
    pt2 = 1 - 1 / (1 + math.exp(-2))
    expected = 0.25 * math.log(2) + (1 - pt2) ** 2 * math.log(1 + math.exp(2))  # summed over labels, one row
    assert float(sigmoid_focal_loss(logits, target, gamma=2.0)) == pytest.approx(expected, rel=1e-5)
    bce = float(compute_loss(logits, target, LossSpec("bce")))
    assert float(sigmoid_focal_loss(logits, target, gamma=0.0)) == pytest.approx(bce, rel=1e-6)
    assert pos_weights(np.array([[1, 0], [0, 0], [0, 1], [0, 1]])) == (3.0, 1.0)
    assert pos_weights(np.array([[1, 0]] + [[0, 0]] * 499), cap=100.0) == (100.0, 100.0)
    # pos_weight 3 on a positive: 3 * ln 2 for entry 1
    pw = float(compute_loss(logits, target, LossSpec("bce_pos_weight", (3.0, 1.0))))
    assert pw == pytest.approx(3 * math.log(2) + math.log(1 + math.exp(2)), rel=1e-5)
    # two rows: the mean over rows of the per-row sums
    two = compute_loss(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [0, 1.0, 1.0]]), LossSpec("bce"))
    assert float(two) == pytest.approx(3 * math.log(2), rel=1e-6)


def test_pos_weights_stay_within_the_floor_and_the_cap_the_readme_states():
    """The README promised negatives / positives capped at 100; the code also raised a weight below 1 to 1 (a label
    on more than half the rows), unsaid."""
    from pathlib import Path

    from loratune.losses import MAX_POS_WEIGHT, MIN_POS_WEIGHT, pos_weights

    # a: 34 of 40 rows (6/34 = 0.18 -> the floor), b: 19 (21/19), c: 1 of 400 rows (399 -> the cap)
    y = np.zeros((400, 3), dtype=int)
    y[:34, 0], y[:19, 1], y[0, 2] = 1, 1, 1
    assert pos_weights(y[:40, :2]) == (MIN_POS_WEIGHT, pytest.approx(21 / 19))
    assert pos_weights(y)[2] == MAX_POS_WEIGHT
    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8").split())
    assert (f"negatives / positives from the training frequencies, at least {MIN_POS_WEIGHT:g} and at most "
            f"{MAX_POS_WEIGHT:g}: a label on more than half the rows keeps plain BCE's weight") in readme
    from loratune.config import TrainConfig  # the help of train.multi_label_loss, from the same constants

    help_ = TrainConfig.__dataclass_fields__["multi_label_loss"].metadata["help"]
    assert f"(train frequencies, at least {MIN_POS_WEIGHT:g} and at most {MAX_POS_WEIGHT:g})" in help_


# ------------------------------------------------------------------ tune reads the objective


def test_tune_scores_a_trial_by_its_objective():
    from loratune.search.runner import curve_of, result_from

    best = {"step": 8, "val/macro_f1": 0.4, "val/subset_accuracy": 0.7, "val_compound/subset_accuracy": 0.5}
    run = {"status": "completed", "best": best, "objective": "val/subset_accuracy", "examples_seen": 10}
    res = result_from(run, None, 1.0)
    assert res.value == 0.7 and res.best["val_compound/subset_accuracy"] == 0.5
    assert result_from({**run, "objective": None}, None, 1.0).value == 0.4  # older records: macro-F1
    points = [{"step": 0, "val/macro_f1": 0.1, "val/subset_accuracy": 0.0}, best]
    assert curve_of(points, "val/subset_accuracy") == ((0, 0.0), (8, 0.7))
    assert curve_of(points) == ((0, 0.1), (8, 0.4))


def test_the_loss_record_carries_gamma_and_alpha_only_for_the_focal_loss():
    from loratune.losses import LossSpec, loss_spec

    targets = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    assert loss_spec("focal", False, targets, gamma=7.0).to_dict() == {"kind": "ce", "pos_weight": None}
    assert loss_spec("bce", True, targets, gamma=7.0).to_dict() == {"kind": "bce", "pos_weight": None}
    focal = loss_spec("focal", True, targets, gamma=7.0)
    assert focal.to_dict() == {"kind": "focal", "pos_weight": None, "gamma": 7.0, "alpha": -1.0}
    assert LossSpec.from_dict(focal.to_dict(), True) == focal  # evaluate scores with the loss the run trained with


def test_predict_scores_every_predicted_label_in_decodings_order():
    """Scores were the top 3 by raw probability while decoding ranks by margin over each label's threshold:
    card_lost predicted without a score, oos (threshold 0.9) listed though not predicted."""
    from loratune.data import LabelSpace
    from loratune.inference import Trained

    labels = ("balance", "card_lost", "oos", "pin", "transfer")
    probs = np.array([[0.62, 0.40, 0.676, 0.05, 0.667]])
    dec = Decoding(np.array([0.5, 0.3, 0.9, 0.5, 0.5]), min_labels=1, max_labels=None)
    trained = Trained(None, None, LabelSpace(labels, True), None, None, decoding=dec)
    logits = np.log(probs / (1 - probs))
    p = trained._predict_chunk(["lost my card"], logits, top_k=1)[0]
    assert p["labels"] == ["balance", "card_lost", "transfer"]
    # the predicted ones by margin in logit space (transfer 0.69, balance 0.49, card_lost 0.44: 0.40 over 0.3)
    assert list(p["scores"]) == ["transfer", "balance", "card_lost"]
    assert p["scores"]["card_lost"] == pytest.approx(0.40)
    p = trained._predict_chunk(["lost my card"], logits, top_k=4)[0]
    assert list(p["scores"]) == ["transfer", "balance", "card_lost", "oos"]  # then oos, the best of the rest


def test_the_in_sample_note_quotes_what_the_numbers_support():
    """`evaluate --split validation` on a multi-label run noted its scores "in-sample, flattered by the tuning" beside
    the run's own val/subset_accuracy 0.1000, while the in-sample subset accuracy was 0.0000: the thresholds maximise
    each label's F1 (metrics.tune_thresholds), not subset accuracy. The note now names what is in-sample (per-label
    F1) and quotes each comparison as measured."""
    from loratune.inference import IN_SAMPLE, in_sample_scores

    run = {"decoding": {"tuned_on": "validation", "step": 12}, "objective": "val/subset_accuracy",
           "best": {"val/subset_accuracy": 0.1, "val/macro_f1": 0.4124860646599777}}
    scores = {"val/subset_accuracy": 0.0, "val/macro_f1": 0.5253623188405797}
    note = in_sample_scores("val", run, scores)[f"val/{IN_SAMPLE}"]
    assert note == ("the per-label thresholds (label_map.json decoding) were tuned on this validation split at step 12, "
                    "each to maximise its label's F1: the per-label F1 scores here are in-sample; against the run's own "
                    "val numbers at that step, thresholds cross-fitted on the other half (run.json best): "
                    "val/macro_f1 0.5254 here, above 0.4125; val/subset_accuracy 0.0000 here, below 0.1000")
    assert "flattered" not in note
    higher = in_sample_scores("val", run, {"val/subset_accuracy": 0.3, "val/macro_f1": 0.4124860646599777})
    assert higher[f"val/{IN_SAMPLE}"].endswith("val/macro_f1 0.4125 here, equal to 0.4125; "
                                                "val/subset_accuracy 0.3000 here, above 0.1000")
    # an objective that is the tuned metric is quoted once; no best numbers: the in-sample fact alone
    once = in_sample_scores("val", {**run, "objective": "val/macro_f1"}, scores)[f"val/{IN_SAMPLE}"]
    assert once.count("val/macro_f1") == 1 and "subset_accuracy" not in once
    bare = in_sample_scores("val", {**run, "best": None}, scores)[f"val/{IN_SAMPLE}"]
    assert bare.endswith("the per-label F1 scores here are in-sample")
    assert in_sample_scores("val", {"decoding": {"tuned_on": None}}, scores) == {}
