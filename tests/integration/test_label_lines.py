"""A label with a line break, a comma or Markdown in it is one line, and reads back, wherever a table row or a
one-line list names it (show, evaluate: listing.label_text, predict's rule) and in the model card's label list (a code
span each). Hunt 15: show's per-class table printed 7 rows for 4 classes, evaluate's "most confused" ran over 4 lines,
the card listed "bal\\nance, ---\\nlicense: mit\\n---, x, y: `z`, *emph* | pipe | \\" as raw Markdown."""

from __future__ import annotations

import itertools
import json

import pytest

from loratune.cli import main

from support import INTENTS, make_rows, overrides, write_jsonl

LABELS = dict(zip(INTENTS, ["bal\nance", "---\nlicense: mit\n---", "x, y: `z`", "*emph* | pipe | \\"]))
SHOWN = ['"bal\\nance"', '"---\\nlicense: mit\\n---"', '"x, y: `z`"', "*emph* | pipe | \\"]


def _labelled_run(tiny_bert, tmp_path_factory, labels: dict, name: str):
    """A tiny run on make_rows' data with its intents renamed by `labels`."""
    d = tmp_path_factory.mktemp(f"{name}-data")
    for split, n, seed in (("train", 8, 1), ("validation", 4, 2), ("test", 4, 3)):
        write_jsonl(d / f"{split}.jsonl", [{"text": r["text"], "label": labels[r["label"]]} for r in make_rows(n, seed)])
    run = tmp_path_factory.mktemp(name) / "run"
    assert main(["train", "-q", *overrides(tiny_bert, d, run, max_steps=8)]) == 0
    return run


