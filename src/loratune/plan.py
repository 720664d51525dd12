"""Planning beyond this machine: trainable parameters, GPU memory and training FLOPs of LoRA, QLoRA and
full fine-tuning, for a model built from its config alone on the meta device (1B-70B, no weights).

Every formula is in this file, each constant with its reason where it is defined; docs/planning.md
derives them and compares the Llama-2-7B plan with published figures. The LoRA parameter count and the
compute-breakeven rank come from `loratune.params` (one formula, one place).

Units: bytes and FLOPs as plain integers/floats; the CLI renders them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loratune.errors import PARSE_ERRORS, UserError

# ---------------------------------------------------------------------------------------------------
# Named shapes: the fields of each model's published config.json that decide its size (the rest take the
# transformers defaults). `loratune plan llama-2-7b` needs no download.
PRESETS: dict[str, dict] = {
    # meta-llama/Llama-2-7b-hf: 6,738,415,616 parameters
    "llama-2-7b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                   "max_position_embeddings": 4096, "tie_word_embeddings": False},
    "llama-2-13b": {"model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                    "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
                    "max_position_embeddings": 4096, "tie_word_embeddings": False},
    "llama-2-70b": {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000,
                    "max_position_embeddings": 4096, "tie_word_embeddings": False},
    # LLaMA-1 65B: the model the QLoRA paper fine-tunes on one 48 GB GPU
    "llama-65b": {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 80,
                  "num_attention_heads": 64, "num_key_value_heads": 64, "vocab_size": 32000,
                  "max_position_embeddings": 2048, "tie_word_embeddings": False},
    "llama-3-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                   "max_position_embeddings": 8192, "tie_word_embeddings": False},
    "mistral-7b": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
                   "max_position_embeddings": 32768, "tie_word_embeddings": False},
    "qwen2-7b": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                 "max_position_embeddings": 131072, "tie_word_embeddings": False},
    # Phi-3 fuses Q, K, V into qkv_proj and the FFN gate with its up projection into gate_up_proj
    "phi-3-mini": {"model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                   "max_position_embeddings": 4096, "tie_word_embeddings": False, "pad_token_id": 32000},
}

# ---------------------------------------------------------------------------------------------------
# Bytes. Mixed-precision training computes in bf16 (2 bytes); optimizer state lives in fp32 (4 bytes).
BF16 = 2
FP32 = 4
# NF4 with double quantization (Dettmers et al. 2023, QLoRA, section 3): a 4-bit code per weight, one 8-bit
# absmax per block of 64 weights, one fp32 constant per 256 of those blocks: 4 + 8/64 + 32/(64*256) bits.
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
# Full fine-tuning: bytes per parameter of (weights, gradients, optimizer states), by convention.
FULL_PRECISION = {
    # ZeRO (Rajbhandari et al. 2020, section 3.1): bf16/fp16 weights and gradients, and AdamW's K = 12 bytes:
    # an fp32 master copy of the weights, fp32 first and second moments. 16 bytes per parameter.
    "mixed": (BF16, BF16, 3 * FP32),
    # PyTorch AMP as the Hugging Face Trainer runs it (fp32 model, bf16 autocast; transformers' "Model training
    # anatomy"): fp32 weights plus the bf16 copies autocast keeps for backward (6), fp32 gradients (4), AdamW m
    # and v (8). 18 bytes per parameter, LLaMA-Factory's `18x GB` row.
    "amp": (FP32 + BF16, FP32, 2 * FP32),
    # Pure bf16 (LLaMA-Factory's `pure_bf16`): the weights are bf16 and torch's AdamW keeps m and v in the
    # weights' dtype, no master copy. 8 bytes per parameter.
    "bf16": (BF16, BF16, 2 * BF16),
}
# LoRA / QLoRA trainable parameters: peft keeps adapter weights in fp32 even on a bf16 or 4-bit base
# (get_peft_model's autocast_adapter_dtype=True, the default), so fp32 weights, fp32 gradients, AdamW m and v
# in fp32: 16 bytes per trainable parameter (the classification head too, when one is trained).
ADAPTER_BYTES = (FP32, FP32, 2 * FP32)
# Logits, bytes per vocabulary entry per token at their peak, in the loss's backward (transformers upcasts the
# logits to fp32 for the loss): the fp32 log-softmax the loss kept (4), the fp32 gradient the NLL loss hands
# back, dense over the vocabulary (4), and the fp32 gradient of the logits log-softmax's backward computes from
# the two (4). (The forward's own peak is lower: bf16 logits 2 + their fp32 copy 4 + the log-softmax 4; the bf16
# logits are freed with the model's output once the loss is computed.) Measured on an H200
# (bench/results/plan_vs_measured.md): 2 bytes per entry above the earlier 10 for SmolLM2-135M, 1.7 for a
# TinyLlama-1.1B shape. 128k-vocabulary models at long sequences are dominated by this term (why chunked
# cross-entropy exists).
LOGIT_BYTES = FP32 + FP32 + FP32
# Eager attention keeps the score matrix per head, query and key: the fp32 softmax output (4) and its bf16
# copy multiplied with V (2). SDPA / FlashAttention keeps only a log-sum-exp per head and query (ignored).
EAGER_SCORE_BYTES = FP32 + BF16
# The CUDA context and loaded kernels, outside torch's allocator: torch.cuda.max_memory_* never counts it,
# nvidia-smi does. About 0.3-0.6 GiB on A100/H100 with CUDA 12's lazy module loading.
CUDA_CONTEXT_BYTES = 512 * 2**20
# cuBLAS workspaces, inside torch's allocator (counted by torch.cuda.max_memory_allocated): one per cuBLAS handle
# and stream, and training uses two (the forward's thread and autograd's backward thread), each 32 MiB on Hopper
# (torch's default CUBLAS_WORKSPACE_CONFIG=:4096:8 for sm90; 8.1 MiB on older GPUs). Measured on an H200: 64.3-65.2
# MiB allocated between steps beyond the weights and optimizer states, for both models of plan_vs_measured.md.
CUBLAS_WORKSPACE_BYTES = 2 * 32 * 2**20
# Sharding over several GPUs (FSDP FULL_SHARD / ZeRO-3) splits weights, gradients and optimizer states evenly;
# each GPU also holds the gathered bf16 weights of the block it computes and of the one prefetched next
# (FSDP's default backward prefetch), and its own micro-batch's activations.
FSDP_GATHERED_BLOCKS = 2

# The longest --batch and --seq-len, and their product (tokens per micro-batch), the plan takes: 2^32 tokens already
# need 8 TiB for one 1024-wide layer's bf16 hidden states, past every GPU; far past it the float arithmetic overflows.
MAX_TOKENS = 2**32

METHODS = ("lora", "qlora", "full")
TASKS = ("causal-lm", "classification")
TASK_OPTION_HELP = "auto (the default): causal-lm for decoders, classification for encoders"
ATTENTION = ("sdpa", "eager")
DEFAULT_R = 16
DEFAULT_TARGETS = ("all-linear",)


# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs of a model, read once from its meta-device build."""

    model_type: str
    task: str
    params: int  # every parameter (shared ones once)
    linear_params: int  # weights of every nn.Linear, the output head included: 2 FLOPs each per token forward
    block_linear_params: int  # linear weights inside the transformer blocks: what QLoRA stores in NF4
    head_params: int  # the classification head trained with every adapter (0 for causal-lm)
    layers: int
    hidden: int
    heads: int
    head_dim: int
    kv_heads: int
    ffn: int  # intermediate size of the FFN
    gated: bool  # gated FFN (gate and up projections): Llama, Mistral, Qwen2, Phi-3, Gemma; T5 v1.1 / Flan-T5's wi_0, wi_1
    vocab: int  # logits per token: the vocabulary (causal-lm) or the number of labels

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LoraShape:
    """The adapter: r(d_in + d_out) summed over the adapted linear layers (adapt.per_rank, params.py's too)."""

    r: int
    targets: tuple[str, ...]
    modules: int
    adapted_weights: int  # parameters of the adapted weights
    per_rank: int  # sum of d_in + d_out over the adapted layers
    input_features: int = 0  # sum of d_in over the adapted layers (each adapter keeps a copy of its input)
    # the lowest adapted block: nothing below it requires grad (loratune never calls enable_input_require_grads), so
    # autograd keeps no activations there and the backward pass stops at it (kept_layers)
    first_layer: int = 0

    @property
    def params(self) -> int:
        return self.r * self.per_rank


