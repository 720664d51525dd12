"""Texts and labels a trained run is handed at evaluate and predict time that training would refuse or read
otherwise: empty or invisible texts, labels the run never learned, files in a form not read, bytes that are no
UTF-8. Each a UserError naming the file and line (exit 2), or a score that says what it counted."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

from loratune.cli import main

from support import flat, make_rows, overrides, write_jsonl


@pytest.fixture(scope="module")
def run(tiny_bert, intent_data, tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny run over its own copy of the data: the tests rewrite its test.jsonl, which evaluate reads."""
    d = tmp_path_factory.mktemp("text-inputs-data")
    for name in ("train.jsonl", "validation.jsonl"):
        shutil.copy(intent_data / name, d / name)
    write_jsonl(d / "test.jsonl", make_rows(4, seed=3))
    out = tmp_path_factory.mktemp("text-inputs") / "run"
    assert main(["train", "-q", *overrides(tiny_bert, d, out)]) == 0
    return out, d


def _test_rows(d: Path, rows: list[dict]) -> None:
    write_jsonl(d / "test.jsonl", rows)


def test_evaluate_refuses_empty_texts_by_their_lines_as_training_does(run, capsys):
    out, d = run
    rows = make_rows(4, seed=3)
    for i in range(0, len(rows), 3):
        rows[i]["text"] = "   " if i % 2 else "\u200b\u200b"
    _test_rows(d, rows)
    assert main(["evaluate", str(out)]) == 2  # scored as texts: 'accuracy 0.3333', rc 0
    err = flat(capsys.readouterr().err)
    n = len(range(0, len(rows), 3))
    assert f"test: {n} empty text(s) in '{d / 'test.jsonl'}' (lines 1, 4, 7, " in err and "fix:" in err


