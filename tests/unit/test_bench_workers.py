"""bench/workers.py's rendering (render) on synthetic rows: the gains sentence, the command and the core count come
from the record, not from fixed text. No processes started."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import workers as bw  # noqa: E402


def row(engine: str, processes: int, leader_s: float, trials: int = 11, same: bool = True, dup: int = 0) -> dict:
    return {"engine": engine, "processes": processes, "leader_s": leader_s, "trials": trials, "duplicates": dup,
            "by_process": {"leader": trials}, "same_decisions": same}


def test_gains_are_computed_from_the_rows():
    """The md said 'a second process gains about 15% ... and a third nothing more' whatever the rows held."""
    rows = [row("sqlite", 1, 36.0), row("sqlite", 2, 18.0), row("sqlite", 3, 12.0)]  # 1100, 2200, 3300 per hour
    md = bw.render({"trial_s": 2.0, "postgres": False, "cpu_cores": 8, "rows": rows})
    assert "on sqlite, a second process +100%, a third process +50%" in md
    assert "about 15%" not in md
    assert "`bench/workers.py --trial-s 2`" in md and "--postgres" not in md
    assert "this machine (8 CPU cores)" in md and "2 shared CPU cores" not in md
    assert "with no trial run twice" in md


def test_postgres_rows_name_the_option_and_each_engine():
    rows = [row("sqlite", 1, 25.7), row("sqlite", 2, 22.3), row("sqlite", 3, 22.1),
            row("postgresql", 1, 24.1), row("postgresql", 2, 20.8), row("postgresql", 3, 21.3, dup=1)]
    md = bw.render({"trial_s": 0.5, "postgres": True, "cpu_cores": 2, "rows": rows})
    assert "`bench/workers.py --trial-s 0.5 --postgres URL`" in md
    assert "on sqlite, a second process +15%, a third process +1%; on postgresql, a second process +16%, " \
           "a third process -2%" in md
    assert "1 trials ran twice" in md and "with no trial run twice" not in md


def test_committed_page_is_its_json_rendered():
    """workers.md was never regenerated after render() came (its fixed 'about 15% ... a third nothing more' and
    '2 shared CPU cores' stayed) and no workers.json was committed to render it from."""
    import json

    record = json.loads((ROOT / "bench" / "results" / "workers.json").read_text(encoding="utf-8"))
    md = (ROOT / "bench" / "results" / "workers.md").read_text(encoding="utf-8")
    assert md == bw.render(record)
    assert "about 15%" not in md and "2 shared CPU cores" not in md and "CPU cores not recorded" in md
    assert "`bench/workers.py --trial-s 2 --postgres URL`" in md
    assert "This record was rebuilt from bench/results/workers.md as first written" in md
    assert "on sqlite, a second process +15%, a third process +1%" in md
