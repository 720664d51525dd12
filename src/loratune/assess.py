"""Phase 0 of the protocol: profile the task and the data before any training, propose the start config.

Plain data first (profiles, conflicts, noise, shift, token lengths, the probe's numbers), then
named facts computed from them, then two rule tables evaluated over the facts:

- `START_RULES`: one row per config key of the start config (rank, targets, dropout, lr, epochs,
  max_length, batch size) and the capacity ceiling. Each row reads one fact through a band table
  (or a named derivation) and carries the reason a report can cite.
- `FINDING_RULES`: the warnings catalogue (conflicts, leakage, noise, shift, truncation, val
  resolution, heterogeneous classes...). Every row is evaluated; none short-circuits another.

`assess_dataset` is pure: it needs no model (token lengths, model facts and the probe are passed
in). `run_assessment(cfg)` is the verb the CLI and `tune` call: it loads the data, tokenises,
runs the probe (torch, lazily imported) and calls `assess_dataset`.
"""

from __future__ import annotations

import math
import re
import string
import time
import types
import typing
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from loratune.data import Dataset, Split
from loratune.params import breakeven_point

if typing.TYPE_CHECKING:  # pragma: no cover
    from loratune.config import RunConfig
    from loratune.probe import ModelInfo, ProbeResult

SCHEMA_VERSION = 1


# ---------------------------------------------------------------------------------------------
# thresholds (named numbers; every one appears in the evidence of the findings it drives)


@dataclass(frozen=True)
class AssessThresholds:
    long_tail_count: int = 20  # a class with fewer training rows than this is in the long tail
    imbalance_ratio: float = 10.0  # largest / smallest class count in train
    short_chars: int = 3  # a text with fewer non-space characters than this is "very short"
    near_duplicate_similarity: float = 0.9  # char 3-4-gram TF-IDF cosine for "near-identical"
    near_leak_similarity: float = 0.95  # cosine above which a val/test row counts as a near copy of train
    near_duplicate_neighbors: int = 5  # neighbours examined per unique text
    label_shift_js: float = 0.05  # Jensen-Shannon divergence (bits) of label shares vs train
    oov_rate: float = 0.10  # share of val/test word tokens never seen in train
    length_shift_ks: float = 0.15  # Kolmogorov-Smirnov statistic of length distributions vs train
    truncation_share: float = 0.01  # share of train texts longer than model.max_length
    min_val_per_class: int = 10  # fewer val rows than this for a class: its recall is noise
    spread_z: float = 3.0  # a class whose embedding spread is this many SDs above the mean is heterogeneous
    hard_probe_f1: float = 0.5  # frozen-encoder probe below this: a hard task for this model
    easy_probe_f1: float = 0.95  # probe above this: the base already separates the classes
    max_examples: int = 5  # examples kept per finding


# ---------------------------------------------------------------------------------------------
# records (frozen, plain; `Assessment.to_dict()` is what `--json`, `tune` and the report read)


@dataclass(frozen=True)
class LengthStats:
    """A length distribution (characters, words or model tokens incl. special tokens)."""

    n: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: int


@dataclass(frozen=True)
class SplitProfile:
    name: str
    rows: int
    classes: int  # labels with at least one row in this split
    count_min: int
    count_median: float
    count_max: int
    imbalance_ratio: float  # count_max / count_min
    long_tail_classes: tuple[str, ...]  # classes under thresholds.long_tail_count rows (train only)
    long_tail_share: float  # share of classes in the long tail
    multi_label_rows: int  # rows with more than one label
    unlabelled_rows: int  # rows with no label (multi-label data only)
    label_set_sizes: dict[int, int]  # labels per row -> rows
    chars: LengthStats
    words: LengthStats
    tokens: LengthStats | None  # under the model's tokenizer; None when not tokenised
    truncated_share: float | None  # share of rows longer than model.max_length tokens
    unk_rate: float | None  # share of tokens that are the tokenizer's unknown token
    counts: dict[str, int]  # label -> rows, most frequent first


@dataclass(frozen=True)
class RowRef:
    split: str
    index: int  # 0-based row within the split
    text: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class PairCount:
    a: str
    b: str
    count: int


@dataclass(frozen=True)
class ConflictExample:
    kind: str  # "exact" (same text after normalising case/space/punctuation) or "near"
    similarity: float  # 1.0 for exact
    rows: tuple[RowRef, ...]


@dataclass(frozen=True)
class Conflicts:
    """Identical or near-identical texts carrying different labels (all splits pooled)."""

    exact_groups: int  # normalised texts that carry more than one label set
    exact_rows: int  # rows in those groups
    near_pairs: int  # pairs of distinct texts with cosine >= threshold and different labels
    near_threshold: float
    pairs: tuple[PairCount, ...]  # label pair -> conflicts (exact + near), most frequent first
    examples: tuple[ConflictExample, ...]


@dataclass(frozen=True)
class SplitNoise:
    split: str
    empty: int
    very_short: int  # 1..short_chars-1 non-space characters
    no_letters: int  # non-empty but no alphabetic character ("non-text")
    encoding_damage: int  # U+FFFD or mojibake such as 'Ã©', 'â€™'
    non_printable: int  # control / format / private-use characters
    duplicate_rows: int  # rows repeating an earlier row (same normalised text, same labels)
    examples: dict[str, tuple[str, ...]]  # kind -> a few offending texts (repr-safe)


@dataclass(frozen=True)
class Leakage:
    """Rows of `split` whose normalised text also appears in `source` (exactly) or nearly."""

    source: str
    split: str
    rows: int
    share: float  # of `split`
    near_rows: int  # rows without an exact copy but with a neighbour >= near_leak_similarity in source
    examples: tuple[str, ...]


@dataclass(frozen=True)
class Noise:
    splits: tuple[SplitNoise, ...]
    leakage: tuple[Leakage, ...]


@dataclass(frozen=True)
class LabelShare:
    label: str
    train_share: float
    split_share: float


@dataclass(frozen=True)
class SplitShift:
    """One split against train."""

    split: str
    js_divergence: float  # Jensen-Shannon divergence of label shares, bits (0 same .. 1 disjoint)
    top_labels: tuple[LabelShare, ...]  # the labels that contribute most to the divergence
    unseen_labels: dict[str, int]  # labels not in train -> rows
    missing_labels: tuple[str, ...]  # train labels with no row in this split
    oov_token_rate: float  # word tokens (\w+, case-folded) never seen in train
    oov_type_rate: float  # distinct words never seen in train
    length_unit: str  # "tokens" or "words"
    length_mean_train: float
    length_mean_split: float
    length_ks: float  # Kolmogorov-Smirnov statistic between the two length distributions


