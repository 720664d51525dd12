"""The study's finishing step (search/summary.py): the recommendation decision and study.json."""

from __future__ import annotations

import json
from pathlib import Path

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


LORA_FILES = ("adapter_config.json", "adapter_model.safetensors", "label_map.json", "tokenizer.json")
FULL_FILES = ("config.json", "model.safetensors", "label_map.json", "tokenizer.json")


def _pick_with_model(tmp_path, number, name, files):
    """A finished trial whose adapter/ holds `files` (each file's text names the trial), or no adapter/ (files None)."""
    run_dir = tmp_path / "trials" / f"{number:02d}-{name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if files is not None:
        (run_dir / "adapter").mkdir(exist_ok=True)
        for f in files:
            (run_dir / "adapter" / f).write_text(f"{name} {f}")
    return TrialRecord(number, TrialSpec(name, "final-train", {"adapter.r": 4}), str(run_dir),
                       TrialResult(status="completed", value=0.5, examples=100, wall_s=1.0))


def _finish_with(tmp_path, rec):
    ctx = SearchContext(store=MemoryStore(tmp_path), runner=_Runner(), meter=Meter(Budget.parse("10trials")),
                        trial_examples=100, costs=CostModel())
    ctx.state["final"] = rec
    return finish(ctx, tmp_path / "final", "protocol")


def test_a_resume_that_picks_another_model_replaces_the_exported_one_whole(tmp_path):
    """A resumed study whose new pick is a full fine-tuning run after a LoRA one: final/adapter held both models' files
    (copied into the old folder), and transformers loaded the stale adapter_config.json into the new full model. The
    export is the new pick's folder alone, each way round, and a pick without a saved model leaves none."""
    final = tmp_path / "final" / "adapter"
    summary = _finish_with(tmp_path, _pick_with_model(tmp_path, 3, "lora", LORA_FILES))
    assert sorted(p.name for p in final.iterdir()) == sorted(LORA_FILES)
    assert summary["recommendation"]["files"]["adapter"] == str(final)
    _finish_with(tmp_path, _pick_with_model(tmp_path, 7, "full", FULL_FILES))
    assert sorted(p.name for p in final.iterdir()) == sorted(FULL_FILES)
    assert {p.read_text() for p in final.iterdir()} == {f"full {f}" for f in FULL_FILES}
    _finish_with(tmp_path, _pick_with_model(tmp_path, 3, "lora", LORA_FILES))
    assert sorted(p.name for p in final.iterdir()) == sorted(LORA_FILES)
    summary = _finish_with(tmp_path, _pick_with_model(tmp_path, 9, "unsaved", None))
    assert not final.exists() and "adapter" not in summary["recommendation"]["files"]
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["study.json", "test.json"]  # nothing hidden left


def test_an_export_that_fails_midway_keeps_the_earlier_pick_whole(tmp_path, monkeypatch):
    """A copy that stops half-way (a full disk, a kill) leaves final/adapter the earlier pick's, never a mix; the next
    export removes what the stopped one left."""
    import shutil

    import pytest

    final = tmp_path / "final" / "adapter"
    _finish_with(tmp_path, _pick_with_model(tmp_path, 3, "lora", LORA_FILES))
    real = shutil.copytree

    def copy_then_fail(src, dst, **kw):
        if str(src).endswith("model.safetensors"):  # the other files may be copied by then
            raise OSError(28, "No space left on device")
        return shutil.copy2(src, dst, **kw)

    monkeypatch.setattr(shutil, "copytree", lambda src, dst, **kw: real(src, dst, copy_function=copy_then_fail, **kw))
    with pytest.raises(OSError, match="No space left"):
        _finish_with(tmp_path, _pick_with_model(tmp_path, 7, "full", FULL_FILES))
    assert sorted(p.name for p in final.iterdir()) == sorted(LORA_FILES)
    assert {p.read_text() for p in final.iterdir()} == {f"lora {f}" for f in LORA_FILES}
    monkeypatch.setattr(shutil, "copytree", real)
    (tmp_path / "final" / ".adapter.killed.tmp").mkdir()  # what a kill -9 mid-copy leaves
    _finish_with(tmp_path, _pick_with_model(tmp_path, 7, "full", FULL_FILES))
    assert sorted(p.name for p in final.iterdir()) == sorted(FULL_FILES)
    assert not list((tmp_path / "final").glob(".adapter.*"))


class _PromptSetRunner:
    objective = "val/prompt_novel_chrf"  # a causal-lm study judged on its prompt set

    def evaluate(self, run_dir, split="test"):
        # inference.evaluate scores the prompt set on any split, under its val/ keys: the number the pick was chosen on
        return {"test/loss": 2.1270669, "test/perplexity": 8.39, "test/tokens": 60, "val/prompt_novel_chrf": 0.367}


