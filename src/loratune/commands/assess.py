"""`loratune assess`: profile the task and the data before training, and propose the start config."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from loratune.commands._common import add_config_args, add_thresholds_arg, console, load_cfg, piped, print_json, safe
from loratune.errors import UserError
from loratune.store import write_atomic
from loratune.listing import LABEL_JOIN, label_text

_SEVERITY_STYLE = {"error": "bold red", "warn": "yellow", "info": "cyan"}


def register(sub) -> None:
    p = sub.add_parser(
        "assess", help="profile the task and the data (phase 0) and propose a start config",
        description="Measure shape, label consistency, noise, train/val shift, token lengths and a cheap "
                    "frozen-encoder probe; propose the start config with the rule behind each value.")
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the assessment as JSON on stdout (no summary)")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the difficulty probe (no model weights are loaded; the tokenizer still is)")
    add_thresholds_arg(p, help="override assess thresholds (`name: value` lines; names from `loratune rules`)")
    p.add_argument("--out", metavar="FILE", help="also write the JSON to FILE")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="probe embedding cache (default: $LORATUNE_CACHE_DIR or ~/.cache/loratune; `none`: off)")
    p.set_defaults(func=run)


def run(args) -> int:
    from loratune.assess import run_assessment
    from loratune.rules import read_threshold_file
    from loratune.thresholds import assess_thresholds

    cfg = load_cfg(args)  # validated before any data or model loads
    # read and checked before any data or model loads too (a typo costs no probe; api.assess's thresholds= alike)
    thresholds = assess_thresholds(read_threshold_file(args.thresholds))
    if args.out:  # before any stat of it (is_dir() raises on a name over NAME_MAX bytes)
        from loratune.errors import check_name_length

        check_name_length(args.out, "--out", "give a shorter name, e.g. --out assessment.json", last="file")
    if args.out and Path(args.out).is_dir():  # said before the assessment runs, not after it
        raise UserError(f"--out {args.out} is a folder", "give --out a file name, e.g. --out assessment.json")
    if args.out:  # as report -o: never a run's record, the training data or any other file but an assessment's JSON
        from loratune.config import LOCAL_PATH_KEYS
        from loratune.store import refuse_to_replace

        inputs = [getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in LOCAL_PATH_KEYS]
        refuse_to_replace(Path(args.out), "--out", "an assessment", (".json",),
                          inputs=[*inputs, args.config, args.thresholds], example="assessment.json")
    err = console(stderr=True)
    progress = (lambda msg: None) if args.json else (lambda msg: err.print(f"[dim]{safe(msg)}...[/]"))
    if cfg.model.task == "causal-lm":  # phase 0 of a generative run: token shape and the start config
        from loratune.api import prepare
        from loratune.assess.sft import assess_sft

        data = assess_sft(cfg, prepare(cfg), progress=progress, thresholds=thresholds)
        return _emit(args, data, lambda out: print_sft_summary(out, data, _inputs(args)))
    a = run_assessment(cfg, probe=not args.no_probe, cache_dir=args.cache_dir, progress=progress,
                       thresholds=thresholds)
    return _emit(args, a.to_dict(), lambda out: print_summary(out, a, _inputs(args)))


def _emit(args, data: dict, summary) -> int:
    if args.out:
        out = Path(args.out)
        try:
            write_atomic(out, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write the assessment to '{out}' ({exc.strerror or exc})",
                            "give --out a writable file path") from None
    if args.json:
        print_json(data)
    else:
        summary(console(soft_wrap=piped()))  # a listing's line whole when piped, as predict's and evaluate's
        if args.out:
            console().print(f"written: {safe(args.out)}")
    return 0


def _override_arg(key: str, value) -> str:
    if isinstance(value, (list, tuple)):
        return f"{key.split('.', 1)[1]}=[{','.join(map(str, value))}]"
    if isinstance(value, float):
        return f"{key.split('.', 1)[1]}={value:g}"
    return f"{key.split('.', 1)[1]}={value}"


def _inputs(args) -> tuple[str, dict[str, str]]:
    """What the user gave `assess`, for the `start with:` command: -c FILE and --data DIR as typed, and their
    key=value overrides by resolved key (the proposal's own keys replace theirs)."""
    import shlex

    from loratune.config import resolve_key
    from loratune.listing import shell_path

    head = " ".join(x for x in ((f"-c {shell_path(args.config)}" if args.config else ""),
                                (f"--data {shell_path(args.data)}" if getattr(args, "data", None) else "")) if x)
    given: dict[str, str] = {}
    for item in args.overrides or ():
        key, _, _ = item.partition("=")
        try:
            given[resolve_key(key.strip())] = shlex.quote(item)  # pasted, "dataset_name=my data" was two words
        except Exception:  # (load_cfg already refused an unknown key)
            continue
    return head, given


def pair_counts(p) -> str:
    """A label pair's conflicts, '2 exact, 1 near'; a record written before they were counted apart: their sum."""
    return ", ".join(f"{n} {kind}" for n, kind in ((p.exact, "exact"), (p.near, "near")) if n) or str(p.count)


def print_summary(out, a, inputs: tuple[str, dict[str, str]] = ("", {})) -> None:
    from rich import box
    from rich.table import Table

    from loratune.assess.stats import measured_se

    kind = "multi" if a.multi_label else "single"
    rate = f" ({a.facts.get('multi_label_rate', 0):.1%} of train rows carry several)" if a.multi_label else ""
    out.print(f"[bold]assess[/] {safe(a.dataset)} with {safe(a.model)}: {kind}-label{rate}, "
              f"{len(a.labels)} classes")
    for note in a.notes:
        out.print(f"[yellow]note:[/] {safe(note)}")

    t = Table(title="splits (per class: rows of the smallest/median/largest class; tail: classes under "
                    f"{a.thresholds.long_tail_count} rows; tokens: p50/p99/max; trunc: share over model.max_length)",
              title_justify="left")
    rows = []
    for s in a.splits:
        tok = f"{s.tokens.p50:.0f}/{s.tokens.p99:.0f}/{s.tokens.max}" if s.tokens else "-"
        trunc = f"{s.truncated_share:.1%}" if s.truncated_share is not None else "-"
        tail = str(len(s.long_tail_classes)) if s.name == "train" else ""
        rows.append((s.name, str(s.rows), str(s.classes), f"{s.count_min}/{s.count_median:g}/{s.count_max}", tail,
                     f"{s.imbalance_ratio:.1f}", tok, trunc))
    # no vertical rules, one space between columns: the table fits 80 columns (74 with 4-digit counts; no_wrap cut
    # "100.0%" to "100.…" and "per class" to "per cla…" at 80). Below that a number is never folded (a fold of
    # "114/162/162" read "114/16" on its line): it is cut with an ellipsis, which says so
    t.box, t.show_edge, t.pad_edge, t.collapse_padding = box.SIMPLE_HEAD, False, False, True
    for col in ("split", "rows", "classes", "per class", "tail", "max/min", "tokens", "trunc"):
        t.add_column(col, justify="left" if col == "split" else "right", no_wrap=col != "split",
                     overflow="fold" if col == "split" else "ellipsis")
    for r in rows:
        t.add_row(*r)
    out.print(t)

    t = Table(title="findings", title_justify="left", show_lines=False)
    t.add_column("")
    t.add_column("rule")
    t.add_column("finding", overflow="fold")
    for f in a.findings:
        t.add_row(f"[{_SEVERITY_STYLE.get(f.severity, '')}]{f.severity}[/]", f.id, safe(f.message))
    out.print(t)
    if a.conflicts.pairs:
        out.print(safe("  conflicting label pairs: " + LABEL_JOIN.join(
            # label sets, named by the rule; the pairs of exact conflicts first (the error names the top one)
            f"{p.a} / {p.b} ({pair_counts(p)})" for p in a.conflicts.exact_first()[:5])))
    for ex in a.conflicts.examples[:4]:
        rows = "  vs  ".join(f"[{'+'.join(map(label_text, r.labels))}] {r.text!r} ({r.split})" for r in ex.rows)
        out.print(safe(f"  {ex.kind} conflict ({ex.similarity:.2f}): {rows}"))

    p = a.probe
    if p is not None:
        acc = f", accuracy {p.accuracy:.3f}" if p.accuracy is not None else ""
        # a bootstrap SE of 0 measured nothing ("± 0.000" on 2 rows while val-resolution used 0.306)
        se = f"± {p.macro_f1_se:.3f}" if measured_se(p.macro_f1_se) is not None else "SE n/a"
        out.print(f"[bold]probe[/] ({p.method}): val macro-F1 {p.macro_f1:.3f} {se}{acc} "
                  f"on {p.val_rows} rows{' (cached embeddings)' if p.cached else ''}")
        for note in p.notes:  # (--json had them; the text output dropped them: a subset fit read as the full data)
            out.print(f"  [yellow]note:[/] {safe(note)}")
        if p.confused_pairs:
            out.print(safe("  pairs to watch: " + LABEL_JOIN.join(
                f"{label_text(c.true)} -> {label_text(c.pred)} ({c.count})" for c in p.confused_pairs[:5])))
        spread = [c for c in p.classes if c.spread_z is not None][:3]
        if spread:
            out.print(safe("  most spread-out classes: " + "; ".join(
                f"{label_text(c.label)} (z {c.spread_z:.1f}, purity {c.neighbour_purity:.2f}"
                + (f", recall {c.recall:.2f}" if c.recall is not None else "") + ")" for c in spread)))

    r = a.recommendation
    print_start(out, [asdict(c) for c in r.choices], asdict(r.capacity_ceiling), r.lr_grid, r.overrides,
                inputs=inputs)
    total = a.timings.get("total_s")
    if total is not None:
        parts = ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in a.timings.items() if k != "total_s")
        out.print(f"[dim]{total:.1f}s ({parts})[/]")


