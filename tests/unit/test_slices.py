from __future__ import annotations

import json

import numpy as np
import pytest

import loratune.slices as slices_mod
from loratune.slices import (assign_slices, confusable_rows, is_compound, load_probe_set, nearest_train_similarity,
                             probe_scores, slice_scores)

TRAIN = ("how do i reset my pin", "my card was stolen", "what is my account balance", "send money to my sister")
VAL = (
    "how do i reset my pin",            # verbatim train text -> most familiar
    "my card was stolen yesterday",      # near copy
    "what is my account balance",        # verbatim
    "zebras migrate across savanna",     # nothing like train -> novel
    "quantum flux capacitor",            # novel
    "xylophone orchestra tickets",       # novel
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))


def test_familiar_and_novel_are_the_extreme_thirds():
    labels = tuple((x,) for x in "abcdef")
    s = assign_slices(TRAIN, VAL, labels, np.array([6, 6, 6, 4, 3, 3]))
    assert set(s.rows["familiar"]) == {0, 2}
    assert set(s.rows["novel"]) <= {3, 4, 5} and len(s.rows["novel"]) == 2
    fam = s.info["familiarity"]
    assert 0 <= fam["novel_at_most"] < fam["familiar_at_least"] <= 1


def test_similarity_is_cached_and_exact_copies_score_one(tmp_path):
    sim = nearest_train_similarity(TRAIN, VAL)
    assert sim[0] == pytest.approx(1.0, abs=1e-6) and sim[3] < 0.3
    assert list((tmp_path / "cache" / "familiarity").glob("*.npy"))
    assert np.array_equal(nearest_train_similarity(TRAIN, VAL), sim)


def test_long_short_and_compound():
    texts = ("block my card and send me a new one", "balance", "hi", "top up failed but money left my account")
    labels = (("a",), ("b", "c"), ("a",), ("b",))
    s = assign_slices(TRAIN, texts, labels, np.array([10, 2, 2, 9]))
    assert list(s.rows["long"]) == [0]  # above the 75th percentile of lengths
    assert set(s.rows["short"]) == {1, 2, 3}
    assert set(s.rows["compound"]) == {0, 1, 3}  # two conjunction clauses, and a multi-label row


def test_verbatim_validation_cuts_no_familiar_novel_and_says_why():
    # every validation text a training text, the look-alike rows first: a position cut called the first third
    # "novel" and a familiar-novel gap appeared from file order alone
    val = TRAIN * 3
    s = assign_slices(TRAIN, val, tuple(("a",) for _ in val), np.full(len(val), 6))
    assert "novel" not in s.rows and "familiar" not in s.rows
    assert "do not separate" in s.info["skipped"]["familiar/novel"]
    assert s.info["familiarity"]["novel_at_most"] == s.info["familiarity"]["familiar_at_least"] == 1.0


def test_ties_stay_together_and_the_recorded_cuts_are_the_ones_applied():
    # two verbatim copies, four texts with nothing in common with train (similarity 0): no copy is novel, no row at
    # 0 is familiar, and equal similarities never land on opposite sides
    val = ("how do i reset my pin", "my card was stolen", "!!!", "\U0001F600\U0001F600", "\u200b", "???",
           "what is my balance today", "send money to my brother", "reset the pin please")
    s = assign_slices(TRAIN, val, tuple(("a",) for _ in val), np.full(len(val), 6))
    sim = nearest_train_similarity(TRAIN, val)
    fam = s.info["familiarity"]
    assert set(s.rows["novel"]) == set(np.flatnonzero(sim <= fam["novel_at_most"])) == {2, 3, 4, 5}
    assert set(s.rows["familiar"]) == set(np.flatnonzero(sim >= fam["familiar_at_least"]))
    assert {0, 1} <= set(s.rows["familiar"]) and fam["novel_at_most"] == 0.0
    for i in range(len(val)):
        for j in range(len(val)):
            if sim[i] == sim[j]:
                assert (i in s.rows["novel"]) == (j in s.rows["novel"])
                assert (i in s.rows["familiar"]) == (j in s.rows["familiar"])


