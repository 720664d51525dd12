"""bench/tuning.py's aggregation and rendering of stored studies (issue 15's tables), on scripted studies: no
training, no stored results read."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import tuning as bt  # noqa: E402

from loratune.steps import examples_for  # noqa: E402

SUBSET = {"source": "banking77", "n_labels": 20, "step": 3, "train": 25, "val": ["test", 0, 20],
          "test": ["test", 20, 40]}
TRIAL = 47  # steps of a 1x trial


def study(strategy: str, seed: int, runs: list[tuple], *, pick: int | None = None, pick_test: float | None = None,
          wall_s: float = 100.0, batch: int = 16, trail: list[str] | None = None, budget: str = "10000ex",
          trial: int = TRIAL, subset: dict = SUBSET, dataset: str = "banking77-20", version: int | None = None) -> dict:
    """A stored study as bench/tuning.py writes it. runs: (steps, val, test) per trial, in order; the pick is the
    best val trial unless `pick` names another (its test `pick_test`, else its own); `version`: the sampler version it
    was stored under (the current one unless given)."""
    curve, table, cum, best, best_trial = [], [], 0, None, None
    for i, (steps, val, _test) in enumerate(runs):
        # an epoch's short last step counted
        examples = examples_for(subset["n_labels"] * subset["train"], batch, 1, steps)
        cum += examples
        if best is None or val > best:
            best, best_trial = val, i
        curve.append({"trial": i, "name": f"t{i}", "phase": strategy, "value": val, "steps": steps,
                      "examples_cum": cum, "wall_s_cum": 10.0 * (i + 1), "best_so_far": best,
                      "best_trial": best_trial})
        table.append({"trial": i, "name": f"t{i}", "phase": strategy, "status": "completed", "val_macro_f1": val,
                      "examples": examples, "wall_s": 10.0, "point": {"train.max_steps": steps}})
    chosen = best_trial if pick is None else pick
    return {"dataset": dataset, "strategy": strategy, "seed": seed, "wall_s": wall_s,
            "finished": "2026-12-01 00:00:00", "code": "abc1234",
            "settings": {"budget": budget, "trial_steps": trial, "num_threads": 1, "subset": subset},
            "protocol_version": bt.PROTOCOL_VERSION if strategy == "protocol" else None,
            "yardstick_version": None if strategy == "protocol" else version or bt.YARDSTICK_VERSION[strategy],
            "trials": len(runs), "pruned": 0, "examples": cum, "best_val": max(v for _, v, _ in runs),
            "pick": {"trial": chosen, "name": f"t{chosen}", "val": runs[chosen][1],
                     "test": runs[chosen][2] if pick_test is None else pick_test,
                     "point": {"train.max_steps": runs[chosen][0]}},
            "seed_sigma": 0.01 if strategy == "protocol" else None, "curve": curve,
            "trail": trail or [f"[{strategy}] best -> pick"], "table": table,
            "pick_tests": {str(i): t for i, (_, _, t) in enumerate(runs)}}


def results_of(studies: list[dict]) -> dict:
    """What render_all hands render: the studies (labelled as load_studies labels them) without their tables, the
    aggregate, nothing stale."""
    studies = [st if bt.strategy_label(st) == st["strategy"] else
               {**st, "strategy": bt.strategy_label(st), "sampler": st["strategy"]} for st in studies]
    by_key = {f"{st['dataset']}/{st['strategy']}/{st['seed']}": st for st in studies}
    light = {k: {kk: vv for kk, vv in st.items() if kk != "table"} for k, st in by_key.items()}
    return {"studies": light, "datasets": bt.aggregate(by_key), "stale": [], "rendered": "now", "notes": ""}


def test_trial_length_only_leaves_a_study_without_a_1x_trial_out_of_the_mean():
    """random/1 trained only 2x and 8x draws: the trial-length-only view has no score for it. It was scored 0.000
    and averaged in, pulling random's mean best val from 0.8 to 0.4."""
    sts = [study("protocol", 0, [(TRIAL, 0.7, 0.7), (TRIAL, 0.75, 0.74)]),
           study("random", 0, [(TRIAL, 0.8, 0.79), (2 * TRIAL, 0.85, 0.84)]),
           study("random", 1, [(2 * TRIAL, 0.9, 0.88), (8 * TRIAL, 0.95, 0.93)])]
    res = results_of(sts)
    so = res["datasets"]["banking77-20"]["trial_length_only"]
    assert so["by_run"]["random/1"]["best_val"] is None
    assert so["by_run"]["random/0"]["best_val"] == pytest.approx(0.8)
    rnd = so["by_strategy"]["random"]
    assert rnd["best_val_mean"] == pytest.approx(0.8) and rnd["best_val_n"] == 1 and rnd["replicates"] == 2
    # the whole-study view keeps every study's best
    assert res["datasets"]["banking77-20"]["by_strategy"]["random"]["best_val_mean"] == pytest.approx(0.9)
    md = bt.render(res)
    assert "random/1 no 1x trial, within 0.5 pt at never" in md and "best 0.000" not in md
    assert "| random | 2 | 0.8000 (n=1: 1 with no 1x trial) |" in md
    # how far leaving it out moved the mean, from the data (the notes had written a number by hand, and a wrong one)
    left = so["left_out"]
    assert set(left) == {"random"} and left["random"]["seeds"] == [1]
    assert (left["random"]["mean"], left["random"]["mean_as_zero"]) == (pytest.approx(0.8), pytest.approx(0.4))
    assert left["random"]["shift"] == pytest.approx(0.4)
    assert "random seed 1 (1 of 2): mean 0.8000 without, 0.4000 with them as 0.000 (40.0 pt)" in md


