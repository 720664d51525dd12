"""The engine on whole synthetic runs: verdicts, curve-level near misses, missing signals, suppression,
order independence, properties, and multi-run verdicts."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import synth_runs as s
from loratune.diagnose import compare, diagnose, evaluate_rules
from loratune.features import compute_features
from loratune.history_io import from_points
from loratune.rules import RULES, default_thresholds, rule_by_id

LABELS = [f"c{i}" for i in range(10)]
META = {"labels": LABELS, "status": "completed"}


def verdict(points, meta=META, **kw):
    return diagnose(points, meta=meta, **kw)


@pytest.mark.parametrize("maker, expected", [
    (s.overfit, "overfit-capacity"),
    (s.underfit, "underfit-capacity"),
    (s.lr_too_small, "lr-too-small"),
    (s.undertrained, "undertrained"),
    (s.collapsed, "lr-too-large"),
    (s.oscillating, "lr-too-large"),
    (s.diverged, "diverged"),
    (lambda **kw: s.make_history(train_loss=s.decay(2.3, 0.2, 12), val_loss=s.decay(2.3, 0.5, 12),
                                 val_f1=s.decay(0.1, 0.85, 12), train_f1=s.decay(0.1, 0.9, 12), **kw), "healthy"),
])
def test_synthetic_pathologies_get_their_verdict(maker, expected):
    d = verdict(maker())
    assert d.verdict == expected, [(f.rule_id, f.suppressed_by) for f in d.findings]
    assert d.primary.moves == next(r.moves for r in RULES if r.id == expected)
    assert all(e.text for e in d.primary.evidence)


def test_a_full_fine_tunes_moves_turn_no_adapter_knob():
    # an SFTTrainer full fine-tune (run.json method: full) that overfit was told "r /2, -ffn, lora_dropout up": knobs
    # it has not. Its capacity move is the weight decay; a LoRA run (or one of unknown method) keeps the LoRA moves
    full = verdict(s.overfit(), {**META, "method": "full"})
    assert full.verdict == "overfit-capacity" and full.primary.moves == ("weight_decay 0.1",)
    from loratune.moves import adapter_only

    assert not any(adapter_only(m) for f in full.findings for m in f.moves), [(f.rule_id, f.moves) for f in full.findings]
    for meta in ({**META, "method": "lora"}, META):
        assert verdict(s.overfit(), meta).primary.moves == ("r /2", "-ffn", "lora_dropout up")


def test_diverged_by_status_alone_and_by_blow_up():
    assert verdict(s.healthy(), {**META, "status": "diverged"}).verdict == "diverged"
    blow = s.make_history(train_loss=s.linear(2.3, 6.0), val_loss=s.linear(2.3, 6.0), val_f1=lambda f: 0.1)
    assert verdict(blow).verdict == "diverged"


def test_diverged_suppresses_but_keeps_the_others_visible():
    d = verdict(s.diverged())
    assert d.fired("diverged")
    others = [f for f in d.findings if f.rule_id != "diverged"]
    assert others and all(f.suppressed_by == "diverged" for f in others)
    assert d.active == (d.finding("diverged"),) or all(f.scope != "curve" for f in d.active[1:])


# ---- curve-level near misses: shapes close to a pathology that must NOT get it --------------------

L = math.log(10)


def test_near_miss_overfit_val_loss_rises_a_little_and_f1_holds():
    pts = s.make_history(train_loss=s.decay(L, 0.005, 8), val_loss=s.u_shape(L, 0.4 * L, 0.6, 0.42 * L),
                         val_f1=s.decay(0.1, 0.7, 8), train_f1=s.decay(0.1, 1.0, 8))
    d = verdict(pts)
    assert d.features["val_loss_rise"] == pytest.approx(0.05, abs=1e-6)
    assert not d.fired("overfit-capacity", active_only=False)


def test_near_miss_overfit_train_not_memorized():
    pts = s.make_history(train_loss=s.decay(L, 0.3 * L, 8), val_loss=s.u_shape(L, 0.4 * L, 0.3, 0.7 * L),
                         val_f1=s.hump(0.1, 0.7, 0.3, 0.6), train_f1=s.decay(0.1, 0.9, 8))
    assert not verdict(pts).fired("overfit-capacity", active_only=False)


def test_near_miss_underfit_when_train_metric_is_high():
    pts = s.make_history(train_loss=s.decay(L, 0.2 * L, 12), val_loss=s.decay(L, 0.25 * L, 12),
                         val_f1=s.decay(0.1, 0.55, 12), train_f1=s.decay(0.1, 0.62, 12))
    assert not verdict(pts).fired("underfit-capacity", active_only=False)


def test_near_miss_underfit_when_the_loss_is_still_falling_steadily():
    # slow but steady: lr-too-small, not a capacity plateau
    d = verdict(s.lr_too_small())
    assert not d.fired("underfit-capacity", active_only=False)


def test_near_miss_lr_too_small_when_the_loss_plateaued():
    assert not verdict(s.underfit()).fired("lr-too-small", active_only=False)


def test_near_miss_lr_too_small_when_the_loss_fell_a_lot():
    assert not verdict(s.undertrained()).fired("lr-too-small", active_only=False)


def test_near_miss_lr_too_large_small_zigzag_within_noise():
    zig = lambda f: 1 if int(round(f * 10)) % 2 else -1  # noqa: E731
    pts = s.make_history(train_loss=lambda f: L * (0.5 - 0.3 * f + 0.01 * zig(f)), val_loss=s.decay(L, 0.5 * L, 5),
                         val_f1=lambda f: 0.4 + 0.3 * f - 0.01 * zig(f), train_f1=lambda f: 0.45 + 0.3 * f)
    assert not verdict(pts).fired("lr-too-large", active_only=False)


def test_near_miss_collapse_when_loss_falls_smoothly_from_chance():
    """A too-small lr also sits near ln(k) with one dominant class; without a climb-back it is not a collapse."""
    pts = s.collapsed()
    for p in pts:
        if "train/loss" in p:
            p["train/loss"] = L * (1.0 - 0.02 * p["step"] / 200)
        p["val/loss"] = L * (1.01 - 0.02 * p["step"] / 200)
    d = verdict(pts)
    assert d.features["val_pred_top_share"] == pytest.approx(1.0)
    assert not d.fired("lr-too-large", active_only=False)


def test_near_miss_undertrained_when_best_came_early():
    pts = s.make_history(train_loss=s.linear(L, 0.35 * L), val_loss=s.linear(L, 0.45 * L),
                         val_f1=s.hump(0.1, 0.7, 0.7, 0.69), train_f1=s.linear(0.1, 0.74))
    assert not verdict(pts).fired("undertrained", active_only=False)


def test_near_miss_healthy_with_a_large_gap():
    pts = s.make_history(train_loss=s.decay(L, 0.1 * L, 12), val_loss=s.decay(L, 0.3 * L, 12),
                         val_f1=s.decay(0.1, 0.7, 12), train_f1=s.decay(0.1, 0.86, 12))
    d = verdict(pts)
    assert d.features["gap_f1"] == pytest.approx(0.16, abs=1e-3)
    assert not d.fired("healthy", active_only=False)


def test_near_miss_eval_too_noisy_with_a_large_val_set():
    assert verdict(s.healthy(val_n=150)).fired("eval-too-noisy")
    assert not verdict(s.healthy(val_n=3000)).fired("eval-too-noisy", active_only=False)


def _class_history(final_recalls, counts, pairs_at, te_pairs=None, te_f1=0.9):
    labels = list(final_recalls)

    def per_class(f):
        out = {}
        for c in labels:
            out[f"val/recall/{c}"] = 0.1 + (final_recalls[c] - 0.1) * min(1.0, 2 * f)
            out[f"val/support/{c}"] = 20
            out[f"val/precision/{c}"] = 0.8
        return out

    extra = (lambda f, i: {"train_eval/confused_pairs": te_pairs}) if te_pairs else None
    pts = s.make_history(train_loss=s.decay(L, 0.3 * L, 8), val_loss=s.decay(L, 0.4 * L, 8),
                         val_f1=s.decay(0.1, 0.7, 8), train_f1=s.decay(0.1, te_f1, 8), per_class=per_class,
                         pairs=pairs_at, extra=extra, val_n=20 * len(labels))
    meta = {"labels": labels, "label_counts": {"train": counts}, "status": "completed"}
    return pts, meta


def test_long_tail_collapse_fires_and_its_near_miss_does_not():
    recalls = {"a": 0.95, "b": 0.9, "c": 0.9, "d": 0.8, "e": 0.7, "f": 0.6, "g": 0.1, "h": 0.05}
    counts = {"a": 200, "b": 200, "c": 150, "d": 120, "e": 90, "f": 60, "g": 8, "h": 6}
    pts, meta = _class_history(recalls, counts, pairs_at=lambda f: [])
    d = diagnose(pts, meta=meta)
    assert d.fired("long-tail-collapse")
    near = dict(recalls, g=0.5, h=0.45)  # tail recall .475 > .4
    pts, meta = _class_history(near, counts, pairs_at=lambda f: [])
    assert not diagnose(pts, meta=meta).fired("long-tail-collapse", active_only=False)
    # balanced data has no tail: the rule does not apply (not fired, and not "not evaluated" either)
    pts, meta = _class_history(recalls, {c: 50 for c in counts}, pairs_at=lambda f: [])
    d = diagnose(pts, meta=meta)
    assert not d.fired("long-tail-collapse", active_only=False)
    assert "long-tail-collapse" not in {n.rule_id for n in d.not_evaluated}


def test_comparison_tune_and_assess_read_one_noise_band():
    """Protocol 6: a gain counts above max(0.5 pt, 2 x seed sigma). Seeds .70/.71/.72 (sigma .01) and r16 at .725:
    the rank effect .025 is beyond the band .02, real to diagnose as to tune (diagnose read it as 1.77 units of
    sqrt(2) sigma, under its 2: 2.83 sigma, and called the runs within noise)."""
    from types import SimpleNamespace

    from loratune.search.context import SearchContext
    c = compare([run("s1", 0.70, seed=1), run("s2", 0.71, seed=2), run("s3", 0.72, seed=3),
                 run("r16", 0.725, r=16, alpha=32, seed=1)])
    sigma, effect = c.features["seed_std"], c.features["r_effect"]
    assert sigma == pytest.approx(0.01) and effect == pytest.approx(0.025)
    band = max(0.005, 2 * sigma)
    assert c.features["r_effect_noise"] == pytest.approx(2.5)
    assert c.features["r_effect_noise"] >= default_thresholds()["effect_noise_min"]  # beyond the band: real
    assert not c.fired("differences-within-noise")
    assert not c.fired("capacity-bound")  # a rank arm alone: which knob binds needs the lr arm too (protocol 5)
    from loratune.objectives import NOISE_BAND
    assert NOISE_BAND.width(sigma) == pytest.approx(band) == pytest.approx(0.02)
    assert c.features["noise"] * default_thresholds()["effect_noise_min"] == pytest.approx(band)
    # a smaller gain inside the band is a tie for both
    tie = compare([run("s1", 0.70, seed=1), run("s2", 0.71, seed=2), run("s3", 0.72, seed=3),
                   run("r16", 0.715, r=16, alpha=32, seed=1)])
    assert tie.features["r_effect"] < band and tie.fired("differences-within-noise")
    # tune's SearchContext.noise: the same band over the same sigma (with seeds) or SE (without)
    ctx = SimpleNamespace(state=SimpleNamespace(seed_sigma=sigma, seed_values=[0.70, 0.71, 0.72]), noise_floor=0.005)
    assert SearchContext.noise(ctx)[0] == pytest.approx(band)
    inc = SimpleNamespace(result=SimpleNamespace(feature=lambda k: 0.004 if k == "val_metric_se" else None))
    ctx.state = SimpleNamespace(seed_sigma=None, seed_values=[], incumbent=inc)
    assert SearchContext.noise(ctx)[0] == pytest.approx(NOISE_BAND.width(0.004)) == pytest.approx(0.008)
    # the floor: two runs 0.4 point apart on huge val sets are a tie (one 0.5 point floor, not a diagnose copy)
    big = compare([run("base", 0.800, val_n=10 ** 7), run("lr2", 0.804, lr=2e-4, val_n=10 ** 7)])
    assert big.features["max_effect_noise"] < 2 and big.fired("differences-within-noise")
    # assess's val resolution: differences under the same band over the macro-F1 SE are sampling noise
    from loratune.assess.stats import estimate_resolution
    from loratune.data import Split
    val = Split("validation", tuple(f"text {i}" for i in range(400)), tuple((f"c{i % 4}",) for i in range(400)), "<v>")
    res = estimate_resolution(val, accuracy=0.9)
    assert res.detectable_difference == pytest.approx(NOISE_BAND.width(res.macro_f1_se))


def test_long_tail_is_classes_under_long_tail_count_as_in_assess():
    # classes of 100-400 rows: the weakest by count are no long tail (protocol 2: under e.g. 20 examples); a
    # bottom quartile called g, h (110, 100 rows) tail and advised "more tail data"
    recalls = {"a": .95, "b": .9, "c": .9, "d": .8, "e": .7, "f": .6, "g": .1, "h": .05}
    counts = {"a": 400, "b": 400, "c": 300, "d": 240, "e": 180, "f": 120, "g": 110, "h": 100}
    pts, meta = _class_history(recalls, counts, pairs_at=lambda f: [])
    d = diagnose(pts, meta=meta)
    assert not d.fired("long-tail-collapse", active_only=False)
    assert "tail_classes" not in d.features.details
    assert "long-tail-collapse" not in {n.rule_id for n in d.not_evaluated}
    # the same definition as assess's long_tail_count: 19 rows is tail, 20 is not
    from loratune.assess.records import AssessThresholds
    from loratune.features import LONG_TAIL_COUNT
    assert AssessThresholds().long_tail_count == LONG_TAIL_COUNT == 20
    pts, meta = _class_history(recalls, dict(counts, g=19, h=20), pairs_at=lambda f: [])
    d = diagnose(pts, meta=meta)
    assert d.features.details["tail_classes"] == ["g"] and d.features["tail_recall"] == pytest.approx(0.1)


def test_confusable_classes_fire_when_the_pair_persists_and_not_when_it_improves():
    recalls = {c: 0.7 for c in "abcd"}
    counts = {c: 50 for c in "abcd"}
    stuck = lambda f: [{"true": "a", "pred": "b", "count": 9}, {"true": "c", "pred": "d", "count": 3}]  # noqa
    pts, meta = _class_history(recalls, counts, stuck)
    d = diagnose(pts, meta=meta)
    assert d.fired("confusable-classes-unresolved")
    assert d.verdict != "confusable-classes-unresolved"  # class-scope findings never become the run's verdict
    f = d.finding("confusable-classes-unresolved")
    # protocol 5: "r x2" from one curve comes with the pair experiment, as underfit-capacity's does
    assert "r x2" in f.moves and f.caveat == rule_by_id("underfit-capacity").caveat and "pair experiment" in f.caveat
    def improving(f):
        return [{"true": "a", "pred": "b", "count": max(2, int(round(12 * (1 - f)))) if f < 1 else 7}]

    pts, meta = _class_history(recalls, counts, improving)
    d = diagnose(pts, meta=meta)
    assert d.features["confused_top_count"] == 7  # 7 of 20 still, but down from 11 at the first eval
    assert not d.fired("confusable-classes-unresolved", active_only=False)


def test_label_noise_suspected_needs_two_way_confusion_on_train_rows():
    recalls = {c: 0.7 for c in "abcd"}
    counts = {c: 50 for c in "abcd"}
    two_way = [{"true": "a", "pred": "b", "count": 4}, {"true": "b", "pred": "a", "count": 3}]
    pts, meta = _class_history(recalls, counts, lambda f: [], te_pairs=two_way, te_f1=0.88)
    assert diagnose(pts, meta=meta).fired("label-noise-suspected")
    one_way = [{"true": "a", "pred": "b", "count": 4}, {"true": "b", "pred": "c", "count": 3}]
    pts, meta = _class_history(recalls, counts, lambda f: [], te_pairs=one_way, te_f1=0.88)
    assert not diagnose(pts, meta=meta).fired("label-noise-suspected", active_only=False)
    pts, meta = _class_history(recalls, counts, lambda f: [], te_pairs=two_way, te_f1=0.995)  # memorized
    assert not diagnose(pts, meta=meta).fired("label-noise-suspected", active_only=False)


# ---- engine semantics ------------------------------------------------------------------------------

def test_missing_signals_lower_confidence_and_are_named():
    full = verdict(s.healthy())
    no_val_loss = [{k: v for k, v in p.items() if k != "val/loss"} for p in s.healthy()]
    thin = verdict(no_val_loss)
    assert full.verdict == thin.verdict == "healthy"
    f_full, f_thin = full.primary, thin.primary
    assert not f_full.tentative and f_thin.tentative
    assert f_thin.confidence < f_full.confidence
    missing = [m[0] for m in f_thin.missing]
    assert "val_loss_rise" in missing and "val_loss_rise_noise" in missing
    assert "val/loss" in dict(f_thin.missing)["val_loss_rise"]


def test_a_run_with_no_val_loss_at_all_overfits_on_its_val_metric_alone():
    # protocol 5b's second overfit reading (the metric's best well before the end, the end below it beyond the
    # noise) needs no val loss: with none logged it is no missing signal, so the verdict is not tentative
    no_val_loss = [{k: v for k, v in p.items() if k not in ("val/loss", "val/n")} for p in s.overfit()]
    thin = verdict(no_val_loss)
    assert thin.verdict == "overfit-capacity" and not thin.primary.tentative
    assert thin.features["val_loss_logged"] == 0


def test_required_or_wholly_missing_signals_give_not_evaluated():
    d = verdict(s.healthy())  # no per-class keys
    gaps = {n.rule_id: n for n in d.not_evaluated}
    assert {"long-tail-collapse", "confusable-classes-unresolved"} <= set(gaps)
    assert [m[0] for m in gaps["long-tail-collapse"].missing] == ["tail_head_count_ratio", "tail_head_recall_gap",
                                                                 "tail_recall"]
    # label-noise: its other clauses hold, but the required two-way train confusion is unknown
    pts, meta = _class_history({c: 0.7 for c in "abcd"}, {c: 50 for c in "abcd"}, lambda f: [], te_f1=0.88)
    gaps = {n.rule_id: n for n in diagnose(pts, meta=meta).not_evaluated}
    assert [m[0] for m in gaps["label-noise-suspected"].missing] == ["train_confused_symmetric_pairs"]
    # ... and a known-false clause settles a rule even when its required clause is unknown
    assert "label-noise-suspected" not in {n.rule_id for n in verdict(s.underfit()).not_evaluated}


def test_csv_like_history_without_val_size_or_classes_still_diagnoses():
    pts = [{k: v for k, v in p.items() if k in ("step", "train/loss", "val/loss", "val/macro_f1")}
           for p in s.overfit()]
    d = diagnose(pts)
    assert d.verdict == "overfit-capacity"  # from the losses alone: no train-eval metric, no classes, no val size
    assert "val_metric_se" in d.features.missing and "gap_f1" in d.features.missing
    ev = {e.feature: e for e in d.primary.evidence}
    assert ev["train_loss_final_over_start"].passed and ev["val_loss_rise_noise"].passed
    assert d.features.details["val_metric_noise_source"] == "the metric curve's own eval-to-eval jitter"


def test_every_row_is_evaluated_regardless_of_table_order():
    pts = s.diverged()
    base = verdict(pts)
    for seed in range(5):
        shuffled = list(RULES)
        random.Random(seed).shuffle(shuffled)
        d = diagnose(pts, meta=META, rules=tuple(shuffled))
        assert [(f.rule_id, f.suppressed_by) for f in d.findings] == \
               [(f.rule_id, f.suppressed_by) for f in base.findings]
    assert len(base.findings) >= 2  # the curve before the blow-up also matches others: all evaluated, suppressed


def test_a_suppressed_finding_does_not_suppress_others():
    feats = compute_features(s.diverged(), META)
    findings, _ = evaluate_rules(feats, [r for r in RULES if r.scope != "compare"], default_thresholds())
    healthy = next((f for f in findings if f.rule_id == "healthy"), None)
    assert healthy is not None and healthy.suppressed_by == "diverged"


def test_threshold_overrides_change_the_verdict():
    pts = s.overfit()
    assert verdict(pts).verdict == "overfit-capacity"
    # every overfit route this run meets: the val loss's rise, the metric's fall, the val loss no lower over the second
    # half beside a fitted train loss (under late_val_drop_min), a smaller rise far beyond the noise after an early turn
    # (rise_noise_strong_min), or held by every later eval beyond the band (rise_noise_min); each alone still reads
    # overfit
    off = {"val_loss_rise_min": 10.0, "val_metric_drop_min": 1.0, "late_val_drop_min": -10.0,
           "rise_noise_strong_min": 1e6, "rise_noise_min": 1e6}
    assert verdict(pts, thresholds=off).verdict != "overfit-capacity"
    for k in off:
        assert verdict(pts, thresholds={k: off[k]}).verdict == "overfit-capacity", k


def test_to_dict_is_json_ready():
    import json

    d = verdict(s.overfit())
    out = json.loads(json.dumps(d.to_dict()))
    assert out["verdict"] == "overfit-capacity"
    ev = out["findings"][0]["evidence"]
    assert {"feature", "value", "op", "threshold_name", "threshold", "passed", "text"} <= set(ev[0])


# ---- properties -----------------------------------------------------------------------------------

def _falling(draw_fracs):
    """Cumulative sums of positive steps -> a strictly monotone sequence."""
    out, acc = [], 0.0
    for x in draw_fracs:
        acc += x
        out.append(acc)
    return out


pos = st.floats(min_value=1e-4, max_value=1.0, allow_nan=False)


@settings(max_examples=120, deadline=None)
@given(n=st.integers(3, 20), data=st.data())
def test_strictly_falling_val_loss_with_rising_f1_never_fires_overfit(n, data):
    down = _falling(data.draw(st.lists(pos, min_size=n, max_size=n)))
    up = _falling(data.draw(st.lists(pos, min_size=n, max_size=n)))
    train = data.draw(st.lists(st.floats(0.0, 5.0), min_size=n, max_size=n))
    te = data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n))
    top = down[-1] + 0.1
    pts = []
    for i in range(n):
        p = {"step": i * 10, "epoch": i * 0.5, "val/loss": top - down[i], "val/macro_f1": up[i] / (up[-1] + 1e-3),
             "train_eval/macro_f1": te[i], "val/n": data.draw(st.sampled_from([30, 300, 3000]))}
        if i:
            p["train/loss"] = train[i]
        pts.append(p)
    d = diagnose(pts, meta=META)
    assert not d.fired("overfit-capacity", active_only=False)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 3.2), st.floats(0.01, 5.0), st.floats(0, 1)), min_size=2, max_size=15))
def test_finite_histories_without_blow_up_never_fire_diverged(rows):
    pts = [{"step": i * 5, "val/loss": vl, "val/macro_f1": vf, **({"train/loss": tl} if i else {})}
           for i, (tl, vl, vf) in enumerate(rows)]
    start = pts[1]["train/loss"]
    for p in pts[2:]:
        p["train/loss"] = min(p["train/loss"], 1.4 * start)
    assert not diagnose(pts, meta=META).fired("diverged", active_only=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 5), st.floats(0.01, 5), st.floats(0, 1), st.floats(0, 1)),
                min_size=1, max_size=12), st.booleans())
def test_any_history_diagnoses_with_at_most_one_primary_and_sane_confidences(rows, with_meta):
    pts = [{"step": i * 5, "epoch": i * 0.25, "val/loss": vl, "val/macro_f1": vf, "train_eval/macro_f1": tf,
            "val/n": 200, **({"train/loss": tl} if i else {})} for i, (tl, vl, vf, tf) in enumerate(rows)]
    d = diagnose(pts, meta=META if with_meta else None)
    assert all(0.0 < f.confidence <= 1.0 for f in d.findings)
    curve_active = [f for f in d.active if f.scope == "curve"]
    assert d.primary is (curve_active[0] if curve_active else None)
    assert [f.priority for f in d.findings] == sorted((f.priority for f in d.findings), reverse=True)


# ---- multi-run verdicts ------------------------------------------------------------------------------

def run(name, best, *, lr=1e-4, r=8, alpha=16, seed=42, val_n=1000, gap=0.05, val_loss=1.0):
    pts = s.make_history(train_loss=s.decay(2.3, 0.5, 8), val_loss=s.decay(2.3, val_loss, 8),
                         val_f1=s.decay(0.1, best, 30), val_n=val_n,
                         train_f1=None if gap is None else s.decay(0.1, best + gap, 30))  # None: no train_eval
    cfg = {"adapter": {"r": r, "lora_alpha": alpha}, "train": {"learning_rate": lr, "seed": seed,
                                                               "output_dir": f"runs/{name}"}}
    return from_points(pts, meta=META, config=cfg, name=name)


def test_two_runs_differ_beyond_noise_by_the_noise_of_their_difference():
    """One run's sigma is the root mean square of the runs' SEs (the catalogue's formula), not the larger SE; the
    band is protocol 6's 2 sigma: 0.80 against 0.85 on 500 rows each is 2.9 sigma apart."""
    c = compare([run("base", 0.80, val_n=500), run("lr2", 0.85, lr=2e-4, val_n=500)])
    se = [math.sqrt(q * (1 - q) / 500) for q in ((b * 500 + 1) / 502 for b in (0.80, 0.85))]
    effect = next(g.effect for g in c.groups if g.knob == "learning_rate")
    rms = math.hypot(*se) / math.sqrt(2)
    assert c.features["noise"] == pytest.approx(rms, rel=1e-3)
    assert c.features["max_effect_noise"] == pytest.approx(effect / rms, rel=1e-3) == pytest.approx(2.94, abs=0.01)
    assert not c.fired("differences-within-noise")


def test_minimal_intervention_pair_optimization_bound_with_binomial_noise():
    c = compare([run("base", 0.60), run("lr2", 0.70, lr=2e-4), run("r16", 0.61, r=16, alpha=32)])
    knobs = {g.knob: g for g in c.groups}
    assert set(knobs) == {"learning_rate", "r"}
    assert knobs["learning_rate"].effect == pytest.approx(0.10, abs=1e-3)
    assert knobs["r"].note == "scale lora_alpha/r fixed"
    se2 = [q * (1 - q) / 1000 for q in ((b * 1000 + 1) / 1002 for b in (0.60, 0.70, 0.61))]
    noise = math.sqrt(sum(se2) / 3)  # one run's sigma: the root mean square of the three runs' SEs
    assert c.features["noise"] == pytest.approx(noise, rel=1e-3)
    assert "binomial" in c.features.details["noise_source"]
    assert c.fired("optimization-bound") and not c.fired("capacity-bound")
    f = next(f for f in c.findings if f.rule_id == "optimization-bound")
    assert any("best learning_rate: 0.0002" in n for n in f.notes)
    # the number printed beside the deltas is one run's sigma, the unit the rule holds effect_noise_min of (2 x it,
    # NOISE_BAND's band): it was called "noise of a difference", whose std is sqrt 2 x it
    said = next(n for n in f.notes if n.startswith("learning_rate deltas vs the best run"))
    assert said.endswith(f"; noise unit (one run's sigma) {noise:.3f}: an effect counts from {2 * noise:.3f} "
                         "(effect_noise_min 2 units)"), said
    assert "noise of a difference" not in " ".join(f.notes)


def test_minimal_intervention_pair_capacity_bound():
    c = compare([run("base", 0.60), run("lr2", 0.605, lr=2e-4), run("r16", 0.70, r=16)])
    assert c.fired("capacity-bound") and not c.fired("optimization-bound")
    assert {g.note for g in c.groups if g.knob == "r"} == {"lora_alpha fixed"}


def test_seed_noise_is_used_when_seed_runs_exist_and_can_swallow_an_effect():
    runs = [run("s1", 0.60, seed=1), run("s2", 0.66, seed=2), run("s3", 0.54, seed=3),
            run("lr2", 0.65, lr=2e-4, seed=1)]
    c = compare(runs)
    assert c.features["seed_std"] == pytest.approx(0.06, abs=1e-3)
    assert "seed std over 3 runs" in c.features.details["noise_source"]
    assert c.fired("seed-unstable")
    assert c.features["lr_effect_noise"] == pytest.approx(0.05 / 0.06, rel=1e-2)  # under 2 seed sigmas
    assert not c.fired("optimization-bound")
    assert c.fired("differences-within-noise")


def test_differences_within_noise_names_the_group_and_noise_that_set_max_effect_noise(capsys):
    """The knob-less rule reads max_effect_noise: one group's effect over that group's own noise. Its note named the
    pooled noise of every run (k_r4 k_a8 k_r8 k_lr: "4 runs' SE (0.0838)" under a lora_alpha 0.175 / 0.0903 = 1.9)."""
    from loratune.commands._diagnose_view import render_comparison
    from rich.console import Console
    c = compare([run("base", 0.60, val_n=100), run("a32", 0.68, alpha=32, val_n=100),
                 run("r16", 0.60, r=16, val_n=4000)])
    alpha = next(g for g in c.groups if g.knob == "lora_alpha")
    assert alpha.noise != pytest.approx(c.features["noise"], rel=0.05)  # the pooled noise is another number
    assert c.features["max_effect_noise"] == pytest.approx(alpha.effect / alpha.noise)
    assert c.features["max_effect_noise"] < 2
    f = next(f for f in c.findings if f.rule_id == "differences-within-noise")
    assert f.notes[0] == (f"noise: the lora_alpha group's own, which sets max_effect_noise "
                          f"({alpha.effect_noise():.1f} units): {alpha.noise_source}")
    assert "2 runs' SE" in f.notes[0] and "3 runs'" not in " ".join(f.notes)
    assert any(n.startswith("lora_alpha deltas vs the best run") and f"noise unit (one run's sigma) {alpha.noise:.3f}"
               in n for n in f.notes)
    assert f.moves == rule_by_id("differences-within-noise").moves  # its moves do not turn towards the group
    render_comparison(Console(width=200), c)
    out = capsys.readouterr().out
    assert f"{alpha.effect_noise():.1f} (noise {alpha.noise:.3f})" in out
    assert "noise: each group against its own runs (the table); all runs: " in out


def test_alpha_insensitive_and_its_near_miss():
    c = compare([run("a16", 0.60), run("a32", 0.603, alpha=32)])
    assert c.fired("alpha-insensitive")
    c = compare([run("a16", 0.60), run("a32", 0.68, alpha=32)])
    assert not c.fired("alpha-insensitive")


def test_update_too_weak_when_lr_barely_moves_the_loss_and_gap_is_large():
    c = compare([run("base", 0.60, gap=0.2), run("lr2", 0.601, lr=2e-4, gap=0.2, val_loss=1.01)])
    assert c.fired("update-too-weak")
    c = compare([run("base", 0.60, gap=0.2), run("lr2", 0.65, lr=2e-4, gap=0.2, val_loss=0.7)])
    assert not c.fired("update-too-weak")



def test_update_too_weak_stops_at_the_max_scale_threshold():
    """Protocol 4: scale s 1 -> 2, rarely above 4 (beyond it a hidden lr increase). The rule prescribed a scale x2
    at any scale (r=8 lora_alpha=64: s 8 -> 16); it fires only while the best run's scale x2 stays within
    max_scale (the threshold tune's phase 2 reads), and its move says what the move does."""
    from loratune.moves import MOVES
    from loratune.rules import THRESHOLDS

    assert THRESHOLDS["max_scale"].value == 4.0

    def weak(alpha, r=8, rslora=False, thresholds=None):
        runs = [run("base", 0.60, gap=0.2, alpha=alpha, r=r),
                run("lr2", 0.601, lr=2e-4, gap=0.2, val_loss=1.01, alpha=alpha, r=r)]
        for h in runs:
            h.config["adapter"]["use_rslora"] = rslora
        return compare(runs, thresholds=thresholds)

    c = weak(16)  # s 2 -> 4: at the cap
    assert c.features["scale_x2"] == pytest.approx(4.0) and c.fired("update-too-weak")
    f = next(f for f in c.findings if f.rule_id == "update-too-weak")
    assert f.moves == ("scale x2 (lora_alpha x2)",) == (MOVES["scale-x2"].text,)
    for alpha, x2 in ((32, 8.0), (64, 16.0)):  # s 4 and 8: x2 passes the cap
        c = weak(alpha)
        assert c.features["scale_x2"] == pytest.approx(x2) and not c.fired("update-too-weak")
        assert not any(n.rule_id == "update-too-weak" for n in c.not_evaluated)
    assert weak(64, thresholds={"max_scale": 16}).fired("update-too-weak")  # --thresholds moves the cap
    # rsLoRA: s = lora_alpha / sqrt(r)
    assert weak(8, r=16, rslora=True).features["scale_x2"] == pytest.approx(4.0)
    assert weak(8, r=16, rslora=True).fired("update-too-weak")
    assert not weak(16, r=16, rslora=True).fired("update-too-weak")
    # alpha kept to 3 digits: rsLoRA r=8 at s 2 is alpha 5.66 (s 2.0011), whose x2 is the cap, not past it
    assert weak(5.66, r=8, rslora=True).features["scale_x2"] == 4.0
    assert weak(5.66, r=8, rslora=True).fired("update-too-weak")


def test_update_too_weak_is_not_evaluated_when_no_run_measured_the_train_val_gap():
    # protocol 4's "more rank unwanted" is half the condition: unknown (no train-subsample metric), no verdict
    c = compare([run("base", 0.60, gap=None), run("lr2", 0.601, lr=2e-4, gap=None, val_loss=1.01)])
    assert c.features["gap_f1_max"] is None and c.features["lr_loss_effect"] < 0.05
    assert all(f.rule_id != "update-too-weak" for f in c.findings), [(f.rule_id, f.missing) for f in c.findings]
    assert [n.missing[0][0] for n in c.not_evaluated if n.rule_id == "update-too-weak"] == ["gap_f1_max"]


def test_one_arm_of_the_pair_does_not_claim_which_knob_binds():
    """Protocol 5: the binding knob is read from an lr-only AND a rank-only trial. Two runs differing only in r (the
    rank effect far beyond noise) read 'capacity-bound: more sensitive to rank than to learning rate' (confidence
    0.6, next move r x2, +ffn) with no lr arm measured; now neither bound fires on one arm, the rank effect stays in
    the table, and the not-evaluated list names the missing arm. The same for an lr arm alone."""
    for arm, knob, feature in ((run("r16", 0.70, r=16, alpha=32), "r", "r_over_lr_effect"),
                               (run("lr2", 0.70, lr=2e-4), "learning_rate", "lr_over_r_effect")):
        c = compare([run("base", 0.60), arm])
        assert not c.fired("capacity-bound") and not c.fired("optimization-bound"), c.findings
        (g,) = c.groups
        assert g.knob == knob and g.effect == pytest.approx(0.10, abs=1e-3) and g.effect_noise() > 2
        gaps = {n.rule_id: dict(n.missing) for n in c.not_evaluated}
        rule = "capacity-bound" if knob == "r" else "optimization-bound"
        assert "minimal-intervention pair" in gaps[rule][feature]
    both = compare([run("base", 0.60), run("lr2", 0.605, lr=2e-4), run("r16", 0.70, r=16, alpha=32)])
    assert both.fired("capacity-bound") and not both.fired("optimization-bound")  # the pair still decides


def test_runs_differing_in_two_knobs_or_lacking_config_are_not_compared():
    c = compare([run("base", 0.6), run("both", 0.7, lr=2e-4, r=16, alpha=16)])
    assert c.groups == ()
    assert any("exactly one" in n for n in c.notes)
    bare = from_points(s.healthy(), name="bare")
    c = compare([run("base", 0.6), bare])
    assert any("bare: no config" in n for n in c.notes)
    assert {n.rule_id for n in c.not_evaluated} >= {"capacity-bound", "optimization-bound", "seed-unstable"}


def test_a_run_in_no_knob_group_is_named_with_what_it_differs_in():
    """Runs beside a knob group that join none of them were left out without a word (a 7-run lr sweep compared 6):
    each is named beside its nearest run, with the keys they differ in."""
    c = compare([run("base", 0.6), run("lr2", 0.7, lr=2e-4), run("odd", 0.65, lr=3e-4, r=16, alpha=16)])
    assert [g.knob for g in c.groups] == ["learning_rate"]
    assert {row[0] for row in c.groups[0].runs} == {"base", "lr2"}
    (said,) = [n for n in c.notes if n.startswith("in no knob group")]
    assert said == "in no knob group (each beside its nearest run): odd vs base differ in learning_rate, r"
    assert not any(n.startswith("in no knob group") for n in compare([run("base", 0.6), run("lr2", 0.7, lr=2e-4)]).notes)


def test_runs_in_no_knob_group_are_said_capped_and_once():
    """The runs in no knob group are said as the no-group note says its pairs: PAIRS_SAID_MAX of them and how many
    more (13 unrelated runs made one 900-character note); two identical runs, each the other's nearest, are one pair;
    a partial run that differs from its nearest in its steps done only is the partial-runs note's already."""
    from dataclasses import replace

    from loratune.diagnose import PAIRS_SAID_MAX

    odd = [run(f"odd{i:02d}", 0.5, lr=1e-4 * (i + 3), r=4 * (i + 3)) for i in range(PAIRS_SAID_MAX + 3)]
    c = compare([run("base", 0.6), run("lr2", 0.7, lr=2e-4)] + odd)
    (said,) = [n for n in c.notes if n.startswith("in no knob group")]
    assert said.count(" vs ") == PAIRS_SAID_MAX and said.endswith("; and 3 more pairs")
    assert said.startswith("in no knob group (each beside its nearest run): odd00 vs ")
    c = compare([run("base", 0.6), run("lr2", 0.7, lr=2e-4), run("x", 0.6, lr=3e-4, r=16), run("y", 0.6, lr=3e-4, r=16)])
    (said,) = [n for n in c.notes if n.startswith("in no knob group")]
    assert said == ("in no knob group (each beside its nearest run): x vs y agree on every key (learning_rate, "
                    "lora_alpha, r, seed)")
    half = replace(run("half", 0.55), meta={**META, "partial": True, "steps_done": 40})
    c = compare([run("base", 0.6), run("lr2", 0.7, lr=2e-4), half])
    assert any("half (40 steps done)" in n for n in c.notes)
    assert not any(n.startswith("in no knob group") for n in c.notes), c.notes
    half_r = replace(run("half_r", 0.55, r=16), meta={**META, "partial": True, "steps_done": 40})
    c = compare([run("base", 0.6), run("lr2", 0.7, lr=2e-4), half_r])
    (said,) = [n for n in c.notes if n.startswith("in no knob group")]
    assert said == "in no knob group (each beside its nearest run): half_r vs base differ in r, steps_done"


def test_config_targets_resolve_as_the_adapter_config_names_them():
    """A loratune run with no adapter_config.json (diverged before saving one) names its targets as the same
    modules' full paths read from a finished run's adapter_config.json, layer selections included."""
    from loratune.diagnose import _config_targets, _peft_targets

    model = {"model_type": "bert", "num_layers": 6, "depth": 6}
    paths = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")] + \
        [f"bert.encoder.layer.{i}.{m}.dense" for i in (4, 5) for m in ("intermediate", "output")]
    want = ("intermediate.dense@4,5", "output.dense@4,5", "query", "value")
    assert _peft_targets(paths, 6, "bert") == want
    assert _config_targets(["attn.q", "attn.v", "ffn@top:2"], None, model) == want
    assert _config_targets(["attn.q", "attn.v", "ffn@4,5"], "all", model) == want
    assert _config_targets(["attn.q", "attn.v"], "top:2", model) == ("query@4,5", "value@4,5")
    assert _config_targets(["attn.q", "attn.v"], None, model) == ("query", "value")
    # an unknown architecture, a layer selection without a block count, a name the table has not: literal
    assert _config_targets(["attn.q"], None, {"model_type": "gpt2", "num_layers": 6}) is None
    assert _config_targets(["attn.q@top:1"], None, {"model_type": "bert"}) is None
    assert _config_targets(["attn.q"], "top:1", {"model_type": "bert"}) is None
    assert _config_targets(["pooler.dense"], None, model) is None
    assert _config_targets(["bert.encoder.layer.0.attention.self.query"], None, model) is None
    # targets on every block resolve without a block count
    assert _config_targets(["attn.q", "attn.v"], None, {"model_type": "bert"}) == ("query", "value")
    # paths of two stacks (an encoder and a decoder) are not one block layout: literal
    two = ["encoder.layer.0.attention.self.query", "decoder.encoder.layer.1.attention.self.query"]
    assert _peft_targets(two, 3, "bert") == tuple(sorted(two))


def test_config_targets_resolve_all_linear_and_raw_names_as_the_plan_does():
    """all-linear and raw module names (with layer selections) resolve as adapt.resolve_targets does (its
    select_sites, on the group table's block modules), so a diverged run pairs with its finished twin."""
    from loratune.diagnose import _config_targets, _peft_targets

    model = {"model_type": "bert", "num_layers": 6, "depth": 6}
    rels = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense"]
    every = [f"bert.encoder.layer.{i}.{m}" for i in range(6) for m in rels]
    assert _config_targets(["all-linear"], None, model) == _peft_targets(every, 6, "bert") == (
        "attention.output.dense", "intermediate.dense", "key", "output.dense", "query", "value")
    paths = [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")] + \
        [f"bert.encoder.layer.{i}.intermediate.dense" for i in (4, 5)]
    want = ("intermediate.dense@4,5", "query", "value")
    assert _peft_targets(paths, 6, "bert") == want
    assert _config_targets(["attn.q", "attn.v", "intermediate.dense@top:2"], None, model) == want
    assert _config_targets(["query", "value", "intermediate.dense@4,5"], "all", model) == want
    assert _config_targets(["attn.q", "value"], None, model) == ("query", "value")
    assert _config_targets(["all-linear"], "top:1", {"model_type": "llama", "num_layers": 4, "depth": 4}) == (
        "down_proj@3", "gate_proj@3", "k_proj@3", "o_proj@3", "q_proj@3", "up_proj@3", "v_proj@3")
    # ALBERT: 12 layers run one shared block; a selection counts the layers (resolve_targets' shared depth)
    assert _config_targets(["attn.q@top:6"], None, {"model_type": "albert", "num_layers": 1, "depth": 12}) == (
        "query",)


def test_a_diverged_all_linear_run_pairs_with_its_finished_twin():
    """A diverged run (config groups, no adapter_config.json) and a finished one (full paths) of the same all-linear
    plan differ in learning_rate only: one learning_rate group."""
    def run(name, lr, facts):
        pts = [{"step": s, "train/loss": 2.0 - 0.01 * s, "val/loss": 2.0 - 0.005 * s, "val/f1": 0.1 + 0.004 * s}
               for s in range(0, 101, 10)]
        cfg = {"adapter": {"method": "lora", "r": 8, "lora_alpha": 16, "target_modules": ["all-linear"],
                           "layers_to_transform": "all"},
               "train": {"learning_rate": lr, "seed": 42, "max_steps": 100}}
        h = from_points(pts, {"model": {"model_type": "bert", "num_layers": 2, "depth": 2}, "status": "completed"},
                        cfg, name)
        if facts:
            from dataclasses import replace

            from loratune.history_io import Fact
            rels = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "intermediate.dense", "output.dense"]
            h = replace(h, facts={"target_modules": Fact(sorted(f"bert.encoder.layer.{i}.{m}" for i in range(2)
                                                                 for m in rels), "adapter_config.json")})
        return h

    c = compare([run("lr5e-2", 5e-2, False), run("lr5e-3", 5e-3, True)])
    assert [(g.knob, sorted(r[0] for r in g.runs)) for g in c.groups] == [("learning_rate", ["lr5e-2", "lr5e-3"])]


def test_a_key_the_runs_task_does_not_read_is_no_difference():
    """A run of an older version (multi_label_loss bce, the default then) against a current one (bce_pos_weight) at
    another lr: single-label runs train with cross-entropy whatever that key says, so they differ in lr alone (they
    read 'no two runs differ in exactly one of learning_rate, ...'). Multi-label runs do read it: not compared."""
    def with_loss(h, loss, task):
        h.config["train"]["multi_label_loss"] = loss
        return replace(h, meta={**h.meta, "task": task})

    c = compare([with_loss(run("old", 0.60), "bce", "single_label"),
                 with_loss(run("new", 0.70, lr=2e-4), "bce_pos_weight", "single_label")])
    assert [g.knob for g in c.groups] == ["learning_rate"]
    assert next(g.effect for g in c.groups) == pytest.approx(0.10, abs=1e-3)
    c = compare([with_loss(run("old", 0.60), "bce", "multi_label"),
                 with_loss(run("new", 0.70, lr=2e-4), "bce_pos_weight", "multi_label")])
    assert c.groups == () and any("exactly one" in n for n in c.notes)


@pytest.mark.parametrize("n_evals, curve, expect", [
    (1, lambda f: 2.0, "(one train-loss window, no trend)"),  # a 4-step run: one window, no fall to read
    (4, lambda f: 2.0 + f, "(rose 50.0%; rose 20.0% over the last half)"),  # a rise is words, not 'fell -50.0%'
    (4, lambda f: 2.0 - f, "(fell 50.0%; fell 33.3% over the last half)"),
    # a 250% rise over the last half: the feature stops at -100% (LATE_DROP_FLOOR), which read "rose 100.0%"
    (4, lambda f: 2.0 + max(0.0, f - 0.5) * 10, "(rose 250.0%; rose at least 100.0% over the last half)"),
    # a V-shaped second half (1.0, 0.01 x4, then 5.0): its least-squares line's middle is below 0 (clamped at 0), and
    # the late drop read 0.0: "fell 0.0% over the last half" of a loss that rose from 0.01 to 5.0
    (10, lambda f: {5: 1.0, 6: 0.01, 7: 0.01, 8: 0.01, 9: 0.01, 10: 5.0}.get(round(f * 10), 2.0 - 0.1 * round(f * 10)),
     "(rose 150.0%; rose at least 100.0% over the last half)"),
])
def test_curve_summary_says_a_missing_trend_or_a_rise_in_words(n_evals, curve, expect):
    pts = s.make_history(train_loss=curve, val_loss=lambda f: 2.0, n_evals=n_evals, steps_per_eval=4)
    line = next(ln for ln in diagnose(from_points(pts, meta=META)).curve_summary() if ln.startswith("train loss:"))
    assert line.endswith(expect), line
    assert "missing" not in line and " -" not in line.split("(")[1], line


def test_late_drop_of_a_line_whose_middle_is_zero():
    """The second half's fitted line clamped at 0 in its middle (a V shape): a loss ending above it rose past any
    share of 0, the feature's floor (LATE_DROP_FLOOR, not 0.0: "fell 0.0%"); a second half flat at 0 did not move."""
    from loratune.features import LATE_DROP_FLOOR

    vee = {5: 1.0, 6: 0.01, 7: 0.01, 8: 0.01, 9: 0.01, 10: 5.0}
    pts = s.make_history(train_loss=lambda f: vee.get(round(f * 10), 2.0 - 0.1 * round(f * 10)),
                         val_loss=lambda f: 2.0, n_evals=10, steps_per_eval=4)
    assert diagnose(from_points(pts, meta=META)).features.values["train_loss_late_drop"] == LATE_DROP_FLOOR
    pts = s.make_history(train_loss=lambda f: 2.0 if f < 0.5 else 0.0, val_loss=lambda f: 2.0, n_evals=10,
                         steps_per_eval=4)
    assert diagnose(from_points(pts, meta=META)).features.values["train_loss_late_drop"] == 0.0


def test_evidence_on_a_clipped_feature_says_its_value_is_the_clip_or_beyond():
    """train_loss_late_drop is clipped at -100% (features.LATE_DROP_FLOOR, for the rules): a loss that rose 250% over
    the last half read "train loss fell -100.0% over the last half" as if measured; it reads "-100.0% or lower"."""
    from loratune.features import FEATURES

    pts = s.make_history(train_loss=lambda f: 2.0 + max(0.0, f - 0.5) * 10, val_loss=lambda f: 2.0, n_evals=4,
                         steps_per_eval=4)
    from loratune.diagnose import _evidence
    from loratune.rules import THRESHOLDS, Clause

    d = diagnose(from_points(pts, meta=META))
    assert d.features.values["train_loss_late_drop"] == -1.0  # the clip, for the rules
    thresholds = {k: t.value for k, t in THRESHOLDS.items()}
    e = _evidence(Clause("train_loss_late_drop", ">=", "plateau_late_drop_max"), d.features, thresholds, FEATURES)
    assert e.text.startswith("train loss fell -100.0% or lower over the last half of training; ") and e.value == -1.0
    e = _evidence(Clause("train_loss_drop", ">=", "plateau_late_drop_max"), d.features, thresholds, FEATURES)
    assert e.text.startswith("train loss fell -250.0% over the run; "), e.text
    from loratune.features import LATE_DROP_FLOOR

    assert LATE_DROP_FLOOR == -1.0 and FEATURES["train_loss_late_drop"].at_floor(-1.0) and not FEATURES["train_loss_late_drop"].at_floor(-0.99)
    assert not FEATURES["train_loss_drop"].at_floor(-5.0)  # unclipped: a rise reads as measured


# ---- comparisons: the better run's direction, the measure's sign, the noise policy, peft target names ------------


def test_compare_moves_point_towards_the_better_run():
    """A compare rule's moves are written for a better run at the larger value: where the smaller rank (or lr) did
    better they turn into their opposites, and a best value between the tried ones holds the knob."""
    up = compare([run("base", 0.60), run("lr2", 0.605, lr=2e-4), run("r16", 0.70, r=16)])
    f = next(f for f in up.active if f.rule_id == "capacity-bound")
    assert f.moves == ("r x2", "+ffn")
    down = compare([run("base", 0.70), run("lr2", 0.705, lr=2e-4), run("r16", 0.60, r=16)])
    f = next(f for f in down.active if f.rule_id == "capacity-bound")
    assert f.moves == ("r /2", "-ffn")
    assert any("best r: 8 (run base" in n for n in f.notes)
    held = compare([run("base", 0.70), run("lr2", 0.705, lr=2e-4), run("r4", 0.60, r=4, alpha=8),
                    run("r16", 0.60, r=16, alpha=32)])
    f = next(f for f in held.active if f.rule_id == "capacity-bound")
    assert f.moves == ("keep capacity",)
    lower_lr = compare([run("base", 0.70), run("lr2", 0.60, lr=2e-4), run("r16", 0.695, r=16, alpha=32)])
    f = next(f for f in lower_lr.active if f.rule_id == "optimization-bound")
    assert f.moves == ("learning_rate /2",)
    higher_lr = compare([run("base", 0.60), run("lr2", 0.70, lr=2e-4), run("r16", 0.61, r=16, alpha=32)])
    assert next(f for f in higher_lr.active if f.rule_id == "optimization-bound").moves == ("learning_rate x2",)


def test_a_loss_based_comparison_shows_losses_in_their_own_sign():
    """Loss-only runs are compared on their lowest val loss: the rows hold the losses (not negated), the best run is
    the lowest, the deltas are loss differences (a worse run is +), and the table says which way is better."""
    import io

    from rich.console import Console

    from loratune.commands._diagnose_view import render_comparison

    def loss_run(name, vloss, r=4, alpha=8, lr=1e-4):
        pts = s.make_history(train_loss=s.decay(2.3, 0.5, 8), val_loss=s.decay(2.3, vloss, 8), val_n=None)
        return from_points(pts, meta=META, config={"adapter": {"r": r, "lora_alpha": alpha},
                                                   "train": {"learning_rate": lr, "seed": 42}}, name=name)

    # the lr arm of the pair (capacity-bound reads both arms: protocol 5), a hair from the start
    c = compare([loss_run("r4", 1.30), loss_run("r8", 1.36, r=8), loss_run("lr2", 1.301, lr=2e-4)])
    assert c.measure == "lowest val loss"
    (g,) = [g for g in c.groups if g.knob == "r"]
    assert [(row[0], row[2]) for row in g.runs] == [("r4", pytest.approx(1.30, abs=1e-3)),
                                                     ("r8", pytest.approx(1.36, abs=1e-3))]
    assert g.best()[0] == "r4" and g.effect == pytest.approx(0.06, abs=1e-3)
    assert g.to_dict()["runs"][0]["measured"] == pytest.approx(1.30, abs=1e-3)
    out = io.StringIO()
    render_comparison(Console(file=out, width=250), c)
    text = out.getvalue()
    assert "lowest val loss (lower is better)" in text and "best val metric" not in text
    assert "r4=4: 1.300" in text and "r8=8: 1.360" in text and "-1.3" not in text
    f = next(f for f in c.findings if f.rule_id == "capacity-bound")
    assert any("best r: 4 (run r4, lowest val loss 1.300)" in n for n in f.notes)
    assert any("(val loss: lower is better): r8 (r=8): +0.060" in n for n in f.notes)


def test_comparison_noise_of_a_token_accuracy_follows_the_single_run_policy():
    """A token accuracy is no share of rows: a single run gives it no binomial SE (its curve's jitter is its noise),
    and neither does the comparison."""
    def tok_run(name, best, lr):
        pts = s.make_history(train_loss=s.decay(2.3, 0.5, 8), val_loss=s.decay(2.3, 1.0, 8),
                             val_f1=s.decay(0.1, best, 30), val_n=20, noise=0.0)
        pts = [{("val/token_accuracy" if k == "val/macro_f1" else k): v for k, v in p.items()
                if k != "val/accuracy"} for p in pts]
        return from_points(pts, meta={"status": "completed"}, config={"adapter": {"r": 4, "lora_alpha": 8},
                                                                       "train": {"learning_rate": lr}}, name=name)

    runs = [tok_run("a", 0.60, 0.01), tok_run("b", 0.70, 0.03)]
    assert all(diagnose(r).features.values.get("val_metric_se") is None for r in runs)
    c = compare(runs)
    assert "binomial" not in c.features.details["noise_source"]
    assert c.features.details["noise_source"].startswith("the metric curves' own jitter")
    jit = [compute_features(r.points, r.meta, r.config).values["val_metric_noise"] for r in runs]
    assert c.features["noise"] == pytest.approx(max(math.hypot(*jit) / math.sqrt(2), 0.0025), rel=1e-3)


def test_peft_target_names_compare_in_one_form():
    """Full paths over every layer read as peft's shortest suffixes; paths that leave a layer out name their blocks
    (a difference from every layer); paths whose depth is unknown stay literal (a difference, not a guess); loratune's
    groups resolve through the group table."""
    from loratune.diagnose import _config_targets, _peft_targets

    paths = [f"bert.encoder.layer.{i}.attention.{m}" for i in range(2) for m in ("self.query", "output.dense")]
    assert _peft_targets(paths, 2, "bert") == ("attention.output.dense", "query")
    assert _peft_targets(paths, 3, "bert") == ("attention.output.dense@0,1", "query@0,1")
    assert _peft_targets(paths, None, "bert") == tuple(sorted(paths))
    assert _peft_targets(["value", "query"], None) == ("query", "value")
    assert _config_targets(["attn.q", "attn.v"], None, {"model_type": "bert"}) == ("query", "value")
    assert _config_targets(["attn.q@0", "attn.v"], None, {"model_type": "bert"}) is None
    assert _config_targets(["attn.q"], None, {"model_type": "gpt2"}) is None


def _loss_run(final: float, lr: float, seed: int, name: str):
    """A loss-only causal-lm run (no val metric: compared on its lowest val loss) whose val loss ends at `final`."""
    pts = [{"step": st, "train/loss": 2.0 - 0.015 * st, "val/loss": 2.0 - (2.0 - final) * st / 100}
           for st in range(0, 101, 10)]
    cfg = {"train": {"learning_rate": lr, "seed": seed, "max_steps": 100},
           "adapter": {"method": "lora", "r": 8, "lora_alpha": 16}, "model": {"name_or_path": "x", "task": "causal-lm"}}
    return from_points(pts, {}, cfg, name)


@pytest.mark.parametrize("seed_final", [1.0001, 1.0])
def test_a_loss_comparison_with_seed_runs_keeps_tunes_loss_floor(seed_final):
    """A loss comparison with seed runs had no noise floor: two seeds 1e-4 apart made a 0.3% val-loss difference 42
    noise units (optimization-bound), identical seeds made the noise 0 and the effect 'noise unknown'. It keeps the
    floor tune's loss objective reads (objectives: val/loss's noise_floor, NOISE_BAND's unit of it)."""
    from loratune.objectives import NOISE_BAND, objective

    c = compare([_loss_run(1.0, 1e-4, 0, "a"), _loss_run(seed_final, 1e-4, 1, "b"), _loss_run(1.003, 2e-4, 0, "c")])
    assert c.measure == "lowest val loss"
    unit = objective("val/loss").noise_floor / NOISE_BAND.sigmas
    assert c.features.values["noise"] == pytest.approx(unit)
    assert c.features.values["lr_effect_noise"] == pytest.approx(0.003 / unit, rel=1e-6)
    assert [f.rule_id for f in c.findings] == ["differences-within-noise"]


@pytest.mark.parametrize("band_se", [2.0, 3.0])
def test_curve_summary_reads_a_tie_at_the_band_as_the_rules_do(band_se):
    """The summary's "a tie (inside the noise band)" compared with a plain `<`, while the rules' operators allow
    float rounding (objectives.at_threshold): a fall or rise of the band's size computed a rounding short of it
    (1.9999999999999998 for 2) counts for `>= drop_se_min` and read "a tie" here. Exactly at the band, and a
    rounding below it, the summary says the noise units, as the rule reads; clearly inside, it says a tie."""
    from loratune.diagnose import RULE_OPS

    pts = s.make_history(train_loss=lambda f: 2.0 - f, val_loss=lambda f: 1.0 + (f - 0.5) ** 2,
                         val_f1=lambda f: 0.5 + 0.3 * f - 0.3 * max(0.0, f - 0.8))
    d = diagnose(from_points(pts, meta=META), thresholds={"drop_se_min": band_se})
    assert d.tie_band_se == band_se
    for at, tie in ((band_se, False), (band_se * (1 - 1e-16), False), (band_se - 1e-12, False),
                    (band_se * 0.9, True)):
        tie = tie or not RULE_OPS[">="](at, band_se)  # what the rule reads: a tie is exactly its complement
        values = {**d.features.values, "val_metric_final_drop_se": at, "val_metric_final_drop": 0.01,
                  "val_loss_rise_noise": at, "val_loss_rise": 0.01}
        lines = replace(d, features=replace(d.features, values=values)).curve_summary()
        metric = next(ln for ln in lines if "best" in ln and "val loss" not in ln)
        loss = next(ln for ln in lines if ln.startswith("val loss:"))
        assert ("a tie (inside the noise band)" in metric) == tie, (at, metric)
        assert ("tie, inside the noise band" in loss) == tie, (at, loss)
        assert ("noise units below the best" in metric) != tie and ("noise units above the minimum" in loss) != tie


def test_compare_reads_the_thresholds_the_runs_were_judged_by_where_they_agree():
    """Each run's diagnosis read its recorded thresholds (rules.RUN_THRESHOLDS_KEY: a study's trials), but compare()
    read the defaults in silence: update-too-weak fired that the study's thresholds would not. Where the runs' records
    agree the comparison reads them (a note says so); where they differ, the defaults, and it says the runs were judged
    by different thresholds."""
    from loratune.rules import RUN_THRESHOLDS_KEY

    study = {"weak_lr_loss_max": 0.0001}  # the lr's 0.01 loss effect is no longer "barely moves the loss"

    def judged(history, overrides):
        return replace(history, meta={**history.meta, RUN_THRESHOLDS_KEY: overrides})

    pair = [run("base", 0.60, gap=0.2), run("lr2", 0.601, lr=2e-4, gap=0.2, val_loss=1.01)]
    assert compare(pair).fired("update-too-weak")  # the defaults
    c = compare([judged(h, study) for h in pair])
    assert not c.fired("update-too-weak") and dict(c.thresholds_overridden) == study
    assert "thresholds: the ones these runs were judged by: weak_lr_loss_max=0.01%" in c.notes
    assert c.to_dict()["thresholds_overridden"] == study
    c = compare([judged(pair[0], study), pair[1]])
    assert c.fired("update-too-weak") and dict(c.thresholds_overridden) == {}
    assert ("thresholds: the runs were judged by different thresholds (base: weak_lr_loss_max=0.01%; lr2: the "
            "defaults): compared with the defaults (give --thresholds to compare with others)") in c.notes
    # thresholds given win over the records
    assert compare([judged(h, study) for h in pair], thresholds={}).fired("update-too-weak")


def _full_run(folder, points):
    """A loratune run folder (run.json method full + history.jsonl) of these points."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({**META, "method": "full"}))
    (folder / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    return folder


def _at_lr(points, lr):
    """`points` with every logged lr at `lr` (synth_runs logs 1e-3, above a full fine-tune's range)."""
    return [{**p, "lr": lr} for p in points]


def test_a_full_fine_tunes_underfit_moves_its_lr_and_speaks_of_no_lora_knob():
    # a full fine-tune that plateaued early and high read underfit-capacity with an empty move list (every move an
    # adapter's) and "at the top of LoRA's range", "run the pair experiment (r x2 vs learning_rate x2)"
    full = verdict(_at_lr(s.underfit(), 3e-5), {**META, "method": "full"})
    assert full.verdict == "underfit-capacity" and full.primary.moves == ("learning_rate x2",)
    assert "LoRA" not in full.primary.verdict and "r x2" not in full.primary.caveat
    lora = verdict(s.underfit(), {**META, "method": "lora"}).primary
    assert lora.moves == ("r x2", "+ffn", "+attn.k, attn.o", "+layers") and "r x2" in lora.caveat
    assert "LoRA" in lora.verdict


@pytest.mark.parametrize("lr", [1.5e-4, 2e-4, 1e-3, 2e-3])
def test_a_full_fine_tune_reads_an_lr_already_high_against_its_own_range(lr):
    """A full fine-tune's usual lr sits 10x below LoRA's (rules.FULL_FT_LR_RANGE, 1e-5..5e-5), but underfit-capacity
    judged "lr already high" against LoRA's (high_lr_min 1.5e-3) and told a full fine-tune whose loss stalled high at
    2e-3 (40x the top of its range) learning_rate x2, as at 2e-4 and 1e-3 on a plateau. Every lr threshold set against
    LoRA's range is read at 1/10 for method full (rules.thresholds_for_method): at or above 1.5e-4 such a run reads
    lr-too-large (learning_rate /2), never x2; LoRA and method-unknown runs read as before."""
    L = s.lnk()
    stuck = s.make_history(train_loss=s.decay(L, 0.9 * L, 12), val_loss=s.decay(L, 0.95 * L, 12),
                           val_f1=s.decay(0.1, 0.2, 12), train_f1=s.decay(0.1, 0.21, 12))
    for pts in (s.underfit(), stuck):
        full = verdict(_at_lr(pts, lr), {**META, "method": "full"})
        assert full.verdict == "lr-too-large" and full.primary.moves == ("learning_rate /2",), (lr, full.verdict)
        assert not full.fired("underfit-capacity") and not full.fired("healthy")
        lora = verdict(_at_lr(pts, lr), {**META, "method": "lora"})
        assert lora.verdict in ("underfit-capacity", "healthy") and "learning_rate /2" not in lora.primary.moves
    # below its range's top the plateau still reads underfit with its one lr step
    full = verdict(_at_lr(s.underfit(), 1e-4), {**META, "method": "full"})
    assert full.verdict == "underfit-capacity" and full.primary.moves == ("learning_rate x2",)
    from loratune.rules import LORA_OVER_FULL_LR, LORA_RANGE_LR_THRESHOLDS, THRESHOLDS, thresholds_for_method

    th = {n: t.value for n, t in THRESHOLDS.items()}
    assert {n: v for n, v in thresholds_for_method(th, "full").items() if v != th[n]} == {
        n: th[n] / LORA_OVER_FULL_LR for n in LORA_RANGE_LR_THRESHOLDS} == pytest.approx({
        "collapse_lr_min": 1e-3, "high_lr_min": 1.5e-4, "lora_lr_floor": 1e-5})
    assert thresholds_for_method(th, "lora") == th and thresholds_for_method(th, None) == th
    shown = verdict(_at_lr(stuck, 2e-3), {**META, "method": "full"}).primary.evidence
    assert any(e.feature == "peak_lr" and e.threshold == pytest.approx(1.5e-4) for e in shown)


def test_every_printer_says_none_and_why_for_a_full_fine_tunes_empty_move_list(tmp_path, monkeypatch, capsys):
    # rules left no move for a full fine-tune (both-slices-low: r x2, +ffn) printed "next move: " in diagnose and
    # "next move:  (confidence 0.60)" in the callback, while show and report said "none" (and show's finding "no
    # move"): one text, rules.moves_text, says none and why
    from loratune.cli import main
    from loratune.rules import NO_MOVE, Rule, moves_text

    want = moves_text("both-slices-low", ())
    assert want == ("none for a full fine-tune (this rule's moves, r x2, +ffn, turn adapter knobs it does not "
                    "have)") and moves_text("inconclusive", ()) == NO_MOVE == "none"
    assert moves_text("underfit-capacity", ("learning_rate x2",)) == "learning_rate x2"
    monkeypatch.setattr(Rule, "moves_for", lambda self, method, lr_high=False: () if method == "full" else self.moves)
    run = _full_run(tmp_path / "full_uf", _at_lr(s.underfit(), 3e-5))
    said = moves_text("underfit-capacity", ())
    assert main(["diagnose", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"verdict: underfit-capacity next move: {said}" in out and out.count(f"next move: {said}") == 2, out
    assert main(["show", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"next move: {said}" in out and f"→ {said}" in out and "no move" not in out, out
    assert main(["report", str(run), "-o", str(tmp_path / "r.html")]) == 0
    import html

    page = html.unescape((tmp_path / "r.html").read_text())
    assert page.count(said) >= 2 and ">no move<" not in page
    from loratune.integrations import LoratuneCallback

    lines: list[str] = []
    d = diagnose(run)
    LoratuneCallback(printer=lines.append)._say("step 200", d.primary, d)
    assert lines == [f"[loratune] step 200: underfit-capacity - {'; '.join(d.primary.route)}; next move: {said} "
                     f"(confidence {d.primary.confidence:.2f})"]


@pytest.mark.parametrize("lr, moves", [(3e-5, ("learning_rate x2",)), (1e-3, None)])
def test_a_full_fine_tunes_low_slices_move_its_lr_inside_its_range(lr, moves):
    """both-slices-low (protocol 3's underfit: even familiar phrasing scores low) had no move of its own for a full
    fine-tune: it printed 'none for a full fine-tune (this rule's moves, r x2, +ffn, ...)'. As underfit-capacity reads
    it, a full fine-tune's move is one lr step (protocol 5) with FULL_UNDERFIT_CAVEAT, and only below the top of its lr
    range (high_lr_min read at 1/10, 1.5e-4): at 1e-3 the rule holds off rather than step further out."""
    from loratune.rules import PAIR_CAVEAT

    pts = _at_lr(s.healthy(extra=lambda f, i: {"val_familiar/macro_f1": 0.4, "val_novel/macro_f1": 0.3}), lr)
    full = verdict(pts, {**META, "method": "full"})
    hit = next((f for f in full.findings if f.rule_id == "both-slices-low"), None)
    if moves is None:
        assert hit is None
    else:
        assert hit.moves == moves and "r x2" not in (hit.caveat or "")
        assert hit.caveat == rule_by_id("underfit-capacity").full_caveat  # rules.FULL_UNDERFIT_CAVEAT
    lora = next(f for f in verdict(pts, {**META, "method": "lora"}).findings if f.rule_id == "both-slices-low")
    assert lora.moves == ("r x2", "+ffn") and lora.caveat == PAIR_CAVEAT


def test_full_fine_tunes_compared_get_no_lora_words_or_knobs():
    """compare() read every rule's LoRA text for full fine-tunes (its features carried no method): update-too-weak
    told two full fine-tunes 'LoRA update too weak' and 'scale x2 (lora_alpha x2)'. Runs that are all full fine-tunes
    are read with the rules' full moves and words (protocol 4 names no full move here: none, and why)."""
    from loratune.rules import moves_text

    def full(h):
        return replace(h, meta={**h.meta, "method": "full"})

    pair = [run("base", 0.60, gap=0.2), run("lr2", 0.601, lr=2e-4, gap=0.2, val_loss=1.01)]
    lora = compare(pair)
    assert next(f for f in lora.findings if f.rule_id == "update-too-weak").moves == ("scale x2 (lora_alpha x2)",)
    c = compare([full(h) for h in pair])
    weak = next(f for f in c.findings if f.rule_id == "update-too-weak")
    assert weak.moves == () and "LoRA update" not in weak.verdict and "every weight trained" in weak.verdict
    assert moves_text("update-too-weak", weak.moves) == (
        "none for a full fine-tune (this rule's moves, scale x2 (lora_alpha x2), turn adapter knobs it does not have)")
    mixed = compare([full(pair[0]), pair[1]])  # one LoRA run among them: LoRA's words
    assert next(f for f in mixed.findings if f.rule_id == "update-too-weak").moves == ("scale x2 (lora_alpha x2)",)


def _stalled_no_train_eval(lr):
    """underfit's curves as an HF Trainer run logs them: no train-subsample metric (gap_f1 missing)."""
    L = s.lnk()
    return _at_lr(s.make_history(train_loss=s.decay(L, 0.7 * L, 12), val_loss=s.decay(L, 0.72 * L, 12),
                                 val_f1=s.decay(0.1, 0.35, 12)), lr)


@pytest.mark.parametrize("lr", [1.5e-4, 2e-4, 1e-3, 2e-3])
def test_a_stalled_full_fine_tune_without_train_eval_reads_lr_too_large_tentatively(lr):
    """A stalled full fine-tune above its lr range with no train_eval metric (normal for an HF Trainer run) read
    healthy: gap_f1 missing left lr-too-large's full route unknown, and inside the rule's top-level `any` the other
    routes' failing closed it, while underfit-capacity (which fires tentatively on the same evidence) was gated off.
    The route is its own (Cond.alone): it fires where underfit-capacity would, tentatively, one signal missing."""
    full = verdict(_stalled_no_train_eval(lr), {**META, "method": "full"})
    assert full.verdict == "lr-too-large" and full.primary.moves == ("learning_rate /2",)
    assert full.primary.tentative and [m[0] for m in full.primary.missing] == ["gap_f1"]
    assert full.primary.confidence == pytest.approx(0.8 * 0.75)  # one signal missing, no thin margin
    assert full.primary.route[0] == "a full fine-tune at an lr above its usual range stalled high, train and val both low"
    for method in ("lora", None):  # the same curve elsewhere: underfit-capacity as before, tentatively
        other = verdict(_stalled_no_train_eval(lr), {**META, **({"method": method} if method else {})})
        assert other.verdict == "underfit-capacity" and other.primary.tentative
        assert other.primary.confidence == pytest.approx(0.6 * 0.75)
    below = verdict(_stalled_no_train_eval(1e-4), {**META, "method": "full"})
    assert below.verdict == "underfit-capacity" and below.primary.moves == ("learning_rate x2",)
    assert below.primary.tentative and below.primary.confidence == pytest.approx(0.6 * 0.75)  # the gate thins nothing


@pytest.mark.parametrize("fixture, table, expected", [
    ("public_p/4g__kaggle_science_llm__multiple_choice", 0, "inconclusive"),
    ("public_aw/ronalds82__Datu-kopas-tulkosana__Instruct", 0, "healthy"),
    ("public_av/cs-2006__cil__bert_new", 0, "inconclusive"),
    ("public_ax/Vishwajitha__Suicide-risk-prediction-application__suicide_detection", 0, "inconclusive"),
])
def test_a_full_fine_tunes_lr_gate_is_no_evidence_for_other_runs(fixture, table, expected):
    """The full-fine-tune-only gate of underfit-capacity (peak_lr < high_lr_min, holding for every LoRA run below
    1.5e-3) counted as positive evidence: four corpus runs moved to underfit-capacity (ronalds82: healthy). A gate
    (Cond.gate) says which runs a route is for and counts as none."""
    from pathlib import Path

    from loratune.history_io import read_notebook
    path = Path(__file__).parents[1] / "fixtures/external" / fixture / "notebook.ipynb"
    assert diagnose(read_notebook(path, table=table)).verdict == expected


def test_underfit_capacity_keeps_loras_words_for_lora_runs():
    """The route text of a LoRA run stuck high at a high lr read 'the top of its method's usual range' (six corpus
    runs): LoRA's wording stays LoRA's."""
    L = s.lnk()
    stuck = s.make_history(train_loss=s.decay(L, 0.9 * L, 12), val_loss=s.decay(L, 0.95 * L, 12),
                           val_f1=s.decay(0.1, 0.2, 12), train_f1=s.decay(0.1, 0.21, 12))
    d = verdict(_at_lr(stuck, 2e-3), {**META, "method": "lora"})
    assert d.verdict == "underfit-capacity"
    assert d.primary.route == ("the loss stuck high at an lr already at the top of LoRA's range",)


@pytest.mark.parametrize("lr", [2e-4, 1e-3])
def test_no_rule_raises_the_lr_of_a_full_fine_tune_above_its_range(lr):
    """lr-too-small's slow-fall route told a full fine-tune classifier at 2e-4..1e-3 (4-20x the top of its range)
    learning_rate x2, and undertrained 'epochs up, learning_rate x2' at any lr. Above its high_lr_min (1.5e-4) no
    rule raises a full fine-tune's lr; a steadily still-falling loss there is no stalled one either (lr-too-large's
    full route read it 'stalled' and said /2). With and without train_eval metrics."""
    def no_train_eval(pts):
        return [{k: v for k, v in p.items() if not k.startswith("train_eval/")} for p in pts]

    for pts in (s.lr_too_small(), no_train_eval(s.lr_too_small()), s.undertrained(), no_train_eval(s.undertrained())):
        d = verdict(_at_lr(pts, lr), {**META, "method": "full"})
        for f in d.findings:
            assert "learning_rate x2" not in f.moves, (f.rule_id, lr)
        assert d.verdict != "lr-too-small"
        # (at 1e-3, 20x its range's top, a train loss pinned at 0.95 x ln(classes) is the collapse route's, no stall)
        assert d.verdict != "lr-too-large" or "stalled" not in d.primary.route[0], d.primary.route
    under = verdict(_at_lr(s.undertrained(), lr), {**META, "method": "full"})
    assert under.verdict == "undertrained" and under.primary.moves == ("epochs up",)
    inside = verdict(_at_lr(s.undertrained(), 3e-5), {**META, "method": "full"})
    assert inside.primary.moves == ("epochs up", "learning_rate x2")
    assert verdict(_at_lr(s.lr_too_small(), 3e-5), {**META, "method": "full"}).verdict == "lr-too-small"
    assert verdict(_at_lr(s.lr_too_small(), lr), {**META, "method": "lora"}).primary.moves == ("learning_rate x2",)


def _no_lr(points):
    """`points` with no lr logged (peak_lr missing)."""
    return [{k: v for k, v in p.items() if k != "lr"} for p in points]


def test_a_full_fine_tune_with_no_lr_logged_reads_as_before_and_is_not_told_its_lr_is_high():
    """A full fine-tune with no lr logged read worse than before its lr gate: the gate (full fine-tune below its
    range's top, an `any`) was closed by its failed 'not a full fine-tune' member, so lr-too-small, underfit-capacity
    and both-slices-low never fired (lr_too_small's slow fall read healthy 0.75), while lr-too-large's full route
    (its own, held open) said 'learning_rate /2 ... at an lr above its usual range' about an lr nobody knows. A gate
    whose signal is missing stays open and counts as no evidence (the rule tentative, peak_lr missing); the full
    route of lr-too-large needs the lr known (`required`)."""
    full = {**META, "method": "full"}
    slow = verdict(_no_lr(s.lr_too_small()), full)
    assert slow.verdict == "lr-too-small" and slow.primary.moves == ("learning_rate x2",)
    assert slow.primary.tentative and "peak_lr" in [m[0] for m in slow.primary.missing]
    stalled = verdict(_no_lr(_stalled_no_train_eval(1e-3)), full)
    assert stalled.verdict == "underfit-capacity" and stalled.primary.moves == ("learning_rate x2",)
    assert stalled.primary.tentative and sorted(m[0] for m in stalled.primary.missing) == ["gap_f1", "peak_lr"]
    assert all(f.rule_id != "lr-too-large" for f in stalled.findings)
    assert "peak_lr" in [m[0] for m in next(n for n in stalled.not_evaluated if n.rule_id == "lr-too-large").missing]
    for method in ("lora", None):  # a LoRA or unknown run with no lr: as before, no lr gate to open
        other = verdict(_no_lr(s.lr_too_small()), {**META, **({"method": method} if method else {})})
        assert other.verdict == "lr-too-small" and not other.primary.tentative


@pytest.mark.parametrize("lr", [2e-4, 1e-3, 2e-3])
def test_a_full_fine_tunes_slow_steady_fall_above_its_range_is_not_healthy(lr):
    """A full fine-tune at 2e-4..2e-3 (above its range's top, 1.5e-4) whose losses fell slowly and steadily to a val
    F1 of 0.12 of 10 classes read healthy 0.75: lr-too-small is gated off there (no smaller step to blame) and
    undertrained wanted a late fall of late_val_drop_min, which a slow fall lacks. There, any late fall of a fit still
    improving reads undertrained, its move the epochs (no lr x2). With and without train_eval metrics."""
    def no_train_eval(pts):
        return [{k: v for k, v in p.items() if not k.startswith("train_eval/")} for p in pts]

    for pts in (s.lr_too_small(), no_train_eval(s.lr_too_small())):
        d = verdict(_at_lr(pts, lr), {"num_labels": 10, "status": "completed", "method": "full"})  # the review's run
        assert d.verdict == "undertrained" and d.primary.moves == ("epochs up",) and not d.primary.tentative
        assert next(f for f in d.findings if f.rule_id == "healthy").suppressed_by == "undertrained"
    # the same curve inside the range, or a LoRA run's: lr-too-small, as before
    assert verdict(_at_lr(s.lr_too_small(), 3e-5), {**META, "method": "full"}).verdict == "lr-too-small"
    assert verdict(_at_lr(s.lr_too_small(), 2e-4), {**META, "method": "lora"}).verdict == "lr-too-small"


@pytest.mark.parametrize("lr", [2e-4, 5e-4])
def test_a_gates_lr_clause_read_again_in_a_route_is_no_evidence(lr):
    """lr-too-large's full route reads `peak_lr >= high_lr_min` as its gate (required) and again in its stuck-high
    branch: two leaves of one clause, and only the gate's was left out of the positive evidence, so a full fine-tune's
    logged lr counted once as evidence: a flat loss-only run at ln C read lr-too-large (tentative, 0.12) and
    suppressed `collapsed` (0.68, learning_rate /2, check data). A clause equal to a gate's is the gate's."""
    L = s.lnk()
    flat = s.make_history(train_loss=lambda f: L, val_loss=lambda f: L, val_f1=lambda f: 0.1, train_f1=lambda f: 0.1)
    pts = [{**{k: v for k, v in p.items() if not k.startswith(("val/macro", "val/acc", "train_eval"))}, "lr": lr}
           for p in flat]
    d = diagnose(pts, meta={"status": "completed", "method": "full"})
    assert d.verdict == "collapsed"
    assert not d.fired("lr-too-large", active_only=False)


@pytest.mark.parametrize("lr", [2e-4, 5e-4])
def test_a_full_fine_tunes_collapse_above_its_range_reads_as_a_collapse(lr):
    """A full fine-tune that collapsed at 2e-4 (above its 1e-5..5e-5, below its collapse_lr_min 1e-3): the loss at
    ln(classes) throughout, val accuracy frozen at the majority share. It read lr-too-large "a full fine-tune at an
    lr above its usual range stalled high, train and val both low" (underfit-capacity's stall route): now the route
    that fires is the collapse's, with a full fine-tune's lr move; a LoRA run at that lr reads `collapsed` as before."""
    L = s.lnk()
    pinned = s.make_history(train_loss=lambda f: L, val_loss=lambda f: L * (1 + 0.001 * math.sin(9 * f)),
                            val_f1=lambda f: 0.1)
    full = verdict(_at_lr(pinned, lr), {**META, "method": "full"})
    assert full.verdict == "lr-too-large" and full.primary.moves == ("learning_rate /2",)
    assert full.primary.route[0] == "a full fine-tune at an lr above its usual range collapsed to one class"
    assert not any("stalled" in r for r in full.primary.route)
    lora = verdict(_at_lr(pinned, lr), {**META, "method": "lora"})
    assert lora.verdict == "collapsed"
    # a full fine-tune whose val metric learned is no collapse: not this route
    learning = s.make_history(train_loss=lambda f: L, val_loss=lambda f: L * (1 - 0.2 * f),
                              val_f1=lambda f: 0.1 + 0.6 * f)
    d = verdict(_at_lr(learning, lr), {**META, "method": "full"})
    assert d.primary is None or "collapsed to one class" not in " ".join(d.primary.route)


@pytest.mark.parametrize("lr", [1.5e-4, 2e-4, 5e-4])
def test_a_full_fine_tune_whose_train_loss_learned_beside_a_frozen_val_reads_collapsed_with_check_data(lr):
    """The full fine-tune collapse route above its lr range took a run whose train loss LEARNED (down to 0.4 x
    ln(classes)) while its val metric stayed frozen on one class: lr-too-large, learning_rate /2 alone, and no
    "check data". A train loss that fell 60% is no lr too large, likelier the data or the val split: it reads
    `collapsed` (learning_rate /2 and check data) as before the route; a train loss pinned near chance still reads
    the route's lr-too-large."""
    L = s.lnk()
    frozen_val = dict(val_loss=lambda f: L * (1 + 0.001 * math.sin(9 * f)), val_f1=lambda f: 0.1)
    learned = verdict(_at_lr(s.make_history(train_loss=s.decay(L, 0.4 * L, 3), **frozen_val), lr),
                      {**META, "method": "full"})
    assert learned.verdict == "collapsed"
    assert learned.primary.moves == ("learning_rate /2", "check data")
    assert not any("collapsed to one class" in r for r in learned.primary.route)
    pinned = verdict(_at_lr(s.make_history(train_loss=lambda f: L, **frozen_val), lr), {**META, "method": "full"})
    assert pinned.verdict == "lr-too-large" and pinned.primary.moves == ("learning_rate /2",)
    assert pinned.primary.route[0] == "a full fine-tune at an lr above its usual range collapsed to one class"
