"""The protocol's decisions on scripted trial outcomes (no training): a scripted runner plays a
"world" (val macro-F1, diagnosis verdict and costs as functions of the config point)."""

from __future__ import annotations

import json

import math

import pytest

from loratune.params import breakeven_rank as table_breakeven_rank
from loratune.search.budget import Budget, Cost, CostModel, Meter
from loratune.search.context import SearchContext
from memory_store import MemoryStore
from loratune.search.protocol import (
    ProtocolSettings,
    Start,
    breakeven_rank,
    plan_trial_length,
    run_protocol,
    start_from_assessment,
)
from loratune.search.protocol.common import breakeven_cap
from loratune.search.protocol.phase2 import lr_steps
from loratune.search.space import scale_of
from loratune.search.trial import TrialResult

LR, R = "train.learning_rate", "adapter.r"
START = Start(point={R: 8, "adapter.lora_alpha": 16.0, "adapter.target_modules": ["attn.q", "attn.v", "ffn@top:2"],
                     "adapter.layers_to_transform": "all", "adapter.lora_dropout": 0.1, LR: 1e-3},
              ceiling_r=32, lr_centre=1e-3)


class World:
    """f1(point), verdict(point), val loss(point); seeds add a fixed offset."""

    SEED_OFFSET = {42: 0.0, 43: -0.004, 44: 0.003}

    def __init__(self, f1, verdict, loss=None, gap=0.05, full_f1=0.70, adapted=300_000, features=None, memory=None):
        self.f1, self.verdict, self.loss, self.gap, self.full_f1, self.adapted = f1, verdict, loss, gap, full_f1, adapted
        self.features = features or {}  # extra diagnosis features, the same for every trial
        self.memory = memory  # (point, trial index) -> memory_delta_mb; None: not measured per trial
        self.fixed = 0  # adapter parameters that do not grow with r (trained biases, DoRA's magnitudes)
        self.old_record = False  # records written before params.per_rank (or point -> bool: which ones)
        self.n = 0

    def result(self, p: dict) -> TrialResult:
        full = p.get("adapter.method") == "full"
        v = ((self.full_f1(p) if callable(self.full_f1) else self.full_f1) if full
             else self.f1(p) + self.SEED_OFFSET.get(p.get("train.seed", 42), 0.0))
        self.n += 1
        r = int(p.get(R, 8))
        verdict = "healthy" if full else self.verdict(p)
        loss = self.loss(p) if self.loss else 1.0 - v
        params = ({"total": 1_000_000, "trainable": 1_000_000, "adapter": 0, "adapted_weights": 0} if full else
                  {"total": 1_000_000, "trainable": 1000 * r + self.fixed + 5000, "adapter": 1000 * r + self.fixed,
                   "adapted_weights": self.adapted,
                   **({} if (self.old_record(p) if callable(self.old_record) else self.old_record)
                      else {"per_rank": 1000})})
        # the objective curve peaks where the scripted best_step_fraction says (the protocol reads the curve)
        # and ends below its best by the scripted val_metric_final_drop (0.01 when none is scripted)
        frac = self.features.get("best_step_fraction", 1.0)
        drop = self.features.get("val_metric_final_drop", 0.01)
        curve = ((0, 0.0), (100, v)) if frac >= 1.0 else ((0, 0.0), (round(100 * frac), v), (100, v - drop))
        return TrialResult(
            status="completed", value=v, examples=1000, wall_s=10.0, steps_planned=100, steps_done=100,
            mean_step_s=0.30 if full else 0.10 + 0.001 * r, peak_memory_mb=1500.0 if full else 500.0 + r,
            memory_delta_mb=self.memory(p, self.n) if self.memory else None,
            params=params, best={"step": 100, "val/macro_f1": v}, curve=curve, verdict=verdict,
            findings=({"rule_id": verdict, "verdict": verdict, "moves": [], "evidence": [f"scripted {verdict}"]},),
            features={"val_metric_se": 0.01, "val_loss_min": loss, "gap_f1": self.gap, "best_step_fraction": 1.0,
                      "still_improving": 0.0, "val_metric_final_drop": 0.0, "val_loss_rise": 0.0,
                      **self.features})


class ScriptedRunner:
    def __init__(self, world: World, interrupt_at: int | None = None):
        self.world, self.interrupt_at, self.calls = world, interrupt_at, []

    def run(self, spec, run_dir, watch=None):
        if self.interrupt_at is not None and len(self.calls) + 1 == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append(spec)
        return self.world.result(spec.point)

    def compare(self, run_dirs):
        return None

    def evaluate(self, run_dir, split="test"):
        return {"test/macro_f1": 0.8}


def lr_binds() -> World:
    """lr is what binds: F1 rises to lr 4e-3 then falls; rank barely matters."""
    def f1(p):
        x = math.log2(p[LR] / 1e-3)  # 0 at 1e-3
        base = {-1: 0.50, 0: 0.60, 1: 0.70, 2: 0.78, 3: 0.75}.get(round(x), 0.4)
        return base + 0.001 * math.log2(p[R] / 8)

    def verdict(p):
        return "lr-too-small" if p[LR] < 4e-3 else "healthy"

    return World(f1, verdict, loss=lambda p: 1.5 - 0.2 * math.log2(p[LR] / 1e-3))


def capacity_binds() -> World:
    def f1(p):
        lr_part = {0.5e-3: -0.01, 1e-3: 0.0, 2e-3: 0.01, 4e-3: 0.02}.get(p[LR], 0.0)
        return 0.5 + 0.08 * math.log2(p[R] / 8) + lr_part

    return World(f1, lambda p: "underfit-capacity" if p[R] < 32 else "healthy")


def overfits() -> World:
    def f1(p):
        return {8: 0.70, 4: 0.72, 2: 0.71}.get(p[R], 0.6) - 0.005 * abs(math.log2(p[LR] / 1e-3))

    return World(f1, lambda p: "overfit-capacity" if p[R] >= 8 else "healthy", gap=0.3)


def make_ctx(world, budget="100trials", store=None, interrupt_at=None):
    runner = ScriptedRunner(world, interrupt_at)
    ctx = SearchContext(store=store or MemoryStore(), runner=runner, meter=Meter(Budget.parse(budget)),
                        trial_examples=1000, costs=CostModel())
    return ctx, runner


def names(runner):
    return [(s.phase, s.name) for s in runner.calls]


def kinds(ctx):
    return [(d["phase"], d["kind"], d["verdict"]) for d in ctx.decisions]


def test_lr_bound_path_follows_the_lr_and_finds_the_plateau():
    ctx, runner = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings())
    assert names(runner) == [
        ("phase1-lr-grid", "start"), ("phase1-lr-grid", "lr2e-3"),  # 0.5x skipped: 2x won beyond noise
        ("pair", "lr4e-3"), ("pair", "lr2e-3-r16-a32"),  # minimal-intervention pair from lr 2e-3
        ("phase2", "lr8e-3"),  # one more x2 step: worse, lr kept at 4e-3
        ("seeds", "lr4e-3-seed43"), ("seeds", "lr4e-3-seed44"),
        ("rank-sweep", "lr4e-3-r32-rs-a11.3"),  # x4 with rsLoRA: gain below the seed noise
        ("target-sweep", "lr4e-3-t-all-linear"),  # more modules at 1x and 0.5x the lr: no gain, targets kept
        ("target-sweep", "lr2e-3-t-all-linear"),
        # full fine-tuning at its own lr: LoRA lr x 0.1 = 4e-4, then 0.5x and 2x (inside protocol 1's 1e-5..1e-3)
        ("lora-vs-full", "full-lr4e-4"), ("lora-vs-full", "full-lr2e-4"), ("lora-vs-full", "full-lr8e-4"),
    ]
    d = {(p, k): v for p, k, v in kinds(ctx)}
    assert d[("phase1-lr-grid", "lr-grid-skip")] == "0.5x not needed"
    assert d[("pair", "pair")] == "binding knob: optimization"
    assert d[("rank-sweep", "rank")] == "plateau at r=8"
    assert d[("target-sweep", "targets")] == "no gain beyond noise"
    assert d[("lora-vs-full", "lora-vs-full")] == "choose lora"
    pair = ctx.state["pair"]
    assert pair["lr_delta"] == pytest.approx(0.08) and pair["r_delta"] == pytest.approx(0.001)
    assert pair["noise"] == pytest.approx(2 * 0.01)  # before seeds: protocol 6's band over the val SE
    final = ctx.state["final"]
    assert final.point[LR] == 4e-3 and final.point[R] == 8
    sigma = ctx.state["seed_sigma"]
    assert sigma == pytest.approx(0.0035, abs=1e-4)
    assert ctx.state["rank_sweep"]["threshold"] == pytest.approx(max(0.005, 2 * sigma))
    # every decision carries evidence, and every trial ran once
    assert all(dd["evidence"] for dd in ctx.decisions)
    assert len({s.key for s in runner.calls}) == len(runner.calls)


def test_rank_sweep_keeps_the_scale_with_rslora():
    ctx, runner = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings())
    sweep = next(s for s in runner.calls if s.phase == "rank-sweep")
    assert sweep.point["adapter.use_rslora"] is True
    assert scale_of(sweep.point) == pytest.approx(scale_of(START.point), rel=1e-2)


def test_capacity_bound_path_raises_rank_until_adequate():
    ctx, runner = make_ctx(capacity_binds())
    run_protocol(ctx, START, ProtocolSettings())
    calls = names(runner)
    assert calls[:3] == [("phase1-lr-grid", "start"), ("phase1-lr-grid", "lr2e-3"), ("phase1-lr-grid", "lr5e-4")]
    assert ("pair", "lr4e-3") in calls and ("pair", "lr2e-3-r16-a32") in calls
    d = kinds(ctx)
    assert ("pair", "pair", "binding knob: capacity") in d
    assert ("phase1-capacity", "capacity-move", "r x2 helps") in d
    assert ("phase1-capacity", "capacity-verdict", "capacity adequate") in d
    assert ctx.state["incumbent"].point[R] == 32


def test_overfit_lowers_capacity_without_touching_lr():
    ctx, runner = make_ctx(overfits())
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1))
    moves = [s for s in runner.calls if s.phase == "phase1-capacity"]
    assert moves and moves[0].point[R] == 4 and moves[0].point[LR] == 1e-3
    assert ("phase1-capacity", "capacity-move", "r /2 helps") in kinds(ctx)


def test_short_budget_keeps_the_high_priority_stages():
    ctx, runner = make_ctx(lr_binds(), budget="4trials")
    run_protocol(ctx, START, ProtocolSettings())
    phases = [p for p, _ in names(runner)]
    assert phases == ["phase1-lr-grid", "phase1-lr-grid", "seeds", "lora-vs-full"]
    d = kinds(ctx)
    assert ("pair", "pair", "pair not affordable") in d  # said so, with the prior
    assert "pair-unaffordable" in codes(ctx) and "budget-skip" in codes(ctx)
    pair = next(x for x in ctx.decisions if x["kind"] == "pair")
    assert any("prior" in e for e in pair["evidence"])
    assert ctx.meter.spent.trials == 4


def test_resume_replays_finished_trials_without_training_them(tmp_path):
    store = MemoryStore(tmp_path, decisions_path=tmp_path / "decisions.jsonl")
    ctx1, r1 = make_ctx(lr_binds(), store=store, interrupt_at=5)
    with pytest.raises(KeyboardInterrupt):
        run_protocol(ctx1, START, ProtocolSettings())
    done_before = [s.key for s in r1.calls]
    assert len(done_before) == 4
    n_decisions = len(store.decisions.entries)
    ctx2, r2 = make_ctx(lr_binds(), store=store)
    run_protocol(ctx2, START, ProtocolSettings())
    assert not set(done_before) & {s.key for s in r2.calls}, "a finished trial was trained again"
    assert len(r1.calls) + len(r2.calls) == 13
    # the same decisions as an uninterrupted run, none written twice
    ref, _ = make_ctx(lr_binds())
    run_protocol(ref, START, ProtocolSettings())
    seqs = [d["seq"] for d in store.decisions.entries]
    assert seqs == sorted(set(seqs)) and len(seqs) == len(ref.decisions) > n_decisions
    assert [d["kind"] for d in store.decisions.entries] == [d["kind"] for d in ref.decisions]
    assert ctx2.state["final"].key == ref.state["final"].key
    assert ctx2.meter.spent.trials == ref.meter.spent.trials  # replayed trials are charged again


def test_a_trial_that_finished_before_the_signal_took_effect_is_kept_not_trained_again(tmp_path):
    """train() writes its final record with Ctrl-C held off, then raises it: the trial was failed as interrupted and
    its point trained again on --resume."""
    from loratune.search.runner import FinishedThenInterrupted

    class FinishesThenStops(ScriptedRunner):
        def run(self, spec, run_dir, watch=None):
            if len(self.calls) + 1 == 3:
                self.calls.append(spec)
                raise FinishedThenInterrupted(self.world.result(spec.point), KeyboardInterrupt())
            return super().run(spec, run_dir, watch)

    store = MemoryStore(tmp_path, decisions_path=tmp_path / "decisions.jsonl")
    runner = FinishesThenStops(lr_binds())
    ctx1 = SearchContext(store=store, runner=runner, meter=Meter(Budget.parse("100trials")), trial_examples=1000,
                         costs=CostModel())
    with pytest.raises(KeyboardInterrupt) as exc:
        run_protocol(ctx1, START, ProtocolSettings())
    assert type(exc.value) is KeyboardInterrupt  # the signal itself, for its exit code
    assert len(ctx1.records) == 3  # the third trial is recorded as finished
    done_before = [s.key for s in runner.calls]
    ctx2, r2 = make_ctx(lr_binds(), store=store)
    run_protocol(ctx2, START, ProtocolSettings())
    assert not set(done_before) & {s.key for s in r2.calls}, "a finished trial was trained again"


def test_breakeven_caps_the_rank_sweep():
    world = lr_binds()
    world.adapted = 30_000  # breakeven rank = 30000 / 3 / 1000 = 10 < 8 x 4
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings())
    sweep = [s for s in runner.calls if s.phase == "rank-sweep"]
    assert [s.point[R] for s in sweep] == [10]
    assert ctx.state["rank_sweep"]["breakeven_r"] == 10
    ctx2, runner2 = make_ctx(world)
    world.f1 = lambda p: 0.78  # flat
    run_protocol(ctx2, START, ProtocolSettings())
    assert breakeven_rank({"adapter": 8000, "adapted_weights": 30_000}, 8) == 10


def _run_gaining_per_rank(world):
    """The protocol run on `world` where every rank step gains beyond noise (0.05 per doubling past r=8)."""
    base = world.f1
    world.f1 = lambda p: base(p) + 0.05 * math.log2(p[R] / 8)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings())
    return ctx, runner


@pytest.mark.parametrize("fixed", [0, 5000, 50_000])
def test_the_breakeven_counts_loras_parameters_per_rank_not_the_trained_biases(fixed):
    """Records whose adapter count holds parameters that do not grow with r (bias=all: the model's biases; DoRA's
    magnitudes): the breakeven divided the whole count by r, so it moved with them and with the starting rank
    (MiniLM q,v: 38 at bias=all r=4, 48 at r=8, for `loratune params`' 64). It is the per-rank count's, at every r."""
    world = lr_binds()
    world.adapted = 30_000  # breakeven rank = 30000 / 3 / 1000 = 10 whatever the biases
    world.fixed = fixed
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings())
    assert [s.point[R] for s in runner.calls if s.phase == "rank-sweep"] == [10]
    assert ctx.state["rank_sweep"]["breakeven_r"] == 10
    for r in (1, 4, 8, 16):
        rec = {"adapter": 1000 * r + fixed, "per_rank": 1000, "adapted_weights": 30_000}
        assert breakeven_rank(rec, r) == 10 == table_breakeven_rank(30_000, 1000)
        assert breakeven_cap(rec, r) == 10


def test_a_record_without_its_per_rank_count_takes_adapter_over_r_and_says_so():
    """A run.json written before params.per_rank: its adapter count / r (exact when it trained LoRA's A and B only),
    and the sweep's line says where the number came from."""
    world = lr_binds()
    world.adapted = 32_000
    world.old_record = True
    ctx, runner = _run_gaining_per_rank(world)
    assert [s.point[R] for s in runner.calls if s.phase == "rank-sweep"] == [10]
    assert ctx.state["rank_sweep"]["breakeven_r"] == 11
    d = next(x for x in ctx.decisions if x["code"] == "rank-sweep-capped")
    assert d["evidence"][0] == ("next rank 40 is past rank 10, the highest at or below the compute breakeven "
                                "(compute-breakeven rank 11, capacity ceiling 32; LoRA parameters per rank taken as "
                                "the record's adapter count / r = 8000 / 8: a record written before params.per_rank; "
                                "too high, and the breakeven too low, if it trained biases (bias all or lora_only) "
                                "or DoRA magnitudes)")


def test_an_older_incumbent_record_takes_per_rank_from_a_trial_of_its_layers_that_records_it():
    """A resumed study whose incumbent was trained before params.per_rank, with bias=all (8 x 1,000 + 5,000 biases):
    the sweep read only the incumbent's record, adapter / r = 1,625 per rank, breakeven rank 7 and cap 6 below the
    working point r=8 (no sweep), although the seed runs at its point (the same layers, trained after the upgrade)
    record per_rank 1,000: breakeven 10. It takes theirs, and no estimate is said."""
    world = lr_binds()
    world.adapted, world.fixed = 30_000, 5000
    world.old_record = lambda p: p.get("train.seed", 42) == 42  # the runs before the resume: seed 42
    ctx, runner = _run_gaining_per_rank(world)
    assert [s.point[R] for s in runner.calls if s.phase == "rank-sweep"] == [10]
    assert ctx.state["rank_sweep"]["breakeven_r"] == 10
    d = next(x for x in ctx.decisions if x["code"] == "rank-sweep-capped")
    assert "per rank taken as" not in d["evidence"][0]
    from loratune.search.protocol.common import shape_params

    old = next(r for r in ctx.records if "per_rank" not in r.result.params and r.point.get(R) == 8)
    assert shape_params(ctx, old) == {**old.result.params, "per_rank": 1000}
    # a trial of other adapted layers (other adapted weights) lends nothing: adapter / r stays, and is said
    other = next(r for r in ctx.records if r.result.params.get("per_rank"))
    other.result.params["adapted_weights"] = 60_000
    for r in ctx.records:
        if r.result.params.get("per_rank") and r is not other:
            r.result.params.pop("per_rank")
    assert shape_params(ctx, old) is old.result.params and "per_rank" not in old.result.params


def test_the_rank_sweep_stops_at_the_last_rank_before_a_fractional_breakeven_point():
    """Breakeven at r = 32,000 / 3 / 1,000 = 10.67: the sweep trained r = 11 (the first rank past the point, 34% of
    the adapted weights) although the README says it never passes it."""
    world = lr_binds()
    world.adapted = 32_000
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings())
    assert [s.point[R] for s in runner.calls if s.phase == "rank-sweep"] == [10]
    assert ctx.state["rank_sweep"]["breakeven_r"] == 11  # the breakeven rank itself: the first at or past the point


def test_a_rank_sweep_capped_by_the_breakeven_says_so_in_both_lines():
    """Capped at breakeven_cap 10 (breakeven rank 11): the second line compared the cap with the rounded-up
    breakeven rank and said 'not trained past the capacity ceiling' under 'past the compute-breakeven rank 10'."""
    world = lr_binds()
    world.adapted = 32_000
    ctx, runner = _run_gaining_per_rank(world)
    assert [s.point[R] for s in runner.calls if s.phase == "rank-sweep"] == [10]
    d = next(x for x in ctx.decisions if x["code"] == "rank-sweep-capped")
    # one breakeven rank (11, as lora-vs-full names it); 10 is the highest rank at or below the point, not "the
    # compute-breakeven rank 10 (..., breakeven 11)"
    assert d["evidence"] == ["next rank 40 is past rank 10, the highest at or below the compute breakeven "
                             "(compute-breakeven rank 11, capacity ceiling 32)",
                             "not trained past the compute breakeven"]
    assert ctx.state["rank_sweep"]["breakeven_r"] == 11



