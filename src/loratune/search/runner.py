"""Running one trial for real: an ordinary training run into its own run directory, then its diagnosis.

The search code never trains by itself; it calls a runner with `run(spec, run_dir, watch)` and gets
a `TrialResult` back. `TrainingRunner` trains with `loratune.train.train` (what `api.train` calls)
into a `RunStore`; the `Watch` stops a clearly losing trial (or one past the wall-time budget) through
`train`'s callback (`WatchCallback`, after every step and evaluation point): the run then ends like an interrupted
one (status `interrupted`, reason `pruned by tune: ...`, best adapter saved), so every trial, pruned or
not, is a valid run record. A trial judged at its last evaluation trained all its steps: its run stays `completed`
(the decision in its reason), the study records it as pruned.
Tests use a scripted runner with the same two methods instead (no training).
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from loratune import library_warnings
from loratune.diagnose import PARTIAL_STATUSES
from loratune.errors import ConfigError, UserError
from loratune.objectives import CLASSIFIER_METRICS, objective
from loratune.search.prune import PruneSettings, behind_best, by_diagnosis
from loratune.search.trial import FIRST_TRAINED_STEP, KEPT_FEATURES, TrialResult, TrialSpec, trained_points
from loratune.store import RunStore


@dataclass
class Watch:
    """What a running trial is checked against after every evaluation point."""

    references: Sequence[tuple[str, Sequence[tuple[int, float]]]] = ()  # finished trials' (name, curve)
    settings: PruneSettings = field(default_factory=PruneSettings)
    budget_stop: Callable[[float, int], str | None] | None = None  # (trial wall s, examples) -> reason
    on_eval: Callable[[dict], None] | None = None  # every eval point (progress, Optuna report)
    prune: bool = True
    # wall-time budgets: (trial wall s, examples) -> seconds this trial may run in all (None: no limit);
    # asked at the start and at every eval point, enforced after every optimizer step (WatchCallback.on_step)
    time_limit: Callable[[float, int], float | None] | None = None
    limit_s: float | None = None
    # a pruner besides the Watch's own rules (tpe-hyperband: Optuna's Hyperband, asked through the Optuna
    # trial each eval point was reported to): eval point -> the reason to stop, or None
    pruner: Callable[[dict], str | None] | None = None
    # the study's seed sigma of its objective and the number of seeds behind it (ctx.state, once seeds ran): the
    # pruner holds a running trial's lag against the larger of it and the diagnosis's binomial SE (Watch.sigma)
    seed_sigma: float | None = None
    seed_count: int = 0

    def check(self, points: list[dict], run: dict, elapsed_s: float,
              thresholds: Mapping[str, float] | None = None) -> str | None:
        """The reason to stop the trial now, or None. `thresholds`: the diagnosis table the runner decides with
        (tune --thresholds; None: the defaults)."""
        from loratune.diagnose import diagnose

        if not points:
            return None
        if self.on_eval is not None:
            self.on_eval(points[-1])
        step, planned = int(points[-1].get("step", 0)), int(run.get("steps_planned") or 0)
        if self.time_limit is not None:
            self.limit_s = self.time_limit(elapsed_s, int(run.get("examples_seen") or 0))
        if step <= 0:
            return None
        if self.budget_stop is not None:
            why = self.budget_stop(elapsed_s, int(run.get("examples_seen") or 0))
            if why:
                return why
        if not self.prune:
            return None
        if self.pruner is not None:  # asked at every point, so it sees each rung the trial reaches
            why = self.pruner(points[-1])
            if why:
                return why
        key = objective_of(run)
        obj = objective(key)
        curve = curve_of(points, key)
        if step >= self.settings.diagnosis_min_fraction * planned:
            d = diagnose(points, meta=run, thresholds=thresholds)
            # the diagnosis's binomial SE is a classifier metric's; a loss or a prompt-set score has its margin
            se = d.features.values.get("val_metric_se") if key in CLASSIFIER_KEYS else None
        else:
            se = None
        sigma, source = self.sigma(se)
        if step >= self.settings.diagnosis_min_fraction * planned:
            p = d.primary
            if p is not None and p.rule_id in self.settings.stop_verdicts and not p.tentative:
                ev = next((e.text for e in p.evidence if e.passed), "")
                why = by_diagnosis(p.rule_id, ev, curve, planned, self.references, self.settings, obj, sigma, source)
                if why:
                    return why
        return behind_best(curve, planned, self.references, sigma, self.settings, obj, source)

    def sigma(self, se: float | None) -> tuple[float | None, str]:
        """The sigma a running trial's lag is held against, and what it is: the study's seed sigma when seeds ran
        and it is the larger, else the val metric's binomial SE at this point (None: neither, the objective's floor
        alone). The pruner's own rule, not ctx.noise's (which takes the seed sigma whenever seeds ran, the SE of the
        incumbent before): a prune is final and judged on a partial curve, so it takes the wider of the two
        measures of noise, where a decision between finished trials reads the seed spread as protocol 5b says."""
        if self.seed_sigma is not None and (se is None or self.seed_sigma >= se):
            return self.seed_sigma, f"seed sigma over {self.seed_count} seeds"
        return se, "binomial SE" if se is not None else ""


CLASSIFIER_KEYS = frozenset(f"val/{m}" for m in CLASSIFIER_METRICS)


def objective_of(run: dict) -> str:
    """The run's objective key (train.metric_for_best_model, resolved: val/subset_accuracy for multi-label
    data by default, val/loss for open generation); records made before it existed used val macro-F1."""
    return str(run.get("objective") or "val/macro_f1")


def score_at(point: dict, key: str) -> float | None:
    """The objective of one evaluation point on the search's scale (larger is better: minus a loss). A
    classifier's record without the key falls back to its val accuracy (records of old versions)."""
    o = objective(key)
    v = point.get(key)
    if v is None and o.higher_is_better:
        v = point.get("val/accuracy")
    return o.score(v)


