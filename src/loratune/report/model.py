"""Report models: plain data built from the records, before anything is drawn (design principle 3).

`build_run_report(run_dir)` reads one run directory (config.yaml, run.json, history.jsonl,
confusion.json; see docs/run-record.md), diagnoses it and returns a `RunReport`: the curves as
(step, value) series, the findings with their evidence, the per-class table (sorted by recall,
long-tail classes marked), the confusion matrix focused on the most confused classes, the top
confused pairs and the parameter table. `build_study_report(study_dir)` does the same for a tuning
study (see `loratune.report.study`). The renderers (`render.py` for HTML, `commands/show.py` for
the terminal) only format these objects; tests assert on them, not on pixels.

Nothing here imports torch. Example texts for the confused pairs need the trained model; they are
computed separately (`loratune.report.examples.confused_examples`) and passed in.

Every section that cannot be built says why in `notes` / its `missing` field instead of failing:
a run still training, a run without per-class metrics or a confusion matrix still gets a report.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from loratune.errors import PARSE_ERRORS, UserError, parse_problem
from loratune.features import tail_head_split
from loratune.report import charts as ch
from loratune.rules import THRESHOLDS
from loratune.store import STUDY_MARKERS

# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """One series of a chart: (step, value) at every eval point that has the key."""

    key: str  # history key, e.g. "val/loss"
    label: str  # legend text
    role: str  # train | train_eval | val | lr: picks the colour, the same in every chart
    points: tuple[tuple[float, float], ...]
    nonfinite: tuple[float, ...] = ()  # steps where the key was logged NaN / inf (null in a run record)
    # the train loss as logged (RunHistory.train_log), cut to about a point per pixel (charts.thin_line), and its
    # non-finite steps: the chart draws this line instead of `points` (which stay the eval points, as `show` lists them)
    logged: tuple[tuple[float, float], ...] = ()
    logged_nonfinite: tuple[float, ...] = ()

    @property
    def from_log(self) -> bool:
        return bool(self.logged or self.logged_nonfinite)


@dataclass(frozen=True)
class CurvePanel:
    """One chart of curves over optimizer steps."""

    id: str  # loss | metric | lr
    title: str
    y_label: str
    curves: tuple[Curve, ...]
    higher_is_better: bool
    best_step: float | None  # the step of the best val metric (the saved adapter)


@dataclass(frozen=True)
class EvidenceView:
    text: str
    passed: bool | None  # None: the feature was missing
    feature: str
    value: float | None
    op: str
    threshold: float
    threshold_name: str
    decisive: bool = True  # on the route that made the rule fire (diagnose.Evidence.decisive)


@dataclass(frozen=True)
class FindingView:
    rule_id: str
    scope: str  # curve | class | ...
    verdict: str
    knob_class: str
    moves: tuple[str, ...]
    confidence: float
    confidence_label: str  # high | medium | low
    tentative: bool
    evidence: tuple[EvidenceView, ...]
    missing: tuple[str, ...] = ()
    caveat: str | None = None
    notes: tuple[str, ...] = ()
    suppressed_by: str | None = None
    route: tuple[str, ...] = ()  # the readings of the routes that made it fire (diagnose.Finding.route)


@dataclass(frozen=True)
class DiagnosisView:
    verdict: str  # primary rule id or "inconclusive"
    verdict_text: str
    moves: tuple[str, ...]
    findings: tuple[FindingView, ...]  # active, priority order
    suppressed: tuple[FindingView, ...]
    not_evaluated: tuple[tuple[str, str], ...]  # (rule id, what is missing)
    summary: tuple[str, ...]  # one-line readings of the curves (start -> best -> final ...)
    notes: tuple[str, ...] = ()
    error: str | None = None  # the diagnosis could not run
    thresholds_note: str = ""  # the run recorded the thresholds it was judged by: which ones read it here


@dataclass(frozen=True)
class ClassRow:
    label: str
    train_count: int | None
    val_support: int | None
    recall: float | None
    precision: float | None
    f1: float | None
    train_recall: float | None  # on the train_eval subsample, same step
    tail: bool = False  # train count in the bottom quartile of a long-tailed label distribution
    head: bool = False  # top quartile


@dataclass(frozen=True)
class ClassTable:
    step: float | None  # the eval point the numbers come from (the best step when it has them)
    rows: tuple[ClassRow, ...]  # sorted by val recall, worst first (classes without val rows last)
    long_tail: bool  # classes under LONG_TAIL_COUNT rows, head/tail median count ratio >= tail_count_ratio_min
    tail_max_count: float | None  # the largest train count of a tail class (under features.LONG_TAIL_COUNT)
    head_min_count: float | None
    head_tail_ratio: float | None
    tail_recall: float | None  # mean val recall of tail classes
    head_recall: float | None
    missing: str | None = None  # why there is no table

    @property
    def ranked(self) -> tuple[ClassRow, ...]:
        """The classes ranked among the weakest, worst first: the one rule the report's weakest-classes table, its
        summary tile and `show` list by (`weakest`). A class ranks when it has a val recall (val rows): the order is
        val recall's; a class with no val row has none (nor, never predicted, an F1: metrics.scored_classes), sorts
        after every ranked class whatever its F1, and is no weak class (the full table lists it, `unranked`)."""
        return tuple(r for r in self.rows if r.recall is not None)

    @property
    def unranked(self) -> tuple[ClassRow, ...]:
        """The classes `ranked` leaves out (no val row), in the table's order."""
        return tuple(r for r in self.rows if r.recall is None)

    def weakest(self, n: int | None = None) -> tuple[ClassRow, ...]:
        """The n weakest classes (WEAKEST_CLASSES when None): the first n of `ranked`."""
        return self.ranked[:WEAKEST_CLASSES if n is None else n]

    @property
    def frequency_vs_f1(self) -> tuple[tuple[str, int, float, bool], ...]:
        """(label, train count, val F1, tail) for the scatter view; classes lacking either are left out."""
        return tuple((r.label, r.train_count, r.f1, r.tail) for r in self.rows
                     if r.train_count is not None and r.f1 is not None)


