"""The run directory's own rules (store.py), without a model: the run lock, what a new run in a reused directory
removes, and reading history.jsonl."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from loratune.errors import UserError
from loratune.store import ADAPTER, CONFUSION, HISTORY, LOCK, RUN, RunLock, RunStore, liveness


def test_a_waiter_that_opened_run_lock_before_its_holder_released_it_holds_the_file_at_the_path(tmp_path):
    a = RunLock(tmp_path)
    a.acquire()
    b = RunLock(tmp_path)
    waiter = threading.Thread(target=b.acquire)
    waiter.start()  # b opens run.lock now and retries its flock for about a second
    time.sleep(0.2)
    a.release()  # unlinks run.lock, then lets go of the flock on the file b had opened
    waiter.join(5)
    try:
        assert b._f is not None
        on_path, locked = os.stat(tmp_path / LOCK), os.fstat(b._f.fileno())
        assert (on_path.st_dev, on_path.st_ino) == (locked.st_dev, locked.st_ino)
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
        assert liveness(tmp_path)[0] == "alive"
        with pytest.raises(UserError, match="another loratune process is training into"):
            RunLock(tmp_path).acquire()  # a third process is refused while b trains
    finally:
        b.release()
    assert not (tmp_path / LOCK).exists()


def _earlier_run(d: Path) -> dict[str, str]:
    (d / ADAPTER).mkdir(parents=True)
    files = {HISTORY: '{"step": 0}\n{"step": 4}\n', CONFUSION: '{"step": 4}\n', RUN: '{"status": "completed"}\n',
             f"{ADAPTER}/adapter_model.safetensors": "weights", f"{ADAPTER}/label_map.json": "{}"}
    for name, text in files.items():
        (d / name).write_text(text)
    return files


def test_a_new_run_that_cannot_remove_the_earlier_runs_adapter_is_refused_with_the_earlier_record_whole(
        tmp_path, monkeypatch):
    files = _earlier_run(tmp_path)
    adapter = tmp_path / ADAPTER
    # an adapter/ whose entries cannot be removed (chmod 555 as a user; root would pass it, so the OS is told to refuse)
    real_rename, real_rmtree = os.rename, shutil.rmtree

    def rename(src, dst, *a, **k):
        if Path(src) == adapter:
            raise PermissionError(13, "Permission denied", str(src))
        return real_rename(src, dst, *a, **k)

    def rmtree(path, *a, **k):
        if Path(path) == adapter:
            raise PermissionError(13, "Permission denied", "adapter_model.safetensors")
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    run = RunStore(tmp_path)
    with pytest.raises((UserError, OSError)) as info:
        run.create("seed: 1\n")
    assert isinstance(info.value, UserError) and "adapter cannot be removed" in info.value.problem
    assert "nothing was removed" in info.value.problem
    for name, text in files.items():  # history, confusion and model of the earlier run are all still there
        assert (tmp_path / name).read_text() == text, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ADAPTER, CONFUSION, HISTORY, RUN])  # no lock left
    monkeypatch.undo()
    again = RunStore(tmp_path)
    again.create("seed: 1\n")  # the lock was let go: once the adapter can go, the next try takes it
    again.close()
    assert not (tmp_path / HISTORY).exists() and not (tmp_path / ADAPTER).exists()


def test_a_new_run_in_a_reused_directory_starts_with_none_of_the_earlier_runs_outputs(tmp_path):
    _earlier_run(tmp_path)
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1").write_text("x")
    run = RunStore(tmp_path)
    run.create("seed: 1\n")
    try:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["config.yaml", LOCK, RUN])
        assert run.read_history() == []
    finally:
        run.close()
