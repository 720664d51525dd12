"""The training loop of task causal-lm (generative SFT): the loss is on completion tokens only.

Read top to bottom like `train.train`: `train_sft()` sets up (seed, tokenizer, decoder + adapter,
encoded data, optimizer), then runs `steps` optimizer steps; every `eval_every` steps (and at step 0,
before any update) it scores validation and a fixed train subsample the same way (mean cross-entropy
per completion token, its perplexity, next-token argmax accuracy on completion tokens) and, with
`data.prompt_set`, generates greedily for every prompt and scores the outputs per group
(`generation.score_prompt_set`: `val/prompt_<group>_<metric>`); one point goes to history.jsonl, the
outputs to generations.jsonl. With data.label_format=generate (generative classification) every val
text is generated from as well, the label parsed from the output (metrics.parse_labels: an output that
names no label is an error, `val/unknown_rate`) and scored per class like a classifier. The model kept
is the trained evaluation point with the lowest val loss (generate: the best val macro-F1); it is saved in peft's format (or whole, for method full) with the tokenizer, loadable by plain
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir)`.

Ends, and records, like the classifier loop: planned steps, early stopping (on val loss), a diverged
loss, Ctrl-C / SIGTERM (`interrupted`) or an error (`failed`). Helpers that are not task-specific
(optimizer, schedule, seeding, divergence, progress, run record) come from train.py.

Several processes (`accelerate launch` / torchrun; `launched()` is the one test: WORLD_SIZE above 1) train
data parallel: accelerate starts the process group (gloo on CPU, NCCL on GPUs) and wraps the model in DDP.
Every rank builds the same model, data and batch order from the same seed; each optimizer step draws
gradient_accumulation_steps x world_size micro-batches (an epoch's last step its remainder) and deals each rank its
share, and DDP averages the gradients, so one step equals one process accumulating all of them (global batch =
per_device_train_batch_size x gradient_accumulation_steps x world_size: run.json `world_size`, `global_batch`;
`examples_seen` and the train loss / tokens of a step are over all ranks). Evaluation runs on rank 0 alone (the
data is not sharded: the same numbers as one process) while the others wait for its decision (early stop,
divergence, the callback's halt), which it broadcasts. Rank 0 alone writes output_dir: the record, history,
generations and the model (`NoRecord` stands in for the store of the other ranks). `accelerate launch --use_fsdp` (or
ACCELERATE_USE_FSDP=true under torchrun) shards method=full instead (`FullyShard`: PyTorch's FSDP2
`fully_shard`, each rank holding 1/world of every parameter, gradient and optimizer state); then every rank
takes part in evaluation and generation (each forward pass gathers the weights from all ranks), rank 0 still
alone records, and the kept model is a full state dict gathered on rank 0. `parallel()` is the one place that
picks; DeepSpeed and Megatron are refused (`SHARDING_FLAGS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from loratune import kernels, openmp
from loratune import precision as precision_mod
from loratune import signals
from loratune.adapt import apply_adapter, count_params, num_layers, warm_start
from loratune.config import RunConfig, to_dict, to_yaml
from loratune.data import VALIDATED_ON, data_seed_record, label_count_record, validated_on
from loratune.generation import PromptItem, load_prompt_set, score_prompt_set
from loratune.heads import LM_HEAD_NAMES, transformers_model
from loratune.metrics import parse_labels, prediction_scores, top_unknown_outputs
from loratune.objectives import (NOTHING_KEPT, PROMPT_GROUPS, PROMPT_OBJECTIVE_SCORES, Patience, keep_order, keeps,
                                 lm_metrics, objective as objective_named, prompt_key)
from loratune.models import load_causal_lm, load_tokenizer, resolve_model
from loratune.sft_data import (IGNORE, PLAIN_TEMPLATE, Example, Renderer, SFTDataset, SFTEncoded, Turn, answer_prefix,
                               check_end_token, encode_prompts, encode_sft, encoding_notes, prompt_prefix,
                               stop_token_ids, LOSS_COVERS_KEY, EVERY_TURN)
from loratune.store import GENERATIONS, RECORD_VERSION, RunStore, write_atomic
from loratune.trackers import Trackers
from loratune.trackers import require as require_trackers
from loratune.train import (STEP0_SPLITS, BestModel, CardPick, RunProgress, TrainCallback, batch_order,
                            build_optimizer, card_record, confusion_writer, cpu_cores, diverged, eval_batches,
                            eval_budget_rows, fresh_loss, history_point, loss_points_every, output_error,
                            peak_memory_mb, plan_steps, record_save_failure, rng_kept, run_fresh_factor,
                            save_best_so_far, saved_note, seed_everything, start_note, start_record, step_groups,
                            timed, torch_threads, train_log_every, utc_now, versions)

# What picks the saved model and drives early stopping (train.metric_for_best_model=auto): open generation,
# the val loss per completion token; generative classification (data.label_format=generate), val macro-F1 of
# the labels the model writes, as for a classifier. A prompt-set score may be named instead (objectives.py).
AUTO_OBJECTIVE = {False: "loss", True: "macro_f1"}
# each prompt-set objective key -> the prompt group it is scored on (val/prompt_familiar_chrf -> familiar)
PROMPT_METRIC_GROUP = {prompt_key(g, m): g for g in PROMPT_GROUPS for m in PROMPT_OBJECTIVE_SCORES}


def objective_key(cfg: RunConfig, generates_labels: bool, has_prompt_set: bool,
                  prompt_groups: Collection[str] | None = None) -> str:
    """The val key that picks the saved model of a causal-lm run (and is `loratune tune`'s objective); a metric
    this run does not compute is a UserError. prompt_groups: the groups the prompt set's rows have (when read):
    a prompt-set score of a group with no rows is never scored, so it could never pick a model."""
    from loratune.errors import UserError

    m = cfg.train.metric_for_best_model
    m = AUTO_OBJECTIVE[generates_labels] if m == "auto" else m
    computed = lm_metrics(generates_labels, has_prompt_set)
    if m not in computed:
        raise UserError(f"train.metric_for_best_model: {m} is not computed by this causal-lm run",
                        f"use auto or one of {', '.join(computed)}"
                        + ("" if has_prompt_set else "; prompt-set scores need data.prompt_set"))
    group = PROMPT_METRIC_GROUP.get(f"val/{m}")
    if group is not None and prompt_groups is not None and group not in prompt_groups:
        others = [x for x in computed if PROMPT_METRIC_GROUP.get(f"val/{x}", group) != group]
        raise UserError(f"train.metric_for_best_model: {m} scores the prompt set's '{group}' rows, and "
                        f"data.prompt_set has none (its groups: {', '.join(sorted(prompt_groups)) or 'none'}), "
                        "so that metric cannot be scored",
                        f"add rows with \"group\": \"{group}\" to the prompt set, or choose another metric: "
                        f"auto or one of {', '.join(others)}")
    return f"val/{m}"
# Evaluation batches hold at most this many tokens: the logits are [tokens, vocab] float32, 200 MB at
# SmolLM2's 49k vocabulary (a classifier's are [rows, classes], so its eval batches can be much larger).
EVAL_TOKENS = 1024
GEN_BATCH = 16  # prompts generated together (left-padded)
# What a decode step of generation costs, in tokens of a scoring forward pass (the unit eval_cost_rows charges
# evaluation in): one step reads every weight for one new position of each row in a batch of up to GEN_BATCH,
# so it runs at the speed of memory, not of arithmetic. SmolLM2-135M, bf16 weights, 2 CPU cores: 78-98 scored
# tokens a step of 16 rows in three measurements (bench/sft_eval_cost.py); 100, the dear end, since the budget
# is a ceiling. A prompt token costs one.
DECODE_STEP_TOKENS = 100


# ----------------------------------------------------------------------------------------------
# batches, loss and evaluation


def collate_lm(enc: SFTEncoded, rows, pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded [batch, longest] input_ids / attention_mask, and labels: -100 on prompt and padding."""
    longest = max(len(enc.ids[i]) for i in rows)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
    for r, i in enumerate(rows):
        ids = torch.tensor(enc.ids[i], dtype=torch.long)
        input_ids[r, : len(ids)] = ids
        mask[r, : len(ids)] = 1
        labels[r, : len(ids)] = torch.tensor(enc.labels(i), dtype=torch.long)
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def token_stats(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(summed cross-entropy, completion tokens, argmax hits) of logits [..., vocab] and the tokens they predict
    [...] (IGNORE: not scored), aligned: `scored_logits` gives them, or `logits[:, :-1]` and `labels[:, 1:]` of a
    whole batch (position t predicts token t+1)."""
    logits = logits.float()
    scored = target != IGNORE
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE,
                               reduction="sum")
    hits = int(((logits.argmax(-1) == target) & scored).sum())
    return loss_sum, int(scored.sum()), hits


def projects_scored_only(model) -> bool:
    """Whether the model's forward takes transformers' `logits_to_keep` as a boolean [batch, tokens] mask (its
    modeling code slices the hidden states with `slice_logits_to_keep`, which keeps the True positions), so the
    output projection runs on the scored positions only. Read through a DDP wrapper (`module`) and a peft model
    (`get_base_model`), whose forwards pass the argument on, and past a class FSDP2 made around the model's own
    (the first class in its MRO that defines `forward`)."""
    inner = getattr(model, "module", model)
    return _class_projects_scored_only(type(transformers_model(inner)))


@functools.lru_cache(maxsize=None)
def _class_projects_scored_only(cls: type) -> bool:
    import inspect

    owner = next((c for c in cls.__mro__ if "forward" in vars(c) and c.__module__.startswith("transformers.")), None)
    return (owner is not None and "logits_to_keep" in inspect.signature(owner.forward).parameters
            and hasattr(sys.modules.get(owner.__module__), "slice_logits_to_keep"))


def scored_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict a scored (completion) token, and those tokens: ([n, vocab], [n]). Position t
    predicts token t+1. Where the model allows it (`projects_scored_only`), the output projection runs on those n
    positions only: a prompt or padding position's logits ([vocab] floats in float32, the largest matmul of a
    small model's step) would be computed and dropped. Otherwise every position's logits are computed and the
    unscored ones dropped; the same numbers either way."""
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = batch["labels"][:, 1:] != IGNORE
    target = batch["labels"][:, 1:][keep[:, :-1]]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if projects_scored_only(model):
        return model(**inputs, logits_to_keep=keep).logits, target
    return model(**inputs).logits[keep], target


def lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the batch's completion tokens (the training loss) and their count."""
    loss_sum, n, _ = token_stats(*scored_logits(model, batch))
    return loss_sum / max(1, n), n


@torch.no_grad()  # not inference_mode: FSDP2 gathers weights in place, which inference tensors refuse
def evaluate_lm(prefix: str, model, enc: SFTEncoded, pad_id: int, device, autocast: bool) -> dict[str, float]:
    """`<prefix>/loss` (mean per completion token over the split), `/perplexity` (exp of it),
    `/token_accuracy` (share of completion tokens that are the argmax of the logit before them), `/tokens` (the
    completion tokens scored), `/n` (the split's rows evaluated, as a classifier's evaluation counts them and run.json
    `rows` does: encode_sft keeps a completion token after a prompt token in every row, sft_data.fit, so each is
    scored) and `/n_effective` (what those rows are worth to the token accuracy, a mean of the rows' accuracies
    weighted by their tokens: effective_rows, where a row with no token scored would add nothing; its noise band reads
    this, features.ROW_MEAN_COUNT)."""
    was_training = model.training
    model.eval()
    loss_sum, tokens, hits = 0.0, 0, 0
    per_row: list[int] = []  # each scored row's completion tokens
    # at most EVAL_TOKENS padded tokens a batch; its own collate pads each batch to its longest
    for rows in eval_batches(enc.lengths, EVAL_TOKENS // 16, bucket=None):
        batch = collate_lm(enc, rows, pad_id, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, target = scored_logits(model, batch)
        s, n, h = token_stats(logits, target)
        loss_sum, tokens, hits = loss_sum + float(s), tokens + n, hits + h
        per_row += [int(k) for k in (batch["labels"][:, 1:] != IGNORE).sum(1).tolist()]
    model.train(was_training)
    loss = loss_sum / tokens if tokens else math.nan
    return {f"{prefix}/loss": loss, f"{prefix}/perplexity": math.exp(min(loss, 700.0)) if tokens else math.nan,
            f"{prefix}/token_accuracy": hits / tokens if tokens else math.nan, f"{prefix}/tokens": tokens,
            f"{prefix}/n": len(enc.ids), f"{prefix}/n_effective": effective_rows(per_row)}


def effective_rows(weights: Sequence[int]) -> float:
    """The rows a weighted mean of per-row scores is worth (Kish's effective sample size, (sum w)^2 / sum w^2): a
    token accuracy is its rows' accuracies weighted by their tokens, so one long completion among short ones counts
    for more than one row, and its standard error is that of a plain mean of this many rows, not of the row count
    (equal rows: the row count). 0 for no rows."""
    squares = sum(w * w for w in weights)
    return sum(weights) ** 2 / squares if squares else 0.0


def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, device,
             autocast: bool = False, stop_ids: Sequence[int] = (), prefix: Sequence[int] = ()) -> list[str]:
    """Greedy continuations of token-id prompts (generate_capped's texts)."""
    return generate_capped(model, tokenizer, prompts, max_new_tokens, device, autocast, stop_ids, prefix)[0]


@torch.no_grad()  # (as evaluate_lm)
def generate_capped(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, device,
                    autocast: bool = False, stop_ids: Sequence[int] = (), prefix: Sequence[int] = ()
                    ) -> tuple[list[str], list[bool]]:
    """Greedy continuations of token-id prompts (left-padded batches, stopped at run_stop_ids: the base's EOS ids, the
    tokenizer's and `stop_ids`, the run's sft_data.stop_token_ids with its template's end-of-turn mark), decoded without
    special tokens, in the prompts' order. `prefix`: the template's answer prefix (sft_data.answer_prefix: Qwen3's
    empty think block), which a trained model writes before its answer: `max_new_tokens` are the answer's, generated
    after it (answer_tokens), and a continuation that starts with its text, whitespace aside, is read after it
    (after_prefix: the answer alone, the text labels are parsed from and prompt-set references compared with). Under
    bf16 autocast when `autocast` (as the run scores its loss, so `loratune evaluate` generates what the run's
    evaluation points generated). A model sharded by FSDP (`FullyShard`): every rank calls this with the same
    prompts, and each keeps taking forward passes until all ranks are done (transformers' synced_gpus), since each
    forward pass gathers weights from every rank.
    Also, per prompt, whether its continuation hit the cap: ran to all its new tokens (answer_tokens) without an
    end-of-sequence or stop token (generation.score_prompt_set's `capped`)."""
    from torch.distributed.fsdp import FSDPModule
    from transformers import GenerationConfig

    was_training = model.training
    model.eval()
    eos = run_stop_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer, stop_ids)
    config = GenerationConfig(max_new_tokens=answer_tokens(max_new_tokens, prefix), do_sample=False, num_beams=1,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos or None)
    written = tokenizer.decode(list(prefix), skip_special_tokens=True) if prefix else ""
    outputs: list[str] = [""] * len(prompts)
    capped: list[bool] = [False] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for b in range(0, len(order), GEN_BATCH):
        rows = order[b:b + GEN_BATCH]
        longest = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), longest), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, i in enumerate(rows):  # left padding: every prompt ends where generation starts
            ids[r, longest - len(prompts[i]):] = torch.tensor(prompts[i], dtype=torch.long)
            mask[r, longest - len(prompts[i]):] = 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                 synced_gpus=isinstance(model, FSDPModule))
        new = out[:, longest:].tolist()
        for r, i in enumerate(rows):
            outputs[i] = after_prefix(tokenizer.decode(out[r, longest:], skip_special_tokens=True), written)
            # a finished row is padded after its end token, so one without any ran to the cap
            capped[i] = len(new[r]) >= config.max_new_tokens and not set(eos).intersection(new[r])
    model.train(was_training)
    return outputs, capped


