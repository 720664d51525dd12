"""The rule table as data: integrity, thresholds and their YAML overrides, and for every rule a firing case plus
near-miss cases (each clause moved just across its threshold) checked against an independent evaluator."""

from __future__ import annotations

import dataclasses
import json
import re
from types import MappingProxyType

import pytest

from loratune.diagnose import evaluate_rule
from loratune.errors import UserError
from loratune.features import COMPARE_FEATURES, FEATURES, CurveFeatures
from loratune.rules import (RULES, THRESHOLDS, Clause, Cond, catalogue_for, check_table, default_thresholds,
                            describe, load_thresholds, resolve_thresholds, rule_by_id, rule_to_data)

ISSUE_IDS = {"underfit-capacity", "overfit-capacity", "lr-too-small", "lr-too-large", "diverged", "undertrained",
             "healthy", "confusable-classes-unresolved", "long-tail-collapse", "eval-too-noisy",
             "label-noise-suspected", "capacity-bound", "optimization-bound", "seed-unstable", "alpha-insensitive"}

# A feature vector on which each rule fires (values for the features the rule names).
FIRING = {
    "diverged": dict(nonfinite_values=2, status_diverged=0, train_loss_final_over_start=0.5, train_loss_final=0.5,
                     train_loss_vs_chance=0.3, train_loss_logged=1, val_loss_final_over_start=2.0, val_loss_final=0.8,
                     val_metric_final_vs_start=0.3),
    "collapsed": dict(peak_lr=1e-4, lora_adapter=1, classifier=1, val_pred_top_share=0.95, train_loss_vs_chance=1.0,
                      still_improving=0,
                      val_metric_logged=1, n_eval_points=10, val_metric_repeat_share=0.9, val_metric_gain=0.0,
                      train_loss_final_over_start=1.0, val_loss_drop=0.01, val_loss_rise_share=0.3,
                      val_loss_repeats=3, val_loss_repeat_share=0.6, val_loss_vs_chance=0.9),
    "lr-too-large": dict(train_loss_peak_vs_chance=1.2, train_loss_spike_vs_chance=1.2, val_loss_at_spike_vs_chance=0.5,
                         val_metric_at_spike_drop_se=0.0, peak_lr=1e-3, val_metric_gain=0.2,
                         val_pred_top_share=0.95, train_loss_vs_chance=1.0,
                         train_loss_max_rise=0.3,
                         val_loss_rise_share=0.3, val_metric_max_drop=0.01, val_metric_max_drop_se=0.5,
                         val_loss_rise_noise=0.5, train_loss_rebound=0.05, train_loss_min_fraction=0.9,
                         val_loss_rise=0.05, train_loss_rise_after_val_min=0.0, classifier=1, n_eval_points=10,
                         val_metric_repeat_share=0.2, train_loss_final_over_start=0.5, train_loss_drop=0.5,
                         train_loss_fall_after_val_min=0.2, val_loss_max_swing=0.2, val_loss_min_vs_reference=0.9,
                         val_metric_room=0.5, val_loss_logged=1, val_loss_drop_noise=1.0,
                         val_loss_min_fraction=0.5, val_loss_final=1.0, val_metric_logged=1,
                         val_metric_final_vs_start=0.0, val_metric_gain_se=0.5, val_metric_final_drop_se=0.0,
                         val_loss_vs_chance=1.0, full_finetune=0, val_loss_drop=0.2, val_loss_late_share=0.05,
                         train_loss_late_drop=0.02, train_eval_metric_final=0.4, gap_f1=0.03, val_metric_best=0.37,
                         val_metric_gain_per_epoch_late=0.001, generative=0, prompt_len_ratio_final=1.0,
                         prompt_capped_share_final=0.0, prompt_familiar_score_final=0.5,
                         prompt_novel_score_final=0.5, val_loss_still_falling=0, still_improving=0),
    "overfit-capacity": dict(train_loss_vs_chance=0.5, train_loss_final_over_start=0.02,
                             train_eval_metric_final=0.9, val_loss_rise=0.3, val_loss_rise_noise=5.0,
                             val_metric_final_drop=0.05, val_metric_final_drop_se=3.0, val_loss_min_fraction=0.6,
                             gap_f1=0.3, generative=0, train_loss_late_drop=0.05, prompt_gap_widening=0.0,
                             prompt_gap_widening_se=0.0, prompt_novel_drift=0.0, prompt_novel_drift_se=0.0,
                             train_perplexity_final=3.0, val_loss_still_falling=1, gap_loss=0.5,
                             train_loss_fall_after_val_min=0.3, train_loss_drop=0.9, val_metric_logged=1,
                             val_metric_best=0.8, val_loss_logged=1, n_eval_points=10, val_loss_rise_held=0.3,
                             val_loss_rise_steady=1, val_loss_rise_trend=0.9, val_loss_late_drop=-0.1,
                             val_loss_rise_held_noise=3.0,
                             still_improving=0, train_loss_untracked=0),
    "underfit-capacity": dict(val_loss_drop=0.2, train_loss_late_drop=0.02, val_loss_late_share=0.05,
                              train_eval_metric_final=0.4, train_loss_vs_chance=0.7, train_loss_final_over_start=0.7,
                              gap_f1=0.03, val_metric_best=0.37, val_metric_gain_per_epoch_late=0.001,
                              peak_lr=1e-4, generative=0, classifier=1, prompt_len_ratio_final=1.0,
                              prompt_capped_share_final=0.0,
                              prompt_familiar_score_final=0.5,
                              prompt_novel_score_final=0.5, full_finetune=0),
    "lr-too-small": dict(val_loss_drop=0.05, first_eval_fraction=0.0, train_loss_runs_to_fit=5.0, train_loss_final_over_start=0.9,
                         val_loss_late_share=0.5, val_loss_rise_share=0.0, val_loss_late_drop=0.02,
                         val_loss_rise=0.0, peak_lr=1e-4, val_metric_best=0.3, val_metric_logged=1,
                         n_eval_points=10, classifier=1, lora=0, lora_adapter=0, train_loss_drop=0.1,
                         val_loss_min_fraction=1.0,
                         train_loss_drop_since_chance=0.1,
                         generative=0, train_loss_drop_after_first_eval=0.1, val_loss_still_falling=1,
                         plan_done_fraction=1.0,
                         val_loss_remaining_noise=5.0, val_loss_remaining_gain=0.1, train_loss_logged=1,
                         val_metric_gain=0.05, full_finetune=0),
    "undertrained": dict(still_improving=1, best_step_fraction=1.0, val_loss_still_falling=0, n_eval_points=10,
                         val_loss_min_fraction=1.0, val_loss_drop=0.5, val_loss_late_drop=0.2,
                         train_loss_late_drop=0.3, val_loss_remaining_gain=0.1, val_loss_rise_noise=0.0,
                         val_metric_logged=1, val_loss_remaining_noise=5.0, val_metric_late_gain_se=3.0,
                         val_loss_final=0.5, plan_done_fraction=1.0, val_metric_best=0.8, full_finetune=0, peak_lr=1e-4,
                         train_loss_final_over_start=0.5, train_loss_untracked=0),
    "healthy": dict(val_metric_gain=0.7, val_loss_drop=0.6, train_loss_drop=0.9, val_loss_rise=0.0,
                    val_loss_rise_noise=0.0, val_metric_final_drop=0.0, val_metric_final_drop_se=0.0,
                    val_loss_min_fraction=1.0, val_metric_logged=1, gap_f1=0.05, generative=0,
                    val_loss_drop_noise=10.0, val_loss_rise_share=0.0, train_loss_late_drop=0.2,
                    val_metric_gain_se=5.0, val_loss_logged=1, best_step_fraction=1.0, val_metric_best=0.9,
                    n_eval_points=10, val_loss_remaining_gain=0.0, train_loss_untracked=0,
                    val_loss_remaining_noise=0.0),
    "confusable-classes-unresolved": dict(confused_top_count=6, confused_top_rate=0.5,
                                          confused_pairs_persist_share=1.0),
    "long-tail-collapse": dict(tail_head_count_ratio=10.0, tail_head_recall_gap=0.6, tail_recall=0.1),
    "novel-phrasing-gap": dict(familiar_novel_gap=0.25, familiar_novel_gap_growth=0.05, familiar_metric_final=0.99),
    "both-slices-low": dict(familiar_metric_final=0.4, novel_metric_final=0.3, full_finetune=0, peak_lr=1e-4),
    "compound-intents-missed": dict(compound_gap=0.4, single_metric_final=0.95),
    "generations-looping": dict(generative=1, prompt_repetition_final=0.4, prompt_repetition_rise=0.3),
    "label-noise-suspected": dict(train_confused_symmetric_pairs=2, train_eval_metric_final=0.85,
                                  train_loss_late_drop=0.01),
    "eval-too-noisy": dict(val_metric_se=0.04),
    "eval-loss-broken": dict(val_loss_nonfinite_evals=6),
    "eval-metric-unmoved": dict(val_metric_logged=1, n_eval_points=6, val_metric_best=0.95, val_metric_gain_se=0.5,
                                val_loss_drop_noise=20.0, val_loss_rise_noise=1.5, val_metric_noise_bound=0.0,
                                val_metric_gain=0.3),
    "seed-unstable": dict(seed_std=0.04),
    "capacity-bound": dict(r_effect_noise=5, r_over_lr_effect=3),
    "optimization-bound": dict(lr_effect_noise=5, lr_over_r_effect=3),
    "update-too-weak": dict(lr_loss_effect=0.01, gap_f1_max=0.2, scale_x2=4.0),
    "alpha-insensitive": dict(alpha_effect_noise=0.3),
    "differences-within-noise": dict(max_effect_noise=1.0, metric_noise=0.03, compared_on_loss=0.0),
    "knobs-not-binding": dict(max_effect_noise=0.5, metric_noise=0.015, min_train_loss_vs_chance=0.1,
                              chance_level_unread=0),
    "runs-never-learned": dict(min_train_loss_vs_chance=0.998, max_peak_lr=1e-6),
}


