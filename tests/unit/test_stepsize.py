"""The effective step size lr x s and the rules that hold it when the rank changes (protocol 6)."""

from __future__ import annotations

import pytest

from loratune.stepsize import (SCALE_RULES, ScaleRule, describe_change, scale_of, scale_rule, step_size,
                               with_rank)

LR, R, ALPHA, RS = "train.learning_rate", "adapter.r", "adapter.lora_alpha", "adapter.use_rslora"


@pytest.mark.parametrize("rule", list(ScaleRule))
@pytest.mark.parametrize("start", [{LR: 1e-3, R: 8, ALPHA: 16.0}, {LR: 4e-3, R: 16, ALPHA: 8.0, RS: True},
                                   {LR: 2e-4, R: 4, ALPHA: 4.0}])
@pytest.mark.parametrize("r", [1, 2, 16, 32, 64])
def test_every_rule_holds_lr_times_s(rule, start, r):
    out = with_rank(start, r, rule)
    assert out[R] == r
    assert step_size(out) == pytest.approx(step_size(start), rel=0.01)


def test_the_rules_spell_the_new_rank_differently():
    p = {LR: 1e-3, R: 8, ALPHA: 16.0}  # s = 2
    rs = with_rank(p, 32, "rslora")
    assert rs[RS] is True and rs[ALPHA] == 11.3 and rs[LR] == 1e-3 and scale_of(rs) == pytest.approx(2, rel=1e-2)
    plain = with_rank(p, 32, "alpha_follows_r")
    assert plain.get(RS) is None and plain[ALPHA] == 64.0 and plain[LR] == 1e-3
    comp = with_rank(p, 32, "lr_compensate")  # alpha 16 kept: s 2 -> 0.5, so lr x4
    assert comp[ALPHA] == 16.0 and comp.get(RS) is None and comp[LR] == 4e-3
    comp_rs = with_rank({**p, RS: True, ALPHA: 5.66}, 32, "lr_compensate")  # rsLoRA: s falls by sqrt(4) = 2
    assert comp_rs[LR] == pytest.approx(2e-3, rel=1e-2)


def test_the_change_is_recorded_with_its_code():
    p = {LR: 1e-3, R: 8, ALPHA: 16.0}
    d = describe_change(p, with_rank(p, 32, "lr_compensate"), "lr_compensate")
    assert d["code"] == "step-size-held-lr" and d["rule"] == "lr_compensate"
    assert d["before"]["lr_x_s"] == d["after"]["lr_x_s"] == pytest.approx(2e-3)
    assert (d["before"]["scale"], d["after"]["scale"]) == (2.0, 0.5)
    assert {x.code for x in SCALE_RULES.values()} == {"step-size-held-rslora", "step-size-held-alpha",
                                                      "step-size-held-lr"}


def test_an_unknown_rule_is_named():
    with pytest.raises(ValueError, match="unknown scale rule 'alpha'; known: rslora, alpha_follows_r, lr_compensate"):
        scale_rule("alpha")
