"""A test double of the study store (`loratune.search.context.Store`): trials in a list, decisions in a
list or, given a path, in the real append-only decision log."""

from __future__ import annotations

from pathlib import Path

from loratune.search.trial import TrialRecord, TrialResult, TrialSpec


class MemoryStore:
    """A study store without Optuna or files: the methods of `loratune.search.context.Store`."""

    def __init__(self, root: str | Path = "mem", decisions_path: str | Path | None = None):
        from loratune.search.study import DecisionLog

        self.dir = Path(root)
        self._records: list[TrialRecord] = []
        self._n = 0
        self.decisions = DecisionLog(Path(decisions_path)) if decisions_path else _ListLog()
        self.recovered: list[dict] = []

    def records(self) -> list[TrialRecord]:
        return list(self._records)

    def finished_by_key(self) -> dict[str, TrialRecord]:
        out: dict[str, TrialRecord] = {}
        for r in self._records:
            out.setdefault(r.key, r)
        return out

    def start(self, spec: TrialSpec, trial=None):
        n = self._n
        self._n += 1
        return n, self.dir / "trials" / f"{n:02d}-{spec.name}"

    def finish(self, trial, spec: TrialSpec, run_dir: Path, result: TrialResult) -> TrialRecord:
        rec = TrialRecord(int(trial), spec, str(run_dir), result)
        self._records.append(rec)
        return rec

    def fail(self, trial, reason: str, status: str = "interrupted") -> None:
        pass


class _ListLog:
    def __init__(self):
        self.entries: list[dict] = []

    def append(self, decision: dict) -> dict:
        self.entries.append(decision)
        return decision