@dataclass(frozen=True)
class Resolution:
    """How small a difference this validation split can show (the standard error of its metrics)."""

    val_rows: int
    classes: int
    accuracy_at: float  # the accuracy the SEs are computed at (probe accuracy, else assumed)
    accuracy_se: float
    macro_f1_se: float
    method: str  # "bootstrap of the probe's val predictions" or "binomial approximation"
    detectable_difference: float  # ~2 SE of macro-F1: differences below this are val-sampling noise


@dataclass(frozen=True)
class Choice:
    key: str  # dotted config key (config.replace accepts it)
    value: Any
    rule: str  # rule id in START_RULES
    reason: str


@dataclass(frozen=True)
class Recommendation:
    overrides: dict[str, Any]  # dotted key -> value: `config.replace(cfg, **overrides)`
    choices: tuple[Choice, ...]  # the rule behind each value
    capacity_ceiling: Choice  # key "adapter.r": the highest rank worth trying
    lr_grid: tuple[float, ...]  # coarse grid around the lr centre {0.5x, 1x, 2x} (protocol 1)


@dataclass(frozen=True)
class DataFinding:
    id: str  # stable kebab-case rule id in FINDING_RULES
    severity: str  # "error" (fix before training), "warn" (read before trusting metrics), "info"
    message: str
    evidence: dict[str, Any]  # the facts and thresholds the rule read


@dataclass(frozen=True)
class Assessment:
    """Everything `loratune assess` measured and proposed; plain data."""

    dataset: str
    model: str
    multi_label: bool
    labels: tuple[str, ...]
    splits: tuple[SplitProfile, ...]
    conflicts: Conflicts
    noise: Noise
    shift: tuple[SplitShift, ...]
    probe: ProbeResult | None
    model_info: ModelInfo | None
    resolution: Resolution
    facts: dict[str, Any]  # the named numbers the rule tables read
    recommendation: Recommendation
    findings: tuple[DataFinding, ...]
    notes: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    thresholds: AssessThresholds = field(default_factory=AssessThresholds)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dicts and lists (tuples become lists, dict keys strings)."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Assessment":
        """Inverse of `to_dict` (e.g. for a report reading `assess.json`)."""
        return _from_plain(cls, data)

    def split(self, name: str) -> SplitProfile | None:
        return next((s for s in self.splits if s.name == name), None)

    def by_severity(self, *severities: str) -> tuple[DataFinding, ...]:
        return tuple(f for f in self.findings if f.severity in severities)


# ---------------------------------------------------------------------------------------------
# text helpers

_MOJIBAKE = re.compile("[\u00c2\u00c3][\u0080-\u00bf]|\u00e2\u20ac|\u00e2\u0080|\u00c3\u00a2\u00e2")
_WORD = re.compile(r"\w+")
_ALLOWED_CONTROL = {"\t", "\n", "\r"}
_ALLOWED_FORMAT = {"\u200d"}  # zero-width joiner inside emoji


def normalise(text: str) -> str:
    """Case-, space- and punctuation-insensitive key: NFKC, casefold, punctuation/symbols -> space."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in t)
    return " ".join(t.split())


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def has_encoding_damage(text: str) -> bool:
    return "\ufffd" in text or _MOJIBAKE.search(text) is not None


def has_non_printable(text: str) -> bool:
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cc" and ch not in _ALLOWED_CONTROL:
            return True
        if cat in ("Cf", "Co", "Cs", "Cn") and ch not in _ALLOWED_FORMAT:
            return True
    return False


def length_stats(values: Sequence[int]) -> LengthStats:
    if len(values) == 0:
        return LengthStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p95, p99 = (float(x) for x in np.percentile(a, [50, 90, 95, 99]))
    return LengthStats(len(a), float(a.mean()), p50, p90, p95, p99, int(a.max()))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / len(x)
    cdf_y = np.searchsorted(y, grid, side="right") / len(y)
    return float(np.max(np.abs(cdf_x - cdf_y)))


def js_divergence(p: Mapping[str, float], q: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """Jensen-Shannon divergence in bits between two count (or share) maps, and each label's term."""
    labels = sorted(set(p) | set(q))
    P = np.array([p.get(k, 0.0) for k in labels], float)
    Q = np.array([q.get(k, 0.0) for k in labels], float)
    if P.sum() == 0 or Q.sum() == 0:
        return 0.0, {}
    P, Q = P / P.sum(), Q / Q.sum()
    M = (P + Q) / 2

    def terms(X):
        out = np.zeros_like(X)
        nz = X > 0
        out[nz] = X[nz] * np.log2(X[nz] / M[nz])
        return out

    per = 0.5 * terms(P) + 0.5 * terms(Q)
    return float(max(per.sum(), 0.0)), dict(zip(labels, per.tolist()))


def round_up(x: float, multiple: int = 8) -> int:
    return int(math.ceil(x / multiple) * multiple)


def _short(text: str, n: int = 120) -> str:
    t = text if len(text) <= n else text[: n - 1] + "…"
    return t.encode("unicode_escape").decode("ascii") if has_non_printable(t) else t


# ---------------------------------------------------------------------------------------------
# profiles


