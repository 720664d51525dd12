"""Data: JSONL / CSV / Parquet -> Dataset + LabelSpace; stratified carving; user errors that name file, row, fix."""

from __future__ import annotations

import csv
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loratune.config import EMBEDDED_DATA, DataConfig
from loratune.data import (
    Split,
    carve_target,
    embedded_data_dir,
    empty_text_problems,
    labels_of,
    load_dataset,
    parse_file,
    parse_rows,
    read_rows,
    stratified_split,
    stratified_subset,
    text_key,
)
from loratune.errors import UserError

# ---------------------------------------------------------------------------------------------
# helpers: write rows in each format


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise AssertionError(suffix)
    return path


def make_rows(counts: dict[str, int], text: str = "text", label: str = "label", tag: str = "") -> list[dict]:
    return [{text: f"{tag}{lab} example {i}", label: lab} for lab, n in counts.items() for i in range(n)]


TRAIN = {"a": 6, "b": 4, "c": 2}
FORMATS = [".jsonl", ".csv", ".parquet"]


def folder_with(tmp_path: Path, suffix: str, splits: dict[str, list[dict]], names: dict[str, str] | None = None):
    names = names or {}
    for split, rows in splits.items():
        write_rows(tmp_path / f"{names.get(split, split)}{suffix}", rows)
    return tmp_path


def user_error(fn, *args, **kwargs) -> UserError:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    return info.value


# ---------------------------------------------------------------------------------------------
# formats, columns, splits


@pytest.mark.parametrize("suffix", FORMATS)
def test_each_format_loads_train_validation_test(tmp_path, suffix):
    folder = folder_with(tmp_path, suffix, {
        "train": make_rows(TRAIN), "validation": make_rows({"a": 2, "b": 1, "c": 1}, tag="v "),
        "test": make_rows({"a": 1, "b": 1, "c": 1}, tag="t ")})
    ds = load_dataset(DataConfig(dataset_name=str(folder)), seed=0)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (12, 4, 3)
    assert ds.label_space.labels == ("a", "b", "c") and not ds.label_space.multi_label
    assert ds.label_space.index == {"a": 0, "b": 1, "c": 2}
    assert ds.train.texts[0] == "a example 0" and ds.train.labels[0] == ("a",)
    assert ds.validation.texts[-1] == "v c example 0"
    assert ds.train.source == str(folder / f"train{suffix}")
    assert ds.notes == () and ds.unseen == {}
    assert set(ds.splits()) == {"train", "validation", "test"}


@pytest.mark.parametrize("suffix", FORMATS)
def test_configurable_text_and_label_columns(tmp_path, suffix):
    rows = [dict(r, extra=1) for r in make_rows(TRAIN, text="sentence", label="intent")]
    p = write_rows(tmp_path / f"data{suffix}", rows)
    ds = load_dataset(DataConfig(train_file=str(p), text_column="sentence", label_column="intent"), seed=0)
    assert ds.label_space.labels == ("a", "b", "c")
    assert sorted(ds.train.texts + ds.validation.texts) == sorted(r["sentence"] for r in rows)


@pytest.mark.parametrize("suffix", FORMATS)
def test_missing_column_names_file_columns_and_key(tmp_path, suffix):
    p = write_rows(tmp_path / f"train{suffix}", make_rows(TRAIN, text="sentence"))
    err = user_error(load_dataset, DataConfig(train_file=str(p)))
    assert err.problem == f"data file '{p}' has no column 'text' (columns: sentence, label)"
    assert err.fix == "set data.text_column to one of the columns, e.g. text_column=sentence"
    err = user_error(load_dataset, DataConfig(train_file=str(p), text_column="sentence", label_column="intent"))
    assert "has no column 'intent'" in err.problem and err.fix.startswith("set data.label_column")


def test_validation_folder_aliases_and_explicit_files(tmp_path):
    folder = folder_with(tmp_path / "f", ".csv", {"train": make_rows(TRAIN), "dev": make_rows({"a": 1, "b": 1})})
    ds = load_dataset(DataConfig(dataset_name=str(folder)), seed=0)
    assert ds.validation.source == str(folder / "dev.csv") and len(ds.validation) == 2
    assert ds.test is None and set(ds.splits()) == {"train", "validation"}
    # explicit files override the folder's
    val = write_rows(tmp_path / "v.jsonl", make_rows({"c": 3}, tag="x "))
    test = write_rows(tmp_path / "t.parquet", make_rows({"b": 2}, tag="y "))
    ds = load_dataset(DataConfig(dataset_name=str(folder), validation_file=str(val), test_file=str(test)), seed=0)
    assert ds.validation.texts == ("x c example 0", "x c example 1", "x c example 2")
    assert ds.test.texts == ("y b example 0", "y b example 1") and ds.test.name == "test"


def test_a_users_train_file_never_mixes_with_the_embedded_demo(tmp_path):
    # dataset_name defaults to the embedded demo; a train_file of one's own must replace it whole
    p = write_rows(tmp_path / "mine.jsonl", make_rows({"x": 10, "y": 10}))
    ds = load_dataset(DataConfig(train_file=str(p)), seed=0)
    assert ds.label_space.labels == ("x", "y")
    assert ds.validation.source == f"{p} (carved)" and ds.test is None
    assert ds.unseen == {}


def test_json_array_file_and_utf8_bom_csv(tmp_path):
    p = tmp_path / "train.json"
    p.write_text(json.dumps(make_rows(TRAIN)), encoding="utf-8")
    assert len(read_rows(p)) == 12
    q = tmp_path / "bom.csv"
    q.write_bytes(b"\xef\xbb\xbftext,label\nhello,a\n")
    assert read_rows(q) == [{"text": "hello", "label": "a"}]


def test_numeric_labels_become_strings_and_texts_are_kept_verbatim(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(6)] + [{"text": "  spaced  ", "label": 1}]
    ds = load_dataset(DataConfig(train_file=str(write_rows(tmp_path / "n.jsonl", rows)),
                                 validation_file=str(write_rows(tmp_path / "v.jsonl", rows[:2]))), seed=0)
    assert ds.label_space.labels == ("0", "1")
    assert "  spaced  " in ds.train.texts


# ---------------------------------------------------------------------------------------------
# multi-label


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_multi_label_from_lists_is_detected(tmp_path, suffix):
    rows = [{"text": f"t{i}", "label": labs} for i, labs in enumerate(
        [["a"], ["a", "b"], ["b", "c"], ["c"], ["a", "c"], ["b"]] * 3)]
    p = write_rows(tmp_path / f"train{suffix}", rows)
    v = write_rows(tmp_path / f"val{suffix}", rows[:3])
    ds = load_dataset(DataConfig(train_file=str(p), validation_file=str(v)), seed=0)
    assert ds.label_space.multi_label and ds.label_space.labels == ("a", "b", "c")
    assert ds.train.labels[:3] == (("a",), ("a", "b"), ("b", "c"))
    assert ds.train.label_counts() == Counter({"a": 9, "b": 9, "c": 9})


def test_multi_label_from_a_delimiter(tmp_path):
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate(["a#b", "b", " c # a ", "a", "b#c", "c"] * 2)]
    p = write_rows(tmp_path / "train.csv", rows)
    ds = load_dataset(DataConfig(train_file=str(p), label_delimiter="#", validation_file=str(p)), seed=0)
    assert ds.label_space.multi_label
    assert ds.train.labels[:3] == (("a", "b"), ("b",), ("c", "a"))
    # a delimiter alone switches to multi-label even when every row has one label
    single = write_rows(tmp_path / "single.csv", make_rows(TRAIN))
    assert load_dataset(DataConfig(train_file=str(single), label_delimiter="#"), seed=0).label_space.multi_label


def test_empty_label_list_is_allowed_only_when_multi_label_is_forced(tmp_path):
    rows = [{"text": "none", "label": []}] + [{"text": f"t{i}", "label": ["a", "b"][i % 2:]} for i in range(8)]
    p = write_rows(tmp_path / "train.jsonl", rows)
    err = user_error(load_dataset, DataConfig(train_file=str(p)))
    assert err.problem == f"data file '{p}' line 1 has no label in column 'label'"
    ds = load_dataset(DataConfig(train_file=str(p), multi_label=True, validation_file=str(p)), seed=0)
    assert ds.train.labels[0] == () and ds.label_space.multi_label


@pytest.mark.parametrize("label, shown", [(["pin", ["balance"]], "['pin', ['balance']] in column 'label': ['balance'] inside"),
                                          (["pin", {"a": 1}], "{'a': 1} inside it is no label"),
                                          ({"a": "pin"}, "{'a': 'pin'} in column 'label': an object is no label")])
def test_a_nested_list_or_object_as_a_label_is_refused_naming_its_line(tmp_path, label, shown):
    rows = [{"text": f"t{i}", "label": ["a", "b"][i % 2:]} for i in range(8)]
    rows[2]["label"] = label  # its Python repr, "['balance']", trained as a label of its own
    p = write_rows(tmp_path / "train.jsonl", rows)
    err = user_error(load_dataset, DataConfig(train_file=str(p), validation_file=str(p)))
    assert err.problem.startswith(f"data file '{p}' line 3 has ") and shown in err.problem
    assert err.problem.endswith("(a label is a string or a number)") and "string or number" in err.fix
    probe = write_rows(tmp_path / "probe.jsonl", [{"text": "x", "label": [["balance"]]}])
    from loratune.slices import load_probe_set

    assert "one expected label" in user_error(load_probe_set, str(probe)).problem


def test_the_none_label_beside_another_label_is_refused_naming_the_lines(tmp_path):
    rows = [{"text": f"t{i}", "label": ["a", "b"][i % 2:] if i % 4 else []} for i in range(9)]
    rows[1]["label"] = ["oos", "b"]
    p = write_rows(tmp_path / "train.jsonl", rows)
    cfg = DataConfig(train_file=str(p), validation_file=str(p), multi_label=True, none_label="oos")
    err = user_error(load_dataset, cfg)
    assert err.problem == (f"data file '{p}' line 2 has the none label 'oos' beside another label "
                           "(e.g. ['oos', 'b']): the none label stands alone")
    assert err.fix.startswith("drop 'oos' from those rows")
    for i in range(2, 9):
        rows[i]["label"] = ["b", "oos"]
    err = user_error(load_dataset, DataConfig(train_file=str(write_rows(p, rows)), validation_file=str(p),
                                              multi_label=True, none_label="oos"))
    assert " lines 2, 3, 4, 5, 6 and 3 more have the none label" in err.problem
    rows = [{"text": f"t{i}", "label": ["a", "b"][i % 2:] if i % 4 else ["oos"]} for i in range(9)]
    ds = load_dataset(DataConfig(train_file=str(write_rows(p, rows)), validation_file=str(p), multi_label=True,
                                 none_label="oos"), seed=0)
    assert ds.train.labels[0] == ("oos",)  # alone it is fine


def test_forced_single_label_rejects_rows_with_several_labels(tmp_path):
    rows = make_rows(TRAIN)
    rows[4]["label"] = "a#b"
    p = write_rows(tmp_path / "train.csv", rows)
    err = user_error(load_dataset, DataConfig(train_file=str(p), label_delimiter="#", multi_label=False))
    assert err.problem == f"data file '{p}' line 6 has 2 labels but the data is single-label"
    assert err.fix == "set data.multi_label=true, or give one label per row"


def test_single_label_check_covers_validation_and_test_files(tmp_path):
    train = write_rows(tmp_path / "train.jsonl", make_rows(TRAIN))
    val_rows = make_rows({"a": 2})
    val_rows[1]["label"] = ["a", "b"]
    val = write_rows(tmp_path / "val.jsonl", val_rows)
    err = user_error(load_dataset, DataConfig(train_file=str(train), validation_file=str(val)))
    assert err.problem == f"data file '{val}' line 2 has 2 labels but the data is single-label"


# ---------------------------------------------------------------------------------------------
# carving a validation split, label space, unseen labels


def _carve(tmp_path, seed, counts=None, fraction=0.25):
    p = write_rows(tmp_path / "train.jsonl", make_rows(counts or {"a": 20, "b": 12, "c": 2, "d": 1}))
    return load_dataset(DataConfig(train_file=str(p), validation_fraction=fraction), seed=seed), p


def test_the_carved_note_gives_the_share_carved(tmp_path):
    # 1% of 48 rows in 4 classes carves one row a class, 8%: the note said "carved a stratified 1% (4 rows)"
    ds, _ = _carve(tmp_path, seed=0, counts={"a": 12, "b": 12, "c": 12, "d": 12}, fraction=0.01)
    assert len(ds.validation) == 4
    assert ds.notes == ("no validation split given: carved a stratified 8% (4 of 48 rows) from train with seed 0 "
                        "(validation_fraction 1%: each class rounds to whole rows, at least one)",)
    ds, _ = _carve(tmp_path, seed=0, counts={"a": 20, "b": 20}, fraction=0.25)  # exact: no aside
    assert ds.notes == ("no validation split given: carved a stratified 25% (10 of 40 rows) from train with seed 0",)


def test_missing_validation_is_carved_stratified_seeded_and_noted(tmp_path):
    ds, p = _carve(tmp_path, seed=7)
    v, t = ds.validation.label_counts(), ds.train.label_counts()
    assert v == Counter({"a": 5, "b": 3, "c": 1})  # 25% per label, at least one; a singleton stays in train
    assert t == Counter({"a": 15, "b": 9, "c": 1, "d": 1})
    assert set(ds.train.texts).isdisjoint(ds.validation.texts)
    assert len(ds.train) + len(ds.validation) == 35
    assert ds.validation.name == "validation" and ds.validation.source == f"{p} (carved)"
    assert ds.notes == ("no validation split given: carved a stratified 26% (9 of 35 rows) from train with seed 7 "
                        "(validation_fraction 25%: each class rounds to whole rows, at least one)",)
    assert ds.label_space.labels == ("a", "b", "c", "d")


