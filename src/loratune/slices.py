"""Generalization slices of the validation set and probe sets (no torch; the robustness probe is in
robustness.py).

Slices (row indices into the validation split, fixed for the whole run):
- `familiar` / `novel`: by how close each validation text is to its nearest training text of any
  label (cosine similarity of character 3-5-gram TF-IDF vectors; a text's n-grams that no training text has
  count in its norm, IDF is train's). The most similar third is
  `familiar`, the least similar third `novel` (tertiles within the split, so the slices keep their
  size whatever the train size), cut by value: rows tied at a cut join its slice, and when one value
  spans both thirds neither slice is cut (`skipped` says why). The cut values are recorded.
  Computed once per dataset, cached.
- `long` / `short`: texts in the top quarter of token lengths vs the rest (when a quarter or more share
  the longest length, truncated at max_length say, those are `long`).
- `compound`: multi-label rows, or texts whose clauses are joined by a conjunction; in multi-label data,
  the rows with two or more labels (the labels say what is compound, a conjunction does not).
- `confusable`: rows whose class is in the most confused pairs of the first evaluation after step 0.

Scores per slice go into history.jsonl as `val_<slice>/accuracy`, `val_<slice>/macro_f1`,
`val_<slice>/n`. A widening familiar-novel gap is overfitting evidence; both low is underfitting.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from loratune.metrics import Decoding, decode, macro_f1

from loratune.config import cache_root
from loratune.errors import UserError

# a conjunction between two clauses (each clause must keep at least two words)
_CLAUSE_SPLIT = re.compile(r"[,;]?\s+\b(?:and also|and then|and|but|also|plus|as well as)\b\s+", re.IGNORECASE)
LONG_QUANTILE = 0.75
FAMILIARITY_MIN_ROWS = 3  # familiar / novel are a third of validation each: one row at least
CONFUSABLE_PAIRS = 5
# nearest_train_similarity's val x train product is taken in chunks of validation rows sized so one chunk's sparse
# product (about 12 bytes an entry in CSR, ~16 with scipy's working copies) stays near 100 MB
SIMILARITY_CHUNK_BYTES = 100_000_000
_PRODUCT_BYTES_PER_ENTRY = 16
SIMILARITY_DECIMALS = 6
# in the cache key: entries of an earlier measure are not read back (unrounded ones; ones of train's n-grams only)
_SIMILARITY_VERSION = "rounded-6-own-ngrams"
# what `nearest_train_similarity` computes, as run.json's slices.familiarity.measure records it: a record of the
# earlier measure (train's n-grams only) said "...TF-IDF to the nearest train text" alone and cannot be taken for it
SIMILARITY_MEASURE = ("cosine similarity of char 3-5-gram TF-IDF to the nearest train text (every n-gram of the "
                      "text counts, those no train text has too; IDF from the train texts)")


def cache_dir() -> Path:
    return cache_root()


def _digest(*parts: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for texts in parts:
        for t in texts:
            h.update(t.encode("utf-8", "replace"))
            h.update(b"\x00")
        h.update(b"\x01")
    return h.hexdigest()[:24]


def nearest_train_similarity(train_texts: tuple[str, ...], texts: tuple[str, ...], use_cache: bool = True) -> np.ndarray:
    """Per text: SIMILARITY_MEASURE (0..1)."""
    key = _digest((_SIMILARITY_VERSION,), train_texts, texts)
    path = cache_dir() / "familiarity" / f"{key}.npy"
    if use_cache and path.is_file():
        try:
            cached = np.load(path)
            if cached.shape == (len(texts),):
                return cached
        except (OSError, ValueError, EOFError):  # a damaged entry (empty, cut short): computed again, replaced
            pass
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    # The n-gram vocabulary is the train texts' and the scored texts' together, so an n-gram no training text has
    # still counts in its text's L2 norm: with train's vocabulary alone a text's unseen n-grams dropped out before
    # the norm, and "send money xyzzy qwvvj kkkk zzzz" scored 1.0 against "send money", as a verbatim copy does. The
    # IDF is train's alone (an n-gram no train text has gets scikit-learn's smoothed idf of df 0,
    # ln((1 + n_train) / 1) + 1), so a text's similarity depends on it and train only, never on the other texts
    # scored beside it, and an exact copy of a train text is the same vector as that text (similarity 1.0).
    counts = CountVectorizer(analyzer="char_wb", ngram_range=(3, 5), lowercase=True).fit_transform(
        list(train_texts) + list(texts)).tocsr()
    n_train = len(train_texts)
    tfidf = TfidfTransformer(sublinear_tf=True, norm="l2").fit(counts[:n_train])
    # TF-IDF rows are L2-normalised (norm="l2"), so a dot product is the cosine similarity. The nearest train text
    # is the row max of val_chunk @ train.T, taken chunk by chunk: a brute-force NearestNeighbors(metric="cosine")
    # held the whole val x train distance matrix (20k x 20k texts: 2.8 GB, 32 s).
    train = tfidf.transform(counts[:n_train]).T.tocsr()  # CSR on the right: ~3x faster a product than the CSC .T
    val = tfidf.transform(counts[n_train:]).tocsr()
    chunk = max(1, SIMILARITY_CHUNK_BYTES // (_PRODUCT_BYTES_PER_ENTRY * max(1, len(train_texts))))
    sim = np.zeros(len(texts), dtype=np.float64)
    for start in range(0, len(texts), chunk):
        prod = (val[start:start + chunk] @ train).tocsr()
        # each row's max over its stored entries (a product has no duplicate entries; a row with none, no shared
        # n-gram, stays 0): sparse .max(axis=1) took as long as the product
        has = np.diff(prod.indptr) > 0
        if has.any():
            sim[start:start + chunk][has] = np.maximum.reduceat(prod.data, prod.indptr[:-1][has])
    # rounded so that an exact copy scores exactly 1.0 and equal texts tie exactly (float error in the last bits
    # split ties, and the slices are cut by value: assign_slices)
    sim = np.clip(np.round(sim, SIMILARITY_DECIMALS), 0.0, 1.0).astype(np.float32)
    if use_cache:
        try:  # an optimisation only: a read-only or full cache folder must not stop a run
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, sim)
            os.replace(tmp, path)
        except OSError:
            pass
    return sim


def is_compound(text: str) -> bool:
    """Two clauses joined by a conjunction, each with at least two words ("block my card and send a new one")."""
    parts = _CLAUSE_SPLIT.split(text.strip())
    return len([p for p in parts if len(p.split()) >= 2]) >= 2


@dataclass(frozen=True)
class Slices:
    """Validation row indices per slice, and how they were cut."""

    rows: dict[str, np.ndarray]
    info: dict = field(default_factory=dict)

    def shares(self, n: int) -> dict[str, float]:
        return {name: len(idx) / n if n else 0.0 for name, idx in self.rows.items()}


def assign_slices(train_texts: tuple[str, ...], val_texts: tuple[str, ...], val_labels: tuple[tuple[str, ...], ...],
                  val_lengths: np.ndarray, use_cache: bool = True, multi_label: bool = False,
                  max_length: int | None = None) -> Slices:
    """The fixed slices of a validation split (all but `confusable`, which needs a first evaluation).

    Slices are cut by value, never by row position: rows of equal similarity (or length) fall on the same side, and
    the recorded cut is the one applied. `max_length`: the cap `val_lengths` were truncated at, to say so when a
    quarter of the texts reach it. A pair of slices that cannot be cut is left out, and `info["skipped"]` says why."""
    n = len(val_texts)
    rows: dict[str, np.ndarray] = {}
    info: dict = {}
    skipped: dict[str, str] = {}
    if n >= FAMILIARITY_MIN_ROWS:
        sim = nearest_train_similarity(train_texts, val_texts, use_cache)
        ordered = np.sort(sim)
        third = n // 3
        # the similarity of the third-least and third-most similar row: ties at either cut join that slice (a
        # position cut split equal texts, e.g. verbatim training texts, between novel and familiar by file order)
        lo, hi = float(ordered[third - 1]), float(ordered[n - third])
        info["familiarity"] = {"measure": SIMILARITY_MEASURE,
                               "novel_at_most": lo, "familiar_at_least": hi, "median": float(np.median(sim))}
        if lo < hi:
            rows["novel"] = np.flatnonzero(sim <= lo)
            rows["familiar"] = np.flatnonzero(sim >= hi)
        else:  # one value spans both thirds (every row a verbatim train text, say): no split says anything
            skipped["familiar/novel"] = (f"the validation texts' similarities to train do not separate: the least and "
                                         f"most similar thirds both have similarity {lo:.3f}")
    else:
        skipped["familiar/novel"] = f"validation has {n} rows; familiar/novel need >= {FAMILIARITY_MIN_ROWS}"
    if n:
        lengths = np.asarray(val_lengths)
        cut = float(np.quantile(lengths, LONG_QUANTILE))
        long_mask = lengths > cut
        if not long_mask.any():  # a quarter or more share the longest length (often max_length: truncated there)
            long_mask = lengths >= cut
        capped = int(np.sum(lengths >= max_length)) if max_length else 0
        if long_mask.any() and (~long_mask).any():
            rows["long"] = np.flatnonzero(long_mask)
            rows["short"] = np.flatnonzero(~long_mask)
            info["length"] = {"long_at_least_tokens": int(lengths[long_mask].min())}
            if capped:
                info["length"]["at_max_length"] = capped
        else:
            why = f"every validation text has {int(lengths.min())} tokens"
            if capped == n:
                why += f" (model.max_length {max_length}: all truncated there; a larger max_length separates them)"
            skipped["long/short"] = why + ": no length cut separates long from short"
    if skipped:
        info["skipped"] = skipped
    compound = [i for i, (t, labs) in enumerate(zip(val_texts, val_labels))
                if len(labs) > 1 or (not multi_label and is_compound(t))]
    if compound:
        rows["compound"] = np.array(compound, dtype=np.int64)
        info["compound"] = {"rule": "rows with two or more labels" if multi_label else
                            "multi-label rows, or two clauses joined by and/but/also/plus"}
    return Slices(rows, info)


def confusable_rows(val_labels: tuple[tuple[str, ...], ...], pairs: list[dict], top: int = CONFUSABLE_PAIRS) -> np.ndarray:
    classes = {p["true"] for p in pairs[:top]} | {p["pred"] for p in pairs[:top]}
    return np.array([i for i, labs in enumerate(val_labels) if labs and labs[0] in classes], dtype=np.int64)


def slice_scores(logits: np.ndarray, y_true: np.ndarray, slices: Slices, multi_label: bool,
                 pred: np.ndarray | None = None, unseen: np.ndarray | None = None) -> dict:
    """Accuracy (subset accuracy for multi-label) and macro-F1 per slice, scored as the whole split is
    (metrics.macro_f1's class set; a row carrying a label the model does not know, `unseen`, is wrong).
    Multi-label: `pred` is the decoded 0/1 label matrix (metrics.decode); without it, logit >= 0."""
    out: dict = {}
    k = logits.shape[1]
    for name, idx in slices.rows.items():
        if len(idx) == 0:
            continue
        lg, yt = logits[idx], y_true[idx]
        if multi_label:
            pr = (lg >= 0).astype(int) if pred is None else np.asarray(pred)[idx]
            right = np.all(pr == yt, axis=1)
            if unseen is not None:  # its unknown label was dropped from yt: the row still cannot be right
                right = right & ~unseen[idx]
            acc = float(right.mean())
        else:
            pr = lg.argmax(axis=1)
            acc = float(np.mean((pr == yt) & (yt >= 0)))
        f1 = macro_f1(yt, pr, k)
        out[f"val_{name}/accuracy"] = acc
        out[f"val_{name}/macro_f1"] = f1
        out[f"val_{name}/n"] = int(len(idx))
    return out


# ----------------------------------------------------------------------------------------------
# probe sets: hand-written texts with expected labels, scored at every evaluation


@dataclass(frozen=True)
class ProbeSet:
    texts: tuple[str, ...]
    expected: tuple[str, ...]
    source: str


def load_probe_set(path: str, text_column: str = "text", label_column: str = "label") -> ProbeSet:
    from loratune.data import LabelShapeError, RowFile, check_characters, labels_of, read_rows

    rows = read_rows(Path(path), RowFile("probe file", "data.probe_file", "text / label",
                                         '{"text": "...", "label": "..."}'))
    texts, expected = [], []
    for n, r in enumerate(rows, start=1):
        if text_column not in r or label_column not in r:
            raise UserError(f"probe file '{path}' row {n} lacks '{text_column}' or '{label_column}'",
                            "write one {\"text\": ..., \"label\": ...} per row")
        text, lab = r[text_column], r[label_column]
        # the label read as a training row's is (3.0 is class 3, " 3 " is 3, a one-label list is that label): read
        # as str(lab) it named no class and scored as wrong
        try:  # an object or a nested list is no label (refused below, as are several labels)
            labs = labels_of(lab, None)
        except LabelShapeError:
            labs = ()
        # a probe row is one text with its one expected label, checked as a training row is (an empty or null
        # text, a null label, several labels: read as the text 'None' or the list's first label before)
        if not isinstance(text, str) or not text.strip() or len(labs) != 1:
            raise UserError(f"probe file '{path}' row {n} has text {text!r:.60} and label {lab!r:.60}: a probe row is "
                            "one non-empty text with its one expected label",
                            "fix or drop the row (the probe scores single-label predictions)")
        check_characters(text, f"probe file '{path}' row {n}")
        texts.append(text)
        expected.append(labs[0])
    return ProbeSet(tuple(texts), tuple(expected), str(path))


def probe_label_note(probe: ProbeSet, labels: Sequence[str]) -> str | None:
    """The note for probe labels that name no class (a typo, a class the training data lacks): scored as a miss at
    every evaluation, said once when the probe file is read, worded as the validation split's (data.unseen_label_note).
    A probe row has one expected label, right only when predicted: an error in a multi-label run too."""
    from loratune.data import unseen_label_note

    known = set(labels)
    counts = Counter(lab for lab in probe.expected if lab not in known)
    return unseen_label_note(f"probe file '{probe.source}'", counts, multi_label=False) if counts else None


def probe_scores(probe: ProbeSet, probs: np.ndarray, labels: tuple[str, ...], multi_label: bool = False,
                 decided: np.ndarray | None = None) -> dict:
    """`probe/accuracy`, `probe/n` and `probe/examples` (text, expected, predicted, confidence, correct). `probs`:
    softmax rows, or for a multi-label run each label's sigmoid: its prediction is the label set the run's decoding
    gives (`decided`, 0/1 rows of metrics.decode: thresholds, cap, none label, as `predict` answers, an empty set
    included when the decoding allows one; without it metrics.decode's default: every label at 0.5 or above, the most
    likely one when none is), right when the expected label is among them."""
    if multi_label and decided is None:
        decided = decode(np.asarray(probs, dtype=np.float64), Decoding(np.full(len(labels), 0.5)))
    examples = []
    for n, (text, exp, p) in enumerate(zip(probe.texts, probe.expected, probs)):
        i = int(np.argmax(p))
        predicted = [labels[i]]
        if multi_label:
            # exactly the decoded set, as predict answers: falling back to the argmax label on an empty row (a
            # decoding with min_labels 0) counted answers predict never gives as right
            predicted = [labels[j] for j in sorted(np.flatnonzero(decided[n]), key=lambda j: -p[j])]
        examples.append({"text": text, "expected": exp,
                         "predicted": predicted if multi_label else labels[i],
                         "confidence": round(float(p[i]), 4),
                         "correct": exp in predicted, "known_label": exp in labels})
    acc = sum(e["correct"] for e in examples) / len(examples) if examples else 0.0
    return {"probe/accuracy": acc, "probe/n": len(examples), "probe/examples": examples}
