"""`loratune rules`: print the diagnosis rule table, its thresholds and (with --features) the feature catalogue."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rules", help="print the diagnosis rule table and its thresholds",
                              description=__doc__)
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--thresholds", metavar="FILE.yaml", help="show the table with these threshold overrides")
    p.add_argument("--features", action="store_true", help="also print the feature catalogue")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from loratune.features import COMPARE_FEATURES, FEATURES
    from loratune.rules import RULES, THRESHOLDS, describe, load_thresholds, rule_to_data

    values = load_thresholds(args.thresholds)
    if args.json:
        out = {
            "rules": [rule_to_data(r, values) for r in RULES],
            "thresholds": {n: {"value": values[n], "default": t.value, "unit": t.unit, "doc": t.doc}
                           for n, t in THRESHOLDS.items()},
        }
        if args.features:
            out["features"] = {n: {"group": s.group, "unit": s.unit, "doc": s.doc}
                               for cat in (FEATURES, COMPARE_FEATURES) for n, s in cat.items()}
        print(json.dumps(out, indent=2))
        return 0

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.rule("[bold]diagnosis rules[/]  [dim]every row is evaluated; a finding suppresses the ids it lists[/]")
    for r in RULES:
        console.print(f"[bold]{r.id}[/]  [dim]scope {r.scope}, priority {r.priority}, knob {r.knob_class}, "
                      f"base confidence {r.confidence:g}[/]")
        console.print("  when " + escape(describe(r.when, values, indent=1).lstrip()))
        console.print(f"  verdict: {escape(r.verdict)}")
        console.print(f"  [cyan]moves:[/] {escape(', '.join(r.moves))}")
        if r.suppresses:
            console.print(f"  [dim]suppresses: {escape(', '.join(r.suppresses))}[/]")
        if r.caveat:
            console.print(f"  [yellow]caveat:[/] {escape(r.caveat)}")
        console.print(f"  [dim]from: {escape(r.source)}[/]")
    th = Table(title="thresholds (override with --thresholds FILE.yaml: `name: value`)", header_style="bold")
    for col in ("name", "value", "default", "meaning"):
        th.add_column(col, overflow="fold")
    for n, spec in THRESHOLDS.items():
        mark = "" if values[n] == spec.value else " *"
        th.add_row(n, f"{values[n]:g}{mark}", f"{spec.value:g}", escape(spec.doc))
    console.print(th)
    if args.features:
        ft = Table(title="features", header_style="bold")
        for col in ("name", "group", "unit", "definition"):
            ft.add_column(col, overflow="fold")
        for cat in (FEATURES, COMPARE_FEATURES):
            for n, s in cat.items():
                ft.add_row(n, s.group, s.unit, escape(s.doc))
        console.print(ft)
    return 0
