"""Many workers on one study, on real engines: a leader and three worker processes on SQLite and on a
throwaway PostgreSQL server, with scripted trial outcomes (tests/workers_script.py). No trial runs twice,
no finished trial is lost, a worker killed with kill -9 mid-trial has its trial retried by another process,
and the decisions and the final pick are those of the leader alone."""

from __future__ import annotations

import collections
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.store import RunStore

SCRIPT = Path(__file__).resolve().parent.parent / "workers_script.py"
REQUIRE_PG = os.environ.get("LORATUNE_REQUIRE_POSTGRES") == "1"  # .ci/run: a missing server fails, not skips


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL cluster under a temp dir on 127.0.0.1 (stopped at the end). The server
    refuses to run as root: as root, initdb and pg_ctl run as the `postgres` user."""
    bindir = _pg_bin()
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        bindir = None
    if bindir is None:
        msg = "PostgreSQL binaries (apt-get install postgresql) or psycopg2 are missing"
        if REQUIRE_PG:
            pytest.fail(msg)
        pytest.skip(msg)
    root = tmp_path_factory.mktemp("pg")
    data = root / "data"
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(root, "postgres")
        os.chmod(root, 0o755)
        for parent in root.parents:  # the postgres user must reach the temp dir
            if str(parent) in ("/", "/tmp"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    port = _free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)


def _new_storage(engine: str, tmp_path: Path, request, tag: str) -> str:
    if engine == "sqlite":
        (tmp_path / tag).mkdir()
        return f"sqlite:///{tmp_path / tag / 'study.db'}"
    import psycopg2

    base = request.getfixturevalue("postgres")
    conn = psycopg2.connect(base + "/postgres")
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {tag}")
    conn.close()
    return f"{base}/{tag}"


def _spawn(role: str, url: str, study_dir: Path, out: Path, slow: float = 0.0, wait_workers: int = 0,
           trial_s: float = 0.3) -> subprocess.Popen:
    env = {**os.environ, "LORATUNE_TEST_HEARTBEAT_S": "1", "LORATUNE_SCRIPTED_TRIAL_S": str(trial_s),
           "LORATUNE_TEST_WAIT_WORKERS": str(wait_workers)}
    return subprocess.Popen([sys.executable, str(SCRIPT), role, url, str(study_dir), str(out), str(slow)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(str(out) + ".err", "w"),
                            start_new_session=True)


def _unnumbered(decisions: list) -> list:
    import re

    return [[re.sub(r"#\d+", "#", str(x)) for x in d] for d in decisions]


def _log(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> dict:
    """The leader alone (one process): the reference decisions and pick."""
    d = tmp_path_factory.mktemp("alone")
    p = _spawn("leader", f"sqlite:///{d / 'study.db'}", d / "study", d / "leader.json")
    assert p.wait(timeout=180) == 0, (d / "leader.json.err").read_text()
    return json.loads((d / "leader.json").read_text())


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_three_workers_one_study(engine, alone, tmp_path, request):
    import optuna
    from optuna.trial import TrialState

    url = _new_storage(engine, tmp_path, request, f"w3_{engine}")
    study_dir = tmp_path / "study"
    # the leader's trials take 1 s, so a worker polling a loaded machine still wins a queued trial
    procs = {"leader": _spawn("leader", url, study_dir, tmp_path / "leader.json", wait_workers=1, trial_s=1.0),
             "doomed": _spawn("worker", url, study_dir, tmp_path / "doomed.json", slow=600)}
    try:
        deadline = time.time() + 120
        claimed = None
        while time.time() < deadline and claimed is None and procs["leader"].poll() is None:
            starts = [e for e in _log(tmp_path / "doomed.json.log") if e[0] == "start"]
            claimed = starts[0][2] if starts else None
            time.sleep(0.05)
        assert claimed is not None, "the doomed worker never claimed a trial"
        os.kill(procs["doomed"].pid, signal.SIGKILL)  # mid-trial
        procs["doomed"].wait(timeout=30)
        for name in ("w1", "w2"):
            procs[name] = _spawn("worker", url, study_dir, tmp_path / f"{name}.json")
        assert procs["leader"].wait(timeout=180) == 0, (tmp_path / "leader.json.err").read_text()
        for name in ("w1", "w2"):
            assert procs[name].wait(timeout=60) == 0, (tmp_path / f"{name}.json.err").read_text()
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    led = json.loads((tmp_path / "leader.json").read_text())
    # the decisions and the pick of the leader alone (trial numbers aside: a retried trial takes a new one)
    assert _unnumbered(led["decisions"]) == _unnumbered(alone["decisions"])
    assert led["final"] == alone["final"] and led["trials"] == alone["trials"]
    # no trial trained to the end twice; the killed worker's trial trained again by another process
    done = collections.Counter()
    by = {}
    for name in ("leader", "w1", "w2", "doomed"):
        for what, pid, key in _log(tmp_path / f"{name}.json.log"):
            if what == "done":
                done[key] += 1
                by[key] = name
    assert not [k for k, c in done.items() if c > 1], "a trial ran twice"
    assert done[claimed] == 1 and by[claimed] != "doomed"
    worked = [json.loads((tmp_path / f"{n}.json").read_text())["trials"] for n in ("w1", "w2")]
    # no finished trial lost: every trial trained to the end is a finished trial of the study, once
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from loratune.search.study import driver_url

    trials = optuna.load_study(study_name="loratune", storage=driver_url(url)).get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    keys = [t.user_attrs["key"] for t in finished]
    assert sorted(keys) == sorted(done) and len(keys) == len(set(keys))
    dead = [t for t in trials if t.user_attrs.get("key") == claimed and t.state == TrialState.FAIL]
    assert len(dead) == 1, "the killed worker's trial is failed (stale heartbeat), then retried"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(len(w) for w in worked) >= 1, "the workers trained nothing"


def test_a_second_leader_gets_a_clear_message(tmp_path, capsys):
    """Two fresh `tune` processes on one study dir: the second is refused before Optuna is touched."""
    from loratune.cli import main
    from loratune.store import RunLock

    study = tmp_path / "study"
    study.mkdir()
    held = RunLock(study, "study.lock")
    held.acquire()
    try:
        assert main(["tune", "--study-dir", str(study), "--budget", "2trials"]) == 2
    finally:
        held.release()
    err = " ".join(capsys.readouterr().err.split())
    assert "another `loratune tune`" in err and "--worker" in err and "Traceback" not in err
    assert not (study / "study.db").exists()


def test_postgres_without_its_driver_names_the_extra(monkeypatch, tmp_path):
    import builtins
    import importlib.util

    from loratune.errors import UserError
    from loratune.search.study import Study

    real = builtins.__import__

    def no_psycopg2(name, *a, **k):
        if name.startswith("psycopg2"):
            raise ImportError("No module named 'psycopg2'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_psycopg2)
    # driver_url asks find_spec, which an import hook does not answer: without this the test held only in the whole
    # suite's order (a psycopg2 dialect already loaded), not alone
    real_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("psycopg")
                        else real_spec(name, *a))
    with pytest.raises(UserError) as err:
        Study.open(tmp_path / "s", storage="postgresql://u:secret@127.0.0.1:1/db")
    text = str(err.value)
    assert "psycopg2" in text and "loratune[postgres]" in text and "secret" not in text


def test_a_worker_without_a_study_is_told_to_start_one(tmp_path, capsys, monkeypatch):
    from loratune.cli import main
    from loratune.search import worker

    monkeypatch.setattr(worker, "WAIT_FOR_STUDY_S", 1.0)  # it waits for a leader starting beside it first
    assert main(["tune", "--worker", "--study-dir", str(tmp_path / "none")]) == 2
    out = capsys.readouterr()
    assert "waiting up to 1s for its leader" in " ".join(out.out.split())
    assert "after waiting 1s" in " ".join(out.err.split())
    assert "start it first with `loratune tune`" in " ".join(out.err.split())
    assert not (tmp_path / "none").exists()


def test_a_worker_given_another_study_name_than_its_folders_is_refused_at_once(tmp_path, capsys, monkeypatch):
    """A mistyped --study-name in a study folder waited a minute for a study no leader can make there (a folder's
    study.db holds one study), then told the user to start one that the leader would refuse."""
    from loratune.cli import main
    from loratune.search import worker
    from loratune.search.study import Study

    monkeypatch.setattr(worker, "WAIT_FOR_STUDY_S", 30.0)
    Study.open(tmp_path / "study", meta={"strategy": "protocol"}, heartbeat_s=1).close()
    assert main(["tune", "--worker", "--study-dir", str(tmp_path / "study"), "--study-name", "loratnue"]) == 2
    out = capsys.readouterr()
    err = " ".join(out.err.split())
    assert "waiting" not in out.out and "no study named 'loratnue'" in err and "(it holds 'loratune')" in err
    assert "give --study-name loratune" in err


def test_a_worker_started_before_its_leader_waits_for_the_study(tiny_bert, intent_data, tmp_path):
    """`loratune tune ... & loratune tune --worker` at the same moment: the worker exited 2 with "no study" before
    the leader had made it; now it waits for the study to appear."""
    import threading

    from loratune.config import load_config, to_yaml
    from loratune.search.study import Study
    from loratune.search.worker import run_worker

    from support import overrides

    base = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "unused", slices="false",
                                       robustness_probe="false", num_threads=1))

    def leader() -> None:
        time.sleep(1.5)
        study = Study.open(tmp_path / "study", meta={"strategy": "protocol"}, heartbeat_s=1)
        study.set_meta(trial_base=to_yaml(base), finished=True)
        study.close()

    thread = threading.Thread(target=leader)
    thread.start()
    try:
        report = run_worker(tmp_path / "study", heartbeat_s=1, wait_for_study_s=30)
    finally:
        thread.join()
    assert (report.trials, report.reason) == ([], "the leader finished the study")


def test_tune_worker_command_trains_a_queued_trial(tiny_bert, intent_data, tmp_path, capsys):
    """`loratune tune --worker`: the trials' config from the study, a queued trial trained into an ordinary
    run directory and recorded; the worker leaves once the leader is gone and nothing is queued."""
    from loratune.config import load_config, to_yaml
    from loratune.search.study import Study
    from loratune.search.trial import TrialSpec

    from support import overrides

    base = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "unused", slices="false",
                                       robustness_probe="false", num_threads=1))
    leader = Study.open(tmp_path / "study", meta={"strategy": "protocol"}, heartbeat_s=1)
    leader.set_meta(trial_base=to_yaml(base))
    assert leader.enqueue(TrialSpec("r4", "pair", {"adapter.r": 4, "train.learning_rate": 5e-3}, "queued"))
    leader.close()  # the leader is gone: the worker drains the queue, then leaves
    assert main(["tune", "--worker", "--study-dir", str(tmp_path / "study"), "--heartbeat", "1"]) == 0
    assert "1 trial(s) trained" in " ".join(capsys.readouterr().out.split())
    study = Study.open(tmp_path / "study", worker=True, heartbeat_s=1)
    (rec,) = study.records()
    study.close()
    assert rec.result.status == "completed" and RunStore(rec.run_dir).read_run()["status"] == "completed"


def test_a_worker_whose_trial_fails_by_the_users_input_stops_with_the_error(tmp_path):
    """A queued trial that failed by the user's input (a model that cannot load) stopped the worker with the
    trial left `running`; now it is failed without a record (a --resume trains it again) and the error goes up."""
    from loratune.errors import UserError
    from loratune.search.study import Study
    from loratune.search.trial import TrialSpec
    from loratune.search.worker import work

    class CannotLoad:
        def run(self, spec, run_dir, watch=None):
            raise UserError("could not load the model from 'x'", "check the folder's files")

    study = Study.open(tmp_path / "study", meta={"strategy": "protocol"}, heartbeat_s=1)
    try:
        assert study.enqueue(TrialSpec("r4", "pair", {"adapter.r": 4}, "queued"))
        with pytest.raises(UserError, match="could not load the model"):
            work(study, CannotLoad(), poll_s=0.01, idle_exit_s=0)
        (t,) = study.optuna.get_trials(deepcopy=False)
        assert t.state.name == "FAIL" and "record" not in t.user_attrs and study.records() == []
        assert (t.user_attrs["status"], t.user_attrs["reason"]) == (
            "failed", "stopped tune: could not load the model from 'x'")
    finally:
        study.close()


def test_a_worker_joined_with_storage_alone_writes_into_the_leaders_folder(tiny_bert, intent_data, tmp_path,
                                                                            monkeypatch, capsys):
    """The README's `--worker --storage URL` (no --study-dir) wrote its trial into ./runs/tune/trials of its own
    working directory, and the study recorded that path; a worker of a finished study left an empty ./runs/tune."""
    from loratune.config import load_config, to_yaml
    from loratune.search.study import LEADER_DIR, Study
    from loratune.search.trial import TrialSpec

    from support import overrides

    base = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "unused", slices="false",
                                       robustness_probe="false", num_threads=1))
    leader = Study.open(tmp_path / "study", meta={"strategy": "protocol"}, heartbeat_s=1)
    leader.set_meta(trial_base=to_yaml(base), **{LEADER_DIR: str(leader.dir)})
    assert leader.enqueue(TrialSpec("r4", "pair", {"adapter.r": 4, "train.learning_rate": 5e-3}, "queued"))
    leader.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    assert main(["tune", "--worker", "--storage", url, "--heartbeat", "1"]) == 0
    assert "1 trial(s) trained" in " ".join(capsys.readouterr().out.split())
    study = Study.open(tmp_path / "study", worker=True, heartbeat_s=1)
    (rec,) = study.records()
    study.set_meta(finished=True)
    study.close()
    assert Path(rec.run_dir).parent == tmp_path / "study" / "trials" and Path(rec.run_dir, "run.json").is_file()
    assert list(elsewhere.iterdir()) == []
    assert main(["tune", "--worker", "--storage", url, "--heartbeat", "1"]) == 0  # the study is finished
    assert "the leader finished the study" in " ".join(capsys.readouterr().out.split())
    assert list(elsewhere.iterdir()) == []  # no empty runs/tune left


def test_a_storage_worker_writes_into_the_leaders_folder_only_where_it_holds_the_study(tiny_bert, intent_data,
                                                                                      tmp_path, monkeypatch, capsys):
    """The leader's recorded folder existed on the worker's machine as another study's folder: the worker trained
    into it and wrote over that study's trials/00-r4. An explicit --study-dir was also overridden."""
    import json as _json

    from loratune.config import load_config, to_yaml
    from loratune.search.study import LEADER_DIR, Study
    from loratune.search.trial import TrialSpec

    from support import overrides

    other = tmp_path / "other"  # another study's folder, at the path the leader recorded
    Study.open(other, meta={"strategy": "protocol"}, heartbeat_s=1).close()
    (other / "trials" / "00-r4").mkdir(parents=True)
    (other / "trials" / "00-r4" / "run.json").write_text('{"status": "completed", "marker": "other"}')
    base = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "unused", slices="false",
                                       robustness_probe="false", num_threads=1))
    leader = Study.open(tmp_path / "study", meta={"strategy": "protocol"}, heartbeat_s=1)
    leader.set_meta(trial_base=to_yaml(base), **{LEADER_DIR: str(other)})
    assert leader.enqueue(TrialSpec("r4", "pair", {"adapter.r": 4, "train.learning_rate": 5e-3}, "queued"))
    leader.close()
    mine = tmp_path / "mine"
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    assert main(["tune", "--worker", "--storage", url, "--study-dir", str(mine), "--heartbeat", "1"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "not this study's folder" not in out  # --study-dir given: used as it is, no note
    assert _json.loads((other / "trials" / "00-r4" / "run.json").read_text())["marker"] == "other"
    assert [p.name for p in (mine / "trials").iterdir()] == ["00-r4"]


def test_a_resume_refused_by_a_live_leader_leaves_no_study_dir(tmp_path):
    """`--resume --storage URL --study-dir NEW` while another leader holds the study: refused (exit 2), but NEW was
    left behind, empty (the lease is taken after the study is loaded, and only a refusal before that cleaned up)."""
    import socket
    import time as _time

    from loratune.errors import UserError
    from loratune.search.study import Study

    first = Study.open(tmp_path / "study", meta={"strategy": "protocol"}, heartbeat_s=60)
    first.close()
    first.optuna.set_user_attr("leader", {"pid": 1, "host": socket.gethostname() + "-other", "at": _time.time()})
    with pytest.raises(UserError, match="is led by another"):
        Study.open(tmp_path / "new" / "dir", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}", resume=True,
                   heartbeat_s=60)
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "study" / "study.db").is_file()


