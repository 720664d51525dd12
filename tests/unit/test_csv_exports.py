"""CSV exports of trackers and training libraries read as their writers meant them (a hunt of wave 17): Keras'
History / CSVLogger, Lightning's CSVLogger, an MLflow or W&B table of runs, W&B chart panels and history."""

from __future__ import annotations

import math

import pytest

from loratune.cli import main
from loratune.history_io import load_run

# a Keras CSVLogger of an overfitting run: train accuracy climbs to 0.999 while val accuracy falls from 0.85
TRAIN_ACC = [0.80, 0.90, 0.95, 0.97, 0.985, 0.99, 0.994, 0.996, 0.998, 0.999]
TRAIN_LOSS = [0.60, 0.30, 0.15, 0.09, 0.05, 0.03, 0.02, 0.012, 0.008, 0.005]
VAL_ACC = [0.85, 0.845, 0.835, 0.83, 0.82, 0.81, 0.80, 0.795, 0.785, 0.78]


def _write(path, header: str, rows) -> str:
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return str(path)


@pytest.mark.parametrize("header, val_col", [
    ("epoch,accuracy,loss,val_accuracy", "val_accuracy"),  # Keras CSVLogger (keys sorted)
    ("epoch,acc,loss,val_acc", "val_acc"),  # older Keras, hand-made tables
    ("epoch,accuracy,loss,eval_accuracy", "eval_accuracy"),
])
def test_a_bare_accuracy_beside_a_val_accuracy_is_the_train_accuracy(tmp_path, header, val_col):
    """`accuracy` was aliased to val/accuracy and the first column won: the train accuracy read as the validation
    score (best val/accuracy 0.999, verdict healthy) and `val_accuracy` was ignored."""
    h = load_run(_write(tmp_path / "keras.csv", header, zip(range(10), TRAIN_ACC, TRAIN_LOSS, VAL_ACC)))
    assert [p["val/accuracy"] for p in h.points] == VAL_ACC
    assert [p["train_eval/accuracy"] for p in h.points] == TRAIN_ACC
    assert not any(n.startswith("CSV columns ignored") for n in h.notes)
    assert f"{val_col!r} -> val/accuracy" in h.notes[0]


def test_a_bare_metric_in_a_csv_with_no_val_prefixed_metric_stays_the_validation_score(tmp_path):
    # a hand-made table of eval scores: no val_ / eval_ metric column (a val_loss is none)
    h = load_run(_write(tmp_path / "evals.csv", "step,loss,val_loss,accuracy,f1",
                        [(10, 0.9, 1.0, 0.5, 0.4), (20, 0.5, 0.8, 0.7, 0.6)]))
    assert [p["val/macro_f1"] for p in h.points] == [0.4, 0.6]
    assert [p["val/accuracy"] for p in h.points] == [0.5, 0.7]


@pytest.mark.parametrize("header", ["epoch,accuracy,f1,loss,val_accuracy,val_loss",  # Keras, an F1 metric unvalidated
                                    "epoch,accuracy,f1,loss,eval_accuracy,eval_loss"])
def test_a_bare_metric_beside_another_metrics_val_column_is_a_train_score(tmp_path, header):
    """A bare `f1` beside `val_accuracy` (no `val_f1`) was read as the val macro-F1, the headline, while `accuracy`
    was read as the train accuracy: one file's naming split two ways (best val/macro_f1 0.965, the train F1)."""
    rows = [(e, TRAIN_ACC[e], TRAIN_ACC[e] - 0.02, TRAIN_LOSS[e], VAL_ACC[e], 0.4 + e / 20) for e in range(5)]
    h = load_run(_write(tmp_path / "keras.csv", header, rows))
    assert not any("val/macro_f1" in p for p in h.points)
    assert [p["train_eval/macro_f1"] for p in h.points] == [r[2] for r in rows]
    assert [p["train_eval/accuracy"] for p in h.points] == TRAIN_ACC[:5]
    assert [p["val/accuracy"] for p in h.points] == VAL_ACC[:5]


def _lightning(path, header: str, train_loss_cols: int = 2) -> str:
    """A Lightning CSVLogger metrics.csv (its columns sorted, as it writes them) of a run whose train loss explodes
    from step 100 on: 5 train_loss_step rows an epoch, then the val row and the train_loss_epoch row at its end."""
    cols = header.split(",")
    rows = []
    for e in range(6):
        losses = []
        for k in range(9, 50, 10):
            st = e * 50 + k
            tl = 1.6 * math.exp(-st / 60) + 0.2 if st < 100 else 0.45 * math.exp((st - 100) / 40)
            losses.append(tl)
            rows.append({"epoch": e, "step": st, "train_loss_step": tl, "val_loss_step": 9.0})
        rows.append({"epoch": e, "step": e * 50 + 49, "val_loss": [1.0, 0.7, 1.1, 1.9, 3.2, 5.5][e],
                     "val_acc": [0.5, 0.7, 0.55, 0.3, 0.15, 0.1][e]})
        rows.append({"epoch": e, "step": e * 50 + 49, "train_loss_epoch": sum(losses) / 5})
    for r in rows:
        r["val_loss_epoch"], r["val_acc_epoch"] = r.get("val_loss"), r.get("val_acc")
    path.write_text(header + "\n" + "\n".join(",".join("" if r.get(c) is None else str(r[c]) for c in cols)
                                              for r in rows) + "\n")
    return str(path)


