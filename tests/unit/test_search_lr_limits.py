"""A search started near the config's lr limit never draws, grids, probes or moves past it (config.py's field)."""

from loratune.config import key_table
from loratune.moves import MOVES
from loratune.search.space import default_space

LR = "train.learning_rate"
LIMIT = key_table()[LR].metadata["max"]


def test_space_near_the_lr_limit_stays_inside_it():
    space = default_space({LR: LIMIT / 2}, trial_steps=8)
    d = space[LR]
    assert d.high == LIMIT and d.low == LIMIT / 16
    assert max(d.choices) == LIMIT and all(0 < c <= LIMIT for c in d.choices)
    assert d.choices == (LIMIT / 8, LIMIT / 4, LIMIT / 2, LIMIT)  # 2x and 4x both at the limit, once
    for dim in space.dims:  # every knob's grid is a value its config field allows
        if dim.key in key_table():
            assert all(c <= (key_table()[dim.key].metadata.get("max") or float("inf")) for c in dim.choices
                       if isinstance(c, (int, float)))


def test_random_draws_near_the_limit_stay_inside_it():
    import optuna

    space = default_space({LR: LIMIT / 2})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    lrs = [space.suggest(study.ask())[LR] for _ in range(200)]
    assert max(lrs) <= LIMIT and max(lrs) > LIMIT / 2


def test_lr_x2_move_stops_at_the_limit():
    assert MOVES["lr-x2"].on({LR: LIMIT * 0.6})[LR] == LIMIT
    assert MOVES["lr-x2"].on({LR: LIMIT})[LR] == LIMIT
    assert MOVES["lr-half"].on({LR: LIMIT})[LR] == LIMIT / 2
