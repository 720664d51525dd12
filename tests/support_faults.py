"""Helpers of the fault-injection suite (tests/faults): a `loratune` subprocess to signal or kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class Proc:
    """A `loratune` subprocess, its output captured, stopped (or killed) by the test."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None):
        self.out = cwd / "stdout.txt"
        self.err = cwd / "stderr.txt"
        self.p = subprocess.Popen([sys.executable, "-m", "loratune.cli", *args], cwd=cwd,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400", **(env or {})},
                                  stdout=open(self.out, "w"), stderr=open(self.err, "w"), start_new_session=True)

    def wait_for(self, cond, timeout: float = 120.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and self.p.poll() is None:
            if cond():
                return True
            time.sleep(0.05)
        return False

    def signal(self, sig) -> None:
        os.kill(self.p.pid, sig)

    def finish(self, timeout: float = 60.0) -> int:
        try:
            return self.p.wait(timeout=timeout)
        finally:
            if self.p.poll() is None:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()

    @property
    def stderr(self) -> str:
        return " ".join(self.err.read_text().split())

    @property
    def stdout(self) -> str:
        return " ".join(self.out.read_text().split())


def history_lines(run_dir: Path) -> int:
    p = run_dir / "history.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0