@dataclass(frozen=True)
class ConfusionView:
    """The confusion matrix at the best step, focused on the classes with the most off-diagonal mass."""

    step: float | None
    n_classes: int
    total: int  # val rows scored (the record's val/n: rows in no cell of the matrix too)
    errors: int  # rows not on the diagonal: the off-diagonal cells and the rows in no cell
    focus: tuple[str, ...]  # the focus classes, ordered so confused pairs sit next to each other
    focus_matrix: tuple[tuple[int, ...], ...]  # rows = true, columns = predicted, over `focus`
    focus_support: tuple[int, ...]  # each focus class's val rows (`support`), not just its focus columns
    focus_errors: int  # off-diagonal count inside the focus block
    labels: tuple[str, ...]  # every class, in the run's label order
    cells: tuple[tuple[int, int, int], ...]  # every non-zero cell of the full matrix: (true, pred, count)
    missing: str | None = None
    # the val rows of each class of `labels` (the record's val/support/<label>; the matrix row where it has none): a
    # generated output that names no label is an error of its class in no cell of the matrix (metrics.prediction_scores)
    support: tuple[int, ...] = ()
    unknown: int | None = None  # val rows whose generated output named no label (val/unknown_rate); None: no rate
    unknown_outputs: tuple[tuple[str, int], ...] = ()  # the most frequent such outputs (val/unknown_outputs)

    @property
    def cell_errors(self) -> int:
        """The off-diagonal total of the matrix: the errors that name another class."""
        return sum(v for i, j, v in self.cells if i != j)

    @property
    def unseen_rows(self) -> int:
        """Val rows of a label train never had: scored (errors), in no row of the matrix."""
        return max(self.total - sum(self.support), 0) if self.support else 0

    @property
    def unseen_unknown_rows(self) -> int:
        """Val rows of a label train never had whose output named no label too: counted by `unknown` and by
        `unseen_rows` alike, each one row in no cell of the matrix (those rows = unknown + unseen_rows - these)."""
        outside = self.total - sum(v for _, _, v in self.cells)
        return min(max((self.unknown or 0) + self.unseen_rows - outside, 0), self.unknown or 0, self.unseen_rows)

    @property
    def focus_share(self) -> float | None:
        """Share of the matrix's errors (those that name another class) the focus block shows."""
        return self.focus_errors / self.cell_errors if self.cell_errors else None


@dataclass(frozen=True)
class GenerationRow:
    """One prompt of a causal-lm run's prompt set: what the base model wrote (step 0) and the trained one."""

    group: str  # familiar | novel
    prompt: str
    reference: str
    before: str | None  # the output at step 0 (None: not generated then)
    after: str  # the output at PromptSetView.step


@dataclass(frozen=True)
class PromptSetView:
    """A causal-lm run's prompt set (protocol 9): chrF per group over the evaluation points that generated, and a
    few prompts with their outputs before training and at the last generation."""

    panel: CurvePanel | None  # chrF per group over the generating points
    step: float | None  # the step whose outputs `rows` show
    rows: tuple[GenerationRow, ...]
    scores: Mapping[str, float]  # val/prompt_<group>_<metric> at that step
    missing: str | None = None

    def score_items(self) -> list[tuple[str, float]]:
        """(readable name, value) of `scores`: "novel chrf", 0.21."""
        return [(k.removeprefix("val/prompt_").replace("_", " "), v) for k, v in self.scores.items()]


@dataclass(frozen=True)
class PairRow:
    true: str
    pred: str
    count: int
    rate: float | None  # count / val support of the true class
    reverse: int  # how often the pair is confused the other way round
    examples: tuple[str, ...] | None = None  # validation texts of `true` predicted as `pred` (when computed)


@dataclass(frozen=True)
class RobustnessView:
    """run.json `robustness`: validation accuracy of the saved model on clean texts and under each perturbation
    (robustness.PERTURBATIONS), or why it was not scored (`missing`: skipped, failed)."""

    clean_accuracy: float | None
    rows: int | None  # the validation rows scored
    kinds: tuple[tuple[str, float | None, float | None, float | None], ...]  # kind, accuracy, drop, texts_changed
    missing: str | None = None

    @property
    def rows_text(self) -> str:
        """What the clean accuracy was scored on, as `show` and the report say it (a record of an older loratune
        kept no row count: said so, where `show` printed 'on ? validation rows')."""
        if self.rows is None:
            return "on the validation rows (their count is not recorded)"
        return f"on {self.rows:,} validation rows"


@dataclass(frozen=True)
class ProbeView:
    """The probe set (data.probe_file) at the saved model's step: the history point's probe/accuracy and probe/n."""

    step: float | None
    accuracy: float | None
    n: int | None


def build_robustness(run: Mapping[str, Any]) -> RobustnessView | None:
    """The robustness record as a view (None: none recorded: the probe off, a multi-label or causal-lm run)."""
    rob = run.get("robustness")
    if not isinstance(rob, dict):
        return None
    for why in ("skipped", "failed"):
        if rob.get(why):
            return RobustnessView(None, None, (), f"{why}: {rob[why]}")
    kinds = tuple((str(k), as_float(v.get("accuracy")), as_float(v.get("drop")), as_float(v.get("texts_changed")))
                  for k, v in rob.items() if isinstance(v, dict))
    return RobustnessView(as_float(rob.get("clean_accuracy")), _int(rob.get("rows")), kinds)


def build_probe(points: Sequence[dict], step: float | None) -> ProbeView | None:
    """The probe set's scores at `step` (the saved model's; None: the run scored no probe set there)."""
    p = _point_at(points, step)
    if as_float(p.get("probe/accuracy")) is None:
        return None
    return ProbeView(step, as_float(p.get("probe/accuracy")), _int(p.get("probe/n")))


@dataclass(frozen=True)
class ParamRow:
    group: str  # Model | Adapter | Training | Cost
    key: str
    value: Any
    note: str = ""


@dataclass(frozen=True)
class RunReport:
    kind = "run"
    name: str
    path: str
    status: str
    reason: str | None
    task: str
    method: str
    model_name: str
    dataset: str
    n_classes: int | None
    n_val: int | None
    metric: str  # e.g. val/macro_f1
    best: Mapping[str, Any]  # step, metric value, val/loss, val/accuracy, train_eval metric (at the best step)
    final: Mapping[str, Any]
    start_metric: float | None
    steps_done: int | None
    steps_planned: int | None
    examples_seen: int | None
    wall_s: float | None
    params_share: float | None  # trainable share of the whole model
    curves: tuple[CurvePanel, ...]
    diagnosis: DiagnosisView
    classes: ClassTable
    confusion: ConfusionView
    pairs: tuple[PairRow, ...]
    examples_note: str | None  # why pairs carry no example texts (None when they do)
    params: tuple[ParamRow, ...]
    config_yaml: str
    notes: tuple[str, ...] = ()
    source: str = "loratune"  # who made the run: loratune, or the reader's kind (hf-trainer, trl, notebook, ...)
    # what picked the saved model (run.json objective) when it is not `metric`: a causal LM keeps its lowest val
    # loss, a multi-label run its best exact match; `best` is then that model's point, not `metric`'s best
    objective: str | None = None
    prompts: PromptSetView | None = None  # a causal-lm run with a prompt set (generations.jsonl)
    saved_model: bool = False  # the best step's model is the one saved (run.json saved_model; never a run loratune
    #                            did not make: its files say which checkpoint was kept, if any)
    saved_step: float | None = None  # the step of the model the run saved (run.json saved_model.step): a run that did
    #                                  not finish can have saved another step's model than its best, or none
    robustness: RobustnessView | None = None  # run.json robustness (None: not scored)
    probe: ProbeView | None = None  # the probe set at saved_step (None: no probe set, or no model saved)

    @property
    def kept_untrained(self) -> bool:
        """A loratune run that trained but whose kept best is its step 0 (it diverged, stopped before its first
        trained eval, or no trained point scored above the start: the card says which), so run.json's best is the
        untrained model's point, not the history's highest, which the diagnosis reads."""
        return self.source == "loratune" and as_float(self.best.get("step")) == 0 and (self.steps_done or 0) > 0

    @property
    def open_generation(self) -> bool:
        """A causal LM that generates no labels: no classes, so no class, confusion or pairs views."""
        return self.task == "causal-lm" and not self.n_classes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = self.kind
        d["classes"]["frequency_vs_f1"] = [list(x) for x in self.classes.frequency_vs_f1]
        d["confusion"]["focus_share"] = self.confusion.focus_share
        return to_plain(d)


