"""LoRA vs full fine-tuning: every protocol-6 reason evaluated, the choice on the probe's evidence."""

from __future__ import annotations

import pytest

from loratune.decide import CostPoint, DecideInputs, DecideThresholds, decide

TOTAL, ADAPTED = 22_700_000, 4_130_000


def lora(r: int, f1: float, step=0.10, mem=900.0, label=None) -> CostPoint:
    return CostPoint(label or f"LoRA r={r}", "lora", r, f1, trainable=16_896 * r + 180_000, adapter=16_896 * r,
                     total=TOTAL, adapted_weights=ADAPTED, mean_step_s=step, peak_memory_mb=mem)


FULL = CostPoint("full fine-tuning", "full", None, 0.80, trainable=TOTAL, total=TOTAL, mean_step_s=0.20,
                 peak_memory_mb=1400.0)


def reasons(out):
    return {r.id: r.holds for r in out.reasons}


def test_lora_kept_when_full_is_within_noise():
    out = decide(DecideInputs(lora(8, 0.79), lora(32, 0.795), FULL, noise=0.02, plateau=True, breakeven_r=81))
    assert out.choice == "lora"
    assert reasons(out) == {"param-share": False, "rank-plateau": None, "cost-parity": False,
                            "performance-gap": False, "new-knowledge": None}
    assert "within noise" in out.summary


def test_full_chosen_when_the_probe_wins_beyond_noise_and_says_why():
    out = decide(DecideInputs(lora(8, 0.70), None, FULL, noise=0.02))
    assert out.choice == "full"
    assert reasons(out)["performance-gap"] is True
    assert "full fine-tuning is better beyond noise" in out.summary


@pytest.mark.parametrize("r,holds", [(8, False), (64, True)])
def test_param_share_threshold(r, holds):
    # 16896 r / 4.13M adapted: r=64 -> 26% of the adapted weights (>= 20%)
    out = decide(DecideInputs(lora(8, 0.8), lora(r, 0.8), None, noise=0.01))
    assert reasons(out)["param-share"] is holds


def test_cost_parity_from_measured_step_time_or_memory():
    near = lora(64, 0.8, step=0.18, mem=900.0)  # 90% of full's step time
    out = decide(DecideInputs(lora(8, 0.8), near, FULL, noise=0.01))
    assert reasons(out)["cost-parity"] is True
    r = next(x for x in out.reasons if x.id == "cost-parity")
    assert r.evidence["step_time_ratio"] == pytest.approx(0.9)
    cheap = decide(DecideInputs(lora(8, 0.8), lora(32, 0.8, step=0.1, mem=700.0), FULL, noise=0.01))
    assert reasons(cheap)["cost-parity"] is False


def test_memory_measured_in_a_few_megabytes_is_no_cost_ratio():
    """A tiny model's trials grow the process by a few MB: 19 MB against 1 MB read as LoRA needing 1,500% of full
    fine-tuning's memory, and cost-parity held on it."""
    full = CostPoint("full fine-tuning", "full", None, 0.80, trainable=TOTAL, total=TOTAL, mean_step_s=0.20,
                     peak_memory_mb=1.0)
    out = decide(DecideInputs(lora(8, 0.8), lora(8, 0.8, step=0.05, mem=19.0), full, noise=0.01))
    r = next(x for x in out.reasons if x.id == "cost-parity")
    assert r.holds is False and r.evidence["memory_ratio"] is None  # the step time alone: 25%
    assert "under 64 MB: allocator noise, not compared" in r.text


def test_past_the_breakeven_rank_counts_as_cost_parity_even_without_a_probe():
    out = decide(DecideInputs(lora(8, 0.8), lora(128, 0.8), None, noise=0.01, breakeven_r=81))
    assert reasons(out)["cost-parity"] is True
    assert out.choice == "lora" and "worth a longer probe" in out.summary


