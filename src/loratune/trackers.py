"""Where users already look: the evaluation points of a run, and its verdict at the end, written to
TensorBoard and/or MLflow (`train.report_to`), with each tool's own writer (optional extras:
`pip install 'loratune[tensorboard]'`, `'loratune[mlflow]'`).

Every trial of `loratune tune` is an ordinary run, so each trial shows up too: its own TensorBoard
folder (`tensorboard --logdir runs/tune` lists them all) and its own MLflow run, tagged with the study.

What is logged: the headline scalars of each evaluation point (`train/loss`, `val/macro_f1`,
`val/loss`, `train_eval/...`, slices, `lr`, `epoch`; not the per-class keys, which stay in
history.jsonl), the config (MLflow params, a TensorBoard text), and at the end the verdict of
`loratune diagnose` as text. The record (history.jsonl, run.json) stays the source of truth: a tracker
that fails mid-run is switched off with a warning, never the run.

A TensorBoard log also carries the run's record as text (store.RECORD_TEXT: run.json at the start and at the end,
with the facts of its folder), so the log copied away from its run (`cp -r RUN/tensorboard`, a file synced to another
machine) reads as its run does: its labels, task, planned steps, method and end status (history_io.read_tensorboard).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from loratune.store import (CONFIG_TEXT, PER_CLASS, RECORD_TEXT, RUN, STATUS_TEXT, TENSORBOARD_DIR, VERDICT_TEXT,
                            RunStore, fenced)

EXTRAS = {"tensorboard": ("tensorboard", "loratune[tensorboard]"), "mlflow": ("mlflow", "loratune[mlflow]")}


def record_text(run_dir: str | Path) -> str:
    """RECORD_TEXT's content: the run's run.json as it stands, and the facts its folder gives (the adapter's
    resolved target modules), which a log copied away from the run cannot read from the folder."""
    from loratune.history_io import run_folder_facts

    facts = {k: {"value": f.value, "source": f.source} for k, f in run_folder_facts(Path(run_dir)).items()}
    return fenced("json", json.dumps({"run": RunStore(Path(run_dir)).read_run(), "facts": facts}, indent=1))


def scalars(point: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of an evaluation point (finite numbers, per-class keys left out)."""
    out = {}
    for key, value in point.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        parts = key.split("/")
        if len(parts) >= 3 and parts[1] in PER_CLASS:
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def verdict_text(run_dir: str | Path) -> tuple[str, str]:
    """(rule id, a few lines: verdict, evidence, next move) of `loratune diagnose` on the run."""
    from loratune.diagnose import diagnose

    d = diagnose(run_dir)
    f = d.primary
    if f is None:
        return "inconclusive", "inconclusive: no diagnosis rule holds on these curves"
    lines = [f"{f.rule_id}: {f.verdict}"]
    lines += [f"- {e.text}" for e in f.evidence if e.passed]
    if f.moves:
        lines.append(f"next move: {', '.join(f.moves)}")
    return f.rule_id, "\n".join(lines)


def require(report_to: Iterable[str]) -> None:
    """Fail before training when a tracker's package is missing."""
    import importlib.util

    from loratune.errors import UserError

    for name in _names(report_to):
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"train.report_to: {name} needs the {module} package, which is not installed",
                            f"pip install '{extra}', or drop {name} from report_to")


def _names(report_to: Iterable[str]) -> list[str]:
    return [r for r in dict.fromkeys(report_to) if r != "none"]


class TensorBoardWriter:
    name = "tensorboard"
    # its calls take an in-process lock and a queue shared with a writer thread: an interrupt raised inside one can
    # leave the lock held, and `close` then waits on it forever; signals wait for the call to return
    shielded = True

    def __init__(self, run_dir: Path, config: Mapping[str, Any], config_yaml: str):
        from torch.utils.tensorboard import SummaryWriter

        logdir = run_dir / TENSORBOARD_DIR
        if logdir.exists():  # a fresh run in a reused directory starts a fresh log, as history.jsonl does
            shutil.rmtree(logdir)
        self.writer = SummaryWriter(log_dir=str(logdir))
        self.run_dir = run_dir
        self.writer.add_text(CONFIG_TEXT, fenced("yaml", config_yaml), 0)
        if (run_dir / RUN).is_file():  # (written before the trackers open; a log of a run that dies keeps this one)
            self.writer.add_text(RECORD_TEXT, record_text(run_dir), 0)
        self.step = 0

    def log_point(self, point: Mapping[str, Any]) -> None:
        self.step = int(point.get("step", self.step))
        for key, value in scalars(point).items():
            self.writer.add_scalar(key, value, self.step)
        self.writer.flush()

    def finish(self, status: str, verdict: str, text: str) -> None:
        self.writer.add_text(VERDICT_TEXT, text.replace("\n", "  \n"), self.step)  # markdown line breaks
        self.writer.add_text(STATUS_TEXT, status, self.step)
        self.writer.add_text(RECORD_TEXT, record_text(self.run_dir), self.step)  # run.json final: status, steps done
        self.writer.close()