def test_a_rank_sweep_capped_by_the_ceiling_names_the_ceiling_and_the_breakeven_rank_once():
    world = lr_binds()
    world.adapted = 300_000  # breakeven rank = 300000 / 3 / 1000 = 100, past the ceiling 32
    base = world.f1
    world.f1 = lambda p: base(p) + 0.05 * math.log2(p[R] / 8)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings())
    assert [s.point[R] for s in runner.calls if s.phase == "rank-sweep"] == [32]
    d = next(x for x in ctx.decisions if x["code"] == "rank-sweep-capped")
    assert d["evidence"] == ["next rank 128 is past the capacity ceiling 32 (compute-breakeven rank 100)",
                             "not trained past the capacity ceiling"]

def test_full_fine_tuning_chosen_when_the_probe_wins_beyond_noise():
    world = lr_binds()
    world.full_f1 = 0.85
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings())
    assert ctx.state["lora_vs_full"]["choice"] == "full"
    assert ctx.state["final"].point["adapter.method"] == "full"


def test_all_trials_failing_stops_with_a_decision():
    class Broken(ScriptedRunner):
        def run(self, spec, run_dir, watch=None):
            self.calls.append(spec)
            return TrialResult(status="diverged", value=None, examples=100, wall_s=1.0, verdict="diverged")

    ctx = SearchContext(store=MemoryStore(), runner=Broken(lr_binds()), meter=Meter(Budget.parse("20trials")),
                        trial_examples=1000)
    run_protocol(ctx, START, ProtocolSettings())
    assert ("phase1-lr-grid", "lr-grid", "no trial learned") in kinds(ctx)
    assert "final" not in ctx.state


def test_a_trial_failed_by_the_users_input_stops_the_search_instead_of_moving_the_lr():
    """A model that cannot load failed every trial; the lr grid read the failure as an lr verdict (skipped 2x as
    "a larger lr can only be worse", then tried lr /10) and the load error never reached the screen."""
    from loratune.errors import UserError

    class CannotLoad(ScriptedRunner):
        def run(self, spec, run_dir, watch=None):
            self.calls.append(spec)
            raise UserError("could not load the model from 'tiny': size mismatch for classifier.weight",
                            "check the folder's files")

    store = MemoryStore()
    failed = []
    store.fail = lambda trial, reason, status="interrupted": failed.append((trial, status, reason))
    runner = CannotLoad(lr_binds())
    ctx = SearchContext(store=store, runner=runner, meter=Meter(Budget.parse("20trials")), trial_examples=1000)
    with pytest.raises(UserError) as err:
        run_protocol(ctx, START, ProtocolSettings())
    assert err.value.problem.startswith("could not load the model") and err.value.fix == "check the folder's files"
    assert len(runner.calls) == 1  # no lr move: the same error would fail every point
    assert not any(d["phase"] == "phase1-lr-grid" for d in ctx.decisions)
    assert ctx.records == [] and store.records() == []  # no result a --resume would read as an lr verdict
    assert failed == [(0, "failed", "stopped tune: could not load the model from 'tiny': size mismatch for "
                                    "classifier.weight")]


def test_start_from_assessment_lets_explicit_user_keys_win():
    a = {"recommendation": {
        "overrides": {"adapter.r": 8, "adapter.lora_alpha": 16.0, "adapter.target_modules": ["attn.q", "attn.v"],
                      "train.learning_rate": 1e-3, "train.num_train_epochs": 8.0,
                      "train.per_device_train_batch_size": 32, "model.max_length": 56},
        "choices": [{"key": "adapter.r", "value": 8, "rule": "start-rank-by-data", "reason": "1848 rows"}],
        "capacity_ceiling": {"key": "adapter.r", "value": 32, "rule": "ceiling-rank", "reason": "..."},
        "lr_grid": [5e-4, 1e-3, 2e-3]}, "facts": {"train_rows": 1848}}
    start = start_from_assessment(a, {"train.learning_rate": 5e-4})
    assert start.point[LR] == 5e-4 and start.lr_centre == 5e-4
    assert start.fixed == {"train.per_device_train_batch_size": 32, "model.max_length": 56}
    assert start.ceiling_r == 32 and start.epochs == 8.0


# 3 epochs of 1,848 rows at batch 32 are 3 x 58 steps (each epoch's last batch its 24 remaining rows)
@pytest.mark.parametrize("kind,limit,steps", [("wall_s", 900, 174), ("examples", 30_000, 72), ("trials", 20, 174)])
def test_trial_length_fits_the_budget(kind, limit, steps):
    plan = plan_trial_length(kind, limit, 1848, 32, start_epochs=8.0, examples_per_s=100)
    assert plan["max_steps"] == steps
    assert 1.0 - 1e-9 <= plan["epochs"] * 1848 / 1848 <= 3.01


def test_trial_length_counts_gradient_accumulation():
    """A step processes batch x accumulation examples (an epoch's last step its remainder: 58 micro-batches of 32 are
    15 steps at accum 4): the same budget gives about a quarter of the steps."""
    from loratune.steps import examples_for

    plain = plan_trial_length("examples", 30_000, 1848, 32, start_epochs=8.0)
    accum = plan_trial_length("examples", 30_000, 1848, 32, accum=4, start_epochs=8.0)
    assert plain["max_steps"] == 72 and accum["max_steps"] == 19
    assert accum["examples"] == examples_for(1848, 32, 4, 19) == 1848 + 4 * 32 * 4
    assert abs(accum["epochs"] - plain["epochs"]) < 0.05 and "32 x 4 accumulated" in accum["reason"]


def test_seed_unstable_lowers_the_lr_when_the_lower_one_matches_the_seed_mean():
    world = lr_binds()
    world.SEED_OFFSET = {42: 0.0, 43: -0.15, 44: -0.10}  # lr 4e-3 over seeds: 0.78, 0.63, 0.68 (mean 0.697)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    d = next(x for x in ctx.decisions if x["kind"] == "noise")
    assert d["verdict"] == "seed-unstable: lr at an unstable edge"
    assert "lower the lr" in d["move"] and d["code"] == "seed-unstable-lr-lowered"
    assert any(">= the seed mean 0.697" in e for e in d["evidence"])
    assert ctx.state["final"].point[LR] == 2e-3  # 0.70 at lr 2e-3 >= 0.697, the unstable lr's average


def test_seed_unstable_never_trades_a_better_average_for_steadiness():
    """The failure the tuning bench showed: a lower lr within noise of the incumbent but below its
    seed mean replaced it, and the weaker pick was finished."""
    world = lr_binds()
    world.SEED_OFFSET = {42: 0.0, 43: -0.06, 44: 0.05}  # lr 4e-3: 0.78, 0.72, 0.83 (sigma 0.055, mean 0.777)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    d = next(x for x in ctx.decisions if x["kind"] == "noise")
    assert d["verdict"] == "seed-unstable: lr at an unstable edge" and d["move"].startswith("keep the lr")
    assert d["code"] == "seed-unstable-lr-kept"
    assert any("< the seed mean 0.777" in e for e in d["evidence"])
    assert ctx.state["final"].point[LR] == 4e-3  # lr 2e-3 (0.70) is within noise 0.11 but below the mean


def test_seed_unstable_keeps_the_lr_when_the_lower_one_is_clearly_worse():
    world = lr_binds()
    world.SEED_OFFSET = {42: 0.0, 43: -0.025, 44: 0.02}  # sigma ~0.023, noise ~0.045 < 0.08 drop at lr/2
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    d = next(x for x in ctx.decisions if x["kind"] == "noise")
    assert d["verdict"].startswith("seed-unstable") and d["move"].startswith("keep the lr")
    assert ctx.state["final"].point[LR] == 4e-3


def test_lr_probe_moves_the_centre_before_the_grid():
    ctx, runner = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings(full_probe=False), plan={"max_steps": 100, "reason": "scripted"})
    probes = [s for s in runner.calls if s.phase == "lr-probe"]
    assert [(s.point[LR], s.point["train.max_steps"]) for s in probes] == [(1e-3, 25), (4e-3, 25), (1.6e-2, 25)]
    d = next(x for x in ctx.decisions if x["kind"] == "lr-probe")
    assert d["verdict"] == "lr centre 0.004"
    grid = [s.point[LR] for s in runner.calls if s.phase == "phase1-lr-grid"]
    assert grid == [4e-3, 8e-3, 2e-3]  # 2x did not beat 1x beyond noise: 0.5x runs
    assert ctx.state["final"].point[LR] == 4e-3
    # probes cost a quarter trial in the estimate, and are never compared with full-length trials
    assert ctx.estimate(probes[0].point).examples == 250
    assert all(r.point.get("train.max_steps") == 25 for r in ctx.records[:3])
    full_refs = {name for name, _ in ctx.references(ctx.spec(START.point, "x"))}
    assert full_refs and not any("steps25" in n for n in full_refs)
    assert [s.name for s in probes] == ["steps25", "lr4e-3-steps25", "lr0.016-steps25"]


def test_lr_probe_steps_down_when_the_centre_collapses():
    world = lr_binds()
    world.verdict = lambda p: "lr-too-large" if p[LR] >= 1e-3 else "healthy"
    world.f1 = lambda p: 0.3 if p[LR] >= 1e-3 else 0.6
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False), plan={"max_steps": 100, "reason": "scripted"})
    probes = [s.point[LR] for s in runner.calls if s.phase == "lr-probe"]
    assert probes == [1e-3, 2.5e-4]
    assert ctx.state["lr_centre"] == 2.5e-4


def test_lr_probe_keeps_phase_0s_centre_when_no_probe_learned():
    """Every probe read lr-too-large or collapsed at chance (0.100): the probe fell back to all of them, called
    6.25e-5 'within noise of' 1e-3 'safely below where the metric turns' and cut the centre 16x."""
    world = lr_binds()
    world.verdict = lambda p: "collapsed" if p[LR] < 1e-4 else "lr-too-large"
    world.f1 = lambda p: 0.1
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False), plan={"max_steps": 100, "reason": "scripted"})
    assert [s.point[LR] for s in runner.calls if s.phase == "lr-probe"] == [1e-3, 2.5e-4, 6.25e-5]
    d = next(x for x in ctx.decisions if x["kind"] == "lr-probe")
    assert d["code"] == "lr-probe-no-learner" and d["move"] == "lr centre 0.001 from phase 0"
    assert ctx.state.lr_centre is None
    grid = [s.point[LR] for s in runner.calls if s.phase == "phase1-lr-grid"]
    assert grid[0] == 1e-3  # the grid is centred on phase 0's lr


def test_tight_wall_budget_stops_probing_and_still_trains_a_full_length_trial():
    ctx, runner = make_ctx(lr_binds(), budget="40s")  # each scripted trial charges 10 s; 15 s kept for finish
    run_protocol(ctx, START, ProtocolSettings(), plan={"max_steps": 100, "reason": "scripted"})
    phases = [p for p, _ in names(runner)]
    assert phases[:2] == ["lr-probe", "phase1-lr-grid"]
    assert ("lr-probe", "lr-probe", "stop probing") in kinds(ctx)
    assert ctx.state["final"].point.get("train.max_steps") is None  # the pick is a full-length trial


def test_a_budget_cut_incumbent_gives_way_to_the_best_trained_run():
    class Cut(ScriptedRunner):
        def run(self, spec, run_dir, watch=None):
            res = super().run(spec, run_dir, watch)
            if spec.phase == "phase1-lr-grid":  # the deadline hit before its first eval point
                from dataclasses import replace
                return replace(res, status="pruned", value=0.0, reason="pruned: budget: ran out mid-trial")
            return res

    runner = Cut(lr_binds())
    ctx = SearchContext(store=MemoryStore(), runner=runner, meter=Meter(Budget.parse("40s")),
                        trial_examples=1000, costs=CostModel())
    run_protocol(ctx, START, ProtocolSettings(), plan={"max_steps": 100, "reason": "scripted"})
    assert ctx.state["final"].spec.phase == "lr-probe"
    assert ("finish", "pick", "the incumbent did not finish") in kinds(ctx)


def test_target_sweep_keeps_more_modules_when_they_gain_beyond_noise():
    world = lr_binds()
    base = world.f1
    world.f1 = lambda p: base(p) + (0.03 if p["adapter.target_modules"] == ["all-linear"] else 0.0)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    assert ctx.state["final"].point["adapter.target_modules"] == ["all-linear"]
    d = next(x for x in ctx.decisions if x["kind"] == "targets")
    assert d["verdict"].startswith("all-linear gains")
    assert [s.point[LR] for s in runner.calls if s.phase == "target-sweep"] == [4e-3]  # gained at 1x: no 0.5x


def test_target_sweep_compares_module_sets_over_an_lr_grid():
    """Protocol 1: capacities are compared with a small lr grid. More modules make a stronger update,
    so here all-linear loses at the working lr and wins at half of it."""
    world = lr_binds()
    base = world.f1

    def f1(p):
        if p["adapter.target_modules"] == ["all-linear"]:
            return 0.85 if p[LR] == 2e-3 else 0.60
        return base(p)

    world.f1 = f1
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    assert [s.point[LR] for s in runner.calls if s.phase == "target-sweep"] == [4e-3, 2e-3]
    final = ctx.state["final"].point
    assert final["adapter.target_modules"] == ["all-linear"] and final[LR] == 2e-3
    d = next(x for x in ctx.decisions if x["kind"] == "targets")
    assert "best of lr 0.004: 0.600, 0.002: 0.850" in d["evidence"][0]


def test_lr_probe_centre_is_the_lower_lr_when_the_higher_gains_within_noise():
    """Protocol 3: 'a value safely below where the loss turns up'."""
    world = lr_binds()
    probe_f1 = {1e-3: 0.60, 4e-3: 0.700, 1.6e-2: 0.710, 6.4e-2: 0.2}  # +0.010 < noise sqrt(2) x 0.01
    world.f1 = lambda p: probe_f1.get(p[LR], 0.65) if p.get("train.max_steps") else {4e-3: 0.8}.get(p[LR], 0.7)
    world.verdict = lambda p: "healthy"
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False), plan={"max_steps": 100, "reason": "scripted"})
    d = next(x for x in ctx.decisions if x["kind"] == "lr-probe")
    assert d["verdict"] == "lr centre 0.004"
    assert any("lr 0.016 scored highest, but lr 0.004 is within noise" in e for e in d["evidence"])
    assert [s.point[LR] for s in runner.calls if s.phase == "phase1-lr-grid"][:2] == [4e-3, 8e-3]


def test_lr_grid_skips_2x_when_1x_already_collapses():
    world = lr_binds()
    world.verdict = lambda p: "lr-too-large" if p[LR] >= 1e-3 else "healthy"
    world.f1 = lambda p: 0.1 if p[LR] >= 1e-3 else 0.6
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, lr_probe=False))
    assert [s.point[LR] for s in runner.calls if s.phase == "phase1-lr-grid"] == [1e-3, 5e-4]
    d = next(x for x in ctx.decisions if x["kind"] == "lr-grid-skip")
    assert d["verdict"] == "2x not needed" and "lr-too-large" in d["evidence"][0]
    assert ctx.state["final"].point[LR] <= 5e-4


def test_budget_is_not_held_back_for_a_stage_that_cannot_fit():
    from loratune.search.protocol import reserve

    ctx, _ = make_ctx(lr_binds(), budget="30s")
    ctx.costs = CostModel(prior_examples_per_s=100, full_over_lora=5.0)  # lora trial 10 s, full probe 50 s
    ctx.meter.reserve_s = 0
    s = ProtocolSettings()
    held = reserve(ctx, "seeds", s)  # the full probe (50 s) cannot fit in 30 s: nothing held for it
    assert held.trials == 0 and ctx.meter.fits(ctx.estimate({}), held)
    held = reserve(ctx, "phase2", s)  # full probe skipped; seeds (2 x 10 s) and the rank sweep fill the 30 s
    assert held.trials == 3 and not ctx.meter.fits(ctx.estimate({}), held)


def test_budget_left_at_the_end_runs_the_skipped_stages():
    ctx, runner = make_ctx(lr_binds(), budget="105s")  # 90 s usable; every scripted trial costs 10 s
    ctx.costs = CostModel(prior_examples_per_s=100, full_over_lora=5.0)  # the full probe looks like 50 s
    run_protocol(ctx, START, ProtocolSettings(full_lr_factors=(1.0,)))  # one full trial (its lr probe: below)
    phases = [p for p, _ in names(runner)]
    first_pass = phases[:phases.index("lora-vs-full") + 1]
    assert "phase2" not in first_pass and "rank-sweep" not in first_pass and first_pass.count("seeds") == 2
    d = next(x for x in ctx.decisions if x["phase"] == "revisit")
    assert d["verdict"] == "budget left after the last stage"
    later = phases[len(first_pass):]
    assert later == ["phase2", "rank-sweep", "target-sweep", "target-sweep"]  # the lr step first, in protocol order
    assert ctx.state["final"].point[LR] == 4e-3
    assert ctx.meter.spent.wall_s <= 90 + 1e-9
    assert [x["kind"] for x in ctx.decisions].count("lora-vs-full") == 2  # decided again on the new evidence
    assert sum(1 for s in runner.calls if s.point.get("adapter.method") == "full") == 1
    assert ctx.state["lora_vs_full"]["full_trial"] is not None  # the second decision reuses the probe


def _lr_peak(p) -> float:
    """A small lr term peaking at 1e-3, so the lr grid brackets it and phase 2 keeps the lr."""
    return -0.01 * abs(math.log2(p[LR] / 1e-3))


def test_phase2_raises_the_scale_when_lr_barely_moves_the_loss():
    """Protocol 4: 'lr changes barely move the loss, and more rank is unwanted' -> scale 2 -> 4."""
    world = World(lambda p: 0.70 + (0.05 if scale_of(p) >= 4 else 0.0) + _lr_peak(p), lambda p: "healthy",
                  loss=lambda p: 1.0, gap=0.12)  # loss flat over lr; gap 0.12 >= weak_gap_min 0.1
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    alpha = next(x for x in ctx.decisions if x["kind"] == "alpha")
    assert alpha["verdict"] == "LoRA update too weak" and alpha["code"] == "scale-step-kept"
    assert alpha["data"]["step_size"]["code"] == "step-size-raised"  # lr x s x2 on purpose, recorded
    assert alpha["data"]["step_size"]["after"] == pytest.approx(2 * alpha["data"]["step_size"]["before"])
    assert any("moved the min val loss by 0.0%" in e for e in alpha["evidence"])
    assert any("scale 2 -> 4: 0.700 -> 0.750" in e for e in alpha["evidence"])
    step = next(s for s in runner.calls if s.purpose == "scale 2 -> 4")
    assert step.point["adapter.lora_alpha"] == 32.0 and step.point[R] == 8 and step.point[LR] == 1e-3
    assert ctx.state["final"].point["adapter.lora_alpha"] == 32.0


def test_phase2_keeps_the_scale_when_lr_moves_the_loss():
    world = World(lambda p: 0.70 + _lr_peak(p), lambda p: "healthy",
                  loss=lambda p: 1.0 + 0.3 * abs(math.log2(p[LR] / 1e-3)), gap=0.12)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    alpha = next(x for x in ctx.decisions if x["kind"] == "alpha")
    assert alpha["verdict"] == "update strength adequate"
    assert not any(s.purpose.startswith("scale") for s in runner.calls)


