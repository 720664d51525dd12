"""HTML rendering of the report models: one self-contained file (inline CSS, inline SVG, a few lines
of inline script for copy buttons and sortable tables). No CDN, no font download, opens from disk.
The run report's sections are here, the study report's in render_study.py, the pieces both use in
html.py; `render` / `write_html` take either report.

Nothing here computes or decides anything: it formats `RunReport` / `StudyReport` fields.
"""

from __future__ import annotations

from pathlib import Path

from loratune.report import charts as ch
from loratune.report.charts import esc
from loratune.report.html import (STATUS_TONE, badge, copy_block, duration, footer, human, legend, metric, missing,
                                  num, page, pct, section, table, tile, value_text, verdict_tone)
from loratune.report.model import (ClassTable, ConfusionView, CurvePanel, DiagnosisView, FindingView, RunReport,
                                   WEAKEST_TILE, as_float, outside_matrix_note, pairs_missing_why)
from loratune.report.render_study import render_study
from loratune.rules import moves_text

# ---------------------------------------------------------------------------------------------
# Run report pieces
# ---------------------------------------------------------------------------------------------

ROLE_STYLE = {"train": ("train", "dash"), "train_eval": ("train_eval", "line"), "val": ("val", "line"),
              "val2": ("val2", "dash"), "lr": ("lr", "line")}


def curve_figure(panel: CurvePanel, *, width: int = 540, height: int = 270, epoch_note: str = "",
                 saved: bool = True, untrained: bool = False) -> str:
    """One chart; `saved`: the best step is the saved model's (a loratune run keeps its best adapter); `untrained`:
    the best kept is the untrained start (RunReport.kept_untrained), not the curve's highest point."""
    series = []
    items = []
    for c in panel.curves:
        cls, kind = ROLE_STYLE.get(c.role, ("neutral", "line"))
        # markers on eval points; the train loss as logged (every logging step) and the lr are lines
        series.append(ch.Series(c.label, f"s-{cls}", c.logged if c.from_log else c.points, dashed=kind == "dash",
                                markers=c.role != "lr" and not c.from_log,
                                nonfinite=c.logged_nonfinite if c.from_log else c.nonfinite))
        items.append((cls, c.label, kind))
    vlines = []
    if panel.best_step is not None and panel.id != "lr":
        vlines.append(ch.VLine(panel.best_step, f"best step {panel.best_step:g}"))
        items.append(("best", "best kept: the untrained start (no trained point kept)" if untrained else
                      "best val step (saved model)" if saved else "best val step", "mark"))
    y_lo = 0.0 if panel.id in ("metric", "prompts", "lr") else None
    y_hi = 1.0 if panel.id in ("metric", "prompts") else None
    # x from step 0: the run's steps (one eval at step 1,000 drew a made-up 980-1,020 range); the loss axis is set by
    # the in-scale values (charts.OFFSCALE_RATIO: a spike or a divergence is marked at the top edge)
    svg = ch.line_chart(series, width=width, height=height, x_label="optimizer step", y_label=panel.y_label,
                        y_lo=y_lo, y_hi=y_hi, x_lo=0.0, vlines=vlines, aria=panel.title,
                        y_fmt=ch.fmt_sci if panel.id == "lr" else ch.fmt, offscale=panel.id == "loss",
                        tip_fmt=ch.fmt_exact)
    # off-scale points' values are in their tooltips, which a printed page loses: a caption says them (the exact
    # step: the ticks' compact 10k named a spike at step 10,001)
    off = ch.offscale_caption(series, "optimizer step", ch.fmt_exact) if panel.id == "loss" else ""
    caption = f'<div class="muted small">{esc(off)}</div>' if off else ""
    return (f'<figure data-chart="{esc(panel.id)}"><figcaption>{esc(panel.title)}'
            f'{" <span class=sub>" + esc(epoch_note) + "</span>" if epoch_note else ""}</figcaption>'
            f'{legend(items)}{svg}{caption}</figure>')


