"""Curve features: values on hand-computable histories, and missing signals named instead of crashing."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loratune.features import COMPARE_FEATURES, FEATURES, NOT_APPLICABLE, compute_features, format_value

import synth_runs as s

LABELS = [f"c{i}" for i in range(10)]


def _pts(rows):
    """rows of (step, epoch, train_loss, val_loss, val_f1) -> eval points (train loss absent at step 0)."""
    out = []
    for step, epoch, tl, vl, vf in rows:
        p = {"step": step, "epoch": epoch, "val/loss": vl, "val/macro_f1": vf, "val/n": 400}
        if step > 0:
            p["train/loss"] = tl
        out.append(p)
    return out


HAND = _pts([
    (0, 0.0, None, 2.0, 0.10),
    (10, 0.5, 1.6, 1.5, 0.40),
    (20, 1.0, 1.2, 1.0, 0.60),
    (30, 1.5, 1.0, 1.1, 0.55),
    (40, 2.0, 0.8, 1.2, 0.58),
])


def test_catalogue_is_documented_and_every_feature_is_produced():
    f = compute_features(HAND)
    assert list(f.values) == list(FEATURES)
    for name, spec in {**FEATURES, **COMPARE_FEATURES}.items():
        assert spec.doc and "{}" in spec.phrase, name
    for name, v in f.values.items():
        assert (v is None) == (name in f.missing), name


def test_hand_computed_values():
    f = compute_features(HAND)
    assert f["steps"] == 40 and f["epochs"] == 2.0 and f["n_eval_points"] == 5
    assert f["train_loss_start"] == 1.6  # no train/loss_first: the first window mean
    assert f["train_loss_final"] == 0.8
    assert f["train_loss_drop"] == pytest.approx(0.5)
    assert f["train_loss_final_over_start"] == pytest.approx(0.5)
    # second half = steps 20, 30, 40 at fractions .5, .75, 1 with losses 1.2, 1.0, 0.8: a line, slope -0.8/run
    assert f["train_loss_late_drop"] == pytest.approx((1.2 - 0.8) / 1.2)
    assert f["train_loss_late_slope"] == pytest.approx(-0.8 / 1.6)
    assert f["train_loss_rise_share"] == 0.0
    assert f["train_loss_max_rise"] == 0.0
    assert f["val_loss_min"] == 1.0 and f["val_loss_final"] == 1.2
    assert f["val_loss_drop"] == pytest.approx(0.5)
    assert f["val_loss_rise"] == pytest.approx(0.2)
    assert f["val_loss_min_fraction"] == pytest.approx(0.5)
    assert f["val_loss_late_drop"] == pytest.approx((1.0 - 1.2) / 1.0)
    assert f["val_loss_late_share"] == pytest.approx((1.0 - 1.2) / (2.0 - 1.2))
    # val loss moves: -0.5, -0.5, +0.1, +0.1 -> 0.2 up of 1.2 total
    assert f["val_loss_rise_share"] == pytest.approx(0.2 / 1.2)
    assert f["val_metric_best"] == 0.6 and f["val_metric_final"] == 0.58
    assert f["val_metric_gain"] == pytest.approx(0.5)
    assert f["val_metric_final_drop"] == pytest.approx(0.02)
    assert f["best_step_fraction"] == pytest.approx(0.5)
    assert f["val_metric_max_drop"] == pytest.approx(0.05)
    assert f["val_metric_drops"] == pytest.approx(0.05)
    q = (0.58 * 400 + 1) / 402
    se = math.sqrt(q * (1 - q) / 400)
    assert f["val_metric_se"] == pytest.approx(se)
    assert f["val_metric_max_drop_se"] == pytest.approx(0.05 / se)
    # last third = step 30, 40 (fraction > 2/3): max .58 vs max before .60
    assert f["val_metric_late_gain"] == pytest.approx(-0.02)
    assert f["still_improving"] == 0.0
    # second-half epochs 1, 1.5, 2 with metric .60, .55, .58: OLS slope
    assert f["val_metric_gain_per_epoch_late"] == pytest.approx(-0.02)
    assert f["nonfinite_values"] == 0


def test_train_loss_start_prefers_the_first_step_loss():
    pts = [dict(p) for p in HAND]
    pts[1]["train/loss_first"] = 2.3
    f = compute_features(pts)
    assert f["train_loss_start"] == 2.3
    assert f["train_loss_drop"] == pytest.approx((2.3 - 0.8) / 2.3)


def test_plateau_fraction_early_for_fast_then_flat_and_late_for_linear():
    fast = compute_features(s.underfit())
    lin = compute_features(s.undertrained())
    assert fast["train_loss_plateau_fraction"] <= 0.3
    assert lin["train_loss_plateau_fraction"] >= 0.8
    flat = compute_features(s.make_history(train_loss=lambda f: 2.0, val_loss=lambda f: 2.0))
    assert flat["train_loss_plateau_fraction"] == 0.0


def test_val_loss_late_share_separates_steady_from_plateaued():
    assert compute_features(s.lr_too_small())["val_loss_late_share"] == pytest.approx(0.5, abs=0.05)
    assert compute_features(s.underfit())["val_loss_late_share"] < 0.05


def test_chance_level_and_collapse_share():
    f = compute_features(s.collapsed(), {"labels": LABELS})
    assert f["n_classes"] == 10
    assert f["train_loss_vs_chance"] == pytest.approx(1.02)
    assert f["val_pred_top_share"] == pytest.approx(1.0)
    assert f["val_recall_zero_share"] == pytest.approx(0.9)
    healthy = compute_features(s.healthy(), {"labels": LABELS})
    assert healthy["train_loss_vs_chance"] == pytest.approx(0.1, abs=0.01)
    assert healthy["val_pred_top_share"] is None  # no per-class keys
    assert "per-class" in healthy.missing["val_pred_top_share"]


def test_multi_label_has_no_chance_level():
    pts = [{**p, "val/subset_accuracy": 0.5} for p in HAND]
    f = compute_features(pts, {"labels": LABELS, "task": "multi_label"})
    assert f["train_loss_vs_chance"] is None
    assert "multi-label" in f.missing["train_loss_vs_chance"]


def test_the_metric_is_the_runs_objective_when_its_record_names_one():
    # macro-F1 rises to the end while the objective (subset accuracy) peaks at step 20 and falls
    subset = {0: 0.0, 10: 0.40, 20: 0.56, 30: 0.45, 40: 0.375}
    pts = [{**p, "val/subset_accuracy": subset[p["step"]], "val/n": 32} for p in HAND]
    for p, f1 in zip(pts, (0.10, 0.40, 0.50, 0.60, 0.65)):
        p["val/macro_f1"] = f1
    meta = {"labels": LABELS, "task": "multi_label", "objective": "val/subset_accuracy"}
    f = compute_features(pts, meta)
    assert f.details["val_metric"] == "val/subset_accuracy"
    assert f["val_metric_best"] == pytest.approx(0.56) and f["val_metric_final"] == pytest.approx(0.375)
    assert f["best_step_fraction"] == pytest.approx(0.5)
    assert f["val_metric_final_drop"] == pytest.approx(0.185)
    q = (0.375 * 32 + 1) / 34  # the binomial SE of subset accuracy on the 32 val rows
    assert f["val_metric_se"] == pytest.approx(math.sqrt(q * (1 - q) / 32))
    # without an objective (or one the history lacks): the first of METRIC_KEYS that moved, as before
    assert compute_features(pts, {**meta, "objective": None}).details["val_metric"] == "val/macro_f1"
    assert compute_features(pts, {**meta, "objective": "val/loss"}).details["val_metric"] == "val/macro_f1"


def test_oscillation_features():
    f = compute_features(s.oscillating())
    assert f["train_loss_rise_share"] == pytest.approx(0.5, abs=0.1)
    assert f["train_loss_max_rise"] > 0.3
    assert f["val_metric_max_drop"] == pytest.approx(0.24, abs=1e-6)
    smooth = compute_features(s.healthy())
    assert smooth["train_loss_max_rise"] == 0.0 and smooth["val_metric_max_drop"] == 0.0


def test_train_loss_cv_is_the_median_window_spread():
    f = compute_features(s.healthy(loss_std=0.2))
    assert f["train_loss_cv"] == pytest.approx(0.2)
    assert compute_features(s.healthy(loss_std=None))["train_loss_cv"] is None


def test_gaps_use_train_eval_and_fall_back_for_loss():
    f = compute_features(s.overfit())
    assert f["gap_f1"] == pytest.approx(1.0 - 0.6, abs=1e-3)
    assert f["gap_loss"] == pytest.approx(0.7 * math.log(10) - 0.005, abs=0.01)
    assert f.details["gap_loss_train_key"] == "train/loss"
    pts = s.make_history(train_loss=lambda f: 1.0, val_loss=lambda f: 1.5, val_f1=lambda f: 0.5,
                         train_eval_loss=lambda f: 0.9)
    assert compute_features(pts)["gap_loss"] == pytest.approx(0.6)
    assert compute_features(HAND)["gap_f1"] is None
    assert "train_eval" in compute_features(HAND).missing["gap_f1"]


def test_nonfinite_values_counted_from_nulls_and_nans():
    pts = [dict(p) for p in HAND]
    pts[3]["train/loss"] = None
    pts[4]["val/loss"] = float("nan")
    pts[4]["train/loss"] = float("inf")
    f = compute_features(pts)
    assert f["nonfinite_values"] == 3
    assert {(b["step"], b["key"]) for b in f.details["nonfinite"]} == {(30, "train/loss"), (40, "val/loss"),
                                                                        (40, "train/loss")}
    assert f["train_loss_final"] == 1.2  # non-finite values leave the curves


def test_status_diverged_from_run_json():
    assert compute_features(HAND, {"status": "diverged"})["status_diverged"] == 1.0
    assert compute_features(HAND, {"status": "completed"})["status_diverged"] == 0.0
    assert compute_features(HAND)["status_diverged"] is None


def _per_class_point(step, recalls, supports, te_recalls=None, pairs=None):
    p = {"step": step, "epoch": step / 10, "val/macro_f1": sum(recalls.values()) / len(recalls), "val/n": 100}
    for c, r in recalls.items():
        p[f"val/recall/{c}"] = r
        p[f"val/support/{c}"] = supports[c]
        p[f"val/precision/{c}"] = 0.9 if r > 0 else 0.0
    for c, r in (te_recalls or {}).items():
        p[f"train_eval/recall/{c}"] = r
    if pairs is not None:
        p["val/confused_pairs"] = pairs
    return p


def test_per_class_recall_spread_collapse_and_class_gap():
    sup = {"a": 10, "b": 10, "c": 10, "d": 10, "e": 0}
    pts = [
        _per_class_point(0, {"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.1, "e": 0.0}, sup),
        _per_class_point(10, {"a": 0.9, "b": 0.8, "c": 0.6, "d": 0.2, "e": 0.0}, sup),
        _per_class_point(20, {"a": 1.0, "b": 0.8, "c": 0.2, "d": 0.0, "e": 0.0}, sup,
                         te_recalls={"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5}),
    ]
    f = compute_features(pts, {"labels": list("abcde")})
    # class e has no val support: left out
    assert f["val_recall_min"] == 0.0
    assert f["val_recall_std"] == pytest.approx(math.sqrt(((0.5) ** 2 + 0.3 ** 2 + 0.3 ** 2 + 0.5 ** 2) / 4))
    assert f["val_recall_zero_share"] == pytest.approx(0.25)
    assert f["val_recall_collapsed_share"] == pytest.approx(0.25)  # c: best .6 -> .2 (d never reached .5)
    assert f.details["collapsed_classes"] == ["c"]
    assert f["class_gap_max"] == pytest.approx(0.8)
    assert f["class_gap_mean"] == pytest.approx((0 + 0.2 + 0.8 + 0.5) / 4)


def test_tail_and_head_recall_need_label_counts_and_imbalance():
    recalls = {c: r for c, r in zip("abcdefgh", [0.9, 0.9, 0.8, 0.8, 0.5, 0.4, 0.1, 0.0])}
    sup = {c: 10 for c in recalls}
    pts = [_per_class_point(0, {c: 0.1 for c in recalls}, sup), _per_class_point(10, recalls, sup)]
    counts = dict(zip("abcdefgh", [100, 100, 80, 80, 40, 30, 5, 5]))
    f = compute_features(pts, {"labels": list(recalls), "label_counts": {"train": counts}})
    assert f["tail_recall"] == pytest.approx(0.05)  # g, h: under LONG_TAIL_COUNT (20) rows
    assert f["head_recall"] == pytest.approx(4.3 / 6)  # a..f: the rest
    assert f["tail_head_recall_gap"] == pytest.approx(4.3 / 6 - 0.05)
    assert f["train_examples_per_class"] == pytest.approx(55.0)
    assert f["tail_head_count_ratio"] == pytest.approx(16.0)  # median 80 / median 5
    assert f.details["tail_classes"] == ["g", "h"]
    # no class under 20 rows: no long tail, whatever the spread (not "missing, log it": it does not apply)
    for counts in ({c: 20 for c in recalls}, dict(zip("abcdefgh", [400, 400, 300, 240, 180, 120, 110, 100]))):
        even = compute_features(pts, {"labels": list(recalls), "label_counts": {"train": counts}})
        assert even["tail_head_count_ratio"] is None and even["tail_recall"] is None
        assert even.missing["tail_recall"].startswith(NOT_APPLICABLE) and "under 20 training rows" in \
            even.missing["tail_recall"]
    none = compute_features(pts, {"labels": list(recalls)})
    assert "label_counts" in none.missing["tail_recall"]


def test_confused_pairs_persistence_and_symmetry():
    sup = {"a": 10, "b": 10, "c": 10}
    r = {"a": 0.5, "b": 0.5, "c": 0.9}
    p0 = _per_class_point(0, r, sup, pairs=[{"true": "c", "pred": "a", "count": 9}])
    p1 = _per_class_point(10, r, sup, pairs=[{"true": "a", "pred": "b", "count": 5},
                                             {"true": "b", "pred": "a", "count": 4},
                                             {"true": "c", "pred": "b", "count": 4}])
    p2 = _per_class_point(20, r, sup, pairs=[{"true": "a", "pred": "b", "count": 5},
                                             {"true": "b", "pred": "a", "count": 2},
                                             {"true": "c", "pred": "b", "count": 2}])
    f = compute_features([p0, p1, p2], {"labels": list("abc")})
    assert f["confused_top_count"] == 5
    assert f["confused_top_rate"] == pytest.approx(0.5)
    # reference = first eval after step 0; a->b 5>=.75*5 persists, b->a 2 < .75*4 improved, c->b 2 < 3 improved
    assert f.details["confused_pairs_reference_step"] == 10
    assert f["confused_pairs_persist_share"] == pytest.approx(1 / 3)
    assert f["confused_symmetric_pairs"] == 1.0
    only_one = compute_features([p2], {"labels": list("abc")})
    assert only_one["confused_pairs_persist_share"] is None


def test_train_symmetric_pairs_from_train_eval():
    pts = [dict(p) for p in HAND]
    pts[-1]["train_eval/confused_pairs"] = [{"true": "x", "pred": "y", "count": 3},
                                            {"true": "y", "pred": "x", "count": 2},
                                            {"true": "x", "pred": "z", "count": 5}]
    assert compute_features(pts)["train_confused_symmetric_pairs"] == 1.0
    assert compute_features(HAND)["train_confused_symmetric_pairs"] is None


@pytest.mark.parametrize("points", [[], [{"epoch": 1.0}], [{"step": 0}], [{"step": 0, "val/loss": 1.0}],
                                    [{"step": 5, "train/loss": 0.0}], [{"step": 0, "val/macro_f1": 0.5}],
                                    [{"step": 3, "train/loss": None, "val/loss": None}]])
def test_thin_histories_never_crash_and_name_what_is_missing(points):
    f = compute_features(points)
    assert set(f.values) == set(FEATURES)
    assert all(f.missing[n] for n, v in f.values.items() if v is None)


def test_format_value_units():
    assert format_value("fraction", 0.031) == "3.1%"
    assert format_value("points", 0.5) == "0.500"
    assert format_value("ratio", 1.5) == "1.50x"
    assert format_value("count", 3.0) == "3"
    assert format_value("flag", 1.0) == "yes"
    assert format_value("se", 2.04) == "2.0 SE"
    assert format_value("points", None) == "missing"


finite = st.floats(min_value=1e-3, max_value=10.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(finite, finite, st.floats(0, 1)), min_size=1, max_size=25),
       st.sampled_from([None, 50, 1000]))
def test_any_history_gives_finite_or_missing_values(rows, val_n):
    pts = []
    for i, (tl, vl, vf) in enumerate(rows):
        p = {"step": i * 7, "epoch": i * 0.3, "val/loss": vl, "val/macro_f1": vf}
        if i:
            p["train/loss"] = tl
        if val_n:
            p["val/n"] = val_n
        pts.append(p)
    f = compute_features(pts, {"labels": LABELS})
    for name, v in f.values.items():
        assert v is None or math.isfinite(v), name
    for name in ("best_step_fraction", "val_loss_min_fraction", "train_loss_plateau_fraction"):
        v = f.values[name]
        assert v is None or 0.0 <= v <= 1.0


def test_late_share_is_measured_in_learning_rate_time():
    """Under a linear decay a steady learner (loss falling in proportion to lr) slows down per step; in
    learning-rate time its fall is still half in the second half, so it is not mistaken for a plateau."""
    pts = []
    for i in range(11):
        f = i / 10
        lr = 1e-3 * (1 - f)
        progress = f - f * f / 2  # integral of the lr, normalised to 0.5 at f = 1
        pts.append({"step": i * 10, "lr": lr, "val/loss": 2.0 - 2.0 * progress})
    f = compute_features(pts)
    assert f.details["late_share_axis"].startswith("learning-rate time")
    assert f["val_loss_late_share"] == pytest.approx(0.5, abs=0.02)
    no_lr = compute_features([{k: v for k, v in p.items() if k != "lr"} for p in pts])
    assert no_lr.details["late_share_axis"].startswith("steps")
    assert no_lr["val_loss_late_share"] == pytest.approx(0.25, abs=0.01)


# ---- which points are evaluations; the largest learning rate logged -------------------------------------------

def _trainer_state(*, steps: int, log_every: int, evals: list[int], lr, end: bool = True) -> dict:
    """A Trainer's trainer_state.json: a train log every `log_every` steps with the rate `lr(step)`, an eval entry at
    each step of `evals`, and (with `end`) the end-of-training summary, which carries `train_loss` but no eval."""
    log = [{"step": s, "epoch": s / 100, "loss": 2.0 - s / steps, "learning_rate": lr(s)}
           for s in range(log_every, steps + 1, log_every)]
    log += [{"step": s, "epoch": s / 100, "eval_loss": 2.1 - s / steps} for s in evals]
    if end:
        log.append({"step": steps, "epoch": steps / 100, "train_runtime": 60.0, "train_loss": 1.5,
                    "total_flos": 1.0})
    return {"global_step": steps, "max_steps": steps, "log_history": sorted(log, key=lambda e: e["step"])}


@pytest.mark.parametrize("evals, points, n_evals", [
    ([50, 100, 150], 4, 3),  # training went on to step 200 after the last eval: a 4th point, train-only, no eval
    ([50, 100, 150, 200], 4, 4),  # near miss: the last eval at the last step, 4 points that are all evals
    ([], 20, 0),  # no eval logged: every train log is a point, and none is an eval
])
def test_only_points_that_carry_an_evaluation_count_as_eval_points(tmp_path, evals, points, n_evals):
    from loratune.history_io import history_from_trainer_state

    run = history_from_trainer_state(_trainer_state(steps=200, log_every=10, evals=evals, lr=lambda s: 1e-4),
                                     tmp_path, name="run")
    assert len(run.points) == points
    f = compute_features(run.points, run.meta)
    assert f["n_eval_points"] == n_evals
    assert f["steps"] == 200  # the train-only point still ends the run: run fractions are of step 200


def test_an_eval_point_is_one_with_a_scored_split_even_a_non_finite_one():
    pts = [{"step": 0, "val/loss": 2.0, "val/macro_f1": 0.1},  # loratune's step-0 point: val keys only
           {"step": 10, "lr": 1e-4, "train/loss": 1.5, "train/loss_std": 0.1, "val/loss": None},  # eval ran, gave NaN
           {"step": 20, "lr": 1e-4, "train/loss": 1.2, "train_eval/loss": 1.1},
           {"step": 30, "lr": 1e-4, "train/loss": 1.1, "train/grad_norm": 0.5}]  # train log only
    assert compute_features(pts)["n_eval_points"] == 3


@pytest.mark.parametrize("warmup, peak", [
    (25, 2e-4),  # warm-up to 2e-4 at step 25, then a linear decay: evals at 50.. see at most 1.71e-4
    (0, 2e-4 * (1 - 4 / 200)),  # no warm-up: the largest rate logged is the first log's (step 5), not the set 2e-4
])
def test_peak_lr_is_the_largest_rate_logged_not_the_largest_at_an_eval(tmp_path, warmup, peak):
    from loratune.history_io import history_from_trainer_state

    def lr(s):  # the rate step s used (the Trainer logs it after s - 1 scheduler steps)
        return 2e-4 * s / warmup if s <= warmup else 2e-4 * (1 - (s - 1 - warmup) / (200 - warmup))

    run = history_from_trainer_state(_trainer_state(steps=200, log_every=5, evals=[50, 100, 150, 200], lr=lr),
                                     tmp_path, name="run")
    at_evals = max(p["lr"] for p in run.points)
    assert at_evals < 0.99 * peak  # the reading this replaces
    f = compute_features(run.points, run.meta)
    assert f["peak_lr"] == pytest.approx(peak, rel=1e-12)


def test_peak_lr_falls_back_to_the_config_only_when_no_rate_is_logged():
    pts = [{"step": s, "val/loss": 2.0 - s / 100, "train/loss": 2.1 - s / 100} for s in (10, 20, 30)]
    config = {"train": {"learning_rate": 3e-4}}
    f = compute_features(pts, None, config)
    assert f["peak_lr"] == 3e-4 and "config" in f.details["peak_lr_source"]
    logged = compute_features([{**p, "lr": lr} for p, lr in zip(pts, (1e-4, 2e-4, 1.5e-4))], None, config)
    assert logged["peak_lr"] == 2e-4  # logged: the config's 3e-4 is not read
    assert logged.details["peak_lr_source"] == "the largest logged learning rate"
    none = compute_features(pts)
    assert none["peak_lr"] is None and "no `lr`" in none.missing["peak_lr"]


@pytest.mark.parametrize("decay_steps, schedule, fact", [
    # khuda-3rd (F): a 1e-4 linear decay over 2682 steps, logged every 10 steps to step 200: no shape fits so short
    # a stretch, so the fact is the largest logged value, as logged (9.966e-5), the reading peak_lr makes
    (2682, "decaying", 1e-4 * (1 - 9 / 2682)),
    # near miss: the same decay over the 200 steps logged: a linear fit recovers the set 1e-4, a different quantity
    # (the schedule's value at step 0), named as such; peak_lr is still the largest logged rate
    (200, "linear", 1e-4),
])
def test_the_learning_rate_fact_of_an_unfitted_schedule_is_the_largest_logged_value(tmp_path, decay_steps, schedule,
                                                                                   fact):
    from loratune.history_io import history_from_trainer_state

    state = _trainer_state(steps=200, log_every=10, evals=list(range(10, 201, 10)),
                           lr=lambda s: 1e-4 * (1 - (s - 1) / decay_steps))
    run = history_from_trainer_state(state, tmp_path, name="run")
    assert run.facts["lr_schedule"].value == schedule
    assert run.facts["learning_rate"].value == pytest.approx(fact, rel=1e-9)
    f = compute_features(run.points, run.meta)
    assert f["peak_lr"] == pytest.approx(1e-4 * (1 - 9 / decay_steps), rel=1e-12)
    if schedule == "decaying":
        assert run.facts["learning_rate"].source.endswith("largest logged value")
        assert run.facts["learning_rate"].value == f["peak_lr"]  # one reading, shown and ruled on


def test_repeats_are_counted_to_the_logged_precision():
    """A frozen model's float32 eval loss moves by an ulp (2.3025851, 2.3025853, 2.3025849): exact equality read 4 of
    10 repeats where there were 10, and "collapsed" turned into "lr-too-small". The metric's repeats likewise."""
    f32 = [2.3025851249694824, 2.3025853633880615, 2.3025848865509033] * 3 + [2.3025851249694824]
    acc = [0.5 + 5e-8 * (-1) ** i for i in range(10)]
    f = compute_features(_pts([(100 * (i + 1), i + 1.0, 2.3026, vl, a) for i, (vl, a) in enumerate(zip(f32, acc))]))
    assert f["val_loss_repeats"] == 10 and f["val_loss_repeat_share"] == 1.0
    assert f["val_metric_repeat_share"] == 1.0
    # a loss that moves by a ten-thousandth of itself, and an accuracy by one example in 1,000, are not repeats
    moving = [2.3 * (1 - 1e-4 * i) for i in range(10)]
    steps = [0.5 + (i % 2) / 1000 for i in range(10)]
    f = compute_features(_pts([(100 * (i + 1), i + 1.0, 2.3026, vl, a) for i, (vl, a) in enumerate(zip(moving, steps))]))
    assert f["val_loss_repeats"] == 1 and f["val_loss_repeat_share"] == 0.1
    assert f["val_metric_repeat_share"] == 0.5


