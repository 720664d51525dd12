"""Progress off a terminal (stderr a file, a pipe, CI, TERM=dumb): rich's bar is never redrawn there, so `train`,
`predict --file` and `tune` said nothing until the work ended; they write plain lines instead (one per evaluation,
one at least every train.PLAIN_PROGRESS_EVERY_S seconds, no carriage return or escape code)."""

from __future__ import annotations

import re

import pytest

from loratune import api, inference, train
from loratune.cli import main
from loratune.config import load_config

from support import make_rows, overrides

LINE = re.compile(r"^train  (\d+)/24  loss (\S+)  val macro-F1 (\d\.\d{4})  elapsed \d+:\d\d:\d\d(  left \d+:\d\d:\d\d)?$")


@pytest.fixture(autouse=True)
def _not_a_terminal(monkeypatch):
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):  # rich would take the capture for a terminal
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def trained(tiny_bert, intent_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=8, eval_steps=4)]) == 0
    return out


def _lines(err: str) -> list[str]:
    assert "\r" not in err and "\x1b" not in err  # a log file or a CI page gets lines, not a redrawn bar
    return [line for line in err.splitlines() if line.startswith("train  ")]


def test_train_off_a_terminal_writes_a_plain_line_at_each_evaluation(tiny_bert, intent_data, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr(train, "PLAIN_PROGRESS_EVERY_S", 1e9, raising=False)  # evaluations only
    cfg = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=24, eval_steps=8))
    run = api.train(cfg, progress=True)
    lines = _lines(capsys.readouterr().err)
    got = [LINE.match(line) for line in lines]
    assert all(got), lines
    assert [int(m.group(1)) for m in got] == [0, 8, 16, 24]  # the last evaluation is the end: no closing repeat
    assert [m.group(4) is not None for m in got] == [False, True, True, False]  # time left while steps remain
    assert got[0].group(2) == "-" and all(float(m.group(2)) > 0 for m in got[1:])
    assert float(got[-1].group(3)) == pytest.approx(run["final"]["val/macro_f1"], abs=1e-4)


def test_train_off_a_terminal_writes_a_line_every_interval_and_none_under_quiet(tiny_bert, intent_data, tmp_path,
                                                                                 capsys, monkeypatch):
    monkeypatch.setattr(train, "PLAIN_PROGRESS_EVERY_S", 0.0, raising=False)  # every step is past the interval
    cfg = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=24, eval_steps=8))
    api.train(cfg, progress=True)
    steps = [int(LINE.match(line).group(1)) for line in _lines(capsys.readouterr().err)]
    assert sorted(set(steps)) == list(range(25)) and steps[-1] == 24
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, tmp_path / "q", max_steps=8, eval_steps=4)]) == 0
    assert capsys.readouterr().err == ""  # -q still silences it


def test_a_run_that_ends_early_closes_on_its_last_step_with_no_time_left(capsys, monkeypatch):
    monkeypatch.setattr(train, "PLAIN_PROGRESS_EVERY_S", 1e9, raising=False)
    bar = train.RunProgress(60, True)
    for step in range(1, 9):
        bar.update(step, 0.5)
    bar.update(8, 0.5, 0.25, evaluated=True)
    bar.close()
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 2 and lines[0].startswith("train  8/60") and "left" in lines[0]
    assert lines[1].startswith("train  8/60  loss 0.5000  val macro-F1 0.2500  elapsed") and "left" not in lines[1]


def test_a_run_that_ends_early_shows_its_elapsed_time_not_the_remaining_on_a_terminal(monkeypatch):
    from rich.progress import TimeElapsedColumn, TimeRemainingColumn

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich's terminal
    monkeypatch.setenv("TERM", "xterm")
    bar = train.RunProgress(60, True)
    assert bar.bar is not None and isinstance(bar.bar.columns[-1], TimeRemainingColumn)
    bar.update(8, 0.5)
    bar.close()
    assert isinstance(bar.bar.columns[-1], TimeElapsedColumn)
    assert bar.bar.tasks[0].completed == 8


def test_predict_file_off_a_terminal_writes_plain_lines(trained, tmp_path, capsys, monkeypatch):
    texts = [r["text"] for r in make_rows(3, seed=7)][:10]
    file = tmp_path / "texts.txt"
    file.write_text("\n".join(texts) + "\n")
    monkeypatch.setattr(inference, "PREDICT_CHUNK_ROWS", 4, raising=False)
    monkeypatch.setattr(train, "PLAIN_PROGRESS_EVERY_S", 0.0, raising=False)
    capsys.readouterr()
    assert main(["predict", str(trained), "--file", str(file)]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert [line.split("  ")[:2] for line in err.splitlines()] == [["predict", "4/10"], ["predict", "8/10"],
                                                                     ["predict", "10/10"]]