@pytest.mark.parametrize("header", ["epoch,step,train_loss_epoch,train_loss_step,val_acc,val_loss",  # as it writes
                                    "epoch,step,train_loss_step,val_loss,val_acc,train_loss_epoch"])
def test_lightnings_train_loss_step_column_is_the_train_loss(tmp_path, header, capsys):
    """`train_loss_step` / `train_loss_epoch` (self.log("train_loss", on_step=True, on_epoch=True)) were ignored: a
    train loss climbing to 42 read overfit-capacity from the val curve alone (its `train_loss` column: diverged)."""
    from loratune import api

    path = _lightning(tmp_path / "metrics.csv", header)
    h = load_run(path)
    assert "'train_loss_step' -> train/loss" in h.notes[0] and "train_loss_epoch'" not in h.notes[0]
    assert [p["step"] for p in h.points] == [49, 99, 149, 199, 249, 299]
    assert h.points[-1]["train/loss"] == pytest.approx(0.45 * sum(math.exp((st - 100) / 40)
                                                                  for st in range(259, 300, 10)) / 5)
    assert api.diagnose(path).verdict == "diverged"


def test_lightnings_epoch_columns_are_read_where_no_step_column_gives_the_curve(tmp_path):
    # the train loss's epoch means where no step values were logged; a val value's epoch means, never its _step
    # column (each val batch's value)
    h = load_run(_lightning(tmp_path / "m.csv", "epoch,step,train_loss_epoch,val_acc_epoch,val_loss_epoch,"
                                                "val_loss_step"))
    assert h.notes[0] == ("CSV columns mapped: 'epoch' -> epoch, 'step' -> step, 'train_loss_epoch' -> train/loss, "
                          "'val_acc_epoch' -> val/accuracy, 'val_loss_epoch' -> val/loss")
    assert [p["val/loss"] for p in h.points] == [1.0, 0.7, 1.1, 1.9, 3.2, 5.5]
    assert [p["val/accuracy"] for p in h.points] == [0.5, 0.7, 0.55, 0.3, 0.15, 0.1]
    assert h.points[0]["train/loss"] == pytest.approx(sum(1.6 * math.exp(-st / 60) + 0.2 for st in range(9, 50, 10)) / 5)


MLFLOW_RUNS = """Start Time,Duration,Run ID,Name,Source Type,Source Name,User,Status,learning_rate,r,eval_loss,eval_accuracy,train_loss,epoch
2024-05-01 10:00:00,10.0min,abc0,run-0,LOCAL,train.py,me,FINISHED,0.0001,8,0.5,0.81,0.4,5
2024-05-02 10:00:00,10.0min,abc1,run-1,LOCAL,train.py,me,FINISHED,0.0003,8,0.45,0.84,0.2,5
2024-05-03 10:00:00,10.0min,abc2,run-2,LOCAL,train.py,me,FINISHED,0.001,8,0.9,0.6,1.1,5
2024-05-04 10:00:00,10.0min,abc3,run-3,LOCAL,train.py,me,FINISHED,0.003,8,2.3,0.1,2.5,5
"""
WANDB_RUNS = """Name,State,Notes,User,Tags,Created,Runtime,Sweep,learning_rate,lora_r,eval/loss,eval/accuracy,train/loss,train/global_step,train/epoch
run-0,finished,-,me,,2024-05-01T10:00:00.000Z,600,,0.0001,8,0.5,0.81,0.4,500,5
run-1,finished,-,me,,2024-05-02T10:00:00.000Z,600,,0.0003,8,0.45,0.84,0.2,500,5
run-2,finished,-,me,,2024-05-03T10:00:00.000Z,600,,0.001,8,0.9,0.6,1.1,500,5
"""


@pytest.mark.parametrize("text, n, columns", [(MLFLOW_RUNS, 4, "'Run ID' and 'Status'"),
                                              (WANDB_RUNS, 3, "'Name' and 'State'")])
def test_a_table_of_runs_is_refused_as_no_runs_history(tmp_path, capsys, text, n, columns):
    """MLflow's "Download CSV" of an experiment's runs (one row a run) read as one run's curve: 'diverged, confidence
    0.95' from 4 runs' summaries, the last at a large learning rate."""
    (tmp_path / "runs.csv").write_text(text)
    for verb in ("diagnose", "show"):
        assert main([verb, str(tmp_path / "runs.csv")]) == 2
        err = capsys.readouterr().err
        assert f"is a table of {n} run(s), one row each (columns {columns}), not one run's history" in err
        assert "export one run's metric history" in err and "Traceback" not in err


def test_one_runs_history_with_a_run_name_and_state_column_is_read(tmp_path):
    # rows of one run (its name and state on each): no table of runs
    (tmp_path / "one.csv").write_text("name,state,step,train_loss,val_loss\nrun-0,running,10,2.0,1.9\n"
                                      "run-0,running,20,1.5,1.6\nrun-0,finished,30,1.2,1.4\n")
    assert [p["val/loss"] for p in load_run(tmp_path / "one.csv").points] == [1.9, 1.6, 1.4]