def test_carving_is_reproducible_per_seed(tmp_path):
    first, _ = _carve(tmp_path, seed=1)
    again, _ = _carve(tmp_path, seed=1)
    other, _ = _carve(tmp_path, seed=2)
    assert first.validation.texts == again.validation.texts and first.train.texts == again.train.texts
    assert set(first.validation.texts) != set(other.validation.texts)


def test_unseen_validation_and_test_labels_are_reported_not_fatal(tmp_path):
    train = write_rows(tmp_path / "train.csv", make_rows(TRAIN))
    val = write_rows(tmp_path / "val.csv", make_rows({"a": 1, "zz": 2, "yy": 1}))
    test = write_rows(tmp_path / "test.parquet", make_rows({"b": 1, "zz": 3}))
    ds = load_dataset(DataConfig(train_file=str(train), validation_file=str(val), test_file=str(test)), seed=0)
    assert ds.label_space.labels == ("a", "b", "c")
    assert ds.unseen == {"validation": {"zz": 2, "yy": 1}, "test": {"zz": 3}}
    assert list(ds.unseen["validation"]) == ["zz", "yy"]  # most frequent first
    assert ds.notes == (
        "validation: 3 label occurrence(s) of 2 label(s) not in train (zz, yy); they are scored as errors",
        "test: 3 label occurrence(s) of 1 label(s) not in train (zz); they are scored as errors",
    )
    assert len(ds.validation) == 4 and len(ds.test) == 4  # the rows stay, to be scored as errors


def test_unseen_note_lists_at_most_five_labels(tmp_path):
    train = write_rows(tmp_path / "train.jsonl", make_rows(TRAIN))
    val = write_rows(tmp_path / "val.jsonl", make_rows({**{f"u{i}": 1 for i in range(7)}, next(iter(TRAIN)): 2}))
    ds = load_dataset(DataConfig(train_file=str(train), validation_file=str(val)), seed=0)
    assert ds.notes[0].endswith("(u0, u1, u2, u3, u4...); they are scored as errors")
    assert len(ds.unseen["validation"]) == 7


def test_a_validation_split_of_no_train_label_is_refused_and_whole_floats_are_ints(tmp_path):
    """Train labels 0..3 and validation labels 0.0..3.0 were two label sets: the run trained, scored 0.0 and
    crashed diagnose, report and show."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 3}) + "\n" for i in range(12)))
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"text": f"v{i}", "label": float(i % 3)}) + "\n" for i in range(6)))
    ds = load_dataset(DataConfig(train_file=str(train), validation_file=str(val)), seed=0)
    assert ds.label_space.labels == ("0", "1", "2") and not ds.unseen
    val.write_text("".join(json.dumps({"text": f"v{i}", "label": f"x{i % 3}"}) + "\n" for i in range(6)))
    with pytest.raises(UserError, match="the validation split shares no label with train"):
        load_dataset(DataConfig(train_file=str(train), validation_file=str(val)), seed=0)
    nan = tmp_path / "nan.jsonl"
    nan.write_text('{"text": "a", "label": NaN}\n' + train.read_text())
    with pytest.raises(UserError, match="line 1 has no label"):
        load_dataset(DataConfig(train_file=str(nan)), seed=0)


def test_csv_and_json_rows_that_would_be_misread_are_refused(tmp_path):
    rows = "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(10))
    (tmp_path / "comma.csv").write_text("text,label\n" + rows + "i lost my card, please help,a\n")
    with pytest.raises(UserError, match="line 12 has 3 fields, the header 2"):
        read_rows(tmp_path / "comma.csv")
    (tmp_path / "long.csv").write_text("text,label\n" + "w " * 70000 + ",a\n" + rows)
    assert len(read_rows(tmp_path / "long.csv")[0]["text"]) == 140000  # past the csv module's 131,072 limit
    (tmp_path / "arr.json").write_text(json.dumps([{"text": "a", "label": "x"}, ["b", "y"]]))
    with pytest.raises(UserError, match="entry 2 of its array is not a JSON object"):
        read_rows(tmp_path / "arr.json")
    (tmp_path / "sep.jsonl").write_text(json.dumps({"text": "lost\u2028my card", "label": "a"}, ensure_ascii=False)
                                        + "\n", encoding="utf-8")
    assert read_rows(tmp_path / "sep.jsonl") == [{"text": "lost\u2028my card", "label": "a"}]


@pytest.mark.parametrize("text", [["lost", "my", "card"], {"a": 1}, 12345, 1.5, True])
def test_a_text_that_is_no_string_is_refused_by_its_row(tmp_path, text):
    # its str() trained as the text ("['lost', 'my', 'card']"); predict refused the same row
    rows = make_rows(TRAIN) + [{"text": text, "label": "a"}]
    err = user_error(parse_rows, rows, DataConfig(), "t.jsonl", "train")
    assert f"row {len(rows)} has a 'text' of {text!r}, not a string" in err.problem
    assert parse_rows(make_rows({"a": 1}) + [{"text": "12345", "label": 3}], DataConfig(), "t", "train").labels[1] \
        == ("3",)  # numbers as labels stay legitimate


@pytest.mark.parametrize("row, where", [({"text": "lost \ud83d my card", "label": "a"}, "line 13 has"),
                                        ({"text": "lost my card", "label": "a\udc00"}, "line 13 label has")])
def test_a_lone_surrogate_is_refused_by_its_row_and_character(tmp_path, row, where):
    # JSON's "\\ud83d" without its pair: a traceback in train (UTF-8 encoding), assess and predict (the tokenizer)
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_rows(TRAIN) + [row]))
    err = user_error(read_rows_then_parse, path)
    assert where in err.problem and "lone surrogate U+" in err.problem
    assert ("U+D83D at character 6 (after 'lost ')" if "lost \ud83d" in row["text"] else "U+DC00 at character 2") \
        in err.problem
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps({"text": "lost \ud83d\ude00 card", "label": "a"}) + "\n")
    assert read_rows_then_parse(ok).texts == ("lost \U0001f600 card",)  # a pair is one character, kept


def read_rows_then_parse(path: Path) -> Split:
    return parse_file(path, DataConfig(), "train")


def test_two_files_for_one_split_are_refused_unless_a_key_names_one(tmp_path):
    write_rows(tmp_path / "train.jsonl", make_rows(TRAIN))
    (tmp_path / "train.csv").write_text("text,label\nx,a\ny,b\n")
    with pytest.raises(UserError, match="holds 2 files for the train split: train.jsonl, train.csv"):
        load_dataset(DataConfig(dataset_name=str(tmp_path)), seed=0)
    ds = load_dataset(DataConfig(dataset_name=str(tmp_path), train_file=str(tmp_path / "train.jsonl")), seed=0)
    assert len(ds.train.texts) + len(ds.validation.texts) == sum(TRAIN.values())  # train.jsonl, with val carved


def test_max_samples_take_stratified_subsets_and_say_so(tmp_path):
    counts = {lab: 10 for lab in "abcdefgh"}
    train = write_rows(tmp_path / "train.jsonl", make_rows(counts))
    val = write_rows(tmp_path / "val.jsonl", make_rows(counts, tag="v "))
    cfg = DataConfig(train_file=str(train), validation_file=str(val), max_train_samples=20, max_eval_samples=8)
    ds = load_dataset(cfg, seed=3)
    assert len(ds.train) == 20 and len(ds.validation) == 8
    assert set(ds.train.label_counts()) == set(counts) and set(ds.validation.label_counts()) == set(counts)
    assert ds.notes == ("train: stratified subset of 20 rows (max_train_samples)",
                        "validation: stratified subset of 8 rows (max_eval_samples)")
    big = load_dataset(DataConfig(train_file=str(train), validation_file=str(val), max_train_samples=500), seed=3)
    assert len(big.train) == 80 and big.notes == ()


def test_max_samples_under_the_class_count_drop_classes_by_the_seed_and_name_them(tmp_path):
    """max_train_samples / max_eval_samples under the number of classes trimmed the classes that lose their only row
    by name (the trim's ties: sorted), so every seed dropped the same ones (BANKING77 demo, max_train_samples=60: the
    17 alphabetically first for seed 1 and 7 alike), and the notes said only "stratified subset of 60 rows" while the
    test split's 'labels not in train' were the train file's own. The dropped classes are the seed's draw, and the
    notes name them and their cause."""
    counts = {lab: 3 for lab in "abcdefgh"}
    train = write_rows(tmp_path / "train.jsonl", make_rows(counts))
    val = write_rows(tmp_path / "val.jsonl", make_rows(counts, tag="v "))
    lost = set()
    for seed in range(8):
        ds = load_dataset(DataConfig(train_file=str(train), validation_file=str(val), max_train_samples=5), seed=seed)
        gone = sorted(set(counts) - set(ds.label_space.labels))
        assert len(ds.train) == 5 and len(gone) == 3 and len(ds.validation) == 24, seed
        lost.add(tuple(gone))
        assert ds.notes == (
            f"train: stratified subset of 5 rows (max_train_samples), with no row of 3 of the split's 8 label(s) "
            f"({', '.join(gone)}): the model never learns them; in validation/test, they are scored as errors; to "
            "keep them, raise data.max_train_samples (at least the number of labels, 8), or leave it unset",
            f"validation: 9 label occurrence(s) of 3 label(s) not in train ({', '.join(gone)}; all of them in the "
            "train file, left out by its max_train_samples subset); they are scored as errors"), seed
        assert ds.unseen == {"validation": {lab: 3 for lab in gone}}
    assert len(lost) >= 4  # the seed draws which (by name: a, b, c for every seed)
    lost = set()
    for seed in range(8):
        ds = load_dataset(DataConfig(train_file=str(train), validation_file=str(val), max_eval_samples=6), seed=seed)
        gone = sorted(set(counts) - {labs[0] for labs in ds.validation.labels})
        assert len(ds.validation) == 6 and len(gone) == 2 and len(ds.label_space.labels) == 8, seed
        lost.add(tuple(gone))
        assert ds.notes == (
            f"validation: stratified subset of 6 rows (max_eval_samples), with no row of 2 of the split's 8 label(s) "
            f"({', '.join(gone)}): their recall is not measured; to keep them, raise data.max_eval_samples (at "
            "least the number of labels, 8), or leave it unset",), seed
    assert len(lost) >= 4


def test_max_eval_samples_keeps_the_classes_the_train_subset_kept(tmp_path):
    """main dropped classes by name, so a train and a validation subset under the class count lost the same classes
    and still shared the others; drawn by the seed, each apart, they shared none: max_train_samples=10,
    max_eval_samples=5 on 40 classes refused 8 seeds of 20 ("shares no label with train ... give both splits the same
    label names", a fix about names that were fine). The validation subset takes the classes train kept first (the
    ones train lost cannot be scored), so every seed loads, and no validation row is of a class train lost."""
    train = write_rows(tmp_path / "train.jsonl", [{"text": f"row {i} of {lab}", "label": lab}
                                                  for lab in (f"lab_{k}" for k in range(40)) for i in range(10)])
    for seed in range(20):
        ds = load_dataset(DataConfig(train_file=str(train), max_train_samples=10, max_eval_samples=5), seed=seed)
        assert len(ds.train) == 10 and len(ds.validation) == 5, seed
        assert {labs[0] for labs in ds.validation.labels} <= set(ds.label_space.labels), seed
        assert ds.unseen == {} and not any("not in train" in n for n in ds.notes), seed
    # above the classes train kept, the others fill the rest, drawn stratified as before
    ds = load_dataset(DataConfig(train_file=str(train), max_train_samples=10, max_eval_samples=15), seed=3)
    kept = set(ds.label_space.labels)
    val = [labs[0] for labs in ds.validation.labels]
    assert len(val) == 15 and len(set(val)) == 15 and len([lab for lab in val if lab in kept]) == len(kept) == 10
    assert ds.unseen == {"validation": {lab: 1 for lab in val if lab not in kept}}
    # without a train subset (or one that loses no class) the validation subset is the one it was
    from loratune.data import stratified_subset
    for seed in range(5):
        whole = load_dataset(DataConfig(train_file=str(train)), seed=seed).validation
        ds = load_dataset(DataConfig(train_file=str(train), max_eval_samples=5), seed=seed)
        assert ds.validation.texts == whole.subset(stratified_subset(whole, 5, seed)).texts


def test_a_refusal_the_subsets_made_names_them_not_the_label_names(tmp_path):
    """Where the files share labels and only the max_*_samples subsets do not (the validation file holds no row of a
    class the train subset kept), the refusal said "give both splits the same label names": it names the subsets and
    the fix, raising them."""
    from loratune.errors import UserError
    train = write_rows(tmp_path / "train.jsonl", make_rows({"a": 3, "b": 3, "c": 3, "d": 3}))
    val = write_rows(tmp_path / "val.jsonl", make_rows({"c": 2, "d": 2}, tag="v "))
    said = set()
    for seed in range(12):
        cfg = DataConfig(train_file=str(train), validation_file=str(val), max_train_samples=2)
        try:
            ds = load_dataset(cfg, seed=seed)
        except UserError as e:
            assert e.problem.startswith("the validation split shares no label with train (validation: ")
            assert e.problem.endswith("train: a, b): the splits share 2 label(s), but not their data.max_train_samples "
                                      "subset"), e.problem
            assert e.fix == "raise data.max_train_samples (at least the number of labels, 4), or leave it unset"
            said.add("refused")
        else:
            assert set(ds.label_space.labels) & {"c", "d"}, seed
            said.add("loaded")
    assert said == {"refused", "loaded"}
    # a validation subset of labels train never had, beside one it shares: both caps named
    val = write_rows(tmp_path / "val2.jsonl", make_rows({"a": 1, "x": 5, "y": 5, "z": 5}, tag="v "))
    train = write_rows(tmp_path / "train2.jsonl", make_rows({"a": 4, "b": 4}))
    refused = 0
    for seed in range(12):
        try:
            load_dataset(DataConfig(train_file=str(train), validation_file=str(val), max_train_samples=3,
                                    max_eval_samples=2), seed=seed)
        except UserError as e:
            refused += 1
            assert e.problem.endswith("the splits share 1 label(s), but not their data.max_train_samples and "
                                      "data.max_eval_samples subsets"), e.problem
            assert e.fix == ("raise data.max_train_samples (at least the number of labels, 2) and "
                             "data.max_eval_samples (at least the number of labels, 4), or leave them unset")
    assert refused
    # labels that differ in the files themselves: the names are the fix, as before
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(train_file=str(train), validation_file=str(
            write_rows(tmp_path / "val3.jsonl", make_rows({"A": 2, "B": 2}))), max_train_samples=3), seed=0)
    assert "give both splits the same label names" in e.value.fix


def test_multi_label_subset_and_unseen_notes_say_one_cost(tmp_path):
    """A multi-label train subset's note said the dropped labels' "validation/test rows are scored as errors" while the
    unseen-label note of the same run said "a row carrying one is wrong in exact match (the label itself has no column
    in the F1 scores)"; the fix "(at least the number of labels)" was written twice, the refusal's without the number.
    Both notes say the task's cost in one wording, and the fix is one text."""
    from loratune.errors import UserError
    labs = ["l0", "l1", "l2", "l3", "l4", "l5"]
    rows = [{"text": f"row {i}", "labels": [labs[i % 6], labs[(i + 1) % 6]]} for i in range(24)]
    train = write_rows(tmp_path / "train.jsonl", rows)
    val = write_rows(tmp_path / "val.jsonl", [{"text": f"v {i}", "labels": [lab]} for i, lab in enumerate(labs)])
    ds = load_dataset(DataConfig(train_file=str(train), validation_file=str(val), label_column="labels",
                                 multi_label=True, max_train_samples=2), seed=1)
    gone = sorted(set(labs) - set(ds.label_space.labels))
    cost = "a row carrying one is wrong in exact match (the label itself has no column in the F1 scores)"
    assert gone and ds.notes == (
        f"train: stratified subset of 2 rows (max_train_samples), with no row of {len(gone)} of the split's 6 "
        f"label(s) ({', '.join(gone)}): the model never learns them; in validation/test, {cost}; to keep them, raise "
        "data.max_train_samples (at least the number of labels, 6), or leave it unset",
        f"validation: {len(gone)} label occurrence(s) of {len(gone)} label(s) not in train ({', '.join(gone)}; all "
        f"of them in the train file, left out by its max_train_samples subset); {cost}")
    one = write_rows(tmp_path / "one.jsonl", make_rows({"a": 5, "b": 1, "c": 1}))
    with pytest.raises(UserError) as e:  # a subset of one class: the same fix, with the number
        load_dataset(DataConfig(train_file=str(one), max_train_samples=1), seed=0)
    assert e.value.fix.endswith("raise data.max_train_samples (at least the number of labels, 3), or leave it unset")