def _show_lines(run, capsys, monkeypatch) -> tuple[list[str], list[str]]:
    """show's output lines, and those of its per-class table."""
    monkeypatch.setenv("COLUMNS", "400")
    capsys.readouterr()
    assert main(["show", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("class "))
    return lines, lines[start + 1:next(i for i, line in enumerate(lines) if " classes · recall min " in line)]


@pytest.fixture(scope="module")
def md_run(tiny_bert, tmp_path_factory):
    return _labelled_run(tiny_bert, tmp_path_factory, LABELS, "md")


def test_show_gives_each_class_one_row_of_its_quoted_label(md_run, capsys, monkeypatch):
    lines, rows = _show_lines(md_run, capsys, monkeypatch)
    assert len(rows) == 4  # one row a class (the code before: 7)
    assert sorted(next(s for s in SHOWN if row.startswith(s + " ")) for row in rows) == sorted(SHOWN)
    pairs = lines[next(i for i, line in enumerate(lines) if line.startswith("top confused pairs")) + 1:]
    for line in pairs[:next(i for i, line in enumerate(pairs) if line.startswith("parameters"))]:
        if "→" in line:  # every pair one line: its two labels, each one of the four as shown
            assert sum(line.count(s) for s in SHOWN) >= 2, line


def test_evaluate_lists_the_confused_pairs_on_one_line(md_run, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # off a terminal: whole on its line, as predict's (rich: 80 columns)
    capsys.readouterr()
    assert main(["evaluate", str(md_run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    confused = [line for line in out.splitlines() if line.startswith("most confused: ")]
    assert len(confused) == 1 and out.splitlines()[-1] == confused[0]  # nothing of it on the lines after
    pairs = confused[0][len("most confused: "):].split("; ")
    assert len(pairs) >= 2
    for pair in pairs:
        true, pred = pair.rsplit(" (", 1)[0].split(" -> ")
        assert true in SHOWN and pred in SHOWN, pair


def test_the_model_card_lists_the_labels_so_they_read_back(md_run):
    from markdown_it import MarkdownIt

    card = (md_run / "adapter" / "README.md").read_text(encoding="utf-8")
    para = next(t for t in MarkdownIt("commonmark").parse(card) if t.type == "inline" and " labels: " in t.content)
    tokens = para.children
    start = next(i for i, t in enumerate(tokens) if t.type == "text" and t.content.endswith(" labels: "))
    spans = [t.content for t in tokens[start:] if t.type == "code_inline"]
    read = [json.loads(s) if s.startswith('"') else s for s in spans]
    assert read == json.load(open(md_run / "adapter" / "label_map.json"))["labels"]
    assert sorted(read) == sorted(LABELS.values())
    # nothing of a label escaped its span: no emphasis, no rule, no new paragraph in the card's first lines
    assert not any(t.type in ("em_open", "strong_open") for t in tokens)
    assert "license: mit" not in card.split("\n")[2:4]


def test_assess_names_no_label_unquoted_and_each_label_of_a_set_by_the_rule(tmp_path, capsys, monkeypatch):
    """Multi-label data whose one text carries no label in a row and pin in another: the conflict reads
    '(none) / pin' (the code before: '"(none)" / pin', the label-set name quoted whole)."""
    monkeypatch.setenv("COLUMNS", "400")
    for name, n, seed in (("train", 8, 1), ("validation", 4, 2), ("test", 4, 3)):
        rows = [{"text": r["text"], "labels": [r["label"]]} for r in make_rows(n, seed)]
        if name == "train":
            rows += [{"text": "today send money to a friend today", "labels": []},
                     {"text": "today send money to a friend today", "labels": ["pin"]},
                     {"text": "wire it now please", "labels": ["x, y", "transfer"]},
                     {"text": "wire it now please", "labels": ["transfer"]}]
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    assert main(["assess", f"data.dataset_name={tmp_path}", "data.label_column=labels", "data.multi_label=true",
                 "--no-probe"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "conflicting label pairs: " in line)
    assert line.split("conflicting label pairs: ")[1] == \
        '(none) / pin (1 exact), transfer / transfer+"x, y" (1 exact)', line


def test_assess_findings_name_each_label_by_the_rule(tmp_path, capsys, monkeypatch):
    """assess's findings list labels as show and predict do (the code before: 'x, y: `z`' and 'bal\\nance' raw,
    joined by ', ': the long-tail finding read as five labels over three lines)."""
    monkeypatch.setenv("COLUMNS", "400")
    for name, n, seed in (("train", 8, 1), ("validation", 4, 2), ("test", 4, 3)):
        write_jsonl(tmp_path / f"{name}.jsonl",
                    [{"text": r["text"], "label": LABELS[r["label"]]} for r in make_rows(n, seed)])
    assert main(["assess", f"data.dataset_name={tmp_path}", "--no-probe", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    tail = next(f for f in got["findings"] if f["id"] == "long-tail")
    listed = tail["message"].split("training rows (", 1)[1].rsplit("): ", 1)[0]
    assert listed in {", ".join(p) for p in itertools.permutations(SHOWN)}, listed


# (training refuses a label with ESC or another invisible character: a tab it takes)
CTL = dict(zip(INTENTS, ["tab\there", "two\ttabs\there", "plain", "é ✨"]))
CTL_SHOWN = ['"tab\\there"', '"two\\ttabs\\there"', "plain", "é ✨"]


@pytest.fixture(scope="module")
def ctl_run(tiny_bert, tmp_path_factory):
    return _labelled_run(tiny_bert, tmp_path_factory, CTL, "ctl")


def test_show_gives_a_class_with_a_tab_in_its_label_one_row(ctl_run, capsys, monkeypatch):
    _, rows = _show_lines(ctl_run, capsys, monkeypatch)
    assert len(rows) == 4  # one row a class (the code before: 5, the tab's)
    assert sorted(next(s for s in CTL_SHOWN if row.startswith(s + " ")) for row in rows) == sorted(CTL_SHOWN)


def test_predict_quotes_a_label_with_a_control_and_keeps_an_ordinary_one_as_written(ctl_run, capsys):
    texts = [r["text"] for r in make_rows(2, 9)]
    assert main(["predict", str(ctl_run), "--json", *texts]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert main(["predict", str(ctl_run), "--top-k", "1", *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = dict(zip(CTL.values(), CTL_SHOWN))
    assert lines == [f"{shown[p['label']]} {p['score']:.2f}  {p['text']}" for p in preds]  # byte for byte


def test_assess_prints_a_listing_whole_on_its_line_when_piped(tmp_path, capsys, monkeypatch):
    """Piped (pytest's captured stdout), assess's label lists were folded at 80 columns as evaluate's were: the
    conflicting pairs of long labels ran over lines. Whole on one line, as predict and evaluate print them."""
    monkeypatch.delenv("COLUMNS", raising=False)
    long_a, long_b = "card_payment_not_recognised_abroad", "declined_transfer_to_a_beneficiary_abroad"
    for name, n, seed in (("train", 8, 1), ("validation", 4, 2), ("test", 4, 3)):
        rows = [{"text": r["text"], "labels": [r["label"]]} for r in make_rows(n, seed)]
        if name == "train":
            rows += [{"text": "today send money to a friend today", "labels": [long_a]},
                     {"text": "today send money to a friend today", "labels": [long_b]}] * 2
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    assert main(["assess", f"data.dataset_name={tmp_path}", "data.label_column=labels", "data.multi_label=true",
                 "--no-probe"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "conflicting label pairs: " in line)
    assert len(line) > 80 and f"{long_a} / {long_b}" in line, line
