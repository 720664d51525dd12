"""The training loop: the only place that iterates over batches.

Read top to bottom: `train()` sets up (seed, model, adapter, encoded data, optimizer), then runs
`steps` optimizer steps; every `eval_every` steps it scores the validation split and a fixed train
subsample the same way (at step 0, before any update, validation only: STEP0_SPLITS) and appends one
point to history.jsonl.
It ends on the planned step count, early stopping, a non-finite or exploding loss (status
`diverged`), Ctrl-C or SIGTERM (status `interrupted`) or an error (status `failed`), and always
leaves a valid run record. The model saved is the best *trained* one (the eval point after step 0
with the best `metric_for_best_model`: val macro-F1, or subset accuracy for multi-label data), or
none when no trained point was scored; `run.json` says which under `saved_model`. Multi-label runs
tune per-label thresholds on validation at every evaluation and save those of the saved model's
step with it (adapter/label_map.json `decoding`). While it runs, the process holds `run.lock` (store.RunLock), so a record left at
`running` by a killed process reads as `died`.
"""

from __future__ import annotations

import contextlib
import hashlib
import errno
import math
import os
import random
import resource
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from loratune import __version__, kernels, openmp, pooled_block, precision as precision_mod, prefix_cache, signals
from loratune import steps as _steps
from loratune.adapt import apply_adapter, count_params, depth, num_layers, shared_blocks_note, warm_start
from loratune.config import RunConfig, single_label_note, to_dict, to_yaml
from loratune.data import (VALIDATED_ON, Dataset, LabelSpace, Split, data_seed_record, label_count_record,
                           stratified_subset, validated_on)
from loratune.errors import UserError, disk_full, finite_number
from loratune.rng import rng_kept  # noqa: F401  (sft takes it from here too)
from loratune.objectives import NOTHING_KEPT, Patience, keep_order, keeps, objective as objective_named
from loratune.rules import RUN_THRESHOLDS_KEY, THRESHOLDS
from loratune.eval_extras import EvalExtras
from loratune.slices import probe_label_note
from loratune.heads import head_modules
from loratune.listing import LABEL_JOIN, code_span, label_text, shell_path
from loratune.losses import LossSpec, compute_loss, loss_spec
from loratune.metrics import (Decoding, crossfit_thresholds, decode, multi_label_scores, sigmoid,
                              single_label_scores, tune_thresholds)
from loratune.models import (BASE_ARGS_ATTR, HEAD_NOTE_ATTR, PAD_NOTE_ATTR, load_classifier, load_tokenizer,
                             quiet_transformers, resolve_model)
from loratune.store import LABEL_MAP, RECORD_VERSION, SAVED_WRITING_NOTE, RunStore, earlier_run_note, write_json
from loratune.trackers import Trackers
from loratune.trackers import require as require_trackers


# ----------------------------------------------------------------------------------------------
# encoded data: token ids without padding, targets, and the batch order


@dataclass
class Encoded:
    """A split tokenized once: variable-length id lists (no padding) and targets.

    targets: int64 [n] label indices (-100 for a label unknown to the model) for single-label;
    float32 [n, k] multi-hot for multi-label. unseen: bool [n], rows carrying an unknown label.
    """

    ids: list[list[int]]
    targets: np.ndarray
    unseen: np.ndarray
    prefix: prefix_cache.Feed | None = None  # cached frozen-prefix states, when the cache applies
    label_counts: np.ndarray | None = None  # labels per row as the data writes them (unknown ones included)
    max_length: int | None = None  # the truncation length: no row is padded past it (padded_length)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


_TOKENIZED: OrderedDict[str, list[list[int]]] = OrderedDict()
TOKENIZE_CHUNK = 10_000  # texts per tokenizer call: the call's intermediate encodings stay this size  # reused across the runs of one process (tune)


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids without padding. Kept in process (the last 16 sets) under a key of the tokenizer's
    definition, the texts and max_length, so the trials of a sweep tokenize each split once."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{type(tokenizer).__name__}|{max_length}|{tokenizer.truncation_side}|".encode())
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    for t in texts:  # each text with its length: a separator inside a text ("a\x00b") cannot join two others
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little") + b)
    key = h.hexdigest()
    if key not in _TOKENIZED:
        # input_ids only, TOKENIZE_CHUNK texts per call: the whole split's BatchEncoding (attention masks, token type
        # ids and a fast tokenizer's Encoding objects, all thrown away) took ~9 KB a row, 2.4 GB at 200k rows
        ids: list[list[int]] = []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            ids += tokenizer(texts[start:start + TOKENIZE_CHUNK], truncation=True, max_length=max_length,
                             add_special_tokens=True, return_attention_mask=False,
                             return_token_type_ids=False)["input_ids"]
        _TOKENIZED[key] = ids
        while len(_TOKENIZED) > 16:
            _TOKENIZED.popitem(last=False)
    _TOKENIZED.move_to_end(key)
    return _TOKENIZED[key]


def encode(tokenizer, split: Split, space: LabelSpace, max_length: int) -> Encoded:
    ids = tokenize(tokenizer, list(split.texts), max_length)
    index = space.index
    unseen = np.array([any(lab not in index for lab in labs) for labs in split.labels], dtype=bool)
    if space.multi_label:
        targets = np.zeros((len(split), len(space)), dtype=np.float32)
        for i, labs in enumerate(split.labels):
            for lab in labs:
                if lab in index:
                    targets[i, index[lab]] = 1.0
    else:
        targets = np.array([index.get(labs[0], -100) for labs in split.labels], dtype=np.int64)
    counts = np.array([len(labs) for labs in split.labels], dtype=np.int64)
    return Encoded(ids, targets, unseen, label_counts=counts, max_length=max_length)


def subset(enc: Encoded, rows) -> Encoded:
    """Rows of an encoded split (ids, targets, unseen), without tokenizing again."""
    rows = np.asarray(rows, dtype=np.int64)
    counts = enc.label_counts[rows] if enc.label_counts is not None else None
    return Encoded([enc.ids[i] for i in rows], enc.targets[rows], enc.unseen[rows], label_counts=counts,
                   max_length=enc.max_length)


