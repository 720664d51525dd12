"""tpe-hyperband's pruner stops a real trial through the tune callback: Optuna's Hyperband, asked at each eval
point the trial reported (`trial.should_prune`), ends the run like every pruned trial (run.json `interrupted`
with the reason, the best adapter saved, the Optuna trial PRUNED). Tiny random-init BERT, 12 steps."""

from __future__ import annotations

import json
from pathlib import Path

from loratune.config import load_config
from loratune.data import load_dataset
from loratune.search.budget import Budget, Meter
from loratune.search.context import SearchContext
from loratune.search.runner import TrainingRunner
from loratune.search.study import Study
from loratune.search.yardstick import HYPERBAND_REDUCTION, hyperband_check

from support import overrides


def test_a_hyperband_stop_ends_a_real_trial_as_pruned(tiny_bert, intent_data, tmp_path):
    import optuna

    cfg = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "unused", max_steps=12, eval_steps=4,
                                      num_threads=1))
    study = Study.open(tmp_path / "study", meta={"strategy": "tpe-hyperband"})
    # rungs from step 4 (the first eval point) to 8: one bracket, so the trial meets the one before it at step 4
    study.optuna.pruner = optuna.pruners.HyperbandPruner(min_resource=4, max_resource=8,
                                                         reduction_factor=HYPERBAND_REDUCTION)
    ahead = study.optuna.ask()  # a finished trial that reached val 1.0 by the rung: no real trial can beat it
    ahead.report(1.0, 4)
    assert not ahead.should_prune()  # the first at its rung goes on (and records its rung value)
    study.optuna.tell(ahead, 1.0)

    ctx = SearchContext(store=study, runner=TrainingRunner(cfg, load_dataset(cfg.data)),
                        meter=Meter(Budget.parse("10trials")), trial_examples=12 * 8, trial_steps=12,
                        trial_pruner=hyperband_check)
    try:
        rec = ctx.run(ctx.spec({"train.learning_rate": 5e-3}, "tpe-hyperband"), trial=study.optuna.ask(),
                      reuse=False)
    finally:
        study.close()
    run = json.loads((Path(rec.run_dir) / "run.json").read_text())
    assert run["status"] == "interrupted" and run["reason"].startswith("pruned by tune: hyperband: val macro-F1 ")
    assert run["steps_done"] == 4 and run["adapter_step"] == 4 and (Path(rec.run_dir) / "adapter").is_dir()
    assert rec.result.status == "pruned" and rec.result.steps_done == 4
    trial = study.optuna.get_trials(deepcopy=False)[rec.number]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["status"] == "pruned"
    assert trial.intermediate_values[4] == dict(rec.result.curve)[4] < 1.0  # the value Hyperband judged
    assert ctx.meter.spent.examples == 4 * 8  # charged what it trained


def test_tune_cli_runs_tpe_hyperband_end_to_end(tiny_bert, intent_data, tmp_path, monkeypatch):
    from loratune.cli import main

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    ov = overrides(tiny_bert, intent_data, study / "unused", learning_rate=2e-2, num_threads=1)
    ov = [o for o in ov if not o.startswith(("max_steps=", "eval_steps=", "output_dir="))]
    assert main(["tune", *ov, "--study-dir", str(study), "-q", "--strategy", "tpe-hyperband", "--budget", "3trials",
                 "--trial-steps", "12", "--seed", "2"]) == 0
    decisions = [json.loads(line) for line in (study / "decisions.jsonl").read_text().splitlines()]
    by_code = {d["code"]: d for d in decisions}
    assert by_code["tpe-startup"]["data"]["n_startup_trials"] == 1  # 3 trials fit: a third of them
    said = " ".join(by_code["tpe-startup"]["evidence"])
    assert "the start-up stays a third (1 random trial)" in said and "each guided draw sits next to it" in said
    assert by_code["tpe-startup"]["verdict"] == "1 random start-up trial before TPE's model guides"
    # rungs from a 12-step trial's first eval point (12 // 6 evaluation points) to the longest draw (8x)
    hb = by_code["hyperband-pruner"]["data"]
    assert (hb["min_resource"], hb["max_resource"]) == (2, 96)
    summary = json.loads((study / "final" / "study.json").read_text())
    assert summary["strategy"] == "tpe-hyperband" and summary["budget"]["spent"]["trials"] == 3
    for t in summary["trials"]:
        run = json.loads((Path(t["run_dir"]) / "run.json").read_text())
        # a trial pruned at its last evaluation ran all its steps: its run completed (the study keeps "pruned")
        cut = t["status"] == "pruned" and run["steps_done"] < run["steps_planned"]
        assert (run["status"] == "interrupted") == cut and run["partial"] == cut
