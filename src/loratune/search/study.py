"""Study storage: every trial an Optuna trial, every decision a line in an fsync'd log.

Layout of a study directory:

    <study_dir>/study.db          Optuna storage (SQLite by default; any SQLAlchemy URL via `storage`)
    <study_dir>/trials/<n>-<name>/  one ordinary run directory per trial (made by training, see run-record.md)
    <study_dir>/decisions.jsonl   the decision trail, appended and fsync'd as decisions are taken
    <study_dir>/assess.json       the phase-0 assessment (reused on resume)
    <study_dir>/final/            config.yaml, adapter/, test.json, study.json

Each Optuna trial carries user attrs: `key` (canonical JSON of its config point), `name`, `phase`,
`point` (dotted overrides), `run_dir`, `status`, and, once finished, `record` (the whole
`TrialRecord` as plain data: metrics, curve, diagnosis, costs). The objective value is the run's
best val macro-F1. A trial still RUNNING when a study is reopened belonged to a killed process: it is
marked FAIL (reason recorded, its run.json rewritten as `died`) and its point is trained again;
finished trials are never re-run.

One `tune` process leads a study: it holds `<study_dir>/study.lock` (an flock the kernel drops when the
process dies, see store.RunLock) and, in the storage, a `leader` lease it renews every heartbeat; a
second `tune` or `tune --resume` on the same directory or storage is refused with a message naming the
holder, before Optuna touches the storage.

Many workers, one study (`loratune tune --worker`): only the leader runs the protocol and takes
decisions. Where a stage needs several trials that do not depend on each other (the pair's two arms,
the seed replicates, the long runs of the pick), the leader queues them (Optuna WAITING trials carrying
the trial's spec) before running them in turn; a worker claims a queued trial atomically (WAITING ->
RUNNING is a row-locked update in the RDB storage, so no trial runs twice), trains it and records it.
The leader, reaching a queued spec, claims it itself when it is still queued, or waits for the worker's
record. Every RUNNING trial sends Optuna heartbeats; one silent for the grace period (a dead process)
is failed by whoever looks next and re-queued (RetryHeartbeatStaleTrialCallback), so another process
trains it again; a live trial is never touched.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

from loratune import signals
from loratune.objectives import MACRO_F1, objective
from loratune.errors import PARSE_ERRORS, UserError, disk_full
from loratune.search.trial import TrialRecord, TrialResult, TrialSpec
# (the study layout, defined in store: it reads a final/ folder by it (TRIALS, in_study) and tells a study's folder
# from a run's (STUDY_MARKERS))
from loratune.store import DECISIONS, FINAL, STUDY_DB, STUDY_META_ATTR, TRIAL_RUN_DIR_ATTR, TRIALS, in_study, \
    read_json, write_json

@contextlib.contextmanager
def optuna_quiet():
    """Optuna's own log lines off inside the block ('A new study created', 'Trial 3 finished with value ...': the study
    says its trials its own way), and its level as it was after it: set for good, a Python caller's level stayed
    WARNING for the rest of its process after api.tune or api.report of a study."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(before, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


OVERHEADS = "overheads"  # the study's user attr: each session's overhead charges (save_overheads)
SUPERSEDED = "decisions.superseded.jsonl"  # an earlier session's decisions that a resumed one took otherwise
ASSESS = "assess.json"
DEFAULT_STUDY_NAME = "loratune"
STUDY_LOCK = "study.lock"


def study_folder(study_dir: str | Path) -> Path:
    """The folder a --study-dir names: `~/studies/x` read as a config's paths are. One place, so what tune makes, what a
    worker joins and what an interrupted tune says it kept are the same folder."""
    return Path(study_dir).expanduser()
HEARTBEAT_S = 10  # Optuna heartbeat of a running trial and the leader's lease renewal
GRACE_FACTOR = 3  # a trial (or leader) silent for 3 heartbeats belongs to a dead process
MAX_RETRY = 3  # a trial whose process died is queued again at most this many times
# a failed trial without a record in these states stopped mid-way (its process killed, a signal, a dead heartbeat, an
# error that stopped tune, a full disk: `failed`): it is listed as lost, what it spent is charged (a resumed session
# too), and it is trained again; each with how the budget's ledger names it
# the meta key where the leader records its study folder (absolute): a worker joined with --storage alone writes its
# trials there, where the leader's other trials are, not into a folder of its own working directory
LEADER_DIR = "study_dir"
LOST_STATUSES = {"killed": "lost to a killed process", "running": "lost to a killed process",
                 "interrupted": "interrupted", "failed": "failed"}
# how many times a resume trains again the point of a trial that `failed` (an error stopped tune: a full disk, or a
# point that cannot train); one that failed again is not asked again, so a point that always fails stops one resume,
# not every one
FAILED_AGAIN = 1
# the driver each SQLAlchemy dialect needs, and the pip line that installs it
DRIVERS = {"postgresql": ("psycopg2", "pip install 'loratune[postgres]'  (psycopg2-binary)"),
           "mysql": ("pymysql", "pip install pymysql, and use mysql+pymysql://...")}


# what SQLite and the OS say when the study's disk cannot take a write (SQLAlchemy wraps them: read the whole chain);
# a full disk or quota the OS reports is errors.disk_full's
WRITE_FAULTS = (("database or disk is full", "is full"), ("File too large",
                "reached the file-size limit (ulimit -f)"), ("readonly database", "is not writable"),
                ("Read-only file system", "is not writable"), ("disk I/O error", "failed a write (disk I/O error)"))