def test_kerass_epoch_0_row_with_a_train_loss_came_after_the_first_epoch(tmp_path):
    """Keras' CSVLogger counts epochs from 0 and writes a row at each epoch's end; the epoch-0 row was read as the
    untrained baseline (step 0), where the features drop a train loss: `0,0.60,0.40` lost its train loss, and the same
    numbers counted from 1 read otherwise (train loss 0.300 -> 0.100 against 0.600 -> 0.100)."""
    from loratune.features import compute_features

    rows = ["0.60,0.40", "0.30,0.47", "0.10,0.58"]
    readings = {}
    for first in (0, 1):
        h = load_run(_write(tmp_path / f"e{first}.csv", "epoch,loss,val_loss",
                            ([first + i, r] for i, r in enumerate(rows))))
        assert [p["step"] for p in h.points] == [1, 2, 3]
        assert any("row numbers (from 1) used as steps" in n for n in h.notes)
        readings[first] = compute_features(h.points, h.meta, h.config).values
        assert readings[first]["train_loss_start"] == 0.6 and readings[first]["train_loss_final"] == 0.1
    # the same reading, but for the epoch count: the file's epoch column as written (0-based: the last row says 2)
    assert {k: v for k, v in readings[0].items() if k != "epochs"} == {k: v for k, v in readings[1].items()
                                                                        if k != "epochs"}


def test_an_epoch_0_row_of_val_scores_only_stays_the_baseline_before_training(tmp_path):
    h = load_run(_write(tmp_path / "h.csv", "epoch,train_loss,val_loss,val_acc",
                        [(0, "", 1.6, 0.2), (1, 0.6, 0.4, 0.85), (2, 0.3, 0.42, 0.845)]))
    assert [p["step"] for p in h.points] == [0, 1, 2]
    assert "train/loss" not in h.points[0] and any("row numbers (from 0)" in n for n in h.notes)


def test_a_wandb_chart_export_splits_a_run_name_holding_a_dash_at_its_last_dash(tmp_path):
    """"bert-base - lr 2e-4 - eval/loss" was split at its first " - ": metric "lr 2e-4 - eval/loss", no loss column,
    the file refused."""
    runs = ("bert-base - lr 2e-4", "bert-base - lr 1e-4")
    header = ",".join(["Step", *(f'"{r} - eval/loss{band}"' for r in runs for band in ("", "__MIN", "__MAX"))])
    h = load_run(_write(tmp_path / "panel.csv", header, [(50, *[0.9] * 3, *[1.0] * 3), (100, *[0.6] * 3, *[0.8] * 3),
                                                        (150, *[0.7] * 3, *[0.75] * 3)]))
    assert [p["val/loss"] for p in h.points] == [0.9, 0.6, 0.7]
    assert "'bert-base - lr 2e-4 - eval/loss' -> val/loss" in h.notes[0]
    assert any("a chart export of 2 runs ('bert-base - lr 2e-4', 'bert-base - lr 1e-4')" in n for n in h.notes)


def test_the_given_again_note_counts_only_the_columns_read(tmp_path):
    """A W&B history (`_step` W&B's own row counter, `train/global_step` the Trainer's step): each step's train and
    eval rows differ in `_step`, unread, and were counted as values given again (11 in a 10-eval export)."""
    rows = []
    for e in range(1, 4):
        rows += [(2 * e - 2, e * 50, 2.0 / e, ""), (2 * e - 1, e * 50, "", 1.5 / e)]
    header = "_step,train/global_step,train/loss,eval/loss"
    h = load_run(_write(tmp_path / "history.csv", header, rows))
    assert [p["step"] for p in h.points] == [50, 100, 150]
    assert any("'_step'" in n for n in h.notes if n.startswith("CSV columns ignored"))
    assert not any("given again" in n for n in h.notes)
    # a column read given again at a step still counts: the second eval/loss at step 150 (and the rows out of order)
    h = load_run(_write(tmp_path / "again.csv", header, [*rows, (6, 150, "", 9.0), (7, 100, "", 1.5 / 2)]))
    assert h.points[-1]["val/loss"] == 0.5
    assert any(n.startswith("1 value(s) given again at a step") for n in h.notes)


@pytest.mark.parametrize("text, said, fix", [
    ("key,value,timestamp,step\ntrain_loss,1.47,1714550000001,50\neval_loss,1.00,1714550000001,50\n",  # MLflow
     "is in long format, one row per logged value (the metric's name in 'key', its value in 'value')",
     "df.pivot_table(index='step', columns='key', values='value')"),
    ("metricName,metricValue,timestamp,step,epoch\nloss,1.47,1714550000001,50,1\nval_loss,1.0,1714550000001,50,1\n",
     "is in long format, one row per logged value (the metric's name in 'metricName', its value in 'metricValue')",
     "columns='metricName', values='metricValue'"),  # Comet
    (",step,value,timestamp\n0,50,1.47,2024-05-01 10:01:00\n1,100,0.94,2024-05-01 10:02:00\n",  # Neptune
     "holds one unnamed series (column 'value'): no column says which metric it is", "rename 'value' to the metric"),
])
def test_a_long_format_export_is_refused_saying_so_and_how_to_pivot_it(tmp_path, capsys, text, said, fix):
    (tmp_path / "long.csv").write_text(text)
    assert main(["diagnose", str(tmp_path / "long.csv")]) == 2
    err = capsys.readouterr().err
    assert said in err and fix in err and "Traceback" not in err


@pytest.mark.parametrize("column, key", [("lora-r8 - val - loss", "val/loss"),  # a metric name holding a " - "
                                         ("lora-r8 - eval - loss", "val/loss"),
                                         ("bert-base - lr 2e-4 - eval/loss", "val/loss"),  # a run name holding one
                                         ("bert-base - lr 2e-4 - train/loss", "train/loss")])