def curve_of(points: Sequence[dict], key: str = "val/macro_f1") -> tuple[tuple[int, float], ...]:
    """(step, score) at every evaluation point, on the search's scale (larger is better)."""
    out = []
    for p in points:
        v = score_at(p, key)
        if v is not None:
            out.append((int(p.get("step", 0)), v))
    return tuple(out)


class WatchCallback:
    """The `Watch` as `train`'s callback (train.TrainCallback): after every evaluation point the trial is
    checked against the finished ones (pruning, budget stop), after every optimizer step against the
    wall-time limit (an eval interval can be minutes on a busy machine). A reason to stop ends the run
    like a pruned one (status `interrupted`, best adapter saved); `stopped` keeps it."""

    def __init__(self, watch: Watch, t0: float, thresholds: Mapping[str, float] | None = None):
        self.watch, self.t0, self.thresholds = watch, t0, thresholds
        self.points: list[dict] = []  # the evaluation points so far (what history.jsonl holds)
        self.stopped: str | None = None

    def _stop(self, why: str | None) -> str | None:
        if why and not self.stopped:
            self.stopped = why
        return self.stopped

    def on_step(self, step: int, examples_seen: int) -> str | None:
        limit = self.watch.limit_s
        if limit is not None and time.perf_counter() - self.t0 > limit:
            return self._stop(f"budget: the wall-time budget ran out mid-trial (after {limit:.0f}s of this trial)")
        return self.stopped

    def on_eval(self, point: dict, run: dict) -> str | None:
        self.points.append(point)
        return self._stop(self.watch.check(self.points, run, time.perf_counter() - self.t0, self.thresholds))


