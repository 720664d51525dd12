"""A history's `lr`: the rate the point's step used (store.RECORD_VERSION 2, as the HF Trainer logs it); records made
before it logged the rate after the step's scheduler update, the next step's, and are read as such."""
import json

import pytest

from loratune.features import _lr_clock, compute_features, lr_samples
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


def _callback_record(d, transformers_version):
    d.mkdir()
    run = {"status": "completed", "source": "hf-trainer callback", "steps_planned": 6, "steps_done": 6,
           "versions": {"loratune": "0.1.0", "transformers": transformers_version}}
    (d / "run.json").write_text(json.dumps(run))
    (d / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _points(
        NEXT if transformers_version < "4.51" else USED)))
    return load_run(d)


def test_a_callback_record_of_a_transformers_before_4_51_reads_its_lr_one_step_later(tmp_path):
    """transformers < 4.51 logged at step s the rate step s + 1 uses; the callback's record named no version, so its
    history was read as the rate step s used whatever the version. It names them now (run.json `versions`), and a
    record of an older transformers is read as an older loratune record is (store.TRAINER_LR_CLOCK_SINCE)."""
    from loratune.store import TRAINER_LR_CLOCK_SINCE, trainer_logs_next_lr

    assert TRAINER_LR_CLOCK_SINCE == (4, 51)
    assert [trainer_logs_next_lr(v) for v in ("4.46.3", "4.50.0.dev0", "4.51.0", "4.57.1", "5.0.0", None, "x")] == [
        True, True, False, False, False, False, False]
    old, new = _callback_record(tmp_path / "old", "4.46.3"), _callback_record(tmp_path / "new", "4.51.3")
    assert [p["lr"] for p in new.points] == [0.0] + USED
    assert [p.get("lr_next") for p in old.points[1:]] == NEXT and all("lr" not in p for p in old.points[1:])
    clock_new, clock_old = _lr_clock(new.points), _lr_clock(old.points)
    assert [clock_old(s) - clock_old(2) for s in range(2, 7)] == pytest.approx(
        [clock_new(s) - clock_new(2) for s in range(2, 7)])


def _SCHED(k):
    """The rate after k scheduler updates: 4 warmup steps to 1e-3, a linear decay to step 40."""
    return 1e-3 * k / 4 if k < 4 else 1e-3 * (40 - k) / 36


def _trainer_dir(d, transformers_version):
    """A Trainer output dir: 4 warmup steps to 1e-3, a linear decay to step 40, logged every 2 steps, as that
    transformers logged it (>= 4.51: the rate step s used, the schedule after s - 1 updates; older: after s)."""
    d.mkdir()
    lag = 0 if transformers_version < "4.51" else 1
    log = [{"step": s, "loss": 1.0 - 0.01 * s, "learning_rate": _SCHED(s - lag), "epoch": s / 40} for s in range(2, 41, 2)]
    log += [{"step": s, "eval_loss": 1.0 - 0.01 * s, "epoch": s / 40} for s in range(10, 41, 10)]
    (d / "trainer_state.json").write_text(json.dumps({"global_step": 40, "max_steps": 40, "log_history": log}))
    (d / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b"}, "architectures": [
        "BertForSequenceClassification"], "transformers_version": transformers_version}))
    return load_run(d)


def test_a_trainer_dir_whose_config_names_a_transformers_before_4_51_reads_its_lr_one_step_later(tmp_path):
    """A Trainer dir's config.json names the transformers that trained it: before 4.51 its logged rate is the next
    step's, its warmup read one step early (warmup_steps 3 of a 4-step warmup) and its lr clock a step ahead."""
    old, new = _trainer_dir(tmp_path / "old", "4.46.3"), _trainer_dir(tmp_path / "new", "4.51.3")
    assert new.facts["warmup_steps"].value == 4 and old.facts["warmup_steps"].value == 4
    assert new.facts["learning_rate"].value == pytest.approx(1e-3) == old.facts["learning_rate"].value
    assert all("lr" not in p for p in old.points) and any("lr_next" in p for p in old.points)
    assert any("transformers 4.46.3" in n and "one step later" in n for n in old.notes)
    assert not any("one step later" in n for n in new.notes)
    # both read as the rate each step used: the schedule after s - 1 updates at step s
    for h in (old, new):
        samples = lr_samples(h.points)
        assert [v for _, v in samples] == pytest.approx([_SCHED(s - 1) for s, _ in samples])


