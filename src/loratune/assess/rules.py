"""The assess rule tables over the facts (facts.py), every row evaluated:

- `START_RULES`: one row per config key of the start config (rank, targets, dropout, lr, epochs,
  max_length, batch size) and the capacity ceiling. Each row reads one fact through a band table
  (or a named derivation) and carries the reason a report can cite.
- `FINDING_RULES`: the warnings catalogue (conflicts, leakage, noise, shift, truncation, val
  resolution, heterogeneous classes...). None short-circuits another.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Sequence

from loratune.assess.facts import template_facts
from loratune.assess.records import AssessThresholds, Choice, DataFinding, Recommendation
from loratune.assess.stats import round_up
from loratune.params import breakeven_point
from loratune.stepsize import alpha_for, scale_formula

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
    uses: tuple[str, ...] = ()  # the facts `fn` reads (checked against FACTS)

    def describe(self) -> str:
        return self.formula


@dataclass(frozen=True)
class StartRule:
    id: str  # stable kebab-case
    key: str  # dotted config key, or "ceiling.r" for the capacity ceiling
    value: Bands | Derived
    reason: str  # why; formatted with the facts, {value} and REASON_EXTRAS

    def facts(self) -> set[str]:
        """The facts this row reads: its band's fact or its derivation's, and those its reason formats."""
        read = {self.value.fact} if isinstance(self.value, Bands) else set(self.value.uses)
        return read | (template_facts(self.reason) - set(REASON_EXTRAS))


# names a start rule's reason may format besides the facts (computed in `recommend`)
REASON_EXTRAS = ("value", "ffn_top_k", "ffn_top_k_cap", "ceiling_by_model", "breakeven_r", "max_length_cap",
                 "scale_formula")


MAX_LENGTH_CAP_UNKNOWN = 512  # the max_length cap where the model's positions are unknown


MAX_LENGTH_FLOOR = 16  # start-max-length-p99's least proposal where the model takes it


def _max_length(f: Mapping[str, Any], chosen: Mapping[str, Any]) -> int | None:
    p99 = f.get("token_p99")
    if p99 is None:
        return None
    return int(min(max(MAX_LENGTH_FLOOR, round_up(p99, 8)), max_length_cap(f)))


def max_length_cap(f: Mapping[str, Any]) -> int:
    """The longest max_length the model takes, never below the config's minimum: where its position embeddings end
    (model_position_limit: model_info.position_limit, check_max_length's rule, which train applies) that limit less the
    tokens a causal-lm run generates after a prompt (OPT's 32 positions with a 3-token label took max_length 29, not
    the 32 assess proposed); where nothing ends (rotary: Llama) the model's positions, nothing subtracted (a 300-token
    prompt set on Llama's 256 positions proposed -44, which train refused); MAX_LENGTH_CAP_UNKNOWN where unknown."""
    from loratune.config import key_table

    least = key_table()["model.max_length"].metadata["min"]
    limit, positions = f.get("model_position_limit"), f.get("model_max_positions")
    if limit:
        return max(least, limit - (f.get("generated_tokens") or 0))
    return max(least, positions) if positions else MAX_LENGTH_CAP_UNKNOWN


def max_length_cap_note(f: Mapping[str, Any]) -> str:
    """", capped at the model's N positions" where the cap, not the token p99, set start-max-length-p99's value, else
    "": a reason or finding naming only the p99 named a max_length the start config does not propose (p99 308,
    max_length 256)."""
    p99 = f.get("token_p99")
    if p99 is None or _max_length(f, {}) >= max(MAX_LENGTH_FLOOR, round_up(p99, 8)):
        return ""
    limit, known, new = f.get("model_position_limit"), f.get("model_max_positions"), f.get("generated_tokens") or 0
    if limit:
        return f", capped at the model's {limit} positions" + (f" less the {new} tokens generated after a prompt"
                                                               if new else "")
    return (f", capped at the model's {known} positions" if known else
            f", capped at {MAX_LENGTH_CAP_UNKNOWN} (the model's positions unknown)")


def _batch(f: Mapping[str, Any], chosen: Mapping[str, Any]) -> int | None:
    """The batch by data size, never above the training rows (6 rows got batch 16: one partial batch an epoch)."""
    return batch_within_rows(BATCH_BY_DATA(f), f.get("train_rows"))


BATCH_WITHIN_ROWS = "at most the largest power of 2 <= training rows"  # batch_within_rows, as a formula cites it


def batch_within_rows(batch: int | None, rows: int | None) -> int | None:
    """`batch`, never above the largest power of 2 at or below the training rows: the one cap of every start batch
    (the classifier's and the causal-lm one)."""
    if batch is None or not rows:
        return batch
    return int(min(batch, 2 ** int(math.log2(max(1, rows)))))


def _ceiling(f: Mapping[str, Any], chosen: Mapping[str, Any]) -> int:
    return capacity_ceiling(f, chosen.get("adapter.r", 8))


def capacity_ceiling(f: Mapping[str, Any], start_r: int) -> int:
    """The highest rank worth trying: min(rank by data, rank by model), never below the start rank `start_r` (the
    assessment's own, or the one a user set: tune's phase 0 asks again with it)."""
    by_data = CEILING_BY_DATA(f)
    by_model = ceiling_by_model(f.get("model_hidden")) or by_data
    return int(max(start_r, min(by_data, by_model)))


def ceiling_by_model(hidden: int | None) -> int | None:
    """The largest power of 2 at or below the compute-breakeven rank of one hidden x hidden weight
    (params.breakeven_point: r = hidden/6); ranks beyond that cost like full fine-tuning."""
    if not hidden:
        return None
    return 2 ** int(math.log2(max(2, breakeven_point(hidden * hidden, 2 * hidden))))


BATCH_BY_DATA = Bands("train_rows", ((1000, 16), (100000, 32), (math.inf, 64)))  # the start batch by data size
CEILING_BY_DATA = Bands("train_rows", ((1000, 16), (5000, 32), (20000, 64), (math.inf, 128)))
START_SCALE = 2.0  # the start's update scale s (protocol 1: s = 1-2 to start); lora_alpha by stepsize.alpha_for
FFN_TOP_K = Bands("model_layers", ((7, 2), (13, 3), (math.inf, 4)), default=2)  # K of the start's ffn@top:K


def ffn_top_k(f: Mapping[str, Any]) -> int:
    """K of the start's ffn@top:K: by bands FFN_TOP_K, at most the model's layers (a 1-layer model got ffn@top:2,
    which training refuses: tune exited 2 before any trial)."""
    k, layers = FFN_TOP_K(f), f.get("model_layers")
    return int(min(k, layers)) if layers else k


def ffn_top_k_cap_note(f: Mapping[str, Any]) -> str:
    """", capped at the model's N layer(s)" where the layer count, not the bands, set K, else ""."""
    layers = f.get("model_layers")
    return f", capped at the model's {layers} layer(s)" if ffn_top_k(f) < FFN_TOP_K(f) else ""


# the band tables start rows read through a derivation, by the name their formula cites (`loratune rules` lists
# them as data: a cited name with no table behind it could not be checked)
NAMED_BANDS: dict[str, Bands] = {"ffn_top_k": FFN_TOP_K, "batch_by_data": BATCH_BY_DATA,
                                 "ceiling_by_data": CEILING_BY_DATA}

START_RULES: tuple[StartRule, ...] = (
    StartRule("start-rank-by-data", "adapter.r", Bands("train_rows", ((3000, 8), (math.inf, 16))),
              "{train_rows} training rows: r={value} (protocol 3: start at r 8-16, lower for less data)"),
    StartRule("start-scale-2", "adapter.lora_alpha", Derived(f"{START_SCALE:g} * r (scale s = lora_alpha / r = "
                                                             f"{START_SCALE:g}; {START_SCALE:g} * sqrt(r) with rsLoRA: "
                                                             "use_rslora, s = lora_alpha / sqrt(r))",
                                                             lambda f, c: alpha_for(c["adapter.r"], START_SCALE,
                                                                                    bool(f.get("use_rslora"))),
                                                             uses=("use_rslora",)),
              "lora_alpha={value:g}: scale s = {scale_formula} = " + f"{START_SCALE:g}"
              + " (protocol 1: s = 1-2 to start, fixed in phase 1)"),
    StartRule("start-targets-qv-ffn-top", "adapter.target_modules",
              Derived("[attn.q, attn.v, ffn@top:K], K by bands ffn_top_k: " + FFN_TOP_K.describe()
                      + "; at most model_layers",
                      lambda f, c: ["attn.q", "attn.v", f"ffn@top:{ffn_top_k(f)}"], uses=("model_layers",)),
              "attention Q/V in every layer plus the FFN of the top {ffn_top_k} of {model_layers} layers"
              "{ffn_top_k_cap} (protocol 3: Q/V + FFN of the top 2-4 layers)"),
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
              Derived("by data: " + BATCH_BY_DATA.describe() + "; " + BATCH_WITHIN_ROWS,
                      _batch, uses=("train_rows",)),
              "{train_rows} training rows: batch {value} (small data: smaller batches give more steps)"),
    StartRule("start-max-length-p99", "model.max_length",
              Derived(f"token p99 of train rounded up to a multiple of 8, within [{MAX_LENGTH_FLOOR}, the model's "
                      "position limit - generated tokens where its position embeddings end, else its max positions]",
                      _max_length, uses=("token_p99", "model_max_positions", "model_position_limit",
                                         "generated_tokens")),
              "99% of training texts fit in {token_p99_ceil} tokens (max {token_max}): max_length={value}"
              "{max_length_cap}"),
    StartRule("ceiling-rank", "ceiling.r", Derived(
        "min(rank by data: " + CEILING_BY_DATA.describe() + "; largest power of 2 <= hidden/6), at least r",
        _ceiling, uses=("train_rows", "model_hidden")),
        "highest rank worth trying: {value} (less data, lower ceiling; at r = hidden/6 = {breakeven_r} LoRA "
        "reaches a third of each adapted weight, the compute breakeven with full fine-tuning, protocol 6; the "
        "largest power of 2 at or below it: {ceiling_by_model}; never below the start rank)"),
)

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
    hidden = facts.get("model_hidden")
    extra = {"ffn_top_k": ffn_top_k(facts), "ffn_top_k_cap": ffn_top_k_cap_note(facts), "ceiling_by_model": ceiling_by_model(hidden) or "?",
             "breakeven_r": f"{breakeven_point(hidden * hidden, 2 * hidden):.3g}" if hidden else "?",
             "max_length_cap": max_length_cap_note(facts),
             "scale_formula": scale_formula(bool(facts.get("use_rslora")))}
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
class Above:
    """fact > a named threshold, or 0 (>= with strict=False: a floor the fact must reach), and, where `critical` names
    a fact (a limit that depends on the data: what chance reaches at these sample sizes), strictly past it: a
    statistic equal to what a random split reaches with probability alpha is reached by chance at least that often
    (a 7-row split's divergence of 0.182 bits, its own critical value, 12.5% of the time). Unknown counts as 0."""

    fact: str
    threshold: str | None = None  # an AssessThresholds field
    strict: bool = True  # for the threshold; the critical value is always compared with >
    critical: str | None = None  # a fact

    def holds(self, facts: Mapping[str, Any], t: AssessThresholds) -> bool:
        x, limit = facts.get(self.fact) or 0, getattr(t, self.threshold) if self.threshold else 0
        past_limit = x > limit if self.strict else x >= limit
        return past_limit and (not self.critical or x > (facts.get(self.critical) or 0))

    def describe(self) -> str:
        limit = "t." + self.threshold if self.threshold else "0"
        cond = f"{self.fact} {'>' if self.strict else '>='} {limit}"
        return f"{cond} and {self.fact} > {self.critical}" if self.critical else cond


