"""Robustness probe (no torch): validation accuracy under label-preserving perturbations (typos, a
dropped word, case, punctuation), scored once at the end of a run. Amounts, codes and upper-case
names are left intact, a negation is never dropped, and no text is ever emptied."""

from __future__ import annotations

import random
import re
from typing import Callable

import numpy as np

PERTURBATIONS = ("typo", "drop_word", "case", "punctuation")

# Words `drop_word` never drops: each one reverses or restricts what the sentence says, so without it the text
# can mean the opposite ("My account did not allow the transfer." -> "...did allow...", "I cannot find my phone"
# -> "I find my phone", "I am unable to use my card" -> "I am to use my card", "without my permission" -> "my
# permission") and its label no longer holds. Contractions of an auxiliary with "not" are kept too, with or without
# the apostrophe (`keeps_meaning`).
MEANING_WORDS = frozenset({
    "not", "no", "never", "cannot", "none", "nothing", "nobody", "nowhere", "neither", "nor", "without",
    "unless", "except", "unable", "unwilling", "hardly", "barely", "scarcely", "seldom",
})
# Auxiliaries whose "not" contraction people also write without the apostrophe ("shouldnt", "cant", "wont", "aint"),
# misspelt ("havnt", "dosent") or split at it ("didn t"): stem + "nt", or stem + "n" for the stems whose "n" form is
# no common word (not "can", "won"). A list rather than "any word ending in nt", which would keep "want", "went",
# "sent", "account" and "payment" too.
NT_STEMS = frozenset({
    "do", "does", "did", "is", "are", "was", "were", "have", "has", "had", "should", "could", "would", "must",
    "need", "might", "dare", "ought", "hav", "dose", "ca", "wo", "ai", "sha",
})
N_STEMS = NT_STEMS - {"ca", "wo", "ai", "sha", "hav", "dose"}


def keeps_meaning(word: str) -> bool:
    """A word `drop_word` never drops: a negation or restriction (`MEANING_WORDS`), or an auxiliary contracted with
    "not" (n't, or an `NT_STEMS` form without the apostrophe), in any case, with or without a sentence mark next to
    it."""
    w = word.lower().strip(".,!?;:\"()")
    return (w in MEANING_WORDS or w.endswith(("n't", "n\u2019t")) or (w.endswith("nt") and w[:-2] in NT_STEMS)
            or (w.endswith("n") and w[:-1] in N_STEMS))


def protected(word: str) -> bool:
    """A word no perturbation touches: it has a digit (an amount, a code: "$1,250.00", "ACME-42") or is upper-case (a
    name, "EUR", "PAY")."""
    return word.isupper() or any(c.isdigit() for c in word)


def perturb(text: str, kind: str, rng: random.Random) -> str:
    """A label-preserving perturbation of one text. Protected words (`protected`) are left intact (a sentence mark
    after one aside), and drop_word never drops a negation (`keeps_meaning`); a text with nothing the kind may change
    comes back unchanged (counted as such: `texts_changed`), never empty."""
    words = text.split()
    if kind == "typo":
        editable = [i for i, w in enumerate(words) if len(w) > 3 and w.isalpha() and not protected(w)]
        if not editable:
            return text
        i = rng.choice(editable)
        w = words[i]
        j = rng.randrange(1, len(w) - 2)  # swap two inner letters; first and last stay
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif kind == "drop_word":
        # only a plain word that is no negation: with none, the text stays as it is (dropping an amount, a name or
        # a "not" can change the label)
        droppable = [i for i, w in enumerate(words) if w.isalpha() and not protected(w) and not keeps_meaning(w)]
        if len(words) < 4 or not droppable:
            return text
        del words[rng.choice(droppable)]
    elif kind == "case":
        free = [i for i, w in enumerate(words) if not protected(w)]
        lower = any(words[i] != words[i].lower() for i in free)
        for i in free:
            words[i] = words[i].lower() if lower else words[i].upper()
    elif kind == "punctuation":
        # a protected word loses only a sentence mark at its end ("ACME-42." -> "ACME-42"): its own ,.-/ stay
        out = [re.sub(r"(?<=\w)[.,!?;:]+$", "", w) if protected(w) else re.sub(r"[^\w']", "", w) for w in words]
        if not any(out):
            return text
        words = [w for w in out if w]
    else:
        return text
    changed = " ".join(words)
    return changed if changed != " ".join(text.split()) else text  # only spacing differs: not a perturbation


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