def test_the_trial_is_rendered_with_the_batch_and_examples_its_stored_runs_processed():
    """banking77-77's trials ran at batch 32 (the assessment's, for 1,925 rows): 180 steps are ~5,700 examples, 3
    epochs, ~7 trials per 40,000-example budget. The render said '180 steps x 16' for every dataset."""
    b77 = {**SUBSET, "n_labels": 77, "step": 1, "trial_steps": 180, "budget": "40000ex"}
    kw = dict(batch=32, trial=180, subset=b77, dataset="banking77-77", budget="40000ex")
    sts = [study("protocol", 0, [(45, 0.3, 0.3), (180, 0.8, 0.79)], **kw),
           study("random", 0, [(180, 0.82, 0.8), (360, 0.85, 0.84)], **kw)]
    res = results_of(sts)
    shape = res["datasets"]["banking77-77"]["trial"]
    assert (shape["steps"], shape["batch"], shape["examples"], shape["train_rows"]) == (180, 32, 5706, 1925)
    assert shape["epochs"] == pytest.approx(5706 / 1925) and shape["per_budget"] == pytest.approx(40000 / 5706)
    md = bt.render(res)
    assert ("trial: 180 steps x batch 32 = 5,706 training examples (3.0 epochs of the 1,925 train rows; the budget "
            "holds ~7.0 such trials") in md
    assert "x 16" not in md
    # the 20-class subsets' trials: batch 16, 740 examples (47 steps, the last of each epoch short)
    md20 = bt.render(results_of([study("protocol", 0, [(TRIAL, 0.7, 0.7), (2 * TRIAL, 0.8, 0.8)])]))
    assert "trial: 47 steps x batch 16 = 740 training examples (1.5 epochs of the 500 train rows" in md20


def test_the_final_pick_is_the_one_the_study_exported_and_earlier_cuts_its_best_val_so_far():
    """The protocol exported trial #0 (test 0.75; e.g. a seed mean outranked trial #1's single val), not its best-val
    trial #1 (test 0.78): the targets table and the 100% column read trial #1 (clinc150-20 seeds 1, 2, 8 differed)."""
    sts = [study("protocol", 0, [(TRIAL, 0.7, 0.70), (TRIAL, 0.8, 0.78)], pick=0, pick_test=0.75),
           study("random", 0, [(TRIAL, 0.72, 0.76)])]
    res = results_of(sts)
    agg = res["datasets"]["banking77-20"]
    t = agg["targets"]["random"]
    assert t["diffs"] == [pytest.approx(0.75 - 0.76)] and t["theirs_final"] == pytest.approx(0.76)
    assert t["ours_half"] == pytest.approx(0.78)  # half the budget: its best-val trial so far
    anytime = agg["anytime"]["protocol"]
    assert anytime["1.0"]["values"] == [0.75] and anytime["0.5"]["values"] == [0.78]
    assert bt.pick_test_at(sts[0], bt.budget_examples(sts[0])) == 0.75
    md = bt.render(res)
    assert bt.PICK_SO_FAR in md and "| random | 1 | -0.010 +- - (-0.010) | 0.780 | 0.760 |" in md