def profile_split(split: Split, *, thresholds: AssessThresholds = AssessThresholds(),
                  token_lengths: Sequence[int] | None = None, max_length: int | None = None,
                  unk_tokens: int | None = None, label_space: Sequence[str] | None = None) -> SplitProfile:
    """Shape, counts, long tail, imbalance, multi-label stats and length distributions of one split."""
    counts = split.label_counts()
    if label_space is not None and split.name == "train":
        for lab in label_space:
            counts.setdefault(lab, 0)
    values = sorted(counts.values())
    nonzero = [v for v in values if v > 0] or [0]
    tail = tuple(sorted(k for k, v in counts.items() if v < thresholds.long_tail_count)) \
        if split.name == "train" else ()
    sizes = Counter(len(labs) for labs in split.labels)
    tokens = trunc = unk = None
    if token_lengths is not None:
        tokens = length_stats(token_lengths)
        if max_length is not None and len(token_lengths):
            trunc = float(np.mean(np.asarray(token_lengths) > max_length))
        if unk_tokens is not None:
            unk = unk_tokens / max(1, int(np.sum(token_lengths)))
    return SplitProfile(
        name=split.name, rows=len(split), classes=sum(1 for v in values if v > 0),
        count_min=int(min(nonzero)), count_median=float(np.median(nonzero)), count_max=int(max(nonzero)),
        imbalance_ratio=float(max(nonzero) / min(nonzero)) if min(nonzero) > 0 else 0.0,
        long_tail_classes=tail, long_tail_share=len(tail) / max(1, len(counts)),
        multi_label_rows=sum(1 for labs in split.labels if len(labs) > 1),
        unlabelled_rows=sum(1 for labs in split.labels if not labs),
        label_set_sizes=dict(sorted(sizes.items())),
        chars=length_stats([len(t) for t in split.texts]),
        words=length_stats([len(words(t)) for t in split.texts]),
        tokens=tokens, truncated_share=trunc, unk_rate=unk,
        counts=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


# ---------------------------------------------------------------------------------------------
# label consistency and duplicates (all splits pooled)


@dataclass
class _Pool:
    """Rows of every split keyed by normalised text."""

    refs: list[RowRef]
    by_norm: dict[str, list[int]]  # normalised text -> indices into refs

    @classmethod
    def of(cls, splits: Mapping[str, Split]) -> "_Pool":
        refs, by = [], defaultdict(list)
        for name, sp in splits.items():
            for i, (t, labs) in enumerate(zip(sp.texts, sp.labels)):
                by[normalise(t)].append(len(refs))
                refs.append(RowRef(name, i, t, tuple(labs)))
        return cls(refs, dict(by))


def _label_key(labels: Sequence[str]) -> str:
    return "+".join(sorted(labels)) if labels else "(none)"


def _neighbours(texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each text, its k nearest texts (itself included) under the cosine of sublinear char 3-4-gram
    counts: (similarity, index). No IDF: a surface similarity that does not depend on the corpus size."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    if len(texts) < 2:
        return np.zeros((len(texts), 0)), np.zeros((len(texts), 0), int)
    X = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4), sublinear_tf=True, use_idf=False,
                        dtype=np.float32).fit_transform(texts)
    k = min(k + 1, len(texts))
    nn = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(X)
    dist, idx = nn.kneighbors(X)
    return 1.0 - dist, idx


def find_conflicts(pool: _Pool, thresholds: AssessThresholds,
                   neighbours: tuple[np.ndarray, np.ndarray], uniq: list[str]) -> Conflicts:
    """Exact conflicts (one normalised text, several label sets) and near ones (char n-gram neighbours)."""
    pairs: Counter = Counter()
    examples: list[ConflictExample] = []
    exact_groups = exact_rows = 0
    main_label: dict[str, str] = {}
    for n, idxs in pool.by_norm.items():
        keys = Counter(_label_key(pool.refs[i].labels) for i in idxs)
        main_label[n] = keys.most_common(1)[0][0]
        if not n or len(keys) < 2:
            continue
        exact_groups += 1
        exact_rows += len(idxs)
        ks = sorted(keys)
        for x in range(len(ks)):
            for y in range(x + 1, len(ks)):
                pairs[(ks[x], ks[y])] += 1
        if len(examples) < thresholds.max_examples:
            seen, rows = set(), []
            for i in idxs:  # one row per label set
                key = _label_key(pool.refs[i].labels)
                if key not in seen:
                    seen.add(key)
                    rows.append(pool.refs[i])
            examples.append(ConflictExample("exact", 1.0, tuple(rows)))
    near = 0
    near_examples: list[ConflictExample] = []
    done: set[tuple[int, int]] = set()  # kNN is not symmetric: count each pair once, whichever side found it
    sims, idx = neighbours
    for a in range(len(uniq)):
        for s, b in zip(sims[a], idx[a]):
            b = int(b)
            pair = (min(a, b), max(a, b))
            if a == b or pair in done or s < thresholds.near_duplicate_similarity or not uniq[a] or not uniq[b]:
                continue
            done.add(pair)
            la, lb = main_label[uniq[a]], main_label[uniq[b]]
            if la == lb:
                continue
            near += 1
            pairs[tuple(sorted((la, lb)))] += 1
            near_examples.append(ConflictExample(
                "near", round(float(s), 4),
                (pool.refs[pool.by_norm[uniq[a]][0]], pool.refs[pool.by_norm[uniq[b]][0]])))
    near_examples.sort(key=lambda e: -e.similarity)
    examples.extend(near_examples[: thresholds.max_examples])
    return Conflicts(
        exact_groups=exact_groups, exact_rows=exact_rows, near_pairs=near,
        near_threshold=thresholds.near_duplicate_similarity,
        pairs=tuple(PairCount(a, b, c) for (a, b), c in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))),
        examples=tuple(examples),
    )


def find_noise(splits: Mapping[str, Split], pool: _Pool, thresholds: AssessThresholds,
               neighbours: tuple[np.ndarray, np.ndarray], uniq: list[str]) -> Noise:
    """Empty/short/non-text rows, encoding damage, non-printables, duplicates, cross-split leakage."""
    out = []
    for name, sp in splits.items():
        counts = Counter()
        ex: dict[str, list[str]] = defaultdict(list)
        seen: set[tuple[str, str]] = set()

        def hit(kind: str, text: str) -> None:
            counts[kind] += 1
            if len(ex[kind]) < thresholds.max_examples:
                ex[kind].append(_short(text))

        for t, labs in zip(sp.texts, sp.labels):
            stripped = "".join(t.split())
            if not stripped:
                hit("empty", t)
            elif len(stripped) < thresholds.short_chars:
                hit("very_short", t)
            if stripped and not any(ch.isalpha() for ch in stripped):
                hit("no_letters", t)
            if has_encoding_damage(t):
                hit("encoding_damage", t)
            if has_non_printable(t):
                hit("non_printable", t)
            key = (normalise(t), _label_key(labs))
            if key in seen:
                hit("duplicate_rows", t)
            seen.add(key)
        out.append(SplitNoise(name, counts["empty"], counts["very_short"], counts["no_letters"],
                              counts["encoding_damage"], counts["non_printable"], counts["duplicate_rows"],
                              {k: tuple(v) for k, v in ex.items()}))

    # cross-split: exact (normalised) copies, and near copies among the char n-gram neighbours
    splits_of: dict[str, set[str]] = {n: {pool.refs[i].split for i in idxs} for n, idxs in pool.by_norm.items()}
    uid = {u: k for k, u in enumerate(uniq)}
    sims, nidx = neighbours
    names = list(splits)
    leaks = []
    for x in range(len(names)):
        for y in range(x + 1, len(names)):
            src, dst = names[x], names[y]
            rows = near_rows = 0
            leak_ex: list[str] = []
            for i, t in enumerate(splits[dst].texts):
                n = normalise(t)
                if not n:
                    continue
                if src in splits_of[n]:
                    rows += 1
                    if len(leak_ex) < thresholds.max_examples:
                        leak_ex.append(_short(t))
                    continue
                k = uid[n]
                if any(s >= thresholds.near_leak_similarity and src in splits_of[uniq[int(j)]]
                       for s, j in zip(sims[k], nidx[k]) if int(j) != k):
                    near_rows += 1
            leaks.append(Leakage(src, dst, rows, rows / max(1, len(splits[dst])), near_rows, tuple(leak_ex)))
    return Noise(tuple(out), tuple(leaks))