def write_fault(exc: BaseException) -> UserError | None:
    """The UserError for a storage write the study's disk refused (full, a file-size limit, read-only); None for
    anything else. The finished trials and the decision trail stay as they were."""
    chain, e, full = [], exc, False
    while e is not None and len(chain) < 8:
        chain.append(f"{type(e).__name__}: {e}")
        full = full or disk_full(e)
        e = e.__cause__ or e.__context__
    text = " | ".join(chain)
    what = "is full" if full else next((why for needle, why in WRITE_FAULTS if needle in text), None)
    if what is None:
        return None
    return UserError(f"the disk holding the study {what} ({chain[-1].splitlines()[0][:200]})",
                     "free some space (or raise the limit) and continue with `loratune tune --resume --study-dir "
                     "DIR`: the finished trials are kept")


def storage_error(url: str, exc: BaseException) -> UserError:
    """A storage that cannot be opened, said with the fix (a missing driver names its package)."""
    fault = write_fault(exc)
    if fault is not None:
        return fault
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    text = f"{type(exc).__name__}: {exc}"
    safe = _redact(url)
    if scheme in DRIVERS and ("import" in text.lower() or isinstance(exc, ImportError)):
        module, fix = DRIVERS[scheme]
        return UserError(f"the storage {safe} needs the database driver `{module}`, which is not installed", fix)
    if "storage upgrade" in text or "no longer compatible" in text:
        return UserError(f"the study storage {safe} was written by another Optuna version than this one's "
                         "(an older loratune)",
                         f"back it up, then upgrade it in place: optuna storage upgrade --storage {url if '@' not in url else '<URL>'}; "
                         "or start a new --study-dir")
    if "already exists" in text:
        return UserError(f"another process is creating the study in {safe} at the same moment",
                         "start one `loratune tune` per study; wait a second and use --resume (resume=True) to "
                         "continue it")
    if scheme == "sqlite" and ("not a database" in text or "malformed" in text):
        return UserError(f"the study's SQLite file {safe} is damaged ({text.splitlines()[0][:300]})",
                         "continue in a new --study-dir (or restore the file from a backup): the trial folders' "
                         "run records stay readable with `loratune show` / `loratune diagnose`")
    return UserError(f"cannot open study storage {safe} ({text.splitlines()[0][:300]})",
                     "check the URL, the server and the credentials (a SQLAlchemy URL such as "
                     "sqlite:///study.db or postgresql://user@host/db)")


def driver_url(url: str) -> str:
    """`postgresql://` names no driver and SQLAlchemy 2.1 then wants psycopg 3: use whichever of psycopg 3
    and psycopg2 is installed (the `postgres` extra installs psycopg2-binary)."""
    import importlib.util

    if not url.startswith("postgresql://") and not url.startswith("postgres://"):
        return url
    rest = url.split("://", 1)[1]
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    raise ImportError("No module named 'psycopg2'")


def make_storage(url: str, heartbeat_s: int):
    """Optuna's RDB storage with heartbeats (a dead process's trial is retried by `Study.fail_stale`), its calls
    shielded from Ctrl-C / SIGTERM (`_shielded_storage`). SQLite waits for a lock held by another process (workers
    share one file) instead of failing at once."""
    import optuna

    # heartbeats only: a stale trial is failed and queued again by Study.fail_stale, exactly once (Optuna's
    # retry callback runs in every process that saw the trial stale, and two of them can each queue a copy)
    kwargs: dict[str, Any] = {"heartbeat_interval": int(heartbeat_s), "grace_period": int(heartbeat_s * GRACE_FACTOR)}
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return _shielded_storage()(optuna.storages.RDBStorage(driver_url(url), engine_kwargs=engine, **kwargs))


@functools.cache
def _shielded_storage():
    """Optuna's cached RDB storage (what `optuna.create_study` wraps an RDBStorage in) whose every public call runs
    inside `signals.shielded()`: a Ctrl-C / SIGTERM landing in a storage call takes effect when the call returns.
    Raised inside SQLAlchemy, it could leave the connection holding SQLite's write lock: the next write (the
    interrupted trial's record) then waited the 60 s busy timeout and failed: in CI a SIGTERM'd `tune` was still
    running 60 s later (tests/faults/test_study_signals.py drives interrupts into storage calls)."""
    from optuna.storages._cached_storage import _CachedStorage

    def shield(fn):
        @functools.wraps(fn, updated=())
        def call(self, *args, **kwargs):
            with signals.shielded():
                try:
                    return fn(self, *args, **kwargs)
                except Exception as exc:  # a full or read-only disk mid-study: the output's fault (exit 2)
                    fault = write_fault(exc)
                    if fault is None:
                        raise
                    raise fault from None

        return call

    public: dict[str, Any] = {}
    for cls in _CachedStorage.__mro__:  # its own methods, then BaseStorage's / BaseHeartbeat's (get_n_trials, ...)
        public.update({n: shield(f) for n, f in vars(cls).items()
                       if not n.startswith("_") and inspect.isfunction(f) and n not in public})
    return type("ShieldedStorage", (_CachedStorage,), public)


class _Beat:
    """A thread calling `fn` every `every` seconds until stopped (trial heartbeats, the leader lease)."""

    def __init__(self, fn, every: float):
        import threading

        self.fn, self.every = fn, every
        self.stop_event = threading.Event()
        self._call()
        self.thread = threading.Thread(target=self._run, name="loratune-study-heartbeat", daemon=True)
        self.thread.start()

    def _call(self) -> None:
        try:
            self.fn()
        except Exception:  # a storage hiccup must not kill training; the next beat tries again
            pass

    def _run(self) -> None:
        while not self.stop_event.wait(self.every):
            self._call()

    def stop(self) -> None:
        self.stop_event.set()


def _redact(url: str) -> str:
    import re

    return "'" + re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url) + "'"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _remove_made(db: Path | None, folders: list[Path]) -> None:
    """Remove a SQLite file (and its journals) and the folders (deepest first) that a refused open made; a folder
    that holds anything else stays."""
    if db is not None:
        for f in (db, *(db.with_name(db.name + s) for s in ("-journal", "-wal", "-shm"))):
            f.unlink(missing_ok=True)
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


