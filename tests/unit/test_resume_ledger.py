"""The budget a resumed study has spent: a study recorded before each session's overheads were kept has only its last
summary's spend (final/study.json) for its earlier sessions' time around their trials."""

from __future__ import annotations

import pytest

from loratune.search.budget import Budget, Cost, CostModel, Meter
from loratune.search.context import SearchContext

from memory_store import MemoryStore


def test_an_older_studys_recorded_spend_is_not_lowered_by_this_sessions_own_startup(tmp_path):
    """An older study (no overheads kept) whose first session spent 100 s in all (its start-up and phase 0 included,
    final/study.json) is resumed: this session charges phase 0 again (20 s, the recorded assessment) and its own
    start-up (30 s). The top-up compared the recorded 100 s with everything charged so far (50 s) and added 50 s: the
    ledger said 100 s spent, as if this session's 30 s start-up had been the first session's (the first session's
    own 30 s of start-up and time around trials lost). Now the earlier sessions' share is the meter less this
    session's own overheads: 100 s earlier + 30 s now = 130 s."""
    now = [0.0]
    ctx = SearchContext(store=MemoryStore(tmp_path), runner=None, meter=Meter(Budget.parse("600s")),
                        trial_examples=100, costs=CostModel(), clock=lambda: now[0], since=0.0)
    ctx.meter.charge(Cost(20.0, 0, 0), "phase 0: assessment")  # the recorded assessment, charged again (tune.py)
    ctx.session = 0
    ctx.recorded_spent_s = 100.0  # the older study's final/study.json: budget.spent.wall_s
    now[0] = 30.0
    ctx.charge_elapsed("startup (this session)")
    ctx.charge_earlier()
    assert ctx.meter.spent.wall_s == pytest.approx(130.0)
    labels = [c.label for c in ctx.meter.ledger]
    assert labels[-1].startswith("earlier sessions' time around their trials")
    assert ctx.meter.ledger[-1].cost.wall_s == pytest.approx(80.0)  # 100 recorded - 20 phase 0 already charged
    ctx.charge_earlier()  # once only
    assert ctx.meter.spent.wall_s == pytest.approx(130.0)
