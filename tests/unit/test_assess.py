"""assess: every planted data problem is found, a clean set reports nothing, rules are tables."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import numpy as np
import pytest

from loratune import assess as A
from loratune.config import RunConfig, replace
from loratune.data import Dataset, LabelSpace, Split
from loratune.difficulty import ClassProbe, ConfusedPair, ProbeResult, probe_from_embeddings

# ---------------------------------------------------------------------------------------------
# a clean, balanced 3-class set: fixed length per class, val drawn from the same generator

TEMPLATES = {
    "weather": ("what is the weather in {} {}", ["paris", "london", "tokyo", "berlin", "madrid", "oslo", "rome",
                                                 "vienna"], ["today", "tomorrow", "tonight", "monday", "friday"]),
    "music": ("play some {} songs by {}", ["jazz", "rock", "folk", "blues", "soul", "punk"],
              ["adele", "queen", "prince", "bjork", "drake", "sting", "abba"]),
    "alarm": ("wake me up at {} {} please", ["six", "seven", "eight", "nine", "ten", "noon", "five", "four"],
              ["sharp", "exactly", "tomorrow", "daily", "again"]),
}


def clean_rows(seed: int = 0) -> tuple[list, list]:
    rng = random.Random(seed)
    train, val = [], []
    for label, (tpl, xs, ys) in TEMPLATES.items():
        texts = [tpl.format(x, y) for x in xs for y in ys]
        rng.shuffle(texts)
        train += [(t, label) for t in texts[:30]]
        val += [(t, label) for t in texts[30:40]]
    return train, val


def make_split(name: str, rows: list) -> Split:
    return Split(name, tuple(t for t, _ in rows),
                 tuple((lab,) if isinstance(lab, str) else tuple(lab) for _, lab in rows), f"<{name}>")


def make_dataset(train: list, val: list, test: list | None = None, multi: bool = False) -> Dataset:
    tr = make_split("train", train)
    space = LabelSpace(tuple(sorted(tr.label_counts())), multi)
    return Dataset(tr, make_split("validation", val), make_split("test", test) if test else None, space)


def ids(a: A.Assessment, *severities: str) -> set[str]:
    return {f.id for f in a.findings if not severities or f.severity in severities}


def test_clean_set_reports_nothing():
    train, val = clean_rows()
    a = A.assess_dataset(make_dataset(train, val))
    assert ids(a, "error", "warn") == set(), [f.message for f in a.findings]
    assert a.conflicts.exact_groups == 0 and a.conflicts.near_pairs == 0
    assert all(lk.rows == 0 for lk in a.noise.leakage)
    assert all(getattr(s, k) == 0 for s in a.noise.splits
               for k in ("empty", "very_short", "no_letters", "encoding_damage", "non_printable", "duplicate_rows"))
    sh = a.shift[0]
    assert sh.js_divergence == pytest.approx(0.0, abs=1e-12) and not sh.unseen_labels and sh.length_ks == 0.0
    assert ids(a, "info") == {"val-resolution"}


# each case plants one problem on the clean set and names the finding(s) it must raise
def _conflict(train, val):
    train.append(("What is the weather in Paris, TODAY?", "music"))  # exact after normalising
    return train, val, None


def _near(train, val):
    train.append(("whats the weather in paris today", "alarm"))
    if not any(t == "what is the weather in paris today" for t, _ in train):
        train.append(("what is the weather in paris today", "weather"))
    return train, val, None


def _leak(train, val):
    return train, val + train[:3], None


def _test_leak(train, val):
    return train, val, [train[0], val[0], ("set a timer for ten minutes", "alarm")]


def _unseen(train, val):
    return train, val + [("how do i bake bread", "cooking"), ("recipe for pancakes", "cooking")], None


def _empty(train, val):
    return train + [("", "music"), ("   ", "alarm")], val, None


def _skewed(train, val):
    return train + [("transfer money to savings", "bank"), ("send money to my account", "bank")], val, None


def _big_class(train, val):
    extra = [(f"play some jazz songs by artist number {i}", "music") for i in range(300)]
    return train + extra, val, None


def _encoding(train, val):
    return train + [("cafÃ© near me is closed", "weather"), ("it\u2019s broken \ufffd now", "alarm")], val, None


def _non_printable(train, val):
    return train + [("play some jazz\x07 now", "music")], val, None


def _short(train, val):
    return train + [("ok", "alarm")], val, None


def _non_text(train, val):
    return train + [("12345 !!", "alarm")], val, None


def _dups(train, val):
    return train + [train[0], train[1]], val, None


def _label_shift(train, val):
    return train, [r for r in val if r[1] != "music"] + [r for r in val if r[1] == "weather"] * 3, None


def _vocab_shift(train, val):
    new = [("zebra quokka axolotl narwhal okapi", lab) for _, lab in val]
    return train, new, None


def _length_shift(train, val):
    return train, [(t + " " + t + " " + t, lab) for t, lab in val], None


def _missing_val_label(train, val):
    return train, [r for r in val if r[1] != "alarm"], None


PLANTED = [
    (_conflict, {"label-conflict-exact"}),
    (_near, {"label-conflict-near"}),
    (_leak, {"leakage"}),
    (_test_leak, {"leakage"}),
    (_unseen, {"unseen-labels"}),
    (_empty, {"empty-text"}),
    (_skewed, {"long-tail", "class-imbalance"}),
    (_big_class, {"class-imbalance"}),
    (_encoding, {"encoding-damage"}),
    (_non_printable, {"non-printable"}),
    (_short, {"very-short-text"}),
    (_non_text, {"non-text"}),
    (_dups, {"duplicate-rows"}),
    (_label_shift, {"label-shift"}),
    (_vocab_shift, {"vocabulary-shift"}),
    (_length_shift, {"length-shift"}),
    (_missing_val_label, {"missing-val-labels"}),
]


@pytest.mark.parametrize("plant,expected", PLANTED, ids=[p.__name__.strip("_") for p, _ in PLANTED])
def test_planted_problem_is_found(plant, expected):
    train, val = clean_rows()
    train, val, test = plant(list(train), list(val))
    a = A.assess_dataset(make_dataset(train, val, test))
    found = ids(a, "error", "warn")
    assert expected <= found, (expected, found)
    for f in a.findings:
        if f.id in expected:
            assert f.message and "?" not in f.message.split("(")[0], f.message
            assert f.evidence


def test_planted_details():
    train, val = clean_rows()
    train.append(("What is the weather in Paris, TODAY?", "music"))
    train.append(("whats the weather in paris today", "alarm"))
    val = val + train[:3]
    a = A.assess_dataset(make_dataset(train, val))
    c = a.conflicts
    assert c.exact_groups == 1 and c.exact_rows >= 2
    assert c.near_pairs >= 1
    assert any({p.a, p.b} == {"music", "weather"} for p in c.pairs)
    kinds = {e.kind for e in c.examples}
    assert kinds == {"exact", "near"}
    leak = next(lk for lk in a.noise.leakage if (lk.source, lk.split) == ("train", "validation"))
    assert leak.rows == 3 and leak.share == pytest.approx(3 / len(val))
    assert a.facts["leak_train_val_rows"] == 3


def test_the_exact_conflict_finding_names_the_top_pair_of_exact_conflicts_not_near_ones():
    """One text carried card_lost and pin (an exact conflict); balance / transfer had two near-identical pairs only.
    The pairs counted exact and near conflicts together, and the exact-conflict error named the first of them:
    "most: balance / transfer", a pair with no exact conflict; the listing "balance / transfer (2), card_lost / pin
    (1)" did not say which counts were which."""
    import io

    from rich.console import Console

    from loratune.commands.assess import print_summary
    train, val = clean_rows()
    train += [("zz lost my card zz", "card_lost"), ("zz lost my card zz", "pin"),
              ("please check the account balance for me now", "balance"),
              ("please check the account balance for me noww", "transfer"),
              ("kindly show my funds in the savings account", "balance"),
              ("kindly show my funds in the savings accounts", "transfer")]
    a = A.assess_dataset(make_dataset(train, val))
    c = a.conflicts
    assert (c.exact_groups, c.near_pairs) == (1, 2)
    assert a.facts["top_conflict_pair"] == "card_lost / pin"
    exact = next(f for f in a.findings if f.id == "label-conflict-exact")
    assert "most: card_lost / pin)" in exact.message and "balance" not in exact.message, exact.message
    assert [(p.a, p.b, p.count, p.exact, p.near) for p in c.pairs] == [("balance", "transfer", 2, 0, 2),
                                                                         ("card_lost", "pin", 1, 1, 0)]
    assert A.Assessment.from_dict(json.loads(json.dumps(a.to_dict()))).conflicts == c
    buf = io.StringIO()
    print_summary(Console(file=buf, width=300), a)
    line = next(x for x in buf.getvalue().splitlines() if "conflicting label pairs: " in x)
    assert line.split("conflicting label pairs: ")[1] == "card_lost / pin (1 exact), balance / transfer (2 near)", line
    # without an exact conflict there is no pair to name
    a = A.assess_dataset(make_dataset(train[:-6] + train[-4:], val))
    assert a.facts["top_conflict_pair"] is None and "label-conflict-exact" not in ids(a)