def finding_card(f: FindingView) -> str:
    tone = "low" if f.confidence_label == "low" else verdict_tone(f.rule_id)

    def items(evidence) -> str:
        return "".join(f'<li class="{"pass" if e.passed else "fail" if e.passed is False else "unknown"}">'
                       f'{esc(e.text)}</li>' for e in evidence)

    ev = items(e for e in f.evidence if e.decisive)
    others = [e for e in f.evidence if not e.decisive]
    extra = ""
    if others:  # the rule's other routes: evaluated, not what made it fire
        extra += (f'<details class="small muted"><summary>{len(others)} clause(s) of the rule\'s other routes'
                  f'</summary><ul class="ev">{items(others)}</ul></details>')
    if f.missing:
        extra += f'<div class="small muted">missing signals: {esc("; ".join(f.missing))}</div>'
    for n in f.notes:
        extra += f'<div class="small muted">{esc(n)}</div>'
    if f.caveat:
        extra += f'<div class="note">caveat: {esc(f.caveat)}</div>'
    moves = "".join(f'<span class="chip move">→ {esc(m)}</span>' for m in f.moves)
    conf = (f'<span class="conf">confidence {f.confidence:.2f} ({esc(f.confidence_label)}'
            f'{", tentative" if f.tentative else ""})<span class="meter"><b style="width:{f.confidence * 100:.0f}%">'
            f'</b></span></span>')
    return (f'<div class="finding {tone}" data-rule="{esc(f.rule_id)}"><div class="head">'
            f'<span class="rid">{esc(f.rule_id)}</span><span class="chip">{esc(f.scope)}</span>'
            f'<span class="chip k">{esc(f.knob_class)}</span>{conf}</div>'
            f'<div class="verdict">{esc(f.verdict)}</div>'
            f'{"<div class=small><b>read:</b> " + esc("; ".join(f.route)) + "</div>" if f.route else ""}'
            f'<ul class="ev">{ev}</ul>{extra}'
            f'<div class="moves">{moves or f"<span class=muted>{esc(moves_text(f.rule_id, f.moves))}</span>"}'
            f'</div></div>')


def diagnosis_section(d: DiagnosisView) -> str:
    if d.error:
        return section("diagnosis", "Diagnosis", "", missing(f"no diagnosis: {d.error}"))
    parts = []
    if d.summary:
        parts.append('<ul class="small muted" style="margin:0 0 12px;padding-left:18px">'
                     + "".join(f"<li>{esc(s)}</li>" for s in d.summary) + "</ul>")
    if d.findings:
        parts.append('<div class="findings">' + "".join(finding_card(f) for f in d.findings) + "</div>")
    else:
        parts.append(missing("no rule fired: the curves show nothing the rule table names"))
    rest = []
    if d.suppressed:
        rest.append("<h3>Also matched, suppressed by a higher-priority finding</h3>"
                    + "".join(f'<div class="small"><code>{esc(f.rule_id)}</code> <span class="muted">by '
                              f'{esc(f.suppressed_by)}: {esc(f.verdict)}</span></div>' for f in d.suppressed))
    if d.not_evaluated:
        rest.append("<h3>Not evaluated (signals missing)</h3>" + "".join(
            f'<div class="small"><code>{esc(r)}</code> <span class="muted">{esc(w)}</span></div>'
            for r, w in d.not_evaluated))
    if d.notes:
        rest.append("".join(f'<div class="note">{esc(n)}</div>' for n in d.notes))
    if rest:
        parts.append(f"<details><summary>Suppressed and unevaluated rules ({len(d.suppressed)} + "
                     f"{len(d.not_evaluated)})</summary>{''.join(rest)}</details>")
    lede = ("Every rule of the table is evaluated; each finding lists its evidence against named thresholds "
            "(✓ holds, ✗ does not, ? missing) and the knob move it prescribes.")
    return section("diagnosis", "Diagnosis", lede, "".join(parts))


