"""Faults during `loratune train`: signals and kill -9 at several points, an exploding or NaN loss, output
faults (disk full, read-only, a file in the way), a torn history line. For each: no traceback, a clear
message, a record that says what happened, and nothing finished lost."""

from __future__ import annotations

import errno
import json
import signal
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.store import RunStore

from support_faults import Proc, history_lines
from support import flat, overrides, run_record


def _long(tiny_bert, intent_data, out: Path, **extra) -> list[str]:
    """A run that only ends when stopped (many steps, an eval every 2)."""
    return ["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=100000, eval_steps=2,
                                      num_threads=1, slices="false", robustness_probe="false", **extra)]


@pytest.mark.parametrize("sig,rc,word", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_signal_mid_training_leaves_an_interrupted_record(sig, rc, word, tiny_bert, intent_data, tmp_path):
    out = tmp_path / "run"
    proc = Proc(_long(tiny_bert, intent_data, out), tmp_path)
    assert proc.wait_for(lambda: history_lines(out) >= 3), proc.stderr
    proc.signal(sig)
    assert proc.finish() == rc
    assert "Traceback" not in proc.stderr + proc.stdout
    assert word in proc.stdout and "is valid (status interrupted)" in proc.stdout
    run = RunStore(out).read_run()
    assert run["status"] == "interrupted" and word in run["reason"]
    assert run["saved_model"]["step"] and (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "run.lock").exists()


def test_kill_9_mid_training_reads_as_died_everywhere(tiny_bert, intent_data, tmp_path, capsys):
    out = tmp_path / "run"
    proc = Proc(_long(tiny_bert, intent_data, out), tmp_path)
    assert proc.wait_for(lambda: history_lines(out) >= 3), proc.stderr
    proc.signal(signal.SIGKILL)
    proc.finish()
    on_disk = json.loads((out / "run.json").read_text())
    assert on_disk["status"] == "running"  # what the dead process left
    run = RunStore(out).read_run()
    assert run["status"] == "died" and run["partial"] is True and "died" in run["reason"]
    from loratune.history_io import load_run

    assert load_run(out).meta["status"] == "died"  # what diagnose reads
    assert main(["show", str(out)]) == 0
    assert "died" in flat(capsys.readouterr().out)
    assert main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 0
    assert "partial" in (tmp_path / "r.html").read_text()


def _kill_9_at_a_saved_best(args: list[str], out: Path, cwd: Path) -> dict:
    """Run `args` until run.json names a saved best model past a few evaluation points, kill -9 it, return the
    record as read afterwards."""
    from loratune.store import WEIGHT_FILES

    proc = Proc(args, cwd)

    def saved_step():  # a model on disk (a kill while one is being written leaves run.json saying so: no step)
        try:
            return (json.loads((out / "run.json").read_text()).get("saved_model") or {}).get("step")
        except (OSError, ValueError):
            return None

    assert proc.wait_for(lambda: history_lines(out) >= 4 and saved_step() is not None), proc.stderr
    proc.signal(signal.SIGKILL)
    proc.finish()
    run = RunStore(out).read_run()
    assert run["status"] == "died"
    assert any((out / "adapter" / f).is_file() for f in WEIGHT_FILES)  # a best model was written before the kill
    if run["saved_model"]["step"] is None:  # killed while a newer best was being written: no model claimed, and why
        assert "writing the model of step" in run["saved_model"]["note"]
    else:
        assert run["saved_model"]["step"] == run["adapter_step"]
    return run


@pytest.mark.parametrize("method", ["lora", "full"])
def test_kill_9_keeps_the_best_model_found_so_far(method, tiny_bert, intent_data, tmp_path, capsys):
    """The best trained weights lived in memory until the run ended: kill -9 lost them, while run.json named the
    step of a model no folder held (a full fine-tuning run lost them until the session after LoRA's fix)."""
    from loratune import api

    out = tmp_path / "run"
    run = _kill_9_at_a_saved_best(_long(tiny_bert, intent_data, out, method=method,
                                        **({"learning_rate": 1e-3} if method == "full" else {})), out, tmp_path)
    if run["saved_model"]["step"] is not None:
        assert api.predict(str(out), ["lost my card"])[0]["label"]  # the saved model loads and answers


def test_kill_9_keeps_an_sft_runs_best_model(tmp_path):
    """The causal-LM path kept its best weights in memory until the end too."""
    from sft_support import tiny_sft_inputs

    model, data = tiny_sft_inputs(tmp_path, val_per_label=1)
    out = tmp_path / "run"
    args = {"task": "causal-lm", "name_or_path": model, "dataset_name": str(data), "output_dir": str(out),
            "max_steps": 100000, "eval_steps": 2, "per_device_train_batch_size": 4, "r": 2, "lora_alpha": 4,
            "max_length": 32, "max_new_tokens": 2, "learning_rate": 1e-2, "num_threads": 1}
    run = _kill_9_at_a_saved_best(["train", "-q", *[f"{k}={v}" for k, v in args.items()]], out, tmp_path)
    if run["saved_model"]["step"] is not None:
        assert (out / "adapter" / "adapter_config.json").is_file()


def test_a_live_run_is_not_called_dead(tiny_bert, intent_data, tmp_path):
    out = tmp_path / "run"
    proc = Proc(_long(tiny_bert, intent_data, out), tmp_path)
    try:
        assert proc.wait_for(lambda: history_lines(out) >= 2), proc.stderr
        assert RunStore(out).read_run()["status"] == "running"
    finally:
        proc.signal(signal.SIGTERM)
        proc.finish()


@pytest.mark.parametrize("exc,rc", [(KeyboardInterrupt, 130), ("terminated", 143)])
def test_stopped_before_the_output_dir_exists_claims_no_record(exc, rc, tiny_bert, intent_data, tmp_path,
                                                                monkeypatch, capsys):
    import loratune.train as T
    from loratune.signals import Terminated

    def stop(*a, **k):
        raise Terminated() if exc == "terminated" else exc()

    monkeypatch.setattr(T, "load_classifier", stop)
    out = tmp_path / "never"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == rc
    text = flat(capsys.readouterr().out)
    assert "nothing was written" in text and "valid" not in text
    assert not out.exists()
    # and while the data is read, before "training ->" (it said only "interrupted by the user")
    import loratune.api as A

    monkeypatch.setattr(A, "prepare", stop)
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == rc
    assert "nothing was written" in flat(capsys.readouterr().out) and not out.exists()


def test_an_interrupted_runs_reason_names_the_last_step_done(tiny_bert, intent_data, tmp_path, monkeypatch):
    """Ctrl-C during step 6: 5 steps done, and the reason says so (it said 'at step 6' beside '5 of N steps')."""
    import loratune.train as T

    real, calls = T.loss_fn, {"n": 0}

    def interrupt(logits, *a, **k):
        if logits.requires_grad:
            calls["n"] += 1
            if calls["n"] == 6:
                raise KeyboardInterrupt
        return real(logits, *a, **k)

    monkeypatch.setattr(T, "loss_fn", interrupt)
    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=40)]) == 130
    run = RunStore(out).read_run()
    assert run["status"] == "interrupted" and run["steps_done"] == 5
    assert run["reason"] == "interrupted by the user (Ctrl-C) after step 5"