def run_stop_ids(base_eos, tokenizer, stop_ids: Sequence[int]) -> list[int]:
    """The token ids a run's generations stop at, one set for generate_capped, the saved generation config and the
    model card: the base's generation_config eos_token_id (`base_eos`: one id or a list, e.g. Llama-3 instruct's
    three), then the tokenizer's EOS and `stop_ids` (sft_data.stop_token_ids: the template's one-token end of turn),
    in that order, each once. Added to the base's ids, never replacing them: the base also ends its answers there."""
    return list(dict.fromkeys(i for i in [*_as_list(base_eos), tokenizer.eos_token_id, *stop_ids] if i is not None))


def after_prefix(text: str, prefix: str) -> str:
    """A decoded continuation's answer: what follows the template's answer prefix (decoded as generate decodes it)
    when the continuation starts with it, whitespace aside (a BPE tokenizer writes the prefix's '\\n\\n' as 'ĊĊ' or
    'Ċ','Ċ', and a model may drop or merge its line breaks), else the whole continuation (a model that does not write
    the prefix still parses); stripped."""
    at = 0
    for ch in "".join(prefix.split()):
        while at < len(text) and text[at].isspace():
            at += 1
        if text[at:at + 1] != ch:
            return text.strip()
        at += 1
    return text[at:].strip()