def test_too_few_validation_rows_say_why_no_familiar_novel():
    s = assign_slices(TRAIN, VAL[:2], (("a",), ("b",)), np.array([6, 4]))
    assert "novel" not in s.rows
    assert s.info["skipped"]["familiar/novel"] == "validation has 2 rows; familiar/novel need >= 3"


def _brute_force_similarity(train, texts):  # the former NearestNeighbors(metric="cosine") computation
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors
    analyze = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True).build_analyzer()
    vocabulary = sorted({g for t in train + texts for g in analyze(t)})  # the texts' own n-grams too, idf of train
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True, sublinear_tf=True,
                          vocabulary=vocabulary).fit(train)
    dist, _ = NearestNeighbors(n_neighbors=1, metric="cosine").fit(vec.transform(train)).kneighbors(
        vec.transform(texts))
    return np.clip(1.0 - dist[:, 0], 0.0, 1.0)


def _hand_similarity(train, texts):
    """Cosine of char_wb 3-5-gram vectors written out: weight (1 + ln tf) x idf, idf = ln((1 + n) / (1 + df)) + 1
    with df counted over the train texts (0 for an n-gram only the text has), every n-gram of both texts counted."""
    import math
    from collections import Counter

    from sklearn.feature_extraction.text import CountVectorizer
    analyze = CountVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True).build_analyzer()
    grams = [Counter(analyze(t)) for t in train]
    df = Counter(g for c in grams for g in c)

    def vec(c):
        w = {g: (1 + math.log(tf)) * (math.log((1 + len(train)) / (1 + df[g])) + 1) for g, tf in c.items()}
        norm = math.sqrt(sum(x * x for x in w.values()))
        return {g: x / norm for g, x in w.items()}

    tv = [vec(c) for c in grams]
    return np.array([max(sum(x * t.get(g, 0.0) for g, x in vec(Counter(analyze(text))).items()) for t in tv)
                     for text in texts])


def test_a_texts_ngrams_that_train_lacks_lower_its_similarity_and_only_a_copy_scores_one():
    """The README's "character 3-5-gram TF-IDF cosine" to the nearest training text counts every n-gram of the text:
    the vectorizer fitted on train alone dropped the n-grams train lacks before the L2 norm, so "send money" padded
    with gibberish scored 1.0, as the verbatim copy does, and sat in `familiar`."""
    train = ("lost my card", "what is my balance", "send money", "change my pin")
    texts = ("send money", "send money xyzzy qwvvj kkkk zzzz", "send money abroad now please", "my pin")
    sim = nearest_train_similarity(train, texts, use_cache=False)
    assert sim[0] == 1.0  # a verbatim copy: exactly 1
    np.testing.assert_allclose(sim, _hand_similarity(train, texts), atol=1e-6)
    assert sim[1] < sim[2] < 0.5  # the gibberish 4 words weigh more than "abroad now please"
    # a text's similarity depends on it and train only, not on the texts scored beside it
    assert [nearest_train_similarity(train, (t,), use_cache=False)[0] for t in texts] == sim.tolist()



def test_run_json_says_which_similarity_measure_cut_familiar_and_novel():
    """slices.familiarity.measure was the same text for the earlier measure (train's n-grams only) and this one, so
    a run record could not say which made its cuts: it is SIMILARITY_MEASURE, defined once, naming the text's own
    n-grams and train's IDF."""
    labels = tuple((x,) for x in "abcdef")
    measure = assign_slices(TRAIN, VAL, labels, np.array([6, 6, 6, 4, 3, 3])).info["familiarity"]["measure"]
    assert measure is slices_mod.SIMILARITY_MEASURE
    assert measure != "cosine similarity of char 3-5-gram TF-IDF to the nearest train text"  # the earlier measure's
    assert "every n-gram of the text counts" in measure and "IDF from the train texts" in measure