class MLflowWriter:
    name = "mlflow"
    STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "interrupted": "KILLED"}

    def __init__(self, run_dir: Path, config: Mapping[str, Any], config_yaml: str):
        import mlflow

        self.mlflow = mlflow
        tags = {"loratune.run_dir": str(run_dir)}
        if run_dir.parent.name == "trials":  # a trial of `loratune tune`: <study>/trials/<n>-<name>
            tags["loratune.study"] = str(run_dir.parent.parent)
        self.run = mlflow.start_run(run_name=run_dir.name, nested=mlflow.active_run() is not None, tags=tags)
        mlflow.log_params({k: str(v)[:500] for k, v in config.items()})
        mlflow.log_text(config_yaml, "config.yaml")

    @staticmethod
    def metric_name(key: str) -> str:
        return re.sub(r"[^\w\-. /]", "_", key)  # MLflow allows letters, digits, _ - . space /

    def log_point(self, point: Mapping[str, Any]) -> None:
        step = int(point.get("step", 0))
        self.mlflow.log_metrics({self.metric_name(k): v for k, v in scalars(point).items()}, step=step)

    def finish(self, status: str, verdict: str, text: str) -> None:
        self.mlflow.set_tag("loratune.verdict", verdict)
        self.mlflow.set_tag("loratune.status", status)
        self.mlflow.log_text(text, "verdict.txt")
        self.mlflow.end_run(status=self.STATUS.get(status, "FINISHED"))


WRITERS = {"tensorboard": TensorBoardWriter, "mlflow": MLflowWriter}


class Trackers:
    """The writers of one run. Every call is safe: a writer that raises is dropped with a warning."""

    def __init__(self, writers: list):
        self.writers = writers

    @classmethod
    def open(cls, report_to: Iterable[str], run_dir: str | Path, config: Mapping[str, Mapping[str, Any]],
             config_yaml: str) -> "Trackers":
        flat = {f"{s}.{k}": v for s, sec in config.items() for k, v in sec.items()}
        writers = []
        for name in _names(report_to):
            try:
                writers.append(WRITERS[name](Path(run_dir), flat, config_yaml))
            except Exception as exc:  # e.g. an unreachable MLflow server: the run goes on without it
                print(f"loratune: could not start {name} ({type(exc).__name__}: {exc}); the run is not logged "
                      f"there", file=sys.stderr)
        return cls(writers)

    def _each(self, what: str, call) -> None:
        from loratune import signals

        for w in list(self.writers):
            try:
                with signals.shielded() if getattr(w, "shielded", False) else contextlib.nullcontext():
                    call(w)
            except Exception as exc:  # the run's own record is the source of truth: never stop training
                print(f"loratune: {w.name} {what} failed ({type(exc).__name__}: {exc}); not logging to "
                      f"{w.name} any more", file=sys.stderr)
                self.writers.remove(w)

    def log_point(self, point: Mapping[str, Any]) -> None:
        self._each("logging", lambda w: w.log_point(point))

    def finish(self, run_dir: str | Path, status: str) -> None:
        """Log the verdict as text and close every writer (after run.json is final)."""
        if not self.writers:
            return
        try:
            verdict, text = verdict_text(run_dir)
        except Exception as exc:
            verdict, text = "not-diagnosed", f"not diagnosed ({type(exc).__name__}: {exc})"
        self._each("finishing", lambda w: w.finish(status, verdict, f"run {status}\n{text}"))
        self.writers = []
