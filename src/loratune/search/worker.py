"""`loratune tune --worker`: join a running study and train the trials its leader queued.

The leader (`loratune tune`) runs the protocol and takes every decision; where a stage needs several
independent trials it queues them (study.Study.enqueue). A worker loops: re-queue the trials of dead
processes (Optuna heartbeats), claim one queued trial atomically, train it as an ordinary run directory
under the study, record it; it stops when the leader marks the study finished, when the leader is
gone (its lease expired) and nothing is queued, or after `idle_exit_s` without work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from loratune.objectives import objective
from loratune.errors import UserError
from loratune.search.context import UI
from loratune.search.runner import FinishedThenInterrupted, Watch
from loratune.search.study import GRACE_FACTOR, STUDY_DB, NoStudyYet, Study, optuna_quiet

# how long a worker started before its leader waits for the study to appear (the leader makes it within seconds of
# its start: its config and data read); a worker given the wrong --study-dir / --storage is refused after it
WAIT_FOR_STUDY_S = 60.0


LEADER_FINISHED = "the leader finished the study"


@dataclass
class WorkerReport:
    trials: list[int] = field(default_factory=list)  # trial numbers this worker trained
    reason: str = ""


def work(study: Study, runner, ui: UI | None = None, *, poll_s: float = 1.0, idle_exit_s: float | None = None,
         max_trials: int | None = None) -> WorkerReport:
    """Claim and train queued trials until the study is finished (see the module docstring)."""
    ui = ui or UI()
    report = WorkerReport()
    idle_since = time.monotonic()
    while True:
        if study.finished:
            report.reason = LEADER_FINISHED
            break
        claimed = study.claim_next()
        if claimed is None:
            waited = time.monotonic() - idle_since
            if idle_exit_s is not None and waited > idle_exit_s:
                report.reason = f"nothing queued for {waited:.0f}s"
                break
            if waited > study.heartbeat_s * GRACE_FACTOR and not leader_alive(study):
                # a leader that finishes sets `finished`, then releases its lease: one that finished since the check
                # above reads as released here, and is no dead leader
                report.reason = (LEADER_FINISHED if study.finished
                                 else "the leader is gone (its lease expired) and nothing is queued")
                break
            time.sleep(poll_s)
            continue
        trial, spec, run_dir = claimed
        ui.note(f"worker: trial #{trial.number} {spec.name} ({spec.phase}: {spec.purpose})")
        try:
            result = runner.run(spec, run_dir, Watch(prune=False))  # queued trials run unpruned (context.prefetch)
        except FinishedThenInterrupted as done:  # the run finished before the signal took effect: kept as finished
            # (as the leader keeps its own, SearchContext.run_trial), never failed and trained again by the leader
            rec = study.finish(trial, spec, run_dir, done.result)
            ui.note(f"worker: trial #{rec.number} {spec.name}: {objective(done.result.objective).show(rec.value)}, "
                    f"{done.result.status} (it finished as the signal came: kept)")
            report.trials.append(trial.number)
            raise done.signal from None
        except KeyboardInterrupt:
            study.fail(trial, "the worker running it was stopped; the leader or another worker trains it again")
            raise
        except UserError as exc:  # the user's input (a model that cannot load): as the leader, stop with it (exit 2)
            study.fail(trial, f"stopped tune: {exc.problem}", status="failed")
            raise
        rec = study.finish(trial, spec, run_dir, result)
        ui.note(f"worker: trial #{rec.number} {spec.name}: {objective(result.objective).show(rec.value)}, "
                f"{result.status}")
        report.trials.append(trial.number)
        idle_since = time.monotonic()
        if max_trials is not None and len(report.trials) >= max_trials:
            report.reason = f"{max_trials} trial(s) done"
            break
    return report


def leader_alive(study: Study) -> bool:
    lease = study.optuna.user_attrs.get("leader") or {}
    if not lease or lease.get("released"):
        return False
    return time.time() - float(lease.get("at") or 0) < study.heartbeat_s * GRACE_FACTOR


@optuna_quiet()  # (Optuna's level as it was, after it)
def run_worker(study_dir: str | Path, *, storage: str | None = None, study_name: str = "loratune",
               heartbeat_s: int | None = None, ui: UI | None = None, idle_exit_s: float | None = None,
               wait_for_base_s: float = 600.0, wait_for_study_s: float | None = None,
               study_dir_given: bool = True) -> WorkerReport:
    """The CLI's worker: the trials' base config and threshold overrides come from the study (the leader writes them
    once phase 0 is done), the data is read here (its paths must exist on this machine). Joined with --storage and no
    --study-dir (`study_dir_given` False), its trials go into the leader's study folder where that folder is here and
    holds this study (_holds_study), else under `study_dir` with a note."""
    from loratune.search.runner import TrainingRunner
    from loratune.tasks import recipe
    from loratune.search.study import HEARTBEAT_S, LEADER_DIR, TRIALS, study_folder
    from loratune.search.tune import cfg_from_yaml
    from loratune.thresholds import recorded_tables

    ui = ui or UI()
    wait_s = WAIT_FOR_STUDY_S if wait_for_study_s is None else wait_for_study_s
    t0, said = time.monotonic(), False
    while True:  # a worker started with (or just before) its leader: the study is not made yet
        try:
            study = Study.open(study_folder(study_dir), storage=storage, name=study_name, worker=True,
                               heartbeat_s=heartbeat_s or HEARTBEAT_S)
            break
        except NoStudyYet as exc:
            if time.monotonic() - t0 >= wait_s:
                raise UserError(f"{exc.problem}, after waiting {wait_s:.0f}s for its leader to make it",
                                exc.fix) from None
            if not said:
                ui.note(f"{exc.problem}: waiting up to {wait_s:.0f}s for its leader (`loratune tune`) to make it")
                said = True
            time.sleep(min(1.0, wait_s))
    try:
        t0 = time.monotonic()
        while "trial_base" not in study.meta:
            if study.finished or time.monotonic() - t0 > wait_for_base_s:
                raise UserError("the study's leader has not planned its trials yet (no trial config in the study)",
                                "start the worker once `loratune tune` has finished phase 0 (it prints the trial plan)")
            time.sleep(1.0)
        home = study.meta.get(LEADER_DIR)
        if storage is not None and not study_dir_given and home and Path(home).absolute() != study.dir:
            if _holds_study(Path(home), storage):  # the leader's folder is here (one machine, or a shared one)
                study.use_dir(home)
            else:
                # (a folder of that path that is another study's, on another machine, is not this study's: its
                # trials/00-r4 was written over)
                ui.note(f"note: the study's folder {home} (its leader's) is not this study's folder on this machine: "
                        f"this worker's trials go under {study.dir / TRIALS} (give --study-dir a folder the leader "
                        "shares to keep them together)")
        base = cfg_from_yaml(study.meta["trial_base"])
        # the recipe's read that api.prepare makes, less api.prepare's note on probe-file labels that name no class
        # (each trial's train adds it to its run.json data_notes)
        dataset = recipe(base, "prepare")(base.data, seed=base.train.seed)
        # the leader's --thresholds: a worker's trial is diagnosed (its verdict, what stages read) as the leader's are
        where = f"the study in {study.dir} (its stored --thresholds)"
        tables, notes = recorded_tables(study.meta.get("thresholds"), where)
        for note in notes:
            ui.note(note)
        diagnosis = tables["diagnosis"]
        return work(study, TrainingRunner(base, dataset, thresholds=diagnosis), ui, idle_exit_s=idle_exit_s)
    finally:
        study.close()


def _holds_study(folder: Path, storage: str) -> bool:
    """Whether `folder` is the study folder of the study in `storage` on this machine: its study.db is that sqlite
    storage's file. Another storage (a database server) names no file to check: the worker keeps its own folder."""
    prefix = "sqlite:///"
    if not storage.startswith(prefix) or not (folder / STUDY_DB).is_file():
        return False
    try:
        return (folder / STUDY_DB).resolve().samefile(Path(storage[len(prefix):]).resolve())
    except OSError:
        return False