def test_a_convex_late_fall_is_not_read_as_a_fall_of_100_percent():
    """Flat at 2.3 to mid-run, then 0.1 + 2.2 exp(-10 (f - 0.5)): the second half's least-squares line ends below 0,
    and a loss that ended at 0.124 read "fell 100.0% over the last half". The line's end is clamped at the lowest
    late loss logged."""
    rows = [(s, 2.3 if s <= 500 else round(0.1 + 2.2 * math.exp(-10 * (s / 1000 - 0.5)), 4)) for s in range(10, 1001, 10)]
    f = compute_features([{"step": s, "train/loss": v} for s, v in rows])
    late = [(s / 1000, v) for s, v in rows if s >= 500]
    xm, ym = sum(x for x, _ in late) / len(late), sum(y for _, y in late) / len(late)
    b = sum((x - xm) * (y - ym) for x, y in late) / sum((x - xm) ** 2 for x, _ in late)
    y_mid = ym + b * (0.5 - xm)
    assert ym + b * (1.0 - xm) < 0  # the straight line's end: below any loss
    assert f["train_loss_late_drop"] == pytest.approx((y_mid - 0.1148) / y_mid)  # 0.1 + 2.2 exp(-5), the last
    assert f["train_loss_late_drop"] < f["train_loss_drop"] < 1.0


