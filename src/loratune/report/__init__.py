"""Reports: plain data first (`model`, `study`), rendered second (`render` to one HTML file,
`commands/show.py` to the terminal).

    from loratune.report import build_report, write_report
    report = build_report("runs/demo")            # RunReport or StudyReport, by what the directory holds
    write_report("runs/demo", "runs/demo/report.html")

Importing this package imports no torch; only `examples=True` on a run with a saved model loads it.
"""

from __future__ import annotations

from pathlib import Path

from loratune.errors import PARSE_ERRORS, UserError
from loratune.history_io import (CALLBACK_RECORD_DIR, NOTEBOOK_TABLE, check_run_path, checkpoint_folders,
                                 find_event_files, is_callback_record)
from loratune.report.model import RunReport, build_run_report, is_run_dir, is_study_dir
from loratune.store import HISTORY, REPORT, RUN

__all__ = ["RunReport", "StudyReport", "build_report", "build_run_report", "build_study_report", "run_report",
           "write_report", "default_output", "report_output", "is_run_dir", "is_study_dir"]


def __getattr__(name: str):
    if name in ("StudyReport", "build_study_report"):
        from loratune.report import study

        return getattr(study, name)
    raise AttributeError(name)


def run_report(run_dir: str | Path, *, examples: bool = True, per_pair: int = 3, **kw) -> RunReport:
    """A run's report; with `examples`, validation texts for the top confused pairs (loads the saved
    model; when there is none the report says why and carries no texts)."""
    from loratune.report.model import with_examples

    report = build_run_report(run_dir, **kw)
    if not examples:
        return with_examples(report, None, "example texts not requested")
    if not report.pairs:
        return report
    from loratune.report.examples import confused_examples

    found, why = confused_examples(run_dir, [(p.true, p.pred) for p in report.pairs], per_pair)
    return with_examples(report, found, why)


def build_report(path: str | Path, *, examples: bool = True):
    """A `StudyReport` for a study directory of `loratune tune`, a `RunReport` for a run directory, and for a run
    another tool made (Trainer / TRL dir or checkpoint, trainer_state.json, TensorBoard log, notebook, CSV) a
    `RunReport` of its curves, diagnosis and facts (`model.build_outside_report`)."""
    p = Path(path)
    check_run_path(p)
    if NOTEBOOK_TABLE.match(str(p)) and not p.exists():  # NOTEBOOK.ipynb#N: one of a notebook's tables
        from loratune.report.model import build_outside_report

        return build_outside_report(p)
    if not p.exists():
        raise UserError(f"'{p}' does not exist", "give a run directory (`loratune train`), a study directory "
                                                 "(`loratune tune`), or a run another tool made (a Trainer output "
                                                 "dir, trainer_state.json, TensorBoard log, notebook or CSV)")
    if is_study_dir(p):
        from loratune.report.study import build_study_report

        return build_study_report(p)
    if is_run_dir(p) and _callback_record(p):
        # LoratuneCallback's record of a Trainer run (`<output_dir>/loratune`): read as the Trainer run it is, as its
        # output_dir is (read as a `loratune train` run, it was named `loratune` and said "no model saved" beside the
        # Trainer's best checkpoint, reloaded by load_best_model_at_end)
        from loratune.report.model import build_outside_report

        return build_outside_report(p)
    if is_run_dir(p):
        return run_report(p, examples=examples)
    if p.name in (HISTORY, RUN) and is_run_dir(p.parent) and _callback_record(p.parent):
        from loratune.report.model import build_outside_report

        return build_outside_report(p.parent)
    if p.name in (HISTORY, RUN) and is_run_dir(p.parent):
        # a run's own history.jsonl or run.json: the report of its folder (read as an outside log, the file would
        # lose the status, the saved model and the run's facts that run.json keeps beside it)
        return run_report(p.parent, examples=examples)
    if p.is_file() or _outside_run(p):
        from loratune.report.model import build_outside_report

        return build_outside_report(p)
    raise UserError(f"'{p}' is neither a run directory (history.jsonl, run.json) nor a study directory "
                    "(study.db, decisions.jsonl, trials/), nor a Trainer / TRL output directory (trainer_state.json) "
                    "or TensorBoard log",
                    "give the output_dir of `loratune train`, the study directory of `loratune tune`, or a run "
                    "another tool made: a Trainer output_dir or checkpoint, a trainer_state.json, a TensorBoard "
                    "logging_dir, a Jupyter notebook (.ipynb) or a CSV")