@dataclass(frozen=True)
class Workload:
    batch: int = 1
    seq_len: int = 512
    attention: str = "sdpa"
    full_precision: str = "mixed"
    gpu_memory_gib: float = 80.0  # one GPU's memory, for how many GPUs each method needs

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


@dataclass(frozen=True)
class MethodPlan:
    method: str
    trainable: int
    weights: float  # bytes
    gradients: float
    optimizer: float
    activations: float  # without gradient checkpointing
    activations_checkpointed: float
    cuda_context: float
    flops_per_token: float  # one training step (forward + backward), without checkpointing
    flops_per_token_checkpointed: float  # one more forward of the blocks
    gpus: int | None = None  # GPUs of gpu_memory_gib needed with checkpointing: 1, or sharded (FSDP); None: never

    @property
    def states(self) -> float:
        return self.weights + self.gradients + self.optimizer

    @property
    def workspace(self) -> float:  # cuBLAS workspaces, in torch's allocator
        return CUBLAS_WORKSPACE_BYTES

    @property
    def total(self) -> float:  # what torch.cuda.max_memory_allocated would report
        return self.states + self.activations + self.workspace

    @property
    def total_checkpointed(self) -> float:
        return self.states + self.activations_checkpointed + self.workspace

    def to_dict(self) -> dict:
        return {**asdict(self), "states": self.states, "workspace": self.workspace, "total": self.total,
                "total_checkpointed": self.total_checkpointed,
                "on_device": self.total + self.cuda_context,
                "on_device_checkpointed": self.total_checkpointed + self.cuda_context}


@dataclass(frozen=True)
class Plan:
    source: str
    shape: ModelShape
    lora: LoraShape
    workload: Workload
    methods: dict[str, MethodPlan]
    breakeven_rank: int | None  # params.breakeven_rank over the adapted weights (protocol 6)
    conventions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"source": self.source, "shape": self.shape.to_dict(),
                "lora": {**asdict(self.lora), "params": self.lora.params},
                "workload": {**asdict(self.workload), "tokens": self.workload.tokens},
                "methods": {k: v.to_dict() for k, v in self.methods.items()},
                "breakeven_rank": self.breakeven_rank, "conventions": self.conventions}