def test_phase2_regularizes_an_overfitting_incumbent_and_keeps_what_helps():
    """Large train/val gap and a rising val loss (protocol 3 overfit evidence) with capacity judged
    adequate: dropout up, then weight decay, each kept only when val macro-F1 rises."""
    def f1(p):
        return 0.70 + (0.03 if p.get("adapter.lora_dropout", 0.1) >= 0.2 else 0.0) \
            - (0.05 if p.get("train.weight_decay", 0.01) >= 0.1 else 0.0) + _lr_peak(p)

    world = World(f1, lambda p: "healthy", gap=0.2, features={"val_loss_rise": 0.3})
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    regs = [x for x in ctx.decisions if x["kind"] == "regularization"]
    # weight decay is tried on top of the kept dropout (0.680 vs 0.730: a loss beyond the 0.02 band)
    assert [x["verdict"] for x in regs] == ["lora_dropout up helps", "weight_decay 0.1 does not help"]
    final = ctx.state["final"].point
    assert final["adapter.lora_dropout"] == 0.2 and final.get("train.weight_decay", 0.01) == 0.01
    assert final[R] == 8 and final[LR] == 1e-3  # capacity and lr untouched by the remedy


def test_phase2_lr_steps_inside_the_noise_band_are_a_tie_and_keep_the_lr():
    """Protocol 5b/6: a gain counts only beyond max(0.5 pt, 2 sigma); each lr x2 adds 0.001 here, inside the band
    0.02 (val SE 0.01). The first step is a tie: the incumbent's lr is kept, the tie is recorded with the band, and
    no further step runs (it used to call both x2 steps 'better' and end two doublings up, at lr 0.008)."""
    world = World(lambda p: 0.70 + 0.001 * math.log2(p[LR] / 1e-3), lambda p: "healthy", loss=lambda p: 0.8)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1))
    steps = [x for x in ctx.decisions if x["phase"] == "phase2" and x["kind"] == "lr"]
    assert [x["code"] for x in steps] == ["lr-step-rejected"]
    d = steps[0]
    assert d["verdict"] == "lr 0.004 is within noise of lr 0.002 (a tie)" and d["move"] == "keep lr 0.002"
    assert d["data"]["tie"] is True and d["data"]["noise"] == pytest.approx(0.02)
    assert d["data"]["gain"] == pytest.approx(0.001)
    assert any("gain +0.001, within noise 0.020" in e and "a tie" in e for e in d["evidence"])
    assert [s.point[LR] for s in runner.calls if s.phase == "phase2"] == [4e-3]  # one step, then it stops
    assert ctx.state["incumbent"].point[LR] == 2e-3


def test_phase2_a_scale_step_inside_the_noise_band_keeps_the_scale():
    """The update-too-weak world of the test above, but s 2 -> 4 gains only 0.01 (band 0.02): a tie, scale kept."""
    world = World(lambda p: 0.70 + (0.01 if scale_of(p) >= 4 else 0.0) + _lr_peak(p), lambda p: "healthy",
                  loss=lambda p: 1.0, gap=0.12)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    alpha = next(x for x in ctx.decisions if x["kind"] == "alpha")
    assert alpha["code"] == "scale-step-rejected" and alpha["move"] == "keep scale"
    assert alpha["data"]["tie"] is True and alpha["data"]["noise"] == pytest.approx(0.02)
    assert any("scale 2 -> 4: 0.700 -> 0.710, gain +0.010, within noise 0.020" in e for e in alpha["evidence"])
    assert ctx.state["final"].point["adapter.lora_alpha"] == 16.0


def test_phase2_a_regularization_move_inside_the_noise_band_is_not_kept():
    """Overfitting, and dropout up gains 0.01 (band 0.02): a tie, the incumbent's dropout is kept."""
    def f1(p):
        return 0.70 + (0.01 if p.get("adapter.lora_dropout", 0.1) >= 0.2 else 0.0) + _lr_peak(p)

    world = World(f1, lambda p: "healthy", gap=0.2, features={"val_loss_rise": 0.3})
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    regs = [x for x in ctx.decisions if x["kind"] == "regularization"]
    assert regs[0]["verdict"] == "lora_dropout up is within noise (a tie)"
    assert regs[0]["code"] == "regularization-rejected" and regs[0]["data"]["tie"] is True
    assert ctx.state["final"].point["adapter.lora_dropout"] == 0.1


def test_early_peak_sets_early_stopping_for_the_final_config():
    world = World(lambda p: 0.70 + _lr_peak(p), lambda p: "healthy",
                  features={"best_step_fraction": 0.4, "val_metric_final_drop": 0.05})
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    es = next(x for x in ctx.decisions if x["kind"] == "early-stopping")
    assert es["code"] == "early-stopping-set"
    assert "noise band 0.020" in es["evidence"][0]  # max(floor 0.005, 2 x val SE 0.01)
    assert ctx.state["final_notes"] == {"train.early_stopping_patience": 2}


def test_an_early_peak_whose_fall_is_inside_the_noise_band_keeps_the_config():
    """The same early peak, but the objective ends only 0.012 below it: inside the noise band (0.014 with one
    seed and a val SE of 0.01), so it is a tie, not a fall: no early stopping."""
    world = World(lambda p: 0.70 + _lr_peak(p), lambda p: "healthy",
                  features={"best_step_fraction": 0.4, "val_metric_final_drop": 0.012})
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    es = next(x for x in ctx.decisions if x["kind"] == "early-stopping")
    assert es["code"] == "early-stopping-none"
    assert "inside the noise band" in es["evidence"][0]
    assert not ctx.state["final_notes"]


class _NoCurveWorld(World):
    """Trials whose objective curve was not recorded: phase 2 reads the diagnosis's features instead."""

    def result(self, p: dict) -> TrialResult:
        import dataclasses

        return dataclasses.replace(super().result(p), curve=())


def test_without_a_curve_an_early_fall_equal_to_the_rule_threshold_up_to_rounding_counts_as_falling():
    """The no-curve fallback read the rule table's `val_metric_final_drop >= val_metric_drop_min` with a plain >=:
    0.35 - 0.33 = 0.019999999999999962 was 'falling' for the rule (diagnose's operators allow float rounding) and
    not for phase 2; and its evidence called that threshold the noise band. A late peak that fell past the band read
    'inside the noise band' (a review)."""
    world = _NoCurveWorld(lambda p: 0.70 + _lr_peak(p), lambda p: "healthy",
                          features={"best_step_fraction": 0.4, "val_metric_final_drop": 0.35 - 0.33})
    ctx, _ = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    es = next(x for x in ctx.decisions if x["kind"] == "early-stopping")
    assert es["code"] == "early-stopping-set"
    assert "(the rule's val_metric_drop_min 0.020)" in es["evidence"][0] and "noise band" not in es["evidence"][0]
    late = World(lambda p: 0.70 + _lr_peak(p), lambda p: "healthy",
                 features={"best_step_fraction": 0.75, "val_metric_final_drop": 0.12})
    ctx, _ = make_ctx(late)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    es = next(x for x in ctx.decisions if x["kind"] == "early-stopping")
    assert es["code"] == "early-stopping-none"  # 75% is no early peak (EARLY_PEAK_BEST_FRACTION 0.7)
    assert "final 0.120 below it (past the noise band" in es["evidence"][0]


def _longer_helps(p) -> float:
    return 0.03 if int(p.get("train.max_steps") or 0) >= 200 else 0.0


def _lr_peak_moving(p) -> float:
    """`_lr_peak` for trial-length runs; a long run (>= 200 steps) peaks at half the lr (protocol 3: the best lr
    moves with the budget), where the protocol trains long runs (`long_lr_factor`)."""
    peak = 5e-4 if int(p.get("train.max_steps") or 0) >= 200 else 1e-3
    return -0.01 * abs(math.log2(p[LR] / peak))


def test_budget_left_trains_a_still_improving_pick_longer():
    world = World(lambda p: 0.70 + _lr_peak(p) + _longer_helps(p), lambda p: "healthy",
                  features={"still_improving": 1.0, "best_step_fraction": 1.0})
    start = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=6.0)
    ctx, runner = make_ctx(world)  # the end-of-study path (the default trains long early: tests below)
    run_protocol(ctx, start, ProtocolSettings(full_probe=False, lr_probe=False, early_long=False),
                 plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    last = runner.calls[-1]
    assert last.phase == "final-train" and last.point["train.max_steps"] == 400  # 6 epochs / 1.5 per trial
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    assert d["verdict"] == "longer training helps" and "0.700 -> 0.730" in d["evidence"][1]
    assert d["evidence"][0].endswith("of its trial, still improving (a 100-step trial)")  # the trial's curve, read first
    assert d["code"] == "final-train-helps"
    assert ctx.state["final"].point["train.max_steps"] == 400 and ctx.state["final"].point[LR] == 1e-3


def _long_peak_world(long_peak: float) -> World:
    """The short trials' lr peak is 1e-3; a run 4x longer peaks at `long_peak` and gains 0.03 there."""
    def f1(p):
        long = int(p.get("train.max_steps") or 0) >= 200
        peak = long_peak if long else 1e-3
        return 0.70 - 0.01 * abs(math.log2(p[LR] / peak)) + (0.03 if long else 0.0)

    return World(f1, lambda p: "healthy", features={"still_improving": 1.0, "best_step_fraction": 1.0})


@pytest.mark.parametrize("long_peak, pick_lr, code", [
    (5e-4, 5e-4, "final-train-reused"),  # lr /2 suits the long run: the early run stays the pick
    (1e-3, 1e-3, "final-train-helps"),  # it does not: the end's run at the trial's lr replaces it
])
def test_long_runs_train_at_half_the_trials_lr_and_the_end_tries_the_trials_lr(long_peak, pick_lr, code):
    """The lr the short trials chose (1e-3, the peak at 100 steps) need not suit a run 4x longer (protocol 3: the
    best lr moves with the budget). The early long run trains at `long_lr_factor` (0.5) x it; the final
    training runs the other factor of `final_lr_factors` (1x) at the same length, reusing the early run (not
    trained twice), and the better long run is the pick."""
    start = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=6.0)
    ctx, runner = make_ctx(_long_peak_world(long_peak))
    run_protocol(ctx, start, ProtocolSettings(full_probe=False, lr_probe=False),
                 plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    longs = [s for s in runner.calls if s.point.get("train.max_steps")]
    assert [(s.phase, s.point[LR], s.point["train.max_steps"]) for s in longs] == [
        ("early-long", 5e-4, 400), ("final-train", 1e-3, 400)]
    early = next(x for x in ctx.decisions if x["code"] == "early-long-trained")
    assert any("at lr 0.0005 (0.5x the trial's" in e for e in early["evidence"])
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    low, high = (0.73, 0.72) if long_peak == 5e-4 else (0.72, 0.73)
    assert d["code"] == code
    assert any(f"lr 0.0005 -> {low:.3f}, lr 0.001 -> {high:.3f}" in e for e in d["evidence"])
    assert [x["lr"] for x in d["data"]["lrs"]] == [5e-4, 1e-3]
    final = ctx.state["final"]
    assert final.point[LR] == pick_lr and final.point["train.max_steps"] == 400
    assert final.value == pytest.approx(0.73)


def test_long_lr_factor_one_trains_long_at_the_trials_lr_and_the_end_tries_lr_halved():
    start = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=6.0)
    ctx, runner = make_ctx(_long_peak_world(5e-4))
    run_protocol(ctx, start, ProtocolSettings(full_probe=False, lr_probe=False, long_lr_factor=1.0),
                 plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    longs = [(s.phase, s.point[LR], s.point["train.max_steps"]) for s in runner.calls if s.point.get("train.max_steps")]
    assert longs == [("early-long", 1e-3, 400), ("final-train", 5e-4, 400)]
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    assert d["code"] == "final-train-helps" and d["verdict"] == "the long run at another lr scores higher"
    assert ctx.state["final"].point[LR] == 5e-4
    # protocol 5b: the gain (0.01) set against the study's noise band (its floor here): a tie, said so
    noise, _ = ctx.noise()
    assert d["data"]["gain"] == pytest.approx(0.01) and d["data"]["noise"] == noise
    assert any(e.startswith("gain 0.010 over the pick: ") and ("a tie" in e) == (0.01 < noise) for e in d["evidence"])


def test_a_reused_long_run_replaced_by_its_other_lr_names_the_new_pick_in_its_evidence():
    """The long run at lr 1e-3 (long_lr_factor 1) is reused; its run at lr 5e-4 scores higher and becomes the pick:
    the evidence names the early run as the pick *before* it (it named it "the pick" while the move said another),
    and says why the config was not trained again as it happened (it is still the incumbent)."""
    start = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=6.0)
    ctx, runner = make_ctx(_long_peak_world(5e-4))
    run_protocol(ctx, start, ProtocolSettings(full_probe=False, lr_probe=False, long_lr_factor=1.0),
                 plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    early = next(r for r in ctx.records if r.spec.phase == "early-long")
    final = ctx.state.final
    assert d["code"] == "final-train-helps" and final is not early and d["move"] == f"pick = {final.label}"
    assert d["evidence"][1] == f"the pick before it: {early.label}, val macro-F1 0.720"
    assert not any(e.startswith("the pick: ") for e in d["evidence"])
    assert "it is still the incumbent, so it is not trained again" in d["evidence"][0]


@pytest.mark.parametrize("gain, why", [
    (0.05, "#4 r4-a8 was trained long already: #5 lr5e-4-r4-a8-steps400, 400 steps, val macro-F1 0.780 (its trial "
           "0.750); it is still the incumbent"),  # promoted: the champion now
    (0.005, "the later incumbent #4 r4-a8 (0.705) did not beat its trial beyond the noise 0.020"),
])
def test_a_reused_long_run_says_why_it_is_not_trained_again(gain, why):
    """The reused long run's evidence says what happened to the later incumbent (promoted beyond noise: it is the
    champion; within it: not trained long), not "no later incumbent beat its trial" whatever happened."""
    ctx, runner = make_ctx(_capacity_world(gain))
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False), plan=PLAN)
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    assert d["code"] == "final-train-reused" and d["move"] == f"keep {ctx.state.final.label}"
    assert why in d["evidence"][0]
    assert d["evidence"][1] == f"the pick: {ctx.state.final.label}, {ctx.show(ctx.state.final.value)}"
    c = next(x for x in ctx.decisions if x["kind"] == "challenger")
    early = next(r for r in ctx.records if r.spec.phase == "early-long")
    if c["code"] == "challenger-promoted":  # the promotion replaced the early run: named as the pick before it
        assert c["move"] == f"pick = {ctx.state.final.label}" and ctx.state.final is not early
        assert f"the pick before it: {early.label}, {ctx.show(early.value)}" in c["evidence"]
        assert not any(e.startswith("the pick: ") for e in c["evidence"])
    else:
        assert f"the pick: {early.label}, {ctx.show(early.value)}" in c["evidence"]


def test_the_target_is_met_by_the_long_run_the_study_picked():
    """--target 0.71: the chosen rank's 100-step trial scored 0.700 (not met), its early long run 0.730 (the pick):
    LoRA meets the target, so rank-plateau does not hold, and it names the long run it judged."""
    start = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=6.0)
    ctx, runner = make_ctx(_long_peak_world(5e-4))
    run_protocol(ctx, start, ProtocolSettings(lr_probe=False, target=0.71),
                 plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    lvf = ctx.state["lora_vs_full"]
    r = next(x for x in lvf["reasons"] if x["id"] == "rank-plateau")
    early = next(x for x in ctx.records if x.spec.phase == "early-long")
    assert ctx.state.incumbent.value == pytest.approx(0.70) and early.value == pytest.approx(0.73)
    assert r["holds"] is False and r["evidence"]["best"] == pytest.approx(0.73)
    assert r["evidence"]["best_label"] == early.label and r["text"].endswith("vs target 0.710: met")


def test_final_training_is_shortened_to_the_budget_or_skipped():
    world = World(lambda p: 0.70 + _lr_peak(p) + _longer_helps(p), lambda p: "healthy",
                  features={"still_improving": 1.0, "best_step_fraction": 1.0})
    start = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=6.0)
    # examples budget: six scripted trials of 1000 examples run first; a 100-step trial is estimated at
    # 1000 examples, so the 3000 left hold 256 steps (400 shortened by 0.8 steps), not 400
    ctx, runner = make_ctx(world, budget="9000ex")  # the end-of-study path: no early long run
    run_protocol(ctx, start, ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False, early_long=False),
                 plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    last = runner.calls[-1]
    assert [s.phase for s in runner.calls].count("final-train") == 1 and last.phase == "final-train"
    assert last.point["train.max_steps"] == 256 and ctx.estimate(last.point).examples == 2560
    assert last.point[LR] == 1e-3  # two long runs of >= 200 steps do not fit: one, at the measured lr
    ctx, runner = make_ctx(world, budget="7500ex")  # 1500 left: less than 2 trials' worth
    run_protocol(ctx, start, ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False, early_long=False),
                 plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    assert all(s.phase != "final-train" for s in runner.calls)
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    assert d["verdict"] == "still improving; a longer run is not affordable"


def test_a_pick_that_peaked_inside_its_trial_is_not_trained_longer():
    # best at half the trial, the end 0.05 below it: beyond the noise band (sqrt(2) x the val SE 0.01 before the
    # seeds, 2 x the seed sigma after them), a fall past a peak
    world = World(lambda p: 0.70 + _lr_peak(p), lambda p: "healthy",
                  features={"still_improving": 0.0, "best_step_fraction": 0.5, "val_metric_final_drop": 0.05})
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, lr_probe=False),
                 plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    assert all(s.phase not in ("final-train", "early-long") for s in runner.calls)
    assert "early-long-peaked" in codes(ctx)
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    assert d["verdict"] == "the pick peaked inside its trial" and d["code"] == "final-train-peaked"
    assert "0.050 below it, beyond the noise band" in d["evidence"][0]


def test_a_pick_level_inside_the_noise_after_an_earlier_best_is_trained_long():
    """A best before 80% of the trial and an end inside the noise band of it is a curve that held level as its lr
    decayed, not a fall past a peak: no evidence that a longer run would not help, so it is trained long (the
    banking77-20 studies of seeds 1 and 7 kept a 47-step trial as the pick this way, 0.899 test for seed 7, where
    every long run of the other seeds scored 0.94-0.96)."""
    world = World(lambda p: 0.70 + _lr_peak(p) + _longer_helps(p), lambda p: "healthy",
                  features={"still_improving": 0.0, "best_step_fraction": 0.5, "val_metric_final_drop": 0.005})
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, lr_probe=False),
                 plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    assert "early-long-peaked" not in codes(ctx) and "final-train-peaked" not in codes(ctx)
    d = next(x for x in ctx.decisions if x["code"] == "early-long-trained")
    assert "0.005 below it, inside the noise band" in d["evidence"][0] and "level, not past a peak" in d["evidence"][0]
    assert ctx.state.final.spec.phase in ("early-long", "final-train") and ctx.state.final.point["train.max_steps"] > 100


def test_resume_killed_during_the_final_training_replays_to_the_same_long_run(tmp_path):
    """The long run's length comes from the budget left; a resumed study charges the replayed trials
    again, so it asks for the same run (trained once, after the kill) and ends with the same pick."""
    world = World(lambda p: 0.70 + _lr_peak(p) + _longer_helps(p), lambda p: "healthy",
                  features={"still_improving": 1.0, "best_step_fraction": 1.0})
    start = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=6.0)
    plan = {"max_steps": 100, "epochs": 1.5, "reason": "scripted"}
    settings = ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False, early_long=False)
    ref, ref_runner = make_ctx(world, budget="9000ex")
    run_protocol(ref, start, settings, plan=plan)
    n = len(ref_runner.calls)
    assert ref_runner.calls[-1].phase == "final-train"
    store = MemoryStore(tmp_path, decisions_path=tmp_path / "decisions.jsonl")
    ctx1, r1 = make_ctx(world, budget="9000ex", store=store, interrupt_at=n)  # killed as the long run starts
    with pytest.raises(KeyboardInterrupt):
        run_protocol(ctx1, start, settings, plan=plan)
    ctx2, r2 = make_ctx(world, budget="9000ex", store=store)
    run_protocol(ctx2, start, settings, plan=plan)
    assert [s.phase for s in r2.calls] == ["final-train"]  # only the killed trial runs again
    assert r2.calls[0].key == ref_runner.calls[-1].key  # the same 256-step run
    assert ctx2.state["final"].key == ref.state["final"].key
    assert ctx2.meter.spent.examples == ref.meter.spent.examples


