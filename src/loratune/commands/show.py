"""`loratune show RUN|STUDY`: the essentials of `loratune report` in the terminal (for SSH sessions).

A run: the headline numbers, its eval points with sparklines, the diagnosis with evidence, the
weakest classes, the top confused pairs, the probe set and robustness probe and the parameters. A
study: the decision trail, the trials, the rank sweep, LoRA vs full fine-tuning and the final recommendation with its YAML.
Reads the same plain report data as the HTML report; draws nothing else.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from loratune.features import HUGE_VALUE, safe_mean


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("show", help="print the essentials of a run or a tuning study in the terminal",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="RUN|STUDY", help="run directory (loratune train) or study directory (loratune tune)")
    p.add_argument("--examples", action="store_true",
                   help="load the saved model to show example texts of the confused pairs (slower)")
    p.add_argument("--classes", type=_at_least_one, default=10, metavar="N",
                   help="how many of the weakest classes to list (1 or more)")
    p.set_defaults(func=run)


def _at_least_one(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of classes, 1 or more")
    return n


def run(args: argparse.Namespace) -> int:
    from loratune.commands._common import console
    from loratune.report import build_report

    report = build_report(args.path, examples=args.examples)
    con = console()
    if getattr(report, "kind", "") == "study":
        show_study(con, report)
    else:
        show_run(con, report, n_classes=args.classes)
    return 0


# ---------------------------------------------------------------------------------------------

SPARK = "▁▂▃▄▅▆▇█"
# eval-point rows `show` prints at most: a terminal's view of the essentials (a 20k-eval run printed 20,073 lines, its
# headline scrolled far out of sight); the rows are evenly spaced and keep the first, best and last points, and the
# trend sparklines below them draw every point
SHOW_EVAL_ROWS = 40


def spark(values: Sequence[float | None], width: int | None = None, offscale: bool = False) -> str:
    """One character per value (None: a blank); a series longer than `width` is drawn in `width` characters, each
    the mean of its even share of the values, the first and last characters the first and last values themselves:
    the whole run fits its cell (cut to the width, a curve that fell and rose again showed only its fall).
    `offscale` (a loss): the report's off-scale values (report.charts.offscale_points) are in no mean and set no
    scale, drawn as the top character, as the report draws them at its chart's top edge (one spike of 5000 in a
    decaying loss drew the rest all as the lowest character)."""
    values = list(values)
    off: set[int] = set()
    if offscale:
        from loratune.report.charts import Series, offscale_points

        at = [i for i, v in enumerate(values) if v is not None]
        off = {at[k] for k in (offscale_points([Series("", "", [(float(i), values[i]) for i in at])]) or [set()])[0]}
    high = set(off)  # the characters drawn as off scale
    if width is not None and len(values) > max(width, 2):
        width, n = max(width, 2), len(values)
        spans = [range(i * n // width, (i + 1) * n // width) for i in range(width)]
        buckets = [[values[j] for j in span if values[j] is not None and j not in off] for span in spans]
        # features.safe_mean: a sum of values near the largest float (an exploded loss, 1.7e308) overflowed to inf
        # and drew a NaN
        means: list[float | None] = [safe_mean(b) if b else None for b in buckets]
        high = {i for i, span in enumerate(spans) if off.intersection(span)}
        for i, j in ((0, 0), (width - 1, n - 1)):  # the first and last characters: those values themselves
            if values[j] is not None:
                means[i] = values[j]
                (high.add if j in off else high.discard)(i)
        values = means
    vals = [v for i, v in enumerate(values) if v is not None and i not in high]
    if not vals and not high:
        return ""
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 0.0)
    span = hi / 2 - lo / 2 or 1.0  # halved: the span of values near the largest float overflows no more than they do
    return "".join(SPARK[-1] if i in high else SPARK[min(7, int((v / 2 - lo / 2) / span * 7.999))] if v is not None
                   else " " for i, v in enumerate(values))


def _rows_shown(steps: Sequence[float], best: Any, cap: int = SHOW_EVAL_ROWS) -> list[float]:
    """The steps whose eval points get a row: all of them up to `cap`, else `cap` - 1 evenly spaced ones (the first
    and last among them) and the best."""
    if len(steps) <= cap:
        return list(steps)
    keep = {round(i * (len(steps) - 1) / (cap - 2)) for i in range(cap - 1)}
    return [s for i, s in enumerate(steps) if i in keep or (best is not None and s == best)]


def f3(v: Any) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "–"
    return f"{v:.3g}" if abs(v) >= HUGE_VALUE else f"{v:.3f}"  # an exploded loss: 3.4e+38, not 39 digits


def _h(n: Any) -> str:
    from loratune.commands._common import human

    return human(n) if isinstance(n, (int, float)) else "–"


def show_run(con, r, n_classes: int = 10) -> None:
    from loratune.commands._common import heading, safe
    from loratune.rules import moves_text
    from rich.table import Table

    tone = {"completed": "green", "running": "cyan", "interrupted": "yellow"}.get(r.status, "red")
    kind = "causal-lm" if r.open_generation else f"{r.n_classes or '?'} classes"
    title = f"[bold]{safe(r.name)}[/]  [{tone}]{safe(r.status)}[/]"
    details = f"[dim]{safe(r.model_name)} · {safe(r.method)} · {safe(r.dataset)} · {kind}[/]"
    heading(con, title, details)  # the name whole, however long
    m, o = r.metric, r.objective
    scores = f"final {f3(r.final.get(m))} · start {f3(r.start_metric)}"
    unsaved = f" ({_saved_elsewhere(r)})" if r.source == "loratune" and not r.saved_model and r.best else ""
    head = (f"best {safe(m)} [bold]{f3(r.best.get(m))}[/] at step {r.best.get('step', '?')}{unsaved} · {scores}"
            if not o
            else f"{'best' if unsaved else 'saved model: best'} {safe(o)} [bold]{f3(r.best.get(o))}[/] at step "
            f"{r.best.get('step', '?')}{unsaved} · "
            f"{safe(m)} {f3(r.best.get(m))} there, {scores.replace(' · ', ', ')}")
    done = "?" if r.steps_done is None else r.steps_done  # 0: a run that stopped before its first step, not unknown
    con.print(head + f" · {_h(r.examples_seen)} examples in {done}/{r.steps_planned or '?'} steps"
              + (f" · trainable {r.params_share:.2%} of the model" if r.params_share is not None else ""))
    b = r.best
    if b.get("val/subset_accuracy") is not None:  # multi-label: exact match, compound (2+ labels) and single rows
        con.print(f"exact match {f3(b.get('val/subset_accuracy'))} · compound rows "
                  f"{f3(b.get('val_compound/subset_accuracy'))} (n={b.get('val_compound/n', 0)}) · single rows "
                  f"{f3(b.get('val_single/subset_accuracy'))} · micro-F1 {f3(b.get('val/micro_f1'))} · samples-F1 "
                  f"{f3(b.get('val/samples_f1'))} (best step)")
    if r.reason:
        con.print(f"[dim]{safe(str(r.reason))}[/]")
    for n in r.notes:
        con.print(f"[yellow]note:[/] {safe(n)}")

    # curves ---------------------------------------------------------------------------------
    series = {c.key: dict(c.points) for p in r.curves for c in p.curves}
    steps = sorted({s for pts in series.values() for s in pts})
    if steps:
        mm = m.split("/", 1)[1]
        cols = [(k, lab) for k, lab in (("train/loss", "train loss"), ("train_eval/loss", "train-eval loss"),
                                        ("val/loss", "val loss"), (f"train_eval/{mm}", f"train-eval {mm}"),
                                        (m, f"val {mm}")) if k in series]
        t = Table(title="eval points", title_justify="left", header_style="bold", box=None, pad_edge=False)
        t.add_column("step", justify="right")
        for _, lab in cols:
            t.add_column(lab, justify="right")
        best = r.best.get("step")
        for s in _rows_shown(steps, best):
            row = [f"{s:g}" + (" *" if best is not None and s == best else "")]
            row += [f3(series[k].get(s)) for k, _ in cols]
            t.add_row(*row, style="bold" if s == best else None)
        # the trend cells share the console's width after the step column (and its cell of padding): an even share
        # each, padding (a cell each side, the last column's right edge none) within it. The share is the level a
        # too-wide table is cut to (rich narrows its widest columns, the long headers "train-eval loss", down to
        # the others), whole cells: drawn one wider, a column the rounding cut by one lost its trend's end to "…"
        level = (con.width - 1 - max(len(c) for c in ("trend", *t.columns[0].cells))) // len(cols)
        t.add_row("trend", *[spark([series[k].get(s) for s in steps], level - (1 if i == len(cols) - 1 else 2),
                                   offscale=k.endswith("/loss")) for i, (k, _) in enumerate(cols)], style="cyan")
        con.print(t)
        if len(steps) > SHOW_EVAL_ROWS:
            where = Path(r.path, "history.jsonl") if r.source == "loratune" else r.path
            kept = "the first, best and last" if best in steps else "the first and last"  # a best off the evals: no row
            con.print(f"[dim]{len(_rows_shown(steps, best))} of {len(steps)} eval points shown (evenly spaced, with "
                      f"{kept}); all in {safe(str(where))}[/]")
        con.print("[dim]* best val step" + (" (the saved model)" if r.saved_model else
                                             f" ({_saved_elsewhere(r)})" if r.source == "loratune" else "") + "[/]")

    # diagnosis ------------------------------------------------------------------------------
    d = r.diagnosis
    con.rule("[bold]diagnosis[/]", align="left")
    if d.error:
        con.print(f"[yellow]no diagnosis:[/] {safe(d.error)}")
    else:
        moves = moves_text(d.verdict, d.moves)
        con.print(f"verdict: [bold]{safe(d.verdict)}[/]  next move: [bold cyan]{safe(moves)}[/]")
        if d.thresholds_note:
            con.print(f"  [yellow]{safe(d.thresholds_note)}[/]")
        for line in d.summary:
            con.print(f"  [dim]{safe(line)}[/]")
        for f in d.findings:
            mark = {"high": "green", "medium": "yellow", "low": "red"}[f.confidence_label]
            con.print(f"  [bold]{safe(f.rule_id)}[/] [dim]({safe(f.knob_class)})[/] {safe(f.verdict)} "
                      f"[{mark}]confidence {f.confidence:.2f}{' tentative' if f.tentative else ''}[/]")
            if f.route:
                con.print(f"    [bold]read:[/] {safe('; '.join(f.route))}")
            for e in f.evidence:
                if e.decisive:  # the route that made the rule fire; the report lists the other routes' clauses
                    sym = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]?[/]"}[e.passed]
                    con.print(f"    {sym} {safe(e.text)}")
            if f.caveat:
                con.print(f"    [yellow]caveat:[/] {safe(f.caveat)}")
            con.print(f"    [cyan]→ {safe(moves_text(f.rule_id, f.moves))}[/]")
        if d.suppressed:
            con.print("  [dim]suppressed: " + safe(", ".join(f"{f.rule_id} (by {f.suppressed_by})"
                                                          for f in d.suppressed)) + "[/]")

    if r.open_generation:  # the prompt set in place of classes
        _show_prompts(con, r)
    else:
        _show_classes(con, r, n_classes)
    _show_extras(con, r)

    # params ---------------------------------------------------------------------------------
    con.rule("[bold]parameters[/]", align="left")
    groups: dict[str, list] = {}
    for p in r.params:
        groups.setdefault(p.group, []).append(p)
    for g, rows in groups.items():
        items = []
        for p in rows:
            v = p.value
            if isinstance(v, (list, tuple)):
                v = "[" + ", ".join(map(str, v)) + "]"
            elif isinstance(v, int) and not isinstance(v, bool) and v >= 10000:
                v = _h(v)
            elif isinstance(v, float):
                v = f"{v:g}"
            items.append(f"{p.key}={v}")
        con.print(f"[bold]{g}[/]: " + safe("  ".join(items)))


def _show_extras(con, r) -> None:
    """The probe set at the saved model's step and the robustness probe of the saved model (run.json robustness),
    when the run scored them."""
    from loratune.commands._common import safe
    from rich.table import Table

    if r.probe is None and r.robustness is None:
        return
    con.rule("[bold]probe set and robustness[/] [dim](the saved model)[/]", align="left")
    if r.probe is not None:
        con.print(f"probe set: accuracy [bold]{f3(r.probe.accuracy)}[/] on {r.probe.n if r.probe.n is not None else '?'}"
                  f" texts at step {r.probe.step:g}")
    rb = r.robustness
    if rb is None:
        return
    if rb.missing:
        con.print(f"[dim]robustness {safe(rb.missing)}[/]")
        return
    con.print(f"robustness: clean accuracy [bold]{f3(rb.clean_accuracy)}[/] {rb.rows_text}")
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("perturbation", "accuracy", "drop", "texts changed"):
        t.add_column(col, justify="left" if col == "perturbation" else "right")
    for kind, acc, drop, changed in rb.kinds:
        t.add_row(safe(kind), f3(acc), f3(drop), "–" if changed is None else f"{changed:.0%}")
    con.print(t)


def _show_classes(con, r, n_classes: int) -> None:
    """Per-class recall (worst first) and the top confused pairs of a classifier run."""
    from loratune.commands._common import label_shown, safe
    from loratune.listing import LABEL_JOIN
    from rich.table import Table

    # classes --------------------------------------------------------------------------------
    c = r.classes
    con.rule("[bold]per-class recall[/] [dim](worst first)[/]", align="left")
    if not c.rows:
        con.print(f"[dim]{safe(c.missing or 'no per-class metrics')}[/]")
    else:
        if c.long_tail:
            con.print(f"long tail: head classes have {c.head_tail_ratio:.1f}x the train rows of tail classes; "
                      f"mean recall tail {f3(c.tail_recall)} vs head {f3(c.head_recall)}")
        t = Table(header_style="bold", box=None, pad_edge=False)
        for col, j in (("class", "left"), ("train", "right"), ("val", "right"), ("recall", "right"),
                       ("F1", "right"), ("train recall", "right"), ("", "left")):
            t.add_column(col, justify=j)
        for row in c.weakest(n_classes):  # the report's rule (ClassTable.ranked): classes with val rows
            t.add_row(label_shown(row.label), str(row.train_count or "–"), str(row.val_support or "–"),
                      f3(row.recall), f3(row.f1), f3(row.train_recall), "[magenta]tail[/]" if row.tail else "")
        con.print(t)
        if c.unranked:
            names = LABEL_JOIN.join(label_shown(row.label) for row in c.unranked[:8])
            more = LABEL_JOIN + "…" if len(c.unranked) > 8 else ""
            con.print(f"[dim]{len(c.unranked)} class(es) without val rows (no recall, not ranked): {names}{more}[/]")
        recalls = [row.recall for row in c.rows if row.recall is not None]
        if recalls:
            con.print(f"[dim]{len(recalls)} classes · recall min {min(recalls):.3f} · mean "
                      f"{sum(recalls) / len(recalls):.3f} · {sum(x < 0.5 for x in recalls)} below 0.5[/]")

    # confusion ------------------------------------------------------------------------------
    con.rule("[bold]top confused pairs[/] [dim](true → predicted)[/]", align="left")
    from loratune.report.model import outside_matrix_note, pairs_missing_why

    if r.confusion.missing is None and r.confusion.total:
        con.print(f"[dim]{r.confusion.errors} errors in {r.confusion.total} val rows"
                  + ("; most confused classes: " + LABEL_JOIN.join(map(label_shown, r.confusion.focus[:8]))
                     if r.confusion.cell_errors else "") + "[/]")
        note = outside_matrix_note(r.confusion)
        if note and r.pairs:  # without pairs, pairs_missing_why says it
            con.print(f"[dim]{safe(note)}[/]")
    if not r.pairs:
        con.print(f"[dim]{safe(pairs_missing_why(r))}[/]")
    for p in r.pairs:
        rate = f" ({p.rate:.0%} of {label_shown(p.true)})" if p.rate is not None else ""
        rev = f" [dim]· reverse {p.reverse}[/]" if p.reverse else ""
        con.print(f"  {p.count:>3}  [bold]{label_shown(p.true)}[/] → {label_shown(p.pred)}{rate}{rev}")
        for text in (p.examples or ())[:2]:
            con.print(f"       [dim]“{safe(text)}”[/]")
    if r.examples_note and r.pairs:
        con.print(f"[dim]{safe(r.examples_note)}[/]")


def _show_prompts(con, r, rows: int = 2, width: int = 160) -> None:
    """A causal-lm run's prompt set: the scores at the last generation and its first prompts' outputs."""
    from loratune.commands._common import safe

    con.rule("[bold]prompt set[/] [dim](generations.jsonl)[/]", align="left")
    ps = r.prompts
    if ps is None or not ps.rows:
        con.print(f"[dim]{safe((ps.missing if ps else None) or 'no prompt set: data.prompt_set names one')}[/]")
        return
    scores = " · ".join(f"{name} {f3(v)}" for name, v in ps.score_items())
    con.print(f"at step {ps.step:g}: {safe(scores)}")

    def clip(text: str | None) -> str:
        text = " ".join((text or "–").split())
        return safe(text if len(text) <= width else text[:width] + "…")

    for g in dict.fromkeys(x.group for x in ps.rows):
        for x in [x for x in ps.rows if x.group == g][:rows]:
            con.print(f"  [bold]{safe(g)}[/] {clip(x.prompt)}")
            con.print(f"    [dim]reference:[/] {clip(x.reference)}")
            con.print(f"    [dim]step 0:[/]    {clip(x.before)}")
            con.print(f"    [dim]step {ps.step:g}:[/] {clip(x.after)}")


def show_study(con, s) -> None:
    from loratune.report.study import show_study as _show

    _show(con, s)


def _saved_elsewhere(r) -> str:
    """What a run whose best step's model is not the saved one saved: a run killed or interrupted between a best
    point and its save keeps an earlier step's model, or none (RunReport.saved_step)."""
    return "no model saved" if r.saved_step is None else f"not saved; the saved model is step {r.saved_step:g}'s"
