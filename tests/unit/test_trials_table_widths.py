"""The trials tables (tune's summary, show STUDY's) at a narrow width: the numbers are never folded, the verdict is
whole where the width allows, the name and phase fold (_common.fill_table). A whole verdict at any cost folded the
score `0.355` as `0.35` over `5` at 80 columns, and at 60 shrank #, name and score to nothing."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table

from loratune.commands._common import fill_table
from loratune.commands.tune import print_summary

LONG = "confusable-classes-unresolved"  # the longest rule id


def _summary() -> dict:
    trial = {"name": "phase1-lr0.01-r4-alpha8", "phase": "phase1-lr-grid", "status": "completed",
             "objective_value": 0.355, "val_macro_f1": 0.355, "examples": 64, "wall_s": 2.0,
             "mean_step_s": 0.043}
    return {"strategy": "protocol", "objective": None,
            "trials": [{**trial, "trial": 0, "verdict": LONG}, {**trial, "trial": 1, "verdict": "lr-too-small",
                                                                 "objective_value": 0.612}],
            "budget": {"spent": {"wall_s": 1.0, "examples": 1, "trials": 2}, "budget": {"text": "2trials"}}}


def _lines(render, width: int) -> list[str]:
    buf = io.StringIO()
    render(Console(file=buf, width=width))
    return buf.getvalue().splitlines()


def _show_like(con) -> None:  # show STUDY's table: no box, no edge padding
    t = Table(header_style="bold", box=None, pad_edge=False)
    rows = [("10", "phase1-lr0.01-r4-alpha8", "phase1-lr-grid", "completed", "0.355", "0.612", "12,800", "1234s",
             LONG), ("11", "phase1-lr0.02", "phase1-lr-grid", "completed", "0.612", "0.612", "12,800", "99s",
                     "lr-too-small")]
    fill_table(con, t, [("#", "number", "right"), ("name", "text", "left"), ("phase", "text", "left"),
                        ("status", "id", "left"), ("val macro-F1", "number", "right"),
                        ("best so far", "number", "right"), ("examples", "number", "right"),
                        ("wall", "number", "right"), ("verdict", "id", "left")], rows)
    con.print(t)


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize("render", [lambda con: print_summary(con, _summary()), _show_like], ids=["tune", "show"])
def test_the_numbers_stay_whole_and_the_verdict_too_where_it_fits(render, width):
    lines = _lines(render, width)
    table = "\n".join(lines)
    numbers = ("0.355", "0.612", "12,800", "1234s", "10", "11") if render is _show_like else ("0.355", "0.612",
                                                                                             "0.043", "64")
    for number in numbers:
        assert any(number in line for line in lines), table  # whole on one line
    assert all(len(line) <= width for line in lines), table
    if width == 80:
        assert any(LONG in line for line in lines), table  # the verdict whole
        assert any("lr-too-small" in line for line in lines), table
