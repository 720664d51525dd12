"""Phase 0 for task causal-lm: the data's shape in tokens and the start config (protocol 2, 3 and 9).

A generative run has no classes to count, so its facts are rows, rendered token lengths (prompt + completion,
through the same chat template training uses), the completion's share of them, truncation at max_length and
the model's size. The start config is the classifier's rule table where a rule carries over (rank by data,
scale 2, Q/V + FFN of the top layers, lr by model size, the capacity ceiling, max_length from the token p99)
and SFT_ONLY_RULES where it does not (dropout and epochs by rows, not rows per class; a fixed start batch).

    a = assess_sft(cfg, dataset)    # plain data in Assessment.to_dict()'s shape: facts, findings, recommendation
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np

from loratune.assess.facts import Fact
from loratune.assess.records import AssessThresholds
from loratune.assess.rules import (BATCH_WITHIN_ROWS, FINDING_RULES, START_RULES, Above, Bands, Derived, FindingRule,
                                   StartRule, batch_within_rows, evaluate_findings, max_length_cap_note, recommend)
from loratune.assess.stats import fit_length
from loratune.assess.text import normalise, spaced_key
from loratune.config import TASK_DEFAULTS

# Rules of the classifier's table that hold for a generative run as they are (by id).
SHARED_RULES = ("start-rank-by-data", "start-scale-2", "start-targets-qv-ffn-top", "start-layers-all",
                "start-lr-by-model-size", "start-max-length-p99", "ceiling-rank")

# sequences per step to start a causal-lm run with: the task's default batch (5 rows got 8: one partial batch an epoch)
SFT_START_BATCH: int = TASK_DEFAULTS["causal-lm"]["train.per_device_train_batch_size"]

SFT_ONLY_RULES: tuple[StartRule, ...] = (
    StartRule("start-dropout-by-rows-sft", "adapter.lora_dropout", Bands("train_rows", ((1000, 0.1), (math.inf, 0.05))),
              "{train_rows} training rows: lora_dropout={value} (protocol 3: 0.05-0.1, higher for small data)"),
    StartRule("start-epochs-sft", "train.num_train_epochs",
              Bands("train_rows", ((1000, 3.0), (10000, 2.0), (math.inf, 1.0))),
              "{train_rows} training rows: {value:g} epochs (SFT passes over the data 1-3 times; more passes make "
              "a generative model exact on familiar prompts and drift on new ones, protocol 9)"),
    StartRule("start-batch-sft", "train.per_device_train_batch_size",
              Derived(f"{SFT_START_BATCH}; {BATCH_WITHIN_ROWS}",
                      lambda f, c: batch_within_rows(SFT_START_BATCH, f.get("train_rows")), uses=("train_rows",)),
              "{train_rows} training rows: batch {value} sequences (the causal-lm default of "
              f"{SFT_START_BATCH}, at most the rows; gradient accumulation raises it without memory)"),
)
SFT_START_RULES: tuple[StartRule, ...] = tuple(r for r in START_RULES if r.id in SHARED_RULES) + SFT_ONLY_RULES

# What the facts sft_facts adds to the shared ones (assess.facts.FACTS) count.
SFT_FACTS: dict[str, Fact] = {
    "completion_token_p50": Fact("tokens", "median tokens of a completion's own text, without what the template "
                                 "writes around every answer (sft_data.answer_prefix, the end-of-turn mark, the EOS): "
                                 "a 1-token label is 1 under every template (label-like-completions reads it)"),
    "completion_share": Fact("share", "the completions' share of the rendered training tokens (what the loss is "
                             "taken on: with the answer prefix, end-of-turn mark and EOS)"),
    "truncated_share_at_max_length": Fact("share", "training rows whose rendered tokens exceed model.max_length"),
    "template": Fact("text", "how the rows are rendered (chat, plain, none)"),
}

# Findings: past AssessThresholds.sft_truncation_share of rows longer than max_length (they lose the start of their
# prompt; sft_data keeps the completion), a warning; a median completion this short:
SHORT_COMPLETION_TOKENS = 2  # a median completion this short is a label, not an answer: label_format=generate?


# Consistency (protocol 2), the classifier's checks over (prompt, completion) as (text, label): assess.profile's
# find_conflicts and find_noise, their facts named as assess.facts.FACTS names them, and these rows of the finding
# table. Generated labels (data.label_format=generate) are a classifier's labels: every consistency row of the
# classifier's table holds as it is. Open completions: a prompt may have several good answers, so the same prompt with
# different completions is a note; duplicate rows and prompts shared between splits (a validation prompt trained on
# overstates generalisation) are what they are for a classifier (exact copies only: near copies of templated prompts
# are no copies of their answers).
GENERATE_CONSISTENCY_RULES: tuple[FindingRule, ...] = tuple(
    r for r in FINDING_RULES if r.id in ("label-conflict-exact", "label-conflict-near", "leakage", "near-leakage",
                                         "duplicate-rows"))
OPEN_CONSISTENCY_RULES: tuple[FindingRule, ...] = tuple(
    r for r in FINDING_RULES if r.id in ("leakage", "duplicate-rows")) + (
    FindingRule("prompt-several-completions", "info", Above("exact_conflict_groups"),
                "{exact_conflict_groups} prompt(s) appear with different completions ({exact_conflict_rows} rows): "
                "open generation allows several answers, but if one is meant, drop or fix the others",
                ("exact_conflict_groups", "exact_conflict_rows")),)
# The key under which two prompts of open completions are one (exact conflicts, duplicates, leakage): case and spaces
# aside, punctuation and symbols kept. assess.text.normalise folds symbols into spaces (a classifier's texts), so
# 'what is 1 + 2' in train and 'what is 1 - 2' in validation were one prompt: 18 leaked rows, a duplicate row and 18
# prompts with several completions on arithmetic data. Generated labels keep the classifier's key (and its near checks).
OPEN_PROMPT_KEY = spaced_key
CONSISTENCY_FACTS = ("exact_conflict_groups", "exact_conflict_rows", "near_conflict_pairs", "top_conflict_pair",
                     "duplicate_rows_rows", "duplicate_rows_where", "leak_rows", "leak_where", "near_leak_rows",
                     "near_leak_where", "near_leak_examples")


@dataclass(frozen=True)
class CodeFinding:
    """One of sft_findings' rows written as code (not FindingRule: the truncation one names the proposed max_length):
    its id, severity and condition, which sft_findings reads, its message and the facts it reads (`uses`), as
    `loratune rules` prints them. `when`: a condition (assess.rules.Above: holds / describe) or, for a module
    constant's bound, its text."""

    id: str
    severity: str
    when: Any
    message: str
    uses: tuple[str, ...]

    def when_text(self) -> str:
        return self.when if isinstance(self.when, str) else self.when.describe()


