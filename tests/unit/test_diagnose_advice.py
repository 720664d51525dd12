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
    assert active["knobs-not-binding"].moves == ("keep either value",)
    assert "did not bind" in active["knobs-not-binding"].verdict


def test_a_flat_tie_at_a_high_score_is_not_overfitting():
    # 8 rows per class, 40 epochs, r 16: val loss final and minimum a tie (+2.4% at 1.1 noise units), val F1 0.947-0.960
    # from step 60 on, final and best a tie; main read overfit-capacity ("the val loss went flat past its minimum")
    d = diagnose(RUNS / "ovf")
    f = d.features.values
    assert f["val_loss_rise_noise"] < 2.0 and f["val_metric_final_drop_se"] < 2.0 and f["val_metric_best"] >= 0.95
    assert "overfit-capacity" not in {x.rule_id for x in d.findings}
    assert d.verdict == "healthy"


def _synthetic(tmp_path, name, train, *, k, val_f1=0.9, val_loss=0.25, logging_first=True):
    """The ovf run's files with a made-up history: `train` the logged train-loss windows (one per step), k classes,
    val F1 `val_f1` and val loss `val_loss` at ten evals (and the last step)."""
    import json
    import shutil
    dst = tmp_path / name
    shutil.copytree(RUNS / "ovf", dst)
    run = json.loads((dst / "run.json").read_text())
    labels = run["labels"][:k]
    n = len(train)
    run.update(labels=labels, task="single_label", steps_planned=n, steps_done=n,
               label_counts={"train": {lab: 8 for lab in labels}, "val": {lab: 150 for lab in labels}})
    (dst / "run.json").write_text(json.dumps(run))
    rows = [{"step": 0, "epoch": 0, "lr": 0.0, "val/n": 300, "val/loss": math.log(k), "val/macro_f1": 1 / k,
             "val/accuracy": 1 / k}]
    every = max(1, n // 10)
    for i, t in enumerate(train):
        s = i + 1
        p = {"step": s, "epoch": s / n * 5, "lr": 1e-3 * (1 - s / n) if s > 2 else 1e-3 * s / 2, "train/loss": t,
             "train/loss_std": 0.1 * t}
        if logging_first:
            p["train/loss_first"] = train[0] * 1.05 if i == 0 else t
        if i % every == n % every or i == n - 1:
            p.update({"val/n": 300, "val/macro_f1": val_f1, "val/accuracy": val_f1, "val/loss": val_loss})
        rows.append(p)
    (dst / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


def test_one_noisy_window_above_chance_on_a_healthy_run_is_no_spike(tmp_path):
    # a healthy curve (val F1 0.9 throughout, val loss 0.25) with one logged window at 1.55 x ln(classes): the
    # branch's spike route read it lr-too-large, lr /2; the val side never moved, so it is no lr too large
    for k in (2, 12):
        for n in (20, 60, 120):
            train = [math.log(k) * max(0.08, math.exp(-i / (n / 6))) for i in range(n)]
            train[n // 3] = 1.55 * math.log(k)
            d = diagnose(_synthetic(tmp_path, f"r_{k}_{n}", train, k=k))
            f = d.features.values
            assert d.verdict == "healthy", (k, n, d.verdict)
            assert "lr-too-large" not in {x.rule_id for x in d.findings}
            assert f["train_loss_peak_vs_chance"] >= 1.5 and f["val_loss_at_spike_vs_chance"] < 1.0
            assert f["val_metric_at_spike_drop_se"] == 0.0


def test_per_step_batch_noise_on_a_healthy_binary_run_is_no_spike(tmp_path):
    # a binary classifier logged every step at batch 4 (accuracy 0.5 -> 0.92, per-example cross-entropy): single
    # windows reach 1.5 x ln 2 by batch noise; the branch read lr-too-large on 22 of 30 seeds (main 3: its other
    # routes); with the val side required (val F1 0.9, val loss 0.3 throughout) the spike route fires on none
    import random
    from loratune.diagnose import _eval, _rule_evidence
    from loratune.diagnose import THRESHOLD_DEFAULTS
    from loratune.rules import RULES
    rule = next(r for r in RULES if r.id == "lr-too-large")
    spike = next(route for route in rule.when.items if "spiked" in route.why)
    spiky = fired = 0
    for seed in range(30):
        rng, train = random.Random(seed), []
        for s in range(60):
            acc, hi = 0.5 + 0.42 * min(1, s / 20), 0.55 + 0.44 * min(1, s / 20)
            losses = []
            for _ in range(4):
                p = rng.uniform(0.5, hi)
                losses.append(-math.log(p) if rng.random() < acc else -math.log(1 - p))
            train.append(sum(losses) / 4)
        d = diagnose(_synthetic(tmp_path, f"mc_{seed}", train, k=2, val_loss=0.3, logging_first=False))
        f = d.features.values
        spiky += f["train_loss_peak_vs_chance"] >= 1.5 and f["train_loss_max_rise"] >= 0.5
        fired += _eval(spike, _rule_evidence(rule, d.features, THRESHOLD_DEFAULTS))[0] is True
    assert spiky >= 15  # the noise does throw single windows that high
    assert fired == 0
    assert not any("spiked" in r for x in d.findings for r in x.route)


def _scaled_lr(tmp_path, name, factor):
    """A copy of the fixture run `name` with its logged and configured learning rate multiplied by `factor`."""
    import json
    import re
    import shutil
    dst = tmp_path / f"{name}_x{factor:g}"
    shutil.copytree(RUNS / name, dst)
    rows = [json.loads(line) for line in (dst / "history.jsonl").read_text().splitlines() if line.strip()]
    for r in rows:
        for key in ("lr", "lr_max"):
            if key in r:
                r[key] *= factor
    (dst / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = (dst / "config.yaml").read_text()
    (dst / "config.yaml").write_text(re.sub(r"learning_rate: *([0-9.e+-]+)",
                                            lambda m: f"learning_rate: {float(m.group(1)) * factor:g}", cfg))
    return dst


def test_runs_that_never_learned_at_a_usual_or_high_lr_are_no_measured_tie(tmp_path):
    # the lr 1e-6 trio (every train loss 0.997-0.999 x ln 12) with its lr x100 (1e-4, usual) and x2e4 (2e-2): the
    # branch said knobs-not-binding, "a measured tie, keep the cheaper value", of models that never moved
    from loratune.diagnose import compare
    for factor in (100, 2e4):
        c = compare([_scaled_lr(tmp_path, n, factor) for n in ("lr1e-6", "lr2e-6", "lr1e-6_r16")])
        v = c.features.values
        assert not {f.rule_id for f in c.active} & {"knobs-not-binding", "differences-within-noise",
                                                     "runs-never-learned"}, [f.rule_id for f in c.active]
        assert v["min_train_loss_vs_chance"] >= 0.95 and v["max_peak_lr"] >= 1e-4 and v["chance_level_unread"] == 0


def test_knobs_not_binding_where_no_run_is_read_against_chance_fires_as_before():
    # a multi-label comparison: no ln(classes), min_train_loss_vs_chance not applicable -> the tie reads as before
    from types import MappingProxyType
    from loratune.diagnose import THRESHOLD_DEFAULTS, evaluate_rule
    from loratune.features import NOT_APPLICABLE, CurveFeatures
    from loratune.moves import MOVES
    from loratune.rules import RULES
    rule = next(r for r in RULES if r.id == "knobs-not-binding")
    values = {"max_effect_noise": 0.5, "metric_noise": 0.012, "min_train_loss_vs_chance": None,
              "chance_level_unread": 1.0}
    missing = {"min_train_loss_vs_chance": NOT_APPLICABLE + "not every run is a single-label classifier"}
    out = evaluate_rule(rule, CurveFeatures(MappingProxyType(values), MappingProxyType(missing),
                                            MappingProxyType({})), THRESHOLD_DEFAULTS)
    assert out is not None and out.rule_id == "knobs-not-binding" and not out.tentative
    assert out.moves == ("keep either value",)
    assert any(m.text == "keep either value" and "cheaper where one is cheaper" in m.doc for m in MOVES.values())