# ---------------------------------------------------------------------------------------------------
# Activations. Every tensor autograd keeps for backward, counted per token of one transformer block
# (Korthikanti et al. 2022's method, redone for the pre-norm, dropout-free decoders of Llama, Mistral, Qwen2,
# Phi-3, Gemma, and checked against autograd's saved tensors on a tiny Llama in tests/unit/test_plan.py):
#   each norm (2 per block): its input upcast to fp32 for the variance (4h); when the norm's weight trains,
#     also the bf16 normalised input (2h, for that weight's gradient) and the bf16 output the next
#     projections read (2h, for their weight gradients)                     full 8h, LoRA 4h bytes
#   attention core (SDPA / FlashAttention): Q, K, V after RoPE and the output, bf16; the output projection
#     reads the output in place                                             2(2h_q + 2h_kv) bytes
#   gated FFN: gate output, up output, SiLU output, and the product the down projection reads when its
#     weight trains                                                         full 8i, LoRA 6i bytes
#   plain FFN (BERT): the activation's input, and fc2's input when fc2 trains    full 4i, LoRA 2i
#   each LoRA adapter: its own bf16 copy of the layer input (peft casts the input to the fp32 adapter's
#     dtype and autocast casts it back for the matmul) and its r-wide A output  2(d_in + r) bytes
# Eager attention also keeps the scores (EAGER_SCORE_BYTES per head, query and key). The head keeps the final
# norm (8h full, 4h LoRA) and the logits (LOGIT_BYTES per vocabulary entry). Gradient checkpointing (one
# checkpoint per block, the Hugging Face default) keeps each block's bf16 input (2h) and recomputes one block
# at a time during backward. A frozen linear layer without an adapter keeps nothing: its input gradient needs
# only its weight.
NORM_BYTES = {True: FP32 + BF16 + BF16, False: FP32}  # per hidden unit, by whether the norm's weight trains
ADAPTER_INPUT_BYTES = BF16


def kept_layers(shape: ModelShape, lora: LoraShape | None = None) -> int:
    """The blocks autograd keeps activations for and the backward pass runs through: every one in full fine-tuning
    (the embeddings train), for LoRA those at or above its lowest adapted layer (below it nothing requires grad)."""
    return shape.layers if lora is None else max(1, shape.layers - lora.first_layer)


def block_bytes_per_token(shape: ModelShape, lora: LoraShape | None = None) -> float:
    """Bytes one transformer block keeps per token (SDPA attention): full fine-tuning when `lora` is None."""
    trains = lora is None
    h, h_q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.ffn
    norms = 2 * NORM_BYTES[trains] * h
    attention = BF16 * (2 * h_q + 2 * kv)
    ffn = BF16 * ((4 if trains else 3) * i if shape.gated else (2 if trains else 1) * i)
    adapters = 0.0
    if lora is not None:  # spread evenly over the blocks that keep activations (per_block = total / kept_layers)
        adapters = (ADAPTER_INPUT_BYTES * lora.input_features + BF16 * lora.r * lora.modules) / kept_layers(shape, lora)
    return norms + attention + ffn + adapters


def block_bytes(shape: ModelShape, w: Workload, lora: LoraShape | None = None) -> float:
    """Bytes kept by one block for the whole micro-batch."""
    per_token = block_bytes_per_token(shape, lora)
    if w.attention == "eager":
        per_token += EAGER_SCORE_BYTES * shape.heads * w.seq_len
    return per_token * w.tokens


def head_bytes(shape: ModelShape, w: Workload, lora: LoraShape | None = None) -> float:
    return (NORM_BYTES[lora is None] * shape.hidden + LOGIT_BYTES * shape.vocab) * w.tokens


def activation_bytes(shape: ModelShape, w: Workload, lora: LoraShape | None = None,
                     checkpointed: bool = False) -> float:
    """Activation memory of one micro-batch: full fine-tuning when `lora` is None, else LoRA / QLoRA."""
    block, kept = block_bytes(shape, w, lora), kept_layers(shape, lora)
    if checkpointed:
        return BF16 * shape.hidden * w.tokens * kept + block + head_bytes(shape, w, lora)
    return kept * block + head_bytes(shape, w, lora)


# ---------------------------------------------------------------------------------------------------
# Training FLOPs per token. A linear weight costs 2 FLOPs per token forward, 2 for the input gradient and
# 2 for the weight gradient: 6N for full fine-tuning (Kaplan et al. 2020). Attention over a context of
# s tokens adds 4*L*h*s forward and twice that backward: 12*L*h*s (PaLM, Chowdhery et al. 2022, app. B;
# counted dense, as PaLM does). LoRA skips the weight gradients of the frozen base but still needs its input
# gradients to reach the adapters below, down to the lowest adapted block and no further (kept_layers): 4N + 6*N_lora
# with every block adapted, the blocks below it run forward only. Gradient checkpointing adds one more forward
# (of the blocks the backward runs through).


def attention_flops(shape: ModelShape, w: Workload) -> float:
    return 4 * shape.layers * shape.heads * shape.head_dim * w.seq_len  # forward, per token