TRUNCATED_ROWS = CodeFinding(
    "truncated-rows", "warn", Above("truncated_share_at_max_length", "sft_truncation_share"),
    "{share} of training rows are longer than model.max_length; the start config proposes max_length=...",
    ("truncated_share_at_max_length", "token_p99_ceil"))
LABEL_LIKE_COMPLETIONS = CodeFinding(
    "label-like-completions", "info", f"completion_token_p50 <= {SHORT_COMPLETION_TOKENS}",
    "the median completion is {completion_token_p50} tokens: a label, not an answer; data.label_format=generate",
    ("completion_token_p50",))
SFT_CODE_FINDINGS = (TRUNCATED_ROWS, LABEL_LIKE_COMPLETIONS)


def sft_rule_catalog() -> list[dict[str, Any]]:
    """The causal-lm assessment's own rows, as assess.rules.rule_catalog gives the classifier's (for `loratune
    rules`): its start rows (SFT_ONLY_RULES; the shared ones are the classifier's rows SHARED_RULES names) and its
    findings (the open-completion consistency row the classifier lacks, and SFT_CODE_FINDINGS)."""
    known = {r.id for r in FINDING_RULES}
    rows: list[dict[str, Any]] = [
        {"table": "assess-start-sft", "id": r.id, "key": r.key, "when": r.value.describe(), "reason": r.reason}
        for r in SFT_ONLY_RULES]
    rows += [{"table": "assess-finding-sft", "id": r.id, "severity": r.severity, "when": r.when.describe(),
              "message": r.message, "uses": list(r.uses)} for r in OPEN_CONSISTENCY_RULES if r.id not in known]
    rows += [{"table": "assess-finding-sft", "id": r.id, "severity": r.severity, "when": r.when_text(), "message": r.message,
              "uses": list(r.uses)} for r in SFT_CODE_FINDINGS]
    return rows


