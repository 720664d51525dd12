"""`LoratuneCallback`: the diagnosis live inside a `transformers.Trainer` (or a TRL trainer).

At every evaluation it rebuilds the run's curves from `state.log_history` (the same reading as
`loratune diagnose OUTPUT_DIR`), writes them as a loratune run record in `<output_dir>/loratune/`
(`history.jsonl`, `run.json`; `loratune diagnose <output_dir>/loratune` and `loratune report` read it),
runs the rule table, and prints each new finding once. It is silent on a healthy run: only findings
that fire with confidence (not tentative, at least `min_confidence`) and are alarms mid-run are
printed (`healthy` and `undertrained` describe every run that is still learning, so they are not; nor is a finding
that only a reading of that kind made fire, until the run has the points to trust it: `MIDRUN_WAITS`).

It can stop training (`control.should_training_stop`), saying why:
- `diverged`: a non-finite train loss or gradient norm at any logging step (the Trainer logs a NaN step's loss
  as 0 by default, its gradient norm as nan; under fp16 a non-finite norm is a step the loss scaler skipped),
  or the `diverged` rule at an evaluation;
- `collapse`: a one-class collapse (predictions on one class, loss pinned near ln(classes)): the
  `collapsed` rule, or the `lr-too-large` rule's collapse routes at an lr far above the usual range, held at
  every evaluation over `collapse_hold` of the planned steps (and at two evaluations at least), its val loss
  setting no new low: a model still at its initial loss early in its plan has not started learning yet, which
  reads the same at one evaluation (a tiny BERT at lr 5e-3, evaluated every step of 100, sits at ln(4) with one
  class predicted for its first 10 steps and ends at 0.90 accuracy), and one whose val loss keeps creeping to new
  lows is moving (1.3867 -> 1.383 over 40 steps, then 1.0 accuracy); it is neither printed nor acted on before;
- overfitting, opt-in: `overfit_patience=N` stops after `overfit-capacity` has fired at N + 1
  evaluations in a row (an evaluation of several eval sets counts once).

An evaluation of several eval sets (`eval_dataset={name: ...}`) is acted on once, on the whole point: from the
second evaluation on at its last set's call; the first one's number of sets shows only when the next training step
begins, so its findings are printed, and a stop it calls for lands, one step later.

Its own bookkeeping never ends the training: a record it cannot write or a diagnosis that fails is said once.
While training it holds `<output_dir>/loratune/run.lock`, so readers see a live run as `running`.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable

from transformers import TrainerCallback

from loratune.diagnose import RULE_OPS, Diagnosis, diagnose, route_reading  # the rules' operators
from loratune.history_io import (CALLBACK_RECORD_DIR, CALLBACK_RECORD_SOURCE, LIVE_STATE_SOURCE, PARTIAL_LOG_NOTE,
                                 compare_record, history_from_trainer_state, nan_filtered_loss, scaled_log_history,
                                 trainer_divides_losses)
from loratune.features import LORA_PEFT_TYPES
from loratune.errors import UserError, finite_number
from loratune.rules import THRESHOLDS, moves_text, resolve_thresholds, rule_by_id, run_thresholds_entry
from loratune.store import RUN, RunLock, liveness

STOP_REASONS = ("diverged", "collapse")  # what the callback may stop on by default
# a record's statuses of a run that stopped before its end (a dead process's `running` included): what a resume from
# one of its checkpoints continues
UNFINISHED_RECORD = ("running", "interrupted", "died")
QUIET_MIDRUN = ("healthy", "undertrained")  # findings that describe any run still learning: never printed


@dataclass(frozen=True)
class MidrunWait:
    """A route of a rule whose reading, mid-run, describes runs still learning as QUIET_MIDRUN's verdicts do: a
    finding that only this route made fire is printed once `feature op threshold` holds (a THRESHOLDS name, the
    callback's overrides applied, or a number), not before. Its stops are untouched: none reads these routes."""

    rule_id: str
    route_feature: str  # a feature read on this route alone within its rule: the route it names
    feature: str  # the curve feature (loratune.features) that says the reading can be trusted
    op: str
    threshold: str | float
    why: str

    def route(self):
        """The rule's route (a member of its top-level `any`) that reads `route_feature`."""
        rule = rule_by_id(self.rule_id)
        routes = [r for r in rule.when.items if self.route_feature in {cl.feature for cl in r.leaves()}]
        if len(routes) != 1:
            raise ValueError(f"{self.rule_id}: {self.route_feature} names {len(routes)} routes, not one")
        return routes[0]


MIDRUN_WAITS = (
    MidrunWait("lr-too-small", "val_loss_late_drop", "plan_done_fraction", ">=", "plan_cut_max",
               why="'both losses fall slowly and steadily, still falling at the end': mid-run the end is the step "
                   "evaluated, and every run still learning is falling there, most of its fall to come (a tiny BERT "
                   "at lr 5e-3 over 80 steps read so at step 20, macro-F1 0.30, then reached 1.00 and ended healthy): "
                   "said once plan_cut_max of the plan has run, as the rule's other routes read a plan that ran (and "
                   "at the end of training, where no evaluation came after that)"),
    MidrunWait("lr-too-large", "val_metric_room", "n_eval_points", ">", "few_evals_max",
               why="'a val metric that never gained' over few_evals_max evals or fewer is one comparison inside its "
                   "noise, and at the first eval no comparison at all (a multi-label BERT at lr 1e-2: F1 0.00 at its "
                   "first eval, 0.00, 0.08, then 0.14 and up to 0.51): said once more evals than that agree"),
)
RECORD_DIR = CALLBACK_RECORD_DIR  # the record's folder inside the Trainer's output_dir (where the readers look)
# where an earlier run's record in the same output_dir goes when a new train() begins (`loratune-previous`, then
# `loratune-previous-2`, ...): kept, not read as the new run's (the readers look in RECORD_DIR only)
RETIRED_RECORD_DIR = f"{RECORD_DIR}-previous"
COLLAPSE_HOLD = 0.2  # share of the planned steps a collapse must hold before the callback prints it or stops
# The callbacks of this process holding a record's lock, by record folder. A train() that raises (a Ctrl-C in a
# notebook) never calls on_train_end: the next run into the same folder in this process, or the interpreter's exit,
# is when the callback learns its run ended, and marks it interrupted (its lock held for the kernel's life, the next
# run warned of "another process": its own pid). Two callbacks in one Trainer share one run and one lock. Held
# strongly: the lock's heartbeat thread keeps the lock alive after the user's Trainer and callback are gone.
_HOLDERS: dict[str, "LoratuneCallback"] = {}
# The Trainer's training loop: while the thread that began training has it on its stack, the run goes on. A watch
# thread looks every WATCH_S seconds; once it is gone without on_train_end (train() raised: a Ctrl-C in a notebook
# whose kernel lives on), the run is marked interrupted and its lock released, not left `running` for the kernel's life.
TRAINING_LOOP = "_inner_training_loop"
# the TrainerState fields the record is read from (as a trainer_state.json holds them), log_history besides
# (best_model_checkpoint: where the Trainer keeps the best step's model under metric_for_best_model, reloaded by
# load_best_model_at_end; the reading keeps it in the record's meta, `show` and the report say it)
STATE_FIELDS = ("max_steps", "num_train_epochs", "train_batch_size", "logging_steps", "eval_steps", "save_steps",
                "global_step", "best_model_checkpoint")
WATCH_S = 2.0


class LoratuneCallback(TrainerCallback):
    """Diagnose the run at every evaluation; print new findings; stop on divergence / collapse / overfit.

    Args:
        stop_on: which of `STOP_REASONS` stop training (default both; `()` never stops).
        overfit_patience: stop after `overfit-capacity` fired at this many evaluations in a row plus one
            (None, the default: never stop for overfitting).
        min_confidence: findings below this confidence are not printed and never stop training.
        thresholds: rule threshold overrides by name (see `loratune rules`).
        record: write `<output_dir>/loratune/` (history.jsonl, run.json) at every evaluation.
        printer: where messages go (default `print`).
        collapse_hold: the share of the planned steps over which a collapse must hold, at every evaluation,
            before it is printed or stops training (default `COLLAPSE_HOLD`).
    """

    def __init__(self, *, stop_on: Iterable[str] = STOP_REASONS, overfit_patience: int | None = None,
                 min_confidence: float = 0.6, thresholds: dict[str, float] | None = None, record: bool = True,
                 printer: Callable[[str], Any] = print, collapse_hold: float = COLLAPSE_HOLD) -> None:
        stop_on = tuple(stop_on)
        unknown = [s for s in stop_on if s not in STOP_REASONS]
        if unknown:
            raise ValueError(f"stop_on: unknown {unknown}; allowed: {', '.join(STOP_REASONS)}")
        # checked here, not at the first evaluation: a bad option must not end the user's training midway
        if overfit_patience is not None and (not _is_int(overfit_patience) or overfit_patience < 0):
            raise ValueError(f"overfit_patience: {overfit_patience!r} is not an integer >= 0; give one, or None")
        if not finite_number(min_confidence) or not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence: {min_confidence!r} is not a confidence between 0 and 1 (above 1 "
                             "nothing would ever be printed); give e.g. 0.6")
        if not finite_number(collapse_hold) or not 0.0 <= collapse_hold <= 1.0:
            raise ValueError(f"collapse_hold: {collapse_hold!r} is not a share of the planned steps; give a number "
                             "between 0 and 1")
        self.stop_on = stop_on
        self.overfit_patience = overfit_patience
        self.min_confidence = float(min_confidence)
        self.thresholds = dict(thresholds or {})
        unknown_t = [k for k in self.thresholds if k not in THRESHOLDS]
        if unknown_t:
            raise ValueError(f"thresholds: unknown {unknown_t} (names from `loratune rules`)")
        try:  # the values as the diagnosis will check them at every evaluation (a "3" is no threshold)
            resolve_thresholds(self.thresholds)
        except UserError as exc:
            raise ValueError(f"thresholds: {exc}") from None
        self.collapse_hold = float(collapse_hold)
        self.record = record
        self.printer = printer
        self.training = False  # on_train_begin ran: an evaluate() before (or without) training writes nothing
        self._new_run()

    def _new_run(self) -> None:
        """The state of one training run: a callback passed to a second `trainer.train()` starts it afresh (the
        first run's stop reason made the second's record read `diverged`, its loss scale stayed)."""
        self.collapse_since: int | None = None  # the step of the first evaluation of the current collapse streak
        self.collapse_streak = 0
        self.finished = False  # on_train_end ran: a later evaluate() keeps the record's final status
        self.points: tuple = ()  # the run's points at the last diagnosis
        # how the logged train losses read as means (_sums_micro_batch_losses): the record's `train_loss_scale`
        # ({"factor": 1/N, "accumulation": N, "batches_per_epoch"}, history_io.scaled_log_history), or None
        self.loss_scale: dict | None = None
        self.reported: set[str] = set()
        self.withheld: set[str] = set()  # findings a MIDRUN_WAITS route held back: said at the end if they hold
        self.overfit_streak = 0
        self.stopped_by: str | None = None
        self.last: Diagnosis | None = None
        self._started = time.time()
        # an eval_dataset dict makes the Trainer call on_evaluate once per set, at the same step: the streaks count
        # evaluations, not sets (two sets stopped an overfit_patience=2 run after two evaluations)
        self._eval_step: int | None = None  # the step of the evaluation under way
        self._eval_calls = 0  # on_evaluate calls at that step so far
        self._sets = 0  # the calls an evaluation made before (the number of eval sets; 0 until one evaluation ended)
        self._streaks_before: tuple = (0, None, 0)  # (collapse_streak, collapse_since, overfit_streak) before it
        # the step of a first evaluation of named sets not yet acted on: how many sets it has shows only when the
        # next training step begins (acting at its first set judged a point that lacked the other sets' metrics)
        self._deferred: int | None = None
        self._warned: set[str] = set()  # what failed in the callback's own bookkeeping, said once each
        self._release_lock()
        self._lock = None  # the record's run.lock, held while training: `running` reads alive (store.liveness)
        self._lock_key: str | None = None  # its folder, as _HOLDERS keys it
        self._sharing = False  # another callback of the same train() holds the lock: this one writes beside it
        self._state_ref = None  # (weakref to) this run's TrainerState: the Trainer makes one per train() call
        self._step = 0  # the last step trained: where an interrupted run stopped (its last evaluation may be earlier)
        # the state's fields at that step and its log (the Trainer's own list, not a copy): what an interrupted run's
        # record is rebuilt from, its train logs since the last evaluation included (the Trainer may be gone by then)
        self._last_state: SimpleNamespace | None = None
        self._record: tuple[Path, dict] | None = None  # the record last written: (folder, run.json)
        self._fp16: bool | None = None  # the run trains under fp16's loss scaler (None: not known)

    # -- Trainer events -------------------------------------------------------------------------

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        loss, grad = logs.get("loss"), logs.get("grad_norm")
        why = None
        if isinstance(loss, (int, float)) and not math.isfinite(float(loss)):
            why = f"the train loss is {loss}"
        elif isinstance(grad, (int, float)) and not math.isfinite(float(grad)) and nan_filtered_loss(
                logs, fp16=_fp16(args)):
            # fp16's loss scaler skips a step whose gradient overflowed (and logs its norm as inf); any other run
            # applied it and its weights are no numbers now. logging_nan_inf_filter (the default) logs such a
            # step's loss as the mean of the earlier ones (0 when every step since the last log was NaN)
            why = f"the gradient norm is {grad} (the logged train loss {loss} stands in for a non-finite one)"
        if why and "diverged" in self.stop_on:
            self._stop(control, "diverged", f"{why} at step {state.global_step}: the run diverged (next move: "
                                            "learning_rate /10, check the data)")
        return control

    def on_train_begin(self, args, state, control, **kwargs):
        if self.training and not self.finished:  # this callback's last train() raised: that run is over
            self._abandon("its train() ended without finishing (an exception or Ctrl-C); the callback trains again")
        self._new_run()  # (a second trainer.train() in the same process trains again)
        self.training = True
        self._fp16 = _fp16(args)  # a loss beside a non-finite norm is a stand-in without it
        try:
            self._state_ref = weakref.ref(state)
        except TypeError:  # a state object that takes no weak reference: held as it is
            self._state_ref = (lambda s=state: s)
        self._watch_loop()
        accum = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
        if accum > 1 and _sums_micro_batch_losses(kwargs.get("model")):
            # each epoch's last window holds what is left of its batches (the Trainer sums that many micro-batch
            # means, not N): the batches per epoch say which steps those are
            # start_step: a resume's sums (its end entry's train_loss, its first log) start at its checkpoint's step
            self.loss_scale = {"factor": 1.0 / accum, "accumulation": accum,
                               "start_step": int(getattr(state, "global_step", 0) or 0)}
            try:
                batches = len(kwargs.get("train_dataloader"))
            except TypeError:  # no dataloader, or an iterable one without a length: every window read as N
                batches = None
            if isinstance(batches, int) and batches > 0:
                self.loss_scale["batches_per_epoch"] = batches
        if self.record and getattr(state, "is_world_process_zero", True):
            try:
                self._retire_record(Path(args.output_dir) / RECORD_DIR, state)
            except OSError as exc:
                self._warn("record", f"could not move the earlier run's record in {Path(args.output_dir) / RECORD_DIR}"
                                     f" aside ({exc.strerror or exc}); it is overwritten at the first evaluation")
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.training or self.finished:
            # `trainer.evaluate()` with no training, or after it (of the best checkpoint reloaded, or a test set):
            # not a point of the run; the record keeps what training measured, and its final status
            return control
        step = state.global_step
        if self._deferred is not None and step != self._deferred:  # (no step began in between: act on it now)
            self._act_on_deferred(state, control)
        if step == self._eval_step:  # another set of the same evaluation: redo its update from where it started
            self._eval_calls += 1
            self.collapse_streak, self.collapse_since, self.overfit_streak = self._streaks_before
        else:
            self._sets = max(self._sets, self._eval_calls)
            self._eval_step, self._eval_calls = step, 1
            self._streaks_before = (self.collapse_streak, self.collapse_since, self.overfit_streak)
        try:
            d = self._diagnose(args, state, kwargs.get("model"))
        except Exception as exc:  # the callback's bookkeeping never ends the user's training
            self._warn("diagnose", f"could not diagnose the run at step {step} ({type(exc).__name__}: {exc}); "
                                   "training goes on without the diagnosis")
            return control
        self.last = d
        if self._eval_calls < self._sets:
            return control  # the evaluation's other sets are still to come: act on the whole point
        if self._sets == 0 and _named_eval_set(metrics):
            self._deferred = step  # the first evaluation of named sets: more may follow at this step
            return control
        return self._act(control, step, d, state)

    def on_step_end(self, args, state, control, **kwargs):
        self._step = state.global_step
        self._last_state = SimpleNamespace(**{k: getattr(state, k, None) for k in STATE_FIELDS},
                                           log_history=getattr(state, "log_history", None) or [])
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        if self._deferred is not None:  # the first evaluation of named sets has ended: every set is in
            self._act_on_deferred(state, control)
        return control

    def _act_on_deferred(self, state, control) -> None:
        step, self._deferred = self._deferred, None
        self._sets = max(self._sets, self._eval_calls)
        if self.last is not None:
            self._act(control, step, self.last, state)

    def _act(self, control, step: int, d: Diagnosis, state):
        """Print an evaluation's new findings and stop on what the options say, once per evaluation (its last set)."""
        confident = {f.rule_id for f in d.active if not f.tentative and f.confidence >= self.min_confidence}
        pinned = "collapsed" in confident or ("lr-too-large" in confident and _collapsed(d))
        # a loss still setting new lows is moving, not pinned: no streak, yet no alarm either (the hold decides)
        collapse = pinned and not _new_val_low(self.points)
        if collapse:
            self.collapse_streak += 1
            self.collapse_since = step if self.collapse_since is None else self.collapse_since
        else:
            self.collapse_streak, self.collapse_since = 0, None
        collapse_held = collapse and self.collapse_streak >= 2 and (
            step - self.collapse_since >= self.collapse_hold * (state.max_steps or 0))
        for f in d.active:
            if (f.rule_id in QUIET_MIDRUN or f.tentative or f.confidence < self.min_confidence
                    or f.rule_id in self.reported):
                continue
            if pinned and not collapse_held and (f.rule_id == "collapsed" or f.rule_id == "lr-too-large"):
                continue  # not yet: a collapse early in the plan reads like a model that has not started learning
            untrusted = self._untrusted(f, d)
            if self._waits(f, untrusted):
                self.withheld.add(f.rule_id)
                continue  # not yet: mid-run this reading describes a run still learning (MIDRUN_WAITS)
            self._say(f"step {step}", f, d, untrusted)
        if "diverged" in confident and "diverged" in self.stop_on:
            self._stop(control, "diverged", "the diagnosis says diverged (exploding or non-finite loss)")
        elif "collapse" in self.stop_on and collapse_held:
            self._stop(control, "collapse", f"the model collapsed to one class (loss pinned near ln(classes)) at "
                                            f"every evaluation since step {self.collapse_since}")
        self.overfit_streak = self.overfit_streak + 1 if "overfit-capacity" in confident else 0
        if self.overfit_patience is not None and self.overfit_streak > self.overfit_patience:
            self._stop(control, "overfit", f"overfit-capacity at {self.overfit_streak} evaluations in a row "
                                           f"(patience {self.overfit_patience})")
        return control

    def _say(self, when: str, f, d: Diagnosis, untrusted: tuple[MidrunWait, ...] = ()) -> None:
        """Print finding `f`, read over its routes other than those `untrusted` (one that held beside them: at step
        35 of 40 'still falling at the end' was said for a run that also 'barely moved over a plan that ran')."""
        self.reported.add(f.rule_id)
        route = f.route
        if untrusted:
            route = route_reading(rule_by_id(f.rule_id), d.features, resolve_thresholds(self.thresholds),
                                  skip=tuple(w.route() for w in untrusted))
        reading = "; ".join(route) or f.verdict  # what this run showed, else the rule's general verdict
        self.printer(f"[loratune] {when}: {f.rule_id} - {reading}; next move: "
                     f"{moves_text(f.rule_id, f.moves)} (confidence {f.confidence:.2f})")

    def _untrusted(self, f, d: Diagnosis) -> tuple[MidrunWait, ...]:
        """The MIDRUN_WAITS routes of finding `f`'s rule whose reading cannot be trusted yet."""
        limits = resolve_thresholds(self.thresholds)
        out = []
        for w in MIDRUN_WAITS:
            if w.rule_id != f.rule_id:
                continue
            value = d.features.values.get(w.feature)
            limit = limits[w.threshold] if isinstance(w.threshold, str) else w.threshold
            if not isinstance(value, (int, float)) or not RULE_OPS[w.op](value, limit):
                out.append(w)
        return tuple(out)

    @staticmethod
    def _waits(f, untrusted: tuple[MidrunWait, ...]) -> bool:
        """Whether finding `f` fired on one of the `untrusted` routes alone (every clause that made it fire is on
        that route): not said yet."""
        decisive = {(e.feature, e.op, e.threshold_name) for e in getattr(f, "evidence", ()) if e.decisive and e.passed}
        for w in untrusted:
            route = {(cl.feature, cl.op, cl.threshold) for cl in w.route().leaves()}
            if decisive and decisive <= route and w.route_feature in {k[0] for k in decisive}:
                return True
        return False  # another route made it fire too: its reading stands

    def on_train_end(self, args, state, control, **kwargs):
        if self._deferred is not None:  # a run whose only evaluation of named sets was at its last step
            self._act_on_deferred(state, control)
        self.finished = True
        try:
            if self.record and state.is_world_process_zero:
                try:
                    self.last = self._diagnose(args, state, kwargs.get("model"), final=True)
                except Exception as exc:  # the training is over: what it saved stands whatever this says
                    self._warn("diagnose", f"could not diagnose the finished run ({type(exc).__name__}: {exc})")
                else:
                    # a finding held back mid-run that the final diagnosis (the record's verdict) still holds: said
                    # now, the run's end reached (no evaluation may have come late enough in the plan to say it)
                    for f in self.last.active:
                        if (f.rule_id in self.withheld and f.rule_id not in self.reported and not f.tentative
                                and f.confidence >= self.min_confidence):
                            self._say(f"end of training (step {state.global_step})", f, self.last)
        finally:
            self._release_lock()  # the final record is written: nothing trains into it any more
        return control

    # -- helpers --------------------------------------------------------------------------------

    def _stop(self, control, reason: str, why: str) -> None:
        if self.stopped_by is None:
            self.stopped_by = reason
            self.printer(f"[loratune] stopping the training: {why}")
        control.should_training_stop = True

    def _warn(self, what: str, message: str) -> None:
        """Say a failure of the callback's own work once per kind: the training goes on."""
        if what not in self._warned:
            self._warned.add(what)
            self.printer(f"[loratune] warning: {message}")

    def _release_lock(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            if _HOLDERS.get(self._lock_key) is self:
                del _HOLDERS[self._lock_key]
        self._lock = None
        self._sharing = False

    def _watch_loop(self) -> None:
        """Watch, from a daemon thread, that the thread now training stays inside the Trainer's training loop."""
        frame, code = sys._getframe(), None
        while frame is not None and code is None:
            code = frame.f_code if frame.f_code.co_name == TRAINING_LOOP else None
            frame = frame.f_back
        if code is None:  # a trainer without that loop: the next run or the process's exit ends an abandoned run
            return
        tid, run = threading.get_ident(), self._state_ref

        def in_loop() -> bool:
            f = sys._current_frames().get(tid)
            while f is not None and f.f_code is not code:
                f = f.f_back
            return f is not None

        def watch() -> None:
            while self._state_ref is run and not self.finished:
                time.sleep(WATCH_S)
                if self._state_ref is run and not self.finished and not in_loop():
                    self._abandon("its train() ended without finishing (an exception or Ctrl-C)")
                    return  # (a run that never evaluated has no record nor lock: nothing more to watch)

        threading.Thread(target=watch, name="loratune-watch", daemon=True).start()

    def _abandon(self, why: str) -> None:
        """This run's train() ended without on_train_end (it raised): mark its record interrupted at the last step
        trained, and release its lock."""
        with _ABANDON:  # the watch thread, a new run and the exit hook may all try
            if self.finished or self._lock is None:
                return
            self.finished, self.training = True, False
            self._mark_interrupted(why)

    def _mark_interrupted(self, why: str) -> None:
        """Rewrite the last record as `interrupted` at the last step trained, then release the lock."""
        try:
            if self._record is not None:
                folder, record = self._record
                steps = max(int(record.get("steps_done") or 0), int(self._step or 0))
                points, state = self.points, self._last_state
                if state is not None and (state.global_step or 0) > (points[-1]["step"] if points else 0):
                    try:  # the train logs since the last evaluation: the curve reaches the last step logged
                        points = history_from_trainer_state(self._state_fields(state), folder.parent,
                                                            name=folder.parent.name).points or points
                    except Exception:  # (a state it cannot read: the record keeps its last evaluation's points)
                        pass
                facts = record.get("facts")
                if isinstance(facts, dict):  # the step count read from the live state at the last evaluation
                    facts = {**facts, "steps_done": {"value": steps, "source": "the last step trained (the live "
                                                                               "TrainerState global_step at its end)"}}
                _write_record(folder, points, {**record, "status": "interrupted", "steps_done": steps,
                                               "reason": f"training stopped at step {steps}: {why}",
                                               **({"facts": facts} if facts is not None else {})})
        except OSError:
            pass  # the record stays `running`; its lock, released below, lets readers call it died
        finally:
            self._release_lock()

    def _retire_record(self, folder: Path, state) -> None:
        """Move an earlier run's record out of `folder` as this run begins: until this run's first evaluation it
        read as the run in the output_dir (a new run interrupted before it left `completed 30/30` with the old pid,
        and its checkpoints were read with the old run's loss scale). Kept beside it, in RETIRED_RECORD_DIR.
        A train() that resumes the record's own run from a checkpoint keeps it: it is this run's record."""
        if not (folder / RUN).is_file() and not (folder / "history.jsonl").is_file():
            return
        other = _HOLDERS.get(os.path.realpath(folder))
        if other is not None and other is not self:
            mine = self._state_ref() if self._state_ref else None
            if mine is not None and other._state_ref is not None and other._state_ref() is mine:
                return  # two callbacks in one Trainer: the record is this run's
            other._abandon(f"its train() ended without finishing (an exception or Ctrl-C); a new training run in "
                           f"this process (pid {os.getpid()}) began into {folder}")
        elif (folder / "run.lock").is_file() and liveness(folder)[0] == "alive":
            return  # another process trains into this output_dir: its record (_hold_lock warns of it)
        if self._resumes_record(folder, state):
            # moved aside, a resumed run read as its checkpoint's summed losses (3 x ln 4) and lost its status, and
            # each resume left another copy
            return
        n = 1
        while (to := folder.parent / (RETIRED_RECORD_DIR + (f"-{n}" if n > 1 else ""))).exists():
            n += 1
        os.replace(folder, to)  # (not printed: the callback is silent on a healthy run, and a re-run is one)

    def _resumes_record(self, folder: Path, state) -> bool:
        """Whether this train() resumes the run recorded in `folder` (resume_from_checkpoint): the Trainer restored a
        checkpoint's state (a step past 0, its log) and that log agrees with the record (history_io.compare_record:
        the same planned steps, the same eval values at the steps both evaluated). Where they share no evaluation (a
        checkpoint saved before the record's first one), the record's run must have stopped unfinished at or past the
        checkpoint's step: another run of the same max_steps resumed before its first evaluation disagreed in nothing
        and kept the earlier run's `completed` record, and a run's own resume from such a checkpoint moved its record
        aside as another run's."""
        step = getattr(state, "global_step", 0) or 0
        if not step > 0 or not getattr(state, "log_history", None):
            return False  # a fresh run: the record is an earlier run's
        try:
            why, agree = compare_record(folder, self._state_fields(state))
            if why is not None:
                return False
            if agree > 0:
                return True
            meta = json.loads((folder / RUN).read_text(encoding="utf-8"))
        except Exception:  # (a state or record it cannot read: as a new run, the record is kept aside, not lost)
            return False
        unfinished = isinstance(meta, dict) and meta.get("status") in UNFINISHED_RECORD
        return unfinished and (meta.get("steps_done") or 0) >= step

    def _hold_lock(self, folder: Path) -> None:
        """Hold `<record>/run.lock` while training, as `loratune train` holds its run's: a record that says
        `running` with no lock read as a process that died (diagnose: 'partial run (status died)')."""
        if self._lock is not None or self._sharing:
            return
        key = os.path.realpath(folder)
        other = _HOLDERS.get(key)
        if other is not None and other is not self:
            mine = self._state_ref() if self._state_ref else None
            if mine is not None and other._state_ref is not None and other._state_ref() is mine:
                self._sharing = True  # two callbacks in one Trainer: one run, one record, one lock (the first's)
                return
            # a run of this process that never reached on_train_end (train() raised): it is over, this one begins
            other._abandon(f"its train() ended without finishing (an exception or Ctrl-C); a new training run in "
                           f"this process (pid {os.getpid()}) began into {folder}")
        lock = RunLock(folder)
        try:
            lock.acquire()
        except UserError as exc:  # another process trains into this output_dir: its record, its lock
            self._warn("lock", f"{exc.problem}; the record at {folder} may mix both runs")
            return
        self._lock, self._lock_key = lock, key
        _HOLDERS[key] = self

    def _state_fields(self, state) -> dict:
        """A live TrainerState's fields as a trainer_state.json holds them, its train losses read as means."""
        fields = {k: getattr(state, k, None) for k in STATE_FIELDS}
        if self.loss_scale and trainer_divides_losses(k for e in state.log_history if isinstance(e, dict) for k in e):
            self.loss_scale = None  # a RewardTrainer's loss: the Trainer divided it by the accumulation steps itself
        log = scaled_log_history(state.log_history, self.loss_scale) if self.loss_scale else list(state.log_history)
        # a loss the Trainer logged in place of a non-finite one is no measurement: NaN, so the record holds null
        fields["log_history"] = [{**e, "loss": math.nan} if isinstance(e, dict) and nan_filtered_loss(e, fp16=self._fp16)
                                 else e for e in log]
        return fields

    def _diagnose(self, args, state, model, final: bool = False) -> Diagnosis:
        out = Path(args.output_dir)
        run = history_from_trainer_state(self._state_fields(state), out, name=out.name, path=str(out),
                                         adapter=_peft_config(model), source_file=LIVE_STATE_SOURCE,
                                         model_config=_model_config(model))
        self.points = run.points
        meta = dict(run.meta)
        labels = _labels(model)
        if labels and "labels" not in meta and meta.get("task") != "causal-lm":
            meta["labels"] = labels
        d = diagnose(run.points, meta=meta, thresholds=self.thresholds, name=out.name)
        if self.record and state.is_world_process_zero:
            status = "running"
            if final:  # the loratune record's statuses: a run stopped for divergence is `diverged`
                cut = self.stopped_by and (state.global_step or 0) < (state.max_steps or 0)  # a stop at the last step
                status = "diverged" if self.stopped_by == "diverged" else "stopped" if cut else "completed"
            record = {
                **{k: v for k, v in meta.items() if k != "partial"}, "status": status, "source": CALLBACK_RECORD_SOURCE,
                "stopped_by": self.stopped_by, "verdict": d.verdict, "config": run.config,
                # the thresholds= its verdict was read with: `loratune diagnose` of the record reads it back with them
                **run_thresholds_entry(resolve_thresholds(self.thresholds)),
                **_method(model), "versions": _versions(),
                "train_loss_scale": None if not self.loss_scale else {
                    **self.loss_scale,
                    "why": "the Trainer logged each train loss as the sum of its gradient-accumulation micro-batches' "
                           "means (a classifier whose forward takes **kwargs: transformers leaves the scaling to the "
                           "model, which does not scale): read as their mean, each epoch's last window over the "
                           "micro-batches it holds"},
                # what the reading of the Trainer's log said (a diagnosis with no curve rule says why only here);
                # not its partial-run note: the record's status says that, and it changes
                "notes": [n for n in run.notes if not n.startswith(PARTIAL_LOG_NOTE)],
                "wall_s": round(time.time() - self._started, 3), "pid": os.getpid()}
            try:
                folder = out / RECORD_DIR
                folder.mkdir(parents=True, exist_ok=True)
                if not final:
                    self._hold_lock(folder)
                _write_record(folder, run.points, record)
                self._record = (folder, record)
            except OSError as exc:  # a full or read-only disk: the user's training matters more than our record
                self._warn("record", f"could not write the run record in {out / RECORD_DIR} "
                                     f"({exc.strerror or exc}); training goes on, the record is behind")
        return d


# heads whose loss is a plain mean over the batch, whatever `num_items_in_batch` says (a causal LM's loss function
# divides by it: its logged loss is a mean already)
MEAN_LOSS_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForMultipleChoice", "ForQuestionAnswering")


_ABANDON = threading.Lock()


@atexit.register
def _end_abandoned_runs() -> None:
    """At the interpreter's exit, the runs whose train() raised and that no later run took over: interrupted."""
    for cb in list(_HOLDERS.values()):
        cb._abandon("its train() ended without finishing (an exception or Ctrl-C) and the Python process exited")


def _named_eval_set(metrics) -> bool:
    """Metrics of one named eval set (`eval_dataset={name: ...}`: the Trainer prefixes each key `eval_<name>_`,
    its runtime included), not of a single unnamed set (`eval_runtime`)."""
    keys = [k for k in (metrics or {}) if isinstance(k, str)]
    return "eval_runtime" not in keys and any(k.startswith("eval_") and k.endswith("_runtime") for k in keys)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _sums_micro_batch_losses(model) -> bool:
    """Whether the Trainer logs this model's train loss summed over gradient-accumulation micro-batches: it divides a
    micro-batch's loss by the accumulation steps only when the model does not take loss kwargs
    (`accepts_loss_kwargs`, else a **kwargs forward: transformers' own test), and a classification head that takes
    **kwargs never uses them (a tiny BERT with accumulation 3 logged 3 x ln 4 and was stopped as diverged). Unless
    the trainer tells the Trainer to divide whatever the model (`loss_is_scaled_for_ga = False`): a RewardTrainer's
    log (history_io.trainer_divides_losses) drops the scale at its first log."""
    if model is None:
        return False
    from loratune.heads import transformers_model

    base = transformers_model(model)
    accepts = getattr(base, "accepts_loss_kwargs", None)
    if accepts is None:
        import inspect

        try:
            params = inspect.signature(base.forward).parameters.values()
        except (TypeError, ValueError):
            return False
        accepts = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)
    return bool(accepts) and type(base).__name__.endswith(MEAN_LOSS_HEADS)


def _new_val_low(points) -> bool:
    """Whether the last point's val loss is below every earlier one's."""
    vals = [p["val/loss"] for p in points if isinstance(p.get("val/loss"), (int, float))
            and math.isfinite(p["val/loss"])]
    return len(vals) >= 2 and vals[-1] < min(vals[:-1])


def _collapsed(d: Diagnosis) -> bool:
    f = d.finding("lr-too-large")
    if f is None:
        return False
    # the collapse route made it fire (not an oscillation route beside a loss that happens to sit near chance)
    held = {e.feature for e in f.evidence if e.decisive and e.passed}
    return "val_pred_top_share" in held or "train_loss_vs_chance" in held


def _fp16(args) -> bool:
    """Whether the run trains under fp16's loss scaler: `fp16=True`, or accelerate's `--mixed_precision fp16`
    (transformers 5 sets `args.mixed_precision` from it, `fp16` left False; older ones read the environment)."""
    mixed = getattr(args, "mixed_precision", None)
    if not isinstance(mixed, str):
        mixed = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    return bool(getattr(args, "fp16", False)) or mixed == "fp16"


def _method(model) -> dict:
    """run.json's `method` of the live model: "lora" for a LoRA adapter, "full" for a model with no peft adapter whose
    every parameter trains (an SFTTrainer given no peft_config), nothing where neither is sure (another peft type,
    some weights frozen by hand, no model)."""
    peft = _peft_config(model)
    if str((peft or {}).get("peft_type")).upper() in LORA_PEFT_TYPES:
        return {"method": "lora"}
    if model is None or peft is not None or getattr(model, "peft_config", None):
        return {}
    try:
        params = list(model.parameters())
    except (AttributeError, TypeError):
        return {}
    return {"method": "full"} if params and all(p.requires_grad for p in params) else {}


def _peft_config(model) -> dict | None:
    cfg = getattr(model, "peft_config", None)
    if not isinstance(cfg, dict) or not cfg:
        return None
    c = next(iter(cfg.values()))
    out = {k: getattr(c, k, None) for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora",
                                            "use_dora", "layers_to_transform", "bias", "init_r", "target_r")}
    peft_type = getattr(c, "peft_type", None)  # an enum (PeftType.LORA): its value, as adapter_config.json writes it
    out["peft_type"] = getattr(peft_type, "value", peft_type)
    return {k: v for k, v in out.items() if v is not None or k in ("r", "lora_alpha")}