def full_flops(shape: ModelShape, w: Workload, checkpointed: bool = False) -> float:
    """6N + 12Lhs per token; checkpointing recomputes one forward of the blocks (N_b: their linear weights, never
    the LM or classification head, which Hugging Face does not checkpoint)."""
    n, nb, att = shape.linear_params, shape.block_linear_params, attention_flops(shape, w)
    return 6 * n + 3 * att + ((2 * nb + att) if checkpointed else 0)


def lora_flops(shape: ModelShape, lora: LoraShape, w: Workload, checkpointed: bool = False) -> float:
    """2N forward + 2N_k input gradients + 6N_lora + 4Lhs + 8L_khs per token, N_k and L_k the linear weights (head
    included) and blocks the backward runs through (kept_layers): 4N + 6N_lora + 12Lhs when every block is adapted.
    Checkpointing recomputes those blocks' forward with their adapters."""
    n, n_lora, att = shape.linear_params, lora.params + shape.head_params, attention_flops(shape, w)
    nb = shape.block_linear_params
    kept = kept_layers(shape, lora) / max(1, shape.layers)  # share of the blocks the backward runs through
    backward = 2 * (n - nb + nb * kept) + 2 * att * kept
    return 2 * n + backward + 6 * n_lora + att + ((2 * nb * kept + 2 * lora.params + att * kept) if checkpointed else 0)


# ---------------------------------------------------------------------------------------------------
def method_plan(method: str, shape: ModelShape, lora: LoraShape, w: Workload) -> MethodPlan:
    """Memory and FLOPs of one method; the formulas are the ones in docs/planning.md."""
    if method == "full":
        wb, gb, ob = FULL_PRECISION[w.full_precision]
        trainable = shape.params
        weights, grads, opt = shape.params * wb, shape.params * gb, shape.params * ob
        act, act_ckpt = activation_bytes(shape, w), activation_bytes(shape, w, checkpointed=True)
        flops, flops_ckpt = full_flops(shape, w), full_flops(shape, w, True)
    else:
        trainable = lora.params + shape.head_params
        aw, ag, ao = ADAPTER_BYTES
        if method == "qlora":  # block linears in NF4; embeddings, norms and the output head stay bf16
            base = shape.block_linear_params * NF4_BITS / 8 + (shape.params - shape.block_linear_params) * BF16
        else:
            base = shape.params * BF16
        weights, grads, opt = base + trainable * aw, trainable * ag, trainable * ao
        act = activation_bytes(shape, w, lora)
        act_ckpt = activation_bytes(shape, w, lora, checkpointed=True)
        flops, flops_ckpt = lora_flops(shape, lora, w), lora_flops(shape, lora, w, True)
    gpus = gpus_needed(weights + grads + opt, act_ckpt, shape, w.gpu_memory_gib * 2**30)
    return MethodPlan(method, trainable, weights, grads, opt, act, act_ckpt, CUDA_CONTEXT_BYTES, flops, flops_ckpt,
                      gpus)


def gpus_needed(states: float, activations: float, shape: ModelShape, gpu_bytes: float) -> int | None:
    """GPUs of `gpu_bytes` each for states + activations (checkpointed) + cuBLAS workspaces + CUDA context: 1 when
    it fits, else the states sharded evenly (FSDP / ZeRO-3) next to each GPU's activations and gathered blocks;
    None when even one GPU's own share cannot fit."""
    own = activations + CUBLAS_WORKSPACE_BYTES + CUDA_CONTEXT_BYTES
    if states + own <= gpu_bytes:
        return 1
    gathered = FSDP_GATHERED_BLOCKS * BF16 * shape.block_linear_params / max(1, shape.layers)
    room = gpu_bytes - own - gathered
    return max(2, math.ceil(states / room)) if room > 0 else None


def conventions(shape: ModelShape, w: Workload) -> dict[str, str]:
    wb, gb, ob = FULL_PRECISION[w.full_precision]
    return {
        "full": f"{w.full_precision}: weights {wb} + gradients {gb} + AdamW states {ob} = {wb + gb + ob} bytes/param"
                + {"mixed": " (bf16 weights and gradients; fp32 master weights + m + v, ZeRO)",
                   "amp": " (fp32 weights + autocast's bf16 copies, fp32 gradients, fp32 m + v)",
                   "bf16": " (everything in bf16, no master weights)"}[w.full_precision],
        "lora": "base in bf16 (2 bytes/param); adapter fp32 weights 4 + gradients 4 + AdamW m, v 8 = 16 bytes/param",
        "qlora": f"linear weights of the blocks in NF4 with double quantization ({NF4_BITS:.3f} bits), embeddings, "
                 "norms and output head in bf16; adapter as LoRA",
        "activations": f"{w.attention} attention; bytes per block per token: full 16h + 4h_q + 4h_kv + "
                       + ("8i" if shape.gated else "4i") + ", LoRA 8h + 4h_q + 4h_kv + "
                       + ("6i" if shape.gated else "2i") + " + 2(d_in + r) per adapter; logits "
                       f"{LOGIT_BYTES} bytes per vocabulary entry; gradient checkpointing keeps each block's input "
                       "and recomputes one block at a time; LoRA keeps nothing below its lowest adapted layer",
        "flops": "full 6N + 12*L*h*s; LoRA 4N + 6*N_lora + 12*L*h*s (N: linear weights, head included) with every "
                 "block adapted, the blocks below the lowest adapted layer forward only; checkpointing adds one "
                 "forward",
        "workspace": f"cuBLAS workspaces {CUBLAS_WORKSPACE_BYTES / 2**20:.0f} MiB in torch's allocator (two handles, "
                     "32 MiB each on Hopper)",
        "cuda_context": f"{CUDA_CONTEXT_BYTES / 2**30:.1f} GiB outside torch's allocator (in on_device totals only)",
    }