def consistency_facts(dataset, thresholds: AssessThresholds = AssessThresholds()) -> tuple[dict[str, Any], list[str]]:
    """CONSISTENCY_FACTS of the (prompt, completion) rows: exact conflicts, duplicates and cross-split copies of the
    prompts, and for generated labels the near ones (char n-gram neighbours) as the classifier measures them; and the
    notes the classifier's assessment gives with them (neighbour_sample_note: near counts from a sample are lower
    bounds)."""
    from loratune.assess.facts import consistency_facts as shared_consistency_facts
    from loratune.assess.profile import (TextPool, char_neighbours, find_conflicts, find_noise,
                                         neighbour_sample_note)
    from loratune.data import Split

    splits = {name: Split(name, tuple(e.prompt_text for e in sp.examples), tuple((e.completion,) for e in sp.examples),
                          sp.source) for name, sp in dataset.splits().items()}
    key = normalise if dataset.generates_labels else OPEN_PROMPT_KEY

    def measured(splits: dict) -> tuple:
        pool = TextPool.of(splits, key)
        uniq = list(pool.by_norm)
        neighbours = (char_neighbours(uniq, thresholds.near_duplicate_neighbors, min(
            thresholds.near_duplicate_similarity, thresholds.near_leak_similarity)) if dataset.generates_labels
            else (np.zeros((len(uniq), 0)), np.zeros((len(uniq), 0), dtype=int)))
        return pool, uniq, neighbours, find_noise(splits, pool, thresholds, neighbours, uniq)

    pool, uniq, neighbours, noise = measured(splits)
    conflicts = find_conflicts(pool, thresholds, neighbours, uniq)
    noise = replace(noise, leakage=noise.leakage + (leak := prompt_set_leakage(dataset, splits, measured)),
                    leak_rows=noise.leak_rows + sum(lk.rows for lk in leak),
                    near_leak_rows=noise.near_leak_rows + sum(lk.near_rows for lk in leak))
    notes = [n for n in [neighbour_sample_note(len(uniq))] if n] if dataset.generates_labels else []
    return {k: v for k, v in shared_consistency_facts(conflicts, noise, thresholds).items()
            if k in CONSISTENCY_FACTS}, notes


# The split name the prompt set's rows take in the leakage facts (`leak_where`: "train->prompt_set 2")
PROMPT_SET_SPLIT = "prompt_set"


def prompt_set_leakage(dataset, splits: dict, measured: Callable) -> tuple:
    """The prompt set's prompts copied from the training prompts (data.prompt_set: held-out prompts; a copy of a
    training prompt scores memorisation, not behaviour), as find_noise measures a later split's copies of an earlier
    one, under the same key (`measured`: find_noise over the splits given, with their pool): the train -> prompt_set
    Leakage, which the leakage rows of the finding table read. The prompt set against train only: its duplicates are
    refused when it is read, and a validation prompt in it is trained on by neither."""
    from loratune.data import Split
    from loratune.generation import load_prompt_set
    from loratune.sft_data import asked_text

    if not getattr(dataset, "prompt_set", None):
        return ()
    items = load_prompt_set(dataset.prompt_set)
    # what each prompt asks (asked_text), against the training prompts whole and as asked: a bare prompt set row
    # copying the user turn of a training chat with a system prompt is a copy (its prompt_text holds the system
    # prompt too), a system prompt the two share alone is none
    ps = Split(PROMPT_SET_SPLIT, tuple(asked_text(it.prompt) for it in items), tuple((it.reference,) for it in items),
               str(dataset.prompt_set))
    train = splits["train"]
    asked = [(e.asked_text, (e.completion,)) for e in dataset.train.examples if e.asked_text != e.prompt_text]
    train = Split(train.name, train.texts + tuple(t for t, _ in asked), train.labels + tuple(c for _, c in asked),
                  train.source)
    noise = measured({"train": train, PROMPT_SET_SPLIT: ps})[-1]
    return tuple(lk for lk in noise.leakage if lk.split == PROMPT_SET_SPLIT)


def sft_facts(cfg, dataset, tokenizer) -> dict[str, Any]:
    """The named numbers the start rules read, from the rendered training rows."""
    from loratune.model_info import describe_model, generated_tokens
    from loratune.sft_data import Renderer, encode_sft

    renderer = Renderer.for_tokenizer(tokenizer, cfg.data.chat_template)
    enc = encode_sft(tokenizer, renderer, dataset.train.examples, 1 << 30)  # untruncated lengths
    lengths = np.asarray(enc.lengths, dtype=float)
    completion = np.asarray(enc.completion_tokens, dtype=float)  # trained: with the answer prefix and end marks
    own = np.asarray([len(ids) for ids in tokenizer([e.completion for e in dataset.train.examples],
                                                    add_special_tokens=False)["input_ids"]], dtype=float)
    info = describe_model(cfg.model)
    facts = {
        "train_rows": len(dataset.train), "val_rows": len(dataset.validation),
        "token_p50": float(np.percentile(lengths, 50)), "token_p99": fit_length(lengths, 99),
        "token_p99_ceil": int(math.ceil(fit_length(lengths, 99))), "token_max": int(lengths.max()),
        "completion_token_p50": float(np.percentile(own, 50)),
        "completion_share": float(completion.sum() / max(1.0, lengths.sum())),
        "truncated_share_at_max_length": float(np.mean(lengths > cfg.model.max_length)),
        "model_layers": info.num_layers if info else None, "model_hidden": info.hidden_size if info else None,
        "model_max_positions": info.max_positions if info else None,
        "model_position_limit": info.position_limit if info else None,
        # what check_max_length adds to max_length: start-max-length-p99 caps at the positions less it
        "generated_tokens": max((n for n, _ in generated_tokens(cfg, dataset).values()), default=0),
        "template": renderer.mode,
        "use_rslora": bool(cfg.adapter.use_rslora),  # start-scale-2: alpha = s x sqrt(r) under rsLoRA
    }
    return facts