def answer_tokens(max_new_tokens: int, prefix: Sequence[int]) -> int:
    """The new tokens a generation runs for: `max_new_tokens` for the answer, after the template's answer prefix
    (sft_data.answer_prefix) that a trained model writes first. What generate generates, and what the evaluation's
    price (RunInputs.eval_cost_rows) and the position check (model_info.generated_tokens) count."""
    return max_new_tokens + len(prefix)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When a causal-lm run evaluates (RunInputs.schedule) and what its points cost, in mean training rows."""

    steps: int
    eval_every: int  # the full points (val, train subsample, generation)
    loss_every: int | None  # the val-loss-only points between them (train.loss_points_every)
    log_every: int | None  # train-only lines (train.train_log_every)
    rows_step0: int
    rows_per_point: int
    rows_per_loss_point: int | None  # None: no loss-only points
    budget_rows: int | None  # max_eval_share's budget (train.eval_budget_rows); None: no cap


@dataclasses.dataclass(frozen=True)
class RunInputs:
    """Every split of a causal-lm run tokenised once (prompt tokens carry label -100, sft_data.py), and the
    generation inputs: the prompt set's prompts and, generating labels, every val text's prompt."""

    renderer: Renderer
    train: SFTEncoded
    train_eval: SFTEncoded  # the fixed, seeded train subsample scored at every trained evaluation point
    train_eval_rows: list[int]
    val: SFTEncoded
    prompts: list[list[int]]
    val_prompts: list[list[int]]
    labels: tuple[str, ...]  # generative classification's label names; () for open generation
    label_new: int  # new tokens per generated label
    answer_prefix: list[int]  # what the template writes before every answer (sft_data.answer_prefix), generated too
    long_references: int = 0  # prompt-set references longer in tokens than train.max_new_tokens (cap_note)

    def notes(self) -> list[str]:
        """What encoding changed in the train and val rows (sft_data.encoding_notes), for the data notes."""
        return [n for split, enc in (("train", self.train), ("val", self.val))
                for n in encoding_notes(split, enc, self.renderer)]

    def eval_cost_rows(self, max_new_tokens: int) -> tuple[int, int]:
        """(step 0, every later point) in training rows, as the loop evaluates (eval_cost_rows)."""
        new, label_new = (answer_tokens(n, self.answer_prefix) for n in (max_new_tokens, self.label_new))
        return eval_cost_rows({"val": self.val, "train_eval": self.train_eval},
                              [(self.prompts, new), (self.val_prompts, label_new)], self.train)

    def loss_point_rows(self) -> int:
        """A val-loss-only point (train.loss_points_every) in training rows: val scored, nothing generated."""
        return eval_cost_rows({"val": self.val}, [], self.train)[1]

    def schedule(self, cfg: RunConfig, n_train: int) -> Schedule:
        """The full evaluation points within max_eval_share, the val-loss-only points the rest of the budget pays
        for, and the train-only lines where neither is dense enough, with the prices they were planned at. One
        plan for train_sft and `loratune train --dry-run` (api.plan)."""
        step0_rows, point_rows = self.eval_cost_rows(cfg.train.max_new_tokens)
        steps, eval_every = plan_steps(cfg, n_train, point_rows, step0_rows)
        budget = eval_budget_rows(cfg, steps, n_train)
        full_points = steps // eval_every + (steps % eval_every != 0)  # after step 0, the last step's included
        left = None if budget is None else budget - step0_rows - full_points * point_rows
        loss_rows = self.loss_point_rows()
        loss_every = loss_points_every(cfg, steps, eval_every, left, loss_rows)
        return Schedule(steps, eval_every, loss_every, train_log_every(cfg, steps, loss_every or eval_every),
                        step0_rows, point_rows, loss_rows if loss_every else None, budget)


def prompt_turns(item: PromptItem) -> tuple[Turn, ...]:
    """A prompt-set prompt as the turns it is generated from: its chat as given, a text as one user turn."""
    return item.prompt if isinstance(item.prompt, tuple) else (Turn("user", item.prompt),)


def read_prompt_set(cfg: RunConfig, dataset: SFTDataset) -> tuple[list[PromptItem], str]:
    """The prompt set's rows and the objective key (objective_key, told the rows' groups), read and checked as
    training reads them before its first step: the one check train, `train --dry-run` (api.check) and tune's start
    run. Bad rows and a metric the rows cannot score are UserErrors."""
    items = load_prompt_set(dataset.prompt_set) if dataset.prompt_set else []
    return items, objective_key(cfg, dataset.label_space is not None, bool(items), {it.group for it in items})


def encode_run(cfg: RunConfig, dataset: SFTDataset, tokenizer, prompt_items) -> RunInputs:
    """What train_sft tokenises, and what `loratune plan` prices its evaluation points with."""
    renderer = Renderer.for_tokenizer(tokenizer, cfg.data.chat_template)
    check_end_token(tokenizer, renderer, cfg.model.name_or_path)  # no EOS and no end mark: refused, said now
    max_len = cfg.model.max_length
    # generative classification: every val text is generated from at each evaluation, its label parsed
    labels = tuple(dataset.label_space.labels) if dataset.label_space is not None else ()
    sub = sorted(random.Random(cfg.train.seed).sample(range(len(dataset.train)),
                                                      min(cfg.train.train_eval_size, len(dataset.train))))
    return RunInputs(
        renderer=renderer,
        train=encode_sft(tokenizer, renderer, dataset.train.examples, max_len),
        train_eval=encode_sft(tokenizer, renderer, [dataset.train.examples[i] for i in sub], max_len),
        train_eval_rows=sub,
        val=encode_sft(tokenizer, renderer, dataset.validation.examples, max_len),
        prompts=encode_prompt_set(tokenizer, renderer, dataset.prompt_set, prompt_items, max_len),
        val_prompts=encode_prompts(tokenizer, renderer, dataset.validation.examples, max_len) if labels else [],
        labels=labels,
        # the label budget is its own: train.max_new_tokens is the prompt set's, and a cap below the longest
        # label would cut 'pin reset' to 'pin' and score it as another class
        label_new=label_token_cap(tokenizer, labels),
        answer_prefix=answer_prefix(tokenizer, renderer),
        long_references=sum(len(ids) > cfg.train.max_new_tokens for ids in _reference_ids(tokenizer, prompt_items)))


def encode_prompt_set(tokenizer, renderer, path, prompt_items, max_len: int) -> list[list[int]]:
    """The prompt set's prompts as the token ids generate_capped continues: what training's evaluation points and
    `loratune evaluate` (inference.evaluate_lm_run) generate from."""
    return encode_prompts(tokenizer, renderer, [Example(prompt_turns(it), it.reference) for it in prompt_items],
                          max_len,
                          # every row read is an item (load_prompt_set refuses a bad row), so item n is row n
                          lambda n: f"prompt set '{path}' row {n}")


def _reference_ids(tokenizer, items) -> list[list[int]]:
    refs = [it.reference for it in items]
    return tokenizer(refs, add_special_tokens=False, return_attention_mask=False)["input_ids"] if refs else []


def cap_note(long_references: int, rows: int, max_new_tokens: int) -> str | None:
    """The note of prompt-set references longer than the generations may be (None when all fit): their outputs are
    cut at train.max_new_tokens, so len_ratio and chrF read short answers the cap made."""
    if not long_references:
        return None
    return (f"{long_references} of {rows} prompt-set reference(s) are longer than train.max_new_tokens "
            f"({max_new_tokens} tokens): their generations are cut there, so len_ratio and chrF read answers the "
            "cap shortened; raise train.max_new_tokens to the references' length")


def eval_cost_rows(scored: dict[str, SFTEncoded], generated: list[tuple[list[list[int]], int]],
                   train: SFTEncoded) -> tuple[int, int]:
    """(step 0, every later point): one evaluation point's work in rows of the mean training example, the unit
    of train.plan_steps' max_eval_share budget. `scored`: the loss-scored splits by name (val, train_eval; step
    0 scores STEP0_SPLITS only), a token costing one; `generated`: (prompts, new tokens) per generation, each
    prompt token costing one and each decode step of a GEN_BATCH batch DECODE_STEP_TOKENS (a generation is
    priced at its full length: a batch stops early only when every row has ended)."""
    gen = sum(sum(map(len, prompts)) + math.ceil(len(prompts) / GEN_BATCH) * new * DECODE_STEP_TOKENS
              for prompts, new in generated)
    per_row = max(1.0, float(train.lengths.mean())) if len(train) else 1.0
    tokens = {name: int(enc.lengths.sum()) for name, enc in scored.items()}
    step0 = sum(n for name, n in tokens.items() if name in STEP0_SPLITS) + gen
    return math.ceil(step0 / per_row), math.ceil((sum(tokens.values()) + gen) / per_row)


def label_token_cap(tokenizer, labels) -> int:
    """New tokens generated for a label: the longest label's tokens + 2 (a space or newline before it, an end
    token after it); more would only let the model ramble past the label. The template's answer prefix comes on top
    (generate, answer_tokens)."""
    return 2 + max((len(tokenizer(lab, add_special_tokens=False)["input_ids"]) for lab in labels), default=0)


def _as_list(v) -> list:
    return [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]


# ----------------------------------------------------------------------------------------------
# data parallel across processes (`accelerate launch` / torchrun)


def launched() -> tuple[int, int]:
    """(rank, world size) that `accelerate launch` / torchrun gave this process; (0, 1) for a plain one. The one
    place that decides whether a run is distributed: WORLD_SIZE above 1."""
    return int(os.environ.get("RANK") or 0), int(os.environ.get("WORLD_SIZE") or 1)


# accelerate launch's flags for sharded training. FSDP (`--use_fsdp`) runs as `FullyShard`, for method full;
# DeepSpeed and Megatron are refused: the loop builds its own optimizer and saves whole models, which is right
# for DDP and FSDP only. FSDP runs as PyTorch's own FSDP2 (`fully_shard`), not through accelerate, measured on
# torch 2.13: accelerate 1.15's FullyShardedDataParallelPlugin raises "no available devices found, must be one
# of 'XPU', 'CUDA', ..." on a CPU machine, and FSDP1 (`FullyShardedDataParallel(device_id=None)`) raises "FSDP
# needs a non-CPU accelerator device", while fully_shard on a CPU DeviceMesh over gloo trains (docs/distributed.md).
FSDP_FLAG = "ACCELERATE_USE_FSDP"
SHARDING_FLAGS = (FSDP_FLAG, "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_MEGATRON_LM")
# accelerate launch's FSDP options that change what is computed or where weights live, and the values
# `FullyShard` implements (the launcher's defaults: every parameter sharded, resharded after each block's
# forward, kept on the device, no activation checkpointing); another value is refused, not silently ignored.
# The others (wrap policy, prefetch, state-dict type, fsdp_version, ...) are implementation choices that
# FullyShard makes itself: it shards each of the model's `_no_split_modules` blocks, then the root, with FSDP2.
FSDP_SETTINGS = {"FSDP_SHARDING_STRATEGY": ("FULL_SHARD", "1"), "FSDP_RESHARD_AFTER_FORWARD": ("true", "FULL_SHARD"),
                 "FSDP_OFFLOAD_PARAMS": ("false",), "FSDP_ACTIVATION_CHECKPOINTING": ("false",)}


def parallel(cfg: RunConfig) -> "OneProcess":
    """The one place that picks how a causal-lm run spreads over processes: one process (no launcher), FSDP
    (launched with accelerate's --use_fsdp, which sets ACCELERATE_USE_FSDP=true) or DDP (any other launch).
    What a run cannot do is a UserError here, before the process group starts or the model loads."""
    from loratune.errors import UserError

    if launched()[1] <= 1:
        return OneProcess()
    asked = [f for f in SHARDING_FLAGS if os.environ.get(f, "").lower() == "true"]
    what = asked[0].removeprefix("ACCELERATE_USE_").lower() if asked else ""
    launch = "`accelerate launch --multi_gpu --num_processes N -m loratune.cli train ...`"
    if asked and asked[0] != FSDP_FLAG:
        raise UserError(f"task causal-lm trains data parallel (DDP) or sharded (FSDP) only, and this launch asks "
                        f"for {what} ({asked[0]}=true)",
                        f"launch with {launch} (DDP) or with --use_fsdp instead of --multi_gpu (FSDP, method full)")
    if not asked:
        return DataParallel(cfg.train.num_threads)
    if cfg.adapter.method != "full":
        raise UserError(f"FSDP ({FSDP_FLAG}=true) shards adapter.method=full only, and this run trains "
                        f"method={cfg.adapter.method}",
                        f"set method=full, or launch a LoRA run with {launch} (DDP: a LoRA adapter's weights and "
                        "optimizer state are small, and the frozen base is the same on every rank)")
    for key, allowed in FSDP_SETTINGS.items():
        value = os.environ.get(key)
        if value is not None and value.lower() not in {a.lower() for a in allowed}:
            raise UserError(f"FSDP: {key}={value} is not implemented by loratune's FSDP (it shards every parameter "
                            "of every block, keeps them on the device, and checkpoints no activations)",
                            f"launch without that option (the accelerate default: {key}={allowed[0]})")
    return FullyShard(cfg.train.num_threads)


class OneProcess:
    """The default: rank 0 of 1, every hook the identity (accelerate is not imported). `evaluates`: this
    rank runs evaluation; `sharded`: the model is split across ranks (its forward passes need every rank)."""

    world, rank, main, evaluates, sharded, kind = 1, 0, True, True, False, None

    def place(self, device: torch.device) -> torch.device:
        return device

    def wrap(self, model):
        return model

    def no_sync(self, model, skip: bool):
        return contextlib.nullcontext()

    def sum(self, values: list[float]) -> list[float]:
        return values

    def from_main(self, obj):
        return obj

    def agree(self, obj):
        """Rank 0's value, for a decision taken inside evaluation (where only the evaluating ranks are)."""
        return obj

    def snapshot(self, model) -> dict[str, torch.Tensor] | None:
        """A CPU copy of the trained weights (the best model so far); None on ranks that do not save."""
        return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def local_params(self, model) -> list[int]:
        """Parameters each rank holds."""
        return [sum(p.numel() for p in model.parameters())] * self.world

    def close(self) -> None:
        pass


class DataParallel(OneProcess):
    """Launched with WORLD_SIZE > 1: accelerate starts the process group (gloo on CPU, NCCL on GPUs) and wraps
    the model in DistributedDataParallel, which averages the gradients across ranks in the backward pass of
    each optimizer step's last micro-batch (the others run under no_sync). Rank 0 alone evaluates."""

    kind = "ddp"

    def __init__(self, num_threads: int):
        from accelerate import Accelerator

        self.acc = Accelerator(cpu=not torch.cuda.is_available())  # cpu: accelerate's MULTI_CPU, over gloo
        self.world, self.rank, self.main = self.acc.num_processes, self.acc.process_index, self.acc.is_main_process
        self.evaluates, self.device = self.main, self.acc.device
        _share_cores(num_threads, self.world)

    def place(self, device: torch.device) -> torch.device:
        return self.device

    def wrap(self, model):
        self.wrapped = self.acc.prepare_model(model)
        return self.wrapped

    def no_sync(self, model, skip: bool):
        return self.acc.no_sync(model) if skip else contextlib.nullcontext()

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def from_main(self, obj):
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        # DDP's C++ Reducer (held by the wrapper and by its Logger) holds the process group. Were it the group's
        # last holder, the wrapper's death would join gloo's worker threads with the GIL held, while a worker
        # waits for the GIL to free a finished collective's tensors: a deadlock (pytorch#56297), seen at the
        # end of 1 in 3 two-rank CPU runs. Dropped first, the group's last holder is its Python handle, whose
        # destructor releases the GIL.
        wrapped = getattr(self, "wrapped", None)
        for name in ("logger", "reducer"):
            if wrapped is not None and hasattr(wrapped, name):
                delattr(wrapped, name)
        self.acc.end_training()  # destroys the process group


class FullyShard(DataParallel):
    """Launched with --use_fsdp, method full: PyTorch's FSDP2. Each of the model's blocks (`_no_split_modules`,
    e.g. LlamaDecoderLayer) and then the root are `fully_shard`ed over a 1-d DeviceMesh of all ranks (cpu over
    gloo, cuda over NCCL), so each rank holds 1/world of every parameter (a DTensor shard), of its gradient and
    of its AdamW state: the optimizer is built on these shards. A forward pass all-gathers each block's weights
    and frees them after it, a backward pass reduce-scatters (averages) the gradients, at every micro-batch, so
    an optimizer step equals one process accumulating all ranks' micro-batches, as under DDP. Every rank must
    take part in every forward pass, so every rank evaluates and generates with the same inputs (generation
    synced); rank 0 alone records, and takes evaluation decisions that it broadcasts (`agree`). The best model
    is a full state dict gathered onto rank 0's CPU (`snapshot`), which rank 0 saves."""

    kind, sharded = "fsdp", True

    def __init__(self, num_threads: int):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK") or 0))
        dist.init_process_group("nccl" if cuda else "gloo")  # torchrun's env:// rendezvous
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.main, self.evaluates = self.rank == 0, True
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.mesh = init_device_mesh(self.device.type, (self.world,))
        _share_cores(num_threads, self.world)

    def wrap(self, model):
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, mesh=self.mesh)
        fully_shard(model, mesh=self.mesh)  # the rest (embeddings, final norm, lm_head); the model, in place
        return model

    def no_sync(self, model, skip: bool):
        return contextlib.nullcontext()  # gradients reduce-scattered at every micro-batch: they stay sharded

    def agree(self, obj):
        return self.from_main(obj)

    def snapshot(self, model) -> dict[str, torch.Tensor] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return full if self.main else None  # (cpu_offload: the other ranks get an empty dict)

    def local_params(self, model) -> list[int]:
        held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
        out: list = [None] * self.world
        torch.distributed.all_gather_object(out, held)
        return out

    def close(self) -> None:
        torch.distributed.destroy_process_group()


