"""Difficulty probe: how well does the frozen base model already separate the classes?

Mean-pooled embeddings from the base encoder (torch inference mode, batches sorted by length,
`model.max_length` tokens), then a logistic-regression probe: a baseline val macro-F1 (with its
bootstrap standard error), the class pairs it confuses (the pairs to watch while tuning), and per
class the embedding spread and neighbour purity, so that a catch-all class (CLINC's `oos`)
stands out. Embeddings are cached on disk, keyed by the model, max_length and the texts.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from loratune.config import ModelConfig
from loratune.data import Dataset, LabelSpace, stratified_subset
from loratune.errors import UserError

CACHE_VERSION = "1"
PROBE_C = 10.0  # inverse L2 strength of the logistic regression on unit-norm embeddings
BOOTSTRAP_ROUNDS = 200
PURITY_K = 5  # neighbours per training row for neighbour purity


@dataclass(frozen=True)
class ModelInfo:
    model_type: str | None
    num_layers: int | None
    hidden_size: int | None
    max_positions: int | None


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
    macro_f1_se: float  # bootstrap standard error over val rows
    confused_pairs: tuple[ConfusedPair, ...]  # most frequent first (val)
    closest_classes: tuple[ClosePair, ...]  # most similar centroids first
    classes: tuple[ClassProbe, ...]  # most spread out first
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# model facts and tokenisation


def _quiet():
    """Context manager: transformers logging at error level, no progress bars."""
    from contextlib import contextmanager

    from transformers.utils import logging as hf_logging

    @contextmanager
    def cm():
        verbosity = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()

    return cm()


def describe_model(cfg: ModelConfig) -> ModelInfo | None:
    """Layers, hidden size and positions from the model's config (no weights loaded); None if unreadable."""
    from transformers import AutoConfig

    from loratune.models import resolve_model

    src = resolve_model(cfg)
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    try:
        with _quiet():
            c = AutoConfig.from_pretrained(src.path, **kwargs)
    except Exception:  # the tokenizer / model load reports the real problem
        return None

    def first(*names):
        for n in names:
            v = getattr(c, n, None)
            if isinstance(v, int):
                return v
        return None

    return ModelInfo(getattr(c, "model_type", None), first("num_hidden_layers", "n_layer", "num_layers"),
                     first("hidden_size", "n_embd", "d_model"),
                     first("max_position_embeddings", "n_positions", "max_seq_len"))


def load_tokenizer_quiet(cfg: ModelConfig):
    from loratune.models import load_tokenizer

    with _quiet():
        return load_tokenizer(cfg)