# ---------------------------------------------------------------------------------------------
# shift


def measure_shift(train: Split, other: Split, *, train_lengths: Sequence[int] | None = None,
                  other_lengths: Sequence[int] | None = None, top: int = 3) -> SplitShift:
    tc, oc = train.label_counts(), other.label_counts()
    js, per = js_divergence(tc, oc)
    tn, on = max(1, sum(tc.values())), max(1, sum(oc.values()))
    top_labels = tuple(LabelShare(k, tc.get(k, 0) / tn, oc.get(k, 0) / on)
                       for k, _ in sorted(per.items(), key=lambda kv: -kv[1])[:top] if per[k] > 0)
    vocab = {w for t in train.texts for w in words(t)}
    toks = [w for t in other.texts for w in words(t)]
    types_ = set(toks)
    oov_tok = sum(1 for w in toks if w not in vocab) / max(1, len(toks))
    oov_type = sum(1 for w in types_ if w not in vocab) / max(1, len(types_))
    if train_lengths is not None and other_lengths is not None:
        unit, a, b = "tokens", list(train_lengths), list(other_lengths)
    else:
        unit, a, b = "words", [len(words(t)) for t in train.texts], [len(words(t)) for t in other.texts]
    return SplitShift(
        split=other.name, js_divergence=js, top_labels=top_labels,
        unseen_labels=dict(Counter(lab for labs in other.labels for lab in labs if lab not in tc).most_common()),
        missing_labels=tuple(sorted(k for k in tc if k not in oc)),
        oov_token_rate=oov_tok, oov_type_rate=oov_type, length_unit=unit,
        length_mean_train=float(np.mean(a)) if a else 0.0, length_mean_split=float(np.mean(b)) if b else 0.0,
        length_ks=ks_statistic(a, b),
    )


# ---------------------------------------------------------------------------------------------
# resolution of the validation split


def estimate_resolution(val: Split, *, accuracy: float | None = None, bootstrap_se: float | None = None,
                        assumed_accuracy: float = 0.9) -> Resolution:
    """Standard errors of val accuracy and macro-F1 for this val size.

    accuracy: binomial sqrt(p(1-p)/n). macro-F1: the bootstrap SE of the probe's val predictions
    when given, else the SE of macro-recall, sqrt(sum_k p(1-p)/n_k) / K, with each class at p.
    """
    p = accuracy if accuracy is not None else assumed_accuracy
    n = len(val)
    counts = [c for c in val.label_counts().values() if c > 0]
    k = max(1, len(counts))
    acc_se = math.sqrt(p * (1 - p) / max(1, n))
    approx = math.sqrt(sum(p * (1 - p) / c for c in counts)) / k if counts else 0.0
    if bootstrap_se is not None:
        se, method = bootstrap_se, "bootstrap of the probe's val predictions"
    else:
        se, method = approx, "binomial approximation (per-class recall at the accuracy)"
    return Resolution(n, len(counts), p, acc_se, se, method, 2 * se)


# ---------------------------------------------------------------------------------------------
# facts: the named numbers the rule tables read


def compute_facts(ds: Dataset, profiles: Mapping[str, SplitProfile], conflicts: Conflicts, noise: Noise,
                  shifts: Mapping[str, SplitShift], resolution: Resolution, *, max_length: int | None,
                  model_info: ModelInfo | None, probe: ProbeResult | None,
                  thresholds: AssessThresholds) -> dict[str, Any]:
    tr = profiles["train"]
    val = profiles.get("validation")
    f: dict[str, Any] = {
        "train_rows": tr.rows, "val_rows": val.rows if val else 0,
        "test_rows": profiles["test"].rows if "test" in profiles else 0,
        "classes": len(ds.label_space), "multi_label": bool(ds.label_space.multi_label),
        "multi_label_rate": tr.multi_label_rows / max(1, tr.rows),
        "rows_per_class_median": tr.count_median, "rows_per_class_min": tr.count_min,
        "long_tail_classes": len(tr.long_tail_classes), "long_tail_share": tr.long_tail_share,
        "long_tail_examples": ", ".join(tr.long_tail_classes[: thresholds.max_examples]),
        "imbalance_ratio": tr.imbalance_ratio,
        "largest_class": next(iter(tr.counts), None),
        "smallest_class": next((k for k, v in reversed(tr.counts.items()) if v > 0), None),
        "token_p50": tr.tokens.p50 if tr.tokens else None,
        "token_p99": tr.tokens.p99 if tr.tokens else None,
        "token_p99_ceil": math.ceil(tr.tokens.p99) if tr.tokens else None,
        "token_max": tr.tokens.max if tr.tokens else None,
        "max_length": max_length, "truncated_share": tr.truncated_share,
        "unk_rate": tr.unk_rate,
        "exact_conflict_groups": conflicts.exact_groups, "exact_conflict_rows": conflicts.exact_rows,
        "near_conflict_pairs": conflicts.near_pairs,
        "top_conflict_pair": (f"{conflicts.pairs[0].a} / {conflicts.pairs[0].b}" if conflicts.pairs else None),
    }
    for kind in ("empty", "very_short", "no_letters", "encoding_damage", "non_printable", "duplicate_rows"):
        f[f"{kind}_rows"] = sum(getattr(s, kind) for s in noise.splits)
        f[f"{kind}_where"] = ", ".join(f"{s.split} {getattr(s, kind)}" for s in noise.splits if getattr(s, kind))
    for lk in noise.leakage:
        short = {"validation": "val"}.get(lk.split, lk.split)
        src = {"validation": "val"}.get(lk.source, lk.source)
        f[f"leak_{src}_{short}_rows"] = lk.rows
        f[f"leak_{src}_{short}_share"] = lk.share
        f[f"near_leak_{src}_{short}_rows"] = lk.near_rows
    f["leak_rows"] = sum(lk.rows for lk in noise.leakage)
    f["leak_where"] = ", ".join(f"{lk.source}->{lk.split} {lk.rows}" for lk in noise.leakage if lk.rows)
    for name, sh in shifts.items():
        s = {"validation": "val"}.get(name, name)
        f[f"js_{s}"] = sh.js_divergence
        f[f"js_{s}_top"] = ", ".join(f"{x.label} ({x.train_share:.1%} of train, {x.split_share:.1%} of {s})"
                                     for x in sh.top_labels[:2])
        f[f"unseen_{s}_labels"] = len(sh.unseen_labels)
        f[f"unseen_{s}_rows"] = sum(sh.unseen_labels.values())
        f[f"unseen_{s}_names"] = ", ".join(list(sh.unseen_labels)[: thresholds.max_examples])
        f[f"missing_{s}_labels"] = len(sh.missing_labels)
        f[f"missing_{s}_names"] = ", ".join(sh.missing_labels[: thresholds.max_examples])
        f[f"oov_{s}"] = sh.oov_token_rate
        f[f"length_ks_{s}"] = sh.length_ks
        f[f"length_mean_{s}"] = sh.length_mean_split
        f["length_mean_train"] = sh.length_mean_train
        f["length_unit"] = sh.length_unit
    f["shift_worst_js"] = max((sh.js_divergence for sh in shifts.values()), default=0.0)
    f["shift_worst_js_split"] = max(shifts, key=lambda k: shifts[k].js_divergence) if shifts else None
    f["unseen_label_rows"] = sum(sum(sh.unseen_labels.values()) for sh in shifts.values())
    f["val_rows_per_class_min"] = val.count_min if val else 0
    f["val_classes_under_min"] = (sum(1 for lab in ds.label_space.labels
                                      if val.counts.get(lab, 0) < thresholds.min_val_per_class) if val else 0)
    f["accuracy_se"] = resolution.accuracy_se
    f["macro_f1_se"] = resolution.macro_f1_se
    f["detectable_difference"] = resolution.detectable_difference
    f["resolution_method"] = resolution.method
    f["accuracy_at"] = resolution.accuracy_at
    mi = model_info
    f["model_type"] = mi.model_type if mi else None
    f["model_layers"] = mi.num_layers if mi else None
    f["model_hidden"] = mi.hidden_size if mi else None
    f["model_max_positions"] = mi.max_positions if mi else None
    f["probe_macro_f1"] = probe.macro_f1 if probe else None
    f["probe_accuracy"] = probe.accuracy if probe else None
    if probe is not None:
        het = [c for c in probe.classes if c.spread_z is not None and c.spread_z >= thresholds.spread_z]
        het.sort(key=lambda c: -(c.spread_z or 0))
        f["heterogeneous_classes"] = len(het)
        f["heterogeneous_names"] = "; ".join(
            f"{c.label} (spread z={c.spread_z:.1f}, neighbour purity {c.neighbour_purity:.2f}"
            + (f", probe recall {c.recall:.2f}" if c.recall is not None else "") + ")"
            for c in het[: thresholds.max_examples])
        f["probe_confused_top"] = ", ".join(f"{p.true} -> {p.pred} ({p.count})" for p in probe.confused_pairs[:3])
        f["probe_confused_pairs"] = len(probe.confused_pairs)
    else:
        f["heterogeneous_classes"] = None
    return f