def test_the_callbacks_record_names_the_library_versions(tmp_path):
    """LoratuneCallback's run.json kept no `versions` (loratune's own run.json does): transformers', peft's, TRL's
    and torch's where installed, and loratune's, as `loratune train` keeps them."""
    from types import SimpleNamespace

    import torch
    import transformers

    from loratune import __version__
    from loratune.integrations import LoratuneCallback

    cb = LoratuneCallback(printer=lambda s: None)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(args, None, control)
    log = [{"step": s, "loss": 0.7 - 0.01 * s, "learning_rate": 1e-4, "epoch": s / 20} for s in range(1, 11)]
    log.append({"step": 10, "eval_loss": 0.6, "epoch": 0.5})
    state = SimpleNamespace(max_steps=20, num_train_epochs=1, train_batch_size=8, logging_steps=1, eval_steps=10,
                            save_steps=500, global_step=10, log_history=log, is_world_process_zero=True)
    cb.on_evaluate(args, state, control)
    cb.on_train_end(args, state, control)
    versions = json.loads((tmp_path / "loratune" / "run.json").read_text())["versions"]
    assert versions["transformers"] == transformers.__version__ and versions["torch"] == torch.__version__
    assert versions["loratune"] == __version__ and "peft" in versions


def _tb_dir(d, transformers_version, *, trainer):
    """A TensorBoard log under logs/ beside a config.json naming `transformers_version`: a loop's own SummaryWriter
    (lr/train_loss/val_loss, the rate each step used) or, `trainer`, the Trainer's (its train/epoch tag; its rate as
    that transformers logged it, as _trainer_dir)."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    d.mkdir()
    (d / "config.json").write_text(json.dumps({"id2label": {"0": "a", "1": "b"}, "architectures": [
        "BertForSequenceClassification"], "transformers_version": transformers_version}))
    lag = 0 if trainer and transformers_version < "4.51" else 1
    w = SummaryWriter(str(d / "logs"))
    for s in range(2, 41, 2):
        if trainer:
            w.add_scalar("train/loss", 1.0 - 0.01 * s, s)
            w.add_scalar("train/learning_rate", _SCHED(s - lag), s)
            w.add_scalar("train/epoch", s / 40, s)
            if s % 10 == 0:
                w.add_scalar("eval/loss", 1.0 - 0.01 * s, s)
        else:
            w.add_scalar("train_loss", 1.0 - 0.01 * s, s)
            w.add_scalar("lr", _SCHED(s - lag), s)
            if s % 10 == 0:
                w.add_scalar("val_loss", 1.0 - 0.01 * s, s)
    w.close()
    return load_run(d)


def test_a_loops_tensorboard_log_beside_an_old_config_reads_its_lr_as_logged(tmp_path):
    """A custom loop's SummaryWriter log beside a config.json of transformers 4.46.3 was read on that Trainer's lr
    clock (its rates one step late, warmup_steps 5 of a 4-step warmup, and the contradictory notes 'the log is another
    writer's' and 'transformers 4.46.3 ... logged the rate the next step uses'): only a log the Trainer wrote reads by
    its transformers version; the Trainer's own TensorBoard log beside that config still does."""
    loop = _tb_dir(tmp_path / "loop", "4.46.3", trainer=False)
    assert any("another writer's" in n for n in loop.notes)
    assert not any("one step later" in n for n in loop.notes)
    assert loop.facts["warmup_steps"].value == 4
    assert all("lr_next" not in p for p in loop.points)
    samples = lr_samples(loop.points)
    assert samples and [v for _, v in samples] == pytest.approx([_SCHED(s - 1) for s, _ in samples])
    trainer = _tb_dir(tmp_path / "trainer", "4.46.3", trainer=True)
    assert any("transformers 4.46.3" in n and "one step later" in n for n in trainer.notes)
    assert trainer.facts["warmup_steps"].value == 4
    samples = lr_samples(trainer.points)
    assert samples and [v for _, v in samples] == pytest.approx([_SCHED(s - 1) for s, _ in samples])
