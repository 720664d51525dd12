"""A trial whose process was killed (kill -9) is recorded as it was: `died`/`killed` with the step and examples its
history reached, and the wall time its process lived, whenever the study is resumed. Built by hand (a killed run's
files; a study whose trial's process died) so the tests take seconds, not a tune run per case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from loratune.search.study import _record_died, spent_by_run
from loratune.store import RunStore, with_liveness

STARTED_AGO_S = 300.0  # the killed run started this long before the test (its lock: stale after 120 s)
LIVED_S = 1.0  # and its process last wrote this long after it started


def _killed_run(run_dir: Path) -> None:
    """A run killed between appending its step-20 history point and rewriting run.json (which still says step 0),
    its lock left behind unheld, its files last written LIVED_S after it started."""
    run_dir.mkdir(parents=True)
    started = datetime.now(timezone.utc) - timedelta(seconds=STARTED_AGO_S)
    run = {"status": "running", "steps_done": 0, "steps_planned": 120, "examples_seen": 0, "wall_s": 0.0,
           "started_at": started.isoformat(timespec="seconds"), "best": {}}
    (run_dir / "run.json").write_text(json.dumps(run))
    points = [{"step": 0, "examples_seen": 0, "val/macro_f1": 0.033}, {"step": 20, "examples_seen": 160,
                                                                         "val/macro_f1": 0.347}]
    (run_dir / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points) + '{"step": 2')  # torn
    (run_dir / "run.lock").write_text(json.dumps({"pid": 2 ** 22 + 7, "host": "elsewhere-never"}))
    # another host's lock reads dead once its heartbeat is old: the files' times are the process's last writes
    started_s = datetime.fromisoformat(run["started_at"]).timestamp()
    for name in ("run.json", "history.jsonl", "run.lock"):
        os.utime(run_dir / name, (started_s + LIVED_S, started_s + LIVED_S))


def test_a_killed_run_reads_as_dying_where_its_history_reached(tmp_path):
    _killed_run(tmp_path / "run")
    run = with_liveness(json.loads((tmp_path / "run" / "run.json").read_text()), tmp_path / "run")
    assert (run["status"], run["steps_done"], run["examples_seen"]) == ("died", 20, 160)  # it read step 0, 0 examples
    assert "died at step 20 of 120" in run["reason"] and run["partial"] is True
    assert abs(run["wall_s"] - LIVED_S) < 0.01


def test_recording_a_run_as_died_keeps_the_wall_time_its_process_lived(tmp_path):
    """The rewrite moves run.json's time to now: the wall time charged from the last sign of life then ran to the
    resume (27 s for a process that lived 1 s), for every later session too."""
    run_dir = tmp_path / "run"
    _killed_run(run_dir)
    assert abs(spent_by_run(str(run_dir))[0] - LIVED_S) < 1.5
    _record_died(str(run_dir))
    wall, examples = spent_by_run(str(run_dir))
    assert abs(wall - LIVED_S) < 1.5 and examples == 160  # not STARTED_AGO_S
    on_disk = json.loads((run_dir / "run.json").read_text())
    assert (on_disk["status"], on_disk["steps_done"], on_disk["examples_seen"]) == ("died", 20, 160)
    assert abs(on_disk["wall_s"] - LIVED_S) < 0.01
    assert RunStore(run_dir).read_run()["steps_done"] == 20


CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from loratune.search.study import Study
    from loratune.search.trial import TrialSpec

    study = Study.open(sys.argv[1], meta={"strategy": "random"}, heartbeat_s=1)
    handle, run_dir = study.start(TrialSpec("lr0.04", "search", {"train.learning_rate": 0.04}))
    run_dir.mkdir(parents=True)
    run = {"status": "running", "steps_done": 20, "steps_planned": 120, "examples_seen": 160, "wall_s": 0.0,
           "started_at": "2026-01-01T00:00:00+00:00"}
    (run_dir / "run.json").write_text(json.dumps(run))
    (run_dir / "history.jsonl").write_text(json.dumps({"step": 20, "examples_seen": 160}) + "\\n")
    (run_dir / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    os.kill(os.getpid(), signal.SIGKILL)  # its heartbeats stop with it
""")


