"""bench/public_folds.py: the collection route of the external corpus's notebook folds (which notebook and table a
repository gives, and that no fixture table is kept twice). A tiny git repository made here; no network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import public_folds as pf  # noqa: E402


def _table(rows: list[tuple[int, str, str]]) -> str:
    """One output of the Trainer's NotebookProgressCallback: the bar, then Step / Training Loss / Validation Loss."""
    body = "".join(f"<tr><td>{s}</td><td>{t}</td><td>{v}</td></tr>" for s, t, v in rows)
    last = rows[-1][0] if rows else 0
    return (f"<div><progress value='{last}' max='{last}'></progress> [{last}/{last} 00:10, Epoch 1/1]</div>"
            "<table><thead><tr><th>Step</th><th>Training Loss</th><th>Validation Loss</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _notebook(*tables: str) -> str:
    cells = [{"cell_type": "code", "source": ["trainer.train()"], "metadata": {}, "execution_count": 1,
              "outputs": [{"output_type": "display_data", "metadata": {}, "data": {"text/html": [t]}}]}
             for t in tables]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def _repo(tmp_path: Path, files: dict[str, str]) -> str:
    work = tmp_path / "work"
    work.mkdir()
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git = ["git", "-C", str(work), "-c", "user.email=t@t", "-c", "user.name=t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(git + args, check=True, capture_output=True)
    return str(work / ".git")


THREE = [(10, "0.9", "0.8"), (20, "0.7", "0.6"), (30, "0.5", "0.5")]
TWO = THREE[:2]
NO_EVAL = [(10, "0.9", "No log"), (20, "0.7", "No log"), (30, "0.5", "No log")]


def test_screen_takes_the_listed_notebook_else_the_first_in_path_order_and_its_last_qualifying_table(tmp_path, capsys):
    gitdir = _repo(tmp_path, {
        "listed.ipynb": _notebook(_table(TWO)),  # two eval rows: under QUALIFY_ROWS_MIN
        "b.ipynb": _notebook(_table(THREE), _table(THREE + [(40, "0.4", "0.5")]), _table(NO_EVAL)),
        "c.ipynb": _notebook(_table(THREE)),
    })
    assert pf.screen(gitdir, "listed.ipynb") == ("b.ipynb", 1)  # table 2 has no numeric eval column
    assert pf.screen(gitdir, "c.ipynb") == ("c.ipynb", 0)
    out = capsys.readouterr().out
    assert "QUAL b.ipynb: table 0 (3 eval rows), table 1 (4 eval rows)" in out and "listed.ipynb" not in out.split(
        "CHOICE")[0].replace("QUAL", "")


def test_screen_finds_nothing_in_a_repository_without_a_qualifying_table(tmp_path):
    gitdir = _repo(tmp_path, {"a.ipynb": _notebook(_table(TWO)), "notes.txt": "no notebook"})
    assert pf.screen(gitdir, "a.ipynb") is None


@pytest.mark.parametrize("fold", sorted(p.parent.name for p in (ROOT / "tests" / "fixtures" / "external").glob(
    "public_*/manifest.json") if all("table_index" in r for r in json.loads(p.read_text())["runs"])))
def test_no_notebook_fold_repeats_a_table_of_any_fixture(fold, capsys):
    assert pf.check(fold) == 0, capsys.readouterr().out


def test_check_names_a_table_kept_twice(tmp_path, monkeypatch, capsys):
    ext = tmp_path / "tests" / "fixtures" / "external"
    for fold, name in (("public_x1", "a__b__c"), ("public_x2", "d__e__f")):
        (ext / fold / name).mkdir(parents=True)
        (ext / fold / name / "notebook.ipynb").write_text(_notebook(_table(THREE)))
        (ext / fold / "manifest.json").write_text(json.dumps({"runs": [{"name": name, "table_index": 0}]}))
    (ext / "public_x2" / "g__h__i").mkdir()
    (ext / "public_x2" / "g__h__i" / "notebook.ipynb").write_text(_notebook(_table(THREE + [(40, "0.4", "0.5")])))
    monkeypatch.setattr(pf, "ROOT", tmp_path)
    monkeypatch.setattr(pf, "EXTERNAL", ext)
    pf._fixture_tables.cache_clear()
    try:
        assert pf.check("public_x1") == 1
        assert "DUPLICATE a__b__c: tests/fixtures/external/public_x2/d__e__f/notebook.ipynb" in capsys.readouterr().out
        (ext / "public_x2" / "d__e__f" / "notebook.ipynb").unlink()
        pf._fixture_tables.cache_clear()
        assert pf.check("public_x1") == 0  # a table that only starts the same is another table
    finally:
        pf._fixture_tables.cache_clear()