def make_plan(source: str, shape: ModelShape, lora: LoraShape, w: Workload) -> Plan:
    from loratune.params import breakeven_rank

    _check_workload(w)
    methods = {m: method_plan(m, shape, lora, w) for m in METHODS}
    return Plan(source, shape, lora, w, methods, breakeven_rank(lora.adapted_weights, lora.per_rank),
                conventions(shape, w))


def _check_workload(w: Workload) -> None:
    problems = []
    if w.batch < 1:
        problems.append(f"--batch {w.batch}: must be an integer >= 1")
    if w.seq_len < 1:
        problems.append(f"--seq-len {w.seq_len}: must be an integer >= 1")
    if not problems and (w.batch > MAX_TOKENS or w.seq_len > MAX_TOKENS or w.tokens > MAX_TOKENS):
        problems.append(f"--batch {w.batch} x --seq-len {w.seq_len}: at most {MAX_TOKENS:,} tokens per micro-batch "
                        f"(2^32 tokens already need 8 TiB for one 1024-wide layer's bf16 hidden states)")
    if w.attention not in ATTENTION:
        problems.append(f"--attention {w.attention}: one of {', '.join(ATTENTION)}")
    if not (w.gpu_memory_gib > 0 and math.isfinite(w.gpu_memory_gib)):  # (inf planned "GPUs of inf GiB")
        problems.append(f"--gpu-memory {w.gpu_memory_gib}: GiB of one GPU, a finite number > 0")
    if w.full_precision not in FULL_PRECISION:
        problems.append(f"--full-precision {w.full_precision}: one of {', '.join(FULL_PRECISION)}")
    if problems:
        raise UserError("; ".join(problems),
                        "e.g. --batch 4 --seq-len 1024 --attention sdpa --full-precision mixed --gpu-memory 80")


# ---------------------------------------------------------------------------------------------------
# Building the model: a preset, a config.json, a folder with one, an embedded alias, or a hub id whose config
# is in the local Hugging Face cache (or reachable online).


def load_config(source: str):
    """The transformers config behind `source`; a UserError naming the fix when there is none. A multimodal config
    (Gemma 3, LLaVA-style: the language model's settings under `text_config`) gives its language model's config:
    LoRA fine-tuning of text adapts that model (language_model_config says so)."""
    config = _load_config(source)
    config = language_model_config(config) or config
    check_sizes(config, source)
    return config


# The config fields the plan's arithmetic reads (by their transformers names; a config's attribute_map gives the name
# its config.json uses: GPT-2's n_embd, T5's d_model; T5's d_ff and d_kv are its own, FFN_FIELDS / HEAD_DIM_FIELDS). A
# config.json must set each one its config class has: transformers would fill a missing one with the default of its
# own preset (7B-class, or t5-small's d_ff 2048). KV heads default to the heads; Falcon derives num_kv_heads and
# ffn_hidden_size from its heads and hidden size, as its published configs rely on.
SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size", "d_ff",
               "d_kv")
OPTIONAL_SIZE_FIELDS = ("num_key_value_heads", "num_kv_heads", "ffn_hidden_size")


def _json_name(config, attr: str) -> str:
    return getattr(config, "attribute_map", {}).get(attr, attr)