# ---------------------------------------------------------------------------------------------
# start-config rules (a table: each row sets one key from one fact)


@dataclass(frozen=True)
class Bands:
    """A band table over one fact: the first row whose upper bound exceeds the fact gives the value."""

    fact: str
    rows: tuple[tuple[float, Any], ...]  # (upper bound, exclusive; math.inf for the last row, value)
    default: Any = None  # when the fact is unknown

    def __call__(self, facts: Mapping[str, Any]) -> Any:
        x = facts.get(self.fact)
        if x is None:
            return self.default
        for hi, value in self.rows:
            if x < hi:
                return value
        return self.rows[-1][1]

    def describe(self) -> str:
        parts, lo = [], None
        for hi, value in self.rows:
            cond = (f"{self.fact} < {hi:g}" if lo is None else
                    f"{self.fact} >= {lo:g}" if math.isinf(hi) else f"{lo:g} <= {self.fact} < {hi:g}")
            parts.append(f"{cond} -> {value}")
            lo = hi
        if self.default is not None:
            parts.append(f"unknown -> {self.default}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Derived:
    """A value computed from facts and earlier choices by a named formula (shown by `describe`)."""

    formula: str
    fn: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]

    def describe(self) -> str:
        return self.formula


@dataclass(frozen=True)
class StartRule:
    id: str  # stable kebab-case
    key: str  # dotted config key, or "ceiling.r" for the capacity ceiling
    value: Bands | Derived
    reason: str  # why; formatted with the facts, {value} and {rule}


def _max_length(f: Mapping[str, Any], chosen: Mapping[str, Any]) -> int | None:
    p99 = f.get("token_p99")
    if p99 is None:
        return None
    cap = f.get("model_max_positions") or 512
    return int(min(max(16, round_up(p99, 8)), cap))


def _ceiling(f: Mapping[str, Any], chosen: Mapping[str, Any]) -> int:
    by_data = CEILING_BY_DATA(f)
    by_model = _ceiling_by_model(f.get("model_hidden")) or by_data
    return int(max(chosen.get("adapter.r", 8), min(by_data, by_model)))


def _ceiling_by_model(hidden: int | None) -> int | None:
    """The largest power of 2 at or below the compute-breakeven rank of one hidden x hidden weight
    (params.breakeven_point: r = hidden/6); ranks beyond that cost like full fine-tuning."""
    if not hidden:
        return None
    return 2 ** int(math.log2(max(2, breakeven_point(hidden * hidden, 2 * hidden))))


CEILING_BY_DATA = Bands("train_rows", ((1000, 16), (5000, 32), (20000, 64), (math.inf, 128)))