REPLAY_SAME = ("kind", "code", "trials")  # what a replayed decision repeats (its texts may be reworded, count budget)


def replay_key(decision: dict, field: str) -> Any:
    """A decision's REPLAY_SAME `field` as a replay compares it. A decision written before decisions had codes holds
    none: its code is its kind, as `SearchContext.decide` writes a decision without a code of its own (a resume of
    such a study found every one of its decisions 'decided otherwise' and moved its whole trail to SUPERSEDED)."""
    if field == "code" and "code" not in decision:
        return decision.get("kind")
    return decision.get(field)


class DecisionLog:
    """Append-only, fsync'd JSON lines. Each decision has a `seq`; a replay (resume) that takes the
    same decisions again does not write them twice."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: list[dict] = self._read()
        self._replayed = 0

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # a line torn by a hard kill: cut it, so appends start clean
            keep = raw.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            raw = raw[:keep]
        out = []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except PARSE_ERRORS:
                continue
            if isinstance(entry, dict):  # a line of another kind (a list, a number) is no decision
                out.append(entry)
        return out

    def append(self, decision: dict) -> dict:
        seq = int(decision["seq"])
        if seq < len(self.entries):
            old = self.entries[seq]
            # the same decision: its kind and code, and the trials it names: a resume whose final stage keeps #5
            # where the earlier session kept #2 decides the same code, and the trail kept "#2"
            if all(replay_key(old, k) == replay_key(decision, k) for k in REPLAY_SAME):
                self._replayed += 1
                return old  # taken and written by an earlier session
            self._supersede(seq)  # this session decides otherwise from here on (a resume with a larger budget)
        from loratune.store import json_safe

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(decision), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(decision)
        return decision

    def _supersede(self, seq: int) -> None:
        """The earlier session's decisions from `seq` on no longer hold (the resumed study decides otherwise, e.g.
        with a larger budget): move them to SUPERSEDED, with when and why, and keep the trail to what still holds,
        so the trail is one session's decision at each seq and nothing decided is lost."""
        from loratune.store import json_safe

        moved = self.entries[seq:]
        with open(self.path.with_name(SUPERSEDED), "a", encoding="utf-8") as f:
            for entry in moved:
                f.write(json.dumps(json_safe({**entry, "superseded_at": time.time(),
                                              "superseded_why": f"a resumed session decided otherwise at seq {seq}"}),
                                   ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries = self.entries[:seq]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(json_safe(e), ensure_ascii=False) + "\n" for e in self.entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _has_decisions(path: Path) -> bool:
    """Whether a decision trail holds an entry (a line that is not blank)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return any(line.strip() for line in f)
    except FileNotFoundError:
        return False


class NoStudyYet(UserError):
    """A worker's study is not there (yet): its leader may be starting (`worker.run_worker` waits for it)."""



@contextlib.contextmanager
def _walked_grid_stop_dropped():
    """Optuna's GridSampler asks the study to stop (Study.stop) from after_trial once its last grid point is told;
    outside Study.optimize (loratune asks and tells itself) that raises a RuntimeError after the trial's state is
    stored (tell's finally). The search loop stops on a walked grid itself (yardstick._grid_done): the request is
    dropped, never the trial."""
    try:
        yield
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise

class Study:
    """An Optuna study plus the study directory. Open it with `Study.open`."""

    def __init__(self, study_dir: Path, optuna_study, storage_url: str):
        # absolute: the trial run_dirs it records are read again by sessions started in other working directories
        self.dir = Path(study_dir).absolute()
        self.optuna = optuna_study
        self.storage_url = storage_url
        self.decisions = DecisionLog(self.dir / DECISIONS)
        self.recovered: list[dict] = []  # trials found RUNNING at open (a killed process)
        self.was_finished = False  # set on resume: the study had finished before this open
        self._lock = None
        self.heartbeat_s = HEARTBEAT_S
        self._beats: dict[int, _Beat] = {}  # trial number -> its heartbeat thread
        self._lease: _Beat | None = None
        self.worker = False

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, study_dir: str | Path, *, storage: str | None = None, name: str = DEFAULT_STUDY_NAME,
             resume: bool = False, sampler=None, meta: dict | None = None, worker: bool = False,
             heartbeat_s: int = HEARTBEAT_S) -> "Study":
        """The study in `study_dir` (or `storage`), made or joined. Optuna's INFO lines are its callers' to silence,
        for as long as they use the study (`optuna_quiet`: tune, the worker)."""
        import optuna

        from loratune.listing import shell_path
        from loratune.store import RunLock, check_output_dir

        study_dir = Path(study_dir)
        check_output_dir(study_dir, "--study-dir", "--study-dir runs/tune", study=True)
        url = storage or sqlite_url(study_dir / STUDY_DB)
        # what a refused call made goes again: `--resume` of a missing study left a study.db that `loratune show`
        # read as an unfinished study of 0 trials. Only the folders it made and the default study.db that the lock
        # below guards (a --storage may be another's, and a worker holds no lock)
        made = [p for p in (study_dir, *study_dir.parents) if not p.exists()]  # deepest first
        db = study_dir / STUDY_DB
        fresh_db = db if storage is None and not worker and not db.exists() else None
        if not worker:  # a worker writes its trials only (their run directories make their folders): with --storage
            study_dir.mkdir(parents=True, exist_ok=True)  # alone, a folder made here was left empty in its cwd
        lock = None
        if not worker:  # workers join the leader's study; only the leader holds the directory
            lock = RunLock(study_dir, STUDY_LOCK, busy=(
                f"another `loratune tune` ({{holder}}) is running the study in {study_dir}",
                "wait for it to finish or stop it (Ctrl-C / kill), then `loratune tune --resume`; to add a worker "
                f"to it: `loratune tune --worker --study-dir {shell_path(study_dir)}`"))
            lock.acquire()
        study = None
        try:
            if worker and url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
                where = f"--storage {_redact(url)}" if storage else str(study_dir)  # what the user gave
                raise NoStudyYet(f"no study in {where} to work on ({url[len('sqlite:///'):]} does not exist)",
                                "start it first with `loratune tune` (same --study-dir / --storage); workers join "
                                "a running study")
            rdb = existing = None
            for attempt in range(6):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # experimental-feature warnings of optuna
                    try:
                        rdb = make_storage(url, heartbeat_s)
                        existing = [s.study_name for s in rdb.get_all_studies()]
                        break
                    except Exception as exc:
                        text = f"{type(exc).__name__}: {exc}"
                        racing = ("IntegrityError" in text or "already exists" in text or "UNIQUE constraint" in text
                                  or "database is locked" in text)
                        if not racing or attempt == 5:  # two processes creating the tables at once: try again
                            raise storage_error(url, exc) from None
                        import time

                        time.sleep(0.2 * (attempt + 1))
            if worker and name not in existing:
                if existing and storage is None:  # a study dir's own study.db holds one study: a mistyped
                    # --study-name, which no leader can make there (it refuses a second study in the folder)
                    raise UserError(f"no study named '{name}' in {_redact(url)} to work on (it holds "
                                    + ", ".join(f"'{e}'" for e in existing) + ")",
                                    f"give --study-name {existing[0]}" if len(existing) == 1 else
                                    "give the --study-name of the study to join")
                raise NoStudyYet(f"no study named '{name}' in {_redact(url)} to work on",
                                "start it first with `loratune tune` (same --storage / --study-dir / --study-name); "
                                "workers join a running study")
            if name in existing and not resume and not worker:
                # a study dir's own study.db holds one study (below): there another --study-name is refused too
                raise UserError(f"a study named '{name}' already exists in {_redact(url)}",
                                "pass --resume (resume=True) to continue it, or choose another --study-dir (study_dir=)"
                                + (" / --study-name (study_name=)" if storage is not None else ""))
            if name not in existing and resume:
                raise UserError(f"no study named '{name}' in {_redact(url)} to resume",
                                "run without --resume (resume=False) to start one")
            if not resume and not worker:  # a study dir holds one study: its trials/, final/ and decision trail
                others = [s for s in existing if s != name] if storage is None else []
                if others or _has_decisions(study_dir / DECISIONS):
                    held = f"study '{others[0]}'" if others else f"a decision trail ({DECISIONS})"
                    raise UserError(f"{study_dir} already holds {held}: a new study there would write over its "
                                    "trials and its trail",
                                    "use another (or an empty) --study-dir (study_dir=) for the new study, or "
                                    "--resume (resume=True) "
                                    + (f"--study-name {others[0]}" if others else "the study it belongs to"))
            try:
                # a new study and its settings are written as one step: a signal between them left a study with no
                # settings, which --resume read as the embedded default's
                with warnings.catch_warnings(), signals.shielded():
                    warnings.simplefilter("ignore")
                    study = optuna.create_study(study_name=name, storage=rdb, direction="maximize", sampler=sampler,
                                                load_if_exists=resume or worker)
                    if not resume and not worker:
                        study.set_user_attr(STUDY_META_ATTR, dict(meta or {}))
            except Exception as exc:
                if type(exc).__name__ == "DuplicatedStudyError":
                    raise UserError(f"another process created the study '{name}' in {_redact(url)} just now",
                                    "one `loratune tune` per study; use --resume (resume=True) to "
                                    "continue it") from None
                raise storage_error(url, exc) from None
            self = cls(study_dir, study, url)
            self.heartbeat_s, self.worker = heartbeat_s, worker
            if not worker:
                self._take_lease()
        except BaseException:
            if lock is not None:
                lock.release()
            # refused (or failed) before a study was made, or one that existed before this call (a resume refused by
            # a live leader's lease): nothing of this call's is worth keeping
            if study is None or resume or worker:
                _remove_made(fresh_db, made)
            raise
        self._lock = lock
        if worker:
            return self
        if resume:
            if STUDY_META_ATTR not in self.optuna.user_attrs:
                self.close()
                raise UserError(f"the study in {study_dir} was stopped before its settings were stored: there is "
                                "nothing to resume", "start it again without --resume (resume=False) in an empty "
                                f"--study-dir (study_dir=), or remove {study_dir}")
            # a resume of a finished study changes nothing; its caller clears the flag once the resume is accepted
            # (search.tune), so a refused one (a changed setting, a Ctrl-C) leaves the study finished
            self.was_finished = bool(self.meta.get("finished"))
            self._recover_running()
        return self

    # ------------------------------------------------------------------ leader lease
    def _take_lease(self) -> None:
        """One leader per study, also across machines (PostgreSQL): a lease in the study's attrs that the
        leader renews every heartbeat; a lease older than the grace period belonged to a dead leader."""
        import socket
        import time

        me = {"pid": os.getpid(), "host": socket.gethostname()}
        lease = self.optuna.user_attrs.get("leader") or {}
        age = time.time() - float(lease.get("at") or 0)
        from loratune.store import pid_alive

        dead_here = lease.get("host") == me["host"] and not pid_alive(int(lease.get("pid") or 0) or -1)
        if lease and (lease.get("pid"), lease.get("host")) != (me["pid"], me["host"]) and not dead_here \
                and age < self.heartbeat_s * GRACE_FACTOR and not lease.get("released"):
            raise UserError(f"the study '{self.optuna.study_name}' in {_redact(self.storage_url)} is led by another "
                            f"`loratune tune` (pid {lease.get('pid')} on {lease.get('host')}, alive {age:.0f}s ago)",
                            "add this machine as a worker: `loratune tune --worker` with the same --storage and "
                            "--study-name; or stop the other one first")

        def renew() -> None:
            self.optuna.set_user_attr("leader", {**me, "at": time.time()})

        self._lease = _Beat(renew, self.heartbeat_s)

    @property
    def heartbeats(self) -> bool:
        from optuna.storages._heartbeat import is_heartbeat_enabled

        return is_heartbeat_enabled(self.optuna._storage)

    def fail_stale(self) -> None:
        """Fail the trials whose process stopped sending heartbeats and queue them again. A trial whose
        process runs on this host and is alive is never stale: its heartbeat is renewed here first (a
        heartbeat thread starved of CPU, or waiting on a busy SQLite file, can miss the grace period while
        its process trains on; retrying that trial would run it twice)."""
        from optuna.trial import TrialState

        if not self.heartbeats:
            return
        storage = self.optuna._storage
        for t in self.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _runs_here_alive(t.user_attrs.get("worker")):
                storage.record_heartbeat(t._trial_id)
        backend = getattr(storage, "_backend", storage)
        with signals.shielded():
            stale = backend._get_stale_trial_ids(self.optuna._study_id)
        for trial_id in stale:
            # recorded as killed, as _recover_running records one it finds first (a resume more than the grace
            # period after the kill gets here first: its trial stayed `running`, its run.json too); before it is
            # failed: a finished trial's attributes are read-only
            self._mark_killed(trial_id, "the process running this trial stopped sending heartbeats (killed or "
                                        "lost); its point is trained again")
            if not self._transition(trial_id, TrialState.RUNNING, TrialState.FAIL):
                continue  # another process failed it first, and queued it again
            frozen = storage.get_trial(trial_id)
            a = frozen.user_attrs
            self._note_recovered(frozen)
            if "key" in a and len(self._trials_with_key(a["key"], (TrialState.FAIL,))) <= MAX_RETRY:
                self.enqueue(TrialSpec(a["name"], a["phase"], dict(a["point"]), a.get("purpose", "")))

    @property
    def meta(self) -> dict:
        return dict(self.optuna.user_attrs.get(STUDY_META_ATTR, {}))

    def set_meta(self, **values: Any) -> None:
        meta = self.meta
        meta.update(values)
        self.optuna.set_user_attr(STUDY_META_ATTR, meta)

    def overheads(self) -> list[list[dict]]:
        """Each session's overhead charges ({label, wall_s}), by session in order (`SearchContext.charge_elapsed`)."""
        return [list(s) for s in self.optuna.user_attrs.get(OVERHEADS, [])]

    def save_overheads(self, session: int, entries: list[dict]) -> None:
        """Record session `session`'s overhead charges so far: written as they are charged, so a killed session's
        stay spent for the session that resumes it."""
        sessions = self.overheads()
        sessions += [[] for _ in range(session + 1 - len(sessions))]
        sessions[session] = [{"label": e["label"], "wall_s": round(float(e["wall_s"]), 4)} for e in entries]
        self.optuna.set_user_attr(OVERHEADS, sessions)

    def use_dir(self, study_dir: str | Path) -> None:
        """Keep this study's files (a worker's trials) in `study_dir`, its leader's folder (`LEADER_DIR`)."""
        self.dir = Path(study_dir).absolute()
        self.decisions = DecisionLog(self.dir / DECISIONS)

    def trial_dir(self, path: str | None) -> str | None:
        """A recorded trial run_dir as found in this study directory (`in_study`)."""
        return in_study(path, self.dir, TRIALS)

    def _recover_running(self) -> None:
        from optuna.trial import TrialState

        self.fail_stale()  # a dead process's trial with heartbeats: failed and queued again
        from loratune.store import liveness

        for t in self.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            run_dir = self.trial_dir(t.user_attrs.get("run_dir"))
            if _ran_here_and_died(t.user_attrs.get("worker")):
                pass  # its process (on this machine) is gone
            elif run_dir and (Path(run_dir) / "run.json").is_file():
                if liveness(run_dir)[0] == "alive":
                    continue  # a worker is training it right now: never touched
            elif self._beating(t):
                continue  # its heartbeat is fresh (a worker on another machine)
            self._mark_killed(t._trial_id, "the process running this trial was killed; its point is trained again")
            with _walked_grid_stop_dropped():
                self.optuna.tell(t.number, state=TrialState.FAIL)
            self._note_recovered(t)

    def _mark_killed(self, trial_id: int, reason: str) -> None:
        """A trial whose process died is `killed`, with why (lost_spending charges what it trained)."""
        storage = self.optuna._storage
        try:
            storage.set_trial_user_attr(trial_id, "status", "killed")
            storage.set_trial_user_attr(trial_id, "reason", reason)
        except RuntimeError:  # optuna's UpdateFinishedTrialError: another process failed it first, and marked it
            pass

    def _note_recovered(self, t) -> None:
        """A killed trial's run.json rewritten as `died` (what its history reached), and the trial listed in
        `recovered`."""
        run_dir = self.trial_dir(t.user_attrs.get("run_dir"))
        _record_died(run_dir)
        wall, examples = spent_by_run(run_dir)
        self.recovered.append({"number": t.number, "name": t.user_attrs.get("name"), "run_dir": run_dir,
                               "lost_wall_s": wall, "lost_examples": examples})

    def _beating(self, t) -> bool:
        """The trial has a heartbeat younger than the grace period (its process is alive, maybe elsewhere)."""
        if not self.heartbeats:
            return False
        try:
            import sqlalchemy
            from optuna.storages._rdb import models

            storage = getattr(self.optuna._storage, "_backend", self.optuna._storage)
            table = models.TrialHeartbeatModel.__table__
            with signals.shielded(), storage.engine.connect() as conn:
                now = conn.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
                beat = conn.execute(sqlalchemy.select(table.c.heartbeat)
                                    .where(table.c.trial_id == t._trial_id)).scalar()
            if beat is None or now is None:
                return False
            now, beat = now.replace(tzinfo=None), beat.replace(tzinfo=None)
            return (now - beat).total_seconds() < self.heartbeat_s * GRACE_FACTOR
        except Exception:
            return False

    def close(self) -> None:
        """Stop the heartbeats, release the lease and the study directory (the end of a `tune` process). The directory's
        lock goes whatever happens before it (an interrupt in a heartbeat's stop or the lease's DB write): left held,
        every later `tune --resume` in this process was refused as 'another tune' with this process's own pid."""
        try:
            for beat in self._beats.values():
                beat.stop()
            self._beats.clear()
            if self._lease is not None:
                self._lease.stop()
                self._lease = None
                try:
                    lease = dict(self.optuna.user_attrs.get("leader") or {})
                    self.optuna.set_user_attr("leader", {**lease, "released": True})
                except Exception:
                    pass
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()

    # ------------------------------------------------------------------ the queue (many workers)
    def _trials_with_key(self, key: str, states) -> list:
        return [t for t in self.optuna.get_trials(deepcopy=False, states=states) if t.user_attrs.get("key") == key]

    def enqueue(self, spec: TrialSpec) -> bool:
        """Queue a trial for any process to run (a WAITING Optuna trial carrying the spec). False when that
        config point is already queued, running or finished."""
        from optuna.trial import TrialState

        if self._trials_with_key(spec.key, (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE,
                                            TrialState.PRUNED)) or spec.key in self.finished_by_key():
            return False
        attrs = {"key": spec.key, "name": spec.name, "phase": spec.phase, "point": spec.point,
                 "purpose": spec.purpose, "status": "queued"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.optuna.enqueue_trial({}, user_attrs=attrs)
        return True

    def _claim(self, frozen) -> bool:
        """WAITING -> RUNNING (see `_transition`)."""
        from optuna.trial import TrialState

        return self._transition(frozen._trial_id, TrialState.WAITING, TrialState.RUNNING)

    def _transition(self, trial_id: int, old, new) -> bool:
        """`old` -> `new` as one conditional UPDATE (`... WHERE state = old`): exactly one process sees a row
        changed, on SQLite as on PostgreSQL. (Optuna's own read-then-write state change relies on SELECT ...
        FOR UPDATE, which SQLite ignores: two processes could both claim, or both fail, one trial.)"""
        from datetime import datetime

        from optuna.storages._rdb import models

        storage = getattr(self.optuna._storage, "_backend", self.optuna._storage)
        stamp = {"datetime_start": datetime.now()} if not new.is_finished() else {"datetime_complete": datetime.now()}
        try:
            with signals.shielded(), storage.engine.begin() as conn:
                table = models.TrialModel.__table__
                res = conn.execute(table.update()
                                   .where(table.c.trial_id == trial_id, table.c.state == old)
                                   .values(state=new, **stamp))
                return res.rowcount == 1
        except Exception:  # a lost race on a busy database: another process has it
            return False

    def claim_next(self):
        """(trial, spec, run_dir) of a queued trial this process now owns, or None when none is queued."""
        from optuna.trial import TrialState

        self.fail_stale()
        for t in self.optuna.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if "key" not in t.user_attrs or not self._claim(t):
                continue
            spec = TrialSpec(t.user_attrs["name"], t.user_attrs["phase"], dict(t.user_attrs["point"]),
                             t.user_attrs.get("purpose", ""))
            return self._own(t, spec)
        return None

    def _own(self, frozen, spec: TrialSpec):
        import optuna

        trial = optuna.trial.Trial(self.optuna, frozen._trial_id)
        run_dir = self.run_dir_for(frozen.number, spec.name)
        for k, v in ((TRIAL_RUN_DIR_ATTR, str(run_dir)), ("status", "running"), ("worker", _me())):
            trial.set_user_attr(k, v)
        self._beat(trial)
        return trial, spec, run_dir

    def _beat(self, trial) -> None:
        if self.heartbeats and trial.number not in self._beats:
            storage, tid = self.optuna._storage, trial._trial_id
            self._beats[trial.number] = _Beat(lambda: storage.record_heartbeat(tid), self.heartbeat_s)

    def _unbeat(self, trial) -> None:
        beat = self._beats.pop(trial.number, None)
        if beat is not None:
            beat.stop()

    def await_key(self, key: str, spec: TrialSpec | None = None, poll_s: float = 0.5):
        """Where the trial of `key` stands, for the leader about to run it: ("record", TrialRecord) when a
        process finished it (waiting while one runs it), ("claimed", (trial, run_dir)) when it was queued
        and this process now owns it, ("free", None) when nobody has it. One snapshot of the study per
        look, so a worker finishing between two reads can never make the leader run it again; a dead
        worker's trial is re-queued after the grace period and then claimed here or by another worker."""
        import time

        from optuna.trial import TrialState

        failed_seen = -1
        while True:
            mine = [t for t in self.optuna.get_trials(deepcopy=False) if t.user_attrs.get("key") == key]
            done = next((t for t in mine if t.user_attrs.get("record") is not None
                         and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)), None)
            if done is not None:
                return "record", self._loaded(done.user_attrs["record"])
            waiting = [t for t in mine if t.state == TrialState.WAITING]
            for t in waiting:
                if self._claim(t):
                    trial, _, run_dir = self._own(t, spec or TrialSpec(t.user_attrs["name"], t.user_attrs["phase"],
                                                                       dict(t.user_attrs["point"]),
                                                                       t.user_attrs.get("purpose", "")))
                    return "claimed", (trial, run_dir)
            if not waiting and not any(t.state == TrialState.RUNNING for t in mine):
                # a dead worker's trial is failed (`fail_stale`) and then queued again, two writes by whichever
                # process saw it stale: a look between them finds no copy waiting. Free only when a second look,
                # one poll later, finds the same failures and still no copy (else both would run it)
                failed = sum(1 for t in mine if t.state == TrialState.FAIL)
                if not failed or failed == failed_seen:
                    return "free", None
                failed_seen = failed
            time.sleep(poll_s)
            self.fail_stale()

    def cancel_queued(self, reason: str) -> int:
        """Fail the queued trials nobody claimed (the search ended without needing them)."""
        from optuna.trial import TrialState

        n = 0
        for t in self.optuna.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if self._claim(t):
                self.optuna._storage.set_trial_user_attr(t._trial_id, "status", "skipped")
                self.optuna._storage.set_trial_user_attr(t._trial_id, "reason", reason)
                with _walked_grid_stop_dropped():
                    self.optuna.tell(t.number, state=TrialState.FAIL)
                n += 1
        return n

    @property
    def finished(self) -> bool:
        return bool(self.meta.get("finished"))

    def lost_trials(self) -> list[dict]:
        """Rows (records_table's shape) for trials that never finished: a killed process's trial
        (`died`, its point trained again by a later session) or one still marked RUNNING."""
        from optuna.trial import TrialState

        rows = []
        for t in self.optuna.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.RUNNING)):
            a = t.user_attrs
            if "record" in a or (t.state == TrialState.FAIL and a.get("status") not in LOST_STATUSES):
                continue
            rows.append(self._row(t, None))
        return rows

    def lost_spending(self) -> list[dict]:
        """What each trial that never finished (LOST_STATUSES: killed, interrupted, failed) spent before it
        stopped, from its run directory: {number, name, status, wall_s, examples}. Every session charges these
        again (its meter starts empty), so what was spent stays spent however often the study is resumed."""
        from optuna.trial import TrialState

        out = []
        for t in self.optuna.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            a = t.user_attrs
            if "record" in a or a.get("status") not in LOST_STATUSES:
                continue
            wall, examples = spent_by_run(self.trial_dir(a.get("run_dir")))
            out.append({"number": t.number, "name": a.get("name", "?"), "status": a.get("status"),
                        "wall_s": wall, "examples": examples})
        return out

    def superseded_trials(self, claimed: Iterable[int]) -> list[dict]:
        """Rows for finished trials that no decision of the trail uses any more: an earlier session's, taken otherwise
        by a resumed one (a larger budget; decisions.superseded.jsonl holds those decisions). They ran, and are
        listed as `superseded`, not dropped."""
        claimed = set(claimed)
        return [self._row(t, "superseded") for t in self.optuna.get_trials(deepcopy=False)
                if "record" in t.user_attrs and t.number not in claimed]

    def _row(self, t, status: str | None) -> dict:
        from optuna.trial import TrialState

        a = t.user_attrs
        run = {}
        run_dir = self.trial_dir(a.get("run_dir"))
        if run_dir and (Path(run_dir) / "run.json").is_file():
            try:
                from loratune.store import RunStore

                run = RunStore(run_dir).read_run()
            except UserError:
                run = {}
        best = run.get("best") or {}
        if status is None:
            status = ({"killed": "died", "running": "died"}.get(a.get("status"), a.get("status"))
                      if t.state == TrialState.FAIL else run.get("status", "running"))
        return {"trial": t.number, "name": a.get("name", "?"), "phase": a.get("phase", "?"), "status": status,
                "val_macro_f1": best.get("val/macro_f1"), "examples": int(run.get("examples_seen") or 0),
                "wall_s": float(run.get("wall_s") or 0.0), "mean_step_s": run.get("mean_step_s"),
                "peak_memory_mb": run.get("peak_memory_mb"), "verdict": "-", "run_dir": run_dir,
                "point": a.get("point") or {}, "reason": a.get("reason") or run.get("reason") or ""}

    # ------------------------------------------------------------------ trials
    def records(self) -> list[TrialRecord]:
        """Every finished trial (completed, pruned, diverged, failed by an error), in trial order."""
        out = []
        for t in self.optuna.get_trials(deepcopy=False):
            rec = t.user_attrs.get("record")
            if rec is not None:
                out.append(self._loaded(rec))
        return out

    def _loaded(self, rec: dict) -> TrialRecord:
        """A trial's stored record as this study reads it back (TrialRecord.loaded): its run directory in this
        study directory, its task from its run.json when the record is older than TrialResult.task."""
        return TrialRecord.loaded(rec, self.trial_dir(rec.get("run_dir")))

    def finished_by_key(self) -> dict[str, TrialRecord]:
        found: dict[str, TrialRecord] = {}
        for rec in self.records():
            found.setdefault(rec.key, rec)
        return found

    def next_number(self) -> int:
        return len(self.optuna.get_trials(deepcopy=False))

    def run_dir_for(self, number: int, name: str) -> Path:
        return self.dir / TRIALS / f"{number:02d}-{name}"

    def start(self, spec: TrialSpec, trial=None):
        """Open an Optuna trial for `spec`: its queued trial when there is one, or one a sampler asked, or
        a new one (never `ask()`, which would pop another spec's queued trial)."""
        import optuna

        with signals.shielded():  # a trial and what it is: one step (a signal between left a nameless `running` trial)
            if trial is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tid = self.optuna._storage.create_new_trial(self.optuna._study_id)
                trial = optuna.trial.Trial(self.optuna, tid)
            run_dir = self.run_dir_for(trial.number, spec.name)
            for k, v in (("key", spec.key), ("name", spec.name), ("phase", spec.phase), ("point", spec.point),
                         ("purpose", spec.purpose), (TRIAL_RUN_DIR_ATTR, str(run_dir)), ("status", "running"),
                         ("worker", _me())):
                trial.set_user_attr(k, v)
            self._beat(trial)
        return trial, run_dir

    def finish(self, trial, spec: TrialSpec, run_dir: Path, result: TrialResult) -> TrialRecord:
        from optuna.trial import TrialState

        self._unbeat(trial)
        record = TrialRecord(trial.number, spec, str(run_dir), result)
        with signals.shielded():  # its record and its state: one step
            trial.set_user_attr("status", result.status)
            trial.set_user_attr("record", record.to_dict())
            with _walked_grid_stop_dropped():
                if result.status == "pruned":
                    self._tell_pruned(trial, result)
                elif result.ok:
                    self.optuna.tell(trial, float(result.value))
                else:
                    self.optuna.tell(trial, state=TrialState.FAIL)
        return record

    def _tell_pruned(self, trial, result: TrialResult) -> None:
        """Finish a pruned trial with its record's value (its best evaluation, what the trail, show and the report
        use). Optuna's tell(PRUNED) would store the last reported value instead, and samplers (TPE) read it."""
        from optuna.trial import TrialState

        if not result.ok:
            self.optuna.tell(trial, state=TrialState.PRUNED)
            return
        storage = self.optuna._storage
        frozen = storage.get_trial(trial._trial_id)
        values = [float(result.value)]
        try:  # what tell() does for any state: the sampler's post-processing, then the storage
            self.optuna.sampler.after_trial(self.optuna, frozen, TrialState.PRUNED, values)
        finally:
            storage.set_trial_state_values(frozen._trial_id, TrialState.PRUNED, values)

    def fail(self, trial, reason: str, status: str = "interrupted") -> None:
        from optuna.trial import TrialState

        self._unbeat(trial)
        with signals.shielded():
            trial.set_user_attr("status", status)
            trial.set_user_attr("reason", reason)
            with _walked_grid_stop_dropped():
                self.optuna.tell(trial, state=TrialState.FAIL)

    # ------------------------------------------------------------------ side files
    def save_assessment(self, data: dict) -> None:
        write_json(self.dir / ASSESS, data)

    def load_assessment(self) -> dict | None:
        p = self.dir / ASSESS
        return read_json(p) if p.exists() else None