def exc_text(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line: every line of it, since transformers' validation errors put the reason
    (`The hidden size (33) is not a multiple of ...`) on the line after their headline."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:limit]


def check_sizes(config, source: str) -> None:
    """The size fields the plan reads are integers >= 1 and the key/value heads divide the attention heads, else a
    UserError naming the field (0 layers built a model without blocks; 0 vocabulary, 3 KV heads over 4 were
    planned)."""
    problems = []
    for attr in SIZE_FIELDS + OPTIONAL_SIZE_FIELDS:
        value = getattr(config, attr, None)
        if value is None or isinstance(value, (list, tuple, dict)):
            continue  # a field this architecture has not (ViT's vocabulary); per-layer lists are the model's own
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{_json_name(config, attr)} must be an integer >= 1 (got {value!r})")
    heads, kv = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    if not problems and isinstance(kv, int) and isinstance(heads, int) and heads % kv:
        problems.append(f"{_json_name(config, 'num_key_value_heads')} ({kv}) must divide "
                        f"{_json_name(config, 'num_attention_heads')} ({heads}): each KV head serves a group of heads")
    if problems:
        raise UserError(f"the config of '{source}': " + "; ".join(problems),
                        "fix these fields in its config.json (the values of the model's published config)")


def refuse_headless(config) -> None:
    """Mamba, RWKV...: an architecture without attention heads; the activation and FLOP formulas are those of
    attention blocks (said before any missing size field: no field would make them apply)."""
    if not getattr(config, "num_attention_heads", None):
        raise UserError(f"'{config.model_type}' is an architecture without attention heads (its config has no "
                        "num_attention_heads): plan covers transformer encoders and decoders",
                        "plan a transformer: a preset, or a config.json with num_attention_heads")


def _check_present(config, raw: dict, where: str) -> None:
    """Every size field the plan reads is in the config itself (the config.json, or a GGUF file's metadata): a missing
    one would be planned with transformers' default (hidden 4096, 32 layers...). One check for every route a config
    comes by (a path, a cached or downloaded hub id, a GGUF file, a preset). A multimodal wrapper's text_config is left
    to its defaults, as the published ones (Gemma 3) rely on them."""
    if language_model_config(config) is not None:
        return
    refuse_headless(config)
    # the fields its class gives a default (GPT-2 has no intermediate_size: its FFN is 4h unless n_inner says so)
    needed = [a for a in SIZE_FIELDS if getattr(config, a, None) is not None]
    missing = [_json_name(config, a) for a in needed if _json_name(config, a) not in raw and a not in raw]
    if missing:
        raise UserError(f"{where} does not set {', '.join(missing)}: the plan would take transformers' defaults "
                        f"for a {config.model_type} model, not this model's sizes",
                        f"set {', '.join(missing)} in a config.json (the values of the model's published config.json) "
                        "and plan that file")


def language_model_config(config):
    """The `text_config` of a config whose own has no attention heads (a multimodal wrapper), else None."""
    text = getattr(config, "text_config", None)
    if text is not None and not getattr(config, "num_attention_heads", None) and getattr(text, "num_attention_heads",
                                                                                          None):
        return text
    return None


def _load_config(source: str):
    """Every route reads the config's fields as written (raw) and builds the config from them in _config_from_dict,
    which checks them once for all routes."""
    from transformers import PretrainedConfig

    from loratune.models import EMBEDDED_MODELS, folder_ggufs, hub_offline_reason, hub_reason, resolve_model

    fix = (f"give a preset ({', '.join(PRESETS)}), a config.json or a model folder holding one, or a hub id "
           "whose config.json is cached (download it once while online: hf download ID config.json)")
    if source in PRESETS:
        return _config_from_dict(dict(PRESETS[source]), f"preset '{source}'", fix)
    from loratune.store import check_name_length

    check_name_length(Path(source).expanduser(), "model", fix, last="file or folder")  # before any stat (ENAMETOOLONG)
    p = Path(source).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        p = p / "config.json"
    if p.is_file() and p.suffix == ".json":
        return _config_from_json(p, fix)
    ggufs = folder_ggufs(p) if p.is_dir() else []
    if p.is_dir() and not ggufs:
        raise UserError(f"folder '{p}' has no config.json", fix)
    if len(ggufs) > 1:  # resolve_model's fix names train's model.gguf_file, which plan and params do not take
        raise UserError(f"folder '{p}' has no config.json and holds {len(ggufs)} GGUF files ({', '.join(ggufs)}): "
                        "which one to read is not said", f"give the .gguf file itself as MODEL, e.g. {p / ggufs[0]}")
    if source in EMBEDDED_MODELS or p.exists() and (p.suffix == ".gguf" or p.is_dir()):  # GGUF: resolve_model's rules
        from loratune.config import ModelConfig

        src = resolve_model(ModelConfig(name_or_path=source))
        try:  # a GGUF file's metadata is its config (read once: seconds for a large file)
            raw = PretrainedConfig.get_config_dict(src.path, **({"gguf_file": src.gguf_file} if src.gguf_file
                                                                else {}))[0]
        except Exception as exc:
            raise UserError(f"could not read a model config from '{source}' ({type(exc).__name__}: {exc})",
                            fix) from None
        return _config_from_dict(raw, f"'{source}'", fix)
    if p.exists():
        raise UserError(f"'{p}' is neither a config.json nor a model folder", fix)
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or p.suffix in (".json", ".gguf"):
        raise UserError(f"'{source}' does not exist", fix)
    try:  # a hub id: the cache first, so a cached config needs no network
        raw = PretrainedConfig.get_config_dict(source, local_files_only=True)[0]
    except OSError:  # not in the cache
        pass
    else:
        return _config_from_dict(raw, f"'{source}' (its config.json in the Hugging Face cache)", fix)
    why = hub_offline_reason()
    if why is None:
        try:
            raw = PretrainedConfig.get_config_dict(source)[0]
        except Exception as exc:
            why = hub_reason(exc)
        else:
            return _config_from_dict(raw, f"'{source}' (its config.json on the hub)", fix)
    raise UserError(f"'{source}' is not a preset or a local path, and its config is not in the Hugging Face cache "
                    f"nor could it be fetched ({why})", fix)


def _config_from_json(path: Path, fix: str):
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, *PARSE_ERRORS) as exc:
        raise UserError(f"could not read '{path}' as JSON ({exc})", fix) from None
    return _config_from_dict(raw, f"'{path}'", fix)