# ---------------------------------------------------------------------------------------------
# user errors: each names the file and the row/line, and says what to do


def test_missing_file_and_wrong_suffix(tmp_path):
    err = user_error(read_rows, tmp_path / "nope.csv")
    assert err.problem == f"data file '{tmp_path / 'nope.csv'}' does not exist" and "data.train_file" in err.fix
    p = tmp_path / "train.txt"
    p.write_text("hello\n")
    err = user_error(read_rows, p)
    assert err.problem == f"data file '{p}' has suffix '.txt'"
    assert err.fix == "use one of .jsonl, .json, .csv, .parquet (JSON Lines, CSV, Parquet)"


@pytest.mark.parametrize("suffix", FORMATS)
def test_empty_file(tmp_path, suffix):
    p = tmp_path / f"train{suffix}"
    p.write_bytes(b"")
    err = user_error(load_dataset, DataConfig(train_file=str(p)))
    assert err.problem == f"data file '{p}' is empty" and err.fix


@pytest.mark.parametrize("name,content", [("train.jsonl", "\n\n  \n"), ("train.csv", "text,label\n")])
def test_file_without_rows(tmp_path, name, content):
    p = tmp_path / name
    p.write_text(content)
    err = user_error(read_rows, p)
    assert err.problem == f"data file '{p}' has no rows" and "add rows of labelled text" in err.fix


def test_parquet_without_rows_and_damaged_parquet(tmp_path):
    p = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())}), p)
    assert user_error(read_rows, p).problem == f"data file '{p}' has no rows"
    q = tmp_path / "broken.parquet"
    q.write_bytes(b"PAR1 this is not parquet")
    err = user_error(read_rows, q)
    assert err.problem.startswith(f"data file '{q}' could not be read as Parquet")


@pytest.mark.parametrize("name", ["train.csv", "train.jsonl"])
def test_non_utf8_bytes_name_file_offset_line_and_fix(tmp_path, name):
    p = tmp_path / name
    body = ('text,label\nfine,a\ncaf\u00e9,b\n' if name.endswith(".csv")
            else '{"text": "fine", "label": "a"}\n{"text": "fine", "label": "b"}\n{"text": "caf\u00e9", "label": "b"}\n')
    raw = body.encode("latin-1")
    p.write_bytes(raw)
    err = user_error(load_dataset, DataConfig(train_file=str(p)))
    offset = raw.index(b"\xe9")
    line = 3
    assert err.problem == f"data file '{p}' is not UTF-8: byte 0xe9 at offset {offset} (line {line})"
    assert err.fix == f"re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 '{p}' > fixed{p.suffix}`"


@pytest.mark.parametrize("line,problem_tail", [
    ('{"text": "x", "label": ', "line 2 is not valid JSON (Expecting value)"),
    ("not json at all", "line 2 is not valid JSON (Expecting value)"),
    ('["x", "a"]', "line 2 is not a JSON object"),
    ("null", "line 2 is not a JSON object"),
])
def test_invalid_json_line(tmp_path, line, problem_tail):
    p = tmp_path / "train.jsonl"
    p.write_text('{"text": "ok", "label": "a"}\n' + line + "\n", encoding="utf-8")
    err = user_error(read_rows, p)
    assert err.problem == f"data file '{p}' {problem_tail}"
    assert "one" in err.fix and "per line" in err.fix


def test_invalid_json_array_file(tmp_path):
    p = tmp_path / "train.json"
    p.write_text('[{"text": "x", "label": "a"},', encoding="utf-8")
    err = user_error(read_rows, p)
    assert err.problem.startswith(f"data file '{p}' is not valid JSON") and err.fix == "fix the JSON"


@pytest.mark.parametrize("suffix", FORMATS)
def test_row_without_label(tmp_path, suffix):
    rows = make_rows(TRAIN)
    rows[2]["label"] = "" if suffix == ".csv" else None
    p = write_rows(tmp_path / f"train{suffix}", rows)
    err = user_error(load_dataset, DataConfig(train_file=str(p)))
    where = {".jsonl": "line 3", ".csv": "line 4", ".parquet": "row 3"}[suffix]  # a CSV's header is its line 1
    assert err.problem == f"data file '{p}' {where} has no label in column 'label'"
    assert err.fix.startswith("give every row a label")


def test_row_without_label_key_and_without_text(tmp_path):
    rows = make_rows(TRAIN)
    del rows[3]["label"]
    p = write_rows(tmp_path / "a.jsonl", rows)
    assert user_error(read_and_parse, p).problem == f"data file '{p}' line 4 has no label in column 'label'"
    rows = make_rows(TRAIN)
    rows[1]["text"] = None
    q = write_rows(tmp_path / "b.jsonl", rows)
    err = user_error(read_and_parse, q)
    assert err.problem == f"data file '{q}' line 2 has no value in column 'text'"
    assert err.fix == "fill in the text or remove the row"


def test_short_csv_row_is_a_row_without_label(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("text,label\nhello,a\nno label here\nbye,b\n", encoding="utf-8")
    assert user_error(read_and_parse, p).problem == f"data file '{p}' line 3 has no label in column 'label'"


def read_and_parse(p: Path):
    return parse_file(p, DataConfig(), "train")


@pytest.mark.parametrize("suffix", FORMATS)
def test_single_class_training_data(tmp_path, suffix):
    p = write_rows(tmp_path / f"train{suffix}", make_rows({"only": 5}))
    err = user_error(load_dataset, DataConfig(train_file=str(p), validation_file=str(p)))
    assert err.problem == f"training data '{p}' has a single class ('only')"
    assert "at least two labels" in err.fix and "data.label_column" in err.fix


@pytest.mark.parametrize("suffix", FORMATS)
def test_multi_label_training_data_with_the_same_labels_on_every_row(tmp_path, suffix):
    """Every row ["a", "b"]: no label had a negative row, the run scored 1.0 and was called healthy, where one class
    is refused. Rows that differ in their labels train, one label on every row among them."""
    rows = [{"text": f"row {i}", "label": ["a", "b"]} for i in range(6)]
    p = write_rows(tmp_path / f"train{suffix}", rows)
    err = user_error(load_dataset, DataConfig(train_file=str(p), validation_file=str(p), multi_label=True))
    assert err.problem == (f"training data '{p}' has a single label set (['a', 'b'] on every row: each label is on "
                           "every row)")
    assert "at least two labels, and rows that differ in them" in err.fix and "data.label_column" in err.fix
    rows[0]["label"] = ["a"]
    p = write_rows(tmp_path / f"ok{suffix}", rows)
    ds = load_dataset(DataConfig(train_file=str(p), validation_file=str(p), multi_label=True))
    assert ds.label_space.labels == ("a", "b")


def test_folder_without_train_file_and_file_given_as_dataset_name(tmp_path):
    write_rows(tmp_path / "validation.jsonl", make_rows(TRAIN))
    err = user_error(load_dataset, DataConfig(dataset_name=str(tmp_path)))
    assert err.problem == f"folder '{tmp_path}' has no train file" and "data.train_file" in err.fix
    f = str(tmp_path / "validation.jsonl")
    err = user_error(load_dataset, DataConfig(dataset_name=f))
    assert err.problem == f"dataset_name '{f}' is a file, not a folder" and err.fix == f"use data.train_file={f}"


def test_hub_id_without_the_datasets_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails, as when it is not installed
    err = user_error(load_dataset, DataConfig(dataset_name="someone/some-dataset"))
    assert "dataset_name 'someone/some-dataset' is not a local folder" in err.problem
    assert "pip install datasets" in err.fix


# ---------------------------------------------------------------------------------------------
# the embedded demo data


def test_embedded_demo_loads_with_license_and_source():
    ds = load_dataset(DataConfig(dataset_name=EMBEDDED_DATA), seed=42)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (1848, 604, 770)
    assert len(ds.label_space) == 77 and not ds.label_space.multi_label
    assert set(ds.train.label_counts().values()) == {24}
    assert ds.notes == () and ds.unseen == {}
    assert all(t.strip() for t in ds.train.texts)
    folder = embedded_data_dir()
    assert "Attribution 4.0 International" in (folder / "LICENSE").read_text(encoding="utf-8")
    source = (folder / "SOURCE.md").read_text(encoding="utf-8")
    assert "BANKING77" in source and "CC BY 4.0" in source
    assert load_dataset(DataConfig(), seed=0).train == ds.train  # it is the default
    # the instruction demo (task causal-lm's default) has nothing to classify: refused with both ways out
    with pytest.raises(UserError) as info:
        load_dataset(DataConfig(dataset_name="embedded:instructions-demo"))
    assert "instruction data" in info.value.problem
    assert "model.task=causal-lm" in info.value.fix and EMBEDDED_DATA in info.value.fix


# ---------------------------------------------------------------------------------------------
# stratified_split / stratified_subset as properties


def split_of(labels: list[str]) -> Split:
    return Split("train", tuple(f"t{i}" for i in range(len(labels))), tuple((lab,) for lab in labels), "mem")


labels_strategy = st.lists(st.sampled_from("abcdefg"), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None)
@given(labels=labels_strategy, fraction=st.floats(0.01, 0.99), seed=st.integers(0, 10_000))
def test_property_stratified_split_keeps_each_label_on_both_sides(labels, fraction, seed):
    sp = split_of(labels)
    keep, carved = stratified_split(sp, fraction, seed)
    assert sorted(keep + carved) == list(range(len(labels)))
    assert keep == sorted(keep) and carved == sorted(carved)
    counts = Counter(labels)
    kept = Counter(labels[i] for i in keep)
    cut = Counter(labels[i] for i in carved)
    for lab, n in counts.items():
        if n >= 2:
            assert kept[lab] >= 1 and cut[lab] >= 1, (lab, n, fraction)
        else:
            assert kept[lab] == 1 and cut[lab] == 0
    assert stratified_split(sp, fraction, seed) == (keep, carved)


def test_stratified_split_sizes_and_seed_dependence():
    sp = split_of(["a"] * 50 + ["b"] * 30 + ["c"] * 2)
    keep, carved = stratified_split(sp, 0.1, seed=0)
    assert Counter(sp.labels[i][0] for i in carved) == Counter({"a": 5, "b": 3, "c": 1})
    seen = {tuple(stratified_split(sp, 0.1, seed=s)[1]) for s in range(5)}
    assert len(seen) == 5
    # stratifies multi-label rows by their first label, and rows without labels form one group
    multi = Split("m", ("x", "y", "z", "w"), (("a", "b"), ("a",), (), ()), "mem")
    keep, carved = stratified_split(multi, 0.5, seed=0)
    assert len(carved) == 2 and {0, 1} & set(carved) and {2, 3} & set(carved)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 12), st.sampled_from("abcd")), min_size=1, max_size=80),
       fraction=st.floats(0.01, 0.5), seed=st.integers(0, 10_000))
