"""Difficulty probe: how well does the frozen base model already separate the classes?

A logistic-regression probe on the frozen mean-pooled embeddings (embeddings.py): a baseline val
macro-F1 (with its bootstrap standard error), the class pairs it confuses (the pairs to watch while
tuning), and per class the embedding spread and neighbour purity, so that a catch-all class (CLINC's
`oos`) stands out.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from loratune import metrics
from loratune.config import ModelConfig
from loratune.data import Dataset, LabelSpace, stratified_subset
from loratune.embeddings import embed_texts

PROBE_C = 10.0  # inverse L2 strength of the logistic regression on unit-norm embeddings
BOOTSTRAP_ROUNDS = 200
PURITY_K = 5  # neighbours per training row for neighbour purity


@dataclass(frozen=True)
class ConfusedPair:
    """Same shape as `val/confused_pairs` in the run record, so the report can compare base vs tuned."""

    true: str
    pred: str
    count: int


@dataclass(frozen=True)
class ClosePair:
    a: str
    b: str
    cosine: float  # cosine similarity of the two class centroids (train embeddings)


@dataclass(frozen=True)
class ClassProbe:
    label: str
    train_count: int
    val_support: int
    recall: float | None  # probe recall on validation; None without val rows
    spread: float  # mean cosine distance of the class's train embeddings to their centroid
    spread_z: float | None  # spread against the other classes' (leave-one-out z); None under 5 rows
    neighbour_purity: float  # share of each row's nearest train neighbours with the same label


@dataclass(frozen=True)
class ProbeResult:
    model: str
    method: str
    max_length: int
    train_rows: int
    val_rows: int
    macro_f1: float
    accuracy: float | None  # single-label accuracy; subset accuracy for multi-label
    macro_f1_se: float | None  # bootstrap standard error over val rows (None below 2 rows: undefined)
    confused_pairs: tuple[ConfusedPair, ...]  # most frequent first (val)
    closest_classes: tuple[ClosePair, ...]  # most similar centroids first
    classes: tuple[ClassProbe, ...]  # most spread out first
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    notes: tuple[str, ...] = ()


# the probe (numpy + scikit-learn)


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _f1_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """`metrics.macro_f1` from the trained classes' (weighted) counts: the bootstrap's fast form, with its rule for
    which classes are scored (`metrics.scored_counts`: a row, tp + fn, or a prediction, tp + fp) and its score when
    none is (`metrics.NO_SCORED_CLASS_MACRO_F1`)."""
    present = metrics.scored_counts(tp + fn, tp + fp)
    if not present.any():
        return metrics.NO_SCORED_CLASS_MACRO_F1
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(f1.mean())


def _bootstrap_se(tp_rows: np.ndarray, fp_rows: np.ndarray, fn_rows: np.ndarray, seed: int,
                  rounds: int = BOOTSTRAP_ROUNDS) -> float | None:
    """SE of macro-F1 by resampling val rows. *_rows: [rows, labels] 0/1 indicator matrices. None below 2 rows: one
    row resamples to itself, and its 0.0 read as an exact score ("± 0.000")."""
    n = tp_rows.shape[0]
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(rounds):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)  # multiplicity of each row
        scores.append(_f1_counts(w @ tp_rows, w @ fp_rows, w @ fn_rows))
    return float(np.std(scores, ddof=1))


def _neighbour_purity(X: np.ndarray, member: np.ndarray, k: int = PURITY_K, chunk: int = 1024) -> np.ndarray:
    """Per row: share of its k nearest other rows (cosine on unit vectors) sharing a label with it.

    member: [rows, labels] boolean membership.
    """
    n = X.shape[0]
    k = min(k, n - 1)
    out = np.zeros(n, np.float64)
    if k < 1:
        return out
    memf = member.astype(np.float32)
    for s in range(0, n, chunk):
        S = X[s:s + chunk] @ X.T  # [chunk, n] cosine similarities
        S[np.arange(S.shape[0]), np.arange(s, s + S.shape[0])] = -np.inf  # not yourself
        nb = np.argpartition(-S, k - 1, axis=1)[:, :k]  # [chunk, k]
        shared = (memf[s:s + chunk, None, :] * memf[nb]).sum(-1) > 0  # [chunk, k]
        out[s:s + S.shape[0]] = shared.mean(1)
    return out


def probe_from_embeddings(X_train: np.ndarray, y_train: Sequence[Sequence[str]], X_val: np.ndarray,
                          y_val: Sequence[Sequence[str]], space: LabelSpace, *, seed: int = 42,
                          model: str = "", max_length: int = 0, top: int = 20) -> ProbeResult:
    """Fit the linear probe on train embeddings, score validation, profile each class."""
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    Xt, Xv = _unit(X_train), _unit(X_val)
    labels = list(space.labels)
    index = {lab: i for i, lab in enumerate(labels)}
    L = len(labels)
    member_t = np.zeros((len(y_train), L), bool)
    for r, labs in enumerate(y_train):
        for lab in labs:
            if lab in index:
                member_t[r, index[lab]] = True
    # val labels outside the train space get extra columns: they count as misses (fn) and never as hits in accuracy
    # and the confused pairs; macro-F1 averages the trained classes only (metrics.macro_f1, as training scores it)
    extra = sorted({lab for labs in y_val for lab in labs if lab not in index})
    vindex = dict(index, **{lab: L + i for i, lab in enumerate(extra)})
    Lv = L + len(extra)
    member_v = np.zeros((len(y_val), Lv), bool)
    for r, labs in enumerate(y_val):
        for lab in labs:
            member_v[r, vindex[lab]] = True

    if space.multi_label:
        from sklearn.multiclass import OneVsRestClassifier

        clf = OneVsRestClassifier(LogisticRegression(C=PROBE_C, max_iter=300))
        clf.fit(Xt, member_t.astype(int))
        pred = np.zeros((len(y_val), Lv), bool)
        if len(y_val):
            pred[:, :L] = clf.predict_proba(Xv) >= 0.5
        method = f"one-vs-rest logistic regression (C={PROBE_C:g}) on unit-norm mean-pooled frozen embeddings"
    else:
        y = np.array([index[labs[0]] for labs in y_train])
        clf = LogisticRegression(C=PROBE_C, max_iter=300)
        clf.fit(Xt, y)
        pred = np.zeros((len(y_val), Lv), bool)
        if len(y_val):
            pred[np.arange(len(y_val)), clf.predict(Xv)] = True
        method = f"logistic regression (C={PROBE_C:g}) on unit-norm mean-pooled frozen embeddings"
    fit_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    tp_rows = (pred & member_v).astype(np.float64)
    fp_rows = (pred & ~member_v).astype(np.float64)
    fn_rows = (~pred & member_v).astype(np.float64)
    # the baseline the hard-task / easy-task rules compare with val/macro_f1: the same class set (the trained
    # classes), else a split with unseen labels scored the probe on more classes than training scores (0.40 vs 0.50)
    macro_f1 = metrics.macro_f1(member_v[:, :L].astype(int), pred[:, :L].astype(int), L)
    accuracy = float(np.mean((pred == member_v).all(1))) if len(y_val) else None
    se = _bootstrap_se(tp_rows[:, :L], fp_rows[:, :L], fn_rows[:, :L], seed)

    confused: Counter = Counter()
    names = labels + extra
    for r in range(len(y_val)):
        missed = np.flatnonzero(member_v[r] & ~pred[r])
        wrong = np.flatnonzero(pred[r] & ~member_v[r])
        for a in missed:
            for b in wrong:
                confused[(names[a], names[b])] += 1
    confused_pairs = tuple(ConfusedPair(a, b, c) for (a, b), c in
                           sorted(confused.items(), key=lambda kv: (-kv[1], kv[0]))[:top])

    # per class: spread around the centroid, neighbour purity, val recall
    purity_rows = _neighbour_purity(Xt, member_t)
    spreads, centroids, counts = np.zeros(L), np.zeros((L, Xt.shape[1]), np.float32), member_t.sum(0)
    for j in range(L):
        rows = Xt[member_t[:, j]]
        if len(rows) == 0:
            continue
        c = rows.mean(0)
        centroids[j] = c / max(float(np.linalg.norm(c)), 1e-12)
        spreads[j] = float(np.mean(1.0 - rows @ centroids[j]))
    eligible = counts >= 5
    support = member_v[:, :L].sum(0)
    hits = (member_v[:, :L] & pred[:, :L]).sum(0)
    classes = []
    for j, lab in enumerate(labels):
        z = None
        if eligible[j]:
            others = spreads[eligible & (np.arange(L) != j)]
            if len(others) >= 2:
                sd = float(others.std(ddof=1))
                z = float((spreads[j] - others.mean()) / sd) if sd > 0 else None
        purity = float(purity_rows[member_t[:, j]].mean()) if counts[j] else 0.0
        classes.append(ClassProbe(lab, int(counts[j]), int(support[j]),
                                  float(hits[j] / support[j]) if support[j] else None,
                                  float(spreads[j]), z, purity))
    classes.sort(key=lambda c: -c.spread)

    sims = centroids @ centroids.T
    iu = np.triu_indices(L, 1)
    order = np.argsort(-sims[iu])[:top]
    closest = tuple(ClosePair(labels[iu[0][o]], labels[iu[1][o]], float(sims[iu][o])) for o in order)
    return ProbeResult(model=model, method=method, max_length=max_length, train_rows=len(y_train),
                       val_rows=len(y_val), macro_f1=macro_f1, accuracy=accuracy, macro_f1_se=se,
                       confused_pairs=confused_pairs, closest_classes=closest, classes=tuple(classes),
                       seconds={"fit_s": fit_s, "analyse_s": time.perf_counter() - t0})


def run_probe(cfg: ModelConfig, dataset: Dataset, *, cache_dir: str | Path | None | bool = None, seed: int = 42,
              num_threads: int | None = None, tokenizer=None, max_train_rows: int = 20000) -> ProbeResult:
    """Embed train and validation with the frozen base model and fit the probe."""
    train = dataset.train
    notes = []
    if len(train) > max_train_rows:
        train = train.subset(stratified_subset(train, max_train_rows, seed))
        notes.append(f"probe fitted on a stratified subset of {len(train)} training rows")
    t0 = time.perf_counter()
    (Xt, Xv), cached, threads = embed_texts(cfg, [train.texts, dataset.validation.texts], tokenizer=tokenizer,
                                            cache_dir=cache_dir, num_threads=num_threads)
    embed_s = time.perf_counter() - t0
    if threads is not None:
        notes.append(f"embedded with {threads} torch thread(s)")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads or num_threads):  # BLAS threads for the fit, as for torch
        res = probe_from_embeddings(Xt, train.labels, Xv, dataset.validation.labels, dataset.label_space,
                                    seed=seed, model=cfg.name_or_path, max_length=cfg.max_length)
    from dataclasses import replace

    return replace(res, seconds={"embed_s": embed_s, **res.seconds}, cached=cached, notes=tuple(notes))