def test_a_wandb_chart_column_is_split_where_its_metric_is_a_known_column(tmp_path, column, key):
    """Split at the last " - ", `lora-r8 - val - loss` read run 'lora-r8 - val', metric 'loss': its val curve read as
    the train loss (verdict inconclusive where the val curve said overfit-capacity)."""
    header = ",".join(["Step", *(f'"{column}{band}"' for band in ("", "__MIN", "__MAX"))])
    h = load_run(_write(tmp_path / "panel.csv", header, [(50, *[1.0] * 3), (100, *[0.7] * 3), (150, *[0.9] * 3)]))
    assert [p[key] for p in h.points] == [1.0, 0.7, 0.9]
    assert f"{column!r} -> {key}" in h.notes[0]


HISTORY = [(50, 2.0, 1.5), (100, 1.0, 0.77), (150, 0.667, 0.54), (200, 0.5, 0.435)]


@pytest.mark.parametrize("header, cells", [
    ("id,step,train_loss,val_loss,state", lambda k, row: (k, *row, k % 3)),  # a numeric `state` metric, a row id
    ("name,status,step,train_loss,val_loss", lambda k, row: (f"checkpoint-{row[0]}", "saved", *row)),
    ("name,step,train_loss,val_loss,state", lambda k, row: ("run-a", *row, "finished")),  # one run's name each row
])
def test_a_history_with_an_id_and_a_state_column_is_no_table_of_runs(tmp_path, header, cells):
    """A runs table was any CSV with a run-identity column of distinct rows beside a state column: a history with a
    row id and a numeric `state`, or checkpoint names and a `saved` status, was refused as 'a table of runs'."""
    h = load_run(_write(tmp_path / "h.csv", header, [cells(k, row) for k, row in enumerate(HISTORY)]))
    assert [p["step"] for p in h.points] == [50, 100, 150, 200]
    assert [p["val/loss"] for p in h.points] == [1.5, 0.77, 0.54, 0.435]


@pytest.mark.parametrize("names", [("lora-sweep",) * 3, ("lora-sweep", "lora-sweep", "lora-other"),
                                   ("run-0", "", "run-2")])  # a run with no name
def test_a_wandb_runs_table_with_a_name_given_to_several_runs_is_refused(tmp_path, capsys, names):
    # a sweep's runs share a name: a row is still a run (its train/global_step the same 500 in each)
    lines = WANDB_RUNS.splitlines()
    lines[1:] = [name + line[line.index(","):] for name, line in zip(names, lines[1:])]
    (tmp_path / "runs.csv").write_text("\n".join(lines) + "\n")
    assert main(["diagnose", str(tmp_path / "runs.csv")]) == 2
    err = capsys.readouterr().err
    assert "is a table of 3 run(s), one row each (columns 'Name' and 'State'), not one run's history" in err


def test_stacked_histories_of_several_runs_are_refused_naming_how_to_split_them(tmp_path, capsys):
    """Two runs' histories one after the other (a run column beside the step) were read as one run, each step's
    values of the second run dropped as 'given again'."""
    rows = [(run, "finished", *row) for run in ("r0", "r1") for row in HISTORY]
    path = _write(tmp_path / "stacked.csv", "run,state,step,train_loss,val_loss", rows)
    assert main(["diagnose", path]) == 2
    err = capsys.readouterr().err
    assert ("holds the histories of 2 runs ('r0', 'r1'), one after another (columns 'run' and 'state', 'step' "
            "going up within each run), not one run's history") in err
    assert ".groupby('run')" in err and "Traceback" not in err


def _column_set(text: str, column: str, values) -> str:
    """`text`, a CSV, with its `column` given `values` down the rows."""
    lines = text.splitlines()
    at = lines[0].split(",").index(column)
    rows = [line.split(",") for line in lines[1:]]
    for row, v in zip(rows, values):
        row[at] = str(v)
    return "\n".join([lines[0], *map(",".join, rows)]) + "\n"


@pytest.mark.parametrize("text, n, columns", [
    # a sweep's runs sorted by their summary train/global_step, going up down the table
    (_column_set(WANDB_RUNS, "train/global_step", (500, 1000, 1500)), 3, "'Name' and 'State'"),
    (_column_set(MLFLOW_RUNS, "epoch", (3, 3, 3, 5)), 4, "'Run ID' and 'Status'"),
    ("run_id,step,train_loss,val_loss,status\n" + "".join(f"row{k},{s},{t},{v},running\n"
                                                           for k, (s, t, v) in enumerate(HISTORY)), 4,
     "'run_id' and 'status'"),  # a run id on every row, each a run state: rows are runs, whatever the steps
])
def test_a_runs_table_whose_summary_steps_go_up_down_the_table_is_still_a_table(tmp_path, capsys, text, n, columns):
    """A runs table whose runs' summary step or epoch happened to rise down the table (a sweep sorted by
    train/global_step 500/1000/1500, MLflow's epoch 3,3,3,5 in its newest-first order) was read as one run's
    history, its runs as steps."""
    (tmp_path / "runs.csv").write_text(text)
    assert main(["diagnose", str(tmp_path / "runs.csv")]) == 2
    err = capsys.readouterr().err
    assert f"is a table of {n} run(s), one row each (columns {columns}), not one run's history" in err