def test_property_a_carving_keeps_each_texts_copies_on_one_side(rows, fraction, seed):
    """Texts drawn from a few (repeated rows, 'Text 3!' a copy of 'text 3', a text under two labels): never one text
    on both sides; every label keeps a train row (a one-row class whose text another class's rows repeat was carved
    away whole with them); a class never carves past its share (carve_target of its rows), and carves where one of its
    texts, of its rows alone, fits that share."""
    sp = Split("train", tuple(f"Text {t}!" if i % 3 else f"text {t}" for i, (t, _) in enumerate(rows)),
               tuple((lab,) for _, lab in rows), "mem")
    keys = [text_key(t) for t in sp.texts]
    keep, carved = stratified_split(sp, fraction, seed, keys)
    assert sorted(keep + carved) == list(range(len(rows))) and keep == sorted(keep) and carved == sorted(carved)
    assert not {rows[i][0] for i in keep} & {rows[i][0] for i in carved}
    assert {lab for _, lab in rows} == {rows[i][1] for i in keep}
    for lab, n in Counter(lab for _, lab in rows).items():
        target = carve_target(n, fraction)
        assert sum(rows[i][1] == lab for i in carved) <= target, (lab, target)
        own = Counter(t for t, l in rows if l == lab)
        if any(k <= target and all(l == lab for u, l in rows if u == t) for t, k in own.items()):
            assert any(rows[i][1] == lab for i in carved), (lab, target)
    assert stratified_split(sp, fraction, seed, keys) == (keep, carved)


def test_a_one_row_class_whose_text_another_class_repeats_keeps_its_train_row(tmp_path):
    """'refund' has one row, its text a re-cased 'card' row's (an exact conflict): the unit of that text was offered
    under 'card' and carved whole (seed 13 among others), so refund left train and the label space, and validation
    scored a label no model learnt. Each row now counts under its own class: refund has nothing to carve."""
    rows = make_rows({"card": 10, "pin": 10}) + [{"text": "CARD example 3!", "label": "refund"}]
    p = write_rows(tmp_path / "train.jsonl", rows)
    for seed in range(60):
        ds = load_dataset(DataConfig(train_file=str(p)), seed=seed)
        assert ds.label_space.labels == ("card", "pin", "refund") and not ds.unseen, seed
        assert "card example 3" in ds.train.texts and "CARD example 3!" in ds.train.texts, seed
        assert ds.validation.label_counts() == Counter({"card": 1, "pin": 1}), seed


def test_a_class_whose_texts_are_another_classs_is_noted_as_sharing_them(tmp_path):
    """'refund' has 3 rows, each a re-cased 'card' row's text (exact conflicts): the note said its texts had too many
    copies to fit its share and to raise validation_fraction; they have one copy each in refund, and a text's rows are
    carved only with card's share. The note says that, and its fix is the conflicts'."""
    from loratune.data import CARVE_CAUSE_OVER_SHARE, CARVE_CAUSE_SHARED, uncarved_causes

    rows = make_rows({"card": 20, "pin": 20}) + [{"text": f"CARD example {i}!", "label": "refund"} for i in range(3)]
    ds = load_dataset(DataConfig(train_file=str(write_rows(tmp_path / "train.jsonl", rows))), seed=0)
    assert "refund" not in {labs[0] for labs in ds.validation.labels}
    assert ds.notes[1] == (f"validation has no row of 'refund': {CARVE_CAUSE_SHARED}; to score it, give a validation "
                           "file (data.validation_file), or give each of those texts one label (`loratune assess` "
                           "lists the conflicts)")
    assert CARVE_CAUSE_SHARED.startswith("texts that are all another class's texts too (exact conflicts")
    # a class with a text of its own repeated past its share, beside shared ones: its copies are the cause
    keys = ["a1", "a2", "s", "s", "c", "c", "c"]
    assert uncarved_causes(keys, ["a", "a", "a", "b", "b", "b", "b"], ["b"]) == {"b": CARVE_CAUSE_OVER_SHARE}
    assert uncarved_causes(keys[:4], ["a", "a", "a", "b"], ["b"]) == {"b": "one row (it stays in train)"}
    assert uncarved_causes(["s", "t", "s", "t"], list("aabb"), ["b"]) == {"b": CARVE_CAUSE_SHARED}


def test_no_validation_carved_names_the_cause_the_carving_had(tmp_path):
    """Each class's rows are copies of one text (re-cased): nothing can be carved (a text's copies go to one side),
    and check_trainable said "none was carved from train" (its own rule, 2 rows a class, said they could be): the
    message names the classes and why, from the carving's own rule."""
    from loratune.data import check_trainable

    rows = [{"text": t, "label": lab} for lab, ts in {"card": ["lost my card", "Lost my card!", "LOST MY CARD"],
                                                      "pin": ["reset pin", "Reset PIN", "reset pin."]}.items()
            for t in ts] + [{"text": "where is my money", "label": "transfer"}]
    ds = load_dataset(DataConfig(train_file=str(write_rows(tmp_path / "train.jsonl", rows))))
    assert len(ds.validation) == 0 and len(ds.train) == 7
    problem = user_error(check_trainable, ds).problem
    assert problem.endswith(
        "validation: 0 rows: no validation file was given and no class can give one to carve (each class needs at "
        "least 2 rows and 2 distinct texts, case and punctuation aside: a text goes to validation with all its "
        "copies, within validation_fraction of the class's rows, and one stays in train): 'card', 'pin': rows that "
        "are all copies of one text (a text's copies go to one side, so they stay in train); 'transfer': one row "
        "(it stays in train)")
    # texts each repeated past a class's share: that cause; a class with a text of one row is never claimed uncarvable
    twice = make_rows({"a": 3, "b": 3}) * 2
    ds = load_dataset(DataConfig(train_file=str(write_rows(tmp_path / "twice.jsonl", twice))))
    assert len(ds.validation) == 0
    assert user_error(check_trainable, ds).problem.endswith(
        "'a', 'b': no text with few enough copies to fit its share (validation_fraction of its rows; a text goes to "
        "validation with all its copies)")
    # in the carving's note: the class left out and why, the other classes carved
    ds = load_dataset(DataConfig(train_file=str(write_rows(tmp_path / "some.jsonl", rows + make_rows({"d": 10})))))
    assert ds.validation.label_counts() == Counter({"d": 1})
    assert ds.notes[1] == ("validation has no row of 'card', 'pin': rows that are all copies of one text (a text's "
                           "copies go to one side, so they stay in train); to score them, give a validation file "
                           "(data.validation_file)")


def test_no_validation_carved_names_the_carvings_cause_after_max_train_samples(tmp_path):
    """check_trainable read the causes off train after max_train_samples had subset it: classes of 10 re-cased copies
    of one text, cut to a row or two, were said to have 'one row'. The causes are the carving's, from the whole file."""
    from loratune.data import CARVE_CAUSE_ONE_TEXT, check_trainable

    rows = [{"text": t + "!" * (i % 3), "label": lab} for lab, t in (("card", "Lost my card"), ("pin", "reset PIN"),
                                                                     ("balance", "what is my balance"))
            for i in range(10)]
    path = str(write_rows(tmp_path / "train.jsonl", rows))
    for n in (None, 4, 3):
        ds = load_dataset(DataConfig(train_file=path, max_train_samples=n))
        assert len(ds.validation) == 0 and len(ds.train) == (n or 30)
        assert ds.uncarved == dict.fromkeys(["balance", "card", "pin"], CARVE_CAUSE_ONE_TEXT)
        assert user_error(check_trainable, ds).problem.endswith(
            f"stays in train): 'balance', 'card', 'pin': {CARVE_CAUSE_ONE_TEXT}")


def test_a_text_repeated_past_its_class_share_stays_in_train(tmp_path):
    """A chat log's 'thanks' 40 times beside 9 other smalltalk texts and 40 rows of 3 other classes: carving it whole
    made validation 40 of 52 rows 'thanks' (smalltalk 77% of validation, 8% of train), and assess then warned of the
    label shift the carving made. Each class now carves its share of rows (10%, whole rows), a text's copies whole."""
    rows = [{"text": "thanks", "label": "smalltalk"}] * 40 + make_rows({"smalltalk": 9, "card": 40, "pin": 40,
                                                                         "balance": 40})
    p = write_rows(tmp_path / "train.jsonl", rows)
    for seed in range(40):
        ds = load_dataset(DataConfig(train_file=str(p)), seed=seed)
        assert "thanks" not in ds.validation.texts, seed
        assert ds.validation.label_counts() == Counter({"smalltalk": 5, "card": 4, "pin": 4, "balance": 4}), seed
        assert ds.notes == (f"no validation split given: carved a stratified 10% (17 of 169 rows) from train with "
                            f"seed {seed}",)
    # a class all of whose texts repeat past its share (4 texts x 3 copies, a share of 1 row) has no validation row,
    # said with the fix
    rows = make_rows({"a": 10}) + make_rows({"b": 4}) * 3
    ds = load_dataset(DataConfig(train_file=str(write_rows(tmp_path / "b.jsonl", rows))), seed=0)
    assert ds.validation.label_counts() == Counter({"a": 1}) and len(ds.train) == 21
    assert ds.notes[1] == ("validation has no row of 'b': no text with few enough copies to fit its share "
                           "(validation_fraction of its rows; a text goes to validation with all its copies); to score "
                           "it, give a validation file (data.validation_file), or raise data.validation_fraction")
    ds = load_dataset(DataConfig(train_file=str(write_rows(tmp_path / "b.jsonl", rows)), validation_fraction=0.25),
                      seed=0)
    assert ds.validation.label_counts() == Counter({"a": 2, "b": 3}) and len(ds.notes) == 1
    # the help says what the share does
    help_ = DataConfig.__dataclass_fields__["validation_fraction"].metadata["help"]
    assert "each class's rows" in help_ and "more copies than its class's share stays in train" in help_


def test_a_validation_split_carved_from_repeated_rows_has_no_copy_of_train():
    """A train file of 40 texts, each twice (one copy re-cased): 6 of the 8 carved rows were copies of rows left in
    train, and assess called it leakage and said to drop the copies from the later split (which has no file)."""
    from loratune import assess as A
    from loratune.assess.text import normalise
    import tempfile

    rows = make_rows({"a": 10, "b": 10, "c": 10, "d": 10})
    twice = rows + [{"text": r["text"].upper() + "?", "label": r["label"]} for r in rows]
    p = write_rows(Path(tempfile.mkdtemp()) / "train.jsonl", twice)
    ds = load_dataset(DataConfig(train_file=str(p)))
    assert len(ds.validation) == 8 and len(ds.train) == 72
    assert ds.notes == (f"no validation split given: carved a stratified 10% (8 of 80 rows) from train with seed 42",)
    assert Counter(labs[0] for labs in ds.validation.labels) == Counter({"a": 2, "b": 2, "c": 2, "d": 2})
    assert not {normalise(t) for t in ds.train.texts} & {normalise(t) for t in ds.validation.texts}
    a = A.assess_dataset(ds)
    assert a.facts["leak_rows"] == 0 and "leakage" not in {f.id for f in a.findings}
    # data without repeated texts carves as it did (the same rows for the same seed)
    once = load_dataset(DataConfig(train_file=str(write_rows(p.with_name("once.jsonl"), rows))))
    assert once.validation.texts == tuple(rows[i]["text"] for i in stratified_split(split_of(
        [r["label"] for r in rows]), 0.1, 42)[1])


@settings(max_examples=150, deadline=None)
@given(labels=labels_strategy, data=st.data(), seed=st.integers(0, 10_000))
def test_property_stratified_subset(labels, data, seed):
    sp = split_of(labels)
    n = data.draw(st.integers(1, len(labels) + 3))
    picked = stratified_subset(sp, n, seed)
    assert picked == sorted(set(picked)) and all(0 <= i < len(labels) for i in picked)
    assert len(picked) == min(n, len(labels))
    assert stratified_subset(sp, n, seed) == picked
    multi_row = [lab for lab, c in Counter(labels).items() if c >= 2]
    if n >= len(multi_row) and n < len(labels):
        # every label with two or more rows keeps a row whenever n leaves room for one of each
        assert set(multi_row) <= {labels[i] for i in picked}


def _old_cover(split: Split, chosen: list[int], pool: list[int]) -> list[int]:
    """data._cover as it was before the early exit (the reference its selection must equal)."""
    chosen = list(chosen)
    have = Counter(lab for i in chosen for lab in split.labels[i])
    for i in pool:
        labs = split.labels[i]
        if all(have[lab] for lab in labs):
            continue
        have.update(labs)
        spare = next((j for j in reversed(chosen) if all(have[lab] > 1 for lab in split.labels[j])), None)
        if spare is None:
            have.subtract(labs)
            continue
        chosen.append(i)
        chosen.remove(spare)
        have.subtract(split.labels[spare])
    return sorted(chosen)


def test_cover_stops_searching_for_a_spare_row_once_none_is_left(monkeypatch):
    """stratified_subset under the class count (5,000 classes of 10 rows, a subset of 2,600) took 56 s, all in
    _cover: for each of the 2,400 classes the trim left out it scanned every chosen row for a spare one, where none was
    left. It skips the search while none can have appeared (0.2 s); the rows it keeps are the same, single- and
    multi-label (random cases against the old code)."""
    import loratune.data as D

    class Reads(tuple):  # counts the rows' labels read
        n = 0

        def __getitem__(self, i):
            Reads.n += 1
            return tuple.__getitem__(self, i)
    sp = Split("train", tuple(f"t{i}" for i in range(2000)), Reads((f"c{i % 500}",) for i in range(2000)), "mem")
    Reads.n = 0
    picked = stratified_subset(sp, 260, 3)
    assert len(picked) == 260 and len({sp.labels[i] for i in picked}) == 260
    assert Reads.n <= 2 * len(sp), Reads.n  # the old search: 252,600 reads
    r = random.Random(0)
    for t in range(400):
        names = [f"l{k}" for k in range(r.randint(2, 12))]
        labels = [tuple(r.sample(names, min(len(names), r.choice([1, 1, 2, 3])))) for _ in range(r.randint(2, 60))]
        sp = Split("train", tuple(f"t{i}" for i in range(len(labels))), tuple(labels), "mem")
        chosen = sorted(r.sample(range(len(labels)), r.randint(1, len(labels))))
        pool = [i for i in range(len(labels)) if i not in set(chosen)]
        assert D._cover(sp, chosen, pool) == _old_cover(sp, chosen, pool), t
        n = r.randint(1, len(labels))
        picked = stratified_subset(sp, n, t)
        with monkeypatch.context() as m:
            m.setattr(D, "_cover", _old_cover)
            assert picked == stratified_subset(sp, n, t), t



