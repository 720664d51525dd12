"""`diagnose RUN RUN ...`'s comparison table cut the knob values it compares at 80 columns (rich's ellipsis:
`lrsmall-b77-1e-6=1e-0…`; at 60 the value was gone): each run is a line of the cell now, folded, never cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from loratune.cli import main

FIX = Path(__file__).parents[1] / "fixtures/runs"


def _column(out: str, index: int) -> str:
    """A box table's column as one string: its cells' pieces joined, spaces dropped (a folded cell's lines)."""
    table = out[out.index("comparison"):]
    return "".join(line.split("│")[index].strip() for line in table.splitlines() if line.startswith("│"))


@pytest.mark.parametrize("width", ["80", "60"])
def test_the_comparison_keeps_each_runs_value_and_metric_whole(width, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", width)
    assert main(["diagnose", str(FIX / "lrsmall-b77-1e-6"), str(FIX / "lrbig-b77-0.1"), "--json"]) == 0
    import json

    group = json.loads(capsys.readouterr().out)["comparison"]["groups"][0]
    assert main(["diagnose", str(FIX / "lrsmall-b77-1e-6"), str(FIX / "lrbig-b77-0.1")]) == 0
    out = capsys.readouterr().out
    assert "…" not in out[out.index("comparison"):].split("noise:")[0]
    runs = _column(out, 2).replace(" ", "")
    for r in group["runs"]:
        assert f"{r['run']}={r['value']}:{r['measured']:.3f}".replace(" ", "") in runs, runs
