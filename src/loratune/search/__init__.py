"""Tuning: the staged protocol (`protocol`), grid / random / TPE yardsticks (`yardstick`) over one search
space (`space`), with shared budget accounting (`budget`), pruning (`prune`), Optuna storage (`study`)
and the study summary (`summary`). `tune()` is the verb the CLI calls.
"""

from loratune.search.tune import TuneOptions, tune

__all__ = ["TuneOptions", "tune"]
