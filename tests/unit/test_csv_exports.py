"""CSV exports of trackers and training libraries read as their writers meant them (a hunt of wave 17): Keras'
History / CSVLogger, Lightning's CSVLogger, an MLflow or W&B table of runs, W&B chart panels and history."""

from __future__ import annotations

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


def test_a_bare_metric_with_no_val_column_of_its_metric_stays_the_validation_score(tmp_path):
    h = load_run(_write(tmp_path / "evals.csv", "step,loss,accuracy,f1,val_acc",
                        [(10, 0.9, 0.5, 0.4, 0.6), (20, 0.5, 0.7, 0.6, 0.8)]))
    assert [p["val/macro_f1"] for p in h.points] == [0.4, 0.6]  # `f1`: no val F1 beside it
    assert [p["train_eval/accuracy"] for p in h.points] == [0.5, 0.7]
    assert [p["val/accuracy"] for p in h.points] == [0.6, 0.8]