def test_the_render_says_what_the_budget_does_not_charge_trials_and_wall_time_per_strategy():
    """The budget charges training examples only; every trial also pays uncharged evaluation and set-up, so the
    strategy with more trials gets more of it: the results show trials and wall time per study beside the ratio."""
    sts = [study("protocol", 0, [(TRIAL, 0.7, 0.7)] * 4, wall_s=600.0),
           study("protocol", 1, [(TRIAL, 0.7, 0.7)] * 2, wall_s=400.0),
           study("random", 0, [(TRIAL, 0.72, 0.76), (2 * TRIAL, 0.8, 0.8)], wall_s=250.0)]
    agg = results_of(sts)["datasets"]["banking77-20"]
    c = agg["cost"]
    assert (c["protocol"]["trials_mean"], c["protocol"]["wall_s_mean"], c["protocol"]["wall_s_per_trial"]) == (
        3, 500.0, pytest.approx((150 + 200) / 2))
    assert (c["random"]["trials_mean"], c["random"]["wall_s_mean"], c["random"]["examples_mean"]) == (
        2, 250.0, 740 + 1480)
    md = bt.render(results_of(sts))
    assert "| protocol | 2 | 3.0 | 2,220 | 500 | 175 |" in md and "| random | 1 | 2.0 | 2,220 | 250 | 125 |" in md
    assert "counted in training examples" in md and "the protocol took, against each yardstick: random 2.00x" in md


def test_the_stored_tpe_studies_start_up_and_guided_trials_are_rendered_beside_their_rows():
    """The stored TPE studies ran 4 random start-up trials of 5-7 (a third of the 1x trials that fit, at least 3):
    the results claimed a third; they now say how many of each study's trials were random start-up draws."""
    said = ["[tpe] 4 random start-up trials before TPE's model guides -> sample", "[tpe] budget spent -> stop"]
    sts = [study("protocol", 0, [(TRIAL, 0.7, 0.7)] * 3),
           study("tpe", 0, [(TRIAL, 0.7, 0.7)] * 6, trail=said, version=3),
           study("tpe", 1, [(TRIAL, 0.7, 0.7)] * 3, trail=said, version=3),  # stopped inside its start-up
           study("random", 0, [(TRIAL, 0.7, 0.7)] * 5)]
    agg = results_of(sts)["datasets"]["banking77-20"]
    rows = agg["tpe_startup"]["tpe-v3"]["studies"]
    assert [(r["seed"], r["startup"], r["random"], r["guided"]) for r in rows] == [(0, 4, 4, 2), (1, 4, 3, 0)]
    # 10,000 examples hold ~3.6 trials of 740 x 3.75 (the mean length drawn): the current rule gives 1
    assert agg["tpe_startup"]["tpe-v3"]["current_rule"] == 1
    assert set(agg["tpe_startup"]) == {"tpe-v3"}
    md = bt.render(results_of(sts))
    assert ("tpe-v3: seed 0 4 + 2, seed 1 3 + 0 (7 of 9 trials random, 78%; 1 of 2 studies with no guided trial)"
            in md)
    assert "3 trials fit here, 1 start-up) has not been run on this dataset" in md
    assert "| tpe-v3/0 | 6 (4 random start-up) |" in md and "| random/0 | 5 |" in md


def test_a_start_up_of_one_trial_is_read_back_from_its_trail():
    """The verdict says '1 random start-up trial' (it said '1 random start-up trials'): the render reads both."""
    from loratune.search.yardstick import startup_verdict

    for n in (1, 4):
        st = study("tpe", 0, [(TRIAL, 0.7, 0.7)] * 5, trail=[f"[tpe] {startup_verdict(n)} -> sample"])
        assert bt.startup_of(st) == n


def test_the_current_start_up_rule_is_the_yardsticks_own_count(tmp_path):
    """The render recomputed the trials that fit as 1x examples x the mean length factor beside the yardstick's own
    count (expected_trial_cost / trials_that_fit): it now calls those, so it gives what `tune`'s tpe-startup decision
    records for the same budget and trial."""
    from loratune.search.budget import Budget, CostModel, Meter
    from loratune.search.context import SearchContext
    from loratune.search.space import default_space
    from loratune.search.study import Study
    from loratune.search.yardstick import prepare_yardstick

    sts = [study("protocol", 0, [(TRIAL, 0.7, 0.7)] * 3),
           study("tpe", 0, [(TRIAL, 0.7, 0.7)] * 5, trail=["[tpe] 1 random start-up trial before TPE's model guides "
                                                           "-> sample"])]
    got = results_of(sts)["datasets"]["banking77-20"]["tpe_startup"]["tpe"]
    store = Study.open(tmp_path / "s", meta={"strategy": "tpe"})
    ctx = SearchContext(store=store, runner=None, meter=Meter(Budget.parse("10000ex")), trial_examples=740,
                        trial_steps=TRIAL, costs=CostModel())
    start = {"adapter.r": 8, "train.learning_rate": 1e-3}
    prepare_yardstick(ctx, default_space(start, 32, trial_steps=TRIAL), start, "tpe", seed=0)
    store.close()
    d = next(d for d in ctx.decisions if d["code"] == "tpe-startup")["data"]
    assert (got["current_rule"], got["current_rule_fit"]) == (d["n_startup_trials"], d["trials_fit"]) == (1, 3)
    assert got["current_rule_trial_cost"] == pytest.approx(d["trial_cost_mean"])


