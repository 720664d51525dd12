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


def score_robustness(predict: Callable[[list[str]], np.ndarray], texts: tuple[str, ...], y_true: np.ndarray,
                     seed: int) -> dict:
    """Accuracy on the texts clean and under each perturbation kind (single-label: `predict` gives
    logits [rows, classes], y_true label indices)."""
    clean = float(np.mean(predict(list(texts)).argmax(axis=1) == y_true))
    out = {"clean_accuracy": clean}
    for kind in PERTURBATIONS:
        noisy = perturbed_texts(texts, kind, seed)
        acc = float(np.mean(predict(noisy).argmax(axis=1) == y_true))
        changed = float(np.mean([a != b for a, b in zip(noisy, texts)]))
        out[kind] = {"accuracy": acc, "drop": clean - acc, "texts_changed": changed}
    return out