def pair_listing(a: A.Assessment) -> str:
    """The summary's 'conflicting label pairs: ' line, after the colon."""
    import io

    from rich.console import Console

    from loratune.commands.assess import print_summary
    buf = io.StringIO()
    print_summary(Console(file=buf, width=400), a)
    return next(x for x in buf.getvalue().splitlines() if "conflicting label pairs: " in x).split(": ", 1)[1]


def near_pairs_and_one_exact() -> tuple[list, list]:
    """Six label pairs of 4 near conflicts each, and one exact conflict (card_lost / pin)."""
    train, val = clean_rows()
    train += [("zz lost my card zz", "card_lost"), ("zz lost my card zz", "pin")]
    labs = ["p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z", "o"]
    phrases = ["please check the account balance for me now", "kindly show my funds in the savings account",
               "could you tell me how much money is left", "i would like to see all my recent payments",
               "what time does the nearest branch open today", "send the statement to my email address please"]
    for k, ph in enumerate(phrases):
        a, b = labs[2 * k], labs[2 * k + 1]
        train += [(ph, a), (ph + "s", b), (ph + " ok", a), (ph + " okk", b)]
    return train, val


def test_the_pair_listing_shows_the_exact_conflict_pair_the_error_names():
    """The listing took the 5 pairs of the most conflicts, near ones counted: six pairs of 4 near conflicts each left
    out card_lost / pin, the pair of the one exact conflict that the error names ("most: card_lost / pin"). Pairs
    of exact conflicts come first, the one the error names first."""
    a = A.assess_dataset(make_dataset(*near_pairs_and_one_exact()))
    assert [(p.exact, p.near) for p in a.conflicts.pairs] == [(0, 4)] * 6 + [(1, 0)]
    assert a.facts["top_conflict_pair"] == "card_lost / pin"
    assert pair_listing(a) == \
        "card_lost / pin (1 exact), o / z (4 near), p / q (4 near), r / s (4 near), t / u (4 near)"


def test_an_old_record_s_pairs_are_listed_with_their_count():
    """An assess.json written before exact and near conflicts were counted apart (pairs of a count only: exact and
    near read as 0) printed "o / z ()": it prints the count, in the pairs' order as written."""
    d = A.assess_dataset(make_dataset(*near_pairs_and_one_exact())).to_dict()
    for q in d["conflicts"]["pairs"]:
        del q["exact"], q["near"]
    old = A.Assessment.from_dict(json.loads(json.dumps(d)))
    assert pair_listing(old) == "o / z (4), p / q (4), r / s (4), t / u (4), v / w (4)"


def test_currency_symbols_keep_texts_apart():
    # symbols were deleted before comparing: $100 -> usd and €100 -> eur read as one text with two labels (an
    # exact-conflict error) and £100 in validation as a leak of both
    train, val = clean_rows()
    train += [("how do i send $100 abroad", "usd"), ("how do i send €100 abroad", "eur")]
    val += [("how do i send £100 abroad", "usd")]
    a = A.assess_dataset(make_dataset(train, val))
    assert a.conflicts.exact_groups == 0 and "label-conflict-exact" not in ids(a)
    assert all(lk.rows == 0 for lk in a.noise.leakage) and "leakage" not in ids(a)
    assert a.facts["leak_rows"] == 0
    # the same symbol is still the same text
    a = A.assess_dataset(make_dataset(train + [("How do I send $100 abroad?", "eur")], val))
    assert a.conflicts.exact_groups == 1


def test_near_leak_is_a_finding_naming_its_rows():
    # counted as a fact but never reported: val rows that are train rows plus a word are near copies
    train, val = clean_rows()
    long = [("i would like to know what the weather in paris will be like tomorrow morning", "weather"),
            ("please play some quiet jazz songs by adele in the living room tonight", "music")]
    train += long
    val += [(t + " thanks", lab) for t, lab in long]
    a = A.assess_dataset(make_dataset(train, val))
    assert a.facts["leak_rows"] == 0 and a.facts["near_leak_rows"] == a.facts["near_leak_train_val_rows"] == 2
    f = next(f for f in a.findings if f.id == "near-leakage")
    assert f.severity == "warn" and f.evidence["near_leak_rows"] == 2
    assert f.message.startswith("2 row(s) are near copies (char n-gram cosine >= 0.95)")
    assert "train->validation 2" in f.message and f"validation '<validation>' row {len(val) - 1} " in f.message
    assert "'please play some quiet jazz songs by adele in the living ro…' ~ train 'please play" in f.message
    # a looser threshold counts more near copies, and the finding follows it
    loose = A.assess_dataset(make_dataset(train, val), thresholds=A.AssessThresholds(near_leak_similarity=0.5))
    n = loose.facts["near_leak_rows"]
    assert n > 2 and next(f for f in loose.findings if f.id == "near-leakage").message.startswith(f"{n} row(s)")


