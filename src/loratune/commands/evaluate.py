"""`loratune evaluate RUN --split test`: score a trained run once on a split."""

from __future__ import annotations

from loratune.commands._common import console, label_shown, piped, print_json, safe
from loratune.listing import LABEL_JOIN


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score a trained run on a split (test by default)")
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="test", choices=("test", "validation", "train"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from loratune import api
    from loratune.errors import ScoresNotRecorded

    try:
        scores = api.evaluate(args.run, args.split)
    except ScoresNotRecorded as exc:  # scored, not written: show the scores, then say why (exit 2)
        show(args, exc.scores)
        raise
    show(args, scores)
    return 0


def show(args, scores: dict) -> None:
    if args.json:
        print_json({k: v for k, v in scores.items()})
        return
    out = console()
    prefix = next(iter(scores)).split("/")[0]
    keys = [f"{prefix}/{k}" for k in ("n", "loss", "accuracy", "macro_f1", "weighted_f1", "micro_f1",
                                       "subset_accuracy", "samples_f1", "labels_per_row",
                                       "perplexity", "token_accuracy", "tokens", "unknown_rate")]  # + causal-lm
    keys += [f"{prefix}_{rows}/{k}" for rows in ("compound", "single") for k in ("subset_accuracy", "n")]  # multi-label
    for full in keys:
        v = scores.get(full)
        if v is not None:
            out.print(f"{full}: {v:.4f}" if isinstance(v, float) else f"{full}: {v}")
    from loratune.generation import PROMPT_GROUPS, SCORES, prompt_key

    from loratune.objectives import PROMPT_SET_ONE_SET

    prompt = [k for k in (prompt_key(g, m) for g in PROMPT_GROUPS for m in SCORES) if scores.get(k) is not None]
    if prompt:  # causal-lm with a prompt set: its own set, never the split's rows (its keys say val/ whatever the split)
        out.print(f"prompt-set scores, not {safe(str(getattr(args, 'split', prefix)))}-split scores: "
                  f"{PROMPT_SET_ONE_SET}", soft_wrap=piped())
        for full in prompt:
            out.print(f"  {full}: {scores[full]:.4f}")
    from loratune.inference import IN_SAMPLE, SPLIT_DIFFERS, UNSEEN_LABELS

    for note in (SPLIT_DIFFERS, IN_SAMPLE):
        if scores.get(f"{prefix}/{note}"):
            out.print(f"note: {safe(scores[f'{prefix}/{note}'])}")

    unseen = scores.get(f"{prefix}/{UNSEEN_LABELS}") or {}
    if unseen:  # scored as errors: a score lower than the model is, for a reason the numbers do not show
        out.print(f"note: {len(unseen)} label(s) the run never trained on, their rows scored as errors: "
                  + LABEL_JOIN.join(f"{label_shown(lab)} ({n} row(s))" for lab, n in unseen.items()),
                  soft_wrap=piped())
    pairs = scores.get(f"{prefix}/confused_pairs") or []
    if pairs:
        out.print("most confused: " + "; ".join(f"{label_shown(p['true'])} -> {label_shown(p['pred'])} ({p['count']})"
                                                for p in pairs[:5]), soft_wrap=piped())