def to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------------------------------------
# Small readers
# ---------------------------------------------------------------------------------------------

FOCUS_K = 25  # classes in the focused confusion matrix
WEAKEST_CLASSES = 10  # rows of the report's weakest-classes table
WEAKEST_TILE = 3  # classes on the report summary's weakest-classes tile
TOP_PAIRS = 10


def as_float(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    f = as_float(v)
    return int(round(f)) if f is not None else None


def read_json(path: Path) -> tuple[Any, str | None]:
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (*PARSE_ERRORS, UnicodeDecodeError) as exc:
        return None, f"{path.name} is not valid JSON ({parse_problem(exc)})"


def read_history(path: Path) -> tuple[list[dict], str | None]:
    """Whole lines of a history.jsonl (a torn or damaged line is skipped, and said: store.read_history_lines)."""
    from loratune.store import read_history_lines

    if not path.is_file():
        return [], f"no {path.name}"
    points, notes = read_history_lines(path)
    return points, "; ".join(notes) or None


def _quantile(xs: Sequence[float], q: float) -> float:
    from loratune.features import quantile  # the same definition the diagnosis uses

    return quantile(list(xs), q)


def _median(xs: Sequence[float]) -> float:
    return _quantile(xs, 0.5)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _nonfinite(v: Any) -> bool:
    """A logged value that is NaN / inf (or null: the run-record convention for a non-finite number)."""
    if v is None:
        return True
    if isinstance(v, bool):
        return False
    try:
        return not math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


LOGGED_TRAIN_LABEL = "train (as logged)"  # the legend of the train loss drawn from every log (Curve.logged)


def build_curves(points: Sequence[dict], metric: str, best_step: float | None = None,
                 train_loss: Sequence[tuple[float, float | None]] = ()) -> tuple[CurvePanel, ...]:
    """Loss, metric and learning-rate panels; each series keeps the eval points that have the key (a point that has
    it non-finite: Curve.nonfinite). `best_step` marks the saved model (default: the best `metric` point).
    `train_loss`: the train loss as logged, (step, loss or None when non-finite) per train log (a Trainer's or
    TensorBoard's logging_steps, RunHistory.train_log): the train curve is drawn from it, not from the eval points'
    window means (a run that evaluated once drew one train point of 100 logged)."""

    def split(rows) -> tuple[tuple[tuple[float, float], ...], tuple[float, ...]]:
        out, bad = [], []
        for s, raw in rows:
            if s is None:
                continue
            v = as_float(raw)
            if v is not None:
                out.append((s, v))
            elif _nonfinite(raw):
                bad.append(s)
        # step order; a repeated step keeps its file order
        return tuple(sorted(out, key=lambda sv: sv[0])), tuple(sorted(set(bad)))

    def series(key: str) -> tuple[tuple[tuple[float, float], ...], tuple[float, ...]]:
        return split((as_float(p.get("step")), p.get(key)) for p in points if key in p)

    log_pts, log_bad = split((as_float(s), v) for s, v in train_loss)
    logged = (ch.thin_line(log_pts, log_bad), log_bad)  # a 200k-step log: ~500 points, each non-finite step kept

    def curves(specs) -> tuple[Curve, ...]:
        out = []
        for k, lab, role in specs:
            sb, lg = series(k), (logged if k == "train/loss" else ((), ()))
            if any(sb) or any(lg):  # the train loss as logged is no running mean: its legend says so
                out.append(Curve(k, LOGGED_TRAIN_LABEL if any(lg) else lab, role, *sb, logged=lg[0],
                                 logged_nonfinite=lg[1]))
        return tuple(out)

    m = metric.split("/", 1)[1] if "/" in metric else metric
    mname = m.replace("_", " ")
    # beside the metric: accuracy, or macro-F1 when the metric is another score (a multi-label run's subset accuracy)
    beside = "accuracy" if m == "macro_f1" or not any("val/macro_f1" in p for p in points) else "macro_f1"
    best_step = _best_step(points, metric) if best_step is None else best_step
    panels = [
        CurvePanel("loss", "Loss", "cross-entropy", curves((
            ("train/loss", "train (running mean)", "train"),
            ("train_eval/loss", "train (eval subsample)", "train_eval"),
            ("val/loss", "validation", "val"))), False, best_step),
        CurvePanel("metric", mname.replace("macro f1", "Macro-F1").capitalize() if m != "macro_f1" else "Macro-F1",
                   mname, curves((
                       (f"train_eval/{m}", f"train {mname} (eval subsample)", "train_eval"),
                       (f"val/{m}", f"validation {mname}", "val"),
                       *(((f"val/{beside}", f"validation {beside.replace('_', ' ')}", "val2"),) if m != beside
                         else ()))),
                   True, best_step),
        CurvePanel("lr", "Learning rate", "lr", curves((("lr", "learning rate", "lr"),)), False, best_step),
    ]
    return tuple(p for p in panels if p.curves)


# Prompts per group the report shows with their outputs (the file has them all), and the scores it shows of the
# last generation (generation.SCORES has more: chrf_se, empty)
PROMPT_ROWS_PER_GROUP = 3
PROMPT_SCORES_SHOWN = ("chrf", "exact_match", "len_ratio", "repetition")


def build_prompt_set(d: Path, points: Sequence[dict], best_step: float | None) -> PromptSetView | None:
    """The prompt-set view of a causal-lm run directory: None when the run generated nothing."""
    from loratune.objectives import PROMPT_GROUPS, prompt_key
    from loratune.store import GENERATIONS

    rows, note = read_history(d / GENERATIONS)
    groups = [g for g in PROMPT_GROUPS if any(prompt_key(g, "chrf") in p for p in points)]
    if not groups and not rows:
        return None
    curves = []
    for g, role in zip(groups, ("val", "val2")):
        key = prompt_key(g, "chrf")
        pts = tuple(sorted((as_float(p["step"]), as_float(p[key])) for p in points
                           if as_float(p.get("step")) is not None and as_float(p.get(key)) is not None))
        curves.append(Curve(key, f"{g} prompts", role, pts))
    panel = CurvePanel("prompts", "Prompt set chrF", "chrF", tuple(curves), True, best_step) if curves else None
    steps = sorted({as_float(r.get("step")) for r in rows if as_float(r.get("step")) is not None})
    if not steps:
        return PromptSetView(panel, None, (), {}, note or f"no outputs in {GENERATIONS}")
    last = steps[-1]
    before = {(r.get("group"), r.get("prompt")): r.get("output") for r in rows if as_float(r.get("step")) == 0}
    shown: list[GenerationRow] = []
    for g in dict.fromkeys(str(r.get("group")) for r in rows):
        at = [r for r in rows if as_float(r.get("step")) == last and str(r.get("group")) == g]
        shown += [GenerationRow(g, str(r.get("prompt", "")), str(r.get("reference", "")),
                                before.get((r.get("group"), r.get("prompt"))) if last != 0 else None,
                                str(r.get("output", ""))) for r in at[:PROMPT_ROWS_PER_GROUP]]
    point = next((p for p in points if as_float(p.get("step")) == last), {})
    scores = {k: float(point[k]) for g in PROMPT_GROUPS for m in PROMPT_SCORES_SHOWN
              if as_float(point.get(k := prompt_key(g, m))) is not None}
    return PromptSetView(panel, last, tuple(shown), scores, note)


def _best_step(points: Sequence[dict], metric: str) -> float | None:
    """The step of the best `metric` point, by its objective's direction (a loss: the lowest; the first of ties): the
    best point of a run that names no kept model of its own (an unfinished loratune run's best is the model its
    training keeps: objectives.kept_step)."""
    from loratune.objectives import keep_order

    best = None
    for p in points:
        k, s = keep_order(p, metric, None), as_float(p.get("step"))
        if k is None or s is None:
            continue
        # within 1e-12 the scores tie (a log's float32 round trip): the first stays
        if best is None or k[0] > best[0][0] + 1e-12:
            best = (k, s)
    return best[1] if best else None


def build_diagnosis(run: Any, thresholds: Mapping[str, float] | None = None) -> DiagnosisView:
    """The diagnosis view of a run directory (read here) or of a RunHistory already read."""
    from loratune.diagnose import diagnose

    try:
        d = diagnose(run, thresholds=thresholds)
    except UserError as exc:
        return DiagnosisView("inconclusive", "", (), (), (), (), (), error=str(exc))

    def view(f) -> FindingView:
        ev = tuple(EvidenceView(e.text, e.passed, e.feature, e.value, e.op, e.threshold, e.threshold_name,
                                e.decisive) for e in f.evidence)
        return FindingView(f.rule_id, f.scope, f.verdict, f.knob_class, tuple(f.moves), float(f.confidence),
                           f.confidence_label, bool(f.tentative), ev,
                           tuple(f"{n} ({w})" for n, w in f.missing), f.caveat, tuple(f.notes), f.suppressed_by,
                           tuple(f.route))

    summary = d.curve_summary()
    p = d.primary
    return DiagnosisView(
        verdict=d.verdict, verdict_text=p.verdict if p else d.inconclusive_why,
        moves=tuple(p.moves) if p else (),
        findings=tuple(view(f) for f in d.active),
        suppressed=tuple(view(f) for f in d.findings if f.suppressed_by),
        not_evaluated=tuple((n.rule_id, "; ".join(f"{f} ({w})" for f, w in n.missing)) for n in d.not_evaluated),
        summary=tuple(summary), notes=tuple(d.notes), thresholds_note=d.thresholds_note)


def _class_stat(point: Mapping[str, Any], split: str, stat: str, label: str) -> float | None:
    return as_float(point.get(f"{split}/{stat}/{label}"))


def build_classes(points: Sequence[dict], run: Mapping[str, Any], labels: Sequence[str],
                  best_step: float | None) -> ClassTable:
    """Per-class numbers at the best step (or the last eval point with per-class keys)."""
    empty = ClassTable(None, (), False, None, None, None, None, None)
    if not labels:
        return ClassTable(**{**asdict(empty), "missing": "the run names no labels (run.json has no `labels`)"})

    def has_recall(p):
        return any(f"val/recall/{lab}" in p for lab in labels)

    with_recall = [p for p in points if has_recall(p)]
    if not with_recall:
        return ClassTable(**{**asdict(empty),
                             "missing": "no per-class val recall (`val/recall/<label>`) in the history"})
    point = next((p for p in with_recall if best_step is not None and as_float(p.get("step")) == best_step),
                 with_recall[-1])
    counts_all = run.get("label_counts") if isinstance(run.get("label_counts"), dict) else {}
    train_counts = counts_all.get("train") if isinstance(counts_all.get("train"), dict) else {}

    # long tail: the diagnosis's classes (features.tail_head_split: under LONG_TAIL_COUNT rows) and its ratio gate
    have = {lab: float(n) for lab, n in train_counts.items() if lab in labels and as_float(n) is not None}
    tail_l, head_l = tail_head_split(have)
    long_tail, q1, q3, ratio = False, None, None, None
    if len(have) >= 4 and tail_l and head_l:
        q1, q3 = max(have[c] for c in tail_l), min(have[c] for c in head_l)
        ratio = _median([have[c] for c in head_l]) / max(_median([have[c] for c in tail_l]), 1e-9)
        long_tail = ratio >= THRESHOLDS["tail_count_ratio_min"].value

    rows = []
    for lab in labels:
        sup = _int(_class_stat(point, "val", "support", lab))
        n = _int(train_counts.get(lab))
        rec = _class_stat(point, "val", "recall", lab)
        if sup == 0:
            rec = None  # no val rows: recall is undefined, not 0
        rows.append(ClassRow(
            label=lab, train_count=n, val_support=sup, recall=rec,
            precision=_class_stat(point, "val", "precision", lab), f1=_class_stat(point, "val", "f1", lab),
            train_recall=_class_stat(point, "train_eval", "recall", lab),
            tail=bool(long_tail and n is not None and n <= q1), head=bool(long_tail and n is not None and n >= q3)))
    rows.sort(key=lambda r: (r.recall is None, r.recall if r.recall is not None else 0.0,
                             r.f1 if r.f1 is not None else 0.0, r.label))

    def mean_recall(sel):
        xs = [r.recall for r in rows if sel(r) and r.recall is not None]
        return sum(xs) / len(xs) if xs else None

    return ClassTable(
        step=as_float(point.get("step")), rows=tuple(rows), long_tail=long_tail,
        tail_max_count=q1 if long_tail else None, head_min_count=q3 if long_tail else None,
        head_tail_ratio=ratio, tail_recall=mean_recall(lambda r: r.tail) if long_tail else None,
        head_recall=mean_recall(lambda r: r.head) if long_tail else None,
        missing=None if train_counts else "run.json has no label_counts.train: long-tail classes cannot be marked")


def _order_focus(focus: Sequence[int], matrix: Sequence[Sequence[int]]) -> list[int]:
    """Order focus classes so that confused pairs sit side by side: walk the off-diagonal cells
    inside the focus set from the largest down, placing both ends of each as they come."""
    fs = set(focus)
    cells = sorted(((matrix[i][j] + matrix[j][i], i, j) for i in focus for j in focus if i < j
                    and matrix[i][j] + matrix[j][i] > 0), key=lambda t: (-t[0], t[1], t[2]))
    order: list[int] = []
    placed: set[int] = set()
    for _, i, j in cells:
        for k in (i, j):
            if k not in placed:
                order.append(k)
                placed.add(k)
    order += [k for k in focus if k not in placed and k in fs]
    return order


def build_confusion(conf: Any, conf_note: str | None, focus_k: int = FOCUS_K,
                    point: Mapping[str, Any] | None = None) -> ConfusionView:
    """The confusion view of confusion.json. `point`: the history point of its step, whose val/n, val/support/<label>
    and val/unknown_rate / val/unknown_outputs count the rows the matrix has no cell for (a generated output that
    names no label, a row of a label train never had), so the errors and rates are those of the val split."""
    empty = dict(step=None, n_classes=0, total=0, errors=0, focus=(), focus_matrix=(), focus_support=(),
                 focus_errors=0, labels=(), cells=())
    if conf is None:
        return ConfusionView(**empty, missing=(conf_note or "no confusion.json")
                             + " (multi-label runs and runs stopped before their first eval have none)")
    labels = conf.get("labels") if isinstance(conf, dict) else None
    matrix = conf.get("matrix") if isinstance(conf, dict) else None
    n = len(labels or ())
    if not n or not isinstance(matrix, list) or len(matrix) != n or any(
            not isinstance(r, list) or len(r) != n for r in matrix):
        return ConfusionView(**empty, missing="confusion.json is not a square matrix over its labels")
    m = [[int(as_float(x) or 0) for x in row] for row in matrix]
    point = point or {}
    support = [max(_int(point.get(f"val/support/{labels[i]}")) or 0, sum(m[i])) for i in range(n)]
    total = max(_int(point.get("val/n")) or 0, sum(support))
    errors = total - sum(m[i][i] for i in range(n))
    rate, outputs = as_float(point.get("val/unknown_rate")), point.get("val/unknown_outputs")
    unknown = round(rate * total) if rate is not None else None
    unknown_outputs = tuple((str(q["output"]), int(q["count"])) for q in (outputs if isinstance(outputs, list) else ())
                            if isinstance(q, dict) and {"output", "count"} <= set(q))
    mass = [sum(m[i]) - m[i][i] + sum(m[r][i] for r in range(n)) - m[i][i] for i in range(n)]  # FN + FP
    ranked = sorted(range(n), key=lambda i: (-mass[i], labels[i]))
    k = min(focus_k, n)
    focus = [i for i in ranked[:k] if mass[i] > 0] or ranked[:k]
    focus = _order_focus(focus, m)
    fm = tuple(tuple(m[i][j] for j in focus) for i in focus)
    focus_errors = sum(m[i][j] for i in focus for j in focus if i != j)
    cells = tuple((i, j, m[i][j]) for i in range(n) for j in range(n) if m[i][j])
    return ConfusionView(step=as_float(conf.get("step")), n_classes=n, total=total, errors=errors,
                         focus=tuple(labels[i] for i in focus), focus_matrix=fm,
                         focus_support=tuple(support[i] for i in focus), focus_errors=focus_errors,
                         labels=tuple(labels), cells=cells, support=tuple(support), unknown=unknown,
                         unknown_outputs=unknown_outputs)


def outside_matrix_note(c: ConfusionView) -> str | None:
    """The errors in no cell of the confusion matrix (said alike by `report` and `show`): the outputs that named no
    label (generative classification, val/unknown_rate) and the rows of a label train never had; None: none."""
    if c.missing is not None:
        return None
    parts = []
    if c.unknown:
        seen = ", ".join(f"{o!r} ×{k}" if o else f"(empty) ×{k}" for o, k in c.unknown_outputs[:3])
        parts.append(f"{c.unknown} of the {c.total} val rows ({c.unknown / c.total:.0%}, `val/unknown_rate`) got a "
                     "generated output that names no label" + (f" (most frequent: {seen})" if seen else ""))
    both = c.unseen_unknown_rows  # in both counts: said, and counted once
    if c.unseen_rows:
        among = ("" if not both else f", among the {c.unknown} above" if both == c.unseen_rows == 1
                 else f", all {both} among the {c.unknown} above" if both == c.unseen_rows
                 else f", {both} of them among the {c.unknown} above")
        parts.append(f"{c.unseen_rows} val row{'s are' if c.unseen_rows != 1 else ' is'} of a label train never had"
                     + among)
    n = (c.unknown or 0) + c.unseen_rows - both
    return ("; ".join(parts) + f": {n} error{'s' if n != 1 else ''} without a cell in the matrix") if parts else None


def build_pairs(confusion: ConfusionView, points: Sequence[dict], best_step: float | None,
                examples: Mapping[tuple[str, str], Sequence[str]] | None = None,
                top: int = TOP_PAIRS) -> tuple[PairRow, ...]:
    """The most frequent (true, predicted) confusions: from the confusion matrix (the best step, the
    same model as the saved adapter), else from `val/confused_pairs` in the history."""
    counts: dict[tuple[str, str], int] = {}
    support: dict[str, int] = {}
    if confusion.missing is None and confusion.n_classes:  # the rate over each class's val rows, as diagnose reads it
        support = dict(zip(confusion.labels, confusion.support))
        for i, j, c in confusion.cells:
            if i != j:
                counts[(confusion.labels[i], confusion.labels[j])] = c
    else:
        with_pairs = [p for p in points if isinstance(p.get("val/confused_pairs"), list)]
        if not with_pairs:
            return ()
        point = next((p for p in with_pairs if best_step is not None and as_float(p.get("step")) == best_step),
                     with_pairs[-1])
        for q in point["val/confused_pairs"]:
            if isinstance(q, dict) and {"true", "pred", "count"} <= set(q):
                counts[(str(q["true"]), str(q["pred"]))] = int(q["count"])
        for key, v in point.items():
            if key.startswith("val/support/") and as_float(v) is not None:
                support[key.split("/", 2)[2]] = int(v)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    rows = []
    for (t, p), c in ranked:
        ex = None
        if examples is not None:
            ex = tuple(examples.get((t, p), ()))
        rows.append(PairRow(t, p, c, c / support[t] if support.get(t) else None, counts.get((p, t), 0), ex))
    return tuple(rows)


def pairs_missing_why(r: "RunReport") -> str:
    """Why a run report lists no confused pairs (said alike by `report` and `show`)."""
    c = r.confusion
    if c.missing is not None:
        why = "a multi-label run has none" if r.task == "multi_label" else "no validation predictions were recorded"
        return f"no confusion matrix and no `val/confused_pairs` in the history ({why})"
    if not c.errors:
        return "no confused pairs: the validation predictions have no errors"
    note = outside_matrix_note(c)
    return f"no confused pairs: none of the {c.errors} validation errors predicts another class" + (
        f"; {note}" if note else "")


def _architecture(model: Mapping[str, Any]) -> str:
    """`show`'s architecture line: the layers a forward runs (run.json model.depth; ALBERT's 12 layers from 1 shared
    block printed as 1 layer), the physical blocks beside them where fewer are shared across them."""
    layers, blocks = model.get("depth"), model.get("num_layers")
    text = f"{model.get('model_type', '?')}, {layers if layers else blocks if blocks is not None else '?'} layers"
    if model.get("layers_note") and isinstance(blocks, int):
        text += f" ({blocks} shared block{'s' if blocks != 1 else ''})"
    return text


def run_method(run: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """lora / full / ...: what the record says; a record another tool wrote (the Trainer callback's, `source`)
    that names no method is LoRA only if it holds adapter knobs (a plain fine-tune has none), else unknown."""
    ad = config.get("adapter") or {}
    said = ad.get("method") or run.get("method")
    if said:
        return str(said)
    return "lora" if not run.get("source") or ad.get("r") is not None else "unknown"


def build_params(run: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[ParamRow, ...]:
    params = run.get("params") if isinstance(run.get("params"), dict) else {}
    model = run.get("model") if isinstance(run.get("model"), dict) else {}
    cm = config.get("model") or {}
    ad = config.get("adapter") or {}
    tr = config.get("train") or {}
    method = run_method(run, config)
    rows: list[ParamRow] = [
        ParamRow("Model", "base model", cm.get("name_or_path") or model.get("name_or_path")),
        ParamRow("Model", "architecture", _architecture(model) if model else None),
        ParamRow("Model", "max_length", cm.get("max_length")),
        ParamRow("Model", "total parameters", params.get("total")),
        ParamRow("Model", "trainable parameters", params.get("trainable"),
                 f"{params['share_of_total']:.2%} of the model" if as_float(params.get("share_of_total")) else ""),
    ]
    if method != "full":
        rows += [
            ParamRow("Model", "adapter parameters", params.get("adapter"),
                     f"{params['adapter'] / params['adapted_weights']:.2%} of the adapted weights"
                     if as_float(params.get("adapter")) and as_float(params.get("adapted_weights")) else ""),
            ParamRow("Model", "head parameters", params.get("head"), "classification head, always trained"),
            ParamRow("Model", "adapted weights", params.get("adapted_weights"),
                     f"{model.get('adapted_modules')} modules" if model.get("adapted_modules") else ""),
        ]
    rows.append(ParamRow("Adapter", "method", method))
    if method != "full":
        for key in ("r", "lora_alpha", "lora_dropout", "target_modules", "layers_to_transform", "bias",
                    "use_rslora", "init_lora_weights", "use_dora"):
            if key in ad:
                rows.append(ParamRow("Adapter", key, ad[key]))
    # the optimizer (LoRA+ and its ratio only when it is LoRA+) and the head's own lr when set
    for key in ("learning_rate", "optimizer", "loraplus_lr_ratio", "head_learning_rate", "num_train_epochs",
                "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay",
                "warmup_ratio", "lr_scheduler_type", "max_grad_norm", "early_stopping_patience", "seed"):
        if key in tr and not (key == "loraplus_lr_ratio" and tr.get("optimizer") != "loraplus"):
            rows.append(ParamRow("Training", key, tr[key]))
    cost = (("steps done", run.get("steps_done"), f"of {run.get('steps_planned')} planned"
             if run.get("steps_planned") else ""),
            ("examples seen", run.get("examples_seen"), "training examples processed, with repeats"),
            ("wall time (s)", run.get("wall_s"), f"+ {run['setup_s']:.1f} s set-up" if as_float(run.get("setup_s")) else ""),
            ("examples / s", run.get("examples_per_s"), ""),
            ("mean step (s)", run.get("mean_step_s"), ""),
            ("peak memory (MB)", run.get("peak_memory_mb"), ""),
            ("device", run.get("device"), ""))
    rows += [ParamRow("Cost", k, v, note) for k, v, note in cost if v not in (None, "")]
    return tuple(r for r in rows if r.value is not None)


def _metric_of(points: Sequence[dict], meta: Mapping[str, Any] | None = None) -> str:
    """The val metric the report plots and marks: the one the diagnosis reads (the run's objective when it logs it,
    e.g. a multi-label run's subset accuracy; else the first metric that moved), so the curve, its best-step marker
    and the Summary's best are of one series."""
    from loratune.features import val_metric_key

    m = val_metric_key(points, meta or {})
    return f"val/{m}" if m else "val/macro_f1"


# statuses whose run.json the run itself rewrote when it ended: its `best` is the saved model's point and the history's
# best; any other (running, died, interrupted) may lag its history (build_run_report)
SETTLED = ("completed", "diverged")


def _point_at(points: Sequence[dict], step: float | None) -> dict:
    if step is None:
        return {}
    return next((p for p in points if as_float(p.get("step")) == step), {})


# multi-label runs (issue 19): exact match overall, on the compound rows (2+ labels) and on the single rows
MULTI_INTENT_KEYS = ("val/subset_accuracy", "val/micro_f1", "val/samples_f1", "val_compound/subset_accuracy",
                     "val_compound/n", "val_single/subset_accuracy", "val_single/n")


def _summary_point(p: Mapping[str, Any], metric: str, objective: str | None = None) -> dict:
    m = metric.split("/", 1)[1]
    keys = ("step", "epoch", metric, "val/loss", "val/accuracy", f"train_eval/{m}", "train_eval/loss",
            "train/loss", "examples_seen", "wall_s") + MULTI_INTENT_KEYS + ((objective,) if objective else ())
    return {k: p.get(k) for k in keys if p.get(k) is not None}


def truncation_note(run: Mapping[str, Any]) -> str | None:
    """A causal-lm run's rows cut at model.max_length (run.json `truncated`, against `rows`), as the train summary,
    `show` and `report` say it; None when no row was cut (or the record has no count)."""
    cut = run.get("truncated") if isinstance(run.get("truncated"), dict) else {}
    rows = run.get("rows") if isinstance(run.get("rows"), dict) else {}
    parts = []
    for split in ("train", "val"):
        n, total = _int(cut.get(split)), _int(rows.get(split))
        if n:
            parts.append(f"{n} of {total} {split} rows ({n / total:.0%})" if total else f"{n} {split} rows")
    if not parts:
        return None
    return (f"{' and '.join(parts)} longer than max_length={cut.get('max_length', '?')} tokens were truncated (the "
            "prompt's beginning first, then the completion's end): a larger max_length keeps them whole")


def build_run_report(run_dir: str | Path, *, examples: Mapping[tuple[str, str], Sequence[str]] | None = None,
                     examples_note: str | None = None, thresholds: Mapping[str, float] | None = None,
                     focus_k: int = FOCUS_K, top_pairs: int = TOP_PAIRS, name: str | None = None) -> RunReport:
    """The report of one run directory. `examples`: {(true, pred): texts} from
    `report.examples.confused_examples` (None: the pairs show no texts, and `examples_note` says why)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(f"'{d}' is not a directory", "give a run directory made by `loratune train`")
    if not (d / "history.jsonl").is_file() and not (d / "run.json").is_file():
        raise UserError(f"'{d}' is not a loratune run directory (no history.jsonl, no run.json)",
                        "give the output_dir of `loratune train`, or a study directory of `loratune tune`")
    notes: list[str] = []
    run, note = read_json(d / "run.json")
    from loratune.history_io import folder_name
    from loratune.store import with_liveness  # a `running` record whose process died reads as `died`

    run = with_liveness(run, d)
    if note:
        notes.append(note + ": status, labels and parameter counts are unknown")
    elif not isinstance(run, dict):  # valid JSON but a list, string, number or null
        notes.append("run.json is not a JSON object: status, labels and parameter counts are unknown")
    run = run if isinstance(run, dict) else {}
    points, note = read_history(d / "history.jsonl")
    if note:
        notes.append(note)
    points = sorted((p for p in points if as_float(p.get("step")) is not None), key=lambda p: p["step"])
    if not points:
        notes.append("the history has no eval points yet: no curves")
    config: dict = {}
    config_yaml = ""
    if (d / "config.yaml").is_file():
        import yaml

        try:  # a file not in UTF-8 (UnicodeDecodeError, a ValueError) is no valid YAML either
            config_yaml = (d / "config.yaml").read_text(encoding="utf-8")
            config = yaml.safe_load(config_yaml) or {}
        except (yaml.YAMLError, *PARSE_ERRORS):
            config_yaml = ""
            notes.append("config.yaml is not valid YAML")
    elif isinstance(run.get("config"), dict):
        config = run["config"]
    else:
        notes.append("no config.yaml: the parameter table lacks the hyperparameters")
    config = config if isinstance(config, dict) else {}
    if not config_yaml and config:
        import yaml

        config_yaml = yaml.safe_dump(config, sort_keys=False)

    metric = _metric_of(points, run)
    labels = [str(x) for x in run.get("labels") or []]
    if not labels:
        seen: dict[str, None] = {}
        for p in points:
            for k in p:
                if k.startswith("val/recall/"):
                    seen[k.split("/", 2)[2]] = None
        labels = list(seen)
    best_step = _best_step(points, metric)
    status = str(run.get("status") or "unknown")
    if status not in SETTLED:
        # run.json's `best` is a snapshot the run rewrites after it saves a best model, and a history point is
        # appended before that: a run killed or interrupted in between (or still training) has a history whose best
        # the snapshot lags. Its best is the model its training keeps, read from the history by training's own rule
        # (objectives.kept_step: a trained point, never step 0's base model while one has a score; the first of
        # ties, as keep_order breaks them), so the curves' marker, the per-class table and confusion.json are of
        # one model; which step's model was saved is said apart from it (saved_step)
        from loratune.objectives import kept_step

        key = run.get("objective") if isinstance(run.get("objective"), str) else metric
        task = run.get("task") if isinstance(run.get("task"), str) else None
        kept = kept_step([{**p, "step": as_float(p["step"])} for p in points], key, task)
        best_step = kept if kept is not None else best_step
    elif isinstance(run.get("best"), dict) and as_float(run["best"].get("step")) is not None:
        best_pt = dict(run["best"])
        best_step = as_float(best_pt["step"]) if as_float(best_pt.get(metric)) is not None else best_step
    curves = build_curves(points, metric, best_step)  # the marker at the best step (the saved model's, settled)
    run_best = run.get("best") if isinstance(run.get("best"), dict) else {}  # the snapshot of the saved model's point
    best_pt = _point_at(points, best_step) or run_best
    evals = _eval_points(points)
    final_pt = evals[-1] if evals else (run.get("final") if isinstance(run.get("final"), dict) else {})
    if status == "running":
        notes.append(f"the run is still training (status `running`, {len(evals)} eval points so far): "
                     "this report shows it as it stands")
    elif status == "died":
        notes.append(f"the run is partial: {run.get('reason')}")

    truncated = truncation_note(run)
    if truncated:
        notes.append(truncated)
    conf, conf_note = read_json(d / "confusion.json")
    conf_step = as_float(conf.get("step")) if isinstance(conf, dict) else None
    # its step's point counts the rows outside the matrix: the history's, else run.json's `best` where it is that step
    # (a run whose history.jsonl is gone still has the snapshot of the step whose confusion.json it saved)
    conf_pt = _point_at(points, conf_step) or (
        run_best if conf_step is not None and as_float(run_best.get("step")) == conf_step else {})
    confusion = build_confusion(conf, conf_note, focus_k, conf_pt)
    if confusion.missing is None and best_step is not None and confusion.step is not None \
            and confusion.step != best_step:
        notes.append(f"confusion.json is from step {confusion.step:g}, the best val metric from step {best_step:g}")
    pairs = build_pairs(confusion, points, best_step, examples, top_pairs)
    prompts = build_prompt_set(d, points, best_step)
    objective = run.get("objective")  # what picked the saved model, when another metric than the headline one
    objective = objective if isinstance(objective, str) and objective != metric and objective in best_pt else None
    if examples is None and examples_note is None:
        examples_note = "example texts were not computed (run `loratune report` with examples on)"
    cm = config.get("model") or {}
    data = config.get("data") or {}
    params = run.get("params") if isinstance(run.get("params"), dict) else {}
    rows_info = run.get("rows") if isinstance(run.get("rows"), dict) else {}
    return RunReport(
        name=name or folder_name(d), path=str(d), status=status, reason=run.get("reason"),
        task=str(run.get("task") or "single_label"),
        method=run_method(run, config),
        model_name=str(cm.get("name_or_path") or (run.get("model") or {}).get("name_or_path") or "?"),
        dataset=str(data.get("dataset_name") or data.get("train_file") or "?"),
        n_classes=len(labels) or None,
        n_val=_int(rows_info.get("val")) or _int(final_pt.get("val/n")),
        metric=metric, best=_summary_point(best_pt, metric, objective),
        final=_summary_point(final_pt, metric, objective),
        objective=objective, prompts=prompts, start_metric=as_float(points[0].get(metric)) if points else None,
        steps_done=_int(run.get("steps_done")) if run.get("steps_done") is not None else (
            _int(points[-1].get("step")) if points else None),
        steps_planned=_int(run.get("steps_planned")), examples_seen=_int(run.get("examples_seen")),
        wall_s=as_float(run.get("wall_s")) or (as_float(points[-1].get("wall_s")) if points else None),
        params_share=as_float(params.get("share_of_total")),
        curves=curves, diagnosis=build_diagnosis(d, thresholds) if points else DiagnosisView(
            "inconclusive", "", (), (), (), (), (), error="no eval points to diagnose yet"),
        classes=build_classes(points, run, labels, best_step), confusion=confusion, pairs=pairs,
        examples_note=None if examples is not None else examples_note,
        params=build_params(run, config), config_yaml=config_yaml, notes=tuple(notes),
        saved_model=_saved_at(run, best_step, d), saved_step=_held_step(run, best_step, d),
        robustness=build_robustness(run), probe=build_probe(points, _held_step(run, best_step, d)))


def _saved_step(run: Mapping[str, Any], run_dir: Path) -> float | None:
    """The step whose model the run saved (store.adapter_step: run.json `saved_model.step`, or the newer best being
    written that adapter/ already holds), None when none was saved or it is unknown."""
    from loratune.store import adapter_step

    return as_float(adapter_step(dict(run), run_dir)[0])


def _saved_at(run: Mapping[str, Any], best_step: float | None, run_dir: Path) -> bool:
    """Whether the model saved by the run is the one of `best_step`: the step adapter/ holds as run.json vouches for
    it (store.adapter_step; none when none was saved: a run that diverged before any trained evaluation); without
    run.json `saved_model` (a run still training, one killed before it saved, a record from before the field),
    whether its adapter folder holds weights."""
    from loratune.store import ADAPTER, WEIGHT_FILES

    if isinstance(run.get("saved_model"), dict):
        return best_step is not None and _saved_step(run, run_dir) == best_step
    return best_step is not None and any((run_dir / ADAPTER / f).is_file() for f in WEIGHT_FILES)


def _held_step(run: Mapping[str, Any], best_step: float | None, run_dir: Path) -> float | None:
    """The step whose model adapter/ holds, as `_saved_at` decides it: run.json `saved_model`'s (`_saved_step`), or
    for a record without the field the best step when adapter/ holds weights (None: none saved)."""
    if isinstance(run.get("saved_model"), dict):
        return _saved_step(run, run_dir)
    return best_step if _saved_at(run, best_step, run_dir) else None


OUTSIDE_NO_CLASSES = ("{source} runs log no per-class numbers: per-class recall and the confusion matrix need "
                      "`loratune train` (it records them at every eval) or a compute_metrics that logs "
                      "recall/<label> per class")


def _eval_points(points: Sequence[Mapping[str, Any]]) -> list:
    """The points that carry an evaluation: a train-only point (the train loss a log writes after its last eval) is
    no final score."""
    from loratune.features import is_eval_point

    return [p for p in points if is_eval_point(p)]


def build_outside_report(path: str | Path, thresholds: Mapping[str, float] | None = None) -> RunReport:
    """The report of a run loratune did not make: a Trainer / TRL output directory or checkpoint, a
    trainer_state.json, a TensorBoard log, a Jupyter notebook with the Trainer's progress table, or a CSV. It holds
    what such a run has: the curves, the diagnosis with its evidence, and what was read from the run's files (each
    fact with its source); no per-class numbers, confusion or example texts (the run logged none)."""
    from loratune.history_io import END_UNKNOWN_KEY, is_callback_record, load_run, run_name

    p = Path(path)
    h = load_run(p)  # UserError (exit 2) names what it expected
    if h.source == "loratune":
        # a `loratune train` run's own file or TensorBoard log: its folder's report, with the status, the saved
        # model's best and the per-class numbers its run.json and history keep (read as a log, they were lost)
        return build_run_report(h.path, thresholds=thresholds)
    points = sorted((dict(x) for x in h.points if as_float(x.get("step")) is not None), key=lambda x: x["step"])
    notes = list(h.notes)
    if not points:
        notes.append("the run has no eval points: no curves")
    metric = _metric_of(points, h.meta)
    best_step = _best_step(points, metric)
    evals = _eval_points(points)
    # the final card is the last eval point that scored the metric, as the diagnosis's 'final' reads it (a last eval
    # that logged the loss alone would show the metric as '–' beside a diagnosis that gives it)
    scored = [p for p in evals if as_float(p.get(metric)) is not None]
    final_pt = scored[-1] if scored else evals[-1] if evals else points[-1] if points else None
    facts = h.facts
    fact = (lambda k: facts[k].value if k in facts else None)  # noqa: E731
    adapter = h.config.get("adapter") or {}
    callback = is_callback_record(h.meta)
    # LoratuneCallback's record says its status (running while its Trainer trains, interrupted, stopped, died: with
    # liveness applied); a Trainer's own files never do, so theirs is read from how far they got
    status = (str(h.meta["status"]) if callback and h.meta.get("status")
              else "partial" if h.meta.get("partial") else "end unknown" if h.meta.get(END_UNKNOWN_KEY)
              else "finished")
    no_classes = OUTSIDE_NO_CLASSES.format(source=h.source)
    empty_classes = ClassTable(None, (), False, None, None, None, None, None, missing=no_classes)
    empty_conf = dict(step=None, n_classes=0, total=0, errors=0, focus=(), focus_matrix=(), focus_support=(),
                      focus_errors=0, labels=(), cells=())
    params = [ParamRow("Read from the run's files", k, f.value, f.source) for k, f in facts.items()
              if k != "task" and f.value is not None]
    if isinstance(h.meta.get("best_model_checkpoint"), str):
        # load_best_model_at_end: the Trainer saved the best step's model in a checkpoint, and reloaded it
        notes.append(f"the Trainer's best checkpoint (best_model_checkpoint): {h.meta['best_model_checkpoint']}")
    import yaml

    return RunReport(
        name=run_name(h, p),  # as diagnose names it (a callback record's output_dir, a TensorBoard log's rule)
        path=str(p), status=status,
        reason=None,
        task=str(h.meta.get("task") or fact("task") or "single_label"),
        method=str(h.meta.get("method") or ("lora" if adapter else "unknown")),
        model_name=str(fact("base_model_name_or_path") or fact("model_type") or "?"), dataset="?",
        n_classes=_int(h.meta.get("n_classes")), n_val=_int(final_pt.get("val/n")) if final_pt else None,
        metric=metric, best=_summary_point(_point_at(points, best_step), metric) if points else {},
        final=_summary_point(final_pt, metric) if final_pt else {},
        start_metric=as_float(points[0].get(metric)) if points else None,
        # a log that says no count (a CSV): the last step it logged, as its best card's step reads (not '–')
        steps_done=_int(h.meta.get("steps_done")) if h.meta.get("steps_done") is not None else
        (_int(points[-1].get("step")) if points and h.meta.get("step_unit") != "row" else None),
        steps_planned=_int(h.meta.get("steps_planned")),
        examples_seen=None, wall_s=None, params_share=None,
        curves=build_curves(points, metric, train_loss=h.train_log),
        diagnosis=build_diagnosis(h, thresholds) if points else DiagnosisView(  # the history read above
            "inconclusive", "", (), (), (), (), (), error="no eval points to diagnose"),
        classes=empty_classes, confusion=ConfusionView(**empty_conf, missing=no_classes), pairs=(),
        examples_note=f"{h.source} runs keep no predictions to draw example texts from",
        params=tuple(params), config_yaml=yaml.safe_dump(dict(h.config), sort_keys=False) if h.config else "",
        notes=((f"a Trainer run recorded by LoratuneCallback, not trained by `loratune train`: read from {p}"
                if callback else f"a {h.source} run, not made by loratune: read from {p}"),) + tuple(notes),
        source=h.source)


def with_examples(report: RunReport, examples: Mapping[tuple[str, str], Sequence[str]] | None,
                  note: str | None = None) -> RunReport:
    """The same report with example texts on its confused pairs (None: none, and `note` says why)."""
    from dataclasses import replace

    pairs = tuple(replace(p, examples=None if examples is None else tuple(examples.get((p.true, p.pred), ())))
                  for p in report.pairs)
    return replace(report, pairs=pairs, examples_note=None if examples is not None else
                   (note or "example texts were not computed"))


def is_study_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / n).exists() for n in STUDY_MARKERS)


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "history.jsonl").is_file() or (p / "run.json").is_file())