# ---------------------------------------------------------------------------------------------
# effective step size (protocol 6): a rank change holds lr x s by rule, recorded in the trail


def _lr_x_s(p: dict) -> float:
    from loratune.stepsize import step_size

    return step_size(p)


def test_rank_sweep_holds_the_step_size_with_rslora_and_says_so():
    ctx, runner = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings())
    inc = next(s for s in runner.calls if s.name == "lr4e-3")
    sweep = [s for s in runner.calls if s.phase == "rank-sweep"]
    assert [(s.point[R], s.point["adapter.use_rslora"], s.point[LR]) for s in sweep] == [(32, True, 4e-3)]
    assert _lr_x_s(sweep[0].point) == pytest.approx(_lr_x_s(inc.point), rel=1e-2)
    d = next(x for x in ctx.decisions if x["kind"] == "step-size")
    assert d["code"] == "step-size-held-rslora" and d["phase"] == "rank-sweep"
    assert d["data"]["rule"] == "rslora" and [p["r"] for p in d["data"]["points"]] == [8, 32]
    a, b = (p["lr_x_s"] for p in d["data"]["points"])
    assert a == pytest.approx(8e-3) and b == pytest.approx(a, rel=1e-2)  # alpha 11.3 = 2 x sqrt(32), 3 digits
    assert ctx.state["rank_sweep"]["scale_rule"] == "rslora"
    assert next(x for x in ctx.decisions if x["kind"] == "rank")["code"] == "rank-plateau"


def test_rank_sweep_with_lr_compensation_carries_the_compensated_lr():
    """alpha kept at 16: r 8 -> 32 takes s from 2 to 0.5, so the sweep's lr is 4x the working lr."""
    ctx, runner = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings(scale_rule="lr_compensate"))
    sweep = [s for s in runner.calls if s.phase == "rank-sweep"]
    assert [(s.point[R], s.point["adapter.lora_alpha"], s.point[LR]) for s in sweep] == [(32, 16.0, 1.6e-2)]
    assert not sweep[0].point.get("adapter.use_rslora")
    d = next(x for x in ctx.decisions if x["kind"] == "step-size")
    assert d["code"] == "step-size-held-lr"
    assert [(p["r"], p["lr"]) for p in d["data"]["points"]] == [(8, 4e-3), (32, 1.6e-2)]
    assert d["data"]["points"][0]["lr_x_s"] == pytest.approx(d["data"]["points"][1]["lr_x_s"])


def test_the_pair_rank_arm_holds_the_step_size_by_its_rule():
    ctx, runner = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings(move_scale_rule="lr_compensate", full_probe=False))
    arm = next(s for s in runner.calls if s.phase == "pair" and s.point[R] == 16)
    assert arm.point["adapter.lora_alpha"] == 16.0 and arm.point[LR] == 4e-3  # from lr 2e-3 at r 8, s 2 -> 1
    step = ctx.state["pair"]["step_size"]
    assert step["code"] == "step-size-held-lr" and step["before"]["lr_x_s"] == pytest.approx(step["after"]["lr_x_s"])
    # the default spelling (alpha follows r) holds it with the lr unchanged
    ctx, runner = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    assert ctx.state["pair"]["step_size"]["code"] == "step-size-held-alpha"
    assert ctx.state["pair"]["step_size"]["after"]["lr"] == 2e-3


def test_capacity_rank_moves_record_the_step_size_rule():
    ctx, runner = make_ctx(capacity_binds())
    run_protocol(ctx, START, ProtocolSettings())
    moves = [x for x in ctx.decisions if x["kind"] == "capacity-move" and "step_size" in x["data"]]
    assert moves and all(x["data"]["step_size"]["code"] == "step-size-held-alpha" for x in moves)


def test_an_unknown_scale_rule_is_refused():
    with pytest.raises(ValueError, match="unknown scale rule"):
        ProtocolSettings(scale_rule="rank-stable")


# ---------------------------------------------------------------------------------------------
# decision codes: what tests and tools read (the English beside them may be reworded)


def codes(ctx):
    return [d["code"] for d in ctx.decisions]


def test_each_path_is_a_sequence_of_decision_codes():
    ctx, _ = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings())
    assert codes(ctx) == ["start-config", "lr-grid-skip-down", "lr-grid-best", "pair-optimization",
                          "lr-step-rejected", "scale-adequate", "no-overfitting", "early-stopping-still-improving",
                          "seed-noise-measured", "rank-plateau", "step-size-held-rslora", "targets-no-gain",
                          "full-lr-probe-best", "choose-lora"]
    ctx, _ = make_ctx(capacity_binds())
    run_protocol(ctx, START, ProtocolSettings())
    assert codes(ctx)[:5] == ["start-config", "lr-grid-best", "pair-capacity", "capacity-move-kept",
                              "capacity-adequate"]
    assert next(d for d in ctx.decisions if d["code"] == "capacity-move-kept")["data"]["move"] == "r-x2"
    ctx, _ = make_ctx(overfits())
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1))
    assert codes(ctx)[:5] == ["start-config", "lr-grid-best", "capacity-overfit", "capacity-move-kept",
                              "capacity-adequate"]
    assert next(d for d in ctx.decisions if d["code"] == "capacity-move-kept")["data"]["move"] == "r-half"


def test_every_decision_code_is_registered():
    from loratune.search.protocol import DECISION_CODES

    seen = set()
    runs = [(lr_binds(), "100trials", ProtocolSettings(), None), (capacity_binds(), "100trials", ProtocolSettings(), None),
            (overfits(), "100trials", ProtocolSettings(full_probe=False, seeds=1), None),
            (lr_binds(), "4trials", ProtocolSettings(), None), (lr_binds(), "105s", ProtocolSettings(), None),
            (lr_binds(), "40s", ProtocolSettings(), {"max_steps": 100, "reason": "scripted"}),
            (lr_binds(), "100trials", ProtocolSettings(scale_rule="lr_compensate"),
             {"max_steps": 100, "epochs": 1.5, "reason": "scripted"})]
    for world, budget, settings, plan in runs:
        ctx, _ = make_ctx(world, budget=budget)
        run_protocol(ctx, START, settings, plan=plan)
        seen |= set(codes(ctx))
    assert seen <= set(DECISION_CODES), seen - set(DECISION_CODES)
    assert len(seen) >= 20


@pytest.mark.parametrize("verdict,code", [("healthy", "capacity-adequate"), ("lr-too-large", "capacity-lr-problem"),
                                          ("diverged", "capacity-lr-problem"), ("overfit-capacity", "capacity-overfit"),
                                          ("undertrained", "capacity-no-limit"), ("lr-too-small", "pair-neither"),
                                          ("underfit-capacity", "pair-neither")])
def test_the_capacity_policy_maps_each_verdict_to_one_decision(verdict, code):
    world = World(lambda p: 0.70 + _lr_peak(p), lambda p: verdict)
    ctx, _ = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, lr_probe=False))
    assert next(c for c in codes(ctx) if c.startswith(("capacity-", "pair-"))) == code


# ---------------------------------------------------------------------------------------------
# one stage table, one state record


def test_the_stage_table_has_every_stage_once_and_names_every_trail_phase():
    from loratune.search.protocol import STAGE_TABLE
    from loratune.search.stages import TRAIL_PHASES, StageId

    assert [x.id for x in STAGE_TABLE] == list(StageId)
    assert sum(x.planned for x in STAGE_TABLE) == 13  # the plan divides the budget by this
    assert [x.id.value for x in STAGE_TABLE if x.revisit] == ["phase2", "seeds", "rank-sweep", "target-sweep",
                                                               "arms", "lora-vs-full"]
    ctx, runner = make_ctx(lr_binds(), budget="105s")
    ctx.costs = CostModel(prior_examples_per_s=100, full_over_lora=5.0)
    run_protocol(ctx, START, ProtocolSettings(), plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    assert {d["phase"] for d in ctx.decisions} <= set(TRAIL_PHASES)
    assert {s.phase for s in runner.calls} <= {x.value for x in StageId}
    assert StageId("rank-sweep").title == "rank sweep" and f"{StageId.SEEDS}" == "seeds" == str(StageId.SEEDS)


def test_protocol_state_is_typed_and_still_reads_like_the_dict_it_replaced():
    from loratune.search.state import ProtocolState

    ctx, _ = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings())
    st = ctx.state
    assert isinstance(st, ProtocolState) and st.final is st["final"] and st.incumbent.point[LR] == 4e-3
    assert st.rank_sweep["scale_rule"] == "rslora" and st.get("lr_centre") is None and "lr_centre" not in st
    with pytest.raises(KeyError, match="not a ProtocolState field"):
        st["incumbant"] = None


# ---------------------------------------------------------------------------------------------
# arms: LoRA+ and DoRA, each at its own lr


def test_arms_are_tried_each_at_its_own_lr_and_kept_when_they_gain():
    """LoRA+ peaks at half the LoRA lr (B already steps 16x), DoRA changes nothing."""
    world = lr_binds()
    base = world.f1

    def f1(p):
        if p.get("train.optimizer") == "loraplus":
            return base({**p, LR: p[LR] * 2}) + (0.03 if not p.get("adapter.use_dora") else 0.0)
        return base(p)

    world.f1 = f1
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, arms=("loraplus", "dora")))
    arms = [s for s in runner.calls if s.phase == "arms"]
    assert [(s.point.get("train.optimizer"), s.point.get("adapter.use_dora"), s.point[LR]) for s in arms] == [
        ("loraplus", None, 2e-3),  # 0.5x first: gains beyond noise, so 1x is not needed
        ("loraplus", True, 2e-3), ("loraplus", True, 1e-3)]  # DoRA from the new incumbent, at 1x then 0.5x
    d = [x for x in ctx.decisions if x["phase"] == "arms"]
    assert [x["code"] for x in d] == ["arm-gain", "arm-no-gain"]
    assert d[0]["data"]["arm"] == "loraplus" and d[0]["data"]["gain"] == pytest.approx(0.03)
    final = ctx.state.final.point
    assert final["train.optimizer"] == "loraplus" and final[LR] == 2e-3 and not final.get("adapter.use_dora")


def test_no_arm_runs_unless_asked_and_unknown_arms_are_refused():
    ctx, runner = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    assert not any(s.phase == "arms" for s in runner.calls) and "arms" not in {d["phase"] for d in ctx.decisions}
    with pytest.raises(ValueError, match="unknown arm\\(s\\) 'qlora'; known: loraplus, dora"):
        ProtocolSettings(arms=("qlora",))


def test_the_samplers_draw_the_same_arms_at_their_own_lr():
    from loratune.search.space import default_space, to_overrides

    space = default_space(START.point, 32, arms=("loraplus", "dora"))
    assert space["adapter.arm"].choices == ("lora", "loraplus", "dora")
    assert "adapter.arm" not in default_space(START.point, 32).keys
    assert to_overrides({"adapter.arm": "loraplus", LR: 2e-3}) == {"train.optimizer": "loraplus", LR: 1e-3}
    assert to_overrides({"adapter.arm": "dora", LR: 2e-3}) == {"adapter.use_dora": True, LR: 2e-3}
    assert to_overrides({"adapter.arm": "lora", LR: 2e-3}) == {LR: 2e-3}


# ---------------------------------------------------------------------------------------------
# train long early (issue 15 item 2): the pick at the final length from the lr grid on; challengers


PLAN = {"max_steps": 100, "epochs": 1.5, "reason": "scripted"}
LONG_START = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=6.0)  # 6 epochs: 4x a trial
STILL = {"still_improving": 1.0, "best_step_fraction": 1.0}


def test_the_lr_grids_incumbent_is_trained_long_before_the_evidence_stages():
    world = World(lambda p: 0.70 + _lr_peak_moving(p) + _longer_helps(p), lambda p: "healthy", features=STILL)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False), plan=PLAN)
    c = codes(ctx)
    assert c[c.index("lr-grid-best") + 1] == "early-long-trained"  # right after the grid, before capacity
    phases = [s.phase for s in runner.calls]
    assert phases[3] == "early-long" and phases[:3] == ["phase1-lr-grid"] * 3
    long = runner.calls[3]
    assert long.point["train.max_steps"] == 400 and long.point[LR] == 5e-4  # 6 epochs / 1.5 per trial; lr x 0.5
    d = next(x for x in ctx.decisions if x["code"] == "early-long-trained")
    assert "0.700 -> 0.730" in d["evidence"][1] and d["data"]["steps"] == 400
    # the evidence stages ran after it; nothing beat the grid's incumbent, so the long run is the pick, and
    # the final training reuses it (the 400-step run at lr 5e-4 is trained once) and tries the trial's lr 1e-3
    assert {"seeds", "rank-sweep", "target-sweep"} <= set(phases[4:])
    assert c[-1] == "final-train-reused"
    assert ctx.state.final.spec.phase == "early-long" and ctx.state.final.value == pytest.approx(0.73)
    assert len({s.key for s in runner.calls}) == len(runner.calls)
    assert sum(1 for s in runner.calls if s.point.get("train.max_steps") == 400 and s.point[LR] == 5e-4) == 1


def test_the_early_long_run_is_skipped_when_the_budget_cannot_hold_it():
    world = World(lambda p: 0.70 + _lr_peak(p) + _longer_helps(p), lambda p: "healthy", features=STILL)
    # three grid trials of 1000 examples; the shortest long run (2 x a trial) is estimated at 2000: 1500 left
    ctx, runner = make_ctx(world, budget="4500ex")
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False), plan=PLAN)
    assert "early-long-unaffordable" in codes(ctx) and "early-long-trained" not in codes(ctx)
    assert all(s.phase != "early-long" for s in runner.calls)
    assert ctx.state.champion is None and ctx.state.final.point.get("train.max_steps") is None
    # the early run was skipped; the final training (same length rule) does not fit either and says so
    assert codes(ctx)[-1] == "final-train-unaffordable"


def test_phase_0s_epochs_not_the_budget_are_named_when_they_leave_no_room_for_a_long_run():
    """2 epochs at 1.5 per trial cap a full run at 133 steps, under the shortest long run (200): the trail blamed
    the budget ("does not fit yet") with most of a large budget unspent."""
    world = World(lambda p: 0.70 + _lr_peak(p) + _longer_helps(p), lambda p: "healthy", features=STILL)
    ctx, _ = make_ctx(world, budget="100trials")
    short = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=2.0)
    run_protocol(ctx, short, ProtocolSettings(full_probe=False, lr_probe=False, pair=False), plan=PLAN)
    c = codes(ctx)
    assert "early-long-epochs-capped" in c and "early-long-unaffordable" not in c
    assert c[-1] == "final-train-epochs-capped"
    d = next(x for x in ctx.decisions if x["code"] == "final-train-epochs-capped")
    assert "phase 0's 2 epochs" in d["evidence"][1] and "cap a full run at 133 steps" in d["evidence"][1]


def test_the_early_long_run_outranks_the_seeds_when_the_budget_holds_one_of_them():
    world = World(lambda p: 0.70 + _lr_peak(p) + _longer_helps(p), lambda p: "healthy", features=STILL)
    # three grid trials of 1000 examples leave 3500: the shortest long run (2000) fits beside the full probe's
    # trial (1000) held back, not beside the seeds' two trials too (protocol version 12 held all 3000 back)
    ctx, runner = make_ctx(world, budget="6500ex")
    run_protocol(ctx, LONG_START, ProtocolSettings(lr_probe=False, pair=False), plan=PLAN)
    c = codes(ctx)
    assert "early-long-trained" in c and "early-long-unaffordable" not in c
    assert [s.phase for s in runner.calls][3] == "early-long"
    assert runner.calls[3].point["train.max_steps"] == 200  # 2x a trial: the shortest long run
    # the long run is the pick: 0.70, -0.01 at lr 5e-4 (half the grid's 1e-3), +0.03 for its length
    assert ctx.state.final.spec.phase == "early-long" and ctx.state.final.value == pytest.approx(0.72)
    # the seeds get what is left after the full probe's trial is held back (one trial here, not two) ...
    assert sum(s.phase == "seeds" for s in runner.calls) == 1
    assert any(d["code"] == "budget-skip" and d["phase"] == "seeds" for d in ctx.decisions)
    # ... and the full probe, whose trial and a long run of its winner no longer fit, cannot change the pick
    skip = [d for d in ctx.decisions if d["code"] == "stage-cannot-change-pick" and d["phase"] == "lora-vs-full"]
    assert skip and not any(s.phase == "lora-vs-full" for s in runner.calls)


def _capacity_world(gain: float) -> World:
    """The grid's incumbent (r 8) overfits; r 4 scores `gain` higher at every length (capacity lowers, protocol 3)."""
    return World(lambda p: 0.70 + (gain if p[R] == 4 else 0.0) + _lr_peak_moving(p) + _longer_helps(p),
                 lambda p: "overfit-capacity" if p[R] >= 8 else "healthy", gap=0.3, features=STILL)


def test_a_challenger_beyond_noise_is_trained_long_and_becomes_the_pick():
    ctx, runner = make_ctx(_capacity_world(0.05))
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False), plan=PLAN)
    d = next(x for x in ctx.decisions if x["phase"] == "early-long" and x["kind"] == "challenger")
    assert d["code"] == "challenger-promoted"
    assert d["data"]["gain"] == pytest.approx(0.05) and d["data"]["gain"] > d["data"]["noise"]
    longs = [(s.point[R], s.point["train.max_steps"]) for s in runner.calls if s.phase == "early-long"]
    assert longs == [(8, 400), (4, 400)]  # the r /2 winner promoted to 400 steps
    final = ctx.state.final
    assert final.point[R] == 4 and final.point["train.max_steps"] == 400 and final.value == pytest.approx(0.78)
    assert ctx.state.champion.point[R] == 4 and codes(ctx)[-1] == "final-train-reused"


def test_a_challenger_within_noise_does_not_replace_the_long_run():
    ctx, runner = make_ctx(_capacity_world(0.005))  # r /2 gains 0.005 < noise sqrt(2) x SE 0.01
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False), plan=PLAN)
    assert "capacity-move-kept" in codes(ctx)  # the stage's own rule (lowering: kept on any gain) moved the incumbent
    assert ctx.state.incumbent.point[R] == 4
    d = next(x for x in ctx.decisions if x["phase"] == "early-long" and x["kind"] == "challenger")
    assert d["code"] == "challenger-within-noise" and d["data"]["gain"] < d["data"]["noise"]
    assert {s.point[R] for s in runner.calls if s.point.get("train.max_steps")} == {8}  # r 4 not trained long
    final = ctx.state.final
    assert final.point[R] == 8 and final.point["train.max_steps"] == 400  # the long run stays the pick
    assert codes(ctx)[-1] == "final-train-reused"


def test_a_challenger_stage_that_cannot_change_the_pick_is_skipped_and_says_why():
    world = World(lambda p: 0.70 + _lr_peak(p) + _longer_helps(p), lambda p: "healthy", features=STILL)
    # grid 3000 + the early long run 1000 (scripted: every run reports 1000 examples) -> 3000 left: the rank sweep
    # (1000) and its winner's shortest long run (200 steps, ~2000) fit, then 2000 left: the target sweep (2 x 1000)
    # and a long run (2000) do not
    ctx, runner = make_ctx(world, budget="7000ex")
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False), plan=PLAN)
    phases = [s.phase for s in runner.calls]
    assert "rank-sweep" in phases and "target-sweep" not in phases
    d = next(x for x in ctx.decisions if x["code"] == "stage-cannot-change-pick")
    assert d["phase"] == "target-sweep" and d["data"]["trials"] == 2
    assert any("a long run of its own" in e for e in d["evidence"])
    from loratune.search.protocol import DECISION_CODES
    assert set(codes(ctx)) <= set(DECISION_CODES)
    assert "target-sweep" not in ctx.state.skipped  # not revisited: its outcome could not change the pick


# ---------------------------------------------------------------------------------------------
# a fair LoRA-vs-full probe (issue 15 item 5): full fine-tuning at its own lr, cost measured per trial


