"""Evaluation beyond the headline metrics: validation slices, the probe set, the robustness probe.

Built once per run; the training loop calls `scores()` at every evaluation point (with the val
logits it already computed) and `robustness()` once at the end. Prediction goes through the
`predict(texts) -> logits` callable the loop hands in, so this module never touches the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from loratune.config import RunConfig
from loratune.data import Dataset
from loratune.metrics import Decoding, decode, sigmoid, softmax
from loratune.robustness import planned_predictions, score_robustness
from loratune.slices import (ProbeSet, Slices, assign_slices, confusable_rows, load_probe_set, probe_scores,
                             slice_scores)

Predict = Callable[[list[str]], np.ndarray]

# Validation rows the robustness probe perturbs. It scores 4 perturbed copies of them; on all 1,003
# rows of BANKING77 validation that was 5 full passes (the clean one included), 40-55 s of a 60-step
# run on 2 cores, more than its training. 256 rows give each accuracy drop within about +-3 points.
ROBUSTNESS_ROWS = 256


@dataclass
class EvalExtras:
    dataset: Dataset
    y_true: np.ndarray  # val targets: label index (-1 unknown) or multi-hot
    multi_label: bool
    slices: Slices | None
    probe: ProbeSet | None
    seed: int
    robustness_on: bool
    unseen: np.ndarray | None = None  # val rows carrying a label the model does not know (wrong in every slice)
    confusable_fixed_at: int | None = None
    info: dict = field(default_factory=dict)

    @classmethod
    def build(cfg_cls, cfg: RunConfig, dataset: Dataset, val_targets: np.ndarray, val_lengths: np.ndarray,
              val_unseen: np.ndarray | None = None) -> "EvalExtras":
        """`val_unseen`: the encoded validation split's rows carrying a label the model does not know (train.encode)."""
        multi = dataset.label_space.multi_label
        y_true = val_targets.astype(int) if multi else np.where(val_targets >= 0, val_targets, -1)
        slices = None
        if cfg.train.slices:
            slices = assign_slices(dataset.train.texts, dataset.validation.texts, dataset.validation.labels, val_lengths,
                                   multi_label=multi, max_length=cfg.model.max_length)
        probe = load_probe_set(cfg.data.probe_file, cfg.data.text_column, cfg.data.label_column) \
            if cfg.data.probe_file else None
        extras = cfg_cls(dataset, y_true, multi, slices, probe, cfg.train.seed, cfg.train.robustness_probe,
                         val_unseen)
        if slices is not None:
            extras.info = {"shares": {}, "rows": {}, **slices.info}
            extras._count_rows()
        return extras

    def _count_rows(self) -> None:
        """The record's shares and rows per slice, from the slices themselves (a slice added later, `confusable`,
        was in shares but not in rows)."""
        self.info["shares"] = self.slices.shares(len(self.dataset.validation))
        self.info["rows"] = {k: int(len(v)) for k, v in self.slices.rows.items()}

    def scores(self, step: int, val_logits: np.ndarray, val_point: dict, predict: Predict,
               val_pred: np.ndarray | None = None, decoding: Decoding | None = None) -> dict:
        """Slice and probe scores for one evaluation point (multi-label: `val_pred`, the decoded label sets;
        `decoding`, how this step's model would turn a probe text's probabilities into labels if it were saved)."""
        out: dict = {}
        if self.slices is not None:
            if self.confusable_fixed_at is None and step > 0 and not self.multi_label:
                pairs = val_point.get("val/confused_pairs") or []
                rows = confusable_rows(self.dataset.validation.labels, pairs)
                if len(rows):
                    self.slices.rows["confusable"] = rows
                    self.confusable_fixed_at = step
                    self.info["confusable"] = {"fixed_at_step": step, "rows": int(len(rows)),
                                               "classes": sorted({p[k] for p in pairs[:5] for k in ("true", "pred")})}
                    self._count_rows()
            out.update(slice_scores(val_logits, self.y_true, self.slices, self.multi_label, val_pred, self.unseen))
        if self.probe is not None:  # each label's own probability in a multi-label run, never a softmax over them
            logits = predict(list(self.probe.texts))
            probs = sigmoid(logits) if self.multi_label else softmax(logits)
            decided = decode(probs, decoding) if self.multi_label and decoding is not None else None
            out.update(probe_scores(self.probe, probs, self.dataset.label_space.labels, self.multi_label, decided))
        return out

    def robustness_rows(self, clean_known: bool = True) -> int:
        """Texts the robustness probe would predict (0 when it does not run): what it adds to evaluation."""
        if not self.robustness_on or self.multi_label or len(self.dataset.validation) == 0:
            return 0
        return planned_predictions(self.dataset.validation.texts, self.seed, ROBUSTNESS_ROWS, clean_known)

    def robustness(self, predict: Predict, val_logits: np.ndarray | None = None) -> dict | None:
        """Accuracy on validation texts under each perturbation kind vs clean (single-label only), on a
        seeded sample of at most ROBUSTNESS_ROWS rows; `val_logits`: the model's clean val logits."""
        if not self.robustness_on or self.multi_label or len(self.dataset.validation) == 0:
            return None
        return score_robustness(predict, self.dataset.validation.texts, self.y_true, self.seed, val_logits,
                                ROBUSTNESS_ROWS)