@contextlib.contextmanager
def _library_noise_hidden():
    """Library progress bars ("Writing model shards") and deprecation notices go to a buffer, not
    between the decisions on the terminal; errors still end the run with status `failed`. huggingface_hub
    logs through a handler bound to the terminal's stderr when it was set up (the redirect misses it): its
    warnings ("Repo card metadata block was not found", each time peft saves a causal-lm adapter's model card)
    are held back to errors."""
    import logging

    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(max(logging.ERROR, level))
    try:
        with library_warnings.silenced(), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hub.setLevel(level)


class FinishedThenInterrupted(KeyboardInterrupt):
    """A trial's run finished (its record final) and a Ctrl-C / SIGTERM held off while it wrote that record then
    ended the process: the study records the trial as finished (`result`) and raises `signal` after it."""

    def __init__(self, result: TrialResult, signal: KeyboardInterrupt):
        super().__init__()
        self.result, self.signal = result, signal


def reset_peak_memory() -> float | None:
    """Reset the process's peak memory so each trial's `peak_memory_mb` in run.json is its own peak,
    not the largest of the whole study (Linux: /proc/self/clear_refs value 5 resets the peak RSS that
    getrusage reports, after malloc_trim returned the heap earlier trials freed; CUDA: torch's peak
    statistics). Returns the memory in use now, in MB (the baseline the trial's peak is compared
    with: `memory_delta_mb`), or None when the peak cannot be reset."""
    import gc
    import resource
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    from loratune import signals

    with signals.shielded():  # a Ctrl-C raised inside a weakref callback of the collection is dropped by Python
        gc.collect()
    try:  # hand memory freed by earlier trials back to the OS, or it hides in the baseline (glibc)
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
    except OSError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # = current RSS right after the reset


def result_from(run: dict, diag, wall_s: float, pruned: str | None = None, curve: Sequence = ()) -> TrialResult:
    """The part of a run record and its diagnosis that decisions read. Its value is its best trained point's
    (trial.FIRST_TRAINED_STEP): a run whose record's best is the untrained model (step 0: cut after a step, or no
    trained point scored higher) takes the best trained point of `curve` (its objective curve), and a run without
    one has no value: the untrained model's score is the bar, never a trial's."""
    best = run.get("best") or {}
    keep = ("step", "examples_seen", "val/macro_f1", "val/accuracy", "val/loss", "val/n", "train_eval/macro_f1",
            "train_eval/loss", "train/loss", "val/subset_accuracy", "val/micro_f1", "val/samples_f1",
            "val_compound/subset_accuracy", "val_single/subset_accuracy")
    status = run.get("status", "failed")
    if pruned:
        status = "pruned"
    elif status == "interrupted":
        status = "failed"
    # the objective (metric_for_best_model), larger is better; a record without a step: an old trained one
    value = (score_at(best, objective_of(run)) if int(best.get("step", FIRST_TRAINED_STEP)) >= FIRST_TRAINED_STEP
             else max((v for _, v in trained_points(curve)), default=None))
    findings: tuple[dict, ...] = ()
    features: dict[str, Any] = {}
    verdict = "inconclusive"
    curve: tuple = ()
    if diag is not None:
        verdict = diag.verdict
        findings = tuple(_finding(f) for f in diag.active)
        features = {k: diag.features.values.get(k) for k in KEPT_FEATURES}
        features["val_metric"] = diag.features.details.get("val_metric")  # what "the val metric" of its evidence is
    return TrialResult(
        status=status, value=value,
        examples=int(run.get("examples_seen") or 0), wall_s=float(wall_s),
        steps_planned=int(run.get("steps_planned") or 0), steps_done=int(run.get("steps_done") or 0),
        mean_step_s=run.get("mean_step_s"), peak_memory_mb=run.get("peak_memory_mb"),
        params=dict(run.get("params") or {}), best={k: best[k] for k in keep if k in best},
        curve=curve, verdict=verdict, findings=findings, features=features,
        reason=(f"pruned: {pruned}" if pruned else str(run.get("reason") or "")), objective=objective_of(run),
        method=_method_of(run), task=str(run.get("task") or ""))