START_RULES: tuple[StartRule, ...] = (
    StartRule("start-rank-by-data", "adapter.r", Bands("train_rows", ((3000, 8), (math.inf, 16))),
              "{train_rows} training rows: r={value} (protocol 3: start at r 8-16, lower for less data)"),
    StartRule("start-scale-2", "adapter.lora_alpha", Derived("2 * r (scale s = lora_alpha / r = 2)",
                                                             lambda f, c: float(2 * c["adapter.r"])),
              "lora_alpha={value:g}: scale s = alpha/r = 2 (protocol 1: s = 1-2 to start, fixed in phase 1)"),
    StartRule("start-targets-qv-ffn-top", "adapter.target_modules",
              Derived("[attn.q, attn.v, ffn@top:K], K from model_layers (rule start-ffn-top-k)",
                      lambda f, c: ["attn.q", "attn.v", f"ffn@top:{FFN_TOP_K(f)}"]),
              "attention Q/V in every layer plus the FFN of the top {ffn_top_k} of {model_layers} layers "
              "(protocol 3: Q/V + FFN of the top 2-4 layers)"),
    StartRule("start-layers-all", "adapter.layers_to_transform", Derived("all", lambda f, c: "all"),
              "Q/V adapters in every block; the FFN group carries its own @top:K"),
    StartRule("start-dropout-by-data", "adapter.lora_dropout",
              Bands("rows_per_class_median", ((50, 0.1), (math.inf, 0.05))),
              "median {rows_per_class_median:g} training rows per class: lora_dropout={value} "
              "(protocol 3: 0.05-0.1, higher for small data)"),
    StartRule("start-lr-by-model-size", "train.learning_rate",
              Bands("model_hidden", ((513, 1e-3), (1025, 5e-4), (2049, 3e-4), (math.inf, 2e-4)), default=5e-4),
              "hidden size {model_hidden}: lr centre {value:g} (small models on short budgets want ~1e-3, larger "
              "ones 1e-4..5e-4; confirm with an lr range test and compare capacities on {{0.5x, 1x, 2x}})"),
    StartRule("start-epochs-by-data", "train.num_train_epochs",
              Bands("train_rows", ((1000, 10.0), (3000, 8.0), (10000, 5.0), (30000, 3.0), (math.inf, 2.0))),
              "{train_rows} training rows: {value:g} epochs (fewer rows need more passes for a similar "
              "number of optimizer steps)"),
    StartRule("start-batch-by-data", "train.per_device_train_batch_size",
              Bands("train_rows", ((1000, 16), (100000, 32), (math.inf, 64))),
              "{train_rows} training rows: batch {value} (small data: smaller batches give more steps)"),
    StartRule("start-max-length-p99", "model.max_length",
              Derived("token p99 of train rounded up to a multiple of 8, within [16, model max positions]",
                      _max_length),
              "99% of training texts fit in {token_p99_ceil} tokens (max {token_max}): max_length={value}"),
    StartRule("ceiling-rank", "ceiling.r", Derived(
        "min(rank by data: " + CEILING_BY_DATA.describe() + "; largest power of 2 <= hidden/6), at least r",
        _ceiling),
        "highest rank worth trying: {value} (less data, lower ceiling; at r = hidden/6 = {ceiling_by_model} LoRA "
        "reaches a third of each adapted weight, the compute breakeven with full fine-tuning, protocol 6)"),
)

FFN_TOP_K = Bands("model_layers", ((7, 2), (13, 3), (math.inf, 4)), default=2)


class _Formatter(string.Formatter):
    """str.format over the facts where an unknown or missing fact prints as "?" whatever its format spec."""

    def get_value(self, key, args, kwargs):
        return kwargs.get(key) if isinstance(key, str) else super().get_value(key, args, kwargs)

    def format_field(self, value, format_spec):
        if value is None:
            return "?"
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):
            return str(value)


def _fmt(template: str, facts: Mapping[str, Any], **extra: Any) -> str:
    return _Formatter().vformat(template, (), {**facts, **extra})


def recommend(facts: Mapping[str, Any], rules: Sequence[StartRule] = START_RULES) -> Recommendation:
    """Evaluate every start rule over the facts. A rule whose value is unknown (None) sets nothing."""
    chosen: dict[str, Any] = {}
    choices: list[Choice] = []
    ceiling = None
    extra = {"ffn_top_k": FFN_TOP_K(facts), "ceiling_by_model": _ceiling_by_model(facts.get("model_hidden")) or "?"}
    for rule in rules:
        value = rule.value(facts) if isinstance(rule.value, Bands) else rule.value.fn(facts, chosen)
        if value is None:
            continue
        c = Choice(rule.key.replace("ceiling.", "adapter."), value, rule.id,
                   _fmt(rule.reason, facts, value=value, **extra))
        if rule.key.startswith("ceiling."):
            ceiling = c
        else:
            chosen[rule.key] = value
            choices.append(c)
    if ceiling is None:
        ceiling = Choice("adapter.r", chosen.get("adapter.r", 8), "ceiling-rank", "no data to set a ceiling")
    lr = chosen.get("train.learning_rate")
    grid = tuple(float(f"{lr * m:.3g}") for m in (0.5, 1.0, 2.0)) if lr else ()
    return Recommendation(dict(chosen), tuple(choices), ceiling, grid)


# ---------------------------------------------------------------------------------------------
# findings (the warnings catalogue: every row evaluated)


@dataclass(frozen=True)
class FindingRule:
    id: str
    severity: str  # error | warn | info
    when: str  # the condition in words, for `loratune rules`
    test: Callable[[Mapping[str, Any], AssessThresholds], bool]
    message: str  # formatted with the facts and the thresholds (as t)
    uses: tuple[str, ...]  # facts copied into the evidence


def _gt(key: str, limit: float = 0) -> Callable[[Mapping[str, Any], AssessThresholds], bool]:
    return lambda f, t: (f.get(key) or 0) > limit


