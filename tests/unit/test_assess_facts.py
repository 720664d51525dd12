"""The assess facts catalogue: every fact a rule reads is named once in `FACTS` (with unit and meaning),
every fact `compute_facts` measures is in it, and a misspelt name is caught instead of silently never
firing."""

from __future__ import annotations

import pytest

from loratune.assess import FACTS, FINDING_RULES, START_RULES, AssessThresholds, assess_dataset, rule_catalog
from loratune.assess.rules import Above, Bands, FindingRule, StartRule, lint_rules
from loratune.difficulty import ClassProbe, ConfusedPair, ProbeResult
from loratune.model_info import ModelInfo
from test_assess import clean_rows, make_dataset


def test_every_fact_has_a_unit_and_a_meaning():
    assert len(FACTS) > 60
    for name, fact in FACTS.items():
        assert name.isidentifier(), name
        assert fact.unit and fact.meaning, name


def test_the_rule_tables_reference_only_catalogued_facts_and_thresholds():
    assert lint_rules() == []
    for rule in START_RULES:
        assert rule.facts() <= set(FACTS), rule.id
    for rule in FINDING_RULES:
        assert rule.facts() <= set(FACTS), rule.id
        assert rule.when.fact in FACTS, rule.id


def test_a_misspelt_fact_or_threshold_is_caught():
    bad = FindingRule("typo", "warn", Above("exact_confict_groups"), "{exact_conflict_rowz} rows, {t.no_such}",
                      ("exact_conflict_groups",))
    problems = lint_rules(START_RULES, FINDING_RULES + (bad,))
    assert "typo: unknown fact 'exact_confict_groups'" in problems
    assert "typo: unknown fact 'exact_conflict_rowz'" in problems
    assert "typo: unknown threshold 'no_such'" in problems
    bad_start = StartRule("typo-start", "adapter.r", Bands("train_row", ((1, 8),)), "{train_rows} rows")
    assert lint_rules(START_RULES + (bad_start,), FINDING_RULES) == ["typo-start: unknown fact 'train_row'"]


def test_compute_facts_measures_exactly_the_catalogue():
    """With every input present (a test split, token lengths, model facts, the probe), the assessment's
    facts are the catalogue: none measured without a name, none named but never measured."""
    train, val = clean_rows()
    test = val[::2]
    ds = make_dataset(train, val, test)
    lengths = {name: [len(t.split()) + 2 for t in sp.texts] for name, sp in ds.splits().items()}
    probe = ProbeResult(
        model="m", method="x", max_length=16, train_rows=90, val_rows=30, macro_f1=0.9, accuracy=0.9,
        macro_f1_se=0.02, confused_pairs=(ConfusedPair("music", "alarm", 2),), closest_classes=(),
        classes=(ClassProbe("music", 30, 10, 0.5, 0.8, 4.2, 0.2),), seconds={})
    a = assess_dataset(ds, token_lengths=lengths, unk_tokens={"train": 0}, max_length=16,
                       model_info=ModelInfo("bert", 6, 384, 512), probe=probe)
    assert set(a.facts) - set(FACTS) == set(), "facts without a catalogue entry"
    assert set(FACTS) - set(a.facts) == set(), "catalogued facts never measured"


def test_rule_catalog_describes_conditions_by_fact_name():
    rows = [r for r in rule_catalog() if r["table"] == "assess-finding"]
    by_id = {r["id"]: r["when"] for r in rows}
    assert by_id["class-imbalance"] == "imbalance_ratio >= t.imbalance_ratio"
    assert by_id["leakage"] == "leak_rows > 0"
    assert by_id["hard-task"] == "probe_macro_f1 < t.hard_probe_f1"
    assert {r["id"] for r in rule_catalog() if r["table"] == "assess-threshold"} == set(
        AssessThresholds.__dataclass_fields__)


@pytest.mark.parametrize("rule", FINDING_RULES, ids=lambda r: r.id)
def test_every_finding_rule_fires_on_its_own_fact(rule):
    """Each condition holds on a fact map that sets only its fact past the threshold (and never on an
    empty one)."""
    t = AssessThresholds()
    limit = getattr(t, rule.when.threshold) if getattr(rule.when, "threshold", None) else 0
    value = {"Above": limit + 1, "Below": limit - 1, "IsTrue": True}[type(rule.when).__name__]
    assert rule.when.holds({rule.when.fact: value}, t)
    assert not rule.when.holds({}, t)  # an unknown fact never fires a rule


def test_rules_command_prints_the_assess_tables(capsys):
    import json

    from loratune.cli import main

    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    assert "assess rules" in out
    for rule in START_RULES + FINDING_RULES:
        assert rule.id in out
    assert main(["rules", "--json", "--features"]) == 0
    data = json.loads(capsys.readouterr().out)
    from loratune.assess.sft import SFT_FACTS, sft_rule_catalog

    assert data["assess"] == json.loads(json.dumps(rule_catalog() + sft_rule_catalog()))
    assert set(data["assess_facts"]) == set(FACTS) | set(SFT_FACTS)