def _method_of(run: dict) -> str:
    """decide.method_name of a run record's config (a base config's DoRA or LoRA+ is in no trial's point)."""
    from loratune.decide import method_name

    cfg = run.get("config") if isinstance(run.get("config"), dict) else {}
    ad, tr = cfg.get("adapter") or {}, cfg.get("train") or {}
    return method_name(str(ad.get("method") or run.get("method") or "lora"), bool(ad.get("use_dora")),
                       str(tr.get("optimizer") or "adamw"))


def _finding(f) -> dict:
    return {"rule_id": f.rule_id, "scope": f.scope, "verdict": f.verdict, "moves": list(f.moves),
            "confidence": round(f.confidence, 3), "tentative": f.tentative, "caveat": f.caveat,
            "evidence": [e.text for e in f.evidence if e.decisive]}  # the route that made it fire


class TrainingRunner:
    """Trains each trial for real. `base` is the full run config every trial starts from; `thresholds` the diagnosis
    table its diagnoses (pruning, the trial's verdict) and comparisons read (tune --thresholds; None: the defaults)."""

    def __init__(self, base, dataset, thresholds: Mapping[str, float] | None = None):
        self.base = base
        self.dataset = dataset
        self.thresholds = dict(thresholds) if thresholds is not None else None

    @property
    def objective(self) -> str:
        """The val key trials are compared on: train.metric_for_best_model resolved for this data
        (auto: val/subset_accuracy for multi-label, val/macro_f1 for single-label; causal-lm: val/loss, or
        val/macro_f1 when it generates labels)."""
        try:
            if self.base.model.task == "causal-lm":
                from loratune.sft import objective_key as lm_objective

                return lm_objective(self.base, self.dataset.label_space is not None, bool(self.dataset.prompt_set))
            from loratune.train import objective_key

            return objective_key(self.base, self.dataset.label_space.multi_label)
        except UserError:  # a metric the task lacks: each trial's run says so
            return "val/macro_f1"

    def config(self, spec: TrialSpec, run_dir: Path):
        from loratune.config import replace

        return replace(self.base, **{**spec.point, "train.output_dir": str(run_dir)})

    def run(self, spec: TrialSpec, run_dir: Path, watch: Watch | None = None) -> TrialResult:
        from loratune.tasks import recipe

        try:
            cfg = self.config(spec, run_dir)
        except ConfigError as exc:  # a drawn point the config refuses (a knob past its limits): that trial fails
            # with the reason and the search goes on; a problem in the start config itself stops tune (exit 2)
            if not all(p.split(":", 1)[0] in spec.point for p in exc.problems):
                raise
            reason = "the trial's config was refused: " + "; ".join(exc.problems)
            RunStore(run_dir).write_run({"status": "failed", "reason": reason})
            return result_from({"status": "failed", "reason": reason}, None, 0.0)
        train = recipe(cfg, "train")  # the task's training loop (train.train, sft.train_sft)
        baseline_mb = reset_peak_memory()
        watch = watch or Watch(prune=False)
        store = RunStore(run_dir)
        # the trial's record says the thresholds it is judged by: read back with them
        from loratune.rules import run_thresholds_entry

        store.record_extra = run_thresholds_entry(self.thresholds)
        t0 = time.perf_counter()
        if watch.time_limit is not None:
            watch.limit_s = watch.time_limit(0.0, 0)
        callback = WatchCallback(watch, t0, self.thresholds)
        error = None
        user_error: UserError | None = None
        interrupted: KeyboardInterrupt | None = None
        try:
            with _library_noise_hidden():
                train(cfg, self.dataset, store, progress=False, callback=callback)
        except KeyboardInterrupt as exc:
            # a signal held off while the run wrote its final record ends the process after it: the trial finished,
            # and is kept as finished (its result below), never failed and trained again on --resume
            if not (Path(run_dir) / "run.json").exists() or store.read_run().get("status") in PARTIAL_STATUSES:
                raise
            interrupted = exc
        except UserError as exc:  # the user's input (a model that cannot load): no search move fixes it, tune stops
            error, user_error = f"{type(exc).__name__}: {exc}", exc
        except Exception as exc:  # the run record says `failed` with the error; the search goes on
            error = f"{type(exc).__name__}: {exc}"
        from loratune import signals

        # the trial's outcome is settled (its record final, or its error known): a Ctrl-C / SIGTERM landing while its
        # result is built (record fixes, diagnosis, history read) is held off until the result is whole, then ends
        # the process with the trial kept as finished (FinishedThenInterrupted), never failed and trained again on
        # --resume
        with signals.shielded():
            res = self._result(store, run_dir, callback.stopped, error, user_error, baseline_mb, t0)
            later = signals.take_held()  # taken whatever came first: a second Ctrl-C held here (the first came out
            held = interrupted or later  # of train()) was raised as a plain interrupt as the shield ended: a review
        if held is not None:
            raise FinishedThenInterrupted(res, held)
        return res

    def _result(self, store: RunStore, run_dir: Path, pruned, error: str | None, user_error: UserError | None,
                baseline_mb: float | None, t0: float) -> TrialResult:
        """The trial's result once its training ended: its record's last fixes (pruned, failed), its diagnosis and
        curve. A user error (the caller stops the search) is raised after its record says why."""
        from loratune.diagnose import diagnose
        from loratune import signals

        run = (store.read_run() if (Path(run_dir) / "run.json").exists()
               else {"status": "failed", "reason": error})
        if pruned and run.get("status") == "completed":  # judged at its last evaluation, after all its planned
            # steps: the run ended as planned (not partial); the study still records the decision (result_from)
            run["reason"] = f"{run.get('reason')}; tune's decision at its last evaluation: pruned by tune: {pruned}"
            RunStore(run_dir).write_run(run)
        elif pruned:
            run["status"], run["reason"] = "interrupted", f"pruned by tune: {pruned}"
            RunStore(run_dir).write_run(run)
        elif error and run.get("status") == "running":  # the loop raised before its record was final
            run["status"], run["reason"], run["partial"] = "failed", error, True
            RunStore(run_dir).write_run(run)
        if user_error is not None and not pruned:  # its run record says why (above); the caller stops the search
            signals.take_held()  # with its error and fix (exit 2), which says more than a signal held meanwhile
            raise user_error
        try:
            diag = diagnose(run_dir, thresholds=self.thresholds)
        except Exception:  # a run without a single eval point has nothing to diagnose
            diag = None
        wall = time.perf_counter() - t0
        curve = curve_of(store.read_history(), objective_of(run))
        res = result_from(run, diag, wall, pruned, curve)
        peak = res.peak_memory_mb
        delta = peak - baseline_mb if peak is not None and baseline_mb is not None else None
        return _with(res, curve=curve, memory_delta_mb=delta)

    def compare(self, run_dirs: Sequence[str]) -> dict | None:
        from loratune.diagnose import compare

        try:
            c = compare(list(run_dirs), thresholds=self.thresholds)
        except Exception:
            return None
        return {"findings": [_finding(f) for f in c.active],
                "groups": [g.to_dict() for g in c.groups],
                "noise": c.features.values.get("noise"),
                "noise_source": c.features.details.get("noise_source"),
                "notes": list(c.notes)}

    @staticmethod
    def evaluate(run_dir: str, split: str = "test") -> dict:
        """A finished trial's saved model scored on `split` (needs nothing of the runner: a replay's runner that
        trains nothing scores its pick with it too)."""
        from loratune.inference import evaluate_run

        with _library_noise_hidden():
            return evaluate_run(run_dir, split)


def _with(res: TrialResult, **changes) -> TrialResult:
    from dataclasses import replace

    return replace(res, **changes)
