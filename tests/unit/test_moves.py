"""One move table: the moves a diagnosis prescribes are the moves the protocol applies."""

from __future__ import annotations

import pytest

from loratune.moves import MOVES, MoveContext, check_moves, move
from loratune.rules import RULES, Rule, all_, c, check_table, rule_by_id
from loratune.search.protocol import capacity_moves
from loratune.stepsize import step_size

LR, R, ALPHA, T = "train.learning_rate", "adapter.r", "adapter.lora_alpha", "adapter.target_modules"
P = {LR: 1e-3, R: 8, ALPHA: 16.0, T: ["attn.q", "attn.v", "ffn@top:2"], "adapter.layers_to_transform": "top:4",
     "adapter.lora_dropout": 0.1}


def test_the_table_is_sound_and_every_rule_move_is_a_row():
    assert check_moves() == []
    assert check_table() == []
    for rule in RULES:
        for m in rule.moves:
            assert move(m).text == m


def test_a_rule_naming_an_unknown_move_is_a_table_problem():
    bad = RULES + (Rule(id="x", scope="curve", when=all_(c("val_metric_gain", ">=", "no_gain_max")), verdict="v",
                        knob_class="capacity", moves=("r x3",), priority=1),)
    assert "x: unknown move 'r x3' (add it to loratune.moves.MOVES)" in check_table(bad)
    with pytest.raises(KeyError, match="unknown move 'r x3'"):
        move("r x3")


def test_the_protocol_applies_the_moves_the_capacity_rules_prescribe():
    assert [m.id for m in capacity_moves(down=False)] == ["r-x2", "add-ffn", "add-attn-ko", "add-layers"]
    assert [m.text for m in capacity_moves(down=False)] == list(rule_by_id("underfit-capacity").moves)
    assert [m.text for m in capacity_moves(down=True)] == list(rule_by_id("overfit-capacity").moves)


@pytest.mark.parametrize("mid,changes", [
    ("r-x2", {R: 16, ALPHA: 32.0}),
    ("r-half", {R: 4, ALPHA: 8.0}),
    ("add-ffn", {T: ["attn.q", "attn.v", "ffn"]}),  # only some layers' FFN: every layer's
    ("add-attn-ko", {T: ["attn", "ffn@top:2"]}),
    ("add-layers", {"adapter.layers_to_transform": "all"}),
    ("drop-ffn", {T: ["attn.q", "attn.v"]}),
    ("dropout-up", {"adapter.lora_dropout": 0.2}),
    ("weight-decay-up", {"train.weight_decay": 0.1}),
    ("lr-x2", {LR: 2e-3}),
    ("lr-half", {LR: 5e-4}),
    ("lr-tenth", {LR: 1e-4}),
    ("scale-x2", {ALPHA: 32.0}),
])
def test_what_each_move_does_to_a_config(mid, changes):
    assert MOVES[mid].on(P) == {**P, **changes}


def test_moves_that_do_not_apply_say_none():
    assert MOVES["r-x2"].on(P, MoveContext(ceiling_r=8)) is None
    assert MOVES["r-half"].on({**P, R: 1}) is None
    assert MOVES["add-ffn"].on({**P, T: ["all-linear"]}) is None
    assert MOVES["add-ffn"].on({**P, T: ["attn.q", "attn.v"]})[T] == ["attn.q", "attn.v", "ffn@top:2"]
    assert MOVES["drop-ffn"].on({**P, T: ["attn.q", "attn.v"]}) is None
    assert MOVES["dropout-up"].on({**P, "adapter.lora_dropout": 0.3}) is None
    assert MOVES["dropout-up"].on({**P, "adapter.lora_dropout": 0.2})["adapter.lora_dropout"] == 0.3  # capped
    assert MOVES["add-layers"].on({**P, "adapter.layers_to_transform": "all"}) is None
    assert not MOVES["check-data"].actionable and MOVES["check-data"].on(P) is None


@pytest.mark.parametrize("rule", ["rslora", "alpha_follows_r", "lr_compensate"])
def test_rank_moves_hold_the_step_size_by_the_rule(rule):
    for mid in ("r-x2", "r-half"):
        out = MOVES[mid].on(P, MoveContext(scale_rule=rule))
        assert step_size(out) == pytest.approx(step_size(P), rel=0.01)
    assert MOVES["scale-x2"].on(P)[ALPHA] == 32.0 and step_size(MOVES["scale-x2"].on(P)) == 2 * step_size(P)
