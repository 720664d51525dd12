"""What every search strategy shares: running trials through a store, a runner and a budget, and
recording decisions. (The protocol's stages and the yardstick samplers are both written on top.)

`SearchContext.run(spec)`:
1. a finished trial with the same config point in the study (a resumed study) is reused: its
   recorded cost is charged again, so the budget is where it was when that trial first finished;
2. otherwise, when the estimated cost (from the trials measured so far) fits what is left after the
   reservation for later stages (or it is the first trial of its length: before any measurement the
   estimate is a prior, and the wall-time deadline bounds it), the trial is trained under a `Watch`
   (pruning, budget stop) and recorded in the study as it finishes;
3. otherwise None: the caller records why it did not run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from loratune.errors import UserError
from loratune.objectives import NOISE_BAND, SCORE_FLOOR, Objective, objective
from loratune.search.budget import Cost, CostModel, Meter, format_amount
from loratune.search.prune import PruneSettings
from loratune.search.runner import FinishedThenInterrupted, Watch, score_at
from loratune.search.state import ProtocolState
from loratune.search.study import replay_key
from loratune.search.trial import TrialRecord, TrialResult, TrialSpec, short_name


class Runner(Protocol):
    def run(self, spec: TrialSpec, run_dir: Path, watch: Watch | None = None) -> TrialResult: ...

    def compare(self, run_dirs: Sequence[str]) -> dict | None: ...

    def evaluate(self, run_dir: str, split: str = "test") -> dict: ...


class UI:
    """Live progress hooks (the CLI renders them with rich; tests and benches use this silent one)."""

    def decision(self, d: dict) -> None: ...

    def trial_start(self, number: int, spec: TrialSpec, ctx: "SearchContext") -> None: ...

    def trial_eval(self, point: dict, ctx: "SearchContext") -> None: ...

    def trial_end(self, rec: TrialRecord, ctx: "SearchContext") -> None: ...

    def note(self, text: str) -> None: ...


class Store(Protocol):
    """Where a search keeps its trials and decisions: `study.Study` (Optuna storage + files); tests use
    an in-memory one with the same methods (tests/memory_store.py)."""

    dir: Path
    decisions: Any  # has append(decision: dict) -> dict
    recovered: list[dict]

    def records(self) -> list[TrialRecord]: ...

    def finished_by_key(self) -> dict[str, TrialRecord]: ...

    def start(self, spec: TrialSpec, trial=None) -> tuple[int, Path]: ...

    def finish(self, trial, spec: TrialSpec, run_dir: Path, result: TrialResult) -> TrialRecord: ...

    def fail(self, trial, reason: str, status: str = "interrupted") -> None: ...


@dataclass
class SearchContext:
    store: Store  # study.Study, or an in-memory one in tests
    runner: Runner
    meter: Meter
    trial_examples: int  # training examples one full-length trial processes
    trial_steps: int = 0  # its optimizer steps (points with their own train.max_steps scale from it)
    base_point: dict[str, Any] = field(default_factory=dict)  # the start point (names are diffs from it)
    costs: CostModel = field(default_factory=CostModel)
    ui: UI = field(default_factory=UI)
    prune: PruneSettings = field(default_factory=PruneSettings)
    noise_floor: float = SCORE_FLOOR  # the smallest difference that ever counts (protocol 6; the objective's)
    finish_rows: int = 0  # test rows scored at the end (wall budgets keep time back for them)
    finish_base_s: float = 15.0  # plus exporting the adapter and writing the summary
    # a study pruner asked at every eval point a trial reports (tpe-hyperband: yardstick.hyperband_check):
    # (Optuna trial, step, score, the score as a person reads it) -> the reason to stop, or None; None: the
    # Watch's own rules only
    trial_pruner: Callable[[Any, int, float, str], str | None] | None = None
    records: list[TrialRecord] = field(default_factory=list)  # trials of this search, in the order asked
    state: ProtocolState = field(default_factory=ProtocolState)  # what stages learned (incumbent, noise, ...)
    current: dict[str, Any] = field(default_factory=dict)  # the running trial (for progress)
    phase: str = ""
    _seq: int = 0
    _queued: set = field(default_factory=set)  # keys this search queued for workers (see prefetch)
    _pending: list = field(default_factory=list)  # decisions recorded once a resumed study's replay catches up
    # a resumed study: the trials its earlier sessions finished (numbers), and those of them charged without a
    # reuse (charge_earlier): what was spent stays spent, once
    earlier: set = field(default_factory=set)
    _charged: set = field(default_factory=set)
    # the trials that never finished (Study.lost_spending) whose spend this session charged: each once per session,
    # as the session's meter starts empty (charge_lost)
    _lost: set = field(default_factory=set)
    # the real time around trials (startup, between trials, a trial's setup) that each session charged
    # (charge_elapsed): kept in the study as it is charged (`Study.save_overheads`), so that a resume, whose meter
    # starts empty and charges the reused trials' own training only, charges the earlier sessions' overheads again
    # (charge_earlier) and a resume never lowers what was spent, even after a kill. `session`: this session's index
    session: int = 0
    earlier_overheads: list = field(default_factory=list)  # [{label, wall_s, session}], charged once
    # a resumed study made before the overheads were kept per session: the wall time its final/study.json said was
    # spent, to which charge_earlier tops the meter up once (else a resume of it lowered what was spent)
    recorded_spent_s: float | None = None
    _overheads: list = field(default_factory=list)  # this session's own
    # the session's clock (tune: time.perf_counter): the real time between and around trials (sampler, study records,
    # decisions, a trial's model setup) is charged too, so a wall budget bounds the session; None: trials' own
    # measured wall time only (scripted runs in tests)
    clock: Callable[[], float] | None = None
    since: float | None = None  # the clock's reading the meter has charged up to (None: now)
    # table -> name -> value of every overridable threshold (thresholds.tables_with: tune --thresholds applied), what
    # the stages' own rule reads (rule_threshold) and the LoRA-vs-full decision take; the runner holds the diagnosis
    # table for its diagnoses and comparisons
    thresholds: dict = field(default_factory=lambda: _default_tables())

    def __post_init__(self) -> None:
        if self.since is None and self.clock is not None:
            self.since = self.clock()

    def rule_threshold(self, name: str) -> float:
        """A diagnosis threshold by name (`loratune rules`), as this study decides with it (tune --thresholds)."""
        return self.thresholds["diagnosis"][name]

    # ------------------------------------------------------------------ the objective
    @property
    def objective(self) -> Objective:
        """What trials are compared on (the runner's objective key; val macro-F1 when it names none).
        Trial values are its scores (larger is better); `show` / `fmt` give the value a person reads."""
        return objective(getattr(self.runner, "objective", None))

    def show(self, score: float | None) -> str:
        return self.objective.show(score)  # 'val loss 2.310', 'val macro-F1 0.812'

    def fmt(self, score: float | None) -> str:
        return self.objective.fmt(score)  # '2.310'

    def op(self, op: str) -> str:
        """The comparator to print between two `fmt` values when the code compared their scores with `op` ('<' on
        scores is '>' on losses): evidence never writes a hard-coded '<' beside fmt values."""
        return self.objective.shown_op(op)

    # ------------------------------------------------------------------ trials
    def spec(self, point: dict, phase: str, purpose: str = "") -> TrialSpec:
        return TrialSpec(short_name(point, self.base_point), phase, dict(point), purpose)

    def estimate(self, point: dict) -> Cost:
        examples = self.trial_examples
        if self.trial_steps and point.get("train.max_steps"):
            examples = int(examples * int(point["train.max_steps"]) / self.trial_steps)
        return self.costs.estimate(examples, point.get("adapter.method", "lora"))

    def to_train(self, point: dict, phase: str) -> Cost:
        """What running `point` would still cost: nothing when this search or the study (an earlier session of a
        resumed one, a worker) finished it already, since `run` then reuses its record for free; else its estimate. A
        stage asks this before it weighs a run against the budget, so that a finished trial is never given up for a
        budget it does not need: the final stage said "its run at lr 0.002 does not fit" of a long run this session had
        trained, and left it out of the pick (a resume picked worse than the session that trained it). A replay of the
        25 stored v14 protocol studies on this rule takes the same decisions in 24, the 25th differing only as a replay
        of a finished study does (bench/results/tuning_notes.md)."""
        key = self.spec(point, phase).key
        if any(r.key == key for r in self.records) or key in self.store.finished_by_key():
            return Cost()
        return self.estimate(point)

    def may_start(self, point: dict, reserve: Cost = Cost(), *, per_length: bool = True) -> bool:
        """Whether a trial of `point` may start: its estimated cost fits what is left after `reserve`, or it is the
        first trial of its length (`per_length=False`, a sampler, whose lengths are a knob it draws: the first of
        this search, drawn no longer than a trial) while budget is left: its deadline and the Watch's budget stop
        bound it, and a study without a trial has nothing to recommend. Every strategy asks this one rule."""
        steps = point.get("train.max_steps")
        if per_length:
            first = not any(r.point.get("train.max_steps") == steps for r in self.records)
        else:
            first = not self.records and (not self.trial_steps or int(steps or 0) <= self.trial_steps)
        return (first and not self.meter.exhausted()) or self.meter.fits(self.estimate(point), reserve)

    def prefetch(self, specs: Sequence[TrialSpec], *, reserve: Cost = Cost()) -> None:
        """Queue trials a stage is about to run one after the other and that do not depend on each other,
        so that `loratune tune --worker` processes can train them meanwhile (a store without a queue, or
        a batch that does not fit the budget, queues nothing). A queued trial runs unpruned whoever
        trains it, so its result does not depend on which process ran it."""
        enqueue = getattr(self.store, "enqueue", None)
        todo = [s for s in specs if not any(r.key == s.key for r in self.records)]
        if enqueue is None or len(todo) < 2:
            return
        need = Cost()
        for s in todo:
            need = need + self.estimate(s.point)
        if not self.meter.fits(need, reserve):
            return
        for s in todo:
            enqueue(s)
            self._queued.add(s.key)

    def run(self, spec: TrialSpec, *, reserve: Cost = Cost(), prune: bool = True, trial=None,
            reuse: bool = True, full: bool = False) -> TrialRecord | None:
        """`full`: the trial is compared as trained to its planned length (the pair's arms): it is not pruned, and a
        pruned record of its point is not reused: the point is trained again, whole."""
        self.phase = spec.phase
        usable = (lambda r: r.key == spec.key and (not full or r.result.full_length))
        mine = next((r for r in self.records if usable(r)), None) if reuse else None
        if mine is not None:
            return mine  # asked again in this search (e.g. the pair's lr arm is an lr-grid trial): free
        if spec.key in self._queued or full:
            prune = False
        claimed = False
        done = self.store.finished_by_key().get(spec.key) if reuse else None
        pruned = done is not None and not usable(done)  # trained by this leader, pruned: never queued for workers
        if pruned:  # a resumed study's whole run of it, if it has one
            done = next((r for r in self.store.records() if usable(r)), None)
        lost_s = 0.0  # what a worker lost while this waited trained for (charged by charge_lost, not as waiting)
        if done is None and not pruned and reuse and trial is None and hasattr(self.store, "await_key"):
            # queued for workers: its record when a worker finished it (waiting while one trains it), or
            # the queued trial itself, claimed here
            how, got = self.store.await_key(spec.key, spec)
            if how == "record":
                done = got
            elif how == "claimed":
                trial, claimed = got[0], True
            # a worker killed or stopped while it trained this point (its trial failed, the point queued again or
            # free): what it trained stays spent, charged before this session trains the point again. It trained while
            # this waited: that time is its own wall time, charged once
            lost_s = sum(row["wall_s"] for row in self.charge_lost())
            if done is None and lost_s:
                self.charge_elapsed(f"{spec.name}: waiting for it, study records", minus=lost_s)
        if done is not None:
            rec = TrialRecord(done.number, done.spec, done.run_dir, done.result, reused=True)
            self._account(rec, f"{rec.label} (reused from the study)", charge=rec.number not in self._charged)
            # a worker may have trained it while this waited: that time is its own wall time, charged once, as is a
            # lost worker's before it (its 30 s was charged as lost, then again as waiting: 80 s for 50)
            self.charge_elapsed(f"{rec.label}: waiting for it, study records", minus=rec.result.wall_s + lost_s)
            self.records.append(rec)
            self.ui.trial_end(rec, self)
            return rec
        self.charge_elapsed("between trials: decisions, sampler, study records")
        # first the budget as the earlier session had it at this point of the replay: its trials not reused yet may be
        # reused further on (charged then, each once), and charged here they left every replayed decision after this
        # one less budget than it had ("1 trial left" for "3"), labelled "not reused" and then reused. A trial that
        # fits is this session's own (the replay is over): what earlier sessions spent that no decision reused is
        # charged first, and the budget asked again
        fits = self.may_start(spec.point, reserve)
        if fits:
            self.charge_earlier()
            fits = self.may_start(spec.point, reserve)
        if not fits:
            if claimed:  # a queued trial this search no longer affords
                self.store.fail(trial, "not run: the budget left does not fit it", status="skipped")
            return None
        if self._pending:  # this session's first trial of its own: the replay is over, its decisions go first (a
            self.flush_pending()  # second kill during the trial would otherwise lose them)
        handle, run_dir = self.store.start(spec, trial)
        number = handle if isinstance(handle, int) else handle.number
        self.current = {"number": number, "spec": spec, "last": None}
        watch = Watch(references=self.references(spec), settings=self.prune, budget_stop=self._budget_stop,
                      on_eval=lambda p: self._on_eval(handle, p), prune=prune,
                      time_limit=self._time_limit if self.meter.budget.kind == "wall_s" else None,
                      pruner=self._pruner_for(handle), seed_sigma=self.state.seed_sigma,
                      seed_count=len(self.state.seed_values))
        self.ui.trial_start(number, spec, self)
        try:
            result = self.runner.run(spec, run_dir, watch)
        except FinishedThenInterrupted as done:  # the run finished before the signal took effect: keep it
            self._finished(handle, spec, run_dir, done.result)
            raise done.signal from None
        except KeyboardInterrupt:
            self.store.fail(handle, "interrupted by the user; trained again on --resume")
            self._charge_lost(number, run_dir, "interrupted")
            raise
        except UserError as exc:
            # the user's input failed the trial (a model that cannot load): no lr or capacity move fixes that, so it
            # is no result for a stage to read (a failed lr trial reads as "lr too large"); the search stops with the
            # error and its fix (exit 2), the trial failed without a record, so a --resume trains it again
            self.store.fail(handle, f"stopped tune: {exc.problem}", status="failed")
            self._charge_lost(number, run_dir, "failed")
            self.current = {}
            raise
        return self._finished(handle, spec, run_dir, result)

    def _finished(self, handle, spec: TrialSpec, run_dir, result) -> TrialRecord:
        rec = self.store.finish(handle, spec, run_dir, result)
        self.current = {}
        self._account(rec, rec.label)
        self.charge_elapsed(f"{rec.label}: outside its training (setup, study records)", minus=result.wall_s)
        self.records.append(rec)
        self.ui.trial_end(rec, self)
        return rec

    def _charge_lost(self, number: int, run_dir, how: str) -> None:
        """What a trial that stopped mid-way trained stays spent (a resumed session charges it again from the
        study: `Study.lost_spending`)."""
        from loratune.search.study import spent_by_run

        wall, examples = spent_by_run(str(run_dir))
        self._lost.add(number)
        self.meter.charge(Cost(wall, examples, 0), f"trial #{number} {how}")
        self.charge_elapsed(f"trial #{number} {how}: outside its training", minus=wall)

    def charge_lost(self) -> list[dict]:
        """Charge what each trial that never finished spent before it stopped (`Study.lost_spending`: an earlier
        session's, or one of a worker killed or stopped during this session), each once in this session; the rows
        charged now. A later session charges them all again: its meter starts empty."""
        from loratune.search.study import LOST_STATUSES

        rows = [r for r in getattr(self.store, "lost_spending", list)() if r["number"] not in self._lost]
        for r in rows:
            self._lost.add(r["number"])
            self.meter.charge(Cost(r["wall_s"], r["examples"], 0), f"trial #{r['number']} {LOST_STATUSES[r['status']]}")
        return rows

    def charge_elapsed(self, label: str, minus: float = 0.0) -> None:
        """Charge the session's clock since the last charge of it, less `minus` (what was charged meanwhile as a
        trial's own wall time), so that the ledger adds up to the real time and nothing is charged twice."""
        if self.clock is None:
            return
        now = self.clock()
        gap = now - (self.since if self.since is not None else now) - minus
        self.since = now
        if gap > 0:
            self._charge_overhead(label, gap)

    def _charge_overhead(self, label: str, wall_s: float) -> None:
        """Charge real time around trials, and keep it in the study with this session's overheads (charge_earlier
        of a later resume charges them again)."""
        self.meter.charge(Cost(wall_s, 0, 0), label)
        self._overheads.append({"label": label, "wall_s": wall_s})
        save = getattr(self.store, "save_overheads", None)  # an in-memory store in tests keeps none
        if save is not None:
            save(self.session, self._overheads)

    def charge_earlier(self) -> None:
        """Charge the trials earlier sessions finished that this one has not reused: a resume with a larger budget
        can decide otherwise than the session that trained one (its trial is then `superseded`), but it trained,
        and what was spent stays spent. Each is charged once: a later reuse of it is free. The earlier sessions'
        overheads (their startup, the time between and around their trials) are charged here too, once."""
        carried, self.earlier_overheads = self.earlier_overheads, []
        for e in carried:
            self.meter.charge(Cost(float(e["wall_s"]), 0, 0), f"session {int(e['session']) + 1}: {e['label']}")
        if self.earlier:
            mine = {r.number for r in self.records} | self._charged
            for rec in self.store.records():
                if rec.number in self.earlier and rec.number not in mine:
                    self._charged.add(rec.number)
                    self.meter.charge(Cost(rec.result.wall_s, rec.result.examples, 1),
                                      f"{rec.label} (trained by an earlier session, not reused by this one)")
        recorded, self.recorded_spent_s = self.recorded_spent_s, None
        # the earlier sessions' share of what is charged so far: this session's own overheads (its start-up, the time
        # between its trials) were never in their summary; compared with the whole meter, they took the place of the
        # earlier sessions' own start-up and time around their trials, and the spend of the study was understated
        earlier = self.meter.spent.wall_s - sum(float(e["wall_s"]) for e in self._overheads)
        if recorded is not None and recorded > earlier:
            self._charge_overhead("earlier sessions' time around their trials (their final/study.json's spent; "
                                  "kept per session only since)", recorded - earlier)

    def _account(self, rec: TrialRecord, label: str, charge: bool = True) -> None:
        r = rec.result
        if charge:
            self.meter.charge(Cost(r.wall_s, r.examples, 1), label)
        self.costs.observe(rec.point.get("adapter.method", "lora"), r.wall_s, r.examples)
        # scoring a row costs about a third of training on it (forward only): keep that time back
        self.meter.reserve_s = self.finish_base_s + self.costs.seconds_per_example("lora") * self.finish_rows / 3

    def _reported(self, point: dict) -> tuple[int, float] | None:
        """(step, objective value) of an eval point the Optuna trial is told, or None (step 0, no value)."""
        v = score_at(point, self.objective.key)  # metric_for_best_model, larger is better (minus a loss)
        if v is None or point.get("step", 0) <= 0:
            return None
        return int(point["step"]), v

    def _on_eval(self, handle, point: dict) -> None:
        self.current["last"] = point
        got = self._reported(point)
        if got is not None and hasattr(handle, "report"):
            try:
                handle.report(got[1], got[0])
            except Exception:
                pass  # intermediate values are a convenience for dashboards (and a study pruner's input)
        self.ui.trial_eval(point, self)

    def _pruner_for(self, handle) -> Callable[[dict], str | None] | None:
        """The Watch's `pruner` for a trial: `trial_pruner` asked after each point `_on_eval` reported."""
        ask = self.trial_pruner
        if ask is None or not hasattr(handle, "should_prune"):
            return None

        def pruner(point: dict) -> str | None:
            got = self._reported(point)
            return ask(handle, got[0], got[1], self.show(got[1])) if got is not None else None

        return pruner

    def _time_limit(self, trial_wall_s: float, examples_seen: int) -> float:
        """Seconds the running trial may take in all: what is left of a wall budget, after keeping back
        the time to score test at the slower of the measured and the running trial's pace."""
        if examples_seen > 0 and trial_wall_s > 0:
            live = trial_wall_s / examples_seen
            spe = max(live, self.costs.seconds_per_example("lora"))
            self.meter.reserve_s = max(self.meter.reserve_s, self.finish_base_s + spe * self.finish_rows / 3)
        return max(0.0, self.meter.left)

    def _budget_stop(self, trial_wall_s: float, examples_seen: int) -> str | None:
        b = self.meter.budget
        if b.kind == "wall_s" and trial_wall_s > self.meter.left:
            return (f"budget: the wall-time budget ran out mid-trial ({format_amount('wall_s', trial_wall_s)} into "
                    f"the trial, {self.meter.describe_left()} before it)")
        if b.kind == "examples" and examples_seen > self.meter.left:
            return f"budget: the training-examples budget ran out mid-trial ({examples_seen:,} examples in)"
        return None

    def references(self, spec: TrialSpec) -> list[tuple[str, tuple]]:
        """Finished trials a running one is compared with: same method and trial length. A config's seed replicates
        (its point but for train.seed, run after it) measure the noise, not the config: the bar is the config's own
        trial, not its luckiest seed (the seeds stage's spread is the band the lag is held against: Watch). A point
        trained again whole after it was pruned (common.whole_if_ahead) is read by its whole run, not the partial
        one."""
        from loratune.search.protocol.settings import SEED as SEED_KEY  # the protocol package imports this module

        method, steps = spec.point.get("adapter.method", "lora"), spec.point.get("train.max_steps")
        finished = [r for r in self.records
                    if r.point.get("adapter.method", "lora") == method and r.point.get("train.max_steps") == steps
                    and r.result.ok and r.result.curve and r.result.status in ("completed", "pruned")]
        whole = [r.point for r in finished if r.result.status == "completed"]
        out, kept = [], []
        for r in finished:
            if r.result.status == "pruned" and r.point in whole:
                continue  # its whole rerun is the reference
            config = {k: v for k, v in r.point.items() if k != SEED_KEY}
            if any(k.get(SEED_KEY) != r.point.get(SEED_KEY) and {x: v for x, v in k.items() if x != SEED_KEY} == config
                   for k in kept):
                continue  # a seed replicate of a kept trial
            kept.append(r.point)
            out.append((r.label, r.result.curve))
        return out

    # ------------------------------------------------------------------ reading results
    def best(self, records: Sequence[TrialRecord] | None = None) -> TrialRecord | None:
        rs = [r for r in (self.records if records is None else records) if r.value is not None]
        return max(rs, key=lambda r: r.rank) if rs else None  # ties: the lower val loss where training takes it

    def noise(self) -> tuple[float, str]:
        """The difference below which two trials are not told apart: protocol 6's band (objectives.NOISE_BAND,
        with the objective's floor) over the seed sigma once seeds were run, before that over the binomial SE of
        the incumbent's val metric (the sigma diagnose and assess read without seeds)."""
        sigma, k = self.state.seed_sigma, NOISE_BAND.sigmas
        if sigma is not None:
            n = len(self.state.seed_values)
            v = NOISE_BAND.width(sigma, self.noise_floor)
            return v, f"max({self.noise_floor:g}, {k:g} x seed sigma {sigma:.4f} over {n} seeds)"
        inc = self.state.incumbent or self.best()
        se = inc.result.feature("val_metric_se") if inc else None
        if se:
            v = NOISE_BAND.width(se, self.noise_floor)
            return v, f"no seed runs yet: max({self.noise_floor:g}, {k:g} x binomial SE {se:.4f} of the val metric)"
        return self.noise_floor, f"floor {self.noise_floor:g} (no seed runs, no val SE)"

    # ------------------------------------------------------------------ decisions
    def decide(self, phase: str, kind: str, verdict: str, move: str, evidence: Sequence[str] | str = (),
               trials: Sequence[TrialRecord | int] = (), data: dict | None = None, *, code: str = "") -> dict:
        """Record a decision. `code` is its stable id (kebab-case, e.g. `rank-plateau`): what tests and
        tools read; `verdict` and `move` are the English a person reads and may be reworded."""
        entries = getattr(self.store.decisions, "entries", [])
        while self._seq < len(entries) and entries[self._seq].get("after_replay"):
            self._seq += 1  # an earlier resume's own decision: this replay does not take it again
        if self._pending:
            old = entries[self._seq] if self._seq < len(entries) else None
            if old is None or (old.get("kind"), replay_key(old, "code")) != (kind, code or kind):
                self.flush_pending()  # the replay caught up: this session's own decisions start here
        return self._record(phase, kind, verdict, move, evidence, trials, data, code)

    def decide_after_replay(self, phase: str, kind: str, verdict: str, move: str, evidence: Sequence[str] | str = (),
                            trials: Sequence[TrialRecord | int] = (), data: dict | None = None, *,
                            code: str = "") -> None:
        """A decision of this session that the earlier sessions' trail does not hold (a resume): recorded where the
        replay of that trail ends (or where this session first decides otherwise), so that it leaves the trail
        intact; later replays step over it."""
        self._pending.append((phase, kind, verdict, move, evidence, trials, data, code))

    def flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for phase, kind, verdict, move, evidence, trials, data, code in pending:
            self._record(phase, kind, verdict, move, evidence, trials, data, code, after_replay=True)

    def _record(self, phase: str, kind: str, verdict: str, move: str, evidence: Sequence[str] | str,
                trials: Sequence[TrialRecord | int], data: dict | None, code: str, after_replay: bool = False) -> dict:
        d = {"seq": self._seq, "phase": phase, "kind": kind, "code": code or kind,
             "trials": [t if isinstance(t, int) else t.number for t in trials],
             "verdict": verdict, "move": move,
             "evidence": [evidence] if isinstance(evidence, str) else list(evidence),
             "data": data or {}, "budget": {"spent": self.meter.spent.to_dict(),
                                            "left": self.meter.describe_left()}}
        if after_replay:
            d["after_replay"] = True
        self._seq += 1
        self.store.decisions.append(d)
        self.ui.decision(d)
        return d

    @property
    def decisions(self) -> list[dict]:
        return list(self.store.decisions.entries)


def seed_sigma(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) >= 2 else None


def with_(point: dict, **changes: Any) -> dict:
    """A copy of a point with dotted keys changed (`with_(p, **{"adapter.r": 16})`)."""
    out = dict(point)
    out.update(changes)
    return out


def _default_tables() -> dict:
    from loratune.thresholds import threshold_tables

    return threshold_tables()
