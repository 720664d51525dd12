"""Budget parsing and accounting: the same meter for every strategy."""

from __future__ import annotations

import pytest

from loratune.errors import UserError
from loratune.search.budget import Budget, Cost, CostModel, Meter, format_amount
from loratune.search.context import SearchContext
from memory_store import MemoryStore
from loratune.search.prune import PruneSettings, behind_best, by_diagnosis
from loratune.search.trial import TrialResult, TrialSpec


@pytest.mark.parametrize("text,kind,limit", [
    ("15m", "wall_s", 900), ("900s", "wall_s", 900), ("1h30m", "wall_s", 5400), ("2m30s", "wall_s", 150),
    ("20trials", "trials", 20), ("1trial", "trials", 1), ("20 trials", "trials", 20),
    ("300000ex", "examples", 300_000), ("300kex", "examples", 300_000), ("1.5Mexamples", "examples", 1_500_000),
])
def test_parse(text, kind, limit):
    b = Budget.parse(text)
    assert (b.kind, b.limit) == (kind, limit)


@pytest.mark.parametrize("text", ["", "15", "fast", "0m", "-5m", "2.5trials", "0ex", "15 minutes"])
def test_parse_rejects_with_a_fix(text):
    with pytest.raises(UserError) as e:
        Budget.parse(text)
    assert "15m" in e.value.fix


def test_meter_charges_every_unit_and_answers_fits():
    m = Meter(Budget.parse("100s"), reserve_s=10)
    assert m.left == 90
    m.charge(Cost(30, 1000, 1), "trial 0")
    m.charge(Cost(5, 0, 0), "overhead")
    assert m.spent == Cost(35, 1000, 1)
    assert m.left == pytest.approx(55)
    assert m.fits(Cost(50, 10**9, 1))  # only the budget's own unit counts
    assert not m.fits(Cost(50, 0, 1), reserve=Cost(10, 0, 1))  # held back for later stages
    assert not m.exhausted()
    m.charge(Cost(60, 0, 1), "trial 1")
    assert m.exhausted() and m.fraction_used == pytest.approx(0.95)
    assert [c.label for c in m.ledger] == ["trial 0", "overhead", "trial 1"]
    assert m.ledger[-1].total == Cost(95, 1000, 2)


def test_trial_budget_counts_trials():
    m = Meter(Budget.parse("2trials"))
    assert m.fits(Cost(1e9, 10**9, 1))
    m.charge(Cost(1, 1, 1), "a")
    assert m.fits(Cost(0, 0, 1)) and not m.fits(Cost(0, 0, 1), reserve=Cost(0, 0, 1))
    m.charge(Cost(1, 1, 1), "b")
    assert m.exhausted() and not m.fits(Cost(0, 0, 1))


def test_examples_budget():
    m = Meter(Budget.parse("10kex"))
    m.charge(Cost(100, 6000, 1), "a")
    assert m.left == 4000 and not m.fits(Cost(1, 5000, 1)) and m.fits(Cost(1, 4000, 1))


def test_cost_model_learns_seconds_per_example_per_method():
    cm = CostModel(prior_examples_per_s=100, full_over_lora=2.0)
    assert cm.estimate(1000).wall_s == pytest.approx(10)
    assert cm.estimate(1000, "full").wall_s == pytest.approx(20)  # prior ratio until measured
    cm.observe("lora", 50.0, 1000)
    assert cm.estimate(1000).wall_s == pytest.approx(50)
    assert cm.estimate(1000, "full").wall_s == pytest.approx(100)
    cm.observe("full", 70.0, 1000)
    assert cm.estimate(1000, "full").wall_s == pytest.approx(70)


def test_format_amount():
    assert format_amount("wall_s", 75) == "1m15s"
    assert format_amount("trials", 1) == "1 trial"
    assert format_amount("examples", 12345) == "12,345 examples"


class _Runner:
    def __init__(self):
        self.calls = 0

    def run(self, spec, run_dir, watch=None):
        self.calls += 1
        return TrialResult("completed", 0.5, examples=500, wall_s=20.0, curve=((0, 0.0), (10, 0.5)))

    def compare(self, run_dirs):
        return None

    def evaluate(self, run_dir, split="test"):
        return {}


def test_context_charges_trials_and_refuses_what_does_not_fit():
    ctx = SearchContext(store=MemoryStore(), runner=_Runner(), meter=Meter(Budget.parse("50s")),
                        trial_examples=500, costs=CostModel(prior_examples_per_s=25),  # prior: 20 s a trial
                        finish_base_s=0.0)
    a = ctx.run(TrialSpec("a", "x", {"train.learning_rate": 1e-3}))
    assert a is not None and ctx.meter.spent == Cost(20.0, 500, 1)
    again = ctx.run(TrialSpec("a", "x", {"train.learning_rate": 1e-3}))
    assert again is a and ctx.meter.spent.trials == 1  # the same point in one search is free
    assert ctx.run(TrialSpec("b", "x", {"train.learning_rate": 2e-3}), reserve=Cost(20, 0, 1)) is None
    assert ctx.run(TrialSpec("b", "x", {"train.learning_rate": 2e-3})) is not None
    assert ctx.run(TrialSpec("c", "x", {"train.learning_rate": 4e-3})) is None  # 10 s left < 20 s
    assert ctx.runner.calls == 2