def print_start(out, choices: list[dict], ceiling: dict, lr_grid, overrides: dict, prefix: str = "",
                inputs: tuple[str, dict[str, str]] = ("", {})) -> None:
    """The start config: each value with its rule and reason, the lr grid, the command to train it (on the user's
    own config, data and overrides: without them it trained the embedded demo)."""
    out.print("[bold]start config[/] (value, then the rule and why)")
    for c in (*choices, ceiling):
        v = "[" + ", ".join(map(str, c["value"])) + "]" if isinstance(c["value"], (list, tuple)) else \
            f"{c['value']:g}" if isinstance(c["value"], float) else str(c["value"])
        key = "capacity ceiling: max adapter.r" if c is ceiling else c["key"]
        out.print(f"  [bold]{key}[/] = {safe(v)}")
        out.print(f"      [dim]{c['rule']}:[/] {safe(c['reason'])}")
    if lr_grid:
        out.print(f"lr grid for capacity comparisons: {', '.join(f'{x:g}' for x in lr_grid)}")
    from loratune.config import resolve_key

    head, given = inputs
    proposed = {resolve_key(k) for k in overrides}
    kept = [item for key, item in given.items() if key not in proposed]
    replaced = [item for key, item in given.items() if key in proposed]
    args = " ".join(x for x in (head, " ".join(kept), " ".join(_override_arg(k, v) for k, v in overrides.items())) if x)
    out.print(f"start with: loratune train {prefix}{args}", markup=False, soft_wrap=True)
    if replaced:
        out.print(f"  (the proposal replaces your {', '.join(replaced)})", markup=False, soft_wrap=True)


