"""`loratune rules`: print the diagnosis rule table and its thresholds, then the assess rule tables (start config
and data findings) and theirs; with --features the feature and assess fact catalogues."""

from __future__ import annotations

import argparse

from loratune.commands._common import add_thresholds_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rules", help="print the diagnosis and assess rule tables and their thresholds",
                              description=__doc__)
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    add_thresholds_arg(p, help="show the table with these threshold overrides")
    p.add_argument("--features", action="store_true", help="also print the feature and assess fact catalogues")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from loratune.assess import FACTS, rule_catalog
    from loratune.features import COMPARE_FEATURES, FEATURES
    from loratune.decide import lora_vs_full_catalog
    from loratune.moves import MOVE_CONSTANTS, move_catalog
    from loratune.assess import AssessThresholds
    from loratune.decide import DecideThresholds
    from loratune.rules import LORA_RANGE_LR_THRESHOLDS, NO_MOVE_LR_HIGH, RULES, THRESHOLDS, describe, moves_text, \
        rule_to_data, threshold_text, thresholds_for_method
    from loratune.thresholds import load_threshold_tables

    tables = load_threshold_tables(args.thresholds)  # every table's names (assess, LoRA vs full too)
    values = tables["diagnosis"]
    from loratune.assess.sft import SFT_FACTS, SHARED_RULES, sft_rule_catalog

    # the classifier's tables and the causal-lm assessment's own rows (its start rows, its findings, its facts)
    assess_catalog = rule_catalog(AssessThresholds(**tables["assess"])) + sft_rule_catalog()
    assess_facts = {**FACTS, **SFT_FACTS}
    lvf_catalog = lora_vs_full_catalog(DecideThresholds(**tables["lora_vs_full"]))
    if args.json:
        out = {
            "rules": [rule_to_data(r, values) for r in RULES],
            "thresholds": {n: {"value": values[n], "default": t.value, "unit": t.unit, "doc": t.doc,
                               # ...and as a full fine-tune reads it (thresholds_for_method)
                               **({"full_value": thresholds_for_method(values, "full")[n]}
                                  if n in LORA_RANGE_LR_THRESHOLDS else {})}
                           for n, t in THRESHOLDS.items()},
        }
        out["assess"] = assess_catalog
        out["lora_vs_full"] = lvf_catalog
        out["moves"] = move_catalog()
        out["move_constants"] = [{"name": n, "value": v, "doc": d, "overridable": False} for n, v, d in MOVE_CONSTANTS]
        if args.features:
            out["features"] = {n: {"group": s.group, "unit": s.unit, "doc": s.doc}
                               for cat in (FEATURES, COMPARE_FEATURES) for n, s in cat.items()}
            out["assess_facts"] = {n: {"unit": f.unit, "meaning": f.meaning} for n, f in assess_facts.items()}
        from loratune.commands._common import print_json

        print_json(out)
        return 0

    from rich.markup import escape
    from rich.table import Table

    from loratune.listing import console as make_console

    console = make_console(highlight=True)
    console.rule("[bold]diagnosis rules[/]  [dim]every row is evaluated; a finding suppresses the ids it lists[/]")
    for r in RULES:
        console.print(f"[bold]{r.id}[/]  [dim]scope {r.scope}, priority {r.priority}, knob {r.knob_class}, "
                      f"base confidence {r.confidence:g}[/]")
        console.print("  when " + escape(describe(r.when, values, indent=1).lstrip()))
        console.print(f"  verdict: {escape(r.verdict)}")
        console.print(f"  [cyan]moves:[/] {escape(', '.join(r.moves))}")
        # a full fine-tune's moves where they differ (Rule.moves_for): inside its lr range, and at or above its top
        high = r.moves_for("full", lr_high=True)
        if r.moves_for("full") != r.moves or r.full_verdict or high != r.moves_for("full"):
            console.print(f"  [cyan]full fine-tune moves:[/] {escape(moves_text(r.id, r.moves_for('full')))}"
                          + (f"; verdict: {escape(r.full_verdict)}" if r.full_verdict else ""))
        if high != r.moves_for("full"):
            console.print(f"  [cyan]full fine-tune moves at or above high_lr_min "
                          f"({escape(threshold_text('high_lr_min', values))}):[/] "
                          f"{escape(', '.join(high) or NO_MOVE_LR_HIGH)}")
        if r.suppresses:
            console.print(f"  [dim]suppresses: {escape(', '.join(r.suppresses))}[/]")
        if r.caveat:
            console.print(f"  [yellow]caveat:[/] {escape(r.caveat)}")
        if r.caveat_for("full") != r.caveat:  # Rule.caveat_for: its own full_caveat, or without PAIR_CAVEAT
            console.print(f"  [yellow]caveat (full fine-tune):[/] {escape(r.caveat_for('full') or 'none')}")
        console.print(f"  [dim]from: {escape(r.source)}[/]")
    th = Table(title="thresholds (override with --thresholds FILE.yaml: `name: value`)", header_style="bold")
    for col in ("name", "value", "default", "meaning"):
        th.add_column(col, overflow="fold")
    for n, spec in THRESHOLDS.items():
        mark = "" if values[n] == spec.value else " *"
        shown = threshold_text(n, values) if n in LORA_RANGE_LR_THRESHOLDS else f"{values[n]:g}"  # and a full FT's
        th.add_row(n, f"{shown}{mark}", f"{spec.value:g}", escape(spec.doc))
    console.print(th)
    if args.features:
        ft = Table(title="features", header_style="bold")
        for col in ("name", "group", "unit", "definition"):
            ft.add_column(col, overflow="fold")
        for cat in (FEATURES, COMPARE_FEATURES):
            for n, s in cat.items():
                ft.add_row(n, s.group, s.unit, escape(s.doc))
        console.print(ft)
    _print_assess(console, assess_catalog, assess_facts if args.features else None, SHARED_RULES)
    lv = Table(title="LoRA vs full fine-tuning (protocol 6; `loratune tune`'s last stage; * overridden, "
                     "fixed: not in a --thresholds file)", header_style="bold")
    for col in ("name", "value", "meaning"):
        lv.add_column(col, overflow="fold")
    for row in lvf_catalog:
        mark = " *" if row["value"] != row["default"] else "" if row["overridable"] else " (fixed)"
        lv.add_row(row["name"], f"{row['value']:.4g}{mark}", escape(row["doc"]))
    console.print(lv)
    mv = Table(title="moves (what a finding prescribes and what tune applies)", header_style="bold")
    for col in ("id", "text", "knob", "role", "what it does"):
        mv.add_column(col, overflow="fold")
    for m in move_catalog():
        mv.add_row(m["id"], escape(m["text"]), m["knob"] or "–", m["role"], escape(m["doc"]))
    console.print(mv)
    mc = Table(title="the numbers inside the moves (fixed: not in a --thresholds file)", header_style="bold")
    for col in ("name", "value", "meaning"):
        mc.add_column(col, overflow="fold")
    for n, v, d in MOVE_CONSTANTS:
        mc.add_row(n, str(v), escape(d))
    console.print(mc)
    return 0