def features_for(rule, values: dict) -> CurveFeatures:
    cat = catalogue_for(rule)
    full = {n: None for n in cat}
    full.update(values)
    missing = {n: "not given" for n, v in full.items() if v is None}
    return CurveFeatures(MappingProxyType(full), MappingProxyType(missing), MappingProxyType({}))


def truth(node, values: dict, th: dict) -> bool:
    """Independent two-valued evaluator (complete data only)."""
    if isinstance(node, Clause):
        v, t = values[node.feature], th[node.threshold]
        return {"<": v < t, "<=": v <= t, ">": v > t, ">=": v >= t}[node.op]
    results = [truth(i, values, th) for i in node.items]
    return all(results) if node.mode == "all" else any(results)


def just_across(op: str, t: float, passing: bool) -> float:
    """A value a hair from the threshold on the passing or failing side."""
    eps = max(abs(t) * 1e-6, 1e-9)
    below, above = t - eps, t + eps
    if op in ("<", "<="):
        return (below if op == "<" else t) if passing else (t if op == "<" else above)
    return (above if op == ">" else t) if passing else (t if op == ">" else below)


def test_table_is_sound():
    assert check_table() == []


def test_every_single_run_rule_that_raises_rank_carries_the_pair_experiment_caveat():
    # protocol 5: never "raise rank" from one curve alone; one caveat text, said by every such rule
    from loratune.rules import PAIR_CAVEAT
    raising = [r for r in RULES if r.scope != "compare" and "r x2" in r.moves]
    assert {r.id for r in raising} >= {"underfit-capacity", "confusable-classes-unresolved", "both-slices-low",
                                       "compound-intents-missed"}
    assert [r.id for r in raising if PAIR_CAVEAT not in (r.caveat or "")] == []
    assert ISSUE_IDS <= {r.id for r in RULES}
    assert set(FIRING) == {r.id for r in RULES}, "every rule needs a firing case here"