def test_a_prompt_set_objective_has_no_held_out_test_score_and_its_test_loss_is_said_as_measured(tmp_path):
    """A prompt-set objective (tune prompt_set=... metric_for_best_model=prompt_novel_chrf): the finish decision read
    '#1 lr0.02: novel prompt-set chrf 0.367, test loss 2.1271', pairing the objective with the test loss as if it were
    the pick's test score, and the report's test tile said 'no test split' though test was scored. Now every reader
    (finish, show, report, tune's print) says that a prompt-set objective has no held-out test score and names the
    test loss as what was measured on test."""
    import io

    from rich.console import Console

    from loratune.commands.tune import print_summary
    from loratune.report.render import render
    from loratune.report.study import build_study_report, show_study

    store = MemoryStore(tmp_path, decisions_path=tmp_path / "decisions.jsonl")
    ctx = SearchContext(store=store, runner=_PromptSetRunner(), meter=Meter(Budget.parse("10trials")),
                        trial_examples=100, costs=CostModel())
    rec = TrialRecord(1, TrialSpec("lr0.02", "phase1-lr-grid", {"adapter.r": 8, "train.learning_rate": 0.02}),
                      str(tmp_path / "trials" / "01-lr0.02"),
                      TrialResult(status="completed", value=0.367, examples=100, wall_s=1.0,
                                  objective="val/prompt_novel_chrf"))
    ctx.records.append(rec)
    ctx.state["final"] = rec
    Path(rec.run_dir).mkdir(parents=True)
    (Path(rec.run_dir) / "run.json").write_text(json.dumps({"objective": "val/prompt_novel_chrf"}))
    (Path(rec.run_dir) / "config.yaml").write_text("train:\n  learning_rate: 0.02\n")
    summary = finish(ctx, tmp_path / "final", "protocol")
    verdict = summary["trail"][-1]["verdict"]
    assert "measured on test: test loss 2.1271" in verdict and "no held-out test score" in verdict, verdict
    from loratune.objectives import PROMPT_SET_NO_TEST, pick_test_score

    ts = pick_test_score("val/prompt_novel_chrf", summary["recommendation"]["test"])
    assert not ts.held_out and ts.metric.key == "test/loss" and ts.value == 2.1270669 and ts.note == PROMPT_SET_NO_TEST
    said = f"measured on test: test loss 2.1271 ({PROMPT_SET_NO_TEST})"
    assert summary["trail"][-1]["verdict"] == f"#1 lr0.02: novel prompt-set chrf 0.367, {said}"
    # tune's print
    out = Console(file=io.StringIO(), width=1000)
    print_summary(out, {**summary, "wall_s_session": 1.0})
    line = next(x for x in out.file.getvalue().splitlines() if x.startswith("recommendation:"))
    assert line == f"recommendation: trial #1 lr0.02: novel prompt-set chrf 0.3670, {said}"
    # loratune show
    s = build_study_report(tmp_path)
    con = Console(file=io.StringIO(), width=1000)
    show_study(con, s)
    line = next(x for x in con.file.getvalue().splitlines() if x.startswith("recommendation:"))
    assert line.endswith(f"novel prompt-set chrf 0.367 · measured on test: test loss 2.127 ({PROMPT_SET_NO_TEST})")
    # the report's test tile: the test loss, named as measured on test; never "no test split"
    html = render(s)
    tile = html.split('data-key="test">', 1)[1].split("</div></div>", 1)[0]
    assert '<div class="k">test loss</div>' in tile and "2.127" in tile and "no test split" not in tile
    assert "measured on test, not the objective: a prompt-set objective has no held-out test score" in tile


def test_the_pick_test_score_rule():
    """objectives.pick_test_score, the one rule: the objective's own test metric when scored, else what test
    measured, named as itself."""
    from loratune.objectives import pick_test_score

    own = pick_test_score("val/subset_accuracy", {"test/subset_accuracy": 0.2, "test/macro_f1": 0.5})
    assert own.held_out and own.metric.key == "test/subset_accuracy" and own.text() == "test subset accuracy 0.2000"
    loss = pick_test_score("val/loss", {"test/loss": 1.8647})
    assert loss.held_out and loss.text() == "test loss 1.8647"
    older = pick_test_score("val/weighted_f1", {"test/macro_f1": 0.5})
    assert not older.held_out and older.text() == "measured on test: test macro-F1 0.5000 (test weighted F1 was not scored)"
    none = pick_test_score("val/prompt_familiar_exact_match", None)
    assert none.metric is None and none.text() == ""


