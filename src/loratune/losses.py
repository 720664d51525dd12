"""Training losses, chosen by `train.multi_label_loss` for multi-label data (single-label: cross-entropy).

- `bce`: binary cross-entropy per label, averaged over labels and rows (each label's positives are
  a few percent of rows, so a rare label's gradient is mostly "say no").
- `bce_pos_weight`: the same with `pos_weight` = negatives / positives per label, from the training
  label frequencies (torch's `BCEWithLogitsLoss(pos_weight=...)`; the docs' own recipe), kept within
  [`MIN_POS_WEIGHT`, `MAX_POS_WEIGHT`]: a positive of a label seen in 2% of rows weighs as much as its 49
  negatives, and a label on more than half the rows keeps weight 1 (plain BCE).
- `focal`: the sigmoid focal loss of Lin et al. 2017 ("Focal Loss for Dense Object Detection"),
  FL = -alpha_t (1 - p_t)^gamma log(p_t), written as torchvision.ops.sigmoid_focal_loss computes it
  (torchvision is not a dependency here; `tests/unit/test_losses.py` checks hand-computed values):
  easy negatives (p_t near 1) stop dominating, so the few positives of a rare label count.
  alpha < 0 (the default here) weighs positives and negatives alike.

Every multi-label loss is summed over labels and averaged over rows (`reduce_rows`): a row's gradient
then has the scale of cross-entropy's, so the learning rate that trains a single-label head trains a
multi-label one. The mean over labels (what BCEWithLogitsLoss does by default, and the Trainer's
multi_label_classification) divides every row's gradient by the number of labels: on 24 intents,
MiniLM + LoRA at lr 2e-3 spent 60 of 124 steps pushing every probability down and ended at val exact
match 0.07 (bench/multi_intent.py, seed 0), where the sum trains like the single-label head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# bce_pos_weight's floor and cap, with their reasons, in config (no torch): its multi_label_loss help states them
from loratune.config import MAX_POS_WEIGHT, MIN_POS_WEIGHT

MULTI_LABEL_LOSSES = ("bce", "bce_pos_weight", "focal")


@dataclass(frozen=True)
class LossSpec:
    """What the loss of a run is; recorded in run.json (`loss`) so `evaluate` scores with the same one."""

    kind: str = "ce"  # ce (single-label) | bce | bce_pos_weight | focal
    pos_weight: tuple[float, ...] | None = None
    gamma: float = 2.0
    alpha: float = -1.0

    def to_dict(self) -> dict:
        """The record: gamma and alpha only for the focal loss, the one that uses them (a cross-entropy run's record
        carrying a gamma would say a knob was used that was not)."""
        out = {"kind": self.kind, "pos_weight": list(self.pos_weight) if self.pos_weight else None}
        return {**out, "gamma": self.gamma, "alpha": self.alpha} if self.kind == "focal" else out

    @classmethod
    def from_dict(cls, d: dict | None, multi_label: bool) -> "LossSpec":
        if not d:
            return cls("bce" if multi_label else "ce")
        pw = d.get("pos_weight")
        return cls(str(d.get("kind", "bce")), tuple(float(x) for x in pw) if pw else None,
                   float(d.get("gamma", 2.0)), float(d.get("alpha", -1.0)))


def pos_weights(targets: np.ndarray, cap: float = MAX_POS_WEIGHT) -> tuple[float, ...]:
    """negatives / positives per label of a multi-hot [n, k] matrix, in [MIN_POS_WEIGHT, cap] (a label without
    positives gets the cap)."""
    pos = targets.sum(axis=0).astype(np.float64)
    neg = len(targets) - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1.0), cap)
    return tuple(float(x) for x in np.clip(w, MIN_POS_WEIGHT, cap))


def loss_spec(kind: str, multi_label: bool, targets: np.ndarray, gamma: float = 2.0) -> LossSpec:
    """The run's loss: `kind` (train.multi_label_loss) for multi-label data; single-label data trains with
    cross-entropy whatever it and gamma say (config.MULTI_LABEL_ONLY_KEYS; train.py notes them when set)."""
    if not multi_label:
        return LossSpec("ce")
    if kind == "bce_pos_weight":
        return LossSpec(kind, pos_weights(targets))
    if kind == "focal":
        return LossSpec(kind, gamma=gamma)
    return LossSpec("bce")


def reduce_rows(loss: torch.Tensor) -> torch.Tensor:
    """[rows, labels] element losses -> summed over labels, averaged over rows."""
    return loss.sum(dim=-1).mean() if loss.ndim > 1 else loss.mean()


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
                       alpha: float = -1.0) -> torch.Tensor:
    """Sigmoid focal loss (torchvision.ops.sigmoid_focal_loss's element formula), summed over labels and
    averaged over rows (`reduce_rows`)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return reduce_rows(loss)


def compute_loss(logits: torch.Tensor, targets: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    logits = logits.float()
    if spec.kind == "ce":
        return F.cross_entropy(logits, targets, ignore_index=-100)
    if spec.kind == "focal":
        return sigmoid_focal_loss(logits, targets, spec.gamma, spec.alpha)
    pw = torch.tensor(spec.pos_weight, dtype=logits.dtype, device=logits.device) if spec.pos_weight else None
    return reduce_rows(F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw, reduction="none"))
