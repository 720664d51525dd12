"""predict on a long input: scored a chunk of texts at a time (memory bounded by a chunk's logits), each chunk's
results written before the next is scored, a progress bar on stderr and nothing but results on stdout."""

from __future__ import annotations

import csv
import json

import pytest

from loratune import api, inference
from loratune.cli import main

from support import make_rows, overrides

TEXTS = [r["text"] for r in make_rows(3, seed=7)][:10]


@pytest.fixture(scope="module")
def trained(tiny_bert, intent_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 0
    return out


def _spy_logits(monkeypatch, on_call=None) -> list[int]:
    sizes: list[int] = []
    logits = inference.Trained.logits

    def spy(self, texts):
        sizes.append(len(texts))
        if on_call is not None:
            on_call()
        return logits(self, texts)

    monkeypatch.setattr(inference.Trained, "logits", spy)
    return sizes


def test_predict_scores_a_chunk_at_a_time_with_the_same_results(trained, monkeypatch):
    whole = api.predict(trained, TEXTS, top_k=2)  # one chunk (10 texts)
    monkeypatch.setattr(inference, "PREDICT_CHUNK_ROWS", 4, raising=False)
    sizes = _spy_logits(monkeypatch)
    chunked = api.predict(trained, TEXTS, top_k=2)
    assert sizes == [4, 4, 2]  # never the whole input's logits at once
    assert [p["text"] for p in chunked] == TEXTS and [p["label"] for p in chunked] == [p["label"] for p in whole]
    for a, b in zip(chunked, whole):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5) and len(a["top"]) == 2
        assert sum(t["score"] for t in a["top"]) <= 1 + 1e-6


def test_predict_command_writes_each_chunk_as_it_comes_and_progress_on_stderr(trained, monkeypatch, capsys, tmp_path):
    expected = api.predict(trained, TEXTS)
    file = tmp_path / "texts.txt"
    file.write_text("\n".join(TEXTS) + "\n")
    monkeypatch.setattr(inference, "PREDICT_CHUNK_ROWS", 4, raising=False)
    written: list[str] = []  # stdout as each chunk starts scoring
    capsys.readouterr()
    sizes = _spy_logits(monkeypatch, lambda: written.append(capsys.readouterr().out))
    assert main(["predict", str(trained), "--json", "--file", str(file)]) == 0
    end = capsys.readouterr()
    out = "".join(written) + end.out
    assert sizes == [4, 4, 2]
    assert written[0] == "" and written[1].count('"text"') == 4 and written[2].count('"text"') == 4
    preds = json.loads(out)  # stdout: the results only, one JSON list
    assert [p["text"] for p in preds] == TEXTS and [p["label"] for p in preds] == [p["label"] for p in expected]
    assert out == json.dumps(preds, indent=2, ensure_ascii=False) + "\n"  # as print_json writes a list
    assert "predict" in end.err and "10/10" in end.err

    written.clear()
    assert main(["predict", str(trained), "--file", str(file)]) == 0  # text lines: one per text, in order
    lines = ("".join(written) + capsys.readouterr().out).splitlines()
    assert written[1].count("\n") == 4
    assert len(lines) == 10 and all(text in line for text, line in zip(TEXTS, lines))


def test_a_few_texts_print_no_progress(trained, capsys):
    capsys.readouterr()
    assert main(["predict", str(trained), "--json", *TEXTS[:3]]) == 0
    got = capsys.readouterr()
    assert len(json.loads(got.out)) == 3 and got.err == ""


def test_text_lines_off_a_terminal_are_one_per_text_unwrapped_with_line_breaks_escaped(trained, tmp_path, capsys,
                                                                                        monkeypatch):
    """`predict --file F > out`: rich wrapped a line at 80 columns off a terminal, and a CSV text holding a line break
    printed on two lines, so `wc -l`, `cut` and `paste` misaligned texts and labels. One line per text, as written."""
    monkeypatch.delenv("COLUMNS", raising=False)  # rich's width off a terminal: 80
    long = ("i need help because i think i lost my card somewhere in the city yesterday evening and now i cannot pay "
            "for anything at all")
    texts = [long, "multi\nline text", "a carriage\rreturn", "what is my balance"]
    file = tmp_path / "texts.csv"
    with open(file, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *((t, "x") for t in texts)])
    expected = api.predict(trained, texts, top_k=2)
    for top_k in ("1", "2"):
        capsys.readouterr()
        assert main(["predict", str(trained), "--top-k", top_k, "--file", str(file)]) == 0
        lines = capsys.readouterr().out.split("\n")
        assert lines[-1] == "" and len(lines[:-1]) == len(texts), lines
        for line, p, shown in zip(lines, expected, (long, "multi\\nline text", "a carriage\\rreturn",
                                                    "what is my balance")):
            assert line.startswith(f"{p['label']} {p['score']:.2f}  {shown}"), line
            assert (f"({p['top'][1]['label']} " in line) == (top_k == "2")
        assert len(lines[0]) > 120