def batch_order(lengths: np.ndarray, batch_size: int, rng: random.Random, grouped: bool) -> list[list[int]]:
    """One epoch of batches. Grouped: shuffle, cut into chunks of 50 batches, sort each chunk by
    length, cut into batches and shuffle the order of the full batches (like HF's LengthGroupedSampler), so
    batches hold texts of similar length (little padding) while training stays randomised. The short remainder
    batch (rows not a multiple of batch_size) stays last either way, as HF's DataLoader deals it and as
    steps.examples_for counts a run's examples: shuffled in, it landed early, and a run ending inside an epoch saw
    fewer rows than its plan said."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if grouped:
        chunk = batch_size * 50
        idx = [i for c in range(0, len(idx), chunk)
               for i in sorted(idx[c:c + chunk], key=lambda j: -lengths[j])]
    batches = [idx[b:b + batch_size] for b in range(0, len(idx), batch_size)]
    if grouped:
        full = batches[:len(idx) // batch_size]
        rng.shuffle(full)
        batches = full + batches[len(full):]
    return batches


# Scoring pads each text to its own padded length, never to its batch's longest: under bf16 autocast a text's logits
# move with the padded length (the masked columns still change the rounding of attention and layer sums: padding
# one batch from 10 to 23 columns moved logits by 0.01 and flipped 2 of 1,500 predicted labels), so a text's label
# would depend on the other texts scored beside it. Its length is rounded up to a multiple of EVAL_PAD_BUCKET, and
# only texts of one padded length share a batch (eval_batches): a few padded columns per text instead of one
# length per text keep batches full (bf16's speed), and a multiple of 8 suits tensor cores.
EVAL_PAD_BUCKET = 8


def scoring_layout(max_length: int | None) -> str:
    """How scoring pads a row, as the frozen-prefix cache's key names it (its states are computed this way): every
    input of padded_length but the row's own length, the bucket and the truncation length, which caps the padded width
    (max_length 12 pads a 9-token text to 12 columns, 64 to 16, the same token ids either way)."""
    return f"padded_length/{EVAL_PAD_BUCKET}/max_length/{max_length}"


def padded_length(n: int, max_length: int | None = None, bucket: int = EVAL_PAD_BUCKET) -> int:
    """The columns a text of `n` tokens is scored in: `n` rounded up to `bucket`, never past the truncation length
    (so never past the model's positions)."""
    width = -(-max(1, int(n)) // bucket) * bucket
    return max(int(n), min(width, max_length)) if max_length else width


def collate(ids: list[list[int]], pad_id: int, device, length: int | None = None) -> dict[str, torch.Tensor]:
    """Pad to the longest text in the batch (dynamic padding), or to `length` (scoring: padded_length).
    Shapes: [batch, longest]."""
    longest = max(max(len(x) for x in ids), length or 0)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def forward_logits(model, enc: Encoded, rows, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits [batch, k] of `rows` of `enc`. With a frozen-prefix cache the model starts at its first
    trained block, fed the cached states of these rows (prefix_cache.py); otherwise a plain forward."""
    if enc.prefix is None:
        return model(**batch).logits
    with enc.prefix(rows, batch["input_ids"].shape[1], batch["input_ids"].device):
        return model(**batch).logits


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool,
            spec: LossSpec | None = None) -> torch.Tensor:
    """The run's loss (losses.py): cross-entropy, or for multi-label BCE / BCE with pos_weight / focal."""
    return compute_loss(logits, targets, spec or LossSpec("bce" if multi_label else "ce"))


def objective_key(cfg: RunConfig, multi_label: bool) -> str:
    """The validation key that picks the saved model (train.metric_for_best_model; auto: subset accuracy
    for multi-label data, macro-F1 for single-label). A metric the task does not compute is a UserError."""
    m = cfg.train.metric_for_best_model
    if m == "auto":
        m = "subset_accuracy" if multi_label else "macro_f1"
    single_only, multi_only = {"accuracy"}, {"subset_accuracy", "micro_f1", "samples_f1"}
    if (multi_label and m in single_only) or (not multi_label and m in multi_only):
        kind = "multi" if multi_label else "single"
        raise UserError(f"train.metric_for_best_model: {m} is not computed for {kind}-label data",
                        "use auto, macro_f1 or weighted_f1, or "
                        + ("subset_accuracy, micro_f1, samples_f1" if multi_label else "accuracy"))
    return f"val/{m}"


def base_decoding(cfg: RunConfig, dataset: Dataset, space: LabelSpace) -> Decoding:
    """The decoding rules learned from the training rows and the config (thresholds 0.5 until tuned):
    at least one label unless empty answers are allowed (allow_empty; null: only when training rows
    without a label exist), at most max_labels_per_row (null: the most any training row carries), the
    none label exclusive."""
    t = cfg.train
    counts = [len(labs) for labs in dataset.train.labels]
    none = cfg.data.none_label
    none_index = space.index.get(none) if none else None
    allow_empty = t.allow_empty if t.allow_empty is not None else (min(counts, default=1) == 0 and none_index is None)
    cap = t.max_labels_per_row if t.max_labels_per_row is not None else max(1, max(counts, default=1))
    return Decoding(np.full(len(space), 0.5), 0 if allow_empty else 1, int(cap), none_index)


# ----------------------------------------------------------------------------------------------
# evaluation


def eval_batches(lengths: np.ndarray, batch_size: int, max_length: int | None = None,
                 bucket: int | None = EVAL_PAD_BUCKET) -> list[np.ndarray]:
    """Row indices sorted longest first, cut into batches of at most `batch_size` rows and at most
    batch_size * 16 padded tokens: short texts go 256 to a batch, a few long ones don't blow up the
    activation memory (measured: 256 rows x 64 tokens added 650 MB of peak RSS on MiniLM). With `bucket` (scoring),
    a batch holds rows of one padded_length only, so each is padded to its own (collate(length=...));
    None: rows of any length share a batch (a caller that pads dynamically)."""
    order = np.argsort(-lengths, kind="stable")
    width = (lambda n: padded_length(n, max_length, bucket)) if bucket else (lambda n: max(1, int(n)))
    budget = batch_size * 16
    batches, start = [], 0
    while start < len(order):
        longest = width(lengths[order[start]])  # the first row of a batch is its longest
        end = min(len(order), start + max(1, min(batch_size, budget // longest)))
        if bucket:  # cut where the padded length changes
            end = start + int(np.searchsorted(-np.array([width(lengths[i]) for i in order[start:end]]), -longest,
                                              side="right"))
        batches.append(order[start:end])
        start = end
    return batches


def eval_collate(ids: list[list[int]], pad_id: int, device, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """A scoring batch (rows of one padded length, eval_batches) padded to that length: each text's own."""
    return collate(ids, pad_id, device, padded_length(max(len(x) for x in ids), max_length))


# Evaluation on a shared CPU: while other processes keep the cores busy, an all-core matmul waits for its slowest
# thread to get a core (an OpenMP region ends only when every thread has run), and one thread can be nearly twice as
# fast: a BANKING77 validation pass on MiniLM took 16.9 s on 2 threads and 9.3 s on 1, 2 cores shared with two tuning
# jobs (issue 17, round 4), with bit-identical logits. So a pass of at least EVAL_THREAD_PROBE_BATCHES batches times
# its second batch on one thread and its third on all of them (per padded token; the first warms up) and runs the
# rest on the faster (faster_on_one_thread); a shorter pass (the train subsample, probe sets) reuses the last choice.
EVAL_THREAD_PROBE_BATCHES = 4
_EVAL_ONE_THREAD = {"last": False}  # the last evaluation pass's choice, for the short passes after it
# ... off in `loratune train`: a thread count chosen by timing makes a run's logits depend on the machine's load (1 and
# 2 threads round differently on some models, up to ~5e-7: tests/integration/test_prefix_cache.py's distilbert), and
# two runs of one config must record the same numbers. predict_logits(pick_threads=True) keeps it for measuring.
EVAL_PICK_THREADS = False


def predict_logits(model, enc: Encoded, batch_size: int, pad_id: int, device, autocast: bool,
                   pick_threads: bool = False) -> np.ndarray:
    """Logits [n, k] in the split's order; batches are formed from length-sorted rows. Plain LoRA layers run
    merged (adapt.merged_for_eval). `pick_threads` (CPU, more than one thread): one thread or all of them,
    whichever is faster now (EVAL_THREAD_PROBE_BATCHES); False keeps torch's setting (train.num_threads given)."""
    from loratune.adapt import merged_for_eval

    was_training = model.training
    model.eval()
    batches = eval_batches(enc.lengths, batch_size, enc.max_length)
    threads = torch.get_num_threads()
    pick = pick_threads and device.type == "cpu" and threads > 1
    probe = {1: 1, 2: threads} if pick and len(batches) >= EVAL_THREAD_PROBE_BATCHES else {}  # batch -> threads
    per_token: dict[int, float] = {}
    out = None
    try:
        if pick and not probe and _EVAL_ONE_THREAD["last"]:
            torch.set_num_threads(1)
        with merged_for_eval(model), torch.inference_mode():
            for i, rows in enumerate(batches):
                if i in probe:
                    torch.set_num_threads(probe[i])
                t = time.perf_counter()
                batch = eval_collate([enc.ids[j] for j in rows], pad_id, device, enc.max_length)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = forward_logits(model, enc, rows, batch).float().cpu().numpy()
                if i in probe:
                    per_token[probe[i]] = (time.perf_counter() - t) / batch["input_ids"].numel()
                    if len(per_token) == 2:
                        _EVAL_ONE_THREAD["last"] = faster_on_one_thread(per_token[threads], per_token[1])
                        torch.set_num_threads(1 if _EVAL_ONE_THREAD["last"] else threads)
                if out is None:
                    out = np.empty((len(enc.ids), logits.shape[1]), dtype=np.float32)
                out[rows] = logits
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def score_split(prefix: str, logits: np.ndarray, enc: Encoded, space: LabelSpace, spec: LossSpec | None = None,
                decoding: Decoding | None = None) -> tuple[dict, np.ndarray | None]:
    """Loss and metrics of one split from its logits. Rows with unknown labels: errors, no loss.
    Multi-label: the label sets come from `decoding` (thresholds, at least one, cap, none label); without
    one, every label at 0.5."""
    t = torch.from_numpy(logits)
    if space.multi_label:
        loss = float(loss_fn(t, torch.from_numpy(enc.targets), True, spec))
        pred = decode(sigmoid(logits), decoding) if decoding is not None else None
        return multi_label_scores(prefix, logits, enc.targets.astype(int), space.labels, enc.unseen, loss,
                                  pred=pred, label_counts=enc.label_counts), None
    known = enc.targets >= 0
    loss = float(loss_fn(t[known], torch.from_numpy(enc.targets[known]), False, spec)) if known.any() else math.nan
    y_true = np.where(known, enc.targets, -1)
    return single_label_scores(prefix, logits, y_true, space.labels, loss)


# ----------------------------------------------------------------------------------------------
# optimizer and schedule


def build_optimizer(model, cfg: RunConfig, steps: int, device):
    """AdamW; no weight decay on biases and norms. Warmup then linear/cosine decay (or constant).
    `head_learning_rate` gives the classification head (heads.head_modules) its own peak lr, on the
    same schedule; `optimizer: loraplus` gives the LoRA B matrices learning_rate x loraplus_lr_ratio."""
    from transformers import get_scheduler

    from loratune.precision import under

    heads = head_modules(model)
    head_lr = cfg.train.head_learning_rate
    buckets: dict[tuple[bool, bool], list] = {(d, h): [] for d in (True, False) for h in (False, True)}
    b_side: list = []  # LoRA+: the B matrices, at learning_rate x loraplus_lr_ratio
    loraplus = cfg.train.optimizer == "loraplus"
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        if loraplus and ("lora_B" in parts or "lora_embedding_B" in parts):
            b_side.append(p)
            continue
        is_head = head_lr is not None and under(name, heads)
        buckets[(not (p.ndim < 2 or "norm" in name.lower()), is_head)].append(p)
    groups = [{"params": params, "weight_decay": cfg.train.weight_decay if decay else 0.0,
               **({"lr": head_lr} if is_head else {})}
              for (decay, is_head), params in buckets.items() if params or not is_head]
    if b_side:  # LoRA+ (Hayou et al. 2024), as peft.optimizers.create_loraplus_optimizer groups lora_B; unlike
        # it, 1-d weights (the fresh head's bias, norms, DoRA magnitudes) keep the base lr and weight decay rule
        groups.append({"params": b_side, "weight_decay": cfg.train.weight_decay,
                       "lr": cfg.train.learning_rate * cfg.train.loraplus_lr_ratio})
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(groups, lr=cfg.train.learning_rate, fused=fused)
    name = {"constant": "constant_with_warmup"}.get(cfg.train.lr_scheduler_type, cfg.train.lr_scheduler_type)
    warmup = int(math.ceil(cfg.train.warmup_ratio * steps))
    return opt, get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=steps)


# One trained example costs about 3 forward passes (forward, then backward through activations and
# weights); an evaluated row costs one. Used to weigh evaluation against training (max_eval_share).
TRAIN_FORWARDS_PER_EXAMPLE = 3

# What the evaluation point at step 0 (before any update) scores: validation only. The train subsample at
# step 0 would measure the same untrained model (base + fresh head) on rows of the same distribution, so its
# numbers duplicate validation's; what reads `train_eval/*` (the train/val gaps of features.py, the report's
# train curves and per-class train recall, tune's trial results) reads trained points. Issue 17: 512 of the
# 1,515 rows of a BANKING77 step-0 point. run.json `evaluation.step0` records it.
STEP0_SPLITS = ("val",)


def eval_rows_per_point(n_val: int, n_train_eval: int) -> tuple[int, int]:
    """(rows scored at step 0, rows scored at every later point), as the loop scores them (STEP0_SPLITS)."""
    rows = {"val": n_val, "train_eval": n_train_eval}
    return sum(rows[s] for s in STEP0_SPLITS), n_val + n_train_eval


def steps_per_epoch(cfg: RunConfig, n_train: int) -> int:
    """Optimizer steps in one pass over `n_train` rows (steps.steps_per_epoch: an epoch ends with an optimizer step
    on its remainder, as the HF Trainer's, so a step never borrows batches of the next epoch; step_groups)."""
    t = cfg.train
    return _steps.steps_per_epoch(n_train, t.per_device_train_batch_size, t.gradient_accumulation_steps)


def examples_planned(cfg: RunConfig, n_train: int, steps: int) -> int:
    """Training rows `steps` optimizer steps process, as step_groups deals them (steps.examples_for)."""
    t = cfg.train
    return _steps.examples_for(n_train, t.per_device_train_batch_size, t.gradient_accumulation_steps, steps)


def step_groups(epoch_batches, per_step: int):
    """Each optimizer step's micro-batches, endlessly: the batches of every epoch (a fresh `epoch_batches()`, so
    reshuffled) in groups of `per_step`, the epoch's last group the remainder (steps_per_epoch)."""
    while True:
        batches = epoch_batches()
        for i in range(0, len(batches), per_step):
            yield batches[i:i + per_step]


def eval_budget_rows(cfg: RunConfig, steps: int, n_train: int) -> int | None:
    """Rows evaluation may score over the whole run under max_eval_share (in forward passes: the share of
    the training work, the rows `steps` steps over `n_train` rows really process: examples_planned); None when
    there is no cap (eval_steps given, or max_eval_share 0)."""
    t = cfg.train
    if t.eval_steps or t.max_eval_share <= 0:
        return None
    return int(t.max_eval_share * TRAIN_FORWARDS_PER_EXAMPLE * examples_planned(cfg, n_train, steps))


def plan_steps(cfg: RunConfig, n_train: int, eval_rows: int | None = None,
               step0_rows: int | None = None) -> tuple[int, int]:
    """(optimizer steps, eval every N steps). With `eval_rows` (rows scored at one evaluation point after
    step 0: validation + the train subsample; `step0_rows` at step 0, default the same) and eval_steps null,
    the points after step 0 are capped so that all points together score at most eval_budget_rows: a short
    run evaluates fewer times, never fewer than once at the end."""
    t = cfg.train
    steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(steps_per_epoch(cfg, n_train) * t.num_train_epochs))
    evals = t.evals_per_run
    budget = eval_budget_rows(cfg, steps, n_train)
    if budget is not None and eval_rows:
        first = eval_rows if step0_rows is None else step0_rows
        evals = max(1, min(evals, (budget - first) // eval_rows))
    # at most `evals` points after step 0: every multiple of `every` below `steps`, and the end (steps // evals left
    # up to twice as many, past the evaluation budget the points were counted against)
    every = t.eval_steps or max(1, math.ceil(steps / evals))
    return steps, every


# The fewest optimizer steps a train-only history point averages: the mean loss of fewer is mostly the noise of
# its batches, which the diagnosis would read as the curve's own rises and falls (TRL logs every 10 steps).
TRAIN_LOG_MIN_STEPS = 5


def train_log_every(cfg: RunConfig, steps: int, eval_every: int) -> int | None:
    """Steps a train-only history point averages (the train-loss window since the last line, no evaluation):
    when eval_steps is null and max_eval_share left fewer evaluation points than evals_per_run, the train loss
    is still logged about evals_per_run times (windows of TRAIN_LOG_MIN_STEPS or more), so its trend stays
    readable (diagnose reads such a point as a Trainer's train log). None when evaluation is that dense already
    (two such windows do not fit between two evaluations), or its schedule was given."""
    t = cfg.train
    every = max(TRAIN_LOG_MIN_STEPS, steps // t.evals_per_run)
    return every if not t.eval_steps and 2 * every <= eval_every else None


def loss_points_every(cfg: RunConfig, steps: int, eval_every: int, rows_left: int | None,
                      loss_point_rows: int) -> int | None:
    """Steps between val-loss-only evaluation points, for a run whose full points are dear (a causal LM's
    generation): when eval_steps is null and max_eval_share left fewer full points than evals_per_run, the val
    loss alone is scored about evals_per_run times over the run (every TRAIN_LOG_MIN_STEPS steps or more), as
    often as the `rows_left` of the budget (after step 0 and the full points) pays for at `loss_point_rows` each.
    Such a point has the curve the diagnosis reads and a model the run may keep; generation stays at the full
    points. None when no such point fits between two full points."""
    t = cfg.train
    if t.eval_steps or rows_left is None or loss_point_rows <= 0:
        return None
    every = max(TRAIN_LOG_MIN_STEPS, steps // t.evals_per_run)
    while 2 * every <= eval_every:
        extra = sum(1 for s in range(every, steps, every) if s % eval_every)  # full points score the loss already
        if extra * loss_point_rows <= rows_left:
            return every
        every += max(1, every // 4)
    return None


def history_point(step: int, examples_seen: int, n_train: int, t0: float, window: dict[str, list[float]]) -> dict:
    """A history point's head (step, epoch, examples seen, wall seconds, lr) and the train/* keys of the steps
    since the last point (window_scores); the window is emptied. An evaluation adds its splits' keys. `lr`: the
    rate the point's step used (window["lr"]'s last, taken before its scheduler update; 0 at step 0), as the HF
    Trainer logs `learning_rate` since store.TRAINER_LR_CLOCK_SINCE (older ones logged the next step's rate, as
    records here did: store.trainer_logs_next_lr); records before store.RECORD_VERSION 2 logged the rate after the
    update, the next step's (history_io.read_loratune_run reads them as such); `lr_max`: the largest rate the
    window's steps used, since under a warmup or decay the last step's rate understates the window's and a short
    run's peak lr (features.peak_lr) would read low."""
    point = {"step": step, "epoch": examples_seen / max(1, n_train), "examples_seen": examples_seen,
             "wall_s": round(time.perf_counter() - t0, 3), "lr": window["lr"][-1] if window.get("lr") else 0.0}
    if window.get("lr"):
        point["lr_max"] = max(window["lr"])
    point.update(window_scores(window))
    for key in window:
        window[key].clear()
    return point


def robustness_skip(budget: int | None, rows_scored: int, probe_rows: int) -> str | None:
    """Why the robustness probe does not run (None: it runs). Its predictions are charged to the evaluation
    budget: under max_eval_share, a probe that would take evaluation past the budget is skipped."""
    if budget is None or rows_scored + probe_rows <= budget:
        return None
    return (f"max_eval_share: evaluation scored {rows_scored} rows of its {budget}-row budget; the probe's "
            f"{probe_rows} predictions would take it to {rows_scored + probe_rows} (a longer run, eval_steps "
            "or max_eval_share=0 runs it)")


@contextlib.contextmanager
def timed(timing: dict[str, float], phase: str):
    """Add the wall seconds of the block to timing[phase] (run.json `timing_s`)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        timing[phase] = round(timing.get(phase, 0.0) + time.perf_counter() - t, 3)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 quota (containers), so
    torch neither oversubscribes a limited container nor idles allowed cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max", encoding="utf-8").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


# One thread is taken over all of the cores only when it is this much faster (time ratio): on an idle machine the
# cores win by ~1.5-2x and timing noise must not flip that (used for evaluation here and frozen embeddings).
ONE_THREAD_MAX_RATIO = 0.8


def faster_on_one_thread(seconds_all: float, seconds_one: float) -> bool:
    """Whether one thread beats all the cores on the same work (ONE_THREAD_MAX_RATIO)."""
    return seconds_one < ONE_THREAD_MAX_RATIO * seconds_all


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def versions() -> dict[str, str]:
    import peft
    import transformers

    return {"loratune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# A loss this many times the loss of step 1 (the initialised model, before any update), averaged over
# an evaluation window, has exploded: with a fresh head the start is about ln(classes), and a model
# that learns never goes back above it. lr=1.0 with no clipping measured 96x; healthy runs stay < 1x.
DIVERGENCE_FACTOR = 4.0
# A warm start (train.init_from) begins at its saved model's loss, far below a fresh start's: a fresh optimizer's
# first steps can lift it several times over without undoing the training (bench/results/tuning_notes.md: warm
# starts at x1 lr stopped as "train loss 9x its start" from a step-1 loss near 0.01, a restart bump; a warm start at
# lr 0.05 went 0.0158 -> 2.53 -> 0.79 and ended with val macro-F1 0.56 -> 0.61). So a warm start has diverged only
# when the window is ALSO above this many times the un-adapted model's loss (`fresh_loss`: the adapter and its saved
# head switched off, about ln C, the uniform guess the diagnosis measures against). It is the diagnosis' own multiple
# (rules threshold diverged_chance_ratio: a train loss ending at it has blown up), so the guard stays inside the
# diagnosis' `diverged` rule: it stops a warm start only where `diagnose` would call the run diverged had it ended
# there, and a bump the run recovers from (lr-too-large at worst) runs on. This is the default: a run judged by other
# thresholds (a tune trial's --thresholds, recorded in its run.json) stops at its own ratio (warm_fresh_factor).
WARM_FRESH_FACTOR = THRESHOLDS["diverged_chance_ratio"].value
# the guard's rule in words, for the messages that must agree with it (`train`'s verdict line; README, run-record.md)
DIVERGENCE_RULE = (f"a non-finite loss, or an evaluation window's mean train loss above {DIVERGENCE_FACTOR:g}x the "
                   f"loss of step 1 (a warm start: and above {WARM_FRESH_FACTOR:g}x the un-adapted model's loss, "
                   f"diagnose's diverged_chance_ratio)")


def warm_fresh_factor(judged_by: Mapping[str, Any] | None) -> float:
    """The un-adapted multiple a warm start's guard stops at: diverged_chance_ratio as the run is judged by, i.e. its
    record's threshold overrides (`judged_by`: run.json's rules.RUN_THRESHOLDS_KEY, a tune trial's --thresholds, as
    RunStore.record_extra carries them), else WARM_FRESH_FACTOR, so the guard and `diagnose` read one value."""
    value = (judged_by or {}).get("diverged_chance_ratio")
    return float(value) if finite_number(value) else WARM_FRESH_FACTOR


def run_fresh_factor(store) -> float:
    """warm_fresh_factor for the run `store` writes: the thresholds its record says it is judged by."""
    return warm_fresh_factor(getattr(store, "record_extra", {}).get(RUN_THRESHOLDS_KEY))


def divergence_bar(start_loss: float | None, fresh: float | None = None,
                   fresh_factor: float = WARM_FRESH_FACTOR) -> float | None:
    """The window mean train loss past which a run has diverged (None: no ratio check, only a non-finite loss counts).
    `start_loss`: the loss of step 1; `fresh`: a warm start's un-adapted loss (`fresh_loss`; NaN: a warm start with no
    reference, e.g. a full fine-tune's; None: a fresh start). DIVERGENCE_FACTOR x step 1, and for a warm start at least
    `fresh_factor` (warm_fresh_factor: the run's diverged_chance_ratio) x the un-adapted model's loss (that alone where
    step 1's loss is 0: a saved model that fits its batch exactly)."""
    if start_loss is None or not math.isfinite(start_loss) or start_loss < 0:
        return None
    if fresh is None:
        return DIVERGENCE_FACTOR * start_loss if start_loss > 0 else None
    if not math.isfinite(fresh):
        return None
    return max(DIVERGENCE_FACTOR * start_loss, fresh_factor * fresh)


def diverged(window_loss: float, start_loss: float | None, clipped: bool = False,
             fresh: float | None = None, fresh_factor: float = WARM_FRESH_FACTOR) -> str | None:
    """Why the run has diverged (None: it has not): a non-finite loss, or a window mean past `divergence_bar`
    (DIVERGENCE_FACTOR times the loss of step 1; a warm start's, `fresh` its un-adapted model's loss, also past
    `fresh_factor` times that). `clipped`: gradients were already clipped (max_grad_norm > 0), so the advice is
    the learning rate alone."""
    if not math.isfinite(window_loss):
        return "non-finite loss"
    bar = divergence_bar(start_loss, fresh, fresh_factor)
    if bar is not None and window_loss > bar:
        warm = (f" and {window_loss / fresh:.1f}x the un-adapted model's loss ({fresh:.3g})"
                if fresh is not None and fresh > 0 else "")
        rise = (f"{window_loss / start_loss:.0f}x its start ({start_loss:.3g})" if start_loss > 0
                else f"from a start of {start_loss:.3g}")
        return (f"train loss exploded: {window_loss:.3g} over the last window, {rise}{warm}; lower "
                "learning_rate (/10)" + ("" if clipped else " or set max_grad_norm (e.g. 1.0)"))
    return None


def fresh_loss(model, loss_of) -> float | None:
    """The un-adapted model's loss, a warm-started run's (train.init_from) second divergence reference
    (WARM_FRESH_FACTOR): its step-1 loss is the saved model's, far below a fresh start's, so DIVERGENCE_FACTOR x it
    alone flags an ordinary restart bump. It is `loss_of()` (the step's last micro-batch) with the adapter, and the
    head saved with it, disabled: the un-adapted model a fresh run's step 1 measures (about ln C for a fresh head).
    None for a model without adapters (a full fine-tune's fresh weights are not at hand): only a non-finite loss
    then counts."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        return None
    with torch.no_grad(), disable():
        return float(loss_of())


def start_model(init_from: str | None) -> str:
    """The step-0 model as notes name it: a warm start (train.init_from) begins from a trained model, which a note
    calling it untrained would misreport."""
    return f"the starting model (init_from {init_from})" if init_from else "the untrained model"


def start_note(run: dict, objective: str, higher_is_better: bool, init_from: str | None) -> str:
    """saved_model.note's tail when the step-0 model (run["start"]) scored better on the objective than the kept
    trained one; empty otherwise."""
    best, start = (run.get("best") or {}).get(objective), (run.get("start") or {}).get(objective)
    if not (isinstance(best, float) and isinstance(start, float)
            and (start > best if higher_is_better else start < best)):
        return ""
    return f"; {start_model(init_from)} at step 0 scored better ({objective} {start:.4f} vs {best:.4f})"


def saved_note(step: int, words: str, lr0_steps: int, init_from: str | None = None,
               early_stopped: bool = False, last_eval: int | None = None) -> str:
    """run.json saved_model.note's head: adapter/ holds the model of `step`, the `words` (best val macro-F1...)
    among the trained evaluation points; unless every step up to it ran at learning rate 0 (`lr0_steps`: the
    run's first steps that moved no weight; a warmup starts at 0, as the HF Trainer's, so with warmup_ratio > 0
    step 1 does), when it is the step-0 model (start_model), and the note says why no trained point was kept:
    `early_stopped`: early stopping ended the run before a later trained point scored better; else `last_eval`
    (the run's last evaluated step; None: `step`) past the lr-0 steps: trained points were evaluated and none
    scored better (the run did not learn); else no evaluation point was a trained one (the run's length)."""
    if step <= lr0_steps:
        head = (f"adapter/ holds the model of step {step}, which is {start_model(init_from)}: every step up to it "
                "ran at learning rate 0 (the warmup starts at 0)")
        if early_stopped:
            return (head + ", and early stopping ended the run before a later, trained point scored better (a "
                    "larger early_stopping_patience, or warmup_ratio=0, trains it)")
        if (step if last_eval is None else last_eval) > lr0_steps:
            return (head + f", and no later, trained evaluation point (steps {lr0_steps + 1}-{last_eval}) scored "
                    "better than it: the run did not learn (`loratune diagnose` on the run says why)")
        return head + ", so no evaluation point was a trained one (a longer run, or warmup_ratio=0, trains it)"
    return f"adapter/ holds the model of step {step}, the {words} among the trained evaluation points"


def record_save_failure(run: dict, store, exc: BaseException, model_saved: bool = False) -> None:
    """Saving the model failed for a reason other than the output location: the record says so (status `failed`,
    the error, no saved model) before the error goes up, so it never reads `running` or `completed` over a missing
    model. `model_saved`: the model was written and what failed came after it (the final record): saved_model is
    kept as it was set, since adapter/ is complete. A best-so-far model saved before (save_best_so_far) is still in
    adapter/ (a save replaces it only once complete): the record keeps naming it. Best effort: a record that cannot
    be written either is left as it was."""
    before = run.get("reason")
    run["status"], run["partial"] = "failed", True
    what = "finishing the run failed after the model was saved" if model_saved else "saving the model failed"
    error = f"{type(exc).__name__}: {exc}"
    # (the same fault can end the loop first, then fail the end's save: said once)
    run["reason"] = f"{what}: {error}" + (f" (after: {before})" if before and before != error else "")
    held = (run.get("saved_model") or {}).get("step") if isinstance(run.get("saved_model"), dict) else None
    if not model_saved and held is not None:
        run["saved_model"] = {"step": held, "note": f"adapter/ holds the model of step {held}, the best saved while "
                              f"the run trained ({run['reason']})"}
        run["adapter_step"] = held
    elif not model_saved:
        run["saved_model"] = {"step": None, "note": "no model saved: " + run["reason"]}
    try:
        store.write_run(run)
    except Exception:
        pass


# what a write failing for lack of room leaves, as output_error's fix says it once the run has its record
KEPT_BEFORE = "what was written before (history.jsonl, the last run.json) is kept"


def output_error(exc: BaseException, out_dir, kept: str = KEPT_BEFORE) -> UserError | None:
    """The UserError for a write that failed because of the output location (disk full, read-only,
    a file where a directory should be); None for anything else. `kept`: what the fault left, said after a full
    disk's fix (empty: nothing to say)."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    kept = f"; {kept}" if kept else ""
    if disk_full(exc):
        return UserError(f"the disk holding output_dir '{out_dir}' is full (writing failed: {exc})",
                         f"free some space or give an output_dir on another disk{kept}")
    if code == errno.EFBIG or "File too large" in text:  # a file-size limit (ulimit -f) or the file system's
        return UserError(f"a file in output_dir '{out_dir}' reached the largest size allowed ({exc})",
                         f"raise the limit (ulimit -f unlimited) or give an output_dir on another file system{kept}")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "Read-only file system" in text \
            or "Permission denied" in text:
        return UserError(f"output_dir '{out_dir}' is not writable ({exc})",
                         "give a writable output_dir, or fix its permissions")
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return UserError(f"output_dir '{out_dir}' cannot be used: {exc}",
                         "give a directory path (it is created if missing)")
    return None


def start_record(store: RunStore, config_yaml: str, run: dict) -> None:
    """Take the run directory (RunStore.create: run.lock, the earlier run's outputs cleared, config.yaml) and write
    the run's first run.json as one step that Ctrl-C and SIGTERM wait for: one landing between the two left the
    earlier run's `completed` record over its removed model, run.lock behind, and "nothing was written" said. A signal
    held meanwhile takes effect once the record is this run's: it then says the run was interrupted before training
    (and that the earlier run is gone), and the lock is let go, all still shielded (a second signal landing between
    two shields left `running` over a dead process). A full or read-only disk here is a UserError (exit 2) that says
    what of an earlier run was removed, never that "the last run.json is kept": there is none of this run yet. What
    the run replaces (store.earlier_run_note) is said on stderr first, where the store asks for it (api.train)."""
    with signals.shielded():
        # said inside the shield: a Ctrl-C between the note and the clearing said "replaced", then "nothing written"
        replaced = earlier_run_note(store.path) if getattr(store, "say_replaced", False) else None
        if replaced:
            print(f"note: {replaced}", file=sys.stderr, flush=True)
        try:
            store.create(config_yaml)  # takes run.lock: from here a killed process reads as `died`
            store.write_run(run)
        except Exception as exc:
            # the error ends the start and says why; a signal held meanwhile would replace it with "stopped before
            # training started; nothing was written" over an earlier run already removed
            signals.take_held()
            if getattr(store, "_lock", None) is not None:  # (create wrote config.yaml: sft.NoRecord writes nothing)
                store.drop_unrecorded_config()
            store.close()
            user = output_error(exc, store.path, _removed_note(store)) if isinstance(exc, OSError) else None
            if user is not None:
                raise user from None
            raise
        stop = signals.take_held()
        if stop is None:
            return
        removed = _removed_note(store)
        run.update({"status": "interrupted", "reason": f"{signals.describe(stop)} before training started",
                    "partial": True, "ended_at": utc_now(),
                    "saved_model": {"step": None,
                                    "note": "no model saved: the run ended before training"
                                            + (f"; {removed}" if removed else "")}})
        try:
            store.write_run(run)
        finally:
            store.close()
    raise stop


def _removed_note(store: RunStore) -> str:
    """What of an earlier run RunStore.create removed, in a clause ("" for none)."""
    cleared = getattr(store, "cleared", ())  # (sft.NoRecord, the store of ranks above 0, clears nothing)
    return f"the earlier run in {store.path} was removed ({', '.join(cleared)})" if cleared else ""


# ----------------------------------------------------------------------------------------------
# the run


def window_scores(window: dict[str, list[float]]) -> dict[str, float]:
    """The train/* keys of a history point from the steps since the last evaluation (per-step losses, grad
    norms, examples, seconds and, for an LM, tokens); empty before the first step."""
    if not window["loss"]:
        return {}
    losses = np.array(window["loss"])
    seconds = max(1e-9, sum(window["time"]))
    out = {"train/loss": float(losses.mean()), "train/loss_std": float(losses.std()),
           "train/loss_first": float(losses[0]), "train/loss_last": float(losses[-1]),
           "train/grad_norm": float(np.mean(window["grad_norm"])),
           "train/examples_per_s": float(sum(window["n"]) / seconds)}
    if "tokens" in window:
        out["train/tokens_per_s"] = float(sum(window["tokens"]) / seconds)
    return out


PLAIN_PROGRESS_EVERY_S = 30.0  # off a terminal: a progress line at least this often (besides one per evaluation)


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class RunProgress:
    """Progress of a loop on stderr (silent when disabled, `-q`): on a terminal a rich bar showing step, loss and the
    last value of one val metric - the classifier loop's objective by its name (val macro-F1, val subset
    accuracy...), the SFT loop's val loss; none for a count alone (metric=None: predict --file's texts). Off a
    terminal (a file, a pipe, CI, TERM=dumb) rich's bar is never redrawn, so a run said nothing until it ended:
    there it writes plain lines instead (no carriage return, no escape code) - one at each evaluation and one at
    least every PLAIN_PROGRESS_EVERY_S seconds, with step/total, loss, the metric, elapsed time and time left."""

    def __init__(self, total: int, enabled: bool, *, title: str = "train", metric: str | None = "val macro-F1",
                 redirect_stdout: bool = True, redirect_stderr: bool = True):
        self.bar = None
        self.plain = False
        self.total, self.title, self.metric = total, title, metric
        self.step, self.loss, self.value = 0, None, None
        self.shown: tuple[int, bool] | None = None  # the step of the last plain line, and whether it had a time left
        if not enabled:
            return
        from loratune.listing import console

        out = console(stderr=True, highlight=True)
        self.start = self.last_line = time.monotonic()
        if not out.is_interactive:  # rich's rule for a live display: a terminal, not TERM=dumb
            self.plain = True
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn()]
        if metric is not None:
            columns += [TextColumn("loss {task.fields[loss]}"), TextColumn(metric + " {task.fields[metric]}")]
        self.bar = Progress(*columns, TimeRemainingColumn(), console=out, redirect_stdout=redirect_stdout,
                            redirect_stderr=redirect_stderr)
        self.task = self.bar.add_task(title, total=total, loss="-", metric="-")
        self.bar.start()

    def update(self, step: int, loss: float | None = None, metric: float | None = None, *,
               evaluated: bool = False) -> None:
        """The loop at `step`; `evaluated`: an evaluation point (a plain line for each)."""
        self.step = step
        if loss is not None:
            self.loss = loss
        if metric is not None:
            self.value = metric
        if self.bar is not None:
            fields = {k: f"{v:.4f}" for k, v in (("loss", loss), ("metric", metric)) if v is not None}
            self.bar.update(self.task, completed=step, **fields)
        elif self.plain and (evaluated or time.monotonic() - self.last_line >= PLAIN_PROGRESS_EVERY_S):
            self._line(final=False)

    def advance(self, n: int) -> None:
        self.update(self.step + n)

    def _line(self, final: bool) -> None:
        now = time.monotonic()
        self.last_line = now
        elapsed = now - self.start
        parts = [self.title, f"{self.step}/{self.total}"]
        if self.metric is not None:
            parts += [f"loss {'-' if self.loss is None else f'{self.loss:.4f}'}",
                      f"{self.metric} {'-' if self.value is None else f'{self.value:.4f}'}"]
        parts.append(f"elapsed {_clock(elapsed)}")
        eta = not final and 0 < self.step < self.total
        if eta:
            parts.append(f"left {_clock(elapsed / self.step * (self.total - self.step))}")
        self.shown = (self.step, eta)
        sys.stderr.write("  ".join(parts) + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """The last step reached and the time taken, no time left (a run that ended early left its bar at 8/60
        with the remaining time of the steps it never ran)."""
        if self.bar is not None:
            from rich.progress import TimeElapsedColumn

            self.bar.columns = (*self.bar.columns[:-1], TimeElapsedColumn())
            self.bar.update(self.task, completed=self.step)
            self.bar.stop()
        elif self.plain and self.shown != (self.step, False):
            self._line(final=True)


def say_phase(enabled: bool, text: str) -> None:
    """One line on stderr as a phase before the first step starts (silent when progress is off, `-q`): tokenizing and
    the evaluation slices of a large dataset took a minute with nothing said."""
    if enabled:
        from loratune.listing import console

        console(stderr=True).print(f"[dim]{text}[/]")


class TrainCallback(Protocol):
    """What a caller (`loratune tune`) gets to see of a running loop, and how it stops it: the shape of
    Optuna's `trial.report` / `trial.should_prune`. Each hook returns None to go on, or the reason to stop;
    a stop ends the run like an interrupted one (status `interrupted` with that reason, the best trained
    weights saved)."""

    def on_step(self, step: int, examples_seen: int) -> str | None:
        """After every optimizer step (a wall-time deadline is checked here, between evaluations)."""

    def on_eval(self, point: dict, run: dict) -> str | None:
        """After every evaluation point (step 0 included), once it is in the record; a causal-lm run's
        val-loss-only points between its full ones (loss_points_every) are not reported here."""


@contextlib.contextmanager
def torch_threads(n: int | None = None):
    """torch's thread count set to `n` (None: left as it is) inside the block, and back to what it was after it: a
    Python caller's own torch.set_num_threads outlives a run (api.train left every core set) or an embedding."""
    before = torch.get_num_threads()
    try:
        if n:
            torch.set_num_threads(n)
        yield
    finally:
        torch.set_num_threads(before)


def train(cfg: RunConfig, dataset: Dataset, store: RunStore, *, progress: bool = True,
          callback: TrainCallback | None = None) -> dict:
    """Train one run and write its record into `store`. Returns the final run.json content. `callback`:
    see TrainCallback. The caller's thread count and random generators are as they were after it."""
    with torch_threads(), rng_kept():  # the thread count and the seeds the run sets end with it
        return _train(cfg, dataset, store, progress=progress, callback=callback)


def _train(cfg: RunConfig, dataset: Dataset, store: RunStore, *, progress: bool,
           callback: TrainCallback | None) -> dict:
    from loratune.data import check_trainable

    check_trainable(dataset)  # empty texts, an empty validation split: a UserError before any model loads
    require_trackers(cfg.train.report_to)  # a missing tensorboard / mlflow package, said before training
    t_setup = time.perf_counter()
    timing: dict[str, float] = {}  # wall seconds per phase (run.json timing_s)
    torch.set_num_threads(cfg.train.num_threads or cpu_cores())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 autocast only where the hardware has it (precision.py; auto), head and loss in float32
    precision = precision_mod.detect(cfg.train.precision, device.type)
    autocast = precision.autocast
    space = dataset.label_space
    objective = objective_key(cfg, space.multi_label)  # a metric the task lacks: said before any model loads
    seed_everything(cfg.train.seed)

    with timed(timing, "load_model"):
        tokenizer = load_tokenizer(cfg.model)
        # loaded in float32 whatever the checkpoint's dtype: a fresh head drawn in bf16 (a bf16 load) would start
        # elsewhere than a float32 load's; the frozen weights are cast to bf16 below, before the model moves
        base = load_classifier(cfg.model, len(space), space.multi_label, dict(enumerate(space.labels)),
                               tokenizer.pad_token_id)
        model, sites = apply_adapter(base, cfg.adapter)
        warm = warm_start(model, cfg, list(space.labels)) if cfg.train.init_from else None
    inputs_as_is, frozen_bf16 = 0, 0
    if autocast:
        precision_mod.head_in_fp32(model, head_modules(model), device.type)
        inputs_as_is = precision_mod.adapter_inputs_as_is(model)  # a bf16 input is not copied to fp32 and back
        # the frozen weights held in bf16 before the model moves to the device (which then holds them in bf16 only;
        # a LoRA layer's float32 original stays on the host for evaluation's merge, precision.full_weight); the
        # frozen-prefix cache below hashes them so (a weight's dtype is in its key) and computes its states under
        # autocast (prefix_cache.Splice.capture), as with float32 weights
        frozen_bf16 = precision_mod.frozen_weights_in_bf16(model, head_modules(model))
    model.to(device)
    model.train()
    dropout = kernels.dropout_record(kernels.uniform_dropout(model, device.type),  # CPU: masks from random 16-bit lanes
                                     kernels.lane_attention(model, device.type))
    pooled = pooled_block.attach(model, cfg.train.pooled_last_block)  # a first-token head: its last block there only
    params = count_params(model, sites, cfg.adapter.method)
    pad_id = tokenizer.pad_token_id

    say_phase(progress, f"tokenizing {len(dataset.train):,} training and {len(dataset.validation):,} validation texts"
                        f" (max_length {cfg.model.max_length})")
    with timed(timing, "tokenize"):
        train_enc = encode(tokenizer, dataset.train, space, cfg.model.max_length)
        sub = stratified_subset(dataset.train, cfg.train.train_eval_size, cfg.train.seed)
        train_eval_enc = subset(train_enc, sub)  # rows of train: tokenized once
        val_enc = encode(tokenizer, dataset.validation, space, cfg.model.max_length)
    # Frozen-prefix cache: when only the top blocks train, their input states are computed once (or
    # found from an earlier trial) and every forward below starts there (prefix_cache.py).
    with timed(timing, "prefix_cache"):
        prefix_note = prefix_cache.attach(model, cfg.train.prefix_cache, cfg.adapter.method,
                                          [train_enc, train_eval_enc, val_enc],
                                          lambda ids: eval_collate(ids, pad_id, device, cfg.model.max_length),
                                          lambda lengths: eval_batches(lengths, cfg.train.per_device_eval_batch_size,
                                                                       cfg.model.max_length),
                                          autocast, layout=scoring_layout(cfg.model.max_length),
                                          scoring=[train_eval_enc, val_enc])  # recorded scores: exact states
    if cfg.train.slices:  # each validation text compared with the training texts (eval_extras.assign_slices)
        say_phase(progress, f"finding the evaluation slices of {len(dataset.validation):,} validation texts "
                            f"({len(dataset.train):,} training texts)")
    with timed(timing, "extras"):
        extras = EvalExtras.build(cfg, dataset, val_enc.targets, val_enc.lengths, val_enc.unseen)
    spec = loss_spec(cfg.train.multi_label_loss, space.multi_label, train_enc.targets, cfg.train.focal_gamma)
    decoding = base_decoding(cfg, dataset, space) if space.multi_label else None
    tuned = {"now": None}  # thresholds tuned at the last eval point (the saved model's: BestModel.decoding)

    pick_threads = EVAL_PICK_THREADS and cfg.train.num_threads is None  # one thread or all (a given count stays)

    def predict_texts(texts: list[str]) -> np.ndarray:  # for probe sets and perturbed texts
        split = Split("extra", tuple(texts), tuple((space.labels[0],) for _ in texts), "extra")
        return predict_logits(model, encode(tokenizer, split, space, cfg.model.max_length),
                              cfg.train.per_device_eval_batch_size, pad_id, device, autocast, pick_threads)

    step0_rows, point_rows = eval_rows_per_point(len(val_enc.ids), len(train_eval_enc.ids))
    steps, eval_every = plan_steps(cfg, len(dataset.train), point_rows, step0_rows)
    log_every = train_log_every(cfg, steps, eval_every)
    optimizer, scheduler = build_optimizer(model, cfg, steps, device)
    accum = cfg.train.gradient_accumulation_steps
    rng = random.Random(cfg.train.seed)
    lengths = train_enc.lengths

    def epoch_batches():  # one epoch's batches, reshuffled each epoch
        return batch_order(lengths, cfg.train.per_device_train_batch_size, rng, cfg.train.length_grouped_batches)

    run = {
        "status": "running", "reason": None,
        "task": "multi_label" if space.multi_label else "single_label",
        "labels": list(space.labels),
        **label_count_record(dataset),
        # single-label data: the multi-label knobs it set are said to be unused, not silently ignored
        # (a probe label that names no class: noted by api.prepare, and here for a dataset read otherwise, tune's)
        "data_notes": list(dataset.notes) + [n for n in [None if space.multi_label else single_label_note(cfg),
                                                         extras.probe and probe_label_note(extras.probe, space.labels)]
                                             if n and n not in dataset.notes],
        VALIDATED_ON: validated_on(dataset.validation),  # evaluate and tune --resume check they re-read this split
        **data_seed_record(dataset, cfg.train.seed),
        "model": {"name_or_path": cfg.model.name_or_path, "model_type": base.config.model_type,
                  "num_layers": num_layers(base), "depth": depth(base), "adapted_modules": len(sites),
                  "pad_token_id": base.config.pad_token_id, "pad_note": getattr(base, PAD_NOTE_ATTR, None),
                  "head_note": getattr(base, HEAD_NOTE_ATTR, None), "layers_note": shared_blocks_note(base)},
        "method": cfg.adapter.method,
        "params": params.to_dict(),
        "rows": {"train": len(dataset.train), "train_eval": len(sub), "val": len(dataset.validation)},
        "steps_planned": steps, "eval_every": eval_every, "steps_done": 0, "examples_seen": 0,
        "started_at": utc_now(), "ended_at": None, "wall_s": 0.0, "setup_s": 0.0,
        "examples_per_s": None, "mean_step_s": None, "peak_memory_mb": None,
        "best": None, "final": None, "adapter_step": None, "saved_model": None, "device": str(device),
        "precision": precision_mod.record(precision, inputs_as_is, frozen_bf16), "dropout": dropout, "timing_s": timing,
        "pid": os.getpid(),
        "prefix_cache": prefix_note, "pooled_last_block": pooled, "threads": torch.get_num_threads(),
        "openmp": dict(openmp.CHOICE),
        "init_from": warm,
        # what evaluation scores (rows; the probe set's rows come on top), and the max_eval_share budget
        "evaluation": {"step0": list(STEP0_SPLITS), "rows_step0": step0_rows, "rows_per_point": point_rows,
                       "budget_rows": eval_budget_rows(cfg, steps, len(dataset.train)),
                       "rows_scored": 0},
        "objective": objective, "loss": spec.to_dict(),
        "decoding": _decoding_record(decoding, None, None, space.labels),
        "config": to_dict(cfg), "versions": versions(), "record_version": RECORD_VERSION,
    }
    start_record(store, to_yaml(cfg), run)
    tracking = Trackers.open(cfg.train.report_to, store.path, to_dict(cfg), to_yaml(cfg))  # report_to

    bar = RunProgress(steps, progress, metric=_metric_name(objective))  # the objective, by its name
    best, stopping = None, Patience(cfg.train.early_stopping_threshold)  # best: the best trained model so far
    trained_key, start_loss = NOTHING_KEPT, None  # the best keep_order after step 0; the loss of step 1
    start_fresh = None  # a warm start's un-adapted model's loss at step 1 (divergence_bar; NaN: none to measure)
    examples_seen, step, step_times = 0, 0, []
    lr0_steps = 0  # the first steps, run at learning rate 0 (a warmup's first), that moved no weight (saved_note)
    early_stopped = False  # early stopping ended the run (saved_note)
    window: dict[str, list[float]] = {"loss": [], "grad_norm": [], "n": [], "time": [], "lr": []}
    t0 = time.perf_counter()
    run["setup_s"] = round(t0 - t_setup, 3)

    def evaluate_now() -> bool:
        """Score val and (after step 0: STEP0_SPLITS) the train subsample, append a history point. True when
        early stopping says stop."""
        nonlocal best, trained_key
        point = history_point(step, examples_seen, len(dataset.train), t0, window)
        val_logits = predict_logits(model, val_enc, cfg.train.per_device_eval_batch_size, pad_id, device, autocast,
                                    pick_threads)
        val_dec = te_dec = decoding
        if decoding is not None and cfg.train.threshold_tuning:
            # thresholds tuned on all of val go with the model (and score train_eval); val itself is scored
            # with thresholds tuned on its other half (cross-fitted), so its numbers stay honest
            probs, y_val = sigmoid(val_logits), val_enc.targets.astype(int)
            tuned["now"] = tune_thresholds(probs, y_val)
            te_dec = decoding.with_thresholds(tuned["now"])
            val_dec = decoding.with_thresholds(crossfit_thresholds(probs, y_val, cfg.train.seed))
        scored = len(val_enc.ids)
        if step > 0 or "train_eval" in STEP0_SPLITS:
            te_scores, _ = score_split("train_eval", predict_logits(model, train_eval_enc,
                                                                    cfg.train.per_device_eval_batch_size, pad_id,
                                                                    device, autocast, pick_threads),
                                       train_eval_enc, space, spec, te_dec)
            point.update(te_scores)
            scored += len(train_eval_enc.ids)
        val_scores, cm = score_split("val", val_logits, val_enc, space, spec, val_dec)
        point.update(val_scores)
        val_pred = decode(sigmoid(val_logits), val_dec) if val_dec is not None else None
        point.update(extras.scores(step, val_logits, val_scores, predict_texts, val_pred, te_dec))
        run["evaluation"]["rows_scored"] += scored + (len(extras.probe.texts) if extras.probe is not None else 0)
        store.append_history(point)  # the one place an evaluation point is emitted
        tracking.log_point(point)
        run["final"] = point
        f1 = point.get(objective, math.nan)
        bar.update(step, point.get("train/loss"), f1, evaluated=True)
        # a tie: the lower val loss (multi-label), else the first; early stopping counts in the same order
        key = keep_order(point, objective, run["task"])
        evals_since_best = stopping.count(step, key)
        # the model kept is the best *trained* one (step 0 is the base with a random head, or the warm start's
        # model), and `best` is its point: what adapter/ holds, what tune compares; step 0 only until a trained point
        if step == 0:
            run["start"] = {"step": 0, objective: f1}
        if keeps(step, key, trained_key) and not _diverged_point(point):
            trained_key = key
            # saved as it comes (LoRA: a small file; full fine-tuning: the whole model, as the Trainer's
            # save-on-evaluate does), so a killed run keeps its best model
            best_decoding = (decoding.with_thresholds(tuned["now"]) if decoding is not None and
                             tuned["now"] is not None else decoding)
            # the record names the thresholds adapter/ now holds, from this save on: updated only at the run's end,
            # a killed or still-running run's run.json said 0.5 everywhere beside a model using tuned ones
            best = BestModel({n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                              if p.requires_grad}, step,
                             {"best": point, "decoding": _decoding_record(best_decoding, tuned["now"], step,
                                                                          space.labels)},
                             confusion_writer(store, space.labels, cm, step), best_decoding,
                             val_logits)  # the saved model's clean val predictions (robustness probe)
            save_best_so_far(run, store, best,
                             lambda: save_model(model, tokenizer, space, cfg, store, best_decoding, step))
        if run["best"] is None:  # step 0's point (or an untrained one) until a trained model is saved
            run["best"] = point
            if cm is not None:
                store.write_confusion(space.labels, cm, step)
        store.write_run(run)
        patience = cfg.train.early_stopping_patience
        return bool(patience and evals_since_best >= patience)

    def _diverged_point(point: dict) -> str | None:
        loss = point.get("train/loss")
        return (diverged(loss, start_loss, cfg.train.max_grad_norm > 0, start_fresh, run_fresh_factor(store))
                if loss is not None else None)

    try:
        with timed(timing, "evaluate"):
            evaluate_now()  # step 0: the base model with its fresh head
        groups = step_groups(epoch_batches, accum)
        stop_reason = f"planned steps done ({steps})"
        halt = callback.on_eval(run["final"], run) if callback is not None else None
        for step in range(1, steps + 1):
            if halt:  # the caller's callback asked to stop (after the previous step or evaluation)
                break
            t_step = time.perf_counter()
            step_loss, n_examples = 0.0, 0
            # accum micro-batches, fewer at an epoch's end (so often of unequal size): the step's loss is the mean
            # over all its rows, as one batch of them would give, so a micro-batch weighs by its rows (each loss
            # keeps its own reduction, a row mean: losses.reduce_rows), not 1 / count
            group = next(groups)
            step_rows = sum(len(rows) for rows in group)
            for rows in group:
                batch = collate([train_enc.ids[i] for i in rows], pad_id, device)
                target = torch.from_numpy(train_enc.targets[rows]).to(device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = forward_logits(model, train_enc, rows, batch)
                loss = loss_fn(logits.float(), target, space.multi_label, spec) * (len(rows) / step_rows)
                loss.backward()
                step_loss += float(loss.detach())
                n_examples += len(rows)
            if not math.isfinite(step_loss):
                run["status"], stop_reason = "diverged", f"non-finite loss at step {step}"
                optimizer.zero_grad(set_to_none=True)
                break
            if start_loss is None:
                start_loss = step_loss
                if warm is not None:  # a warm start: the un-adapted model's loss (NaN: none, no ratio check)
                    with precision_mod.autocast(precision, device.type):  # as the step's own forward ran
                        fresh = fresh_loss(model, lambda: loss_fn(forward_logits(model, train_enc, rows, batch).float(),
                                                                  target, space.multi_label, spec))
                    start_fresh = fresh if fresh is not None else math.nan
            max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            if lr0_steps == step - 1 and not any(g["lr"] > 0 for g in optimizer.param_groups):
                lr0_steps = step
            window["lr"].append(scheduler.get_last_lr()[0])  # the rate this step uses: the point's lr_max
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            examples_seen += n_examples
            dt = time.perf_counter() - t_step
            step_times.append(dt)
            for key, v in (("loss", step_loss), ("grad_norm", grad_norm), ("n", n_examples), ("time", dt)):
                window[key].append(v)
            run["steps_done"], run["examples_seen"] = step, examples_seen
            bar.update(step, step_loss)
            halt = callback.on_step(step, examples_seen) if callback is not None else None
            if (step % eval_every == 0 or step == steps) and not halt:
                with timed(timing, "evaluate"):
                    stop = evaluate_now()
                halt = callback.on_eval(run["final"], run) if callback is not None else None
                why = _diverged_point(run["final"])
                if why:
                    run["status"], stop_reason = "diverged", f"{why} (step {step})"
                    break
                if stop and step < steps:  # patience run out at the last step: the plan ended the run, not it
                    early_stopped = True
                    stop_reason = (f"early stopping: {_metric_name(objective)} did not improve for "
                                   f"{cfg.train.early_stopping_patience} evaluations")
                    break
            elif log_every and len(window["loss"]) >= log_every:  # evaluation thinned by its budget: the train
                # loss alone, over the log_every steps since the last history line
                point = history_point(step, examples_seen, len(dataset.train), t0, window)
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
            try:  # (run.json's `decoding` is the saved model's: BestModel.fields)
                save_error = _finish_record(run, model, tokenizer, space, cfg, store, extras, predict_texts,
                                            best, bar, device, t0, examples_seen, step_times,
                                            best.decoding if best is not None else decoding,
                                            best.val_logits if best is not None else None, lr0_steps,
                                            early_stopped)
            finally:  # the lock goes and the writers close even when saving the model failed
                store.close()
                tracking.finish(store.path, run["status"])  # the verdict as text, then close the writers
        if save_error is not None and sys.exc_info()[0] is None:
            raise save_error
    return run


def _decoding_record(decoding: Decoding | None, tuned: np.ndarray | None, step: int | None,
                     labels: tuple[str, ...]) -> dict | None:
    """run.json's `decoding`: the saved model's decoding rules, with where its thresholds were tuned (`tuned`: the
    thresholds tuned at `step`; None: untuned, 0.5 everywhere). One shape for the run's start, each best-model
    save and its end."""
    if decoding is None:
        return None
    return {**decoding.to_dict(labels), "tuned_on": "validation" if tuned is not None else None,
            "step": step if tuned is not None else None}


def _metric_name(key: str) -> str:
    return objective_named(key).name


def _finish_record(run, model, tokenizer, space, cfg, store, extras, predict_texts, best: BestModel | None, bar,
                   device, t0, examples_seen, step_times, decoding: Decoding | None = None,
                   best_val_logits: np.ndarray | None = None, lr0_steps: int = 0,
                   early_stopped: bool = False) -> UserError | None:
    """Restore the best trained weights, save them, write the final run.json. A write that fails for
    the output location (disk full, read-only) is returned as a UserError, not raised, so it never
    hides the error that ended the run; the record says so first (record_save_failure) wherever run.json can still be
    written."""
    bar.close()
    wall = time.perf_counter() - t0
    run["partial"] = run["status"] in ("interrupted", "failed")  # stopped before its planned end (docs/run-record.md)
    run.update({"ended_at": utc_now(), "wall_s": round(wall, 3),
                "examples_per_s": examples_seen / sum(step_times) if step_times else None,
                "mean_step_s": float(np.mean(step_times)) if step_times else None,
                "peak_memory_mb": peak_memory_mb(device)})
    timing = run.setdefault("timing_s", {})
    timing["train_steps"] = round(sum(step_times), 3)
    saved = False  # adapter/ complete: a failure after it must not say the model was lost
    try:
        if best is not None:
            with torch.no_grad():
                named = dict(model.named_parameters())
                for n, t in best.state.items():
                    named[n].copy_(t)
            with timed(timing, "save"):
                save_model(model, tokenizer, space, cfg, store, decoding, best.step)
            saved = True
            objective = run.get("objective") or "val/macro_f1"
            step = best.step
            run["saved_model"] = {"step": step, "note": saved_note(step, f"best {_metric_name(objective)}", lr0_steps,
                                                                   cfg.train.init_from, early_stopped,
                                                                   (run.get("final") or {}).get("step"))
                                  + start_note(run, objective, True, cfg.train.init_from)}
            best.record_saved(run)
            if run["status"] in ("completed", "diverged"):
                evaluation = run.get("evaluation") or {}
                skip = robustness_skip(evaluation.get("budget_rows"), evaluation.get("rows_scored", 0),
                                       extras.robustness_rows(best_val_logits is not None))
                if skip is not None:
                    run["robustness"] = {"skipped": skip}
                else:
                    with timed(timing, "robustness"):  # on the saved (best) weights
                        run["robustness"] = _probe(extras, predict_texts, best_val_logits)
        else:
            run["adapter_step"] = None
            run["saved_model"] = {"step": None, "note": "no model saved: the run ended before any trained "
                                  "evaluation point (or every one had diverged)"}
        run["slices"] = extras.info
        store.write_run(run)
    except Exception as exc:
        # an output fault too (a file-size limit, a full disk: the model's big file fails where run.json still fits):
        # the record says the run failed and which model adapter/ holds, not `running` over a dead process
        record_save_failure(run, store, exc, saved)
        user = output_error(exc, store.path)
        if user is None:
            raise
        return user
    return None


def _probe(extras, predict_texts, best_val_logits) -> dict | None:
    """The robustness probe's record. It runs after the model is saved and only measures it: its own failure is
    recorded (robustness.failed, the error) and the finished run stays as it ended, its model saved (it was recorded
    as "saving the model failed / no model saved" over a complete adapter/). An output fault still goes up."""
    try:
        return extras.robustness(predict_texts, best_val_logits)
    except Exception as exc:
        if output_error(exc, "") is not None:
            raise
        return {"failed": f"the robustness probe failed: {type(exc).__name__}: {exc}"}


def best_so_far_note(step: int) -> str:
    return (f"adapter/ holds the model of step {step}, the best so far (the run has not ended: its end confirms or "
            "replaces it)")


@dataclass
class BestModel:
    """The best trained model so far, in memory, with all the record says about it: the one source of which step's
    weights adapter/ gets and which step `best`, `decoding` and confusion.json describe. The record takes them together
    and only once adapter/ holds those weights (record_saved): a stop anywhere between finding a best and recording it
    leaves run.json naming what adapter/ holds, and the run's end, which saves `state` under `step`, records it whole
    (it saved the newer weights under the older step, or recorded the newer step beside the older `best`)."""

    state: dict | None  # the trained weights (None: a rank that does not save, under DDP/FSDP)
    step: int
    fields: dict  # run.json's keys that describe the model: `best` (its eval point), `decoding`
    confusion: Callable[[], None] | None = None  # writes its val confusion.json
    decoding: Decoding | None = None  # multi-label: its decoding rules (thresholds tuned at its point), saved with it
    val_logits: np.ndarray | None = None  # its clean val predictions (the robustness probe's baseline)

    def record_saved(self, run: dict) -> None:
        """adapter/ holds this model now: run's fields and confusion.json describe it (run.json is the caller's to
        write)."""
        run.update(self.fields)
        run["adapter_step"] = self.step
        if self.confusion is not None:
            self.confusion()


def confusion_writer(store: RunStore, labels, cm, step: int) -> Callable[[], None] | None:
    """BestModel.confusion for an eval point's val confusion matrix (None: the point has none)."""
    return None if cm is None else (lambda: store.write_confusion(labels, cm, step))


def save_best_so_far(run: dict, store: RunStore, best: BestModel, save: Callable[[], None]) -> None:
    """A run's best trained model so far (LoRA or full; a classifier's or a causal LM's: `save` writes it as the run's
    end does, into a folder swapped in for adapter/ once complete: RunStore.replace_adapter), written when it is found:
    `kill -9` or a lost machine no longer loses the run's best model (it lived in memory until the run ended), nor,
    mid-save, the previous one. While the files are being written run.json names the step adapter/ still holds (none
    before the first save), and says which newer step is being written; once it is swapped in, that step, with the
    record's other keys that describe it (BestModel.record_saved) in the same write. A stop anywhere in here leaves
    the record naming the model it named before (or the one being written, store.adapter_step); the run's end saves
    and records `best` whole."""
    before = run.get("saved_model") if isinstance(run.get("saved_model"), dict) else {}
    held, step = before.get("step"), best.step
    writing = SAVED_WRITING_NOTE.format(step=step)
    # `writing`: a kill right after the swap leaves adapter/ holding it before run.json says so (store.adapter_step)
    run["saved_model"] = ({"step": held, "writing": step, "note": f"{best_so_far_note(held)}; {writing}"}
                          if held is not None else
                          {"step": None, "writing": step, "note": f"no model saved yet: {writing} (the best so far)"})
    run["adapter_step"] = held  # what adapter/ holds, as saved_model says, until the new model is in it
    store.write_run(run)
    save()
    run["saved_model"] = {"step": step, "note": best_so_far_note(step)}
    best.record_saved(run)
    store.write_run(run)  # at once: until run.json names it, a reader refuses adapter/ as not the recorded model


def save_model(model, tokenizer, space: LabelSpace, cfg: RunConfig, store: RunStore,
               decoding: Decoding | None = None, step: int | None = None) -> None:
    """peft's own format for LoRA (adapter_config.json + adapter_model.safetensors, head included);
    full fine-tuning saves the whole model. Tokenizer and label map go beside it (multi-label: with the
    decoding, i.e. the per-label thresholds, at least one label, the cap and the none label). adapter/ is replaced
    whole once the folder is complete (RunStore.replace_adapter), naming `step`, the model's step."""
    store.replace_adapter(step, lambda out: _write_model(out, model, tokenizer, space, cfg, decoding))


def _write_model(out: Path, model, tokenizer, space: LabelSpace, cfg: RunConfig, decoding: Decoding | None) -> None:
    peft_cfg = getattr(model, "peft_config", {}).get("default")
    if peft_cfg is not None and peft_cfg.modules_to_save:
        # peft's sequence-classification wrapper appends "classifier" and "score" to what we gave: keep each
        # name once, and only the heads this model has (BERT has no `score`, Llama no `classifier`). An entry
        # names a module as peft matches it: the whole path or its tail (`bert.pooler`: a last-part test dropped it,
        # so a plain peft reload froze the trained pooler)
        names = [n for n, _ in model.base_model.model.named_modules()]
        peft_cfg.modules_to_save = [m for i, m in enumerate(peft_cfg.modules_to_save)
                                    if any(n == m or n.endswith("." + m) for n in names)
                                    and m not in peft_cfg.modules_to_save[:i]]
    with quiet_transformers():  # peft re-reads our model card (no metadata block): the hub warned at every save
        model.save_pretrained(out)
    # the saved tokenizer truncates where the run did (model_max_length: what truncation=True cuts at): it kept the
    # base's (512 for MiniLM, none for a config without one), so a pipeline with truncation=True scored more of a long
    # text than predict and evaluate do (cfg.model.max_length) and gave other labels. The live tokenizer is left as is
    kept = tokenizer.model_max_length
    tokenizer.model_max_length = cfg.model.max_length
    try:
        tokenizer.save_pretrained(out)
    finally:
        tokenizer.model_max_length = kept
    base = resolve_model(cfg.model)  # base_model_path: what plain transformers loads (README recipe)
    base_args = getattr(model, BASE_ARGS_ATTR, None)  # (through peft's wrappers: the base model's attribute)
    base_args = card_base_args({"gguf_file": base.gguf_file}) if not isinstance(base_args, dict) else base_args
    write_json(out / LABEL_MAP, {"labels": list(space.labels), "multi_label": space.multi_label,
                                 "method": cfg.adapter.method, "base_model": cfg.model.name_or_path,
                                 "base_model_path": base.path, "gguf_file": base.gguf_file, "base_args": base_args,
                                 "decoding": decoding.to_dict(space.labels) if decoding is not None else None})
    from loratune.store import write_atomic

    # not peft's blank template
    write_atomic(out / "README.md", model_card(cfg, space, peft_cfg is not None, base_args=base_args))


@dataclass(frozen=True)
class CardPick:
    """A `loratune tune` pick whose saved model the study exported to its final/adapter (search.summary.finish), as the
    model card written there names it: beside that folder lie the study's files, not a run record, and predict reads
    the pick's trial directory, not final/."""

    trial: int
    name: str
    run_dir: str  # as the card shows it: STUDY_DIR/trials/<n>-<name> when it lies in the study, else its path


def card_record(what: str, files: tuple[str, ...], pick: CardPick | None) -> str:
    """The model card's line on where the record is (`what`: what `files` hold): beside adapter/ in a run directory;
    for a tune study's exported pick, the study's files beside final/ and the trial's run directory."""
    if pick is None:
        return f"- {what}: " + ", ".join(f"`../{f}`" for f in files) + "\n"
    where = " (STUDY_DIR: the study directory, which holds `final/`)" if pick.run_dir.startswith("STUDY_DIR/") else ""
    return (f"- chosen by `loratune tune` as its pick, trial #{pick.trial} ({pick.name}); beside this folder: "
            "`../study.json` (the study's decisions and recommendation), `../test.json` (the pick's test score), "
            "`../config.yaml` (its configuration, to train it again)\n"
            f"- {what}: in the trial's run directory, `{pick.run_dir}`{where}: " + ", ".join(f"`{f}`" for f in files)
            + "\n")


def saved_model_card(folder: Path, cfg: RunConfig, pick: CardPick | None = None) -> str:
    """The model card of the classifier saved in `folder` (search.summary: a tune study's exported pick), from its
    label map and whether it is an adapter."""
    from loratune.store import read_json

    label_map = read_json(folder / LABEL_MAP)
    space = LabelSpace(tuple(str(x) for x in label_map["labels"]), bool(label_map["multi_label"]))
    return model_card(cfg, space, (folder / "adapter_config.json").is_file(), pick, card_base_args(label_map))


def card_base_args(label_map: dict) -> dict:
    """The from_pretrained arguments the card's recipes pass for the base (models.BASE_ARGS_ATTR), from a label map:
    its `base_args`, or for one written before them, its GGUF file."""
    args = label_map.get("base_args")
    if isinstance(args, dict):
        return args
    return {"gguf_file": label_map["gguf_file"]} if label_map.get("gguf_file") else {}


# Why the card's recipe passes each of models.BASE_ARGS_ATTR's arguments, as its comment
CARD_BASE_ARG_NOTES = {
    "gguf_file": "BASE is the folder holding this GGUF file",
    "ignore_mismatched_sizes": "BASE saved a classification head of another label count: a fresh one replaces it, "
                               "as in training",
}


def _card_base_line(cfg: RunConfig, base_args: dict) -> str:
    """The card's line naming the base model and what BASE stands for in its recipes: the folder (`base_model_path` in
    label_map.json) when the base is a GGUF file in it or an embedded model, else the model as configured."""
    name = code_span(cfg.model.name_or_path)
    if base_args.get("gguf_file"):
        return (f"- base model: {name}, a GGUF file: BASE below is the folder holding it (`base_model_path` in "
                f"`label_map.json`: {code_span(resolve_model(cfg.model).path)}), the file is passed as `gguf_file`")
    return f"- base model (BASE below): {name} (`base_model_path` in `label_map.json` when it is an embedded model)"


def _card_head_args(base_args: dict) -> str:
    """The recipe's lines adding `base_args` to its `head` (what both of its from_pretrained calls pass), each with
    its reason (CARD_BASE_ARG_NOTES)."""
    return "".join(f"\nhead[{k!r}] = {v!r}  # {CARD_BASE_ARG_NOTES.get(k, 'as loratune loaded BASE')}"
                   for k, v in base_args.items())


# where a classifier's card says its run record is (card_record)
RECORD_FILES = ("metrics, curves and the configuration", ("run.json", "history.jsonl", "config.yaml"))


def model_card(cfg: RunConfig, space: LabelSpace, is_adapter: bool, pick: CardPick | None = None,
               base_args: dict | None = None) -> str:
    """What the folder holds and how to load it (with loratune, and with plain peft + transformers); `pick`: the folder
    is a tune study's exported pick (card_record); `base_args`: what from_pretrained needs beyond BASE and the head to
    load the base as loratune did (models.BASE_ARGS_ATTR: a GGUF file in the BASE folder, ignore_mismatched_sizes)."""
    a = cfg.adapter
    kind = (f"a LoRA adapter (r={a.r}, lora_alpha={a.lora_alpha}, targets {', '.join(map(str, a.target_modules))}) "
            "with its trained classification head" if is_adapter else "a fully fine-tuned model")
    # each label a code span of its one-line form (listing.label_text): raw Markdown ("x, y", "bal\nance", "*emph*",
    # "---") read as other labels, a line break as a new paragraph
    labels = LABEL_JOIN.join(code_span(label_text(x)) for x in space.labels[:20]) + (
        f", ... ({len(space)} in all)" if len(space) > 20 else "")
    # truncation=True cuts a text at the saved tokenizer's model_max_length, the run's max_length (_write_model), as
    # predict and evaluate cut it: without it a longer text was scored whole (other labels; past the position table, an
    # error)
    # max_length named too: a pick trained before its tokenizer carried it is exported with the base's (review)
    cut = f"truncation=True, max_length={cfg.model.max_length}"
    score = (f"logits = model(**tokenizer([\"some text\"], return_tensors=\"pt\", {cut})).logits  "
             "# cut at max_length, as loratune cuts it")
    if is_adapter:
        # the base's own config has its own head size (2, LABEL_i names): the run's labels go in as overrides, so
        # the head loads and a pipeline says the run's labels (peft's auto class loads the base named in
        # adapter_config.json the same way, and takes the same overrides)
        load = ("import json\n\nfrom peft import PeftModel\nfrom transformers import "
                "AutoModelForSequenceClassification, AutoTokenizer\n\n"
                "labels = json.load(open(\"adapter/label_map.json\", encoding=\"utf-8\"))[\"labels\"]  # the head's order\n"
                "head = dict(num_labels=len(labels), id2label=dict(enumerate(labels)), "
                "label2id={label: i for i, label in enumerate(labels)}"
                + (', problem_type="multi_label_classification"' if space.multi_label else "")
                + ")" + _card_head_args(base_args or {}) + "\n"
                "base = AutoModelForSequenceClassification.from_pretrained(BASE, **head)\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"adapter\")\n"
                "base.config.pad_token_id = tokenizer.pad_token_id  # a decoder pools its last non-pad token\n"
                "model = PeftModel.from_pretrained(base, \"adapter\")\n" + score)
        auto = ("\nOr with peft's auto class (it loads the base named in `adapter_config.json`, whose own head has the "
                "base's size: it needs the same `head`), merged for a pipeline (continuing from the code above):\n\n"
                "```python\nfrom peft import AutoPeftModelForSequenceClassification\nfrom transformers import "
                "pipeline\n\nmodel = AutoPeftModelForSequenceClassification.from_pretrained(\"adapter\", **head, "
                "pad_token_id=tokenizer.pad_token_id)\nclassify = pipeline(\"text-classification\", "
                "model=model.merge_and_unload(), tokenizer=tokenizer)\nprint(classify(\"some text\", "
                f"{cut}))\n```\n")
    else:
        load = ("from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
                "model = AutoModelForSequenceClassification.from_pretrained(\"adapter\")  # config.json: the labels\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"adapter\")\n" + score)
        auto = ""
    data = cfg.data.train_file or cfg.data.dataset_name
    return ("# Text classifier trained with loratune\n\n"
            f"This folder holds {kind}, trained by `loratune train` on {code_span(data)} for "
            f"{'multi' if space.multi_label else 'single'}-label classification into {len(space)} labels: "
            f"{labels}.\n\n"
            + _card_base_line(cfg, base_args or {}) +
            f", `max_length` {cfg.model.max_length} (the recipes below pass it with "
            "`truncation=True`: the tokenizer and a pipeline cut longer texts there, as `loratune predict` does)\n"
            "- label order: `label_map.json` (logit i is `labels[i]`)\n"
            + card_record(*RECORD_FILES, pick) +
            f"\n## Use\n\n```bash\nloratune predict {shell_path(pick.run_dir) if pick else 'RUN_DIR'} "
            "\"some text\"\n```\n\n"
            f"Without loratune:\n\n```python\n{load}\n```\n{auto}")

