"""Phase 0 of the protocol: profile the task and the data before any training, propose the start config.

Plain data first, then named facts, then rule tables over the facts:

    records.py   the records (thresholds, profiles, conflicts, noise, shift, findings, `Assessment`) and
                 their serialisation (`Assessment.to_dict` / `from_dict`)
    text.py      text checks: normalisation, words, encoding damage, non-printables
    stats.py     length statistics, KS and Jensen-Shannon distances, the validation split's resolution
    profile.py   per-split profiles, label conflicts and noise (all splits pooled), shift vs train
    facts.py     `FACTS`: every named number the rules read, with its unit and meaning; `compute_facts`
    rules.py     `START_RULES` (the start config and capacity ceiling) and `FINDING_RULES` (the warnings
                 catalogue), every row evaluated; `rule_catalog` for `loratune rules`
    run.py       `assess_dataset` (pure: token lengths, model facts and the probe are passed in) and
                 `run_assessment(cfg)` (loads data, tokenises, runs the probe; the verb the CLI and `tune` call)
"""

from __future__ import annotations

from loratune.assess.facts import FACTS, Fact, compute_facts
from loratune.assess.profile import find_conflicts, find_noise, measure_shift, profile_split
from loratune.assess.records import (SCHEMA_VERSION, AssessThresholds, Assessment, Choice, Conflicts, DataFinding,
                                     LengthStats, Noise, Recommendation, Resolution, SplitProfile, SplitShift)
from loratune.assess.rules import (FINDING_RULES, START_RULES, Bands, Derived, FindingRule, StartRule,
                                   evaluate_findings, recommend, rule_catalog)
from loratune.assess.run import assess_dataset, run_assessment
from loratune.assess.stats import estimate_resolution, js_divergence, ks_statistic, length_stats, round_up
from loratune.assess.text import has_encoding_damage, has_non_printable, normalise, words

__all__ = [
    "FACTS", "Fact", "compute_facts", "find_conflicts", "find_noise", "measure_shift", "profile_split",
    "SCHEMA_VERSION", "AssessThresholds", "Assessment", "Choice", "Conflicts", "DataFinding", "LengthStats", "Noise",
    "Recommendation", "Resolution", "SplitProfile", "SplitShift", "FINDING_RULES", "START_RULES", "Bands", "Derived",
    "FindingRule", "StartRule", "evaluate_findings", "recommend", "rule_catalog", "assess_dataset", "run_assessment",
    "estimate_resolution", "js_divergence", "ks_statistic", "length_stats", "round_up", "has_encoding_damage",
    "has_non_printable", "normalise", "words",
]
