"""Which reader, check and training loop serve each model.task: the one place the task is dispatched
(`api`, `tune` and its workers call through it)."""

from __future__ import annotations

# model.task -> its data reader, the check of what training needs, and its training loop, as
# "module:function" (imported when used: the loops import torch), and the class its reader returns (what a caller's
# own `dataset` must be). The one place the task is dispatched.
TASK_RECIPES: dict[str, dict[str, str]] = {
    "classification": {"prepare": "loratune.data:load_dataset", "check": "loratune.data:check_trainable",
                       "train": "loratune.train:train", "dataset": "loratune.data:Dataset"},
    "causal-lm": {"prepare": "loratune.sft_data:load_sft_dataset", "check": "loratune.sft_data:check_trainable",
                  "train": "loratune.sft:train_sft", "dataset": "loratune.sft_data:SFTDataset"},
}


def recipe(cfg, step: str):
    """The task's `step` (prepare | check | train | dataset) as a function (a class), imported when asked."""
    import importlib

    module, name = TASK_RECIPES[cfg.model.task][step].split(":")
    return getattr(importlib.import_module(module), name)
