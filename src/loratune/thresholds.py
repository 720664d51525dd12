"""Every threshold `loratune rules` lists with a value a `--thresholds FILE.yaml` can override, by table: the
diagnosis table (`rules.THRESHOLDS`), assess's (`AssessThresholds`) and LoRA vs full's (`DecideThresholds`).

Apart from `loratune.rules` because the assess and decide records are not the diagnosis engine's to import
(rules -> assess.records would close an import cycle through difficulty and train). No value is repeated here:
each is read from its table. A name is unique across tables, so one flat `name: value` file serves every
command (`rules`, `diagnose`, `assess`) and each takes the names of its own tables."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from loratune.assess.records import UNIT_INTERVAL_THRESHOLDS, AssessThresholds
from loratune.decide import DecideThresholds
from loratune.rules import ValueRange, default_thresholds, overridden_values, read_threshold_file, \
    resolve_recorded_tables, resolve_threshold_tables


# the range of each assess threshold bounded by 1 (AssessThresholds's UNIT_INTERVAL_THRESHOLDS)
UNIT_INTERVAL = ValueRange(0.0, 1.0, why="a cosine, share or score: above 1 the check never fires")


def threshold_tables() -> dict[str, dict[str, Any]]:
    """table -> name -> default, for every overridable table `loratune rules` lists."""
    return {"diagnosis": default_thresholds(),
            "assess": {f.name: f.default for f in fields(AssessThresholds)},
            "lora_vs_full": {f.name: f.default for f in fields(DecideThresholds)}}


def load_threshold_tables(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Every table with the file's overrides applied (each name and value checked; one UserError names all)."""
    return tables_with(read_threshold_file(path))


def tables_with(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Every table with `overrides` (name -> value, as `overridden` gives them) applied, checked as a file's are."""
    return resolve_threshold_tables(overrides, threshold_tables(), _UNIT_INTERVALS, fixed_numbers())


def recorded_tables(overrides: Mapping[str, Any] | None, where: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every table with the overrides a record holds (a study's, stored by an earlier session: `where` names it)
    applied, and the notes on values the ranges now refuse: read as recorded (rules.resolve_recorded_tables)."""
    return resolve_recorded_tables(overrides, threshold_tables(), where, _UNIT_INTERVALS, fixed_numbers())


_UNIT_INTERVALS = {n: UNIT_INTERVAL for n in UNIT_INTERVAL_THRESHOLDS}


def fixed_numbers() -> dict[str, str]:
    """name -> where `loratune rules` lists it, for each number it shows that no --thresholds file overrides (LoRA vs
    full's fixed rows, the numbers inside the moves): read where they are defined."""
    from loratune.decide import lora_vs_full_catalog
    from loratune.moves import MOVE_CONSTANTS

    fixed = {row["name"]: "LoRA vs full" for row in lora_vs_full_catalog() if not row["overridable"]}
    fixed.update({name: "the numbers inside the moves" for name, _, _ in MOVE_CONSTANTS})
    return fixed


def not_read_by_diagnosis(overrides: Mapping[str, Any] | None) -> dict[str, str]:
    """name -> its table, for each override of `overrides` that the diagnosis never reads (assess's long_tail_count,
    LoRA vs full's share_total): `diagnose` takes the file and says these change nothing there (the diagnosis's
    long-tail cut is features.LONG_TAIL_COUNT, fixed)."""
    owner = {name: table for table, values in threshold_tables().items() for name in values}
    return {name: owner[name] for name in (overrides or {}) if owner.get(name, "diagnosis") != "diagnosis"}


def assess_thresholds(overrides: Mapping[str, Any] | None) -> AssessThresholds:
    """The assess table with `overrides` (name -> value: a --thresholds file's, api.assess's thresholds=) applied,
    checked as a file's are; names of the other tables are taken and change nothing here, as in a file."""
    return AssessThresholds(**tables_with(overrides)["assess"])


def overridden(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """name -> value of every threshold in `tables` whose value differs from its default (rules.overridden_values: what
    `tune` stores in its study and compares on --resume)."""
    defaults = threshold_tables()
    return dict(sorted((name, value) for table, values in tables.items()
                       for name, value in overridden_values(values, defaults[table]).items()))