def test_plateau_with_a_target():
    met = decide(DecideInputs(lora(8, 0.85), None, None, noise=0.01, plateau=True, target=0.8))
    unmet = decide(DecideInputs(lora(8, 0.75), None, None, noise=0.01, plateau=True, target=0.8))
    not_plateaued = decide(DecideInputs(lora(8, 0.75), None, None, noise=0.01, plateau=False, target=0.8))
    assert reasons(met)["rank-plateau"] is False
    assert reasons(unmet)["rank-plateau"] is True
    assert reasons(not_plateaued)["rank-plateau"] is False


def test_the_target_is_judged_against_the_best_lora_run_not_the_chosen_rank_s_trial():
    """The chosen rank's short trial (0.336) misses the target 0.5; the study's long run of it (0.713) meets it:
    the target is met, and the reason names the run it was judged on (it said "not met" on the short trial)."""
    out = decide(DecideInputs(lora(4, 0.336), None, None, noise=0.01, plateau=True, target=0.5,
                              best_lora=0.713, best_lora_label="#2 steps60"))
    r = next(x for x in out.reasons if x.id == "rank-plateau")
    assert r.holds is False and r.evidence["best"] == 0.713 and r.evidence["best_label"] == "#2 steps60"
    assert "best LoRA run (#2 steps60) val macro-F1 0.713 vs target 0.500: met" in r.text
    # without a best run given: the chosen point's own value, named
    r = next(x for x in decide(DecideInputs(lora(4, 0.336), None, None, noise=0.01, plateau=True,
                                            target=0.5)).reasons if x.id == "rank-plateau")
    assert r.holds is True and r.evidence["best"] == 0.336 and r.evidence["best_label"] == "LoRA r=4"


def test_no_probe_means_lora_and_unknown_gap():
    out = decide(DecideInputs(lora(8, 0.8), None, None, noise=0.01))
    assert out.choice == "lora" and reasons(out)["performance-gap"] is None
    assert "no full-fine-tuning probe" in out.summary


def test_cost_table_has_every_measured_point_with_ratios_to_full():
    out = decide(DecideInputs(lora(8, 0.8, label="LoRA r=8 (chosen)"), lora(32, 0.8, step=0.12), FULL, noise=0.01))
    labels = [row["label"] for row in out.table]
    assert labels == ["LoRA r=8 (chosen)", "LoRA r=32", "full fine-tuning"]
    assert out.table[1]["step_time_vs_full"] == pytest.approx(0.6)
    assert out.table[2]["memory_vs_full"] == pytest.approx(1.0)
    assert out.to_dict()["choice"] == "lora"


def test_thresholds_are_overridable():
    strict = DecideThresholds(share_total=0.001)
    assert reasons(decide(DecideInputs(lora(8, 0.8), None, None, noise=0.01), strict))["param-share"] is True


def test_the_cost_table_shows_no_memory_ratio_the_cost_parity_reason_did_not_compare():
    """Peaks under the memory floor: cost-parity says 'not compared', and the table's 'memory vs full' is empty
    (it showed 139% from 1 MB vs 1 MB beside that reason); above the floor both read the same ratio."""
    full = CostPoint("full fine-tuning", "full", None, 0.80, trainable=TOTAL, total=TOTAL, mean_step_s=0.40,
                     peak_memory_mb=0.7)
    out = decide(DecideInputs(lora(8, 0.79, mem=1.0), lora(32, 0.795, mem=1.0), full, noise=0.02))
    parity = next(r for r in out.reasons if r.id == "cost-parity")
    assert "not compared" in parity.text and parity.evidence["memory_ratio"] is None
    assert [row["memory_vs_full"] for row in out.table] == [None, None, None]
    out = decide(DecideInputs(lora(8, 0.79), lora(32, 0.795, mem=700.0), FULL, noise=0.02))
    parity = next(r for r in out.reasons if r.id == "cost-parity")
    assert out.table[1]["memory_vs_full"] == pytest.approx(0.5) == parity.evidence["memory_ratio"]


