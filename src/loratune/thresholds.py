"""Every threshold `loratune rules` lists with a value a `--thresholds FILE.yaml` can override, by table: the
diagnosis table (`rules.THRESHOLDS`), assess's (`AssessThresholds`) and LoRA vs full's (`DecideThresholds`).

Apart from `loratune.rules` because the assess and decide records are not the diagnosis engine's to import
(rules -> assess.records would close an import cycle through difficulty and train). No value is repeated here:
each is read from its table. A name is unique across tables, so one flat `name: value` file serves every
command (`rules`, `diagnose`, `assess`) and each takes the names of its own tables."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from loratune.assess.records import AssessThresholds
from loratune.decide import DecideThresholds
from loratune.rules import default_thresholds, read_threshold_file, resolve_threshold_tables


def threshold_tables() -> dict[str, dict[str, Any]]:
    """table -> name -> default, for every overridable table `loratune rules` lists."""
    return {"diagnosis": default_thresholds(),
            "assess": {f.name: f.default for f in fields(AssessThresholds)},
            "lora_vs_full": {f.name: f.default for f in fields(DecideThresholds)}}


def load_threshold_tables(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Every table with the file's overrides applied (each name and value checked; one UserError names all)."""
    return resolve_threshold_tables(read_threshold_file(path), threshold_tables())