def _full_peaks_at(best_lr: float, best: float = 0.90):
    return lambda p: best if p[LR] == best_lr else 0.60


def test_full_fine_tuning_gets_its_own_lr_probe_and_the_best_lr_decides():
    world = lr_binds()
    world.full_f1 = _full_peaks_at(2e-5)  # the 0.5x probe wins: LoRA lr 4e-3 x 0.01 = 4e-5 is not full's best
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_lr_ratio=0.01))
    fulls = [s.point[LR] for s in runner.calls if s.point.get("adapter.method") == "full"]
    assert fulls == [4e-5, 2e-5, 8e-5]  # 1x, 0.5x, 2x; no plan: trial length
    d = next(x for x in ctx.decisions if x["code"] == "full-lr-probe-best")
    assert d["data"]["best_lr"] == 2e-5 and d["data"]["centre"] == 4e-5
    assert [x["lr"] for x in d["data"]["lrs"]] == [4e-5, 2e-5, 8e-5]
    assert "choose-full" in codes(ctx)  # 0.90 vs LoRA 0.78; at LoRA's lr x 0.1 it would have been 0.60
    assert ctx.state.final.point[LR] == 2e-5 and ctx.state.final.point["adapter.method"] == "full"


def test_a_full_lr_prior_above_the_range_probes_three_lrs_inside_it_and_says_it_was_capped():
    """A prior above FULL_LR_MAX (a tune study saw LoRA lr 2e-2 x 0.1 printed as '= 0.0005', the clamped value as
    the product), and the 2x factor clamped onto 1x left two probes, the best at the range's top unflagged."""
    world = lr_binds()
    world.full_f1 = _full_peaks_at(1e-3)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_lr_ratio=0.5))  # the incumbent's lr x 0.5: above 1e-3
    fulls = [s.point[LR] for s in runner.calls if s.point.get("adapter.method") == "full"]
    d = next(x for x in ctx.decisions if x["code"] == "full-lr-probe-best")
    probed = [x["lr"] for x in d["data"]["lrs"]]
    assert probed == [1e-3, 5e-4, 2.5e-4] and fulls[:3] == probed
    lora_lr = next(x for x in d["evidence"] if x.startswith("LoRA lr"))
    assert "x 0.5 = " in lora_lr and "kept inside protocol 1's lr range 1e-05..0.001: 0.001" in lora_lr
    assert "= 0.001 is a prior" not in lora_lr
    # each probe's label states its multiplier of the prior (LoRA lr 4e-3 x 0.5 = 2e-3), not of the clamped centre
    purposes = [s.purpose for s in runner.calls if s.point.get("adapter.method") == "full"]
    assert [p.split("(")[1].split("x LoRA")[0] for p in purposes[:3]] == ["0.5", "0.25", "0.125"]
    assert all("LoRA lr 0.004 x 0.5 = 0.002; the centre kept inside protocol 1's lr range 1e-05..0.001: 0.001"
               in p for p in purposes[:3])
    assert any("is the top of that range" in x for x in d["evidence"])


def test_full_lr_probe_runs_short_and_the_best_lr_gets_the_full_length_trial():
    world = lr_binds()
    world.full_f1 = _full_peaks_at(2e-4, 0.70)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(early_long=False), plan={"max_steps": 100, "reason": "scripted"})
    fulls = [(s.point[LR], s.point.get("train.max_steps")) for s in runner.calls if s.point.get("adapter.method") == "full"]
    p = ProtocolSettings()
    short = max(p.lr_probe_min_steps, round(100 * p.lr_probe_fraction))
    assert fulls[:3] == [(x, short) for x in (fulls[0][0], fulls[1][0], fulls[2][0])] and fulls[3] == (2e-4, None)
    assert ctx.state.lora_vs_full["full_trial"] == next(r.number for r in ctx.records
                                                        if r.point.get("adapter.method") == "full"
                                                        and not r.point.get("train.max_steps"))


def test_lora_vs_full_memory_is_the_least_over_same_shape_trials_not_the_first_trials_bill():
    """The process's first trial pays one-time costs (its memory above the start includes them); LoRA's
    incumbent and its seed replicates have the same shape, so the least of their measurements is LoRA's."""
    world = lr_binds()
    world.memory = lambda p, n: (900.0 if n == 1 else 1000.0) if p.get("adapter.method") == "full" else (
        5000.0 if n == 1 else 300.0)
    ctx, _ = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings())
    lvf = ctx.state.lora_vs_full
    assert lvf["memory_per_trial"] is True and "least over trials of the same shape" in lvf["memory_basis"]
    chosen = next(row for row in lvf["table"] if "best at the probe" in row["label"])
    full = next(row for row in lvf["table"] if row["method"] == "full")
    assert chosen["peak_memory_mb"] == 300.0 and full["peak_memory_mb"] == 1000.0
    # each number names the trial that measured it (the least of the same-shape trials), and what the memory is
    same = [r for r in ctx.records if r.point.get("adapter.method") == "full"]
    assert full["memory_trial"] in [r.number for r in same] and full["memory_kind"] == "above-start"
    assert full["step_trial"] == min((r.result.mean_step_s, r.number) for r in same)[1]
    # the incumbent, its seed runs and its lr siblings (lr and seed change no tensor's size)
    assert lvf["measurements"][str(ctx.state.incumbent.number)] >= 3
    # without a per-trial measure the trail says the comparison is order-dependent
    ctx, _ = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings())
    assert ctx.state.lora_vs_full["memory_per_trial"] is False
    assert "ORDER-DEPENDENT" in ctx.state.lora_vs_full["memory_basis"]


def test_still_improving_reads_the_objective_curve_not_the_diagnosis_metric():
    """A causal-lm trial: its val loss (the objective, as scores) is lowest at the end while the diagnosis's
    own val metric (token accuracy) peaked at half the run; the trial was still improving."""
    from loratune.search.protocol.long import still_improving
    from loratune.search.trial import TrialRecord, TrialSpec

    def rec(curve):
        res = TrialResult(status="completed", value=-2.18, examples=96, wall_s=1.0, curve=curve,
                          features={"best_step_fraction": 0.5, "still_improving": 0.0}, objective="val/loss")
        return TrialRecord(1, TrialSpec("t", "phase1-lr-grid", {}), "", res)

    assert still_improving(rec(((0, -2.30), (6, -2.22), (12, -2.18)))) == (True, 1.0)
    assert still_improving(rec(((0, -2.30), (6, -2.10), (12, -2.18)))) == (False, 0.5)
    # no curve (records of older versions): the diagnosis's features decide
    assert still_improving(rec(())) == (False, 0.5)


# ---------------------------------------------------------------------------------------------
# protocol v10: the early long run ends by half the budget; the final training extends it


LONG12_START = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=12.0)  # 12 epochs: 8x a trial (800)


def _grows_world(after_600: float, continued: float = 0.07) -> World:
    """Long runs gain with length: +0.03 from 200 steps, +0.045 from 300, +`after_600` from 600 (still improving);
    a run continued from a saved model (train.init_from) scores `continued` over the trials."""
    def longer(p):
        n = int(p.get("train.max_steps") or 0)
        return 0.0 if n < 200 else 0.03 if n < 300 else 0.045 if n < 600 else after_600
    return World(lambda p: 0.70 + (continued if p.get("train.init_from") else _lr_peak_moving(p) + longer(p)),
                 lambda p: "healthy", features=STILL)


def _longs(runner):
    return [(s.phase, s.point[LR], s.point["train.max_steps"]) for s in runner.calls if s.point.get("train.max_steps")]


CONTINUE = ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False, continue_long=True)


def test_the_continuation_is_off_by_default():
    ctx, runner = make_ctx(_grows_world(0.05), budget="16000ex")
    run_protocol(ctx, LONG12_START, ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False), plan=PLAN)
    # the final training runs the long run's lr x1 (at its length) instead, and keeps the early run
    assert _longs(runner) == [("early-long", 5e-4, 409), ("final-train", 1e-3, 409)]
    assert codes(ctx)[-1] == "final-train-reused" and not any(s.point.get("train.init_from") for s in runner.calls)
    early = next(x for x in ctx.decisions if x["code"] == "early-long-trained")
    assert not any("continues it" in e for e in early["evidence"])


def test_the_early_long_run_ends_by_half_the_budget_and_the_final_training_continues_it():
    # examples budget 16000 (a 100-step trial is estimated at 1000): the grid spends 3000, so ending by 8000 leaves
    # 5000 for the run: 800 wanted, shortened by 0.8 -> 640 -> 512 -> 409 (4090 <= 5000)
    ctx, runner = make_ctx(_grows_world(0.05), budget="16000ex")
    run_protocol(ctx, LONG12_START, CONTINUE, plan=PLAN)
    # the evidence stages spend 3 scripted trials of 1000 after it: the 9000 left hold the 391 steps the run lacks
    # of 800, continued from its saved weights at half its lr (2.5e-4)
    assert _longs(runner) == [("early-long", 5e-4, 409), ("final-train", 2.5e-4, 391)]
    early = next(x for x in ctx.decisions if x["code"] == "early-long-trained")
    assert early["data"]["steps"] == 409 and early["data"]["steps_wanted"] == 800
    assert any("409 of the 800 steps wanted: the run ends by 50% of the budget" in e for e in early["evidence"])
    assert "capped to end by 50% of the budget" in runner.calls[3].purpose
    long_rec = next(r for r in ctx.records if r.spec.phase == "early-long")
    cont = runner.calls[-1]
    assert cont.point["train.init_from"] == f"{long_rec.run_dir}/adapter"  # the early run's saved model
    assert cont.name.endswith("-cont") and "391 more steps (0.96x its 409) at lr 0.00025" in cont.purpose
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    assert d["code"] == "final-train-continued" and d["data"]["from_steps"] == 409 and d["data"]["steps"] == 391
    assert any("0.745 -> 0.770" in e and "800 steps in all, the cost of 391" in e for e in d["evidence"])
    assert d["data"]["gain"] == pytest.approx(0.025) and d["data"]["noise"] == pytest.approx(2 * 0.01)
    assert ctx.state.final is ctx.records[-1] and ctx.state.final.value == pytest.approx(0.77)
    # priced at its own steps only: 3910 examples, not the 8000 of an 800-step run from scratch
    assert ctx.estimate(cont.point).examples == 3910


@pytest.mark.parametrize("continued, picked", [(0.04, False), (0.064, False), (0.066, True)])
def test_a_continuation_replaces_the_early_long_run_only_beyond_noise(continued, picked):
    # the early long run scores 0.745; the noise is protocol 6's band over the val SE 0.01, 2 x 0.01 = 0.02 (no
    # seed runs): a continuation at 0.764 (+0.019) is a tie and the early run stays the pick, at 0.766 (+0.021) it
    # replaces it
    ctx, runner = make_ctx(_grows_world(0.05, continued=continued), budget="16000ex")
    run_protocol(ctx, LONG12_START, CONTINUE, plan=PLAN)
    assert _longs(runner) == [("early-long", 5e-4, 409), ("final-train", 2.5e-4, 391)]
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    if picked:
        assert d["code"] == "final-train-continued" and ctx.state.final.spec.phase == "final-train"
    else:
        assert d["code"] == "final-train-continued-no-gain"
        assert ctx.state.final.point["train.max_steps"] == 409 and ctx.state.final.spec.phase == "early-long"
        assert any("<= noise 0.020" in e and "not told apart from none" in e for e in d["evidence"])


class _StepCharged(World):
    """A world whose trials cost 10 examples a step (what the protocol's estimate prices them at)."""

    def result(self, p: dict) -> TrialResult:
        from dataclasses import replace

        return replace(super().result(p), examples=10 * int(p.get("train.max_steps") or 100))


@pytest.mark.parametrize("budget, more", [("5499ex", None), ("5500ex", 50)])
def test_a_continuation_needs_a_quarter_of_the_run_in_more_steps(budget, more):
    # the grid (3000) and the shortest long run (200 steps, 2000: the cap cannot hold it) leave 499 / 500: a
    # quarter of 200 steps is 50 (500 examples); below it the final training reuses the long run
    world = _grows_world(0.05)
    world.__class__ = _StepCharged
    ctx, runner = make_ctx(world, budget=budget)
    run_protocol(ctx, LONG12_START, CONTINUE, plan=PLAN)
    assert _longs(runner)[0] == ("early-long", 5e-4, 200)
    if more is None:
        assert len(_longs(runner)) == 1 and codes(ctx)[-1] == "final-train-reused"
    else:
        assert _longs(runner)[1] == ("final-train", 2.5e-4, more) and codes(ctx)[-1] == "final-train-continued"


def test_without_the_cap_the_early_long_run_takes_the_final_length_and_is_not_extended():
    ctx, runner = make_ctx(_grows_world(0.05), budget="16000ex")
    run_protocol(ctx, LONG12_START, ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False,
                                                     early_long_by=None), plan=PLAN)
    # 800 wanted, 13000 left after the grid: uncapped; the end runs the trial's lr at its length (v9's rule)
    assert _longs(runner) == [("early-long", 5e-4, 800), ("final-train", 1e-3, 800)]
    assert codes(ctx)[-1] == "final-train-reused"


def test_an_early_long_run_that_cannot_end_by_half_the_budget_is_the_shortest_long_run():
    # 8000ex: ending by 4000 leaves 1000 after the grid, less than the shortest long run (200 steps, ~2000): the
    # shortest long run is trained (it fits the budget), not the longest that fits
    ctx, runner = make_ctx(_grows_world(0.05), budget="8000ex")
    run_protocol(ctx, LONG12_START, ProtocolSettings(full_probe=False, lr_probe=False, seeds=1, pair=False), plan=PLAN)
    assert _longs(runner)[0] == ("early-long", 5e-4, 200)
    assert "the shortest long run (it cannot end by 50% of the budget)" in runner.calls[3].purpose
    assert "early-long-trained" in codes(ctx)


def test_the_deadline_is_kept_back_in_the_budgets_own_unit():
    from loratune.search.protocol.long import deadline_hold
    ctx, _ = make_ctx(_grows_world(0.05), budget="16000ex")
    assert deadline_hold(ctx, 0.5) == Cost(examples=8000) and deadline_hold(ctx, None) == Cost()
    ctx.meter = Meter(Budget.parse("10m"), reserve_s=60)  # left is net of the finishing reserve already
    assert deadline_hold(ctx, 0.5) == Cost(wall_s=240.0)
    ctx.meter = Meter(Budget.parse("20trials"))  # a long run is one trial whatever its length: no cap
    assert deadline_hold(ctx, 0.5) == Cost()
    with pytest.raises(ValueError, match="early_long_by 1.5 is a share of the budget"):
        ProtocolSettings(early_long_by=1.5)


def test_the_runner_keeps_a_run_whose_record_was_final_when_the_signal_took_effect(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    import loratune.tasks as tasks
    from loratune.config import load_config
    from loratune.search.runner import FinishedThenInterrupted, TrainingRunner
    from loratune.search.trial import TrialSpec

    def train(cfg, dataset, store, progress=False, callback=None):  # what train.train does with Ctrl-C held off
        d = Path(cfg.train.output_dir)
        d.mkdir(parents=True, exist_ok=True)
        point = {"step": 10, "val/loss": 0.5, "val/macro_f1": 0.8, "train/loss": 0.4}
        (d / "history.jsonl").write_text(json.dumps({"step": 0, "val/loss": 1.4, "val/macro_f1": 0.2}) + "\n"
                                         + json.dumps(point) + "\n")
        (d / "run.json").write_text(json.dumps({"status": status, "steps_done": 10, "steps_planned": 10,
                                                "best": point, "final": point, "examples_seen": 80}))
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks, "recipe", lambda cfg, what: train)
    runner = TrainingRunner(load_config(None, []), None)
    spec = TrialSpec("start", "phase1-lr-grid", {})
    for status, raised in (("completed", FinishedThenInterrupted), ("interrupted", KeyboardInterrupt)):
        with pytest.raises(KeyboardInterrupt) as exc:
            runner.run(spec, tmp_path / status)
        assert type(exc.value) is raised
        if raised is FinishedThenInterrupted:
            assert exc.value.result.status == "completed" and type(exc.value.signal) is KeyboardInterrupt


def _write_finished_run(d):
    """The record of a trial that finished: step 10 scored 0.8 (step 0: 0.2), status completed."""
    import json

    d.mkdir(parents=True, exist_ok=True)
    point = {"step": 10, "val/loss": 0.5, "val/macro_f1": 0.8, "train/loss": 0.4}
    (d / "history.jsonl").write_text(json.dumps({"step": 0, "val/loss": 1.4, "val/macro_f1": 0.2}) + "\n"
                                     + json.dumps(point) + "\n")
    (d / "run.json").write_text(json.dumps({"status": "completed", "steps_done": 10, "steps_planned": 10,
                                            "best": point, "final": point, "examples_seen": 80}))


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("moment", ["loratune.diagnose.diagnose", "loratune.store.RunStore.read_history",
                                    "loratune.search.runner.curve_of", "loratune.search.runner.result_from"])
def test_a_signal_after_training_returned_keeps_the_finished_trial(moment, signum, tmp_path, monkeypatch):
    """A Ctrl-C / SIGTERM landing after train() returned a completed record, while the runner diagnosed it and built
    its result, went up as a plain KeyboardInterrupt: tune failed the trial ("interrupted by the user", val shown
    '-' over a run.json that says completed) and --resume trained the same point again (864 examples for 608)."""
    import importlib
    import signal
    from pathlib import Path

    import loratune.tasks as tasks
    from loratune import signals
    from loratune.config import load_config
    from loratune.search.runner import FinishedThenInterrupted, TrainingRunner
    from loratune.search.trial import TrialSpec

    def train(cfg, dataset, store, progress=False, callback=None):  # a run that finished: its record final
        _write_finished_run(Path(cfg.train.output_dir))

    sig = getattr(signal, signum)
    path, name = moment.rsplit(".", 1)
    owner = (importlib.import_module(path) if not path.endswith("RunStore")
             else importlib.import_module(path.rsplit(".", 1)[0]).RunStore)
    original = getattr(owner, name)
    landed = []

    def lands_then_goes_on(*a, **k):  # the signal arrives here: the handler installed now is what it runs
        if not landed:
            landed.append(name)
            signal.getsignal(sig)(sig, None)
        return original(*a, **k)

    monkeypatch.setattr(tasks, "recipe", lambda cfg, what: train)
    monkeypatch.setattr(owner, name, lands_then_goes_on)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with signals.sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt) as exc:
            TrainingRunner(load_config(None, []), None).run(TrialSpec("start", "phase1-lr-grid", {}), tmp_path / "t")
    finally:
        signal.signal(signal.SIGINT, old)
    assert landed == [name]
    assert type(exc.value) is FinishedThenInterrupted  # the trial is kept as finished, then the signal ends tune
    assert type(exc.value.signal) is (signals.Terminated if signum == "SIGTERM" else KeyboardInterrupt)
    res = exc.value.result
    assert (res.status, res.value, res.steps_done) == ("completed", 0.8, 10)
    assert res.curve == ((0, 0.2), (10, 0.8))


def test_a_second_signal_while_the_result_is_built_keeps_the_finished_trial(tmp_path, monkeypatch):
    """The first Ctrl-C came out of train() (held while it wrote its final record), a second landed while the result
    was built: `interrupted or take_held()` skipped taking the second, which the shield's end raised as a plain
    KeyboardInterrupt, and tune failed the finished trial (run.json 'completed', study 'interrupted')."""
    import json
    import signal
    from pathlib import Path

    import loratune.diagnose as diagnose_mod
    import loratune.tasks as tasks
    from loratune.config import load_config
    from loratune.search.runner import FinishedThenInterrupted, TrainingRunner
    from loratune.search.trial import TrialSpec

    def train(cfg, dataset, store, progress=False, callback=None):  # finished, then the first Ctrl-C comes out
        _write_finished_run(Path(cfg.train.output_dir))
        raise KeyboardInterrupt

    original = diagnose_mod.diagnose

    def second_lands(*a, **k):
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        return original(*a, **k)

    monkeypatch.setattr(tasks, "recipe", lambda cfg, what: train)
    monkeypatch.setattr(diagnose_mod, "diagnose", second_lands)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt) as exc:
            TrainingRunner(load_config(None, []), None).run(TrialSpec("start", "phase1-lr-grid", {}), tmp_path / "t")
    finally:
        signal.signal(signal.SIGINT, old)
    assert type(exc.value) is FinishedThenInterrupted
    assert (exc.value.result.status, exc.value.result.value) == ("completed", 0.8)