@dataclass(frozen=True)
class Below:
    """fact < a named threshold; never holds while the fact is unknown."""

    fact: str
    threshold: str

    def holds(self, facts: Mapping[str, Any], t: AssessThresholds) -> bool:
        x = facts.get(self.fact)
        return x is not None and x < getattr(t, self.threshold)

    def describe(self) -> str:
        return f"{self.fact} < t.{self.threshold}"


@dataclass(frozen=True)
class IsTrue:
    fact: str

    def holds(self, facts: Mapping[str, Any], t: AssessThresholds) -> bool:
        return bool(facts.get(self.fact))

    def describe(self) -> str:
        return self.fact


Condition = Above | Below | IsTrue  # each over one named fact


@dataclass(frozen=True)
class FindingRule:
    id: str
    severity: str  # error | warn | info
    when: Condition
    message: str  # formatted with the facts and the thresholds (as t)
    uses: tuple[str, ...]  # facts copied into the evidence

    def facts(self) -> set[str]:
        """The facts this row reads: its condition's, its evidence and those its message formats."""
        critical = {self.when.critical} if getattr(self.when, "critical", None) else set()
        return {self.when.fact} | critical | set(self.uses) | template_facts(self.message)

    def thresholds(self) -> set[str]:
        """The thresholds it reads: its condition's and those its message formats ({t.name})."""
        named = {self.when.threshold} if getattr(self.when, "threshold", None) else set()
        return named | set(re.findall(r"\{t\.(\w+)", self.message))