def spent_by_run(run_dir: str | None) -> tuple[float, int]:
    """(wall seconds, training examples) a run spent, also one that never finished: `examples_seen` of run.json or of
    its last history point (run.json is rewritten at each evaluation, a moment after the point: a kill between
    leaves it behind), and its `wall_s` or, while that is 0.0 (it is written when a run ends; a killed one never
    wrote it), the time from `started_at` to the run's last sign of life (store.last_sign_of_life; a dead run's
    record rewritten as `died` holds that wall time: the rewrite moves the files' times). Steps trained after the
    last evaluation of a killed run are recorded nowhere: not counted."""
    from loratune.store import last_history_point, last_sign_of_life

    if not run_dir or not (Path(run_dir) / "run.json").is_file():
        return 0.0, 0
    try:
        run = read_json(Path(run_dir) / "run.json")
        examples, wall = int(run.get("examples_seen") or 0), float(run.get("wall_s") or 0.0)
    except (UserError, AttributeError, TypeError, ValueError):
        return 0.0, 0
    try:
        examples = max(examples, int(last_history_point(run_dir).get("examples_seen") or 0))
    except (TypeError, ValueError):
        pass  # run.json's count stands
    if wall <= 0 and run.get("started_at"):
        from datetime import datetime

        try:
            started = datetime.fromisoformat(str(run["started_at"])).timestamp()
        except ValueError:
            return 0.0, examples
        wall = max(0.0, (last_sign_of_life(run_dir) or started) - started)
    return wall, examples