def test_a_worker_whose_trial_finished_as_the_signal_came_keeps_it_then_stops(tmp_path):
    """A worker's trial that finished before a SIGTERM took effect (runner: FinishedThenInterrupted) was failed like
    an unfinished one ("the worker running it was stopped"): the leader trained the finished trial again. Now it is
    recorded as finished, then the signal itself goes up (its exit code: 143)."""
    from loratune.search.runner import FinishedThenInterrupted
    from loratune.search.study import Study
    from loratune.search.trial import TrialResult, TrialSpec
    from loratune.search.worker import work
    from loratune.signals import Terminated

    done = TrialResult("completed", 0.532, 608, 3.0, steps_planned=12, steps_done=12, curve=((4, 0.3), (12, 0.532)))

    class FinishesThenStops:
        def run(self, spec, run_dir, watch=None):
            raise FinishedThenInterrupted(done, Terminated())

    study = Study.open(tmp_path / "study", meta={"strategy": "protocol"}, heartbeat_s=1)
    try:
        assert study.enqueue(TrialSpec("r4", "pair", {"adapter.r": 4}, "queued"))
        with pytest.raises(KeyboardInterrupt) as exc:
            work(study, FinishesThenStops(), poll_s=0.01, idle_exit_s=0)
        assert type(exc.value) is Terminated
        (t,) = study.optuna.get_trials(deepcopy=False)
        assert t.state.name == "COMPLETE" and t.value == pytest.approx(0.532)
        (rec,) = study.records()
        assert rec.result == done and rec.spec.name == "r4"
    finally:
        study.close()


