"""A leader or a worker process on one study, with scripted trial outcomes (no training), for the
many-workers tests and bench/workers.py. Run: python tests/workers_script.py ROLE URL STUDY_DIR OUT [SLOW]

ROLE leader: runs the protocol (unit/test_protocol's lr_binds world) and writes OUT (JSON: decisions,
final pick, wall time). ROLE worker: claims queued trials until the leader is done. Every trial a
process trains appends ["start" | "done", pid, key] to OUT.log (one JSON line each).
SLOW: seconds the process sleeps inside its first trial (a worker to kill -9 mid-trial).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRIAL_S = float(os.environ.get("LORATUNE_SCRIPTED_TRIAL_S", "0.3"))  # what one scripted trial "trains"
HEARTBEAT_S = int(os.environ.get("LORATUNE_TEST_HEARTBEAT_S", "1"))


class SleepyRunner:
    """ScriptedRunner's outcomes, with the time a trial takes and a shared log of who ran what."""

    def __init__(self, log: Path, slow_first: float = 0.0):
        from unit.test_protocol import ScriptedRunner, lr_binds

        self.inner = ScriptedRunner(lr_binds())
        self.log, self.slow_first, self.n = log, slow_first, 0

    def _write(self, what: str, key: str) -> None:
        with open(self.log, "a") as f:
            f.write(json.dumps([what, os.getpid(), key]) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def run(self, spec, run_dir, watch=None):
        self._write("start", spec.key)
        self.n += 1
        time.sleep(self.slow_first if self.n == 1 and self.slow_first else TRIAL_S)
        result = self.inner.run(spec, run_dir, watch)
        self._write("done", spec.key)
        return result

    def compare(self, run_dirs):
        return None

    def evaluate(self, run_dir, split="test"):
        return {"test/macro_f1": 0.8}


def leader(url: str, study_dir: Path, out: Path) -> None:
    from loratune.search.budget import Budget, CostModel, Meter
    from loratune.search.context import SearchContext
    from loratune.search.protocol import ProtocolSettings, run_protocol
    from loratune.search.study import Study
    from unit.test_protocol import START

    t0 = time.time()
    study = Study.open(study_dir, storage=url, heartbeat_s=HEARTBEAT_S, meta={"scripted": True})
    try:
        study.set_meta(trial_base="scripted")
        wait_for = int(os.environ.get("LORATUNE_TEST_WAIT_WORKERS", "0"))  # workers up before the first trial
        deadline = time.time() + 120
        while time.time() < deadline and sum(k.startswith("ready_") for k in study.optuna.user_attrs) < wait_for:
            time.sleep(0.1)
        ctx = SearchContext(store=study, runner=SleepyRunner(Path(str(out) + ".log")),
                            meter=Meter(Budget.parse("100trials")), trial_examples=1000, costs=CostModel())
        run_protocol(ctx, START, ProtocolSettings())
        study.cancel_queued("the search ended without needing it")
        study.set_meta(finished=True)
        out.write_text(json.dumps({
            "decisions": [[d["phase"], d["kind"], d["verdict"], d["move"]] for d in ctx.decisions],
            "final": ctx.state["final"].key if ctx.state.get("final") else None,
            "trials": ctx.meter.spent.trials, "wall_s": time.time() - t0}))
    finally:
        study.close()


def worker(url: str, study_dir: Path, out: Path, slow: float) -> None:
    from loratune.search.study import Study
    from loratune.search.worker import work

    study = None
    for _ in range(200):  # the leader creates the study
        try:
            study = Study.open(study_dir, storage=url, worker=True, heartbeat_s=HEARTBEAT_S)
            break
        except Exception:
            time.sleep(0.1)
    if study is None:
        raise SystemExit("no study to join")
    try:
        study.optuna.set_user_attr(f"ready_{os.getpid()}", True)
        report = work(study, SleepyRunner(Path(str(out) + ".log"), slow), poll_s=0.1, idle_exit_s=120)
        out.write_text(json.dumps({"trials": report.trials, "reason": report.reason}))
    finally:
        study.close()


if __name__ == "__main__":
    role, url, study_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    slow = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    (leader(url, study_dir, out) if role == "leader" else worker(url, study_dir, out, slow))
