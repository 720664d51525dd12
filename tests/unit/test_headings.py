"""A run's heading in `diagnose RUN RUN`, `show RUN` and `show STUDY` is a rich rule, which cut its title at the
console's width: two runs ...-seed42 and ...-seed43 with long names got the same heading. The name is whole now
(on its own line under a bare rule when it does not fit one)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from rich.console import Console

from loratune.cli import main
from loratune.commands._common import heading

FIX = Path(__file__).parents[1] / "fixtures/runs"
LONG = "minilm-lora-r16-alpha32-lr2e-4-maxlen64-warmup0.1-cosine-dropout0.05-wd0.01-seed4"


def test_diagnose_and_show_print_each_long_run_name_whole(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    runs = [tmp_path / f"{LONG}{s}" for s in (2, 3)]
    for run in runs:
        shutil.copytree(FIX / "healthy-b77-s1", run)
    assert main(["diagnose", *map(str, runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for run in runs:
        assert run.name in lines  # a line of its own, whole
        assert lines[lines.index(run.name) + 1].startswith("loratune, ")  # the details below it
    assert main(["show", str(runs[0])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith(runs[0].name) for line in out[:3])


def test_heading_keeps_a_rule_where_the_title_fits():
    buf = io.StringIO()
    con = Console(file=buf, width=40)
    heading(con, "[bold]short[/]", "[dim]a detail[/]")
    heading(con, "[bold]short[/]", "[dim]a much longer detail that does not fit[/]")
    heading(con, "x" * 50)
    lines = buf.getvalue().splitlines()
    assert "short  a detail" in lines[0] and lines[0].startswith("─")
    assert "short" in lines[1] and lines[2] == "a much longer detail that does not fit"
    assert set(lines[3]) == {"─"} and lines[4] == "x" * 50
