"""Paths, model names and study folders the user gives reach the terminal as written: rich markup in them is text.
Hunt 15: `train output_dir=od/[/]x` raised MarkupError after reading the data (exit 1, nothing trained),
`output_dir=od/[exp1]lr` printed "training -> od/lr", and the same in `tune --study-dir`, `params`, `plan`,
`assess --out` (printed "written: as.json") and the notes `tune` prints through RichUI.note."""

from __future__ import annotations

import os

import pytest

from loratune.cli import main

from support import overrides

# a folder name rich read as a closing tag ("[/]": MarkupError) and one it read as a style ("[exp1]": dropped)
MARKUP = "[exp1]lr[/]x"


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # (rich wraps at 80 columns off a terminal: long paths would fold)


@pytest.fixture(scope="module")
def model_link(tiny_bert, tmp_path_factory):
    """The tiny model under a name with markup in it (a folder "tb[exp1][" holding a link "]x")."""
    root = tmp_path_factory.mktemp("links")
    link = root / "tb[exp1][/]x"
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(tiny_bert, link)
    return str(link)


@pytest.mark.parametrize("name", [MARKUP, "od[/]x"])  # (the second: MarkupError after the data was read, exit 1)
def test_train_names_its_output_dir_as_written(tiny_bert, intent_data, tmp_path, capsys, name):
    run = tmp_path / name
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, run, max_steps=4)]) == 0
    out = capsys.readouterr().out
    assert f"training -> {run}\n" in out
    assert f"loratune diagnose '{run}'" in out  # the next steps name the run as written too (shell-quoted)
    assert (run / "run.json").is_file()


@pytest.mark.parametrize("command", [["params"], ["plan", "--seq-len", "64"]])
def test_params_and_plan_name_the_model_as_written(model_link, command, capsys):
    assert main([command[0], model_link, *command[1:]]) == 0
    out = capsys.readouterr().out
    assert model_link in out


def test_assess_names_its_out_file_as_written(tiny_bert, intent_data, tmp_path, capsys):
    target = tmp_path / "as[exp].json"
    assert main(["assess", f"name_or_path={tiny_bert}", f"dataset_name={intent_data}", "max_length=16",
                 "--no-probe", "--out", str(target)]) == 0
    assert f"written: {target}\n" in capsys.readouterr().out
    assert target.is_file()


def test_tune_names_its_study_folder_and_its_notes_as_written(tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    import importlib

    search_tune = importlib.import_module("loratune.search.tune")  # (the package's `tune` is the function)

    def stopped(cfg, opts, ui):  # what tune says first (search.tune's notes name the study folder), then a Ctrl-C
        ui.note(f"the study in {opts.study_dir} is finished: nothing to resume")
        raise KeyboardInterrupt

    monkeypatch.setattr(search_tune, "tune", stopped)
    study = tmp_path / MARKUP
    code = main(["tune", "--study-dir", str(study), "--budget", "1trials", "-q",
                 *overrides(tiny_bert, intent_data, tmp_path / "unused")])
    assert code != 0
    out = capsys.readouterr().out
    assert f"--budget 1trials -> {study}\n" in out
    assert f"the study in {study} is finished" in out
    assert f"nothing was kept in {study}:" in out


def test_rich_ui_prints_a_note_as_written():
    import io

    from rich.console import Console

    from loratune.commands.tune import RichUI

    buf = io.StringIO()
    ui = RichUI(Console(file=buf, width=200, highlight=False), live=False)
    for text in ("worker: trial #3 r=8 targets=[attn,ffn]", "st/[/]x", "C:\\", "[bold red]x[/]"):
        ui.note(text)
    assert buf.getvalue().splitlines() == ["worker: trial #3 r=8 targets=[attn,ffn]", "st/[/]x", "C:\\",
                                           "[bold red]x[/]"]


ESC = "\x1b[2J"  # clears the screen where it reaches a terminal raw


@pytest.fixture
def esc_study(tmp_path):
    """A finished one-trial study whose folder and trial name hold an ESC sequence."""
    from loratune.search.budget import Budget, CostModel, Meter
    from loratune.search.context import SearchContext
    from loratune.search.summary import finish
    from loratune.search.trial import TrialRecord, TrialResult, TrialSpec

    from memory_store import MemoryStore

    class Runner:
        def evaluate(self, run_dir, split="test"):
            return {"test/macro_f1": 0.8, "test/n": 5}

    study = tmp_path / f"st{ESC}"
    run_dir = study / "trials" / "01-lr"
    run_dir.mkdir(parents=True)
    ctx = SearchContext(store=MemoryStore(study), runner=Runner(), meter=Meter(Budget.parse("10trials")),
                        trial_examples=100, costs=CostModel())
    ctx.state["final"] = TrialRecord(1, TrialSpec(f"lr{ESC}", "final-train", {"adapter.r": 4}), str(run_dir),
                                     TrialResult(status="completed", value=0.7, examples=100, wall_s=1.0))
    finish(ctx, study / "final", "protocol")
    return study


def test_show_study_prints_no_control_character_raw(esc_study):
    import io

    from rich.console import Console

    from loratune.report.study import build_study_report, show_study

    buf = io.StringIO()
    show_study(Console(file=buf, width=400, highlight=False, color_system=None), build_study_report(esc_study))
    out = buf.getvalue()
    assert "\x1b" not in out and "lr\\x1b[2J" in out  # (the code before: the ESC raw, rich's escape keeps it)


def test_report_names_its_output_with_no_control_character_raw(esc_study, tmp_path, capsys):
    target = tmp_path / f"r{ESC}.html"
    assert main(["report", str(esc_study), "-o", str(target)]) == 0
    out = capsys.readouterr().out
    assert target.exists() and "\x1b" not in out and f"wrote {tmp_path}/r\\x1b[2J.html (" in out


def test_an_error_names_a_path_with_no_control_character_raw(tmp_path, capsys):
    assert main(["show", str(tmp_path / f"nope{ESC}")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "nope\\x1b[2J" in err, err


def test_the_next_steps_of_a_run_whose_output_dir_starts_with_a_dash_can_be_run(tiny_bert, intent_data, tmp_path,
                                                                                 monkeypatch, capsys):
    # `next: loratune diagnose -dash` was no command: diagnose took the path for an option (unrecognized arguments)
    import shlex

    monkeypatch.chdir(tmp_path)
    args = [a for a in overrides(tiny_bert, intent_data, tmp_path, max_steps=4) if not a.startswith("output_dir=")]
    assert main(["train", "-q", *args, "output_dir=-dash"]) == 0
    out = capsys.readouterr().out
    assert "loratune diagnose ./-dash" in out and "loratune report ./-dash" in out
    line = next(x for x in out.splitlines() if "loratune diagnose" in x)
    cmd = shlex.split(line.strip().split("  ")[0])  # the command as printed, before its description
    assert cmd[:2] == ["loratune", "diagnose"] and main(cmd[1:]) == 0
