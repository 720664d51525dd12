"""history_io._per_class_from_record: the per-class keys a loratune TensorBoard log leaves out, put back from its
`record` text's final and best points where they are the log's points."""
from __future__ import annotations

from loratune.history_io import _per_class_from_record

RULES = "its rules (collapsed, long-tail-collapse, confusable-classes-unresolved) not evaluated on this log"


def _points():
    return [{"step": 4, "val/loss": 1.5, "val/macro_f1": 0.2}, {"step": 8, "val/loss": 1.2, "val/macro_f1": 0.4},
            {"step": 12, "val/loss": 1.1, "val/macro_f1": 0.5}]


def _at(step, points, **extra):
    own = next(p for p in points if p["step"] == step)
    return {**own, "val/recall/a": 1.0, "val/recall/b": 0.0, "val/confused_pairs": [["b", "a", 0.9]], **extra}


def test_final_and_best_at_one_step_both_read_as_the_logs_point():
    # the final put its keys (the confused_pairs list among them) into the point, then the best was compared with
    # that changed point (_fin(list) is None) and refused: "per-class recall not restored", though it was
    points = _points()
    note = _per_class_from_record(points, {"final": _at(12, _points()), "best": _at(12, _points())})
    assert note == ("per-class keys (recall, precision, confusion pairs) from its `record` text at its final (step 12) "
                    "and best (step 12) point(s) only: the other points' are in history.jsonl "
                    "(val_recall_collapsed_share reads these points only, confused_pairs_persist_share none)")
    assert points[2]["val/recall/b"] == 0.0 and points[2]["val/confused_pairs"] == [["b", "a", 0.9]]


def test_the_best_is_not_put_back_where_the_final_was_refused():
    # a final that is not the log's point (a step past the log) with a best that is: the best's keys were put back,
    # and features read the last point with per-class keys (the best, step 8) as the run's final
    points = _points()
    note = _per_class_from_record(points, {"final": {**_at(12, _points()), "step": 9999}, "best": _at(8, _points())})
    assert not any("val/recall/a" in p for p in points)
    assert note == ("the `record` text's final (step 9999) is not the log's point: per-class recall not restored "
                    f"(nor at its best, step 8, which would read as the final), {RULES}")


def test_a_start_record_says_it_has_no_final_or_best():
    # a killed run's log holds the start record only: it read "the record text's final and best points are not the
    # log's points"
    points = _points()
    note = _per_class_from_record(points, {"status": "running", "steps_planned": 12})
    assert note == ("the `record` text has no final or best point (it is the run's start record: a run killed before "
                    f"its end writes none): per-class recall not restored, {RULES}")
    assert points == _points()


def test_a_best_that_is_not_the_logs_point_is_refused_alone():
    points = _points()
    note = _per_class_from_record(points, {"final": _at(12, _points()), "best": {**_at(8, _points()), "val/loss": 9.0}})
    assert "val/recall/a" in points[2] and "val/recall/a" not in points[1]
    assert note.endswith("; the `record` text's best (step 8) is not the log's point: per-class recall not restored, "
                         + RULES)