def print_sft_summary(out, a: dict, inputs: tuple[str, dict[str, str]] = ("", {})) -> None:
    """`loratune assess task=causal-lm`: rows and rendered token lengths, findings, the start config."""
    f = a["facts"]
    out.print(f"[bold]assess[/] {safe(a['dataset'])} with {safe(a['model'])}: causal-lm (SFT), "
              f"{f['train_rows']} train / {f['val_rows']} val rows, template {f['template']}")
    for note in a["notes"]:
        out.print(f"[yellow]note:[/] {safe(note)}")
    out.print(f"tokens per rendered row (prompt + completion): p50 {f['token_p50']:.0f}, p99 {f['token_p99']:.0f}, "
              f"max {f['token_max']}; completions are {f['completion_share']:.0%} of the tokens (median "
              f"{f['completion_token_p50']:.0f} of their own text); {f['truncated_share_at_max_length']:.1%} of rows exceed "
              "model.max_length")
    for x in a["findings"]:
        out.print(f"[{_SEVERITY_STYLE.get(x['severity'], '')}]{x['severity']}[/] {x['id']}: {safe(x['message'])}")
    r = a["recommendation"]
    print_start(out, r["choices"], r["capacity_ceiling"], r["lr_grid"], r["overrides"], prefix="task=causal-lm ",
                inputs=(inputs[0], {k: i for k, i in inputs[1].items() if k != "model.task"}))  # (the prefix's)