def test_the_render_follows_the_yardsticks_count_of_the_trials_that_fit(monkeypatch):
    """One rule, one place: were the yardstick to count every drawn trial at 1x, the render's current rule moves
    with it (10,000 examples hold 13 trials of 740: 4 start-up trials)."""
    import loratune.search.yardstick as ys

    monkeypatch.setattr(ys, "trial_lengths", lambda space, start_point: (TRIAL,))
    sts = [study("protocol", 0, [(TRIAL, 0.7, 0.7)] * 3),
           study("tpe", 0, [(TRIAL, 0.7, 0.7)] * 5, trail=["[tpe] 4 random start-up trials before TPE's model "
                                                           "guides -> sample"])]
    got = results_of(sts)["datasets"]["banking77-20"]["tpe_startup"]["tpe"]
    assert (got["current_rule"], got["current_rule_fit"], got["current_rule_trial_cost"]) == (4, 13, 740)


def test_tpe_studies_of_two_start_up_rules_are_never_aggregated_together():
    """Version 3 stayed the sampler version after the start-up count changed: a TPE study run on the new rule was
    averaged with the old rule's, and the render said 'the current rule has not been run' whatever was stored. Now the
    current rule is version 4, the version-3 studies are rows of their own ('tpe-v3') and the sentence reads the
    stored versions."""
    old_said = ["[tpe] 4 random start-up trials before TPE's model guides -> sample"]
    new_said = ["[tpe] 1 random start-up trial before TPE's model guides -> sample"]
    assert bt.YARDSTICK_VERSION["tpe"] == bt.YARDSTICK_VERSION["tpe-hyperband"] == 4
    sts = [study("protocol", s, [(TRIAL, 0.7, 0.70), (TRIAL, 0.8, 0.80)]) for s in (0, 1)] + [
        study("tpe", 0, [(TRIAL, 0.7, 0.60)] * 5, trail=old_said, version=3),
        study("tpe", 1, [(TRIAL, 0.7, 0.62)] * 5, trail=old_said, version=3),
        study("tpe", 0, [(TRIAL, 0.7, 0.90)] * 4, trail=new_said)]
    res = results_of(sts)
    agg = res["datasets"]["banking77-20"]
    assert agg["by_strategy"]["tpe"]["pick_tests"] == [0.9]
    assert agg["by_strategy"]["tpe-v3"]["pick_tests"] == [0.6, 0.62]
    assert set(agg["targets"]) == {"tpe", "tpe-v3"} and agg["targets"]["tpe"]["n"] == 1
    assert agg["targets"]["tpe-v3"]["diffs"] == [pytest.approx(0.2), pytest.approx(0.18)]
    su = agg["tpe_startup"]
    assert (su["tpe"]["current"], su["tpe"]["version"], su["tpe-v3"]["current"], su["tpe-v3"]["version"]) == (
        True, 4, False, 3)
    md = bt.render(res)
    assert "has not been run" not in md
    assert ("tpe-v3 ran under an earlier count (sampler version 3: a third of the trials of 1x length that fit, at "
            "least 3), rows of their own, never averaged with the current rule's studies; tpe ran under the current "
            "rule (at most a third of the trials that fit at the space's expected length") in md
    assert "| tpe-v3 | 2 |" in md and "| tpe | 1 |" in md
    assert "Rows named `tpe-v3`: TPE studies stored under an earlier start-up count" in md
    # only the old rule stored: said so, from the data
    md3 = bt.render(results_of(sts[:-1]))
    assert "has not been run on this dataset" in md3
    # a budget that holds one trial of the expected length (banking77-77's): said in the singular
    b77 = {**SUBSET, "n_labels": 77, "step": 1, "trial_steps": 180, "budget": "40000ex"}
    kw = dict(batch=32, trial=180, subset=b77, dataset="banking77-77", budget="40000ex")
    md77 = bt.render(results_of([study("protocol", 0, [(180, 0.8, 0.8)], **kw),
                                 study("tpe", 0, [(180, 0.8, 0.8)] * 3, trail=old_said, version=3, **kw)]))
    assert "1 trial fits here, 0 start-up" in md77 and "1 trials" not in md77


