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
    _reads_as_its_run(run, copy)


def _reads_as_its_run(run: Path, copy: Path) -> None:
    """A run's TensorBoard log reads as the run: its event file in the run's folder routes to the run, as the folder
    does, and a copy away from the run gives the same verdict, next move and facts, from loratune's own tags and texts
    (an event file inside a run read healthy where the run read lr-too-small: 5 classes estimated for 4, the first
    window's loss as the start, the lr at an eval as the peak, the slices dropped, a completed run read as partial)."""
    from loratune.history_io import load_run

    event = next((run / "tensorboard").glob("events.out.tfevents.*"))
    d_run = api.diagnose(run)
    assert load_run(event).source == "loratune" and api.diagnose(event).verdict == d_run.verdict
    h_run = load_run(run)
    for log in (copy, next(copy.glob("events.out.tfevents.*"))):
        h, d = load_run(log), api.diagnose(log)
        assert h.source == "tensorboard"
        assert (d.verdict, d.primary.moves if d.primary else None, d.facts) == \
            (d_run.verdict, d_run.primary.moves if d_run.primary else None, d_run.facts)
        assert not h.meta.get("partial") and h.meta["status"] == h_run.meta["status"] == "completed"
        assert h.meta["labels"] == h_run.meta["labels"] and h.meta["task"] == h_run.meta["task"]
        assert h.meta["steps_planned"] == h_run.meta["steps_planned"] and h.config == h_run.config
        for key in ("n_classes", "train_loss_start", "peak_lr", "val_metric_final", "val_loss_final"):
            want = d_run.features.values.get(key)
            assert d.features.values.get(key) == (want if want is None else pytest.approx(want, rel=1e-5)), key
        slices = {k for p in h_run.points for k in p if k.startswith("val_")}  # val_familiar/*, val_novel/*, ...
        assert slices == {k for p in h.points for k in p if k.startswith("val_")}
        # the final point's per-class keys, from the record (a 77-class run read underfit-capacity where it read
        # collapsed: val_pred_top_share, val_recall_zero_share, val_recall_* were missing)
        per_class = {k: v for k, v in h_run.points[-1].items() if "/recall/" in k or "/support/" in k}
        assert {k: v for k, v in h.points[-1].items() if "/recall/" in k or "/support/" in k} == per_class
        assert any("from its `record` text at its final" in n for n in h.notes)
        for key in ("val_pred_top_share", "val_recall_zero_share", "val_recall_min", "confused_top_count")[
                :4 if per_class else 0]:  # (a language model has no classes)
            assert d.features.values[key] == pytest.approx(d_run.features.values[key], rel=1e-6), key


def test_an_sft_runs_copied_tensorboard_log_reads_as_the_run(lm, tmp_path):
    # a language model's copied log read lr-too-small with 140 classes estimated from its first loss (the run: healthy)
    pytest.importorskip("tensorboard")
    import shutil

    from sft_support import make_sft_rows
    from support import write_jsonl

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_sft_rows(8, seed=1))
    write_jsonl(data / "validation.jsonl", make_sft_rows(2, seed=2))
    run = tmp_path / "run"
    cfg = load_config(None, [f"{k}={v}" for k, v in {
        "task": "causal-lm", "name_or_path": lm, "dataset_name": data, "output_dir": run, "max_steps": 12,
        "per_device_train_batch_size": 8, "learning_rate": 1e-2, "target_modules": "[attn.q, attn.v]", "r": 4,
        "lora_alpha": 8, "max_length": 32, "max_new_tokens": 6, "report_to": "tensorboard"}.items()])
    assert api.train(cfg, progress=False)["status"] == "completed"
    shutil.copytree(run / "tensorboard", tmp_path / "copied-log")
    _reads_as_its_run(run, tmp_path / "copied-log")
    assert api.diagnose(tmp_path / "copied-log").features.values.get("n_classes") is None


def test_an_older_loratune_log_reads_its_config_and_end_status(tmp_path):
    # a log written before the run record text: config and status texts only; a language model gets no class count
    # estimated from its first loss (it read 140 classes), and its end status says the run completed (it read partial)
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from loratune.history_io import load_run
    from loratune.store import CONFIG_TEXT, STATUS_TEXT

    for status in ("completed", None):
        log = tmp_path / f"log-{status}"
        w = SummaryWriter(log_dir=str(log))
        w.add_text(CONFIG_TEXT,
                   "```yaml\nmodel:\n  task: causal-lm\ndata:\n  text_field: text\nadapter:\n  method: lora\n"
                   "train:\n  max_steps: 8\n```")  # every section, as the writer dumps config.yaml
        for step, loss in ((0, None), (4, 4.9), (8, 4.2)):
            if loss is not None:
                w.add_scalar("train/loss", loss, step)
                w.add_scalar("train/loss_first", loss + 0.04, step)
                w.add_scalar("lr_max", 0.01, step)
            w.add_scalar("val/loss", 5.0 - step / 10, step)
            w.add_scalar("val_familiar/loss", 5.1 - step / 10, step)
        if status:
            w.add_text(STATUS_TEXT, status, 8)
        w.close()
        h = load_run(log)
        assert (h.meta["task"], h.meta["method"], h.meta["steps_planned"]) == ("causal-lm", "lora", 8)
        assert "n_classes" not in h.facts and "n_classes" not in h.meta
        assert [p["step"] for p in h.points if "val_familiar/loss" in p] == [0, 4, 8]
        assert bool(h.meta.get("partial")) is (status is None)
        assert api.diagnose(log).features.values["peak_lr"] == pytest.approx(0.01)