def test_stratified_subset_builds_its_sets_once_not_once_per_row(monkeypatch):
    """stratified_subset built set(picked) anew for every row it checked (the rows left to fill from, and _cover's
    pool): quadratic, max_train_samples=25000 of a 50,000-row train took 175 s (0.9 s now). The sets it builds are as
    many for 10 times the rows; the rows it picks are the same."""
    import loratune.data as D

    def calls(rows: int) -> tuple[int, list[int]]:
        made = []

        def counting_set(*a):
            made.append(1)
            return set(*a)
        sp = split_of([f"c{i % 7}" for i in range(rows)] + ["x", "y", "z"])  # one-row classes: rows left to fill
        with monkeypatch.context() as m:
            m.setattr(D, "set", counting_set, raising=False)
            picked = stratified_subset(sp, rows // 2, 5)
        return len(made), picked
    small, picked = calls(60)
    assert calls(600)[0] == small <= 5
    assert picked == [0, 3, 5, 7, 8, 10, 13, 14, 16, 18, 21, 24, 25, 26, 27, 29, 30, 32, 34, 36, 39, 40, 41, 43, 44,
                      45, 47, 60, 61, 62]  # the old code's rows, seed 5


def test_stratified_subset_does_not_sample_away_a_small_label():
    sp = split_of(["a"] * 2 + ["b"] * 100)
    for seed in range(30):
        got = Counter(sp.labels[i][0] for i in stratified_subset(sp, 3, seed))
        assert got == Counter({"a": 1, "b": 2}), seed


def test_a_label_named_twice_in_a_row_is_one_label(tmp_path):
    # [pin, pin] counted pin twice: class counts inflated and a single-label row read as compound
    rows = [{"text": "change my pin", "label": ["pin", "pin"]}, {"text": "pin and balance", "label": "pin#balance#pin"},
            {"text": "what is my balance", "label": ["balance"]}]
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ds = load_dataset(DataConfig(dataset_name=str(tmp_path), label_delimiter="#"))
    assert ds.train.labels == (("pin",), ("pin", "balance"), ("balance",))


def test_predict_reads_a_text_file_as_utf8_lines_split_at_newlines_only(tmp_path):
    from loratune.commands.predict import read_texts

    f = tmp_path / "t.txt"
    f.write_text("\ufeffsend money\r\nlost\u2028my card\n\n", encoding="utf-8")
    assert read_texts(str(f), "text") == ["send money", "lost\u2028my card"]
    f.write_bytes(b"caf\xe9 lost my card\n")
    with pytest.raises(UserError, match="is not UTF-8"):
        read_texts(str(f), "text")


def test_assess_out_to_a_folder_is_refused_before_the_assessment(tmp_path, capsys):
    from loratune.cli import main

    assert main(["assess", "--no-probe", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_a_none_label_no_row_reaches_is_said():
    from loratune.commands.train import multi_label_note

    rows = [{"text": f"t{i}", "label": ["a", "b"][i % 2:i % 2 + 1]} for i in range(12)]
    import tempfile

    d = Path(tempfile.mkdtemp())
    write_rows(d / "train.jsonl", rows)
    ds = load_dataset(DataConfig(train_file=str(d / "train.jsonl"), multi_label=True, none_label="oos"), seed=0)
    assert any("data.none_label 'oos' has no effect" in n for n in ds.notes)
    run = {"decoding": {"min_labels": 0, "none_label": "none", "max_labels": 2}, "loss": {"kind": "bce"}}
    assert "empty answers allowed" not in multi_label_note(run)  # the none label fills an empty answer


# ---------------------------------------------------------------------------------------------
# rows named by their file line; CSV quoting, headers, numeric labels, encodings


def test_a_csv_quote_never_closed_is_refused_by_the_line_it_opens_on(tmp_path):
    """The rest of the file became one label ('card_lost\\ncheck my balance 30,balance\\n...'), 10 rows lost."""
    lines = ["text,label"] + [f"lost my card {j},card_lost" if j % 2 else f"check my balance {j},balance"
                              for j in range(40)]
    lines[31] = 'my card is broken,"card_lost'  # line 32 of the file
    p = tmp_path / "train.csv"
    p.write_text("\n".join(lines) + "\n")
    err = user_error(read_rows, p)
    assert err.problem == (f"data file '{p}' line 32 opens a quote that is never closed: the rest of the file "
                           "(10 line(s)) would be read as one field")
    lines[31] = 'my card is broken,"card_lost\nlost my card 31"'  # closed a line later: a label of two lines
    p.write_text("\n".join(lines) + "\n")
    err = user_error(parse_file, p, DataConfig(), "train")
    assert err.problem.startswith(f"data file '{p}' line 32 has a label that spans lines ('card_lost\\n")
    p.write_text('text,label\n"i lost\nmy card",card\nreset "pin",pin\n')  # quoted line breaks, inner quotes: kept
    assert parse_file(p, DataConfig(), "train").texts == ("i lost\nmy card", 'reset "pin"')


def test_errors_name_the_file_line_and_the_file_a_carved_split_came_from(tmp_path):
    rows = [{"text": f"lost my card {i}", "label": "card"} if i % 2 else {"text": f"reset my pin {i}", "label": "pin"}
            for i in range(20)]
    rows[15]["text"] = ""
    p = write_rows(tmp_path / "train.jsonl", rows)
    ds = load_dataset(DataConfig(train_file=str(p)), seed=0)
    (problem,) = empty_text_problems(ds)
    split = "validation" if "" in ds.validation.texts else "train"
    assert problem == f"{split}: 1 empty text(s) in '{p}' (line 16): drop them or fill them in"
    b = tmp_path / "blank.jsonl"  # a blank line: row 3 is line 4
    b.write_text('{"text": "lost my card", "label": "card"}\n\n{"text": "reset my pin", "label": "pin"}\n'
                 '{"text": "card gone", "label": ""}\n')
    assert user_error(parse_file, b, DataConfig(), "train").problem == \
        f"data file '{b}' line 4 has no label in column 'label'"
    c = tmp_path / "multi.csv"  # a quoted text over three lines: the row after it starts on line 5
    c.write_text('text,label\n"lost\nmy\ncard",card\n,pin\nreset pin,pin\n')
    sp = parse_file(c, DataConfig(), "train")
    assert sp.lines == (2, 5, 6) and sp.where(1) == "line 5"
    assert sp.subset([2, 1]).lines == (6, 5)


@pytest.mark.parametrize("form", ["parquet", "json array", "hub"])
def test_a_carved_split_of_a_file_without_lines_names_its_rows_by_their_number_in_it(tmp_path, monkeypatch, form):
    # Parquet, a JSON array, a hub split: rows without lines were named by their place in the carved split ('row 3' of
    # validation, or of the train left over), another row of the file: a subset keeps each row's number in its source
    rows = [{"text": f"lost my card {i}", "label": "card"} if i % 2 else {"text": f"reset my pin {i}", "label": "pin"}
            for i in range(40)]
    for i in (30, 37):
        rows[i]["text"] = ""
    if form == "parquet":
        cfg = DataConfig(train_file=str(write_rows(tmp_path / "train.parquet", rows)), validation_fraction=0.25)
    elif form == "json array":
        (tmp_path / "train.json").write_text(json.dumps(rows))
        cfg = DataConfig(train_file=str(tmp_path / "train.json"), validation_fraction=0.25)
    else:
        datasets = pytest.importorskip("datasets")
        hub = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
        monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: hub)
        cfg = DataConfig(dataset_name="user/data", validation_fraction=0.25)
    ds = load_dataset(cfg, seed=0)
    named = re.findall(r"\(rows? ([\d, ]+)\)", " ".join(empty_text_problems(ds)))
    assert sorted(int(n) for ns in named for n in ns.split(", ")) == [31, 38]  # the empty texts' rows of the file
    for sp in (ds.train, ds.validation):  # each row's number is its row of the file, both sides of the carving
        assert sp.lines == () and len(sp.rows) == len(sp) > 0
        assert [rows[n - 1]["text"] for n in sp.rows] == list(sp.texts)
    last = len(ds.validation) - 1  # its place (10) is not its row of the file
    assert ds.validation.where(last) == f"row {ds.validation.rows[last]}" != f"row {last + 1}"


def test_numeric_labels_are_one_class_whatever_the_format(tmp_path):
    """CSV gives every label as text: "0.0" was a class apart from 0, though the error said they are one."""
    assert [labels_of(v, None) for v in (0, 0.0, "0", "0.0", " 0.00 ", "-0.0", 1.5, "1.50", "3", "3.")] == \
        [("0",)] * 6 + [("1.5",)] * 2 + [("3",), ("3.",)]
    assert labels_of("007", None) == ("007",) and labels_of("1e3", None) == ("1e3",)  # codes, not quantities
    assert labels_of("1.0|2.0", "|") == ("1", "2")
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"hi {w} {j},{i}\n" for j in range(3)
                                                               for i, w in enumerate(["card", "pin", "cash"])))
    (tmp_path / "validation.csv").write_text("text,label\n" + "".join(f"{w} today,{float(i)}\n"
                                                                    for i, w in enumerate(["card", "pin", "cash"])))
    ds = load_dataset(DataConfig(dataset_name=str(tmp_path)), seed=0)
    assert ds.label_space.labels == ("0", "1", "2") and ds.validation.labels == (("0",), ("1",), ("2",))
    assert not ds.unseen


def test_a_first_row_without_the_label_is_that_rows_problem_and_text_is_never_suggested_as_label(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"text": "lost my card"}\n{"text": "reset my pin", "label": "pin"}\n'
                 '{"text": "card is gone", "label": "card"}\n')
    assert user_error(parse_file, p, DataConfig(), "train").problem == \
        f"data file '{p}' line 1 has no label in column 'label'"
    p.write_text('{"text": "lost my card"}\n{"text": "reset my pin"}\n')
    err = user_error(parse_file, p, DataConfig(), "train")
    assert err.problem == f"data file '{p}' has no column 'label' (columns: text)"
    assert "label_column=text" not in err.fix and err.fix.startswith("add a 'label' column")
    p.write_text('{"text": "lost my card", "intent": "card"}\n')
    assert user_error(parse_file, p, DataConfig(), "train").fix.endswith("label_column=intent")


