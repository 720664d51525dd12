"""The robustness probe: label-preserving perturbations, seeded, never emptying a text."""

from __future__ import annotations

import random

import numpy as np
import pytest

from loratune.robustness import (PERTURBATIONS, keeps_meaning, perturb, perturbed_texts, planned_predictions,
                                 sample_rows, score_robustness)


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_perturbations_change_text_but_keep_codes_amounts_and_names(kind):
    rng = random.Random(0)
    text = "Why was I charged 25 EUR for my VISA transfer yesterday?"
    out = perturb(text, kind, rng)
    assert out.strip() and out != text
    for token in ("25", "EUR", "VISA"):  # amounts, currency codes and product names stay intact
        assert token in out.split() or token in out.replace("?", "").split() or token.lower() in out.lower().split()
    if kind in ("typo", "drop_word"):
        assert "25" in out and "EUR" in out and "VISA" in out


def test_perturbed_texts_are_seeded():
    texts = ("please transfer money to my savings account",) * 5
    assert perturbed_texts(texts, "typo", 1) == perturbed_texts(texts, "typo", 1)
    assert perturbed_texts(texts, "typo", 1) != perturbed_texts(texts, "typo", 2)


def test_short_texts_are_never_emptied():
    rng = random.Random(0)
    for kind in PERTURBATIONS:
        for t in ("?", "hi", "ok!"):
            assert perturb(t, kind, rng).strip()


def test_score_robustness_compares_each_perturbation_with_clean():
    texts = ("please transfer money to my savings account", "what is my card PIN", "hello")
    y = np.array([0, 1, 0])

    def predict(batch):  # class 1 when the text mentions PIN, whatever its case
        return np.array([[0.0, 1.0] if "pin" in t.lower() else [1.0, 0.0] for t in batch])

    out = score_robustness(predict, texts, y, seed=0)
    assert out["clean_accuracy"] == 1.0
    assert set(out) == {"clean_accuracy", "rows", *PERTURBATIONS}
    assert out["case"]["accuracy"] == 1.0 and out["case"]["drop"] == 0.0 and out["case"]["texts_changed"] == 1.0


def test_score_robustness_reuses_clean_logits_predicts_only_changed_texts_and_samples():
    texts = tuple(f"text number {i} about cards" for i in range(40)) + ("hi",) * 10
    y = np.zeros(len(texts), dtype=int)
    seen: list[str] = []

    def predict(batch):
        seen.extend(batch)
        return np.tile([1.0, 0.0], (len(batch), 1))

    clean = np.tile([1.0, 0.0], (len(texts), 1))
    full = score_robustness(predict, texts, y, seed=0, clean_logits=clean)
    assert full["rows"] == 50 and full["clean_accuracy"] == 1.0 and full["typo"]["accuracy"] == 1.0
    assert seen and not set(seen) & set(texts)  # a clean text (or one left unchanged) is never predicted again
    seen.clear()
    small = score_robustness(predict, texts, y, seed=0, clean_logits=clean, max_rows=12)
    assert small["rows"] == 12 and len(seen) <= 4 * 12
    assert small == score_robustness(predict, texts, y, seed=0, clean_logits=clean, max_rows=12)  # seeded


@pytest.mark.parametrize("max_rows", [None, 12])
@pytest.mark.parametrize("clean_known", [True, False])
def test_planned_predictions_counts_what_the_probe_predicts(max_rows, clean_known):
    """The count the run charges to its evaluation budget before the probe runs is the probe's own."""
    texts = tuple(f"text number {i} about cards" for i in range(40)) + ("hi", "ok") * 5
    y = np.zeros(len(texts), dtype=int)
    seen: list[str] = []

    def predict(batch):
        seen.extend(batch)
        return np.tile([1.0, 0.0], (len(batch), 1))

    clean = np.tile([1.0, 0.0], (len(texts), 1)) if clean_known else None
    score_robustness(predict, texts, y, seed=3, clean_logits=clean, max_rows=max_rows)
    planned = planned_predictions(texts, 3, max_rows, clean_known)
    assert planned == len(seen) > 0
    assert planned <= (len(PERTURBATIONS) + (not clean_known)) * (max_rows or len(texts))


@pytest.mark.parametrize("kind,expected", [
    # amounts, codes and upper-case names untouched (punctuation stripped "$1,250.00" to "125000", case folded
    # "ACME-42" and "PAY 500 EUR NOW"); nothing droppable leaves the text as it is (it dropped "PAY")
    ("punctuation", ("transfer $1,250.00 to ACME-42 today", "PAY 500 EUR NOW", "Hi there can you send 20.5 EUR")),
    ("case", ("TRANSFER $1,250.00 TO ACME-42 TODAY", "PAY 500 EUR NOW", "hi there, can you send 20.5 EUR?")),
])
def test_amounts_codes_and_names_stay_intact(kind, expected):
    texts = ("transfer $1,250.00 to ACME-42 today", "PAY 500 EUR NOW", "Hi there, can you send 20.5 EUR?")
    assert tuple(perturbed_texts(texts, kind, 42)) == expected


def test_drop_word_never_drops_a_protected_word():
    texts = ("transfer $1,250.00 to ACME-42 today", "PAY 500 EUR NOW")
    out = perturbed_texts(texts, "drop_word", 42)
    assert out[1] == "PAY 500 EUR NOW"  # nothing droppable: unchanged, and counted as unchanged below
    assert {"$1,250.00", "ACME-42"} <= set(out[0].split()) and len(out[0].split()) == 4
    assert planned_predictions(("PAY 500 EUR NOW",) * 3, 42) == 0


