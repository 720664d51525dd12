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
