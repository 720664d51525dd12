"""`loratune show` on long runs: the trend sparklines fit their cells and draw the whole run (cut to the cell, a
val loss that fell and rose again showed only its fall, beside an overfit verdict about the rise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratune.commands.show import SPARK, spark


def _u(n: int) -> list[float]:
    """n points falling to a low at 40% of the run, then rising back most of the way."""
    return [2.0 - 3.2 * i / n if i / n < 0.4 else 0.72 + 1.5 * (i / n - 0.4) for i in range(1, n + 1)]


def test_a_long_u_shaped_series_drawn_in_its_width_ends_high_again():
    line = spark(_u(40), 20)
    assert len(line) == 20
    assert line[-1] in SPARK[5:]  # the late rise (back to 3/4 of the range): the last character a high block
    low = line.index(SPARK[0])
    assert 6 <= low <= 9  # the low at 40% of the run
    assert line[0] == SPARK[-1]  # the first point, drawn as itself
    assert list(line[low:]) == sorted(line[low:])  # rising from the low to the end


def test_the_first_and_last_points_are_drawn_as_themselves_not_as_bucket_means():
    # a last point far above its bucket's neighbours: a mean would draw it low
    assert spark([0.0] * 39 + [10.0], 10) == SPARK[0] * 9 + SPARK[-1]
    assert spark([10.0] + [0.0] * 39, 10) == SPARK[-1] + SPARK[0] * 9


@pytest.mark.parametrize("values", [[3, 2, 1, 2, 3], [1.0, None, 0.5, 0.2], [5.0] * 7, list(range(20))])
def test_short_series_draw_one_character_a_point_as_before(values):
    assert spark(values, 20) == spark(values)
    assert spark([3, 2, 1, 2, 3]) == "█▄▁▄█"
    assert spark([1.0, None, 0.5, 0.2]) == "█ ▃▁"


def test_gaps_stay_blank_and_a_series_with_no_values_draws_nothing():
    assert spark([None] * 30, 10) == ""
    assert spark([1.0] + [None] * 30 + [0.0], 4) == "█  ▁"


def _ushape_state(folder: Path, n: int = 4000) -> Path:
    """The Trainer's log of a 40-eval run whose val loss falls to step 1600, then rises (hunter's gen_u.py)."""
    log = []
    for s in range(50, n + 1, 50):
        log.append({"epoch": s / 400, "learning_rate": 2e-4, "loss": 2.3 * 2.718 ** (-s / 600) + 0.01, "step": s})
        if s % 100 == 0:
            f = s / n
            log.append({"epoch": s / 400, "eval_loss": 2.0 - 3.2 * f if f < 0.4 else 0.72 + 1.5 * (f - 0.4),
                        "eval_accuracy": min(0.9, 0.3 + 1.5 * f) if f < 0.4 else 0.9 - 0.3 * (f - 0.4), "step": s})
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": n, "max_steps": n, "logging_steps": 50,
                                                           "eval_steps": 100, "log_history": log}))
    return folder


@pytest.mark.parametrize("columns", [80, 60, 120])
def test_show_draws_the_late_rise_of_an_overfit_run_at_the_terminals_width(tmp_path, monkeypatch, capsys, columns):
    from loratune.cli import main

    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["show", str(_ushape_state(tmp_path / "ushape"))]) == 0
    out = capsys.readouterr().out
    assert "verdict: overfit-capacity" in out
    trend = next(line for line in out.splitlines() if line.strip().startswith("trend"))
    assert len(trend) <= columns and "…" not in trend
    _, train, val, acc = trend.split()
    assert val[-1] in SPARK[4:] and SPARK[0] in val[1:-1]  # fell to a low, then rose again
    assert train[0] == SPARK[-1] and train[-1] == SPARK[0]
    assert acc[0] == SPARK[0] and SPARK[-1] in acc


def _table_steps(out: list[str]) -> list[str]:
    """The step column of show's eval-point table (the best step marked ' *')."""
    head = out.index(next(line for line in out if line.strip().startswith("step ")))
    end = out.index(next(line for line in out[head:] if line.strip().startswith("trend")))
    return [line.split()[0] for line in out[head + 1:end]]