def _interrupted_study(path):
    """A protocol study stopped at its third trial (decisions in `path`): its store and its decision codes."""
    first = MemoryStore(decisions_path=path)
    ctx, _ = make_ctx(lr_binds(), store=first, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    return first, codes(ctx)


def _resumed_ctx(path, first, interrupt_at=None):
    """A resumed session over `first`'s trials and trail, its study-resumed decision pending (as tune records it)."""
    store = MemoryStore(decisions_path=path)
    store._records = list(first._records)
    ctx, runner = make_ctx(lr_binds(), store=store, interrupt_at=interrupt_at)
    ctx.decide_after_replay("resume", "resume", "resumed: 1 trial lost", "trained again", ["trial #2: 80 examples"],
                            trials=[2], code="study-resumed")
    return ctx, runner


def test_a_resume_decision_goes_where_the_replay_ends_and_later_replays_step_over_it(tmp_path):
    """The trail says a study was resumed without breaking the replay: the decision lands after the decisions the
    earlier session took (not superseding them), and a second resume replays past it."""
    path = tmp_path / "decisions.jsonl"
    first, before = _interrupted_study(path)

    def resume():
        c, _ = _resumed_ctx(path, first)
        run_protocol(c, START, ProtocolSettings(full_probe=False))
        first._records = list(c.store._records)
        return c

    second = resume()
    assert codes(second)[:len(before)] == before and codes(second)[len(before)] == "study-resumed"
    assert codes(second).count("study-resumed") == 1 and len(codes(second)) > len(before) + 1
    third = resume()  # every decision a replay: the resume decision is the study's last word
    third.flush_pending()
    assert codes(third) == codes(second) + ["study-resumed"]
    assert [d["seq"] for d in third.decisions] == list(range(len(third.decisions)))
    assert not (tmp_path / "decisions.superseded.jsonl").exists()


def test_a_resumed_session_killed_in_its_first_own_trial_keeps_its_resume_decision(tmp_path):
    """The resume decision waited for a later decision that differed from the old trail: a session stopped during
    its first new trial (every decision before it a replay) left none, and the next resume's came late."""
    path = tmp_path / "decisions.jsonl"
    first, before = _interrupted_study(path)
    again, runner = _resumed_ctx(path, first, interrupt_at=1)  # stopped in its first trial of its own
    with pytest.raises(KeyboardInterrupt):
        run_protocol(again, START, ProtocolSettings(full_probe=False))
    assert not runner.calls  # no trial of its own finished
    assert codes(again) == before + ["study-resumed"]
    assert json.loads(path.read_text().splitlines()[-1])["code"] == "study-resumed"  # on disk, before the trial


class PruningRunner(ScriptedRunner):
    """Prunes the trials `prunes(spec)` names whenever their Watch may prune: half their examples, the value so far."""

    def __init__(self, world, prunes):
        super().__init__(world)
        self.prunes = prunes

    def run(self, spec, run_dir, watch=None):
        import dataclasses

        res = super().run(spec, run_dir, watch)
        if watch is not None and watch.prune and self.prunes(spec):
            return dataclasses.replace(res, status="pruned", examples=res.examples // 2, steps_done=50,
                                       reason="pruned: scripted", **self.cut(res))
        return res

    def cut(self, res) -> dict:
        """What a pruned result keeps of the full one besides its examples and steps (here: its value)."""
        return {}


def test_the_pair_trains_a_pruned_lr_arm_again_at_full_length():
    """The pair's lr arm (lr 2e-3) is the lr grid's 2x trial, pruned at half length: compared as it was with the
    full-length rank arm, the lr delta read a half-trained run."""
    world = World(lambda p: 0.5 + 0.08 * math.log2(p[R] / 8) + {0.5e-3: 0.0, 1e-3: 0.02, 2e-3: 0.01}.get(p[LR], 0.0),
                  lambda p: "underfit-capacity" if p[R] < 32 else "healthy")
    ctx, _ = make_ctx(world)
    ctx.runner = runner = PruningRunner(world, lambda s: s.phase == "phase1-lr-grid" and s.point[LR] == 2e-3)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, lr_probe=False))
    pruned = next(r for r in ctx.records if r.result.status == "pruned")
    assert pruned.spec.phase == "phase1-lr-grid" and pruned.point[LR] == 2e-3
    pair = next(d for d in ctx.decisions if d["kind"] == "pair")
    assert pair["code"] == "pair-capacity"
    lr_arm = next(r for r in ctx.records if r.number in pair["trials"] and r.point[LR] == 2e-3)
    assert lr_arm.result.status == "completed" and lr_arm.result.examples == 1000 and lr_arm.number != pruned.number
    assert ("pair", "lr2e-3") in names(runner)  # trained again, unpruned
    assert all(r.result.examples == 1000 for r in ctx.records if r.number in pair["trials"])


def test_a_pruned_lower_lr_is_no_seed_unstable_remedy():
    """Seed-unstable at lr 4e-3: the lr /2 sibling (the grid's 2x trial) was pruned at half length, so it is no
    evidence that the lower lr loses nothing on average: the lr is kept (the pruned trial was made the incumbent)."""
    world = lr_binds()
    world.SEED_OFFSET = {42: 0.0, 43: -0.15, 44: -0.10}
    ctx, _ = make_ctx(world)
    ctx.runner = PruningRunner(world, lambda s: s.phase == "phase1-lr-grid" and s.point[LR] == 2e-3)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, pair=False))  # the pair would train lr 2e-3 whole
    assert any(r.result.status == "pruned" and r.point[LR] == 2e-3 for r in ctx.records)
    d = next(x for x in ctx.decisions if x["kind"] == "noise")
    assert d["code"] == "seed-unstable-lr-kept"
    assert ctx.state["final"].result.status != "pruned" and ctx.state["final"].point[LR] == 4e-3


def test_the_pair_trains_a_pruned_incumbent_again_before_it_compares():
    """The grid's best was pruned at half length: the pair's deltas are from its full-length run of the same point."""
    world = lr_binds()
    ctx, _ = make_ctx(world)
    ctx.runner = runner = PruningRunner(world, lambda s: s.phase == "phase1-lr-grid" and s.point[LR] == 2e-3)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1))
    assert names(runner)[2:5] == [("pair", "lr2e-3"), ("pair", "lr4e-3"), ("pair", "lr2e-3-r16-a32")]
    pair = next(d for d in ctx.decisions if d["kind"] == "pair")
    assert all(r.result.full_length for r in ctx.records if r.number in pair["trials"])
    assert ctx.state["pair"]["lr_delta"] == pytest.approx(0.08)


class HalfwayWorld(World):
    """Every trial's curve is evaluated at steps 50 and 100 (0.8x its value at 50): a trial pruned at 50 has a
    partial score the others' curves can be read at."""

    def result(self, p):
        import dataclasses

        res = super().result(p)
        return dataclasses.replace(res, curve=((50, round(0.8 * res.value, 6)), (100, res.value)))


class HalfwayPruner(PruningRunner):
    """Prunes the trials `prunes(spec)` names at step 50 whenever their Watch may prune: the curve up to there."""

    def cut(self, res) -> dict:
        return {"value": res.curve[0][1], "curve": res.curve[:1]}


def test_pruned_trials_are_compared_at_their_own_step_and_every_stage_agrees():
    """lr 5e-4 (the grid's 0.5x) and the rank sweep's r=32 are pruned at step 50 of 100. Their partial scores were
    set against full-length ones: phase 2 called lr 5e-4 "already measured" at 0.544 against 0.700 while seeds said
    it "was not measured", and the rank step read a gain of -0.14 (0.560 vs 0.700) without saying r=32 was pruned.
    Now each is compared with the incumbent's score at step 50 (0.560), says it was pruned, and both stages agree."""
    world = HalfwayWorld(lambda p: 0.70 - 0.02 * abs(math.log2(p[LR] / 1e-3)) + 0.0 * p[R], lambda p: "healthy")
    world.SEED_OFFSET = {42: 0.0, 43: -0.15, 44: -0.10}  # seed-unstable: the lr /2 remedy is looked at
    ctx, _ = make_ctx(world)
    ctx.runner = runner = HalfwayPruner(world, lambda s: (s.phase == "phase1-lr-grid" and s.point[LR] == 5e-4)
                                        or s.phase == "rank-sweep")
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, pair=False, target_sweep=(), arms=()))
    lr_half = next(r for r in ctx.records if r.point[LR] == 5e-4)
    inc = next(r for r in ctx.records if r.number == 0)
    assert lr_half.result.status == "pruned" and lr_half.value == pytest.approx(0.544)
    assert ("phase2", "lr5e-4") not in names(runner)  # lost at its step: not trained again
    note = (f"{lr_half.label} was pruned at step 50 of 100 (scripted): 0.544 there vs 0.560 for {inc.label} (its "
            "best up to that step)")
    lr = next(d for d in ctx.decisions if d["phase"] == "phase2" and d["kind"] == "lr")
    assert lr["code"] == "lr-already-measured" and lr["data"]["at_step"] == 50
    assert lr["data"]["value"] == pytest.approx(0.544) and lr["data"]["ref"] == pytest.approx(0.56)
    assert f"lr 0.0005 was measured only until it was pruned, and lost at equal steps: {note}" in lr["evidence"][1]
    seeds = next(d for d in ctx.decisions if d["kind"] == "noise")
    assert seeds["code"] == "seed-unstable-lr-kept"
    assert f"lr /2 = 0.0005 was measured only until it was pruned ({note})" in " ".join(seeds["evidence"])
    assert not any("was not measured" in e for e in seeds["evidence"])
    rank = next(d for d in ctx.decisions if d["code"] == "rank-plateau")
    top = next(r for r in ctx.records if r.spec.phase == "rank-sweep")
    assert top.result.status == "pruned"
    point = ctx.state["rank_sweep"]["points"][1]
    assert point["gain"] == pytest.approx(0.0, abs=1e-9) and point["pruned_step"] == 50  # 0.56 vs 0.56, not -0.16
    assert point["compared_with"] == pytest.approx(0.56)
    table = ctx.state["lora_vs_full"]["table"]  # the partial score listed beside full-length ones says what it is
    assert [row["label"] for row in table] == [f"LoRA r=8 (best at the probe, #{table[0]['trial']})",
                                                "LoRA r=32 (highest rank tried, pruned at step 50)"]
    assert f"{top.label} was pruned at step 50 of 100 (scripted): 0.560 there vs 0.560 for {inc.label}" in \
        rank["evidence"][0] and "gain at equal steps 0.0 <= threshold" in rank["evidence"][0]


def test_a_pruned_rank_ahead_at_its_step_is_trained_again_whole_before_it_counts_as_a_gain():
    """r=32 is pruned at step 50 but is ahead there beyond noise (0.64 vs 0.56): a partial score is no gain, so the
    rank is trained again whole (unpruned) and the sweep reads its full-length gain (0.80 vs 0.70)."""
    world = HalfwayWorld(lambda p: 0.70 + (0.10 if p[R] >= 32 else 0.0), lambda p: "healthy")
    ctx, _ = make_ctx(world)
    ctx.runner = runner = HalfwayPruner(world, lambda s: s.phase == "rank-sweep")
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, pair=False, seeds=1, target_sweep=(), arms=()))
    sweep = [r for r in ctx.records if r.spec.phase == "rank-sweep" and r.point[R] == 32]
    assert [r.result.status for r in sweep] == ["pruned", "completed"]
    assert [n for n in names(runner) if n[0] == "rank-sweep"] == [("rank-sweep", "r32-rs-a11.3")] * 2
    gain = next(d for d in ctx.decisions if d["code"] == "rank-gain")
    assert gain["trials"] == [0, sweep[1].number] and "0.700 -> 0.800" in gain["evidence"][0]
    point = ctx.state["rank_sweep"]["points"][1]
    assert point["trial"] == sweep[1].number and point["gain"] == pytest.approx(0.10) and "pruned_step" not in point


def test_a_pruned_target_sweep_arm_is_compared_at_its_step_and_not_kept():
    """The target sweep's arms are pruned at step 50: their gain is read at that step (0.0, not -0.14 against the
    incumbent's full-length 0.700), the trail says they were pruned, and no partial score becomes the incumbent."""
    world = HalfwayWorld(lambda p: 0.70, lambda p: "healthy")
    ctx, _ = make_ctx(world)
    ctx.runner = HalfwayPruner(world, lambda s: s.phase == "target-sweep")
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, pair=False, seeds=1, arms=()))
    d = next(x for x in ctx.decisions if x["kind"] == "targets")
    assert d["code"] == "targets-no-gain" and d["data"]["gain"] == pytest.approx(0.0, abs=1e-9)
    assert "was pruned at step 50 of 100 (scripted): 0.560 there vs 0.560 for" in d["evidence"][0]
    assert "gain at equal steps 0.0 vs threshold" in d["evidence"][0]
    assert ctx.state.incumbent.result.status == "completed"


def test_a_trials_evidence_says_which_metric_its_diagnosis_read_when_it_is_not_the_objective():
    # a causal-lm study on a prompt-set score: the trial's diagnosis read token accuracy as "the val metric" ("the
    # best val point came at 100% of the run") beside the objective's own curve, which peaked at 25%
    from types import SimpleNamespace

    from loratune.search.protocol import evidence_of
    from loratune.search.trial import TrialRecord, TrialResult, TrialSpec

    def rec(read):
        res = TrialResult(status="completed", value=0.29, examples=64, wall_s=1.0, verdict="undertrained",
                          features={"val_metric": read}, objective="val/prompt_novel_chrf")
        return TrialRecord(1, TrialSpec("lr0.04", "lr-grid", {}), "trials/01", res)

    ctx = SimpleNamespace(show=lambda v: f"{v:.3f}")
    assert "diagnosis (its val metric: val/token_accuracy, not the objective): undertrained" in evidence_of(
        ctx, rec("val/token_accuracy"))[0]
    assert evidence_of(ctx, rec("val/prompt_novel_chrf"))[0].endswith("diagnosis: undertrained")
    assert evidence_of(ctx, rec(None))[0].endswith("diagnosis: undertrained")  # records of older versions


@pytest.mark.parametrize("offsets,code,shown", [
    ({42: 0.0, 43: -0.15, 44: -0.10}, "seed-unstable-lr-lowered", "scored 2.300 <= the seed mean 2.303"),
    ({42: 0.0, 43: -0.06, 44: 0.05}, "seed-unstable-lr-kept", "scored 2.300 > the seed mean 2.223")])
def test_the_seed_decision_on_a_loss_states_the_comparison_its_shown_losses_make(offsets, code, shown):
    """A causal-lm study (objective val loss, scores its negated values): the decision compared scores right, but its
    evidence printed the scores' comparator beside the losses ('2.300 < the seed mean 2.223'); now the shown one."""
    world = lr_binds()
    f1 = world.f1
    world.f1 = lambda p: f1(p) - 3.0  # a loss of 3 - F1: lr 4e-3 at 2.22, lr 2e-3 at 2.30
    world.SEED_OFFSET = offsets
    ctx, runner = make_ctx(world)
    runner.objective = "val/loss"
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    d = next(x for x in ctx.decisions if x["kind"] == "noise")
    assert d["code"] == code
    assert any(shown in e for e in d["evidence"]), d["evidence"]


# ---------------------------------------------------------------------------------------------
# step 0 (the untrained model) is the bar, never a trial's score: one definition (common.FIRST_TRAINED_STEP)


def _curve_rec(curve, steps_done=12, status="completed"):
    from loratune.search.trial import TrialRecord, TrialSpec

    res = TrialResult(status=status, value=max(v for s, v in curve if s > 0), examples=96, wall_s=1.0,
                      steps_planned=12, steps_done=steps_done, curve=curve)
    return TrialRecord(2, TrialSpec("lr5e-4", "phase1-lr-grid", {LR: 5e-4}), "", res)


def test_a_score_at_a_step_reads_trained_points_not_the_untrained_models():
    """S1: "0.100 there vs 0.159 for #0 start at the same step": 0.159 was #0's step-0 score, 0.1475 its step 4."""
    from loratune.search.protocol.common import score_at, untrained_score

    ref = _curve_rec(((0, 0.159), (4, 0.1475), (8, 0.30), (12, 0.40)))
    assert score_at(ref, 4) == 0.1475
    assert score_at(ref, 8) == 0.30
    assert score_at(ref, 0) is None  # no trained point by then
    assert untrained_score(ref) == 0.159


def test_a_trial_its_early_stopping_ended_is_never_still_improving():
    """P1: #2 scored 0.1588 untrained, then 0.1456, 0.1332, 0.1571 and early stopping ended it at step 6 of 12; the
    trail called it "still improving" (best trained point at 100%) and trained it long on that claim."""
    from loratune.search.protocol.long import longer_may_help, still_improving

    rec = _curve_rec(((0, 0.1588), (2, 0.1456), (4, 0.1332), (6, 0.1571)), steps_done=6)
    assert still_improving(rec) == (False, 1.0)
    ctx, _ = make_ctx(lr_binds())
    longer, frac, why = longer_may_help(ctx, rec)
    assert (longer, frac) == (False, 1.0) and "step 6 of 12" in why
    # the same curve trained to its planned length is still improving
    assert still_improving(_curve_rec(((0, 0.1588), (2, 0.1456), (4, 0.1332), (12, 0.1571)))) == (True, 1.0)


def test_the_lr_grid_says_when_no_lr_beat_the_untrained_model():
    import dataclasses

    world = lr_binds()
    plain = world.result
    world.result = lambda p: dataclasses.replace(plain(p), curve=((0, 0.95),) + plain(p).curve[1:])  # untrained 0.95
    ctx, _ = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings())
    got = [d for d in ctx.decisions if d.get("code") == "lr-grid-no-gain-over-untrained"]
    assert len(got) == 1 and got[0]["data"]["untrained"] == 0.95
    assert all(g is not None and g < 0 for g in got[0]["data"]["gains"].values())
    # a grid that beats the untrained model (0.0 at step 0 in the scripted world) records no such decision
    ctx, _ = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings())
    assert not [d for d in ctx.decisions if d.get("code") == "lr-grid-no-gain-over-untrained"]


def test_pruning_compares_trained_points_at_the_same_step():
    from loratune.search.prune import behind_best, best_until

    assert best_until(((0, 0.9), (4, 0.2), (8, 0.3)), 4) == 0.2
    assert best_until(((0, 0.9),), 4) is None
    # the reference's untrained 0.9 is no score to trail: its trained 0.2 by step 6 is what the trial is held to
    assert behind_best(((0, 0.9), (6, 0.15)), 12, [("#0", ((0, 0.9), (6, 0.2), (12, 0.5)))], 0.01) is None


def test_a_budget_skip_states_its_trials_cost_and_the_reserve_and_the_revisit_does_not_repeat_it():
    """P1: "skip DoRA at 1x lr / estimated trial cost 1 trial, 1 trial left of 14 trials" (the start point's cost,
    the reserve that refused it unstated); then "revisit ... arms" ran the stage again only to skip DoRA again."""
    from loratune.search.protocol import reserve
    from loratune.search.protocol.common import no_budget
    from loratune.search.protocol.run import revisit_skipped
    from loratune.search.protocol.table import STAGE_TABLE

    ctx, runner = make_ctx(lr_binds(), budget="3trials")
    ctx.state.start, ctx.state.stages = START, STAGE_TABLE
    ctx.state.incumbent = _curve_rec(((0, 0.1), (12, 0.5)))
    ctx.meter.charge(Cost(20.0, 2000, 2), "two trials")
    s = ProtocolSettings(arms=("dora",))
    held = reserve(ctx, "arms", s)
    assert held.trials == 1  # the full-fine-tuning probe outranks the arms
    dora = {**START.point, "adapter.use_dora": True}
    no_budget(ctx, "arms", "DoRA at 1x lr", held, dora)
    d = ctx.decisions[-1]
    assert d["code"] == "budget-skip" and d["move"] == "skip DoRA at 1x lr"
    assert d["evidence"] == ["estimated cost of this trial 1 trial, 1 trial left of 3 trials; held back for "
                             "higher-priority stages: ~1 trial"]
    revisit_skipped(ctx, s)  # the same trial under the same reserve: still not affordable, not run again
    assert runner.calls == [] and not [x for x in ctx.decisions if x.get("code") == "revisit"]
    no_budget(ctx, "seeds", "seed 43", Cost(), START.point)
    assert ctx.decisions[-1]["evidence"][0].endswith("; nothing held back for other stages")


