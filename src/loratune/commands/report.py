"""`loratune report RUN|STUDY [-o FILE]`: one self-contained HTML report of a run or a tuning study.

The file holds everything inline (styles, SVG charts, a few lines of script): it opens from disk,
fetches nothing and can be mailed or archived as is. For a run: curves, diagnosis with evidence,
per-class recall, the confusion matrix focused on the most confused classes, the top confused pairs
with example texts, the probe set's score at the saved model's step and the robustness probe
(accuracy under each perturbation), the parameter table. For a study: the decision trail,
best-so-far against compute, rank against the val metric, the minimal-intervention pairs, LoRA vs
full fine-tuning and the final recommendation with its YAML config. `loratune show` prints the same
essentials.

A run another tool made (a Trainer / TRL output dir, a trainer_state.json, a TensorBoard log, a notebook with the
Trainer's progress table (NOTEBOOK.ipynb#N: its table N), a CSV) gets the part of the run report its files allow:
the curves, the diagnosis with its evidence and what was read from the files, each fact with its source.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="write a self-contained HTML report of a run or a tuning study",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="RUN|STUDY", help="run directory (loratune train), study directory (loratune tune), "
                   "or a run another tool made: a Trainer / TRL output_dir or checkpoint, trainer_state.json, "
                   "TensorBoard logging_dir, Jupyter notebook (.ipynb, or .ipynb#N for its table N) or CSV")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write the HTML (default: RUN/report.html; "
                   "beside a file: NAME.report.html; a notebook's table N: NAME.table-N.report.html); with --json, "
                   "where to write the JSON. An existing file is replaced only when it is a report (.html, or .json "
                   "with --json) and not the run's own record")
    p.add_argument("--no-examples", action="store_true",
                   help="do not load the saved model to find example texts for the confused pairs (faster)")
    p.add_argument("--json", action="store_true", help="print the report's data as JSON instead of writing HTML")
    p.add_argument("--trial-reports", action="store_true",
                   help="for a study: also write each trial's run report (trials/<n>-<name>/report.html, no "
                        "example texts) and link it from the study report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from loratune.report import build_report
    from loratune.report.render import write_html

    report = build_report(args.path, examples=not args.no_examples)
    if args.trial_reports and getattr(report, "kind", "") == "study" and not args.json:
        from loratune.report.model import build_run_report, is_run_dir, with_examples

        for t in report.trials:  # only the study's own trial directories (`link`): never into another study's
            if t.run_dir and t.link and is_run_dir(t.run_dir):
                run = with_examples(build_run_report(t.run_dir), None, "not computed for trial reports")
                write_html(run, Path(t.run_dir) / "report.html")
        report = build_report(args.path)  # now with links to the trial reports
    if args.json and not args.output:
        from loratune.commands._common import print_json

        print_json(report.to_dict(), default=str)
        return 0
    from loratune.assess.text import printable  # (an ESC in the path reached the terminal raw)
    from loratune.report import report_output

    out = report_output(args.path, args.output, as_json=args.json)  # (api.report's rule)
    if args.json:
        from loratune.errors import UserError
        from loratune.store import write_atomic

        try:  # as the HTML: a read-only or full disk is the output's fault, said as such
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out, json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write the report's JSON to '{out}' ({exc.strerror or exc})",
                            "give -o a writable path, e.g. -o /tmp/report.json") from None
        print(f"wrote {printable(str(out))}")
        return 0
    path = write_html(report, out)
    size = path.stat().st_size
    print(f"wrote {printable(str(path))} ({size / 1024:.0f} KiB, self-contained; open it in a browser)")
    return 0