def test_context_budget_stop_mid_trial():
    ctx = SearchContext(store=MemoryStore(), runner=_Runner(), meter=Meter(Budget.parse("1000ex")),
                        trial_examples=500)
    ctx.meter.charge(Cost(0, 800, 1), "before")
    assert ctx._budget_stop(5.0, 100) is None
    assert "budget" in ctx._budget_stop(5.0, 300)


def test_behind_best_prunes_only_clear_losers_after_half_the_run():
    ref = [("#0", ((0, 0.0), (50, 0.5), (100, 0.7)))]
    s = PruneSettings()
    assert behind_best(((0, 0.0), (40, 0.1)), 100, ref, 0.01, s) is None  # too early to judge
    assert behind_best(((0, 0.0), (50, 0.47)), 100, ref, 0.01, s) is None  # within the margin
    why = behind_best(((0, 0.0), (50, 0.3)), 100, ref, 0.01, s)
    assert why and "#0" in why and "0.300" in why
    assert behind_best(((0, 0.0), (50, 0.4)), 100, ref, 0.05, s) is None  # 3 SE = 0.15 margin
    assert behind_best(((0, 0.0), (50, 0.3)), 100, [], 0.01, s) is None  # nothing to compare with


def test_diagnosis_prunes_a_collapsing_trial_only_when_another_was_better():
    ref = [("#0", ((0, 0.0), (40, 0.5)))]
    curve = ((0, 0.0), (40, 0.1))
    assert by_diagnosis("lr-too-large", "collapse", curve, 100, ref) is not None
    assert by_diagnosis("lr-too-large", "collapse", curve, 100, []) is None  # the first trial runs on
    assert by_diagnosis("lr-too-small", "slow", curve, 100, ref) is None
    assert by_diagnosis("lr-too-large", "collapse", ((0, 0.0), (20, 0.1)), 100, ref) is None  # before 30%


def test_wall_budget_keeps_time_back_for_scoring_test():
    ctx = SearchContext(store=MemoryStore(), runner=_Runner(), meter=Meter(Budget.parse("100s")),
                        trial_examples=500, finish_rows=300, finish_base_s=5.0)
    ctx.run(TrialSpec("a", "x", {}))  # 20 s for 500 examples: 0.04 s an example
    assert ctx.meter.reserve_s == pytest.approx(5.0 + 0.04 * 300 / 3)
    assert ctx.meter.left == pytest.approx(100 - 20 - 9)


def test_decision_log_is_append_only_and_replay_safe(tmp_path):
    from loratune.search.study import DecisionLog

    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(path)
    log.append({"seq": 0, "kind": "start-config"})
    log.append({"seq": 1, "kind": "lr-grid"})
    with open(path, "a") as f:
        f.write('{"seq": 2, "kind": "pa')  # torn by a hard kill
    again = DecisionLog(path)
    assert [d["seq"] for d in again.entries] == [0, 1]
    again.append({"seq": 0, "kind": "start-config"})  # a resumed session replays its decisions
    again.append({"seq": 1, "kind": "lr-grid"})
    again.append({"seq": 2, "kind": "pair"})
    assert [d["seq"] for d in again.entries] == [0, 1, 2]
    assert [d["seq"] for d in DecisionLog(path).entries] == [0, 1, 2]  # and on disk, torn line gone


def test_cost_times_n_is_n_trials_of_the_same():
    assert Cost(1.5, 10, 1) * 3 == Cost(4.5, 30, 3)
    assert Cost(1.5, 10, 1) * 0 == Cost()


def test_a_resume_charges_an_earlier_trial_where_the_replay_reuses_it_not_before():
    """A resumed study's replay asked the budget for a trial the earlier session had not run (it did not fit): every
    earlier trial not reused yet was charged then, as "not reused", so the replayed decisions after it showed 1 trial
    left where the earlier session had 3, and the trials the replay reused next were listed as not reused."""
    store = MemoryStore()
    specs = [TrialSpec(f"t{i}", "x", {"train.learning_rate": 1e-4 * (i + 1)}) for i in range(5)]
    first = SearchContext(store=store, runner=_Runner(), meter=Meter(Budget.parse("6trials")), trial_examples=500)
    for spec in specs:
        assert first.run(spec) is not None
    ctx = SearchContext(store=store, runner=_Runner(), meter=Meter(Budget.parse("6trials")), trial_examples=500)
    ctx.earlier = {r.number for r in store.records()}
    for spec in specs[:3]:
        assert ctx.run(spec).reused
    wide = TrialSpec("wide", "x", {"train.learning_rate": 9e-3})
    assert ctx.run(wide, reserve=Cost(0, 0, 3)) is None  # 3 trials left: not 1 + 3 (as the earlier session saw)
    assert ctx.meter.spent.trials == 3
    for spec in specs[3:]:
        assert ctx.run(spec).reused
    assert ctx.meter.spent == Cost(100.0, 2500, 5) and ctx.runner.calls == 0
    assert [c.label for c in ctx.meter.ledger] == [f"#{i} t{i} (reused from the study)" for i in range(5)]
    # a trial of this session's own that fits: the earlier trials no decision reused are charged before it
    ctx2 = SearchContext(store=store, runner=_Runner(), meter=Meter(Budget.parse("6trials")), trial_examples=500)
    ctx2.earlier = {r.number for r in store.records()}
    assert ctx2.run(specs[0]).reused and ctx2.run(wide) is not None
    assert [c.label for c in ctx2.meter.ledger][1:5] == [
        f"#{i} t{i} (trained by an earlier session, not reused by this one)" for i in range(1, 5)]
    assert ctx2.meter.spent.trials == 6