def test_exploding_loss_ends_diverged_with_exit_3(tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    import loratune.train as T

    real = T.loss_fn
    calls = {"n": 0}

    def exploding(logits, *a, **k):  # from step 6 the loss grows 50x (a tiny LayerNorm model stays finite)
        loss = real(logits, *a, **k)
        if logits.requires_grad:
            calls["n"] += 1
            return loss * 50 if calls["n"] >= 6 else loss
        return loss

    monkeypatch.setattr(T, "loss_fn", exploding)
    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=40, max_grad_norm=0)]) == 3
    text = flat(capsys.readouterr().out)
    assert "diverged" in text and "adapter/ holds the model of step 4" in text
    run = RunStore(out).read_run()
    assert run["status"] == "diverged" and "exploded" in run["reason"] and run["steps_done"] == 8
    assert run["saved_model"]["step"] == 4 and run["adapter_step"] == 4  # the best trained, never step 0


def test_nan_at_step_1_saves_no_model_and_says_so(tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    import loratune.train as T

    real = T.loss_fn

    def nan(logits, *a, **k):
        loss = real(logits, *a, **k)
        return loss * float("nan") if logits.requires_grad else loss

    monkeypatch.setattr(T, "loss_fn", nan)
    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 3
    assert "no model saved" in flat(capsys.readouterr().out)
    run = RunStore(out).read_run()
    assert run["status"] == "diverged" and run["reason"] == "non-finite loss at step 1"
    assert run["saved_model"]["step"] is None and not (out / "adapter").exists()
    assert [p["step"] for p in RunStore(out).read_history()] == [0]


@pytest.mark.parametrize("where", ["history", "model", "run.json", "config.yaml", "first run.json"])
def test_disk_full_is_a_clear_error(where, tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    """A full disk at each writer: exit 2 with the fix, no traceback, what was written before kept; at the first
    writes (config.yaml, the first run.json: before the training loop) the run's lock is let go too."""
    import loratune.store as S
    import loratune.train as T

    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "history":
        real = S.RunStore.append_history
        seen = {"n": 0}

        def append(self, point):
            seen["n"] += 1
            if seen["n"] == 3:
                raise full
            return real(self, point)

        monkeypatch.setattr(S.RunStore, "append_history", append)
    elif where == "model":
        from safetensors import SafetensorError

        def save(*a, **k):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')

        monkeypatch.setattr(T, "save_model", save)
    else:
        real_w = S.write_atomic
        first = {"config.yaml": "config.yaml", "first run.json": "run.json"}.get(where)

        def write(path, text):
            if first is not None and Path(path).name == first:
                raise full
            if Path(path).name == "run.json" and '"completed"' in text:
                raise full
            return real_w(path, text)

        monkeypatch.setattr(S, "write_atomic", write)
    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 2
    err = flat(capsys.readouterr().err)
    assert "is full" in err and "fix:" in err and "Traceback" not in err
    if where in ("config.yaml", "first run.json"):  # nothing trained yet; the lock is free for the next try
        assert not (out / "history.jsonl").exists()
        monkeypatch.undo()
        assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 0
        return
    assert len(RunStore(out).read_history()) >= 2  # what was written before the fault is kept


def test_read_only_output_dir(tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    import os

    out = tmp_path / "ro"
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == out else real(p, m, **k))
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 2
    err = flat(capsys.readouterr().err)
    assert "not writable" in err and "fix:" in err


def test_read_only_during_training_is_a_clear_error(tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    import loratune.store as S

    def ro(self, point):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(S.RunStore, "append_history", ro)
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, tmp_path / "run")]) == 2
    err = flat(capsys.readouterr().err)
    assert "not writable" in err and "Traceback" not in err