@pytest.mark.parametrize("column", ["run", "run_id", "name", "id"])
def test_stacked_histories_without_a_state_column_are_refused(tmp_path, capsys, column):
    """pandas.concat of two runs' histories (`run,step,train_loss,val_loss`, each run's steps from 50) was read as
    one run: the second run's 8 values dropped as 'given again at a step, the first row's value kept'."""
    rows = [(run, *row) for run in ("lora-a", "lora-b") for row in HISTORY]
    path = _write(tmp_path / "stacked.csv", f"{column},step,train_loss,val_loss", rows)
    assert main(["diagnose", path]) == 2
    err = capsys.readouterr().err
    assert (f"holds the histories of 2 runs ('lora-a', 'lora-b'), one after another (column {column!r}, 'step' "
            "going up within each run), not one run's history") in err
    assert f".groupby({column!r})" in err and "Traceback" not in err


@pytest.mark.parametrize("names", [("lora-a",) * 8,  # one run's name on each row
                                   ("warmup",) * 2 + ("main",) * 6,  # a name changing, the steps going on
                                   ("lora-a", "lora-b") * 4])  # names taking turns: no blocks of their own
def test_a_history_with_a_name_column_and_no_state_is_read(tmp_path, names):
    rows = [(name, *row) for name, row in zip(names, HISTORY + [(s + 200, t / 2, v / 2) for s, t, v in HISTORY])]
    h = load_run(_write(tmp_path / "h.csv", "name,step,train_loss,val_loss", rows))
    assert [p["step"] for p in h.points] == [50, 100, 150, 200, 250, 300, 350, 400]
    assert [p["val/loss"] for p in h.points][:4] == [1.5, 0.77, 0.54, 0.435]
    assert not any("given again" in n for n in h.notes)


@pytest.mark.parametrize("epochs, steps", [((0, 0.25, 0.5, 0.75, 1.0), [0, 1, 2, 3, 4]),  # the Trainer's progress
                                           ((0, 1, 2, 3, 4), [1, 2, 3, 4, 5]),  # Keras' epochs from 0
                                           ((0,), [1])])  # one row: logged after steps
def test_an_epoch_0_row_with_a_train_loss_is_the_baseline_only_in_a_fractional_epoch_column(tmp_path, epochs, steps):
    """Keras' rule (an epoch-0 row with a train loss came after the first epoch) was taken for every epoch column: the
    HF Trainer's fractional epochs (0, 0.5, 1.0: progress, its epoch 0 a pre-training evaluation and loss) lost their
    baseline, the pre-training loss read as the first epoch's."""
    losses = (2.3, 1.6, 1.5, 1.2, 1.0)
    h = load_run(_write(tmp_path / "e.csv", "epoch,train_loss,val_loss", zip(epochs, losses, (2.2, "", 1.6, "", 1.2))))
    assert [p["step"] for p in h.points if "val/loss" in p] == steps[::2]
    assert any(f"row numbers (from {steps[0]}) used as steps" in n for n in h.notes)
    from loratune.features import compute_features

    values = compute_features(h.points, h.meta, h.config).values  # a loss at step 0 is the untrained model's
    assert values["train_loss_start"] == (losses[1] if steps[0] == 0 else losses[0])


@pytest.mark.parametrize("header", ["epoch,step,train_loss_step,val_loss_epoch,val_f1_epoch",  # Lightning
                                    "epoch,f1_score,loss,val_f1_score,val_loss"])  # Keras 3's F1Score
def test_every_f1_column_without_macro_says_it_was_taken_as_macro_f1(tmp_path, header):
    """`val_f1_epoch` was read as the val macro-F1 without the note (the note's own list of F1 names missed it), and
    Keras 3's `f1_score` / `val_f1_score` were ignored."""
    rows = [[e, *([e * 50 + 49] if "step" in header else []), 0.9 - e / 10, 0.5 + e / 10, 1.0 - e / 20, 0.4 + e / 50]
            for e in range(4)]
    rows = [r[:len(header.split(","))] for r in rows]
    h = load_run(_write(tmp_path / "m.csv", header, rows))
    val_f1 = header.split(",").index("val_f1_epoch" if "val_f1_epoch" in header else "val_f1_score")
    assert [p["val/macro_f1"] for p in h.points] == [r[val_f1] for r in rows]
    assert "an F1 column without 'macro' was taken as macro-F1" in h.notes
    if "f1_score" in header:  # the bare one the train score (a val_ metric beside it)
        assert [p["train_eval/macro_f1"] for p in h.points] == [r[1] for r in rows]


@pytest.mark.parametrize("n_step_values, why", [(0, "no value"), (1, "one value: one logged step, no curve")])
def test_a_lightning_step_column_left_out_says_why(tmp_path, n_step_values, why):
    # train_loss_step with 0 or 1 values beside a train_loss_epoch curve: no run's summary, a sparse per-step log
    path = _lightning(tmp_path / "m.csv", "epoch,step,train_loss_epoch,train_loss_step,val_acc,val_loss")
    lines = [line.split(",") for line in (tmp_path / "m.csv").read_text().splitlines()]
    for cells in [cells for cells in lines[1:] if cells[3]][n_step_values:]:
        cells[3] = ""  # train_loss_step's values but the first n_step_values
    (tmp_path / "m.csv").write_text("\n".join(map(",".join, lines)) + "\n")
    h = load_run(path)
    assert any(n.endswith(f"'train_loss_step' left out ({why})") for n in h.notes)
    assert not any("a run's summary" in n for n in h.notes)


