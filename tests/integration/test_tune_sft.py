"""`loratune tune task=causal-lm` end to end on a tiny random-init Llama: phase 0 from the rendered token
lengths (assess.sft), trials judged on the val loss (lower is better, shown as itself), the LoRA-vs-full
decision on it, and the pick scored on test by the causal-lm evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.config import load_config

from sft_support import make_sft_rows, save_tiny_llama_lm
from support import write_jsonl


@pytest.fixture(scope="module")
def sft_study(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("tune-sft")
    lm = save_tiny_llama_lm(root / "lm", chat_template=False)
    data = root / "data"
    data.mkdir()
    for name, n, seed in (("train", 10, 1), ("validation", 3, 2), ("test", 3, 3)):
        write_jsonl(data / f"{name}.jsonl", make_sft_rows(n, seed=seed))
    study = root / "study"
    rc = main(["tune", "task=causal-lm", f"name_or_path={lm}", f"dataset_name={data}", "learning_rate=1e-2",
               "max_length=32", "num_threads=1", "--study-dir", str(study), "--budget", "8trials",
               "--trial-steps", "10", "-q"])
    assert rc == 0
    return study, lm


def _summary(study: Path) -> dict:
    return json.loads((study / "final" / "study.json").read_text())


def test_phase_0_starts_from_the_sft_rule_table(sft_study):
    s = _summary(sft_study[0])
    rules = {c["rule"]: c["value"] for c in s["start"]["choices"]}
    assert rules["start-epochs-sft"] == 3.0 and rules["start-dropout-by-rows-sft"] == 0.1  # 40 rows: small data
    assert rules["start-rank-by-data"] == 8 and "start-lr-by-model-size" in rules
    assert s["start"]["facts"]["train_rows"] == 40
    facts = json.loads((sft_study[0] / "assess.json").read_text())["facts"]  # phase 0 as the study keeps it
    assert 0 < facts["completion_share"] < 1 and facts["token_p50"] <= facts["token_p99"] <= facts["token_max"]
    assert facts["model_layers"] == 2 and facts["model_hidden"] == 32
    codes = [d["code"] for d in s["trail"]]
    assert codes[:2] == ["start-config", "trial-plan"] and codes[-1] == "recommendation"


def test_trials_are_judged_on_the_val_loss_and_shown_as_it(sft_study):
    study, _ = sft_study
    s = _summary(study)
    assert s["objective"] == "val/loss"
    scored = [t for t in s["trials"] if t["objective_value"] is not None]
    assert len(scored) >= 4
    for t in scored:  # the value a person reads is the run's own best val loss, not the search's score
        best = json.loads((Path(t["run_dir"]) / "run.json").read_text())["best"]
        assert t["objective"] == "val/loss" and t["objective_value"] == pytest.approx(best["val/loss"])
        assert t["val_macro_f1"] is None  # no classifier column filled with a loss
    rec = s["recommendation"]
    # the pick is the trained trial with the lowest val loss of its phase-1 grid and later stages
    assert rec["objective_value"] == pytest.approx(min(t["objective_value"] for t in scored
                                                       if t["phase"] != "lora-vs-full"))
    decisions = " ".join(" ".join(d["evidence"]) + d["verdict"] for d in s["trail"])
    assert "val loss" in decisions and "macro-F1" not in decisions


def test_lora_vs_full_is_decided_on_the_loss_with_a_full_probe(sft_study):
    s = _summary(sft_study[0])
    lvf = s["lora_vs_full"]
    gap = next(r for r in lvf["reasons"] if r["id"] == "performance-gap")
    full = next(t for t in s["trials"] if t["point"].get("adapter.method") == "full")
    assert full["objective_value"] > 0 and f"val loss {full['objective_value']:.3f}" in gap["text"]
    assert any(d["code"] in ("choose-lora", "choose-full") for d in s["trail"])


def test_the_pick_is_scored_on_test_and_exported_ready_to_train(sft_study):
    study, lm = sft_study
    s = _summary(study)
    test = s["recommendation"]["test"]
    assert test["test/perplexity"] == pytest.approx(math.exp(test["test/loss"]))
    assert 0.0 <= test["test/token_accuracy"] <= 1.0 and test["test/tokens"] > 0
    final = study / "final"
    assert (final / "adapter" / "adapter_config.json").is_file() or (final / "adapter" / "config.json").is_file()
    cfg = load_config(final / "config.yaml")
    assert cfg.model.task == "causal-lm" and cfg.model.name_or_path == lm
    assert json.loads((final / "test.json").read_text())["trial"] == s["recommendation"]["trial"]
    # its model card names the study's files beside final/ and the trial's record, not a ../run.json final/ lacks
    card = (final / "adapter" / "README.md").read_text()
    assert card.startswith("# Causal LM fine-tuned (SFT) with loratune") and "../run.json" not in card
    assert f"`STUDY_DIR/trials/{Path(s['recommendation']['run_dir']).name}`" in card and "`../study.json`" in card


def test_the_study_report_shows_the_val_loss_as_study_json_has_it(sft_study, capsys):
    """`loratune report` / `show` of a causal-lm study name its objective (val loss, lower is better) where a
    classifier's say val macro-F1, and show each value as a person reads it (the loss, not the search's score)."""
    import re

    from loratune.report.study import build_study_report

    study, _ = sft_study
    s = _summary(study)
    rec, test = s["recommendation"], s["recommendation"]["test"]
    report = build_study_report(study)
    assert report.objective == "val/loss" and report.recommendation.value == pytest.approx(rec["objective_value"])
    values = {t["trial"]: t["objective_value"] for t in s["trials"]}
    assert {t.number: t.value for t in report.trials} == pytest.approx(values)
    # the best-so-far line tracks the lowest loss: it never rises and ends at the least loss of the study
    bsf = [p.best_so_far for p in report.best_vs_compute if p.best_so_far is not None]
    assert bsf == sorted(bsf, reverse=True) and bsf[-1] == pytest.approx(min(v for v in values.values() if v))
    assert report.best.value == pytest.approx(bsf[-1])
    for t in report.trials:  # each trial's curve is its history's val loss, ending where its best is
        if t.value is not None and t.curve:
            assert min(v for _, v in t.curve) == pytest.approx(t.value)

    assert main(["report", str(study)]) == 0
    html = (study / "report.html").read_text(encoding="utf-8")
    assert "val loss" in html and "val loss (lower is better)" in html and "macro-F1" not in html
    tile = re.search(r'data-key="recommended">.*?<div class="d">(.*?)</div>', html).group(1)
    assert f"val loss {rec['objective_value']:.3f}" in tile
    tile = re.search(r'data-key="test"><div class="k">(.*?)</div><div class="v[^"]*">(.*?)</div>', html)
    assert tile.groups() == ("test loss", f"{test['test/loss']:.3f}")
    assert f"perplexity {test['test/perplexity']:.3f}" in html
    for table in ("trials-table", "lora-full-table"):  # the pick's loss, never minus it (the score)
        cells = re.search(rf'id="{table}".*?</table>', html, re.S).group(0)
        assert f">{rec['objective_value']:.3f}<" in cells and f"-{rec['objective_value']:.3f}" not in cells, table
    # the rank table compares the rank sweep's like trials (a long run pick is no rank's score): their least loss
    least = min(p.value for p in report.rank.points)
    cells = re.search(r'id="rank-table".*?</table>', html, re.S).group(0)
    assert f">{least:.3f}<" in cells and f"-{least:.3f}" not in cells

    capsys.readouterr()
    assert main(["show", str(study)]) == 0
    out = capsys.readouterr().out
    assert f"val loss {rec['objective_value']:.3f} · test loss {test['test/loss']:.3f}" in out
    assert "rank vs val loss" in out and "macro-F1" not in out


def test_a_trial_whose_loop_raised_mid_record_is_failed_not_running(sft_study, tmp_path, monkeypatch):
    """The runner never leaves a trial `running` in its record or the study when its loop raised."""
    from loratune.config import load_config as load
    from loratune.search.runner import TrainingRunner
    from loratune.search.trial import TrialSpec
    from loratune.sft_data import load_sft_dataset
    from loratune.store import RunStore

    study, lm = sft_study
    base = load(study / "final" / "config.yaml")

    def half_written(cfg, dataset, store, **kw):
        store.create("x: 1\n")
        store.write_run({"status": "running", "reason": None, "steps_planned": 4})
        raise RuntimeError("the loop died")

    monkeypatch.setattr("loratune.sft.train_sft", half_written)
    res = TrainingRunner(base, load_sft_dataset(base.data)).run(TrialSpec("t", "test", {}), tmp_path / "t")
    run = RunStore(tmp_path / "t").read_run()
    assert (run["status"], run["reason"]) == ("failed", "RuntimeError: the loop died")
    assert res.status == "failed" and res.value is None


def test_a_causal_lm_trial_keeps_huggingface_hubs_warnings_off_the_terminal(tmp_path):
    # `tune -q` on causal-lm printed "Repo card metadata block was not found. Setting CardData to empty." about 3
    # times a trial (peft saving the adapter's model card): huggingface_hub's handler writes to the stderr it was set
    # up with, which the runner's redirect did not reach
    import logging

    from loratune.search.runner import TrainingRunner
    from loratune.search.trial import TrialSpec
    from loratune.tasks import recipe

    lm = save_tiny_llama_lm(tmp_path / "lm", chat_template=False)
    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in (("train", 6, 1), ("validation", 3, 2), ("test", 3, 3)):
        write_jsonl(data / f"{name}.jsonl", make_sft_rows(n, seed=seed))
    cfg = load_config(None, ["task=causal-lm", f"name_or_path={lm}", f"dataset_name={data}", "max_length=32",
                             "num_threads=1", "max_steps=2", "eval_steps=1", f"output_dir={tmp_path / 'unused'}"])
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    hub = logging.getLogger("huggingface_hub")
    keep = Keep(logging.WARNING)
    hub.addHandler(keep)
    try:
        level = hub.level
        res = TrainingRunner(cfg, recipe(cfg, "prepare")(cfg.data, seed=0)).run(TrialSpec("t", "p", {}), tmp_path / "r")
        assert hub.level == level  # restored after the trial
    finally:
        hub.removeHandler(keep)
    assert res.status == "completed" and (tmp_path / "r" / "adapter").is_dir()
    assert not [m for m in seen if "Repo card" in m], seen


def test_a_metric_the_prompt_set_cannot_score_is_refused_before_the_study_is_made(lm, tmp_path, capsys):
    """prompt_novel_chrf over familiar rows only: tune fell back to val/macro_f1 and failed at its first trial; now
    train's own check (sft.read_prompt_set), exit 2 and no study folder."""
    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in (("train", 10, 1), ("validation", 3, 2)):
        write_jsonl(data / f"{name}.jsonl", make_sft_rows(n, seed=seed))
    write_jsonl(tmp_path / "ps.jsonl", [{"prompt": "hello lost my card", "reference": "blocked", "group": "familiar"}])
    study = tmp_path / "study"
    rc = main(["tune", "task=causal-lm", f"name_or_path={lm}", f"dataset_name={data}", f"prompt_set={tmp_path / 'ps.jsonl'}",
               "metric_for_best_model=prompt_novel_chrf", "max_length=32", "--study-dir", str(study), "-q"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "Traceback" not in err and not study.exists()
    assert "prompt_novel_chrf scores the prompt set's 'novel' rows, and data.prompt_set has none" in err


def test_resuming_a_study_recorded_before_loss_covers_notes_that_its_losses_are_not_comparable(tmp_path, capsys):
    """A study whose trials learnt each multi-turn chat's last answer only (recorded before every assistant turn was
    learnt), resumed: its new trials' val/loss covers every assistant turn, so the two are said not comparable."""
    from loratune.search.study import Study
    from loratune.sft_data import EVERY_TURN, LOSS_COVERS_KEY
    from loratune.store import STUDY_META_ATTR

    lm = save_tiny_llama_lm(tmp_path / "lm", chat_template=True)
    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in (("train", 10, 1), ("validation", 3, 2), ("test", 3, 3)):
        rows = make_sft_rows(n, seed=seed)
        write_jsonl(data / f"{name}.jsonl", [
            {"messages": [{"role": "user", "content": a["prompt"]}, {"role": "assistant", "content": a["completion"]},
                          {"role": "user", "content": b["prompt"]}, {"role": "assistant", "content": b["completion"]}]}
            for a, b in zip(rows, rows[1:] + rows[:1])])
    study = tmp_path / "study"
    args = ["task=causal-lm", f"name_or_path={lm}", f"dataset_name={data}", "learning_rate=1e-2", "max_length=48",
            "num_threads=1", "--study-dir", str(study), "--trial-steps", "4", "-q"]
    assert main(["tune", *args, "--budget", "2trials"]) == 0
    s = Study.open(study, resume=True)
    meta = s.meta
    assert meta.pop(LOSS_COVERS_KEY) == EVERY_TURN
    s.optuna.set_user_attr(STUDY_META_ATTR, meta)  # as a study recorded before the key
    s.close()
    capsys.readouterr()
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "3trials", "-q"]) == 0
    said = capsys.readouterr()
    said = " ".join((said.out + said.err).split())  # (the notes wrap to the terminal's width)
    assert ("the study's earlier trials learnt and scored each chat's last assistant turn" in said
            and "their losses are not comparable" in said)
