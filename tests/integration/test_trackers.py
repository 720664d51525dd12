"""report_to: TensorBoard and MLflow get every evaluation point of a run and its verdict at the end;
a missing package is said before training; a failing tracker never stops the run."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from loratune import api
from loratune.config import load_config
from loratune.errors import UserError
from loratune.trackers import Trackers, require, scalars

from support import overrides


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_scalars_keep_headline_numbers_only():
    point = {"step": 4, "epoch": 0.5, "lr": 1e-3, "train/loss": 1.2, "val/macro_f1": 0.5, "val/recall/card_lost": 1.0,
             "val/support/pin": 3, "val/confused_pairs": [{"true": "a"}], "val_novel/macro_f1": 0.4,
             "val/loss": float("nan"), "probe/examples": [], "flag": True}
    assert scalars(point) == {"epoch": 0.5, "lr": 1e-3, "train/loss": 1.2, "val/macro_f1": 0.5,
                              "val_novel/macro_f1": 0.4}


def test_a_missing_package_is_said_before_training(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError) as e:
        require(("tensorboard", "mlflow"))
    assert "mlflow" in str(e.value) and "loratune[mlflow]" in e.value.fix
    require(("none",))
    require(())


def test_tensorboard_gets_every_eval_point_and_the_verdict(tiny_bert, intent_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cfg = load_config(None, overrides(tiny_bert, intent_data, run, report_to="tensorboard"))
    assert api.train(cfg, progress=False)["status"] == "completed"
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    history = _history(run)
    logged = [(e.step, e.value) for e in acc.Scalars("val/macro_f1")]
    assert [s for s, _ in logged] == [p["step"] for p in history]
    assert [v for _, v in logged] == pytest.approx([p["val/macro_f1"] for p in history], abs=1e-6)
    assert "train/loss" in acc.Tags()["scalars"] and not any("/recall/" in t for t in acc.Tags()["scalars"])
    texts = {t: acc.Tensors(t) for t in acc.Tags()["tensors"] if "verdict" in t}
    assert texts, acc.Tags()
    text = next(iter(texts.values()))[-1].tensor_proto.string_val[0].decode()
    assert api.diagnose(run).verdict in text
    # its own log reads as the run does (val/* tags were dropped: 0 eval points, inconclusive)
    from loratune.history_io import load_run

    tb = load_run(run / "tensorboard")
    evals = [p for p in tb.points if "val/macro_f1" in p]
    assert [p["step"] for p in evals] == [p["step"] for p in history if "val/macro_f1" in p]
    assert [p["val/macro_f1"] for p in evals] == pytest.approx([p["val/macro_f1"] for p in history
                                                                if "val/macro_f1" in p], abs=1e-6)
    assert api.diagnose(run / "tensorboard").verdict == api.diagnose(run).verdict  # read through the run
    import shutil

    copy = tmp_path / "copied-log"
    shutil.copytree(run / "tensorboard", copy)  # the events alone, away from their run: read by their tags
    alone = [p for p in load_run(copy).points if "val/macro_f1" in p]
    assert [(p["step"], round(p["val/macro_f1"], 5)) for p in alone] == \
        [(p["step"], round(p["val/macro_f1"], 5)) for p in history if "val/macro_f1" in p]


class FakeMlflow(types.ModuleType):
    """The few calls loratune makes, recorded (mlflow itself is an optional extra)."""

    def __init__(self, fail_on: str = ""):
        super().__init__("mlflow")
        self.calls: list[tuple] = []
        self.fail_on = fail_on
        self._active = None

    def _rec(self, name, *args, **kw):
        if name == self.fail_on:
            raise RuntimeError("tracking server went away")
        self.calls.append((name, args, kw))

    def active_run(self):
        return self._active

    def start_run(self, **kw):
        self._rec("start_run", **kw)
        self._active = object()
        return self._active

    def log_params(self, params):
        self._rec("log_params", params)

    def log_text(self, text, path):
        self._rec("log_text", text, path)

    def log_metrics(self, metrics, step):
        self._rec("log_metrics", metrics, step=step)

    def set_tag(self, key, value):
        self._rec("set_tag", key, value)

    def end_run(self, status="FINISHED"):
        self._rec("end_run", status=status)
        self._active = None


def test_mlflow_gets_params_every_eval_point_and_the_verdict(tiny_bert, intent_data, tmp_path, monkeypatch):
    fake = FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setattr("loratune.trackers.require", lambda report_to: None)
    monkeypatch.setattr("loratune.train.require_trackers", lambda report_to: None)
    run = tmp_path / "trials" / "03-lr4e-3"  # as a trial of a study
    cfg = load_config(None, overrides(tiny_bert, intent_data, run, report_to="[mlflow]"))
    assert api.train(cfg, progress=False)["status"] == "completed"
    names = [c[0] for c in fake.calls]
    assert names[0] == "start_run" and names[-1] == "end_run"
    start = fake.calls[0][2]
    assert start["run_name"] == "03-lr4e-3" and start["tags"]["loratune.study"] == str(tmp_path)
    params = next(c[1][0] for c in fake.calls if c[0] == "log_params")
    assert params["adapter.r"] == "4" and params["train.report_to"] == "['mlflow']"
    steps = [c[2]["step"] for c in fake.calls if c[0] == "log_metrics"]
    assert steps == [p["step"] for p in _history(run)]
    tags = {c[1][0]: c[1][1] for c in fake.calls if c[0] == "set_tag"}
    assert tags["loratune.verdict"] == api.diagnose(run).verdict and tags["loratune.status"] == "completed"
    assert fake.calls[-1][2] == {"status": "FINISHED"}


def test_a_failing_tracker_never_stops_the_run(tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    fake = FakeMlflow(fail_on="log_metrics")
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setattr("loratune.train.require_trackers", lambda report_to: None)
    monkeypatch.setattr("loratune.trackers.require", lambda report_to: None)  # (api.train's check, before training)
    run = tmp_path / "run"
    cfg = load_config(None, overrides(tiny_bert, intent_data, run, report_to="mlflow"))
    assert api.train(cfg, progress=False)["status"] == "completed"
    assert "mlflow logging failed (RuntimeError: tracking server went away)" in capsys.readouterr().err
    assert [c[0] for c in fake.calls][-1] != "end_run"  # dropped at the first failure


def test_a_fresh_run_in_a_reused_folder_drops_the_earlier_runs_events(tmp_path):
    from loratune.store import TENSORBOARD_DIR, RunStore

    old = tmp_path / TENSORBOARD_DIR
    old.mkdir()
    (old / "events.out.tfevents.1.host").write_bytes(b"an earlier run's")
    (tmp_path / "run.json").write_text('{"status": "completed"}\n')  # a run's (a folder no run wrote is refused)
    RunStore(tmp_path).create("train: {}\n")
    assert not old.exists()  # `tensorboard --logdir` and `diagnose RUN/tensorboard` showed the earlier run


def test_no_report_to_opens_nothing(tmp_path):
    t = Trackers.open(("none",), tmp_path, {"train": {"seed": 1}}, "")
    assert t.writers == []
    t.log_point({"step": 0})
    t.finish(tmp_path, "completed")


def test_a_signal_inside_a_tensorboard_call_waits_for_the_call(tmp_path):
    # tensorboard's writer holds a lock and a queue shared with its thread: Ctrl-C inside `add_scalar` / `close`
    # could leave the lock held and the next `close` waiting forever, so its calls run shielded (signals.shielded)
    import os
    import signal

    from loratune.trackers import TensorBoardWriter

    calls = []

    class Interrupted(TensorBoardWriter):
        def __init__(self):  # no SummaryWriter: only the shielding is under test
            self.step = 0

        def log_point(self, point):
            os.kill(os.getpid(), signal.SIGINT)
            calls.append("the write finished")

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            Trackers([Interrupted()]).log_point({"step": 1, "val/loss": 1.0})
    finally:
        signal.signal(signal.SIGINT, old)
    assert calls == ["the write finished"] and TensorBoardWriter.shielded is True
