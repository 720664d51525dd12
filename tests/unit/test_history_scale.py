"""Reading a long trainer_state.json stays linear in its log: the check of which step intervals (logging_steps,
eval_steps, save_steps) the run went by looks each logged step up once, not by a scan of every step on the grid
(a 200k-step log, logged every step, took 195 s in `diagnose` on that scan alone). No timing here: the guard counts
the equality tests the look-ups make, and the readings must stay what they were."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import pytest

from loratune import history_io
from loratune.history_io import Fact, _unused_intervals, load_run


def _state(steps: int, *, log_every: int = 1, eval_at=None, eval_steps: int = 100) -> dict:
    """A Trainer state: a train log every `log_every` steps, an eval at each step of `eval_at` (default: every
    `eval_steps`), the end entry; its intervals as the Trainer writes them."""
    eval_at = set(range(eval_steps, steps + 1, eval_steps) if eval_at is None else eval_at)
    log = []
    for s in range(1, steps + 1):
        if s % log_every == 0:
            log.append({"epoch": s / 1000, "learning_rate": 2e-4 * (1 - s / steps), "loss": 2.0 / (1 + s / 300),
                        "step": s})
        if s in eval_at:
            log.append({"epoch": s / 1000, "eval_loss": 0.5 + 1.5 * math.exp(-s / 400), "step": s})
    log.append({"epoch": steps / 1000, "step": steps, "total_flos": 1e15, "train_loss": 0.5, "train_runtime": 10.0})
    return {"global_step": steps, "max_steps": steps, "logging_steps": log_every, "eval_steps": eval_steps,
            "save_steps": 500, "log_history": log}


def _facts(state: dict) -> dict:
    return {k: Fact(state[k], "trainer_state.json") for k in ("logging_steps", "eval_steps", "save_steps")}


@pytest.mark.parametrize("state, unused", [
    (_state(3000), ["save_steps"]),  # no checkpoint folder: the save interval was never gone by
    (_state(3000, log_every=10), ["save_steps"]),
    # eval_strategy='epoch' (evals at 750, 1500, ...) with the Trainer's default eval_steps=500 written anyway
    (_state(3000, eval_at=range(750, 3001, 750), eval_steps=500), ["eval_steps", "save_steps"]),
    # logging_steps the Trainer wrote but the log does not follow (a log every 7 steps under logging_steps=5)
    ({**_state(2996, log_every=7), "logging_steps": 5}, ["logging_steps", "save_steps"]),
])
def test_the_intervals_a_mid_size_log_never_went_by(tmp_path, state, unused):
    assert _unused_intervals(state, tmp_path, _facts(state)) == unused


def test_a_mid_size_trainer_state_reads_its_facts_as_before(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps(_state(3000)))
    run = load_run(tmp_path)
    assert {k: run.facts[k].value for k in ("logging_steps", "eval_steps") if k in run.facts} == \
        {"logging_steps": 1, "eval_steps": 100}
    assert "save_steps" not in run.facts
    assert [p["step"] for p in run.points] == list(range(100, 3001, 100))


class _Meta(type):
    def __instancecheck__(cls, obj):  # the module's isinstance(v, float) tests still see every float
        return isinstance(obj, builtins.float)


class _CountingFloat(float, metaclass=_Meta):
    """float() as the module calls it, counting the look-ups made with the floats it made: each hash (a set's
    look-up) and each equality test (a list's scan)."""

    looked = 0

    def __eq__(self, other):
        type(self).looked += 1
        return builtins.float.__eq__(self, other)

    def __hash__(self):
        type(self).looked += 1
        return builtins.float.__hash__(self)


def _look_ups(monkeypatch, tmp_path, steps: int) -> int:
    """The look-ups the interval check of a `steps`-step log (a train log every step) makes with the module's floats."""
    state = _state(steps)
    want = _unused_intervals(state, tmp_path, _facts(state))
    with monkeypatch.context() as m:
        m.setattr(history_io, "float", _CountingFloat, raising=False)
        _CountingFloat.looked = 0
        assert _unused_intervals(state, tmp_path, _facts(state)) == want
        return _CountingFloat.looked


def test_the_interval_check_looks_each_step_up_once(monkeypatch, tmp_path):
    n = 250
    small, large = _look_ups(monkeypatch, tmp_path, n), _look_ups(monkeypatch, tmp_path, 4 * n)
    # the counter saw every step looked up: steps built some other way (`e["step"] * 1.0`) would hide the scan
    assert small >= n and large >= 4 * n
    # the look-ups grow with the log: 4x the steps, ~4x the look-ups; a scan of the steps on the grid per step (a
    # list's `in`) made ~n^2/2 equality tests, ~16x at 4x the steps. Compared across sizes, not to a fixed limit, so
    # a linear check's own tests (an `s == 1` per step) do not trip it.
    assert large < 8 * small


def test_a_train_log_window_of_losses_near_the_largest_float_reads_finite():
    from loratune.history_io import _window

    mixed = _window([{"loss": 1.0, "step": 50}, {"loss": 1.7e308, "step": 100}])  # overflowed: OverflowError
    assert mixed["train/loss"] == pytest.approx(8.5e307) and mixed["train/loss_std"] == pytest.approx(8.5e307)
    assert (mixed["train/loss_first"], mixed["train/loss_last"]) == (1.0, 1.7e308)
    exploded = _window([{"loss": 1.7e308, "step": s} for s in (50, 100, 150)])  # the sum was inf
    assert exploded["train/loss"] == pytest.approx(1.7e308) and math.isfinite(exploded["train/loss"])
    assert exploded["train/loss_std"] == 0.0
    plain = _window([{"loss": x, "step": s} for s, x in ((50, 2.0), (100, 1.0), (150, 0.5))])
    assert plain["train/loss"] == sum((2.0, 1.0, 0.5)) / 3 and plain["train/loss_std"] == pytest.approx(0.62361, 1e-4)


@pytest.mark.parametrize("exploded_from, verdict", [(2000, "diverged"), (None, None)])
def test_diagnose_of_a_trainer_log_whose_loss_reached_the_largest_float(tmp_path, capsys, exploded_from, verdict):
    from loratune.cli import main

    state = _state(3000, log_every=50)
    for e in state["log_history"]:
        if "loss" in e and (1000 <= e["step"] <= 1100 if exploded_from is None else e["step"] >= exploded_from):
            e["loss"] = 1.7e308  # a spike inside one eval window beside ordinary losses, or the run exploding
        if "eval_loss" in e and exploded_from is not None and e["step"] >= exploded_from:
            e["eval_loss"] = 1.7e308
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    assert main(["diagnose", str(tmp_path)]) == 0  # was: OverflowError in the window's train/loss_std
    out = capsys.readouterr().out
    assert "Traceback" not in out and "verdict: " in out
    if verdict:
        assert f"verdict: {verdict}" in out and "train loss: " in out and "-> 1.7e+308" in out
