"""What the protocol's stages learn and hand on: a typed record instead of a dict of string keys.

`SearchContext.state` is a `ProtocolState`. Stages read and write its fields (`ctx.state.incumbent`).
For code written against the dict it replaced, `state["final"]`, `state.get("final")` and
`"final" in state` still work on the field names (a field that is None reads as absent).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Start:
    """Phase 0's answer: the tuned point to start from and the capacity ceiling."""

    point: dict[str, Any]  # dotted overrides of the tuned knobs (r, alpha, targets, layers, dropout, lr)
    ceiling_r: int
    lr_centre: float
    choices: tuple[dict, ...] = ()  # {key, value, rule, reason} from the assessment
    facts: dict = field(default_factory=dict)
    fixed: dict = field(default_factory=dict)  # study-wide keys (batch size, max_length)
    epochs: float | None = None  # the assessment's epoch count for a full run


@dataclass
class ProtocolState:
    start: Start | None = None  # phase 0
    base_seed: int | None = None  # the study's training seed (seed replicates count up from it)
    trial_steps: int | None = None  # one trial's optimizer steps (the plan)
    trial_epochs: float | None = None
    lr_centre: float | None = None  # the lr probe's centre
    incumbent: Any = None  # TrialRecord: the best config so far, what later stages start from
    final: Any = None  # TrialRecord: the pick (the incumbent, a full fine-tuning probe, or a long run)
    # TrialRecord: the trial-length run the pick was trained long from (set once the early long run ran): a
    # later incumbent replaces the pick only when it beats this one beyond noise, and is then trained long
    champion: Any = None
    challenged: list[int] = field(default_factory=list)  # trial numbers already judged as challengers
    failed: bool = False  # no trial learned: later stages do nothing
    skipped: list[str] = field(default_factory=list)  # stages a budget stop cut (revisited at the end)
    skipped_points: dict = field(default_factory=dict)  # stage -> the point of the trial the budget skipped first
    revisited: bool = False
    seed_sigma: float | None = None  # std of the incumbent's val metric over seeds
    seed_values: list[float] = field(default_factory=list)
    pair: dict | None = None  # the minimal-intervention pair's deltas and binding knob
    rank_sweep: dict | None = None  # its points, plateau, threshold, step-size rule
    lora_vs_full: dict | None = None  # decide.py's answer and the probe trial
    final_notes: dict = field(default_factory=dict)  # config keys for the final run (early stopping)
    stages: tuple = ()  # the stage table run_protocol runs (protocol.table.StageSpec rows; budget reservation)

    # ------------------------------------------------------------------ the dict it replaced
    def _field(self, key: str) -> str:
        if key not in _FIELDS:
            raise KeyError(f"{key!r} is not a ProtocolState field ({', '.join(sorted(_FIELDS))})")
        return key

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, self._field(key))
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, self._field(key), value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in _FIELDS and getattr(self, key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None) if key in _FIELDS else None
        return default if value is None else value


_FIELDS = frozenset(f.name for f in dataclasses.fields(ProtocolState))