def test_chunked_similarity_equals_brute_force_nearest_neighbour(monkeypatch):
    import random
    rng = random.Random(3)
    words = ["card", "pin", "money", "send", "block", "balance", "top", "up", "refund", "fee", "euro", "why"]
    train = tuple(" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(60))
    texts = tuple(" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(50)) + ("!!!", "xyz")
    texts = texts[:10] + tuple(t + " zorblax quux" for t in texts[10:20]) + texts[20:]  # n-grams train lacks
    monkeypatch.setattr(slices_mod, "SIMILARITY_CHUNK_BYTES", 16 * 60 * 7)  # 7 rows a chunk: 8 chunks, one short
    sim = nearest_train_similarity(train, texts, use_cache=False)
    assert sim.dtype == np.float32 and sim.shape == (len(texts),)
    np.testing.assert_allclose(sim, _brute_force_similarity(train, texts), atol=1e-6)
    assert sim[-2] == 0.0 and sim[-1] == 0.0


def test_truncated_texts_form_the_long_slice():
    # 11 of 20 texts reach max_length 8: the 0.75 quantile is the cap itself and `> cut` was empty (no long/short)
    lengths = np.array([8] * 11 + [3, 4, 5, 6, 7, 5, 4, 3, 6])
    texts = tuple(f"text {i}" for i in range(20))
    s = assign_slices(TRAIN, texts, tuple(("a",) for _ in texts), lengths, max_length=8)
    assert list(s.rows["long"]) == list(range(11)) and len(s.rows["short"]) == 9
    assert s.info["length"] == {"long_at_least_tokens": 8, "at_max_length": 11}
    s = assign_slices(TRAIN, texts, tuple(("a",) for _ in texts), np.full(20, 8), max_length=8)
    assert "long" not in s.rows and "max_length 8" in s.info["skipped"]["long/short"]


@pytest.mark.parametrize("text,expected", [
    ("block my card and send me a new one", True),
    ("i want to transfer money but it failed", True),
    ("salt and pepper", False),           # a conjunction between single words, not clauses
    ("what is my balance", False),
])
def test_is_compound(text, expected):
    assert is_compound(text) is expected


def test_slice_scores_single_label():
    logits = np.eye(3)[[0, 1, 2, 0]] * 5
    y = np.array([0, 1, 1, -1])
    from loratune.slices import Slices
    s = slice_scores(logits, y, Slices({"x": np.array([0, 1]), "y": np.array([2, 3])}), False)
    assert s["val_x/accuracy"] == 1.0 and s["val_x/macro_f1"] == 1.0 and s["val_x/n"] == 2
    assert s["val_y/accuracy"] == 0.0


def test_confusable_rows_from_pairs():
    labels = (("a",), ("b",), ("c",), ("d",))
    rows = confusable_rows(labels, [{"true": "a", "pred": "c", "count": 3}])
    assert list(rows) == [0, 2]


def test_probe_set_scored_example_by_example(tmp_path):
    p = tmp_path / "probe.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in [
        {"text": "my new SuperCard is missing", "label": "b"},
        {"text": "brand new intent", "label": "zzz"}]))
    probe = load_probe_set(str(p))
    out = probe_scores(probe, np.array([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1]]), ("a", "b", "c"))
    assert out["probe/accuracy"] == 0.5 and out["probe/n"] == 2
    ex = out["probe/examples"]
    assert ex[0] == {"text": "my new SuperCard is missing", "expected": "b", "predicted": "b", "confidence": 0.8,
                     "correct": True, "known_label": True}
    assert ex[1]["known_label"] is False and ex[1]["correct"] is False


def test_multi_label_probe_shows_the_decoded_set_even_when_it_is_empty(tmp_path):
    from loratune.metrics import Decoding, decode
    p = tmp_path / "probe.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in [
        {"text": "today", "label": "rare"}, {"text": "x y z", "label": "balance"}]))
    probe = load_probe_set(str(p))
    probs = np.array([[0.3, 0.711], [0.9, 0.1]])  # "today": rare 0.711 below its 0.72 threshold
    dec = Decoding(np.array([0.76, 0.72]), min_labels=0)  # empty answers allowed, as predict decodes them
    out = probe_scores(probe, probs, ("balance", "rare"), multi_label=True, decided=decode(probs, dec))
    assert [e["predicted"] for e in out["probe/examples"]] == [[], ["balance"]]
    assert out["probe/accuracy"] == 0.5
    # without a decoding: decode's default (0.5, at least one label), the most likely label on an empty row
    out = probe_scores(probe, np.array([[0.3, 0.4], [0.9, 0.6]]), ("balance", "rare"), multi_label=True)
    assert [e["predicted"] for e in out["probe/examples"]] == [["rare"], ["balance", "rare"]]