def _config_from_dict(raw, where: str, fix: str):
    """The config built from the fields a config.json (or a GGUF file's metadata) sets, as transformers builds it;
    every size field the plan reads must be among them (_check_present)."""
    from transformers import AutoConfig

    if not isinstance(raw, dict) or "model_type" not in raw:
        raise UserError(f"{where} has no model_type", "give a Hugging Face config.json (it names model_type)")
    raw = dict(raw)
    model_type = raw.pop("model_type")
    _check_model_type(model_type, where)
    try:
        config = AutoConfig.for_model(model_type, **raw)
    except Exception as exc:  # transformers' strict config validation raises its own error types too
        raise UserError(f"{where} is not a config transformers accepts ({type(exc).__name__}: "
                        f"{exc_text(exc)})", "fix the field it names, or " + fix) from None
    _check_present(config, raw, where)
    return config


def _check_model_type(model_type, where: str) -> None:
    """A model_type this transformers has a config class for, else a UserError naming it (transformers' own error is
    its list of every type it knows, hundreds of them)."""
    import difflib

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return
    close = difflib.get_close_matches(str(model_type), list(CONFIG_MAPPING.keys()), n=3)
    raise UserError(f"{where} says model_type {model_type!r}, which transformers {transformers.__version__} does not "
                    "know: a model newer than this transformers, a mistyped model_type, or a model that needs "
                    "trust_remote_code (not supported by plan and params)",
                    "correct model_type in its config.json" + (f" (close: {', '.join(close)})" if close else "")
                    + ", or upgrade transformers (pip install -U transformers) if the model is newer")


def default_task(config) -> str:
    """causal-lm for decoders (a *ForCausalLM architecture, or a model type transformers only knows as a causal
    LM), classification for encoders."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return "causal-lm"
    if archs:
        return "classification"
    mt = config.model_type
    return "causal-lm" if mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES \
        else "classification"


def resolve_task(config, task: str) -> str:
    """--task as plan and params take it: auto is default_task's choice."""
    return default_task(config) if task == "auto" else task


