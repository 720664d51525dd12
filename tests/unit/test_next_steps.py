"""train's "next:" commands are to paste into a shell: printed to a file or a pipe with a long output_dir, rich broke
each at 80 columns (`loratune diagnose ` and the path on the next line). Whole on their lines when piped now, as a
listing's lines are (commands._common.piped)."""

from __future__ import annotations

import shutil
from pathlib import Path

from loratune.commands.train import print_next_steps
from loratune.listing import console, shell_path

FIX = Path(__file__).parents[1] / "fixtures/runs"


def test_the_next_commands_are_whole_lines_when_piped(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    run = tmp_path / "experiments" / "banking77-intents" / "minilm-lora-r16-alpha32-lr2e-4-seed42-maxlen64"
    shutil.copytree(FIX / "healthy-b77-s1", run)
    print_next_steps(console(), str(run), "completed")
    lines = capsys.readouterr().out.splitlines()
    for command in ("diagnose", "report"):
        line = next(line for line in lines if f"loratune {command} " in line)
        assert line.split()[:3] == ["loratune", command, shell_path(run)], line
