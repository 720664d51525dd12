"""`train` takes a step/eval callback (the shape of Optuna's trial.report / trial.should_prune): tune stops
a trial through it, without patching the loop or raising from the store."""

from __future__ import annotations

from loratune.config import load_config
from loratune.data import load_dataset
from loratune.store import RunStore
from loratune.train import train

from support import overrides


class Recorder:
    def __init__(self, stop_at_eval_step=None, stop_at_step=None):
        self.steps, self.evals = [], []
        self.stop_at_eval_step, self.stop_at_step = stop_at_eval_step, stop_at_step

    def on_step(self, step, examples_seen):
        self.steps.append((step, examples_seen))
        return "enough steps" if step == self.stop_at_step else None

    def on_eval(self, point, run):
        self.evals.append(point["step"])
        assert run["final"] is point and run["status"] == "running"
        return "pruned here" if point["step"] == self.stop_at_eval_step else None


def _run(tiny_bert, intent_data, out, cb):
    cfg = load_config(None, overrides(tiny_bert, intent_data, out, max_steps=12, eval_steps=4))
    return train(cfg, load_dataset(cfg.data), RunStore(out), progress=False, callback=cb)


def test_the_callback_sees_every_step_and_eval_and_a_full_run_completes(tiny_bert, intent_data, tmp_path):
    cb = Recorder()
    run = _run(tiny_bert, intent_data, tmp_path / "a", cb)
    assert run["status"] == "completed" and [s for s, _ in cb.steps] == list(range(1, 13))
    assert cb.evals == [0, 4, 8, 12] and cb.steps[-1][1] == 12 * 8


def test_a_stop_at_an_eval_point_ends_the_run_like_an_interruption(tiny_bert, intent_data, tmp_path):
    cb = Recorder(stop_at_eval_step=4)
    run = _run(tiny_bert, intent_data, tmp_path / "b", cb)
    assert (run["status"], run["reason"], run["steps_done"]) == ("interrupted", "pruned here", 4)
    assert cb.evals == [0, 4] and run["partial"] is True
    assert run["adapter_step"] == 4 and (tmp_path / "b" / "adapter").is_dir()  # the best trained weights saved


def test_a_stop_between_evaluations_ends_after_that_step(tiny_bert, intent_data, tmp_path):
    cb = Recorder(stop_at_step=6)
    run = _run(tiny_bert, intent_data, tmp_path / "c", cb)
    assert (run["status"], run["reason"], run["steps_done"]) == ("interrupted", "enough steps", 6)
    assert cb.evals == [0, 4] and run["adapter_step"] == 4


def test_a_stop_at_the_last_eval_point_leaves_a_completed_run(tiny_bert, intent_data, tmp_path):
    # every planned step ran: the record must not say the run stopped early (docs/run-record.md: partial)
    cb = Recorder(stop_at_eval_step=12)
    run = _run(tiny_bert, intent_data, tmp_path / "d", cb)
    assert (run["status"], run["reason"], run["steps_done"]) == ("completed", "planned steps done (12)", 12)
    assert cb.evals == [0, 4, 8, 12] and run["partial"] is False


def test_a_trial_pruned_at_its_last_eval_point_stays_completed_and_the_study_keeps_the_decision(
        tiny_bert, intent_data, tmp_path):
    import json

    from loratune.search.runner import TrainingRunner, Watch
    from loratune.search.trial import TrialSpec

    cfg = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "unused", max_steps=12, eval_steps=4))
    runner = TrainingRunner(cfg, load_dataset(cfg.data))
    last = Watch(pruner=lambda p: "judged last" if p["step"] == 12 else None)
    res = runner.run(TrialSpec("t", "test", {}), tmp_path / "last", last)
    run = json.loads((tmp_path / "last" / "run.json").read_text())
    assert (run["status"], run["partial"], run["steps_done"]) == ("completed", False, 12)
    assert run["reason"] == ("planned steps done (12); tune's decision at its last evaluation: "
                             "pruned by tune: judged last")
    assert (res.status, res.reason, res.steps_done) == ("pruned", "pruned: judged last", 12)  # the study's view
    early = Watch(pruner=lambda p: "judged early" if p["step"] == 4 else None)  # a real prune: cut short, partial
    res = runner.run(TrialSpec("t", "test", {}), tmp_path / "early", early)
    run = json.loads((tmp_path / "early" / "run.json").read_text())
    assert (run["status"], run["partial"], run["steps_done"]) == ("interrupted", True, 4)
    assert run["reason"] == "pruned by tune: judged early" and res.status == "pruned"
