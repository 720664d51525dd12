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

One `tune` process runs a study directory at a time: it holds `<study_dir>/study.lock` (an flock the
kernel drops when the process dies, see store.RunLock); a second `tune` or `tune --resume` on the same
directory is refused with a message naming the holder, before Optuna touches the storage.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

from loratune.errors import UserError
from loratune.search.trial import TrialRecord, TrialResult, TrialSpec
from loratune.store import read_json, write_json

STUDY_DB = "study.db"
DECISIONS = "decisions.jsonl"
TRIALS = "trials"
FINAL = "final"
ASSESS = "assess.json"
DEFAULT_STUDY_NAME = "loratune"
STUDY_LOCK = "study.lock"
# the driver each SQLAlchemy dialect needs, and the pip line that installs it
DRIVERS = {"postgresql": ("psycopg2", "pip install 'loratune[postgres]'  (psycopg2-binary)"),
           "mysql": ("pymysql", "pip install pymysql, and use mysql+pymysql://...")}


def storage_error(url: str, exc: BaseException) -> UserError:
    """A storage that cannot be opened, said with the fix (a missing driver names its package)."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    text = f"{type(exc).__name__}: {exc}"
    safe = _redact(url)
    if scheme in DRIVERS and ("import" in text.lower() or isinstance(exc, ImportError)):
        module, fix = DRIVERS[scheme]
        return UserError(f"the storage {safe} needs the database driver `{module}`, which is not installed", fix)
    if "already exists" in text:
        return UserError(f"another process is creating the study in {safe} at the same moment",
                         "start one `loratune tune` per study; wait a second and use --resume to continue it")
    return UserError(f"cannot open study storage {safe} ({text.splitlines()[0][:300]})",
                     "check the URL, the server and the credentials (a SQLAlchemy URL such as "
                     "sqlite:///study.db or postgresql://user@host/db)")


def _redact(url: str) -> str:
    import re

    return "'" + re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url) + "'"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


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
        for line in raw.decode("utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def append(self, decision: dict) -> dict:
        seq = int(decision["seq"])
        if seq < len(self.entries) and self.entries[seq].get("kind") == decision.get("kind"):
            self._replayed += 1
            return self.entries[seq]  # taken and written by an earlier session
        from loratune.store import json_safe

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(decision), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(decision)
        return decision


class Study:
    """An Optuna study plus the study directory. Open it with `Study.open`."""

    def __init__(self, study_dir: Path, optuna_study, storage_url: str):
        self.dir = Path(study_dir)
        self.optuna = optuna_study
        self.storage_url = storage_url
        self.decisions = DecisionLog(self.dir / DECISIONS)
        self.recovered: list[dict] = []  # trials found RUNNING at open (a killed process)
        self._lock = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, study_dir: str | Path, *, storage: str | None = None, name: str = DEFAULT_STUDY_NAME,
             resume: bool = False, sampler=None, meta: dict | None = None) -> "Study":
        import optuna

        from loratune.store import RunLock, check_output_dir

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study_dir = Path(study_dir)
        check_output_dir(study_dir)
        study_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(study_dir, STUDY_LOCK, busy=(
            f"another `loratune tune` ({{holder}}) is running the study in {study_dir}",
            "wait for it to finish or stop it (Ctrl-C / kill), then `loratune tune --resume`; one process "
            "per study directory"))
        lock.acquire()
        try:
            url = storage or sqlite_url(study_dir / STUDY_DB)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-feature warnings of optuna
                try:
                    existing = optuna.study.get_all_study_names(storage=url)
                except Exception as exc:
                    raise storage_error(url, exc) from None
            if name in existing and not resume:
                raise UserError(f"a study named '{name}' already exists in {_redact(url)}",
                                "pass --resume to continue it, or choose another --study-dir / --study-name")
            if name not in existing and resume:
                raise UserError(f"no study named '{name}' in {_redact(url)} to resume",
                                "run without --resume to start one")
            try:
                study = optuna.create_study(study_name=name, storage=url, direction="maximize", sampler=sampler,
                                            load_if_exists=resume)
            except Exception as exc:
                if type(exc).__name__ == "DuplicatedStudyError":
                    raise UserError(f"another process created the study '{name}' in {_redact(url)} just now",
                                    "one `loratune tune` per study; use --resume to continue it") from None
                raise storage_error(url, exc) from None
        except BaseException:
            lock.release()
            raise
        self = cls(study_dir, study, url)
        self._lock = lock
        if not resume:
            study.set_user_attr("loratune", dict(meta or {}))
            if self.decisions.entries:
                raise UserError(f"{self.dir / DECISIONS} exists but the study is new",
                                "use an empty --study-dir (or --resume the study it belongs to)")
        else:
            self._recover_running()
        return self

    @property
    def meta(self) -> dict:
        return dict(self.optuna.user_attrs.get("loratune", {}))

    def set_meta(self, **values: Any) -> None:
        meta = self.meta
        meta.update(values)
        self.optuna.set_user_attr("loratune", meta)

    def _recover_running(self) -> None:
        from optuna.trial import TrialState

        for t in self.optuna.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            run_dir = t.user_attrs.get("run_dir")
            wall = 0.0
            if run_dir and (Path(run_dir) / "run.json").exists():
                try:
                    wall = float(read_json(Path(run_dir) / "run.json").get("wall_s") or 0.0)
                except (UserError, TypeError, ValueError):
                    wall = 0.0
            self.optuna._storage.set_trial_user_attr(t._trial_id, "status", "killed")
            self.optuna._storage.set_trial_user_attr(
                t._trial_id, "reason", "the process running this trial was killed; its point is trained again")
            self.optuna.tell(t.number, state=TrialState.FAIL)
            _record_died(run_dir)
            self.recovered.append({"number": t.number, "name": t.user_attrs.get("name"), "run_dir": run_dir,
                                   "lost_wall_s": wall})

    def close(self) -> None:
        """Release the study directory (the end of a `tune` process)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def lost_trials(self) -> list[dict]:
        """Rows (records_table's shape) for trials that never finished: a killed process's trial
        (`died`, its point trained again by a later session) or one still marked RUNNING."""
        from optuna.trial import TrialState

        rows = []
        for t in self.optuna.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.RUNNING)):
            a = t.user_attrs
            if "record" in a or (t.state == TrialState.FAIL and a.get("status") not in ("killed", "interrupted")):
                continue
            run = {}
            if a.get("run_dir") and (Path(a["run_dir"]) / "run.json").is_file():
                try:
                    from loratune.store import RunStore

                    run = RunStore(a["run_dir"]).read_run()
                except UserError:
                    run = {}
            best = run.get("best") or {}
            rows.append({"trial": t.number, "name": a.get("name", "?"), "phase": a.get("phase", "?"),
                         "status": ({"killed": "died"}.get(a.get("status"), a.get("status"))
                                    if t.state == TrialState.FAIL else run.get("status", "running")),
                         "val_macro_f1": best.get("val/macro_f1"), "examples": int(run.get("examples_seen") or 0),
                         "wall_s": float(run.get("wall_s") or 0.0), "mean_step_s": run.get("mean_step_s"),
                         "peak_memory_mb": run.get("peak_memory_mb"), "verdict": "-", "run_dir": a.get("run_dir"),
                         "point": a.get("point") or {}, "reason": a.get("reason") or run.get("reason") or ""})
        return rows

    # ------------------------------------------------------------------ trials
    def records(self) -> list[TrialRecord]:
        """Every finished trial (completed, pruned, diverged, failed by an error), in trial order."""
        out = []
        for t in self.optuna.get_trials(deepcopy=False):
            rec = t.user_attrs.get("record")
            if rec is not None:
                out.append(TrialRecord.from_dict(rec))
        return out

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
        """Open an Optuna trial for `spec` (or adopt one already asked by a sampler)."""
        trial = trial or self.optuna.ask()
        run_dir = self.run_dir_for(trial.number, spec.name)
        for k, v in (("key", spec.key), ("name", spec.name), ("phase", spec.phase), ("point", spec.point),
                     ("purpose", spec.purpose), ("run_dir", str(run_dir)), ("status", "running")):
            trial.set_user_attr(k, v)
        return trial, run_dir

    def finish(self, trial, spec: TrialSpec, run_dir: Path, result: TrialResult) -> TrialRecord:
        from optuna.trial import TrialState

        record = TrialRecord(trial.number, spec, str(run_dir), result)
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("record", record.to_dict())
        if result.status == "pruned":
            self.optuna.tell(trial, state=TrialState.PRUNED)  # its last reported value stands
        elif result.ok:
            self.optuna.tell(trial, float(result.value))
        else:
            self.optuna.tell(trial, state=TrialState.FAIL)
        return record

    def fail(self, trial, reason: str, status: str = "interrupted") -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("status", status)
        trial.set_user_attr("reason", reason)
        self.optuna.tell(trial, state=TrialState.FAIL)

    # ------------------------------------------------------------------ side files
    def save_assessment(self, data: dict) -> None:
        write_json(self.dir / ASSESS, data)

    def load_assessment(self) -> dict | None:
        p = self.dir / ASSESS
        return read_json(p) if p.exists() else None


def _record_died(run_dir: str | None) -> None:
    """Write a dead trial's run.json as `died` (the study owns its trial directories)."""
    if not run_dir or not (Path(run_dir) / "run.json").is_file():
        return
    from loratune.store import RunStore, with_liveness

    try:
        run = read_json(Path(run_dir) / "run.json")
        if isinstance(run, dict) and run.get("status") == "running":
            RunStore(run_dir).write_run(with_liveness(run, run_dir))
    except (UserError, OSError):
        pass


def records_table(records: Iterable[TrialRecord]) -> list[dict]:
    """One flat row per trial (for study.json and the report)."""
    rows = []
    for r in records:
        res = r.result
        rows.append({"trial": r.number, "name": r.spec.name, "phase": r.spec.phase, "status": res.status,
                     "val_macro_f1": res.value, "examples": res.examples, "wall_s": round(res.wall_s, 2),
                     "mean_step_s": res.mean_step_s, "peak_memory_mb": res.peak_memory_mb,
                     "verdict": res.verdict, "run_dir": r.run_dir, "point": r.point,
                     "reason": res.reason})
    return rows
