"""The run's extras as the user sees them: a probe-file label that names no class is noted when the data is read (as
validation's are), and `loratune show` shows the robustness probe and the probe set that run.json and the history
record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratune.cli import main

from support import overrides

NOTE = ("probe file '{path}': 2 label occurrence(s) of 1 label(s) not in train (transfers); they are scored as "
        "errors")


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("probe") / "probe.jsonl"
    rows = [{"text": "lost my card", "label": "card_lost"}, {"text": "send money", "label": "transfers"},
            {"text": "send money home", "label": "transfers"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def probed_run(tiny_bert, intent_data, probe_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("probed") / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, probe_file=str(probe_file))]) == 0
    return out


def test_a_probe_label_that_names_no_class_is_noted_like_validations(tiny_bert, intent_data, probe_file, tmp_path,
                                                                     capsys):
    from loratune.data import unseen_label_note

    note = NOTE.format(path=probe_file)
    assert note == unseen_label_note(f"probe file '{probe_file}'", {"transfers": 2}, False)  # validation's wording
    capsys.readouterr()
    assert main(["train", "-q", "--dry-run", *overrides(tiny_bert, intent_data, tmp_path / "x",
                                                        probe_file=str(probe_file))]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"note: {note}" in said


def test_the_trained_run_notes_it_in_run_json(probed_run, probe_file):
    run = json.loads((probed_run / "run.json").read_text())
    assert run["data_notes"].count(NOTE.format(path=probe_file)) == 1


def test_show_gives_the_trained_runs_robustness_and_probe_set(probed_run, capsys):
    run = json.loads((probed_run / "run.json").read_text())
    step = run["saved_model"]["step"]
    point = next(json.loads(line) for line in (probed_run / "history.jsonl").read_text().splitlines()
                 if json.loads(line)["step"] == step)
    capsys.readouterr()
    assert main(["show", str(probed_run)]) == 0
    out = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert f"probe set: accuracy {point['probe/accuracy']:.3f} on 3 texts at step {step}" in out
    rob = run["robustness"]
    assert f"robustness: clean accuracy {rob['clean_accuracy']:.3f} on {rob['rows']} validation rows" in out
    for kind in ("typo", "drop_word", "case", "punctuation"):
        v = rob[kind]
        assert f"{kind} {v['accuracy']:.3f} {v['drop']:.3f} {v['texts_changed']:.0%}" in out