def test_a_full_fine_tune_gets_no_pair_caveat_where_no_full_move_raises_rank(capsys):
    # PAIR_CAVEAT's pair experiment raises a rank a full fine-tune does not have: three class rules gave it verbatim
    from loratune.cli import main
    from loratune.rules import FULL_UNDERFIT_CAVEAT, PAIR_CAVEAT
    for rid in ("confusable-classes-unresolved", "both-slices-low", "compound-intents-missed"):
        r = rule_by_id(rid)
        assert PAIR_CAVEAT in r.caveat and PAIR_CAVEAT in r.caveat_for(None)  # LoRA keeps it
        assert PAIR_CAVEAT not in (r.caveat_for("full") or ""), rid
    assert rule_by_id("confusable-classes-unresolved").caveat_for("full") is None
    assert rule_by_id("both-slices-low").caveat_for("full") == FULL_UNDERFIT_CAVEAT  # its full move is the lr's
    assert rule_by_id("compound-intents-missed").caveat_for("full") == (
        "check the multi-label loss and decoding first (focal or pos_weight loss, tuned thresholds, a cap on labels "
        "per row move this slice more than capacity does)")
    assert rule_by_id("underfit-capacity").caveat_for("full") == rule_by_id("underfit-capacity").full_caveat
    assert not [r.id for r in RULES if PAIR_CAVEAT in (r.caveat_for("full") or "")]
    # a full move that raises rank keeps it (the rule is one place: Rule.caveat_for reads the full moves)
    keeps = dataclasses.replace(rule_by_id("both-slices-low"), full_moves=("r x2",), full_caveat=None)
    assert keeps.caveat_for("full") == PAIR_CAVEAT
    assert main(["rules"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "confusable-classes-unresolved" in text and "caveat (full fine-tune): none" in text


def test_conditions_are_plain_data_and_printable():
    for r in RULES:
        for leaf in r.when.leaves():
            assert isinstance(leaf, Clause)
            assert leaf.feature in catalogue_for(r) and leaf.threshold in THRESHOLDS
        text = describe(r.when)
        assert all(leaf.feature in text and leaf.threshold in text for leaf in r.when.leaves())
        json.dumps(rule_to_data(r))


def test_check_table_reports_problems():
    bad = (RULES[0].__class__(id="x", scope="curve", when=Cond("all", (Clause("no_such", "<", "nope"),
                                                                         Clause("val_metric_se", "~", "flag_on"))),
                              verdict="", knob_class="vibes", moves=(), priority=1, suppresses=("ghost",)),)
    problems = " | ".join(check_table(bad))
    for part in ("unknown feature no_such", "unknown threshold nope", "unknown op ~", "unknown knob class vibes",
                 "suppresses unknown rule ghost", "val_metric_se (points) vs flag_on (flag)"):
        assert part in problems


def test_check_table_refuses_an_adapter_knob_among_a_rules_full_moves():
    # full_moves are a full fine-tune's: a rank, target or lora_dropout move there names a knob it does not have
    bad = (dataclasses.replace(rule_by_id("overfit-capacity"), full_moves=("weight_decay 0.1", "r /2", "LoRA+")),)
    problems = check_table(bad)
    assert [p for p in problems if "full move" in p] == [
        "overfit-capacity: full move 'r /2' turns an adapter-only knob (a full fine-tune has none)",
        "overfit-capacity: full move 'LoRA+' turns an adapter-only knob (a full fine-tune has none)"], problems
    assert not [p for p in check_table() if "full move" in p]


def test_rules_lists_a_full_fine_tunes_moves_and_the_noise_floor_from_its_constant(capsys):
    # the text table showed `moves` only (overfit-capacity's weight_decay 0.1 for a full run was in --json alone),
    # and preference_start_ratio_max's doc wrote the val-loss noise floor as a literal "0.2%"
    from loratune.cli import main
    from loratune.features import VAL_LOSS_NOISE_FLOOR

    assert main(["rules"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "moves: r /2, -ffn, lora_dropout up full fine-tune moves: weight_decay 0.1" in text
    assert "full fine-tune moves: learning_rate x2; verdict: underfit: the loss fell" in text
    assert ("full fine-tune moves: none for a full fine-tune (this rule's moves, r x2, +ffn, turn adapter knobs it "
            "does not have)") in text
    doc = THRESHOLDS["preference_start_ratio_max"].doc
    assert f"VAL_LOSS_NOISE_FLOOR, {VAL_LOSS_NOISE_FLOOR:.1%})" in doc
    assert THRESHOLDS["preference_start_ratio_max"].value == 1 + VAL_LOSS_NOISE_FLOOR


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_rule_fires_on_its_case(rule):
    th = default_thresholds()
    values = FIRING[rule.id]
    assert truth(rule.when, values, th)
    out = evaluate_rule(rule, features_for(rule, values), th)
    assert out is not None and hasattr(out, "evidence"), out
    assert not out.tentative and out.missing == ()
    assert {e.feature for e in out.evidence} == set(rule.features())


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_near_misses_follow_the_table(rule):
    """Move each clause's feature a hair across its threshold: the engine fires exactly when the independent
    evaluator says the condition still holds; at least one near-miss per rule must stop it. Values exactly at
    the passing edge keep it firing."""
    th = default_thresholds()
    stopped = 0
    for leaf in rule.when.leaves():
        for passing in (False, True):
            values = dict(FIRING[rule.id])
            values[leaf.feature] = just_across(leaf.op, th[leaf.threshold], passing)
            expect = truth(rule.when, values, th)
            out = evaluate_rule(rule, features_for(rule, values), th)
            fired = out is not None and hasattr(out, "evidence")
            assert fired == expect, (leaf, passing, values)
            stopped += not fired
            if fired:
                ev = next(e for e in out.evidence if e.feature == leaf.feature and e.threshold_name == leaf.threshold
                          and e.op == leaf.op)
                assert ev.passed is passing
    assert stopped >= 1


def test_thin_margins_lower_confidence():
    rule = rule_by_id("eval-too-noisy")
    th = default_thresholds()
    clear = evaluate_rule(rule, features_for(rule, {"val_metric_se": 0.06}), th)
    thin = evaluate_rule(rule, features_for(rule, {"val_metric_se": 0.026}), th)
    assert thin.confidence < clear.confidence == rule.confidence


def test_default_thresholds_and_overrides():
    th = default_thresholds()
    assert th["plateau_late_drop_max"] == 0.1
    assert resolve_thresholds({"plateau_late_drop_max": 0.05})["plateau_late_drop_max"] == 0.05
    with pytest.raises(UserError, match="did you mean plateau_late_drop_max"):
        resolve_thresholds({"plateau_late_drop_mx": 0.05})
    with pytest.raises(UserError, match="allowed: a number"):
        resolve_thresholds({"eval_se_max": "big"})
    with pytest.raises(UserError, match="allowed: a number"):
        resolve_thresholds({"eval_se_max": True})


def test_load_thresholds_from_yaml(tmp_path):
    flat = tmp_path / "t.yaml"
    flat.write_text("eval_se_max: 0.05\noverfit_gap_min: 0.3\n")
    t = load_thresholds(flat)
    assert t["eval_se_max"] == 0.05 and t["overfit_gap_min"] == 0.3 and t["flag_on"] == 0.5
    nested = tmp_path / "n.yaml"
    nested.write_text("thresholds:\n  seed_std_max: 0.01\n")
    assert load_thresholds(nested)["seed_std_max"] == 0.01
    assert load_thresholds(None) == default_thresholds()
    with pytest.raises(UserError, match="does not exist"):
        load_thresholds(tmp_path / "nope.yaml")
    broken = tmp_path / "b.yaml"
    broken.write_text("a: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_thresholds(broken)
    listy = tmp_path / "l.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_thresholds(listy)


def test_every_threshold_is_used_and_documented():
    used = {leaf.threshold for r in RULES for leaf in r.when.leaves()}
    assert used == set(THRESHOLDS)
    assert all(t.doc for t in THRESHOLDS.values())


def test_features_named_by_rules_exist_in_the_right_catalogue():
    for r in RULES:
        cat = COMPARE_FEATURES if r.scope == "compare" else FEATURES
        assert set(r.features()) <= set(cat), r.id


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_the_deciding_route_is_what_made_the_rule_fire(rule):
    """A finding marks the clauses of the route(s) that made it fire: all hold, and no other clause is needed (moving
    any other feature across its threshold, one at a time, leaves the rule firing)."""
    th = default_thresholds()
    values = FIRING[rule.id]
    out = evaluate_rule(rule, features_for(rule, values), th)
    deciding = [e for e in out.evidence if e.decisive]
    assert deciding and all(e.passed for e in deciding)
    needed = {e.feature for e in deciding}
    for e in out.evidence:
        if not e.decisive and e.feature not in needed:
            moved = {**values, e.feature: just_across(e.op, th[e.threshold_name], False)}
            assert truth(rule.when, moved, th), (e.feature, e.op, e.threshold_name)


def test_the_deciding_route_of_a_tentative_finding_is_its_open_clause():
    # all(any(a, b), c) with a and b missing and c holding: the group is open, the rule fires tentatively, and the open
    # clauses are what it rests on beside c; with b checked and failed the group is closed (a route that could be
    # checked failed, so a missing one does not hold it open) and nothing decides
    from loratune.rules import Rule
    rule = Rule(id="t", scope="curve", priority=1, knob_class="optimization", confidence=0.8,
                when=Cond("all", (Cond("any", (Clause("val_loss_drop", ">=", "slow_drop_max", False),
                                               Clause("train_loss_drop", ">=", "slow_drop_max", False))),
                                  Clause("n_eval_points", ">", "few_evals_max", False))),
                verdict="t", moves=(), source="test")
    th = default_thresholds()
    from loratune.diagnose import _decision_path, _evidence

    def deciding(values):
        feats = features_for(rule, values)
        ev = {cl: _evidence(cl, feats, th, catalogue_for(rule)) for cl in rule.when.leaves()}
        return [n.feature for n in _decision_path(rule.when, ev) if isinstance(n, Clause)]

    assert deciding({"val_loss_drop": None, "train_loss_drop": None, "n_eval_points": 10}) == [
        "val_loss_drop", "train_loss_drop", "n_eval_points"]
    assert deciding({"val_loss_drop": None, "train_loss_drop": 0.0, "n_eval_points": 10}) == []
    assert deciding({"val_loss_drop": 0.9, "train_loss_drop": None, "n_eval_points": 10}) == [
        "val_loss_drop", "n_eval_points"]


def _conds(node):
    if isinstance(node, Cond):
        yield node
        for item in node.items:
            yield from _conds(item)


def _top_routes(rule):
    node = rule.when
    return node.items if node.mode == "any" else next(
        (i.items for i in node.items if isinstance(i, Cond) and i.mode == "any"), ())


@pytest.mark.parametrize("rule_id", ["diverged", "collapsed", "lr-too-large", "lr-too-small", "undertrained",
                                     "underfit-capacity", "overfit-capacity", "healthy"])
def test_every_route_of_a_rule_with_alternative_readings_says_what_it_reads(rule_id):
    rule = next(r for r in RULES if r.id == rule_id)
    routes = _top_routes(rule)
    assert len(routes) >= 2 and all(isinstance(r, Cond) and r.why for r in routes)
    assert len({r.why for r in routes}) == len(routes)  # each says something of its own


@pytest.mark.parametrize("rule", [r for r in RULES if any(c.why for c in _conds(r.when))], ids=lambda r: r.id)
def test_a_finding_names_the_readings_of_the_routes_that_made_it_fire(rule):
    th = default_thresholds()
    out = evaluate_rule(rule, features_for(rule, FIRING[rule.id]), th)
    whys = {c.why for c in _conds(rule.when) if c.why}
    assert out.route and set(out.route) <= whys
    assert out.to_dict()["route"] == list(out.route)


def test_a_language_models_slow_fall_at_loras_usual_lr_is_not_too_small_a_step():
    """lr-too-small's slow-fall route reads a step too small, so it holds off on a language model's LoRA adapter at an
    lr inside LoRA's usual range (lora_lr_floor .. high_lr_min): a pretrained model's loss falls slowly at a fair step
    (fold AI's usadiqgriffin: Llama-3 LoRA at 1e-4, val -3.9% over 4 evals, both reviews healthy). Below the range,
    above it where no LoRA adapter was read (prompt tuning's 0.3) or on a full fine-tune, the same curve still reads as
    too small a step; a LoRA adapter above the range (fold AV's MSDS-Capstone: GPT-2 LoRA at 5e-3) does not."""
    rule = rule_by_id("lr-too-small")
    th = default_thresholds()
    curve = dict(generative=1, classifier=0, n_eval_points=4, first_eval_fraction=0.25, plan_done_fraction=1.0,
                 train_loss_drop=0.134, val_loss_drop=0.039, val_loss_rise=0.0, val_loss_remaining_gain=0.02,
                 val_loss_remaining_noise=2.2, val_loss_late_share=0.32, val_loss_rise_share=0.0,
                 val_loss_late_drop=0.013, val_loss_min_fraction=1.0, val_loss_still_falling=1, train_loss_logged=1,
                 train_loss_drop_after_first_eval=0.1, train_loss_final_over_start=0.87, val_metric_logged=0)

    def reads(**knobs):
        out = evaluate_rule(rule, features_for(rule, {**curve, **knobs}), th)
        return out is not None and not out.tentative

    assert not reads(lora=1, peak_lr=1e-4)
    assert not reads(lora=1, peak_lr=th["high_lr_min"] / 2)
    assert reads(lora=1, peak_lr=2e-5)  # below LoRA's range
    assert reads(lora=1, lora_adapter=0, full_finetune=0, peak_lr=0.3)  # prompt tuning's step, outside LoRA's range
    assert not reads(lora=1, lora_adapter=1, peak_lr=5e-3)  # a LoRA adapter at the top of its range: no smaller step
    assert reads(lora=0, full_finetune=0, peak_lr=1e-4)  # not LoRA, method unknown: no LoRA range to be inside


def test_a_model_still_leaving_its_first_guess_is_not_a_collapse():
    """collapsed's per-class route reads predictions that stopped changing. A 12-step lr probe of the tuning bench
    (clinc150-20, MiniLM LoRA at 1e-3) had 51% of its val predictions on one class and its train loss at 0.92 x ln 20,
    but its val macro-F1 climbed 0.028 -> 0.265 to its last eval: it read collapsed, and the lr probe stepped down to
    2.5e-4 (pick test 0.941 where the study's before it picked 2e-3, 0.965). Still improving, it is no collapse; the
    same numbers with the metric no longer climbing still are."""
    rule = rule_by_id("collapsed")
    th = default_thresholds()
    probe = dict(peak_lr=1e-3, lora_adapter=1, classifier=1, val_pred_top_share=0.512, train_loss_vs_chance=0.92,
                 val_metric_logged=1, n_eval_points=5, val_metric_repeat_share=0.0, val_metric_gain=0.237,
                 train_loss_final_over_start=0.92, val_loss_drop=0.087, val_loss_rise_share=0.0,
                 val_loss_repeats=0, val_loss_repeat_share=0.0, val_loss_vs_chance=0.91)

    def reads(**kw):
        out = evaluate_rule(rule, features_for(rule, {**probe, **kw}), th)
        return out is not None and not out.tentative

    assert not reads(still_improving=1)
    assert reads(still_improving=0)


def test_a_metric_swing_beside_a_train_loss_that_fell_after_the_val_loss_turned_is_no_lr_verdict():
    """lr-too-large's metric-swing route (the train loss climbed back, the val metric swung beyond its noise) holds
    off, as its val-loss route does, where the val loss rose beyond its noise and the train loss made most of its
    fall after the val loss's minimum: protocol 3's overfit. Fold AW's LineIntegralx (Longformer, val loss 2.5x its
    minimum at 33%, all of the train loss's fall after it) read lr-too-large; a train loss that fell before the val
    loss turned, or a val loss inside its noise, still reads the swing as the lr's."""
    rule = rule_by_id("lr-too-large")
    th = default_thresholds()
    run = dict(train_loss_max_rise=0.6, val_metric_max_drop=0.1, val_metric_max_drop_se=7.6,
               train_loss_final_over_start=0.64, val_loss_rise_noise=9.4, train_loss_drop=0.36,
               train_loss_fall_after_val_min=1.0, train_loss_peak_vs_chance=0.5, train_loss_vs_chance=0.3,
               peak_lr=2e-5, val_loss_min_vs_reference=None, val_loss_rise=1.48, val_loss_rise_share=0.6,
               val_loss_max_swing=0.2, train_loss_min_fraction=0.7, train_loss_rise_after_val_min=0.6,
               train_loss_rebound=0.18, val_metric_gain=0.3, classifier=1, n_eval_points=30)

    def route(**kw):
        out = evaluate_rule(rule, features_for(rule, {**run, **kw}), th)
        return None if out is None or out.tentative else out.route

    assert route() is None or "the val metric swung" not in " ".join(route())
    assert "the train loss climbed back up while the val metric swung beyond its noise" in route(
        train_loss_fall_after_val_min=0.2)
    assert "the train loss climbed back up while the val metric swung beyond its noise" in route(
        val_loss_rise_noise=1.0)


def test_rules_lists_protocol_6_and_every_move_with_its_numbers(capsys):
    """protocol.md: every rule must exist as data a user can read; the LoRA-vs-full thresholds, the breakeven share,
    the noise band and the moves' own numbers were in code only."""
    import json

    from loratune.cli import main
    from loratune.decide import DecideThresholds
    from loratune.moves import DROPOUT_CAP, MOVES
    from loratune.params import BREAKEVEN_SHARE

    assert main(["rules", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lv = {r["name"]: r["value"] for r in out["lora_vs_full"]}
    t = DecideThresholds()
    assert (lv["share_total"], lv["share_adapted"], lv["cost_parity"]) == (t.share_total, t.share_adapted,
                                                                           t.cost_parity)
    assert lv["breakeven_share"] == BREAKEVEN_SHARE and lv["noise_floor"] > 0
    assert [m["id"] for m in out["moves"]] == list(MOVES)
    assert {c["name"]: c["value"] for c in out["move_constants"]}["dropout_cap"] == DROPOUT_CAP
    assert main(["rules"]) == 0
    text = capsys.readouterr().out
    assert "LoRA vs full fine-tuning" in text and "the numbers inside the moves" in text


def test_every_threshold_rules_lists_is_overridable_with_a_value_check(tmp_path, capsys):
    """long_tail_count (assess) and share_total (LoRA vs full) are listed by `loratune rules`: a --thresholds
    file overrides them there (text and JSON) like a diagnosis threshold; a bad value or name is exit 2."""
    import json

    from loratune.assess import AssessThresholds
    from loratune.cli import main
    from loratune.decide import DecideThresholds
    from loratune.thresholds import load_threshold_tables, threshold_tables

    tables = threshold_tables()
    names = [n for t in tables.values() for n in t]
    assert len(names) == len(set(names))  # one flat file serves every table
    assert set(tables["assess"]) == set(AssessThresholds.__dataclass_fields__)
    assert set(tables["lora_vs_full"]) == set(DecideThresholds.__dataclass_fields__)
    f = tmp_path / "t.yaml"
    f.write_text("long_tail_count: 30\nshare_total: 0.2\nval_loss_rise_min: 0.2\n")
    loaded = load_threshold_tables(f)
    assert loaded["assess"]["long_tail_count"] == 30 and isinstance(loaded["assess"]["long_tail_count"], int)
    assert loaded["lora_vs_full"]["share_total"] == 0.2 and loaded["diagnosis"]["val_loss_rise_min"] == 0.2
    with pytest.raises(UserError, match="unknown threshold 'long_tail_count'"):  # the engine's own loader
        load_thresholds(f)
    assert main(["rules", "--json", "--thresholds", str(f)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"table": "assess-threshold", "id": "long_tail_count", "value": 30, "default": 20} in data["assess"]
    share = next(r for r in data["lora_vs_full"] if r["name"] == "share_total")
    assert share["value"] == 0.2 and share["default"] == 0.1
    assert main(["rules", "--thresholds", str(f)]) == 0
    assert "30 *" in capsys.readouterr().out
    for bad, why in (("long_tail_count: 2.5", "whole number"), ("share_total: -0.1", ">= 0"),
                     ("share_total: big", "a number"), ("long_tail_cout: 3", "did you mean long_tail_count")):
        f.write_text(bad + "\n")
        with pytest.raises(UserError, match=why):
            load_threshold_tables(f)
        assert main(["rules", "--thresholds", str(f)]) == 2
        assert why in capsys.readouterr().err


def test_every_threshold_default_lies_in_its_units_range():
    from loratune.rules import ANY_FINITE, UNIT_RANGES

    assert check_table() == []  # (check_table holds each default to its unit's range)
    assert THRESHOLDS["flag_on"].allowed == UNIT_RANGES["flag"] and THRESHOLDS["no_gain_max"].allowed == ANY_FINITE
    broken = dict(THRESHOLDS, flag_on=dataclasses.replace(THRESHOLDS["flag_on"], value=0.0))
    assert any("threshold flag_on: its default 0 is outside" in p for p in check_table(thresholds=broken))


def test_a_perplexity_threshold_reads_as_a_plain_number_not_a_multiple(capsys):
    # `loratune rules` showed `memorised_perplexity_max (1.10x)`: a perplexity of 1.1 is no multiple of anything
    from loratune.cli import main
    from loratune.features import format_value

    t, f = THRESHOLDS["memorised_perplexity_max"], FEATURES["train_perplexity_final"]
    assert (t.value, t.unit, f.unit) == (1.1, "perplexity", "perplexity")
    assert format_value(t.unit, t.value) == "1.100" and format_value(f.unit, 1.009) == "1.009"
    assert t.allowed.problem(0.5) is not None and t.allowed.problem(1.0) is None  # exp(a loss >= 0) >= 1
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    assert "train_perplexity_final <= memorised_perplexity_max (1.1)" in out and "(1.10x)" not in out


def test_full_fine_tuning_lr_range_is_stated_once_and_matches_protocol_1():
    """rules.py said full fine-tuning runs at 1e-5..5e-5 while the tune protocol clamped its probe to 1e-5..5e-4, a
    range stated nowhere else. The prior is stated once (LoRA's centre / 10); the probe follows the measured LoRA lr /
    10 inside protocol 1's usual range, also stated once (rules.USUAL_LR_RANGE)."""
    from loratune.rules import FULL_FT_LR_RANGE, LORA_LR_CENTRE, LORA_OVER_FULL_LR, THRESHOLDS, USUAL_LR_RANGE
    from loratune.search.protocol.settings import FULL_LR_MAX, FULL_LR_MIN

    assert FULL_FT_LR_RANGE == (1e-5, 5e-5) and (FULL_LR_MIN, FULL_LR_MAX) == USUAL_LR_RANGE == (1e-5, 1e-3)
    assert FULL_FT_LR_RANGE == tuple(round(x / LORA_OVER_FULL_LR, 12) for x in LORA_LR_CENTRE)
    for name in ("usual_lr_min", "lr_far_below_max", "lora_lr_floor"):
        assert "full fine-tuning" in THRESHOLDS[name].doc and "1e-5..5e-5" in THRESHOLDS[name].doc


def test_a_threshold_written_as_rules_prints_it_in_exponent_form_is_read_as_a_number(tmp_path):
    """PyYAML reads `1e-05` (no dot: YAML 1.1) as a string: `usual_lr_min: 1e-05`, exactly what `loratune rules`
    prints, was refused "got '1e-05'; allowed: a number". It is read as a config value is (config.to_number)."""
    from loratune.thresholds import load_threshold_tables

    f = tmp_path / "t.yaml"
    f.write_text("usual_lr_min: 1e-05\ncollapse_lr_min: 2e-2\nlong_tail_count: 3e1\n")
    tables = load_threshold_tables(f)
    assert tables["diagnosis"]["usual_lr_min"] == 1e-5 and tables["diagnosis"]["collapse_lr_min"] == 0.02
    assert tables["assess"]["long_tail_count"] == 30 and isinstance(tables["assess"]["long_tail_count"], int)
    assert load_thresholds(_write(tmp_path, "usual_lr_min: 1e-05\n"))[
        "usual_lr_min"] == 1e-5
    for bad in ("usual_lr_min: big", "usual_lr_min: nan", "usual_lr_min: '-1e-05'"):
        with pytest.raises(UserError, match="allowed: a"):
            load_threshold_tables(_write(tmp_path, bad + "\n"))


def _write(tmp_path, text: str):
    f = tmp_path / "w.yaml"
    f.write_text(text)
    return f


def test_rule_conditions_print_thresholds_at_full_precision(tmp_path, capsys):
    """`loratune rules` printed `val_loss_final > zero_loss_max (0.004)` while the code uses 0.0035, and a 0.0004
    override of zero_loss_max / slow_drop_max as 0.000 / 0.0%: thresholds print every digit (rules.format_threshold);
    features.format_value is for measured values."""
    from loratune.cli import main
    from loratune.rules import describe_clause, format_threshold

    assert THRESHOLDS["zero_loss_max"].value == 0.0035
    assert describe_clause(Clause("val_loss_final", ">", "zero_loss_max")) == "val_loss_final > zero_loss_max (0.0035)"
    assert [format_threshold(u, v) for u, v in (("fraction", 0.1), ("fraction", 0.0004), ("loss", 0.0004),
                                                ("lr", 1e-5), ("ratio", 1.5), ("se", 2.0), ("points", 0.123456789))] \
        == ["10%", "0.04%", "0.0004", "1e-05", "1.5x", "2 SE", "0.123456789"]
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    assert "zero_loss_max (0.0035)" in out and "zero_loss_max (0.004)" not in out
    f = tmp_path / "t.yaml"
    f.write_text("zero_loss_max: 0.0004\nslow_drop_max: 0.0004\n")
    assert main(["rules", "--thresholds", str(f)]) == 0
    out = capsys.readouterr().out
    assert "zero_loss_max (0.0004)" in out and "slow_drop_max (0.04%)" in out
    assert "(0.000)" not in out and "slow_drop_max (0.0%)" not in out


def test_a_threshold_that_makes_a_rule_fire_on_every_run_is_refused(tmp_path, capsys):
    """nonfinite_min 0 (a count read with >=: `nonfinite_values >= 0`, the only condition of a `diverged` route and of
    eval-loss-broken) made every run diverged: refused, naming the clause and the rule (rules.always_firing)."""
    from loratune.cli import main

    with pytest.raises(UserError, match=re.escape("threshold 'nonfinite_min' at 0 makes `nonfinite_values >= "
                                                  "nonfinite_min` hold for every run, and with it rule 'diverged' "
                                                  "(its route 'non-finite losses (nan / inf)'): every run would be "
                                                  "diverged")) as e:
        resolve_thresholds({"nonfinite_min": 0})
    assert "rule 'eval-loss-broken'" in str(e.value)
    f = _write(tmp_path, "nonfinite_min: 0\n")
    assert main(["rules", "--thresholds", str(f)]) == 2
    assert "threshold 'nonfinite_min' at 0" in capsys.readouterr().err
    assert resolve_thresholds({"nonfinite_min": 0.5})["nonfinite_min"] == 0.5  # a count of 1 or more still


@pytest.mark.parametrize("name, value", [
    # main took them, the clause-range rule refused them: each makes its clause hold for no run (a route switched off)
    ("noise_fit_max", 1.0), ("collapse_repeat_share_max", 1.0), ("early_turn_fraction_max", 1.0),
    ("steady_rise_share_max", 1.0), ("tail_recall_max", 1.0), ("rebound_min_fraction_max", 1.0), ("no_gain_max", 0),
    ("metric_dead_max", 1), ("never_learned_metric_max", 2), ("noise_fit_min", 0.99),
    # ...or hold for every run where the route has other conditions: no rule fires on every run
    ("collapse_pred_share", 0), ("collapse_pred_share", -1), ("confused_count_min", 0),
])
def test_a_threshold_that_only_switches_a_clause_off_or_on_inside_a_route_is_taken(tmp_path, capsys, name, value):
    """The clause-range rule refused values that only switch a route off (noise_fit_max 1.0, taken on main: a study set
    up with it could never be resumed); a value is refused only where it makes a rule fire on every run."""
    from loratune.cli import main

    assert resolve_thresholds({name: value})[name] == value
    assert main(["rules", "--thresholds", str(_write(tmp_path, f"{name}: {value}\n"))]) == 0
    from loratune.rules import always_firing

    assert always_firing(resolve_thresholds({name: value})) == []


def test_a_route_is_refused_only_when_all_its_clauses_hold_for_every_run():
    """Two clauses of one route, each made to hold for every run by its own override: each alone is taken, both
    together make the rule fire on every run."""
    from loratune.rules import Rule, all_, always_firing, any_, c

    rule = Rule(id="x", scope="curve", priority=1, knob_class="data", verdict="x", moves=(),
                when=any_(all_(c("val_pred_top_share", ">=", "collapse_pred_share"),
                               c("tail_recall", "<=", "tail_recall_max"), why="both")))
    assert always_firing(resolve_thresholds({"collapse_pred_share": 0}), (rule,)) == []
    assert always_firing(resolve_thresholds({"tail_recall_max": 1}), (rule,)) == []
    both = always_firing(resolve_thresholds({"collapse_pred_share": 0, "tail_recall_max": 1}), (rule,))
    assert len(both) == 1 and "'collapse_pred_share' at 0 and 'tail_recall_max' at 1" in both[0]
    assert "rule 'x' (its route 'both')" in both[0]


def test_collapse_pred_share_0_does_not_make_every_run_collapsed():
    """collapse_pred_share 0 holds for every run, but its routes also need the loss pinned near chance: a healthy run
    stays healthy (why it is taken)."""
    from loratune.diagnose import diagnose

    for share in (0, -1):
        assert diagnose("tests/fixtures/runs/healthy-b77-s1", thresholds={"collapse_pred_share": share}).verdict \
            == "healthy"


@pytest.mark.parametrize("text, pair", [
    ("hard_probe_f1: 0.9\neasy_probe_f1: 0.5\n", "'hard_probe_f1' (0.9) must not exceed 'easy_probe_f1' (0.5)"),
    ("hard_probe_f1: 0.97\n", "'hard_probe_f1' (0.97) must not exceed 'easy_probe_f1' (0.95)"),  # against a default
])
def test_thresholds_whose_order_the_rules_need_are_refused_the_wrong_way_round(tmp_path, capsys, text, pair):
    """hard_probe_f1: 0.9 with easy_probe_f1: 0.5 was taken, and assess reported both hard-task and easy-task for one
    probe F1 of 0.7. The orderings the rules need are data (rules.THRESHOLD_ORDERS): the wrong way round is exit 2."""
    from loratune.cli import main
    from loratune.rules import THRESHOLD_ORDERS
    from loratune.thresholds import load_threshold_tables, threshold_tables

    names = {n for t in threshold_tables().values() for n in t}
    assert all(o.low in names and o.high in names for o in THRESHOLD_ORDERS)
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=re.escape(pair)):
        load_threshold_tables(f)
    assert main(["rules", "--thresholds", str(f)]) == 2
    assert pair in capsys.readouterr().err
    f.write_text("hard_probe_f1: 0.6\neasy_probe_f1: 0.6\nnoise_fit_min: 0.5\n")  # in order (equal is no overlap)
    assert load_threshold_tables(f)["assess"]["hard_probe_f1"] == 0.6


def test_diagnose_says_which_names_of_a_thresholds_file_it_never_reads(tmp_path, capsys):
    """`diagnose --thresholds` took long_tail_count (assess) and share_total (LoRA vs full) in silence
    (thresholds_overridden {}), while its long-tail cut stays features.LONG_TAIL_COUNT: it says so, on stderr and in
    --json."""
    import json

    from loratune.cli import main

    run = "tests/fixtures/runs/healthy-b77-s1"
    f = tmp_path / "t.yaml"
    f.write_text("long_tail_count: 30\nshare_total: 0.2\nslow_drop_max: 0.2\n")
    assert main(["diagnose", run, "--thresholds", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["thresholds_not_used"] == {"long_tail_count": "assess", "share_total": "lora_vs_full"}
    assert out["thresholds_overridden"] == {"slow_drop_max": 0.2}
    assert main(["diagnose", run, "--thresholds", str(f)]) == 0
    err = capsys.readouterr().err
    assert "long_tail_count (assess), share_total (lora_vs_full) not used by diagnose" in err


@pytest.mark.parametrize("name, where", [("noise_floor", "LoRA vs full"), ("breakeven_share", "LoRA vs full"),
                                         ("dropout_cap", "the numbers inside the moves")])
def test_a_fixed_number_rules_lists_is_refused_as_fixed_not_unknown(tmp_path, capsys, name, where):
    """noise_floor / dropout_cap are listed by `loratune rules` but a file naming them was refused as "unknown
    threshold ... use the names listed by loratune rules". They are refused as fixed, and rules marks them so."""
    import json

    from loratune.cli import main
    from loratune.thresholds import load_threshold_tables

    f = tmp_path / "t.yaml"
    f.write_text(f"{name}: 0.2\n")
    with pytest.raises(UserError, match=f"threshold '{name}' is fixed \\({where}"):
        load_threshold_tables(f)
    assert main(["rules", "--thresholds", str(f)]) == 2
    err = capsys.readouterr().err
    assert "unknown threshold" not in err and "is fixed" in err
    assert main(["rules", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["lora_vs_full"] + out["move_constants"]
    assert next(r for r in rows if r["name"] == name)["overridable"] is False


def test_rules_shows_gates_own_routes_a_full_fine_tunes_lr_thresholds_and_its_moves_above_its_range(capsys):
    """`loratune rules` dropped the gate and own-route markers (Cond.gate, Cond.alone) in text and --json, printed
    high_lr_min etc. at LoRA's value only though a full fine-tune reads them 10x lower (thresholds_for_method), and
    read moves_for('full') inside the range only: lr-too-small and undertrained printed no full-fine-tune move line
    and --json's full_moves kept learning_rate x2 for a full fine-tune above its range."""
    from loratune.cli import main
    from loratune.rules import ALONE_MARK, GATE_MARK

    assert main(["rules"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"any of: {GATE_MARK}" in text and f"all of: {ALONE_MARK}" in text
    assert "peak_lr < high_lr_min (0.0015; 0.00015 for a full fine-tune)" in text
    assert ("full fine-tune moves: epochs up, learning_rate x2 full fine-tune moves at or above high_lr_min (0.0015; "
            "0.00015 for a full fine-tune): epochs up") in text
    lr_small = text[text.index("lr-too-small scope"):text.index("undertrained scope")]
    assert "full fine-tune moves: learning_rate x2" in lr_small
    assert "at or above high_lr_min (0.0015; 0.00015 for a full fine-tune): none" in lr_small
    assert main(["rules", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rules = {r["id"]: r for r in data["rules"]}
    assert rules["undertrained"]["full_moves"] == ["epochs up", "learning_rate x2"]
    assert rules["undertrained"]["full_moves_lr_high"] == ["epochs up"]
    assert rules["lr-too-small"]["full_moves_lr_high"] == []
    assert rules["lr-too-small"]["full_thresholds"]["high_lr_min"] == pytest.approx(1.5e-4)
    assert data["thresholds"]["high_lr_min"]["full_value"] == pytest.approx(1.5e-4)
    assert "full_value" not in data["thresholds"]["slow_drop_max"]

    def conds(node):
        if isinstance(node, dict) and ("all" in node or "any" in node):
            yield node
            for item in node.get("all", node.get("any")):
                yield from conds(item)
    found = [n for r in data["rules"] for n in conds(r["when"])]
    assert any(n.get("gate") is True for n in found) and any(n.get("alone") is True for n in found)
    assert sum(n.get("alone") is True for n in conds(rules["lr-too-large"]["when"])) == 1
