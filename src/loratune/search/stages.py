"""The stages of the tuning protocol by id, and the name of every phase a decision trail can show.

A stage id is the phase string its trials and decisions are recorded under (`TrialSpec.phase`,
`decision["phase"]`), so studies written before the enum existed read the same. What a stage does,
its priority and planned cost live in one table beside its function (`protocol.STAGE_TABLE`); this
module holds only the names, so the report can read them without importing the search machinery.
"""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType
from typing import Mapping


class StageId(str, Enum):
    LR_PROBE = "lr-probe"
    LR_GRID = "phase1-lr-grid"
    EARLY_LONG = "early-long"  # the lr grid's incumbent at the final length; promoted challengers (issue 15)
    PAIR = "pair"  # run inside the capacity stage when a slow curve is ambiguous (listed first: it runs first)
    CAPACITY = "phase1-capacity"
    PHASE2 = "phase2"
    SEEDS = "seeds"
    RANK_SWEEP = "rank-sweep"
    TARGET_SWEEP = "target-sweep"
    ARMS = "arms"  # LoRA+ / DoRA, each at its own lr (off unless ProtocolSettings.arms names them)
    FULL_PROBE = "lora-vs-full"
    FINAL_TRAIN = "final-train"

    @property
    def title(self) -> str:
        return TRAIL_PHASES[self.value]

    def __str__(self) -> str:  # the phase string, on every Python (3.12 changed str() of mixed-in enums)
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# the report's name of each phase a trail holds: the stages, and the decisions outside any stage
TRAIL_PHASES: Mapping[str, str] = MappingProxyType({
    "phase0": "phase 0",
    StageId.LR_PROBE.value: "lr probe",
    StageId.LR_GRID.value: "lr grid",
    StageId.EARLY_LONG.value: "train long early",
    StageId.CAPACITY.value: "capacity",
    StageId.PAIR.value: "pair",
    StageId.PHASE2.value: "phase 2",
    StageId.SEEDS.value: "seeds",
    StageId.RANK_SWEEP.value: "rank sweep",
    StageId.TARGET_SWEEP.value: "target sweep",
    StageId.ARMS.value: "arms",
    StageId.FULL_PROBE.value: "LoRA vs full",
    "full-probe": "LoRA vs full",  # the full probe's name in studies written before the stage table
    StageId.FINAL_TRAIN.value: "final training",
    "revisit": "revisit",
    "finish": "finish",
    "yardstick": "sampler",
})