def token_lengths(tokenizer, texts: Sequence[str]) -> tuple[list[int], int | None]:
    """Tokens per text (special tokens included, no truncation) and the count of unknown tokens."""
    if not texts:
        return [], 0
    with _quiet():
        ids = tokenizer(list(texts), add_special_tokens=True, truncation=False,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    unk_id = getattr(tokenizer, "unk_token_id", None)
    unk = sum(x.count(unk_id) for x in ids) if unk_id is not None else None
    return [len(x) for x in ids], unk


# ---------------------------------------------------------------------------------------------
# embeddings (cached)


def default_cache_dir() -> Path:
    base = os.environ.get("LORATUNE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "loratune")
    return Path(base) / "embeddings"


def _model_fingerprint(cfg: ModelConfig) -> str:
    from loratune.models import resolve_model

    src = resolve_model(cfg)
    parts = [CACHE_VERSION, "mean-pool", src.path, str(src.gguf_file), str(cfg.max_length)]
    p = Path(src.path)
    for name in ([src.gguf_file] if src.gguf_file else ["config.json", "model.safetensors", "pytorch_model.bin"]):
        f = p / name
        if f.is_file():
            st = f.stat()
            parts.append(f"{name}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


def cache_key(cfg: ModelConfig, texts: Sequence[str]) -> str:
    h = hashlib.sha256(_model_fingerprint(cfg).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def _encode(cfg: ModelConfig, tokenizer, text_lists: list[Sequence[str]], batch_size: int,
            num_threads: int | None) -> tuple[list[np.ndarray], int]:
    """Embeddings for each list, and the torch thread count used."""
    import torch
    from transformers import AutoModel

    from loratune.models import resolve_model

    src = resolve_model(cfg)
    kwargs = {"trust_remote_code": cfg.trust_remote_code}
    if src.gguf_file:
        kwargs["gguf_file"] = src.gguf_file
    try:
        with _quiet():
            model = AutoModel.from_pretrained(src.path, **kwargs)
    except Exception as exc:
        raise UserError(f"could not load model '{cfg.name_or_path}' for the probe: {exc}",
                        "check model.name_or_path, or run `loratune assess --no-probe`") from None
    model.eval()
    accepts = _forward_args(model)

    def embed_batch(texts: Sequence[str]) -> np.ndarray:
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=cfg.max_length,
                          return_tensors="pt")
        batch = {k: v for k, v in batch.items() if k in accepts}
        h = model(**batch).last_hidden_state  # [batch, seq, hidden]
        mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)  # [batch, seq, 1]
        pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # mean over real tokens: [batch, hidden]
        return pooled.float().cpu().numpy()

    old_threads = torch.get_num_threads()
    out = []
    try:
        with torch.inference_mode():
            threads = num_threads or _pick_threads(embed_batch, text_lists, batch_size, old_threads)
            torch.set_num_threads(threads)
            for texts in text_lists:
                order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: little padding
                emb = None
                for start in range(0, len(order), batch_size):
                    idx = order[start:start + batch_size]
                    pooled = embed_batch([texts[i] for i in idx])
                    if emb is None:
                        emb = np.zeros((len(texts), pooled.shape[-1]), np.float32)
                    emb[idx] = pooled
                out.append(emb if emb is not None else np.zeros((0, 1), np.float32))
    finally:
        torch.set_num_threads(old_threads)
    return out, threads


def _pick_threads(embed_batch, text_lists, batch_size: int, available: int) -> int:
    """On a shared machine all-core torch can be several times slower than one thread (the cores are
    busy and OpenMP workers wait on each other). Time one batch both ways and keep the faster."""
    import torch

    texts = [t for lst in text_lists for t in lst]
    if available <= 1 or len(texts) < 8 * batch_size:
        return max(1, available)
    sample = sorted(texts, key=len)[len(texts) // 2:][:batch_size]  # a typical batch
    times = {}
    for n in (available, 1, available):  # the first call also warms up
        torch.set_num_threads(n)
        t0 = time.perf_counter()
        embed_batch(sample)
        times[n] = time.perf_counter() - t0
    return 1 if times[1] < 0.8 * times[available] else available


def _forward_args(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def embed_texts(cfg: ModelConfig, text_lists: Sequence[Sequence[str]], *, tokenizer=None,
                cache_dir: str | Path | None | bool = None, batch_size: int = 128,
                num_threads: int | None = None) -> tuple[list[np.ndarray], bool, int | None]:
    """Mean-pooled frozen embeddings [n, hidden] (float32) for each list of texts, whether all came
    from the cache, and the torch threads used (None when nothing was computed).

    cache_dir: None -> default_cache_dir(); False -> no cache. num_threads None: the faster of all
    cores and one (timed on one batch; a shared machine often favours one).
    """
    folder = None if cache_dir is False else Path(cache_dir) if cache_dir else default_cache_dir()
    keys = [cache_key(cfg, texts) for texts in text_lists]
    result: list[np.ndarray | None] = [None] * len(text_lists)
    if folder is not None:
        for i, k in enumerate(keys):
            f = folder / f"{k}.npy"
            if f.is_file():
                try:
                    arr = np.load(f)
                    if arr.shape[0] == len(text_lists[i]):
                        result[i] = arr
                except (OSError, ValueError):
                    pass  # a damaged cache file: recompute
    missing = [i for i, r in enumerate(result) if r is None]
    threads = None
    if missing:
        if tokenizer is None:
            tokenizer = load_tokenizer_quiet(cfg)
        fresh, threads = _encode(cfg, tokenizer, [text_lists[i] for i in missing], batch_size, num_threads)
        for i, arr in zip(missing, fresh):
            result[i] = arr
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{keys[i]}.{os.getpid()}.tmp.npy"
                np.save(tmp, arr)
                os.replace(tmp, folder / f"{keys[i]}.npy")  # atomic
    return [r for r in result], not missing, threads  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# the probe (numpy + scikit-learn)


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _f1_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """Macro-F1 over the labels that occur in truth or prediction (scikit-learn's default label set)."""
    present = (tp + fp + fn) > 0
    if not present.any():
        return 0.0
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(f1.mean())


def _bootstrap_se(tp_rows: np.ndarray, fp_rows: np.ndarray, fn_rows: np.ndarray, seed: int,
                  rounds: int = BOOTSTRAP_ROUNDS) -> float:
    """SE of macro-F1 by resampling val rows. *_rows: [rows, labels] 0/1 indicator matrices."""
    n = tp_rows.shape[0]
    if n < 2:
        return 0.0
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
    # val labels outside the train space get extra columns: they count as misses (fn) and never as hits
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
    macro_f1 = _f1_counts(tp_rows.sum(0), fp_rows.sum(0), fn_rows.sum(0)) if len(y_val) else 0.0
    accuracy = float(np.mean((pred == member_v).all(1))) if len(y_val) else None
    se = _bootstrap_se(tp_rows, fp_rows, fn_rows, seed)

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