FINDING_RULES: tuple[FindingRule, ...] = (
    FindingRule("label-conflict-exact", "error", "exact_conflict_groups > 0", _gt("exact_conflict_groups"),
                "{exact_conflict_groups} text(s) appear with different labels ({exact_conflict_rows} rows; most: "
                "{top_conflict_pair}): no model can fit both; relabel or drop them",
                ("exact_conflict_groups", "exact_conflict_rows", "top_conflict_pair")),
    FindingRule("label-conflict-near", "warn", "near_conflict_pairs > 0", _gt("near_conflict_pairs"),
                "{near_conflict_pairs} near-identical text pair(s) (char n-gram cosine >= "
                "{t.near_duplicate_similarity}) carry different labels: check them for label noise or "
                "intents that differ only in a word",
                ("near_conflict_pairs",)),
    FindingRule("leakage", "error", "leak_rows > 0", _gt("leak_rows"),
                "rows shared between splits ({leak_where}): validation/test scores overstate generalisation; "
                "drop the copies from the later split",
                ("leak_rows", "leak_where")),
    FindingRule("duplicate-rows", "warn", "duplicate_rows_rows > 0", _gt("duplicate_rows_rows"),
                "{duplicate_rows_rows} duplicated row(s) within a split ({duplicate_rows_where}): they weigh "
                "those examples double", ("duplicate_rows_rows", "duplicate_rows_where")),
    FindingRule("empty-text", "error", "empty_rows > 0", _gt("empty_rows"),
                "{empty_rows} empty text(s) ({empty_where}): drop them", ("empty_rows", "empty_where")),
    FindingRule("very-short-text", "warn", "very_short_rows > 0", _gt("very_short_rows"),
                "{very_short_rows} text(s) under {t.short_chars} characters ({very_short_where})",
                ("very_short_rows", "very_short_where")),
    FindingRule("non-text", "warn", "no_letters_rows > 0", _gt("no_letters_rows"),
                "{no_letters_rows} text(s) without a single letter ({no_letters_where})",
                ("no_letters_rows", "no_letters_where")),
    FindingRule("encoding-damage", "warn", "encoding_damage_rows > 0", _gt("encoding_damage_rows"),
                "{encoding_damage_rows} text(s) with encoding damage (U+FFFD or mojibake like 'Ã©') "
                "({encoding_damage_where}): re-decode the source as UTF-8",
                ("encoding_damage_rows", "encoding_damage_where")),
    FindingRule("non-printable", "warn", "non_printable_rows > 0", _gt("non_printable_rows"),
                "{non_printable_rows} text(s) with control or invisible characters ({non_printable_where})",
                ("non_printable_rows", "non_printable_where")),
    FindingRule("long-tail", "warn", "long_tail_classes > 0", _gt("long_tail_classes"),
                "{long_tail_classes} class(es) ({long_tail_share:.0%}) have under {t.long_tail_count} training rows "
                "({long_tail_examples}): their recall will be noisy and they overfit first",
                ("long_tail_classes", "long_tail_share", "long_tail_examples")),
    FindingRule("class-imbalance", "warn", "imbalance_ratio >= t.imbalance_ratio",
                lambda f, t: (f.get("imbalance_ratio") or 0) >= t.imbalance_ratio,
                "largest/smallest class = {imbalance_ratio:.1f} ({largest_class} vs {smallest_class}): watch "
                "per-class recall and macro-F1, not accuracy",
                ("imbalance_ratio", "largest_class", "smallest_class")),
    FindingRule("unseen-labels", "error", "unseen_label_rows > 0", _gt("unseen_label_rows"),
                "{unseen_label_rows} validation/test row(s) carry labels never seen in train "
                "(val: {unseen_val_names}; test: {unseen_test_names}); they can only be scored as errors",
                ("unseen_label_rows", "unseen_val_names", "unseen_test_names")),
    FindingRule("missing-val-labels", "warn", "missing_val_labels > 0", _gt("missing_val_labels"),
                "{missing_val_labels} training label(s) have no validation row ({missing_val_names}): their "
                "recall cannot be measured", ("missing_val_labels", "missing_val_names")),
    FindingRule("label-shift", "warn", "shift_worst_js >= t.label_shift_js",
                lambda f, t: (f.get("shift_worst_js") or 0) >= t.label_shift_js,
                "label distribution of {shift_worst_js_split} differs from train (Jensen-Shannon "
                "{shift_worst_js:.3f} bits; val {js_val:.3f}, test {js_test:.3f}); most: val {js_val_top}; test "
                "{js_test_top}", ("shift_worst_js", "shift_worst_js_split", "js_val", "js_test")),
    FindingRule("vocabulary-shift", "warn", "oov_val >= t.oov_rate",
                lambda f, t: (f.get("oov_val") or 0) >= t.oov_rate,
                "{oov_val:.1%} of validation words never occur in train", ("oov_val",)),
    FindingRule("length-shift", "warn", "length_ks_val >= t.length_shift_ks",
                lambda f, t: (f.get("length_ks_val") or 0) >= t.length_shift_ks,
                "validation lengths differ from train (KS {length_ks_val:.2f}; mean {length_mean_val:.1f} vs "
                "{length_mean_train:.1f} {length_unit})",
                ("length_ks_val", "length_mean_val", "length_mean_train")),
    FindingRule("truncation", "warn", "truncated_share > t.truncation_share",
                lambda f, t: (f.get("truncated_share") or 0) > t.truncation_share,
                "{truncated_share:.1%} of training texts exceed max_length={max_length} tokens (p99 {token_p99_ceil})",
                ("truncated_share", "max_length", "token_p99")),
    FindingRule("small-validation", "warn", "val_classes_under_min > 0", _gt("val_classes_under_min"),
                "{val_classes_under_min} class(es) have under {t.min_val_per_class} validation rows (min "
                "{val_rows_per_class_min}): per-class recall moves in steps of 1/{val_rows_per_class_min}",
                ("val_classes_under_min", "val_rows_per_class_min")),
    FindingRule("val-resolution", "info", "always", lambda f, t: (f.get("val_rows") or 0) > 0,
                "{val_rows} validation rows: macro-F1 SE ~{macro_f1_se:.3f}, accuracy SE ~{accuracy_se:.3f} at "
                "accuracy {accuracy_at:.2f} ({resolution_method}); val differences under ~{detectable_difference:.3f} "
                "are sampling noise", ("val_rows", "macro_f1_se", "accuracy_se", "detectable_difference")),
    FindingRule("heterogeneous-class", "warn", "a class's probe embedding spread z >= t.spread_z",
                _gt("heterogeneous_classes"),
                "{heterogeneous_classes} class(es) are far more spread out in the base model's embedding space "
                "than the rest: {heterogeneous_names}; a catch-all class like this needs more data or its own "
                "treatment (e.g. a threshold), and its recall will lag", ("heterogeneous_classes",
                                                                          "heterogeneous_names")),
    FindingRule("hard-task", "info", "probe_macro_f1 < t.hard_probe_f1",
                lambda f, t: f.get("probe_macro_f1") is not None and f["probe_macro_f1"] < t.hard_probe_f1,
                "a linear probe on frozen embeddings reaches macro-F1 {probe_macro_f1:.3f}: the base model "
                "separates these classes poorly; expect to need capacity (FFN, more layers) or more epochs",
                ("probe_macro_f1",)),
    FindingRule("easy-task", "info", "probe_macro_f1 >= t.easy_probe_f1",
                lambda f, t: f.get("probe_macro_f1") is not None and f["probe_macro_f1"] >= t.easy_probe_f1,
                "a linear probe on frozen embeddings already reaches macro-F1 {probe_macro_f1:.3f}: low rank "
                "suffices; LoRA gains will be small and need the val resolution to show", ("probe_macro_f1",)),
    FindingRule("confusable-pairs", "info", "the probe confuses some class pairs", _gt("probe_confused_pairs"),
                "pairs to watch while tuning (probe, val): {probe_confused_top}", ("probe_confused_top",)),
    FindingRule("multi-label", "info", "multi_label", lambda f, t: bool(f.get("multi_label")),
                "multi-label data: {multi_label_rate:.1%} of training rows carry several labels",
                ("multi_label_rate",)),
)


def evaluate_findings(facts: Mapping[str, Any], thresholds: AssessThresholds = AssessThresholds(),
                      rules: Sequence[FindingRule] = FINDING_RULES) -> tuple[DataFinding, ...]:
    """Every rule is evaluated; the ones that hold become findings (errors, then warnings, then info)."""
    out = []
    for rule in rules:
        if not rule.test(facts, thresholds):
            continue
        msg = _fmt(rule.message, facts, t=thresholds)
        evidence = {k: facts.get(k) for k in rule.uses}
        evidence.update({name: getattr(thresholds, name) for name in re.findall(r"\{t\.(\w+)", rule.message)})
        out.append(DataFinding(rule.id, rule.severity, msg, evidence))
    order = {"error": 0, "warn": 1, "info": 2}
    return tuple(sorted(out, key=lambda d: order.get(d.severity, 3)))


