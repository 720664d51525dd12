"""Run the competitor, finetune-doctor, on Trainer runs and map what it says onto loratune's verdicts.

finetune-doctor (PyPI `finetune-doctor`, Apache-2.0, checked against 0.2.2) is not a loratune
dependency. Install it in its own environment and run this script with that interpreter:

    python3 -m venv /work/fd-venv && /work/fd-venv/bin/pip install finetune-doctor
    /work/fd-venv/bin/python bench/finetune_doctor_adapter.py RUN [RUN ...]

RUN is a Trainer output dir, a checkpoint-* dir, or a trainer_state.json. A directory that holds
neither a trainer_state.json nor checkpoint-* dirs is expanded to its subdirectories that hold a
trainer_state.json, so `tests/fixtures/external/public` runs the whole public corpus. Only local
paths are accepted: finetune-doctor would treat an unknown `owner/name` as a Hub repo id and go to
the network, so such an argument is reported as an error instead of being passed on.

Output: one JSON line per run on stdout,

    {"path": ..., "fd_verdict": <loratune verdict or "none">, "fd_raw": {...}, "fd_version": "0.2.2"}

`fd_raw` keeps finetune-doctor's own words: `worst` severity, `headline`, every finding as
check/title/severity, and its checkpoint pick (selection metric, best/final step and value, noise
band = max(2 x the eval's step-to-step noise, 1% of the best value), final gap, kept checkpoint).

What finetune-doctor says, and the loratune verdict it is mapped to (the first row that applies wins):

| finetune-doctor finding (check: title, severity)                       | fd_verdict       |
|------------------------------------------------------------------------|------------------|
| loss_degenerate: "NaN loss" (CRITICAL)                                 | diverged         |
| gradients: "NaN gradients" (CRITICAL)                                  | diverged         |
| not_learning: "Training loss went up" (WARNING; last tenth >= 3% above | diverged         |
|   the first tenth)                                                     |                  |
| loss_spikes: "Loss spikes" (WARNING: >= 3 non-periodic spikes >= 1.8x  | lr-too-large     |
|   the local loss)                                                      |                  |
| gradients: "Gradient spikes" (WARNING: coupled to loss jumps)          | lr-too-large     |
| overfitting: "Overfitting" (WARNING/CRITICAL: final eval >= 3% worse   | overfit-capacity |
|   than the best and outside the noise band)                            |                  |
| not_learning: "Not learning" (WARNING: train loss moved < 3%)          | lr-too-small     |
| no_eval: "No evaluation" (WARNING) or "Too few evaluations" (INFO,     | inconclusive     |
|   < 4 evals), when nothing above fired                                 |                  |
| anything else, or no finding at all: "Final checkpoint slightly worse" | healthy          |
|   (overfitting, INFO: < 3%), "Stopped improving early",                |                  |
|   "Eval loss and your metric disagree", "Run did not finish",          |                  |
|   "Training at zero learning rate", "Eval loss below training loss",   |                  |
|   "Occasional overflowing gradients", periodic/epoch-boundary spikes   |                  |
| rl_run: "This is an RL run" / "Loss is exactly zero" / a load error    | none             |

Which loratune verdicts finetune-doctor cannot express:
- underfit-capacity: it has no notion of "plateaued high" or of what is reachable;
- undertrained: it has no "still improving at the end" check (a run whose best eval is its last
  reads as nothing to report, i.e. healthy here);
- lr-too-small only as "Not learning" (train loss moved < 3% over the run), never as a slow but
  steady fall;
- lr-too-large only as training-loss or gradient spikes; a collapse to one class (loss pinned near
  ln(classes)) has no check of its own and shows, if at all, as overfitting on the eval metric;
- diverged only through non-finite values or a training loss that ends >= 3% above where it began,
  with no reference to ln(classes);
- it never abstains on a curve it can read: "inconclusive" above is the mapping of its "no / too few
  evaluations" notice, not a verdict of its own.
Its overfitting call is judged on the metric the Trainer selected on (best_metric), else eval_loss;
an eval loss that rises while the selected metric keeps improving is "Eval loss and your metric
disagree" (INFO), which maps to healthy.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Iterable, List, Optional

try:
    import finetune_doctor as fd
except ImportError:  # pragma: no cover - only in the wrong interpreter
    sys.exit("finetune_doctor is not importable: run this with the interpreter of the venv that has "
             "`pip install finetune-doctor` (see the module docstring)")

_CHECKPOINT_PREFIX = "checkpoint-"


def _is_run(path: str) -> bool:
    if os.path.isfile(path):
        return True
    if os.path.isfile(os.path.join(path, "trainer_state.json")):
        return True
    return any(name.startswith(_CHECKPOINT_PREFIX) and os.path.isdir(os.path.join(path, name))
               for name in os.listdir(path))


def expand(targets: Iterable[str]) -> List[str]:
    """Local runs only; a plain folder of runs is expanded one level."""
    out: List[str] = []
    for target in targets:
        if not os.path.exists(target):
            out.append(target)  # reported as an error, never sent to the Hub
            continue
        if os.path.isdir(target) and not _is_run(target):
            subs = sorted(os.path.join(target, n) for n in os.listdir(target)
                          if os.path.isfile(os.path.join(target, n, "trainer_state.json")))
            out.extend(subs if subs else [target])
        else:
            out.append(target)
    return out


def _finding(f: Any) -> Dict[str, Any]:
    return {"check": f.check, "title": f.title, "severity": f.severity.name}


def map_verdict(findings: List[Dict[str, Any]]) -> str:
    """finetune-doctor findings -> one loratune verdict (see the table in the module docstring)."""
    def has(check: str, title: Optional[str] = None, min_sev: str = "INFO") -> bool:
        order = ["OK", "INFO", "WARNING", "CRITICAL"]
        return any(f["check"] == check and (title is None or f["title"] == title)
                   and order.index(f["severity"]) >= order.index(min_sev) for f in findings)

    if has("rl_run") or has("loss_degenerate", "Loss is exactly zero"):
        return "none"
    if (has("loss_degenerate", "NaN loss") or has("gradients", "NaN gradients")
            or has("not_learning", "Training loss went up", "WARNING")):
        return "diverged"
    if has("loss_spikes", "Loss spikes", "WARNING") or has("gradients", "Gradient spikes", "WARNING"):
        return "lr-too-large"
    if has("overfitting", "Overfitting", "WARNING"):
        return "overfit-capacity"
    if has("not_learning", "Not learning", "WARNING"):
        return "lr-too-small"
    if has("no_eval"):
        return "inconclusive"
    return "healthy"


def run_one(path: str) -> Dict[str, Any]:
    row: Dict[str, Any] = {"path": path, "fd_version": fd.__version__}
    if not os.path.exists(path):
        row.update(fd_verdict="none", fd_raw={"error": "no such local file or directory"})
        return row
    try:
        result = fd.diagnose(fd.load(path))
    except (OSError, ValueError, KeyError) as exc:
        row.update(fd_verdict="none", fd_raw={"error": f"{type(exc).__name__}: {exc}"})
        return row
    findings = [_finding(f) for f in result.problems]
    p = result.pick
    raw: Dict[str, Any] = {
        "worst": result.worst.name,
        "headline": result.headline,
        "findings": findings,
        "selection": None if result.selection is None else {
            "metric": result.selection.key, "better": result.selection.better},
        "pick": None if p is None else {
            "best_step": p.best_step, "best_value": p.best_value,
            "final_step": p.final_step, "final_value": p.final_value,
            "noise_band": p.band, "final_gap_rel": p.final_gap_rel,
            "final_is_equivalent": p.final_is_equivalent, "keep_step": p.keep_step,
            "n_evals": int(len(p.steps))},
    }
    row.update(fd_verdict=map_verdict(findings), fd_raw=raw)
    return row


def main(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    for path in expand(argv):
        print(json.dumps(run_one(path), sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
