"""The protocol's continuation of a long run (issue 15, v11) on real training: the trial the final training runs
starts from the long run's saved model (train.init_from, through the real TrainingRunner), not from scratch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratune.config import load_config
from loratune.data import load_dataset
from loratune.search.budget import Budget, CostModel, Meter
from loratune.search.context import SearchContext, with_
from loratune.search.protocol.finish import saved_model
from loratune.search.protocol.settings import INIT_FROM, LR
from loratune.search.runner import TrainingRunner
from memory_store import MemoryStore

from support import overrides


def test_a_continued_trial_starts_from_the_long_runs_saved_model(tiny_bert, intent_data, tmp_path):
    base = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "unused", num_threads=1,
                                       learning_rate=2e-2, eval_steps=4))
    ctx = SearchContext(store=MemoryStore(tmp_path / "study"), runner=TrainingRunner(base, load_dataset(base.data)),
                        meter=Meter(Budget.parse("10trials")), trial_examples=96, trial_steps=12, costs=CostModel())
    point = {"train.max_steps": 16, LR: 2e-2}
    long = ctx.run(ctx.spec(point, "early-long", "a long run"), prune=False)
    weights = saved_model(long)
    assert weights == str(Path(long.run_dir) / "adapter") and Path(weights, "adapter_config.json").is_file()
    cont = ctx.run(ctx.spec(with_(point, **{LR: 1e-2, "train.max_steps": 8, INIT_FROM: weights}), "final-train",
                            "continued"), prune=False)
    assert cont.spec.name.endswith("cont") and cont.key != long.key
    hist = [json.loads(x) for x in Path(cont.run_dir, "history.jsonl").read_text().splitlines()]
    long_hist = {p["step"]: p for p in
                 (json.loads(x) for x in Path(long.run_dir, "history.jsonl").read_text().splitlines())}
    saved_step = long.result.best["step"]
    # its step 0 scores what the long run saved (the best trained point), not a fresh adapter
    assert hist[0]["step"] == 0 and hist[0]["val/loss"] == pytest.approx(long_hist[saved_step]["val/loss"], rel=1e-5)
    assert hist[0]["val/loss"] < long_hist[0]["val/loss"]
    run = json.loads(Path(cont.run_dir, "run.json").read_text())
    assert run["init_from"].startswith(f"started from {weights}") and run["steps_done"] == 8
    # exported as the pick: the config says it is a warm start, and from what
    from loratune.search.summary import finish

    ctx.state.final = cont
    summary = finish(ctx, tmp_path / "final", "protocol")
    text = (tmp_path / "final" / "config.yaml").read_text()
    assert "# a warm start: 8 more steps from the saved model in train.init_from" in text
    assert load_config(tmp_path / "final" / "config.yaml").train.init_from == weights
    assert summary["recommendation"]["trial"] == cont.number and (tmp_path / "final" / "adapter").is_dir()
