"""Edges of the Python API and the CLI shell found by a tester: a reused output_dir, `~` in paths, compare's and
tune's input checks, a refused resume, a closed pipe, paths that are no regular file, process-wide state."""

from __future__ import annotations

import pytest

from loratune.cli import main


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_fresh_run_in_a_reused_directory_drops_the_old_runs_report(tmp_path):
    from loratune.report import default_output
    from loratune.store import RunStore

    out = tmp_path / "run"
    out.mkdir()
    old = default_output(out)  # where `loratune report RUN` wrote the old run's report
    old.write_text("<html>lr 0.005, 12 steps</html>", encoding="utf-8")
    store = RunStore(out)
    store.create("train: {}\n")
    try:
        assert not old.exists()  # it described the old run; the new one has none until `loratune report`
        assert (out / "config.yaml").is_file()
    finally:
        store.close()