def test_diagnosis_prunes_only_a_trial_behind_beyond_noise_and_says_whose_best_it_compared():
    """The pruner by diagnosis pruned a trial at val macro-F1 0.000 vs '0.267 for #0 start at the same step' with no
    noise margin, though #0 scored 0.100 at step 14: 0.267 was its best up to then. The gap must now pass protocol
    6's noise band (objectives.beyond_noise over NOISE_BAND with the val binomial SE) and the reason says both
    numbers are bests up to that step. The band alone does not spare the hunter's D3 trial: on its 12 val rows the
    SE of 0.0 is binomial_se(0.0, 12) = 0.074, band 0.149, and the gap 0.267 is beyond it; that trial is spared by
    the rule change (lr-too-large's zero_loss_max route is a classifier's: test_diagnose_sft's
    test_a_generative_classifier_whose_val_loss_falls_is_not_lr_too_large_at_a_high_lr)."""
    from loratune.features import binomial_se
    from loratune.objectives import objective

    ref = [("#0 start", ((0, 0.0), (7, 0.267), (14, 0.1), (21, 0.1)))]
    curve = ((0, 0.0), (7, 0.0), (14, 0.0))
    f1 = objective("val/macro_f1")
    # 5 val rows: SE 0.156, noise max(0.005, 2 x 0.156) = 0.313: behind by 0.267 is not beyond it
    assert by_diagnosis("lr-too-large", "lr 0.025", curve, 40, ref, objective=f1, se=binomial_se(0.0, 5)) is None
    # D3's 12 val rows: SE 0.074, noise 0.149: behind by 0.267 is beyond it, and the reason says whose best it read
    why = by_diagnosis("lr-too-large", "lr 0.025", curve, 40, ref, objective=f1, se=binomial_se(0.0, 12))
    assert why is not None and "0.267 for #0 start (its best up to the same step)" in why, why
    assert "val macro-F1 0.000 (best up to step 14)" in why and "behind by 0.267 > noise 0.149" in why, why
    # a gap equal to the band (up to float rounding) is not beyond it
    assert by_diagnosis("lr-too-large", "x", ((0, 0.0), (14, 0.067)), 40, ref, objective=f1, se=0.1) is None


def test_a_running_trial_is_held_against_the_studys_seed_noise_once_seeds_ran():
    """Hunt 19 (s1): with the study's noise at 0.359 (2 x seed sigma 0.179 over 3 seeds), a target-sweep trial was
    pruned 'behind by 0.322 > noise 0.189 (... sigma 0.094)': the diagnosis's binomial SE, a narrower band than the
    one the study's own decisions read. Protocol 5b: the seed spread when seeds exist; the larger of the two."""
    from loratune.search.runner import Watch

    ref = [("#5 lr0.04-seed44", ((0, 0.0), (6, 0.5), (12, 0.620)))]
    points = [{"step": 0, "val/macro_f1": 0.0}, {"step": 6, "val/macro_f1": 0.2}, {"step": 12, "val/macro_f1": 0.298}]
    run = {"steps_planned": 12, "objective": "val/macro_f1"}
    assert Watch(references=ref).check(points, run, 1.0) is not None  # no seeds: 0.322 > max(0.05, 3 x SE)
    w = Watch(references=ref, seed_sigma=0.1794, seed_count=3)
    assert w.sigma(0.094) == (0.1794, "seed sigma over 3 seeds")
    assert w.sigma(0.25) == (0.25, "binomial SE")  # the larger of the two
    assert w.check(points, run, 1.0) is None  # 0.322 < max(0.05, 3 x seed sigma 0.179) = 0.538
    why = behind_best(((0, 0.0), (12, 0.0)), 12, ref, w.sigma(0.094)[0],
                      source=w.sigma(0.094)[1])
    assert why is not None and "3 x seed sigma over 3 seeds 0.179" in why
    why = by_diagnosis("lr-too-large", "x", ((0, 0.0), (12, 0.1)), 12, ref, se=0.1794, source="seed sigma over 3 seeds")
    assert why is not None and "noise 0.359" in why and "sigma 0.179: seed sigma over 3 seeds" in why
    assert by_diagnosis("lr-too-large", "x", ((0, 0.0), (12, 0.298)), 12, ref, se=0.1794) is None
