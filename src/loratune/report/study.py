"""The study report model: plain data built from a `loratune tune` study directory.

    <study_dir>/final/study.json   the summary `tune` writes at the end (trail, trials, best-vs-compute,
                                   rank-vs-metric, pair, seeds, lora_vs_full, recommendation)
    <study_dir>/final/config.yaml  the recommended config
    <study_dir>/decisions.jsonl    the decision trail, appended as decisions are taken
    <study_dir>/study.db           Optuna storage: one trial per run, with the whole trial record
    <study_dir>/trials/<n>-<name>/ ordinary run directories

Everything is optional. A finished study has final/study.json and the report reads it first; a study
still running (or killed) has only the trail, the Optuna records and the trial directories, and the
report rebuilds what it can from them. A section that cannot be built carries `missing` (why) instead
of failing. No torch; Optuna is imported only to read study.db when study.json is absent.

Trials are compared on the study's objective (study.json `objective`; val macro-F1 for studies written
before it was recorded). The search keeps it as a score, larger better (minus a loss); this model holds
every value as a person reads it (a val loss as itself), converted once here, and compares through
`StudyReport.obj.score`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from loratune.adapt import record_per_rank
from loratune.errors import PARSE_ERRORS, UserError
from loratune.objectives import Objective, objective, pick_test_score
from loratune.report.model import SETTLED, as_float, read_history, read_json, to_plain
from loratune.search.study import FINAL, TRIALS, in_study as _in_study, optuna_quiet
from loratune.search.trial import like_rank_sweep, rank_sweep_working, recorded_task
from loratune.store import STUDY_DB, STUDY_META_ATTR

# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialView:
    number: int
    name: str
    phase: str
    status: str
    value: float | None  # the run's best objective value, as a person reads it (val macro-F1, val loss ...)
    examples: int | None
    wall_s: float | None
    mean_step_s: float | None
    peak_memory_mb: float | None
    verdict: str
    method: str  # lora | full
    r: int | None
    learning_rate: float | None
    point: Mapping[str, Any]
    reason: str = ""
    purpose: str = ""
    run_dir: str | None = None
    link: str | None = None  # run directory relative to the study directory (when inside it)
    report_link: str | None = None  # <link>/report.html when that run report was written
    curve: tuple[tuple[float, float], ...] = ()  # (step, objective value)
    loss_curve: tuple[tuple[float, float], ...] = ()  # (step, val loss), from the run directory
    findings: tuple[Mapping[str, Any], ...] = ()  # rule_id, verdict, moves, evidence (texts)
    params: Mapping[str, Any] = field(default_factory=dict)
    task: str = ""  # run.json task (the trial record's): which tie-break the study ranks it by
    kept: Mapping[str, Any] = field(default_factory=dict)  # the record's best point (step, val/loss ...)


@dataclass(frozen=True)
class DecisionView:
    seq: int
    phase: str
    kind: str
    trials: tuple[int, ...]
    verdict: str
    move: str
    evidence: tuple[str, ...]
    budget_left: str | None = None


@dataclass(frozen=True)
class ComputePoint:
    trial: int
    name: str
    phase: str
    value: float | None
    examples_cum: int
    wall_s_cum: float
    best_so_far: float | None


@dataclass(frozen=True)
class RankPoint:
    r: int
    value: float
    trial: int
    phase: str
    rslora: bool = False
    in_sweep: bool = False
    share: float | None = None  # this trial's LoRA parameters / the model's (its own counts; trials of a rank may
    #                             adapt other modules); None: its counts are not known


@dataclass(frozen=True)
class RankView:
    points: tuple[RankPoint, ...]
    plateau_r: int | None
    chosen_r: int | None
    breakeven_r: int | None  # LoRA = a third of the adapted weights (compute breakeven)
    ceiling_r: int | None  # capacity ceiling from phase 0
    threshold: float | None  # the gain that counts (noise)
    threshold_source: str = ""
    rule: str = ""  # the scaling rule of the sweep (rsLoRA, alpha = s*sqrt(r))
    stopped: str | None = None
    share_marks: tuple[tuple[float, str], ...] = ()  # (rank, label): where LoRA reaches a share of the model
    shares: tuple[tuple[int, float | None, float | None], ...] = ()  # (r, share of model, share of adapted weights)
    share_note: str = ""  # how the shares and marks' per-rank count was had when no trial records it ("" if recorded)
    missing: str | None = None
    scope: str = ""  # which trials the view compares (after a rank sweep: those like it) and how many it leaves out


@dataclass(frozen=True)
class PairArm:
    knob: str  # lr | r
    trial: int | None
    before: Any
    after: Any
    value: float | None
    delta: float | None


@dataclass(frozen=True)
class PairView:
    from_trial: int | None
    base: float | None
    arms: tuple[PairArm, ...]
    noise: float | None
    noise_source: str
    seed_sigma: float | None
    binding: str
    how: str
    compare: tuple[str, ...] = ()
    missing: str | None = None


@dataclass(frozen=True)
class LoraFullView:
    choice: str | None
    summary: str
    reasons: tuple[tuple[str, bool | None, str], ...]  # (id, holds, text)
    # label, method, r, objective, objective_value, trainable, mean_step_s, peak_memory_mb ... (a study written
    # before objective_value: val_macro_f1, the search's score)
    table: tuple[Mapping[str, Any], ...]
    full_trial: int | None = None
    noise: float | None = None  # the difference that counts between the two (from the performance-gap reason)
    missing: str | None = None


@dataclass(frozen=True)
class Recommendation:
    trial: int | None
    name: str
    value: float | None
    test: Mapping[str, Any]
    verdict: str
    point: Mapping[str, Any]
    config_yaml: str
    files: Mapping[str, str]
    missing: str | None = None
    test_earlier: tuple[int, ...] = ()  # other picks an earlier session scored on test (study.json test_earlier)


@dataclass(frozen=True)
class StudyReport:
    kind = "study"
    name: str
    path: str
    strategy: str
    finished: bool  # final/study.json exists
    budget: str  # "spent ..., left ..."
    spent: Mapping[str, Any]
    plan: str
    trials: tuple[TrialView, ...]
    trail: tuple[DecisionView, ...]
    best_vs_compute: tuple[ComputePoint, ...]
    rank: RankView
    pair: PairView
    seeds: tuple[float, ...]
    seed_sigma: float | None
    lora_vs_full: LoraFullView
    recommendation: Recommendation
    start_choices: tuple[tuple[str, Any, str], ...]  # (key, value, reason) of phase 0
    assessment: tuple[str, ...]
    notes: tuple[str, ...] = ()
    objective: str = "val/macro_f1"  # the key the trials are compared on (objectives.objective names it)
    thresholds: Mapping[str, Any] = field(default_factory=dict)  # tune --thresholds: name -> value (overrides only)

    @property
    def thresholds_line(self) -> str | None:
        """The threshold overrides the study decided with, on one line; None when it used the defaults."""
        from loratune.rules import overrides_text

        return f"thresholds overridden (--thresholds): {overrides_text(self.thresholds)}" if self.thresholds else None

    @property
    def obj(self) -> Objective:
        return objective(self.objective)

    def trial(self, number: int) -> TrialView | None:
        return next((t for t in self.trials if t.number == number), None)

    @property
    def best(self) -> TrialView | None:
        """The study's best trial by its ranking (search.trial.study_rank over kept_order: the value, the val-loss
        tie-break training keeps by, then the earlier trial), the one the study's best-of (context.best) names."""
        from loratune.search.trial import kept_order, study_rank

        ok = [t for t in self.trials if t.value is not None]
        return max(ok, key=lambda t: study_rank(kept_order(self.objective, t.value, t.kept, t.task), t.number)) \
            if ok else None

    @property
    def flat_note(self) -> str | None:
        """search.trial.flat_objective_note of the recommendation: the objective never moved off one value in any
        trial, and which trial the val loss favours; None otherwise (or with no recommendation)."""
        from loratune.search.trial import flat_objective_note, kept_loss

        rec = self.recommendation
        if rec.trial is None:
            return None
        return flat_objective_note(self.obj, [(f"#{t.number} {t.name}", self.obj.score(t.value), kept_loss(t.kept))
                                              for t in self.trials], f"#{rec.trial} {rec.name}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = self.kind
        return to_plain(d)


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------


def _int(v: Any) -> int | None:
    f = as_float(v)
    return int(round(f)) if f is not None else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except PARSE_ERRORS:
            break
        if isinstance(obj, dict):
            out.append(obj)
    return out


NO_STUDY_DB = "no study.db"  # why _optuna_records read nothing, where nothing is wrong


def _optuna_records(study_dir: Path) -> tuple[list[dict], dict, str | None]:
    """Trial records and the study's loratune meta (strategy, budget, ...) from study.db (read only),
    or ([], {}, why not)."""
    db = study_dir / STUDY_DB
    if not db.is_file():
        return [], {}, NO_STUDY_DB
    try:
        import warnings

        import optuna

        url = f"sqlite:///{db.resolve()}"
        with warnings.catch_warnings(), optuna_quiet():
            warnings.simplefilter("ignore")
            storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
            names = optuna.study.get_all_study_names(storage=storage)
            out, meta = [], {}
            for name in names[:1]:
                study = optuna.load_study(study_name=name, storage=storage)
                meta = dict(study.user_attrs.get(STUDY_META_ATTR) or {})
                for t in study.get_trials(deepcopy=False):
                    attrs = dict(t.user_attrs)
                    rec = attrs.get("record")
                    out.append({"number": t.number, "state": t.state.name, "attrs": attrs, "record": rec})
        return out, meta, None
    except Exception as exc:  # a locked, newer or damaged storage must not stop the report
        first = (str(exc).splitlines() or [""])[0][:200]  # SQLAlchemy appends the SQL and a link on more lines
        return [], {}, f"study.db could not be read ({type(exc).__name__}: {first})"


def _rel(path: str | None, root: Path) -> str | None:
    """The run directory relative to the study's, for a link; None outside it or when it was never written (a trial
    that failed before its first file)."""
    if not path or not Path(path).is_dir():
        return None
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def _run_curves(run_dir: str | None, key: str) -> tuple[tuple, tuple]:
    """(step, value) of the objective `key` and of the val loss, from the run's history."""
    if not run_dir or not Path(run_dir, "history.jsonl").is_file():
        return (), ()
    points, _ = read_history(Path(run_dir) / "history.jsonl")

    def curve(k: str) -> tuple:
        return tuple((float(p["step"]), float(p[k])) for p in points
                     if as_float(p.get("step")) is not None and as_float(p.get(k)) is not None)

    return curve(key), curve("val/loss")


def _row_value(row: Mapping[str, Any], res: Mapping[str, Any], o: Objective) -> float | None:
    """A trial's objective value: study.json's `objective_value`; a study written before it, `val_macro_f1`
    (then the objective); else the trial record's score, turned back into the value."""
    if "objective_value" in row:
        return as_float(row["objective_value"])
    if "val_macro_f1" in row:
        return as_float(row["val_macro_f1"])
    return o.value(as_float(res.get("value")))


def _trial_from(row: Mapping[str, Any], record: Mapping[str, Any] | None, root: Path, o: Objective) -> TrialView:
    rec = record or {}
    spec = rec.get("spec") or {}
    res = rec.get("result") or {}
    point = dict(row.get("point") or spec.get("point") or {})
    run_dir = _in_study(row.get("run_dir") or rec.get("run_dir"), root, TRIALS)
    f1, loss = _run_curves(run_dir, o.key)
    if not f1 and res.get("curve"):  # the record's curve holds scores
        f1 = tuple((float(s), o.value(float(v))) for s, v in res["curve"])
    method = str(point.get("adapter.method", "lora"))
    status = str(row.get("status") or res.get("status") or "?")
    if status == "running" and run_dir:  # a killed tune's trial: its run dir says whether anyone still runs it, or
        from loratune.store import liveness  # while it starts (no run.lock yet), the process the study gave it to

        status = "died" if liveness(run_dir, row.get("worker"))[0] == "dead" else status
    return TrialView(
        number=int(row.get("trial", rec.get("number", -1))),
        name=str(row.get("name") or spec.get("name") or "?"),
        phase=str(row.get("phase") or spec.get("phase") or "?"),
        status=status,
        value=_row_value(row, res, o),
        examples=_int(row.get("examples", res.get("examples"))),
        wall_s=as_float(row.get("wall_s", res.get("wall_s"))),
        mean_step_s=as_float(row.get("mean_step_s", res.get("mean_step_s"))),
        peak_memory_mb=as_float(row.get("peak_memory_mb", res.get("peak_memory_mb"))),
        verdict=str(row.get("verdict") or res.get("verdict") or "–"),  # (a queued or cut trial has none)
        method=method, r=None if method == "full" else _int(point.get("adapter.r")),
        learning_rate=as_float(point.get("train.learning_rate")), point=point,
        reason=str(row.get("reason") or res.get("reason") or ""), purpose=str(spec.get("purpose") or ""),
        run_dir=run_dir, link=_rel(run_dir, root), curve=f1, loss_curve=loss,
        report_link=(f"{_rel(run_dir, root)}/report.html" if _rel(run_dir, root) and
                     (Path(run_dir) / "report.html").is_file() else None),
        findings=tuple(res.get("findings") or ()), params=dict(res.get("params") or {}),
        task=recorded_task(res, run_dir), kept=dict(res.get("best") or {}))


def _unfinished_spent(run_dir: str | None, root: Path) -> dict:
    """What a trial without a record (interrupted, killed, still running) trained, from its run directory: the
    examples and time it spent (search.study.spent_by_run, what a resume charges for it). Without them the report
    under-counted what the study spent and showed the trial as having done nothing. Its val so far is no trial's
    result (a finished study's report lists such a trial without one): it never stands as the study's best, in the
    best-so-far curve or among the ranked points (the tile read a cut trial's 0.834 as "best val" over a finished
    0.5)."""
    from loratune.search.study import spent_by_run

    path = _in_study(run_dir, root, TRIALS)
    run, _ = read_json(Path(path) / "run.json") if path else (None, None)
    if not isinstance(run, dict):
        return {}
    wall, examples = spent_by_run(path)
    key = objective(run.get("objective")).key
    return {"examples": examples, "wall_s": wall, "objective": key, "objective_value": None,
            "mean_step_s": run.get("mean_step_s"), "peak_memory_mb": run.get("peak_memory_mb")}


def _trials_from_dirs(root: Path) -> list[dict]:
    """Rows like study.json's `trials` from the trial directories alone (name from `<n>-<name>`)."""
    rows = []
    for d in sorted((root / "trials").glob("*")) if (root / "trials").is_dir() else []:
        if not d.is_dir():
            continue
        num, _, name = d.name.partition("-")
        if not num.isdigit():
            continue
        run, _ = read_json(d / "run.json")
        run = run if isinstance(run, dict) else {}
        best = run.get("best") if isinstance(run.get("best"), dict) else {}
        cfg = run.get("config") if isinstance(run.get("config"), dict) else {}
        if not cfg and (d / "config.yaml").is_file():
            import yaml

            try:
                cfg = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
            except (yaml.YAMLError, *PARSE_ERRORS):
                cfg = {}
        ad, tr = cfg.get("adapter") or {}, cfg.get("train") or {}
        point = {k: v for k, v in (("adapter.method", ad.get("method")), ("adapter.r", ad.get("r")),
                                   ("train.learning_rate", tr.get("learning_rate"))) if v is not None}
        key = objective(run.get("objective")).key
        rows.append({"trial": int(num), "name": name, "phase": "?", "status": run.get("status", "?"),
                     # (a trial cut short has no result: its val so far never stands as the study's best)
                     "objective": key, "objective_value": best.get(key) if run.get("status") in SETTLED else None,
                     "examples": run.get("examples_seen"),
                     "wall_s": run.get("wall_s"), "mean_step_s": run.get("mean_step_s"),
                     "peak_memory_mb": run.get("peak_memory_mb"), "verdict": "–", "run_dir": str(d),
                     "point": point, "reason": run.get("reason") or "", "_params": run.get("params") or {}})
    return rows


def _compute_curve(trials: Sequence[TrialView], o: Objective) -> tuple[ComputePoint, ...]:
    out, ex, wall, best = [], 0, 0.0, None
    for t in sorted(trials, key=lambda t: t.number):
        ex += t.examples or 0
        wall += t.wall_s or 0.0
        if t.value is not None and (best is None or o.score(t.value) > o.score(best)):
            best = t.value
        out.append(ComputePoint(t.number, t.name, t.phase, t.value, ex, round(wall, 2), best))
    return tuple(out)


def _share_ref(trials: Sequence[TrialView],
               table: Sequence[Mapping[str, Any]]) -> tuple[float, float, float, float | None, str] | None:
    """(LoRA's A and B parameters per unit of rank, the adapter parameters that do not grow with r (trained biases,
    DoRA's magnitudes), model parameters, adapted-weight parameters, a note saying how the per-rank count was had
    ("" when recorded)) from a LoRA trial's counts: one that records per_rank first, whatever the trial order, else
    an older record's adapter / r (adapt.record_per_rank, its note), else the LoRA-vs-full cost table's."""
    counted = [(t, *record_per_rank(t.params, t.r)) for t in trials if t.method == "lora" and t.r
               and as_float(t.params.get("adapter")) and as_float(t.params.get("total"))]
    # a recorded per_rank (note "") before an older record's adapter / r, whatever the trials' order (min keeps the first)
    ref = min((c for c in counted if c[1]), key=lambda c: bool(c[2]), default=None)
    if ref is not None:
        t, per_r, note = ref
        return (per_r, max(0.0, t.params["adapter"] - per_r * t.r), float(t.params["total"]),
                as_float(t.params.get("adapted_weights")), f"trial #{t.number}'s {note}" if note else "")
    for row in table:
        a, r, st = as_float(row.get("adapter")), _int(row.get("r")), as_float(row.get("share_total"))
        if row.get("method") == "lora" and a and r and st:
            sa = as_float(row.get("share_adapted"))
            return (a / r, 0.0, a / st, (a / sa if sa else None),
                    f"no trial records its parameter counts: LoRA parameters per rank taken as the LoRA-vs-full cost "
                    f"table's adapter count / r = {a:g} / {r}, too high if that run trained biases (bias all or "
                    "lora_only) or DoRA magnitudes")
    return None


def _rank_view(data: Mapping[str, Any] | None, trials: Sequence[TrialView],
               table: Sequence[Mapping[str, Any]], o: Objective) -> RankView:
    data = data or {}
    sweep_trials = {_int(p.get("trial")) for p in data.get("sweep") or () if isinstance(p, dict)}
    pts = []
    # study.json's rank points hold scores; the trials' values are already values
    src = [{**p, "value": o.value(as_float(p.get("value")))} for p in data.get("trials") or () if isinstance(p, dict)] \
        or [{"r": t.r, "value": t.value, "trial": t.number, "phase": t.phase}
            for t in trials if t.method == "lora" and t.r and t.value is not None]
    def own_share(t: TrialView | None) -> float | None:
        a, tot = (as_float(t.params.get("adapter")), as_float(t.params.get("total"))) if t else (None, None)
        return a / tot if t is not None and t.method == "lora" and a and tot else None

    by_number = {t.number: t for t in trials}
    # like with like: after a rank sweep, the trials that differ from its working point only in what a sweep varies
    # (an older study.json lists every LoRA trial: a long run's or an all-linear trial's score read as the rank's)
    found = rank_sweep_working(data.get("sweep"), {t.number: t.point for t in trials})
    working = by_number.get(found[0]) if found is not None else None
    scope, left = "", 0
    if working is not None:
        kept = [p for p in src if isinstance(p, dict) and (by_number.get(_int(p.get("trial"))) is None
                                                           or like_rank_sweep(by_number[_int(p["trial"])].point,
                                                                              working.point))]
        left = sum(1 for t in trials if t.method == "lora" and t.value is not None and t.number not in
                   {_int(p.get("trial")) for p in kept})
        src = kept
        scope = (f"trials like the rank sweep's working point #{working.number} (the same targets, layers, trial "
                 f"length and settings; r, alpha, rsLoRA, lr and seed may differ)"
                 + (f"; {left} other LoRA trial(s) (long runs, other targets or settings) are not a rank's score here"
                    if left else ""))
    for p in src:
        if not isinstance(p, dict) or _int(p.get("r")) is None or as_float(p.get("value")) is None:
            continue
        tr = _int(p.get("trial"))
        pts.append(RankPoint(_int(p["r"]), as_float(p["value"]), tr if tr is not None else -1, str(p.get("phase", "?")),
                             bool(p.get("rslora")), tr in sweep_trials, own_share(by_number.get(tr))))
    # parameter share per rank: a rank's own counts (its best trial's: trials may adapt other modules, and the
    # model's total grows with the adapter), else scaled from any LoRA trial's (adapter parameters grow with r)
    own: dict[int, tuple[float, float, float | None]] = {}
    for t in sorted(trials, key=lambda t: (t.value is None, -o.score(t.value) if t.value is not None else 0.0)):
        if t.r and own_share(t) is not None:
            own.setdefault(t.r, (float(t.params["adapter"]), float(t.params["total"]),
                                 as_float(t.params.get("adapted_weights"))))
    shares, marks, share_note = [], [], ""
    ref = _share_ref(trials, table)
    if ref is not None:
        per_r, fixed, total, adapted, share_note = ref
        for r in sorted({p.r for p in pts} | ({data["breakeven_r"]} if _int(data.get("breakeven_r")) else set())):
            if r in own:
                a, tot, aw = own[r]
                shares.append((r, a / tot, a / aw if aw else None))
            else:
                a = per_r * r + fixed  # the adapter grows by LoRA's A and B only
                shares.append((r, a / total, a / adapted if adapted else None))
        for share in (0.01, 0.1):
            marks.append((share * total / per_r, f"LoRA = {share:.0%} of the model"))
    if not pts:
        missing = "no LoRA trial with a val score yet"
    elif not data:
        missing = "the study has not written final/study.json: plateau and breakeven marks are not known yet"
    else:
        missing = None
    return RankView(
        points=tuple(sorted(pts, key=lambda p: (p.r, p.trial))), plateau_r=_int(data.get("plateau_r")),
        chosen_r=_int(data.get("chosen_r")), breakeven_r=_int(data.get("breakeven_r")),
        ceiling_r=_int(data.get("ceiling_r")), threshold=as_float(data.get("threshold")),
        threshold_source=str(data.get("threshold_source") or ""), rule=str(data.get("rule") or ""),
        stopped=data.get("stopped"), share_marks=tuple(marks), shares=tuple(shares), share_note=share_note,
        missing=missing, scope=scope)


def _pair_view(pair: Mapping[str, Any] | None, trail: Sequence[DecisionView], seed_sigma: float | None,
               o: Objective) -> PairView:
    """The pair's values and deltas as a person reads them (the trail holds scores: a loss's delta flips sign,
    a fall of the loss is a gain); the noise is a width, the same on both scales."""
    if not pair:
        d = next((d for d in reversed(trail) if d.kind == "pair"), None)
        why = (f"the pair was not run: {d.verdict} ({d.move})" if d else
               "no minimal-intervention pair in this study (the verdicts were not ambiguous, or the study stopped "
               "before phase 1 needed one)")
        return PairView(None, None, (), None, "", seed_sigma, "", "", missing=why)
    lr, r = pair.get("lr") or [None, None], pair.get("r") or [None, None]
    arms = tuple(PairArm(knob, _int(pair.get(f"{knob}_trial")), span[0], span[-1],
                         o.value(as_float(pair.get(f"{knob}_value"))), o.value(as_float(pair.get(f"{knob}_delta"))))
                 for knob, span in (("lr", lr), ("r", r)))
    compare = tuple(f"{f.get('rule_id')}: {f.get('verdict')}" for f in pair.get("compare") or () if isinstance(f, dict))
    return PairView(_int(pair.get("from")), o.value(as_float(pair.get("base"))), arms, as_float(pair.get("noise")),
                    str(pair.get("noise_source") or ""), as_float(pair.get("seed_sigma")) or seed_sigma,
                    str(pair.get("binding") or "?"), str(pair.get("how") or ""), compare)


# what a LoRA-vs-full cost table row's peak_memory_mb is (decide.CostPoint.memory_kind), as the tables name it
MEMORY_KINDS = {"above-start": "memory above the trial's start", "process-peak": "process peak memory"}


def memory_name(table: Sequence[Mapping[str, Any]]) -> str:
    """The name of the cost table's memory numbers: what they are (MEMORY_KINDS), not always "peak"."""
    kinds = {row.get("memory_kind") for row in table}
    return MEMORY_KINDS[kinds.pop()] if len(kinds) == 1 and None not in kinds else "memory"


def measured_on(row: Mapping[str, Any], key: str) -> str:
    """" (#7)" when a cost table row's number (key: step_trial, memory_trial) was measured on another trial than the
    row's own (tune reads the least over trials of the row's shape), "" when on the row's trial."""
    at = row.get(key)
    return f" (#{at})" if at is not None and at != row.get("trial") else ""


def _lora_full_view(data: Mapping[str, Any] | None, o: Objective) -> LoraFullView:
    if not data:
        return LoraFullView(None, "", (), (), missing="no LoRA-vs-full decision yet (the study stops before it, "
                            "or has not reached it)")
    reasons = tuple((str(r.get("id")), r.get("holds"), str(r.get("text", ""))) for r in data.get("reasons") or ()
                    if isinstance(r, dict))
    # the cost table's objective_value is the value; a study written before it has the search's score (minus a
    # loss) under val_macro_f1, whatever the objective
    # a study written before the rows named their memory's kind: the decision's memory_per_trial says it
    kind = {True: "above-start", False: "process-peak"}.get(data.get("memory_per_trial"))
    table = tuple({**({"memory_kind": kind} if kind else {}), **t,
                   "objective_value": as_float(t["objective_value"]) if "objective_value" in t
                   else o.value(as_float(t.get("val_macro_f1")))}
                  for t in data.get("table") or () if isinstance(t, dict))
    noise = next((as_float((r.get("evidence") or {}).get("noise")) for r in data.get("reasons") or ()
                  if isinstance(r, dict) and r.get("id") == "performance-gap" and isinstance(r.get("evidence"), dict)),
                 None)
    return LoraFullView(data.get("choice"), str(data.get("summary") or ""), reasons, table, _int(data.get("full_trial")),
                        noise, missing=None if table else "no cost table (the full-fine-tuning probe did not run)")


def _recommendation(data: Mapping[str, Any] | None, root: Path, trials: Sequence[TrialView]) -> Recommendation:
    """The pick, its objective value (study.json `objective_value`; `val_macro_f1` before it was recorded)."""
    cfg = root / "final" / "config.yaml"
    yaml_text = cfg.read_text(encoding="utf-8") if cfg.is_file() else ""
    if not data:
        why = ("the study has not finished: no final/study.json" + ("" if yaml_text else " and no final/config.yaml"))
        return Recommendation(None, "", None, {}, "", {}, yaml_text, {}, missing=why)
    if not yaml_text:
        t = next((t for t in trials if t.number == _int(data.get("trial"))), None)
        if t and t.run_dir and Path(t.run_dir, "config.yaml").is_file():
            yaml_text = Path(t.run_dir, "config.yaml").read_text(encoding="utf-8")
    value = data["objective_value"] if "objective_value" in data else data.get("val_macro_f1")
    return Recommendation(_int(data.get("trial")), str(data.get("name") or ""), as_float(value),
                          dict(data.get("test") or {}), str(data.get("verdict") or ""), dict(data.get("point") or {}),
                          yaml_text, {k: str(_in_study(str(v), root, FINAL))
                                      for k, v in (data.get("files") or {}).items()},
                          missing=None if yaml_text else "no final/config.yaml was written",
                          test_earlier=tuple(int(n) for n in data.get("test_earlier") or ()))


def _budget_text(budget: Mapping[str, Any] | None, trail: Sequence[DecisionView]) -> tuple[str, dict]:
    if budget:
        spent = budget.get("spent") or {}
        b = budget.get("budget") or {}
        parts = [f"{spent.get('trials', '?')} trials", f"{spent.get('examples', 0):,} training examples",
                 f"{(spent.get('wall_s') or 0) / 60:.1f} min"]
        return f"spent {', '.join(parts)} of the budget {b.get('text', '?')}", dict(spent)
    left = next((d.budget_left for d in reversed(trail) if d.budget_left), None)
    return (f"budget left at the last decision: {left}" if left else "budget unknown"), {}


def _objective_key(summary: Mapping[str, Any], rows: Sequence[Any], records: Sequence[Mapping[str, Any]]) -> str | None:
    """The key the study compares trials on: study.json's, else the pick's, a trial row's or a trial record's
    (an unfinished study); None (val macro-F1) for a study written before the objective was recorded."""
    rec = summary.get("recommendation") if isinstance(summary.get("recommendation"), dict) else {}
    found = [summary.get("objective"), rec.get("objective")]
    found += [r.get("objective") for r in rows if isinstance(r, dict)]
    found += [((r.get("record") or {}).get("result") or {}).get("objective") for r in records]
    return next((str(k) for k in found if k), None)


CUT = ("interrupted", "died", "killed")  # a trial stopped before its result (the budget counts its compute, no trial)
UNFINISHED = ("queued", "running", *CUT)  # a trial's statuses before it has a result


def trial_count(trials) -> str:
    """'5 trials', or '5 trials (3 finished)' when some are queued, running or were cut."""
    done = sum(1 for t in trials if t.status not in UNFINISHED)
    return f"{len(trials)} trials" + (f" ({done} finished)" if done < len(trials) else "")


def build_study_report(study_dir: str | Path) -> StudyReport:
    root = Path(study_dir)
    if not root.is_dir():
        raise UserError(f"'{root}' is not a directory", "give the --study-dir of `loratune tune`")
    notes: list[str] = []
    summary, why = read_json(root / "final" / "study.json")
    if not isinstance(summary, dict):
        summary = {}
        notes.append(("the study has not finished (no final/study.json): this report is rebuilt from the decision "
                      "trail, the Optuna records and the trial directories") if why and why.startswith("no ")
                     else f"final/study.json unreadable ({why}); rebuilt from the other records")
    # the trail ---------------------------------------------------------------------------------
    raw_trail = summary.get("trail") or _read_jsonl(root / "decisions.jsonl")
    trail = tuple(DecisionView(int(d.get("seq", i)), str(d.get("phase", "?")), str(d.get("kind", "?")),
                               tuple(int(x) for x in d.get("trials") or () if _int(x) is not None),
                               str(d.get("verdict", "")), str(d.get("move", "")),
                               tuple(str(e) for e in (d.get("evidence") or ())),
                               (d.get("budget") or {}).get("left") if isinstance(d.get("budget"), dict) else None)
                  for i, d in enumerate(raw_trail) if isinstance(d, dict))
    if not trail:
        notes.append("no decision trail (decisions.jsonl is missing or empty)")
    # the trials --------------------------------------------------------------------------------
    records, meta, why = _optuna_records(root)
    if why is not None and why != NO_STUDY_DB:  # a damaged or locked study.db: said, not read as an empty study
        notes.append(f"{why}: the trials and settings it holds are not shown (a damaged file: continue in a new "
                     "--study-dir; the trial folders' run records stay readable)")
    by_number = {r["number"]: r["record"] for r in records if r.get("record")}
    rows = summary.get("trials")
    if not rows:
        rows = [{"trial": r["number"], **(r["record"] and {
            "name": r["record"]["spec"]["name"], "phase": r["record"]["spec"]["phase"],
            "status": r["record"]["result"]["status"], "objective": r["record"]["result"].get("objective"),
            "examples": r["record"]["result"].get("examples"), "wall_s": r["record"]["result"].get("wall_s"),
            "point": r["record"]["spec"].get("point"), "run_dir": r["record"].get("run_dir")} or {
            "name": r["attrs"].get("name", "?"), "phase": r["attrs"].get("phase", "?"),
            "status": r["attrs"].get("status", r["state"].lower()), "point": r["attrs"].get("point") or {},
            "run_dir": r["attrs"].get("run_dir"), "worker": r["attrs"].get("worker"),
            **_unfinished_spent(r["attrs"].get("run_dir"), root)})} for r in records
            if r["attrs"].get("status") != "skipped"]  # a sampler's draw too long for the budget: never ran
        if not rows:
            rows = _trials_from_dirs(root)
            if rows:
                notes.append(f"trials read from the trial directories ({why}); phases unknown")
    o = objective(_objective_key(summary, rows, records))
    trials = []
    for row in rows:
        if not isinstance(row, dict) or _int(row.get("trial")) is None:
            continue
        rec = by_number.get(int(row["trial"]))
        if rec is None and row.get("_params"):
            rec = {"result": {"params": row["_params"]}}
        trials.append(_trial_from(row, rec, root, o))
    trials.sort(key=lambda t: t.number)
    if not trials:
        notes.append("no trial has finished yet")
    # the rest ----------------------------------------------------------------------------------
    bvc = summary.get("best_vs_compute")
    if bvc:
        best_vs_compute = tuple(ComputePoint(int(p["trial"]), str(p.get("name", "")), str(p.get("phase", "")),
                                             o.value(as_float(p.get("value"))), int(p.get("examples_cum") or 0),
                                             float(p.get("wall_s_cum") or 0.0), o.value(as_float(p.get("best_so_far"))))
                                for p in bvc if isinstance(p, dict) and _int(p.get("trial")) is not None)
    else:
        best_vs_compute = _compute_curve(trials, o)
    seeds = summary.get("seeds") or {}  # the seeds' scores; sigma is a width, the same on both scales
    seed_values = tuple(o.value(as_float(v)) for v in (seeds.get("values") or ()) if as_float(v) is not None)
    seed_sigma = as_float(seeds.get("sigma"))
    start = summary.get("start") or {}
    choices = tuple((str(c.get("key")), c.get("value"), str(c.get("reason", ""))) for c in start.get("choices") or ()
                    if isinstance(c, dict))
    if not choices:
        first = next((d for d in trail if d.kind == "start-config"), None)
        if first:
            choices = tuple((e.split(" = ", 1)[0], "", e) for e in first.evidence)
    budget, spent = _budget_text(summary.get("budget"), trail)
    plan = summary.get("plan") or {}
    strategy = str(summary.get("strategy") or meta.get("strategy") or "?")
    if not summary and meta.get("budget"):
        b = meta["budget"]  # the study's own: a string ("15m") as tune stores it
        budget = f"budget {b.get('text', '?') if isinstance(b, dict) else b}; " + budget
    recommendation = _recommendation(summary.get("recommendation"), root, trials)
    pair = summary.get("pair") or next(
        (d["data"] for d in reversed(raw_trail) if isinstance(d, dict) and d.get("kind") == "pair"
         and isinstance(d.get("data"), dict) and "lr_delta" in d["data"]), None)
    lvf = summary.get("lora_vs_full")
    if not lvf:
        d = next((d for d in reversed(raw_trail) if isinstance(d, dict) and d.get("kind") == "lora-vs-full"), None)
        if d is not None:
            reasons = []
            for e in d.get("evidence") or ():
                rid, _, rest = str(e).partition(": ")
                state, _, text = rest.partition(" - ")
                reasons.append({"id": rid, "holds": {"holds": True, "does not hold": False}.get(state), "text": text})
            lvf = {"choice": str(d.get("verdict", "")).replace("choose ", "") or None, "summary": d.get("move", ""),
                   "reasons": reasons, "table": (d.get("data") or {}).get("table") or []}
    lvf_view = _lora_full_view(lvf, o)
    rank = _rank_view(summary.get("rank_vs_metric"), trials, lvf_view.table, o)
    if rank.chosen_r is None and recommendation.point.get("adapter.method", "lora") == "lora" \
            and _int(recommendation.point.get("adapter.r")) is not None:
        from dataclasses import replace

        rank = replace(rank, chosen_r=_int(recommendation.point["adapter.r"]))
    return StudyReport(
        name=root.resolve().name, path=str(root), strategy=strategy, finished=bool(summary),
        budget=budget, spent=spent, plan=str(plan.get("reason") or ""), trials=tuple(trials), trail=trail,
        best_vs_compute=best_vs_compute, rank=rank,
        pair=_pair_view(pair, trail, seed_sigma, o), seeds=seed_values, seed_sigma=seed_sigma,
        lora_vs_full=lvf_view,
        recommendation=recommendation,
        start_choices=choices, assessment=tuple(str(x) for x in summary.get("assessment_findings") or ()),
        notes=tuple(notes), objective=o.key,
        thresholds=dict(summary.get("thresholds_overridden") or meta.get("thresholds") or {}))


# ---------------------------------------------------------------------------------------------
# Terminal view (`loratune show STUDY`)
# ---------------------------------------------------------------------------------------------


def _f3(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "–"


def show_study(con, s: StudyReport) -> None:
    from loratune.commands._common import fill_table, heading, safe  # markup and non-printables escaped (an ESC in a name: raw)
    from rich.table import Table

    state = "[green]finished[/]" if s.finished else "[yellow]not finished[/]"
    heading(con, f"[bold]study {safe(s.name)}[/]", f"{state}  [dim]{safe(s.strategy)} · {trial_count(s.trials)}[/]")
    con.print(f"[dim]{safe(s.budget)}[/]")
    if s.thresholds_line:
        con.print(f"[dim]{safe(s.thresholds_line)}[/]")
    for n in s.notes:
        con.print(f"[yellow]note:[/] {safe(n)}")
    o, rec = s.obj, s.recommendation
    if rec.missing is None:
        ts = pick_test_score(o.key, rec.test)  # the one rule of what the pick's test score is
        con.print(f"recommendation: [bold]#{rec.trial} {safe(rec.name)}[/] {safe(o.name)} [bold]{_f3(rec.value)}[/]"
                  + (f" · {safe(ts.metric.name)} [bold]{_f3(ts.value)}[/]" if ts.held_out else "")
                  + (f" · {safe(ts.text(3))}" if not ts.held_out and ts.text() else ""))
        if s.flat_note:
            con.print(f"[yellow]note:[/] {safe(s.flat_note)}")
    elif s.best is not None:
        con.print(f"best so far: [bold]#{s.best.number} {safe(s.best.name)}[/] {safe(o.name)} {_f3(s.best.value)}")

    con.rule("[bold]decision trail[/]", align="left")
    for d in s.trail:
        trials = ",".join(f"#{t}" for t in d.trials)
        con.print(f"[cyan]{safe(d.phase)}[/] {safe(d.verdict)} [bold]→ {safe(d.move)}[/] [dim]{trials}[/]")
        for e in d.evidence[:4]:
            con.print(f"    [dim]{safe(e)}[/]")
        if len(d.evidence) > 4:
            con.print(f"    [dim]... {len(d.evidence) - 4} more[/]")

    con.rule("[bold]trials[/]", align="left")
    t = Table(header_style="bold", box=None, pad_edge=False)
    best_so_far = {p.trial: p for p in s.best_vs_compute}
    rows = []
    for tr in s.trials:
        b = best_so_far.get(tr.number)
        rows.append((str(tr.number), safe(tr.name), safe(tr.phase), safe(tr.status), _f3(tr.value),
                     _f3(b.best_so_far) if b else "–", f"{tr.examples:,}" if tr.examples is not None else "–",
                     f"{tr.wall_s:.0f}s" if tr.wall_s is not None else "–", safe(tr.verdict)))
    # the numbers whole, then status and verdict (tune's table the same: _common.fill_table)
    fill_table(con, t, [("#", "number", "right"), ("name", "text", "left"), ("phase", "text", "left"),
                        ("status", "id", "left"), (o.name, "number", "right"), ("best so far", "number", "right"),
                        ("examples", "number", "right"), ("wall", "number", "right"), ("verdict", "id", "left")],
               rows)
    con.print(t)

    con.rule(f"[bold]rank vs {safe(o.name)}[/]", align="left")
    rk = s.rank
    if rk.points:
        by_r: dict[int, list[float]] = {}
        for p in rk.points:
            by_r.setdefault(p.r, []).append(p.value)
        share = {r: st for r, st, _ in rk.shares}
        for r in sorted(by_r):
            vals = by_r[r]
            marks = [m for m, ok in (("plateau", rk.plateau_r == r), ("chosen", rk.chosen_r == r)) if ok]
            sh = f" ({share[r]:.2%} of the model)" if share.get(r) is not None else ""
            con.print(f"  r={r:<4} best {_f3(max(vals, key=o.score))} over {len(vals)} trial(s){sh} "
                      + (f"[bold]{', '.join(marks)}[/]" if marks else ""))
        extra = [f"breakeven r={rk.breakeven_r}" if rk.breakeven_r else "",
                 f"ceiling r={rk.ceiling_r}" if rk.ceiling_r else "",
                 (f"gain threshold {_f3(rk.threshold)}" + (f" ({rk.threshold_source})" if rk.threshold_source else ""))
                 if rk.threshold is not None else "",
                 f"stopped: {rk.stopped}" if rk.stopped else "",
                 f"shares: {rk.share_note}" if rk.share_note else "", rk.scope]
        con.print("  [dim]" + safe(" · ".join(x for x in extra if x)) + "[/]")
    if rk.missing:
        con.print(f"  [dim]{safe(rk.missing)}[/]")

    con.rule("[bold]minimal-intervention pair[/]", align="left")
    pv = s.pair
    if pv.missing:
        con.print(f"  [dim]{safe(pv.missing)}[/]")
    else:
        con.print(f"  from #{pv.from_trial} ({safe(o.name)} {_f3(pv.base)}): binding knob [bold]{safe(pv.binding)}[/] "
                  f"[dim]({safe(pv.how)})[/]")
        for a in pv.arms:
            con.print(f"    only {a.knob} {a.before} -> {a.after} (#{a.trial}): {_f3(a.value)}, delta "
                      f"{a.delta:+.3f}" if a.delta is not None else f"    only {a.knob}: not measured")
        con.print(f"    [dim]noise {_f3(pv.noise)} ({safe(pv.noise_source)})[/]")

    con.rule("[bold]LoRA vs full fine-tuning[/]", align="left")
    lf = s.lora_vs_full
    if lf.choice:
        con.print(f"  choice: [bold]{safe(str(lf.choice))}[/] [dim]{safe(lf.summary)}[/]")
    if lf.table:
        t = Table(header_style="bold", box=None, pad_edge=False)
        for col in ("", o.name, "trainable", "step (s)", f"{memory_name(lf.table)} (MB)"):
            t.add_column(col, justify="left" if not col else "right")
        for row in lf.table:  # each number beside the trial that measured it when not the row's own
            t.add_row(safe(str(row.get("label"))), _f3(row.get("objective_value")),
                      f"{row['trainable']:,}" if isinstance(row.get("trainable"), int) else "–",
                      _f3(row.get("mean_step_s")) + (measured_on(row, "step_trial") if as_float(row.get("mean_step_s"))
                                                      is not None else ""),
                      f"{row['peak_memory_mb']:.0f}{measured_on(row, 'memory_trial')}"
                      if as_float(row.get("peak_memory_mb")) is not None else "–")
        con.print(t)
    for rid, holds, text in lf.reasons:
        sym = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]?[/]"}[holds]
        con.print(f"  {sym} {safe(rid)}: [dim]{safe(text)}[/]")
    if lf.missing:
        con.print(f"  [dim]{safe(lf.missing)}[/]")

    con.rule("[bold]recommended config[/]", align="left")
    if rec.config_yaml:
        con.print(safe(rec.config_yaml.rstrip()), highlight=False, soft_wrap=True)
        if rec.files.get("adapter"):
            con.print(f"[dim]adapter: {safe(rec.files['adapter'])}[/]")
    else:
        con.print(f"  [dim]{safe(rec.missing or 'no config')}[/]")