def test_drop_word_never_drops_a_negation():
    # each of these lost its negation before (seed 42): "did not allow" became "did allow", the label's opposite
    texts = ("My account did not allow the transfer.", "I cannot find my phone, what should I do?",
             "I think someone is using my card without my permission!",
             "It said nothing about an extra fee.", "Never got my card and no refund")
    out = perturbed_texts(texts, "drop_word", 42)
    for before, after in zip(texts, out):
        assert len(after.split()) == len(before.split()) - 1  # one word dropped...
        for w in ("not", "cannot", "without", "nothing", "Never", "no"):  # ...and never a negation
            assert before.split().count(w) == after.split().count(w)
    # a text whose only plain words are negations stays as it is (and is not counted as changed)
    assert perturbed_texts(("not NOW no never",), "drop_word", 42) == ["not NOW no never"]
    assert planned_predictions(("not NOW no never",) * 3, 42) == 2 * 3  # typo and case still change it


@pytest.mark.parametrize("word, kept", [
    ("not", True), ("Not", True), ("NEVER", True), ("no,", True), ("cannot", True), ("without", True),
    ("nor", True), ("didn't", True), ("can't.", True), ("don\u2019t", True), ("nothing", True),
    ("note", False), ("know", False), ("now", False), ("transfer", False), ("nothingness", False),
])
def test_keeps_meaning_names_negations(word, kept):
    assert keeps_meaning(word) is kept


def test_drop_word_keeps_every_negation_on_the_banking77_sample():
    import json
    from importlib.resources import files
    rows = [json.loads(line) for line in
            files("loratune").joinpath("demo_data/banking77/validation.jsonl").read_text().splitlines()]
    texts = tuple(r["text"] for r in rows)
    sample = tuple(texts[i] for i in sample_rows(len(texts), 42, 256))
    out = perturbed_texts(sample, "drop_word", 42)
    lost = [a for a, b in zip(sample, out)
            if sum(map(keeps_meaning, a.split())) != sum(map(keeps_meaning, b.split()))]
    assert lost == []  # 8 of these 256 lost a "not", "cannot", "without" or "nothing" before
    assert sum(a != b for a, b in zip(sample, out)) == 256  # every text still got a word dropped


@pytest.mark.parametrize("word, kept", [
    ("unable", True), ("Unable", True), ("hardly", True), ("shouldnt", True), ("couldnt", True), ("wouldnt", True),
    ("arent", True), ("werent", True), ("havnt", True), ("aint", True), ("hadnt", True), ("isnt", True),
    ("wasnt", True), ("doesnt", True), ("dosent", True), ("wont", True), ("cant.", True), ("hasnt", True),
    ("mustnt", True), ("neednt", True), ("didn", True), ("Doesn", True),
    ("want", False), ("went", False), ("sent", False), ("account", False), ("payment", False), ("can", False),
    ("won", False), ("hint", False), ("paint", False), ("isn't", True),
])
def test_keeps_meaning_names_contractions_without_apostrophe_and_unable(word, kept):
    assert keeps_meaning(word) is kept


def _demo_texts() -> tuple[str, ...]:
    import json
    from importlib.resources import files
    demo = files("loratune").joinpath("demo_data")
    texts = []
    for split in ("train", "validation", "test"):
        texts += [json.loads(line)["text"] for line in
                  demo.joinpath(f"banking77/{split}.jsonl").read_text().splitlines()]
    for split in ("train", "validation", "prompt_set"):
        texts += [json.loads(line)["prompt"] for line in
                  demo.joinpath(f"instructions/{split}.jsonl").read_text().splitlines()]
    return tuple(texts)


# Spelled out here, not taken from robustness: a word missing there must fail this test
_NEGATIONS = {"not", "no", "never", "cannot", "none", "nothing", "nobody", "without", "unless", "unable", "dont",
              "cant", "wont", "didnt", "doesnt", "isnt", "wasnt", "havent", "hasnt", "havnt", "shouldnt", "couldnt",
              "wouldnt", "arent", "werent", "hadnt", "aint"}


def _negations(text: str) -> list[str]:
    words = [w.lower().strip(".,!?;:\"()") for w in text.split()]
    return sorted(w for w in words if w in _NEGATIONS or w.endswith(("n't", "n\u2019t")))


@pytest.mark.parametrize("seed", [0, 1, 7, 42, 1234])
def test_drop_word_keeps_every_negation_in_all_demo_texts(seed):
    # before, "unable" (14 times in 13 BANKING77 texts: "I am unable to use my card" -> "I am to use my card") and contractions
    # written without the apostrophe ("shouldnt", "havnt", "hasnt") could be dropped
    texts = _demo_texts()
    out = perturbed_texts(texts, "drop_word", seed)
    lost = [(a, b) for a, b in zip(texts, out) if _negations(a) != _negations(b)]
    assert lost == []
    assert sum(a != b for a, b in zip(texts, out)) >= 0.99 * len(texts)  # drop_word still changes nearly all
    unable = [(a, b) for a, b in zip(texts, out) if "unable" in a.lower().split()]
    assert len(unable) == 13 and all(b.lower().split().count("unable") == a.lower().split().count("unable") and a != b
                                     for a, b in unable)
