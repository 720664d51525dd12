"""A history's `lr`: the rate the point's step used (store.RECORD_VERSION 2, as the HF Trainer logs it); records made
before it logged the rate after the step's scheduler update, the next step's, and are read as such."""
import json

import pytest

from loratune.features import _lr_clock, compute_features
from loratune.history_io import load_run

USED = [0.0, 1e-3, 2e-3, 3e-3, 2e-3, 1e-3]  # steps 1..6: a warmup to 3e-3, then a decay
NEXT = USED[1:] + [0.0]  # what an older record logged at steps 1..6: the rate of the step after


def _write(d, points, record_version=None):
    d.mkdir()
    run = {"status": "completed", "versions": {"loratune": "0.1.0"}, "steps_planned": 6, "steps_done": 6}
    if record_version is not None:
        run["record_version"] = record_version
    (d / "run.json").write_text(json.dumps(run))
    (d / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    return load_run(d)


def _points(lrs, steps=range(1, 7), lr_max=True):
    pts = [{"step": 0, "lr": 0.0, "val/loss": 2.0}]
    for s in steps:
        p = {"step": s, "lr": lrs[s - 1], "val/loss": 2.0 - 0.1 * s, "train/loss": 2.0 - 0.1 * s}
        if lr_max:
            p["lr_max"] = USED[s - 1]
        pts.append(p)
    return pts


def test_an_older_records_lr_is_read_one_step_later(tmp_path):
    new = _write(tmp_path / "new", _points(USED), record_version=2)
    old = _write(tmp_path / "old", _points(NEXT))
    assert [p["lr"] for p in new.points] == [0.0] + USED
    assert [p.get("lr") for p in old.points] == [0.0] + [None] * 6  # step 0's 0 is no scheduled rate: kept
    assert [p.get("lr_next") for p in old.points[1:]] == NEXT
    # the learning-rate clock (cumulative lr x steps) reads both records alike from step 2 on (an older record has
    # no sample of step 1's rate: its step-0 point's 0 is no step's)
    clock_new, clock_old = _lr_clock(new.points), _lr_clock(old.points)
    assert [clock_old(s) - clock_old(2) for s in range(2, 7)] == pytest.approx(
        [clock_new(s) - clock_new(2) for s in range(2, 7)])
    for h in (new, old):
        assert compute_features(h.points, h.meta, h.config).values["peak_lr"] == pytest.approx(3e-3)


def test_an_older_record_ending_in_its_warmup_reads_the_peak_its_steps_used(tmp_path):
    # 3 steps of a warmup: the rate after the last update (3e-3) was no step's: the peak lr is 2e-3
    for lr_max in (True, False):
        old = _write(tmp_path / f"old{lr_max}", _points(NEXT, range(1, 4), lr_max))
        assert compute_features(old.points, old.meta, old.config).values["peak_lr"] == pytest.approx(2e-3)


def test_a_callback_record_keeps_the_trainers_lr(tmp_path):
    # LoratuneCallback's record carries the Trainer's own `learning_rate`: the rate the step used, never shifted
    d = tmp_path / "cb"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"status": "completed", "source": "hf-trainer callback"}))
    (d / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _points(USED)))
    assert [p["lr"] for p in load_run(d).points] == [0.0] + USED