def test_other_tools_tensorboard_logs_read_as_a_trainers(tmp_path):
    # routed by loratune's own texts alone: a Trainer log with a user's `config` text holding a `train:` section read
    # inconclusive (its eval/* dropped: 0 eval points), a Lightning-style log (val/loss, val/acc) healthy with no val
    # metric, both noted "the TensorBoard log of a loratune run"; they read undertrained, as before
    pytest.importorskip("tensorboard")
    import math

    from torch.utils.tensorboard import SummaryWriter

    from loratune.history_io import load_run

    def log(name, config=None, lightning=False):
        w = SummaryWriter(log_dir=str(tmp_path / name))
        if config:
            w.add_text("config", config, 0)
        for s in range(10, 210, 10):
            w.add_scalar("train/loss", 2.0 * math.exp(-s / 80) + 0.1, s)
            w.add_scalar("lr-AdamW" if lightning else "train/learning_rate", 1e-4 * (1 - s / 200), s)
            if s % 50 == 0:
                w.add_scalar("val/loss" if lightning else "eval/loss", 2.0 * math.exp(-s / 80) + 0.3, s)
                w.add_scalar("val/acc" if lightning else "eval/accuracy", 1 - math.exp(-s / 60), s)
        w.close()
        return tmp_path / name

    for d in (log("trainer", "train:\n  lr: 0.0001\n  epochs: 2\nmodel:\n  name: bert\n"),
              log("lightning", lightning=True)):
        h, diag = load_run(d), api.diagnose(d)
        assert h.source == "tensorboard" and "epochs" not in h.config.get("train", {})  # the user's text is no config
        assert not any("loratune run" in n for n in h.notes) and "eval_loss -> val/loss" in " ".join(h.notes)
        assert [p["step"] for p in h.points if "val/accuracy" in p] == [50, 100, 150, 200]
        assert diag.verdict == "undertrained" and diag.features.values["val_metric_best"] == \
            pytest.approx(1 - math.exp(-200 / 60), rel=1e-6)


def test_a_users_record_text_or_own_config_sections_read_as_a_trainers(tmp_path):
    # any `record` text routed a log to loratune's reader (add_text("record", "epoch 3: new best accuracy") read
    # inconclusive), and a user's config with model/data/adapter/train sections of their own keys was read as loratune's
    pytest.importorskip("tensorboard")
    import math

    from torch.utils.tensorboard import SummaryWriter

    from loratune.history_io import load_run

    texts = {"record_plain": ("record", "epoch 3: new best accuracy"),
             "record_json": ("record", '{"best": 0.91, "epoch": 3}'),
             "user_config": ("config", "model:\n  name: bert-base\ndata:\n  path: imdb\nadapter:\n  type: lora\n"
                                       "  r: 8\ntrain:\n  lr: 0.0001\n  epochs: 2\n")}
    for name, (tag, text) in texts.items():
        w = SummaryWriter(log_dir=str(tmp_path / name))
        w.add_text(tag, text, 0)
        for s in range(10, 210, 10):
            w.add_scalar("train/loss", 2.0 * math.exp(-s / 80) + 0.1, s)
            w.add_scalar("train/learning_rate", 1e-4 * (1 - s / 200), s)
            if s % 50 == 0:
                w.add_scalar("eval/loss", 2.0 * math.exp(-s / 80) + 0.3, s)
                w.add_scalar("eval/accuracy", 1 - math.exp(-s / 60), s)
        w.close()
        h, diag = load_run(tmp_path / name), api.diagnose(tmp_path / name)
        assert not any("loratune run" in n or "`record`" in n for n in h.notes), name
        assert [p["step"] for p in h.points if "val/accuracy" in p] == [50, 100, 150, 200], name
        assert diag.verdict == "undertrained", name


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

    from support import run_record

    old = tmp_path / TENSORBOARD_DIR
    old.mkdir()
    (old / "events.out.tfevents.1.host").write_bytes(b"an earlier run's")
    (tmp_path / "run.json").write_text(run_record("completed"))  # a run's (a folder no run wrote is refused)
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
