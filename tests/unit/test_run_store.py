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

from support import run_record


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
    files = {HISTORY: '{"step": 0}\n{"step": 4}\n', CONFUSION: '{"step": 4}\n', RUN: run_record("completed"),
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
        # the earlier run.json too: the new run writes its own next (train.start_record)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["config.yaml", LOCK])
        assert run.read_history() == []
    finally:
        run.close()


def _history(d: Path, steps) -> list[str]:
    lines = [json.dumps({"step": s, "val/macro_f1": round(0.1 + s / 10000, 4)}) + "\n" for s in steps]
    (d / HISTORY).write_text("".join(lines))
    return lines


def test_a_damaged_middle_history_line_is_skipped_alone_and_counted_by_every_reader(tmp_path):
    from loratune.history_io import read_loratune_run
    from loratune.report.model import read_history as report_history

    lines = _history(tmp_path, range(0, 4200, 200))  # 21 eval points, steps 0..4000
    lines[2] = lines[2][:20] + "\n"  # one line cut short in the middle (a bad sector, an edit), not by a kill
    lines[5] = "[1, 2]\n"  # valid JSON, but no eval point
    (tmp_path / HISTORY).write_text("".join(lines))
    kept = [s for s in range(0, 4200, 200) if s not in (400, 1000)]
    assert [p["step"] for p in RunStore(tmp_path).read_history()] == kept
    run = read_loratune_run(tmp_path)
    assert [p["step"] for p in run.points] == kept and run.points[-1]["val/macro_f1"] == 0.5
    assert "history.jsonl: 2 damaged lines skipped (lines 3, 6); the other eval points are kept" in run.notes
    assert not any("torn" in n for n in run.notes)
    points, note = report_history(tmp_path / HISTORY)
    assert [p["step"] for p in points] == kept and note == run.notes[0]


def test_a_torn_last_history_line_is_the_hard_kill_case(tmp_path):
    from loratune.history_io import read_loratune_run

    lines = _history(tmp_path, (0, 4, 8))
    (tmp_path / HISTORY).write_text("".join(lines) + '{"step": 12, "val/macro_f1": 0.\n\n')
    assert [p["step"] for p in RunStore(tmp_path).read_history()] == [0, 4, 8]
    notes = read_loratune_run(tmp_path).notes
    assert [n for n in notes if "history" in n] == [
        "history.jsonl line 4 (the last) is torn (hard kill?); kept the 3 whole lines"]


def test_a_folder_whose_adapter_and_report_no_run_wrote_is_refused_and_kept(tmp_path):
    # names alone said nothing of whose they were: a user's own adapter/ notes and report.html were deleted as an
    # "earlier run's outputs"
    from loratune.store import REPORT, earlier_run_note

    (tmp_path / ADAPTER).mkdir()
    (tmp_path / ADAPTER / "my_notes.txt").write_text("keep")
    (tmp_path / REPORT).write_text("x")
    with pytest.raises(UserError) as note:
        earlier_run_note(tmp_path)  # said before training, as the CLI and api.train ask it first
    assert f"holds {REPORT}, {ADAPTER} but no loratune run ({RUN} or {HISTORY})" in note.value.problem
    assert "another output_dir" in note.value.fix
    with pytest.raises(UserError, match="no loratune run"):
        RunStore(tmp_path).create("seed: 1\n")
    assert (tmp_path / ADAPTER / "my_notes.txt").read_text() == "keep" and (tmp_path / REPORT).read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == [ADAPTER, REPORT]  # no lock, no config.yaml left
    (tmp_path / RUN).write_text(run_record("completed"))  # a run's own report and model: replaced, as before
    assert "held a completed run" in earlier_run_note(tmp_path)
    store = RunStore(tmp_path)
    store.create("seed: 1\n")
    store.close()
    assert not (tmp_path / ADAPTER).exists() and not (tmp_path / REPORT).exists()


def _completed_run(folder: Path) -> None:
    (folder / RUN).write_text(run_record("completed", pid=1))
    (folder / HISTORY).write_text('{"step": 0}\n')
    (folder / ADAPTER).mkdir()
    (folder / ADAPTER / "adapter_model.safetensors").write_text("w")


def test_clearing_an_earlier_run_removes_its_record_with_its_model(tmp_path):
    # a kill -9 between clearing the earlier run and writing the new run.json left the earlier `completed` run.json
    # over its removed model: its record goes first, with the rest, so nothing is left that lies
    _completed_run(tmp_path)
    store = RunStore(tmp_path)
    try:
        assert store.create("seed: 1\n") == [RUN, ADAPTER, HISTORY]  # a marker (history.jsonl) moved last
        assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", LOCK]
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


class _Killed(BaseException):
    """A kill -9 at that point: nothing after it runs (no rollback, no cleanup)."""


@pytest.mark.parametrize("at", [RUN, ADAPTER, HISTORY, "rmtree"])
def test_a_kill_at_any_point_of_clearing_an_earlier_run_leaves_a_folder_the_next_run_takes_over(tmp_path, monkeypatch,
                                                                                                 at):
    # with run.json and history.jsonl (what says a folder holds a run) moved out first, a kill -9 mid-clearing left
    # adapter/ with no marker: every later run was refused ("holds adapter but no loratune run"), and the hidden
    # folder of what was moved stayed for good
    import loratune.store as store_mod
    from loratune.store import EARLIER_TMP, earlier_run_note

    _completed_run(tmp_path)
    real_rename, real_rmtree = os.rename, shutil.rmtree

    def rename(a, b):
        if Path(a).name == at and EARLIER_TMP[0] in str(b):
            raise _Killed
        return real_rename(a, b)

    def rmtree(p, *args, **kwargs):
        if at == "rmtree" and EARLIER_TMP[0] in str(p):
            raise _Killed
        return real_rmtree(p, *args, **kwargs)

    monkeypatch.setattr(store_mod.os, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    killed = RunStore(tmp_path)
    with pytest.raises(_Killed):
        killed.create("seed: 1\n")
    killed.close()  # (the kill's lock goes with its process)
    monkeypatch.setattr(store_mod.os, "rename", real_rename)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(EARLIER_TMP[0]))
    # never the earlier `completed` record over what was removed: whole, or gone
    assert left == {RUN: [ADAPTER, HISTORY, RUN], ADAPTER: [ADAPTER, HISTORY], HISTORY: [HISTORY], "rmtree": []}[at]
    note = earlier_run_note(tmp_path)
    assert (note is None) == (at == "rmtree")  # everything was out: nothing left to replace
    if note:
        assert "replaced by this run" in note
    store = RunStore(tmp_path)
    try:
        assert store.create("seed: 2\n") == [n for n in (RUN, ADAPTER, HISTORY) if n in left]
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # the hidden folder went too


def test_no_note_for_a_folder_another_process_trains_into(tmp_path):
    # the note said "replaced by this run", then the lock refused the run and nothing was replaced. The note is said
    # as the run clears the folder (train.start_record), where the lock decides: while another process holds it,
    # nothing is replaced and nothing is said (the lock's refusal comes next); once it has ended, the note is said
    from loratune.store import earlier_run_note

    _completed_run(tmp_path)
    (tmp_path / RUN).write_text(run_record("running", pid=1))
    other = RunLock(tmp_path)  # (another open file: its flock conflicts with this process's next one too)
    other.acquire()
    try:
        assert earlier_run_note(tmp_path) is None
        with pytest.raises(UserError, match="another loratune process is training into"):
            RunStore(tmp_path).create("seed: 1\n")
        assert (tmp_path / ADAPTER / "adapter_model.safetensors").read_text() == "w"
    finally:
        other.release()
    assert "held a died run" in earlier_run_note(tmp_path)  # its process gone: replaced, and said


def test_a_tune_studys_final_folder_is_refused_naming_the_missing_file_and_the_picks_trial(tmp_path, monkeypatch,
                                                                                         capsys):
    """`loratune evaluate g/final` said "no run.json / config.yaml" beside final/config.yaml: the message names only
    what is missing and points to the pick's trial directory (study.json records it relative to where tune ran)."""
    from loratune.cli import main

    monkeypatch.chdir(tmp_path)
    final, trial = tmp_path / "g" / "final", tmp_path / "g" / "trials" / "05-steps60"
    final.mkdir(parents=True)
    trial.mkdir(parents=True)
    (final / "config.yaml").write_text("model:\n  name_or_path: tiny\n", encoding="utf-8")
    (final / "study.json").write_text(json.dumps({"recommendation": {"trial": 5, "run_dir": "g/trials/05-steps60"}}))
    with pytest.raises(UserError) as got:
        RunStore(final).require()
    assert got.value.problem == (f"'{final}' is not a loratune run directory (no run.json): it is a tune study's "
                                 "final/ folder, the pick's exported adapter and config")
    assert got.value.fix == f"give the pick's trial directory, '{trial}', which holds its run record"
    (final / "study.json").unlink()  # an unfinished export: test.json names the pick too
    (final / "test.json").write_text(json.dumps({"trial": 5, "run_dir": str(trial), "scores": {}}))
    with pytest.raises(UserError) as got:
        RunStore(final).require()
    assert str(trial) in got.value.fix
    assert main(["evaluate", "g/final", "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml" not in err.split("fix:")[0] and "05-steps60" in err, err
    empty = tmp_path / "empty"  # no study: both files missing, the train advice
    empty.mkdir()
    with pytest.raises(UserError) as got:
        RunStore(empty).require()
    assert "(no run.json and no config.yaml)" in got.value.problem and "loratune train" in got.value.fix


@pytest.mark.parametrize("text,ours", [(run_record("completed"), True), ('{"mine": 1}\n', False),
                                       ('{"status": "completed"}\n', False), ("[1, 2]\n", False),
                                       ('{"status": "completed", "versions": {"loratune": "0.1.0"', False),
                                       # LoratuneCallback's record of a Trainer run keeps no versions (review: a rerun
                                       # into <output_dir>/loratune was refused as 'no loratune run's record')
                                       ('{"status": "completed", "source": "hf-trainer callback"}\n', True)])
def test_a_run_json_is_a_loratune_runs_record_by_its_shape(tmp_path, text, ours):
    # any run.json passed for a loratune run's, so what beside it had a run's name (adapter/) was deleted with it
    from loratune.store import run_record as record_of

    (tmp_path / RUN).write_text(text)
    assert (record_of(tmp_path / RUN) is not None) == ours
    (tmp_path / ADAPTER).mkdir()
    if ours:
        assert RunStore(tmp_path).create("seed: 1\n") == [RUN, ADAPTER]
        return
    with pytest.raises(UserError) as info:
        RunStore(tmp_path).create("seed: 1\n")
    assert info.value.problem == (f"output_dir '{tmp_path}' holds a {RUN} that is no loratune run's record: a run "
                                  "there would replace it")
    assert (tmp_path / RUN).read_text() == text and (tmp_path / ADAPTER).is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [ADAPTER, RUN]



def test_a_run_killed_between_its_config_and_its_first_record_leaves_a_folder_a_rerun_takes(tmp_path):
    """A SIGKILL between create's config.yaml and the first run.json left config.yaml and a dead run.lock: the next run
    was refused ('a config.yaml that no loratune run wrote (no loratune run.json beside it)'), the user left to delete
    it by hand. The lock a run takes before its config.yaml says whose it is; a hand-written config.yaml alone is still
    refused."""
    from loratune.store import CONFIG, LOCK

    (tmp_path / CONFIG).write_text("seed: 1\n")
    (tmp_path / LOCK).write_text("")
    assert RunStore(tmp_path).create("seed: 2\n") == [CONFIG]
    assert (tmp_path / CONFIG).read_text() == "seed: 2\n"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / CONFIG).write_text("# my settings\nseed: 1\n")
    with pytest.raises(UserError) as info:
        RunStore(mine).create("seed: 2\n")
    assert "a config.yaml that no loratune run wrote (no loratune run.json beside it)" in info.value.problem
    assert (mine / CONFIG).read_text() == "# my settings\nseed: 1\n"


def test_write_atomic_writes_a_surrogate_escaped_path_as_its_bytes(tmp_path):
    """Under LC_ALL=C (PYTHONUTF8=0) argv decodes 'runé' as 'run\\udcc3\\udca9': train's records and report -o
    crashed writing it (UnicodeEncodeError: surrogates not allowed). Written as the original bytes now."""
    import json as _json

    from loratune.store import write_atomic, write_json

    write_atomic(tmp_path / "t.txt", "output_dir: run\udcc3\udca9\n")
    assert (tmp_path / "t.txt").read_bytes() == b"output_dir: run\xc3\xa9\n"
    write_json(tmp_path / "t.json", {"output_dir": "run\udcc3\udca9"})
    assert _json.loads((tmp_path / "t.json").read_text(encoding="utf-8")) == {"output_dir": "runé"}
