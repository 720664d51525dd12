"""Terminal view of diagnoses (rich). Plain data in, text out: nothing here decides anything."""

from __future__ import annotations

from typing import Sequence

from rich.console import Console
from rich.table import Table

from loratune.commands._common import console as make_console, heading, safe
from loratune.diagnose import MEASURES, Comparison, Diagnosis, Finding
from loratune.features import FEATURES, format_value
from loratune.rules import RULES, moves_text

_MARK = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]?[/]"}
_COLOR = {"high": "green", "medium": "yellow", "low": "red"}


def _f(d: Diagnosis, name: str) -> str:
    return format_value(FEATURES[name].unit, d.features.values.get(name))


def _finding(console: Console, f: Finding) -> None:
    color = _COLOR[f.confidence_label]
    tent = " tentative," if f.tentative else ""
    console.print(f"  [bold]{safe(f.rule_id)}[/] [dim]({f.knob_class})[/] - {safe(f.verdict)}")
    if f.route:
        console.print(f"    [bold]read:[/] {safe('; '.join(f.route))}")
    console.print(f"    confidence [{color}]{f.confidence:.2f} ({f.confidence_label}{tent})[/]")
    for e in f.evidence:
        if e.decisive:
            console.print(f"    {_MARK[e.passed]} {safe(e.text)}")
    others = sum(1 for e in f.evidence if not e.decisive)
    if others:
        console.print(f"    [dim]({others} clause(s) of the rule's other routes, not what made it fire: --json "
                      "lists every clause)[/]")
    if f.missing:
        console.print("    [yellow]missing:[/] " + safe("; ".join(f"{n} ({w})" for n, w in f.missing)))
    for note in f.notes:
        console.print(f"    [dim]{safe(note)}[/]")
    if f.caveat:
        console.print(f"    [yellow]caveat:[/] {safe(f.caveat)}")
    console.print(f"    [bold cyan]next move:[/] {safe(moves_text(f.rule_id, f.moves))}")


def _rule_features() -> set[str]:
    return {cl.feature for r in RULES if r.scope != "compare" for cl in r.when.leaves()}


def render_diagnosis(console: Console, d: Diagnosis) -> None:
    n_pts = int(d.features.values.get("n_eval_points") or 0)
    heading(console, f"[bold]{safe(d.run)}[/]", f"[dim]{d.source}, {n_pts} eval points, {_f(d, 'steps')} "
                     f"{d.step_unit}s[/]")  # the run's name whole, however long
    p = d.primary
    if p:
        console.print(f"verdict: [bold]{safe(p.rule_id)}[/]  next move: [bold cyan]{safe(moves_text(p.rule_id, p.moves))}[/]")
    else:
        console.print(f"verdict: [bold]inconclusive[/] ({safe(d.inconclusive_why)})")
    for line in d.curve_summary():
        console.print(f"  [dim]{safe(line)}[/]")
    if d.facts:
        console.print("  [dim]read from the run's files: " + safe("; ".join(
            f"{k} {_fact(v['value'])} ({v['source']})" for k, v in d.facts.items())) + "[/]")
    for f in d.active:
        _finding(console, f)
    sup = [f for f in d.findings if f.suppressed_by]
    if sup:
        console.print("  [dim]also matched, suppressed: " + safe(", ".join(
            f"{f.rule_id} (by {f.suppressed_by})" for f in sup)) + "[/]")
    if d.not_evaluated:
        by_why: dict[str, list[str]] = {}
        for n in d.not_evaluated:
            whys = list(dict.fromkeys(w for _, w in n.missing))
            by_why.setdefault("; ".join(whys), []).append(n.rule_id)
        console.print("  [yellow]not evaluated:[/]")
        for why, ids in by_why.items():
            console.print(f"    {safe(', '.join(ids))}: [dim]{safe(why)}[/]")
    used = _rule_features() - {f for n in d.not_evaluated for f, _ in n.missing}
    by_reason: dict[str, list[str]] = {}
    for name, why in d.features.missing.items():
        if name in used:
            by_reason.setdefault(why, []).append(name)
    if by_reason:
        console.print("  [yellow]missing signals[/] (lower the confidence of the rules that use them):")
        for why, names in by_reason.items():
            console.print(f"    {safe(', '.join(names))}: [dim]{safe(why)}[/]")
    advice = d.advice()
    if advice:
        console.print("  [yellow]to settle it next time, log:[/]")
        for a in advice:
            console.print(f"    {safe(a['signal'])} (for {safe(', '.join(a['rules']))}): {safe(a['how'])}")
    for note in d.notes:
        console.print(f"  [dim]note: {safe(note)}[/]")


def _fact(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def render_comparison(console: Console, c: Comparison) -> None:
    console.rule("[bold]comparison[/]  [dim]runs that differ in one knob[/]")
    if c.groups:
        t = Table(show_header=True, header_style="bold")
        lower = " (lower is better)" if MEASURES[c.measure] < 0 else ""
        # each run on a line of its own, folded where it is longer than the cell: the knob's value and the metric
        # are what the table compares (rich's default ellipsis cut them: `lrsmall-b77-1e-6=1e-0…`)
        for col in ("knob", f"runs (value: {c.measure}{lower})", "effect", "effect / noise"):
            t.add_column(col, overflow="fold")
        for g in c.groups:
            runs = "\n".join(f"{r}={v}: {m:.3f}" if m is not None else f"{r}={v}: ?" for r, v, m, _ in g.runs)
            eff = f"{g.effect:.3f}" if g.effect is not None else "?"
            # against the group's own noise, shown beside it (a group's noise is its own runs', not the pooled line's)
            ratio = (f"{en:.1f}" if (en := g.effect_noise()) is not None else "?") + \
                (f" (noise {g.noise:.3f})" if g.noise else "")
            t.add_row(g.knob + (f" ({g.note})" if g.note else ""), safe(runs), eff, ratio)
        console.print(t)
    pooled = str(c.features.details.get("noise_source"))
    own = any(g.noise_source and g.noise_source != pooled for g in c.groups)
    console.print(f"  [dim]noise: {'each group against its own runs (the table); all runs: ' if own else ''}"
                  f"{safe(pooled)}[/]")
    for f in c.active:
        _finding(console, f)
    if c.not_evaluated:
        console.print("  [yellow]not evaluated:[/]")
        for n in c.not_evaluated:
            console.print(f"    {safe(n.rule_id)}: " + safe("; ".join(f"{f} ({w})" for f, w in n.missing)))
    for note in c.notes:
        console.print(f"  [dim]note: {safe(note)}[/]")


def render(diagnoses: Sequence[Diagnosis], comparison: Comparison | None, console: Console | None = None) -> None:
    console = console or make_console(highlight=True)
    for d in diagnoses:
        render_diagnosis(console, d)
    if comparison is not None:
        render_comparison(console, comparison)