def _share_cores(num_threads: int | None, world: int) -> None:
    """This machine's cores shared by its ranks (torchrun's OMP_NUM_THREADS=1 would leave cores idle)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
    torch.set_num_threads(num_threads or max(1, cpu_cores() // local))


class NoRecord:
    """The store of ranks above 0: rank 0 writes the whole record (run.json, history, generations, the model),
    so these write nothing into output_dir and take no run.lock (under FSDP they evaluate too, unrecorded)."""

    def __init__(self, path):
        self.path = path

    def create(self, config_yaml: str) -> None:
        pass

    def write_run(self, run: dict) -> None:
        pass

    def append_history(self, point: dict) -> None:
        pass

    def append_generations(self, rows: list[dict]) -> None:
        pass

    def write_confusion(self, labels, cm, step: int) -> None:
        pass

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# the run


def train_sft(cfg: RunConfig, dataset: SFTDataset, store: RunStore, *, progress: bool = True,
              callback: TrainCallback | None = None) -> dict:
    """Train one causal-lm run and write its record into `store`. Returns the final run.json content.
    `callback`: as train.train's (train.TrainCallback: `loratune tune` prunes and stops trials through it)."""
    # the thread count the run (or its rank's share of the cores) and the seeds it sets end with it
    with torch_threads(), rng_kept():
        return _train_sft(cfg, dataset, store, progress=progress, callback=callback)