FINDING_RULES: tuple[FindingRule, ...] = (
    FindingRule("label-conflict-exact", "error", Above("exact_conflict_groups"),
                "{exact_conflict_groups} text(s) appear with different labels ({exact_conflict_rows} rows; most: "
                "{top_conflict_pair}): no model can fit both; relabel or drop them",
                ("exact_conflict_groups", "exact_conflict_rows", "top_conflict_pair")),
    FindingRule("label-conflict-near", "warn", Above("near_conflict_pairs"),
                "{near_conflict_pairs} near-identical text pair(s) (char n-gram cosine >= "
                "{t.near_duplicate_similarity}) carry different labels: check them for label noise or "
                "intents that differ only in a word",
                ("near_conflict_pairs",)),
    FindingRule("leakage", "error", Above("leak_rows"),
                "rows shared between splits ({leak_where}): validation/test scores overstate generalisation; "
                "drop the copies from the later split",
                ("leak_rows", "leak_where")),
    FindingRule("near-leakage", "warn", Above("near_leak_rows"),
                "{near_leak_rows} row(s) are near copies (char n-gram cosine >= {t.near_leak_similarity}) of rows of "
                "an earlier split ({near_leak_where}; e.g. {near_leak_examples}): their scores overstate "
                "generalisation; drop or rewrite them, or raise near_leak_similarity if they are distinct",
                ("near_leak_rows", "near_leak_where", "near_leak_examples")),
    FindingRule("duplicate-rows", "warn", Above("duplicate_rows_rows"),
                "{duplicate_rows_rows} duplicated row(s) within a split ({duplicate_rows_where}): they weigh "
                "those examples double", ("duplicate_rows_rows", "duplicate_rows_where")),
    FindingRule("empty-text", "error", Above("empty_rows"),
                "{empty_rows} empty text(s) ({empty_where}): drop them", ("empty_rows", "empty_where")),
    FindingRule("very-short-text", "warn", Above("very_short_rows"),
                "{very_short_rows} text(s) under {t.short_chars} characters ({very_short_where})",
                ("very_short_rows", "very_short_where")),
    FindingRule("non-text", "warn", Above("no_letters_rows"),
                "{no_letters_rows} text(s) without a single letter ({no_letters_where})",
                ("no_letters_rows", "no_letters_where")),
    FindingRule("encoding-damage", "warn", Above("encoding_damage_rows"),
                "{encoding_damage_rows} text(s) with encoding damage (U+FFFD or mojibake like 'Ã©') "
                "({encoding_damage_where}): re-decode the source as UTF-8",
                ("encoding_damage_rows", "encoding_damage_where")),
    FindingRule("non-printable", "warn", Above("non_printable_rows"),
                "{non_printable_rows} text(s) with control or invisible characters ({non_printable_where})",
                ("non_printable_rows", "non_printable_where")),
    FindingRule("long-tail", "warn", Above("long_tail_classes"),
                "{long_tail_classes} class(es) ({long_tail_share:.0%}) have under {t.long_tail_count} training rows "
                "({long_tail_examples}): their recall will be noisy and they overfit first",
                ("long_tail_classes", "long_tail_share", "long_tail_examples")),
    FindingRule("class-imbalance", "warn", Above("imbalance_ratio", "imbalance_ratio", strict=False),
                "largest/smallest class = {imbalance_ratio:.1f} ({largest_class} vs {smallest_class}): watch "
                "per-class recall and macro-F1, not accuracy",
                ("imbalance_ratio", "largest_class", "smallest_class")),
    FindingRule("unseen-labels", "error", Above("unseen_label_rows"),
                "{unseen_label_rows} validation/test row(s) carry labels never seen in train "
                "({unseen_names}); they can only be scored as errors",
                ("unseen_label_rows", "unseen_names")),
    FindingRule("missing-val-labels", "warn", Above("missing_val_labels"),
                "{missing_val_labels} training label(s) have no validation row ({missing_val_names}): their "
                "recall cannot be measured", ("missing_val_labels", "missing_val_names")),
    FindingRule("label-shift", "warn", Above("shift_worst_js", "label_shift_js", strict=False,
                                             critical="shift_worst_js_critical"),
                "label distribution of {shift_worst_js_split} differs from train (Jensen-Shannon "
                "{shift_worst_js:.3f} bits, past {t.label_shift_js} and the {shift_worst_js_critical:.3f} a random "
                "split of its size reaches at alpha {t.shift_alpha}; val {js_val:.3f}, test {js_test:.3f}); most: val "
                "{js_val_top}; test {js_test_top}",
                ("shift_worst_js", "shift_worst_js_split", "shift_worst_js_critical", "shift_worst_js_critical_by",
                 "js_val", "js_test")),
    FindingRule("vocabulary-shift", "warn", Above("oov_val", "oov_rate", strict=False),
                "{oov_val:.1%} of validation words never occur in train", ("oov_val",)),
    FindingRule("length-shift", "warn", Above("length_ks_val", "length_shift_ks", strict=False,
                                              critical="length_ks_val_critical"),
                "validation lengths differ from train (KS {length_ks_val:.2f}, past {t.length_shift_ks} and the "
                "{length_ks_val_critical:.2f} a random split of these sizes reaches at alpha {t.shift_alpha}; mean "
                "{length_mean_val:.1f} vs {length_mean_train:.1f} {length_unit})",
                ("length_ks_val", "length_ks_val_critical", "length_ks_val_critical_by", "length_mean_val",
                 "length_mean_train")),
    FindingRule("truncation", "warn", Above("truncated_share", "truncation_share"),
                "{truncated_share:.1%} of training texts exceed max_length={max_length} tokens (p99 {token_p99_ceil})",
                ("truncated_share", "max_length", "token_p99")),
    FindingRule("small-validation", "warn", Above("val_classes_under_min"),
                "{val_classes_under_min} class(es) have under {t.min_val_per_class} validation rows (min "
                "{val_rows_per_class_min}): per-class recall moves in steps of 1/{val_rows_per_class_min}"
                "{val_classes_empty_note}",
                ("val_classes_under_min", "val_rows_per_class_min", "val_classes_empty")),
    FindingRule("val-resolution", "info", Above("val_rows"),
                "{val_rows} validation rows: macro-F1 SE ~{macro_f1_se:.3f}, accuracy SE ~{accuracy_se:.3f} at "
                "accuracy {accuracy_se_at:.3f} ({accuracy_at:.2f} on {val_rows} rows seen as (hits + 1) / (n + 2); "
                "{resolution_method}); val differences under ~{detectable_difference:.3f} are sampling noise",
                ("val_rows", "macro_f1_se", "accuracy_se", "accuracy_se_at", "accuracy_at",
                 "detectable_difference")),
    FindingRule("heterogeneous-class", "warn", Above("heterogeneous_classes"),
                "{heterogeneous_classes} class(es) are far more spread out in the base model's embedding space "
                "than the rest: {heterogeneous_names}; a catch-all class like this needs more data or its own "
                "treatment (e.g. a threshold), and its recall will lag", ("heterogeneous_classes",
                                                                          "heterogeneous_names")),
    FindingRule("hard-task", "info", Below("probe_macro_f1", "hard_probe_f1"),
                "a linear probe on frozen embeddings reaches macro-F1 {probe_macro_f1:.3f}: the base model "
                "separates these classes poorly; expect to need capacity (FFN, more layers) or more epochs",
                ("probe_macro_f1",)),
    FindingRule("easy-task", "info", Above("probe_macro_f1", "easy_probe_f1", strict=False),
                "a linear probe on frozen embeddings already reaches macro-F1 {probe_macro_f1:.3f}: low rank "
                "suffices; LoRA gains will be small and need the val resolution to show", ("probe_macro_f1",)),
    FindingRule("confusable-pairs", "info", Above("probe_confused_pairs"),
                "pairs to watch while tuning (probe, val): {probe_confused_top}", ("probe_confused_top",)),
    FindingRule("multi-label", "info", IsTrue("multi_label"),
                "multi-label data: {multi_label_rate:.1%} of training rows carry several labels",
                ("multi_label_rate",)),
)