def build_meta_model(config, task: str):
    """The model on the meta device: names and shapes, no memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise UserError(f"--task {task}: one of auto, {', '.join(TASKS)}", "e.g. --task causal-lm")
    experts = max((getattr(c, k, None) or 0) for c in (config, getattr(config, "text_config", None)) if c is not None
                  for k in MOE_KEYS)
    if isinstance(experts, int) and experts > 1:  # the formulas are a dense transformer's: refused, never wrong
        raise UserError(f"'{config.model_type}' is a mixture-of-experts model ({experts} experts): plan's counts, "
                        "memory and FLOPs are those of dense transformers (experts stored outside nn.Linear, a few "
                        "active per token), and would be wrong for it",
                        "plan a dense model of the same width, or count a MoE adapter with peft on the meta device")
    autos = {"causal-lm": AutoModelForCausalLM, "classification": AutoModelForSequenceClassification}
    auto = autos[task]
    seq2seq = getattr(config, "is_encoder_decoder", False) is True

    def has(t: str) -> bool:
        # asked of transformers' own table, not read from a ValueError: a config whose sizes are invalid (hidden 33
        # over 2 heads) raises ValueError too, and was blamed on the task. An encoder-decoder's causal-LM class
        # (MarianForCausalLM, BartForCausalLM) is its decoder alone: a plan of it is not the model's
        return type(config) in autos[t]._model_mapping and not (t == "causal-lm" and seq2seq)

    if not has(task):
        decoder = ["its causal-LM class is the decoder alone"] if seq2seq and type(config) in \
            AutoModelForCausalLM._model_mapping else []
        other = [t for t in TASKS if t != task and has(t)]
        if other:  # plan and params both take --task
            raise UserError(f"transformers has no {task} model for '{config.model_type}' "
                            f"({'; '.join([*decoder, f'it has a {other[0]} one'])})", f"use --task {other[0]}")
        kind = "encoder-decoder (seq2seq) model" if seq2seq else "model"
        raise UserError(f"transformers has neither a causal-lm nor a classification model for '{config.model_type}'"
                        f"{''.join(f' ({d})' for d in decoder)}: plan and params cover causal LMs "
                        "(AutoModelForCausalLM) and classifiers "
                        f"(AutoModelForSequenceClassification), and this {kind} is neither",
                        "count its LoRA adapter with peft on the meta device (get_peft_model, "
                        "print_trainable_parameters); plan and params take causal LMs and classifiers only")
    with torch.device("meta"):
        try:
            if task != "causal-lm":
                config.num_labels = 2
            return auto.from_config(config)
        except Exception as exc:  # a config whose sizes cannot build a model (heads 0, a negative size)
            raise UserError(f"'{config.model_type}' cannot be built from this config ({type(exc).__name__}: "
                            f"{exc_text(exc)})", "fix the sizes in its config.json") from None


MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")  # config fields naming experts


def split_targets(text: str) -> tuple[str, ...]:
    """A --targets list: groups or module names split at commas, but a layer list stays with its group
    (`attn.q@0,1,ffn` is `attn.q@0,1` and `ffn`, as the README writes layer selections); spaces trimmed."""
    from loratune.config import split_list

    return tuple(split_list(text))  # blanks kept: resolve_targets refuses them


def check_rank(r: int, option: str, limit: int | None) -> None:
    """A rank `train` would take (adapter.r's range), else a UserError naming the option."""
    if r < 1 or (limit is not None and r > limit):
        raise UserError(f"{option} {r}: must be an integer >= 1" + (f" and <= {limit} (adapter.r's range)" if limit
                                                                     else ""), f"e.g. {option} 16")


def shape_of(model, task: str) -> ModelShape:
    import torch.nn as nn

    from loratune.adapt import available_targets, depth, num_blocks, resolve_targets
    from loratune.heads import head_modules
    from loratune.config import AdapterConfig

    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    blocks = resolve_targets(model, AdapterConfig(target_modules=("all-linear",)))
    if depth(model) > num_blocks(model):  # every formula below takes one block's weights per layer run
        raise UserError(f"'{cfg.model_type}' runs {depth(model)} layers with {num_blocks(model)} shared block(s) of "
                        "weights: plan's memory and FLOP arithmetic counts one set of weights per layer, and would "
                        "understate this model's FLOPs and activations",
                        "loratune params gives LoRA's parameter arithmetic for it; train it and read run.json's "
                        "peak_memory_mb and timing")
    head = 0
    if task == "classification":
        from loratune.precision import under

        heads = head_modules(model)
        head = sum(p.numel() for n, p in model.named_parameters() if under(n, heads))
    avail = available_targets(model)
    # a gate projection by name (Llama's gate_proj, Phi-3's gate_up_proj), or T5's gated-gelu (wi_0, wi_1): its config
    # says so (feed_forward_proj "gated-..." sets is_gated_act)
    gated = "ffn.gate" in avail["groups"] or any("gate" in r for r in avail["raw"]) \
        or getattr(cfg, "is_gated_act", False) is True
    refuse_headless(cfg)
    heads = cfg.num_attention_heads
    head_dim = _first_set(cfg, HEAD_DIM_FIELDS) or cfg.hidden_size // heads
    return ModelShape(
        model_type=cfg.model_type, task=task, params=params, linear_params=linear,
        block_linear_params=sum(s.in_features * s.out_features for s in blocks), head_params=head,
        layers=num_blocks(model), hidden=cfg.hidden_size, heads=heads, head_dim=head_dim,
        kv_heads=kv_heads_of(cfg), ffn=_first_set(cfg, FFN_FIELDS) or 4 * cfg.hidden_size, gated=gated,
        vocab=cfg.vocab_size if task == "causal-lm" else cfg.num_labels)


# Shape fields some configs keep under their own names, which their attribute_map does not alias to transformers' common
# one: read in order, the first one set wins. T5 (and mT5, UMT5, LongT5) keeps its FFN in d_ff and its head dimension in
# d_kv (t5-3b: 32 heads of 128 over d_model 1024); Falcon its FFN in ffn_hidden_size (4h unless set). Without any: FFN 4h
# (GPT-2, OPT, BART: their published sizes), head dimension hidden / heads.
FFN_FIELDS = ("intermediate_size", "d_ff", "ffn_hidden_size")
HEAD_DIM_FIELDS = ("head_dim", "d_kv")


def _first_set(config, names: tuple[str, ...]) -> int | None:
    return next((v for v in (getattr(config, n, None) for n in names) if v), None)


def kv_heads_of(config) -> int:
    """The key/value heads the model builds: Falcon-40B/180B's new_decoder_architecture groups its heads over
    num_kv_heads (8 of 128); multi_query (Falcon-7B, GPT-BigCode / StarCoder) gives one K and V head; else
    num_key_value_heads (Llama, Mistral, Qwen2's grouped-query attention), or one per attention head."""
    if getattr(config, "new_decoder_architecture", False):
        return getattr(config, "num_kv_heads", None) or config.num_attention_heads
    if getattr(config, "multi_query", False):
        return 1
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def lora_shape(model, r: int, targets: tuple[str, ...]) -> LoraShape:
    from loratune.adapt import per_rank
    from loratune.config import key_table
    from loratune.params import resolve_option_targets

    check_rank(r, "--r", key_table()["adapter.r"].metadata["max"])
    sites = resolve_option_targets(model, targets)  # a name that matches nothing is said as --targets, as params does
    # an encoder-decoder's stacks share layer indices and the decoder's cross-attention carries gradients into every
    # encoder block: only a decoder-only or encoder-only stack stops its backward at the lowest adapted layer
    first = 0 if getattr(model.config, "is_encoder_decoder", False) else min(s.layer for s in sites)
    return LoraShape(r, tuple(targets), len(sites), sum(s.in_features * s.out_features for s in sites),
                     per_rank(sites), sum(s.in_features for s in sites), first)


def plan_model(source: str, r: int = DEFAULT_R, targets: tuple[str, ...] = DEFAULT_TARGETS,
               workload: Workload | None = None, task: str = "auto") -> Plan:
    """The plan for `source` (preset, config.json, folder, embedded alias or cached hub id)."""
    workload = workload or Workload()
    _check_workload(workload)
    config = load_config(source)
    task = resolve_task(config, task)
    from loratune.model_info import position_limit

    # the limit `train` checks (model_info.check_max_length), by the same rule, for every task
    limit = position_limit(config)
    if limit is not None and workload.seq_len > limit:
        raise UserError(f"--seq-len {workload.seq_len} is longer than {source} takes: its position embeddings cover "
                        f"{limit} tokens (train refuses a longer model.max_length too)",
                        f"give --seq-len {limit} or less")
    model = build_meta_model(config, task)
    return make_plan(source, shape_of(model, task), lora_shape(model, r, targets), workload)
