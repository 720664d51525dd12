"""`loratune plan MODEL`: memory and training FLOPs of LoRA, QLoRA and full fine-tuning, from the config alone."""

from __future__ import annotations

from loratune.commands._common import console, human, print_json, safe


def register(sub) -> None:
    from loratune.plan import ATTENTION, DEFAULT_R, DEFAULT_TARGETS, FULL_PRECISION, PRESETS, TASK_OPTION_HELP, TASKS

    p = sub.add_parser("plan", help="GPU memory and FLOPs of LoRA, QLoRA and full fine-tuning (no weights needed)",
                       description="Trainable parameters, memory (weights, gradients, optimizer states, activations) "
                                   "and training FLOPs per token of LoRA, QLoRA and full fine-tuning, and the rank "
                                   "where LoRA stops paying. Formulas: docs/planning.md in the loratune "
                                   "repository (not in the installed package).")
    p.add_argument("model", help=f"a preset ({', '.join(PRESETS)}), a config.json, a model folder, an embedded "
                                 "alias, or a hub id whose config is cached")
    p.add_argument("--r", type=int, default=DEFAULT_R, help=f"LoRA rank (default {DEFAULT_R})")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help="LoRA targets, comma-separated groups or module names (default all-linear)")
    p.add_argument("--batch", type=int, default=1, help="micro-batch size per GPU (default 1)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    p.add_argument("--attention", default="sdpa", choices=ATTENTION,
                   help="sdpa (FlashAttention / memory-efficient, the default) or eager (keeps the score matrix)")
    p.add_argument("--full-precision", default="mixed", choices=tuple(FULL_PRECISION),
                   help="full fine-tuning convention: mixed (16 bytes/param, ZeRO), amp (18, HF Trainer), bf16 (8)")
    p.add_argument("--gpu-memory", type=float, default=80.0, metavar="GIB",
                   help="one GPU's memory in GiB, for the GPUs each method needs (default 80)")
    p.add_argument("--task", default="auto", choices=("auto", *TASKS), help=TASK_OPTION_HELP)
    p.add_argument("--json", action="store_true", help="the plan as JSON (bytes and FLOPs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from loratune.plan import Workload, plan_model

    from loratune.plan import split_targets  # (blanks stay: an empty name matches no layer, refused as params does)

    targets = split_targets(args.targets)
    plan = plan_model(args.model, r=args.r, targets=targets, task=args.task,
                      workload=Workload(args.batch, args.seq_len, args.attention, args.full_precision,
                                        args.gpu_memory))
    if args.json:
        print_json(plan.to_dict())
        return 0
    render(plan)
    return 0


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f}"


def _flops(n: float) -> str:
    return f"{n / 1e9:,.1f} G" if n >= 1e9 else f"{n / 1e6:,.1f} M"


def render(plan) -> None:
    from rich.table import Table

    s, lo, w, m = plan.shape, plan.lora, plan.workload, plan.methods
    out = console()
    out.print(f"[bold]{safe(plan.source)}[/] ({safe(s.model_type)}, {s.task}): {human(s.params)} parameters, "
              f"{s.layers} layers, "
              f"hidden {s.hidden}, {s.heads} heads ({s.kv_heads} KV), FFN {s.ffn}, "
              + (f"vocabulary {s.vocab}" if s.task == "causal-lm" else f"{s.vocab} labels"))
    out.print(f"workload: batch {w.batch} x {w.seq_len} tokens = {w.tokens} tokens per micro-batch, "
              f"{w.attention} attention")
    out.print(f"LoRA r={lo.r} on {safe(', '.join(lo.targets))}: {lo.modules} modules, {human(lo.params)} parameters "
              f"({lo.params / s.params:.2%} of the model, {lo.params / lo.adapted_weights:.2%} of the adapted weights)")
    cols = ("lora", "qlora", "full")
    table = Table(title="memory per GPU (GiB) and training compute")
    table.add_column("")
    for name in ("LoRA", "QLoRA (NF4)", f"full ({w.full_precision})"):
        table.add_column(name, justify="right")
    rows = [
        ("trainable parameters", lambda p: human(p.trainable)),
        ("weights", lambda p: _gib(p.weights)),
        ("gradients", lambda p: _gib(p.gradients)),
        ("optimizer states (AdamW)", lambda p: _gib(p.optimizer)),
        ("activations", lambda p: _gib(p.activations)),
        ("activations, gradient checkpointing", lambda p: _gib(p.activations_checkpointed)),
        ("cuBLAS workspaces", lambda p: _gib(p.workspace)),
        ("total (torch allocated)", lambda p: _gib(p.total)),
        ("total, gradient checkpointing", lambda p: _gib(p.total_checkpointed)),
        ("  + CUDA context (nvidia-smi)", lambda p: _gib(p.total_checkpointed + p.cuda_context)),
        (f"GPUs of {w.gpu_memory_gib:g} GiB (checkpointing; >1: FSDP)", lambda p: str(p.gpus) if p.gpus else "-"),
        ("training FLOPs per token", lambda p: _flops(p.flops_per_token)),
        ("  with gradient checkpointing", lambda p: _flops(p.flops_per_token_checkpointed)),
        ("FLOPs vs full fine-tuning", lambda p: f"{p.flops_per_token / m['full'].flops_per_token:.2f}x"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(m[c]) for c in cols))
    out.print(table)
    never = [name for c, name in zip(cols, ("LoRA", "QLoRA", "full")) if not m[c].gpus]
    if never:  # the row's "-": say why, and what would change it
        out.print(f"GPUs '-' ({', '.join(never)}): fits on no number of {w.gpu_memory_gib:g} GiB GPUs: one GPU's own "
                  "activations (checkpointed), workspaces, CUDA context and two gathered blocks already exceed it; "
                  "lower --batch or --seq-len, or give a larger --gpu-memory")
    if plan.breakeven_rank:
        out.print(f"LoRA stops paying at r={plan.breakeven_rank} on these targets: its parameters reach a third of the "
                  "adapted weights, where its compute matches training those weights fully (protocol 6)")
    for key, text in plan.conventions.items():
        out.print(f"  [dim]{key}: {safe(text)}[/]")
