"""Scores from predictions: pure numpy + scikit-learn, no torch.

Single-label: `y_true` holds label indices, -1 for a label the model does not know (seen only in
validation/test); such rows are always errors. Multi-label: `y_true` is a 0/1 matrix and
`unseen_rows` marks rows that carried an unknown label (they fail subset accuracy); each unknown label a row carries
is a false negative in micro, weighted and samples F1 (`with_unseen`). Macro-F1 (`macro_f1`) averages the trained
classes only: an unknown label is no class of its own there; its rows lower it through their wrong predictions.
Keys follow `<split>/<metric>`, per class `<split>/recall/<label>`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from loratune.data import label_form  # the one form of a label (NFC)
from loratune.errors import finite_number

TOP_PAIRS = 20


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities in one new array (exp and the division in place: the shifted logits, their exp and
    the quotient each took an array of the logits' size); `logits` is left as it was."""
    p = logits - logits.max(axis=1, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(axis=1, keepdims=True)
    return p


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def single_label_scores(prefix: str, logits: np.ndarray, y_true: np.ndarray, labels: tuple[str, ...],
                        loss: float | None = None) -> tuple[dict, np.ndarray]:
    """Accuracy, macro/weighted F1, per-class P/R/F1/support, top confused pairs. Returns (scores, confusion)."""
    return prediction_scores(prefix, logits.argmax(axis=1), y_true, labels, loss)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> float:
    """Macro-F1 over the classes the rows hold or the model predicted (`scored_classes`), for every split and slice
    alike: a class with no row and no prediction has no F1, and counting it as 0 capped a split missing a class below
    1 (one class-a row, predicted right: accuracy 1.0, macro-F1 0.5 over two trained classes). In scikit-learn's
    terms: single-label (class indices; -1: no known class, never a class), f1_score's default label set for class
    labels; multi-label (0/1 matrices [n, k]), f1_score(average="macro", zero_division=np.nan) on the indicator
    matrix, which leaves such a label out of the average (its default, zero_division=0 over every column, scores it
    0). With no scored class it is NO_SCORED_CLASS_MACRO_F1 (0.0), see there."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = [int(i) for i in np.flatnonzero(scored_classes(y_true, y_pred, k))]
    if not present:
        return NO_SCORED_CLASS_MACRO_F1
    return float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


# Macro-F1 of rows on which no class is scored (no row of a known class, no prediction of one; every per-class F1
# NaN): 0.0, not NaN. It happens where nothing was named right: a generative classifier whose outputs name no label
# on rows whose labels it never learned (every row an error, accuracy 0.0), multi-label rows with no known label and
# no prediction, no rows at all. A score, because macro-F1 is the objective a run keeps its best model by and a
# study ranks trials by (a NaN point has no say: objectives.keep_order); 0.0 as the split's micro- and weighted-F1
# score it (zero_division=0). The per-class F1s stay NaN: no class has one, and none is a weak class.
NO_SCORED_CLASS_MACRO_F1 = 0.0


def scored_counts(true_counts: np.ndarray, pred_counts: np.ndarray) -> np.ndarray:
    """[k] bool: the classes that have an F1, the one rule for it (macro_f1 averages them, the per-class
    `<split>/f1/<label>` and `<split>/precision/<label>` of the others are NaN, written null): a class with a row
    (`true_counts` > 0) or a prediction (`pred_counts` > 0); counts may be weighted (a bootstrap's). A class with
    neither has no F1 and no precision (0/0), not 0: scored 0, a class missing from validation read as F1 0.000 in
    show and in the report's F1 distribution and weakest classes while macro-F1 left it out."""
    return (np.asarray(true_counts) + np.asarray(pred_counts)) > 0


def scored_classes(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """`scored_counts` of rows. Single-label: class indices (-1: no known class, never a class); multi-label: 0/1
    matrices [n, k]."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim == 2:
        return scored_counts(y_true.sum(axis=0), y_pred.sum(axis=0)) if len(y_true) else np.zeros(k, dtype=bool)
    counts = []
    for idx in (y_true, y_pred):
        idx = idx.astype(np.int64)
        counts.append(np.bincount(idx[(idx >= 0) & (idx < k)], minlength=k)[:k])
    return scored_counts(*counts)


def prediction_scores(prefix: str, y_pred: np.ndarray, y_true: np.ndarray, labels: tuple[str, ...],
                      loss: float | None = None) -> tuple[dict, np.ndarray]:
    """`single_label_scores` from predicted label indices. A prediction of -1 (no known label: a generated
    text that names none) is an error for its row's class and counts for no class; it is left out of
    the confusion matrix (`<prefix>/unknown_rate` gives their share, in generative classification)."""
    k = len(labels)
    y_pred = np.asarray(y_pred)
    idx = list(range(k))
    out: dict = {f"{prefix}/n": int(len(y_true))}
    if loss is not None:
        out[f"{prefix}/loss"] = float(loss)
    # a row of a label the model never learned (-1) is an error, even when the output names no label either (-1)
    out[f"{prefix}/accuracy"] = float(np.mean((y_pred == y_true) & (y_true >= 0))) if len(y_true) else math.nan
    out[f"{prefix}/macro_f1"] = macro_f1(y_true, y_pred, k)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    # weighted by support with the unknown-label rows in it: they are errors (F1 0), not rows left out (left out,
    # weighted-F1 read above accuracy on a split with unknown labels)
    support = s.sum() + int(np.sum(np.asarray(y_true) < 0))
    out[f"{prefix}/weighted_f1"] = float(f @ s / support) if support else 0.0
    out.update(per_class_scores(prefix, labels, p, r, f, s, scored_classes(y_true, y_pred, k)))
    known = y_true >= 0
    cm = confusion_matrix(y_true[known], y_pred[known], labels=idx) if known.any() else np.zeros((k, k), int)
    out[f"{prefix}/confused_pairs"] = top_confused_pairs(cm, labels)
    return out, cm


def per_class_scores(prefix: str, labels: tuple[str, ...], p: np.ndarray, r: np.ndarray, f: np.ndarray,
                     s: np.ndarray, scored: np.ndarray) -> dict:
    """`<prefix>/<stat>/<label>` from precision_recall_fscore_support's arrays; precision and F1 NaN for a class
    `scored_classes` says has none (no row, no prediction). Recall keeps scikit-learn's 0 at support 0: the readers
    (report.model.build_classes, features._per_class) read it as undefined by the support written beside it."""
    out: dict = {}
    for i, lab in enumerate(labels):
        out[f"{prefix}/precision/{lab}"] = float(p[i]) if scored[i] else math.nan
        out[f"{prefix}/recall/{lab}"] = float(r[i])
        out[f"{prefix}/f1/{lab}"] = float(f[i]) if scored[i] else math.nan
        out[f"{prefix}/support/{lab}"] = int(s[i])
    return out


# the sentence punctuation a generated label (and the label itself) is read without at its end: 'Balance?' and
# 'balance.' name the label balance, as does 'balance' the label 'balance?' (both sides are read the same way); the
# full-width forms are the CJK ones (。！？，；：) and the half/full-width stops (｡ ．)
LABEL_TRAILING_PUNCTUATION = ".!?,;:…。！？，；：｡．"


def normalize_label(text: str) -> str:
    """A generated text (or a label) as `parse_labels` compares it: its first line, NFC-normalised (label_form: a
    generated 'cafe' + U+0301 is the label 'café'), lower-cased, whitespace runs collapsed, trailing punctuation
    (LABEL_TRAILING_PUNCTUATION, with any spaces between its marks) stripped."""
    text = label_form(text)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return " ".join(first.lower().split()).rstrip(LABEL_TRAILING_PUNCTUATION + " ")


def parse_labels(outputs: list[str], labels: tuple[str, ...]) -> np.ndarray:
    """Generated texts -> label indices (-1: no known label). A text names a label when its first line,
    lower-cased with whitespace runs collapsed and trailing punctuation (LABEL_TRAILING_PUNCTUATION) stripped, equals
    the label written the same way (normalize_label): `Card_Arrival.` and `pin?` are card_arrival and pin; `card
    arrival` and `it is card_arrival` are not."""
    index = {normalize_label(lab): i for i, lab in enumerate(labels)}
    return np.array([index.get(normalize_label(o), -1) for o in outputs], dtype=np.int64)


def generated_label_problems(labels: tuple[str, ...] | list[str]) -> list[str]:
    """Why a label set cannot be generated as text and read back by `parse_labels` (empty: it can): a label on
    several lines (only the first line of an output is read), one that normalises to nothing, two that
    normalise to the same text (an output naming either would always be read as one of them)."""
    problems = []
    multi_line = [lab for lab in labels if len(lab.splitlines()) > 1 or lab.endswith(("\n", "\r"))]
    if multi_line:
        problems.append(f"label(s) {', '.join(map(repr, multi_line))} hold a line break (only an output's first "
                        "line is read)")
    empty = [lab for lab in labels if lab not in multi_line and not normalize_label(lab)]
    if empty:
        problems.append(f"label(s) {', '.join(map(repr, empty))} are nothing once lower-cased and stripped of "
                        f"whitespace and trailing punctuation ({LABEL_TRAILING_PUNCTUATION})")
    same: dict[str, list[str]] = {}
    for lab in labels:
        if lab not in multi_line and lab not in empty:
            same.setdefault(normalize_label(lab), []).append(lab)
    for text, group in same.items():
        if len(group) > 1:
            problems.append(f"labels {', '.join(map(repr, group))} are the same text once normalised "
                            f"({text!r}): a generated answer cannot tell them apart")
    return problems


def top_unknown_outputs(outputs: list[str], pred: np.ndarray, top: int = TOP_PAIRS) -> list[dict]:
    """The generated texts that named no label, most frequent first: [{"output", "count"}]."""
    from collections import Counter

    counts = Counter(o.strip() for o, p in zip(outputs, pred) if p < 0)
    return [{"output": o, "count": int(c)} for o, c in counts.most_common(top)]


def top_confused_pairs(cm: np.ndarray, labels: tuple[str, ...], top: int = TOP_PAIRS) -> list[dict]:
    """The `top` largest off-diagonal counts, largest first (ties in row-major order), zeros left out.

    argpartition, not a sort of all C^2 cells: at 2,000 classes the full argsort cost 1.5 s on every eval."""
    off = np.asarray(cm).copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    k = min(top, flat.size)
    if k <= 0:
        return []
    cand = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    kth = flat[cand].min()
    cand = np.flatnonzero(flat >= max(kth, 1))  # every cell tied with the k-th: the row-major tie rule picks among them
    order = cand[np.lexsort((cand, -flat[cand]))][:k]
    return [{"true": labels[t], "pred": labels[p], "count": int(off[t, p])}
            for t, p in (divmod(int(f), off.shape[1]) for f in order)]


def multi_label_scores(prefix: str, logits: np.ndarray, y_true: np.ndarray, labels: tuple[str, ...],
                       unseen_rows: np.ndarray | None = None, loss: float | None = None,
                       threshold: float = 0.5, pred: np.ndarray | None = None,
                       label_counts: np.ndarray | None = None) -> dict:
    """Subset (exact-match) accuracy, micro/macro/weighted/sample F1, per-label P/R/F1/support, and
    subset accuracy on the compound (2+ labels) and single-label rows. `pred`: the decoded 0/1 label
    matrix (`decode`); without it, every label at a fixed probability threshold. `label_counts`: each row's
    labels as the data writes them (a label the model never learned included), which decide compound / single."""
    y_pred = (sigmoid(logits) >= threshold).astype(int) if pred is None else np.asarray(pred, dtype=int)
    out: dict = {f"{prefix}/n": int(len(y_true))}
    if loss is not None:
        out[f"{prefix}/loss"] = float(loss)
    exact = np.all(y_pred == y_true, axis=1)
    if unseen_rows is not None:
        exact = exact & ~unseen_rows
    out[f"{prefix}/subset_accuracy"] = float(exact.mean()) if len(exact) else math.nan
    out[f"{prefix}/macro_f1"] = macro_f1(y_true, y_pred, len(labels))
    yt_all, yp_all = with_unseen(y_true, y_pred, unseen_counts(y_true, unseen_rows, label_counts))
    out[f"{prefix}/micro_f1"] = float(f1_score(yt_all, yp_all, average="micro", zero_division=0))
    out[f"{prefix}/weighted_f1"] = float(f1_score(yt_all, yp_all, average="weighted", zero_division=0))
    # per row F1, averaged; a row with no true and no predicted label counts 1 (a right empty answer)
    out[f"{prefix}/samples_f1"] = float(f1_score(yt_all, yp_all, average="samples", zero_division=1.0)) \
        if len(y_true) else math.nan
    out[f"{prefix}/labels_per_row"] = float(y_pred.sum(axis=1).mean()) if len(y_pred) else math.nan
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    out.update(per_class_scores(prefix, labels, p, r, f, s, scored_classes(y_true, y_pred, len(labels))))
    out.update(multi_label_row_scores(prefix, y_pred, y_true, unseen_rows, label_counts))
    return out


def unseen_counts(y_true: np.ndarray, unseen_rows: np.ndarray | None = None,
                  label_counts: np.ndarray | None = None) -> np.ndarray:
    """Multi-label: the labels each row carries that the model does not know (no column in `y_true`): the data's
    label count (`label_counts`, labels deduplicated) less the known ones; without counts, one per `unseen_rows`."""
    n = len(y_true)
    if label_counts is not None:
        return np.maximum(np.asarray(label_counts, dtype=np.int64) - np.asarray(y_true).sum(axis=1), 0)
    if unseen_rows is not None:
        return np.asarray(unseen_rows, dtype=np.int64)
    return np.zeros(n, dtype=np.int64)


def with_unseen(y_true: np.ndarray, y_pred: np.ndarray, unseen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0/1 matrices with one extra column per unknown label a row may carry, true there and never predicted, so
    each unknown label is a false negative in micro/weighted/samples F1 (as scikit-learn scores the labels the data
    writes: [card_lost, refund] predicted [card_lost] is half right, not a perfect row)."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    m = int(unseen.max()) if len(unseen) else 0
    if m == 0:
        return y_true, y_pred
    extra = (np.arange(m)[None, :] < np.asarray(unseen)[:, None]).astype(int)
    return np.hstack([y_true, extra]), np.hstack([y_pred, np.zeros_like(extra)])


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy-like proportion p measured on n rows."""
    if n <= 0 or not 0.0 <= p <= 1.0:
        return math.nan
    return math.sqrt(p * (1.0 - p) / n)


# ----------------------------------------------------------------------------------------------
# multi-label decoding: per-label thresholds, at least one label, a cap, an exclusive "none" label

THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.02), 2)  # 49 candidate probabilities, 0.02 apart
# A label with fewer positives than this in the tuning rows keeps the global threshold: one or two
# positives make a label's F1 curve a step function that any threshold below their scores maximises.
MIN_POSITIVES = 3
_EPS = 1e-6


@dataclass(frozen=True)
class Decoding:
    """How multi-label probabilities become a label set.

    thresholds: [k] (or [n, k], one row per text: cross-fitted thresholds) probabilities; a label is
    predicted when its probability reaches its threshold. min_labels: 1 forces at least one label per
    row (the label with the largest margin over its threshold), 0 allows an empty answer. max_labels:
    keep at most this many labels per row (the largest margins), None: no cap. none_index: the explicit
    out-of-scope / none label: it is exclusive (with other labels it stays only when its margin is the
    largest, else it is dropped), and an empty row becomes it.
    """

    thresholds: np.ndarray
    min_labels: int = 1
    max_labels: int | None = None
    none_index: int | None = None

    def with_thresholds(self, thresholds: np.ndarray) -> "Decoding":
        return Decoding(np.asarray(thresholds, dtype=np.float64), self.min_labels, self.max_labels, self.none_index)

    def to_dict(self, labels: tuple[str, ...]) -> dict:
        t = np.asarray(self.thresholds, dtype=np.float64)
        return {"thresholds": {lab: round(float(t[i]), 4) for i, lab in enumerate(labels)},
                "min_labels": int(self.min_labels), "max_labels": self.max_labels,
                "none_label": labels[self.none_index] if self.none_index is not None else None}

    @classmethod
    def from_dict(cls, d: dict | None, labels: tuple[str, ...]) -> "Decoding":
        """From label_map.json's `decoding`; a run saved before decoding existed reads as the old
        behaviour (0.5 everywhere, empty answers allowed, no cap). A block edited by hand into values decode cannot
        use raises ValueError naming every problem (decoding_problems)."""
        if not d:
            return cls(np.full(len(labels), 0.5), 0, None, None)
        problems = decoding_problems(d, labels)
        if problems:
            raise ValueError("; ".join(problems))
        th = {_saved_label(k): v for k, v in d["thresholds"].items()}  # one per label (decoding_problems)
        none = _saved_label(d.get("none_label"))
        return cls(np.array([float(th[lab]) for lab in labels]), int(d.get("min_labels", 1)),
                   d.get("max_labels"), labels.index(none) if none in labels else None)


def _saved_label(name):
    """A label named in label_map.json's `decoding` (a threshold's key, the none label) in the form the run's labels
    are read in (data.label_form): a run saved before labels were NFC-normalised wrote them as its data spelt them,
    and its labels, read NFC, must still be found by those names. Anything but a string is returned as it is."""
    return label_form(name) if isinstance(name, str) else name


def decoding_problems(d, labels: tuple[str, ...]) -> list[str]:
    """What in a `decoding` block (label_map.json; hand-edited to adjust a threshold) decode cannot use, each as
    `decoding.<key>: <value> (<allowed>)`: the values Decoding.to_dict writes, a threshold key or none label
    that is no label (a typo there left the label at 0.5, or no none label, unsaid), and a label of the run with no
    threshold (to_dict writes one per label; a block without them, or without the thresholds object, decoded those
    labels at 0.5, unsaid). An empty or null block (a run saved before decoding existed) is no problem: from_dict
    reads it as the old behaviour."""
    if not isinstance(d, dict):
        return [f"decoding: {d!r:.60} (an object with thresholds, min_labels, max_labels, none_label)"]
    out = []
    th = d.get("thresholds")
    if not isinstance(th, dict) or not th:
        out.append(f"decoding.thresholds: {'missing' if th is None else f'{th!r:.60}'} (an object of label -> a "
                   "number in [0, 1], one per label of the run)")
        th = {}
    else:  # training writes every label's: one left out would decode at 0.5, unsaid
        have = {_saved_label(str(key)) for key in th}
        missing = [lab for lab in labels if lab not in have]
        if missing:
            out.append(f"decoding.thresholds: no threshold for {', '.join(map(repr, missing[:8]))}"
                       f"{f' (+{len(missing) - 8} more)' if len(missing) > 8 else ''} (a number in [0, 1] per label "
                       "of the run)")
    for key, v in th.items():
        if _saved_label(str(key)) not in labels:
            out.append(f"decoding.thresholds.{key}: not a label of the run (one of {', '.join(map(repr, labels[:8]))}"
                       f"{', ...' if len(labels) > 8 else ''})")
        elif not (finite_number(v) and 0.0 <= v <= 1.0):
            out.append(f"decoding.thresholds.{key}: {v!r:.40} (a number in [0, 1])")
    if "min_labels" in d and d["min_labels"] not in (0, 1) or isinstance(d.get("min_labels"), bool):
        out.append(f"decoding.min_labels: {d['min_labels']!r:.40} (0: an empty answer allowed, or 1: at least one)")
    cap = d.get("max_labels")
    if cap is not None and not (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 1):
        out.append(f"decoding.max_labels: {cap!r:.40} (a whole number of at least 1, or null: no cap)")
    none = d.get("none_label")
    if none is not None and _saved_label(none) not in labels:
        out.append(f"decoding.none_label: {none!r:.40} (one of the run's labels, or null)")
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def margins(probs: np.ndarray, dec: Decoding) -> np.ndarray:
    """Each label's margin over its own threshold in logit space [n, k]: the order decode ranks labels in (and what
    predict lists their scores by)."""
    return _logit(probs) - _logit(np.broadcast_to(np.asarray(dec.thresholds, dtype=np.float64), probs.shape))


def decode(probs: np.ndarray, dec: Decoding) -> np.ndarray:
    """0/1 matrix [n, k] of predicted labels from sigmoid probabilities [n, k].

    Labels are ranked by their margin over their own threshold in logit space (logit p - logit t),
    so a label with a low tuned threshold competes fairly with one at 0.5. Steps: threshold; the none
    label made exclusive; the cap (keep the max_labels largest margins); then an empty row gets the
    none label when there is one, else (min_labels 1) its largest-margin label.
    """
    n, k = probs.shape
    if n == 0:
        return np.zeros((0, k), dtype=int)
    margin = margins(probs, dec)
    pred = margin >= 0
    if dec.none_index is not None:
        j = dec.none_index
        others = pred.copy()
        others[:, j] = False
        both = pred[:, j] & others.any(axis=1)
        none_wins = margin[:, j] >= np.where(others, margin, -np.inf).max(axis=1)
        pred[both & none_wins] = False
        pred[both & none_wins, j] = True
        pred[both & ~none_wins, j] = False
    if dec.max_labels is not None and dec.max_labels > 0:
        over = pred.sum(axis=1) > dec.max_labels
        if over.any():
            rank = np.argsort(np.argsort(-np.where(pred, margin, -np.inf), axis=1, kind="stable"), axis=1)
            pred[over] &= rank[over] < dec.max_labels
    empty = ~pred.any(axis=1)
    if empty.any():
        if dec.none_index is not None:
            pred[empty, dec.none_index] = True
        elif dec.min_labels > 0:
            pred[np.flatnonzero(empty), margin[empty].argmax(axis=1)] = True
    return pred.astype(int)


def _best_on_grid(scores: np.ndarray) -> int:
    """Index of the best grid value; on a plateau of ties, its middle (robust to where the plateau ends)."""
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return int(best[len(best) // 2])


def tune_thresholds(probs: np.ndarray, y_true: np.ndarray, grid: np.ndarray = THRESHOLD_GRID,
                    min_positives: int = MIN_POSITIVES) -> np.ndarray:
    """Per-label probability thresholds [k] that maximise each label's F1 on (probs, y_true).

    First one global threshold (best micro-F1 over the grid); a label with at least `min_positives`
    positive rows then gets the grid value maximising its own F1 (the middle of a plateau of ties),
    the others keep the global one. Rare labels are the point: with BCE their probabilities rarely
    reach 0.5, and a lower threshold of their own recovers them.
    """
    k = probs.shape[1]
    if len(probs) == 0:
        return np.full(k, 0.5)
    y = y_true.astype(bool)
    tp, fp = np.zeros((k, len(grid))), np.zeros((k, len(grid)))  # per label and grid value
    for j in range(k):  # one label at a time: [n, g] booleans, never [n, k, g]
        hit = probs[:, j, None] >= grid[None, :]
        tp[j] = (hit & y[:, j, None]).sum(axis=0)
        fp[j] = (hit & ~y[:, j, None]).sum(axis=0)
    fn = y.sum(axis=0)[:, None].astype(float) - tp
    micro = 2 * tp.sum(0) / np.maximum(1e-12, 2 * tp.sum(0) + fp.sum(0) + fn.sum(0))
    global_t = float(grid[_best_on_grid(micro)])
    per = 2 * tp / np.maximum(1e-12, 2 * tp + fp + fn)  # [k, g]
    out = np.full(k, global_t)
    for j in np.flatnonzero(y.sum(axis=0) >= min_positives):
        out[j] = grid[_best_on_grid(per[j])]
    return out


def crossfit_thresholds(probs: np.ndarray, y_true: np.ndarray, seed: int, folds: int = 2) -> np.ndarray:
    """Thresholds per row [n, k]: each row gets the thresholds tuned on the other folds' rows, so
    the scores of the split the thresholds are tuned on stay honest (an estimate of what the saved
    thresholds, tuned on all of it, do on new data)."""
    n, k = probs.shape
    out = np.full((n, k), 0.5)
    if n < 2 * folds:
        out[:] = tune_thresholds(probs, y_true)
        return out
    fold = np.random.default_rng(seed).permutation(n) % folds
    for f in range(folds):
        out[fold == f] = tune_thresholds(probs[fold != f], y_true[fold != f])
    return out


def multi_label_row_scores(prefix: str, pred: np.ndarray, y_true: np.ndarray,
                           unseen_rows: np.ndarray | None = None, label_counts: np.ndarray | None = None) -> dict:
    """Subset accuracy on the compound rows (two or more true labels) and on the single-label rows:
    `<prefix>_compound/subset_accuracy`, `<prefix>_single/subset_accuracy` with their `/n`. A row's labels are
    counted as the data writes them (`label_counts`; a label the model never learned is one: [pin, refund] is a
    compound row), as slices.assign_slices counts them; without `label_counts`, the matrix's."""
    exact = np.all(pred == y_true, axis=1)
    if unseen_rows is not None:
        exact = exact & ~unseen_rows
    n_true = np.asarray(label_counts) if label_counts is not None else y_true.sum(axis=1)
    yt_all, yp_all = with_unseen(y_true, pred, unseen_counts(y_true, unseen_rows, label_counts))
    out: dict = {}
    for name, rows in (("compound", n_true >= 2), ("single", n_true == 1)):
        out[f"{prefix}_{name}/n"] = int(rows.sum())
        if rows.any():
            out[f"{prefix}_{name}/subset_accuracy"] = float(exact[rows].mean())
            out[f"{prefix}_{name}/samples_f1"] = float(f1_score(yt_all[rows], yp_all[rows], average="samples",
                                                                zero_division=0))
    return out