def _train_sft(cfg: RunConfig, dataset: SFTDataset, store: RunStore, *, progress: bool,
               callback: TrainCallback | None) -> dict:
    from loratune.sft_data import check_trainable

    check_trainable(dataset)
    require_trackers(cfg.train.report_to)
    prompt_items, objective = read_prompt_set(cfg, dataset)  # bad rows, a metric they cannot score: said now
    t_setup = time.perf_counter()
    torch.set_num_threads(cfg.train.num_threads or cpu_cores())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 autocast only where the hardware has it (precision.py; auto); lm_head and the loss in float32
    precision = precision_mod.detect(cfg.train.precision, device.type)
    autocast = precision.autocast
    seed_everything(cfg.train.seed)  # every rank the same seed: identical adapters and batch order
    ranks = parallel(cfg)  # one process, DDP or FSDP (a launch this loop cannot run: a UserError, said now)
    device = ranks.place(device)
    if not ranks.main:
        store = NoRecord(store.path)

    # wall seconds per phase (run.json timing_s, as train.py's): load_model, tokenize, evaluate (the loss scoring of
    # val and the train subsample), generate (the prompt set and generated labels), train_steps, save
    timing: dict[str, float] = {}
    with timed(timing, "load_model"):
        tokenizer = load_tokenizer(cfg.model)
        # a checkpoint saved in bf16 loads its frozen weights in bf16 where the run holds them so (no float32 copy)
        base = load_causal_lm(cfg.model, tokenizer.pad_token_id,
                              frozen_bf16=precision_mod.load_in_bf16(precision, ranks.sharded, cfg.adapter))
        with precision_mod.adapters_in_float32(base):
            model, sites = apply_adapter(base, cfg.adapter, task="causal-lm")
        warm = warm_start(model, cfg) if cfg.train.init_from else None
    inputs_as_is, frozen_bf16 = 0, 0
    if autocast:
        precision_mod.head_in_fp32(model, LM_HEAD_NAMES, device.type)
        inputs_as_is = precision_mod.adapter_inputs_as_is(model)  # a bf16 input is not copied to fp32 and back
        # every forward (training, the loss scoring, generation) runs under autocast: the frozen weights are
        # held in bf16 (the cast autocast would make at every matmul, paid once; half the bytes a decode step
        # reads), cast before the model moves to the device (which then holds them in bf16 only). Not under FSDP,
        # which shards and gathers parameters by their dtype; nothing is merged here.
        if not ranks.sharded:
            frozen_bf16 = precision_mod.frozen_weights_in_bf16(model, LM_HEAD_NAMES, keep_full=False)
    model.to(device)
    model.train()
    dropout = kernels.dropout_record(kernels.uniform_dropout(model, device.type))  # CPU: masks from random 16-bit lanes
    params = count_params(model, sites, cfg.adapter.method)
    pad_id = tokenizer.pad_token_id

    with timed(timing, "tokenize"):
        enc = encode_run(cfg, dataset, tokenizer, prompt_items)
    renderer, labels, label_new = enc.renderer, enc.labels, enc.label_new
    train_enc, train_eval_enc, val_enc = enc.train, enc.train_eval, enc.val
    prompt_ids, val_prompt_ids, sub = enc.prompts, enc.val_prompts, enc.train_eval_rows
    y_val = np.array([{lab: i for i, lab in enumerate(labels)}.get(e.completion, -1)
                      for e in dataset.validation.examples], dtype=np.int64)
    # with eval_steps null, evaluation stays within train.max_eval_share of the training work; steps are planned
    # over one rank's share of the rows: each step takes accum micro-batches on every rank
    sched = enc.schedule(cfg, math.ceil(len(dataset.train) / ranks.world))
    steps, eval_every, loss_every, log_every = sched.steps, sched.eval_every, sched.loss_every, sched.log_every
    # DDP wraps `model` (the same parameters evaluate and save); FSDP shards it in place, before the optimizer
    # is built, so that the optimizer holds (and steps) this rank's shards
    train_model = ranks.wrap(model)
    optimizer, scheduler = build_optimizer(model, cfg, steps, device)
    accum = cfg.train.gradient_accumulation_steps
    rng = random.Random(cfg.train.seed)

    def epoch_batches():  # one epoch's batches over all ranks, reshuffled each epoch, length-grouped
        return batch_order(train_enc.lengths, cfg.train.per_device_train_batch_size, rng,
                           cfg.train.length_grouped_batches)

    capped = cap_note(enc.long_references, len(prompt_items), cfg.train.max_new_tokens)
    if capped and ranks.main:  # said as the run starts, as the data's notes are (it was in run.json alone)
        print(f"note: {capped}", file=sys.stderr, flush=True)
    run = {
        "status": "running", "reason": None, "task": "causal-lm",
        "data_notes": list(dataset.notes) + enc.notes() + [n for n in [capped] if n],
        VALIDATED_ON: validated_on(dataset.validation),  # evaluate and tune --resume check they re-read this split
        **data_seed_record(dataset, cfg.train.seed),
        "template": renderer.mode,
        LOSS_COVERS_KEY: EVERY_TURN,  # evaluate scores a run recorded before the key on the last turns (learns_earlier)
        "truncated": {"train": train_enc.truncated, "val": val_enc.truncated, "max_length": cfg.model.max_length},
        "tokens": {"train": int(train_enc.lengths.sum()),
                   "train_completion": int(train_enc.completion_tokens.sum()),
                   "val": int(val_enc.lengths.sum())},
        "prompt_set": ({"path": dataset.prompt_set, "rows": {g: sum(it.group == g for it in prompt_items)
                                                              for g in sorted({it.group for it in prompt_items})}}
                       if prompt_items else None),
        "model": {"name_or_path": cfg.model.name_or_path, "model_type": base.config.model_type,
                  "num_layers": num_layers(base), "adapted_modules": len(sites)},
        "method": cfg.adapter.method,
        "params": params.to_dict(),
        "rows": {"train": len(dataset.train), "train_eval": len(sub), "val": len(dataset.validation)},
        "steps_planned": steps, "eval_every": eval_every, "steps_done": 0, "examples_seen": 0,
        # what one evaluation point costs, in rows of the mean training example (eval_cost_rows), and the
        # max_eval_share budget it is planned within
        "evaluation": {"step0": list(STEP0_SPLITS), "rows_step0": sched.rows_step0,
                       "rows_per_point": sched.rows_per_point, "decode_step_tokens": DECODE_STEP_TOKENS,
                       "budget_rows": sched.budget_rows,
                       # between the full points, the val loss alone (train.loss_points_every): null when none
                       "loss_every": loss_every, "rows_per_loss_point": sched.rows_per_loss_point},
        "started_at": utc_now(), "ended_at": None, "wall_s": 0.0, "setup_s": 0.0,
        "examples_per_s": None, "mean_step_s": None, "peak_memory_mb": None,
        "best": None, "final": None, "adapter_step": None, "saved_model": None, "device": str(device),
        "world_size": ranks.world, "distributed": ranks.kind,
        # parameters each rank holds: all of them under DDP, about 1/world_size each under FSDP
        "params_per_rank": ranks.local_params(model) if ranks.world > 1 else None,
        "global_batch": cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps * ranks.world,
        "pid": os.getpid(), "threads": torch.get_num_threads(), "openmp": dict(openmp.CHOICE), "init_from": warm,
        "objective": objective,
        "label_format": "generate" if labels else None, "labels": list(labels) or None,
        **(label_count_record(dataset) if labels else {}),  # per-class rows, as a classifier's (long-tail-collapse)
        "precision": precision_mod.record(precision, inputs_as_is, frozen_bf16), "dropout": dropout, "timing_s": timing,
        "config": to_dict(cfg), "versions": versions(), "record_version": RECORD_VERSION,
    }
    start_record(store, to_yaml(cfg), run)
    tracking = Trackers.open(cfg.train.report_to if ranks.main else (), store.path, to_dict(cfg), to_yaml(cfg))

    bar = RunProgress(steps, progress and ranks.main, title="sft", metric="val loss")
    # gain: the objective signed so that larger is better (minus the val loss, or the val macro-F1)
    best, stopping = None, Patience(cfg.train.early_stopping_threshold)  # the kept model (BestModel); early stopping
    trained_key, start_loss = NOTHING_KEPT, None  # best (gain, tie-break) after step 0; step 1's loss
    start_fresh = None  # a warm start's un-adapted model's loss at step 1 (train.divergence_bar; NaN: none)
    examples_seen, step, step_times = 0, 0, []
    lr0_steps = 0  # the first steps, run at learning rate 0 (a warmup's first), that moved no weight (saved_note)
    early_stopped = False  # early stopping ended the run (saved_note)
    window: dict[str, list[float]] = {"loss": [], "grad_norm": [], "n": [], "time": [], "tokens": [], "lr": []}
    t0 = time.perf_counter()
    run["setup_s"] = round(t0 - t_setup, 3)

    def evaluate_now(loss_only: bool = False) -> bool:
        """Score val, the train subsample and the prompt set (`loss_only`: val alone); append a history point.
        True: stop early."""
        point = history_point(step, examples_seen, len(dataset.train), t0, window)
        with timed(timing, "evaluate"):
            if not loss_only and (step > 0 or "train_eval" in STEP0_SPLITS):  # step 0: the base model on val
                point.update(evaluate_lm("train_eval", model, train_eval_enc, pad_id, device, autocast))
            point.update(evaluate_lm("val", model, val_enc, pad_id, device, autocast))
        if loss_only:
            return _keep(point, None)
        generated: list[dict] = []
        if prompt_items:  # protocol 9: read the outputs, as numbers per group and as text
            with timed(timing, "generate"):
                outputs, capped = generate_capped(model, tokenizer, prompt_ids, cfg.train.max_new_tokens, device,
                                                  autocast, stop_token_ids(tokenizer, renderer), enc.answer_prefix)
            point.update(score_prompt_set(prompt_items, outputs, capped))
            generated = [{"step": step, "group": it.group, "prompt": it.text, "reference": it.reference,
                          "output": out} for it, out in zip(prompt_items, outputs)]
        cm = None
        if labels:  # the label each val text gets, scored like a classifier's; no known label = an error
            with timed(timing, "generate"):
                outputs = generate(model, tokenizer, val_prompt_ids, label_new, device, autocast,
                                   stop_token_ids(tokenizer, renderer), enc.answer_prefix)
            pred = parse_labels(outputs, labels)
            scores, cm = prediction_scores("val", pred, y_val, labels)
            point.update(scores)
            point.update({"val/unknown_rate": float(np.mean(pred < 0)),
                          "val/unknown_outputs": top_unknown_outputs(outputs, pred)})
        return _keep(point, cm, generated)

    def _keep(point: dict, cm, generated: list[dict] = ()) -> bool:
        """Emit an evaluation point (and the prompt set's outputs at it), keep the model when it is the best so far;
        True: stop early. A loss-only point without the objective (a generated metric) has no say in the kept model
        or in early stopping."""
        nonlocal best, trained_key
        store.append_history(point)  # the one place an evaluation point is emitted
        if generated:  # after its point: a run killed between the two writes has no outputs at a step its history
            # lacks (`show` printed step 4's generations for a record ending at step 2)
            store.append_generations(generated)
        tracking.log_point(point)
        run["final"] = point
        bar.update(step, point.get("train/loss"), point.get("val/loss"), evaluated=True)
        if objective not in point:
            store.write_run(run)
            return False
        value = point.get(objective, math.nan)
        # equal val macro-F1 (all 0.0 early on, while no output names a label yet) goes to the lower val
        # loss, so a generative classifier never keeps a stale model (keep_order: the report reads the same order),
        # and early stopping counts such a tie as progress, so patience does not end a learning run
        key = keep_order(point, objective, run["task"])
        evals_since_best = stopping.count(step, key)
        # the model kept is the best *trained* one: step 0 is the base model (or the warm start's), recorded for
        # comparison
        if step == 0:
            run["start"] = {"step": 0, objective: value}
        if ranks.agree(keeps(step, key, trained_key) and not _diverged_point(point)):
            trained_key = key
            best = BestModel(ranks.snapshot(model), step, {"best": point},  # FSDP: gathered onto rank 0
                             confusion_writer(store, labels, cm, step))
            if best.state is not None:  # the saving rank: written as found, so a killed run keeps its best model
                state = best.state if ranks.sharded else None
                save_best_so_far(run, store, best, lambda: save_lm(model, tokenizer, cfg, store, state, step))
            else:  # a rank that saves nothing: its record (never written) follows rank 0's
                best.record_saved(run)
        if run["best"] is None:  # step 0's point (or an untrained one) until a trained model is saved
            run["best"] = point
            if cm is not None:
                store.write_confusion(labels, cm, step)
        store.write_run(run)
        patience = cfg.train.early_stopping_patience
        return bool(patience and evals_since_best >= patience)

    def _diverged_point(point: dict) -> str | None:
        loss = point.get("train/loss")
        return (diverged(loss, start_loss, cfg.train.max_grad_norm > 0, start_fresh, run_fresh_factor(store))
                if loss is not None else None)

    try:
        if ranks.evaluates:  # rank 0 evaluates (and runs the callback); under DDP the others wait for its answer
            evaluate_now()  # step 0: the base model
        groups = step_groups(epoch_batches, accum * ranks.world)
        stop_reason = f"planned steps done ({steps})"
        halt = ranks.from_main(callback.on_eval(run["final"], run) if callback is not None and ranks.main else None)
        for step in range(1, steps + 1):
            if halt:  # the caller's callback asked to stop (after the previous step or evaluation)
                break
            t_step = time.perf_counter()
            step_loss, n_examples, n_tokens = 0.0, 0, 0
            # the step's micro-batches over all ranks: accum x world, fewer at an epoch's end (train.step_groups);
            # the step's loss is the mean over all their completion tokens, as one batch of the step's rows would
            # give: a micro-batch weighs by its token count, not 1 / count (DDP and FSDP average the ranks'
            # gradients, so each also scales by world)
            group = next(groups)
            share, step_scored = group[ranks.rank::ranks.world], max(1, train_enc.scored(r for g in group for r in g))
            passes = math.ceil(len(group) / ranks.world)  # as many on every rank: gradients sync on the last one
            for i in range(passes):
                # a rank left without a micro-batch of a short group runs the group's first at weight 0, so that
                # every rank takes part in every gradient exchange
                rows, real = (share[i], True) if i < len(share) else (group[0], False)
                batch = collate_lm(train_enc, rows, pad_id, device)
                with ranks.no_sync(train_model, skip=i < passes - 1):
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                        loss, n = lm_loss(train_model, batch)
                    weight = ranks.world * n / step_scored if real else 0.0
                    (loss * weight).backward()
                if real:
                    step_loss += float(loss.detach()) * weight
                    n_examples += len(rows)
                    n_tokens += int(batch["attention_mask"].sum())
            loss_sum, n_examples, n_tokens = ranks.sum([step_loss, n_examples, n_tokens])  # over all ranks
            step_loss, n_examples, n_tokens = loss_sum / ranks.world, int(n_examples), int(n_tokens)
            if not math.isfinite(step_loss):
                run["status"], stop_reason = "diverged", f"non-finite loss at step {step}"
                optimizer.zero_grad(set_to_none=True)
                break
            if start_loss is None:
                start_loss = step_loss
                if warm is not None:  # a warm start: the un-adapted model's loss (NaN: none, no ratio check)
                    def fresh_of():  # as the step scored it: under the run's autocast (its frozen weights are bf16)
                        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                            return lm_loss(train_model, batch)[0]

                    fresh = fresh_loss(model, fresh_of)
                    start_fresh = ranks.sum([fresh])[0] / ranks.world if fresh is not None else math.nan
            max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            if lr0_steps == step - 1 and not any(g["lr"] > 0 for g in optimizer.param_groups):
                lr0_steps = step  # the step moves no weight (a warmup's first runs at 0): train.saved_note
            window["lr"].append(scheduler.get_last_lr()[0])  # the rate this step uses: the point's lr_max
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            examples_seen += n_examples
            dt = time.perf_counter() - t_step
            step_times.append(dt)
            for key, v in (("loss", step_loss), ("grad_norm", grad_norm), ("n", n_examples), ("time", dt),
                           ("tokens", n_tokens)):
                window[key].append(v)
            run["steps_done"], run["examples_seen"] = step, examples_seen
            bar.update(step, step_loss)
            if callback is not None:
                halt = ranks.from_main(callback.on_step(step, examples_seen) if ranks.main else None)
            full = step % eval_every == 0 or step == steps
            if (full or (loss_every and step % loss_every == 0)) and not halt:
                decision = None
                if ranks.evaluates:
                    stop = evaluate_now(loss_only=not full)
                if ranks.main:  # the caller's callback reads the full points (TrainCallback.on_eval)
                    halt = callback.on_eval(run["final"], run) if callback is not None and full else None
                    decision = (stop, halt, _diverged_point(run["final"]))
                stop, halt, why = ranks.from_main(decision)
                if why:
                    run["status"], stop_reason = "diverged", f"{why} (step {step})"
                    break
                if stop and step < steps:  # patience run out at the last step: the plan ended the run, not it
                    early_stopped = True
                    stop_reason = (f"early stopping: {objective} did not improve for "
                                   f"{cfg.train.early_stopping_patience} evaluations")
                    break
            elif log_every and len(window["loss"]) >= log_every:  # evaluation thinned by its budget: the train
                # loss alone, over the log_every steps since the last history line
                point = history_point(step, examples_seen, len(dataset.train), t0, window)
                if ranks.main:
                    store.append_history(point)
                    tracking.log_point(point)
        if halt and run["status"] == "running" and run["steps_done"] < steps:  # a halt after the last step: the
            # plan ended the run, not the callback (docs/run-record.md: interrupted, partial: stopped before its end)
            run["status"], stop_reason = "interrupted", halt
        if run["status"] == "running":
            run["status"] = "completed"
        run["reason"] = stop_reason
    except KeyboardInterrupt as exc:
        run["status"], run["reason"] = "interrupted", f"{signals.describe(exc)} after step {run['steps_done']}"
        raise
    except Exception as exc:
        run["status"], run["reason"] = "failed", f"{type(exc).__name__}: {exc}"
        user = output_error(exc, store.path)
        if user is not None:
            raise user from None
        raise
    finally:
        with signals.shielded():  # a second Ctrl-C / SIGTERM waits until the record is whole
            try:
                save_error = _finish_record(run, model, tokenizer, cfg, store, best, bar, device, t0,
                                            examples_seen, step_times, ranks.sharded, lr0_steps, early_stopped)
            finally:  # the lock goes and the writers close even when saving the model failed
                store.close()
                tracking.finish(store.path, run["status"])
        if save_error is not None and sys.exc_info()[0] is None:
            raise save_error
    run = ranks.from_main(run)  # every rank returns rank 0's record (after rank 0 has saved it)
    ranks.close()
    return run