def test_confused_top_rate_tie_goes_to_the_larger_share_of_its_class_whatever_the_names():
    # two pairs tied on count: the first in label order was taken, so renaming the labels changed the rate
    sup = {"a": 10, "b": 4}
    r = {"a": 0.5, "b": 0.5}
    for names in ("ab", "ba"):
        lab = dict(zip("ab", names))
        pairs = sorted([{"true": lab["a"], "pred": lab["b"], "count": 2},
                        {"true": lab["b"], "pred": lab["a"], "count": 2}], key=lambda q: q["true"])
        p = _per_class_point(10, {lab[k]: v for k, v in r.items()}, {lab[k]: v for k, v in sup.items()}, pairs=pairs)
        f = compute_features([p], {"labels": sorted(names)})
        assert f["confused_top_count"] == 2 and f["confused_top_rate"] == pytest.approx(0.5)  # 2 of b's 4


def test_slices_missing_quotes_the_runs_reason():
    pts = [{**p, "val_compound/macro_f1": 0.5} for p in HAND]
    why = "validation has 2 rows; familiar/novel need >= 3"
    f = compute_features(pts, {"slices": {"skipped": {"familiar/novel": why}}})
    assert f["familiar_novel_gap"] is None and f.missing["familiar_novel_gap"] == f"no familiar / novel slices: {why}"
    assert "train.slices off" in compute_features(pts, {}).missing["familiar_novel_gap"]