def test_csv_header_names_are_stripped_and_a_repeated_one_is_refused(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("text, label\nlost my card, card\nreset pin, pin\n")
    sp = parse_file(p, DataConfig(), "train")
    assert sp.labels == (("card",), ("pin",)) and sp.texts == ("lost my card", "reset pin")
    p.write_text("text,label,label\nlost my card,card,x\nreset pin,pin,x\n")
    err = user_error(read_rows, p)
    assert err.problem == f"data file '{p}' line 1 (the header) names column(s) 'label' more than once"
    p.write_text("text,label,,\nlost my card,card,,\nreset pin,pin,,\n")  # a spreadsheet's empty trailing columns
    assert parse_file(p, DataConfig(), "train").labels == (("card",), ("pin",))


def test_two_csv_exports_joined_are_refused_at_the_repeated_header(tmp_path):
    """`cat a.csv b.csv` of two Excel exports (each a BOM and a header): the second header trained a class named
    'label' with the text '\\ufefftext', unsaid."""
    one, two = "text,label\r\nlost my card,card\r\nreset pin,pin\r\n", "text,label\r\nmy balance,balance\r\n"
    p = tmp_path / "train.csv"
    p.write_bytes(("\ufeff" + one + "\ufeff" + two).encode())
    err = user_error(read_rows, p)
    assert err.problem == (f"data file '{p}' line 4 repeats the header after a byte-order mark (U+FEFF): two files "
                           "joined into one (e.g. with `cat`)? It would be read as a row (the column names as a text "
                           "and its label)")
    assert "tail -n +2 second.csv >> first.csv" in err.fix
    p.write_text(one + "\n" + two.replace("text,label", " text , label"))  # no mark, a blank line, spaces: the same
    assert user_error(read_rows, p).problem.startswith(f"data file '{p}' line 5 repeats the header: two files")
    p.write_text(one + "\ufeffmy balance,balance\n")  # a second file without a header: its mark starts a row
    err = user_error(read_rows, p)
    assert err.problem.startswith(f"data file '{p}' line 4 starts with a byte-order mark (U+FEFF)")
    assert err.fix == "remove the byte-order mark from the start of that line"
    p.write_text(one + '"text",label of text\n')  # a row that only names a column stays a row
    assert read_rows(p)[-1] == {"text": "text", "label": "label of text"}


def test_a_one_column_csv_whose_text_is_its_header_name_is_read(tmp_path):
    """predict --file inputs.csv (one column, 'text') with a row asking about the word 'text' was refused as two files
    joined: a one-column header repeated is a legitimate row. A second file's mark still tells a join."""
    from loratune.commands.predict import read_texts

    p = tmp_path / "inputs.csv"
    p.write_text("text\nwhat does this word mean\ntext\nhow do i send a text\n")
    assert read_texts(str(p)) == ["what does this word mean", "text", "how do i send a text"]
    assert [r["text"] for r in read_rows(p)] == ["what does this word mean", "text", "how do i send a text"]
    p.write_bytes(("\ufefftext\r\nfirst\r\n" + "\ufefftext\r\nsecond\r\n").encode())  # two exports joined
    assert user_error(read_texts, str(p)).problem.startswith(f"data file '{p}' line 3 repeats the header after a "
                                                             "byte-order mark (U+FEFF)")


@pytest.mark.parametrize("encode, said, fix", [
    (lambda b: __import__("gzip").compress(b), "gzip-compressed (starts with bytes 1f 8b)", "gunzip -c"),
    (lambda b: b.decode().encode("utf-16"), "UTF-16 (little-endian BOM)", "iconv -f utf-16 -t utf-8"),
    (lambda b: b"\xfe\xff" + b.decode().encode("utf-16-be"), "UTF-16 (big-endian BOM)", "iconv -f utf-16"),
    (lambda b: b.decode().encode("utf-32"), "UTF-32 (little-endian BOM)", "iconv -f utf-32 -t utf-8"),
])
def test_compressed_and_utf16_32_files_are_named_with_their_own_fix(tmp_path, encode, said, fix):
    p = tmp_path / "train.csv"
    p.write_bytes(encode(b"text,label\nlost my card,card\nreset pin,pin\n"))
    err = user_error(read_rows, p)
    assert err.problem.startswith(f"data file '{p}' is not UTF-8 text: it is {said}") and fix in err.fix
    assert "latin1" not in err.fix


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_bom_is_named_with_the_iconv_fix(tmp_path, suffix, encoding):
    """UTF-16 without a BOM is valid UTF-8 (NULs): the error proposed text_column="t\\u0000e\\u0000x..." (CSV) or
    'not valid JSON' instead of naming the encoding, as a BOM's file gets."""
    p = tmp_path / f"train{suffix}"
    text = ("text,label\nlost my card,card\nreset my pin,pin\n" if suffix == ".csv" else
            '{"text": "lost my card", "label": "card"}\n{"text": "一 reset pin", "label": "pin"}\n')
    p.write_bytes(text.encode(encoding))
    err = user_error(read_rows, p)
    le = encoding.removeprefix("utf-16-")
    assert err.problem == (f"data file '{p}' is not UTF-8 text: it looks like UTF-16{le.upper()} without a BOM "
                           "(NUL bytes, which no text holds, beside its ASCII characters)")
    assert err.fix == f"make it UTF-8 text, e.g. `iconv -f utf-16{le} -t utf-8 '{p}' > fixed{suffix}`"
    p.write_text(text.replace("lost", "一丁"), encoding="utf-8")  # UTF-8 with CJK: read, no NUL in it
    assert len(read_rows(p)) == 2


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("text", [
    "text,label\n" + "".join(f"Я потерял свою карту номер {i},карта\nСбросить мой пин-код {i},пин\n"
                              for i in range(20)),
    "text,label\n" + "Έχασα την κάρτα μου,κάρτα\n" * 20,
    "text,label\n" + "我的银行卡丢了请帮忙,卡\n重置我的密码谢谢,密码\n" * 20,
    "文本,标签\n" + "一个一个一个" * 100 + "丢了一张卡,卡\n",  # U+4E00 (00 4e): more NULs on the other side
    '[{"text": "Я потерял свою карту", "label": "карта"}]',  # one line: the side its NULs are on
    "".join('{"text": "カードをなくしました助けてください", "label": "カード"}\n' for _ in range(20)),
    "text,label\n" + "ฉันทำบัตรหาย,บัตร\nมेरा कार्ड खो गया,कार्ड\n" * 10,  # Thai (0e 01: 01 a control too), Hindi
    '[{"text": "我在网上丢了卡", "label": "卡"}]',  # one line, 上 U+4E0A holding an 0a byte (no newline)
    '[{"text": "Њега је изгубио картицу", "label": "卡"}]',  # Њ U+040A, 0a too
    '[{"text": "我丢了卡", "label": "卡"}]',
    '[{"text": "Ега је изгубио картицу", "label": "卡"}]',
], ids=["ru", "el", "zh", "zh-long-line", "ru-one-line", "ja", "th-hi", "zh-0a-one-line", "sr-0a-one-line",
        "zh-one-line", "sr-one-line"])
def test_utf16_without_a_bom_is_named_whatever_script_its_texts_are_in(tmp_path, text, encoding):
    """The sniff asked half the bytes on one side to be NUL (Latin text): Russian read as 't\\x00e\\x00x\\x00t\\x00'
    columns, Greek and Chinese failed as 'not UTF-8: byte 0x84', the fix `iconv -f cp1252`. Then a one-line head
    holding 上 (U+4E0A) or Њ (U+040A) had its 0a byte read as a UTF-8 newline: named cp1252, or 'not valid JSON'. UTF-16
    is told by decoding it: strictly, into text with its ASCII structure, whatever the script."""
    p = tmp_path / {"[": "train.json", "{": "train.jsonl"}.get(text[0], "train.csv")
    p.write_bytes(text.encode(encoding))
    err = user_error(read_rows, p)
    order = encoding.replace("-", "").removeprefix("utf16")
    assert err.problem == (f"data file '{p}' is not UTF-8 text: it looks like UTF-16{order.upper()} without a BOM "
                           "(NUL bytes, which no text holds, beside its ASCII characters)")
    assert err.fix == f"make it UTF-8 text, e.g. `iconv -f utf-16{order} -t utf-8 '{p}' > fixed{p.suffix}`"
    p.write_text(text, encoding="utf-8")
    assert read_rows(p)


def _nul_after_an_even_newline() -> bytes:
    """JSON Lines with a NUL written after the first newline at an even offset (its unit 0a 00: a UTF-16LE newline)."""
    rows = "".join(json.dumps({"text": f"row {i}", "label": "ab"[i % 2]}) + "\n" for i in range(20)).encode()
    i = next(i for i, b in enumerate(rows) if b == 0x0A and i % 2 == 0)
    return rows[:i + 1] + b"\x00" + rows[i + 1:]


@pytest.mark.parametrize("name, raw, outcome", [
    ("after_newline.jsonl", _nul_after_an_even_newline(), "line 12 is not valid JSON (Expecting value)"),
    ("terminated.txt", b"".join(f"text {i}".encode() + b"\x00\n" for i in range(6)),  # C strings: ...\0\n (00 0a)
     [f"text {i}\x00" for i in range(6)]),
    ("short_terminated.txt", b"ab\x00\n" * 6, ["ab\x00"] * 6),  # every NUL on one side, each newline on the other
    ("one_line.json", json.dumps([{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(10)]).encode()
     .replace(b"row 3", b"row\x00 3"), "is not valid JSON: Invalid control character"),
    ("one_line.txt", b"hello\x00 world", ["hello\x00 world"]),
    ("padded.csv", b"text,label\nfirst,a\nsecond,b\n" + b"\x00" * 400, ["first", "second", "\x00" * 400]),
    # a one-byte encoding's file with a NUL beside its newline or comma: named that encoding, as without the NUL
    ("cp1252.csv", "text,label\ncafé crème,a\nthé,b\n".encode("cp1252").replace(b"\n", b"\n\x00", 1),
     "iconv -f latin1"),
    ("cp1252_one_line.json", '[{"text": "café", "label": "thé"}]'.encode("cp1252").replace(b",", b",\x00"),
     "iconv -f latin1"),
])
def test_text_with_stray_nuls_is_not_called_utf16(tmp_path, name, raw, outcome):
    """A stray NUL after a UTF-8 newline, rows ended '\\0\\n' or a one-line head holding a NUL were named UTF-16 (their
    NUL beside a newline, or on one side): UTF-8 text is UTF-8 unless one byte parity is all control bytes, and
    other bytes UTF-16 only where they decode into text with its ASCII structure. Each is read, or refused, as it was
    before the sniff."""
    from loratune.commands.predict import read_texts
    from loratune.data import utf16_without_bom

    p = tmp_path / name
    p.write_bytes(raw)
    assert utf16_without_bom(raw) is None
    if isinstance(outcome, list):
        assert (read_texts(str(p)) if p.suffix == ".txt" else [r["text"] for r in read_rows(p)]) == outcome
    else:
        err = user_error(read_rows, p)
        assert "UTF-16" not in err.problem and outcome in err.problem + err.fix


@pytest.mark.parametrize("size", [6, 16, 64, 256, 4096, 10000])
def test_random_bytes_are_not_called_utf16(size):
    """Binary decodes as UTF-16 now and then (a short one often): no UTF-16 without a NUL beside its ASCII structure,
    and a surrogate out of its pair or a C0 control is none."""
    import random

    from loratune.data import utf16_without_bom

    rnd = random.Random(size)
    heads = [bytes(rnd.randrange(256) for _ in range(size)) for _ in range(200)]
    assert [h for h in heads if utf16_without_bom(h) is not None] == []


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_whose_sniffed_head_ends_inside_a_surrogate_pair_is_named(tmp_path, encoding):
    """The sniff reads the first UTF16_SNIFF_BYTES: a pair (😀) cut there, its high surrogate the head's last unit,
    is no decoding error."""
    from loratune.data import UTF16_SNIFF_BYTES

    start = '{"text": "'
    text = start + "x" * (UTF16_SNIFF_BYTES // 2 - 1 - len(start)) + "😀" * 3 + '", "label": "a"}\n'
    raw = (text * 2).encode(encoding)
    assert raw[UTF16_SNIFF_BYTES - 2:UTF16_SNIFF_BYTES + 2] == "😀".encode(encoding)  # the head's end cuts the pair
    p = tmp_path / "train.jsonl"
    p.write_bytes(raw)
    order = encoding.replace("-", "").removeprefix("utf16")
    assert user_error(read_rows, p).problem.endswith(f"it looks like UTF-16{order.upper()} without a BOM (NUL bytes, "
                                                     "which no text holds, beside its ASCII characters)")


def test_utf8_with_a_stray_nul_is_not_called_utf16(tmp_path):
    """NULs in a UTF-8 file whose newlines are UTF-8's (a stray NUL), or NUL padding (a NUL code unit in either byte
    order), are no UTF-16: the file is read as UTF-8, as before."""
    p = tmp_path / "train.csv"
    p.write_bytes(b"text,label\nlost my\x00 card,card\nreset pin,pin\n")
    assert read_rows(p)[0] == {"text": "lost my\x00 card", "label": "card"}
    p.write_bytes(b"text,label\nlost my card,card\nreset pin,pin" + b"\x00" * 8)
    assert len(read_rows(p)) == 2


@pytest.mark.parametrize("names, split", [(("train.tsv",), "train"), (("train.jsonl.gz",), "train"),
                                          (("train.jsonl", "validation.jsonl.gz"), "validation")])
def test_a_split_file_in_a_form_not_read_is_named_never_passed_over(tmp_path, names, split):
    for name in names:
        if name == "train.jsonl":
            write_rows(tmp_path / name, make_rows(TRAIN))
        else:
            (tmp_path / name).write_bytes(b"text\tlabel\nx\ta\n")
    err = user_error(load_dataset, DataConfig(dataset_name=str(tmp_path)))
    assert err.problem.startswith(f"data folder '{tmp_path}' holds {names[-1]} for the {split} split, a form the "
                                  "loader does not read")
    assert ("to carve validation from train" in err.fix) == (split == "validation")


def test_a_split_file_is_found_in_a_folder_whatever_the_case_of_its_name(tmp_path):
    """train.JSONL / VALIDATION.CSV (Windows exports) were refused as 'a form the loader does not read' (and TRAIN.csv
    passed over), while data.train_file read the same file: one rule, the suffix case aside."""
    write_rows(tmp_path / "t.jsonl", make_rows(TRAIN)).rename(tmp_path / "train.JSONL")
    write_rows(tmp_path / "v.csv", make_rows({"a": 2, "b": 2}, tag="v ")).rename(tmp_path / "VALIDATION.CSV")
    ds = load_dataset(DataConfig(dataset_name=str(tmp_path)))
    assert len(ds.train) == 12 and ds.train.source == str(tmp_path / "train.JSONL")
    assert ds.validation.source == str(tmp_path / "VALIDATION.CSV") and len(ds.validation) == 4 and not ds.notes
    write_rows(tmp_path / "Train.csv", make_rows(TRAIN))  # two files of one split, whatever their case: refused
    assert user_error(load_dataset, DataConfig(dataset_name=str(tmp_path))).problem == \
        f"data folder '{tmp_path}' holds 2 files for the train split: train.JSONL, Train.csv"


@pytest.mark.parametrize("split,name", [("validation", "validation.jsonl"), ("test", "test.jsonl"),
                                        ("train", "train.jsonl")])
@pytest.mark.parametrize("kind", ["broken symlink", "fifo", "folder"])
def test_a_split_name_on_what_is_no_regular_file_is_named_never_passed_over(tmp_path, split, name, kind):
    """A dangling symlink or FIFO validation.jsonl was passed over (p.is_file()): the run carved validation from train
    and recorded "no validation split given"; a train.jsonl FIFO read as "folder has no train file"."""
    import os

    data = tmp_path / "data"
    data.mkdir()
    for other in ("train", "validation", "test"):
        if other != split:
            write_rows(data / f"{other}.jsonl", make_rows(TRAIN if other == "train" else {"a": 2, "b": 2}))
    odd = data / name
    if kind == "broken symlink":
        odd.symlink_to(tmp_path / "moved.jsonl")
        said = f"a broken symlink (to '{tmp_path / 'moved.jsonl'}', which does not exist)"
    elif kind == "fifo":
        os.mkfifo(odd)
        said = "a FIFO, not a regular file"
    else:
        odd.mkdir()
        said = "a folder, not a file"
    err = user_error(load_dataset, DataConfig(dataset_name=str(data)))
    assert err.problem == f"data folder '{data}' holds {name}, {said}: the {split} split cannot be read from it"
    assert f"name the file to read with data.{split}_file" in err.fix
    assert err.fix.endswith(" to carve validation from train") == (split == "validation")
    # named by its own key, the folder's entry is not read
    write_rows(tmp_path / "own.jsonl", make_rows(TRAIN if split == "train" else {"a": 2, "b": 2}))
    ds = load_dataset(DataConfig(dataset_name=str(data), **{f"{split}_file": str(tmp_path / "own.jsonl")}))
    assert getattr(ds, split).source == str(tmp_path / "own.jsonl")


def test_a_semicolon_separated_csv_is_named_not_taken_for_one_column(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("text;label\nlost my card;card\nreset pin;pin\n")
    err = user_error(read_rows, p)
    assert err.problem == (f"data file '{p}' line 1 (the header) is one column 'text;label': its fields are "
                           "separated by ';', and a .csv is read comma-separated")


def test_bytes_in_cp1252s_printable_range_get_the_cp1252_fix_others_latin1(tmp_path):
    # Windows' curly quotes (0x93/0x94): `iconv -f latin1` turned them into invisible C1 controls U+0093/U+0094
    p = tmp_path / "train.csv"
    p.write_bytes("text,label\n\u201chi\u201d,a\n".encode("cp1252"))
    err = user_error(load_dataset, DataConfig(train_file=str(p)))
    assert err.fix == f"re-encode the file as UTF-8, e.g. `iconv -f cp1252 -t utf-8 '{p}' > fixed.csv`"
    assert "iconv -f latin1 " in user_error(read_rows, write_bytes(tmp_path / "l.csv", "text,label\ncaf\u00e9,a\n")).fix


def write_bytes(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("latin-1"))
    return path


def test_a_column_name_with_a_trailing_space_is_shown_quoted_in_the_list_and_the_fix(tmp_path):
    p = write_rows(tmp_path / "train.jsonl", [{"text ": f"t {i}", "Label": "ab"[i % 2]} for i in range(4)])
    err = user_error(load_dataset, DataConfig(train_file=str(p)))
    assert err.problem == f"data file '{p}' has no column 'text' (columns: 'text ', Label)"
    assert err.fix == 'set data.text_column to one of the columns, e.g. text_column="text "'
    from loratune.config import parse_value

    assert parse_value(err.fix.split("text_column=")[1]) == "text "  # following the fix works


@pytest.mark.parametrize("text", ["\u200b\u200b", "\u0000", "\u0007\u001b", " \u00a0\ufeff"])
def test_a_text_of_invisible_characters_only_is_empty(tmp_path, text):
    rows = make_rows(TRAIN)
    rows[1]["text"] = text
    p = write_rows(tmp_path / "train.jsonl", rows)
    ds = load_dataset(DataConfig(train_file=str(p), validation_file=str(p)))
    problems = empty_text_problems(ds)
    assert problems[0] == f"train: 1 empty text(s) in '{p}' (line 2): drop them or fill them in"


def test_labels_differing_in_unicode_form_are_one_and_an_invisible_character_in_a_label_is_refused(tmp_path):
    rows = make_rows({"caf\u00e9": 3, "cafe\u0301": 3, "pin": 4})
    p = write_rows(tmp_path / "train.jsonl", rows)
    ds = load_dataset(DataConfig(train_file=str(p), validation_file=str(p)))
    assert ds.label_space.labels == ("caf\u00e9", "pin")
    assert ds.train.label_counts()["caf\u00e9"] == 6
    rows[4]["label"] = "bal\u200bance"
    write_rows(p, rows)
    err = user_error(load_dataset, DataConfig(train_file=str(p)))
    assert err.problem == (f"data file '{p}' line 5 has a label with the invisible character U+200B "
                           "('bal\\\\u200bance')")


def test_decimal_labels_written_two_ways_are_merged_with_a_note(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("text,label\n" + "".join(f"t{i},{lab}\n" for i, lab in enumerate(["4.1", "4.10", "4.2", "4.20"] * 3)))
    ds = load_dataset(DataConfig(train_file=str(p), validation_file=str(p)))
    assert ds.label_space.labels == ("4.1", "4.2")
    assert ds.notes == ("labels written in more than one way are one label each (2): '4.1' / '4.10' -> '4.1'; "
                        "'4.2' / '4.20' -> '4.2' (numbers by their value, text by its NFC form); give them distinct "
                        "names if they are distinct classes",)
    q = write_rows(tmp_path / "one.csv", make_rows(TRAIN))
    assert load_dataset(DataConfig(train_file=str(q), validation_file=str(q))).notes == ()


# ---------------------------------------------------------------------------------------------
# multi-label splits: an empty target, a carved label, a joined label string


def _multi_rows(n: int = 10, seed: int = 1) -> list[dict]:
    from tests.support import make_rows as intent_rows

    return [{"text": r["text"], "labels": [r["label"]]} for r in intent_rows(n, seed)]


def test_a_validation_or_test_split_with_no_label_at_all_is_refused(tmp_path):
    """Every validation row `"labels": []`: accepted, the best checkpoint picked by exact match on an empty target
    (the model that predicts nothing won) and thresholds tuned on it."""
    train = write_rows(tmp_path / "train.jsonl", _multi_rows())
    empty = write_rows(tmp_path / "empty.jsonl", [{**r, "labels": []} for r in _multi_rows(2, seed=5)])
    cfg = dict(train_file=str(train), label_column="labels", multi_label=True)
    with pytest.raises(UserError, match=r"the validation split has no label on any row \(8 rows in ") as e:
        load_dataset(DataConfig(**cfg, validation_file=str(empty)), seed=0)
    assert "data.none_label" in e.value.fix and "carve validation" in e.value.fix
    with pytest.raises(UserError, match=r"the test split has no label on any row"):
        load_dataset(DataConfig(**cfg, test_file=str(empty)), seed=0)
    # one labelled row is a target; the empty rows are scored as rows with no label
    some = write_rows(tmp_path / "some.jsonl", [{**r, "labels": []} for r in _multi_rows(2, seed=5)][:-1]
                      + _multi_rows(1, seed=6)[:1])
    assert len(load_dataset(DataConfig(**cfg, validation_file=str(some)), seed=0).validation) == 8


def test_the_carved_validation_split_never_takes_a_label_out_of_train(tmp_path):
    """'zeta' rides beside another label in two rows; carving stratified by the first label took both and train
    never saw zeta (validation: 'label(s) not in train (zeta)')."""
    rows = _multi_rows()
    for i in (3, 7):
        rows[i]["labels"] = rows[i]["labels"] + ["zeta"]
    train = write_rows(tmp_path / "train.jsonl", rows)
    for seed in range(60):  # seed 51 carved both zeta rows
        ds = load_dataset(DataConfig(train_file=str(train), label_column="labels"), seed=seed)
        assert "zeta" in ds.label_space.labels and not ds.unseen, seed
        assert len(ds.validation) == 4 and len(ds.train) == 36  # the strata keep their sizes
        sub = stratified_subset(ds.train, 5, seed)
        assert len(sub) == 5 and {lab for i in sub for lab in ds.train.labels[i]} == set(ds.label_space.labels)


def test_carving_never_shrinks_validation_to_keep_a_label_in_train(tmp_path):
    """Every 'a' row carries a label of its own (x0..x3): _cover swapped each carved row back into train with no
    spare row to take its place, so validation came out with 0 rows and training was refused with "no class has two
    training rows" (a and b have 4 each). The carved row stays in validation; its own label is noted as not in train."""
    from dataclasses import replace

    from loratune.data import check_trainable

    rows = ([{"text": f"alpha thing {i}", "labels": ["a", f"x{i}"]} for i in range(4)]
            + [{"text": f"beta thing {i}", "labels": ["b", f"y{i}"]} for i in range(4)])
    path = write_rows(tmp_path / "ml3.jsonl", rows)
    cfg = DataConfig(train_file=str(path), label_column="labels")
    for seed in range(10):
        ds = load_dataset(cfg, seed=seed)
        assert len(ds.validation) == 2 and len(ds.train) == 6, seed
        assert sorted(labs[0] for labs in ds.validation.labels) == ["a", "b"]
        assert any("carved a stratified 25% (2 of 8 rows)" in n for n in ds.notes)
        assert set(ds.unseen["validation"]) == {lab for labs in ds.validation.labels for lab in labs[1:]}
        check_trainable(ds)
    # milder: the 'a' stratum keeps its carved row (no row of 'b' was ever a spare for it)
    rows = ([{"text": f"alpha {i}", "labels": ["a", f"x{i}"]} for i in range(6)]
            + [{"text": f"beta {i}", "labels": ["b"]} for i in range(6)])
    ds = load_dataset(DataConfig(train_file=str(write_rows(tmp_path / "m.jsonl", rows)), label_column="labels"),
                      seed=42)
    assert sorted(labs[0] for labs in ds.validation.labels) == ["a", "b"] and len(ds.train) == 10
    # the message claims "no class has two training rows" only where it is so
    # (b on both rows, the first label of one: the strata are a and b, a row each; the same labels on both rows
    # would be one label set, refused by load_dataset)
    two = write_rows(tmp_path / "two.jsonl", [{"text": "one", "labels": ["a", "b"]},
                                              {"text": "two", "labels": ["b", "c"]}])
    ds = load_dataset(DataConfig(train_file=str(two), label_column="labels"), seed=0)
    with pytest.raises(UserError, match="no class can give one to carve .*at least 2 rows.*counts under its first "
                                        "label\\): 'a', 'b': one row"):
        check_trainable(ds)
    ds = load_dataset(cfg, seed=0)
    with pytest.raises(UserError) as e:
        check_trainable(replace(ds, validation=ds.validation.subset([])))
    assert "validation: 0 rows: no validation file was given and none was carved from train" in e.value.problem


def test_a_label_string_joining_other_labels_in_list_labelled_data_is_refused(tmp_path):
    """'card_lost,balance' in list-labelled data became a fifth class of its own, nothing said."""
    rows = _multi_rows(3)
    first, second = rows[0]["labels"][0], next(r["labels"][0] for r in rows if r["labels"][0] != rows[0]["labels"][0])
    rows[4]["labels"] = f"{first},{second}"
    train = write_rows(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError, match=r"line 5 has a label that joins other rows' labels with ','") as e:
        load_dataset(DataConfig(train_file=str(train), label_column="labels", multi_label=True), seed=0)
    assert f'["{first}", "{second}"]' in e.value.fix and "label_delimiter" not in e.value.fix
    # string-labelled multi_label data: the fix offers the delimiter too; with it set the row splits
    strs = [{"text": r["text"], "labels": r["labels"][0]} for r in _multi_rows(3)]
    strs.append({"text": "x", "labels": "pin;balance"})
    path = write_rows(tmp_path / "s.jsonl", strs)
    with pytest.raises(UserError, match="joins other rows' labels with ';'") as e:
        load_dataset(DataConfig(train_file=str(path), label_column="labels", multi_label=True), seed=0)
    assert "data.label_delimiter=';'" in e.value.fix
    ds = load_dataset(DataConfig(train_file=str(path), label_column="labels", label_delimiter=";"), seed=0)
    assert ds.label_space.labels == ("balance", "card_lost", "pin", "transfer")
    # the fix names the way to keep a label that contains the comma: a list of one, which is accepted
    rows = [r for i in range(6) for r in ({"text": f"sure {i}", "labels": "yes"}, {"text": f"kindly {i}",
                                           "labels": "please"}, {"text": f"yes please {i}", "labels": "yes, please"})]
    joined = write_rows(tmp_path / "joined.jsonl", rows)
    with pytest.raises(UserError, match="joins other rows' labels with ','") as e:
        load_dataset(DataConfig(train_file=str(joined), label_column="labels", multi_label=True), seed=0)
    assert "contains ','" in e.value.fix and '["yes, please"]' in e.value.fix
    joined.write_text(joined.read_text().replace('"yes, please"', '["yes, please"]'))
    assert load_dataset(DataConfig(train_file=str(joined), label_column="labels", multi_label=True),
                        seed=0).label_space.labels == ("please", "yes", "yes, please")
    # a comma inside a label of its own (no part a label) stays one label
    path.write_text(path.read_text().replace("pin;balance", "pin, or else"))
    assert "pin, or else" in load_dataset(DataConfig(train_file=str(path), label_column="labels",
                                                     multi_label=True), seed=0).label_space.labels


def test_the_validated_on_digest_reads_a_rows_labels_as_a_set(tmp_path):
    """The same rows with a multi-label row's labels in another order were 'a different validation split'."""
    from loratune.data import Split, validated_on

    a = Split("validation", ("reset pin", "send money"), (("pin", "card"), ("transfer",)), "v.jsonl")
    b = Split("validation", ("reset pin", "send money"), (("card", "pin"), ("transfer",)), "v.jsonl")
    c = Split("validation", ("reset pin", "send money"), (("card",), ("transfer",)), "v.jsonl")
    assert validated_on(a) == validated_on(b) != validated_on(c)


def test_the_trained_on_digest_is_of_the_training_rows_as_a_set_a_carving_aside(tmp_path):
    """tune --resume compares it (search/tune.py): the same train file shuffled, or another carving of it, is the same
    training data; a row more or a label changed is not."""
    from loratune.data import record_differs, trained_on

    rows = make_rows(TRAIN)
    write_rows(tmp_path / "train.jsonl", rows)
    carved = load_dataset(DataConfig(dataset_name=str(tmp_path)))
    assert carved.validation.source.endswith(" (carved)")
    first = trained_on(carved)
    assert first["rows"] == len(carved.train)
    write_rows(tmp_path / "train.jsonl", rows[::-1])  # the same rows, another carving
    again = load_dataset(DataConfig(dataset_name=str(tmp_path)))
    assert again.validation.texts != carved.validation.texts and trained_on(again) == first
    assert record_differs(first, trained_on(again)) is None
    write_rows(tmp_path / "train.jsonl", rows + rows[:2])  # two rows more
    grown = trained_on(load_dataset(DataConfig(dataset_name=str(tmp_path))))
    assert record_differs(first, grown) == f"({first['rows']} rows then, {grown['rows']} now, other rows or labels)"
    write_rows(tmp_path / "validation.jsonl", rows[:2])  # a validation file: train alone is the training data
    given = load_dataset(DataConfig(dataset_name=str(tmp_path)))
    assert trained_on(given)["rows"] == len(rows) + 2 != grown["rows"]


def test_a_max_samples_cap_above_the_split_drew_nothing_with_the_seed(tmp_path):
    """seed_drew named 'the max_eval_samples subset' for a cap of 1000 over a 20-row validation file, so an api verb
    refused a dataset read with another seed though no row was drawn."""
    from loratune.data import seed_drew

    d = tmp_path / "d"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_rows({"a": 12, "b": 12, "c": 12})))
    (d / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_rows({"a": 5, "b": 5, "c": 5},
                                                                                         tag="v ")))
    cfg = DataConfig(dataset_name=str(d), max_eval_samples=1000, max_train_samples=100000)
    assert seed_drew(load_dataset(cfg), cfg) is None
    cfg = DataConfig(dataset_name=str(d), max_eval_samples=8)
    assert seed_drew(load_dataset(cfg), cfg) == "the max_eval_samples subset"


def test_a_joined_label_in_a_csv_is_told_the_delimiter_not_a_list(tmp_path):
    """A CSV cell of plain labels is never read as a list: the list-of-one advice made a class named
    '["yes, please"]'."""
    d = tmp_path / "jc"
    d.mkdir()
    (d / "train.csv").write_text('text,label\na,yes\nb,please\nc,yes\nd,please\ne,"yes, please"\nf,yes\n')
    with pytest.raises(UserError) as e:
        load_dataset(DataConfig(dataset_name=str(d), multi_label=True))
    assert "label_delimiter" in e.value.fix and "list" not in e.value.fix
    kept = load_dataset(DataConfig(dataset_name=str(d), multi_label=True, label_delimiter=";"))
    assert "yes, please" in kept.label_space.labels


# ---------------------------------------------------------------------------------------------
# hub datasets (datasets.load_dataset stubbed: no network; the path is loratune's own _load_hub)


@pytest.fixture
def hub(monkeypatch):
    """Serve a DatasetDict as the hub dataset 'someone/data': hub(dd) -> DataConfig reading it."""
    datasets = pytest.importorskip("datasets")

    def serve(dd, **data) -> DataConfig:
        monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: dd)
        return DataConfig(dataset_name="someone/data", **data)
    return serve


def sst2_like(test_labels: list) -> "object":
    """SST-2's shape: `label` a ClassLabel(negative, positive); the test split's labels as given (the hub's: -1)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    feat = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})

    def rows(n, tag):
        return {"sentence": [f"{tag} {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    return DatasetDict({
        "train": Dataset.from_dict(rows(20, "train"), features=feat),
        "validation": Dataset.from_dict(rows(6, "val"), features=feat),
        "test": Dataset.from_dict({"sentence": [f"test {i}" for i in range(len(test_labels))], "label": test_labels},
                                  features=feat)})


def _printed_filter(fix: str):
    """The `ds.filter(lambda ...)` a fix prints, as a function of a datasets.Dataset."""
    src = fix[fix.index("ds.filter(") + len("ds.filter("):fix.index(").to_json")]
    return lambda ds: ds.filter(eval(src))


def test_a_hub_split_without_labels_is_not_read_as_the_last_class(hub):
    """SST-2's test split is all -1 (no label): names[-1] read every row as 'positive', unsaid, and evaluate --split
    test scored the model against those invented labels."""
    ds = load_dataset(hub(sst2_like([-1] * 4), text_column="sentence"))
    assert ds.label_space.labels == ("negative", "positive")
    assert ds.test is None and len(ds.validation) == 6 and ds.validation.labels[:2] == (("negative",), ("positive",))
    assert ds.notes == ("someone/data[test] has no labels (every row's 'label' is -1 or null, a ClassLabel's "
                        "unlabelled row): not read, there is no test split to score (set data.test_file to a "
                        "labelled one)",)
    # a split with some unlabelled rows (-1 or null) is refused by its rows: neither a class nor an error to score
    err = user_error(load_dataset, hub(sst2_like([0, -1, 1, None]), text_column="sentence"))
    assert err.problem == ("someone/data[test] rows 2, 4 of 4 have no label ('label' is -1 or null, a ClassLabel's "
                           "unlabelled row): a split with unlabelled rows cannot be scored")
    assert "data.test_file" in err.fix
    assert _printed_filter(err.fix)(sst2_like([0, -1, 1, None])["test"])["label"] == [0, 1]
    # an unlabelled validation split: validation is carved from train, and both are said
    dd = sst2_like([1, 0])
    dd["validation"] = dd["test"].map(lambda r: {"label": -1})
    ds = load_dataset(hub(dd, text_column="sentence"))
    assert ds.notes[0].startswith("someone/data[validation] has no labels") and "validation is carved" in ds.notes[0]
    assert ds.notes[1].startswith("no validation split given: carved") and len(ds.validation) == 2
    # labelled test rows are read by their names
    assert load_dataset(hub(sst2_like([1, 0]), text_column="sentence")).test.labels == (("positive",), ("negative",))


def test_hub_multi_label_class_ids_are_read_by_their_names(hub):
    """go_emotions' shape, `labels` a List(ClassLabel): its ids were kept as labels '0', '1', '2' (a bare ClassLabel's
    were named), so the label map, predict, the report and assess showed numbers."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    try:
        from datasets import List as ListOf
    except ImportError:  # datasets < 4: Sequence
        from datasets import Sequence as ListOf

    feat = Features({"text": Value("string"), "labels": ListOf(ClassLabel(names=["admiration", "anger", "joy"]))})
    train = {"text": [f"t{i}" for i in range(12)], "labels": [[i % 3] if i % 4 else [0, 2] for i in range(12)]}
    val = {"text": ["v0", "v1"], "labels": [[2], [1, 0]]}
    dd = DatasetDict({"train": Dataset.from_dict(train, features=feat),
                      "validation": Dataset.from_dict(val, features=feat)})
    ds = load_dataset(hub(dd, label_column="labels"))
    assert ds.label_space.labels == ("admiration", "anger", "joy") and ds.label_space.multi_label
    assert ds.train.labels[:2] == (("admiration", "joy"), ("anger",))
    assert ds.validation.labels == (("joy",), ("anger", "admiration"))
    # an unlabelled id in a list (the hub's -1): a row of [-1] has no label, one of [0, -1] a label and an unlabelled
    # id; both were said to have no label, and the printed filter (`r['labels'] not in (-1, None)`, a list never is)
    # kept every row
    dd["test"] = Dataset.from_dict({"text": ["x0", "x1", "x2", "x3"], "labels": [[0, -1], [1], [-1], []]},
                                   features=feat)
    err = user_error(load_dataset, hub(dd, label_column="labels"))
    assert err.problem == ("someone/data[test] rows 1, 3 of 4 hold an unlabelled id ('labels' holds -1 or null, a "
                           "ClassLabel's id for no label): a split with unlabelled ids cannot be scored")
    assert _printed_filter(err.fix)(dd["test"])["labels"] == [[1], []]
    dd["test"] = Dataset.from_dict({"text": ["x0", "x1"], "labels": [[-1], [-1, -1]]}, features=feat)
    ds = load_dataset(hub(dd, label_column="labels"))
    assert ds.test is None and ds.notes[0].startswith("someone/data[test] has no labels (every row's 'labels' holds "
                                                      "-1 or null")