def _model_config(model) -> tuple[dict, str] | None:
    """The live model's config as its config.json would hold it (its class as the architecture where none is set
    yet: it is written at the first save), and where it was read: the classes, task (problem_type multi-label) and
    head the record takes from it, not an estimate from the first logged loss (a 4-label multi-label model's record
    said task None and 2 classes). As save_pretrained writes it (`to_diff_dict`): a config's defaults are no facts
    of the run (a custom module's 4-class head beside a BertModel's config read its default id2label {0: LABEL_0,
    1: LABEL_1} as 2 classes, and was stopped as diverged at step 5)."""
    if model is None:
        return None
    from loratune.heads import transformers_model

    base = transformers_model(model)
    cfg = getattr(base, "config", None)
    say = getattr(cfg, "to_diff_dict", None) if cfg is not None else None
    say = say if callable(say) else getattr(cfg, "to_dict", None) if cfg is not None else None
    if not callable(say):
        return None
    try:
        d = dict(say())
    except Exception:  # (a config that cannot say itself: the record reads what the log shows)
        return None
    if not d.get("architectures"):
        d["architectures"] = [type(base).__name__]
    return d, "the live model's config"


def _labels(model) -> list[str] | None:
    """The class names of the live model's config (as _model_config reads it; a config that cannot say itself:
    its id2label)."""
    read = _model_config(model)
    cfg = getattr(model, "config", None)
    d = read[0] if read else {"id2label": getattr(cfg, "id2label", None), "architectures": getattr(cfg, "architectures",
                                                                                                    None)}
    id2label = d.get("id2label") or {}
    if len(id2label) >= 2 and not any(str(a).endswith("ForCausalLM") for a in (d.get("architectures") or [])):
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    return None