def test_tune_worker_sigtermed_as_its_trial_writes_its_final_record_keeps_it_and_exits_143(
        tiny_bert, intent_data, tmp_path, capsys, monkeypatch):
    """SIGTERM while a worker's trial wrote its final record (held off until the record was whole): the trial was
    failed and trained again by the leader, and the worker exited 130 saying "interrupted by the user (Ctrl-C)"."""
    import signal

    import loratune.train as train_mod
    from loratune.config import load_config, to_yaml
    from loratune.search.study import Study
    from loratune.search.trial import TrialSpec

    from support import overrides

    base = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "unused", slices="false",
                                       robustness_probe="false", num_threads=1))
    leader = Study.open(tmp_path / "study", meta={"strategy": "protocol"}, heartbeat_s=1)
    leader.set_meta(trial_base=to_yaml(base))
    assert leader.enqueue(TrialSpec("r4", "pair", {"adapter.r": 4, "train.learning_rate": 5e-3}, "queued"))
    leader.close()
    original, landed = train_mod._finish_record, []

    def sigterm_lands(*a, **k):  # SIGTERM arrives as the record is written: the handler now set runs (it holds it)
        landed.append(True)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        return original(*a, **k)

    monkeypatch.setattr(train_mod, "_finish_record", sigterm_lands)
    rc = main(["tune", "--worker", "--study-dir", str(tmp_path / "study"), "--heartbeat", "1"])
    out = " ".join(capsys.readouterr().out.split())
    assert landed == [True]
    assert rc == 143, out
    assert "stopped by SIGTERM" in out and "(Ctrl-C)" not in out
    study = Study.open(tmp_path / "study", worker=True, heartbeat_s=1)
    try:
        (rec,) = study.records()
        (t,) = study.optuna.get_trials(deepcopy=False)
    finally:
        study.close()
    run = RunStore(rec.run_dir).read_run()
    assert run["status"] == "completed" and rec.result.status == "completed" and t.state.name == "COMPLETE"
    assert rec.result.value == pytest.approx(run["best"]["val/macro_f1"])


def test_a_worker_whose_leader_finished_between_its_looks_says_it_finished(tmp_path, monkeypatch):
    """The leader finished (`finished` set, then its lease released) between the worker's check of `finished` and its
    claim: the worker said "the leader is gone (its lease expired)" of a leader that exited 0."""
    from loratune.search.study import Study
    from loratune.search.worker import work

    leader = Study.open(tmp_path / "study", meta={"strategy": "protocol"}, heartbeat_s=1)
    leader.set_meta(finished=True)
    leader.close()  # released
    study = Study.open(tmp_path / "study", worker=True, heartbeat_s=1)
    study.heartbeat_s = 0  # no grace period to wait out in a test
    reads = iter([False])  # the first look, before the leader finished
    monkeypatch.setattr(Study, "finished", property(lambda self: next(reads, True)))
    try:
        report = work(study, runner=None, poll_s=0.01)
    finally:
        study.close()
    assert (report.trials, report.reason) == ([], "the leader finished the study")
