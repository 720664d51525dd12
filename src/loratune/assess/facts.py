"""Facts: the named numbers the rule tables read, each named once in `FACTS` with its unit and meaning,
and `compute_facts`, which measures them from the profiles."""

from __future__ import annotations

import math
import string
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from loratune.assess.records import AssessThresholds, Conflicts, Noise, Resolution, SplitProfile, SplitShift
from loratune.data import Dataset
from loratune.listing import LABEL_JOIN, label_text

if typing.TYPE_CHECKING:  # pragma: no cover
    from loratune.difficulty import ProbeResult
    from loratune.model_info import ModelInfo


@dataclass(frozen=True)
class Fact:
    unit: str  # rows, classes, share (0-1), ratio, bits, tokens, text, ...
    meaning: str


# Leakage and shift facts are named per split: `val` is the validation split.
SHIFT_SPLITS = ("val", "test")
LEAK_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))  # (earlier split, later split)
NOISE_KINDS = {"empty": "empty texts", "very_short": "texts under short_chars non-space characters",
               "no_letters": "texts without a single letter", "encoding_damage": "texts with U+FFFD or mojibake",
               "non_printable": "texts with control or invisible characters",
               "duplicate_rows": "rows repeating an earlier (text, label) of the same split"}


def _catalogue() -> dict[str, Fact]:
    f = {
        "train_rows": Fact("rows", "training rows"),
        "val_rows": Fact("rows", "validation rows"),
        "test_rows": Fact("rows", "test rows (0: no test split)"),
        "classes": Fact("classes", "labels in the label space"),
        "multi_label": Fact("bool", "the data is multi-label"),
        "multi_label_rate": Fact("share", "training rows that carry several labels"),
        "rows_per_class_median": Fact("rows", "median training rows per class (classes with rows)"),
        "rows_per_class_min": Fact("rows", "fewest training rows of a class (classes with rows)"),
        "long_tail_classes": Fact("classes", "classes with fewer than long_tail_count training rows"),
        "long_tail_share": Fact("share", "long-tail classes among all classes"),
        "long_tail_examples": Fact("text", "the first long-tail class names"),
        "imbalance_ratio": Fact("ratio", "largest / smallest training class count"),
        "largest_class": Fact("label", "the class with the most training rows"),
        "smallest_class": Fact("label", "the class with the fewest (non-zero) training rows"),
        "token_p50": Fact("tokens", "median training text length under the model's tokenizer"),
        "token_p99": Fact("tokens", "the length 99% of training texts fit in (99th percentile, inverted CDF)"),
        "token_p99_ceil": Fact("tokens", "token_p99 rounded up"),
        "token_max": Fact("tokens", "longest training text"),
        "max_length": Fact("tokens", "the config's model.max_length"),
        "use_rslora": Fact("bool", "the config's adapter.use_rslora: peft scales the update by lora_alpha / sqrt(r), "
                                   "not lora_alpha / r (start-scale-2 reads it)"),
        "truncated_share": Fact("share", "training texts longer than max_length"),
        "unk_rate": Fact("share", "unknown tokens among training tokens"),
        "exact_conflict_groups": Fact("texts", "normalised texts that appear with different label sets"),
        "exact_conflict_rows": Fact("rows", "rows in those groups"),
        "near_conflict_pairs": Fact("pairs", "near-identical text pairs (char n-gram cosine >= "
                                             "near_duplicate_similarity) with different labels"),
        "top_conflict_pair": Fact("text", "the label pair with the most exact conflicts (texts carrying both; near "
                                          "pairs aside), 'a / b'"),
        "leak_rows": Fact("rows", "rows of a later split whose normalised text is in an earlier split"),
        "leak_where": Fact("text", "where the leaked rows are, 'src->split n'"),
        "near_leak_rows": Fact("rows", "rows of a later split with a near copy (cosine >= near_leak_similarity) in an "
                                       "earlier split, exact copies not counted"),
        "near_leak_where": Fact("text", "where the near copies are, 'src->split n'"),
        "near_leak_examples": Fact("text", "the first near copies, \"split 'file' line N 'text' ~ src 'its text'\" "
                                           "(Split.where: a row of a file without lines is 'row N', its row of the "
                                           "file)"),
        "shift_worst_js": Fact("bits", "Jensen-Shannon divergence of label shares vs train of the split furthest past "
                                       "its limit, max(label_shift_js, its js critical value)"),
        "shift_worst_js_split": Fact("split", "the split with that divergence"),
        "shift_worst_js_critical": Fact("bits", "the divergence a random split of that split's size reaches with "
                                                "probability shift_alpha"),
        "shift_worst_js_critical_by": Fact("text", "how shift_worst_js_critical was found: the random deals, or "
                                                   "past their cap the large-sample law and why"),
        "unseen_label_rows": Fact("rows", "validation/test rows with labels never seen in train"),
        "unseen_names": Fact("text", "those labels per split, 'val: a, b; test: c' (a split without any left out)"),
        "length_mean_train": Fact("length_unit", "mean training text length"),
        "length_unit": Fact("text", "tokens (with a tokenizer) or words"),
        "val_rows_per_class_min": Fact("rows", "fewest validation rows of a class"),
        "val_classes_under_min": Fact("classes", "classes with at least one but fewer than min_val_per_class "
                                                 "validation rows"),
        "val_classes_empty": Fact("classes", "trained classes with no validation row"),
        "val_classes_empty_note": Fact("text", "'; n more class(es) have no validation row at all', or empty"),
        "accuracy_se": Fact("accuracy", "standard error of validation accuracy at accuracy_se_at"),
        "accuracy_se_at": Fact("accuracy", "the rate the SEs are computed at: accuracy_at over the val rows seen "
                                           "as (hits + 1) / (n + 2)"),
        "macro_f1_se": Fact("macro-F1", "standard error of validation macro-F1"),
        "detectable_difference": Fact("macro-F1", "val differences below this (protocol 6's band over the SE: "
                                     "max(0.5 pt, 2 SE)) are sampling noise"),
        "resolution_method": Fact("text", "how the standard errors were estimated"),
        "accuracy_at": Fact("accuracy", "the accuracy the standard errors assume (the probe's, else 0.9)"),
        "model_type": Fact("text", "the model's config model_type"),
        "model_layers": Fact("layers", "transformer blocks of the model"),
        "model_hidden": Fact("units", "hidden size of the model"),
        "model_max_positions": Fact("tokens", "the model's maximum positions"),
        "model_position_limit": Fact("tokens", "the longest input the model's learned or fixed position embeddings "
                                     "index (model_info.position_limit, the limit train checks max_length against); "
                                     "None where positions are rotary or relative"),
        "generated_tokens": Fact("tokens", "the most tokens a causal-lm run generates after a prompt (a prompt set's "
                                 "max_new_tokens, a generated label; model_info.generated_tokens); 0 for a classifier"),
        "probe_macro_f1": Fact("macro-F1", "val macro-F1 of a logistic probe on frozen mean-pooled embeddings"),
        "probe_accuracy": Fact("accuracy", "val accuracy of that probe"),
        "heterogeneous_classes": Fact("classes", "classes whose embedding spread z >= spread_z (None: no probe)"),
        "heterogeneous_names": Fact("text", "those classes with spread, neighbour purity and probe recall"),
        "probe_confused_top": Fact("text", "the probe's three most confused pairs, 'true -> pred (n)'"),
        "probe_confused_pairs": Fact("pairs", "class pairs the probe confuses"),
    }
    for kind, what in NOISE_KINDS.items():
        f[f"{kind}_rows"] = Fact("rows", f"{what}, all splits")
        f[f"{kind}_where"] = Fact("text", f"per split: {what}")
    for src, dst in LEAK_PAIRS:
        f[f"leak_{src}_{dst}_rows"] = Fact("rows", f"{dst} rows whose normalised text is in {src}")
        f[f"leak_{src}_{dst}_share"] = Fact("share", f"those rows as a share of {dst}")
        f[f"near_leak_{src}_{dst}_rows"] = Fact("rows", f"{dst} rows with a near copy (cosine >= "
                                                        f"near_leak_similarity) in {src}")
    for s in SHIFT_SPLITS:
        f[f"js_{s}"] = Fact("bits", f"Jensen-Shannon divergence of {s} label shares vs train")
        f[f"js_{s}_critical"] = Fact("bits", f"the divergence a random split of {s}'s size (the pooled labels dealt "
                                             "at random) reaches with probability shift_alpha")
        f[f"length_ks_{s}_critical"] = Fact("KS", f"the KS statistic a random split of {s}'s size (the pooled "
                                                     "lengths dealt at random) reaches with probability shift_alpha")
        f[f"js_{s}_critical_by"] = Fact("text", f"how js_{s}_critical was found: the random deals, or past their "
                                                "cap the large-sample law and why")
        f[f"length_ks_{s}_critical_by"] = Fact("text", f"how length_ks_{s}_critical was found: the random deals, or "
                                                       "past their cap the large-sample law and why")
        f[f"js_{s}_top"] = Fact("text", f"the labels that move most between train and {s}")
        f[f"unseen_{s}_labels"] = Fact("labels", f"labels of {s} never seen in train")
        f[f"unseen_{s}_rows"] = Fact("rows", f"{s} rows with such labels")
        f[f"unseen_{s}_names"] = Fact("text", "the first of those labels")
        f[f"missing_{s}_labels"] = Fact("labels", f"training labels with no {s} row")
        f[f"missing_{s}_names"] = Fact("text", "the first of those labels")
        f[f"oov_{s}"] = Fact("share", f"{s} word tokens never seen in train")
        f[f"length_ks_{s}"] = Fact("KS", f"Kolmogorov-Smirnov statistic of {s} lengths vs train")
        f[f"length_mean_{s}"] = Fact("length_unit", f"mean {s} text length")
    return f


