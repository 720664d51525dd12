"""Generative classification scoring (pure): generated texts -> labels, and per-class scores where a text
that names no label is an error for its row's class."""

from __future__ import annotations

import numpy as np
import pytest

from loratune.metrics import (generated_label_problems, parse_labels, prediction_scores, single_label_scores,
                              top_unknown_outputs)

LABELS = ("balance", "card_lost", "pin")


@pytest.mark.parametrize("output,expected", [
    ("card_lost", 1), ("  Card_Lost.\n", 1), ("pin\nbecause the user forgot it", 2), ("BALANCE!", 0),
    ("card lost", -1), ("it is card_lost", -1), ("", -1), ("pins", -1),
])
def test_a_generated_text_names_a_label_only_on_its_first_line_written_as_the_label(output, expected):
    assert parse_labels([output], LABELS).tolist() == [expected]


def test_an_unknown_output_is_an_error_for_its_class_and_counts_for_no_class():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, -1, 1, 1, 2, 0])
    s, cm = prediction_scores("val", y_pred, y_true, LABELS)
    assert s["val/accuracy"] == pytest.approx(4 / 6)
    assert s["val/recall/balance"] == pytest.approx(0.5)  # the unknown output is a miss
    assert s["val/precision/balance"] == pytest.approx(0.5)  # ... and no false positive of any class
    assert s["val/recall/pin"] == pytest.approx(0.5) and s["val/precision/pin"] == 1.0
    assert cm.sum() == 5 and cm.tolist() == [[1, 0, 0], [0, 2, 0], [1, 0, 1]]  # the unknown row left out
    assert s["val/confused_pairs"] == [{"true": "pin", "pred": "balance", "count": 1}]


def test_prediction_scores_are_the_classifier_scores_of_the_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 3))
    y_true = rng.integers(0, 3, size=30)
    a, cm_a = single_label_scores("val", logits, y_true, LABELS, loss=0.3)
    b, cm_b = prediction_scores("val", logits.argmax(1), y_true, LABELS, loss=0.3)
    assert a == b and (cm_a == cm_b).all()


def test_unknown_outputs_are_listed_most_frequent_first():
    outputs = ["card lost", "pin", "card lost", "hello"]
    pred = parse_labels(outputs, LABELS)
    assert top_unknown_outputs(outputs, pred) == [{"output": "card lost", "count": 2}, {"output": "hello", "count": 1}]


def test_a_generated_label_in_another_unicode_form_names_the_label():
    """A generation 'cafe' + U+0301 (decomposed) scored unknown against the label 'café' (composed), and was listed
    among the unknown outputs looking the same as the label; both sides are compared in NFC (data.label_form)."""
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    labels = (composed, "pin")
    assert parse_labels([decomposed, decomposed.upper() + ".", "pin"], labels).tolist() == [0, 0, 1]
    assert parse_labels([composed], (decomposed, "pin")).tolist() == [0]  # a label read from a saved run as written
    outputs = [decomposed, "nope"]
    assert top_unknown_outputs(outputs, parse_labels(outputs, labels)) == [{"output": "nope", "count": 1}]


@pytest.mark.parametrize("output", ["balance?", "Balance ?", "balance?!", "balance…", "balance？", "balance. ?"])
def test_a_generated_label_is_read_without_any_trailing_sentence_punctuation(output):
    """The README says a generated label is read 'case and trailing punctuation aside', but only .!:;, were stripped:
    'balance?' scored unknown. Every mark of metrics.LABEL_TRAILING_PUNCTUATION is stripped now."""
    assert parse_labels([output], LABELS).tolist() == [0]


def test_a_label_that_ends_in_punctuation_still_names_itself():
    """The label and the output are read alike, so a label ending in '?' is matched with or without it."""
    labels = ("is it open?", "pin")
    assert parse_labels(["is it open?", "Is it open", "is it open?.", "pin?"], labels).tolist() == [0, 0, 0, 1]
    assert generated_label_problems(labels) == []
    assert generated_label_problems(("open", "open?")) == [
        "labels 'open', 'open?' are the same text once normalised ('open'): a generated answer cannot tell them apart"]


@pytest.mark.parametrize("out", ["balance．", "balance｡", "balance。"])
def test_a_generated_label_ending_in_a_full_width_stop_names_the_label(out):
    """README: trailing `.!?,;:…` 'and their full-width forms' are read aside; the full-width full stop (U+FF0E) and
    the half-width ideographic stop (U+FF61) scored unknown (review of the punctuation fix)."""
    assert parse_labels([out], ("balance", "pin")) == [0]
