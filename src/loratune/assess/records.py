"""The records of an assessment (frozen, plain) and their serialisation: `Assessment.to_dict()` is what
`loratune assess --json`, `tune` and the report read; `Assessment.from_dict` reads it back."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Mapping

import numpy as np

from loratune.features import LONG_TAIL_COUNT

if typing.TYPE_CHECKING:  # pragma: no cover
    from loratune.difficulty import ProbeResult
    from loratune.model_info import ModelInfo

SCHEMA_VERSION = 1


# thresholds: named numbers; every one appears in the evidence of the findings it drives
@dataclass(frozen=True)
class AssessThresholds:
    # fewer training rows than this: long tail (protocol 2); defaults to the diagnosis's cut (features.LONG_TAIL_COUNT),
    # which an override leaves fixed (`diagnose --thresholds` says it does not read this name)
    long_tail_count: int = LONG_TAIL_COUNT
    imbalance_ratio: float = 10.0  # largest / smallest class count in train
    short_chars: int = 3  # a text with fewer non-space characters than this is "very short"
    near_duplicate_similarity: float = 0.9  # char 3-4-gram TF-IDF cosine for "near-identical"
    near_leak_similarity: float = 0.95  # cosine above which a val/test row counts as a near copy of train
    near_duplicate_neighbors: int = 5  # neighbours examined per unique text
    label_shift_js: float = 0.05  # Jensen-Shannon divergence (bits) of label shares vs train, at least
    oov_rate: float = 0.10  # share of val/test word tokens never seen in train
    length_shift_ks: float = 0.15  # Kolmogorov-Smirnov statistic of length distributions vs train, at least
    # ...and past what a random split of these sizes reaches with this probability (the KS and the JS of the pooled
    # lengths and labels dealt at random): fixed limits alone warned on 92% of clean 200/20-row splits
    shift_alpha: float = 0.05
    truncation_share: float = 0.01  # share of train texts longer than model.max_length
    # the same for a causal-lm run's rendered rows (assess.sft's truncated-rows): its own, looser default, since
    # sft_data cuts the start of a long prompt and keeps the completion the loss is taken on, where a classifier's cut
    # text loses part of what it is labelled by
    sft_truncation_share: float = 0.05
    min_val_per_class: int = 10  # fewer val rows than this for a class: its recall is noise
    spread_z: float = 3.0  # a class whose embedding spread is this many SDs above the mean is heterogeneous
    hard_probe_f1: float = 0.5  # frozen-encoder probe below this: a hard task for this model
    easy_probe_f1: float = 0.95  # probe above this: the base already separates the classes
    max_examples: int = 5  # examples kept per finding


# the thresholds above that are cosines, shares, F1 scores or distances bounded by 1 (KS, JS in bits): past 1 a check
# can never fire (near_leak_similarity 1.5 turned near-leakage off, silently), so `--thresholds` takes them in 0..1 only
UNIT_INTERVAL_THRESHOLDS = frozenset({
    "near_duplicate_similarity", "near_leak_similarity", "label_shift_js", "oov_rate", "length_shift_ks",
    "truncation_share", "sft_truncation_share", "hard_probe_f1", "easy_probe_f1", "shift_alpha"})


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
    count: int  # exact + near
    exact: int = 0  # texts that carry both label sets (exact conflicts)
    near: int = 0  # near-identical text pairs, one text carrying each


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
    pairs: tuple[PairCount, ...]  # label pair -> conflicts (exact + near, each also apart), most frequent first
    examples: tuple[ConflictExample, ...]

    def exact_first(self) -> tuple[PairCount, ...]:
        """The pairs with exact conflicts first, the most of them first (then by name): the exact-conflict error names
        the first (top_conflict_pair), and a listing of a few shows it, where the most conflicts, near ones counted,
        left it out; then the others, most conflicts first. (A record written before exact and near were counted
        apart has no exact pair: its pairs stay as written.)"""
        return (tuple(sorted((p for p in self.pairs if p.exact), key=lambda p: (-p.exact, p.a, p.b)))
                + tuple(p for p in self.pairs if not p.exact))


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
    near_examples: tuple[str, ...] = ()  # a few near copies, "split 'file' line N 'text' ~ source 'its text'"


@dataclass(frozen=True)
class Noise:
    splits: tuple[SplitNoise, ...]
    leakage: tuple[Leakage, ...]
    # distinct rows of the later splits with an exact (near) copy in an earlier one: a test row in both train and
    # validation is one row, where the per-pair counts above sum it twice (None: a record written before these)
    leak_rows: int | None = None
    near_leak_rows: int | None = None


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
    # what a random split of these sizes reaches with probability shift_alpha (stats.js_critical, ks_critical; None:
    # a record written before these)
    js_critical: float | None = None
    length_ks_critical: float | None = None
    # how each was found (stats.Critical.by: the random deals, or past their cap the large-sample law and why)
    js_critical_by: str | None = None
    length_ks_critical_by: str | None = None


@dataclass(frozen=True)
class Resolution:
    """How small a difference this validation split can show (the standard error of its metrics)."""

    val_rows: int
    classes: int
    accuracy_at: float  # the accuracy the SEs are computed at (probe accuracy, else assumed)
    accuracy_se: float
    macro_f1_se: float
    method: str  # "bootstrap of the probe's val predictions" or "binomial approximation"
    detectable_difference: float  # objectives.NOISE_BAND over the macro-F1 SE: max(0.5 pt, 2 SE); below: noise
    se_at: float = 0.0  # the rate the SEs are computed at: accuracy_at seen as (hits + 1) / (n + 2)


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
    from loratune import difficulty, model_info

    ns = dict(globals())
    ns.update({"ProbeResult": difficulty.ProbeResult, "ModelInfo": model_info.ModelInfo,
               "ClassProbe": difficulty.ClassProbe, "ConfusedPair": difficulty.ConfusedPair,
               "ClosePair": difficulty.ClosePair})
    return ns
