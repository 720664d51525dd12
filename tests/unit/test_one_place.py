"""One formula, one place: the compute-breakeven rank and the config defaults the search reads."""

from __future__ import annotations

import math

import pytest

from loratune import params
from loratune.assess.rules import ceiling_by_model
from loratune.config import RunConfig
from loratune.search import protocol, space


def test_breakeven_rank_is_a_third_of_the_adapted_weights():
    # 4 square 64 x 64 weights: per rank 4 * 128 = 512; a third of 16384 weights is 5461.3 -> r 10.67 -> 11
    assert params.breakeven_rank(4 * 64 * 64, 512) == 11
    assert params.breakeven_point(64 * 64, 128) == pytest.approx(64 / 6)
    assert params.breakeven_rank(None, 512) is None and params.breakeven_rank(100, 0) is None
    assert params.breakeven_rank(3, 1000) == 1  # never below rank 1


def test_the_protocol_uses_the_same_formula():
    # 8000 LoRA parameters at r 8: 1000 per rank; a third of 30000 is 10000 -> r 10
    assert protocol.breakeven_rank({"adapter": 8000, "adapted_weights": 30_000}, 8) == 10
    assert protocol.breakeven_rank({"adapter": 8000, "adapted_weights": 30_000}, 8) == params.breakeven_rank(30_000, 1000)
    assert protocol.breakeven_rank({"adapter": None, "adapted_weights": 30_000}, 8) is None


@pytest.mark.parametrize("hidden", [32, 64, 95, 96, 100, 384, 576, 768, 1024, 2048, 4096])
def test_assess_ceiling_by_model_is_the_power_of_two_below_the_breakeven_of_a_square_weight(hidden):
    assert ceiling_by_model(hidden) == 2 ** int(math.log2(max(2, hidden / 6)))
    assert ceiling_by_model(hidden) <= params.breakeven_rank(hidden * hidden, 2 * hidden)


def test_search_defaults_are_the_config_defaults():
    cfg = RunConfig()
    assert space.DEFAULTS["adapter.r"] == cfg.adapter.r
    assert space.DEFAULTS["adapter.lora_alpha"] == cfg.adapter.lora_alpha
    assert space.DEFAULTS["train.learning_rate"] == cfg.train.learning_rate
    assert space.DEFAULTS["train.weight_decay"] == cfg.train.weight_decay
    assert space.DEFAULTS["train.seed"] == cfg.train.seed
    # a point without r / alpha trains with the config's r and alpha
    assert space.scale_of({}) == cfg.adapter.lora_alpha / cfg.adapter.r
    s = space.default_space({})
    assert cfg.train.learning_rate in s["train.learning_rate"].choices
    assert protocol._lr({}) == cfg.train.learning_rate and protocol._r({}) == cfg.adapter.r


def test_loras_per_rank_count_is_written_once():
    """LoRA's parameters per unit of rank, sum(d_in + d_out) over the adapted layers, is adapt.per_rank: plan's
    lora_shape wrote the sum a second time (plan.py, `sum(s.in_features + s.out_features for s in sites)`)."""
    import re
    from pathlib import Path

    import loratune

    src = Path(loratune.__file__).parent
    formula = re.compile(r"in_features\s*\+\s*\w+\.out_features|out_features\s*\+\s*\w+\.in_features")
    where = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if formula.search(p.read_text(encoding="utf-8")))
    assert where == ["adapt.py"]