def classes_section(t: ClassTable, metric_name: str, saved_model: bool = False) -> str:
    """`saved_model`: the table's step holds the model the run saved (RunReport.saved_model at its best step)."""
    if not t.rows:
        return section("classes", "Per-class recall", "", missing(t.missing or "no per-class metrics"))
    bars = []
    for r in t.rows:
        if r.recall is None:
            continue
        cls = "s-tail" if r.tail else "s-val"
        bars.append(ch.Bar(r.label, r.recall, cls,
                           f"{r.label}: recall {metric(r.recall)}, F1 {metric(r.f1)}, "
                           f"{r.val_support if r.val_support is not None else '?'} val rows, "
                           f"{r.train_count if r.train_count is not None else '?'} train rows"
                           + (" (long-tail class)" if r.tail else "")))
    mean = sum(b.value for b in bars) / len(bars) if bars else None
    many = len(bars) > 30
    items = [("val", "validation recall", "box")]
    if t.long_tail:
        items.append(("tail", f"long-tail class (≤ {t.tail_max_count:g} train rows)", "box"))
    items.append(("best", "mean recall", "dash"))
    col = ch.column_chart(bars, height=200, y_hi=1.0, width=1120 if many else None, y_label="val recall", show_labels=not many,
                          hlines=[(mean, f"mean {mean:.3f}", "ref")] if mean is not None else [],
                          aria="per-class recall sorted")
    fig1 = (f'<figure data-chart="recall"><figcaption>Recall per class, worst first '
            f'<span class="sub">({len(bars)} classes{", hover a bar for its name" if many else ""})</span>'
            f'</figcaption>{legend(items)}<div class="scroll-x">{col}</div></figure>')
    fig2 = frequency_figure(t)
    summary = []
    if t.long_tail:
        summary.append(f"Long tail: head classes have {t.head_tail_ratio:.1f}x the train rows of tail classes; "
                       f"mean recall tail {metric(t.tail_recall)} vs head {metric(t.head_recall)}.")
    if t.missing:
        summary.append(t.missing)
    summary_html = "".join(f'<div class="note">{esc(s)}</div>' for s in summary)

    def row(r):
        gap = (r.train_recall - r.recall) if r.train_recall is not None and r.recall is not None else None
        name = esc(r.label) + (' <span class="chip tail">tail</span>' if r.tail else "")
        return [(name, "", r.label), (num(r.train_count), "num", r.train_count), (num(r.val_support), "num", r.val_support),
                (metric(r.recall), "num", r.recall), (metric(r.precision), "num", r.precision),
                (metric(r.f1), "num", r.f1), (metric(r.train_recall), "num", r.train_recall),
                (f"{gap:+.3f}" if gap is not None else "–", "num", gap)]

    headers = [("class", ""), ("train rows", "num"), ("val rows", "num"), ("recall", "num"), ("precision", "num"),
               ("F1", "num"), ("train recall", "num"), ("train−val", "num")]
    worst = t.weakest()
    short = [(name, c) for name, c in zip(headers, range(len(headers))) if c in (0, 2, 3, 5)]
    tbl = table([h for h, _ in short], [[row(r)[c] for _, c in short] for r in worst],
                row_cls=["tail" if r.tail else "" for r in worst], id_="worst-classes")
    full = table(headers, [row(r) for r in t.rows], cls="sortable", row_cls=["tail" if r.tail else "" for r in t.rows],
                 id_="all-classes")
    step = f" at step {t.step:g}" if t.step is not None else ""
    body = (f'{summary_html}{fig1}<div class="grid2" style="margin-top:14px">{fig2}'
            f'<div><figcaption style="font-weight:600;font-size:13px;margin-bottom:4px">The {len(worst)} weakest '
            f'classes</figcaption>{tbl}</div></div>'
            f'<details><summary>All {len(t.rows)} classes, with precision and train recall (click a header to sort)'
            f'</summary>{full}</details>')
    saved = " (the best step: the saved model)" if saved_model else ""
    return section("classes", "Per-class recall", f"Validation numbers{step}{saved}. "
                   "Train recall is on the train_eval subsample, scored the same way.", body)