def test_a_study_whose_objective_never_moved_says_so_and_which_trial_the_val_loss_favours(tmp_path):
    """A generative classifier's trials all at val macro-F1 0.0 (no output named a label yet): the gain rule keeps
    the incumbent #0 (val loss 2.533) while the val loss favours #1 (2.188), and the finish decision, show and the
    report said only 'val macro-F1 0.000', as if the pick were a score. They say the objective never moved off 0.000
    in any trial and which trial the val loss favours, with both losses (one message: flat_objective_note)."""
    import io

    from rich.console import Console

    from loratune.report.charts import esc
    from loratune.report.render_study import recommendation_section
    from loratune.report.study import build_study_report, show_study
    from loratune.search.study import Study

    class Runner:
        def evaluate(self, run_dir, split="test"):
            return {"test/macro_f1": 0.0, "test/loss": 2.39, "test/n": 12}

    store = Study.open(tmp_path, meta={"strategy": "protocol"})
    records = []
    for n, loss in enumerate((2.533, 2.188, 2.476)):
        spec = TrialSpec(f"t{n}", "phase1-lr-grid", {"adapter.r": 8, "train.learning_rate": 1e-2 / (n + 1)})
        trial, run_dir = store.start(spec)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "config.yaml").write_text("train:\n  learning_rate: 0.01\n")
        res = TrialResult(status="completed", value=0.0, examples=80, wall_s=1.0, task="causal-lm",
                          best={"step": 10, "val/macro_f1": 0.0, "val/loss": loss})
        store.finish(trial, spec, run_dir, res)
        records.append(TrialRecord(n, spec, str(run_dir), res))
    store.close()
    ctx = SearchContext(store=MemoryStore(tmp_path, decisions_path=tmp_path / "decisions.jsonl"), runner=Runner(),
                        meter=Meter(Budget.parse("10trials")), trial_examples=100, costs=CostModel())
    ctx.records.extend(records)
    ctx.state["final"] = records[0]  # the incumbent the gain rule kept
    summary = finish(ctx, tmp_path / "final", "protocol")
    note = ("val macro-F1 never moved off 0.000 in any trial (3 scored): it tells no trial from another, and the pick "
            "is not a better score (a change needs a gain beyond noise); the val loss favours #1 t1 (val loss 2.188, "
            "the pick's 2.533)")
    assert summary["trail"][-1]["kind"] == "recommendation" and note in summary["trail"][-1]["evidence"]
    s = build_study_report(tmp_path)
    assert s.flat_note == note
    con = Console(file=io.StringIO(), width=1000)
    show_study(con, s)
    assert f"note: {note}" in con.file.getvalue()
    assert esc(note) in recommendation_section(s)
    # a trial that moved: nothing to say
    moved = [records[0], TrialRecord(1, records[1].spec, records[1].run_dir,
                                     TrialResult(status="completed", value=0.1, examples=80, wall_s=1.0,
                                                 best={"step": 10, "val/loss": 2.0}))]
    from loratune.search.trial import flat_objective_note, kept_loss

    assert flat_objective_note(ctx.objective, [(r.label, r.value, kept_loss(r.result.best)) for r in moved],
                               moved[0].label) is None


def test_a_val_loss_studys_trials_rank_by_their_value():
    """kept_order built the kept point as {objective: value, "val/loss": the record's best val loss}: in a val-loss
    study the second overwrote the first, so a trial whose value came from its curve (the record's best is the
    untrained model: no kept val loss) ranked as nothing kept, behind a worse trial."""
    from loratune.search.trial import FIRST_TRAINED_STEP

    def rec(n, loss, best):
        return TrialRecord(n, TrialSpec(f"t{n}", "phase1-lr-grid", {}), f"t{n}",
                           TrialResult(status="completed", value=-loss, examples=1, wall_s=1.0, objective="val/loss",
                                       best=best))

    curve_only = rec(0, 1.5, {"step": FIRST_TRAINED_STEP - 1, "val/loss": 2.5})
    worse = rec(1, 2.0, {"step": 10, "val/loss": 2.0})
    assert curve_only.rank == (-1.5, 0.0, 0) and max((curve_only, worse), key=lambda r: r.rank) is curve_only


def test_evaluate_on_test_prints_the_prompt_set_scores_apart_from_the_splits(capsys):
    """`loratune evaluate RUN --split test` on a prompt-set run printed val/prompt_novel_chrf among the test scores
    with nothing saying it is no test-split score: the prompt set is one set, scored the same whatever the split. It
    prints them under their own heading, in the wording of the study's note (objectives.PROMPT_SET_ONE_SET)."""
    from argparse import Namespace

    from loratune.commands.evaluate import show
    from loratune.objectives import PROMPT_SET_NO_TEST, PROMPT_SET_ONE_SET

    show(Namespace(json=False, split="test"), {"test/n": 12, "test/loss": 2.1270669, "val/prompt_novel_chrf": 0.367,
                                                "val/prompt_familiar_exact_match": 0.25})
    lines = capsys.readouterr().out.splitlines()
    head = f"prompt-set scores, not test-split scores: {PROMPT_SET_ONE_SET}"
    assert lines == ["test/n: 12", "test/loss: 2.1271", head, "  val/prompt_familiar_exact_match: 0.2500",
                     "  val/prompt_novel_chrf: 0.3670"], lines
    assert PROMPT_SET_ONE_SET in PROMPT_SET_NO_TEST  # one wording