def test_output_dir_is_a_file(tiny_bert, intent_data, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for cmd in (["train", "-q"], ["train", "--dry-run"]):
        assert main([*cmd, *overrides(tiny_bert, intent_data, f)]) == 2
        assert "is a file" in flat(capsys.readouterr().err)
    assert f.read_text() == "x"


def test_a_torn_history_line_keeps_the_whole_ones(tiny_bert, intent_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 0
    capsys.readouterr()
    whole = RunStore(out).read_history()
    with open(out / "history.jsonl", "a") as f:
        f.write('{"step": 16, "val/macro_f1": 0.')  # a write cut by a hard kill
    assert RunStore(out).read_history() == whole
    assert main(["diagnose", str(out)]) == 0
    assert main(["show", str(out)]) == 0
    assert "Traceback" not in flat(capsys.readouterr().err)


def test_run_files_follow_the_umask(tiny_bert, intent_data, tmp_path):
    import os
    import stat

    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 0
    finally:
        os.umask(old)
    for name in ("run.json", "config.yaml", "history.jsonl", "confusion.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    # the saved model too: safetensors wrote its weights 0600, so another user could load all of adapter/ but them
    assert stat.S_IMODE((out / "adapter").stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (out / "adapter").iterdir()}
    assert "adapter_model.safetensors" in modes and set(modes.values()) == {0o644}, modes


def test_an_unreadable_saved_model_says_permission_denied(tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    """Another user's run whose weights they may not read: "permission denied" and what to do, not "the base model
    changed or the files are damaged". (The tests may run as root, who reads anything: os.access is what says no.)"""
    import os

    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=4, eval_steps=4)]) == 0
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p).name == "adapter_model.safetensors"
                        else real(p, m, **k))
    capsys.readouterr()
    assert main(["predict", str(out), "lost my card"]) == 2
    err = flat(capsys.readouterr().err)
    assert "adapter/adapter_model.safetensors cannot be read: permission denied" in err
    assert "chmod" in err and "damaged" not in err and "Traceback" not in err