def sft_findings(facts: dict, generating_labels: bool = False, proposed_max_length: int | None = None,
                 thresholds: AssessThresholds = AssessThresholds()) -> list[dict]:
    """`thresholds`: the assess table (--thresholds; sft_truncation_share is read). `generating_labels`: data.label_format=generate is already set (the finding then says it is scored so).
    `proposed_max_length`: the start config's (start-max-length-p99), which the truncation finding names."""
    out = []
    if TRUNCATED_ROWS.when.holds(facts, thresholds):
        # the value the start config proposes, and why (it named the p99, 308, where the model's 256 positions set 256)
        to = (f"proposes max_length={proposed_max_length}{max_length_cap_note(facts)} (token p99 "
              f"{facts['token_p99_ceil']})" if proposed_max_length is not None
              else f"raises it to the token p99 ({facts['token_p99_ceil']})")
        out.append({"id": TRUNCATED_ROWS.id, "severity": TRUNCATED_ROWS.severity,
                    "message": f"{facts['truncated_share_at_max_length']:.0%} of training rows are longer than "
                               f"model.max_length; the start config {to}",
                    "evidence": {"share": facts["truncated_share_at_max_length"], "sft_truncation_share": thresholds.sft_truncation_share}})
    if facts["completion_token_p50"] <= SHORT_COMPLETION_TOKENS:
        out.append({"id": LABEL_LIKE_COMPLETIONS.id, "severity": LABEL_LIKE_COMPLETIONS.severity,
                    "message": f"the median completion is {facts['completion_token_p50']:g} tokens: a label, not an "
                               "answer; " + ("data.label_format=generate scores it per class like a classifier"
                                             if generating_labels else "with data.label_format=generate it is "
                                             "scored per class like a classifier"),
                    "evidence": {"completion_token_p50": facts["completion_token_p50"]}})
    rules = GENERATE_CONSISTENCY_RULES if generating_labels else OPEN_CONSISTENCY_RULES
    return [asdict(d) for d in evaluate_findings(facts, thresholds, rules)] + out


def assess_sft(cfg, dataset, *, progress: Callable[[str], None] | None = None,
               thresholds: AssessThresholds | None = None, checked: bool = False) -> dict:
    """Phase 0 of a causal-lm study, as plain data in `Assessment.to_dict()`'s shape (what `tune` stores and
    `search.protocol.start_from_assessment` reads). `thresholds`: the assess table (--thresholds; None: defaults).
    `checked`: the caller ran checks.run_checks on cfg and dataset (tune), so they are not run twice."""
    from loratune.checks import run_checks
    from loratune.models import load_tokenizer
    from loratune.sft_data import Renderer, check_end_token

    # refused as train and tune refuse them, before a start config is proposed that train would not take: the one
    # list of checks train runs (splits too small, the prompt set's rows and metric, max_length and what is generated
    # after it), and an EOS to stop at (train's, once the tokenizer loads)
    if not checked:
        run_checks(cfg, dataset)
    tokenizer = load_tokenizer(cfg.model)
    check_end_token(tokenizer, Renderer.for_tokenizer(tokenizer, cfg.data.chat_template), cfg.model.name_or_path)
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    say("tokenising the rendered training rows")
    facts = sft_facts(cfg, dataset, tokenizer)
    say("checking the rows' consistency")
    consistency, sampled = consistency_facts(dataset, thresholds if thresholds is not None else AssessThresholds())
    facts.update(consistency)
    rec = recommend(facts, SFT_START_RULES)
    return {
        "task": "causal-lm", "dataset": cfg.data.train_file or cfg.data.dataset_name or "",
        "model": cfg.model.name_or_path, "facts": facts, "findings": sft_findings(
            facts, dataset.generates_labels, rec.overrides.get("model.max_length"),
            thresholds if thresholds is not None else AssessThresholds()),
        "recommendation": {"overrides": dict(rec.overrides), "choices": [asdict(c) for c in rec.choices],
                           "capacity_ceiling": asdict(rec.capacity_ceiling), "lr_grid": list(rec.lr_grid)},
        "notes": list(dataset.notes) + sampled, "timings": {"total_s": time.perf_counter() - t0},
    }