def test_near_leak_examples_name_the_file_and_line(tmp_path):
    # 'test row #3' was line 4 of test.csv (its header, and here a blank line, before it), and in a carved validation
    # split the place in a split that has no file: each example names the file and line, and the copy as written
    from loratune.config import DataConfig
    from loratune.data import load_dataset

    d = tmp_path / "csv"
    d.mkdir()
    train, val = clean_rows()
    lines = lambda rows: "".join(f"{t},{lab}\n" for t, lab in rows)  # noqa: E731
    copy = "Could you please reset the PIN of my card, today?"
    near = "could you please reset the pin of my card today ok"
    (d / "train.csv").write_text("text,label\n" + lines(train) + f'"{copy}",alarm\n')
    (d / "validation.csv").write_text("text,label\n" + lines(val))
    (d / "test.csv").write_text("text,label\n" + lines(val[:2]) + "\n" + lines([(near, "alarm")]))  # a blank line 4
    a = A.assess_dataset(load_dataset(DataConfig(dataset_name=str(d)), seed=0))
    assert a.facts["near_leak_examples"] == f"test '{d / 'test.csv'}' line 5 {near!r} ~ train {copy!r}"
    # no validation file: the carved rows are named by the train file's lines, which hold those very texts
    texts = [f"please send my monthly statement to {c} {i}" for c in ("alice", "bob") for i in range(10)]
    rows = [{"text": t + suffix, "label": t.split()[-2]} for t in texts for suffix in ("", " now")]
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = A.assess_dataset(load_dataset(DataConfig(train_file=str(f)), seed=0))
    examples = a.facts["near_leak_examples"].split("; ")
    assert a.facts["near_leak_rows"] >= 1 and all(examples)
    file_lines = f.read_text().splitlines()
    for ex in examples:
        prefix = f"validation '{f}' line "
        assert ex.startswith(prefix), ex
        n, rest = ex[len(prefix):].split(" ", 1)
        assert rest.startswith(repr(json.loads(file_lines[int(n) - 1])["text"]) + " ~ train ")
    # a file without lines (Parquet): the carved rows by the train file's row numbers, not their place in validation
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    f = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    a = A.assess_dataset(load_dataset(DataConfig(train_file=str(f)), seed=0))
    examples = a.facts["near_leak_examples"].split("; ")
    assert a.facts["near_leak_rows"] >= 1 and all(examples)
    for ex in examples:
        prefix = f"validation '{f}' row "
        assert ex.startswith(prefix), ex
        n, rest = ex[len(prefix):].split(" ", 1)
        assert rest.startswith(repr(rows[int(n) - 1]["text"]) + " ~ train "), ex


def test_leak_rows_counts_each_row_once():
    # a test row whose text is in train and in validation was summed over both pairs: 5 where 4 rows leak
    train, val = clean_rows()
    shared = ("is my refund on its way", "weather")
    test = val[:2] + [shared]
    a = A.assess_dataset(make_dataset(train + [shared], val + [shared], test))
    where = {(lk.source, lk.split): lk.rows for lk in a.noise.leakage}
    assert where == {("train", "validation"): 1, ("train", "test"): 1, ("validation", "test"): 3}
    assert a.facts["leak_rows"] == 4  # validation's copy, and test's 3 rows
    assert a.noise.leak_rows == 4
    f = next(f for f in a.findings if f.id == "leakage")
    assert f.evidence["leak_rows"] == 4
    assert A.Assessment.from_dict(a.to_dict()).noise == a.noise


@pytest.mark.parametrize("copies", [1, 6])
def test_near_leak_counts_every_copy_of_a_train_text(copies):
    # 6 validation copies of one train text filled each other's 5 neighbour places: the train text was never seen,
    # near leakage 0 (1 copy: 1). A text whose neighbours are all near copies is now asked for more
    train, val = clean_rows()
    text = ("please transfer my savings from the joint account to the new card tomorrow morning before nine and "
            "send me a confirmation email with the receipt of the transfer")
    train.append((text, "weather"))
    val += [(f"{text} thanks {i}", "weather") for i in range(copies)]
    a = A.assess_dataset(make_dataset(train, val))
    assert a.facts["near_leak_rows"] == a.facts["near_leak_train_val_rows"] == copies
    f = next(f for f in a.findings if f.id == "near-leakage")
    assert f.message.startswith(f"{copies} row(s) are near copies")
    # and a copy with another label is a near conflict with the train text, whichever side lists it
    val[-1] = (val[-1][0], "music")
    a = A.assess_dataset(make_dataset(train, val))
    assert any({p.a, p.b} == {"music", "weather"} for p in a.conflicts.pairs)
    assert a.conflicts.near_pairs == copies  # with the train text and with each of its sibling copies


def test_unseen_labels_and_long_tail_named():
    train, val = clean_rows()
    train += [("transfer money to savings", "bank")]
    val += [("how do i bake bread", "cooking")]
    a = A.assess_dataset(make_dataset(train, val))
    sh = a.shift[0]
    assert sh.unseen_labels == {"cooking": 1}
    assert sh.missing_labels == ("bank",)
    assert a.split("train").long_tail_classes == ("bank",)
    msg = next(f.message for f in a.findings if f.id == "unseen-labels")
    assert "cooking" in msg
    assert "test: no test split" in msg and "?" not in msg  # a split the data lacks is said, not '?'


def test_unseen_labels_name_only_the_splits_that_have_them():
    # 'val: ; test: cooking' was printed when validation's labels were all in train
    train, val = clean_rows()
    a = A.assess_dataset(make_dataset(train, val, [("how do i bake bread", "cooking"), ("fry an egg", "cooking")]))
    msg = next(f.message for f in a.findings if f.id == "unseen-labels")
    assert msg == ("2 validation/test row(s) carry labels never seen in train (test: cooking); they can only be "
                   "scored as errors")


def test_multi_label_profile():
    train, val = clean_rows()
    train = [(t, [lab]) for t, lab in train] + [("play jazz and wake me at six", ["music", "alarm"])]
    val = [(t, [lab]) for t, lab in val]
    a = A.assess_dataset(make_dataset(train, val, multi=True))
    tr = a.split("train")
    assert tr.multi_label_rows == 1 and tr.label_set_sizes == {1: 90, 2: 1}
    assert "multi-label" in ids(a, "info")


def test_token_lengths_drive_max_length_and_truncation():
    train, val = clean_rows()
    ds = make_dataset(train, val)
    lengths = {"train": [10] * 80 + [100] * 10, "validation": [10] * 30}
    a = A.assess_dataset(ds, token_lengths=lengths, max_length=64)
    tr = a.split("train")
    assert tr.tokens.max == 100 and tr.truncated_share == pytest.approx(10 / 90)
    assert "truncation" in ids(a, "warn")
    assert a.recommendation.overrides["model.max_length"] == 104  # p99 = 100 -> multiple of 8


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.mark.parametrize("text,expected", [
    ("Hello,  WORLD!", "hello world"), ("what's up?", "what s up"), ("  ", ""), ("Ｆｕｌｌ", "full"),
    # symbols that mean something stay, as tokens of their own (they were deleted: $100 and €100 one key)
    ("send $100", "send $ 100"), ("send €100!", "send € 100"), ("love it 😀", "love it 😀"), ("I ❤ it", "i ❤ it"),
    ("na^ive", "na ive"),
    # decoration folds with punctuation: texts that differ only by a bullet, a tilde, a pipe or a rule line stay one
    # key (keeping every Sm/So symbol made '● Reset my PIN' a new text beside '• Reset my PIN': an exact leak lost)
    ("● Reset my PIN", "reset my pin"), ("reset my pin ~", "reset my pin"), ("card | account", "card account"),
    ("==== reset pin ====", "reset pin"), ("2+2", "2 2")])