def _finished_run_left_running(tiny_bert, intent_data, out: Path) -> dict:
    """A short finished run whose run.json is put back at `running`, as a training process leaves it (killed, or
    still training); returns that record as written."""
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=4, eval_steps=4)]) == 0
    run = json.loads((out / "run.json").read_text())
    run["status"] = "running"
    for key in ("reason", "test"):
        run.pop(key, None)
    (out / "run.json").write_text(json.dumps(run))
    return run


def test_evaluate_refuses_a_run_still_training(tiny_bert, intent_data, tmp_path, capsys):
    """`evaluate --split test` on a live run printed scores and exited 0, and the trainer's next write of run.json
    (from its own dict) dropped them; it also scored a best-so-far model the run could still replace."""
    from loratune.store import RunLock

    out = tmp_path / "run"
    _finished_run_left_running(tiny_bert, intent_data, out)
    before = (out / "run.json").read_text()
    lock = RunLock(out)
    lock.acquire()  # a live trainer holds run.lock
    try:
        assert main(["evaluate", str(out), "--split", "test"]) == 2
        err = flat(capsys.readouterr().err)
        assert "is still training (run.lock held by a live process" in err and "wait for it to end" in err
        assert (out / "run.json").read_text() == before  # nothing written
        assert main(["predict", str(out), "lost my card"]) == 0  # read-only: the best model so far answers
    finally:
        lock.release()


def test_evaluate_of_a_died_run_keeps_the_record_as_written(tiny_bert, intent_data, tmp_path):
    """After kill -9, evaluate stored the reader's view (status died, partial, status_recorded, a made-up reason) in
    run.json; `died` is computed by readers, and the scores go into the record as the trainer left it."""
    out = tmp_path / "run"
    written = _finished_run_left_running(tiny_bert, intent_data, out)  # nobody holds run.lock: it reads as died
    assert RunStore(out).read_run()["status"] == "died"
    assert main(["evaluate", str(out), "--split", "test"]) == 0
    on_disk = json.loads((out / "run.json").read_text())
    assert on_disk["status"] == "running" and "test/accuracy" in on_disk["test"]
    assert on_disk["eval"]["test"] == on_disk["test"]
    assert {k: v for k, v in on_disk.items() if k not in ("test", "eval")} == \
        {k: v for k, v in written.items() if k not in ("test", "eval")}
    assert RunStore(out).read_run()["status"] == "died"  # and readers still see what happened


def test_a_failing_robustness_probe_keeps_the_saved_model_in_the_record(tiny_bert, intent_data, tmp_path,
                                                                        monkeypatch, capsys):
    # the probe runs after adapter/ is written: its crash was recorded as "saving the model failed / no model saved"
    from loratune.eval_extras import EvalExtras

    def broken(self, predict, val_logits=None):
        raise IndexError("index out of range in self")

    monkeypatch.setattr(EvalExtras, "robustness", broken)
    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, slices="false")]) == 0
    run = RunStore(out).read_run()
    assert run["status"] == "completed" and not run["partial"]
    assert run["saved_model"]["step"] == run["adapter_step"] and run["adapter_step"] > 0
    assert "no model saved" not in run["saved_model"]["note"]
    assert run["robustness"] == {"failed": "the robustness probe failed: IndexError: index out of range in self"}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    assert "no model saved" not in flat(capsys.readouterr().out)


def test_a_failure_after_the_model_is_saved_does_not_say_it_was_lost(tmp_path):
    from loratune.train import record_save_failure

    class Store:
        def write_run(self, run):
            self.written = dict(run)

    store = Store()
    run = {"status": "completed", "saved_model": {"step": 8, "note": "adapter/ holds the model of step 8"}}
    record_save_failure(run, store, ValueError("bad value"), model_saved=True)
    assert store.written["status"] == "failed"
    assert store.written["reason"] == "finishing the run failed after the model was saved: ValueError: bad value"
    assert store.written["saved_model"] == {"step": 8, "note": "adapter/ holds the model of step 8"}
    record_save_failure(run := {"status": "completed"}, store, ValueError("x"))
    assert store.written["saved_model"]["step"] is None and store.written["reason"].startswith("saving the model")


