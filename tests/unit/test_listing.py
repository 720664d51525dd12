"""listing: the one rule by which a label is written on one line (predict, show, evaluate, assess, the model card) and
the Markdown code span the model card lists labels in: every label reads back exactly."""

from __future__ import annotations

import json

import pytest

from loratune.listing import LABEL_JOIN, NO_LABEL, code_span, label_text

# labels that broke a one-line list, a table row or the model card's Markdown (hunt 15: show's table of 4 classes
# printed 7 rows; the card's "labels: bal\nance, ---\nlicense: mit\n---, x, y: `z`, ..." read as other labels)
HOSTILE = ["bal\nance", "---\nlicense: mit\n---", "x, y: `z`", "*emph* | pipe | \\", "a\r\nb", "p\u2028q",
           'say "hi"', NO_LABEL, "``", "`a`", " a ", "a ", "  ", "é ✨ [/]", "plain"]


def _read(shown: str) -> str:
    return json.loads(shown) if shown.startswith('"') else shown


@pytest.mark.parametrize("label, shown", [
    ("plain", "plain"), ("*emph* | pipe | \\", "*emph* | pipe | \\"), ("bal\nance", '"bal\\nance"'),
    ("x, y: `z`", '"x, y: `z`"'), ('say "hi"', '"say \\"hi\\""'), (NO_LABEL, '"(none)"'), ("p\u2028q", '"p\\u2028q"'),
])
def test_label_text_quotes_a_label_only_where_it_would_misread(label, shown):
    assert label_text(label) == shown


@pytest.mark.parametrize("label", HOSTILE)
def test_label_text_is_one_line_and_reads_back(label):
    shown = label_text(label)
    assert len(shown.splitlines()) == 1 and _read(shown) == label
    assert "," not in shown or shown.startswith('"')  # a list joined by LABEL_JOIN splits where it was joined


def test_a_list_of_labels_splits_back_into_its_labels():
    import re

    line = LABEL_JOIN.join(map(label_text, HOSTILE))
    assert len(line.splitlines()) == 1
    # a reader of the line: a JSON string, or anything up to the next comma, each followed by LABEL_JOIN or the end
    item = re.compile(r'("(?:[^"\\]|\\.)*"|[^,"]*)(?:, |$)')
    read, at = [], 0
    while at < len(line):
        m = item.match(line, at)
        read.append(_read(m.group(1)))
        at = m.end()
    assert read == HOSTILE


@pytest.mark.parametrize("text", [*HOSTILE, *map(label_text, HOSTILE)])
def test_code_span_renders_the_text_literally_in_commonmark(text):
    from markdown_it import MarkdownIt

    if "\n" in text or "\r" in text or "\u2028" in text:  # (a code span renders a line break as a space: give it one line)
        text = label_text(text)
    tokens = MarkdownIt("commonmark").parseInline(f"labels: {code_span(text)}, next")[0].children
    spans = [t.content for t in tokens if t.type == "code_inline"]
    assert spans == [text]


# hunt 15 review: a tab printed raw split show's row of a class in two and read as spaces in predict's line; ESC, DEL,
# a carriage return and U+202E are no more printable. Each quoted, so that the label reads back
@pytest.mark.parametrize("label, shown", [
    ("tab\there", '"tab\\there"'), ("esc\x1b[2J", '"esc\\u001b[2J"'), ("del\x7f", '"del\\u007f"'),
    ("cr\rx", '"cr\\rx"'), ("rlo\u202eabc", '"rlo\\u202eabc"'), ("c1\x9b2J", '"c1\\u009b2J"'),
])
def test_label_text_quotes_a_label_with_a_non_printable_character(label, shown):
    assert label_text(label) == shown and json.loads(shown) == label


@pytest.mark.parametrize("label", ["plain", "card_lost", "é ✨ [/]", "👩\u200d💻", "a b", "a+b", "no\u00a0break",
                                   "*emph* | pipe | \\", "  "])
def test_label_text_keeps_an_ordinary_label_as_written(label):  # predict's lines for them byte-identical
    assert label_text(label) == label


@pytest.mark.parametrize("labels, key", [
    ((), NO_LABEL), (("pin",), "pin"), (("pin", "balance"), "balance+pin"), (("x, y", "b"), 'b+"x, y"'),
    ((NO_LABEL,), '"(none)"'), (("tab\tx",), '"tab\\tx"'),
])
def test_assess_names_a_label_set_by_the_label_rule_and_no_label_as_no_label(labels, key):
    from loratune.assess.profile import _label_key

    assert _label_key(labels) == key  # (the code before: '"(none)"' printed for no label, raw labels inside a set)


@pytest.mark.parametrize("path,word", [("runs/a", "runs/a"), ("-dash", "./-dash"), ("--x y", "'./--x y'"),
                                       ("my run", "'my run'"), ("~/s", "~/s"), ("~/my run", "~/'my run'"),
                                       ("/abs/-x", "/abs/-x")])
def test_a_path_in_a_printed_command_is_one_word_the_command_takes_for_a_path(path, word):
    # `next: loratune diagnose -dash` was not runnable: the command took the path for an option
    import shlex

    from loratune.listing import shell_path

    assert shell_path(path) == word
    assert len(shlex.split(f"loratune diagnose {shell_path(path)}")) == 3
