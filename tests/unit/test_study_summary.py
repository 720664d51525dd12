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


def test_a_resume_that_picks_another_trial_says_test_was_scored_before(tmp_path):
    """A resumed study whose pick changed scores the new pick on test: test.json keeps the earlier pick's score, the
    recommendation and its decision name it, and the report does not say "scored once, on the pick only"."""
    from loratune.report.render_study import _test_detail
    from loratune.report.study import build_study_report

    class Runner:
        def evaluate(self, run_dir, split="test"):
            return {"test/macro_f1": 0.9 if run_dir.endswith("05-steps60") else 0.8, "test/n": 5}

    def pick(number, name, value):
        run_dir = tmp_path / "trials" / f"{number:02d}-{name}"
        run_dir.mkdir(parents=True, exist_ok=True)
        return TrialRecord(number, TrialSpec(name, "final-train", {"adapter.r": 4, "train.learning_rate": 2e-2}),
                           str(run_dir), TrialResult(status="completed", value=value, examples=100, wall_s=1.0))

    # two sessions of one study, each picking its own trial
    for number, name, value in ((5, "steps60", 0.85), (2, "lr0.01-steps60", 0.71)):
        ctx = SearchContext(store=MemoryStore(tmp_path), runner=Runner(), meter=Meter(Budget.parse("10trials")),
                            trial_examples=100, costs=CostModel())
        ctx.state["final"] = pick(number, name, value)
        summary = finish(ctx, tmp_path / "final", "protocol")
    saved = json.loads((tmp_path / "final" / "test.json").read_text())
    assert saved["trial"] == 2 and saved["scores"]["test/macro_f1"] == 0.8
    assert [(e["trial"], e["scores"]["test/macro_f1"]) for e in saved["earlier"]] == [(5, 0.9)]
    assert summary["recommendation"]["test_earlier"] == [5]
    assert any("scored before, on an earlier session's pick #5" in e for e in summary["trail"][-1]["evidence"])
    detail = _test_detail(build_study_report(tmp_path))
    assert detail.startswith("scored 2 times: also on #5") and "once" not in detail
    # a third session back at #5: its stored score is its test score (it was scored on test twice, and the report
    # counted 2 looks for 3)
    calls: list[str] = []

    class Counting(Runner):
        def evaluate(self, run_dir, split="test"):
            calls.append(Path(run_dir).name)
            return super().evaluate(run_dir, split)

    ctx = SearchContext(store=MemoryStore(tmp_path), runner=Counting(), meter=Meter(Budget.parse("10trials")),
                        trial_examples=100, costs=CostModel())
    ctx.state["final"] = pick(5, "steps60", 0.85)
    summary = finish(ctx, tmp_path / "final", "protocol")
    assert calls == []
    saved = json.loads((tmp_path / "final" / "test.json").read_text())
    assert (saved["trial"], saved["scores"]["test/macro_f1"]) == (5, 0.9)
    assert [e["trial"] for e in saved["earlier"]] == [2] and summary["recommendation"]["test_earlier"] == [2]
    assert _test_detail(build_study_report(tmp_path)).startswith("scored 2 times: also on #2")
