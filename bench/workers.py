"""1 vs 2 vs 3 processes on one study (the leader, plus 0, 1 or 2 `--worker` processes), on scripted
trial outcomes (tests/workers_script.py: the protocol's lr_binds world, each trial a fixed sleep), on
SQLite and, when a PostgreSQL server URL is given, on PostgreSQL. Writes bench/results/workers.md.

    .venv/bin/python bench/workers.py [--trial-s 2] [--postgres postgresql://postgres@127.0.0.1:PORT]
    .venv/bin/python bench/workers.py --render bench/results/workers.json   # rewrite the md only
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "workers_script.py"


def spawn(role, url, study_dir, out, trial_s, wait_workers=0):
    env = {**os.environ, "LORATUNE_TEST_HEARTBEAT_S": "2", "LORATUNE_SCRIPTED_TRIAL_S": str(trial_s),
           "LORATUNE_TEST_WAIT_WORKERS": str(wait_workers)}
    return subprocess.Popen([sys.executable, str(SCRIPT), role, url, str(study_dir), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(str(out) + ".err", "w"))


def one(url: str, tmp: Path, workers: int, trial_s: float) -> dict:
    study_dir = tmp / "study"
    t0 = time.time()
    procs = [spawn("leader", url, study_dir, tmp / "leader.json", trial_s, wait_workers=workers)]
    procs += [spawn("worker", url, study_dir, tmp / f"w{i}.json", trial_s) for i in range(workers)]
    for p in procs:
        p.wait(timeout=900)
    wall = time.time() - t0
    led = json.loads((tmp / "leader.json").read_text())
    done = collections.Counter()
    per = collections.Counter()
    for name in ["leader"] + [f"w{i}" for i in range(workers)]:
        log = Path(f"{tmp / name}.json.log")  # absent: that process trained nothing
        for what, _, key in (json.loads(x) for x in (log.read_text().splitlines() if log.exists() else [])):
            if what == "done":
                done[key] += 1
                per[name] += 1
    return {"processes": workers + 1, "wall_s": wall, "leader_s": led["wall_s"], "trials": sum(done.values()),
            "duplicates": sum(c - 1 for c in done.values() if c > 1), "by_process": dict(per),
            "decisions": [[re.sub(r"#\d+", "#", str(x)) for x in d] for d in led["decisions"]], "final": led["final"]}


def gains(rows: list[dict]) -> str:
    """Each engine's trials per hour with 2 processes over 1 and with 3 over 2, from the rows."""
    parts = []
    for engine in dict.fromkeys(r["engine"] for r in rows):
        rate = {r["processes"]: 3600 * r["trials"] / r["leader_s"] for r in rows if r["engine"] == engine}
        steps = [f"{'a second' if n == 2 else 'a third' if n == 3 else f'process {n}'} process "
                 f"{rate[n] / rate[n - 1] - 1:+.0%}" for n in sorted(rate) if n - 1 in rate]
        if steps:
            parts.append(f"on {engine}, " + ", ".join(steps))
    return "; ".join(parts) or "no comparison (a single process count)"


def render(record: dict) -> str:
    """workers.md from a record (workers.json): the command of the options given, the machine's core count,
    the gains computed from the rows."""
    rows = record["rows"]
    cmd = f"bench/workers.py --trial-s {record['trial_s']:g}" + (" --postgres URL" if record.get("postgres") else "")
    cores = record.get("cpu_cores")
    lines = ["# 1 vs 2 vs 3 processes on one study", "",
             f"`{cmd}`: the leader (`loratune tune`) plus 0, 1 or 2 workers "
             "(`loratune tune --worker`) on one study, on scripted trial outcomes (the protocol's `lr_binds` world of "
             f"tests/unit/test_protocol.py; each trial sleeps {record['trial_s']:g} s instead of training), this "
             f"machine ({f'{cores} CPU cores' if cores else 'CPU cores not recorded'}), heartbeat 2 s. Trials/hour "
             "counts the trials trained per hour of the leader's wall time (study open to the last decision).", ""]
    if record.get("rebuilt_from"):  # a record made from an md, not by a run
        lines += [f"This record was rebuilt from {record['rebuilt_from']}.", ""]
    lines += ["| engine | processes | leader wall s | trials | trials/hour | duplicates | trials by process | "
             "decisions and pick = 1 process |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['processes']} | {r['leader_s']:.1f} | {r['trials']} | "
                     f"{3600 * r['trials'] / r['leader_s']:.0f} | {r['duplicates']} | "
                     f"{', '.join(f'{k} {v}' for k, v in sorted(r['by_process'].items()))} | "
                     f"{'yes' if r['same_decisions'] else 'NO'} |")
    same = all(r["same_decisions"] for r in rows)
    dup = sum(r["duplicates"] for r in rows)
    lines += ["", "What limits the speed-up: the protocol's decisions depend on earlier trials, so only the "
              "independent trials of a stage are queued for workers (the pair's two arms, the seed replicates, the "
              "pick's long runs); the other stages run one trial at a time whatever the number of workers. In this "
              "world the queued batches hold 2 trials each (pair arms, 2 extra seeds; one long run of the pick). "
              f"Trials per hour, measured above: {gains(rows)}. "
              + ("The decisions, the pick and the trial count are those of one process" if same
                 else "Some rows' decisions or pick DIFFER from one process's")
              + (", with no trial run twice. " if dup == 0 else f"; {dup} trials ran twice. ")
              + "The gain grows with the share of batched stages in the budget (a larger `seeds` setting; the "
              "samplers' strategies are not batched yet).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trial-s", type=float, default=2.0)
    ap.add_argument("--postgres", help="a server URL without database, e.g. postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--render", metavar="JSON", help="only rewrite workers.md from a workers.json")
    args = ap.parse_args()
    if args.render:
        record = json.loads(Path(args.render).read_text(encoding="utf-8"))
        (ROOT / "bench" / "results" / "workers.md").write_text(render(record), encoding="utf-8")
        return
    engines = [("sqlite", None)] + ([("postgresql", args.postgres)] if args.postgres else [])
    rows = []
    for engine, base in engines:
        ref = None
        for workers in (0, 1, 2):
            with tempfile.TemporaryDirectory() as d:
                tmp = Path(d)
                if engine == "sqlite":
                    url = f"sqlite:///{tmp / 'study.db'}"
                else:
                    import psycopg2

                    name = f"bench_w{workers}_{os.getpid()}"
                    c = psycopg2.connect(base + "/postgres")
                    c.autocommit = True
                    c.cursor().execute(f"CREATE DATABASE {name}")
                    c.close()
                    url = f"{base}/{name}"
                r = one(url, tmp, workers, args.trial_s)
            ref = ref or r
            r["same_decisions"] = r["decisions"] == ref["decisions"] and r["final"] == ref["final"]
            r["engine"] = engine
            rows.append(r)
            print(engine, r["processes"], f"{r['leader_s']:.1f}s", r["trials"], r["duplicates"], r["same_decisions"],
                  flush=True)
    out = ROOT / "bench" / "results" / "workers.md"
    record = {"trial_s": args.trial_s, "postgres": bool(args.postgres), "cpu_cores": os.cpu_count(), "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2), encoding="utf-8")  # for --render
    out.write_text(render(record), encoding="utf-8")
    print(out)


if __name__ == "__main__":
    main()
