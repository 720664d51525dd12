"""Advice on real MiniLM + LoRA runs (12 BANKING77 classes, 300 val rows; tests/fixtures/hunt_advice, made with
`loratune train` by a defect hunt): the moves each verdict prescribes must not make the run worse."""

from __future__ import annotations

import math
from pathlib import Path

from loratune.diagnose import diagnose

RUNS = Path(__file__).resolve().parents[1] / "fixtures" / "hunt_advice"


def test_a_mid_run_spike_far_above_chance_reads_lr_too_large_not_undertrained():
    # lr 1.5e-2: train loss 2.06 -> 1.28, then a window at 5.94 (2.39 x ln 12), recovered as the linear schedule
    # decayed (F1 0.721 at the end); main read "undertrained: epochs up, learning_rate x2", and lr 3e-2 collapsed
    d = diagnose(RUNS / "lr1.5e-2")
    f = d.features.values
    assert math.isclose(f["train_loss_peak_vs_chance"], 2.39, abs_tol=0.01)
    assert math.isclose(f["train_loss_max_rise"], 1.87, abs_tol=0.01)
    assert d.verdict == "lr-too-large"
    assert d.primary.moves == ("learning_rate /2",)
    assert any("spiked" in r for r in d.primary.route), d.primary.route
    # no active finding prescribes a larger lr for a run whose loss spiked above a uniform guess
    assert not any("learning_rate x2" in f.moves for f in d.active)
    assert {x.rule_id: x.suppressed_by for x in d.findings}["undertrained"] == "lr-too-large"


def test_the_collapsed_run_the_lr_x2_advice_led_to_stays_lr_too_large():
    d = diagnose(RUNS / "lr3e-2")
    assert d.verdict == "lr-too-large" and d.primary.moves == ("learning_rate /2",)


def _compare(*names):
    from loratune.diagnose import compare
    c = compare([RUNS / n for n in names])
    return c, {f.rule_id: f for f in c.active}


def test_a_null_pair_at_chance_says_the_runs_did_not_learn_not_more_val_data():
    # lr 1e-6: every run at chance (train loss 0.997-0.999 x ln 12); the lr x2 and r x2 arms both 0.4 noise units
    # on a 300-row val set (noise 0.0145): main said "the val set is too small ... more val data, more seeds"
    c, active = _compare("lr1e-6", "lr2e-6", "lr1e-6_r16")
    assert math.isclose(c.features.values["metric_noise"], 0.0145, abs_tol=0.0005)
    assert c.features.values["max_effect_noise"] < 2.0
    assert "differences-within-noise" not in active
    assert set(active) == {"runs-never-learned"}
    assert active["runs-never-learned"].moves == ("learning_rate x2",)
    assert not any("more val data" in f.moves for f in c.active)


def test_a_well_measured_tie_says_the_knob_did_not_bind():
    # 8 rows per class, 40 epochs, r 16 vs r 8: F1 0.960 vs 0.953 on 300 val rows (noise 0.012): rank does not bind
    c, active = _compare("ovf", "ovf_r8")
    assert c.features.values["metric_noise"] < 0.025
    assert set(active) == {"knobs-not-binding"}
    assert active["knobs-not-binding"].moves == ("keep the cheaper value",)
    assert "did not bind" in active["knobs-not-binding"].verdict


def test_a_flat_tie_at_a_high_score_is_not_overfitting():
    # 8 rows per class, 40 epochs, r 16: val loss final and minimum a tie (+2.4% at 1.1 noise units), val F1 0.947-0.960
    # from step 60 on, final and best a tie; main read overfit-capacity ("the val loss went flat past its minimum")
    d = diagnose(RUNS / "ovf")
    f = d.features.values
    assert f["val_loss_rise_noise"] < 2.0 and f["val_metric_final_drop_se"] < 2.0 and f["val_metric_best"] >= 0.95
    assert "overfit-capacity" not in {x.rule_id for x in d.findings}
    assert d.verdict == "healthy"