def _callback_record(p: Path) -> bool:
    """Whether run directory `p` holds LoratuneCallback's record of a Trainer run (its run.json says so)."""
    import json

    try:
        meta = json.loads((p / RUN).read_text(encoding="utf-8"))
    except (OSError, *PARSE_ERRORS):
        return False
    return isinstance(meta, dict) and is_callback_record(meta)


def _outside_run(p: Path) -> bool:
    """A directory another tool wrote: a Trainer / TRL / SetFit output dir or checkpoint (history_io's
    checkpoint_folders, as diagnose reads them), or a TensorBoard log."""
    return p.is_dir() and (any(p.glob("trainer_state.json"))
                           or any((q / "trainer_state.json").is_file() for _, q in checkpoint_folders(p))
                           or (p / CALLBACK_RECORD_DIR / "history.jsonl").is_file() or bool(find_event_files(p)))


def write_report(path: str | Path, out: str | Path | None = None, *, examples: bool = True) -> Path:
    """Build and write the HTML report where `report_output` puts it (default <path>/report.html). Returns the
    file."""
    from loratune.report.render import write_html

    target = report_output(path, out)  # refused before the report is built
    return write_html(build_report(path, examples=examples), target)


REPORT_SUFFIXES = (".html", ".htm")  # what a report may replace (and .json, the report's JSON)
OUT_OPTION = "-o (out=)"  # `loratune report -o`, api.report's out=: one refusal, named in both spellings


def report_output(path: str | Path, out: str | Path | None = None, *, as_json: bool = False) -> Path:
    """Where the report of `path` goes (the CLI's -o and api.report's out=, one rule): `out`, or default_output(path);
    a folder: its report.html (report.json). Never over what the report reads (`report r.csv -o r.csv` turned a CSV
    into HTML) nor over any existing file that is not a report (a run.json, history.jsonl or trainer_state.json beside
    it: api.report(run, out=run/run.json) replaced the run's record)."""
    from loratune.store import check_name_length, refuse_to_replace

    target = Path(out) if out else default_output(path)
    # without -o the path is the default's (a file's name + .report.html): named as such, not as an -o never given
    check_name_length(target, OUT_OPTION if out else "the default report path",
                      (f"give {OUT_OPTION} a shorter name" if out else f"give a shorter report path with {OUT_OPTION}")
                      + ", e.g. -o report." + ("json" if as_json else "html"), last="file")
    if target.is_dir():
        target = target / ("report.json" if as_json else REPORT)
    source = str(path)
    m = NOTEBOOK_TABLE.match(source)
    src = Path(m["file"] if m and not Path(source).exists() else source)
    # a run folder is no input as a whole: its report.html is this command's own
    refuse_to_replace(target, OUT_OPTION, "a report", REPORT_SUFFIXES + ((".json",) if as_json else ()),
                      inputs=[src] if src.is_file() else [],
                      example="report.html" + (" or report.json" if as_json else ""))
    return target


def default_output(path: str | Path) -> Path:
    """<dir>/report.html for a directory; beside a file, its name with .report.html (notebook.report.html; a
    notebook's table N, NOTEBOOK.ipynb#N: notebook.table-N.report.html)."""
    m = NOTEBOOK_TABLE.match(str(path))
    if m and not Path(path).exists():
        f = Path(m["file"])
        return f.with_name(f"{f.stem}.table-{m['table']}.report.html")
    p = Path(path)
    return p.with_name(p.stem + ".report.html") if p.is_file() else p / REPORT