def evaluate_findings(facts: Mapping[str, Any], thresholds: AssessThresholds = AssessThresholds(),
                      rules: Sequence[FindingRule] = FINDING_RULES) -> tuple[DataFinding, ...]:
    """Every rule is evaluated; the ones that hold become findings (errors, then warnings, then info)."""
    out = []
    for rule in rules:
        if not rule.when.holds(facts, thresholds):
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
    rows += [{"table": "assess-finding", "id": r.id, "severity": r.severity, "when": r.when.describe(),
              "message": r.message, "uses": list(r.uses)} for r in FINDING_RULES]
    rows += [{"table": "assess-bands", "id": name, "fact": b.fact, "when": b.describe(), "default": b.default,
              "bands": [{"below": None if math.isinf(hi) else hi, "value": v} for hi, v in b.rows]}
             for name, b in NAMED_BANDS.items()]
    rows += [{"table": "assess-threshold", "id": f.name, "value": getattr(thresholds, f.name), "default": f.default}
             for f in fields(thresholds)]
    return rows


def lint_rules(start_rules: Sequence[StartRule] = START_RULES,
               finding_rules: Sequence[FindingRule] = FINDING_RULES) -> list[str]:
    """Problems in the rule tables: a fact not in FACTS (a misspelt name would make a rule silently never
    fire, or print "?"), a threshold not in AssessThresholds, a duplicate id, an unknown severity."""
    from loratune.assess.facts import FACTS

    known_t = {f.name for f in fields(AssessThresholds)}
    problems = []
    for table in (start_rules, finding_rules):
        ids = [r.id for r in table]
        problems += [f"{i}: duplicate rule id" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for r in start_rules:
        problems += [f"{r.id}: unknown fact '{n}'" for n in sorted(r.facts() - set(FACTS))]
    for fr in finding_rules:
        problems += [f"{fr.id}: unknown fact '{n}'" for n in sorted(fr.facts() - set(FACTS))]
        problems += [f"{fr.id}: unknown threshold '{n}'" for n in sorted(fr.thresholds() - known_t)]
        if fr.severity not in ("error", "warn", "info"):
            problems.append(f"{fr.id}: severity '{fr.severity}' is not error, warn or info")
    return problems
