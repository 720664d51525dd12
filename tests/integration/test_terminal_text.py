"""Labels and texts from the user's data reach the terminal as written: rich markup in them is text, not markup (a
label "[/]" raised MarkupError, "[bold red]x[/]" printed restyled), control characters are shown escaped (an ESC
sequence cleared the screen or retitled the window), a trailing backslash is one backslash (rich doubled it)."""

from __future__ import annotations

import pytest

from loratune.cli import main

from support import INTENTS, make_rows, overrides, write_jsonl

# each intent of support.py renamed to a label that used to break or restyle the terminal output
# (a label with a control character, "\x1b[2Jclear", is refused when the data is read, as an invisible one is: texts
# carry the ESC sequences here, and safe()'s own test below prints such a label escaped)
HOSTILE = dict(zip(INTENTS, ["[/]", "[bold red]x[/]", "a\\[b]", "C:\\"]))
SHOWN = {"[/]": "[/]", "[bold red]x[/]": "[bold red]x[/]", "a\\[b]": "a\\[b]", "C:\\": "C:\\"}


def _rows(n: int, seed: int) -> list[dict]:
    return [{"text": r["text"], "label": HOSTILE[r["label"]]} for r in make_rows(n, seed=seed)]


@pytest.mark.parametrize("text, shown", [*SHOWN.items(), ("C:\\\\", "C:\\\\"), ("\\", "\\"),
                                         ("\x1b[2Jclear", "\\x1b[2Jclear"),
                                         ("l\u202eo \x07", "l\\u202eo \\x07"), ("a\u200db", "a\u200db")])
def test_safe_markup_prints_a_string_as_written_in_every_place(text, shown):
    import io

    from rich.console import Console
    from rich.table import Table

    from loratune.commands._common import safe

    buf = io.StringIO()
    con = Console(file=buf, width=200, highlight=False)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column()
    table.add_row(safe(text))
    for markup in (safe(text), f"[bold]{safe(text)}[/] after", f"{safe(text)}[dim]x[/]", table):
        con.print(markup)
    assert buf.getvalue().splitlines() == [shown, f"{shown} after", f"{shown}x", shown]


@pytest.fixture(scope="module")
def hostile_run(tiny_bert, tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile-data")
    write_jsonl(d / "train.jsonl", _rows(8, 1))
    write_jsonl(d / "validation.jsonl", _rows(4, 2) + [{"text": "lost my card \x1b]0;pwned\x07 [/] C:\\",
                                                        "label": "C:\\"}])
    write_jsonl(d / "test.jsonl", _rows(4, 3))
    run = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["train", "-q", *overrides(tiny_bert, d, run, max_steps=8)]) == 0
    return d, run


def _out(capsys) -> str:
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out  # no style codes off a terminal: an ESC is a label's own
    return out


def test_predict_prints_labels_and_texts_as_written(hostile_run, capsys):
    _, run = hostile_run
    assert main(["predict", str(run), "[/]", "C:\\", "[bold]x[/] \x1b[2J", "--top-k", "4"]) == 0
    lines = _out(capsys).splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("  [/]") or "  [/]  (" in lines[0]
    assert "C:\\" in lines[1] and "C:\\\\" not in lines[1]
    assert "[bold]x[/] \\x1b[2J" in lines[2]
    for line in lines:  # the top label, then the other three: every label once, as written
        assert sum(line.count(shown) for shown in ("[bold red]x[/]", "a\\[b]")) == 2, line


def test_evaluate_names_confused_labels_as_written(hostile_run, capsys):
    _, run = hostile_run
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    out = _out(capsys)
    confused = next(line for line in out.splitlines() if line.startswith("most confused: "))
    assert " -> " in confused and any(shown in confused for shown in SHOWN.values() if shown != "[/]")


def test_show_lists_each_class_and_example_as_written(hostile_run, capsys):
    _, run = hostile_run
    assert main(["show", str(run)]) == 0
    out = _out(capsys)
    table = out[out.index("per-class recall"):out.index("top confused pairs")]
    rows = [line.split()[0] for line in table.splitlines()[2:] if line.strip() and "·" not in line]
    assert sorted(rows) == sorted(["[/]", "[bold", "a\\[b]", "C:\\"])  # (a space splits the second)
    assert "[bold red]x[/]" in table and "C:\\\\" not in out


# labels that hold rich's emoji codes: rich's consoles print them as emoji by default (":warning: pin" read "⚠ pin")
EMOJI = dict(zip(INTENTS, [":warning: pin", ":smile:", ":+1:ok", "x:heart:y"]))


@pytest.fixture(scope="module")
def emoji_run(tiny_bert, tmp_path_factory):
    d = tmp_path_factory.mktemp("emoji-data")
    for name, seed in (("train", 1), ("validation", 2)):
        write_jsonl(d / f"{name}.jsonl", [{"text": r["text"], "label": EMOJI[r["label"]]}
                                          for r in make_rows(8 if name == "train" else 4, seed=seed)])
    run = tmp_path_factory.mktemp("emoji") / "run"
    assert main(["train", "-q", *overrides(tiny_bert, d, run, max_steps=8)]) == 0
    return run


def test_predict_and_show_print_a_label_with_an_emoji_code_as_written(emoji_run, capsys):
    """predict's answers (piped: a script parses them) and show's tables gave ":warning: pin" as "⚠ pin", a label that
    is not the label: every console the CLI makes leaves emoji codes as written (listing.console)."""
    assert main(["predict", str(emoji_run), "change my pin", "lost my card", "--top-k", "4"]) == 0
    lines = _out(capsys).splitlines()
    assert len(lines) == 2
    for line in lines:  # the top label, then the other three: every label once, as written
        assert all(line.count(label) == 1 for label in EMOJI.values()), line
        assert not any(ch in line for ch in "⚠😄👍❤")
    assert main(["show", str(emoji_run)]) == 0
    out = _out(capsys)
    table = out[out.index("per-class recall"):out.index("top confused pairs")]
    assert all(label in table for label in EMOJI.values()) and not any(ch in out for ch in "⚠😄👍❤")
    import io

    from loratune.listing import console

    buf = io.StringIO()
    con = console()
    con.file = buf
    con.print(":warning: pin")
    assert buf.getvalue() == ":warning: pin\n"


def test_assess_shows_labels_as_written(hostile_run, tiny_bert, capsys):
    d, _ = hostile_run
    assert main(["assess", "--no-probe", "--data", str(d), f"name_or_path={tiny_bert}", "max_length=16"]) == 0
    findings = _out(capsys).split("findings")[1]
    # the long-tail finding names the classes; the table wraps its cells, so each label is looked for on its own
    assert "long-tail" in findings and all(shown in findings for shown in SHOWN.values()) and "C:\\\\" not in findings


def test_train_says_its_preparation_phases_on_stderr_and_nothing_under_quiet(tiny_bert, intent_data, tmp_path, capsys):
    """Tokenizing and finding the evaluation slices of 200k rows took a minute before the progress bar, silent."""
    capsys.readouterr()
    assert main(["train", *overrides(tiny_bert, intent_data, tmp_path / "loud", max_steps=4)]) == 0
    got = capsys.readouterr()
    err = " ".join(got.err.split())
    tok = err.index("tokenizing 48 training and 20 validation texts (max_length 16)")
    assert tok < err.index("finding the evaluation slices of 20 validation texts (48 training texts)")
    assert "tokenizing" not in got.out and "slices of" not in got.out
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, tmp_path / "quiet", max_steps=4)]) == 0
    got = capsys.readouterr()
    assert "tokenizing" not in got.err + got.out and "slices of" not in got.err + got.out