def test_a_long_format_export_without_a_step_column_says_to_export_its_step(tmp_path, capsys):
    (tmp_path / "long.csv").write_text("key,value,timestamp\ntrain_loss,1.4,1\neval_loss,1.0,1\n")
    assert main(["diagnose", str(tmp_path / "long.csv")]) == 2
    err = capsys.readouterr().err
    assert "(the metric's name in 'key', its value in 'value', no step column)" in err
    assert "export it again with each value's step" in err and "Traceback" not in err


@pytest.mark.parametrize("column", ["run", "run_id", "name", "id"])
def test_two_runs_taking_turns_row_by_row_are_refused(tmp_path, capsys, column):
    """Two runs interleaved (`run,step,...` rows a,b,a,b: a W&B or hand-made export of two runs merged on step) were
    read as one run: the step never falls along the file (50,50,100,100...), so it passed for one history, and each
    step's second run's values were dropped as 'given again at a step'. Now refused as stacked histories are (exit 2),
    naming the column to split by."""
    other = [(s, t * 3, v * 3) for s, t, v in HISTORY]
    rows = [(run, *row) for pair in zip(HISTORY, other) for run, row in zip(("lora-a", "lora-b"), pair)]
    path = _write(tmp_path / "turns.csv", f"{column},step,train_loss,val_loss", rows)
    assert main(["diagnose", path]) == 2
    err = capsys.readouterr().err
    assert (f"holds the histories of 2 runs ('lora-a', 'lora-b'), taking turns row by row (column {column!r}, 'step' "
            "going up within each run), not one run's history") in err
    assert f".groupby({column!r})" in err and "Traceback" not in err


@pytest.mark.parametrize("text", [
    # one run's train and eval rows at the same steps, named by what they are (different columns filled)
    "name,step,train_loss,val_loss\n" + "".join(f"train,{s},{t},\neval,{s},,{v}\n" for s, t, v in HISTORY),
    # names taking turns, each step once (test_a_history_with_a_name_column_and_no_state_is_read)
    "name,step,train_loss,val_loss\n" + "".join(f"{'ab'[k % 2]},{s},{t},{v}\n" for k, (s, t, v) in enumerate(HISTORY)),
])
def test_rows_taking_turns_that_are_one_runs_history_are_read(tmp_path, text):
    (tmp_path / "h.csv").write_text(text)
    h = load_run(str(tmp_path / "h.csv"))
    assert [p["step"] for p in h.points] == [50, 100, 150, 200]
    assert [p["val/loss"] for p in h.points] == [1.5, 0.77, 0.54, 0.435]


def test_a_long_format_export_with_a_name_column_is_still_said_to_be_long_format(tmp_path, capsys):
    # step,name,value: the name is a metric's, its values sharing steps: no runs taking turns
    text = "step,name,value\n" + "".join(f"{s},train_loss,{t}\n{s},val_loss,{v}\n" for s, t, v in HISTORY)
    (tmp_path / "long.csv").write_text(text)
    assert main(["diagnose", str(tmp_path / "long.csv")]) == 2
    assert "is in long format, one row per logged value" in capsys.readouterr().err


@pytest.mark.parametrize("extra, cell", [("lr", "0.0001"), ("val_accuracy", "0.61"), ("gpu_mem_gb", "21.5")])
def test_two_runs_taking_turns_where_one_fills_a_column_the_other_does_not_are_refused(tmp_path, capsys, extra, cell):
    """Rows counted as one run's train and eval rows when their filled columns differed at all: run b logging one
    column run a never does (`run,step,train_loss,val_loss,lr` with a's lr blank) was read as one run, exit 0, all 8
    of b's values dropped as 'given again at a step'. Two runs' rows at one step that fill one loss or score column
    are two runs, whatever else each fills."""
    rows = [(run, s, t * k, v * k, "" if run == "a" else cell) for s, t, v in HISTORY for k, run in ((1, "a"), (2, "b"))]
    path = _write(tmp_path / "extra.csv", f"run,step,train_loss,val_loss,{extra}", rows)
    assert main(["diagnose", path]) == 2
    err = capsys.readouterr().err
    assert ("holds the histories of 2 runs ('a', 'b'), taking turns row by row (column 'run', 'step' going up within "
            "each run)") in err and "Traceback" not in err


def test_one_runs_rows_named_apart_that_share_only_a_clock_or_the_lr_are_one_run(tmp_path):
    # a run's train row and eval row at a step, named apart, both carrying W&B's own `_runtime` / `_timestamp` and the
    # learning rate: no loss or score column filled by both, one run's history
    text = "run,step,_runtime,_timestamp,lr,train_loss,val_loss\n" + "".join(
        f"fit,{s},{s / 10},{1700000000 + s},0.0001,{t},\nscore,{s},{s / 10 + 1},{1700000001 + s},0.0001,,{v}\n"
        for s, t, v in HISTORY)
    (tmp_path / "h.csv").write_text(text)
    h = load_run(str(tmp_path / "h.csv"))
    assert [p["step"] for p in h.points] == [50, 100, 150, 200]
    assert [p["train/loss"] for p in h.points] == [2.0, 1.0, 0.667, 0.5]
    assert [p["val/loss"] for p in h.points] == [1.5, 0.77, 0.54, 0.435]
    assert not any("given again" in n for n in h.notes)