@pytest.mark.parametrize("sig,rc", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_as_a_run_replaces_an_earlier_one_leaves_no_false_record(sig, rc, tiny_bert, intent_data, tmp_path,
                                                                          monkeypatch, capsys):
    """A signal landing just after the earlier run's outputs were cleared (before the new run.json): it left the
    earlier run's `completed` record over its removed model, run.lock behind, and said "nothing was written"."""
    import os

    import loratune.store as S

    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 0
    real = S.RunStore._clear_earlier_run

    def clear_then_signal(self):
        removed = real(self)
        os.kill(os.getpid(), sig)  # (delivered at once: the handler runs before the next bytecode)
        return removed

    monkeypatch.setattr(S.RunStore, "_clear_earlier_run", clear_then_signal)
    capsys.readouterr()
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, lora_alpha=4)]) == rc
    text = flat(capsys.readouterr().out)
    assert "nothing was written" not in text and "status interrupted" in text
    assert "the earlier run in" in text and "adapter" in text  # what was removed, said
    run = RunStore(out).read_run()
    assert run["status"] == "interrupted" and run["partial"] is True and run["pid"] == os.getpid()
    assert run["reason"].endswith("before training started") and run["steps_done"] == 0
    assert run["config"]["adapter"]["lora_alpha"] == 4  # the new run's record, not the earlier one's
    assert run["saved_model"]["step"] is None and not (out / "adapter").exists()
    assert not (out / "run.lock").exists() and not (out / "history.jsonl").exists()



def _earlier_completed_run(folder: Path) -> None:
    folder.mkdir()
    (folder / "run.json").write_text(run_record("completed", pid=1))
    (folder / "history.jsonl").write_text('{"step": 0}\n')
    (folder / "adapter").mkdir()


@pytest.mark.parametrize("signalled", [False, True])
def test_a_full_disk_at_the_first_run_json_says_the_earlier_run_was_removed(signalled, tmp_path):
    """The first run.json failing on a full disk said "what was written before (history.jsonl, the last run.json) is
    kept" over a folder the earlier run was cleared from; with a Ctrl-C held meanwhile, the error turned into "stopped
    before training started; nothing was written"."""
    import os

    from loratune.errors import UserError
    from loratune.train import start_record

    out = tmp_path / "run"
    _earlier_completed_run(out)

    class Full(RunStore):
        def write_run(self, run):
            if signalled:
                os.kill(os.getpid(), signal.SIGINT)  # held by the shield
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises((UserError, KeyboardInterrupt)) as err:  # (an interrupt would stop the session: caught)
        start_record(Full(out), "seed: 1\n", {"status": "running"})
    assert isinstance(err.value, UserError)
    assert err.value.problem.startswith(f"the disk holding output_dir '{out}' is full")
    assert err.value.fix == ("free some space or give an output_dir on another disk; the earlier run in "
                             f"{out} was removed (run.json, adapter, history.jsonl)")
    # no run.lock left, nor the new config.yaml without its run.json (alone it would refuse the next try as no run's)
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_second_signal_while_the_interrupted_start_is_recorded_leaves_no_running_record(tmp_path, monkeypatch):
    """A first Ctrl-C during the start is recorded as `interrupted before training`; a second one landing while that
    record was built (between two shields) left the new run.json `running` over a dead process, run.lock held."""
    import os

    import loratune.train as T

    out = tmp_path / "run"
    _earlier_completed_run(out)
    real_now = T.utc_now

    class Signalled(RunStore):
        def write_run(self, run):
            if run["status"] == "running":
                os.kill(os.getpid(), signal.SIGINT)  # the first: held until the record is this run's
            super().write_run(run)

    def now_and_again():
        os.kill(os.getpid(), signal.SIGINT)  # the second, as the interrupted record is built
        return real_now()

    monkeypatch.setattr(T, "utc_now", now_and_again)
    with pytest.raises(KeyboardInterrupt):
        T.start_record(Signalled(out), "seed: 1\n", {"status": "running", "pid": os.getpid()})
    run = RunStore(out).read_run()
    assert run["status"] == "interrupted" and run["partial"] is True
    assert run["reason"] == "interrupted by the user (Ctrl-C) before training started"
    assert run["saved_model"] == {"step": None, "note": "no model saved: the run ended before training; the earlier "
                                  f"run in {out} was removed (run.json, adapter, history.jsonl)"}
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "run.json"]  # run.lock let go
