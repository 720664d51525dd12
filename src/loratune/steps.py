"""Optimizer steps and the training examples they process (pure arithmetic, no torch): an epoch is its
micro-batches in groups of gradient_accumulation_steps, the last group the remainder, so an epoch ends with an
optimizer step (as the HF Trainer) and a step never borrows batches of the next epoch. train.step_groups deals the
batches this way; train.plan_steps, the dry-run and tune's trial plan count with these functions."""

from __future__ import annotations

import math


def steps_per_epoch(n_train: int, batch: int, accum: int = 1) -> int:
    """Optimizer steps in one pass over `n_train` rows at `batch` rows a micro-batch, `accum` micro-batches a step."""
    return max(1, math.ceil(math.ceil(max(1, n_train) / max(1, batch)) / max(1, accum)))


def examples_for(n_train: int, batch: int, accum: int, steps: int) -> int:
    """Training rows `steps` optimizer steps process (repeats counted): whole epochs of `n_train` rows, then the
    first steps of one more (a batch never holds more rows than the split has)."""
    epochs, rest = divmod(steps, steps_per_epoch(n_train, batch, accum))
    return epochs * n_train + min(n_train, rest * max(1, accum) * batch)