def _history(familiar, novel, train_loss=0.01):
    pts = [{"step": 0, "val/loss": 3.0, "val/macro_f1": 0.02}]
    for i, (f, n) in enumerate(zip(familiar, novel), start=1):
        pts.append({"step": 10 * i, "epoch": i, "train/loss": train_loss, "val/loss": 0.7, "val/macro_f1": (f + n) / 2,
                    "val_familiar/macro_f1": f, "val_novel/macro_f1": n})
    return pts


def test_slice_features_and_rules_read_the_history():
    from loratune.diagnose import diagnose
    from loratune.features import compute_features

    overfit = _history([0.90, 0.97, 0.99], [0.75, 0.72, 0.70])
    f = compute_features(overfit)
    assert f.get("familiar_novel_gap") == pytest.approx(0.29)
    assert f.get("familiar_novel_gap_growth") == pytest.approx(0.29 - 0.15)
    assert diagnose(overfit).fired("novel-phrasing-gap")
    healthy = _history([0.90, 0.95, 0.97], [0.85, 0.92, 0.94])
    assert not diagnose(healthy).fired("novel-phrasing-gap")
    shrinking = _history([0.99, 0.99, 0.99], [0.60, 0.75, 0.85])  # gap 0.14 but closing: learning, not overfitting
    assert not diagnose(shrinking).fired("novel-phrasing-gap")
    low = _history([0.30, 0.40, 0.45], [0.20, 0.30, 0.35], train_loss=2.0)
    assert diagnose(low).fired("both-slices-low")


def test_runs_without_slices_do_not_fire_slice_rules():
    from loratune.diagnose import diagnose

    pts = [{"step": s, "val/loss": 1.0, "val/macro_f1": 0.3, "train/loss": 2.0} for s in (0, 10, 20)]
    d = diagnose(pts)
    assert not d.fired("novel-phrasing-gap") and not d.fired("both-slices-low")
    assert "familiar_novel_gap" in d.features.missing


@pytest.mark.parametrize("row", [{"text": None, "label": "b"}, {"text": "  ", "label": "b"},
                                 {"text": "hello", "label": None}, {"text": "hello", "label": ["a", "b"]}])
