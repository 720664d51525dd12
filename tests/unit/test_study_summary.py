"""The study's finishing step (search/summary.py): the recommendation decision and study.json."""

from __future__ import annotations

import json

from loratune.search.budget import Budget, CostModel, Meter
from loratune.search.context import SearchContext
from loratune.search.summary import finish
from loratune.search.trial import TrialRecord, TrialResult, TrialSpec
from memory_store import MemoryStore


class _Runner:
    objective = "val/subset_accuracy"  # a multi-label study

    def evaluate(self, run_dir, split="test"):
        return {"test/subset_accuracy": 0.2, "test/macro_f1": 0.525, "test/n": 5}


def test_the_finish_decision_names_the_test_score_of_the_objective(tmp_path):
    """Multi-label: the trail paired val subset accuracy with test macro-F1 (0.5250) while the recommendation showed
    test subset accuracy (0.2000); the decision names the objective's own test score."""
    store = MemoryStore(tmp_path, decisions_path=tmp_path / "decisions.jsonl")
    ctx = SearchContext(store=store, runner=_Runner(), meter=Meter(Budget.parse("10trials")), trial_examples=100,
                        costs=CostModel())
    rec = TrialRecord(2, TrialSpec("lr1e-2", "phase1-lr-grid", {"adapter.r": 4, "train.learning_rate": 1e-2}),
                      str(tmp_path / "trials" / "02-lr1e-2"),
                      TrialResult(status="completed", value=0.55, examples=100, wall_s=1.0,
                                  objective="val/subset_accuracy"))
    ctx.state["final"] = rec
    summary = finish(ctx, tmp_path / "final", "protocol")
    last = summary["trail"][-1]
    assert last["kind"] == "recommendation"
    assert last["verdict"].endswith("val subset accuracy 0.550, test subset accuracy 0.2000"), last["verdict"]
    assert summary["recommendation"]["test"]["test/subset_accuracy"] == 0.2
    json.dumps(summary, default=str)