def test_normalise(text, expected):
    assert A.normalise(text) == expected


@pytest.mark.parametrize("text,damaged", [
    ("cafÃ© au lait", True), ("itâ€™s", True), ("bad \ufffd byte", True), ("café", False),
    ("SÃO PAULO", False), ("naïve résumé", False)])
def test_encoding_damage(text, damaged):
    assert A.has_encoding_damage(text) is damaged


@pytest.mark.parametrize("text,bad", [("tab\tis fine", False), ("bell\x07", True), ("zero\u200bwidth", True),
                                      ("emoji 👍🏽", False)])
def test_non_printable(text, bad):
    assert A.has_non_printable(text) is bad


def test_js_and_ks():
    assert A.js_divergence({"a": 1, "b": 1}, {"a": 5, "b": 5})[0] == pytest.approx(0.0)
    assert A.js_divergence({"a": 1}, {"b": 1})[0] == pytest.approx(1.0)
    assert A.ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert A.ks_statistic([1, 1, 1], [5, 5, 5]) == 1.0


def test_resolution_binomial():
    val = make_split("validation", [(f"t{i}", f"c{i % 10}") for i in range(1000)])
    r = A.estimate_resolution(val, accuracy=0.9)
    ps = (0.9 * 1000 + 1) / 1002  # the rate seen as (hits + 1) / (n + 2)
    assert r.accuracy_se == pytest.approx(math.sqrt(ps * (1 - ps) / 1000))
    # macro-recall over 10 classes of 100 rows: sqrt(10 * ps(1 - ps) / 100) / 10
    assert r.macro_f1_se == pytest.approx(math.sqrt(10 * ps * (1 - ps) / 100) / 10)
    assert r.detectable_difference == pytest.approx(2 * r.macro_f1_se)
    # a probe right on every row of 4 (2 classes): not an SE of 0 (its bootstrap of constant predictions is 0)
    small = make_split("validation", [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")])
    r = A.estimate_resolution(small, accuracy=1.0, bootstrap_se=0.0)
    assert r.method.startswith("binomial") and r.accuracy_se == pytest.approx(math.sqrt(5 / 36 / 4))
    assert r.macro_f1_se > 0.15


def test_resolution_counts_the_classes_macro_f1_averages():
    # train A 30 / B 30; validation A 10 / B 10 and 1 row of Z, which train lacks: macro-F1 averages A and B (a label
    # the model never learns is no class of it), so the SE is over 2 classes of 10 rows, not 3 (0.125, band 0.249)
    train = [(f"alpha item {i}", "A") for i in range(30)] + [(f"beta thing {i}", "B") for i in range(30)]
    val = [(f"alpha other {i}", "A") for i in range(10)] + [(f"beta other {i}", "B") for i in range(10)] + \
        [("zulu", "Z")]
    a = A.assess_dataset(make_dataset(train, val))
    ps = (0.9 * 21 + 1) / 23
    se = math.sqrt(ps * (1 - ps) * (1 / 10 + 1 / 10)) / 2
    assert a.resolution.classes == 2 and a.resolution.val_rows == 21
    assert a.resolution.macro_f1_se == pytest.approx(se) == pytest.approx(0.0764, abs=1e-4)
    assert a.facts["macro_f1_se"] == pytest.approx(se) and a.facts["detectable_difference"] == pytest.approx(2 * se)
    assert a.resolution.accuracy_se == pytest.approx(math.sqrt(ps * (1 - ps) / 21))  # accuracy: every row
    f = next(f for f in a.findings if f.id == "val-resolution")
    assert "macro-F1 SE ~0.076" in f.message and "under ~0.153 are sampling noise" in f.message
    # the same rows scored as the metric scores them: a predicted Z row cannot exist, so Z holds no class of the mean
    from loratune.metrics import macro_f1
    assert macro_f1(np.array([0, 1, -1]), np.array([0, 1, 0]), 2) == pytest.approx((2 / 3 + 1) / 2)


# ---------------------------------------------------------------------------------------------
# recommendation: a table of rules, applicable with config.replace


def _facts(**kw):
    base = {"train_rows": 9000, "rows_per_class_median": 110, "model_hidden": 384, "model_layers": 6,
            "token_p99": 50.5, "token_p99_ceil": 51, "token_max": 90, "model_max_positions": 512}
    base.update(kw)
    return base


@pytest.mark.parametrize("facts,expected", [
    (_facts(), {"adapter.r": 16, "adapter.lora_alpha": 32.0, "adapter.lora_dropout": 0.05,
                "train.learning_rate": 1e-3, "model.max_length": 56, "train.num_train_epochs": 5.0,
                "adapter.target_modules": ["attn.q", "attn.v", "ffn@top:2"]}),
    (_facts(train_rows=800, rows_per_class_median=20), {"adapter.r": 8, "adapter.lora_dropout": 0.1,
                                                        "train.num_train_epochs": 10.0,
                                                        "train.per_device_train_batch_size": 16}),
    (_facts(model_hidden=2048, model_layers=24), {"train.learning_rate": 3e-4,
                                                  "adapter.target_modules": ["attn.q", "attn.v", "ffn@top:4"]}),
    (_facts(token_p99=3.0), {"model.max_length": 16}),
    (_facts(train_rows=6, rows_per_class_median=3), {"train.per_device_train_batch_size": 4}),  # never above the rows
    (_facts(train_rows=16, rows_per_class_median=4), {"train.per_device_train_batch_size": 16}),
    (_facts(token_p99=2000.0), {"model.max_length": 512}),
])
def test_recommendation_rules(facts, expected):
    rec = A.recommend(facts)
    for key, value in expected.items():
        assert rec.overrides[key] == value, key
    assert {c.rule for c in rec.choices} <= {r.id for r in A.START_RULES}
    assert all(c.reason and "?" not in c.reason for c in rec.choices)
    cfg = replace(RunConfig(), **rec.overrides)  # every override is a valid dotted key
    assert cfg.adapter.r == rec.overrides["adapter.r"]
    assert rec.capacity_ceiling.value >= rec.overrides["adapter.r"]
    lr = rec.overrides["train.learning_rate"]
    assert rec.lr_grid == pytest.approx((lr / 2, lr, lr * 2))


@pytest.mark.parametrize("rslora,alpha,formula", [(False, 32.0, "alpha/r"), (True, 8.0, "alpha/sqrt(r)")])
def test_start_alpha_holds_the_start_scale_under_rslora(rslora, alpha, formula):
    """With adapter.use_rslora peft scales by lora_alpha / sqrt(r): the start's s = 2 is alpha = 2 sqrt(r), not 2r
    (alpha 32 at r=16 was s = 8 under rsLoRA, twice protocol 1's 'rarely above 4'), and the reason says which s."""
    from loratune.assess.rules import START_SCALE
    from loratune.stepsize import scale_of

    rec = A.recommend(_facts(use_rslora=rslora))
    assert rec.overrides["adapter.r"] == 16 and rec.overrides["adapter.lora_alpha"] == alpha
    point = {**rec.overrides, "adapter.use_rslora": rslora}
    assert scale_of(point) == pytest.approx(START_SCALE)
    reason = next(c.reason for c in rec.choices if c.rule == "start-scale-2")
    assert reason.startswith(f"lora_alpha={alpha:g}: scale s = {formula} = 2 ")
    from loratune.assess.sft import SFT_START_RULES  # the causal-lm start shares the row

    assert A.recommend(_facts(use_rslora=rslora), SFT_START_RULES).overrides["adapter.lora_alpha"] == alpha


def test_assess_dataset_reads_the_runs_rslora():
    train = [(f"alpha item {i}", "A") for i in range(30)] + [(f"beta thing {i}", "B") for i in range(30)]
    val = [(f"alpha other {i}", "A") for i in range(10)] + [(f"beta other {i}", "B") for i in range(10)]
    plain, rs = (A.assess_dataset(make_dataset(train, val), use_rslora=x) for x in (False, True))
    assert plain.facts["use_rslora"] is False and rs.facts["use_rslora"] is True
    r = rs.recommendation.overrides["adapter.r"]
    assert plain.recommendation.overrides["adapter.lora_alpha"] == 2 * r
    assert rs.recommendation.overrides["adapter.lora_alpha"] == pytest.approx(2 * math.sqrt(r), rel=1e-3)


@pytest.mark.parametrize("layers,k,capped", [(1, 1, True), (2, 2, False), (6, 2, False), (12, 3, False)])
def test_ffn_top_k_is_at_most_the_model_layers(layers, k, capped):
    """A 1-layer model got ffn@top:2, which training refuses ("top:2 asks for more layers than the model has (1)"):
    tune exited 2 before any trial. K is capped at the layer count, and the reason says so."""
    rec = A.recommend(_facts(model_layers=layers))
    assert rec.overrides["adapter.target_modules"] == ["attn.q", "attn.v", f"ffn@top:{k}"]
    reason = next(c.reason for c in rec.choices if c.key == "adapter.target_modules")
    assert f"the top {k} of {layers} layers" in reason
    assert ("capped at the model's 1 layer(s)" in reason) is capped



@pytest.mark.parametrize("rows,hidden,ceiling", [(500, 384, 16), (9000, 384, 64), (50000, 384, 64),
                                                 (50000, 2048, 128), (9000, None, 64)])
def test_capacity_ceiling(rows, hidden, ceiling):
    assert A.recommend(_facts(train_rows=rows, model_hidden=hidden)).capacity_ceiling.value == ceiling


def test_unknown_facts_set_nothing():
    rec = A.recommend({"train_rows": 100, "rows_per_class_median": 5})
    assert "model.max_length" not in rec.overrides  # no tokenizer: no p99
    assert rec.overrides["train.learning_rate"] == 5e-4  # default band when the model size is unknown


def test_rule_tables_are_readable():
    for r in A.START_RULES:
        assert r.value.describe()
    assert "train_rows < 3000 -> 8" in A.START_RULES[0].value.describe()
    ids_ = [r.id for r in A.FINDING_RULES]
    assert len(ids_) == len(set(ids_))
    assert all(r.severity in ("error", "warn", "info") and r.when for r in A.FINDING_RULES)


# ---------------------------------------------------------------------------------------------
# probe on synthetic embeddings, and the heterogeneous-class finding


def _clusters(seed=0):
    rng = np.random.default_rng(seed)
    d, centres = 32, {}
    for k in range(8):
        c = np.zeros(d)
        c[k] = 6.0
        centres[f"c{k}"] = c
    centres["twin"] = centres["c0"] + np.r_[np.zeros(8), 0.8, np.zeros(d - 9)]  # close to c0
    X, y = [], []
    for lab, c in centres.items():
        X.append(c + rng.normal(0, 0.5, (40, d)))
        y += [(lab,)] * 40
    others = [centres[f"c{k}"] for k in range(1, 8)]
    X.append(np.array([0.6 * others[i % 7] for i in range(40)]) + rng.normal(0, 2.0, (40, d)))  # a catch-all
    y += [("catchall",)] * 40
    return np.vstack(X), y


def test_probe_from_embeddings():
    Xt, yt = _clusters(0)
    Xv, yv = _clusters(1)
    space = LabelSpace(tuple(sorted({y[0] for y in yt})), False)
    p = probe_from_embeddings(Xt, yt, Xv, yv, space, seed=0)
    assert 0.5 < p.macro_f1 <= 1.0 and p.accuracy is not None and p.macro_f1_se > 0
    assert p.classes[0].label == "catchall" and p.classes[0].spread_z > 3
    assert p.classes[0].neighbour_purity < np.median([c.neighbour_purity for c in p.classes[1:]])
    assert {p.closest_classes[0].a, p.closest_classes[0].b} == {"c0", "twin"}
    top = p.confused_pairs[0]
    assert {top.true, top.pred} <= {"c0", "twin", "catchall"}


def test_probe_multi_label_and_unseen_val_labels():
    Xt, yt = _clusters(0)
    Xv, yv = _clusters(1)
    yv = list(yv)
    yv[0] = ("never_seen",)
    space = LabelSpace(tuple(sorted({y[0] for y in yt})), True)
    p = probe_from_embeddings(Xt, yt, Xv, yv, space, seed=0)
    assert 0.3 < p.macro_f1 <= 1.0 and p.val_rows == len(yv)


def test_probe_se_is_undefined_on_one_validation_row_and_printed_so():
    # one row resamples to itself: its SE of 0.0 printed "± 0.000" beside a resolution line saying SE ~0.471
    import io

    from rich.console import Console

    from loratune.commands.assess import print_summary
    Xt, yt = _clusters(0)
    Xv, yv = _clusters(1)
    space = LabelSpace(tuple(sorted({y[0] for y in yt})), False)
    p = probe_from_embeddings(Xt, yt, Xv[:1], yv[:1], space, seed=0)
    assert p.val_rows == 1 and p.macro_f1_se is None
    train, val = clean_rows()
    a = A.assess_dataset(make_dataset(train, val[:1]), probe=p)
    assert a.resolution.method.startswith("binomial") and a.resolution.macro_f1_se > 0.1
    buf = io.StringIO()
    print_summary(Console(file=buf, width=200), a)
    line = next(x for x in buf.getvalue().splitlines() if x.startswith("probe"))
    assert "SE n/a" in line and "±" not in line


def test_heterogeneous_class_finding_and_round_trip():
    train, val = clean_rows()
    probe = ProbeResult(
        model="m", method="x", max_length=16, train_rows=90, val_rows=30, macro_f1=0.9, accuracy=0.9,
        macro_f1_se=0.02, confused_pairs=(ConfusedPair("music", "alarm", 2),), closest_classes=(),
        classes=(ClassProbe("music", 30, 10, 0.5, 0.8, 4.2, 0.2), ClassProbe("alarm", 30, 10, 1.0, 0.2, -0.7, 0.9)),
        seconds={"embed_s": 1.0})
    a = A.assess_dataset(make_dataset(train, val), probe=probe)
    assert "heterogeneous-class" in ids(a, "warn")
    assert "music (spread z=4.2" in next(f.message for f in a.findings if f.id == "heterogeneous-class")
    assert a.resolution.method.startswith("bootstrap") and a.resolution.macro_f1_se == 0.02
    data = json.loads(json.dumps(a.to_dict()))
    assert A.Assessment.from_dict(data) == a


def test_rule_catalog_lists_every_rule():
    rows = A.rule_catalog()
    tables = {r["table"] for r in rows}
    assert tables == {"assess-start", "assess-finding", "assess-bands", "assess-threshold"}
    assert {r["id"] for r in rows if r["table"] == "assess-finding"} == {r.id for r in A.FINDING_RULES}
    json.dumps(rows)


def test_the_ceiling_reason_states_the_breakeven_rank_it_floors():
    """'at r = hidden/6 = 4' for hidden 32 (hidden/6 is 5.33; 4 is its power-of-2 floor)."""
    from loratune.assess.rules import recommend

    reason = recommend({"train_rows": 500, "model_hidden": 32}).capacity_ceiling.reason
    assert "hidden/6 = 5.33" in reason and "the largest power of 2 at or below it: 4" in reason


def test_probe_macro_f1_scores_the_trained_classes_as_training_does():
    """The probe is the baseline val/macro_f1 is compared with: a val label outside the train space is no class in
    its macro-F1 either (it was: 0.40 with refund at F1 0, against 0.50 for the same predictions scored as training
    scores them). Three refund rows sit on class a's centre: the probe says a, three false positives of a."""
    from loratune.metrics import prediction_scores

    rng = np.random.default_rng(0)
    centres = np.eye(3, 16) * 10
    Xt = np.vstack([c + rng.normal(0, 0.1, (10, 16)) for c in centres])
    yt = [(lab,) for lab in ("a", "b", "c") for _ in range(10)]
    Xv = np.vstack([centres[0] + rng.normal(0, 0.1, (7, 16)), centres[1] + rng.normal(0, 0.1, (4, 16))])
    yv = [("a",)] * 4 + [("refund",)] * 3 + [("b",)] * 4  # no c row in validation
    space = LabelSpace(("a", "b", "c"), False)
    p = probe_from_embeddings(Xt, yt, Xv, yv, space, seed=0)
    trained, _ = prediction_scores("val", np.array([0] * 7 + [1] * 4), np.array([0] * 4 + [-1] * 3 + [1] * 4),
                                   space.labels)
    assert p.macro_f1 == pytest.approx(trained["val/macro_f1"]) == pytest.approx((8 / 11 + 1.0) / 2)
    assert p.accuracy == pytest.approx(8 / 11)  # the refund rows are still errors
    assert {(c.true, c.pred) for c in p.confused_pairs} == {("refund", "a")}


def test_distinct_symbol_only_texts_are_no_duplicates_of_each_other():
    """Normalising turns every emoji- or punctuation-only text into "": four distinct texts were counted as
    duplicates of the first; the same symbol text twice still is one."""
    train, val = clean_rows()
    train += [(t, "weather") for t in ("👍", "🙂", "🎉", "!!", "???")]
    a = A.assess_dataset(make_dataset(train, val))
    assert next(s for s in a.noise.splits if s.split == "train").duplicate_rows == 0
    assert a.facts["duplicate_rows_rows"] == 0
    a = A.assess_dataset(make_dataset(train + [("👍", "weather"), ("? ? ?", "music")], val))
    assert next(s for s in a.noise.splits if s.split == "train").duplicate_rows == 1


def test_a_max_length_capped_by_the_model_says_so():
    # "99% of training texts fit in 155 tokens: max_length=66" and the causal-lm finding "raises it to the token p99
    # (308)" while the start config proposed 256: the model's positions set the value, and neither said so
    from loratune.assess.sft import sft_findings

    facts = {**A.assess_dataset(make_dataset(*clean_rows())).facts,
             "token_p99": 155.0, "token_p99_ceil": 155, "token_max": 162, "model_max_positions": 64}
    c = next(c for c in A.recommend(facts).choices if c.rule == "start-max-length-p99")
    assert c.value == 64 and c.reason == ("99% of training texts fit in 155 tokens (max 162): max_length=64, capped "
                                          "at the model's 64 positions")
    c = next(c for c in A.recommend({**facts, "model_max_positions": 512}).choices if c.rule == "start-max-length-p99")
    assert c.value == 160 and c.reason.endswith("max_length=160")  # the p99 set it: no aside
    sft = {"truncated_share_at_max_length": 0.6, "token_p99": 308.0, "token_p99_ceil": 308,
           "model_max_positions": 256, "completion_token_p50": 5.0}
    msg = sft_findings(sft, proposed_max_length=256)[0]["message"]
    assert msg == ("60% of training rows are longer than model.max_length; the start config proposes max_length=256, "
                   "capped at the model's 256 positions (token p99 308)")


def test_label_and_length_shift_allow_for_the_sample_size():
    # fixed limits (JS 0.05 bits, KS 0.15) warned on most clean random splits with a small validation split: 200 train
    # vs 20 val rows of 10 classes reach 0.1 bits and KS 0.3 by chance alone
    from loratune.assess.stats import js_critical, ks_critical

    rng = np.random.default_rng(0)
    # distinct values: near the asymptotic c(alpha) sqrt((n + m) / (n m)), 1.3581 sqrt(220 / 4000) = 0.318
    assert ks_critical(rng.normal(size=200), rng.normal(size=20), 0.05).value == pytest.approx(0.318, abs=0.03)
    assert ks_critical(rng.integers(1, 300, 20_000), rng.integers(1, 300, 2_000), 0.05).value < 0.035
    assert ks_critical([], [5], 0.05).value == 1.0
    same = {f"c{i}": 20 for i in range(10)}
    small = js_critical(same, {k: 2 for k in same}, 0.05).value
    large = js_critical(same, {k: 200 for k in same}, 0.05).value
    assert 0.08 < small < 0.25 and large < small / 4  # chance's divergence shrinks with the split
    assert js_critical(same, {k: 2 for k in same}, 0.05).value == small  # seeded

    rng = random.Random(0)
    words_ = "card pin refund loan limit fee cash transfer top up atm rate account".split()
    pool = [(" ".join(rng.choice(words_) for _ in range(rng.randint(3, 20))), f"c{i % 10}") for i in range(400)]
    fired = Counter()
    for seed in range(40):
        rows = pool[:]
        random.Random(seed).shuffle(rows)
        a = A.assess_dataset(make_dataset(rows[:200], rows[200:220]))
        fired.update(ids(a) & {"label-shift", "length-shift"})
    assert fired["label-shift"] <= 6 and fired["length-shift"] <= 6, fired  # ~alpha (5%) of 40, not most of them
    # a real shift still fires, and the finding states the limits it passed
    train, val = clean_rows()
    long_val = [(t + " " + t + " " + t, lab) for t, lab in val]
    a = A.assess_dataset(make_dataset(train, long_val))
    f = next(f for f in a.findings if f.id == "length-shift")
    crit = a.facts["length_ks_val_critical"]
    n_words = lambda rows: [len(t.split()) for t, _ in rows]  # noqa: E731
    assert crit == ks_critical(n_words(train), n_words(long_val), 0.05).value and a.facts["length_ks_val"] > crit
    assert f"past 0.15 and the {crit:.2f} a random split of these sizes reaches at alpha 0.05" in f.message
    assert f.evidence["shift_alpha"] == 0.05 and f.evidence["length_ks_val_critical"] == crit
    assert f.evidence["length_ks_val_critical_by"] == a.facts["length_ks_val_critical_by"] == "2,000 random deals"


def test_the_shift_critical_values_resolve_the_alpha_given():
    # a fixed 400 deals: below alpha 1/400 the critical value was their largest (KS 0.39 at alpha 0.001, 1e-4 and 1e-6
    # alike on a 200/20 split of word lengths), which random splits pass ~1/400 of the time whatever alpha. Now enough
    # deals that 20 lie beyond the quantile (2,000 at least), and past a cap on work the large-sample law, named
    from loratune.assess.stats import _ks_gap, js_critical, ks_critical

    lengths = np.random.default_rng(11).poisson(12, 220)  # 21 distinct lengths
    crit = {al: ks_critical(lengths[:200], lengths[200:], al) for al in (0.05, 0.01, 0.001, 1e-4, 1e-6)}
    assert [crit[al].value for al in (0.05, 0.01, 0.001)] == [0.275, 0.33, 0.39]
    assert crit[0.05].by == crit[0.01].by == "2,000 random deals" and crit[0.001].by == "20,000 random deals"
    for al in (1e-4, 1e-6):  # 200,000 deals x 21 values: past the cap, the asymptotic c(alpha) sqrt((n + m) / (n m))
        assert crit[al].value == pytest.approx(math.sqrt(-math.log(al / 2) / 2) * math.sqrt(220 / 4000), rel=1e-12)
        assert crit[al].by == (f"the asymptotic c(alpha) sqrt((n + m) / (n m)): alpha {al:g} needs {20 / al:,.0f} "
                               "random deals of 21 values, past the cap of 1,000,000 deal-values")
    assert crit[1e-6].value > crit[1e-4].value > crit[0.001].value  # 0.63 > 0.52 > 0.39
    # the chance that 100,000 fresh random splits (another seed) pass each: alpha at most, not ~1/400
    pooled = np.bincount(np.unique(lengths, return_inverse=True)[1])
    deals = np.random.default_rng(1).multivariate_hypergeometric(pooled, 20, size=100_000)
    past = {al: float((_ks_gap(pooled - deals, deals) > c.value).mean()) for al, c in crit.items()}
    assert 0.035 < past[0.05] <= 0.05 and 0.007 < past[0.01] <= 0.0125 and past[0.001] <= 0.0012, past
    assert past[1e-4] <= 1e-4 and past[1e-6] == 0.0, past
    # the divergence likewise: 20,000 deals at alpha 0.001; past the cap a chi-square fitted to 2,000 deals' mean and
    # variance (above the deals' own 0.36 bits where each label has 2 rows: conservative)
    same = {f"c{i}": 20 for i in range(10)}
    js = {al: js_critical(same, {k: 2 for k in same}, al) for al in (0.01, 0.001, 1e-4)}
    assert js[0.001].by == "20,000 random deals" and js[0.001].value == pytest.approx(0.3212, abs=1e-4)
    assert js[1e-4].by == ("a scaled chi-square fitted to 2,000 random deals' mean and variance: alpha 0.0001 needs "
                           "200,000 random deals of 10 values, past the cap of 1,000,000 deal-values")
    assert js[1e-4].value == pytest.approx(0.434, abs=0.002) and js[0.01].value < js[0.001].value < js[1e-4].value
    # the facts say which was used
    train, val = clean_rows()
    facts = A.assess_dataset(make_dataset(train, val), thresholds=A.AssessThresholds(shift_alpha=1e-6)).facts
    assert facts["length_ks_val_critical_by"].startswith("the asymptotic c(alpha) sqrt((n + m) / (n m)): alpha 1e-06")
    assert facts["js_val_critical_by"].startswith("a scaled chi-square fitted to 2,000 random deals")
    assert facts["shift_worst_js_critical_by"] == facts["js_val_critical_by"]


def test_a_shift_equal_to_what_chance_reaches_is_not_past_it():
    # 7 test rows all of train's largest class: a random 7-row deal reaches the same 0.182 bits 12.5% of the time, and
    # 0.182 is the 0.95 quantile itself (the divergence of a few rows is discrete); `>=` warned "past 0.182"
    rows = lambda lab, n, tag: [(f"{tag} {lab} number {i} words", lab) for i in range(n)]  # noqa: E731
    train = rows("A", 32, "tr") + rows("B", 4, "tr") + rows("C", 11, "tr")
    a = A.assess_dataset(make_dataset(train, rows("A", 4, "va") + rows("B", 1, "va") + rows("C", 2, "va"),
                                      rows("A", 7, "te")))
    assert a.facts["js_test"] == a.facts["js_test_critical"] == pytest.approx(0.1816, abs=1e-4)
    assert "label-shift" not in ids(a)
    # the floor stays "at least"; the critical value must be passed, for both shift rules
    t = A.AssessThresholds()
    at = {"shift_worst_js": 0.182, "shift_worst_js_critical": 0.182, "length_ks_val": 0.4,
          "length_ks_val_critical": 0.4}
    assert not {f.id for f in A.evaluate_findings(at, t)} & {"label-shift", "length-shift"}
    past = {**at, "shift_worst_js": 0.183, "length_ks_val": 0.41}
    assert {f.id for f in A.evaluate_findings(past, t)} >= {"label-shift", "length-shift"}
    floor = {"shift_worst_js": t.label_shift_js, "shift_worst_js_critical": 0.01}
    assert "label-shift" in {f.id for f in A.evaluate_findings(floor, t)}
    rule = next(r for r in A.FINDING_RULES if r.id == "label-shift")
    assert rule.when.describe() == "shift_worst_js >= t.label_shift_js and shift_worst_js > shift_worst_js_critical"


def test_a_divergence_equal_to_its_critical_value_is_bit_equal():
    # test A 6 / B 1 / C 7 against train A 28 / B 39 / C 33: the 0.95 quantile of the deals is a deal of the same
    # divergence, A 6 / B 1 / C 7 or A 6 / B 7 / C 1 (B and C pool 40 rows each: its labels swapped). The null written
    # apart from js_divergence, and its terms summed in label order, put the one 1 ulp past the other: it fired (at
    # 400 deals: test A 7 / B 1 / C 4 against train A 28 / B 39 / C 36, 0.11571906015888446 past 0.11571906015888445)
    from loratune.assess.stats import js_critical, js_divergence

    rows = lambda lab, n, tag: [(f"{tag} {lab} number {i} words", lab) for i in range(n)]  # noqa: E731
    a = A.assess_dataset(make_dataset(rows("A", 28, "tr") + rows("B", 39, "tr") + rows("C", 33, "tr"),
                                      rows("A", 7, "va") + rows("B", 10, "va") + rows("C", 9, "va"),
                                      rows("A", 6, "te") + rows("B", 1, "te") + rows("C", 7, "te")))
    assert a.facts["js_test"] == a.facts["js_test_critical"] == pytest.approx(0.111242, abs=1e-6)
    assert "label-shift" not in ids(a)
    # one divergence whatever the label order: the swapped deal's is the observed one's, bit for bit
    train = {"A": 28, "B": 39, "C": 33}
    assert js_divergence(train, {"A": 6, "B": 1, "C": 7})[0] == js_divergence({"A": 28, "B": 33, "C": 39},
                                                                             {"A": 6, "B": 7, "C": 1})[0]
    assert js_critical(train, {"A": 6, "B": 1, "C": 7}, 0.05).value == a.facts["js_test"]


def test_a_length_shift_of_1_fires_on_a_tiny_validation_split():
    # 20 train rows of 3-5 words, 2 validation rows of 30+: KS 1, which a random 2-row deal reaches 2 / C(22, 2) = 0.9%
    # of the time. The asymptotic critical value passed 1 there (capped at 1), and the strict `>` never fired
    from loratune.assess.stats import ks_critical

    w = lambda n, i: " ".join(f"word{i}x{j}" for j in range(n))  # noqa: E731
    train = [(w(3 + i % 3, i), "A" if i % 2 else "B") for i in range(20)]
    a = A.assess_dataset(make_dataset(train, [(w(30, 100), "A"), (w(32, 101), "B")]))
    assert a.facts["length_ks_val"] == 1.0 and a.facts["length_ks_val_critical"] == 0.75
    assert "length-shift" in ids(a)
    # where a random deal reaches 1 more often than alpha (3 rows vs 1: half the deals), 1 is chance's and not past it
    assert ks_critical([3, 4, 5], [40], 0.05).value == 1.0
    # equal to a critical value below 1 is not past it, bit for bit: gaps taken as differences of float shares put 10/13
    # 1 ulp past a deal's equal gap from other counts
    a = A.assess_dataset(make_dataset([(w(n, i), "AB"[i % 2]) for i, n in enumerate([3] * 6 + [4] * 4 + [5] * 3)],
                                      [(w(n, 50 + n), "AB"[n % 2]) for n in (5, 6, 7)]))
    assert a.facts["length_ks_val"] == a.facts["length_ks_val_critical"] == pytest.approx(10 / 13)
    assert "length-shift" not in ids(a)


def test_shift_alpha_0_is_never_past_for_labels_and_lengths_alike():
    # shift_alpha 0 (a random split never reaches it): ks_critical said 1 (never past), js_critical the largest of its
    # deals (0.1005 bits for 10 rows of each of 3 labels), which a split the deals missed passes: label-shift fired
    from loratune.assess.stats import js_critical, ks_critical

    tc = {"A": 30, "B": 30, "C": 30}
    for alpha in (0.0, -1.0):
        assert js_critical(tc, {"A": 10, "B": 10, "C": 10}, alpha).value == 1.0
        assert ks_critical([3, 4, 5] * 10, [3, 4, 5], alpha).value == 1.0
    rows = lambda lab, n, tag: [(f"{tag} {lab} number {i} words", lab) for i in range(n)]  # noqa: E731
    w = lambda n, i: " ".join(f"word{i}x{j}" for j in range(n))  # noqa: E731
    train = rows("A", 30, "tr") + rows("B", 30, "tr") + rows("C", 30, "tr")
    shifted = [(w(20 + i, 100 + i), "A") for i in range(10)]  # all A, four times as long: JS 0.459 bits, KS 1
    a = A.assess_dataset(make_dataset(train, shifted), thresholds=A.AssessThresholds(shift_alpha=0.0))
    assert a.facts["js_val"] == pytest.approx(0.4591, abs=1e-4) and a.facts["length_ks_val"] == 1.0
    assert a.facts["js_val_critical"] == a.facts["length_ks_val_critical"] == 1.0
    assert not ids(a) & {"label-shift", "length-shift"}
    a = A.assess_dataset(make_dataset(train, shifted), thresholds=A.AssessThresholds(shift_alpha=0.05))
    assert ids(a) >= {"label-shift", "length-shift"}  # at 0.05 both are far past chance


def test_zero_near_duplicate_neighbours_examines_none():
    """near_duplicate_neighbors 0: each text's own row alone, as before the neighbour doubling (its self-match, a
    similarity of 1, read as 'every neighbour a near copy' and grew every row to 64)."""
    from loratune.assess.profile import char_neighbours

    texts = ["reset my card pin today", "reset my card pin today x", "weather", "book a flight"]
    assert char_neighbours(texts, 0, 0.9)[0].shape == (4, 1)
    assert char_neighbours(texts, 1, 0.9)[0].shape[1] >= 2


def test_an_mpnet_reserves_its_padding_offset_as_roberta_does(tmp_path):
    """MPNet's position ids start after padding_idx as RoBERTa's do: 66 rows take 64 tokens (assess proposed 66 and
    train crashed inside the embedding with an IndexError)."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    from loratune.config import load_config
    from loratune.model_info import input_position_limit

    torch.manual_seed(0)
    MPNetModel(MPNetConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=66, pad_token_id=1)).save_pretrained(tmp_path)
    assert input_position_limit(load_config(None, [f"name_or_path={tmp_path}"]).model) == 64


def test_token_p99_is_a_length_99_percent_of_texts_fit_in():
    """np.percentile's linear interpolation put the p99 of 150 lengths (146 short, 4 long) between two lengths: "99%
    of training texts fit in 57 tokens" when 148 of 150 fit only in 64. The p99 is one of the lengths, the smallest
    that 99% fit in, so the reason's claim and the proposed max_length hold by construction."""
    lengths = [10] * 146 + [52, 64, 100, 120]
    s = A.length_stats(lengths)
    assert s.p99 == 100.0 and s.p95 == 10.0 and s.p50 == 10.0 and s.max == 120
    assert sum(x <= s.p99 for x in lengths) >= 0.99 * len(lengths)
    for n in (1, 7, 99, 100, 101, 150, 1000):
        vals = list(range(1, n + 1))
        st = A.length_stats(vals)
        for q, p in ((90, st.p90), (95, st.p95), (99, st.p99)):
            assert sum(x <= p for x in vals) >= q / 100 * n and p in vals
            assert sum(x < p for x in vals) < q / 100 * n  # and the smallest such length
    rec = A.recommend(_facts(token_p99=s.p99, token_p99_ceil=math.ceil(s.p99), token_max=120))
    assert rec.overrides["model.max_length"] == 104


def test_assess_text_output_prints_the_probe_notes():
    """The probe's notes (a fit on a stratified subset of the training rows) were in --json only: the text output
    printed the assessment's notes, never the probe's."""
    import dataclasses
    import io

    from rich.console import Console

    from loratune.commands.assess import print_summary
    Xt, yt = _clusters(0)
    Xv, yv = _clusters(1)
    space = LabelSpace(tuple(sorted({y[0] for y in yt})), False)
    p = dataclasses.replace(probe_from_embeddings(Xt, yt, Xv, yv, space, seed=0),
                            notes=("probe fitted on a stratified subset of 20000 training rows",))
    train, val = clean_rows()
    a = A.assess_dataset(make_dataset(train, val), probe=p)
    buf = io.StringIO()
    print_summary(Console(file=buf, width=200), a)
    lines = buf.getvalue().splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("probe"))
    assert lines[at + 1].strip() == "note: probe fitted on a stratified subset of 20000 training rows"