@pytest.mark.parametrize("n, best", [(41, 17), (200, 0), (200, 199), (200, 123), (20001, 4567), (500, None)])
def test_long_runs_show_evenly_spaced_rows_with_the_first_best_and_last(n, best):
    from loratune.commands.show import SHOW_EVAL_ROWS, _rows_shown

    steps = [float(10 * i) for i in range(n)]
    rows = _rows_shown(steps, None if best is None else steps[best])
    assert len(rows) <= SHOW_EVAL_ROWS and rows == sorted(set(rows))
    assert rows[0] == steps[0] and rows[-1] == steps[-1] and (best is None or steps[best] in rows)
    gaps = [b - a for a, b in zip(rows, rows[1:])]
    even = (steps[-1] - steps[0]) / (SHOW_EVAL_ROWS - 2)
    assert all(g <= even + 10 for g in gaps)  # no stretch of the run left out (the best only splits one gap)
    assert _rows_shown(steps[:SHOW_EVAL_ROWS], steps[3]) == steps[:SHOW_EVAL_ROWS]  # up to the cap: every point


def test_show_of_a_long_run_prints_a_capped_table_and_says_where_the_rest_are(tmp_path, monkeypatch, capsys):
    from loratune.cli import main
    from loratune.commands.show import SHOW_EVAL_ROWS

    monkeypatch.setenv("COLUMNS", "100")
    folder = _ushape_state(tmp_path / "long", n=40000)  # 400 evals, the val loss lowest at step 16,000
    assert main(["show", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = _table_steps(out)
    assert len(rows) <= SHOW_EVAL_ROWS and rows[0] == "100" and rows[-1] == "40000"
    said = (f"{len(rows)} of 400 eval points shown (evenly spaced, with the first, best and last); all in "
            f"{folder}")
    assert said.replace(" ", "") in "".join(out).replace(" ", "")  # however the console folded the path
    trend = next(line for line in out if line.strip().startswith("trend"))
    assert trend.split()[2][-1] in SPARK[4:]  # the trend still draws every point: the late rise


def test_show_of_a_run_within_the_cap_prints_every_row_and_no_note(tmp_path, capsys):
    from loratune.cli import main

    assert main(["show", str(_ushape_state(tmp_path / "ushape"))]) == 0  # 40 evals
    out = capsys.readouterr().out
    assert "eval points shown" not in out
    assert _table_steps(out.splitlines()) == [str(s) for s in range(100, 4001, 100)]


def test_a_bucket_of_values_near_the_largest_float_draws_high_not_a_nan():
    # an exploded loss (1.7e308) in a bucket: its sum overflowed to inf, the line drew NaN and show crashed
    line = spark([1.0] * 20 + [1.7e308] * 20 + [1.0] * 20, 6)
    assert line == SPARK[0] * 2 + SPARK[-1] * 2 + SPARK[0] * 2
    assert spark([-1.7e308, 1.7e308, 0.0]) == SPARK[0] + SPARK[-1] + SPARK[3]  # a span past the largest float


def test_show_of_a_run_whose_val_loss_exploded_to_near_the_largest_float(tmp_path, monkeypatch, capsys):
    from loratune.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    folder = _ushape_state(tmp_path / "exploded")
    state = json.loads((folder / "trainer_state.json").read_text())
    for e in state["log_history"]:
        if "eval_loss" in e and 1000 < e["step"] <= 3000:
            e["eval_loss"] = 1.7e308
    (folder / "trainer_state.json").write_text(json.dumps(state))
    assert main(["show", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "1.7e+308" in out  # the table's rows
    val = next(line for line in out.splitlines() if line.strip().startswith("trend")).split()[2]
    # exploded in the middle (off scale: the top character), and the U around it drawn on its own scale (the
    # explosion set the scale once, drawing the rest all as the lowest character)
    assert SPARK[-1] * 5 in val and val[0] == SPARK[-1] and SPARK[0] in val[:8] and val[-1] in SPARK[2:7]


def _five_column_run(folder: Path, n: int = 400) -> Path:
    """A loratune run of n evals with all five table columns (train loss, train-eval loss, val loss, train-eval
    macro_f1, val macro_f1): the long headers ("train-eval") wider than a narrow console's share; the best step
    early (the step column "500 *" as wide as "trend")."""
    folder.mkdir()
    with open(folder / "history.jsonl", "w") as f:
        for i in range(n + 1):
            x = i / n
            f.write(json.dumps({"step": 10 * i, "epoch": x, "examples_seen": 80 * i, "lr": 2e-4,
                                **({"train/loss": 2.3 * (1 - x) + 0.01} if i else {}),
                                "train_eval/n": 100, "train_eval/loss": 2.3 * (1 - x) + 0.01,
                                "train_eval/accuracy": 0.1 + 0.9 * x, "train_eval/macro_f1": 0.05 + 0.9 * x,
                                "val/n": 100, "val/loss": 2.3 - 1.5 * x, "val/accuracy": 0.1 + 0.8 * x,
                                "val/macro_f1": 0.85 if i == n // 8 else 0.05 + 0.8 * min(x * 8, 0.99)}) + "\n")
    (folder / "run.json").write_text(json.dumps({"status": "completed", "task": "single_label",
                                                 "labels": [f"l{i}" for i in range(10)], "steps_planned": 10 * n,
                                                 "steps_done": 10 * n, "eval_every": 10,
                                                 "config": {"train": {"metric_for_best": "val/macro_f1"}}}))
    return folder


@pytest.mark.parametrize("columns", [*range(40, 61), 80])
def test_a_five_column_runs_trend_cells_fit_a_narrow_console(tmp_path, monkeypatch, capsys, columns):
    from loratune.cli import main

    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["show", str(_five_column_run(tmp_path / "five"))]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.strip().startswith("step "))
    assert "train-eval" in out[header - 1] or "trai" in out[header - 1]  # the five columns' two-line headers
    trend = next(line for line in out if line.strip().startswith("trend"))
    assert len(trend) <= columns and "…" not in trend
    cells = trend.split()[1:]
    assert len(cells) == 5 and all(len(c) >= 2 for c in cells)
    assert [c[0] + c[-1] for c in cells] == [SPARK[-1] + SPARK[0]] * 3 + [SPARK[0] + SPARK[-1]] * 2  # whole curves


@pytest.mark.parametrize("best, kept", [({"step": 4005, "val/macro_f1": 0.9}, "the first and last"),  # off the evals
                                        (None, "the first, best and last")])  # the best eval, step 500
def test_the_row_cap_note_names_the_best_only_where_it_has_a_row(tmp_path, monkeypatch, capsys, best, kept):
    from loratune.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    folder = _five_column_run(tmp_path / "five")
    if best is not None:
        run = json.loads((folder / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps({**run, "best": best}))
    assert main(["show", str(folder)]) == 0
    out = capsys.readouterr().out
    rows = _table_steps(out.splitlines())
    assert f"{len(rows)} of 401 eval points shown (evenly spaced, with {kept}); all in" in out
    marked = [line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["*"]]
    assert marked == ([] if best else ["500"])  # the best's row, marked, only where the note names it
    assert "4005" not in rows


def test_one_loss_spike_does_not_flatten_the_trend():
    """show's trend scaled every character by one spike: 100 decaying losses with a 5000 at the 51st drew all '▁' but
    one '█' (review of the integrated branch), while the report draws that point off scale. A loss's off-scale values
    (report.charts.offscale_points) are in no mean and set no scale: the decay shows, the spike is the top character."""
    import math

    values = [2.0 * math.exp(-i / 30) + 0.3 for i in range(100)]
    values[50] = 5000.0
    line = spark(values, 22, offscale=True)
    spike = 50 * 22 // 100
    assert len(line) == 22 and line[spike] == SPARK[-1] and line[0] == SPARK[-1] and line[-1] == SPARK[0]
    rest = line[:spike] + line[spike + 1:]
    assert list(rest) == sorted(rest, reverse=True) and len(set(rest)) >= 6  # the decay, drawn over the ramp
    assert spark(values, 22) == SPARK[0] * spike + SPARK[-1] + SPARK[0] * (21 - spike)  # not a loss: as it was
    assert spark([2.0, 1.0, 5000.0, 0.5], offscale=True) == SPARK[-1] + SPARK[2] + SPARK[-1] + SPARK[0]


def test_the_overflow_safe_mean_is_one_helper():
    """The overflow-safe mean was written three ways (show.spark, charts.thin_line, history_io._finite_mean): one,
    features.safe_mean, finite at the largest floats and within the values' range."""
    from loratune.features import safe_mean

    assert safe_mean([1.7e308] * 3) == 1.7e308 and safe_mean([0.1] * 3) == 0.1 and safe_mean([1.0, 2.0]) == 1.5