def frequency_figure(t: ClassTable) -> str:
    """Train frequency against val F1; with balanced counts (one x value) the F1 distribution instead."""
    pts = t.frequency_vs_f1
    if not pts:
        return f'<figure>{missing(t.missing or "no train label counts: no frequency view")}</figure>'
    items = [("val", "class", "box")] + ([("tail", "long-tail class", "box")] if t.long_tail else [])
    xs = [n for _, n, _, _ in pts]
    if max(xs) == min(xs):
        bins = [0] * 10
        for _, _, f1, _ in pts:
            bins[min(int(f1 * 10), 9)] += 1
        bars = [ch.Bar(f"{k / 10:.1f}–{(k + 1) / 10:.1f}", float(c), "s-val", f"{c} classes with val F1 in "
                       f"[{k / 10:.1f}, {(k + 1) / 10:.1f}{']' if k == 9 else ')'}") for k, c in enumerate(bins)]
        svg = ch.column_chart(bars, height=190, width=540, y_label="classes", show_labels=True,
                              aria="val F1 distribution", y_fmt=lambda v: f"{v:g}")
        return (f'<figure data-chart="freq-f1"><figcaption>Val F1 distribution <span class="sub">(every class has '
                f'{xs[0]} train rows, so frequency cannot explain F1)</span></figcaption>{svg}</figure>')
    dots = [ch.Dot(n, f1, "s-tail" if tail else "s-val",
                   f"{lab}: {n} train rows, val F1 {f1:.3f}" + (" (long tail)" if tail else ""))
            for lab, n, f1, tail in pts]
    log = min(xs) > 0 and max(xs) / max(min(xs), 1) >= 4
    vlines = [ch.VLine(t.tail_max_count, f"tail ≤ {t.tail_max_count:g}")] if t.long_tail and t.tail_max_count else []
    sc = ch.scatter(dots, width=540, height=250, x_label="train rows of the class" + (" (log scale)" if log else ""),
                    y_label="val F1", y_lo=0, y_hi=1, log_x=log, vlines=vlines, aria="frequency vs F1")
    sub = ("" if t.long_tail else f" <span class=\"sub\">(head/tail count ratio {t.head_tail_ratio:.1f}: no long tail)</span>"
           if t.head_tail_ratio is not None else "")
    return f'<figure data-chart="freq-f1"><figcaption>Training frequency vs val F1{sub}</figcaption>{legend(items)}{sc}</figure>'


def confusion_section(c: ConfusionView) -> str:
    if c.missing:
        return section("confusion", "Confusion matrix", "", missing(c.missing))
    n = len(c.focus)
    focus_max = max((v for i, row in enumerate(c.focus_matrix) for j, v in enumerate(row) if i != j), default=1)

    def shade(i, j, v):
        if i == j:
            sup = c.focus_support[i] or 1
            return "hm-on", 0.15 + 0.75 * v / sup
        return "hm-off", 0.18 + 0.82 * v / max(focus_max, 1)

    def title(i, j, v):
        sup = c.focus_support[i]
        share = f" ({v / sup:.0%} of its {sup} val rows)" if sup else ""
        if i == j:
            return f"{c.focus[i]}: {v} correct{share}"
        return f"true {c.focus[i]} → predicted {c.focus[j]}: {v}{share}"

    cell = 22 if n <= 16 else 19 if n <= 26 else 15
    hm = ch.heatmap(c.focus, c.focus, c.focus_matrix, shade, title, cell=cell, label_chars=30,
                    aria="confusion matrix of the most confused classes")
    idx = {lab: k for k, lab in enumerate(c.labels)}
    support = {}
    for i, j, v in c.cells:
        support[i] = support.get(i, 0) + v
    offmax = max((v for i, j, v in c.cells if i != j), default=1)

    def oshade(i, j, v):
        if i == j:
            return "hm-on", 0.25 + 0.75 * v / max(support.get(i, 1), 1)
        return "hm-off", 0.35 + 0.65 * v / offmax

    def otitle(i, j, v):
        return (f"{c.labels[i]}: {v} correct" if i == j else f"true {c.labels[i]} → predicted {c.labels[j]}: {v}")

    overview = "" if c.n_classes <= n else ch.sparse_matrix(c.n_classes, c.cells, oshade, otitle, size=230 if c.n_classes > 40 else 200,
                                highlight=[idx[lab] for lab in c.focus if lab in idx])
    share = c.focus_share
    step = f" at step {c.step:g}" if c.step is not None else ""
    outside = outside_matrix_note(c)
    lede = (f"Validation{step}: {c.errors:,} errors in {c.total:,} rows ({pct(c.errors / c.total if c.total else None)}). "
            + (f"{outside[0].upper()}{outside[1:]}. " if outside else "")
            + f"The matrix shows the {n} classes with the most off-diagonal mass (false negatives + false positives), "
            f"ordered so that classes confused with each other sit together"
            + (f"; they hold {pct(share)} of its errors." if share is not None and c.n_classes > n else "."))
    items = [("good", "correct (shade: share of the class's rows)", "box"), ("bad", "confused (shade: count)", "box")]
    body = (f'{legend(items)}<div class="flexrow">'
            f'<figure data-chart="confusion-focus" class="scroll-x"><figcaption>Most confused classes '
            f'<span class="sub">(rows: true class; columns: predicted)</span></figcaption>'
            f'{hm}</figure>'
            + (f'<figure data-chart="confusion-overview" class="grow"><figcaption>All {c.n_classes} classes '
               f'<span class="sub">(non-zero cells; focus rows tinted)</span></figcaption>{overview}'
               f'<p class="small muted">Off the diagonal, every dot is a confusion. Hover a cell for its classes.</p>'
               f'</figure>' if c.n_classes > n else "") + '</div>')
    return section("confusion", "Confusion matrix", lede, body)