def test_a_csv_of_list_cells_is_read_as_label_lists_and_a_mixed_one_refused(tmp_path):
    """pandas' to_csv of a list column writes "['card_lost', 'balance']": each list was read as text, a class of its
    own ("['pin']", answered with its brackets), single-label, nothing said."""
    rows = [{"text": r["text"], "labels": r["labels"] + (["balance"] if i % 3 == 0 and r["labels"] != ["balance"]
                                                          else [])} for i, r in enumerate(_multi_rows(6))]
    path = write_rows(tmp_path / "train.csv", rows)  # csv.DictWriter writes a list as its str(), as pandas does
    assert "\"['card_lost', 'balance']\"" in path.read_text()
    ds = load_dataset(DataConfig(train_file=str(path), label_column="labels"), seed=0)
    assert ds.label_space.labels == ("balance", "card_lost", "pin", "transfer") and ds.label_space.multi_label
    assert sorted(ds.train.labels + ds.validation.labels) == sorted(tuple(r["labels"]) for r in rows)
    assert [n for n in ds.notes if "list literals" in n] == [
        "train: label cells written as list literals (e.g. \"['card_lost', 'balance']\", as pandas' to_csv writes a "
        f"list; a numpy array's, without the commas, too) are read as lists of labels (24 of 24 rows of '{path}')"]
    # JSON's spelling too, an empty list is a row with no label; a bracketed label that is no literal stays text
    assert parse_rows([{"text": "a", "label": '["pin", "balance"]'}, {"text": "b", "label": "[]"}],
                      DataConfig(multi_label=True), "f.csv", "train").labels == (("pin", "balance"), ())
    assert parse_rows([{"text": "a", "label": "[unk]"}, {"text": "b", "label": "pin"}], DataConfig(), "f.csv",
                      "train").labels == (("[unk]",), ("pin",))
    # a file writing some cells as lists and others as plain labels: which is meant is a guess, refused
    rows[4]["labels"] = rows[4]["labels"][0]
    mixed = write_rows(tmp_path / "mixed.csv", rows)
    with pytest.raises(UserError, match=r"writes some label cells of column 'labels' as lists \(lines 2, 3, 4, 5, 7, "
                                        r"e\.g\. \"\['card_lost', 'balance'\]\"\) and others as plain labels "
                                        r"\(line 6, e\.g\. 'balance'\)") as e:
        load_dataset(DataConfig(train_file=str(mixed), label_column="labels"), seed=0)
    assert "each cell a list (e.g. ['balance'])" in e.value.fix and "JSON Lines or Parquet" in e.value.fix


