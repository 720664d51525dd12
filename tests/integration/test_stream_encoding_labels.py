"""predict, evaluate, assess and show with labels the stream cannot encode (cp1252 or ASCII stdout): they ended with
a UnicodeEncodeError traceback, and their --json modes wrote half the JSON before it. Now the text modes escape what
the stream cannot write and the JSON modes write ASCII that parses to the UTF-8 run's JSON."""

from __future__ import annotations

import json
import re

import pytest

from loratune.cli import main

from support import INTENTS, make_rows, overrides, run_on, write_jsonl

LABELS = dict(zip(INTENTS, ["café", "заказ", "💸 transfer", "pin–code"]))

@pytest.fixture(scope="module")
def labelled(tiny_bert, tmp_path_factory):
    d = tmp_path_factory.mktemp("unicode-data")
    for name, seed, n in (("train", 1, 8), ("validation", 2, 4), ("test", 3, 4)):
        write_jsonl(d / f"{name}.jsonl", [{"text": r["text"], "label": LABELS[r["label"]]}
                                          for r in make_rows(n, seed=seed)])
    run = tmp_path_factory.mktemp("unicode") / "run"
    assert main(["train", "-q", *overrides(tiny_bert, d, run, max_steps=8)]) == 0
    return d, run, tiny_bert

def _argv(labelled, which: str) -> list[str]:
    d, run, model = labelled
    return {"predict": ["predict", str(run), "café 💸 заказ", "--top-k", "4"],
            "evaluate": ["evaluate", str(run)],
            "assess": ["assess", "--no-probe", "--data", str(d), f"name_or_path={model}", "max_length=16"],
            "show": ["show", str(run)]}[which]

@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
@pytest.mark.parametrize("which", ["predict", "evaluate", "assess", "show"])
def test_text_modes_escape_what_the_stream_cannot_write(labelled, monkeypatch, encoding, which):
    code, out = run_on(monkeypatch, encoding, _argv(labelled, which))
    assert code == 0
    if which == "predict":  # each label once on the line: escaped where the stream has no such character
        cafe = "café" if encoding == "cp1252" else "caf\\xe9"
        for shown in (cafe, "\\u0437\\u0430\\u043a\\u0430\\u0437", "\\U0001f4b8 transfer"):
            assert re.search(re.escape(shown) + r"(?! transfer)", out.splitlines()[0]), (shown, out)

@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
@pytest.mark.parametrize("which", ["predict", "evaluate", "assess"])
def test_json_modes_write_ascii_that_reads_as_the_utf8_runs(labelled, monkeypatch, encoding, which):
    argv = [*_argv(labelled, which), "--json"]
    code, out = run_on(monkeypatch, encoding, argv)
    assert code == 0 and out.isascii()
    _, utf8 = run_on(monkeypatch, "utf-8", argv)
    read, read_utf8 = json.loads(out), json.loads(utf8)
    if which == "assess":  # its own timings differ run to run
        read.pop("timings"), read_utf8.pop("timings")
    assert read == read_utf8
    if which == "predict":
        assert {a["label"] for a in json.loads(out)[0]["top"]} == set(LABELS.values())