def pairs_section(r: RunReport) -> str:
    if not r.pairs:
        return section("pairs", "Top confused pairs", "", missing(pairs_missing_why(r)))
    rows = []
    for p in r.pairs:
        ex = ""
        if p.examples:
            ex = '<ul class="examples">' + "".join(f"<li><q>{esc(t)}</q></li>" for t in p.examples) + "</ul>"
        elif p.examples is not None:
            ex = '<span class="small muted">no example at the saved step</span>'
        rows.append([
            (f'<b>{esc(p.true)}</b><span class="arrow">→</span>{esc(p.pred)}{ex}', ""),
            (str(p.count), "num", p.count), (pct(p.rate, 0), "num", p.rate),
            (str(p.reverse) if p.reverse else "–", "num", p.reverse)])
    note = f'<div class="note">{esc(r.examples_note)}</div>' if r.examples_note else ""
    body = note + table([("true class → predicted as", ""), ("count", "num"), ("of the true class", "num"),
                         ("reverse", "num")], rows, id_="pairs-table")
    return section("pairs", "Top confused pairs",
                   "The most frequent (true, predicted) errors on validation" +
                   (", with validation texts the saved model gets wrong that way" if r.saved_model else "") +
                   ". “Reverse”: how often the pair is confused the other way round "
                   "(both ways usually means overlapping intents or labels).", body)


def prompts_section(r: RunReport) -> str:
    """A causal-lm run's prompt set: chrF per group over the generating points, and a few prompts with the
    reference, the base model's output (step 0) and the last generation's."""
    ps = r.prompts
    if ps is None:
        return ""
    if not ps.rows and ps.panel is None:
        return section("prompts", "Prompt set", "", missing(ps.missing or "no generations"))
    fig = curve_figure(ps.panel, saved=r.saved_model) if ps.panel else ""
    scores = " · ".join(f"{name} {metric(v)}" for name, v in ps.score_items())
    step = f"{ps.step:g}" if ps.step is not None else "?"

    def clip(text: str | None, n: int = 280) -> str:
        if text is None:
            return '<span class="muted">–</span>'
        return esc(text if len(text) <= n else text[:n] + "…")

    rows = [[(esc(g.group), ""), (clip(g.prompt), ""), (clip(g.reference), ""), (clip(g.before), ""),
             (clip(g.after), "")] for g in ps.rows]
    body = fig + (f'<p class="small muted">at step {step}: {esc(scores)}</p>' if scores else "")
    if rows:
        saved = r.saved_model and r.best.get("step") is not None and ps.step == r.best.get("step")
        body += table([("group", ""), ("prompt", ""), ("reference", ""), ("step 0 (base model)", ""),
                       (f"step {step} ({'the saved model' if saved else 'the last generation'})", "")], rows,
                      id_="prompts-table")
    if ps.missing:  # a torn outputs file (rows kept), or none at all (the chart alone)
        body += f'<div class="note">{esc(ps.missing)}</div>' if rows else missing(ps.missing)
    return section("prompts", "Prompt set",
                   "Held-out prompts generated greedily at every full evaluation point: “familiar” ones close to the "
                   "training prompts, “novel” ones not (protocol 9). Every output: generations.jsonl.", body)