def test_a_multi_label_run_has_no_confusion_pairs_to_log_and_few_classes_no_tail():
    """diagnose told a loratune multi-label run to 'train with `loratune train`' to get per-class signals: such a run
    never records val/confused_pairs (labels are scored one by one), and a run whose counts and per-class recall
    are recorded for 3 classes cannot split them into tail and head; both are missing as not applicable."""
    sup = {"a": 10, "b": 10, "c": 10}
    pts = [_per_class_point(0, {"a": 0.1, "b": 0.1, "c": 0.1}, sup),
           _per_class_point(10, {"a": 0.9, "b": 0.5, "c": 0.2}, sup)]
    meta = {"labels": ["a", "b", "c", "d"], "task": "multi_label", "label_counts": {"train": dict.fromkeys("abcd", 9)}}
    f = compute_features(pts, meta)
    assert f.missing["confused_top_count"] == NOT_APPLICABLE + "a multi_label run (each label is scored on its own: " \
        "no confusion pairs)"
    assert f.missing["tail_recall"] == NOT_APPLICABLE + "fewer than 4 classes with both train counts and val recall"
    single = compute_features(pts, {"labels": list("abc")})  # a single-label run that could log them: missing
    assert single.missing["confused_top_count"] == "no `val/confused_pairs` in the history"
    assert not single.missing["tail_recall"].startswith(NOT_APPLICABLE)