FACTS: dict[str, Fact] = _catalogue()


def template_facts(template: str) -> set[str]:
    """The fact names a message template formats (`{name}`, `{name:.1%}`; `{t.x}` is a threshold)."""
    out = set()
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name and not field_name.startswith("t.") and field_name.isidentifier():
            out.add(field_name)
    return out


def _unseen_rows(ds: Dataset, split: str) -> int:
    """Rows of `split` carrying a label train lacks."""
    sp = ds.splits().get(split)
    known = set(ds.label_space.labels)
    return sum(1 for labs in sp.labels if any(lab not in known for lab in labs)) if sp is not None else 0


def _top_exact_pair(conflicts: Conflicts) -> str | None:
    """'a / b', the label pair of the most exact conflicts (near pairs, which the exact-conflict finding is not
    about, aside: a pair of only near conflicts was named as 'most' of the exact ones); None without one."""
    top = next((p for p in conflicts.exact_first() if p.exact), None)
    return f"{top.a} / {top.b}" if top else None


def consistency_facts(conflicts: Conflicts, noise: Noise, thresholds: AssessThresholds) -> dict[str, Any]:
    """The conflict, duplicate and leakage facts of find_conflicts' and find_noise's records: the one formula of each,
    for the classifier (compute_facts) and a causal-lm run (assess.sft, its prompts and completions)."""
    near_ex = [e for lk in noise.leakage for e in lk.near_examples]
    return {
        "exact_conflict_groups": conflicts.exact_groups, "exact_conflict_rows": conflicts.exact_rows,
        "near_conflict_pairs": conflicts.near_pairs, "top_conflict_pair": _top_exact_pair(conflicts),
        "duplicate_rows_rows": sum(s.duplicate_rows for s in noise.splits),
        "duplicate_rows_where": ", ".join(f"{s.split} {s.duplicate_rows}" for s in noise.splits if s.duplicate_rows),
        # rows, each once: the per-pair sums counted a test row in both train and validation twice
        "leak_rows": noise.leak_rows if noise.leak_rows is not None else sum(lk.rows for lk in noise.leakage),
        "leak_where": ", ".join(f"{lk.source}->{lk.split} {lk.rows}" for lk in noise.leakage if lk.rows),
        "near_leak_rows": (noise.near_leak_rows if noise.near_leak_rows is not None
                           else sum(lk.near_rows for lk in noise.leakage)),
        "near_leak_where": ", ".join(f"{lk.source}->{lk.split} {lk.near_rows}" for lk in noise.leakage if lk.near_rows),
        "near_leak_examples": "; ".join(near_ex[: thresholds.max_examples]),
    }