def rule_catalog(thresholds: AssessThresholds = AssessThresholds()) -> list[dict[str, Any]]:
    """Both assess rule tables as plain rows (for `loratune rules` and the report)."""
    rows: list[dict[str, Any]] = [
        {"table": "assess-start", "id": r.id, "key": r.key, "when": r.value.describe(), "reason": r.reason}
        for r in START_RULES]
    rows += [{"table": "assess-finding", "id": r.id, "severity": r.severity, "when": r.when,
              "message": r.message, "uses": list(r.uses)} for r in FINDING_RULES]
    rows += [{"table": "assess-threshold", "id": f.name, "value": getattr(thresholds, f.name)}
             for f in fields(thresholds)]
    return rows


# ---------------------------------------------------------------------------------------------
# the pure assessment


def assess_dataset(ds: Dataset, *, dataset_name: str = "", model_name: str = "",
                   token_lengths: Mapping[str, Sequence[int]] | None = None,
                   unk_tokens: Mapping[str, int] | None = None, max_length: int | None = None,
                   model_info: ModelInfo | None = None, probe: ProbeResult | None = None,
                   thresholds: AssessThresholds = AssessThresholds(),
                   timings: Mapping[str, float] | None = None) -> Assessment:
    """Profile a loaded dataset. No model needed: pass token lengths, model facts and the probe if known."""
    timings = dict(timings or {})
    t0 = time.perf_counter()
    splits = ds.splits()
    tl = token_lengths or {}
    unk = unk_tokens or {}
    profiles = {name: profile_split(sp, thresholds=thresholds, token_lengths=tl.get(name), max_length=max_length,
                                    unk_tokens=unk.get(name), label_space=ds.label_space.labels)
                for name, sp in splits.items()}
    timings["profile_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pool = _Pool.of(splits)
    uniq = list(pool.by_norm)
    neighbours = _neighbours(uniq, thresholds.near_duplicate_neighbors)
    conflicts = find_conflicts(pool, thresholds, neighbours, uniq)
    noise = find_noise(splits, pool, thresholds, neighbours, uniq)
    timings["consistency_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    shifts = {name: measure_shift(ds.train, sp, train_lengths=tl.get("train"), other_lengths=tl.get(name))
              for name, sp in splits.items() if name != "train"}
    timings["shift_s"] = time.perf_counter() - t0

    resolution = estimate_resolution(ds.validation, accuracy=probe.accuracy if probe else None,
                                     bootstrap_se=probe.macro_f1_se if probe else None)
    facts = compute_facts(ds, profiles, conflicts, noise, shifts, resolution, max_length=max_length,
                          model_info=model_info, probe=probe, thresholds=thresholds)
    rec = recommend(facts)
    findings = evaluate_findings(facts, thresholds)
    return Assessment(
        dataset=dataset_name, model=model_name, multi_label=ds.label_space.multi_label,
        labels=ds.label_space.labels, splits=tuple(profiles.values()), conflicts=conflicts, noise=noise,
        shift=tuple(shifts.values()), probe=probe, model_info=model_info, resolution=resolution, facts=facts,
        recommendation=rec, findings=findings, notes=tuple(ds.notes), timings=timings, thresholds=thresholds,
    )


def run_assessment(cfg: RunConfig, *, probe: bool = True, cache_dir: str | Path | None = None,
                   thresholds: AssessThresholds = AssessThresholds(), dataset: Dataset | None = None,
                   progress: Callable[[str], None] | None = None) -> Assessment:
    """Load the data the config names, tokenise it, run the difficulty probe, and assess.

    cache_dir: where probe embeddings are cached (None: $LORATUNE_CACHE_DIR or ~/.cache/loratune;
    False: no cache).
    """
    from loratune import probe as probe_mod
    from loratune.data import load_dataset

    say = progress or (lambda msg: None)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    if dataset is None:
        say("loading data")
        dataset = load_dataset(cfg.data, seed=cfg.train.seed)
    timings["load_data_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("tokenising")
    info = probe_mod.describe_model(cfg.model)
    lengths, unks = {}, {}
    tok = probe_mod.load_tokenizer_quiet(cfg.model)
    for name, sp in dataset.splits().items():
        lengths[name], unks[name] = probe_mod.token_lengths(tok, sp.texts)
    timings["tokenise_s"] = time.perf_counter() - t0

    result = None
    if probe:
        t0 = time.perf_counter()
        say("probing the frozen encoder")
        result = probe_mod.run_probe(cfg.model, dataset, cache_dir=cache_dir, seed=cfg.train.seed,
                                     num_threads=cfg.train.num_threads, tokenizer=tok)
        timings["probe_s"] = time.perf_counter() - t0
    say("profiling")
    a = assess_dataset(dataset, dataset_name=cfg.data.train_file or cfg.data.dataset_name or "",
                       model_name=cfg.model.name_or_path, token_lengths=lengths, unk_tokens=unks,
                       max_length=cfg.model.max_length, model_info=info, probe=result,
                       thresholds=thresholds, timings=timings)
    timings = dict(a.timings)
    timings["total_s"] = time.perf_counter() - t_all
    return _replace(a, timings=timings)


def _replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


# ---------------------------------------------------------------------------------------------
# plain-data conversion


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _from_plain(tp: Any, data: Any) -> Any:
    """Rebuild typed records from `_plain` output, following the dataclass type hints."""
    if data is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        for a in args:
            if a is type(None):
                continue
            try:
                return _from_plain(a, data)
            except (TypeError, ValueError, KeyError):
                continue
        return data
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(data, Mapping):
            raise TypeError(f"{tp.__name__} needs a mapping")
        hints = typing.get_type_hints(tp, globalns=_type_namespace())
        return tp(**{f.name: _from_plain(hints[f.name], data[f.name]) for f in fields(tp) if f.name in data})
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v) for v in data)
        return tuple(data)
    if origin is dict:
        kt, vt = args
        return {(int(k) if kt is int else k): _from_plain(vt, v) for k, v in data.items()}
    if tp is float and isinstance(data, int):
        return float(data)
    return data


def _type_namespace() -> dict[str, Any]:
    from loratune import probe as probe_mod

    ns = dict(globals())
    ns.update({"ProbeResult": probe_mod.ProbeResult, "ModelInfo": probe_mod.ModelInfo,
               "ClassProbe": probe_mod.ClassProbe, "ConfusedPair": probe_mod.ConfusedPair,
               "ClosePair": probe_mod.ClosePair})
    return ns
