"""Scores from predictions: pure numpy + scikit-learn, no torch.

Single-label: `y_true` holds label indices, -1 for a label the model does not know (seen only in
validation/test); such rows are always errors. Multi-label: `y_true` is a 0/1 matrix and
`unseen_rows` marks rows that carried an unknown label (they fail subset accuracy).
Keys follow `<split>/<metric>`, per class `<split>/recall/<label>`.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

TOP_PAIRS = 20


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def single_label_scores(prefix: str, logits: np.ndarray, y_true: np.ndarray, labels: tuple[str, ...],
                        loss: float | None = None) -> tuple[dict, np.ndarray]:
    """Accuracy, macro/weighted F1, per-class P/R/F1/support, top confused pairs. Returns (scores, confusion)."""
    k = len(labels)
    y_pred = logits.argmax(axis=1)
    idx = list(range(k))
    out: dict = {f"{prefix}/n": int(len(y_true))}
    if loss is not None:
        out[f"{prefix}/loss"] = float(loss)
    out[f"{prefix}/accuracy"] = float(np.mean(y_pred == y_true)) if len(y_true) else math.nan
    out[f"{prefix}/macro_f1"] = float(f1_score(y_true, y_pred, labels=idx, average="macro", zero_division=0))
    out[f"{prefix}/weighted_f1"] = float(f1_score(y_true, y_pred, labels=idx, average="weighted", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    for i, lab in enumerate(labels):
        out[f"{prefix}/precision/{lab}"] = float(p[i])
        out[f"{prefix}/recall/{lab}"] = float(r[i])
        out[f"{prefix}/f1/{lab}"] = float(f[i])
        out[f"{prefix}/support/{lab}"] = int(s[i])
    known = y_true >= 0
    cm = confusion_matrix(y_true[known], y_pred[known], labels=idx) if known.any() else np.zeros((k, k), int)
    out[f"{prefix}/confused_pairs"] = top_confused_pairs(cm, labels)
    return out, cm


def top_confused_pairs(cm: np.ndarray, labels: tuple[str, ...], top: int = TOP_PAIRS) -> list[dict]:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None)[::-1]
    pairs = []
    for f in flat[:top]:
        t, p = divmod(int(f), off.shape[1])
        if off[t, p] <= 0:
            break
        pairs.append({"true": labels[t], "pred": labels[p], "count": int(off[t, p])})
    return pairs


def multi_label_scores(prefix: str, logits: np.ndarray, y_true: np.ndarray, labels: tuple[str, ...],
                       unseen_rows: np.ndarray | None = None, loss: float | None = None,
                       threshold: float = 0.5) -> dict:
    """Micro/macro F1, subset accuracy, per-label P/R/F1/support at a fixed probability threshold."""
    y_pred = (sigmoid(logits) >= threshold).astype(int)
    out: dict = {f"{prefix}/n": int(len(y_true))}
    if loss is not None:
        out[f"{prefix}/loss"] = float(loss)
    exact = np.all(y_pred == y_true, axis=1)
    if unseen_rows is not None:
        exact = exact & ~unseen_rows
    out[f"{prefix}/subset_accuracy"] = float(exact.mean()) if len(exact) else math.nan
    out[f"{prefix}/micro_f1"] = float(f1_score(y_true, y_pred, average="micro", zero_division=0))
    out[f"{prefix}/macro_f1"] = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    out[f"{prefix}/weighted_f1"] = float(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    for i, lab in enumerate(labels):
        out[f"{prefix}/precision/{lab}"] = float(p[i])
        out[f"{prefix}/recall/{lab}"] = float(r[i])
        out[f"{prefix}/f1/{lab}"] = float(f[i])
        out[f"{prefix}/support/{lab}"] = int(s[i])
    return out


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy-like proportion p measured on n rows."""
    if n <= 0 or not 0.0 <= p <= 1.0:
        return math.nan
    return math.sqrt(p * (1.0 - p) / n)