def compute_facts(ds: Dataset, profiles: Mapping[str, SplitProfile], conflicts: Conflicts, noise: Noise,
                  shifts: Mapping[str, SplitShift], resolution: Resolution, *, max_length: int | None,
                  model_info: ModelInfo | None, probe: ProbeResult | None,
                  thresholds: AssessThresholds, use_rslora: bool = False) -> dict[str, Any]:
    """Every fact of `FACTS` that the inputs allow (leakage and shift facts for the splits present)."""
    tr = profiles["train"]
    val = profiles.get("validation")
    f: dict[str, Any] = {
        "train_rows": tr.rows, "val_rows": val.rows if val else 0,
        "test_rows": profiles["test"].rows if "test" in profiles else 0,
        "classes": len(ds.label_space), "multi_label": bool(ds.label_space.multi_label),
        "multi_label_rate": tr.multi_label_rows / max(1, tr.rows),
        "rows_per_class_median": tr.count_median, "rows_per_class_min": tr.count_min,
        "long_tail_classes": len(tr.long_tail_classes), "long_tail_share": tr.long_tail_share,
        "long_tail_examples": LABEL_JOIN.join(map(label_text, tr.long_tail_classes[: thresholds.max_examples])),
        "imbalance_ratio": tr.imbalance_ratio,
        "largest_class": next(iter(tr.counts), None),
        "smallest_class": next((k for k, v in reversed(tr.counts.items()) if v > 0), None),
        "token_p50": tr.tokens.p50 if tr.tokens else None,
        "token_p99": tr.tokens.p99 if tr.tokens else None,
        "token_p99_ceil": math.ceil(tr.tokens.p99) if tr.tokens else None,
        "token_max": tr.tokens.max if tr.tokens else None,
        "max_length": max_length, "use_rslora": bool(use_rslora), "truncated_share": tr.truncated_share,
        "unk_rate": tr.unk_rate,
        **consistency_facts(conflicts, noise, thresholds),
    }
    for kind in ("empty", "very_short", "no_letters", "encoding_damage", "non_printable"):
        f[f"{kind}_rows"] = sum(getattr(s, kind) for s in noise.splits)
        f[f"{kind}_where"] = ", ".join(f"{s.split} {getattr(s, kind)}" for s in noise.splits if getattr(s, kind))
    for lk in noise.leakage:
        short = {"validation": "val"}.get(lk.split, lk.split)
        src = {"validation": "val"}.get(lk.source, lk.source)
        f[f"leak_{src}_{short}_rows"] = lk.rows
        f[f"leak_{src}_{short}_share"] = lk.share
        f[f"near_leak_{src}_{short}_rows"] = lk.near_rows
    for name, sh in shifts.items():
        s = {"validation": "val"}.get(name, name)
        f[f"js_{s}"] = sh.js_divergence
        f[f"js_{s}_top"] = LABEL_JOIN.join(
            f"{label_text(x.label)} ({x.train_share:.1%} of train, {x.split_share:.1%} of {s})"
            for x in sh.top_labels[:2])
        f[f"unseen_{s}_labels"] = len(sh.unseen_labels)
        f[f"unseen_{s}_rows"] = _unseen_rows(ds, name)  # rows, not label occurrences ([pin, refund, loan]: one)
        f[f"unseen_{s}_names"] = LABEL_JOIN.join(map(label_text, list(sh.unseen_labels)[: thresholds.max_examples]))
        f[f"missing_{s}_labels"] = len(sh.missing_labels)
        f[f"missing_{s}_names"] = LABEL_JOIN.join(map(label_text, sh.missing_labels[: thresholds.max_examples]))
    for name in ("validation", "test"):  # a split the data does not have: its text facts say so (not "?")
        s = {"validation": "val"}.get(name, name)
        if name not in shifts:
            f[f"js_{s}_top"] = f[f"unseen_{s}_names"] = f"no {name} split"
        # this split's own shift record: the loop variable left over from above is the last split's (test), whose
        # vocabulary and lengths were reported as validation's
        own = shifts.get(name)
        f[f"oov_{s}"] = own.oov_token_rate if own else None
        f[f"length_ks_{s}"] = own.length_ks if own else None
        f[f"js_{s}_critical"] = own.js_critical if own else None
        f[f"length_ks_{s}_critical"] = own.length_ks_critical if own else None
        f[f"js_{s}_critical_by"] = own.js_critical_by if own else None
        f[f"length_ks_{s}_critical_by"] = own.length_ks_critical_by if own else None
        f[f"length_mean_{s}"] = own.length_mean_split if own else None
    any_shift = next(iter(shifts.values()), None)  # train's side is the same in every split's record
    f["length_mean_train"] = any_shift.length_mean_train if any_shift else None
    f["length_unit"] = any_shift.length_unit if any_shift else None
    # the split furthest past its limit (the larger of the floor and what chance reaches at its size): the largest
    # divergence alone named a 30-row split whose 0.1 bits chance reaches as often as not
    def past(k: str) -> float:
        return shifts[k].js_divergence - max(thresholds.label_shift_js, shifts[k].js_critical or 0.0)

    worst = max(shifts, key=past) if shifts else None
    f["shift_worst_js"] = shifts[worst].js_divergence if worst else 0.0
    f["shift_worst_js_split"] = worst
    f["shift_worst_js_critical"] = shifts[worst].js_critical if worst else None
    f["shift_worst_js_critical_by"] = shifts[worst].js_critical_by if worst else None
    f["unseen_label_rows"] = sum(_unseen_rows(ds, name) for name in shifts)
    # only the splits that name something: a split whose labels are all in train printed as 'val: ;'
    f["unseen_names"] = "; ".join(f"{s}: {f[f'unseen_{s}_names']}" for s in ("val", "test") if f[f"unseen_{s}_names"])
    # over the classes the model learns: a validation label train lacks has no recall to resolve
    f["val_rows_per_class_min"] = min((val.counts.get(lab, 0) for lab in ds.label_space.labels
                                       if val.counts.get(lab, 0) > 0), default=0) if val else 0
    # the same classes as that minimum: a class with no validation row is no "under 10 rows (min 3)" class;
    # it is counted apart (and named by missing-val-labels), so the message's count and minimum agree
    f["val_classes_under_min"] = (sum(1 for lab in ds.label_space.labels
                                      if 0 < val.counts.get(lab, 0) < thresholds.min_val_per_class) if val else 0)
    empty = sum(1 for lab in ds.label_space.labels if val.counts.get(lab, 0) == 0) if val else 0
    f["val_classes_empty"] = empty
    f["val_classes_empty_note"] = f"; {empty} more class(es) have no validation row at all" if empty else ""
    f["accuracy_se"] = resolution.accuracy_se
    f["macro_f1_se"] = resolution.macro_f1_se
    f["detectable_difference"] = resolution.detectable_difference
    f["resolution_method"] = resolution.method
    f["accuracy_at"] = resolution.accuracy_at
    f["accuracy_se_at"] = resolution.se_at
    mi = model_info
    f["model_type"] = mi.model_type if mi else None
    f["model_layers"] = mi.num_layers if mi else None
    f["model_hidden"] = mi.hidden_size if mi else None
    f["model_max_positions"] = mi.max_positions if mi else None
    f["model_position_limit"] = mi.position_limit if mi else None
    f["generated_tokens"] = 0  # a classifier generates nothing after its input (assess.sft measures a causal-lm run's)
    f["probe_macro_f1"] = probe.macro_f1 if probe else None
    f["probe_accuracy"] = probe.accuracy if probe else None
    if probe is not None:
        het = [c for c in probe.classes if c.spread_z is not None and c.spread_z >= thresholds.spread_z]
        het.sort(key=lambda c: -(c.spread_z or 0))
        f["heterogeneous_classes"] = len(het)
        f["heterogeneous_names"] = "; ".join(
            f"{label_text(c.label)} (spread z={c.spread_z:.1f}, neighbour purity {c.neighbour_purity:.2f}"
            + (f", probe recall {c.recall:.2f}" if c.recall is not None else "") + ")"
            for c in het[: thresholds.max_examples])
        f["probe_confused_top"] = LABEL_JOIN.join(f"{label_text(p.true)} -> {label_text(p.pred)} ({p.count})"
                                                  for p in probe.confused_pairs[:3])
        f["probe_confused_pairs"] = len(probe.confused_pairs)
    else:
        f["heterogeneous_classes"] = None
    return f