def test_a_resume_after_the_heartbeat_grace_period_records_the_dead_trial_as_killed(tmp_path):
    """A resume more than 3 heartbeats after the kill found the trial stale first (fail_stale): it was failed and
    queued again but stayed `running`, without a reason, its run.json `running` for good."""
    import socket

    from loratune.search.study import Study

    study_dir = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-c", CHILD.replace("os.uname().nodename", repr(socket.gethostname())),
                           str(study_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    time.sleep(4.5)  # past the grace period of 3 heartbeats of 1 s
    study = Study.open(study_dir, resume=True, heartbeat_s=1)
    try:
        trial = next(t for t in study.optuna.get_trials(deepcopy=False) if t.user_attrs.get("name") == "lr0.04"
                     and t.state.name == "FAIL")
        assert trial.user_attrs["status"] == "killed" and "trained again" in trial.user_attrs["reason"]
        run_dir = Path(trial.user_attrs["run_dir"])
        on_disk = json.loads((run_dir / "run.json").read_text())
        assert (on_disk["status"], on_disk["steps_done"], on_disk["examples_seen"]) == ("died", 20, 160)
        assert [r["number"] for r in study.recovered] == [trial.number]
        lost = study.lost_spending()
        assert [(r["number"], r["status"], r["examples"]) for r in lost] == [(trial.number, "killed", 160)]
    finally:
        study.close()


def test_a_trial_failed_by_a_full_disk_stays_charged_and_listed_on_resume(tmp_path):
    """A trial that stopped tune with an error (a full disk: status `failed`) had trained 400 examples; a resumed
    session charged none of it ("no trial lost") and `show` omitted the trial (`failed` was neither finished nor
    lost)."""
    from loratune.search.study import Study
    from loratune.search.trial import TrialSpec

    study = Study.open(tmp_path / "study", meta={"strategy": "random"}, heartbeat_s=1)
    try:
        handle, run_dir = study.start(TrialSpec("lr0.04", "search", {"train.learning_rate": 0.04}))
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps({"status": "failed", "steps_done": 50, "examples_seen": 400,
                                                      "wall_s": 0.99, "started_at": "2026-01-01T00:00:00+00:00"}))
        study.fail(handle, "stopped tune: the disk holding output_dir is full", status="failed")
    finally:
        study.close()
    study = Study.open(tmp_path / "study", resume=True, heartbeat_s=1)
    try:
        assert [(r["name"], r["status"], r["examples"], r["wall_s"]) for r in study.lost_spending()] == [
            ("lr0.04", "failed", 400, 0.99)]
        assert [(r["name"], r["status"]) for r in study.lost_trials()] == [("lr0.04", "failed")]
    finally:
        study.close()


def test_a_worker_trial_lost_during_the_session_is_charged_once(tmp_path):
    """A worker stopped mid-trial (SIGTERM: its trial `interrupted`; kill -9 reads the same once failed) while the
    leader waited for it: the leader trained the point again but never charged what the lost trial trained (only a
    later --resume did), so the session's summary under-reported what was spent."""
    from loratune.search.budget import Budget, Meter
    from loratune.search.context import SearchContext
    from loratune.search.study import Study
    from loratune.search.trial import TrialResult, TrialSpec

    class Runner:
        def run(self, spec, run_dir, watch=None):
            return TrialResult("completed", 0.5, examples=500, wall_s=2.0, curve=((0, 0.0), (10, 0.5)))

    spec = TrialSpec("lr0.04", "search", {"train.learning_rate": 0.04}, "queued")
    leader = Study.open(tmp_path / "study", meta={"strategy": "random"}, heartbeat_s=1)
    worker = Study.open(tmp_path / "study", worker=True, heartbeat_s=1)
    try:
        assert leader.enqueue(spec)
        trial, _, run_dir = worker.claim_next()
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps({"status": "interrupted", "steps_done": 20, "examples_seen": 160,
                                                      "wall_s": 0.9, "started_at": "2026-01-01T00:00:00+00:00"}))
        worker.fail(trial, "the worker running it was stopped; the leader or another worker trains it again")
        ctx = SearchContext(store=leader, runner=Runner(), meter=Meter(Budget.parse("10000ex")), trial_examples=500)
        rec = ctx.run(spec)
        assert rec is not None and rec.number == 1
        lines = [(c["label"], c["cost"]["examples"]) for c in ctx.meter.to_dict()["ledger"]]
        assert lines[0] == ("trial #0 interrupted", 160)
        assert ctx.meter.spent.examples == 160 + 500
        assert ctx.charge_lost() == [] and ctx.meter.spent.examples == 660  # once: also the end of tune asks again
    finally:
        worker.close()
        leader.close()


def test_a_lost_worker_trial_is_not_charged_again_as_waiting_for_its_record(tmp_path):
    """Worker A trained the queued point 30 s and was killed; worker B trained it 20 s and finished, while the leader
    waited 50 s. A's 30 s was charged as lost, then again inside the leader's waiting time: 80 s for 50."""
    from memory_store import MemoryStore
    from loratune.search.budget import Budget, Meter
    from loratune.search.context import SearchContext
    from loratune.search.trial import TrialRecord, TrialResult, TrialSpec

    now = [0.0]
    spec = TrialSpec("lr0.04", "search", {"train.learning_rate": 0.04}, "queued")

    class Store(MemoryStore):
        lost: list = []

        def await_key(self, key, spec=None):
            now[0] += 50.0  # A's 30 s, then B's 20 s
            self.lost = [{"number": 0, "name": "lr0.04", "status": "killed", "wall_s": 30.0, "examples": 300}]
            return "record", TrialRecord(1, spec, "x", TrialResult("completed", 0.5, 200, 20.0,
                                                                   curve=((0, 0.0), (10, 0.5))))

        def lost_spending(self):
            return list(self.lost)

    ctx = SearchContext(store=Store(), runner=None, meter=Meter(Budget.parse("1h")), trial_examples=200,
                        clock=lambda: now[0], since=0.0)
    ctx.run(spec)
    assert ctx.meter.spent.wall_s == pytest.approx(50.0)
    assert [c["label"] for c in ctx.meter.to_dict()["ledger"]][:2] == ["trial #0 lost to a killed process",
                                                                       "#1 lr0.04 (reused from the study)"]