def extras_section(r: RunReport) -> str:
    """The probe set at the saved model's step and the saved model's robustness probe (run.json robustness); nothing
    when the run scored neither."""
    if r.probe is None and r.robustness is None:
        return ""
    body = ""
    if r.probe is not None:
        body += (f'<p>Probe set: accuracy <b>{metric(r.probe.accuracy)}</b> on {num(r.probe.n)} texts at step '
                 f'{num(r.probe.step)}.</p>')
    rb = r.robustness
    if rb is not None and rb.missing:
        body += missing(f"robustness {rb.missing}")
    elif rb is not None:
        body += f'<p>Robustness: clean accuracy <b>{metric(rb.clean_accuracy)}</b> {esc(rb.rows_text)}.</p>'
        rows = [[(esc(k), ""), (metric(a), "num", a), (metric(d), "num", d), (pct(c, 0), "num", c)]
                for k, a, d, c in rb.kinds]
        body += table([("perturbation", ""), ("accuracy", "num"), ("drop", "num"), ("texts changed", "num")], rows,
                      id_="robustness-table")
    return section("extras", "Probe set and robustness",
                   "The saved model on the hand-written probe texts (data.probe_file) and on validation texts under "
                   "label-preserving perturbations (typos, a dropped word, case, punctuation).", body)


def params_section(r: RunReport) -> str:
    groups: dict[str, list] = {}
    for p in r.params:
        groups.setdefault(p.group, []).append(p)
    blocks = []
    for g, rows in groups.items():
        body = "".join(f"<tr><td>{esc(p.key)}</td><td class=\"mono\">{esc(value_text(p.value))}</td>"
                       f"<td class=\"muted small\">{esc(p.note)}</td></tr>" for p in rows)
        blocks.append(f'<div><h3>{esc(g)}</h3><table class="params"><tbody>{body}</tbody></table></div>')
    what = ("The resolved config (config.yaml)" if r.source == "loratune" else
            "What the run's files say, as a loratune config")
    cfg = (f"<details><summary>{what}</summary>{copy_block('run-config', r.config_yaml)}"
           f"</details>" if r.config_yaml else "")
    return section("params", "Parameters", "Parameter counts, the adapter and training hyperparameters, and what "
                   "the run cost.", f'<div class="grid2">{"".join(blocks)}</div>{cfg}')