def test_a_long_run_that_lost_to_its_trial_is_not_called_reused():
    """Every row the same text: the early long run scored no higher than its trial, so the trial stayed the pick;
    the final training then said "the long run is reused -> keep #0 start", a long run that was not the pick."""
    def f1(p):
        return 0.70 - (0.10 if int(p.get("train.max_steps") or 0) >= 200 else 0.0) - 0.01 * abs(math.log2(p[LR] / 1e-3))

    start = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=6.0)
    world = World(f1, lambda p: "healthy", features={"still_improving": 1.0, "best_step_fraction": 1.0})
    ctx, runner = make_ctx(world)
    run_protocol(ctx, start, ProtocolSettings(full_probe=False, lr_probe=False),
                 plan={"max_steps": 100, "epochs": 1.5, "reason": "scripted"})
    assert "early-long-no-gain" in codes(ctx)
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    final = ctx.state["final"]
    assert not final.point.get("train.max_steps")  # the pick is a trial
    assert d["code"] == "final-train-no-gain" and d["move"] == f"keep {final.label}"
    assert "final-train-reused" not in codes(ctx)


def test_the_capacity_ceiling_reads_the_users_start_rank():
    """S1 (user r=4, hidden 32): "at r = hidden/6 = 5.33 ... largest power of 2 at or below it: 4; never below the
    start rank" recorded ceiling 8, the assessment's own start rank; the user's r=4 is the start rank."""
    a = {"recommendation": {
        "overrides": {"adapter.r": 8, "adapter.lora_alpha": 16.0, "train.learning_rate": 1e-3},
        "choices": [{"key": "adapter.r", "value": 8, "rule": "start-rank-by-data", "reason": "50 rows"}],
        "capacity_ceiling": {"key": "adapter.r", "value": 8, "rule": "ceiling-rank", "reason": "hidden/6"},
        "lr_grid": [1e-3]}, "facts": {"train_rows": 50, "model_hidden": 32}}
    start = start_from_assessment(a, {"adapter.r": 4})
    assert start.point[R] == 4 and start.ceiling_r == 4
    ceiling = next(c for c in start.choices if c["key"] == "ceiling.r")
    assert ceiling["value"] == 4 and "the user's start rank r=4: 4" in ceiling["reason"]
    assert start_from_assessment(a).ceiling_r == 8  # the assessment's own start rank
    assert start_from_assessment(a, {"adapter.r": 16}).ceiling_r == 16  # never below the start rank


def test_a_resume_whose_budget_ran_out_reuses_the_finished_long_run_at_another_lr(tmp_path, monkeypatch):
    """A resumed study whose other stages took otherwise spends its budget before the final training (tune_defects
    1: a larger budget, a full-fine-tuning probe the first session skipped). The long run at the other lr was
    trained by the first session: it is reused for free, not refused as "does not fit", so the resume keeps the
    first session's better pick instead of falling back to a worse one."""
    from loratune.search.protocol import finish as finish_mod

    start = Start(point=START.point, ceiling_r=32, lr_centre=1e-3, epochs=6.0)
    settings = ProtocolSettings(full_probe=False, lr_probe=False, long_lr_factor=1.0)
    plan = {"max_steps": 100, "epochs": 1.5, "reason": "scripted"}
    store = MemoryStore(tmp_path, decisions_path=tmp_path / "decisions.jsonl")
    ctx1, r1 = make_ctx(_long_peak_world(5e-4), store=store)
    run_protocol(ctx1, start, settings, plan=plan)
    first = ctx1.state.final
    assert first.point[LR] == 5e-4 and first.value == pytest.approx(0.73)

    def spent_elsewhere(ctx, s, long, final):  # the resume's other stages left nothing for a new run
        ctx.meter.charge(Cost(0.0, 0, int(ctx.meter.left) + 1), "the resumed session's other stages")
        return False

    monkeypatch.setattr(finish_mod, "continue_long_run", spent_elsewhere)
    ctx2, r2 = make_ctx(_long_peak_world(5e-4), store=store)
    ctx2.earlier = {r.number for r in store.records()}  # as tune marks a resumed study's earlier trials
    run_protocol(ctx2, start, settings, plan=plan)
    assert r2.calls == []  # nothing trained again
    d = next(x for x in ctx2.decisions if x["kind"] == "final-train")
    assert d["code"] == "final-train-helps" and not any("does not fit" in e for e in d["evidence"])
    assert ctx2.state.final.number == first.number and ctx2.state.final.value == pytest.approx(0.73)


def test_a_long_run_this_session_trained_is_weighed_for_free_not_called_unaffordable():
    """The final stage said "its run at lr 0.002 does not fit: 0 trials left" of a long run the session had trained
    (#2), and left it out of the comparison: had it scored higher, the study picked the worse run. A finished point
    costs nothing (SearchContext.to_train), so both long runs are weighed and nothing more is trained."""
    ctx, runner = make_ctx(lr_binds(), budget="7trials")
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False, long_lr_factor=1.0), plan=PLAN)
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    assert not any("does not fit" in e for e in d["evidence"])
    assert sorted((x["lr"], x["trial"]) for x in d["data"]["lrs"]) == [(0.002, 2), (0.004, 4)]
    assert len(runner.calls) == 7 and ctx.state.final.number == 4  # the better of the two (0.780 over 0.700)


def test_lr_probe_and_grid_near_the_configs_lr_limit_never_ask_past_it():
    """Started at lr 0.6 with the config's lr limit 1.0, the metric best at 0.6: the probe's x4 step (2.4) and the
    grid's 2x trial (1.2) stop at the limit and say so ('clamped'); nothing asks for an lr past it."""
    from dataclasses import replace as dc_replace

    from loratune.config import key_table

    limit = key_table()[LR].metadata["max"]
    centre = 0.6 * limit
    world = World(lambda p: 0.7 - 0.1 * abs(math.log2(p[LR] / centre)),
                  lambda p: "lr-too-small" if p[LR] <= centre else "healthy")
    ctx, runner = make_ctx(world)
    start = dc_replace(START, point={**START.point, LR: centre}, lr_centre=centre)
    run_protocol(ctx, start, ProtocolSettings(full_probe=False), plan={"max_steps": 100, "reason": "scripted"})
    assert max(s.point[LR] for s in runner.calls) == limit
    probes = [s for s in runner.calls if s.phase == "lr-probe"]
    assert [s.point[LR] for s in probes] == [centre, limit]  # x4 is 2.4: the limit, and no probe past it
    assert "clamped" in probes[1].purpose and "clamped" not in probes[0].purpose
    grid = [s for s in runner.calls if s.phase == "phase1-lr-grid"]
    assert [s.point[LR] for s in grid][:2] == [centre, limit]
    assert "clamped to the config's lr limit" in grid[1].purpose and "clamped" not in grid[0].purpose


def test_a_probe_and_grid_stopped_by_the_configs_lr_limit_say_so_in_the_trail():
    """The metric still rising at the config's lr limit: the probe's next step up would clamp to the limit it ran,
    and the grid's 2x past it would rerun it; both are recorded (codes), never dropped silently."""
    from dataclasses import replace as dc_replace

    from loratune.config import key_table

    limit = key_table()[LR].metadata["max"]
    world = World(lambda p: 0.5 + 0.1 * math.log2(p[LR] / limit + 1), lambda p: "lr-too-small")
    ctx, runner = make_ctx(world)
    start = dc_replace(START, point={**START.point, LR: 0.3 * limit}, lr_centre=0.3 * limit)
    run_protocol(ctx, start, ProtocolSettings(full_probe=False), plan={"max_steps": 100, "reason": "scripted"})
    assert max(s.point[LR] for s in runner.calls) == limit
    probes = [s.point[LR] for s in runner.calls if s.phase == "lr-probe"]
    grid = [s.point[LR] for s in runner.calls if s.phase == "phase1-lr-grid"]
    assert probes == [0.3 * limit, limit] and grid == [limit, 0.5 * limit]  # no lr run twice
    assert {"lr-probe-at-limit", "lr-grid-skip-at-limit"} <= set(codes(ctx))


def test_a_pair_that_finds_rank_binding_because_r_x2_hurt_steps_capacity_down():
    """protocol 5: the binding knob is the one the metric is sensitive to, either way. r x2 cost 0.10 (5x the noise)
    while lr x2 moved nothing: capacity binds, downwards; the moves were raised anyway (r x2, +ffn, +attn), each
    on the wrong side, and r /2 never tried."""
    def f1(p):
        t = p.get("adapter.target_modules")
        extra = 0.0 if list(t) == ["attn.q", "attn.v", "ffn@top:2"] else -0.05
        return 0.55 - 0.10 * math.log2(p[R] / 8) + 0.001 * math.log2(p[LR] / 1e-3) + extra

    ctx, runner = make_ctx(World(f1, lambda p: "underfit-capacity"))
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1))
    pair = next(d for d in ctx.decisions if d["code"].startswith("pair-"))
    assert pair["code"] == "pair-capacity" and pair["data"]["r_delta"] < 0
    moves = [s for s in runner.calls if s.phase == "phase1-capacity"]
    assert moves and moves[0].point[R] == 4  # r /2 first, never r x2 or +ffn after the pair
    assert all(s.point[R] <= 8 for s in moves)
    assert "capacity-move-kept" in codes(ctx)


def test_start_alpha_follows_the_rank_and_rslora_the_run_trains_with():
    """The assessment's lora_alpha is its start scale (s = 2) at its own rank: a user's r=4 kept alpha 16 (s = 4) and
    rsLoRA on kept it too (s = 16/sqrt(8)). The start alpha is stepsize.alpha_for at the run's rank and rsLoRA
    setting; a lora_alpha the user sets is kept as given."""
    a = {"recommendation": {
        "overrides": {"adapter.r": 8, "adapter.lora_alpha": 16.0, "train.learning_rate": 1e-3},
        "choices": [{"key": "adapter.r", "value": 8, "rule": "start-rank-by-data", "reason": "50 rows"},
                    {"key": "adapter.lora_alpha", "value": 16.0, "rule": "start-scale-2", "reason": "s = 2"}],
        "capacity_ceiling": {"key": "adapter.r", "value": 8, "rule": "ceiling-rank", "reason": "..."},
        "lr_grid": [1e-3]}, "facts": {"train_rows": 50}}
    assert start_from_assessment(a).point["adapter.lora_alpha"] == 16.0  # the assessment's own
    start = start_from_assessment(a, {"adapter.r": 4})
    assert start.point["adapter.lora_alpha"] == 8.0 and scale_of(start.point) == 2.0
    alpha = next(c for c in start.choices if c["key"] == "adapter.lora_alpha")
    assert alpha["value"] == 8.0 and "the user's r=4: lora_alpha=8" in alpha["reason"]
    rs = start_from_assessment(a, {"adapter.use_rslora": True})
    assert rs.point["adapter.lora_alpha"] == pytest.approx(5.66) and scale_of(rs.point) == pytest.approx(2.0, 1e-3)
    assert "with rsLoRA" in next(c for c in rs.choices if c["key"] == "adapter.lora_alpha")["reason"]
    both = start_from_assessment(a, {"adapter.r": 16, "adapter.use_rslora": True})
    assert both.point["adapter.lora_alpha"] == 8.0
    kept = start_from_assessment(a, {"adapter.r": 4, "adapter.lora_alpha": 32.0})
    assert kept.point["adapter.lora_alpha"] == 32.0  # the user's, as given


# ---------------------------------------------------------------------------------------------
# the full-fine-tuning probe of a LoRA+ or DoRA incumbent (hunt 16): plain full fine-tuning, and a failed probe is
# a failure, not a budget skip

def test_full_probe_of_a_loraplus_dora_incumbent_drops_the_lora_variants_and_its_config_is_accepted():
    from loratune.config import LORA_ONLY_KEYS, build_config, replace

    start = Start(point={**START.point, "train.optimizer": "loraplus", "adapter.use_dora": True},
                  ceiling_r=32, lr_centre=1e-3)
    ctx, runner = make_ctx(lr_binds())
    run_protocol(ctx, start, ProtocolSettings())
    fulls = [s for s in runner.calls if s.point.get("adapter.method") == "full"]
    variants = ("train.optimizer", "adapter.use_dora", "train.loraplus_lr_ratio")
    assert fulls and all(not set(s.point) & set(LORA_ONLY_KEYS + variants) for s in fulls)
    assert all("loraplus" not in s.name and "dora" not in s.name for s in fulls)
    # the user's base config set LoRA+ and DoRA (not the point): the probe's config resets them, not refused
    base = build_config({"train.optimizer": "loraplus", "train.loraplus_lr_ratio": 4.0, "adapter.use_dora": True,
                         "adapter.lora_alpha": 32.0})
    cfg = replace(base, **fulls[0].point)
    assert (cfg.adapter.method, cfg.train.optimizer, cfg.adapter.use_dora, cfg.train.loraplus_lr_ratio,
            cfg.adapter.lora_alpha) == ("full", "adamw", False, 16.0, 16.0)
    assert "choose-full" in codes(ctx) or "choose-lora" in codes(ctx)
    assert "budget-skip" not in [d["code"] for d in ctx.decisions if d["phase"] == "lora-vs-full"]


class _FullFails(World):
    def result(self, p):
        if p.get("adapter.method") == "full":
            return TrialResult(status="failed", value=None, examples=0, wall_s=0.0, reason="scripted refusal")
        return super().result(p)


def test_a_failed_full_probe_is_reported_as_failed_not_as_a_budget_skip():
    w = lr_binds()
    ctx, runner = make_ctx(_FullFails(w.f1, w.verdict, w.loss))
    run_protocol(ctx, START, ProtocolSettings())
    phase = [d for d in ctx.decisions if d["phase"] == "lora-vs-full"]
    assert [d["code"] for d in phase][-2:] == ["full-probe-failed", "choose-lora"]
    assert "budget-skip" not in [d["code"] for d in phase]
    failed = next(d for d in phase if d["code"] == "full-probe-failed")
    assert len(failed["evidence"]) == 3 and all("failed (scripted refusal)" in e for e in failed["evidence"])
    gap = next(r for r in ctx.state.lora_vs_full["reasons"] if r["id"] == "performance-gap")
    assert gap["holds"] is None and gap["evidence"] == {"probe": "failed"}
    assert "no full-fine-tuning probe was run" not in ctx.state.lora_vs_full["summary"]
    assert "failed" in ctx.state.lora_vs_full["summary"]


def test_the_lora_vs_full_labels_name_dora_and_loraplus():
    """A DoRA + LoRA+ incumbent was labelled 'LoRA r=8' in the cost table and the decision."""
    start = Start(point={**START.point, "train.optimizer": "loraplus", "adapter.use_dora": True},
                  ceiling_r=32, lr_centre=1e-3)
    ctx, _ = make_ctx(lr_binds())
    run_protocol(ctx, start, ProtocolSettings())
    labels = [row["label"] for row in ctx.state.lora_vs_full["table"]]
    assert labels[0].startswith("DoRA + LoRA+ r=") and "full fine-tuning" in labels
    assert not any(label.startswith("LoRA r=") for label in labels)


def test_a_trial_result_names_the_variant_its_run_config_trained():
    """A base config's DoRA or LoRA+ is in no trial's point: the run's own config names it."""
    from loratune.search.runner import result_from

    def run(adapter, train):
        return {"status": "completed", "best": {"step": 4, "val/macro_f1": 0.5}, "steps_done": 4,
                "config": {"adapter": adapter, "train": train}}

    assert result_from(run({"method": "lora", "use_dora": True}, {"optimizer": "loraplus"}), None, 1.0).method \
        == "DoRA + LoRA+"
    assert result_from(run({"method": "lora", "use_dora": False}, {"optimizer": "loraplus"}), None, 1.0).method \
        == "LoRA+"
    assert result_from(run({"method": "lora", "use_dora": True}, {"optimizer": "adamw"}), None, 1.0).method == "DoRA"
    assert result_from(run({"method": "lora"}, {}), None, 1.0).method == "LoRA"
    assert result_from(run({"method": "full"}, {}), None, 1.0).method == "full fine-tuning"


def _tied_world(task: str) -> World:
    """Every trial scores val macro-F1 0.0 (a generative classifier before any output names a label); the val loss
    falls with the lr: 2e-3 has the lowest."""
    world = World(lambda p: 0.0, lambda p: "healthy", loss=lambda p: {5e-4: 3.5, 1e-3: 2.533, 2e-3: 2.188}.get(p[LR], 2.3))
    scripted = world.result

    def result(p):
        d = scripted(p).to_dict()
        # run.json's task and the kept point's val loss, as runner.result_from reads them
        d.update(task=task, best={**d["best"], "val/loss": world.loss(p)})
        return TrialResult.from_dict(d)

    world.result = result
    return world


@pytest.mark.parametrize("task, lr", [("causal-lm", 2e-3), ("single_label", 1e-3)])
def test_the_lr_grid_breaks_a_tie_on_the_val_loss_where_training_does(task, lr):
    """A generative classifier (causal-lm, label_format=generate): every grid trial tied at val macro-F1 0.0 and the
    study kept the first (#0, val loss 2.533) over the lower val loss (2.188), though training keeps a tie by the
    lower val loss (objectives.keep_order, LOSS_TIE_BREAK_TASKS). The study's best-of now ranks by the same rule; a
    single-label classifier, outside LOSS_TIE_BREAK_TASKS, still keeps the first of ties."""
    ctx, runner = make_ctx(_tied_world(task))
    run_protocol(ctx, START, ProtocolSettings(full_probe=False))
    grid = [r for r in ctx.records if r.spec.phase == "phase1-lr-grid"]
    assert sorted(r.point[LR] for r in grid) == [5e-4, 1e-3, 2e-3] and all(r.value == 0.0 for r in grid)
    d = next(x for x in ctx.decisions if x["code"] == "lr-grid-best")
    assert d["verdict"] == f"best lr {lr:g}", d["verdict"]
    assert ctx.best(grid).point[LR] == lr


# -- phase 2's lr steps judge a measured neighbour by the one rule (common.step_gain) ------------------------------


def _phase2_ctx(world, lrs, inc_lr, runner=None):
    """A context whose records are full-length trials at `lrs` (the lr grid's) and whose incumbent is `inc_lr`'s."""
    from loratune.search.protocol.common import set_incumbent

    ctx, _ = make_ctx(world)
    if runner is not None:
        ctx.runner = runner
    recs = {lr: ctx.run(ctx.spec({**START.point, LR: lr}, "phase1-lr-grid", "grid")) for lr in lrs}
    set_incumbent(ctx, recs[inc_lr])
    return ctx, recs