def test_a_name_column_of_phases_filling_one_column_is_refused_with_the_reshape(tmp_path, capsys, monkeypatch):
    """`name,step,loss,accuracy` with a train row and an eval row at each step: one run's phases, not two runs. The
    CSV reader has no phase column: each eval row's `loss` was dropped as 'given again' behind the train row's (the
    eval loss lost, silently), and since runs taking turns are refused, it was refused as two runs 'train' / 'eval'.
    Now refused as phases, with the reshape to a column per phase and metric, which reads as the run it is."""
    text = "name,step,loss,accuracy\n" + "".join(f"train,{s},{t},0.5\neval,{s},{v},0.6\n" for s, t, v in HISTORY)
    (tmp_path / "phase.csv").write_text(text)
    assert main(["diagnose", str(tmp_path / "phase.csv")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("column 'name' names phases ('train', 'eval'), not runs: their rows at one step fill the same column "
            "('loss' at step 50), so one phase's value would be read as another's") in err
    assert "runs ('train', 'eval')" not in err and "Traceback" not in err
    reshape = err.split("e.g. with pandas: ")[1]
    pandas = pytest.importorskip("pandas")
    monkeypatch.chdir(tmp_path)
    exec(reshape, {"pandas": pandas})
    h = load_run(str(tmp_path / "run.csv"))
    assert [p["train/loss"] for p in h.points] == [t for _, t, _ in HISTORY]
    assert [p["val/loss"] for p in h.points] == [v for _, _, v in HISTORY]
    assert [p["val/accuracy"] for p in h.points] == [0.6] * 4
    assert [p["train_eval/accuracy"] for p in h.points] == [0.5] * 4


def _phase_rows(val_name: str, test: bool = False) -> str:
    """`step,split,loss`: four train rows between evaluations, a val row at each evaluation (and a test row)."""
    rows = []
    for s, t, v in HISTORY:
        rows += [f"{s - 50 + k},train,{t + 0.1 * (3 - k)}" for k in range(1, 4)] + [f"{s},train,{t}"]
        rows.append(f"{s},{val_name},{v}")
        if test:
            rows.append(f"{s},test,{v + 5}")
    return "step,split,loss\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("val_name", ["val", "validation", "eval", "Valid", "test"])
def test_a_split_column_reads_each_phase_as_its_curve(tmp_path, val_name):
    """`step,split,loss` (a long-format export: a train row per logged step, a val row per evaluation) had no phase
    column: the val rows' losses were read as train losses (no val curve, 0 eval points, verdict inconclusive)."""
    (tmp_path / "run.csv").write_text(_phase_rows(val_name))
    h = load_run(str(tmp_path / "run.csv"))
    assert [p["step"] for p in h.points] == [50, 100, 150, 200]
    assert [p["val/loss"] for p in h.points] == [v for _, _, v in HISTORY]
    assert [p["train/loss_last"] for p in h.points] == [t for _, t, _ in HISTORY]
    assert [p["train/loss"] for p in h.points] == pytest.approx([t + 0.075 for _, t, _ in HISTORY])
    assert h.notes[0].startswith("column 'split' read as each row's phase")
    assert ("'test', the one held-out set evaluated, read as the validation set" in h.notes[0]) == (val_name == "test")


def test_a_test_phase_beside_a_val_phase_is_left_out(tmp_path):
    (tmp_path / "run.csv").write_text(_phase_rows("val", test=True).replace("split", "phase"))
    h = load_run(str(tmp_path / "run.csv"))
    assert [p["val/loss"] for p in h.points] == [v for _, _, v in HISTORY]
    assert "the 'test' rows left out" in h.notes[0]


@pytest.mark.parametrize("text, said", [
    ("step,split,loss\n1,train,2.0\n2,holdout,1.5\n", "row 3: column 'split' is 'holdout', not a phase loratune reads"),
    ("step,split,loss\n1,train,2.0\n2,,1.5\n", "row 3: column 'split' is empty"),
    ("step,split,loss\n1,train,2.0\n2,val,1.5\n2,eval,1.4\n",
     "column 'split' names 2 validation phases ('val', 'eval'): which one is the run's validation set is unknown"),
])
def test_a_split_column_that_stays_ambiguous_is_refused(tmp_path, capsys, text, said):
    (tmp_path / "run.csv").write_text(text)
    assert main(["diagnose", str(tmp_path / "run.csv")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert said in err and "Traceback" not in err


def _wide_with(column: str, phases) -> str:
    """`step,<column>,train_loss,val_loss`: a wide export (the columns name their phase) with another column of a
    phase per row (a schedule's, a curriculum's stage, or one split throughout)."""
    rows = [f"{s},{ph},{t}," if k % 2 == 0 else f"{s},{ph},,{v}"
            for k, ((s, t, v), ph) in enumerate(((s, t, v), ph) for (s, t, v), ph in zip(
                [x for x in HISTORY for _ in range(2)], phases))]
    return f"step,{column},train_loss,val_loss\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("column, phases", [
    ("phase", ["warmup", "warmup", "stable", "stable", "stable", "stable", "decay", "decay"]),  # a WSD schedule
    ("phase", ["1", "1", "1", "1", "2", "2", "2", "2"]),  # a curriculum's stages
    ("split", ["train"] * 8),  # one split throughout: the columns say each value's phase
])
def test_a_phase_column_of_no_data_split_or_one_split_leaves_the_wide_columns_as_they_are(tmp_path, column, phases):
    """A `phase` column of a WSD schedule's phases (warmup/stable/decay) or a curriculum's stages was refused
    ("'phase' is 'warmup', not a phase loratune reads"), and a constant `split` column beside train_loss/val_loss read
    as phases found no loss ("no loss or metric column among ['step', 'train_train_loss', 'train_val_loss']"): the
    file is read by its columns' names, the column ignored, as before the phase column was read."""
    (tmp_path / "run.csv").write_text(_wide_with(column, phases))
    h = load_run(str(tmp_path / "run.csv"))
    assert [p["val/loss"] for p in h.points] == [v for _, _, v in HISTORY]
    assert [p["train/loss_last"] for p in h.points] == [t for _, t, _ in HISTORY]
    assert f"CSV columns ignored: '{column}'" in h.notes
    assert not any("read as each row's phase" in n for n in h.notes)


@pytest.mark.parametrize("eval_rows_train_loss", [False, True])
def test_a_split_column_beside_columns_that_name_their_phase_prefixes_none_again(tmp_path, eval_rows_train_loss):
    """`step,split,train_loss,eval_loss` (train rows fill train_loss, eval rows eval_loss) was pivoted into
    train_train_loss (ignored: the train curve lost), train_eval_loss (read as a train-eval curve) and
    eval_eval_loss: a column that names its phase is read by its name."""
    rows = []
    for s, t, v in HISTORY:
        rows += [f"{s},train,{t},", f"{s},eval,{t if eval_rows_train_loss else ''},{v}"]
    (tmp_path / "run.csv").write_text("step,split,train_loss,eval_loss\n" + "\n".join(rows) + "\n")
    h = load_run(str(tmp_path / "run.csv"))
    assert [p["val/loss"] for p in h.points] == [v for _, _, v in HISTORY]
    assert [p["train/loss_last"] for p in h.points] == [t for _, t, _ in HISTORY]
    assert not any("train_eval" in k for p in h.points for k in p)


def test_a_split_column_pivots_only_its_bare_scores(tmp_path):
    """Beside a bare `loss` pivoted by phase, a `train_loss` column keeps its name (not train_train_loss: one column
    with the train rows' pivoted loss, not a second `train_loss` listed as ignored) and a
    `timestamp` is each row's (not eval_timestamp, read as a val metric 'val/timestamp')."""
    rows = []
    for s, t, v in HISTORY:
        # the file's train_loss where it has one, the pivoted loss where it is blank
        rows += [f"{s},train,{t},{t if s > 50 else ''},{1000 + s}", f"{s},val,{v},,{1001 + s}"]
    (tmp_path / "run.csv").write_text("step,split,loss,train_loss,timestamp\n" + "\n".join(rows) + "\n")
    h = load_run(str(tmp_path / "run.csv"))
    assert [p["val/loss"] for p in h.points] == [v for _, _, v in HISTORY]
    assert [p["train/loss_last"] for p in h.points] == [t for _, t, _ in HISTORY]
    assert not any("timestamp" in k for p in h.points for k in p)
    assert "(eval_loss)" in h.notes[0] and "(train_loss)" in h.notes[0]
    assert "CSV columns ignored: 'timestamp'" in h.notes
    assert "CSV columns mapped: 'step' -> step, 'train_loss' -> train/loss, 'eval_loss' -> val/loss" in h.notes


def test_a_long_format_export_with_a_split_column_keeps_the_pivot_help(tmp_path, capsys):
    """`step,split,key,value` (MLflow-like long format with a split) was pivoted into eval_key / train_value and
    refused as having no loss column, without the 'long format ... pivot it' help."""
    rows = [f"{s},train,loss,{t}" for s, t, _ in HISTORY] + [f"{s},val,loss,{v}" for s, _, v in HISTORY]
    (tmp_path / "run.csv").write_text("step,split,key,value\n" + "\n".join(rows) + "\n")
    assert main(["diagnose", str(tmp_path / "run.csv")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is in long format, one row per logged value (the metric's name in 'key', its value in 'value')" in err
    assert "pivot it to a row per step" in err and "Traceback" not in err


def test_a_train_runtime_column_read_for_the_end_entry_is_not_listed_as_ignored(tmp_path):
    """A CSV's train_runtime column decides that the run finished (_csv_end_entry), yet its note said 'CSV columns
    ignored: 'train_runtime'' (review of the integrated branch). The mapping note says what it is read as."""
    from loratune.history_io import END_UNKNOWN_KEY

    p = _write(tmp_path / "end.csv", "step,loss,eval_loss,eval_accuracy,train_runtime",
               [(10, 2.0, "", "", ""), (10, "", 1.9, 0.3, ""), (20, 1.5, "", "", ""), (20, "", 1.4, 0.5, ""),
                (20, "", "", "", 12.5)])
    h = load_run(p)
    assert END_UNKNOWN_KEY not in h.meta  # the column was read: the run finished
    assert not any(n.startswith("CSV columns ignored") for n in h.notes)
    assert h.notes[0] == ("CSV columns mapped: 'step' -> step, 'loss' -> train/loss, 'eval_loss' -> val/loss, "
                          "'eval_accuracy' -> val/accuracy, 'train_runtime' -> end of training (whether the run "
                          "finished)")
    # without a value it is still read (and found no end entry): not ignored either
    p = _write(tmp_path / "noend.csv", "step,loss,train_runtime,extra", [(10, 2.0, "", 1), (20, 1.5, "", 2)])
    h = load_run(p)
    assert END_UNKNOWN_KEY in h.meta and "CSV columns ignored: 'extra'" in h.notes
