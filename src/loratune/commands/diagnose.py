"""`loratune diagnose RUN [RUN ...]`: name what is wrong with a run, show the evidence, prescribe the next move.

RUN is a loratune run directory, a Hugging Face Trainer output directory or its trainer_state.json,
a TensorBoard log directory, a Jupyter notebook (.ipynb) holding the Trainer's progress table (its last
evaluated one; NOTEBOOK.ipynb#N for table N), or a CSV of step / train loss / val loss / val metric columns.
Two or more runs that differ in one
knob (learning_rate, r, seed, lora_alpha) are also compared. Imports no torch.
"""

from __future__ import annotations

import argparse
import sys

from loratune.commands._common import add_thresholds_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "diagnose", help="diagnose runs from their curves: verdict, evidence, next knob move",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directory, Trainer output dir / trainer_state.json, TensorBoard dir, .ipynb (or "
                        ".ipynb#N: its table N), or CSV")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the terminal view")
    add_thresholds_arg(p, help="override rule thresholds (`name: value` lines; names from `loratune rules`)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from loratune.diagnose import compare, diagnose
    from loratune.history_io import load_run
    from loratune.rules import read_threshold_file
    from loratune.thresholds import load_threshold_tables, not_read_by_diagnosis

    # one file may hold every table `loratune rules` lists (assess's too): diagnose takes its own. Without a file a
    # run is read with the thresholds it recorded (a tune trial: its study's; rules.RUN_THRESHOLDS_KEY), else the
    # defaults; a file given here wins, and each such run's notes say it was judged by others
    thresholds = load_threshold_tables(args.thresholds)["diagnosis"] if args.thresholds is not None else None
    # names of the other tables are taken (one file serves every command) but change nothing here: said, not silent
    unused = not_read_by_diagnosis(read_threshold_file(args.thresholds))
    histories = [load_run(path) for path in args.runs]
    diagnoses = [diagnose(h, thresholds=thresholds) for h in histories]
    comparison = compare(histories, thresholds=thresholds) if len(histories) >= 2 else None
    if args.json:
        out = {
            "runs": [d.to_dict() for d in diagnoses],
            "comparison": comparison.to_dict() if comparison else None,
            # the thresholds read: the file's, else those the run recorded (one run) or the comparison read (several:
            # their own where they agree, else the defaults; each run's are in its runs[] entry)
            "thresholds_overridden": dict((comparison or diagnoses[0]).thresholds_overridden),
            "thresholds_not_used": unused,
        }
        from loratune.commands._common import print_json

        print_json(out, default=str)
        return 0
    from loratune.commands._diagnose_view import render

    render(diagnoses, comparison)
    if unused:
        print(f"note: {unused_text(unused)}", file=sys.stderr)
    return 0


# a table the diagnosis does not read -> who reads it (`loratune rules` lists all three)
READ_BY = {"assess": "assess and tune", "lora_vs_full": "tune (its LoRA vs full comparison)"}


def unused_text(unused: dict[str, str]) -> str:
    """What diagnose says of a --thresholds file's names it never reads: whose they are, and, for long_tail_count,
    that the diagnosis's own long-tail cut stays fixed."""
    from loratune.features import LONG_TAIL_COUNT

    readers = "; ".join(f"{READ_BY.get(t, t)} read{'s' if ' and ' not in READ_BY.get(t, t) else ''} "
                        f"{', '.join(n for n, tt in unused.items() if tt == t)}"
                        for t in dict.fromkeys(unused.values()))
    tail = (f" (its long-tail classes stay those with fewer than {LONG_TAIL_COUNT} training rows)"
            if "long_tail_count" in unused else "")
    return (f"{', '.join(f'{n} ({t})' for n, t in unused.items())} not used by diagnose: it reads the diagnosis table "
            f"only{tail}; {readers}")
