"""How torch's OpenMP threads wait between parallel regions: chosen once, when loratune is imported (issue 17).

A training step on CPU is thousands of short torch ops, each a parallel region over the cores. Between two of
them the OpenMP worker threads wait, and how they wait decides the step time:
- sleeping at once (`OMP_WAIT_POLICY=PASSIVE`) costs a wake-up per op: on an idle 2-core machine config (a) of
  bench/throughput.py trained 80 steps in 15.6-17.2 s this way, against 10.0-12.2 s with a bounded spin;
- spinning while other jobs want the cores steals them from the working thread: with four CPU-bound processes
  beside it, the same run took 41.5 s passive, 49 s with a 1,000-iteration spin, 78 s with 10,000 and 116 s with
  100,000 (bench/results/throughput.md, "How OpenMP threads wait").
So the threads spin (a bounded GOMP_SPINCOUNT) when no other task is runnable at start, and sleep otherwise.

libgomp (torch's OpenMP runtime on Linux) reads its settings once, when torch loads it: the choice is made here,
before anything imports torch (the CLI imports loratune first), and `CHOICE` says what was chosen and why
(run.json `openmp`). A value the user set (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`) is left as it is. The choice
never changes the arithmetic, only how threads wait, so a run's numbers do not depend on it. What it cannot see:
load that starts after the run started (the threads keep spinning then).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, MutableMapping

# How long a waiting libgomp thread spins before it sleeps, on a quiet machine: 10,000 iterations (a fraction of a
# millisecond) covers the gap between two ops of a step; libgomp's own default is 300,000, and 100,000 measured no
# faster on an idle machine while costing more under load (module docstring).
SPIN_COUNT = 10_000
# Other runnable tasks (the median of the samples) at or under which the machine counts as quiet: torch takes every
# core it may use, so one more runnable task already shares a core with a spinning thread.
QUIET_OTHERS = 0.5
SAMPLES, SAMPLE_GAP_S = 5, 0.005  # /proc/loadavg's runnable count read 5 times over ~20 ms, the median kept
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

CHOICE: dict = {}  # what choose() decided when loratune was imported, and whether it reached torch (run.json `openmp`)


def runnable_others(read: Callable[[], str] | None = None) -> float | None:
    """Other tasks runnable right now, machine-wide: the median over SAMPLES reads of /proc/loadavg's running
    count (its fourth field, `running/total`) less this process's reading thread, so a process that runs for a
    moment (a shell pipeline starting beside this one) does not count. None where there is no /proc."""
    def proc() -> str:
        with open("/proc/loadavg", encoding="ascii") as f:
            return f.read()

    read = read or proc
    counts = []
    try:
        for i in range(SAMPLES):
            if i:
                time.sleep(SAMPLE_GAP_S)
            counts.append(int(read().split()[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        return None
    return float(statistics.median(counts))


def choose(environ: MutableMapping[str, str] = os.environ, others: Callable[[], float | None] = runnable_others
           ) -> dict:
    """Set the wait policy in `environ` (see the module docstring) and return the record of what was chosen."""
    given = {k: environ[k] for k in USER_KEYS if k in environ}
    if given:
        return {"wait": "environment", **given, "reason": "set in the environment before loratune was imported"}
    n = others()
    # PASSIVE stays set in both cases: runtimes other than libgomp (LLVM's libomp) do not read GOMP_SPINCOUNT
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if n is not None and n <= QUIET_OTHERS:
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
        return {"wait": "spin", "GOMP_SPINCOUNT": SPIN_COUNT, "others_runnable": round(n, 2),
                "reason": f"quiet at start: {n:g} other tasks runnable (<= {QUIET_OTHERS:g}); libgomp threads "
                          f"spin {SPIN_COUNT:,} iterations before they sleep"}
    seen = "no /proc/loadavg to read" if n is None else f"{n:g} other tasks runnable (> {QUIET_OTHERS:g})"
    return {"wait": "passive", "OMP_WAIT_POLICY": "PASSIVE", "others_runnable": None if n is None else round(n, 2),
            "reason": f"{seen}: waiting threads sleep, so they do not take cores other jobs need"}