def test_cost_table_names_the_objective_it_holds():
    """The table kept the objective's score under `val_macro_f1` whatever the objective: a multi-label study's
    subset accuracy (0.229) read as macro-F1 in decisions.jsonl and study.json."""
    from loratune.objectives import objective

    subset = objective("val/subset_accuracy")
    out = decide(DecideInputs(lora(8, 0.229), None, FULL, noise=0.01, objective=subset))
    assert [(t["objective"], t["objective_value"]) for t in out.table] == [("val/subset_accuracy", 0.229),
                                                                          ("val/subset_accuracy", 0.80)]
    assert all("val_macro_f1" not in t for t in out.table)
    loss = objective("val/loss")  # a loss's score is minus the loss: the table holds the loss itself
    out = decide(DecideInputs(lora(8, -0.5), None, None, noise=0.01, objective=loss))
    assert (out.table[0]["objective"], out.table[0]["objective_value"]) == ("val/loss", 0.5)


# ---------------------------------------------------------------------------------------------
# one comparison, one convention (hunt 16): a difference counts only above the noise band (objectives.beyond_noise)

def test_a_gap_equal_to_the_noise_up_to_rounding_is_not_beyond_it():
    """full 0.81 vs LoRA 0.80 with noise 0.01: 0.010000000000000009 > 0.01 read 'better beyond noise'."""
    from dataclasses import replace

    out = decide(DecideInputs(lora(8, 0.80), None, replace(FULL, score=0.81), noise=0.01))
    assert out.choice == "lora" and reasons(out)["performance-gap"] is False
    out = decide(DecideInputs(lora(8, 0.81), None, replace(FULL, score=0.80), noise=0.01))
    assert reasons(out)["performance-gap"] is False and "LoRA is better beyond noise" not in out.summary
    assert decide(DecideInputs(lora(8, 0.80), None, replace(FULL, score=0.8101), noise=0.01)).choice == "full"


@pytest.mark.parametrize("full_score,noise", [(float("nan"), 0.01), (0.9, float("nan"))])
def test_a_nan_score_or_noise_is_unknown_not_within_noise(full_score, noise):
    from dataclasses import replace

    out = decide(DecideInputs(lora(8, 0.80), None, replace(FULL, score=full_score), noise=noise))
    assert out.choice == "lora" and reasons(out)["performance-gap"] is None
    assert "within noise" not in out.summary
    # the summary says what the probe scored, not that none ran (it said 'no full-fine-tuning probe was run')
    assert "no full-fine-tuning probe" not in out.summary and "not comparable" in out.summary


def test_a_missing_noise_is_unknown_not_a_crash():
    """noise=None crashed performance_gap with a TypeError formatting it."""
    from dataclasses import replace

    out = decide(DecideInputs(lora(8, 0.80), None, replace(FULL, score=0.9), noise=None))
    assert out.choice == "lora" and reasons(out)["performance-gap"] is None
    assert "noise unknown" in out.summary and "not comparable" in out.summary


def test_beyond_noise_is_the_one_rule_sweeps_and_decide_read():
    from loratune.objectives import beyond_noise

    assert [beyond_noise(d, 0.01) for d in (0.81 - 0.80, 0.0101, 0.005, -0.02)] == [False, True, False, False]
    assert beyond_noise(None, 0.01) is None and beyond_noise(float("nan"), 0.01) is None
    assert beyond_noise(0.02, float("inf")) is None


def test_float_rounding_is_one_relative_tolerance_for_the_band_and_diagnose():
    """objectives.ROUNDING 1e-9 (absolute) beside diagnose.FLOAT_ROUNDING 1e-9 (relative): a loss band of 100
    crossed by 1e-8 of rounding read 'beyond noise'. One constant, one function."""
    from loratune import diagnose, objectives

    assert not hasattr(objectives, "ROUNDING") and not hasattr(diagnose, "FLOAT_ROUNDING")
    assert objectives.beyond_noise(100 + 1e-8, 100.0) is False and objectives.beyond_noise(100.01, 100.0) is True
    assert objectives.beyond_noise(0.81 - 0.80, 0.01) is False
    assert diagnose.RULE_OPS[">"](100 + 1e-8, 100.0) is False  # the same function reads both