def test_a_probe_row_is_one_text_with_one_label(tmp_path, row):
    # a null text was scored as the text 'None', a null label as the label 'None', a list cut to its first label
    from loratune.errors import UserError

    p = tmp_path / "probe.jsonl"
    p.write_text(json.dumps({"text": "fine", "label": ["a"]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(UserError, match="row 2 has text"):
        load_probe_set(str(p))
    p.write_text(json.dumps({"text": "fine", "label": ["a"]}) + "\n")
    assert load_probe_set(str(p)).expected == ("a",)  # a one-label list is that label


def test_a_probe_label_is_read_as_a_training_label_is(tmp_path):
    # 0.0 and " 3 " named no class of labels 0..3 (str(0.0) is '0.0') and scored as wrong
    p = tmp_path / "probe.jsonl"
    p.write_text("".join(json.dumps({"text": f"t{i}", "label": lab}) + "\n"
                         for i, lab in enumerate([0.0, " 3 ", 2, [1.0], "b "])))
    probe = load_probe_set(str(p))
    assert probe.expected == ("0", "3", "2", "1", "b")
    scores = probe_scores(probe, np.eye(4)[[0, 3, 2, 1, 0]], ("0", "1", "2", "3"))
    assert [e["correct"] for e in scores["probe/examples"]] == [True, True, True, True, False]


def test_a_slice_is_scored_as_the_whole_split_is():
    """Slices used other class sets than val/ (multi-label macro-F1 0.5 for perfect predictions: labels with no row
    and no prediction counted as 0; single-label: the true classes only) and read a multi-label row carrying an
    unknown label as right."""
    from loratune.metrics import multi_label_scores, prediction_scores
    from loratune.slices import Slices, slice_scores

    y = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    every = Slices({"all": np.arange(4)})
    s = slice_scores(np.zeros((4, 4)), y, every, True, y.copy())
    assert s["val_all/accuracy"] == 1.0 and s["val_all/macro_f1"] == 1.0
    assert multi_label_scores("val", np.zeros((4, 4)), y, ("a", "b", "c", "d"), pred=y)["val/macro_f1"] == 1.0
    unseen = np.array([True, False, False, False])  # row 0 also carried a label the model never learned
    assert slice_scores(np.zeros((4, 4)), y, every, True, y.copy(), unseen)["val_all/accuracy"] == 0.75
    # single-label: a class predicted but absent from the rows counts, as it does for val/macro_f1
    yt, pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    logits = np.eye(3)[pred]
    whole, _ = prediction_scores("val", pred, yt, ("a", "b", "c"))
    assert slice_scores(logits, yt, every, False)["val_all/macro_f1"] == pytest.approx(whole["val/macro_f1"])


def test_a_multi_label_probe_reads_each_labels_own_probability():
    from loratune.slices import ProbeSet, probe_scores

    probe = ProbeSet(("i lost my card", "what is my balance"), ("card_lost", "balance"), "p.jsonl")
    sig = np.array([[0.97, 0.10, 0.02], [0.75, 0.60, 0.01]])  # row 2: card_lost and balance both above 0.5
    s = probe_scores(probe, sig, ("card_lost", "balance", "pin"), multi_label=True)
    assert [e["predicted"] for e in s["probe/examples"]] == [["card_lost"], ["card_lost", "balance"]]
    assert s["probe/accuracy"] == 1.0 and s["probe/examples"][1]["confidence"] == 0.75


def test_a_multi_label_probe_follows_the_runs_decoding():
    """With max_labels_per_row=1 the probe recorded two labels per text, where predict (the decoding) gave one."""
    from loratune.metrics import Decoding, decode
    from loratune.slices import ProbeSet, probe_scores

    labels = ("card_lost", "balance", "pin")
    probe = ProbeSet(("lost my card and change my pin",), ("pin",), "p.jsonl")
    sig = np.array([[0.9, 0.2, 0.7]])
    capped = Decoding(np.full(3, 0.5), 1, 1, None)
    s = probe_scores(probe, sig, labels, multi_label=True, decided=decode(sig, capped))
    assert s["probe/examples"][0]["predicted"] == ["card_lost"] and s["probe/accuracy"] == 0.0


def test_a_missing_probe_file_names_data_probe_file(tmp_path):
    from loratune.errors import UserError

    with pytest.raises(UserError) as exc:
        load_probe_set(str(tmp_path / "nope.jsonl"))
    assert exc.value.problem == f"probe file '{tmp_path / 'nope.jsonl'}' does not exist"
    assert exc.value.fix == "check the path (data.probe_file)"


def test_eval_extras_records_rows_of_every_slice_and_the_truncation_cap(tmp_path):
    # the confusable slice, added at the first trained evaluation, went into shares but not rows; and the
    # validation lengths' cap is model.max_length (truncated texts form the long slice)
    from loratune.config import RunConfig, replace
    from loratune.data import Dataset, LabelSpace, Split
    from loratune.eval_extras import EvalExtras
    val_texts = VAL + ("send money to my mother", "zebra card")
    labels = ("a", "b", "a", "c", "c", "b", "d", "a")
    train = Split("train", TRAIN, (("a",), ("b",), ("c",), ("d",)), "<train>")
    val = Split("validation", val_texts, tuple((x,) for x in labels), "<validation>")
    ds = Dataset(train, val, None, LabelSpace(("a", "b", "c", "d"), False))
    cfg = replace(RunConfig(), **{"model.max_length": 8, "train.robustness_probe": False})
    lengths = np.array([8, 8, 8, 5, 4, 3, 6, 4])
    ex = EvalExtras.build(cfg, ds, np.array([0, 1, 0, 2, 2, 1, 3, 0]), lengths)
    assert ex.info["length"] == {"long_at_least_tokens": 8, "at_max_length": 3}
    pairs = [{"true": "c", "pred": "a", "count": 2}]
    ex.scores(4, np.eye(4)[[0, 1, 0, 0, 0, 1, 3, 0]] * 3.0, {"val/confused_pairs": pairs}, lambda t: None)
    assert ex.info["rows"]["confusable"] == 5 and ex.info["shares"]["confusable"] == 5 / 8
    assert ex.info["rows"] == {k: len(v) for k, v in ex.slices.rows.items()}