def test_numpy_array_cells_are_read_as_label_lists_and_literals_side_by_side_never_joined(tmp_path):
    """pandas' to_csv of the arrays read_parquet gives a list column writes numpy's str, "['card_lost' 'balance']"
    (no commas, wrapped onto a new line past 75 characters): ast.literal_eval joined the strings side by side into
    one label, 'card_lostbalance', a class of its own beside card_lost and balance."""
    import numpy as np

    rows = [{"text": r["text"], "labels": r["labels"] + (["balance"] if i % 3 == 0 and r["labels"] != ["balance"]
                                                          else [])} for i, r in enumerate(_multi_rows(6))]
    cells = [{**r, "labels": str(np.array(r["labels"], dtype=object))} for r in rows]
    path = write_rows(tmp_path / "train.csv", cells)
    assert "['card_lost' 'balance']" in path.read_text()
    ds = load_dataset(DataConfig(train_file=str(path), label_column="labels"), seed=0)
    assert ds.label_space.labels == ("balance", "card_lost", "pin", "transfer") and ds.label_space.multi_label
    assert sorted(ds.train.labels + ds.validation.labels) == sorted(tuple(r["labels"]) for r in rows)
    assert [n.split(" (24 of")[0] for n in ds.notes if "list literals" in n] == [
        "train: label cells written as list literals (e.g. \"['card_lost', 'balance']\", as pandas' to_csv writes a "
        "list; a numpy array's, without the commas, too) are read as lists of labels"]
    # a long array wraps onto a second line (a CSV cell spanning lines); an array of ids, padded to one width
    long = ["card_lost_abroad_while_travelling", "balance_of_the_savings_account", "pin_blocked_after_retries"]
    wrapped = write_rows(tmp_path / "wrapped.csv", [{"text": "a", "labels": str(np.array(long, dtype=object))},
                                                    {"text": "b", "labels": str(np.array(long[:1], dtype=object))}])
    assert "\n 'pin_blocked_after_retries']" in wrapped.read_text()
    assert parse_file(wrapped, DataConfig(label_column="labels"), "train").labels == (tuple(long), (long[0],))
    assert parse_rows([{"text": "a", "label": str(np.array([2, 27]))}, {"text": "b", "label": str(np.array([-1, 10]))}],
                      DataConfig(), "f.csv", "train").labels == (("2", "27"), ("-1", "10"))
    # quoted labels side by side that neither writer makes (beside commas, or touching): one label or two is a
    # guess, refused; never joined
    for cell in ("['pin' 'balance', 'transfer']", "['pin''balance']"):
        bad = write_rows(tmp_path / "bad.csv", [*cells[:4], {"text": "z", "labels": cell}])
        with pytest.raises(UserError, match=r"bad\.csv' line 6 has a label cell of column 'labels' with quoted "
                                            r"labels side by side that is neither a list's repr \(a comma between "
                                            r"every two labels\) nor a numpy array's \(a space between every two\) "
                                            rf"\(e\.g\. {re.escape(repr(cell))}\)") as e:
            load_dataset(DataConfig(train_file=str(bad), label_column="labels"), seed=0)
        assert "a comma between every two (e.g. ['card_lost', 'balance'])" in e.value.fix
        assert "JSON Lines or Parquet with real lists" in e.value.fix


def test_a_max_train_samples_subset_of_one_class_names_the_subset(tmp_path):
    """max_train_samples=1 on a file of 3 classes said the file had a single class and pointed at data.label_column;
    the subset has it, and the fix is max_train_samples."""
    p = write_rows(tmp_path / "train.jsonl", make_rows(TRAIN))
    err = user_error(load_dataset, DataConfig(train_file=str(p), validation_file=str(p), max_train_samples=1))
    assert err.problem.startswith("the training subset of 1 row(s) that data.max_train_samples=1 keeps of the 12 "
                                  f"training rows of '{p}' (3 labels) has a single class")
    assert "raise data.max_train_samples" in err.fix and "data.label_column" not in err.fix


def test_a_max_train_samples_subset_says_the_training_rows_when_validation_is_carved(tmp_path):
    """With validation carved from a 32-row file the message said '(28 rows, 4 labels)' of the file: 28 are its
    training rows, the other 4 were carved."""
    p = write_rows(tmp_path / "train.jsonl", make_rows({"a": 8, "b": 8, "c": 8, "d": 8}))
    err = user_error(load_dataset, DataConfig(train_file=str(p), validation_fraction=0.125, max_train_samples=1))
    assert err.problem.startswith("the training subset of 1 row(s) that data.max_train_samples=1 keeps of the 28 "
                                  f"training rows of '{p}' (4 labels; its other 4 rows carved for validation) has a "
                                  "single class")