def run_summary(r: RunReport) -> str:
    m = r.metric.split("/", 1)[-1].replace("_", " ")
    mlabel = "Macro-F1" if m == "macro f1" else m
    best_v = r.best.get(r.metric)
    best_detail = []
    if r.best.get("step") is not None:
        best_detail.append(f"step {num(r.best.get('step'))}")
    if r.best.get("epoch") is not None:
        best_detail.append(f"epoch {r.best['epoch']:.1f}")
    if r.start_metric is not None:
        best_detail.append(f"from {metric(r.start_metric)} at " + ("step 0" if r.source == "loratune" else
                                                                    "its first eval"))
    if r.kept_untrained:  # the history's highest trained point diverged: say what the record kept, and why
        why = ("the run diverged" if r.status == "diverged" else
               "no trained eval point before the run stopped" if (as_float(r.final.get("step")) or 0) <= 0 else
               "no trained eval point scored above the untrained start")
        best_detail = [f"no trained point kept ({why}): best kept = the untrained model, step 0"
                       + ("" if r.saved_step is not None else " · no model saved")]
    final_v = r.final.get(r.metric)
    gap = r.best.get(f"train_eval/{r.metric.split('/', 1)[-1]}")
    d = r.diagnosis
    tone = verdict_tone(d.verdict)
    moves = (" ".join(f'<span class="chip move">→ {esc(x)}</span>' for x in d.moves)
             or f'<span class="muted">{esc(moves_text(d.verdict, d.moves))}</span>')
    if r.objective:  # the saved model was picked by another metric (a causal LM: its lowest val loss)
        olabel = r.objective.split("/", 1)[-1].replace("_", " ")
        best_tile = tile(f"best val {olabel}", metric(r.best.get(r.objective)),
                         " · ".join(best_detail[:2] + [f"{mlabel} {metric(best_v)} there"]), "primary", key="best")
    else:
        best_tile = tile(f"best val {mlabel}", metric(best_v), " · ".join(best_detail), "primary", key="best")
    if r.objective:
        final_tile = tile("final", metric(r.final.get(r.objective)), f"{mlabel} {metric(final_v)}", key="final")
    else:
        final_tile = tile("final", metric(final_v),
                          f"val loss {metric(r.final.get('val/loss'))}" + (f" · train {mlabel} {metric(gap)} at best"
                                                                            if gap is not None else ""), key="final")
    tiles = [
        best_tile,
        final_tile,
        tile("verdict", esc(d.verdict), esc(d.verdict_text) + f'<div style="margin-top:4px">{moves}</div>',
             tone, small=True, key="verdict"),
    ]
    if r.source == "loratune":
        tiles += [
            tile("trainable", human(next((p.value for p in r.params if p.key == "trainable parameters"), None)),
                 f"{pct(r.params_share, 2)} of the model" if r.params_share is not None else "", key="params"),
            tile("compute", human(r.examples_seen) + " ex",
                 f"{num(r.steps_done)} of {num(r.steps_planned)} steps · {duration(r.wall_s)}", key="compute")]
    else:  # a run another tool made: its files say how far it ran, not what it cost
        tiles.append(tile("steps", num(r.steps_done), f"of {num(r.steps_planned)} planned", key="compute"))
    if r.best.get("val/subset_accuracy") is not None:  # multi-label: what multi-intent users read
        b = r.best
        comp = (f"compound rows (2+ labels, n={num(b.get('val_compound/n'))}) {metric(b.get('val_compound/subset_accuracy'))}"
                if b.get("val_compound/subset_accuracy") is not None else "no compound rows in validation")
        tiles.append(tile("exact match (best step)", metric(b.get("val/subset_accuracy")),
                          f"{comp}<br>single rows {metric(b.get('val_single/subset_accuracy'))}<br>"
                          f"micro-F1 {metric(b.get('val/micro_f1'))} · samples-F1 {metric(b.get('val/samples_f1'))}",
                          key="multi"))
    weakest = r.classes.weakest(WEAKEST_TILE)
    if weakest:
        tiles.append(tile("weakest classes", esc(metric(weakest[0].recall)),
                          # a long label is cut with an ellipsis in the tile, the full name on hover
                          "<br>".join(f'<span class="clip" title="{esc(c.label)}">{esc(c.label)}</span> '
                                      f"<span class=muted>{metric(c.recall)}</span>" for c in weakest),
                          key="weakest"))
    notes = "".join(f'<div class="note">{esc(n)}</div>' for n in r.notes)
    return (f'<section class="card" id="summary"><h2>Summary</h2><p class="lede">{esc(r.reason or "")}</p>'
            f'<div class="tiles">{"".join(tiles)}</div>{notes}</section>')


def curves_note(r: RunReport) -> str:
    """The Curves section's line: what its train loss is. A loratune run scores a train subsample; another source's
    train loss is a line drawn from its training log (Curve.from_log) or, without one (a CSV, a callback record),
    the value recorded with each eval point (every CSV was told 'a line of the training loss as logged')."""
    if r.source == "loratune":
        return ("Every marker is an eval point. Train (eval subsample) is scored exactly like validation, so the gap "
                "between the two is the generalisation gap.")
    train = next((c for p in r.curves if p.id == "loss" for c in p.curves if c.key == "train/loss"), None)
    if train is None:
        return "Every marker is an eval point."
    if train.from_log:
        return ("Every marker is an eval point; the train loss is a line of the training loss as logged (each a mean "
                "over its logging window; a long log drawn as about one point per pixel), not a scored train "
                "subsample.")
    return ("Every marker is an eval point; the train loss is the value recorded with each eval point (the run has "
            "no per-step training log), not a scored train subsample.")