def _print_assess(console, rows: list[dict], facts: dict | None, shared: tuple[str, ...] = ()) -> None:
    """The assess tables (`loratune assess`): start-config rows, data findings, the causal-lm assessment's own rows
    (`shared`: the classifier's start rows it takes as they are), their thresholds, facts."""
    from rich.markup import escape
    from rich.table import Table

    console.rule("[bold]assess rules[/]  [dim]phase 0: every row is evaluated over the named facts[/]")
    st = Table(title="start config (one row per key; the first band that holds gives the value)", header_style="bold")
    st.add_column("id", no_wrap=True)
    for col in ("key", "value from", "reason"):
        st.add_column(col, overflow="fold")
    for r in (r for r in rows if r["table"] == "assess-start"):
        st.add_row(r["id"], r["key"], escape(r["when"]), escape(r["reason"]))
    console.print(st)
    ft = Table(title="data findings", header_style="bold")
    ft.add_column("id", no_wrap=True)
    for col in ("severity", "when", "message"):
        ft.add_column(col, overflow="fold")
    for r in (r for r in rows if r["table"] == "assess-finding"):
        ft.add_row(r["id"], r["severity"], escape(r["when"]), escape(r["message"]))
    console.print(ft)
    for table, title in (("assess-start-sft", "causal-lm start config: these rows, and the classifier's "
                          + ", ".join(shared)),
                         ("assess-finding-sft", "causal-lm data findings besides the classifier's consistency rows")):
        sft = Table(title=title, header_style="bold")
        sft.add_column("id", no_wrap=True)
        for col in ("key or severity", "value from / when", "reason or message"):
            sft.add_column(col, overflow="fold")
        for r in (r for r in rows if r["table"] == table):
            sft.add_row(r["id"], r.get("key", r.get("severity", "")), escape(r["when"]),
                        escape(r.get("reason", r.get("message", ""))))
        console.print(sft)
    bt = Table(title="band tables the start rows cite by name (the first band that holds gives the value)",
               header_style="bold")
    for col in ("name", "bands"):
        bt.add_column(col, overflow="fold")
    for r in (r for r in rows if r["table"] == "assess-bands"):
        bt.add_row(r["id"], escape(r["when"]))
    console.print(bt)
    tt = Table(title="assess thresholds (t.name above; override with --thresholds FILE.yaml: `name: value`)",
               header_style="bold")
    for col in ("name", "value", "default"):
        tt.add_column(col)
    for r in (r for r in rows if r["table"] == "assess-threshold"):
        mark = " *" if r["value"] != r["default"] else ""
        tt.add_row(r["id"], f"{r['value']:g}{mark}", f"{r['default']:g}")
    console.print(tt)
    if facts:
        fa = Table(title="assess facts", header_style="bold")
        for col in ("name", "unit", "meaning"):
            fa.add_column(col, overflow="fold")
        for n, f in facts.items():
            fa.add_row(n, f.unit, escape(f.meaning))
        console.print(fa)