def _finish_record(run, model, tokenizer, cfg, store, best: BestModel | None, bar, device, t0, examples_seen,
                   step_times, sharded: bool = False, lr0_steps: int = 0, early_stopped: bool = False):
    """Restore the best trained weights, save them, write the final run.json (as train._finish_record:
    a write that fails for the output location is recorded, then returned as a UserError, never raised over the error
    that ended the run). sharded (FSDP): best.state is the full state dict on rank 0, saved as it is (the
    shards are left as trained: restoring them would need every rank, here where one may have failed)."""
    bar.close()
    run["partial"] = run["status"] in ("interrupted", "failed")
    run.update({"ended_at": utc_now(), "wall_s": round(time.perf_counter() - t0, 3),
                "examples_per_s": examples_seen / sum(step_times) if step_times else None,
                "mean_step_s": float(np.mean(step_times)) if step_times else None,
                "peak_memory_mb": peak_memory_mb(device)})
    timing = run.setdefault("timing_s", {})
    timing["train_steps"] = round(sum(step_times), 3)
    saved = False  # adapter/ complete: a failure after it must not say the model was lost
    try:
        if best is not None and best.state is not None:
            if not sharded:
                with torch.no_grad():
                    named = dict(model.named_parameters())
                    for n, t in best.state.items():
                        named[n].copy_(t)
            with timed(timing, "save"):
                save_lm(model, tokenizer, cfg, store, best.state if sharded else None, best.step)
            saved = True
            step = best.step
            key = run["objective"]
            higher = objective_named(key).higher_is_better
            words = f"{'best' if higher else 'lowest'} {objective_named(key).name}"
            run["saved_model"] = {"step": step, "note": saved_note(step, words, lr0_steps, cfg.train.init_from, early_stopped,
                                                                   (run.get("final") or {}).get("step"))
                                  + start_note(run, key, higher, cfg.train.init_from)}
            best.record_saved(run)
        else:
            run["adapter_step"] = None
            run["saved_model"] = {"step": None, "note": "no model saved: the run ended before any trained "
                                  "evaluation point (or every one had diverged)"}
        store.write_run(run)
    except Exception as exc:
        record_save_failure(run, store, exc, saved)  # an output fault too: the record says how the run ended
        user = output_error(exc, store.path)
        if user is None:
            raise
        return user
    return None