def render_run(r: RunReport) -> str:
    method = "full fine-tuning" if r.method == "full" else "method unknown" if r.method == "unknown" else "LoRA" + next(
        (f" r={p.value}" for p in r.params if p.key == "r"), "")
    meta = [r.model_name, method, r.dataset, f"{r.n_classes} classes" if r.n_classes else "",
            f"{r.n_val:,} val rows" if r.n_val else "", r.task.replace("_", "-")]
    header = (f'<header class="top"><div class="wrap"><div class="kicker">loratune · run report</div>'
              f'<h1>{esc(r.name)} {badge(r.status, STATUS_TONE.get(r.status, "info"))}</h1>'
              f'<div class="meta">{"".join(f"<span>{esc(x)}</span>" for x in meta if x and x != "?")}</div></div>'
              f'</header>')
    generative = r.open_generation  # no classes: the prompt set takes their place
    parts = [("summary", "Summary"), ("curves", "Curves"), ("diagnosis", "Diagnosis")]
    parts += [("prompts", "Prompt set")] if r.prompts is not None else []
    parts += [] if generative else [("classes", "Classes"), ("confusion", "Confusion"), ("pairs", "Confused pairs")]
    parts += [("extras", "Probe & robustness")] if r.probe is not None or r.robustness is not None else []
    nav = ('<nav class="toc"><div class="wrap">' + "".join(f'<a href="#{i}">{t}</a>' for i, t in
                                                          parts + [("params", "Parameters")]) + "</div></nav>")
    if r.curves:
        figs = [curve_figure(p, saved=r.saved_model, untrained=r.kept_untrained) for p in r.curves if p.id != "lr"]
        lr = next((p for p in r.curves if p.id == "lr"), None)
        lr_html = (f"<details><summary>Learning-rate schedule</summary>{curve_figure(lr, height=200)}</details>"
                   if lr else "")
        curves = section("curves", "Curves", curves_note(r), f'<div class="grid2">{"".join(figs)}</div>{lr_html}')
    else:
        curves = section("curves", "Curves", "", missing("no eval points yet"))
    classes = "" if generative else (classes_section(r.classes, r.metric, r.saved_model and r.classes.step is not None
                                                     and r.classes.step == r.best.get("step"))
                                     + confusion_section(r.confusion)
                                     + pairs_section(r))
    body = (header + nav + '<main class="wrap">' + run_summary(r) + curves + diagnosis_section(r.diagnosis)
            + prompts_section(r) + classes + extras_section(r) + params_section(r) + "</main>" + footer(r.path))
    return page(f"{r.name} · loratune run report", "run", body)


def render(report, *, link_base: str = "") -> str:
    """The HTML page. `link_base`: path from the HTML file to the study directory (links to trial
    directories are relative to it)."""
    if getattr(report, "kind", "") == "study":
        return render_study(report, link_base=link_base)
    return render_run(report)


def write_html(report, path: str | Path) -> Path:
    import os

    from loratune.store import write_atomic

    from loratune.errors import UserError

    p = Path(path)
    base = ""
    if getattr(report, "kind", "") == "study":
        rel = os.path.relpath(Path(report.path).resolve(), p.parent.resolve())
        base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
    html = render(report, link_base=base)
    try:  # a read-only or full disk, a file where the folder should be: the output's fault, said as such
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, html)
        p.chmod(0o644)  # a report is meant to be shared (the atomic write creates 0600)
    except OSError as exc:
        raise UserError(f"cannot write the report to '{p}' ({exc.strerror or exc})",
                        "give -o a writable path, e.g. -o /tmp/report.html") from None
    return p