def _ran_here_and_died(worker: str | None) -> bool:
    """`worker` ("pid N on HOST", set when a trial starts) names a process of this host that is gone."""
    import re
    import socket

    from loratune.store import pid_alive

    m = re.fullmatch(r"pid (\d+) on (.+)", worker or "")
    return bool(m) and m.group(2) == socket.gethostname() and int(m.group(1)) != os.getpid() \
        and not pid_alive(int(m.group(1)))


def _runs_here_alive(worker: str | None) -> bool:
    """`worker` ("pid N on HOST") names a live process of this host."""
    import re
    import socket

    from loratune.store import pid_alive

    m = re.fullmatch(r"pid (\d+) on (.+)", worker or "")
    return bool(m) and m.group(2) == socket.gethostname() and pid_alive(int(m.group(1)))


def _me() -> str:
    import socket

    return f"pid {os.getpid()} on {socket.gethostname()}"


def _record_died(run_dir: str | None) -> None:
    """Write a dead trial's run.json as `died` (the study owns its trial directories)."""
    if not run_dir or not (Path(run_dir) / "run.json").is_file():
        return
    from loratune.store import RunStore, with_liveness

    try:
        run = read_json(Path(run_dir) / "run.json")
        if isinstance(run, dict) and run.get("status") == "running":
            died = with_liveness(run, run_dir)  # read before the rewrite: it moves the files' times
            if died.get("status") == "died":  # (a process still holding the run's lock is never written over)
                RunStore(run_dir).write_run(died)
    except (UserError, OSError):
        pass


def records_table(records: Iterable[TrialRecord]) -> list[dict]:
    """One flat row per trial (for study.json and the report)."""
    rows = []
    for r in records:
        res = r.result
        rows.append({"trial": r.number, "name": r.spec.name, "phase": r.spec.phase, "status": res.status,
                     # the objective's value as a person reads it; val_macro_f1 (read by older readers) holds
                     # macro-F1 alone: under another objective (subset accuracy, a loss) it is none
                     "val_macro_f1": res.value if objective(res.objective).key == MACRO_F1.key else None,
                     "objective": res.objective, "objective_value": objective(res.objective).value(res.value),
                     "examples": res.examples, "wall_s": round(res.wall_s, 2),
                     "mean_step_s": res.mean_step_s, "peak_memory_mb": res.peak_memory_mb,
                     "verdict": res.verdict, "run_dir": r.run_dir, "point": r.point,
                     "reason": res.reason})
    return rows