# the libraries whose versions the record keeps, as loratune's own run.json does (train.versions), TRL's too: the
# Trainer's log reads by its transformers version (store.trainer_logs_next_lr)
RECORD_LIBRARIES = ("torch", "transformers", "peft", "trl")


def _versions() -> dict[str, str]:
    """run.json's `versions`: loratune's, and each of RECORD_LIBRARIES installed (by its imported module where one is
    loaded, the version that runs)."""
    from importlib import metadata

    from loratune import __version__
    from loratune.store import RUN_RECORD_VERSION_KEY

    out = {RUN_RECORD_VERSION_KEY: __version__}
    for lib in RECORD_LIBRARIES:
        v = getattr(sys.modules.get(lib), "__version__", None)
        if not isinstance(v, str):
            try:
                v = metadata.version(lib)
            except metadata.PackageNotFoundError:
                continue
        out[lib] = v
    return out


def _write_record(folder: Path, points, meta: dict) -> None:
    """history.jsonl and run.json, each written whole to a temp file and renamed (never a torn file)."""
    for name, text in (("history.jsonl", "".join(json.dumps(p, default=_json) + "\n" for p in points)),
                       ("run.json", json.dumps(meta, indent=2, default=_json) + "\n")):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)


def _json(v):
    if isinstance(v, (set, tuple)):
        return list(v)
    return str(v)
