"""`loratune params MODEL`: LoRA parameter counts and breakeven ranks, from the config alone."""

from __future__ import annotations

from loratune.commands._common import console, human, print_json, safe


def register(sub) -> None:
    from loratune.plan import TASK_OPTION_HELP, TASKS

    p = sub.add_parser("params", help="LoRA parameter counts per rank and target set (no weights needed)")
    p.add_argument("model", nargs="?", default="embedded:minilm",
                   help="model folder, config.json, .gguf file, hub id (online), embedded:minilm, or a preset of "
                        "`loratune plan` (llama-2-7b, mistral-7b, ...)")
    p.add_argument("--ranks", default="1,2,4,8,16,32,64,128,256", help="comma-separated ranks")
    p.add_argument("--targets", action="append", metavar="GROUPS",
                   help="a target set, e.g. 'attn.q,attn.v' (repeatable; default: five common sets)")
    p.add_argument("--task", default="auto", choices=("auto", *TASKS), help=TASK_OPTION_HELP + " (as plan)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from loratune.errors import UserError
    from loratune.params import DEFAULT_TARGETS, params_report

    try:
        ranks = tuple(int(r) for r in args.ranks.split(","))
    except ValueError:
        raise UserError(f"--ranks '{args.ranks}' is not a list of integers", "e.g. --ranks 4,16,64") from None
    from loratune.config import key_table
    from loratune.plan import build_meta_model, check_rank, load_config, resolve_task, split_targets

    for r in ranks:  # a rank `train` would take (0 and negatives printed negative counts)
        check_rank(r, "--ranks", key_table()["adapter.r"].metadata["max"])
    targets = tuple(split_targets(t) for t in args.targets) if args.targets else DEFAULT_TARGETS

    # the model as `loratune plan` builds it (one route): a decoder with its LM head, an encoder as a classifier
    config = load_config(args.model)
    model = build_meta_model(config, resolve_task(config, args.task))
    report = params_report(model, ranks, targets, skip_unresolved=not args.targets)
    if args.json:
        print_json(report.to_dict())
        return 0
    from rich.table import Table

    out = console()
    layers = f"{report.num_layers} layers"
    if report.depth > report.num_layers:  # ALBERT: one adapter per shared block, applied at every layer it runs
        layers = f"{report.depth} layers run by {report.num_layers} shared block(s) (adapters count once per block)"
    out.print(f"[bold]{safe(report.model_type)}[/]: {human(report.total)} parameters, {layers}, "
              f"embeddings {human(report.embeddings)} ({report.embeddings / report.total:.0%})")
    if report.skipped:
        out.print(f"skipped target sets this '{safe(report.model_type)}' has no layers for: "
                  f"{safe('; '.join(' + '.join(t) for t in report.skipped))} (name its modules with --targets)")
    for t in report.targets:
        table = Table(title=f"targets {safe(' + '.join(t.targets))}: {t.modules} modules, adapted weights "
                      f"{human(t.adapted_weights)} ({t.adapted_weights / report.total:.1%} of the model)")
        for col in ("r", "LoRA params", "% of model", "% of adapted"):
            table.add_column(col, justify="right")
        for row in t.rows:
            table.add_row(str(row["r"]), human(row["lora"]), f"{row['share_total']:.2%}", f"{row['share_adapted']:.2%}")
        out.print(table)
        out.print(f"  LoRA reaches 10% of the model at r={t.rank_at_10pct}, 20% at r={t.rank_at_20pct}; "
                  f"one third of the adapted weights (compute breakeven vs full fine-tuning) at "
                  f"r={t.rank_at_third_adapted}")
    out.print(f"memory and FLOPs of LoRA, QLoRA and full fine-tuning: loratune plan {safe(args.model)}")
    return 0
