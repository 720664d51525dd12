"""`loratune predict RUN TEXT...` or `--file FILE`: labels for new texts from a trained run."""

from __future__ import annotations

from pathlib import Path

from loratune.commands._common import console, print_json
from loratune.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict labels for texts with a trained run")
    p.add_argument("run", help="run directory (output_dir of `loratune train`)")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", "-f", help="a file of texts, one per line (or .jsonl/.csv with a text column)")
    p.add_argument("--top-k", type=int, default=1, help="show the k most likely labels")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def read_texts(path: str) -> list[str]:
    p = Path(path)
    if p.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        from loratune.data import read_rows

        rows = read_rows(p)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r.get("text"), str)), None)
        if bad is not None:  # every row, not the first only: a row without a text has nothing to predict
            what = "no 'text' column" if "text" not in rows[bad] else f"a 'text' of {rows[bad]['text']!r}"
            raise UserError(f"'{p}' row {bad + 1} has {what}",
                            "give every row a 'text' string (name the text column 'text'), or a plain text file")
        return [r["text"] for r in rows]
    if not p.is_file():
        raise UserError(f"file '{p}' does not exist", "give a text file with one text per line")
    return [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(args) -> int:
    from loratune import api

    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: the number of labels to show", "give --top-k 1 or more")
    texts = list(args.texts) + (read_texts(args.file) if args.file else [])
    if not texts:
        raise UserError("no texts given", "pass texts as arguments or --file FILE")
    preds = api.predict(args.run, texts, top_k=args.top_k)
    if args.json:
        print_json(preds)
        return 0
    out = console()
    for p in preds:
        if "label" in p:
            alts = ", ".join(f"{t['label']} {t['score']:.2f}" for t in p["top"][1:])
            out.print(f"[bold]{p['label']}[/] {p['score']:.2f}  {p['text']}" + (f"  [dim]({alts})[/]" if alts else ""))
        else:
            out.print(f"[bold]{', '.join(p['labels']) or '(none)'}[/]  {p['text']}")
    return 0