def test_phase2_steps_onto_a_higher_lr_that_won_beyond_noise_instead_of_calling_the_lr_bracketed():
    """The lr grid's best is 2e-3 (0.700); the pair's lr x2 arm (4e-3) scored 0.730, beyond the 0.02 band, and its
    r x2 arm lost. Phase 2 counted 4e-3 as a lost neighbour because it had been tried and recorded 'lr 0.002
    bracketed ... both neighbours (x2 and /2 steps) score lower' beside its own 'lr 0.004 -> 0.730'. Now a neighbour
    lost only when it is not better beyond noise: 4e-3 becomes the incumbent without training again, then x2 is tried."""
    def f1(p):
        base = {-1: 0.60, 0: 0.65, 1: 0.70, 2: 0.73, 3: 0.70}.get(round(math.log2(p[LR] / 1e-3)), 0.5)
        return base - (0.06 if p[R] > 8 else 0.0)

    ctx, runner = make_ctx(World(f1, lambda p: "lr-too-small" if p[LR] < 4e-3 else "healthy"))
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1))
    pair = next(d for d in ctx.decisions if d["kind"] == "pair")
    assert pair["code"] == "pair-capacity"  # the pair's own reading (r x2 hurt) is not phase 2's
    lr = [d for d in ctx.decisions if d["phase"] == "phase2" and d["kind"] == "lr"]
    assert [d["code"] for d in lr] == ["lr-step-kept", "lr-step-rejected"]
    four = next(r for r in ctx.records if r.point[LR] == 4e-3 and r.point[R] == 8)
    assert lr[0]["verdict"] == "lr 0.004 is better" and lr[0]["move"] == f"incumbent = {four.label}"
    assert lr[0]["evidence"][0].startswith(f"lr 0.004 at this capacity scored better beyond noise ({four.label}: "
                                           "0.700 -> 0.730, gain +0.030, beyond noise 0.020")
    assert (f"lr 0.004 was already measured ({four.label}), not trained again: lr 0.002 -> 0.004: 0.700 -> 0.730, "
            "gain +0.030, beyond noise 0.020") in lr[0]["evidence"][1]
    assert lr[0]["data"]["gain"] == pytest.approx(0.03) and lr[0]["data"]["tie"] is False
    assert [s.point[LR] for s in runner.calls if s.phase == "phase2"] == [8e-3]  # 4e-3 not trained again
    assert lr[1]["verdict"] == "lr 0.008 is not better" and lr[1]["move"] == "keep lr 0.004"
    assert ctx.state["final"].point[LR] == 4e-3


def test_phase2_calls_the_lr_bracketed_only_when_neither_neighbour_is_better_beyond_noise_and_says_so():
    """lr 4e-3 scores 0.710 against the incumbent's 0.700 (a tie inside the 0.02 band), lr 1e-3 0.650 (a loss): the lr
    is bracketed, and the trail names each neighbour's comparison instead of 'both score lower' (0.710 is not lower)."""
    f1 = {1e-3: 0.65, 2e-3: 0.70, 4e-3: 0.71}
    ctx, recs = _phase2_ctx(World(lambda p: f1[p[LR]], lambda p: "healthy"), f1, 2e-3)
    lr_steps(ctx, ProtocolSettings())
    d = ctx.decisions[-1]
    assert d["code"] == "lr-bracketed" and d["verdict"] == "lr 0.002 bracketed" and d["move"] == "keep lr"
    assert d["evidence"][1] == ("neither neighbour scores better beyond noise: lr 0.004: 0.700 -> 0.710, gain +0.010, "
                                f"within noise 0.020 ({ctx.noise()[1]}): a tie, the incumbent (the smaller change) "
                                f"is kept; lr 0.001: 0.700 -> 0.650, gain -0.050, a loss beyond noise 0.020 "
                                f"({ctx.noise()[1]})")
    assert d["data"]["higher"]["trial"] == recs[4e-3].number and d["data"]["higher"]["tie"] is True
    assert d["data"]["lower"]["gain"] == pytest.approx(-0.05) and d["data"]["lower"]["tie"] is False
    assert ctx.state["incumbent"] is recs[2e-3]


@pytest.mark.parametrize("half, code, verdict, tie", [
    (0.73, "lr-step-kept", "lr 0.001 is better", False),
    (0.71, "lr-already-measured", "lr 0.001 is within noise of lr 0.002 (a tie)", True),
    (0.65, "lr-already-measured", "lr 0.001 is not better", False),
])
def test_phase2_judges_an_already_measured_lr_step_by_the_noise_band_and_says_which(half, code, verdict, tie):
    """The incumbent (lr 2e-3, 0.700) reads lr-too-large, so phase 2 steps /2 to lr 1e-3, measured already. It was
    recorded 'already measured ... and is not better' whatever it scored (0.730 too, beyond noise). Now the step is
    judged by step_gain: a win becomes the incumbent (not trained again), a tie and a loss are named as such."""
    f1 = {5e-4: 0.60, 1e-3: half, 2e-3: 0.70}
    ctx, recs = _phase2_ctx(World(lambda p: f1[p[LR]], lambda p: "lr-too-large" if p[LR] > 1e-3 else "healthy"),
                            (1e-3, 2e-3), 2e-3)
    lr_steps(ctx, ProtocolSettings())
    d = next(x for x in ctx.decisions if x["kind"] == "lr")
    assert (d["code"], d["verdict"]) == (code, verdict)
    assert d["data"]["gain"] == pytest.approx(half - 0.70) and d["data"]["tie"] is tie
    assert f"lr 0.001 was already measured ({recs[1e-3].label}), not trained again: lr 0.002 -> 0.001: 0.700 -> " \
           f"{half:.3f}, gain {half - 0.70:+.3f}" in d["evidence"][1]
    won = code == "lr-step-kept"
    assert ctx.state["incumbent"] is (recs[1e-3] if won else recs[2e-3])
    assert [s.point[LR] for s in ctx.runner.calls if s.phase == "phase2"] == ([5e-4] if won else [])


@pytest.mark.parametrize("at_four, whole", [(0.715, False), (0.75, True)])
def test_phase2_retrains_a_pruned_lr_step_whole_only_when_it_led_at_its_step_beyond_noise(at_four, whole):
    """lr 4e-3 was pruned at step 50, ahead of the incumbent there by 0.012 (0.572 vs 0.560, inside the 0.02 band) or
    by 0.040 (beyond it). Phase 2 retrained it whole on any lead (a <= b), while every sweep retrains only a lead
    beyond noise (common.whole_if_ahead): one rule now, so the small lead is not trained again."""
    world = HalfwayWorld(lambda p: {2e-3: 0.70, 4e-3: at_four}[p[LR]], lambda p: "lr-too-small")
    runner = HalfwayPruner(world, lambda s: s.phase == "phase1-lr-grid" and s.point[LR] == 4e-3)
    ctx, recs = _phase2_ctx(world, (2e-3, 4e-3), 2e-3, runner)
    assert recs[4e-3].result.status == "pruned" and recs[4e-3].value == pytest.approx(0.8 * at_four)
    lr_steps(ctx, ProtocolSettings(max_lr_steps=1))
    d = next(x for x in ctx.decisions if x["kind"] == "lr")
    retrained = [s for s in runner.calls if s.phase == "phase2"]
    if whole:
        assert [s.point[LR] for s in retrained] == [4e-3]
        assert retrained[0].purpose == "lr step x2: its pruned trial trained again, whole"
        assert d["code"] == "lr-step-kept" and ctx.state["incumbent"].result.status == "completed"
    else:
        assert retrained == []
        assert d["code"] == "lr-already-measured" and d["data"]["at_step"] == 50
        assert d["data"]["value"] == pytest.approx(0.572) and d["data"]["ref"] == pytest.approx(0.56)
        assert "lr 0.004 was measured only until it was pruned, and did not lead beyond noise at equal steps: " \
               in d["evidence"][1]
        assert ctx.state["incumbent"] is recs[2e-3]


def test_phase2_tries_each_regularization_move_on_the_current_incumbent():
    """Overfitting: dropout 0.2 gains 0.03 and is kept; weight decay 0.1 gains 0.025 on top. The weight-decay move
    was built from the starting incumbent, so it trained at dropout 0.1 (0.725, a tie against 0.730 and dropped).
    Each move is now the current incumbent plus that one change: dropout 0.2 and weight decay 0.1, 0.755, kept."""
    def f1(p):
        return 0.70 + (0.03 if p.get("adapter.lora_dropout", 0.1) >= 0.2 else 0.0) \
            + (0.025 if p.get("train.weight_decay", 0.01) >= 0.1 else 0.0) + _lr_peak(p)

    world = World(f1, lambda p: "healthy", gap=0.2, features={"val_loss_rise": 0.3})
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, seeds=1, pair=False))
    regs = [x for x in ctx.decisions if x["kind"] == "regularization"]
    assert [x["code"] for x in regs] == ["regularization-kept", "regularization-kept"]
    wd = [s.point for s in runner.calls if s.purpose == "against overfitting: weight_decay 0.1"]
    assert len(wd) == 1 and wd[0]["adapter.lora_dropout"] == 0.2 and wd[0]["train.weight_decay"] == 0.1
    assert "weight_decay 0.1: 0.730 -> 0.755, gain +0.025, beyond noise 0.020" in regs[1]["evidence"][1]
    final = ctx.state["final"].point
    assert final["adapter.lora_dropout"] == 0.2 and final["train.weight_decay"] == 0.1


def _seed_unstable_long_world() -> World:
    """s6 of hunt 19 scripted: the grid's best lr 1e-3 (0.70) is seed-unstable (0.70, 0.55, 0.60 over seeds: noise
    0.153), lr /2 (0.66) scores its seed mean, so the seeds stage lowers the lr to 5e-4; the early long run trained the
    grid's trial at lr /2 = 5e-4 (0.75), and a long run at the rejected lr 1e-3 scores 0.80: a gain of 0.05 inside
    the noise."""
    def f1(p):
        if int(p.get("train.max_steps") or 0) >= 200:
            return {5e-4: 0.75, 1e-3: 0.80}.get(p[LR], 0.60)
        return {1e-3: 0.70, 5e-4: 0.66, 2e-3: 0.60}.get(p[LR], 0.50)

    world = World(f1, lambda p: "healthy", features=dict(STILL))
    world.SEED_OFFSET = {42: 0.0, 43: -0.15, 44: -0.10}
    return world


def test_a_tie_at_the_end_does_not_take_back_the_lr_the_seeds_stage_rejected():
    """Hunt 19 (s6): the seeds stage lowered a seed-unstable lr (1e-3 -> 5e-4, the early long run's lr too), then the
    final training ran the long run at the rejected lr 1e-3 and made it the pick on a gain of 0.085 inside the noise
    band 0.191 ('a tie; the higher one is kept'). Protocol 5b: inside the band is a tie, and a tie does not overturn
    the earlier decision: the long run at the steadier lr stays the pick, and the trail says the incumbent's lr is
    not the long run's trial's and which stage moved it."""
    ctx, runner = make_ctx(_seed_unstable_long_world())
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False, pair=False), plan=PLAN)
    assert "seed-unstable-lr-lowered" in codes(ctx)
    assert ctx.state.incumbent.point[LR] == 5e-4
    early = next(r for r in ctx.records if r.spec.phase == "early-long")
    assert early.point[LR] == 5e-4
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    noise, _ = ctx.noise()
    assert noise == pytest.approx(d["data"]["noise"]) and d["data"]["gain"] == pytest.approx(0.05) and 0.05 < noise
    assert [x["lr"] for x in d["data"]["lrs"]] == [5e-4, 1e-3]
    assert d["code"] == "final-train-reused" and d["move"] == f"keep {early.label}"
    assert ctx.state.final is early and ctx.state.final.point[LR] == 5e-4
    assert any("inside the noise band" in e and "a tie" in e and f"the pick {early.label} (lr 0.0005) is kept" in e
               for e in d["evidence"])
    moved = next(e for e in d["evidence"] if e.startswith("the incumbent "))
    assert "is at lr 0.0005, not the lr 0.001 of the long run's trial" in moved
    assert "the seeds stage set it (seed-unstable-lr-lowered" in moved


def test_a_long_run_at_another_lr_beyond_the_noise_still_replaces_the_pick():
    """The same study, but the long run at lr 1e-3 gains 0.25 (beyond the noise 0.153): evidence, not a tie, so it is
    the pick, and the decision says the gain is beyond the band."""
    world = _seed_unstable_long_world()
    f1 = world.f1
    world.f1 = lambda p: f1(p) + (0.2 if int(p.get("train.max_steps") or 0) >= 200 and p[LR] == 1e-3 else 0.0)
    ctx, runner = make_ctx(world)
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False, pair=False), plan=PLAN)
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    assert d["code"] == "final-train-helps" and ctx.state.final.point[LR] == 1e-3
    assert any("beyond the noise band" in e for e in d["evidence"])


def test_a_configs_seed_replicates_are_no_bar_a_running_trial_is_pruned_against():
    """Hunt 19 (s1): a target-sweep trial was pruned as behind #5 lr0.04-seed44 (0.620), a lucky seed replicate of
    the incumbent (0.355 on the study's seed): the replicates measure the noise, the config's own trial is the bar."""
    world = lr_binds()
    world.SEED_OFFSET = {42: 0.0, 43: -0.10, 44: 0.15}
    ctx, runner = make_ctx(world)
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, pair=False))
    seeds = [r for r in ctx.records if r.spec.phase == "seeds"]
    assert len(seeds) == 2
    spec = next(r.spec for r in ctx.records if r.spec.phase == "target-sweep")
    labels = [name for name, _ in ctx.references(spec)]
    inc = next(r for r in ctx.records if r.spec.phase != "seeds" and r.point == {
        k: v for k, v in seeds[0].point.items() if k != "train.seed"})
    assert inc.label in labels and not any(r.label in labels for r in seeds)


def test_the_studys_rank_vs_metric_holds_the_sweeps_like_trials_its_chosen_rank_and_threshold_source():
    """study.json's rank_vs_metric listed every LoRA trial (long runs, the target sweep's all-linear trials) and never
    wrote chosen_r or threshold_source, which the view reads: now the trials like the sweep's working point only."""
    from loratune.search.summary import rank_vs_metric

    ctx, runner = make_ctx(_long_peak_world(5e-4))
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False, pair=False), plan=PLAN)
    got = rank_vs_metric(ctx)
    sweep = ctx.state.rank_sweep
    assert got["chosen_r"] == sweep["chosen_r"] and got["threshold_source"] == sweep["threshold_source"] != ""
    listed = {p["trial"] for p in got["trials"]}
    by_number = {r.number: r for r in ctx.records}
    assert {p["trial"] for p in got["sweep"]} <= listed
    assert any(r.point.get("train.max_steps") for r in ctx.records) and any(
        r.spec.phase == "target-sweep" for r in ctx.records)
    assert not any(by_number[n].point.get("train.max_steps") or by_number[n].spec.phase == "target-sweep"
                   for n in listed)


def test_the_resumed_decision_says_nothing_is_trained_again_when_no_trial_was_lost():
    """Hunt 19 (s2r): a finished study resumed with a larger budget read 'resumed: no trial lost' with the move 'the
    lost trials' points are trained again': the move now agrees with the facts."""
    from loratune.search.tune import resumed_text

    verdict, move, ev = resumed_text([])
    assert verdict == "resumed: no trial lost" and "lost trials" not in move and "nothing is trained again" in move
    assert ev == ["every trial of the earlier sessions finished; their records are reused"]
    lost = [{"number": 3, "name": "lr2e-3", "status": "failed", "examples": 1200, "wall_s": 4.25}]
    verdict, move, ev = resumed_text(lost)
    assert verdict == "resumed: 1 trial lost" and move == "the lost trials' points are trained again; what they " \
                                                          "trained stays spent"
    assert ev == ["trial #3 (lr2e-3) failed: 1,200 examples, 4.2s charged"]


def _seed_unstable_kept_world() -> World:
    """s1 of hunt 19 scripted: the grid's best lr 1e-3 (0.70) is seed-unstable (noise 0.153), and lr /2 (0.55) is
    below its seed mean 0.617, so the seeds stage KEEPS 1e-3; the early long run trains it at `long_lr_factor`'s lr
    /2 = 5e-4 (0.75), and the final training's run at its own lr 1e-3 scores 0.80: a gain of 0.05 inside the noise,
    with no stage having chosen 5e-4."""
    def f1(p):
        if int(p.get("train.max_steps") or 0) >= 200:
            return {5e-4: 0.75, 1e-3: 0.80}.get(p[LR], 0.60)
        return {1e-3: 0.70, 5e-4: 0.55, 2e-3: 0.60}.get(p[LR], 0.50)

    world = World(f1, lambda p: "healthy", features=dict(STILL))
    world.SEED_OFFSET = {42: 0.0, 43: -0.15, 44: -0.10}
    return world


@pytest.mark.parametrize("early_long", [True, False])
def test_the_final_lr_pair_is_settled_by_one_rule_with_or_without_the_early_long_run(early_long):
    """Review of hunt 19 (s1): the seeds stage kept lr 1e-3; the reused early long run (at lr /2, long_lr_factor's
    default, no decision) stayed the pick over its run at 1e-3 on a tie (test 0.8995 where 1e-3 gave 0.9495), while
    without the early long run the same pair (lr /2 vs lr, same length) was settled by the higher score. One rule
    (finish.settle_lrs): the higher val score wins, and a tie keeps the pick only where a stage moved the lr away
    from the long run's (s6, the test above)."""
    ctx, runner = make_ctx(_seed_unstable_kept_world())
    run_protocol(ctx, LONG_START, ProtocolSettings(full_probe=False, lr_probe=False, pair=False, early_long=early_long),
                 plan=PLAN)
    assert "seed-unstable-lr-kept" in codes(ctx)
    assert ctx.state.incumbent.point[LR] == 1e-3
    d = next(x for x in ctx.decisions if x["kind"] == "final-train")
    noise, _ = ctx.noise()
    assert 0.05 < noise
    assert d["code"] == "final-train-helps", (d["code"], d["verdict"])
    final = ctx.state.final
    assert final.point[LR] == 1e-3 and final.value == pytest.approx(0.80) and final.spec.phase == "final-train"
    tie = next(e for e in d["evidence"] if "inside the noise band" in e)
    assert "a tie; no stage chose between these lrs" in tie and "so the higher score is kept" in tie
    assert not any(e.startswith("the incumbent ") for e in d["evidence"])
    if early_long:
        assert d["data"]["gain"] == pytest.approx(0.05) and d["data"]["noise"] == pytest.approx(noise)
        assert tie.startswith("gain 0.050 over the pick: ")
    else:
        assert "(gain 0.050 over lr 0.0005: inside the noise band" in tie


def test_a_pruned_trials_whole_rerun_is_the_bar_not_its_partial_record():
    """Review of hunt 19: references() dropped every record whose point but for the seed was seen before, so a pruned
    trial's whole rerun (common.whole_if_ahead: the same point, seed included) was dropped and the partial record
    stayed the bar: a trial at 0.60 by step 100 was not pruned against a rerun at 0.95 there. Only a seed replicate
    (another train.seed) is dropped, and a completed record replaces a pruned one of the same point."""
    import dataclasses

    from loratune.search.prune import behind_best

    ctx, runner = make_ctx(lr_binds())
    run_protocol(ctx, START, ProtocolSettings(full_probe=False, pair=False))
    base = next(r for r in ctx.records if r.spec.phase == "target-sweep")
    pruned = dataclasses.replace(base, number=100, result=dataclasses.replace(
        base.result, status="pruned", curve=((0, 0.0), (50, 0.6))))
    whole = dataclasses.replace(base, number=101, result=dataclasses.replace(
        base.result, status="completed", curve=((0, 0.0), (50, 0.6), (100, 0.95))))
    seed = dataclasses.replace(whole, number=102, spec=dataclasses.replace(
        base.spec, point={**base.point, "train.seed": 43}), result=dataclasses.replace(
        base.result, status="completed", curve=((0, 0.0), (50, 0.7), (100, 0.99))))
    ctx.records[:] = [pruned, whole, seed]
    refs = ctx.references(base.spec)
    assert [name for name, _ in refs] == [whole.label] and refs[0][1] == whole.result.curve
    lag = behind_best(((0, 0.0), (50, 0.55), (100, 0.6)), 100, refs, 0.02)
    assert lag is not None and "0.950" in lag and "trailing by 0.350" in lag
    ctx.records[:] = [pruned]  # no whole rerun: the partial record is the only measure of the point
    assert [name for name, _ in ctx.references(base.spec)] == [pruned.label]