def test_evaluate_names_test_labels_the_run_never_learned_and_refuses_a_test_split_of_none(run, capsys):
    out, d = run
    rows = make_rows(4, seed=3)
    first = rows[0]["label"].upper()
    for r in rows[:3]:
        r["label"] = "mystery"
    _test_rows(d, rows)
    assert main(["evaluate", str(out)]) == 0
    said = flat(capsys.readouterr().out)
    assert "note: 1 label(s) the run never trained on, their rows scored as errors: mystery (3 row(s))" in said
    assert main(["evaluate", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test/unseen_labels"] == {"mystery": 3}
    assert json.loads((out / "run.json").read_text())["eval"]["test"]["test/unseen_labels"] == {"mystery": 3}
    _test_rows(d, [{**r, "label": r["label"].upper()} for r in make_rows(4, seed=3)])  # scored 0, said nothing
    assert main(["evaluate", str(out)]) == 2
    err = flat(capsys.readouterr().err)
    assert f"the test split shares no label with train (test: {first}, " in err and "fix:" in err


@pytest.mark.parametrize("text", ["\u200b\u200b", "\u0000", "\u0007\u001b"])
def test_predict_refuses_a_text_of_invisible_characters(run, text, tmp_path, capsys):
    from loratune import api
    from loratune.errors import UserError

    out, _ = run
    with pytest.raises(UserError, match="text 2 of 2 is empty"):
        api.predict(out, ["lost my card", text])
    f = tmp_path / "t.jsonl"
    write_jsonl(f, [{"text": "lost my card"}] * 3 + [{"text": text}])
    assert main(["predict", str(out), "--file", str(f)]) == 2
    assert f"'{f}' line 4: 1 empty text(s) in column 'text'" in flat(capsys.readouterr().err)
    f = tmp_path / "t.txt"
    f.write_text(f"lost my card\n{text}\n")
    assert main(["predict", str(out), "--file", str(f)]) == 2
    assert f"file '{f}' line 2: no visible character" in flat(capsys.readouterr().err)


@pytest.mark.parametrize("suffix", [".tsv", ".xlsx", ".text"])
def test_predict_refuses_a_file_in_a_form_not_read_with_trainings_conversion_hint(run, suffix, tmp_path, capsys):
    from loratune.data import CONVERT_HINT

    out, _ = run
    f = tmp_path / f"t{suffix}"
    f.write_text("text\tlabel\nlost my card\tcard_lost\n")  # read as lines: the header and each label predicted
    assert main(["predict", str(out), "--file", str(f)]) == 2
    err = flat(capsys.readouterr().err)
    assert f"file '{f}' has suffix '{suffix}', a form predict does not read" in err and CONVERT_HINT in err
    (tmp_path / "t.txt").write_text("lost my card\n\nreset my pin\n")
    assert main(["predict", str(out), "--file", str(tmp_path / "t.txt"), "--json"]) == 0
    assert [p["text"] for p in json.loads(capsys.readouterr().out)] == ["lost my card", "reset my pin"]


def test_a_blank_predict_file_is_named_not_taken_for_no_file(run, tmp_path, capsys):
    out, _ = run
    f = tmp_path / "blank.txt"
    f.write_text("\n   \n\t\n")
    assert main(["predict", str(out), "--file", str(f)]) == 2
    err = flat(capsys.readouterr().err)
    assert f"file '{f}' has no texts (only empty lines)" in err and "no texts given" not in err


def test_a_predict_argument_of_bytes_that_are_no_utf8_is_said_so(run, capsys):
    out, _ = run
    arg = os.fsdecode(b"bad \xff byte")  # as Python hands over argv bytes that are no UTF-8
    assert main(["predict", str(out), "lost my card", arg]) == 2
    err = flat(capsys.readouterr().err)
    assert "text 2 of 2 is not valid UTF-8 (byte 0xff at position 4)" in err and "surrogate" not in err


def test_a_run_saved_with_decomposed_labels_scores_its_own_data_as_before(run, tmp_path, capsys):
    # a run trained before labels were NFC-normalised kept them as the data wrote them (e + U+0301 from a macOS file
    # name) in label_map.json; the data's labels are NFC now, so the saved ones are read in the same form
    import unicodedata

    out, d = run
    rows = make_rows(4, seed=3)
    _test_rows(d, rows)
    assert main(["evaluate", str(out), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    old = tmp_path / "old"
    shutil.copytree(out, old)
    path = old / "adapter" / "label_map.json"
    label_map = json.loads(path.read_text())
    label_map["labels"] = [unicodedata.normalize("NFD", f"{x}_é") for x in label_map["labels"]]
    path.write_text(json.dumps(label_map, ensure_ascii=False))
    _test_rows(d, [{**r, "label": f"{r['label']}_é"} for r in rows])  # NFC, as JSON typed by hand is
    assert main(["evaluate", str(old), "--json"]) == 0  # scored its own labels as unseen: accuracy 0.0
    after = json.loads(capsys.readouterr().out)
    assert after["test/accuracy"] == before["test/accuracy"] and after["test/macro_f1"] == before["test/macro_f1"]
    assert "test/unseen_labels" not in after
    assert main(["predict", str(old), rows[0]["text"]]) == 0
    assert unicodedata.normalize("NFC", "_é") in capsys.readouterr().out


class _Stdin(io.TextIOWrapper):
    """Standard input as a pipe (isatty False) or a terminal, holding `data`."""

    def __init__(self, data: bytes, tty: bool = False):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_predict_reads_texts_from_a_pipe_stdin_and_dash(run, tmp_path, monkeypatch, capsys):
    # `printf 'lost my card\n' | loratune predict RUN --file /dev/stdin` and `--file <(printf ...)` said "file
    # '/dev/stdin' is not a regular file" (exit 2), `--file -` "file '-' does not exist", and piping with no texts
    # "no texts given" (stdin never read)
    import subprocess
    import sys
    import threading

    out, _ = run
    want = ["lost my card", "reset my pin"]
    sent = b"lost my card\n\nreset my pin\r\n"

    def texts() -> list[str]:
        return [p["text"] for p in json.loads(capsys.readouterr().out)]

    fifo = tmp_path / "texts"  # what `<(cmd)` hands over: a named pipe, no suffix
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(sent,), daemon=True)  # blocks until read
    writer.start()
    assert main(["predict", str(out), "--json", "--file", str(fifo)]) == 0
    writer.join(timeout=30)
    assert texts() == want

    monkeypatch.setattr(sys, "stdin", _Stdin(sent))
    assert main(["predict", str(out), "--json", "--file", "-"]) == 0
    assert texts() == want
    monkeypatch.setattr(sys, "stdin", _Stdin(sent))  # no texts given, stdin no terminal: its lines
    assert main(["predict", str(out), "--json"]) == 0
    assert texts() == want
    monkeypatch.setattr(sys, "stdin", _Stdin(sent))  # texts given: stdin left alone
    assert main(["predict", str(out), "--json", "x"]) == 0
    assert texts() == ["x"] and sys.stdin.buffer.read() == sent

    for stdin, args, said in [(_Stdin(b"", tty=True), [], "no texts given"),  # a terminal is not waited on
                              (_Stdin(b""), [], "no texts given"),  # cron's /dev/null
                              (_Stdin(b"\n \n"), ["--file", "-"], "standard input has no texts (only empty lines)"),
                              (_Stdin(b"a\n\x07\n"), ["--file", "-"], "standard input line 2: no visible character")]:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert main(["predict", str(out), *args]) == 2
        err = flat(capsys.readouterr().err)
        assert said in err and "fix:" in err, (args, err)

    # the reported command itself: a real pipe read as /dev/stdin
    proc = subprocess.run([sys.executable, "-m", "loratune.cli", "predict", str(out), "--json", "--file",
                           "/dev/stdin"], input=sent, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert [p["text"] for p in json.loads(proc.stdout)] == want