def test_stored_studies_of_an_earlier_start_up_count_are_loaded_under_their_label_and_kept_on_a_rerun(
        tmp_path, monkeypatch):
    """A version-3 TPE study is loaded as 'tpe-v3' (not stale, not 'tpe'); a run of the current version that writes its
    file first moves it aside, so both stay rendered; other older studies stay stale."""
    import json

    monkeypatch.setattr(bt, "STUDIES", tmp_path)
    said = ["[tpe] 4 random start-up trials before TPE's model guides -> sample"]
    v3 = study("tpe", 3, [(TRIAL, 0.7, 0.7)] * 5, trail=said, version=3)
    old_random = study("random", 3, [(TRIAL, 0.7, 0.7)] * 5, version=1)
    path = tmp_path / "banking77-20-tpe-3.json"
    path.write_text(json.dumps(v3))
    (tmp_path / "banking77-20-random-3.json").write_text(json.dumps(old_random))
    stale: list[str] = []
    got = bt.load_studies(stale)
    assert set(got) == {"banking77-20/tpe-v3/3"} and stale == ["banking77-20/random/3"]
    assert got["banking77-20/tpe-v3/3"]["strategy"] == "tpe-v3" and got["banking77-20/tpe-v3/3"]["sampler"] == "tpe"
    kept = bt.keep_earlier(path)
    assert kept == tmp_path / "banking77-20-tpe-v3-3.json" and not path.exists()
    path.write_text(json.dumps(study("tpe", 3, [(TRIAL, 0.7, 0.7)] * 4)))  # the current version's run
    assert bt.keep_earlier(path) is None and path.exists()  # a current study is simply replaced by a rerun
    assert set(bt.load_studies()) == {"banking77-20/tpe-v3/3", "banking77-20/tpe/3"}


def test_the_compute_ratio_is_rendered_in_wall_time_beside_the_training_examples():
    """'2.00x' and '4.00x vs tpe' were in training examples only; the protocol runs more trials for its examples, each
    paying uncharged evaluation and set-up, so in wall time the lead is smaller (banking77-20: ~303 s at 50% against
    the yardsticks' 321-375 s). The targets table now gives the wall-time ratio beside it, from the stored curves."""
    proto = study("protocol", 0, [(TRIAL, 0.7, 0.7), (TRIAL, 0.8, 0.8)] + [(TRIAL, 0.75, 0.75)] * 10, wall_s=400.0)
    for i, row in enumerate(proto["curve"]):
        row["wall_s_cum"] = 30.0 * (i + 1)
    rnd = study("random", 0, [(2 * TRIAL, 0.6, 0.6), (8 * TRIAL, 0.85, 0.8)], wall_s=130.0)
    for row, wall in zip(rnd["curve"], (100.0, 120.0)):
        row["wall_s_cum"] = wall
    other = {**SUBSET, "source": "clinc150", "step": 7}  # the same trial on another dataset, slower that day
    clinc = [study("protocol", 0, [(TRIAL, 0.7, 0.7)], dataset="clinc150-20", subset=other),
             study("random", 0, [(TRIAL, 0.7, 0.7)] * 2, wall_s=100.0, dataset="clinc150-20", subset=other)]
    res = results_of([proto, rnd, *clinc])
    t = res["datasets"]["banking77-20"]["targets"]["random"]
    # the protocol's pick so far reaches random's final 0.8 with its 2nd trial (1,480 examples: 15% of the budget)
    assert t["ratio"] == pytest.approx(1 / 0.15)
    assert (t["ours_wall_s"], t["theirs_wall_s"], t["wall_ratio"]) == (60.0, 120.0, pytest.approx(2.0))
    assert bt.wall_at(proto, 0.15) == 60.0 and bt.wall_at(proto, 0.05) is None
    md = bt.render(res)
    assert "| 6.67x | 2.00x (120 s / 60 s) |" in md and bt.WALL_RATIO in md
    assert "compute ratio (training examples) | the same in wall time" in md
    assert ("random's trials (47 steps x batch 16 = 740 examples, 1-8x drawn alike) took 65 s a trial on banking77-20 "
            "and 50 s a trial on clinc150-20") in md
