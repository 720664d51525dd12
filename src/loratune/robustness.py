"""Robustness probe (no torch): validation accuracy under label-preserving perturbations (typos, a
dropped word, case, punctuation), scored once at the end of a run. Amounts, codes and upper-case
names are left intact, and no text is ever emptied."""

from __future__ import annotations

import random
import re
from typing import Callable

import numpy as np

PERTURBATIONS = ("typo", "drop_word", "case", "punctuation")


def perturb(text: str, kind: str, rng: random.Random) -> str:
    """A label-preserving perturbation of one text. Words that are all digits or upper-case
    (amounts, codes, product names) are left intact; the result is never empty."""
    words = text.split()
    editable = [i for i, w in enumerate(words) if len(w) > 3 and w.isalpha() and not w.isupper()]
    if kind == "typo" and editable:
        i = rng.choice(editable)
        w = words[i]
        j = rng.randrange(1, len(w) - 2)  # swap two inner letters; first and last stay
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        return " ".join(words)
    if kind == "drop_word" and len(words) >= 4:
        droppable = [i for i, w in enumerate(words) if w.isalpha() and not w.isupper()] or list(range(len(words)))
        del words[rng.choice(droppable)]
        return " ".join(words)
    if kind == "case":
        return text.lower() if text != text.lower() else text.upper()
    if kind == "punctuation":
        stripped = re.sub(r"[^\w\s']", "", text).strip()
        return stripped if stripped else text
    return text


def perturbed_texts(texts: tuple[str, ...], kind: str, seed: int) -> list[str]:
    rng = random.Random(f"{seed}-{kind}")
    return [perturb(t, kind, rng) for t in texts]


def sample_rows(n: int, seed: int, max_rows: int | None = None) -> np.ndarray:
    """The rows the probe scores: all n, or a seeded sample of max_rows (sorted)."""
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def planned_predictions(texts: tuple[str, ...], seed: int, max_rows: int | None = None,
                        clean_known: bool = True) -> int:
    """Texts `score_robustness` will predict with the same arguments: the perturbed texts that differ from
    their clean text (plus the clean ones when their logits are not known). Perturbing is cheap (no model),
    so the run can weigh the probe against its evaluation budget before it starts."""
    sample = tuple(texts[i] for i in sample_rows(len(texts), seed, max_rows))
    changed = sum(a != b for kind in PERTURBATIONS for a, b in zip(perturbed_texts(sample, kind, seed), sample))
    return changed + (0 if clean_known else len(sample))


def score_robustness(predict: Callable[[list[str]], np.ndarray], texts: tuple[str, ...], y_true: np.ndarray,
                     seed: int, clean_logits: np.ndarray | None = None, max_rows: int | None = None) -> dict:
    """Accuracy on the texts clean and under each perturbation kind (single-label: `predict` gives
    logits [rows, classes], y_true label indices).

    clean_logits: the model's logits on `texts` when already known (the saved model's validation
    logits), so the clean texts are not predicted again; only the texts a perturbation changed are.
    max_rows: score a seeded sample of at most this many rows (`rows` in the result)."""
    rows = sample_rows(len(texts), seed, max_rows)
    texts = tuple(texts[i] for i in rows)
    y_true = np.asarray(y_true)[rows]
    logits = clean_logits[rows] if clean_logits is not None else predict(list(texts))
    clean_pred = np.asarray(logits).argmax(axis=1)
    clean = float(np.mean(clean_pred == y_true))
    out = {"clean_accuracy": clean, "rows": len(rows)}
    for kind in PERTURBATIONS:
        noisy = perturbed_texts(texts, kind, seed)
        changed = [i for i, (a, b) in enumerate(zip(noisy, texts)) if a != b]
        pred = clean_pred.copy()
        if changed:
            pred[changed] = predict([noisy[i] for i in changed]).argmax(axis=1)
        acc = float(np.mean(pred == y_true))
        out[kind] = {"accuracy": acc, "drop": clean - acc, "texts_changed": len(changed) / max(1, len(texts))}
    return out