def test_unseen_labels_count_rows_and_the_val_minimum_counts_train_classes_only():
    """3 validation rows carrying two unknown labels each read as 6 rows; a validation-only class of 4 rows set
    'min 4' for a smallest trained class of 8."""
    train, val = clean_rows()
    labels = sorted({lab for _, lab in train})
    val = [(t, lab) for t, lab in val if lab != labels[0]] + [(t, labels[0]) for t, lab in val if lab == labels[0]][:8]
    val += [("an unknown request here", ("refund", "loan"))] * 3 + [("a stray ask", "balance")] * 4
    a = assess_dataset(make_dataset(train, val, multi=True))
    assert a.facts["unseen_val_rows"] == 7 and a.facts["unseen_label_rows"] == 7
    assert a.facts["val_rows_per_class_min"] == 8


def test_small_validation_counts_only_classes_with_rows_and_names_empty_ones_apart():
    """Val holds 3 rows of one class, 10 of another and none of the third: one class is under the minimum
    (min 3); the empty class is told apart, not counted as 'under 10 rows (min 3)'. With only empty classes
    short, small-validation stays quiet (missing-val-labels says it)."""
    train, val = clean_rows()
    labels = sorted({lab for _, lab in train})
    short = [(t, lab) for t, lab in val if lab == labels[0]][:3] + [(t, lab) for t, lab in val if lab == labels[1]]
    a = assess_dataset(make_dataset(train, short))
    assert a.facts["val_classes_under_min"] == 1 and a.facts["val_classes_empty"] == 1
    msg = next(f.message for f in a.findings if f.id == "small-validation")
    assert msg.startswith("1 class(es) have under 10 validation rows (min 3)")
    assert msg.endswith("; 1 more class(es) have no validation row at all")
    only_empty = [(t, lab) for t, lab in val if lab != labels[0]]
    a = assess_dataset(make_dataset(train, only_empty))
    assert a.facts["val_classes_under_min"] == 0 and a.facts["val_classes_empty"] == 1
    ids = {f.id for f in a.findings}
    assert "small-validation" not in ids and "missing-val-labels" in ids


def test_val_resolution_names_the_accuracy_its_se_is_computed_at():
    """40 val rows at an assumed 0.90: the SE printed is the one at the accuracy the message names."""
    import math
    import re

    train, val = clean_rows()
    val = (val + val)[:40]
    a = assess_dataset(make_dataset(train, val))
    msg = next(f.message for f in a.findings if f.id == "val-resolution")
    se, at = re.search(r"accuracy SE ~([\d.]+) at accuracy ([\d.]+)", msg).groups()
    assert float(at) == pytest.approx((0.9 * 40 + 1) / 42, abs=5e-4)
    assert float(se) == pytest.approx(math.sqrt(float(at) * (1 - float(at)) / 40), abs=5e-4)
    assert "0.90 on 40 rows seen as (hits + 1) / (n + 2)" in msg


def test_rules_shows_the_ffn_top_k_bands_as_data(capsys):
    """start-targets-qv-ffn-top reads K from FFN_TOP_K: `loratune rules` lists its bands (<7 layers: 2, <13: 3,
    else 4) in text and JSON, and every band table a start formula cites by name is listed."""
    import json
    import re

    from loratune.cli import main

    assert main(["rules", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["assess"]
    bands = {r["id"]: r for r in rows if r["table"] == "assess-bands"}
    assert bands["ffn_top_k"]["fact"] == "model_layers" and bands["ffn_top_k"]["default"] == 2
    assert bands["ffn_top_k"]["bands"] == [{"below": 7, "value": 2}, {"below": 13, "value": 3},
                                           {"below": None, "value": 4}]
    start = {r["id"]: r["when"] for r in rows if r["table"] == "assess-start"}
    assert "K by bands ffn_top_k" in start["start-targets-qv-ffn-top"]
    from loratune.assess.rules import NAMED_BANDS
    for r in rows:
        for name in re.findall(r"bands (\w+)", r.get("when", "")):
            assert name in NAMED_BANDS and name in bands, (r["id"], name)
    assert main(["rules"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "model_layers < 7 -> 2" in out and "7 <= model_layers < 13 -> 3" in out


def test_validation_shift_facts_are_validations_own_not_the_test_splits():
    """Validation drawn like train, test long and full of unknown words: the validation facts (and findings) are
    validation's own, never the test split's; a missing test split has no test facts."""
    train, val = clean_rows()
    test = [(t + " zebra quantum walrus" * 4, lab) for t, lab in val]
    a = assess_dataset(make_dataset(train, val, test))
    by = {sh.split: sh for sh in a.shift}
    assert a.facts["oov_val"] == by["validation"].oov_token_rate == 0.0
    assert a.facts["length_ks_val"] == by["validation"].length_ks == 0.0
    assert a.facts["length_mean_val"] == by["validation"].length_mean_split
    assert a.facts["oov_test"] == by["test"].oov_token_rate > 0.4 and a.facts["length_ks_test"] == 1.0
    assert not {"vocabulary-shift", "length-shift"} & {f.id for f in a.findings}
    a = assess_dataset(make_dataset(train, val))
    assert a.facts["oov_test"] is None and a.facts["length_ks_test"] is None and a.facts["length_mean_test"] is None
    assert a.facts["length_mean_train"] == a.shift[0].length_mean_train