def save_lm(model, tokenizer, cfg: RunConfig, store: RunStore, state_dict: dict | None = None,
            step: int | None = None) -> None:
    """peft's own format for LoRA (adapter_config.json + adapter_model.safetensors; the base model is
    unchanged, so nothing else is saved); the whole model for method full. The tokenizer goes beside it,
    and a README that says how to load it with plain peft + transformers. state_dict: the weights to write
    instead of the model's own (FSDP: the full state dict gathered on rank 0). adapter/ is replaced whole once the
    folder is complete (RunStore.replace_adapter, as train.save_model), naming `step`, the model's step."""
    generations = (store.path / GENERATIONS).is_file()  # a prompt set's outputs, written from the first eval point on
    store.replace_adapter(step, lambda out: _write_lm(out, model, tokenizer, cfg, state_dict, generations))


def _write_lm(out: Path, model, tokenizer, cfg: RunConfig, state_dict: dict | None, generations: bool) -> None:
    from loratune.models import quiet_transformers

    with quiet_transformers(), warnings.catch_warnings():  # no progress bar per shard
        # peft looks for the base's config.json to see whether the vocabulary grew; a GGUF base has none,
        # and the vocabulary never changes here (the embeddings are frozen or saved whole)
        warnings.filterwarnings("ignore", message="Could not find a config file")
        model.save_pretrained(out, **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(out)
        gen = saved_generation_config(model, tokenizer, cfg)
        write_generation_config(out, gen)
    write_atomic(out / "README.md", _card_for(tokenizer, cfg, hasattr(model, "peft_config"), base_eos=gen.eos_token_id,
                                              generations=generations))


def write_generation_config(out: Path, gen) -> None:
    """`gen` as out/generation_config.json, written as GenerationConfig.save_pretrained writes it but without its strict
    check: a base's published config with sampling flags and no do_sample (Llama-2-chat's temperature 0.6, top_p 0.9)
    is refused by save_pretrained once its eos_token_id changed (ValueError: the finished run failed, no model saved);
    from_pretrained reads the file back as it read the base's."""
    write_atomic(out / "generation_config.json", gen.to_json_string(use_diff=True, keys_to_pop=["compile_config"]))


def saved_generation_config(model, tokenizer, cfg: RunConfig):
    """The model's generation config with eos_token_id the ids the run's generations stop at (run_stop_ids: the
    base's, the EOS and the template's one-token end of turn), as TRL's SFTTrainer updates it: a base model whose config
    lists only '</s>' otherwise runs past the '<|end|>' the run learnt to end each answer with, to max_new_tokens."""
    import copy

    from transformers import GenerationConfig

    gen = getattr(model, "generation_config", None)
    gen = copy.deepcopy(gen) if isinstance(gen, GenerationConfig) else GenerationConfig()
    stops = run_stop_ids(gen.eos_token_id, tokenizer,
                         stop_token_ids(tokenizer, Renderer.for_tokenizer(tokenizer, cfg.data.chat_template)))
    if stops:
        gen.eos_token_id = stops if len(stops) > 1 else stops[0]
    return gen


def _card_for(tokenizer, cfg: RunConfig, is_adapter: bool, pick: CardPick | None = None, base_eos=None,
              generations: bool = False) -> str:
    """The model card of a saved model whose tokenizer is `tokenizer` (model_card, its prompt as the run wrote it);
    `base_eos`: its generation config's eos_token_id (run_stop_ids); `generations`: the run wrote GENERATIONS."""
    renderer = Renderer.for_tokenizer(tokenizer, cfg.data.chat_template)
    prefix = tokenizer.convert_ids_to_tokens(prompt_prefix(tokenizer, renderer))
    stops = tokenizer.convert_ids_to_tokens(run_stop_ids(base_eos, tokenizer, stop_token_ids(tokenizer, renderer)))
    return model_card(cfg, is_adapter, renderer.mode, prefix, pick, stops, generations)


def saved_model_card(folder: Path, cfg: RunConfig, pick: CardPick | None = None, record_dir: Path | None = None) -> str:
    """The model card of the causal LM saved in `folder` (search.summary: a tune study's exported pick), whose run
    record is in `record_dir` (the pick's trial directory; None: the folder's parent, a run's adapter/)."""
    from transformers import AutoTokenizer

    gen = folder / "generation_config.json"  # read as written (write_generation_config), no validation
    base_eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id") if gen.is_file() else None
    generations = ((folder.parent if record_dir is None else record_dir) / GENERATIONS).is_file()
    return _card_for(AutoTokenizer.from_pretrained(folder), cfg, (folder / "adapter_config.json").is_file(), pick,
                     base_eos, generations)


# where a causal LM's card says its run record is (train.card_record): (what, files) with a prompt set's outputs
# (GENERATIONS, written only when a prompt set ran) and without
LM_RECORD_FILES = {True: ("curves, prompt-set outputs and the configuration",
                          ("history.jsonl", GENERATIONS, "run.json", "config.yaml")),
                   False: ("curves and the configuration", ("history.jsonl", "run.json", "config.yaml"))}


def model_card(cfg: RunConfig, is_adapter: bool, mode: str = "chat", prefix: Collection[str] = (),
               pick: CardPick | None = None, stops: Collection[str] = (), generations: bool = False) -> str:
    """What the folder holds and how to generate with plain peft + transformers, the prompt written as the run wrote
    it (`mode`: the Renderer's chat / plain / none) and tokenised as it was: `prefix`, the tokens the run put before
    every prompt (sft_data.prompt_prefix: BOS when the template writes none), then the prompt's own tokens. `pick`: the
    folder is a tune study's exported pick (train.card_record). `stops`: the tokens the run's generations stop at
    (run_stop_ids), passed to generate as its eos_token_id (the base's generation config may list only one).
    `generations`: the run wrote a prompt set's outputs (GENERATIONS), which the card names only then."""
    a = cfg.adapter
    src = resolve_model(cfg.model)
    base = f'"{src.path}"' + (f', gguf_file="{src.gguf_file}"' if src.gguf_file else "")
    kind = (f"a LoRA adapter (r={a.r}, lora_alpha={a.lora_alpha}, targets {', '.join(map(str, a.target_modules))})"
            if is_adapter else "a fully fine-tuned model")
    load = (f"base = AutoModelForCausalLM.from_pretrained({base})\n"
            "model = PeftModel.from_pretrained(base, \"adapter\")" if is_adapter
            else "model = AutoModelForCausalLM.from_pretrained(\"adapter\")")
    return ("# Causal LM fine-tuned (SFT) with loratune\n\n"
            f"This folder holds {kind}, trained by `loratune train task=causal-lm` on "
            f"`{cfg.data.train_file or cfg.data.dataset_name}` (loss on completion tokens only, prompts written "
            f"with the {mode} template (chat_template={cfg.data.chat_template}), max_length "
            f"{cfg.model.max_length}).\n\n"
            f"- base model: `{cfg.model.name_or_path}`\n"
            + card_record(*LM_RECORD_FILES[generations], pick) +
            "\n## Use\n\n```python\n"
            + ("import torch\n" if prefix else "")
            + ("from peft import PeftModel\n" if is_adapter else "")
            + "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"{load}\ntokenizer = AutoTokenizer.from_pretrained(\"adapter\")\n"
            + _card_prompt(mode) + _card_ids(prefix) + _card_stops(stops) +
            "print(tokenizer.decode(model.generate(ids, max_new_tokens=64"
            + (", eos_token_id=stop" if stops else "") + ")[0, ids.shape[1]:], skip_special_tokens=True))\n```\n")


def _card_stops(stops: Collection[str]) -> str:
    """The card's line naming the tokens the run's generations stop at (its EOS and the template's end of turn)."""
    if not stops:
        return ""
    return (f"stop = tokenizer.convert_tokens_to_ids({list(stops)!r})  # the run's answers end with one of these\n")


def _card_ids(prefix: Collection[str]) -> str:
    """The card's line that tokenises the prompt as the run did: the prefix tokens, then the prompt's own tokens with
    no special tokens added (a tokenizer's BOS before a template that writes its own would make two)."""
    if not prefix:
        return "ids = tokenizer(prompt, return_tensors=\"pt\", add_special_tokens=False)[\"input_ids\"]\n"
    return (f"prefix = tokenizer.convert_tokens_to_ids({list(prefix)!r})  # the run put these before every prompt\n"
            "ids = torch.tensor([prefix + tokenizer(prompt, add_special_tokens=False)[\"input_ids\"]])\n")


def _card_prompt(mode: str) -> str:
    """The card's line that writes a prompt as the run wrote its training prompts (sft_data.Renderer)."""
    if mode == "chat":
        return ("prompt = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": \"...\"}], tokenize=False, "
                "add_generation_prompt=True)\n")
    if mode == "plain":
        turn = PLAIN_TEMPLATE["turn"].format(role=PLAIN_TEMPLATE["roles"]["user"], content="...")
        return f"prompt = {turn + PLAIN_TEMPLATE['generation']!r}  # the plain template the run trained with\n"
    return "prompt = \"...\"  # chat_template=none: the prompt as written\n"
